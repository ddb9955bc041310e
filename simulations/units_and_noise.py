"""The ANP family on discontinuous, spiking and intrinsically noisy networks, with BP beside it.

    python simulations/units_and_noise.py                 # digits experiments (a few minutes)
    python simulations/units_and_noise.py --fashion-mnist # also the Fashion-MNIST ones

Every experiment is one ``noisynets train`` command with the CLI's defaults for its unit and
noise; the table shows the command's distinguishing options and its final test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from compare_rules import run_cli

DIGITS = [
    ("heaviside-bp", "--algo bp --unit heaviside --epochs 40"),
    ("heaviside-danp", "--algo danp --unit heaviside --epochs 40"),
    ("lif-danp", "--algo danp --unit lif --epochs 20"),
    ("lif-bptt", "--algo dbp --unit lif --epochs 20"),
    ("telegraph-both-noisy-danp", "--algo danp --noise telegraph --both-noisy --epochs 20"),
    ("stochastic-binary-danp", "--algo danp --unit stochastic_binary --epochs 40"),
]
FASHION_MNIST = [
    ("lif-danp", "--algo danp --unit lif --epochs 10"),
    ("telegraph-clean-danp", "--algo danp --noise telegraph"),
    ("telegraph-both-noisy-danp", "--algo danp --noise telegraph --both-noisy"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fashion-mnist", action="store_true", help="also run the FMNIST ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/units_and_noise")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    plan = [("digits", name, options) for name, options in DIGITS]
    if args.fashion_mnist:
        plan += [("fashion-mnist", name, options) for name, options in FASHION_MNIST]
    print("| data set | options | test accuracy | seconds |")
    print("| --- | --- | --- | --- |")
    results = []
    for dataset, name, options in plan:
        argv = [*options.split(), "--dataset", dataset, "--seed", str(args.seed)]
        result = run_cli(argv, Path(args.out) / f"{dataset}-{name}-seed{args.seed}", args.threads)
        results.append(result)
        print(f"| {dataset} | `{options}` | {result['test_accuracy']:.4f} | "
              f"{result['seconds']:.0f} |", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"seed{args.seed}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
