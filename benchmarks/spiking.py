"""A DANP step against a BPTT step of the same LIF network: time per step and peak memory.

    python benchmarks/spiking.py                     # 784-1000-1000-10 LIF, T = 25, batch 256
    python benchmarks/spiking.py --time-steps 10 --device cuda

BPTT is BP through time with snntorch's surrogate gradient; DANP runs its clean and noisy
passes as one batched forward without a graph and never stores the T steps. Each rule is
measured in a fresh process, so the peak memory of one does not hide the other's: on the CPU
the growth of the peak resident set over what the process held before the first step, on a
GPU ``torch.cuda.max_memory_allocated`` over the same baseline. Prints both and their ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from noisynets import Network, make_rule
from noisynets.training import train_step


def measure(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 784, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    name = args.measure
    net = Network([784, *args.hidden, 10], unit="lif", time_steps=args.time_steps,
                  noise_std=0.1, decorrelation=True, decorrelation_fraction=0.1,
                  seed=0).to(device)
    rule = make_rule(name)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(args.repeats + 1):
        t = time.perf_counter()
        train_step(net, rule, optimizer, x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = sorted(times[1:])
    return {"seconds": times[len(times) // 2], "peak_bytes": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[1000, 1000])
    p.add_argument("--time-steps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--measure", choices=["danp", "dbp"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return
    print(f"LIF network [784, {', '.join(map(str, args.hidden))}, 10], T = {args.time_steps}, "
          f"batch {args.batch_size}, device {args.device}")
    results = {}
    for name in ("dbp", "danp"):
        argv = [sys.executable, __file__, "--measure", name, "--time-steps", str(args.time_steps),
                "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
                "--device", args.device, "--hidden", *map(str, args.hidden)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    for name, label in (("dbp", "BPTT (DBP)"), ("danp", "DANP")):
        seconds, mib = results[name]["seconds"], results[name]["peak_bytes"] / 2**20
        print(f"{label:>11}: {seconds:.3f} s/step, peak memory {mib:.0f} MiB")
    time_ratio = results["danp"]["seconds"] / results["dbp"]["seconds"]
    memory_ratio = results["danp"]["peak_bytes"] / results["dbp"]["peak_bytes"]
    print(f"DANP / BPTT: time {time_ratio:.2f}x, peak memory {memory_ratio:.2f}x")


if __name__ == "__main__":
    main()
