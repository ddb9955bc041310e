"""Network: a stack of noisy layers that runs its clean and noisy passes as one batched forward.

One forward serves every unit type: a stateless unit is the ``T = 1`` case of the loop over
time steps. For ``P`` passes of a batch of ``B`` samples the network stacks ``P`` copies of the
batch (``P * B`` rows); pass ``p`` occupies rows ``p*B .. (p+1)*B``. A ``Passes`` plan says, per
layer, which passes carry that layer's noise. Per time step ``t`` and layer ``l``::

    xh_{l-1,t} = R_l x_{l-1,t}
    I_{l,t}    = W_l xh_{l-1,t} + b_l (+ eps_{l,t} in the layer's noisy passes)
    x_{l,t}    = unit_l(I_{l,t})

and what a rule observes is summed over the ``T`` steps (ALGORITHMS.md, "Units"): the activity
``a_l = sum_t I_{l,t}`` of every pass, the reference pass's input ``xh_{l-1} = sum_t xh_{l-1,t}``
and each pass's loss on the logits ``a_L / T``. That is the ``Record``. It never holds the noise:
the noise values leave a layer only through ``run_reading_noise``, the accessible-noise path
that NP needs.

Example::

    >>> import torch
    >>> from noisynets.network import Network, Passes
    >>> net = Network([4, 8, 3], noise_std=0.1, seed=0)
    >>> rec = net.run(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]), Passes.perturbed(2, 1))
    >>> rec.activity[0].shape, rec.loss.shape
    (torch.Size([2, 5, 8]), torch.Size([2, 5]))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from snntorch import spikegen
from torch import Tensor, nn

from noisynets.layers import NoisyLinear
from noisynets.losses import LOSSES
from noisynets.noise import Gaussian, Logistic, NoiseSource
from noisynets.units import make_unit

ENCODINGS: tuple[str, ...] = ("current", "poisson")


@dataclass(frozen=True)
class Passes:
    """A plan of ``count`` passes; ``noisy[l] = (start, stop)``: the passes noisy in layer ``l``."""

    count: int
    noisy: tuple[tuple[int, int], ...]

    @staticmethod
    def clean(num_layers: int, both_noisy: bool = False) -> Passes:
        """One pass: noise-free, or noisy when the network cannot switch its noise off."""
        return Passes(1, ((0, 1 if both_noisy else 0),) * num_layers)

    @staticmethod
    def perturbed(num_layers: int, samples: int = 1, both_noisy: bool = False) -> Passes:
        """A reference pass and ``samples`` passes with every layer noisy (NP, ANP)."""
        start = 0 if both_noisy else 1
        return Passes(1 + samples, ((start, 1 + samples),) * num_layers)

    @staticmethod
    def layerwise(num_layers: int, samples: int = 1) -> Passes:
        """A clean pass and ``samples`` passes per layer, each noisy in that layer only (INP)."""
        blocks = tuple((1 + k * samples, 1 + (k + 1) * samples) for k in range(num_layers))
        return Passes(1 + num_layers * samples, blocks)


@dataclass
class Record:
    """What a system can report of one batched forward: no noise values.

    * ``inputs[l]``   -- (B, d_l): layer l's decorrelated input of the reference pass (pass 0),
      summed over time steps;
    * ``activity[l]`` -- (P, B, n_l): layer l's activity in every pass, summed over time steps;
    * ``loss``        -- (P, B): the per-sample loss of every pass;
    * ``time_steps``  -- T;
    * ``outputs`` and ``membrane`` -- per layer (T, P, B, n_l), only when asked for (traces).
    """

    inputs: list[Tensor]
    activity: list[Tensor]
    loss: Tensor
    time_steps: int
    outputs: list[Tensor] | None = None
    membrane: list[Tensor] | None = None

    @property
    def logits(self) -> Tensor:
        """(P, B, C): the readout of every pass, the output layer's summed drive over T."""
        return self.activity[-1] / self.time_steps


