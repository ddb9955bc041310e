"""Temporary home of the sweep figure (moves into plots.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

if TYPE_CHECKING:
    from noisynets.sweep import SweepResult


def sweep_figure(result: SweepResult, path: str | Path) -> Path:
    """The figure of a sweep (``summary.png``): left, per group of runs (the grid's values other
    than the seed) the mean learning curve over its seeds, the band spanning the seeds' range;
    right, every seed's final value as a dot and the group's mean as a line. The curve is the
    validation split's where the runs hold one out, else the test split's; a regression sweep
    shows the loss."""
    from noisynets.sweep import groups, score_name

    score = score_name(result)
    validating = any(h.get(score.replace("test", "val")) is not None
                     for r in result.runs for h in r.get("summary", {}).get("history", []))
    curve_metric = score.replace("test", "val") if validating else score
    split = "validation" if validating else "test"
    what = "accuracy (fraction)" if score == "test_accuracy" else "loss"
    fig, (ax_curve, ax_final) = plt.subplots(1, 2, figsize=(12, 4.5),
                                             gridspec_kw={"width_ratios": [3, 2]})
    labels, finals = [], []
    for values, runs in groups(result):
        label = ", ".join(f"{k}={_short(v)}" for k, v in values.items()) or "all runs"
        histories = [[(h["epoch"], h[curve_metric]) for h in r["summary"]["history"]
                      if h.get(curve_metric) is not None] for r in runs if "summary" in r]
        histories = [h for h in histories if h]
        labels.append(label)
        finals.append([r["summary"][score] for r in runs if "summary" in r
                       and r["summary"].get(score) is not None])
        if not histories:
            continue
        epochs = sorted({e for h in histories for e, _ in h})
        table = [dict(h) for h in histories]
        mean = [np.mean([t[e] for t in table if e in t]) for e in epochs]
        low = [min(t[e] for t in table if e in t) for e in epochs]
        high = [max(t[e] for t in table if e in t) for e in epochs]
        line, = ax_curve.plot(epochs, mean, marker="o", markersize=3,
                              label=f"{label} (n={len(histories)})")
        if len(histories) > 1:
            ax_curve.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
    ax_curve.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_curve.set_xlabel("epoch (0: before training)")
    ax_curve.set_ylabel(f"{split} {what}")
    ax_curve.set_title(f"{split} {what} per epoch: mean over seeds, band = seed range")
    ax_curve.ticklabel_format(axis="y", useOffset=False)
    if labels:
        ax_curve.legend(fontsize=7)
    x = np.arange(len(labels))
    for i, values in enumerate(finals):
        if values:
            ax_final.hlines(np.mean(values), i - 0.3, i + 0.3, color="k", linewidth=2)
            ax_final.scatter(np.full(len(values), i), values, color="C0", zorder=3, s=14)
    ax_final.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    ax_final.set_ylabel(f"final {score.replace('_', ' ')}"
                        + (" (fraction)" if score == "test_accuracy" else ""))
    ax_final.set_title("final value: seeds (dots), mean (line)")
    numbers = [v for values in finals for v in values]
    if numbers and score == "test_accuracy":
        lo, hi = min(numbers), max(numbers)
        pad = max(0.01, 0.15 * (hi - lo))
        ax_final.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax_final.ticklabel_format(axis="y", useOffset=False)
    fig.suptitle(f"sweep {Path(result.out).name}: {len(result.runs)} runs")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
