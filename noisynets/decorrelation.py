"""The decorrelator: ``xh = R x`` with ``R`` learned so that a layer's inputs are decorrelated.

Update (ALGORITHMS.md, "Decorrelation"), from ``m`` clean decorrelated inputs ``Xh``::

    C  = Xh^T Xh / m,  diagonal set to zero
    R <- R - eta_R * C R

``C R`` costs ``d^3`` when formed directly. When ``m < d`` it is computed as
``Xh^T (Xh R) / m - diag(mean(Xh^2)) R``, which costs about ``2 m d^2``.

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
    """Holds ``R`` (``d x d``, initialised to the identity) and applies ``xh = R x``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = int(features)
        self.register_buffer("R", torch.eye(self.features))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.R.T

    @torch.no_grad()
    def update(self, xh: Tensor, lr: float) -> None:
        """One step ``R <- R - lr * C R`` from decorrelated inputs ``xh`` of shape (m, d)."""
        m, d = xh.shape
        R = self.R
        if m < d:
            CR = xh.T @ (xh @ R) / m - xh.pow(2).mean(0)[:, None] * R
        else:
            C = xh.T @ xh / m
            C.fill_diagonal_(0.0)
            CR = C @ R
        R.sub_(CR, alpha=lr)

    def extra_repr(self) -> str:
        return f"features={self.features}"


def mean_abs_correlation(x: Tensor) -> Tensor:
    """Mean absolute off-diagonal Pearson correlation of the columns of ``x`` (m, d).

    Features with zero variance (a constant pixel, a silent unit) are left out.
    """
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
