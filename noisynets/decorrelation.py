"""The decorrelator: ``xh = R x`` with ``R`` learned so that a layer's inputs are decorrelated.

Update (docs/algorithms.md, "Decorrelation"), from ``m`` decorrelated inputs ``Xh``::

    C  = Xh^T Xh / m,  diagonal set to zero
    R <- R - eta_R * C R

``C R`` costs ``d^3`` when formed directly. When ``m < d`` it is computed as
``Xh^T (Xh R) / m - diag(mean(Xh^2)) R``, which costs about ``2 m d^2``.

A dense layer decorrelates its input vector (``d`` = its input features). A convolution
decorrelates its input *patches* (``d = in_channels / groups * kh * kw``), one ``R`` per group
of a grouped convolution: then ``R`` has shape ``(groups, d, d)``, the rows ``(groups, m, d)``
and every formula above holds per group.

Example::

    >>> import torch
    >>> from noisynets.decorrelation import Decorrelator
    >>> dec = Decorrelator(3)
    >>> x = torch.randn(500, 3) @ torch.tensor([[1., .9, 0.], [0., .4, 0.], [0., 0., 1.]])
    >>> for _ in range(200):
    ...     dec.update(dec(x), lr=0.05)
    >>> bool(mean_abs_correlation(dec(x)) < mean_abs_correlation(x))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Decorrelator(nn.Module):
    """Holds ``R`` (``d x d``, or ``groups x d x d``; the identity at first); ``xh = R x``."""

    def __init__(self, features: int, groups: int = 1) -> None:
        super().__init__()
        self.features = int(features)
        self.groups = int(groups)
        eye = torch.eye(self.features)
        self.register_buffer("R", eye if self.groups == 1 else eye.repeat(self.groups, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
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
