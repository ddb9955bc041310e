"""Figures (matplotlib, headless): the learning curve of a run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from noisynets.training import RunResult


def learning_curve(result: RunResult, path: str | Path) -> Path:
    """Train loss, test accuracy and per-layer alignment with BP, by epoch, in one PNG."""
    history = ([result.initial] if result.initial else []) + result.history
    epochs = [h.epoch for h in history]
    c = result.config
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    axes[0].plot(epochs[1:], [h.train_loss for h in history[1:]], "o-", label="train (clean pass)")
    axes[0].plot(epochs, [h.test_loss for h in history], "s--", label="test")
    axes[0].set(xlabel="epoch", ylabel=f"loss ({c.loss})", title="Loss")
    axes[0].legend()
    axes[1].plot(epochs, [100 * h.test_accuracy for h in history], "o-", color="C2")
    axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    for k in range(len(history[0].alignment)):
        axes[2].plot(epochs, [h.alignment[k] for h in history], "o-", label=f"layer {k + 1}")
    axes[2].set(xlabel="epoch", ylabel="cosine(estimate, BP gradient)",
                title="Alignment with BP", ylim=(-0.05, 1.05))
    axes[2].legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{c.algo.upper()} on {c.dataset}, hidden {c.hidden}, {c.unit} units, "
                 f"noise {c.noise_std:g}, seed {c.seed}")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
