"""What the noise draws cost a perturbation step, against the BP/BPTT step, in one run.

For each of the bench's networks (``noisynets.bench``: dense 784-1000x3-10, spiking 784-1000-10
LIF at T = 25 and 100, the conv preset) it times, interleaved:

* the BP (or BPTT) step the perturbation rule is compared with;
* the perturbation step as it runs;
* the same step with every Gaussian draw replaced by a block drawn once (the same shape and
  scale, no generator call): the step as it would cost if drawing the noise were free.

The gap between the last two is the share of the generator: torch's CPU generator (mt19937) draws
serially on one core whatever the thread count, so it caps what the rest of the step can gain
from more threads or fewer operations. Run::

    python benchmarks/noise_cost.py [--threads 2] [--rounds 10]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from noisynets.bench import Case, Setup, build, machine
from noisynets.noise import Gaussian

CASES = [("dense", "bp", "anp", 0), ("dense", "dbp", "danp", 0), ("conv", "dbp", "danp", 0),
         ("spiking", "dbp", "danp", 25), ("spiking", "dbp", "danp", 100)]


def free_noise(source: Gaussian, a: torch.Tensor) -> torch.Tensor:
    """A Gaussian source's draw without the generator: one block per shape, drawn once."""
    cache = source.__dict__.setdefault("_free", {})
    key = (tuple(a.shape), a.dtype)
    if key not in cache:
        cache[key] = torch.randn(a.shape, dtype=a.dtype)
    return cache[key] * source.std


def without_generator(step: Callable[[], Any]) -> None:
    """``step`` with every Gaussian draw taken from ``free_noise``."""
    drawn = Gaussian.forward
    Gaussian.forward = free_noise  # type: ignore[method-assign]
    try:
        step()
    finally:
        Gaussian.forward = drawn  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    host = machine(device)
    print(f"{host['cpu']} ({' '.join(host['simd'])}), torch threads {torch.get_num_threads()}")
    setup = Setup(hidden=[1000, 1000, 1000], precision="float32")
    print(f"{'network':8} {'rule':5} {'T':>4} {'base ms':>8} {'rule ms':>8} {'free ms':>8} "
          f"{'rule/base':>9} {'free/base':>9} {'noise share':>11}")
    for network, base, rule, T in CASES:
        steps = {name: build(Case(network, name, time_steps=T), setup, device)
                 for name in (base, rule)}

        timed = {"base": steps[base], "rule": steps[rule],
                 "free": functools.partial(without_generator, steps[rule])}
        for step in timed.values():
            for _ in range(2):
                step()
        times: dict[str, list[float]] = {k: [] for k in timed}
        for _ in range(args.rounds):
            for k, step in timed.items():
                start = time.perf_counter()
                step()
                times[k].append(time.perf_counter() - start)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        share = (ms["rule"] - ms["free"]) / ms["rule"]
        print(f"{network:8} {rule:5} {T or 1:>4} {ms['base']:8.1f} {ms['rule']:8.1f} "
              f"{ms['free']:8.1f} {ms['rule'] / ms['base']:9.2f} {ms['free'] / ms['base']:9.2f} "
              f"{share:11.0%}")


if __name__ == "__main__":
    main()
