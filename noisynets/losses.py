"""Per-sample losses ``ell(a_L, y)`` on the logits: one number per sample (ALGORITHMS.md)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``ell = -log softmax(a_L)[y]`` for each sample."""
    return F.cross_entropy(logits, target, reduction="none")


def mse(logits: Tensor, target: Tensor) -> Tensor:
    """``ell = mean_c (a_L,c - onehot(y)_c)^2`` for each sample."""
    onehot = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
    return (logits - onehot).pow(2).mean(-1)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"ce": cross_entropy, "mse": mse}
