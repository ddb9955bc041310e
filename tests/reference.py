"""Independent references for the tests: a brute-force forward and basis-direction noise.

``brute_force`` runs every pass and every time step of an ``nn.Sequential`` on its own, module
by module, with ``R`` applied to every row (never folded into ``W``), replaying the noise a
batched forward recorded. It shares nothing with the engine (``noisynets.core.forward``) but
the model's parameters and units, so an in-place add that leaks one pass or step into another,
a cached drive that accumulates noise, or a mis-sliced pass shows up as a difference.

``Basis`` is noise made of basis directions: over its ``2 * total`` passes every node is pushed
by ``+c`` and ``-c`` once each and is still otherwise, so ``mean(eps eps^T) = s^2 I`` exactly with
``s^2 = c^2 / total``, and the second-order terms cancel between the two signs. With it NP and
INP must reproduce autograd's gradient up to ``O(c^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from noisynets import Network, Passes
from noisynets.core.model import sequence
from noisynets.core.noise import NoiseSource
from noisynets.core.steps import reset_neurons


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


def weight_op_one_row(layer, row: Tensor) -> Tensor:
    """One sample through the layer's weight operation, ``R`` applied to the input vector or
    to every patch, never folded into ``W``: ``W (R x) + b``; a convolution as patches."""
    op, R = layer.op, None if layer.decorrelator is None else layer.decorrelator.R
    W = layer.weight  # the trained W itself, not the folded W R the module uses
    if not layer.conv:
        xh = row if R is None else R @ row
        out = W @ xh
        return out if op.bias is None else out + op.bias
    patches = F.unfold(row[None], op.kernel_size, op.dilation, op.padding, op.stride)[0]
    G = op.groups
    d = patches.shape[0] // G
    W = W.reshape(G, op.out_channels // G, d)
    outs = []
    for g in range(G):
        p = patches[g * d:(g + 1) * d]
        if R is not None:
            p = (R if R.dim() == 2 else R[g]) @ p
        outs.append(W[g] @ p)
    out = torch.cat(outs)
    if op.bias is not None:
        out = out + op.bias[:, None]
    h = (row.shape[1] + 2 * op.padding[0] - op.dilation[0] * (op.kernel_size[0] - 1) - 1) \
        // op.stride[0] + 1
    return out.view(op.out_channels, h, -1)


@torch.no_grad()
def brute_force(
    net: Network,
    x: Tensor,
    y: Tensor,
    passes: Passes,
    noise: list[tuple[Recorded, Recorded | None]],
    spikes: list[Tensor] | None = None,
) -> Brute:
    """The forward of ``passes``, one pass, step and sample at a time, replaying recorded noise.

    ``noise`` holds what ``record_noise`` recorded during exactly one batched forward of the
    same plan; ``spikes`` the Poisson input of every step (``encoding="poisson"``). Records the
    inputs as the network reports them: decorrelated for a dense layer, raw for a convolution.
    """
    B, T, L = x.shape[0], net.time_steps, net.num_layers
    for source, threshold in noise:
        assert len(source.draws) in (0, T), "record exactly one forward"
        assert threshold is None or len(threshold.draws) in (0, T)
    activity: list[Tensor | None] = [None] * L
    inputs: list[Tensor | None] = [None] * L
    losses = []
    index = {id(layer.op): k for k, layer in enumerate(net.layers)}
    modules = list(sequence(net.model))
    for p in range(passes.count):
        reset_neurons(net.model)  # every pass starts from rest
        for t in range(T):
            h = spikes[t] if spikes is not None else x
            for module in modules:
                k = index.get(id(module))
                if k is None:  # a node or a parameter-free operation
                    h = module(h)
                    h = (h[0] if isinstance(h, tuple) else h).to(x.dtype)
                    if isinstance(getattr(module, "spk", None), Tensor):  # a recurrent neuron's
                        module.spk = module.spk.to(x.dtype)  # spikes feed its weight next step
                    continue
                layer = net.layers[k]
                seen = h
                current = torch.stack([weight_op_one_row(layer, row) for row in h])
                start, stop = passes.noisy[k]
                shift = None
                if start <= p < stop:
                    rows = slice((p - start) * B, (p - start + 1) * B)
                    current = current + noise[k][0].draws[t][rows]
                    if noise[k][1] is not None:
                        shift = noise[k][1].draws[t][rows]
                elif noise[k][1] is not None:
                    shift = torch.zeros_like(current)
                if noise[k][1] is not None:
                    layer.unit.threshold_shift = shift
                if activity[k] is None:
                    activity[k] = torch.zeros(passes.count, *current.shape, dtype=x.dtype)
                activity[k][p] += current
                if p == 0:
                    if layer.decorrelator is not None and not layer.conv:
                        seen = torch.stack([layer.decorrelator.R @ row for row in seen])
                    inputs[k] = seen if t == 0 else inputs[k] + seen
                h = current
        losses.append(net.loss_fn(activity[-1][p].reshape(B, -1) / T, y))
    reset_neurons(net.model)
    return Brute([a.reshape(passes.count, B, -1) for a in activity],
                 [i.reshape(B, -1) for i in inputs], torch.stack(losses))


def use_basis_noise(net: Network, x: Tensor, y: Tensor, c: float, layerwise: bool) -> int:
    """Give every layer ``Basis`` noise (global node numbers for NP's all-layer passes, or each
    layer's own for INP's ``layerwise`` passes); returns the number of passes a block needs:
    ``2 N`` (NP) or ``2 max(n_l)`` with equal ``n_l`` (INP)."""
    record = net.run(x, y, Passes.clean(net.num_layers))
    sizes = [a.shape[-1] for a in record.activity]
    total, offset = sum(sizes), 0
    for layer, n in zip(net.layers, sizes):
        if layerwise:
            layer.noise = Basis(c, n, 0, n, x.shape[0])
        else:
            layer.noise = Basis(c, n, offset, total, x.shape[0])
        offset += n
    return 2 * (max(sizes) if layerwise else total)


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
        assert a.shape[0] == count * self.batch and a[0].numel() == self.n, a.shape
        eps = torch.zeros(count, self.batch, self.n, dtype=a.dtype, device=a.device)
        for i in range(count):
            node = i // 2 - self.offset
            if 0 <= node < self.n:
                eps[i, :, node] = self.c if i % 2 == 0 else -self.c
        return eps.view(a.shape)  # a feature map's nodes in their (C, H, W) order


def flat(grads) -> list[Tensor]:
    """Per layer, the weight and bias estimates (and a recurrent neuron's) in one vector."""
    return [torch.cat([g.flatten() for g in layer]) for layer in grads]


@torch.no_grad()
def hooked_brute_force(
    net: Network, x: Tensor, y: Tensor, passes: Passes,
    noise: list[tuple[Recorded, Recorded | None]],
) -> Brute:
    """The forward of ``passes`` for any model: the model itself, called once per pass on the
    ``B`` samples, with a plain forward hook on every weight operation that adds the noise
    the batched forward recorded for that pass and call. Shares nothing with the engine but
    the model; the inputs are reported as the engine reports them (``R x`` for a dense
    layer). The loss of each pass is the network's loss on what the model returned."""
    B, L = x.shape[0], net.num_layers
    activity: list[list[Tensor]] = [[] for _ in range(L)]
    inputs: list[Tensor | None] = [None] * L
    losses = []
    for p in range(passes.count):
        calls = [0] * L
        sums: list[Tensor | None] = [None] * L
        seen: list[Tensor | None] = [None] * L

        def hook(module, args, out, k, p=p, calls=calls, sums=sums, seen=seen):
            start, stop = passes.noisy[k]
            t = calls[k]
            calls[k] += 1
            if start <= p < stop:
                out = out + noise[k][0].draws[t][(p - start) * B:(p - start + 1) * B]
            sums[k] = out if sums[k] is None else sums[k] + out
            h = args[0].to(out.dtype)
            layer = net.layers[k]
            if layer.decorrelator is not None and not layer.conv:
                h = h @ layer.decorrelator.R.T
            seen[k] = h if seen[k] is None else seen[k] + h
            return out

        handles = [layer.op.register_forward_hook(
            lambda m, a, o, k=k: hook(m, a, o, k)) for k, layer in enumerate(net.layers)]
        try:
            reset_neurons(net.model)
            out = net.model(x)
        finally:
            for handle in handles:
                handle.remove()
            reset_neurons(net.model)
        for k in range(L):
            activity[k].append(sums[k].reshape(B, -1))
        if p == 0:
            inputs = [s.reshape(B, -1) for s in seen]
        if isinstance(out, tuple):
            series = out[0] if net.loss.reads == "spikes" else out[1]
            losses.append(net.loss.from_spikes(series, y))
        else:
            losses.append(net.loss.from_logits(out, y))
    return Brute([torch.stack(a) for a in activity], inputs, torch.stack(losses))
