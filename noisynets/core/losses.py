"""Per-sample losses ``ell(a_L, y)`` on the logits: one number per sample (docs/algorithms.md).

Any function ``loss(logits, target) -> (B,)`` can serve (``Network(loss=...)``); these have
names for the command line.
"""

from __future__ import annotations

from collections.abc import Callable

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


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"ce": cross_entropy, "mse": mse}
