"""Experiment 5: scaling: depth (1 to 6 hidden layers), width, and the number K of noisy
passes per step.

    python simulations/scaling.py
    python simulations/scaling.py --quick

On the embedded digits, seeds 0-2, 20 epochs, batch 64, Adam 1e-3, Gaussian noise 1e-3:

* ``depth``: BP and DANP on 1 to 6 hidden layers of 256;
* ``width``: BP and DANP on three hidden layers of 32, 128, 512 and 2048;
* ``noise_samples``: NP, ANP and DANP with K = 1, 2, 4, 8 noisy passes per step (each step
  averages K estimates; on three hidden layers of 256).

Figure ``scaling.png``: the final test accuracy against depth, width and K.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, final, save, sweep  # noqa: E402

FULL = dict(dataset="digits", epochs=20, trace_every=0)
QUICK = dict(dataset="digits", epochs=1, batch_size=256, trace_every=0, figures=False)


def main() -> None:
    args = arguments("scaling", __doc__, epochs=FULL["epochs"])
    train = dict(QUICK) if args.quick else {**FULL, "epochs": args.epochs}
    seeds = [0] if args.quick else args.seed_list
    width = 32 if args.quick else 256
    depths = [1, 3] if args.quick else [1, 2, 3, 4, 5, 6]
    widths = [16, 64] if args.quick else [32, 128, 512, 2048]
    ks = [1, 4] if args.quick else [1, 2, 4, 8]
    depth = sweep(args, "depth", {"algo": ["bp", "danp"], "hidden": [[width] * d for d in depths],
                                  "seed": seeds}, train)
    wide = sweep(args, "width", {"algo": ["bp", "danp"], "hidden": [[w] * 3 for w in widths],
                                 "seed": seeds}, train)
    samples = sweep(args, "noise_samples", {"algo": ["np", "anp", "danp"], "noise_samples": ks,
                                            "seed": seeds},
                    {**train, "hidden": [64] if args.quick else [256, 256, 256]})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
    panels = [(axes[0], depth, "hidden", depths, lambda d: [width] * d,
               f"hidden layers (of {width})", ["bp", "danp"]),
              (axes[1], wide, "hidden", widths, lambda w: [w] * 3,
               "width of each of 3 hidden layers", ["bp", "danp"]),
              (axes[2], samples, "noise_samples", ks, lambda k: k,
               "noisy passes K per step", ["np", "anp", "danp"])]
    colors = {"bp": "k", "np": "C0", "anp": "C2", "danp": "C3"}
    for ax, result, key, xs, value_of, label, algos in panels:
        for algo in algos:
            means = []
            for x in xs:
                values = final(result, {"algo": algo, key: value_of(x)}, "test_accuracy")
                ax.scatter([x] * len(values), values, color=colors[algo], s=12)
                means.append(sum(values) / len(values) if values else float("nan"))
            ax.plot(xs, means, "-", color=colors[algo], label=f"{algo.upper()} (mean)")
        if key != "hidden" or xs is widths:
            ax.set_xscale("log", base=2)
        ax.set(xlabel=label, ylabel="final test accuracy (fraction)")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.legend(fontsize=8)
    fig.suptitle("scaling on digits: seeds (dots), mean over seeds (line)")
    fig.tight_layout()
    save(fig, Path(args.out) / "scaling.png")


if __name__ == "__main__":
    main()
