"""One batched forward of a plan of passes through the user's own module, by hooks.

For ``P`` passes of a batch of ``B`` samples the model is called on ``P * B`` rows (pass ``p``
in rows ``p*B .. (p+1)*B``), whatever its ``forward`` does: loops over time steps, residual
sums, concatenation, several outputs. While a ``Forward`` is open, every weight operation of
the network (``noisynets.core.ops``) runs ``Forward.drive`` instead of its own ``forward``;
at every call (a time step, or a second use of the same layer)::

    a_ref = op(x_ref)                          the reference pass's rows, in full
    a_p   = a_ref + op_0(x_p - x_ref)          a pass whose input differs from the reference's
                                               (``op_0``: without the bias; in the network's
                                               difference precision, event-driven where few
                                               entries differ); the others are ``a_ref``
    a_p  += eps_p                              the nodes' noise, in the passes the plan makes
                                               noisy in this layer
    sum_inputs += x_ref ;  sum_activity += a   (the Record: summed over the calls)

A pass "differs" once noise entered it anywhere earlier in the forward; an input the engine
made itself (the data stacked ``P`` times, its spikes) is the same in every pass, and the
first layer's product of an unchanged input is computed once for all calls. That a pass not
yet perturbed is the reference pass row for row is checked on a network's first forward (a
model that draws its own random numbers per row is then run with every pass in full).

Beside the weight operations the engine hooks dropout, recurrent weights, threshold noise and
the node modules (``noisynets.core.node_hooks``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import snntorch as snn
import torch
from torch import Tensor, nn

from noisynets.core.layer import EVENT_MIN_OUTPUTS, Layer
from noisynets.core.node_hooks import (
    discontinuous,
    dropout,
    node_output,
    recurrent_input,
    threshold_noise,
)
from noisynets.core.precision import difference_dtype
from noisynets.core.record import Passes, mirrored
from noisynets.core.units import LIF, Heaviside, Sign

if TYPE_CHECKING:
    from noisynets.core.network import Network

# ``on_step(layer, t, xh_t, I_t, eps_t, s_t)`` after call ``t`` of layer ``layer``: its
# reference input ``xh_t`` (B, ...), its activity ``I_t`` of every pass (P B, ...), the noise
# ``eps_t`` of its noisy passes (None where it has none) and, for a recurrent neuron, the
# reference pass's previous-step spikes ``s_t = S_{t-1}`` (else None).
StepHook = Callable[[int, int, Tensor, Tensor, "Tensor | None", "Tensor | None"], None]


class Route:
    """What a rule changes in every call of a weight operation (by default nothing):
    ``enter(forward, k, h)`` is the input layer ``k``'s operation multiplies (feedback
    alignment detaches it), ``leave(forward, k, h, a)`` the activity the model sees next,
    from the input ``h`` that arrived and the activity ``a`` the engine made (weight
    perturbation adds its products there, feedback alignment its feedback path)."""

    def enter(self, forward: Forward, k: int, h: Tensor) -> Tensor:
        return h

    def leave(self, forward: Forward, k: int, h: Tensor, a: Tensor) -> Tensor:
        return a


DISCONTINUOUS: tuple[type[nn.Module], ...] = (Heaviside, Sign, snn.SpikingNeuron)


def storage(t: Tensor) -> int:
    """The address of ``t``'s memory (shared by its views)."""
    return t.untyped_storage().data_ptr()


