"""Experiment 4: spiking and discontinuous networks: LIF neurons (a dense rate network and a
convolutional one) and Heaviside units trained by DANP, beside BPTT / BP with a surrogate
gradient.

    python simulations/spiking.py
    python simulations/spiking.py --quick

On the embedded digits, seeds 0-2, each unit's presets (LIF: T = 10 steps, beta 0.9, noise
0.2, one hidden layer of 1000 or the conv preset; Heaviside: 300-300 hidden, noise 0.3), 10
epochs. BP on LIF units is BPTT through snntorch's surrogate gradient; on Heaviside units
BP's gradient is zero below the readout, so it trains only the readout. DANP needs no
derivative of the unit at all. Figure ``spiking.png``: the final test accuracy per network,
BP beside DANP, and the test-accuracy curves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, curve, final, histories, save, sweep  # noqa: E402

NETWORKS = [("lif", "mlp"), ("lif", "conv"), ("heaviside", "mlp")]
FULL = dict(dataset="digits", epochs=10, trace_every=0)
QUICK = dict(dataset="digits", epochs=1, batch_size=256, time_steps=3, trace_every=0, figures=False)


def main() -> None:
    args = arguments("spiking", __doc__, epochs=FULL["epochs"])
    train = dict(QUICK) if args.quick else {**FULL, "epochs": args.epochs}
    seeds = [0] if args.quick else args.seed_list
    results = []
    for unit, arch in NETWORKS:
        settings = {**train, "unit": unit, "arch": arch}
        if args.quick and arch == "mlp":
            settings["hidden"] = [64] if unit == "lif" else [64, 64]
        if unit != "lif":
            settings.pop("time_steps", None)
        grid = {"algo": ["bp", "danp"], "seed": seeds}
        results.append(((unit, arch), sweep(args, f"{unit}_{arch}", grid, settings)))
    figure(results, Path(args.out) / "spiking.png")


def figure(results, path: Path) -> None:
    fig, (ax, ax_curve) = plt.subplots(1, 2, figsize=(13, 4.6))
    for i, ((unit, arch), result) in enumerate(results):
        for offset, algo, color in [(-0.15, "bp", "k"), (0.15, "danp", "C3")]:
            values = final(result, {"algo": algo}, "test_accuracy")
            ax.scatter([i + offset] * len(values), values, color=color, s=14,
                       label=("BP / BPTT" if algo == "bp" else "DANP") if i == 0 else None)
            if values:
                ax.hlines(sum(values) / len(values), i + offset - 0.12, i + offset + 0.12,
                          color=color)
        for values, runs in histories(result):
            epochs, mean, low, high = curve(runs, "test_accuracy")
            style = "-" if values["algo"] == "danp" else "--"
            ax_curve.plot(epochs, mean, style, marker="o", markersize=3,
                          color=f"C{i}", label=f"{unit} {arch} {values['algo'].upper()}")
            ax_curve.fill_between(epochs, low, high, color=f"C{i}", alpha=0.15)
    ax.set_xticks(range(len(results)), [f"{u} ({a})" for (u, a), _ in results])
    ax.set(ylabel="final test accuracy (fraction)",
           title="final test accuracy: seeds (dots), mean (line)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.legend(fontsize=8)
    ax_curve.set(xlabel="epoch (0: before training)", ylabel="test accuracy (fraction)",
                 title="test accuracy per epoch: mean over seeds, band = range")
    ax_curve.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
