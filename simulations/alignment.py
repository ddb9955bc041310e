"""Experiment 2: how well each perturbation rule's estimate aligns with BP, per layer, over
training.

    python simulations/alignment.py              # the runs of experiment 1 (rules.py), reused
    python simulations/alignment.py --epochs 5   # as docs/results.md reports them
    python simulations/alignment.py --quick

NP, INP and ANP, plain and decorrelated, on Fashion-MNIST (the sweep of ``rules.py``, same
rules, settings and folder, so runs that experiment finished are not run again). After every epoch a
run measures, on a fixed training batch, the cosine between its estimate and the BP gradient
at the same operating point, per layer (``alignment`` in results.json). Figure
``alignment.png``: one panel per rule, one curve per layer (mean over seeds, band = range),
on a symmetric-log axis so that layers near 0.01 and near 1 are both readable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
import rules  # noqa: E402
from common import arguments, curve, histories, save  # noqa: E402
from rules import FULL  # noqa: E402

RULES = ["np", "dnp", "inp", "dinp", "anp", "danp"]


def main() -> None:
    args = arguments("rules", __doc__, epochs=FULL["epochs"])
    # the very sweep of rules.py (all eight rules), so its summary stays whole
    figure(rules.run(args), Path(args.out) / "alignment.png")


def figure(result, path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True, sharey=True)
    shown = [(values, runs) for values, runs in histories(result) if values["algo"] in RULES]
    for (values, runs), ax in zip(shown, axes.T.flatten()):
        layers = len(runs[0][0]["alignment"])
        for k in range(layers):
            epochs, mean, low, high = curve(runs, "alignment", k)
            label = f"layer {k + 1}" + (" (output)" if k == layers - 1 else "")
            line, = ax.plot(epochs, mean, marker="o", markersize=3, label=label)
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_title(f"{values['algo'].upper()} (n={len(runs)} seeds)")
        ax.axhline(0, color="0.6", linewidth=0.5)
    for ax in axes[-1]:
        ax.set_xlabel("epoch (0: before training)")
    for ax in axes[:, 0]:
        ax.set_ylabel("cosine(estimate, BP gradient)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("alignment with BP per layer, on a fixed training batch after each epoch "
                 "(symlog axis: linear below 0.01)")
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