class Forward:
    """The state of one batched forward (module doc); a context manager that installs the
    engine on the network's model and removes it again, whatever happens inside."""

    def __init__(
        self, network: Network, passes: Passes, batch: int, noise_out: bool = False,
        keep_states: bool = False, on_step: StepHook | None = None,
        constant_input: bool = False, route: Route | None = None,
    ) -> None:
        L = network.num_layers
        self.network, self.passes, self.B, self.P = network, passes, batch, passes.count
        self.layers: list[Layer] = list(network.layers)
        self.low = difference_dtype(network.precision, network.dtype, network.device)
        self.keep_states, self.on_step, self.read_noise = keep_states, on_step, noise_out
        self.constant_input = constant_input  # the same input tensor at every call
        self.route = route
        self.noised: set[int] = set()  # the passes noise entered so far
        self.clean: dict[int, Tensor] = {}  # inputs the same in every pass, by storage
        self.discontinuous: dict[int, Tensor] = {}  # per discontinuous unit its last output
        self.verify = network.rows_identical is None and self.P > 1
        self.unequal = torch.zeros((), dtype=torch.bool, device=network.device)
        self.calls = [0] * L
        self.inputs: list[Tensor | None] = [None] * L
        self.activity: list[Tensor | None] = [None] * L
        self.noise: list[Tensor | None] = [None] * L
        self.previous: list[Tensor | None] = [None] * L
        self.outputs: list[list[Tensor]] = [[] for _ in range(L)]
        self.membrane: list[list[Tensor]] = [[] for _ in range(L)]
        self.hidden: list[Tensor | None] = [None] * L  # node outputs summed (local losses)
        self.last: list[Tensor | None] = [None] * L  # what each layer returned last
        self.watched: list[tuple[Tensor, int, str]] = []  # (tensor, version): not changed
        self.weights: dict[int, Tensor | None] = {}
        self._cache: dict[int, tuple[tuple, Tensor, Tensor, Tensor, Tensor | None]] = {}
        self._buffers: dict[int, Tensor] = {}
        self._masks: dict[int, Tensor] = {}
        self.pending: dict[int, tuple] = {}
        self._handles: list[Any] = []
        self._patched: list[nn.Module] = []
        # What each layer is, read once per forward.
        self.noisy = passes.noisy
        self.dtypes = [layer.dtype for layer in self.layers]
        self.sources = [layer.noise for layer in self.layers]
        self.decorrelators = [layer.decorrelator for layer in self.layers]
        # Event-driven differences: a dense layer whose input are a discontinuous unit's
        # outputs, large enough for them (or whose changes are counted: diagnostics).
        self.dense = [not layer.conv and (layer.out_features >= EVENT_MIN_OUTPUTS
                                          or layer.count_changes) for layer in self.layers]
        self.event_driven = [False] * L
        # An unchanged drive after the first step may be rewritten in one buffer per forward
        # where the module after the weight operation is its own unit (``Layer.buffer_safe``).
        # Only for an input that is the same at every call (current encoding): a Poisson or
        # sequence input changes at every step, and so does the reference pass's drive.
        self.buffered = [layer.buffer_safe and network.steps_model and constant_input
                         and not keep_states and not torch.is_grad_enabled()
                         for layer in self.layers]

    # --- installing the engine ------------------------------------------------------------

    def __enter__(self) -> Forward:
        try:
            for k, layer in enumerate(self.layers):
                self._patch(layer.op, functools.partial(self.drive, k))
                layer.casts, layer.changed = {}, [0, 0]
                if layer.recurrent is not None:
                    self._hook(layer.recurrent.register_forward_pre_hook(
                        functools.partial(recurrent_input, self, k)))
                if layer.unit is not None and (self.keep_states or self.network.heads is not None
                                               and k < len(self.layers) - 1):
                    self._hook(layer.unit.register_forward_hook(
                        functools.partial(node_output, self, k)))
                if isinstance(layer.unit, LIF) and layer.threshold_noise is not None:
                    self._hook(layer.unit.register_forward_pre_hook(
                        functools.partial(threshold_noise, self, k)))
            for module in self.network.model.modules():
                if isinstance(module, DISCONTINUOUS) and any(self.dense[1:]):
                    self._hook(module.register_forward_hook(
                        functools.partial(discontinuous, self)))
                if isinstance(module, nn.modules.dropout._DropoutNd) and module.training \
                        and module.p > 0:
                    self._patch(module, functools.partial(dropout, self, module))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _patch(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        if "forward" in module.__dict__:
            raise ValueError(f"{type(module).__name__} has a forward of its own instance (it is "
                             "already patched, perhaps by another noisynets forward)")
        module.forward = forward
        self._patched.append(module)

    def _hook(self, handle: Any) -> None:
        self._handles.append(handle)

    def __exit__(self, *exc: Any) -> None:
        for module in self._patched:
            del module.forward
        for handle in self._handles:
            handle.remove()
        self._patched, self._handles = [], []
        for layer in self.layers:
            layer.casts = {}

    def mark_clean(self, t: Tensor) -> Tensor:
        """Register ``t`` (P B rows, made by the engine) as the same in every pass."""
        self.clean[storage(t)] = t
        return t

    def draw(self, source: Callable[[Tensor], Tensor], a: Tensor) -> Tensor:
        """``source(a)`` (noise, spikes, masks): of the global batch, this rank's rows."""
        shard = self.network.shard
        return source(a) if shard is None else shard.drawn_globally(source, a)

    # --- a weight operation's call ---------------------------------------------------------

    def drive(self, k: int, h: Tensor) -> Tensor:
        """Layer ``k``'s weight operation on ``h`` (P B rows): the module doc's algorithm."""
        B, P = self.B, self.P
        if h.shape[0] != P * B:
            layer = self.layers[k]
            raise ValueError(
                f"layer {k + 1} ({layer.name!r}, {layer.op_type}) got {h.shape[0]} "
                f"rows where the {P} passes of a batch of {B} hold {P * B}: the model's forward "
                "must keep the batch as the first dimension of every layer's input (no fixed "
                "batch size, no time steps folded into the batch)")
        t = self.calls[k]
        self.calls[k] = t + 1
        ptr = h.untyped_storage().data_ptr()
        known = self.clean.get(ptr)
        clean = known is not None and known.stride(0) == h.stride(0)
        event = self.dense[k] and any(storage(out) == ptr for out in self.discontinuous.values())
        if event:
            self.event_driven[k] = True
        if h.dtype != self.dtypes[k]:  # snntorch's spikes are float32
            h = h.to(self.dtypes[k])
        arrived = h
        if self.route is not None:
            h = self.route.enter(self, k, h)
        weight = self.weights[k] if k in self.weights else self._weight(k, clean)
        seen, a_ref, full = self._reference(k, h, ptr, weight, clean)
        start, stop = self.noisy[k]
        if full is not None:
            if stop > start and t > 0 and self.buffered[k]:
                a = self._buffers.get(k)
                if a is None:
                    a = self._buffers[k] = full.clone()
            else:
                a = full.clone()
        elif P == 1:  # a cached drive stays noise-free
            a = a_ref.clone() if clean and stop > start else a_ref
        else:
            a = self._passes(k, h, a_ref, weight, event)
        eps = None
        if stop > start:
            noisy = slice(start * B, stop * B)
            drive = full[noisy] if full is not None else a[noisy]
            eps = self.draw(self.sources[k], drive)
            if self.passes.antithetic:
                eps = mirrored(eps, B)
            if a is self._buffers.get(k):  # a = a_ref + eps in the noisy rows, written once
                torch.add(drive, eps, out=a[noisy])
            else:
                a[noisy] += eps
            self.noised.update(range(start, stop))
            if self.read_noise:
                self.noise[k] = eps if t == 0 else self.noise[k] + eps
        if self.route is not None:
            a = self.route.leave(self, k, arrived, a)
        if t == 0:
            layer = self.layers[k]
            layer.in_shape, layer.node_shape = tuple(h.shape[1:]), tuple(a.shape[1:])
            self.watched.append((h, h._version, f"the input of layer {k + 1} ({layer.name!r})"))
        self.last[k] = a
        self._record(k, t, seen, a)
        if self.on_step is not None:
            self._step(k, t, seen, weight, a, eps)
        return a

    def _weight(self, k: int, clean: bool) -> Tensor | None:
        """The weight layer ``k`` multiplies by in this forward: ``W`` read through device
        noise (times ``R``), ``W R`` folded, or None where a dense layer decorrelates its rows
        (cheaper than folding when it multiplies fewer than ``n_out + B`` rows)."""
        if k in self.weights:
            return self.weights[k]
        layer, network = self.layers[k], self.network
        decorrelator = self.decorrelators[k]
        if network.weight_noise is not None:
            weight = layer.folded_weight(network.weight_noise.weight(k, layer.weight))
        elif decorrelator is None:
            weight = layer.op.weight
        elif layer.conv:
            weight = layer.folded_weight()
        else:
            calls = network.time_steps if network.steps_model else layer.calls
            passes = 1 if clean else self.P
            rows = self.B if clean and self.constant_input else calls * passes * self.B
            weight = layer.folded_weight() if rows > layer.out_features + self.B else None
        self.weights[k] = weight
        return weight

    def _reference(self, k: int, h: Tensor, ptr: int, weight: Tensor | None, clean: bool
                   ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(seen, a_ref, full)`` of the reference rows, and for an input the same in every
        pass ``full``, ``a_ref`` in every pass (else None); for such an input that is the
        same as at the layer's last call (the data at every step), all computed then."""
        key = (ptr, h.storage_offset(), h.shape, h.stride(), h._version)
        cached = self._cache.get(k)
        if clean and cached is not None and cached[0] == key:
            return cached[2], cached[3], cached[4]
        try:
            seen, a_ref = self.layers[k].product(h[: self.B], weight)
        except RuntimeError as e:
            raise ValueError(self._misfit(k, h, e)) from None
        if not clean:
            return seen, a_ref, None
        full = None
        if self.P > 1:
            full = a_ref.new_empty((self.P, *a_ref.shape))
            full[:] = a_ref
            full = full.view(self.P * self.B, *a_ref.shape[1:])
        self._cache[k] = (key, h, seen, a_ref, full)
        return seen, a_ref, full

    def _misfit(self, k: int, h: Tensor, error: RuntimeError) -> str:
        """One line saying which layer cannot take the input that arrived, and what it takes."""
        layer = self.layers[k]
        op, shape = layer.op, tuple(h.shape[1:])
        if layer.conv:
            wants = f"{op.in_channels} input channels"
        else:
            wants = f"{op.in_features} features on the last axis"
        flat = not layer.conv and len(shape) > 1 and shape[-1] != op.in_features
        hint = ": flatten the samples first (nn.Flatten() before it)" if flat else ""
        return (f"layer {k + 1} ({layer.name!r}, {layer.op_text}) takes {wants}, but its input "
                f"arrived with shape {shape} per sample{hint} "
                f"({' '.join(str(error).split())[:120]})")

    def _passes(self, k: int, h: Tensor, a_ref: Tensor, weight: Tensor | None, event: bool
                ) -> Tensor:
        """The activity of every pass (P B rows, before the noise): ``a_ref`` where the input
        is the reference pass's, ``a_ref + op_0(x_p - x_ref)`` where it differs. On the first
        forward of a network every pass runs, and those taken for unchanged are checked."""
        B, P = self.B, self.P
        lo, hi = self._differing()
        stacked = h.view(P, B, *h.shape[1:])
        if self.verify:
            for a, b in ((1, lo), (hi, P)):
                if b > a:  # passes taken for unchanged: each must equal the reference
                    self.unequal |= stacked[a:b].ne(stacked[:1]).any()
            lo, hi = 1, P
        a = a_ref.new_empty((P, *a_ref.shape))
        a[:lo] = a_ref
        if hi < P:
            a[hi:] = a_ref
        if hi > lo:
            dh = (stacked[lo:hi] - stacked[0]).view(-1, *h.shape[1:])
            da = self.layers[k].difference(dh, weight, self.low, event).view(hi - lo,
                                                                             *a_ref.shape)
            if torch.is_grad_enabled():
                a[lo:hi] = da + a_ref
            else:
                torch.add(da, a_ref, out=a[lo:hi])  # a = a_ref + op_0(h - h_ref), one write
        return a.view(P * B, *a_ref.shape[1:])

    def _differing(self) -> tuple[int, int]:
        """The passes ``(lo, hi)`` whose rows may differ from the reference pass's: those
        noise entered so far (every pass, once the reference pass is noisy, or where the
        model makes passes differ itself)."""
        P = self.P
        if self.network.rows_identical is False or 0 in self.noised:
            return 1, P
        if not self.noised:
            return P, P
        return min(self.noised), max(self.noised) + 1

    # --- what the Record keeps ---------------------------------------------------------------

    def _record(self, k: int, t: int, seen: Tensor, a: Tensor) -> None:
        B, P = self.B, self.P
        flat = a.reshape(P * B, -1)
        reference = seen[:B].reshape(B, -1)
        if t == 0:  # sums of tensors this forward owns from t = 1: summed in place
            self.inputs[k], self.activity[k] = reference, flat
            self.watched.append((a, a._version, f"the output of layer {k + 1} "
                                 f"({self.layers[k].name!r})"))
        elif t == 1:
            self.check_unchanged()
            self.inputs[k] = self.inputs[k] + reference
            self.activity[k] = self.activity[k] + flat
        else:
            self.inputs[k] += reference
            self.activity[k] += flat
        if self.keep_states and self.layers[k].unit is None:
            self.outputs[k].append(flat.detach())

    def check_unchanged(self) -> None:
        """``ValueError`` when the model changed a tensor the Record holds in place."""
        for tensor, version, what in self.watched:
            if tensor._version != version:
                raise ValueError(
                    f"the model changed {what} in place (an operation such as x += ..., "
                    "x.relu_() or inplace=True), which overwrites what noisynets records: "
                    "write it out of place (x = x + ...)")
        self.watched = []

    def _step(self, k: int, t: int, seen: Tensor, weight: Tensor | None, a: Tensor,
              eps: Tensor | None) -> None:
        layer = self.layers[k]
        xh = seen[: self.B]
        if weight is not None and not layer.conv and self.decorrelators[k] is not None:
            xh = self.decorrelators[k].decorrelate(xh)
        if layer.recurrent is not None:  # its recurrent weight's input comes with the neuron
            self.pending[k] = (t, xh, a, eps)
            return
        self.on_step(k, t, xh, a, eps, None)

    def finish(self) -> None:
        """After the model ran: the in-place check, and the rows' equality learned once."""
        self.check_unchanged()
        missing = [layer.name for layer, n in zip(self.layers, self.calls) if n == 0]
        if missing:
            raise ValueError(f"the model's forward did not call {', '.join(missing)}: every "
                             "weight operation must run in every forward (remove unused ones, "
                             "or freeze them with requires_grad_(False))")
        for layer, n, event in zip(self.layers, self.calls, self.event_driven):
            layer.calls, layer.event_driven = n, event
        if self.verify:
            self.network.rows_identical = not bool(self.unequal)
