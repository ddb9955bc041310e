"""Independent references for the tests: a brute-force forward and basis-direction noise.

``brute_force`` runs every pass and every time step on its own, with ``R`` applied to every row
(never folded into ``W``), replaying the noise a batched forward recorded. It shares nothing
with ``Network._forward`` but the layers' parameters and units, so an in-place add that leaks
one pass or step into another, a cached drive that accumulates noise, or a mis-sliced pass
shows up as a difference.

``Basis`` is noise made of basis directions: over its ``2 * total`` passes every node is pushed
by ``+c`` and ``-c`` once each and is still otherwise, so ``mean(eps eps^T) = s^2 I`` exactly with
``s^2 = c^2 / total``, and the second-order terms cancel between the two signs. With it NP and
INP must reproduce autograd's gradient up to ``O(c^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from noisynets import Network, Passes
from noisynets.noise import NoiseSource


class Recorded(NoiseSource):
    """Wraps a source and keeps a copy of every ``eps`` it returns (one call per time step)."""

    def __init__(self, inner: NoiseSource) -> None:
        super().__init__()
        self.inner = inner
        self.draws: list[Tensor] = []

    additive = property(lambda self: self.inner.additive)
    mean = property(lambda self: self.inner.mean)
    zero_mean = property(lambda self: self.inner.zero_mean)
    variance = property(lambda self: self.inner.variance)

    def summed_variance(self, steps: int) -> float:
        return self.inner.summed_variance(steps)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state) -> None:
        self.inner.set_state(state)

    def forward(self, a: Tensor) -> Tensor:
        eps = self.inner(a)
        self.draws.append(eps.detach().clone())
        return eps


def record_noise(net: Network) -> list[tuple[Recorded, Recorded | None]]:
    """Give every layer's activity and threshold noise a recording wrapper; returns them."""
    out = []
    for layer in net.layers:
        layer.noise = Recorded(layer.noise)
        if layer.threshold_noise is not None:
            layer.threshold_noise = Recorded(layer.threshold_noise)
        out.append((layer.noise, layer.threshold_noise))
    return out


@dataclass
class Brute:
    """Per pass, summed over time: ``activity[l][p]``; pass 0's ``inputs[l]``; ``loss[p]``."""

    activity: list[Tensor] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)
    loss: Tensor | None = None


@torch.no_grad()
def brute_force(
    net: Network,
    x: Tensor,
    y: Tensor,
    passes: Passes,
    noise: list[tuple[Recorded, Recorded | None]],
    spikes: list[Tensor] | None = None,
) -> Brute:
    """The forward of ``passes``, one pass and one step at a time, replaying recorded noise.

    ``noise`` holds what ``record_noise`` recorded during exactly one batched forward of the
    same plan; ``spikes`` the Poisson input of every step (``encoding="poisson"``).
    """
    B, T, L = x.shape[0], net.time_steps, net.num_layers
    activity = [torch.zeros(passes.count, B, n, dtype=x.dtype) for n in net.sizes[1:]]
    inputs = [torch.zeros(B, d, dtype=x.dtype) for d in net.sizes[:-1]]
    for source, threshold in noise:
        assert len(source.draws) in (0, T), "record exactly one forward"
        assert threshold is None or len(threshold.draws) in (0, T)
    losses = []
    for p in range(passes.count):
        states = [None] * L
        for t in range(T):
            h = spikes[t] if spikes is not None else x
            for k, layer in enumerate(net.layers):
                R = layer.decorrelator.R if layer.decorrelator is not None else None
                xh = h if R is None else torch.stack([R @ row for row in h])
                current = torch.stack([layer.weight @ row + layer.bias for row in xh])
                start, stop = passes.noisy[k]
                shift = None
                if start <= p < stop:
                    rows = slice((p - start) * B, (p - start + 1) * B)
                    current = current + noise[k][0].draws[t][rows]
                    if noise[k][1] is not None:
                        shift = noise[k][1].draws[t][rows]
                elif noise[k][1] is not None:
                    shift = torch.zeros_like(current)
                h, states[k] = layer.unit(current, states[k], shift)
                activity[k][p] += current
                if p == 0:
                    inputs[k] += xh
        losses.append(net.loss_fn(activity[-1][p] / T, y))
    return Brute(activity, inputs, torch.stack(losses))


class Basis(NoiseSource):
    """Noise of basis directions for a layer of ``n`` nodes at ``offset`` among ``total``.

    In a block of ``2 * total`` passes (``rows = 2 * total * B``) pass ``i`` pushes global node
    ``i // 2`` by ``+c`` (even ``i``) or ``-c`` (odd ``i``), in every sample and every time step;
    this layer sees the part of that push that falls on its own nodes. Over the block,
    ``mean(eps eps^T) = (c^2 / total) I`` and every node's mean is 0. The same push at every
    step sums to ``T eps``, so ``Var(sum_t eps_t) = T^2 c^2 / total``.
    """

    def __init__(self, c: float, n: int, offset: int, total: int, batch: int) -> None:
        super().__init__()
        self.c, self.n, self.offset, self.total, self.batch = c, n, offset, total, batch

    mean = 0.0

    @property
    def variance(self) -> float:
        return self.c**2 / self.total

    def summed_variance(self, steps: int) -> float:
        return steps**2 * self.variance

    def forward(self, a: Tensor) -> Tensor:
        count = 2 * self.total
        assert a.shape == (count * self.batch, self.n), a.shape
        eps = torch.zeros(count, self.batch, self.n, dtype=a.dtype)
        for i in range(count):
            node = i // 2 - self.offset
            if 0 <= node < self.n:
                eps[i, :, node] = self.c if i % 2 == 0 else -self.c
        return eps.view(count * self.batch, self.n)


def flat(grads) -> list[Tensor]:
    """Per layer, the weight and bias estimates in one vector."""
    return [torch.cat([w.flatten(), b]) for w, b in grads]
