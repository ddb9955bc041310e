"""A layer: one weight operation, its decorrelator, and the nodes its output drives.

A network is weight operations (``nn.Linear``, ``nn.Conv2d``) whose outputs drive *nodes*,
with parameter-free operations (flatten, pooling, dropout, ...) in between. Layer ``l`` is::

    h         = pre(x)               parameter-free operations after the previous nodes
    a         = mid(op(h; W R, b))   the weight operation, R folded into W (or xh = R h first)
    at        = a + eps              the node's intrinsic noise, in the passes where it is noisy
    x_next    = unit(at)             the unit: an activation, or a spiking neuron with state

For a dense layer ``R`` decorrelates the input vector; for a convolution it decorrelates the
input patches and is folded into the kernel, so the forward stays one convolution. The layer's
gradient for a node-wise error signal ``e`` is the weight operation's own vector-Jacobian
product at the reference pass's input (through ``mid`` where that is not empty): for a dense
layer ``e^T xh``, for a convolution the correlation of ``e`` with the input patches. Nothing
travels from layer to layer.

The weight operation, the parameter-free operations and the unit belong to the user's model
(``Network.model``); a layer refers to them without owning them, so the model's
``state_dict`` is the user's own. A layer owns its decorrelator and its noise sources.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from noisynets.layers import Layer
    >>> from noisynets.core.noise import Gaussian
    >>> layer = Layer(nn.Linear(4, 3), [], [], nn.Tanh(), Gaussian(0.1), decorrelation=True)
    >>> seen, a = layer.drive(torch.ones(2, 4), batch=2)
    >>> a.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import snntorch as snn
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisynets.core.noise import NoiseSource
from noisynets.decorrelation import Decorrelator

if TYPE_CHECKING:
    from noisynets.parallel import Shard

WEIGHT_OPS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

# The largest share of changed input entries at which a dense layer's difference product runs
# event-driven (a sparse product over the changed entries): at 1 % it is 4-7x faster than the
# dense product on a 1000 x 1000 layer, and the two break even between 3 and 10 % (measured
# on an AMD EPYC with AVX-512, one thread, float32 and float64; `noisynets bench`).
EVENT_FRACTION = 0.02
# Below this many input entries or output nodes the dense product is as fast (measured).
EVENT_MIN_ENTRIES = 1 << 15
EVENT_MIN_OUTPUTS = 64


class Layer(nn.Module):
    """Weight operation ``op`` (``nn.Linear`` or ``nn.Conv2d``), the parameter-free operations
    ``pre`` before it and ``mid`` between it and its nodes, the nodes' ``unit``, their noise
    ``noise`` and, for spiking units, ``threshold_noise``; ``decorrelation`` gives it an ``R``.
    """

    def __init__(
        self,
        op: nn.Module,
        pre: Sequence[nn.Module],
        mid: Sequence[nn.Module],
        unit: nn.Module,
        noise: NoiseSource,
        decorrelation: bool = False,
        threshold_noise: NoiseSource | None = None,
    ) -> None:
        super().__init__()
        # Not registered: these belong to the user's model.
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "pre", list(pre))
        object.__setattr__(self, "mid", list(mid))
        object.__setattr__(self, "unit", unit)
        self.noise = noise
        self.threshold_noise = threshold_noise
        self.conv = isinstance(op, nn.Conv2d)
        self.spiking = isinstance(unit, snn.SpikingNeuron)
        # A recurrent neuron's own weight operation on its previous spikes (RLeaky, RSynaptic).
        self.recurrent: nn.Module | None = None
        if isinstance(unit, (snn.RLeaky, snn.RSynaptic)) and any(
                p.requires_grad for p in unit.recurrent.parameters()):
            self.recurrent = unit.recurrent
        # One sample's input and node shapes, seen at run time.
        self.in_shape: tuple[int, ...] | None = None
        self.node_shape: tuple[int, ...] | None = None
        self.decorrelator: Decorrelator | None = None
        if decorrelation:
            if self.conv:
                kh, kw = op.kernel_size
                self.decorrelator = Decorrelator(op.in_channels // op.groups * kh * kw, op.groups)
            else:
                self.decorrelator = Decorrelator(op.in_features)
            # Where the model lives: a wrapped model may already be in float64 or on a GPU.
            self.decorrelator.to(op.weight.device, op.weight.dtype)
        self._masks: dict[int, Tensor] = {}
        self._casts: dict[tuple[int, Any], tuple[Tensor, Tensor]] = {}
        # Event-driven differences: set by the network for a dense layer whose input are the
        # outputs of discontinuous units (Heaviside, sign, stochastic-binary, spiking).
        self.event_driven = False
        self.events = 0  # difference products run event-driven, since construction
        self.count_changes = False  # count the changed entries even where no event product runs
        self._changed = [0, 0]  # this forward: changed input entries, entries compared

    @property
    def weight(self) -> nn.Parameter:
        return self.op.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return self.op.bias

    @property
    def out_features(self) -> int:
        return self.op.out_channels if self.conv else self.op.out_features

    # --- the forward ----------------------------------------------------------------------

    def begin(self, like: Tensor) -> None:
        """Start a forward: new dropout masks, and the unit's state reset (snntorch's
        ``init_hidden`` state: every state buffer empty, so the neuron starts from zero)."""
        self._masks = {}
        self._casts = {}
        self._changed = [0, 0]
        self.reset_state(like)

    @property
    def changed_fraction(self) -> float | None:
        """The share of the differing passes' input entries that differed from the reference
        pass's in the last forward (all time steps), for an event-driven layer where it was
        counted (a layer large enough for event products, or any with ``count_changes``)."""
        changed, compared = self._changed
        return changed / compared if self.event_driven and compared else None

    def end(self) -> None:
        """Finish a forward: the unit's state emptied (it would hold the forward's graph) and
        the weights cast for the difference products dropped."""
        self.reset_state()
        self._casts = {}

    def reset_state(self, like: Tensor | None = None) -> None:
        """Empty the unit's state, releasing whatever graph it held."""
        if not self.spiking:
            return
        unit = self.unit
        for name in unit._non_persistent_buffers_set:
            old = getattr(unit, name)
            ref = like if like is not None else old
            setattr(unit, name, torch.zeros(0, device=ref.device, dtype=ref.dtype))
        if hasattr(unit, "spike"):
            unit.spike = None
        if hasattr(unit, "threshold_shift"):
            unit.threshold_shift = None

    def apply_pre(self, h: Tensor, batch: int, shard: Shard | None = None) -> Tensor:
        """``pre(h)``. Dropout draws one mask per sample and forward, the same in every pass
        and time step (``h`` holds the passes stacked, ``batch`` rows each); with a ``shard``
        the masks of the whole global batch, of which the rank keeps its ``batch`` rows."""
        for i, module in enumerate(self.pre):
            if isinstance(module, nn.Dropout):
                if module.training and module.p > 0:
                    mask = self._masks.get(i)
                    if mask is None:
                        rows = batch if shard is None else shard.total
                        keep = torch.full((rows, *h.shape[1:]), 1.0 - module.p,
                                          device=h.device, dtype=h.dtype)
                        mask = torch.bernoulli(keep) / (1.0 - module.p)
                        if shard is not None:
                            mask = shard.take(mask)
                        self._masks[i] = mask
                    h = h * mask.repeat(h.shape[0] // batch, *([1] * (h.dim() - 1)))
            else:
                h = module(h)
        return h

    def folded_weight(self, W: Tensor | None = None) -> Tensor:
        """``W R`` (for a convolution: every filter times ``R`` on its patch features); ``W``
        defaults to the layer's weight."""
        W = self.weight if W is None else W
        if self.decorrelator is None:
            return W
        R = self.decorrelator.R
        if not self.conv:
            return W @ R
        G = self.op.groups
        flat = W.reshape(G, W.shape[0] // G, -1) @ R.view(G, *R.shape[-2:])
        return flat.reshape(W.shape)

    def drive(
        self,
        h: Tensor,
        batch: int,
        passes: int = 1,
        changed: tuple[int, int] = (0, 0),
        weight: Tensor | None = None,
        low: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(seen, a)``: what the gradient needs of the reference input, and the activity of
        ``passes`` stacked passes of ``batch`` rows each.

        The reference pass (the first ``batch`` rows of ``h``) runs in full. A pass in
        ``changed = (lo, hi)`` -- one whose input differs from the reference pass's -- runs as
        the reference plus a difference, ``op(h) = op(h_ref) + op_0(h - h_ref)`` (``op_0``:
        without the bias), its product in ``low`` precision (default: ``h``'s dtype); the
        other passes have the reference pass's input, and so its drive. ``h`` may hold the
        reference rows alone. ``weight`` is ``folded_weight()`` when the caller folds ``R``
        into ``W``; a dense layer without it decorrelates the rows, ``seen = xh = R h``. A
        convolution always folds, and ``seen`` is its raw input.
        """
        self.in_shape = tuple(h.shape[1:])
        reference = h[:batch]
        seen, a_ref = self._product(reference, weight, self.bias)
        a = a_ref
        if passes > 1:
            a = a_ref.new_empty((passes, *a_ref.shape))
            lo, hi = changed
            if hi <= lo or h.shape[0] == batch:
                lo = hi = passes  # every pass has the reference pass's input
            a[:lo] = a_ref
            a[hi:] = a_ref
            if hi > lo:
                stacked = h.view(-1, batch, *h.shape[1:])
                difference = (stacked[lo:hi] - reference).view(-1, *h.shape[1:])
                da = self._difference(difference, weight, low).view(hi - lo, *a_ref.shape)
                if torch.is_grad_enabled():
                    a[lo:hi] = da + a_ref
                else:
                    torch.add(da, a_ref, out=a[lo:hi])  # a = a_ref + op_0(h - h_ref), one write
            a = a.view(-1, *a_ref.shape[1:])
        for module in self.mid:
            a = module(a)
        return seen, a

    def _product(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(seen, op(x))`` with ``R`` folded into ``weight``, or applied to the rows."""
        if self.conv:
            kernel = self.folded_weight() if weight is None else weight
            return x, self.op._conv_forward(x, kernel, bias)
        if weight is not None:
            return x, F.linear(x, weight, bias)
        seen = x if self.decorrelator is None else self.decorrelator(x)
        return seen, F.linear(seen, self.weight, bias)

    def _difference(self, dh: Tensor, weight: Tensor | None, low: torch.dtype | None) -> Tensor:
        """``op_0(dh)``: the product without the bias, in ``low`` precision, in ``dh``'s dtype;
        event-driven (in ``dh``'s dtype) where few entries of ``dh`` differ from zero."""
        unfolded_r = weight is None and self.decorrelator is not None
        large = (dh.numel() >= EVENT_MIN_ENTRIES and self.out_features >= EVENT_MIN_OUTPUTS
                 and not torch.is_grad_enabled())  # autograd (BP) runs the dense product
        if self.event_driven and dh.dim() == 2 and (self.count_changes or large and not unfolded_r):
            changed = int(torch.count_nonzero(dh))  # reads one number (discontinuous inputs only)
            self._changed[0] += changed
            self._changed[1] += dh.numel()
            if changed <= EVENT_FRACTION * dh.numel() and large and not unfolded_r:
                self.events += 1
                return self.event_product(dh, self.weight if weight is None else weight)
        if low is None or low == dh.dtype:
            return self._product(dh, weight, None)[1]
        x = dh.to(low)
        if self.conv:
            kernel = self.folded_weight() if weight is None else weight
            out = self.op._conv_forward(x, self._low(kernel, low), None)
        elif weight is not None:
            out = F.linear(x, self._low(weight, low))
        else:
            if self.decorrelator is not None:
                x = x @ self._low(self.decorrelator.R, low).mT
            out = F.linear(x, self._low(self.weight, low))
        return out.to(dh.dtype)

    def event_product(self, dh: Tensor, weight: Tensor) -> Tensor:
        """``dh W^T`` summed over the changed entries only: per row ``n``,
        ``sum_{i: dh_ni != 0} dh_ni W[:, i]``, i.e. ``W[:, changed] (h - h_ref)[changed]``.

        A sparse (CSR) product of ``dh``'s nonzero entries with ``W^T``: the same terms as
        the dense product less its zero ones, summed in column order; equal to the bit where
        the sums are exact, within a few ulp of the dense product's (BLAS's) order elsewhere.
        """
        key = (id(weight), torch.sparse_csr)  # W^T, made contiguous once per forward
        if key not in self._casts:
            self._casts[key] = (weight, weight.detach().mT.contiguous())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return dh.to_sparse_csr() @ self._casts[key][1]

    def _low(self, weight: Tensor, dtype: torch.dtype) -> Tensor:
        """A weight (``W``, ``R``, a folded ``W R``) in ``dtype``, cast once per forward."""
        key = (id(weight), dtype)
        if key not in self._casts:  # the entry keeps ``weight`` alive: its id stays its own
            self._casts[key] = (weight, weight.detach().to(dtype))
        return self._casts[key][1]

    def fire(self, current: Tensor, threshold_shift: Tensor | None = None) -> Tensor:
        """The unit's output for input current ``current`` (one time step)."""
        self.node_shape = tuple(current.shape[1:])
        if threshold_shift is not None:
            self.unit.threshold_shift = threshold_shift
        out = self.unit(current)
        if isinstance(out, tuple):  # an snntorch neuron with output=True: (spikes, states...)
            out = out[0]
        if self.recurrent is not None:  # snntorch's spikes are float32: the recurrent weight
            self.unit.spk = self.unit.spk.to(current.dtype)  # acts on them at the next step
        return out.to(current.dtype)

    def recurrent_parameters(self) -> list[nn.Parameter]:
        """A recurrent neuron's recurrent weight (and bias): ``V``, ``c`` of ``V S_{t-1} + c``."""
        return [] if self.recurrent is None else list(self.recurrent.parameters())

    def recurrent_input(self, current: Tensor, batch: int) -> Tensor:
        """The reference pass's previous-step spikes ``S_{t-1}`` (zeros at the first step), the
        input of the recurrent weight at this step; call before ``fire``."""
        previous = self.unit.spk
        if previous.shape != current.shape:
            return current.new_zeros(batch, *current.shape[1:])
        return previous[:batch].detach()

    def recurrent_gradient(
        self, e: Tensor, previous: Tensor, time_steps: int, count: int = 1,
    ) -> tuple[Tensor, ...]:
        """The recurrent weight operation's vector-Jacobian product with node signal ``e``
        (B, nodes) at its input ``previous`` (B, ...: ``S_{t-1}``, or its sum over the steps),
        divided by ``count``; a bias enters every step, so its part is ``T`` times the VJP's:
        ``(e^T S_prev / count, T sum_n e / count)`` for an all-to-all ``nn.Linear``."""
        params = self.recurrent_parameters()
        with torch.enable_grad():
            x = previous.reshape(previous.shape[0], *self.node_shape).to(e.dtype)
            out = self.recurrent(x)
            grads = torch.autograd.grad(out, params, e.reshape(out.shape) / count)
        names = [name for name, _ in self.recurrent.named_parameters()]
        return tuple(g * time_steps if name == "bias" else g for name, g in zip(names, grads))

    def membrane(self) -> Tensor | None:
        """A spiking unit's membrane potential after the last step."""
        return self.unit.mem if self.spiking else None

    # --- what the rules and the decorrelator need ------------------------------------------

    def seen_is_decorrelated(self, folded: bool) -> bool:
        return self.decorrelator is not None and not self.conv and not folded

    def gradient(
        self, e: Tensor, seen: Tensor, time_steps: int, count: int = 1,
        low: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``(g_W, g_b)`` for node signal ``e`` (B, nodes) at reference input ``seen`` (B, ...):
        the weight operation's vector-Jacobian product with ``e``, summed over the batch and
        divided by ``count``; its products in ``low`` precision (default: ``e``'s dtype), the
        result in ``e``'s.

        ``seen`` is the input summed over the T steps; the bias enters every step, so its
        part is ``T`` times the VJP's. Dense layer without ``mid``:
        ``(e^T xh / count, T sum_n e / count)``.
        """
        T = time_steps
        dtype = e.dtype
        if low is not None and low != dtype:
            e, seen = e.to(low), seen.to(low)
        if not self.conv and not self.mid:
            g_b = None if self.bias is None else e.sum(0, dtype=dtype) * T / count
            return (e.T @ seen).to(dtype) / count, g_b
        folded = self.conv and self.decorrelator is not None
        weight = (self.folded_weight() if folded else self.weight).detach().to(e.dtype)
        if self.conv and not self.mid and self.op.padding_mode == "zeros" \
                and not isinstance(self.op.padding, str):
            g_w, g_b = self._conv_gradient(e, seen, weight, T, count)
            g_w = self._unfold_r(g_w.to(dtype)) if folded else g_w.to(dtype)
            return g_w, None if g_b is None else g_b.to(dtype)
        weight.requires_grad_()
        leaves = [weight]
        bias = None
        if self.bias is not None:
            bias = (self.bias * T).detach().to(e.dtype).requires_grad_()
            leaves.append(bias)
        with torch.enable_grad():
            x = seen.reshape(seen.shape[0], *self.in_shape)
            a = self.op._conv_forward(x, weight, bias) if self.conv else F.linear(x, weight, bias)
            for module in self.mid:
                a = module(a)
            grads = torch.autograd.grad(a, leaves, e.reshape(a.shape) / count)
        g_w = grads[0].to(dtype)
        if folded:
            g_w = self._unfold_r(g_w)
        return g_w, (None if bias is None else grads[1].to(dtype) * T)

    def _conv_gradient(
        self, e: Tensor, seen: Tensor, weight: Tensor, time_steps: int, count: int
    ) -> tuple[Tensor, Tensor | None]:
        """A convolution's ``(g_W', g_b)`` without a graph: torch's weight VJP of the
        convolution alone (``aten.convolution_backward`` for the weight only, no forward),
        ``g_W' = conv_weight_vjp(x, e) / count``, and ``g_b = T sum_{n, positions} e / count``."""
        op = self.op
        x = seen.reshape(seen.shape[0], *self.in_shape)
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in  # op's output
                zip(x.shape[2:], op.kernel_size, op.stride, op.padding, op.dilation)]
        e = e.reshape(x.shape[0], op.out_channels, *size)
        _, g_w, _ = torch.ops.aten.convolution_backward(
            e, x, weight, None, op.stride, op.padding, op.dilation, False, [0, 0], op.groups,
            [False, True, False])
        g_b = None
        if self.bias is not None:
            g_b = e.sum(dim=[0, *range(2, e.dim())]) * time_steps / count
        return g_w / count, g_b

    def _unfold_r(self, g_w: Tensor) -> Tensor:
        """``W' = W R``: ``dLoss/dW = dLoss/dW' R^T``, per group."""
        R = self.decorrelator.R
        G = self.op.groups
        g_w = g_w.reshape(G, g_w.shape[0] // G, -1) @ R.view(G, *R.shape[-2:]).mT
        return g_w.reshape(self.weight.shape)

    def decorrelation_rows(self, seen: Tensor) -> Tensor:
        """The decorrelated rows ``xh`` that ``R``'s update uses, from reference inputs ``seen``
        (B, ...) already scaled to one time step: the input vectors of a dense layer, (m, d);
        the input patches of a convolution, (m * positions, d) or (groups, m * positions, d).
        """
        if not self.conv:
            return seen  # a dense layer's recorded input is already xh = R x
        op = self.op
        x = seen.reshape(seen.shape[0], *self.in_shape)
        patches = F.unfold(x, op.kernel_size, op.dilation, op.padding, op.stride)
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (m L, C kh kw)
        if op.groups > 1:
            patches = patches.view(patches.shape[0], op.groups, -1).transpose(0, 1)
        return patches if self.decorrelator is None else self.decorrelator(patches)

    def extra_repr(self) -> str:
        return f"op={self.op}, unit={self.unit}"
