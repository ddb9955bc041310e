"""The decorrelator ``R``: a parametrization of a weight operation's weight, ``W' = W R``.

A decorrelated layer computes ``a = W (R x) + b`` (docs/algorithms.md, "Decorrelation").
``R`` lives in the user's module as a ``torch.nn.utils.parametrize`` parametrization of the
weight: the weight the module uses is ``W R``, so ``model(x)`` is the trained network at every
moment, with or without noisynets, and the trained parameter is ``W``
(``op.parametrizations.weight.original``). A dense layer decorrelates its input vector
(``d`` = its input features); a convolution its input *patches* (``d = in_channels / groups *
kernel size``), one ``R`` per group, so its kernel is ``W'_o = W_o R`` per filter ``o``.

Update, from ``m`` decorrelated inputs ``Xh`` (rows ``xh = R x``)::

    C  = Xh^T Xh / m,  diagonal set to zero
    R <- R - eta_R * C R

``C R`` costs ``d^3`` when formed directly. When ``m < d`` it is computed as
``Xh^T (Xh R) / m - diag(mean(Xh^2)) R``, which costs about ``2 m d^2``.

Example::

    >>> import torch
    >>> dec = Decorrelator(3)
    >>> x = torch.randn(500, 3) @ torch.tensor([[1., .9, 0.], [0., .4, 0.], [0., 0., 1.]])
    >>> for _ in range(200):
    ...     dec.update(dec.decorrelate(x), lr=0.05)
    >>> bool(mean_abs_correlation(dec.decorrelate(x)) < mean_abs_correlation(x))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from noisynets.core.ops import fold, kind_of
from noisynets.parallel import Shard, all_reduce_sum


class Decorrelator(nn.Module):
    """Holds ``R`` (``d x d``, or ``groups x d x d``; the identity at first).

    As a parametrization its ``forward(W)`` is the folded weight ``W R``
    (``noisynets.core.ops.fold``); ``decorrelate(x)`` is ``xh = R x`` for rows ``x``.
    """

    def __init__(self, features: int, groups: int = 1) -> None:
        super().__init__()
        self.features = int(features)
        self.groups = int(groups)
        eye = torch.eye(self.features)
        self.register_buffer("R", eye if self.groups == 1 else eye.repeat(self.groups, 1, 1))

    def forward(self, W: Tensor) -> Tensor:
        """``W R``: the weight the module uses."""
        return fold(W, self.R)

    def decorrelate(self, x: Tensor) -> Tensor:
        """``x @ R^T`` for rows ``x`` of shape (m, d), or (groups, m, d)."""
        return x @ self.R.mT

    @torch.no_grad()
    def update(self, xh: Tensor, lr: float) -> None:
        """One step ``R <- R - lr * C R`` from decorrelated inputs ``xh``: (m, d) or
        (groups, m, d)."""
        m, d = xh.shape[-2], xh.shape[-1]
        R = self.R
        if m < d:
            CR = xh.mT @ (xh @ R) / m - xh.pow(2).mean(-2).unsqueeze(-1) * R
        else:
            C = xh.mT @ xh / m
            C = C - torch.diag_embed(torch.diagonal(C, dim1=-2, dim2=-1))
            CR = C @ R
        R.sub_(CR, alpha=lr)

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return f"features={self.features}{groups}"


def decorrelate(op: nn.Module) -> Decorrelator:
    """Give weight operation ``op`` a decorrelator: ``op.weight`` becomes ``W R`` (``R = I`` at
    first, so the function is unchanged); returns the decorrelator, on ``op``'s device and
    in its dtype."""
    kind = kind_of(op)
    if kind is None:
        raise TypeError(f"{type(op).__name__} is not a weight operation noisynets knows")
    existing = decorrelator_of(op)
    if existing is not None:
        return existing
    d, groups = kind.features(op)
    decorrelator = Decorrelator(d, groups).to(op.weight.device, op.weight.dtype)
    parametrize.register_parametrization(op, "weight", decorrelator)
    return decorrelator


def decorrelator_of(op: nn.Module) -> Decorrelator | None:
    """The decorrelator of ``op``'s weight, or None."""
    if not parametrize.is_parametrized(op, "weight"):
        return None
    found = [p for p in op.parametrizations.weight if isinstance(p, Decorrelator)]
    return found[0] if found else None


