"""Train every rule with the CLI's defaults and print a markdown table of the results.

    python simulations/compare_rules.py --dataset fashion-mnist --seed 0
    python simulations/compare_rules.py --dataset digits --rules danp anp -- --unit heaviside
    python simulations/compare_rules.py --dataset fashion-mnist --rules bp danp --out runs/conv \
        -- --arch conv
    python simulations/compare_rules.py --dataset teacher --rules bp np anp danp

Each run is ``noisynets train --algo RULE --dataset DATASET --seed SEED --json`` (plus any
arguments after ``--``), in its own process, with its run folder under ``--out``. ``--workers``
runs several at once (each with ``--threads`` torch threads).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RULES = ("bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp")


def run_cli(argv: list[str], out: Path, threads: int) -> dict:
    """``noisynets train ARGV --json --out OUT`` in its own process; its JSON result."""
    command = ["noisynets", "train", *argv, "--json", "--no-progress", "--threads", str(threads),
               "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr}")
    return {"command": " ".join(command), **json.loads(proc.stdout.strip().splitlines()[-1])}


def run(rule: str, args: argparse.Namespace, extra: list[str]) -> dict:
    out = Path(args.out) / f"{args.dataset}-{rule}-seed{args.seed}"
    argv = ["--algo", rule, "--dataset", args.dataset, "--seed", str(args.seed), *extra]
    return run_cli(argv, out, args.threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(lambda r: run(r, args, extra), args.rules))
    regression = results[0]["test_accuracy"] is None  # the teacher: no accuracy, a test loss
    score = "test loss" if regression else "test accuracy"
    print(f"| rule | Adam lr | {score} | final train loss | mean alignment | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        alignment = r["history"][-1]["alignment"]
        value = r["test_loss"] if regression else r["test_accuracy"]
        print(f"| {r['algo'].upper()} | {r['config']['lr']:g} | {value:.4f} | "
              f"{r['train_loss']:.4f} | {sum(alignment) / len(alignment):.3f} | "
              f"{r['seconds']:.0f} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    summary = Path(args.out) / f"{args.dataset}-seed{args.seed}.json"
    summary.write_text(json.dumps(results, indent=1))
    print(f"(results: {summary})")


if __name__ == "__main__":
    main()
