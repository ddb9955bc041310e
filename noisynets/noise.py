"""Noise sources: the intrinsic noise of a layer's nodes.

A noise source turns a layer's activity ``a`` into the perturbation ``eps`` that enters its
nodes, ``at = a + eps`` (ALGORITHMS.md, "Two passes"). Each source owns a seeded
``torch.Generator`` on the device of the activity it perturbs, so a seed fixes every draw.

Example::

    >>> import torch
    >>> from noisynets.noise import Gaussian
    >>> noise = Gaussian(std=0.1, seed=0)
    >>> eps = noise(torch.zeros(4, 3))
    >>> eps.shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NoiseSource(nn.Module):
    """Base class: ``forward(a)`` returns the perturbation ``eps`` of activity ``a``.

    Attributes a subclass declares:

    * ``additive`` -- ``eps`` does not depend on ``a`` (required by NP, which divides by the
      noise variance);
    * ``mean`` and ``variance`` -- the per-node statistics of ``eps`` for additive sources.
    """

    additive: bool = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        """Restart the source's random stream from ``seed``."""
        self.seed = int(seed)
        self._generator = None
        self.reset()

    def generator(self, device: torch.device) -> torch.Generator:
        """The source's generator on ``device`` (created, seeded, on first use there)."""
        g = self._generator
        if g is None or g.device != device:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generator = g
        return g

    def reset(self) -> None:
        """Forget any state carried between draws (stateless sources have none)."""

    @property
    def mean(self) -> float:
        raise NotImplementedError

    @property
    def variance(self) -> float:
        raise NotImplementedError

    def forward(self, a: Tensor) -> Tensor:
        raise NotImplementedError


class Gaussian(NoiseSource):
    """Gaussian node noise: ``eps ~ N(0, std^2)``, independent per node, sample and step."""

    def __init__(self, std: float = 1e-3, seed: int = 0) -> None:
        super().__init__(seed)
        self.std = float(std)

    @property
    def mean(self) -> float:
        return 0.0

    @property
    def variance(self) -> float:
        return self.std**2

    def forward(self, a: Tensor) -> Tensor:
        g = self.generator(a.device)
        return torch.randn(a.shape, generator=g, device=a.device, dtype=a.dtype) * self.std

    def extra_repr(self) -> str:
        return f"std={self.std:g}"