@torch.no_grad()
def fold_into_weight(op: nn.Module) -> None:
    """Remove ``op``'s decorrelator, leaving the folded weight ``W R`` as its plain weight.

    ``parametrize.remove_parametrizations`` would delete the ``weight`` property from the
    parametrized class, which a deep copy shares with its original (the original would lose
    its weight); this restores the plain class on ``op`` alone."""
    if not parametrize.is_parametrized(op, "weight"):
        return
    folded = op.parametrizations.weight().detach().clone()
    plain = type(op).__bases__[0]
    del op._modules["parametrizations"]
    op.__class__ = plain
    rest = {k: v for k, v in op._parameters.items() if k != "weight"}
    op._parameters = {"weight": nn.Parameter(folded), **rest}


def trained_weight(op: nn.Module) -> Tensor:
    """The weight the rules estimate: ``W`` itself, not the folded ``W R`` the module uses."""
    if parametrize.is_parametrized(op, "weight"):
        return op.parametrizations.weight.original
    return op.weight

@torch.no_grad()
def update_layers(layers: Sequence[Any], inputs: Sequence[Tensor], steps: Sequence[int],
                  fraction: float, lr: float, shard: Shard | None = None) -> None:
    """One step ``R <- R - eta_R C R`` of every layer's decorrelator, from its reference
    inputs ``inputs[k]`` summed over its ``steps[k]`` calls (so divided by them).

    The correlation is estimated from the first ``ceil(fraction * B)`` samples of the batch
    (a random subsample when the batches are shuffled); a convolution uses all their
    patches. Sharded, ``B`` is the global batch: each rank places the rows of its samples
    among them at their place in zeros of the global row count, and a sum over the ranks
    gathers them exactly (``noisynets.parallel``).
    """
    if shard is None:
        m = max(1, math.ceil(fraction * inputs[0].shape[0]))
        for layer, seen, T in zip(layers, inputs, steps):
            rows = layer.decorrelation_rows(seen[:m].detach() / T)
            layer.decorrelator.update(rows, lr)
        return
    m = max(1, math.ceil(fraction * shard.total))
    count = min(shard.size, max(0, m - shard.offset))  # the rank's samples among the m
    gathered = []
    for layer, seen, T in zip(layers, inputs, steps):
        local = layer.decorrelation_rows(seen[: max(1, count)].detach() / T)
        per = local.shape[-2] // max(1, count)  # rows per sample: patches of a conv
        rows = local.new_zeros(*local.shape[:-2], m * per, local.shape[-1])
        start = shard.offset * per
        rows[..., start : start + count * per, :] = local[..., : count * per, :]
        gathered.append(rows)
    all_reduce_sum(gathered, shard.world)
    for layer, rows in zip(layers, gathered):
        layer.decorrelator.update(rows, lr)



def mean_abs_correlation(x: Tensor) -> Tensor:
    """Mean absolute off-diagonal Pearson correlation of the columns of ``x`` (m, d); for
    grouped rows (groups, m, d), the mean over the groups.

    Features with zero variance (a constant pixel, a silent unit) are left out.
    """
    if x.dim() == 3:
        return torch.stack([mean_abs_correlation(group) for group in x]).mean()
    x = x.double()
    x = x - x.mean(0)
    std = x.pow(2).mean(0).sqrt()
    keep = std > 0
    z = x[:, keep] / std[keep]
    d = z.shape[1]
    if d < 2:
        return torch.zeros((), dtype=torch.float64, device=x.device)
    corr = z.T @ z / z.shape[0]
    return (corr.abs().sum() - corr.diagonal().abs().sum()) / (d * (d - 1))
