"""Network: any network of noisy nodes, run as one batched forward of its clean and noisy passes.

A network is weight operations (``nn.Linear``, ``nn.Conv2d``) whose outputs drive nodes (a torch
activation, a discontinuous or stochastic unit, an snntorch neuron), with parameter-free
operations (flatten, pooling, dropout) in between: an ``nn.Sequential``, nested ones included.
``Network(sizes, unit=...)`` builds a fully connected one; ``Network(model)`` (or
``noisynets.wrap(model)``) takes the user's own. The last weight operation's output is the
readout node: its activity, averaged over the T time steps, is the logits -- or, when the
model ends with a spiking neuron after it (a spiking readout), that neuron's spike counts or
peak membrane (``readout``).

One forward serves every network: a stateless unit is the ``T = 1`` case of the loop over time
steps. For ``P`` passes of a batch of ``B`` samples the network stacks ``P`` copies of the batch
(``P * B`` rows); pass ``p`` occupies rows ``p*B .. (p+1)*B``. A ``Passes`` plan says, per
layer, which passes carry that layer's noise. Per time step ``t`` and layer ``l``::

    h_{l,t}   = pre_l(x_{l-1,t})                      (x_{0,t}: the data, or its spikes)
    I_{l,t}   = mid_l(op_l(h_{l,t}; W_l R_l, b_l)) (+ eps_{l,t} in the layer's noisy passes)
    x_{l,t}   = unit_l(I_{l,t})         (a recurrent neuron adds V_l x_{l,t-1} + c_l itself)

and what a rule observes is summed over the ``T`` steps (docs/algorithms.md, "Time steps"):
the activity ``a_l = sum_t I_{l,t}`` of every pass, the reference pass's input of every weight
operation and each pass's loss on the logits ``a_L / T``. That is the ``Record``. It never holds
the noise: the noise values leave a layer only through ``run_reading_noise``, the
accessible-noise path that NP needs. With ``per_step=True`` the rules take their products at
every step instead (``step_gradients``: the forward replayed on the same noise, an ``on_step``
hook adding each step's product).

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
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import snntorch as snn
import torch
from snntorch import spikegen
from torch import Tensor, nn

from noisynets.core.analog import ADC, PCMWeights, make_adc, make_weight_noise
from noisynets.core.losses import LOSSES
from noisynets.core.noise import Gaussian, Logistic, NoiseSource, make_noise
from noisynets.core.precision import PRECISIONS, difference_dtype
from noisynets.core.units import ACTIVATIONS, LIF, StochasticBinary, discontinuous
from noisynets.core.validate import check_forward
from noisynets.layers import WEIGHT_OPS, Layer
from noisynets.models import he_normal, mlp
from noisynets.parallel import Shard, all_reduce_sum

ENCODINGS: tuple[str, ...] = ("current", "poisson", "sequence")

# Parameter-free operations a network may hold between its weight operations and nodes.
FREE_OPS: tuple[type[nn.Module], ...] = (
    nn.Flatten, nn.Unflatten, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Dropout,
)
# Modules that mix the rows of a batch (and so the passes) or carry state across time.
REFUSED: dict[tuple[type[nn.Module], ...], str] = {
    (nn.modules.batchnorm._NormBase,): (
        "it normalises with statistics of the batch, which mixes the stacked passes of a "
        "sample: remove it (or fold it into the weights of the layer before)"
    ),
    (nn.RNNBase, nn.RNNCellBase): (
        "recurrent layers are not supported: node perturbation here needs a feed-forward "
        "network (spiking neurons with their own membrane state are fine)"
    ),
    (snn.SLSTM, snn.SConv2dLSTM): (
        "spiking LSTMs are not supported: their gates are weight operations inside the "
        "neuron; use snn.Leaky or snn.Synaptic after an nn.Linear/nn.Conv2d"
    ),
}


@dataclass(frozen=True)
class Passes:
    """A plan of ``count`` passes; ``noisy[l] = (start, stop)``: the passes noisy in layer ``l``.

    ``antithetic``: the noisy passes of every layer come in antithetic pairs: of its
    ``2K`` noisy passes, pass ``start + K + j`` carries the negated noise of pass ``start + j``
    (``eps``, ``-eps``; ``mirrored``). It needs noise the system draws and can negate.
    """

    count: int
    noisy: tuple[tuple[int, int], ...]
    antithetic: bool = False

    @staticmethod
    def clean(num_layers: int, both_noisy: bool = False) -> Passes:
        """One pass: noise-free, or noisy when the network cannot switch its noise off."""
        return Passes(1, ((0, 1 if both_noisy else 0),) * num_layers)

    @staticmethod
    def perturbed(
        num_layers: int, samples: int = 1, both_noisy: bool = False, antithetic: bool = False
    ) -> Passes:
        """A reference pass and ``samples`` passes with every layer noisy (NP, ANP);
        ``antithetic``: ``samples`` pairs of passes, ``2 * samples`` noisy passes."""
        if antithetic and both_noisy:
            raise ValueError(ANTITHETIC_INTRINSIC)
        samples *= 2 if antithetic else 1
        start = 0 if both_noisy else 1
        return Passes(1 + samples, ((start, 1 + samples),) * num_layers, antithetic)

    @staticmethod
    def layerwise(num_layers: int, samples: int = 1, antithetic: bool = False) -> Passes:
        """A clean pass and ``samples`` passes per layer, each noisy in that layer only (INP);
        ``antithetic``: ``samples`` pairs of passes per layer."""
        samples *= 2 if antithetic else 1
        blocks = tuple((1 + k * samples, 1 + (k + 1) * samples) for k in range(num_layers))
        return Passes(1 + num_layers * samples, blocks, antithetic)


ANTITHETIC_INTRINSIC = (
    "antithetic noise pairs need noise the system draws and can negate; the network's noise is "
    "intrinsic in both passes: turn antithetic off (drop --antithetic)"
)


def mirrored(eps: Tensor, B: int) -> Tensor:
    """Antithetic pairs: the rows of ``2K`` passes of ``B`` samples, the second ``K`` passes
    replaced by the negated first ``K`` (``[eps_1..eps_K, -eps_1..-eps_K]``)."""
    if eps.shape[0] % (2 * B):
        raise ValueError(f"antithetic pairs need an even number of noisy passes, got "
                         f"{eps.shape[0] // B}")
    half = eps.shape[0] // 2
    return torch.cat([eps[:half], -eps[:half]])


@dataclass
class Record:
    """What a system can report of one batched forward: no noise values. It is the
    observation every perturbation rule estimates from (``Rule.estimate``), also when a
    system outside torch reports it (``noisynets.observer``).

    * ``inputs[l]``   -- (B, d_l): layer l's input in the reference pass (pass 0), summed over
      time steps, flattened: decorrelated (``xh = R x``) for a dense layer, the raw feature
      maps for a convolution (whose ``R`` acts on patches, folded into the kernel);
    * ``activity[l]`` -- (P, B, n_l): layer l's activity in every pass, summed over time steps,
      flattened (a feature map's channels, rows and columns);
    * ``loss``        -- (P, B): the per-sample loss of every pass;
    * ``time_steps``  -- T;
    * ``outputs`` and ``membrane`` -- per layer (T, P, B, n_l), only when asked for (traces);
    * ``recurrent_inputs`` -- per layer (B, n_l), the reference pass's previous-step spikes
      ``sum_t S_{l,t-1}`` that a recurrent neuron's (``RLeaky``, ``RSynaptic``) recurrent
      weight acts on, summed over the steps; None for other layers;
    * ``readout`` -- (P, B, C), a spiking readout's logits: its spike counts ``sum_t S_t``
      (``readout="spikes"``) or its peak membrane ``max_t U_t`` (``"membrane"``); else None;
    * ``local_loss`` -- with local losses, per hidden layer k (P, B): the loss of its readout
      head ``loss(H_k x_k, y)`` in every pass, ``x_k`` its output averaged over the T steps;
    * ``local_inputs`` -- with local losses, per hidden layer (B, n_k): the reference pass's
      ``x_k`` (averaged over the steps), the input the heads learn from; else None.
    """

    inputs: list[Tensor]
    activity: list[Tensor]
    loss: Tensor
    time_steps: int
    outputs: list[Tensor] | None = None
    membrane: list[Tensor | None] | None = None
    readout: Tensor | None = None
    recurrent_inputs: list[Tensor | None] | None = None
    local_loss: list[Tensor] | None = None
    local_inputs: list[Tensor] | None = None

    @property
    def logits(self) -> Tensor:
        """(P, B, C): the readout of every pass: the output layer's summed drive over T, or a
        spiking readout's ``readout``."""
        if self.readout is not None:
            return self.readout
        return self.activity[-1] / self.time_steps


LossFn = Callable[[Tensor, Tensor], Tensor]
# ``scales(record, squares) -> [((lo, hi), c_l)]`` of a rule's per-step signal, per layer.
StepScales = Callable[["Record", list[Tensor]], list[tuple[tuple[int, int], Tensor]]]
# ``on_step(layer, t, xh_t, I_t, eps_t, s_t)`` after layer ``layer``'s nodes fired at step
# ``t``: its reference input ``xh_t`` (B, ...), its input current ``I_t`` of every pass
# (P B, ...), the noise ``eps_t`` of its noisy passes (None where it has none) and, for a
# recurrent neuron, the reference pass's previous-step spikes ``s_t = S_{t-1}`` (else None).
StepHook = Callable[[int, int, Tensor, Tensor, "Tensor | None", "Tensor | None"], None]
READOUTS: tuple[str, ...] = ("spikes", "membrane")
# Parameter-free operations that are linear: between a weight operation and its nodes the
# product at the summed input equals the sum of the per-step products.
LINEAR_FREE_OPS: tuple[type[nn.Module], ...] = (
    nn.Flatten, nn.Unflatten, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)


class Network(nn.Module):
    """A network of noisy nodes: a fully connected stack, or the user's own ``nn.Sequential``.

    Args:
        model: ``[d_0, n_1, ..., n_L]`` (input features, then the nodes of every layer) builds
            a fully connected network of ``unit`` nodes; an ``nn.Sequential`` is wrapped as it
            is, and trained in place (its ``state_dict`` stays its own).
        unit: the hidden units of a built network (see ``noisynets.core.units.UNITS``).
        noise: a noise source (or spec, e.g. ``"telegraph:switch=0.1"``) copied into every
            layer and reseeded there, or one source per layer. Default ``Gaussian(noise_std)``.
        noise_std: the noise scale of a spec and of the default.
        decorrelation: give every layer a decorrelator ``R``.
        decorrelation_lr: ``eta_R``; decorrelation_fraction: the share of the batch whose
            reference inputs form the correlation estimate.
        both_noisy: the noise cannot be switched off, so even the reference pass is noisy.
        time_steps: ``T``, the number of time steps (spiking units; 1 for stateless ones).
        encoding: ``current`` (the data as a constant input each step), ``poisson`` (its
            Poisson spikes) or ``sequence`` (inputs of shape (B, T, ...): step t gets
            ``x[:, t]``, a time-varying input).
        loss: ``ce``, ``mse`` or a callable ``loss(logits, target)`` returning one loss per
            sample.
        precision: the number format of the noisy passes' difference products
            (``noisynets.core.precision.PRECISIONS``; ``auto``: bfloat16 where the hardware makes it
            faster, else the network's own dtype).
        beta, threshold: the LIF neurons' membrane decay and threshold (built networks).
        threshold_noise: the std of Gaussian noise on the threshold of ``units.LIF`` nodes.
        per_step: the perturbation rules take per-step products ``g_W = sum_t e_t xh_t^T``
            instead of the paper's ``e (sum_t xh_t)^T`` with ``e`` from the summed activity
            (docs/algorithms.md, "Per-step products"): the forward runs twice on the same
            noise, memory flat in T.
        readout: a spiking readout's logits (a model ending with a neuron after its last
            weight operation): ``spikes`` (spike counts, the default) or ``membrane`` (the peak
            membrane potential over the steps).
        seed: fixes the weights of a built network and every layer's noise stream.
        weight_noise: noise in the weights (``noisynets.core.analog.PCMWeights`` or its spec, e.g.
            ``"pcm:time=3600"``), intrinsic: no rule reads it.
        adc: the ADC the recorded activities are read through (``noisynets.core.analog.ADC`` or a
            spec, e.g. ``"bits=6,range=4"``): the rules see quantised values only.
        local_losses: give every hidden layer k a linear readout head ``H_k`` (n_k -> C, bias
            on; ``heads``) whose loss ``loss(H_k x_k, y)`` drives that layer's ANP estimate
            (docs/algorithms.md, "Local losses"); dense hidden layers only. The heads are part
            of the state and the trained parameters, not of the folded model.

    Nodes whose unit is ``StochasticBinary`` carry logistic noise of scale 1 (their units are
    Bernoulli(sigmoid(a)) in the noisy passes) instead of ``noise``.
    """

    def __init__(
        self,
        model: Sequence[int] | nn.Module,
        unit: str = "leaky_relu",
        noise: NoiseSource | str | Sequence[NoiseSource] | None = None,
        noise_std: float = 1e-3,
        decorrelation: bool = False,
        decorrelation_lr: float = 1e-3,
        decorrelation_fraction: float = 1.0,
        both_noisy: bool = False,
        time_steps: int = 1,
        encoding: str = "current",
        loss: str | LossFn = "ce",
        precision: str = "auto",
        beta: float = 0.9,
        threshold: float = 1.0,
        threshold_noise: float = 0.0,
        per_step: bool = False,
        readout: str = "spikes",
        seed: int = 0,
        weight_noise: PCMWeights | str | None = None,
        adc: ADC | str | None = None,
        local_losses: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}, or "
                                 "pass a function loss(logits, target) -> one loss per sample")
            self.loss_name, self.loss_fn = loss, LOSSES[loss]
        elif callable(loss):
            self.loss_name, self.loss_fn = getattr(loss, "__name__", "custom"), loss
        else:
            raise TypeError(f"loss {loss!r} must be a name ({', '.join(LOSSES)}) or a function")
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}")
        if isinstance(time_steps, bool) or int(time_steps) != time_steps or time_steps < 1:
            raise ValueError(f"time_steps {time_steps!r} must be an integer >= 1")
        if not 0.0 < decorrelation_fraction <= 1.0:
            raise ValueError(f"decorrelation_fraction {decorrelation_fraction} must be in (0, 1]")
        if threshold_noise < 0:
            raise ValueError(f"threshold_noise {threshold_noise} must be >= 0")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}: choose one of {', '.join(READOUTS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: choose one of "
                             f"{', '.join(PRECISIONS)}")

        # One generator, drawn in layer order: a built network's weights of layer l, then the
        # seeds of its noise sources.
        g = torch.Generator().manual_seed(int(seed))
        if isinstance(model, nn.Module):
            self.model = model
            self.sizes = None
        else:
            self.sizes = [int(s) for s in model]
            if len(self.sizes) < 2 or min(self.sizes) < 1 or list(model) != self.sizes:
                raise ValueError(f"sizes {list(model)} must list the input size and >= 1 "
                                 "layer, all integers >= 1")
            with torch.random.fork_rng(devices=[]):  # the seed sets the weights, below
                self.model = mlp(self.sizes, unit, beta, threshold)
        specs = parse(self.model)
        if threshold_noise > 0 and not any(isinstance(s[3], LIF) for s in specs[:-1]):
            raise ValueError(f"threshold_noise {threshold_noise:g} needs noisynets.core.units.LIF "
                             "nodes (--unit lif)")
        sources = noise_sources(noise, noise_std, len(specs))
        layers = []
        for k, (pre, op, mid, node_unit) in enumerate(specs):
            if self.sizes is not None:
                he_normal(op, g)
            source = Logistic(scale=1.0) if isinstance(node_unit, StochasticBinary) else sources[k]
            layer = Layer(
                op, pre, mid, node_unit, source, decorrelation=decorrelation,
                threshold_noise=Gaussian(threshold_noise) if threshold_noise
                and isinstance(node_unit, LIF) else None,
            )
            layer.noise.reseed(int(torch.randint(2**62, (1,), generator=g)))
            if layer.threshold_noise is not None:
                layer.threshold_noise.reseed(int(torch.randint(2**62, (1,), generator=g)))
            layers.append(layer)
        for below, layer in zip(layers, layers[1:]):  # inputs that change in few entries
            layer.event_driven = discontinuous(below.unit) and not layer.conv
        self.layers = nn.ModuleList(layers)
        self.unit = unit if self.sizes is not None else "custom"
        self.decorrelation_lr = float(decorrelation_lr)
        self.decorrelation_fraction = float(decorrelation_fraction)
        self.both_noisy = bool(both_noisy)
        self.time_steps = int(time_steps)
        self.encoding = encoding
        self.precision = precision
        self.per_step = bool(per_step)
        self.readout = readout
        self.spiking_readout = self.layers[-1].spiking
        self.shard: Shard | None = None  # set by ``sharded``
        self._told_fixed = False
        self.weight_noise = make_weight_noise(weight_noise)
        if self.weight_noise is not None:
            self.weight_noise.reseed(int(torch.randint(2**62, (1,), generator=g)))
        self.adc = make_adc(adc)
        self.local_losses = bool(local_losses)
        self.heads: nn.ModuleList | None = None
        if self.local_losses:
            self.check_local_losses()
            self.heads = nn.ModuleList(self._heads(g))

    def _heads(self, g: torch.Generator) -> list[nn.Linear]:
        """One readout head ``H_k`` (n_k -> C, bias on) per hidden layer, He-normal weights from
        the network's generator (drawn after everything else it draws), zero biases."""
        last = self.layers[-1].weight
        heads = []
        for layer in self.layers[:-1]:
            head = nn.Linear(layer.out_features, self.layers[-1].out_features)
            with torch.no_grad():
                he_normal(head, g)
            heads.append(head.to(last.device, last.dtype))
        return heads

    def check_local_losses(self) -> None:
        """Local losses need hidden layers whose nodes are a dense layer's outputs (the heads
        read them flattened, ``n_k`` of them) and summed products."""
        if self.num_layers < 2:
            raise ValueError("local losses need at least one hidden layer: add one, or drop "
                             "local losses (--local-losses)")
        if self.per_step:
            raise ValueError("local losses are built for summed products: drop per-step products "
                             "(--per-step-products) or local losses (--local-losses)")
        for k, layer in enumerate(self.layers):
            if layer.conv or layer.mid:
                kind = "a convolution" if layer.conv else "pooling before its nodes"
                raise ValueError(f"local losses need dense hidden layers, but layer {k + 1} has "
                                 f"{kind}: use an mlp (--arch mlp) or drop local losses "
                                 "(--local-losses)")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def decorrelated(self) -> bool:
        return self.layers[0].decorrelator is not None

    @contextmanager
    def sharded(self, shard: Shard | None) -> Iterator[None]:
        """Forwards and decorrelation updates inside run on this rank's ``shard`` of a global
        batch (``noisynets.parallel``): ``x`` holds the rank's rows, every random draw is made
        for the whole global batch and ``R`` learns from the global batch's rows. ``None``:
        the whole batch, as always."""
        previous, self.shard = self.shard, shard
        try:
            yield
        finally:
            self.shard = previous

    def _draw(self, draw: Callable[[Tensor], Tensor], a: Tensor) -> Tensor:
        """``draw(a)`` (noise, spikes): of the global batch, this rank's rows, when sharded."""
        return draw(a) if self.shard is None else self.shard.drawn_globally(draw, a)

    def run(self, x: Tensor, y: Tensor, passes: Passes, keep_states: bool = False) -> Record:
        """The batched forward of ``passes.count`` passes of batch ``x`` with targets ``y``."""
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
        record = self._forward(x, dummy, Passes.clean(self.num_layers, self.both_noisy),
                               loss=False)
        return record.logits[0]

    def _forward(
        self,
        x: Tensor,
        y: Tensor,
        passes: Passes,
        noise_out: list[Tensor] | None = None,
        keep_states: bool = False,
        loss: bool = True,
        on_step: StepHook | None = None,
    ) -> Record:
        last = self.layers[-1]
        check_forward(x, y, passes, self.num_layers, None if last.conv else last.out_features,
                      last.op.weight.device, self.loss_name if loss else "")
        B, P, T, L = x.shape[0], passes.count, self.time_steps, self.num_layers
        if self.encoding == "sequence" and (x.dim() < 2 or x.shape[1] != T):
            raise ValueError(f"encoding 'sequence' takes inputs (batch, T={T}, ...), one per time "
                             f"step; got shape {tuple(x.shape)}")
        folded = self._folded_weights(B, P)
        changed = changed_passes(passes)
        low = difference_dtype(self.precision, x.dtype, x.device)
        for layer in self.layers:
            layer.begin(x)
        seen_sum: list[Tensor] = [x] * L
        activity: list[Tensor] = [x] * L
        noise_sum: list[Tensor] = [x] * L
        outputs: list[list[Tensor]] = [[] for _ in range(L)]
        membrane: list[list[Tensor]] = [[] for _ in range(L)]
        first: tuple[Tensor, Tensor] | None = None
        readout: Tensor | None = None  # a spiking readout's spike count or peak membrane
        recurrent_sum: list[Tensor | None] = [None] * L
        heads = self.heads if loss else None
        hidden_sum: list[Tensor] = [x] * L  # with heads: each hidden layer's output, summed
        step_drive: Tensor | None = None  # the first layer's noisy drive, rewritten per step
        try:
            for t in range(T):
                if self.encoding == "sequence":
                    h = x[:, t]  # a time-varying input: step t of each sample's sequence
                else:
                    h = self._draw(spikegen.rate_conv, x) if self.encoding == "poisson" else x
                for k, layer in enumerate(self.layers):
                    if k == 0 and first is not None:
                        seen, current = first  # the same input at every step
                    else:
                        # Passes whose input differs from the reference pass's run as the
                        # reference plus a difference; the first layer's input is the same in
                        # every pass, so its product is computed once.
                        seen, current = layer.drive(layer.apply_pre(h, B, self.shard), B, P,
                                                    changed[k], folded[k], low)
                        if k == 0 and self.encoding == "current" and T > 1:
                            first = (seen, current)
                    start, stop = passes.noisy[k]
                    shift = None
                    eps = None
                    if stop > start:
                        noisy = slice(start * B, stop * B)
                        eps = self._draw(layer.noise, current[noisy])
                        if passes.antithetic:
                            eps = mirrored(eps, B)
                        if k == 0 and first is not None and t > 0 \
                                and not torch.is_grad_enabled():
                            # The cached drive stays noise-free: from step 1 on, one buffer per
                            # forward takes its clean rows once, its noisy rows as drive + noise
                            # at every step (step 0's drive is the activity sum's first term).
                            if step_drive is None:
                                step_drive = current.clone()
                            torch.add(current[noisy], eps, out=step_drive[noisy])
                            current = step_drive
                        else:
                            if k == 0 and first is not None:
                                current = current.clone()
                            current[noisy] += eps
                        if noise_out is not None:
                            noise_sum[k] = eps if t == 0 else noise_sum[k] + eps
                        if layer.threshold_noise is not None:
                            shift = torch.zeros_like(current)
                            shift[noisy] = self._draw(layer.threshold_noise, current[noisy])
                            if passes.antithetic:
                                shift[noisy] = mirrored(shift[noisy], B)
                    previous = None
                    if layer.recurrent is not None:
                        previous = layer.recurrent_input(current, B)
                        recurrent_sum[k] = (previous if recurrent_sum[k] is None
                                            else recurrent_sum[k] + previous)
                    h = layer.fire(current, shift)
                    if on_step is not None:
                        step_input = (layer.decorrelator(seen[:B]) if folded[k] is not None
                                      and not layer.conv else seen[:B])
                        on_step(k, t, step_input, current, eps, previous)
                    if k == L - 1 and self.spiking_readout:
                        readout = self._read_out(readout, h, layer, t)
                    if heads is not None and k < L - 1:
                        out = h.reshape(P * B, -1)
                        hidden_sum[k] = (out.clone() if T > 1 else out) if t == 0 \
                            else hidden_sum[k] + out
                    flat = current.reshape(P * B, -1)
                    reference = seen[:B].reshape(B, -1)
                    if t == 0:  # sums of tensors this forward owns from t = 1: summed in place
                        seen_sum[k] = reference
                        activity[k] = flat
                    elif t == 1:
                        seen_sum[k] = seen_sum[k] + reference
                        activity[k] = activity[k] + flat
                    else:
                        seen_sum[k] += reference
                        activity[k] += flat
                    if keep_states:
                        outputs[k].append(h.detach().reshape(P * B, -1))
                        mem = layer.membrane()
                        if mem is not None:
                            membrane[k].append(mem.detach().reshape(P * B, -1).clone())
        finally:
            for layer in self.layers:
                layer.end()  # nothing of this forward stays in the neurons
        activity = [a.view(P, B, -1) for a in activity]
        if self.adc is not None:  # what the system reports is read through its ADC
            activity = [self.adc.read(a) for a in activity]
        logits = activity[-1] / T if readout is None else readout.view(P, B, -1)
        if loss:
            target = y.repeat(P, *([1] * (y.dim() - 1)))
            losses = self.loss_fn(logits.reshape(P * B, -1), target).view(P, B)
        else:
            losses = logits.new_zeros(P, B)
        if noise_out is not None:
            for k, (start, stop) in enumerate(passes.noisy):
                n = activity[k].shape[-1]
                noise_out.append(noise_sum[k].reshape(stop - start, B, n) if stop > start
                                 else torch.zeros(0, B, n, device=x.device, dtype=x.dtype))
        inputs = [
            layer.decorrelator(s) if f is not None and layer.decorrelator is not None
            and not layer.conv else s
            for layer, s, f in zip(self.layers, seen_sum, folded)
        ]
        if self.adc is not None:  # a hidden layer's input is the output of nodes: read too
            inputs = inputs[:1] + [self.adc.read(s) for s in inputs[1:]]
        record = Record(inputs, activity, losses, T)
        if any(r is not None for r in recurrent_sum):
            record.recurrent_inputs = [None if r is None else r.reshape(B, -1)
                                       for r in recurrent_sum]
        if readout is not None:
            record.readout = logits
        if heads is not None:
            outs = [hidden_sum[k] / T for k in range(L - 1)]
            if self.adc is not None:  # the heads read node outputs, as the next layer does
                outs = [self.adc.read(o) for o in outs]
            record.local_loss = [self.loss_fn(head(o), target).view(P, B)
                                 for head, o in zip(heads, outs)]
            record.local_inputs = [o[:B] for o in outs]
        if keep_states:
            record.outputs = [torch.stack(o).view(T, P, B, -1) for o in outputs]
            record.membrane = [torch.stack(m).view(T, P, B, -1) if m else None for m in membrane]
        return record

    def _folded_weights(self, B: int, P: int) -> list[Tensor | None]:
        """Per layer ``W R`` where the forward multiplies by it instead of decorrelating rows.

        ``a = W (R x) = (W R) x``: a convolution always folds (its ``R`` acts on patches); a
        dense layer folds where decorrelating every row of every step costs more than forming
        ``W R`` once (the first layer sees ``B`` rows once, or once per step for spikes).
        With weight noise every layer multiplies by its read weights ``W~`` (times ``R``).
        """
        T = self.time_steps
        rows = [B if self.encoding == "current" else T * B] + [T * P * B] * (self.num_layers - 1)
        folded: list[Tensor | None] = []
        for layer, n in zip(self.layers, rows):
            fold = layer.decorrelator is not None and (layer.conv or n > layer.out_features + B)
            if self.weight_noise is not None:
                k = len(folded)
                folded.append(layer.folded_weight(self.weight_noise.weight(k, layer.weight)))
                continue
            folded.append(layer.folded_weight() if fold else None)
        return folded

    def _read_out(self, readout: Tensor | None, spikes: Tensor, layer: Layer, t: int) -> Tensor:
        """A spiking readout after step ``t``: the spike count ``sum_t S_t`` (``spikes``) or
        the peak membrane ``max_t U_t`` (``membrane``), (P B, C)."""
        value = spikes if self.readout == "spikes" else layer.membrane()
        value = value.reshape(value.shape[0], -1)
        if readout is None:
            return value
        return readout + value if self.readout == "spikes" else torch.maximum(readout, value)

    def check_summed_products(self) -> None:
        """Summed products need a linear ``mid``: ``mid(op(sum_t h_t)) = sum_t mid(op(h_t))``."""
        if self.time_steps == 1 or self.per_step:
            return
        for k, layer in enumerate(self.layers):
            for module in layer.mid:
                if not isinstance(module, LINEAR_FREE_OPS):
                    raise ValueError(
                        f"layer {k + 1} has {type(module).__name__} between its weight operation "
                        f"and its nodes at time_steps={self.time_steps}: the product at the "
                        "input summed over the steps is not the estimate there; use per-step "
                        "products (per_step=True, --per-step-products) or put the pooling "
                        "after the nodes")

    def tell_fixed_neuron_parameters(self) -> None:
        """Say once that the perturbation rules hold the neurons' own parameters fixed."""
        names = sorted({name.rsplit(".", 1)[-1] for layer in self.layers
                        for name, p in layer.unit.named_parameters()
                        if p.requires_grad and not name.startswith("recurrent.")})
        if names and not self._told_fixed:
            self._told_fixed = True
            warnings.warn(f"the perturbation rules hold the neurons' learnable {', '.join(names)} "
                          "fixed (they estimate weights and biases only); bp/dbp (BPTT) trains "
                          "them", stacklevel=3)

    def step_gradients(
        self, x: Tensor, y: Tensor, passes: Passes, scales: StepScales, read_noise: bool = False,
    ) -> tuple[list[tuple[Tensor, Tensor | None]], Record]:
        """Per-step products (docs/algorithms.md, "Per-step products"), memory flat in T.

        A rule's node signal is ``e_{l,t} = c_l * v_{l,t}`` per noisy pass and sample: a scale
        ``c_l`` known only after the pass (it holds the loss change) times a per-step vector,
        the activity change ``da_{l,t} = I_{l,t} - I_{l,t}(reference)`` or, ``read_noise``, the
        noise ``eps_{l,t}``. The forward runs once to measure ``dL`` and
        ``sum_t ||da_{l,t}||^2``; ``scales(record, squares)`` returns per layer its passes
        ``(lo, hi)`` and ``c_l`` of shape (hi - lo, B); the forward then runs again on the same
        noise and every step adds ``layer.gradient(sum_k e_{l,t}, xh_{l-1,t})``::

            g_W_l = mean_{k,n} sum_t e_{l,t,k,n} xh_{l-1,t,n}^T
            g_b_l = mean_{k,n} sum_t e_{l,t,k,n}
        """
        self.tell_fixed_neuron_parameters()
        P, B, L = passes.count, x.shape[0], self.num_layers
        squares = [x.new_zeros(P - 1, B) for _ in range(L)]

        def measure(k: int, t: int, xh: Tensor, current: Tensor, eps: Tensor | None,
                    previous: Tensor | None) -> None:
            drive = current.reshape(P, B, -1)
            squares[k] += (drive[1:] - drive[:1]).pow(2).sum(-1)

        with self.untouched_noise():
            first = self._forward(x, y, passes, on_step=measure)
        plan = scales(first, squares)
        low = difference_dtype(self.precision, x.dtype, x.device)
        sums: list[list[Tensor] | None] = [None] * L

        def accumulate(k: int, t: int, xh: Tensor, current: Tensor, eps: Tensor | None,
                       previous: Tensor | None) -> None:
            (lo, hi), scale = plan[k]
            if hi <= lo:
                return
            if read_noise:
                v = eps.reshape(hi - lo, B, -1)
            else:
                drive = current.reshape(P, B, -1)
                v = drive[lo:hi] - drive[:1]
            e = (scale.unsqueeze(-1) * v).sum(0)
            layer = self.layers[k]
            grads = layer.gradient(e, xh.reshape(B, -1), 1, (hi - lo) * B, low)
            if layer.recurrent is not None:
                grads = grads + layer.recurrent_gradient(e, previous, 1, (hi - lo) * B)
            sums[k] = list(grads) if sums[k] is None else [
                None if old is None else old + new for old, new in zip(sums[k], grads)]

        record = self._forward(x, y, passes, on_step=accumulate)
        grads = []
        for layer, summed in zip(self.layers, sums):
            params = [layer.weight, layer.bias, *layer.recurrent_parameters()]
            grads.append(tuple(summed) if summed is not None else tuple(
                None if p is None else torch.zeros_like(p) for p in params))
        return grads, record

    def gradients(
        self, signals: Sequence[Tensor], record: Record
    ) -> list[tuple[Tensor, Tensor | None]]:
        """Per layer ``(g_W, g_b)`` from node signals ``e_l`` of shape (K, B, n_l): each weight
        operation's own vector-Jacobian product with ``mean_k e_l`` at the reference input,
        averaged over the batch (docs/algorithms.md, "The rules"), its products in the
        network's ``precision`` (an estimate needs a few significant digits only)."""
        self.check_summed_products()
        self.tell_fixed_neuron_parameters()
        grads = []
        low = difference_dtype(self.precision, record.loss.dtype, record.loss.device)
        recurrent = record.recurrent_inputs or [None] * self.num_layers
        for layer, e, seen, previous in zip(self.layers, signals, record.inputs, recurrent):
            K, B = e.shape[0], e.shape[1]
            grad = layer.gradient(e.sum(0), seen, record.time_steps, K * B, low)
            if layer.recurrent is not None:
                grad = grad + layer.recurrent_gradient(e.sum(0), previous, record.time_steps,
                                                       K * B)
            grads.append(grad)
        return grads

    @contextmanager
    def untouched_noise(self) -> Iterator[None]:
        """Forwards run inside leave every noise stream, and torch's global random state
        (Poisson encoding, dropout), where they were: diagnostics and traces do not change a
        run."""
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
        (a random subsample when the batches are shuffled); a convolution uses all their
        patches. Sharded, ``B`` is the global batch: each rank places the rows of its samples
        among them at their place in zeros of the global row count, and a sum over the ranks
        gathers them exactly (``noisynets.parallel``).
        """
        if not self.decorrelated:
            return
        T, shard = record.time_steps, self.shard
        if shard is None:
            m = max(1, math.ceil(self.decorrelation_fraction * record.inputs[0].shape[0]))
            for layer, seen in zip(self.layers, record.inputs):
                rows = layer.decorrelation_rows(seen[:m].detach() / T)
                layer.decorrelator.update(rows, self.decorrelation_lr)
            return
        m = max(1, math.ceil(self.decorrelation_fraction * shard.total))
        count = min(shard.size, max(0, m - shard.offset))  # the rank's samples among the m
        gathered = []
        for layer, seen in zip(self.layers, record.inputs):
            local = layer.decorrelation_rows(seen[: max(1, count)].detach() / T)
            per = local.shape[-2] // max(1, count)  # rows per sample: patches of a conv
            rows = local.new_zeros(*local.shape[:-2], m * per, local.shape[-1])
            start = shard.offset * per
            rows[..., start : start + count * per, :] = local[..., : count * per, :]
            gathered.append(rows)
        all_reduce_sum(gathered, shard.world)
        for layer, rows in zip(self.layers, gathered):
            layer.decorrelator.update(rows, self.decorrelation_lr)

    def set_gradients(self, grads: Sequence[tuple[Tensor, Tensor | None]]) -> None:
        """Write estimates ``(g_W_l, g_b_l)`` -- and a recurrent neuron's ``(g_V_l, g_c_l)``
        after them -- into ``.grad`` for a torch optimizer to apply."""
        for layer, (g_w, g_b, *recurrent) in zip(self.layers, grads):
            layer.weight.grad = g_w
            if layer.bias is not None:
                layer.bias.grad = g_b
            for parameter, g in zip(layer.recurrent_parameters(), recurrent):
                parameter.grad = g

    def folded(self) -> nn.Module:
        """The trained model as a plain torch module: an independent copy of ``model`` with
        every ``R`` folded into its weight operation (``noisynets.folding.export_model``)."""
        from noisynets.folding import export_model

        return export_model(self)

    def trained_parameters(self) -> list[nn.Parameter]:
        """The weights and biases of every layer (what the rules estimate), then the neurons'
        own learnable parameters (``learn_beta``, ``learn_threshold``, ...: BPTT trains them,
        the perturbation rules hold them fixed)."""
        weights = [p for layer in self.layers
                   for p in (layer.weight, layer.bias, *layer.recurrent_parameters())
                   if p is not None]
        return weights + self.neuron_parameters() + self.head_parameters()

    def head_parameters(self) -> list[nn.Parameter]:
        """The readout heads' weights and biases (local losses; empty without)."""
        return [] if self.heads is None else list(self.heads.parameters())

    def head_gradients(self, record: Record, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per head ``(dL_k/dH_k, dL_k/dc_k)`` of ``L_k = mean_n loss(H_k x_{k,n} + c_k, y_n)``
        at the reference pass's ``x_k`` (``record.local_inputs``): the exact gradient of one
        linear layer on a detached input, not backpropagation through the network."""
        if self.heads is None or record.local_inputs is None:
            raise ValueError("the network has no readout heads: build it with local_losses=True")
        grads = []
        with torch.enable_grad():
            for head, x_k in zip(self.heads, record.local_inputs):
                local = self.loss_fn(head(x_k.detach()), y).mean()
                w, b = torch.autograd.grad(local, (head.weight, head.bias))
                grads.append((w, b))
        return grads

    def set_head_gradients(self, record: Record, y: Tensor) -> None:
        """Write ``head_gradients`` into the heads' ``.grad`` for the optimizer to apply."""
        for head, (g_w, g_b) in zip(self.heads or [], self.head_gradients(record, y)):
            head.weight.grad, head.bias.grad = g_w, g_b

    def neuron_parameters(self) -> list[nn.Parameter]:
        """The learnable parameters of the nodes' units (snntorch's ``learn_beta``, ...), but
        a recurrent neuron's recurrent weight operation, which the rules estimate."""
        out = []
        for layer in self.layers:
            recurrent = {id(p) for p in layer.recurrent_parameters()}
            out += [p for p in layer.unit.parameters()
                    if p.requires_grad and id(p) not in recurrent]
        return out


def wrap(model: nn.Module, **options: Any) -> Network:
    """``Network(model, **options)``: the user's ``nn.Sequential`` as a noisy network.

    Every rule, the training step, traces and diagnostics then work on it; its parameters are
    trained in place. With decorrelation the trained function also needs each layer's ``R``:
    save ``noisynets.export_model(net).state_dict()``, the model with ``R`` folded in.

        >>> from torch import nn
        >>> import noisynets
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> net = noisynets.wrap(model, noise_std=1e-3, decorrelation=True)
        >>> net.num_layers, net.layers[0].unit
        (2, ReLU())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap takes an nn.Module (an nn.Sequential), got {type(model).__name__}")
    return Network(model, **options)


def changed_passes(passes: Passes) -> list[tuple[int, int]]:
    """Per layer, the passes ``(lo, hi)`` whose input may differ from the reference pass's: a
    pass differs from layer ``l`` on once it, or the reference pass, was noisy below ``l``."""
    out: list[tuple[int, int]] = []
    differ: set[int] = set()
    for start, stop in passes.noisy:
        out.append((min(differ), max(differ) + 1) if differ else (0, 0))
        if start == 0 and stop > 0:  # the reference pass is noisy: every other pass differs
            differ |= set(range(1, passes.count))
        differ |= set(range(max(start, 1), stop))
    return out


def noise_sources(
    noise: NoiseSource | str | Sequence[NoiseSource] | None, std: float, count: int
) -> list[NoiseSource]:
    """One noise source per layer: copies of a template (or spec), or the sources given."""
    if noise is None:
        noise = Gaussian(std)
    elif isinstance(noise, str):
        noise = make_noise(noise, std)
    if isinstance(noise, NoiseSource):
        return [copy.deepcopy(noise) for _ in range(count)]
    noise = list(noise)
    if len(noise) != count or not all(isinstance(s, NoiseSource) for s in noise):
        raise ValueError(f"give one noise source, or one per layer: the network has {count} "
                         f"layers, got {len(noise)}")
    return noise


def flat_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of a (nested) ``nn.Sequential`` in the order they run, with their names."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{sub}", m) for sub, m in flat_modules(child)]
        else:
            out.append((name, child))
    return out


def parse(model: nn.Module) -> list[tuple[list[nn.Module], nn.Module, list[nn.Module], nn.Module]]:
    """The layers of ``model``: per weight operation ``(pre, op, mid, unit)``.

    Raises ``ValueError`` with one line naming the module, its position and why, for what the
    machinery cannot run: a model that is not an ``nn.Sequential``, a module that mixes the rows
    of the stacked passes, a recurrent layer, a module of unknown type or with parameters the
    rules do not train, a weight operation with no node after it, a node with no weight
    operation before it, or a model that does not end with its readout weight operation.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"the model is a {type(model).__name__}: noisynets runs an nn.Sequential (nested "
            "ones too) of nn.Linear/nn.Conv2d, activations or snntorch neurons, and "
            "parameter-free operations such as nn.Flatten and pooling"
        )
    layers: list[Any] = []
    pending: list[nn.Module] = []
    current: list[Any] | None = None  # [pre, op, mid, unit]
    modules = flat_modules(model)
    if not modules:
        raise ValueError("the model is an empty nn.Sequential")
    for position, (name, module) in enumerate(modules):
        where = f"module {name!r} ({type(module).__name__}, position {position})"
        kind = classify(module, where)
        if kind == "weight":
            if current is not None and current[3] is None:
                raise ValueError(f"{where} follows the weight operation {current[1]} with no "
                                 "node in between: put an activation or neuron after every "
                                 "weight operation but the last")
            if getattr(module, "padding_mode", "zeros") != "zeros":
                raise ValueError(f"{where} has padding_mode={module.padding_mode!r}: use the "
                                 "default 'zeros'")
            current = [pending, module, [], None]
            pending = []
            layers.append(current)
        elif kind == "node":
            if current is None or current[3] is not None:
                raise ValueError(f"{where} is a node with no weight operation before it: every "
                                 "activation or neuron must follow an nn.Linear or nn.Conv2d")
            current[3] = module
        else:  # parameter-free
            if current is not None and current[3] is None:
                if isinstance(module, nn.Dropout):
                    raise ValueError(f"{where} sits between a weight operation and its node: "
                                     "put dropout after the node (activation or neuron)")
                current[2].append(module)
            else:
                pending.append(module)
    if not layers:
        raise ValueError("the model has no weight operation (nn.Linear or nn.Conv2d)")
    if current is not None and isinstance(current[3], snn.SpikingNeuron) and not pending:
        return [tuple(layer) for layer in layers]  # a spiking readout: its spikes are read out
    if current is None or current[3] is not None or pending:
        raise ValueError(
            f"the model ends with {type(modules[-1][1]).__name__} ({modules[-1][0]!r}): it must "
            "end with its readout weight operation, whose output are the logits (read out as "
            "their mean over the time steps), or with a spiking neuron after it (a spiking "
            "readout); remove the final node"
        )
    current[3] = nn.Identity()  # the readout node
    return [tuple(layer) for layer in layers]


def classify(module: nn.Module, where: str) -> str:
    """``weight``, ``node`` or ``free``; ``ValueError`` for a module the machinery refuses."""
    for types, why in REFUSED.items():
        if isinstance(module, types):
            raise ValueError(f"{where}: {why}")
    if isinstance(module, WEIGHT_OPS):
        return "weight"
    if isinstance(module, snn.SpikingNeuron):
        if not module.init_hidden:
            raise ValueError(f"{where} needs init_hidden=True: in an nn.Sequential a neuron "
                             "keeps its state itself, the snntorch way")
        return "node"  # output=True: its spikes drive the next layer; learnable: BPTT trains
    if isinstance(module, ACTIVATIONS):
        return "node"
    if isinstance(module, FREE_OPS):
        return "free"
    if any(True for _ in module.parameters()):
        raise ValueError(f"{where} has parameters but is not an nn.Linear or nn.Conv2d, the "
                         "weight operations the rules train")
    raise ValueError(
        f"{where} is of a type noisynets does not know: use nn.Linear/nn.Conv2d, a torch "
        "activation or noisynets unit, an snntorch neuron, or nn.Flatten, nn.Unflatten, "
        "pooling or nn.Dropout"
    )
