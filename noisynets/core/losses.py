"""Per-sample losses: one number per sample and pass, from whatever the model returns.

A perturbation rule needs the loss of every sample in every pass (``dL = loss(noisy) -
loss(reference)``), so each loss here is per sample (docs/algorithms.md):

* on logits (B, C): ``ce`` (cross-entropy on integer labels), ``mse`` (real-valued targets,
  or the one-hot code of labels), or any function ``loss(logits, target) -> (B,)``;
* on a spiking model's outputs over time (T, B, C), snntorch's functional losses by their
  names (``snntorch.functional``): ``ce_rate_loss``, ``ce_count_loss``, ``mse_count_loss``
  and ``ce_temporal_loss``, ``mse_temporal_loss`` read the spikes;
  ``ce_max_membrane_loss`` and ``mse_membrane_loss`` the membrane. snntorch's own
  implementation runs with ``reduction="none"``; a loss it returns per sample and class is
  averaged over the classes, so the batch mean is snntorch's own.

A ``Loss`` takes the model's ``Outputs`` (``noisynets.core.steps``) and says what a
prediction is: the logits, the spike counts, the peak membrane, or the earliest spike.

Example::

    >>> import torch
    >>> loss = make_loss("ce_count_loss")
    >>> spikes = torch.tensor([[[1., 0.]], [[1., 0.]]])  # T = 2 steps, 1 sample, 2 classes
    >>> loss.reads, tuple(loss.from_spikes(spikes, torch.tensor([0])).shape)
    ('spikes', (1,))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import snntorch.functional as SF
import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``ell = -log softmax(a_L)[y]`` for each sample (integer class labels)."""
    return F.cross_entropy(logits, target, reduction="none")


def mse(logits: Tensor, target: Tensor) -> Tensor:
    """``ell = mean_c (a_L,c - y_c)^2`` for each sample: ``y`` the real-valued targets
    (regression), or the one-hot code of integer class labels."""
    if not target.is_floating_point():
        target = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
    return (logits - target.reshape(logits.shape)).pow(2).mean(-1)


LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "mse": mse}
# snntorch's functional losses and what they read of a spiking model's outputs over time.
SNNTORCH_LOSSES: dict[str, str] = {
    "ce_rate_loss": "spikes", "ce_count_loss": "spikes", "mse_count_loss": "spikes",
    "ce_temporal_loss": "spikes", "mse_temporal_loss": "spikes",
    "ce_max_membrane_loss": "membrane", "mse_membrane_loss": "membrane",
}
LOSS_NAMES: tuple[str, ...] = (*LOSSES, *SNNTORCH_LOSSES)


@dataclass
class Loss:
    """A per-sample loss named ``name``; ``reads`` is ``logits``, ``spikes`` or ``membrane``."""

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    reads: str = "logits"

    @property
    def classification(self) -> bool:
        """Whether the targets are class labels (``ce`` and snntorch's losses)."""
        return self.name == "ce" or self.name in SNNTORCH_LOSSES

    def from_logits(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.fn(logits, target)

    def from_spikes(self, series: Tensor, target: Tensor) -> Tensor:
        """The loss of each sample from its outputs over time (T, B, C): snntorch's own,
        per sample (averaged over the classes where it returns one per class)."""
        out = self.fn(series, target)
        return out.reshape(series.shape[1], -1).mean(-1).to(series.dtype)

    def prediction(self, series: Tensor) -> Tensor:
        """(B, C) scores whose argmax is the predicted class, from outputs over time: the
        spike counts; the earliest spike (temporal losses); the peak membrane."""
        if self.reads == "membrane":
            return series.max(0).values
        if "temporal" in self.name:
            T = series.shape[0]
            fired = series > 0
            first = torch.where(fired.any(0), fired.to(torch.uint8).argmax(0), T)
            return -first.to(series.dtype)
        return series.sum(0)


def make_loss(loss: str | Callable[[Tensor, Tensor], Tensor]) -> Loss:
    """The loss called ``loss`` (``LOSS_NAMES``), or a function ``loss(logits, target)``
    returning one loss per sample."""
    if isinstance(loss, str):
        if loss in LOSSES:
            return Loss(loss, LOSSES[loss])
        if loss in SNNTORCH_LOSSES:
            return Loss(loss, getattr(SF, loss)(reduction="none"), SNNTORCH_LOSSES[loss])
        raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSS_NAMES)}, or "
                         "pass a function loss(logits, target) -> one loss per sample")
    if callable(loss):
        return Loss(getattr(loss, "__name__", "custom"), loss)
    raise TypeError(f"loss {loss!r} must be a name ({', '.join(LOSS_NAMES)}) or a function")
