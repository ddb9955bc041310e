"""NoisyLinear: a layer of noisy nodes, owning its weights, decorrelator, unit and noise.

For one time step with input ``x`` (ALGORITHMS.md, "Notation" and "Two passes")::

    xh = R x                      (R = I without decorrelation)
    a  = W xh + b                 activity: the node's input current
    at = a + eps                  only in the passes (rows) where the layer is noisy
    h  = unit(at)

Example::

    >>> import torch
    >>> from noisynets.layers import NoisyLinear
    >>> from noisynets.noise import Gaussian
    >>> from noisynets.units import make_unit
    >>> layer = NoisyLinear(4, 3, make_unit("tanh"), Gaussian(0.1), decorrelation=True)
    >>> xh = layer.decorrelate(torch.ones(2, 4))
    >>> layer.activity(xh).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisynets.decorrelation import Decorrelator
from noisynets.noise import NoiseSource


class NoisyLinear(nn.Module):
    """A dense layer of ``out_features`` noisy nodes with ``in_features`` inputs.

    ``noise`` enters the activity; the optional ``threshold_noise`` (spiking units) enters the
    threshold. Both act only in the passes where the layer is noisy.

    Weights are He-normal (``std = sqrt(2 / in_features)``), biases zero, ``R`` the identity.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        unit: nn.Module,
        noise: NoiseSource,
        decorrelation: bool = False,
        generator: torch.Generator | None = None,
        threshold_noise: NoiseSource | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = nn.Parameter(
            torch.randn(self.out_features, self.in_features, generator=generator)
            * math.sqrt(2.0 / self.in_features)
        )
        self.bias = nn.Parameter(torch.zeros(self.out_features))
        self.decorrelator = Decorrelator(self.in_features) if decorrelation else None
        self.unit = unit
        self.noise = noise
        self.threshold_noise = threshold_noise

    def decorrelate(self, x: Tensor) -> Tensor:
        """``xh = R x`` (``x`` itself when the layer does not decorrelate)."""
        return x if self.decorrelator is None else self.decorrelator(x)

    def activity(self, xh: Tensor) -> Tensor:
        """``a = W xh + b``."""
        return F.linear(xh, self.weight, self.bias)

    def folded_weight(self) -> Tensor:
        """``W R``, so that ``a = (W R) x + b`` (``W`` itself without decorrelation)."""
        return self.weight if self.decorrelator is None else self.weight @ self.decorrelator.R

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
