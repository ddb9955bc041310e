"""Experiment 1: all eight rules on Fashion-MNIST, with the spread over seeds.

    python simulations/rules.py                  # 784-1000-1000-1000-10, batch 1000, 20 epochs
    python simulations/rules.py --epochs 5       # what docs/results.md reports (a 2-core machine)
    python simulations/rules.py --quick          # digits, a small net, 2 epochs: seconds

BP, NP, INP and ANP, each plain and decorrelated (D-), seeds 0, 1 and 2, Adam with each rule's
preset learning rate, 10 % of the training set held out (the same samples for every run):
the curves are on that validation split, the test split is measured once, after the last
epoch. Figure ``rules.png``: validation accuracy per epoch (mean over seeds, band = range) and
every seed's final test accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, curve, final, histories, save, sweep  # noqa: E402

from noisynets.sweep import SweepResult  # noqa: E402

RULES = ["bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp"]
FULL = dict(dataset="fashion-mnist", epochs=20, val_fraction=0.1)
QUICK = dict(dataset="digits", hidden=[64, 64], epochs=2, batch_size=256, val_fraction=0.1,
             trace_every=0, figures=False)


def main() -> None:
    args = arguments("rules", __doc__, epochs=FULL["epochs"])
    figure(run(args), Path(args.out) / "rules.png")


def run(args: argparse.Namespace) -> SweepResult:
    """The sweep of this experiment (alignment.py draws another figure of the same runs)."""
    train = dict(QUICK) if args.quick else {**FULL, "epochs": args.epochs}
    seeds = [0, 1] if args.quick else args.seed_list
    return sweep(args, "rules", {"algo": RULES, "seed": seeds}, train)


def figure(result, path: Path) -> None:
    fig, (ax, ax_final) = plt.subplots(1, 2, figsize=(13, 4.8),
                                       gridspec_kw={"width_ratios": [3, 2]})
    colors = {"bp": "k", "np": "C0", "inp": "C1", "anp": "C2"}
    for values, runs in histories(result):
        algo = values["algo"]
        base = algo.removeprefix("d") if algo != "dbp" else "bp"
        style = "-" if algo.startswith("d") else "--"
        epochs, mean, low, high = curve(runs, "val_accuracy")
        ax.plot(epochs, mean, style, color=colors[base], marker="o", markersize=3,
                label=f"{algo.upper()} (n={len(runs)})")
        ax.fill_between(epochs, low, high, color=colors[base], alpha=0.15)
    ax.set(xlabel="epoch (0: before training)", ylabel="validation accuracy (fraction)",
           title="validation accuracy: mean over seeds, band = range of seeds")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.legend(ncol=2, fontsize=8)
    for i, algo in enumerate(RULES):
        values = final(result, {"algo": algo}, "test_accuracy")
        base = algo.removeprefix("d") if algo != "dbp" else "bp"
        ax_final.scatter([i] * len(values), values, color=colors[base], s=16, zorder=3)
        if values:
            ax_final.hlines(sum(values) / len(values), i - 0.3, i + 0.3, color=colors[base])
    ax_final.set_xticks(range(len(RULES)), [r.upper() for r in RULES])
    ax_final.set(ylabel="final test accuracy (fraction)",
                 title="test accuracy after the last epoch: seeds (dots), mean (line)")
    ax_final.ticklabel_format(axis="y", useOffset=False)
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
