"""Experiment 3: noisy hardware: DANP under each kind of node noise, with a noise-free
reference pass and with noise that cannot be switched off, and against the noise level.

    python simulations/noisy_hardware.py
    python simulations/noisy_hardware.py --quick

On the embedded digits (64-500-500-10 leaky ReLU, batch 64, Adam 1e-3, 20 epochs, seeds 0-2):

* ``noise_types``: DANP under gaussian, centered_bernoulli, bernoulli (non-zero mean),
  telegraph (correlated in time), gain (multiplicative), shot and logistic noise of scale
  1e-3, with the reference pass noise-free (``both_noisy = false``) and noisy (``true``: the
  noise is intrinsic, the rule only sees activities);
* ``noise_levels``: ANP and DANP with Gaussian noise of scale 1e-4 ... 1 in both passes.

Figure ``noisy_hardware.png``: the final test accuracy per noise type (both settings) and
against the noise level.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, final, save, sweep  # noqa: E402

NOISES = ["gaussian", "centered_bernoulli", "bernoulli", "telegraph", "gain", "shot",
          "logistic"]
LEVELS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
FULL = dict(dataset="digits", hidden=[500, 500], epochs=20, trace_every=0)
QUICK = dict(dataset="digits", hidden=[64], epochs=1, batch_size=256, trace_every=0,
             figures=False)


def main() -> None:
    args = arguments("noisy_hardware", __doc__, epochs=FULL["epochs"])
    train = dict(QUICK) if args.quick else {**FULL, "epochs": args.epochs}
    seeds = [0] if args.quick else args.seed_list
    noises = NOISES[:3] if args.quick else NOISES
    levels = LEVELS[::2] if args.quick else LEVELS
    types = sweep(args, "noise_types", {"noise": noises, "both_noisy": [False, True],
                                        "seed": seeds}, {**train, "algo": "danp"})
    levels_result = sweep(args, "noise_levels", {"algo": ["anp", "danp"], "noise_std": levels,
                                                 "seed": seeds}, {**train, "both_noisy": True})
    figure(types, levels_result, noises, levels, Path(args.out) / "noisy_hardware.png")


def figure(types, levels_result, noises, levels, path: Path) -> None:
    fig, (ax, ax_level) = plt.subplots(1, 2, figsize=(13, 4.6),
                                       gridspec_kw={"width_ratios": [3, 2]})
    for offset, both, color, label in [(-0.15, False, "C0", "reference pass noise-free"),
                                       (0.15, True, "C3", "both passes noisy (intrinsic)")]:
        for i, noise in enumerate(noises):
            values = final(types, {"noise": noise, "both_noisy": both}, "test_accuracy")
            ax.scatter([i + offset] * len(values), values, color=color, s=14,
                       label=label if i == 0 else None)
            if values:
                ax.hlines(sum(values) / len(values), i + offset - 0.12, i + offset + 0.12,
                          color=color)
    ax.set_xticks(range(len(noises)), noises, rotation=20)
    ax.set(ylabel="final test accuracy (fraction)",
           title="DANP under each noise type (scale 1e-3): seeds (dots), mean (line)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.legend(fontsize=8)
    for algo, color in [("anp", "C2"), ("danp", "k")]:
        means, xs = [], []
        for level in levels:
            values = final(levels_result, {"algo": algo, "noise_std": level}, "test_accuracy")
            ax_level.scatter([level] * len(values), values, color=color, s=12)
            if values:
                xs.append(level)
                means.append(sum(values) / len(values))
        ax_level.plot(xs, means, "-", color=color, label=f"{algo.upper()} (mean over seeds)")
    ax_level.set_xscale("log")
    ax_level.set(xlabel="noise scale s (Gaussian, both passes noisy)",
                 ylabel="final test accuracy (fraction)", title="accuracy against noise level")
    ax_level.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
