"""Network: the user's own module as a network of noisy nodes, run as one batched forward of
its clean and noisy passes.

``Network(model)`` (or ``noisynets.wrap(model)``) takes any ``nn.Module`` as its author wrote
it -- an ``nn.Sequential``, a class whose ``forward`` loops over time steps, residual blocks,
concatenations -- and ``Network([d_0, n_1, ..., n_L])`` builds a fully connected one. Every
call of a weight operation drives nodes (``noisynets.core.forward``); a stateless unit is the
``T = 1`` case of the loop over time steps (``noisynets.core.steps``). What a rule observes is
summed over each layer's calls (docs/algorithms.md, "Time steps"): the activity ``a_l = sum_t
I_{l,t}`` of every pass, the reference pass's input of every weight operation and each pass's
loss. That is the ``Record``. It never holds the noise: the noise values leave a layer only
through ``run_reading_noise``, the accessible-noise path that NP needs.

With decorrelation every layer's ``R`` is a parametrization of its weight in the user's module
(``noisynets.core.decorrelation``): ``model(x)`` is the trained network at every moment.

Example::

    >>> import torch
    >>> from noisynets.core.network import Network, Passes
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
from typing import Any

import torch
from torch import Tensor, nn

from noisynets.core.analog import ADC, PCMWeights, make_adc, make_weight_noise
from noisynets.core.decorrelation import decorrelate, update_layers
from noisynets.core.forward import Forward, Route, StepHook
from noisynets.core.heads import check_local_losses, head_gradients, make_heads
from noisynets.core.keys import current_keys
from noisynets.core.layer import Layer
from noisynets.core.losses import LossFn, make_loss
from noisynets.core.model import check_model, find_layers, runs_own_loop, unit_follows
from noisynets.core.noise import Gaussian, Logistic, NoiseSource, make_noise
from noisynets.core.precision import PRECISIONS, difference_dtype
from noisynets.core.record import Passes, Record
from noisynets.core.report import injected_noise, make_record
from noisynets.core.steps import ENCODINGS, READOUTS, run_model
from noisynets.core.units import LIF, StochasticBinary
from noisynets.core.validate import check_forward
from noisynets.models import he_normal, mlp
from noisynets.parallel import Shard


class Network(nn.Module):
    """A network of noisy nodes: the user's own module, or a fully connected stack.

    Args:
        model: any ``nn.Module`` (module doc), trained in place: its parameters are the
            trained ones and, with decorrelation, ``R`` lives in it as a parametrization;
            or ``[d_0, n_1, ..., n_L]`` (input features, then the nodes of every layer) for
            a fully connected network of ``unit`` nodes.
        unit: the hidden units of a built network (see ``noisynets.core.units.UNITS``).
        noise: a noise source (or spec, e.g. ``"telegraph:switch=0.1"``) copied into every
            layer and reseeded there, or one source per layer. Default ``Gaussian(noise_std)``.
        noise_std: the noise scale of a spec and of the default.
        readout_noise_std: the noise scale of the last layer's nodes (the readout), where it
            differs from ``noise_std``; ``noise`` must then be a spec (or None). A spiking
            readout's loss on spike counts changes only where the noise makes a readout
            neuron cross its threshold (docs/algorithms.md, "Spiking readouts").
        decorrelation: give every layer a decorrelator ``R``.
        decorrelation_lr: ``eta_R``; decorrelation_fraction: the share of the batch whose
            reference inputs form the correlation estimate.
        both_noisy: the noise cannot be switched off, so even the reference pass is noisy.
        time_steps: ``T`` of a model the engine steps (``noisynets.core.steps``); a model that
            runs its own loop defines its own.
        encoding: ``current``, ``poisson`` or ``sequence`` (inputs (B, T, ...)).
        loss: a name (``noisynets.core.losses.LOSS_NAMES``: ``ce``, ``mse``, snntorch's
            ``ce_rate_loss``, ...) or a function ``loss(logits, target)`` per sample.
        precision: the number format of the noisy passes' difference products.
        beta, threshold: the LIF neurons' membrane decay and threshold (built networks).
        threshold_noise: the std of Gaussian noise on the threshold of ``units.LIF`` nodes.
        per_step: the perturbation rules take per-step products ``g_W = sum_t e_t xh_t^T``
            (docs/algorithms.md, "Per-step products"): the forward runs twice on the same
            noise, memory flat in T.
        readout: a spiking readout's logits: ``spikes`` (spike counts) or ``membrane``.
        seed: fixes the weights of a built network and every layer's noise stream.
        weight_noise: noise in the weights (``noisynets.core.analog.PCMWeights`` or spec).
        adc: the ADC the recorded activities are read through (an ``ADC`` or a spec).
        local_losses: a linear readout head per hidden layer whose loss drives that layer's
            ANP estimate (docs/algorithms.md, "Local losses"); dense hidden layers only.

    Nodes whose unit is ``StochasticBinary`` carry logistic noise of scale 1 (their units are
    Bernoulli(sigmoid(a)) in the noisy passes) instead of ``noise``.
    """

    def __init__(
        self,
        model: Sequence[int] | nn.Module,
        unit: str = "leaky_relu",
        noise: NoiseSource | str | Sequence[NoiseSource] | None = None,
        noise_std: float = 1e-3,
        readout_noise_std: float | None = None,
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
        self.loss = make_loss(loss)
        self.loss_name, self.loss_fn = self.loss.name, self.loss.fn
        check_options(encoding, time_steps, decorrelation_fraction, threshold_noise, readout,
                      precision)
        # One generator, drawn in layer order: a built network's weights of layer l, then the
        # seeds of its noise sources.
        g = torch.Generator().manual_seed(int(seed))
        if isinstance(model, nn.Module):
            self.sizes = None
        else:
            self.sizes = check_sizes(model)
            with torch.random.fork_rng(devices=[]):  # the seed sets the weights, below
                model = mlp(self.sizes, unit, beta, threshold)
        check_model(model)
        self.model = model
        found = find_layers(model)
        if threshold_noise > 0 and not any(isinstance(u, LIF) for _, _, u in found):
            raise ValueError(f"threshold_noise {threshold_noise:g} needs noisynets.core.units."
                             "LIF nodes (--unit lif)")
        sources = noise_sources(noise, noise_std, len(found), readout_noise_std)
        layers = build_layers(model, found, sources, threshold_noise, decorrelation, g,
                              built=self.sizes is not None)
        self.layers = nn.ModuleList(layers)
        self.unit = unit if self.sizes is not None else "custom"
        self.decorrelation_lr = float(decorrelation_lr)
        self.decorrelation_fraction = float(decorrelation_fraction)
        self.both_noisy = bool(both_noisy)
        self.steps_model = not runs_own_loop(model)
        if not self.steps_model and (time_steps != 1 or encoding != "current"):
            raise ValueError("the model runs its own loop over time steps (its snntorch neurons "
                             "take their state as arguments): its forward sets T and feeds the "
                             "input; drop time_steps/--time-steps and the encoding")
        self.time_steps = int(time_steps)
        self.encoding = encoding
        self.precision = precision
        self.per_step = bool(per_step)
        self.readout = readout
        last = self.layers[-1]
        self.spiking_readout = self.steps_model and last.spiking
        self.shard: Shard | None = None  # set by ``sharded``
        self.rows_identical: bool | None = None  # learned on the first forward (core.forward)
        self._told_fixed = False
        self.weight_noise = make_weight_noise(weight_noise)
        if self.weight_noise is not None:
            self.weight_noise.reseed(int(torch.randint(2**62, (1,), generator=g)))
        self.adc = make_adc(adc)
        self.local_losses = bool(local_losses)
        self.heads: nn.ModuleList | None = None
        if self.local_losses:
            self.check_local_losses()
            self.heads = make_heads(self.layers, g)
        # A rule's feedback matrices (fa, dfa, opzo: ``rules.base.Feedback``), set by the rule,
        # so that the network's state_dict -- checkpoints, exact resume -- carries them.
        self.feedback: nn.Module | None = None
        self._register_load_state_dict_pre_hook(self._earlier_keys)

    # --- what the network is ----------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def decorrelated(self) -> bool:
        return self.layers[0].decorrelator is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].weight.device

    def train(self, mode: bool = True) -> Network:
        """Training or eval mode; batch normalisation stays in eval mode (``check_model``)."""
        super().train(mode)
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def check_local_losses(self) -> None:
        """``noisynets.core.heads.check_local_losses`` of this network's layers."""
        check_local_losses(self.layers, self.per_step)

    # --- the forward ------------------------------------------------------------------------

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

    def run(self, x: Tensor, y: Tensor, passes: Passes, keep_states: bool = False,
            route: Route | None = None) -> Record:
        """The batched forward of ``passes.count`` passes of batch ``x`` with targets ``y``;
        ``route``: what a rule changes in each weight operation's call (``core.forward``)."""
        return self.forward_passes(x, y, passes, keep_states=keep_states, route=route)[0]

    def run_reading_noise(
        self, x: Tensor, y: Tensor, passes: Passes
    ) -> tuple[Record, list[Tensor]]:
        """``run``, and the accessible-noise path: per layer the noise it injected, summed over
        time, shape (noisy passes, B, n_l). Only rules that need the noise values call this."""
        return self.forward_passes(x, y, passes, noise_out=True)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, C) of one pass: noise-free, or noisy when the noise is intrinsic."""
        dummy = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        passes = Passes.clean(self.num_layers, self.both_noisy)
        return self.forward_passes(x, dummy, passes, loss=False)[0].logits[0]

    def forward_passes(
        self, x: Tensor, y: Tensor, passes: Passes, noise_out: bool = False,
        keep_states: bool = False, loss: bool = True, on_step: StepHook | None = None,
        route: Route | None = None,
    ) -> tuple[Record, list[Tensor]]:
        """One batched forward: the Record, and with ``noise_out`` the noise per layer."""
        last = self.layers[-1]
        outputs = last.out_features if isinstance(self.model, nn.Sequential) and \
            not last.conv and not self.spiking_readout else None
        check_forward(x, y, passes, self.num_layers, outputs, self.device,
                      ("ce" if self.loss.classification else self.loss_name) if loss else "")
        if self.encoding == "sequence" and (x.dim() < 2 or x.shape[1] != self.time_steps):
            raise ValueError(f"encoding 'sequence' takes inputs (batch, T={self.time_steps}, ...)"
                             f", one per time step; got shape {tuple(x.shape)}")
        B = x.shape[0]
        forward = Forward(self, passes, B, noise_out, keep_states, on_step,
                          constant_input=self.steps_model and self.encoding == "current",
                          route=route)
        with forward:
            out = run_model(self, forward, x)
            forward.finish()
        return make_record(self, forward, out, y, loss), injected_noise(forward, x)

    # --- what the rules need ----------------------------------------------------------------

    def gradients(
        self, signals: Sequence[Tensor], record: Record
    ) -> list[tuple[Tensor, Tensor | None]]:
        """Per layer ``(g_W, g_b)`` for node signals ``e_l`` of shape (K, B, n_l): each weight
        operation's own vector-Jacobian product with ``mean_k e_l`` at the reference input,
        averaged over the batch (docs/algorithms.md, "The rules"), its products in the
        network's ``precision`` (an estimate needs a few significant digits only)."""
        self.tell_fixed_neuron_parameters()
        grads = []
        low = difference_dtype(self.precision, record.loss.dtype, record.loss.device)
        recurrent = record.recurrent_inputs or [None] * self.num_layers
        for k, (layer, e, seen, previous) in enumerate(
                zip(self.layers, signals, record.inputs, recurrent)):
            K, B, T = e.shape[0], e.shape[1], record.steps_of(k)
            grad = layer.gradient(e.sum(0), seen, T, K * B, low)
            if layer.recurrent is not None:
                grad = grad + layer.recurrent_gradient(e.sum(0), previous, T, K * B)
            grads.append(grad)
        return grads

    def step_gradients(
        self, x: Tensor, y: Tensor, passes: Passes, scales: Callable, read_noise: bool = False,
    ) -> tuple[list[tuple[Tensor, Tensor | None]], Record]:
        """Per-step products (``noisynets.core.per_step.step_gradients``)."""
        from noisynets.core.per_step import step_gradients

        return step_gradients(self, x, y, passes, scales, read_noise)

    def check_summed_products(self) -> None:
        """Summed products are the paper's estimate at every layer: a layer's activity is its
        weight operation's output, linear in its input (nothing to check any more)."""

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

    def update_decorrelation(self, record: Record) -> None:
        """One decorrelation step of every layer from the reference pass's inputs, mean over
        each layer's calls (``noisynets.core.decorrelation.update_layers``)."""
        if self.decorrelated:
            update_layers(self.layers, record.inputs,
                          [record.steps_of(k) for k in range(self.num_layers)],
                          self.decorrelation_fraction, self.decorrelation_lr, self.shard)

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
        """The trained model as a plain torch module (``noisynets.core.export.export_model``)."""
        from noisynets.core.export import export_model

        return export_model(self)

    def trained_parameters(self) -> list[nn.Parameter]:
        """The weights and biases of every layer (what the rules estimate), then the neurons'
        own learnable parameters (``learn_beta``, ``learn_threshold``, ...: BPTT trains them,
        the perturbation rules hold them fixed), then the local losses' heads."""
        weights = [p for layer in self.layers
                   for p in (layer.weight, layer.bias, *layer.recurrent_parameters())
                   if p is not None]
        return weights + self.neuron_parameters() + self.head_parameters()

    def head_parameters(self) -> list[nn.Parameter]:
        """The readout heads' weights and biases (local losses; empty without)."""
        return [] if self.heads is None else list(self.heads.parameters())

    def head_gradients(self, record: Record, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per head its exact gradient at the reference pass (``noisynets.core.heads``)."""
        if self.heads is None or record.local_inputs is None:
            raise ValueError("the network has no readout heads: build it with local_losses=True")
        return head_gradients(self.heads, self.loss_fn, record.local_inputs, y)

    def set_head_gradients(self, record: Record, y: Tensor) -> None:
        """Write ``head_gradients`` into the heads' ``.grad`` for the optimizer to apply."""
        for head, (g_w, g_b) in zip(self.heads or [], self.head_gradients(record, y)):
            head.weight.grad, head.bias.grad = g_w, g_b

    def neuron_parameters(self) -> list[nn.Parameter]:
        """The learnable parameters of the model outside its weight operations (snntorch's
        ``learn_beta``, ``learn_threshold``, ...; ``check_model`` refuses any other)."""
        ops = {id(p) for layer in self.layers
               for p in (*layer.op.parameters(), *layer.recurrent_parameters())}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in ops]

    def tell_fixed_neuron_parameters(self) -> None:
        """Say once that the perturbation rules hold the neurons' own parameters fixed."""
        names = sorted({name.rsplit(".", 1)[-1] for name, p in self.model.named_parameters()
                        if p.requires_grad and any(p is q for q in self.neuron_parameters())})
        if names and not self._told_fixed:
            self._told_fixed = True
            warnings.warn(f"the perturbation rules hold the neurons' learnable {', '.join(names)} "
                          "fixed (they estimate weights and biases only); bp/dbp (BPTT) trains "
                          "them", stacklevel=3)

    def current_keys(self, state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """``state`` with an earlier version's keys renamed (``noisynets.core.keys``)."""
        return current_keys(self.layers, state, prefix)

    def _earlier_keys(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        """``load_state_dict`` of an earlier state: its keys renamed (``current_keys``)."""
        renamed = self.current_keys(state, prefix)
        state.clear()
        state.update(renamed)

def build_layers(model: nn.Module, found: Sequence[tuple[str, nn.Module, nn.Module | None]],
                 sources: Sequence[NoiseSource], threshold_noise: float, decorrelation: bool,
                 g: torch.Generator, built: bool) -> list[Layer]:
    """A ``Layer`` per weight operation ``found``, its noise stream (and a LIF node's
    threshold noise) seeded from ``g`` in layer order, after a ``built`` network's He-normal
    weights of the same layer; with ``decorrelation`` its ``R`` put into ``model``."""
    layers = []
    for k, (name, op, node) in enumerate(found):
        if built:
            he_normal(op, g)
        source = Logistic(scale=1.0) if isinstance(node, StochasticBinary) else sources[k]
        lif = isinstance(node, LIF) and threshold_noise
        layer = Layer(name, op, source, node, Gaussian(threshold_noise) if lif else None)
        layer.noise.reseed(int(torch.randint(2**62, (1,), generator=g)))
        if layer.threshold_noise is not None:
            layer.threshold_noise.reseed(int(torch.randint(2**62, (1,), generator=g)))
        layer.buffer_safe = unit_follows(model, op, node)
        if decorrelation:
            decorrelate(op)
        layers.append(layer)
    return layers



def wrap(model: nn.Module, **options: Any) -> Network:
    """``Network(model, **options)``: the user's own module as a noisy network.

    Every rule, the training step, traces and diagnostics then work on it; its parameters are
    trained in place, and with decorrelation ``R`` lives in it, so ``model(x)`` is the trained
    network and ``noisynets.export_model(model)`` a plain copy with ``R`` folded in.

        >>> from torch import nn
        >>> import noisynets
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> net = noisynets.wrap(model, noise_std=1e-3, decorrelation=True)
        >>> net.num_layers, net.layers[0].unit
        (2, ReLU())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap takes an nn.Module, got {type(model).__name__}")
    return Network(model, **options)


def check_options(encoding: str, time_steps: Any, fraction: float, threshold_noise: float,
                  readout: str, precision: str) -> None:
    """One ``ValueError`` per option out of range."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}")
    if isinstance(time_steps, bool) or int(time_steps) != time_steps or time_steps < 1:
        raise ValueError(f"time_steps {time_steps!r} must be an integer >= 1")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"decorrelation_fraction {fraction} must be in (0, 1]")
    if threshold_noise < 0:
        raise ValueError(f"threshold_noise {threshold_noise} must be >= 0")
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}: choose one of {', '.join(READOUTS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")


def check_sizes(sizes: Sequence[int]) -> list[int]:
    out = [int(s) for s in sizes]
    if len(out) < 2 or min(out) < 1 or list(sizes) != out:
        raise ValueError(f"sizes {list(sizes)} must list the input size and >= 1 layer, all "
                         "integers >= 1")
    return out


def noise_sources(
    noise: NoiseSource | str | Sequence[NoiseSource] | None, std: float, count: int,
    readout_std: float | None = None,
) -> list[NoiseSource]:
    """One noise source per layer: copies of a template (or spec), or the sources given; with
    ``readout_std`` the last layer's source is the spec's at that scale."""
    if readout_std is not None:
        if noise is not None and not isinstance(noise, str):
            raise ValueError("readout_noise_std scales a noise spec: give noise as a spec "
                             "(e.g. 'gaussian'), or one noise source per layer")
        if isinstance(readout_std, bool) or not isinstance(readout_std, (int, float)) \
                or not math.isfinite(readout_std) or readout_std <= 0:
            raise ValueError(f"readout_noise_std {readout_std!r} must be a finite number > 0")
        spec = "gaussian" if noise is None else noise
        sources = noise_sources(spec, std, count)
        sources[-1] = make_noise(spec, readout_std)
        return sources
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