class Network(nn.Module):
    """A fully connected network of noisy layers.

    Args:
        sizes: ``[d_0, n_1, ..., n_L]``, input features then the nodes of every layer.
        unit: hidden units (see ``noisynets.units.UNITS``); the output layer is ``identity``.
        noise: a noise source template, copied into every layer and reseeded there, or one
            source per layer. Default ``Gaussian(noise_std)``.
        decorrelation: give every layer a decorrelator ``R``.
        decorrelation_lr: ``eta_R``; decorrelation_fraction: the share of the batch whose
            clean inputs form the correlation estimate.
        both_noisy: the noise cannot be switched off, so even the reference pass is noisy.
        time_steps: ``T``, the number of time steps (LIF units; 1 for stateless units).
        encoding: ``current`` (the data as a constant input each step) or ``poisson``.
        loss: ``ce`` or ``mse``.
        beta, threshold: the LIF neurons' membrane decay and threshold.
        threshold_noise: the std of Gaussian noise on the LIF threshold (0: none).
        seed: fixes the weights and every layer's noise stream.

    A ``stochastic_binary`` network's hidden layers carry logistic noise of scale 1 (their
    units are Bernoulli(sigmoid(a)) in the noisy passes); ``noise`` then applies to the
    output layer.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        unit: str = "leaky_relu",
        noise: NoiseSource | Sequence[NoiseSource] | None = None,
        noise_std: float = 1e-3,
        decorrelation: bool = False,
        decorrelation_lr: float = 1e-3,
        decorrelation_fraction: float = 1.0,
        both_noisy: bool = False,
        time_steps: int = 1,
        encoding: str = "current",
        loss: str = "ce",
        beta: float = 0.9,
        threshold: float = 1.0,
        threshold_noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes {sizes} must list the input size and >= 1 layer, all >= 1")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}")
        if int(time_steps) < 1:
            raise ValueError(f"time_steps {time_steps} must be >= 1")
        if not 0.0 < decorrelation_fraction <= 1.0:
            raise ValueError(f"decorrelation_fraction {decorrelation_fraction} must be in (0, 1]")
        num_layers = len(sizes) - 1
        if noise is None:
            noise = Gaussian(noise_std)
        if isinstance(noise, NoiseSource):
            noise = [copy.deepcopy(noise) for _ in range(num_layers)]
        if len(noise) != num_layers:
            raise ValueError(f"got {len(noise)} noise sources for {num_layers} layers")
        if unit == "stochastic_binary":
            noise = [Logistic(scale=1.0) for _ in range(num_layers - 1)] + [noise[-1]]
        if threshold_noise < 0 or (threshold_noise > 0 and unit != "lif"):
            raise ValueError(f"threshold_noise {threshold_noise} needs lif units and must be >= 0")

        g = torch.Generator().manual_seed(int(seed))
        layers = []
        for k in range(num_layers):
            hidden = k < num_layers - 1
            layer = NoisyLinear(
                sizes[k],
                sizes[k + 1],
                make_unit(unit if hidden else "identity", beta=beta, threshold=threshold),
                noise[k],
                decorrelation=decorrelation,
                generator=g,
                threshold_noise=Gaussian(threshold_noise) if threshold_noise and hidden else None,
            )
            layer.noise.reseed(int(torch.randint(2**62, (1,), generator=g)))
            if layer.threshold_noise is not None:
                layer.threshold_noise.reseed(int(torch.randint(2**62, (1,), generator=g)))
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.sizes = sizes
        self.unit = unit
        self.decorrelation_lr = float(decorrelation_lr)
        self.decorrelation_fraction = float(decorrelation_fraction)
        self.both_noisy = bool(both_noisy)
        self.time_steps = int(time_steps)
        self.encoding = encoding
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_nodes(self) -> int:
        """N = n_1 + ... + n_L, the number of perturbed nodes."""
        return sum(self.sizes[1:])

    @property
    def decorrelated(self) -> bool:
        return self.layers[0].decorrelator is not None

    def run(self, x: Tensor, y: Tensor, passes: Passes, keep_states: bool = False) -> Record:
        """The batched forward of ``passes.count`` passes of batch ``x`` with labels ``y``."""
        return self._forward(x, y, passes, None, keep_states)

    def run_reading_noise(
        self, x: Tensor, y: Tensor, passes: Passes
    ) -> tuple[Record, list[Tensor]]:
        """``run``, and the accessible-noise path: per layer the noise it injected, summed over
        time, shape (noisy passes, B, n_l). Only rules that need the noise values call this."""
        noise: list[Tensor] = []
        record = self._forward(x, y, passes, noise, False)
        return record, noise

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, C) of one pass: noise-free, or noisy when the noise is intrinsic."""
        dummy = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        record = self._forward(x, dummy, Passes.clean(self.num_layers, self.both_noisy))
        return record.logits[0]

    def _forward(
        self,
        x: Tensor,
        y: Tensor,
        passes: Passes,
        noise_out: list[Tensor] | None = None,
        keep_states: bool = False,
    ) -> Record:
        B, P, T = x.shape[0], passes.count, self.time_steps
        L = self.num_layers
        # a = W (R x) = (W R) x: where decorrelating every row of every step costs more than
        # forming W R once, a layer uses W R, and R is applied once to its summed input.
        # (The first layer decorrelates B rows once, or once per step for spike input.)
        rows = [B if self.encoding == "current" else T * B] + [T * P * B] * (L - 1)
        folded = [
            layer.folded_weight() if layer.decorrelator is not None
            and n > layer.out_features + B else None
            for layer, n in zip(self.layers, rows)
        ]
        states: list[Any] = [None] * L
        activity: list[Tensor] = [x] * L  # placeholders, replaced at t = 0
        seen: list[Tensor] = [x] * L  # each layer's input (R x unless folded), summed over T
        noise_sum: list[Tensor] = [x] * L
        outputs: list[list[Tensor]] = [[] for _ in range(L)]
        membrane: list[list[Tensor]] = [[] for _ in range(L)]
        first: tuple[Tensor, Tensor] | None = None
        for t in range(T):
            h = spikegen.rate_conv(x) if self.encoding == "poisson" else x
            for k, layer in enumerate(self.layers):
                if k == 0 and first is not None and self.encoding == "current":
                    xh, current = first  # the same input at every step
                else:
                    if folded[k] is not None:
                        xh, current = h, F.linear(h, folded[k], layer.bias)
                    else:
                        xh = layer.decorrelate(h)
                        current = layer.activity(xh)
                    if k == 0:
                        # The first layer's input is the same in every pass: one product for all.
                        current = current.repeat(P, 1) if P > 1 else current
                        first = (xh, current)
                start, stop = passes.noisy[k]
                shift = None
                if stop > start:
                    if k == 0 and T > 1 and self.encoding == "current":
                        current = current.clone()  # the cached drive stays noise-free
                    noisy = slice(start * B, stop * B)
                    eps = layer.noise(current[noisy])
                    current[noisy] += eps
                    if noise_out is not None:
                        noise_sum[k] = eps if t == 0 else noise_sum[k] + eps
                    if layer.threshold_noise is not None:
                        shift = torch.zeros_like(current)
                        shift[noisy] = layer.threshold_noise(current[noisy])
                h, states[k] = layer.unit(current, states[k], shift)
                seen[k] = xh[:B] if t == 0 else seen[k] + xh[:B]
                if t == 0:
                    activity[k] = current
                elif t == 1:
                    activity[k] = activity[k] + current
                else:
                    activity[k] += current  # a tensor of this forward's own, summed in place
                if keep_states:
                    outputs[k].append(h.detach())
                    if states[k] is not None:
                        membrane[k].append(states[k][0].detach())
        activity = [a.view(P, B, -1) for a in activity]
        logits = activity[-1] / T
        loss = self.loss_fn(logits.reshape(P * B, -1), y.repeat(P)).view(P, B)
        if noise_out is not None:
            for k, (start, stop) in enumerate(passes.noisy):
                if stop > start:
                    noise_out.append(noise_sum[k].view(stop - start, B, -1))
                else:
                    noise_out.append(torch.zeros(0, B, self.sizes[k + 1], device=x.device))
        inputs = [
            layer.decorrelate(s) if f is not None else s
            for layer, s, f in zip(self.layers, seen, folded)
        ]
        record = Record(inputs, activity, loss, T)
        if keep_states:
            record.outputs = [torch.stack(o).view(T, P, B, -1) for o in outputs]
            record.membrane = [
                torch.stack(m).view(T, P, B, -1) if m else None for m in membrane
            ]
        return record

    @contextmanager
    def untouched_noise(self) -> Iterator[None]:
        """Forwards run inside leave every noise stream, and torch's global random state (the
        Poisson encoding's), where they were: diagnostics and traces do not change a run."""
        sources = [m for m in self.modules() if isinstance(m, NoiseSource)]
        saved = [m.get_state() for m in sources]
        cuda = [p.device.index or 0 for p in self.parameters() if p.device.type == "cuda"][:1]
        try:
            with torch.random.fork_rng(devices=cuda):
                yield
        finally:
            for source, state in zip(sources, saved):
                source.set_state(state)

    @torch.no_grad()
    def update_decorrelation(self, record: Record) -> None:
        """One decorrelation step of every layer from the reference pass's inputs (mean over T).

        The correlation is estimated from the first ``ceil(fraction * B)`` samples of the batch
        (a random subsample when the batches are shuffled).
        """
        if not self.decorrelated:
            return
        B = record.inputs[0].shape[0]
        m = max(1, math.ceil(self.decorrelation_fraction * B))
        for layer, xh in zip(self.layers, record.inputs):
            layer.decorrelator.update(xh[:m].detach() / record.time_steps, self.decorrelation_lr)

    def set_gradients(self, grads: Sequence[tuple[Tensor, Tensor]]) -> None:
        """Write estimates ``(g_W_l, g_b_l)`` into ``.grad`` for a torch optimizer to apply."""
        for layer, (g_w, g_b) in zip(self.layers, grads):
            layer.weight.grad = g_w
            layer.bias.grad = g_b
