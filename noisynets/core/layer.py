"""A layer: one weight operation of the user's model, the nodes it drives, and their noise.

Every call of a weight operation drives nodes (``noisynets.core.forward``)::

    a   = op(x; W R, b)          the weight operation, R folded into W (or xh = R x first)
    at  = a + eps                the nodes' intrinsic noise, in the passes where it is noisy

and whatever the model's ``forward`` does next (an activation, a neuron, a residual sum) sees
``at``. The layer's gradient for a node-wise error signal ``e`` is the weight operation's own
vector-Jacobian product at the reference pass's input (``noisynets.core.ops``): for a dense
layer ``e^T xh``, for a convolution the correlation of ``e`` with the input patches. Nothing
travels from layer to layer.

The weight operation and its node (``unit``: the activation or neuron module registered after
it, if any) belong to the user's model; a layer refers to them without owning them, so the
model's ``state_dict`` is the user's own. A layer owns its noise sources. ``R`` lives in the
model (``noisynets.core.decorrelation``).

Example::

    >>> import torch
    >>> from torch import nn
    >>> from noisynets.core.noise import Gaussian
    >>> layer = Layer("fc", nn.Linear(4, 3), Gaussian(0.1))
    >>> seen, a = layer.product(torch.ones(2, 4))
    >>> a.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import warnings
from typing import Any

import snntorch as snn
import torch
from torch import Tensor, nn

from noisynets.core.decorrelation import Decorrelator, decorrelator_of, trained_weight
from noisynets.core.noise import NoiseSource
from noisynets.core.ops import fold, kind_of, unfold_gradient

# The largest share of changed input entries at which a dense layer's difference product runs
# event-driven (a sparse product over the changed entries): at 1 % it is 4-7x faster than the
# dense product on a 1000 x 1000 layer, and the two break even between 3 and 10 % (measured
# on an AMD EPYC with AVX-512, one thread, float32 and float64; `noisynets bench`).
EVENT_FRACTION = 0.02
# Below this many input entries or output nodes the dense product is as fast (measured).
EVENT_MIN_ENTRIES = 1 << 15
EVENT_MIN_OUTPUTS = 64


class Layer(nn.Module):
    """Weight operation ``op`` (called ``name`` in the model), its nodes' ``noise`` and, for
    ``units.LIF`` nodes, ``threshold_noise``; ``unit`` the node module after it (None: the
    model applies a function, or it is the readout); ``recurrent`` a recurrent neuron's own
    weight operation on its previous spikes (``RLeaky``, ``RSynaptic``), which shares the
    layer's nodes and their signal."""

    def __init__(
        self,
        name: str,
        op: nn.Module,
        noise: NoiseSource,
        unit: nn.Module | None = None,
        threshold_noise: NoiseSource | None = None,
    ) -> None:
        super().__init__()
        kind = kind_of(op)
        if kind is None:
            raise TypeError(f"{type(op).__name__} is not a weight operation noisynets knows")
        self.name = name
        object.__setattr__(self, "op", op)  # not registered: the user's model owns these
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "kind", kind)
        self.noise = noise
        self.threshold_noise = threshold_noise
        self.conv = kind.conv
        self.spiking = isinstance(unit, snn.SpikingNeuron)
        self.recurrent: nn.Module | None = None
        if isinstance(unit, (snn.RLeaky, snn.RSynaptic)) and any(
                p.requires_grad for p in unit.recurrent.parameters()):
            object.__setattr__(self, "recurrent", unit.recurrent)
        # One sample's input and node shapes, and the layer's calls, seen at run time.
        self.in_shape: tuple[int, ...] | None = None
        self.node_shape: tuple[int, ...] | None = None
        self.calls = 1
        self.casts: dict[tuple[int, Any], tuple[Tensor, Tensor]] = {}
        self.events = 0  # difference products run event-driven, since construction
        self.count_changes = False  # count the changed entries even where no event product runs
        self.changed = [0, 0]  # in the last forward: changed input entries, entries compared
        self.event_driven = False  # the last forward's input came from discontinuous units
        # The module after the op is its own unit, which keeps nothing of its input: an
        # unchanged drive may be rewritten in one buffer per forward (``core.forward``).
        self.buffer_safe = False

    @property
    def decorrelator(self) -> Decorrelator | None:
        """``R`` of the weight operation (in the user's model), or None."""
        return decorrelator_of(self.op)

    @property
    def weight(self) -> nn.Parameter:
        """``W``, the trained weight (the model uses ``W R`` where it is decorrelated)."""
        return trained_weight(self.op)

    @property
    def bias(self) -> nn.Parameter | None:
        return self.op.bias

    @property
    def op_type(self) -> str:
        """The weight operation's class name (``Linear``, not ``ParametrizedLinear``)."""
        cls = type(self.op)
        return (cls.__bases__[0] if cls.__name__.startswith("Parametrized") else cls).__name__

    @property
    def op_text(self) -> str:
        """The weight operation as its plain module prints, e.g. ``Linear(in_features=...)``."""
        return f"{self.op_type}({self.op.extra_repr()})"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weight operation computes in."""
        return self.weight.dtype

    @property
    def out_features(self) -> int:
        return self.kind.out_features(self.op)

    @property
    def changed_fraction(self) -> float | None:
        """The share of the differing passes' input entries that differed from the reference
        pass's in the last forward (all calls), for an event-driven layer where it was
        counted (a layer large enough for event products, or any with ``count_changes``)."""
        changed, compared = self.changed
        return changed / compared if self.event_driven and compared else None

    def folded_weight(self, W: Tensor | None = None) -> Tensor:
        """``W R`` (for a convolution: every filter times ``R`` on its patch features); ``W``
        defaults to the layer's weight."""
        W = self.weight if W is None else W
        decorrelator = self.decorrelator
        return W if decorrelator is None else fold(W, decorrelator.R)

    # --- products ---------------------------------------------------------------------------

    def product(self, x: Tensor, weight: Tensor | None = None, bias: Any = True
                ) -> tuple[Tensor, Tensor]:
        """``(seen, op(x))``: with ``weight`` (``W R`` folded, or read through device noise)
        the product with it; without, a dense layer decorrelates the rows, ``seen = R x``, and
        a convolution folds. ``bias=None`` leaves the bias out."""
        bias = self.bias if bias is True else bias
        if weight is None:
            decorrelator = self.decorrelator
            if self.conv or decorrelator is None:
                weight = self.folded_weight()
            else:
                x = decorrelator.decorrelate(x)
                weight = self.weight
        return x, self.kind.product(self.op, x, weight, bias)

    def difference(self, dh: Tensor, weight: Tensor | None, low: torch.dtype | None,
                   event: bool = False) -> Tensor:
        """``op_0(dh)``: the product without the bias, in ``low`` precision, in ``dh``'s dtype;
        for inputs from discontinuous units (``event``), event-driven (in ``dh``'s dtype)
        where few entries of ``dh`` differ from zero."""
        unfolded_r = weight is None and self.decorrelator is not None
        large = (dh.numel() >= EVENT_MIN_ENTRIES and self.out_features >= EVENT_MIN_OUTPUTS
                 and not torch.is_grad_enabled())  # autograd (BP) runs the dense product
        if event and dh.dim() == 2 and (self.count_changes or large and not unfolded_r):
            changed = int(torch.count_nonzero(dh))  # reads one number (discontinuous inputs only)
            self.changed[0] += changed
            self.changed[1] += dh.numel()
            if changed <= EVENT_FRACTION * dh.numel() and large and not unfolded_r:
                self.events += 1
                return self.event_product(dh, self.weight if weight is None else weight)
        if low is None or low == dh.dtype:
            return self.product(dh, weight, None)[1]
        x = dh.to(low)
        if weight is None and not self.conv:
            decorrelator = self.decorrelator
            if decorrelator is not None:
                x = x @ self.low(decorrelator.R, low).mT
            weight = self.weight
        elif weight is None:
            weight = self.folded_weight()
        return self.kind.product(self.op, x, self.low(weight, low), None).to(dh.dtype)

    def event_product(self, dh: Tensor, weight: Tensor) -> Tensor:
        """``dh W^T`` summed over the changed entries only: per row ``n``,
        ``sum_{i: dh_ni != 0} dh_ni W[:, i]``, i.e. ``W[:, changed] (h - h_ref)[changed]``.

        A sparse (CSR) product of ``dh``'s nonzero entries with ``W^T``: the same terms as
        the dense product less its zero ones, summed in column order; equal to the bit where
        the sums are exact, within a few ulp of the dense product's (BLAS's) order elsewhere.
        """
        key = (id(weight), torch.sparse_csr)  # W^T, made contiguous once per forward
        if key not in self.casts:
            self.casts[key] = (weight, weight.detach().mT.contiguous())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return dh.to_sparse_csr() @ self.casts[key][1]

    def low(self, weight: Tensor, dtype: torch.dtype) -> Tensor:
        """A weight (``W``, ``R``, a folded ``W R``) in ``dtype``, cast once per forward."""
        key = (id(weight), dtype)
        if key not in self.casts:  # the entry keeps ``weight`` alive: its id stays its own
            self.casts[key] = (weight, weight.detach().to(dtype))
        return self.casts[key][1]

    # --- what the rules and the decorrelator need -------------------------------------------

    def gradient(
        self, e: Tensor, seen: Tensor, time_steps: int, count: int = 1,
        low: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``(g_W, g_b)`` for node signal ``e`` (B, nodes) at reference input ``seen`` (B, ...):
        the weight operation's vector-Jacobian product with ``e``, summed over the batch and
        divided by ``count``; its products in ``low`` precision (default: ``e``'s dtype), the
        result in ``e``'s.

        ``seen`` is the input summed over the layer's ``time_steps`` calls; the bias enters
        every call, so its part is ``T`` times the VJP's. Dense layer:
        ``(e^T xh / count, T sum_n e / count)``.
        """
        T, dtype = time_steps, e.dtype
        if low is not None and low != dtype:
            e, seen = e.to(low), seen.to(low)
        x = seen.reshape(seen.shape[0], *self.in_shape) if self.in_shape else seen
        if not self.conv:
            g_b = None if self.bias is None else (
                self.kind.bias_vjp(self.op, e, x, dtype) * T / count)
            return self.kind.weight_vjp(self.op, e, x, None).to(dtype) / count, g_b
        decorrelator = self.decorrelator
        weight = self.folded_weight().detach().to(e.dtype)
        g_w = self.kind.weight_vjp(self.op, e, x, weight) / count
        g_b = None
        if self.bias is not None:
            g_b = (self.kind.bias_vjp(self.op, e, x, e.dtype) * T / count).to(dtype)
        g_w = g_w.to(dtype)
        if decorrelator is not None:
            g_w = unfold_gradient(g_w, decorrelator.R)
        return g_w, g_b

    def recurrent_parameters(self) -> list[nn.Parameter]:
        """A recurrent neuron's recurrent weight (and bias): ``V``, ``c`` of ``V S_{t-1} + c``."""
        return [] if self.recurrent is None else list(self.recurrent.parameters())

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

    def decorrelation_rows(self, seen: Tensor) -> Tensor:
        """The decorrelated rows ``xh`` that ``R``'s update uses, from reference inputs ``seen``
        (B, ...) already scaled to one call: the input vectors of a dense layer (already
        ``xh = R x`` as recorded), (m, d); the input patches of a convolution, (m * positions,
        d) or (groups, m * positions, d), times ``R^T``."""
        x = seen.reshape(seen.shape[0], *self.in_shape) if self.in_shape else seen
        rows = self.kind.rows(self.op, x)
        decorrelator = self.decorrelator
        if not self.conv or decorrelator is None:
            return rows
        return decorrelator.decorrelate(rows)

    def membrane(self) -> Tensor | None:
        """A spiking unit's membrane potential after its last step."""
        return getattr(self.unit, "mem", None) if self.spiking else None

    def extra_repr(self) -> str:
        return f"{self.name!r}, op={self.op_text}, unit={self.unit}"
