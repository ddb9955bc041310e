"""Experiment 6: the convolutional network (``--arch conv``): every weight operation a
convolution or a linear readout, decorrelation on the convolutions' input patches.

    python simulations/conv.py
    python simulations/conv.py --fashion-mnist   # BP and DANP on Fashion-MNIST, 5 epochs
    python simulations/conv.py --quick

The conv preset (two 5x5 convolutions of 16 and 32 channels, leaky ReLU, 2x2 average pooling,
a linear readout; inputs standardized) on the embedded digits, 20 epochs, batch 64, seeds 0-2:
BP, DBP, ANP and DANP. Figure ``conv.png``: test accuracy per epoch and the final accuracy
of every seed. ``--fashion-mnist``: BP and DANP on Fashion-MNIST with the preset of that data
set (5 epochs, batch 256; figure ``conv_fashion-mnist.png``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, curve, final, histories, save, sweep  # noqa: E402

RULES = ["bp", "dbp", "anp", "danp"]
FULL = dict(dataset="digits", arch="conv", epochs=20, trace_every=0)
QUICK = dict(dataset="digits", arch="conv", epochs=1, batch_size=256, trace_every=0, figures=False)


def main() -> None:
    fashion = "--fashion-mnist" in sys.argv
    if fashion:
        sys.argv.remove("--fashion-mnist")
    args = arguments("conv", __doc__, epochs=5 if fashion else FULL["epochs"])
    train = dict(QUICK) if args.quick else {**FULL, "epochs": args.epochs}
    rules = RULES
    name = "conv"
    if fashion and not args.quick:
        train["dataset"], rules, name = "fashion-mnist", ["bp", "danp"], "conv_fashion-mnist"
    seeds = [0] if args.quick else args.seed_list
    result = sweep(args, name, {"algo": rules, "seed": seeds}, train)
    fig, (ax, ax_final) = plt.subplots(1, 2, figsize=(12, 4.3))
    for values, runs in histories(result):
        epochs, mean, low, high = curve(runs, "test_accuracy")
        line, = ax.plot(epochs, mean, marker="o", markersize=3,
                        label=f"{values['algo'].upper()} (n={len(runs)})")
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="epoch (0: before training)", ylabel="test accuracy (fraction)",
           title=f"conv net on {train['dataset']}: mean over seeds, band = range")
    ax.legend(fontsize=8)
    for i, algo in enumerate(rules):
        values = final(result, {"algo": algo}, "test_accuracy")
        ax_final.scatter([i] * len(values), values, color=f"C{i}", s=14, zorder=3)
        if values:
            ax_final.hlines(sum(values) / len(values), i - 0.3, i + 0.3, color=f"C{i}")
    ax_final.set_xticks(range(len(rules)), [r.upper() for r in rules])
    ax_final.set(ylabel="final test accuracy (fraction)",
                 title="final test accuracy: seeds (dots), mean (line)")
    ax_final.ticklabel_format(axis="y", useOffset=False)
    fig.tight_layout()
    save(fig, Path(args.out) / f"{name}.png")


if __name__ == "__main__":
    main()
