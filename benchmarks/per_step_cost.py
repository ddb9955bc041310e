"""What per-step products cost: seconds per training step and peak memory of the step, for the
paper's summed products, per-step products (``--per-step-products``) and BPTT, at several T.

    python benchmarks/per_step_cost.py
    python benchmarks/per_step_cost.py --steps 5 --time-steps 5 10 20 40 --batch-size 128

A dense LIF network (64-512-512-10, digits' 64 inputs, noisy passes K = 1). Every setting
runs in a fresh process (``--one``), so the peak resident memory it reports (``ru_maxrss``
after the steps minus before them, in MiB) is that setting's own; the seconds are the median
of ``--steps`` steps after one warm-up step, one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = (("danp", False), ("danp", True), ("dbp", False))


def one(algo: str, per_step: bool, T: int, batch: int, steps: int) -> dict[str, float]:
    import torch

    import noisynets
    from noisynets import make_rule

    torch.set_num_threads(1)
    net = noisynets.Network([64, 512, 512, 10], unit="lif", time_steps=T, noise_std=0.2,
                            decorrelation=True, per_step=per_step, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 64, generator=g), torch.randint(0, 10, (batch,), generator=g)
    rule = make_rule(algo)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        rule.step(net, x, y)
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(seconds[1:]), "peak_mib": (peak - before) / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time-steps", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--one", nargs=3, metavar=("ALGO", "PER_STEP", "T"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        algo, per_step, T = args.one
        print(json.dumps(one(algo, per_step == "1", int(T), args.batch_size, args.steps)))
        return
    print("| T | rule | products | s / step | peak MiB of the step |")
    print("| --- | --- | --- | --- | --- |")
    for T in args.time_steps:
        for algo, per_step in SETTINGS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", algo, str(int(per_step)), str(T),
                 "--batch-size", str(args.batch_size), "--steps", str(args.steps)],
                check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            products = "BPTT" if algo == "dbp" else ("per-step" if per_step else "summed")
            print(f"| {T} | {algo} | {products} | {result['seconds']:.3f} | "
                  f"{result['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
