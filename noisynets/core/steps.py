"""Running the user's model on the stacked passes: once, or once per time step.

Two kinds of model (``steps_model``):

* a model that keeps its state in its neurons, snntorch's ``init_hidden`` way, or has none --
  an ``nn.Sequential`` above all, and any module whose neurons all keep their own state: the
  engine runs it for ``T`` steps, neurons starting from rest, and feeds step ``t`` the input
  its ``encoding`` makes of ``x``: ``current`` (``x`` at every step), ``poisson`` (spikes
  drawn from ``x``, the same in every pass) or ``sequence`` (``x[:, t]`` of inputs (B, T, ...));
* a model that runs its own loop (its neurons take their state as arguments, as snntorch's
  tutorials write them): called once on ``x``; its ``forward`` defines ``T``.

What it returns becomes ``Outputs``: the logits (B, C) every loss and accuracy needs, and for
snntorch's losses the outputs over time (T, B, C). A stepped model's logits are the mean of
its ``T`` outputs, or for a spiking readout (its last layer's node is a spiking neuron) the
spike counts ``sum_t S_t`` (``readout="spikes"``) or the peak membrane ``max_t U_t``
(``readout="membrane"``). A model that runs its own loop returns its logits, or its spikes and
membranes over time as a pair (T, B, C), as snntorch's tutorials do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import snntorch as snn
import torch
from snntorch import spikegen
from torch import Tensor, nn

from noisynets.core.losses import Loss
from noisynets.core.model import runs_own_loop

if TYPE_CHECKING:
    from noisynets.core.forward import Forward
    from noisynets.core.network import Network

ENCODINGS: tuple[str, ...] = ("current", "poisson", "sequence")
READOUTS: tuple[str, ...] = ("spikes", "membrane")


@dataclass
class Outputs:
    """What the model returned, reduced (P B rows): ``logits`` (P B, C); ``spikes`` and
    ``membrane`` over time (T, P B, C) where there are any; ``activity``: the logits are the
    last layer's activity averaged over its calls (the Record holds them)."""

    logits: Tensor | None
    spikes: Tensor | None = None
    membrane: Tensor | None = None
    activity: bool = False


def reset_neurons(model: nn.Module) -> None:
    """Every snntorch neuron of ``model`` starts its next step from rest: its ``init_hidden``
    state buffers emptied (snntorch makes them ``zeros_like`` the next input), and the last
    spike and threshold shift that ``units.LIF`` keeps forgotten."""
    for module in model.modules():
        if isinstance(module, snn.SpikingNeuron):
            for name in module._non_persistent_buffers_set:
                old = getattr(module, name)
                setattr(module, name, torch.zeros(0, device=old.device, dtype=old.dtype))
            for name in ("spike", "threshold_shift"):
                if hasattr(module, name):
                    setattr(module, name, None)


def run_model(network: Network, forward: Forward, x: Tensor) -> Outputs:
    """The model on the ``P`` passes of batch ``x`` inside ``forward`` (module doc)."""
    P, B = forward.P, forward.B
    stacked = forward.mark_clean(x.repeat(P, *([1] * (x.dim() - 1))))
    try:
        return _run(network, forward, x, stacked)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:200]
        raise ValueError(
            f"the model's forward failed on {P} passes of {B} samples stacked as {P * B} rows "
            f"({first}): a forward that fixes the batch size cannot run stacked passes (use "
            "x.shape[0], or -1 in view and reshape)") from e


def _run(network: Network, forward: Forward, x: Tensor, stacked: Tensor) -> Outputs:
    P, B = forward.P, forward.B
    if not network.steps_model:
        return own_loop(network, network.model(stacked), P * B)
    T, model = network.time_steps, network.model
    last = network.layers[-1]
    spiking_readout = network.spiking_readout
    total: Tensor | None = None
    spikes: list[Tensor] = []
    membranes: list[Tensor] = []
    activity, readout_layer = True, network.num_layers - 1
    # The outputs of every step only where the loss reads them over time (snntorch's losses):
    # a loss on the logits needs their sum, and memory stays flat in T.
    over_time = network.loss.reads != "logits"
    reset_neurons(model)
    try:
        for t in range(T):
            if network.encoding == "sequence":
                step = stacked[:, t]
            elif network.encoding == "poisson":
                drawn = forward.draw(spikegen.rate_conv, x)
                step = forward.mark_clean(drawn.repeat(P, *([1] * (x.dim() - 1))))
            else:
                step = stacked
            out = model(step)
            spike, mem = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
            check_rows(spike, P * B)
            if spiking_readout:
                spike = spike.to(x.dtype)
                if mem is None:
                    mem = last.membrane()
                spikes.append(spike.reshape(P * B, -1))
                if isinstance(mem, Tensor):
                    membranes.append(mem.reshape(P * B, -1).to(x.dtype).clone())
                continue
            activity = activity and forward.last[readout_layer] is out
            total = out if t == 0 else total + out
            if over_time:
                spikes.append(out.reshape(P * B, -1))
    finally:
        reset_neurons(model)
    if spiking_readout:
        series = torch.stack(spikes)
        mems = torch.stack(membranes) if membranes else None
        logits = series.sum(0) if network.readout == "spikes" else mems.max(0).values
        return Outputs(logits, series, mems)
    logits = total.reshape(P * B, -1) / T
    return Outputs(logits, torch.stack(spikes) if over_time else None, None, activity)


def own_loop(network: Network | None, out: Any, rows: int) -> Outputs:
    """The outputs of a model that ran its own loop: logits (rows, C), or a pair (spikes,
    membrane) over time (T, rows, C)."""
    if isinstance(out, Tensor):
        check_rows(out, rows)
        logits = out.reshape(rows, -1)
        return Outputs(logits, None, None, False)
    if isinstance(out, (tuple, list)) and len(out) >= 1 and all(
            isinstance(o, Tensor) for o in out[:2]):
        series = [o for o in out[:2]]
        for o in series:
            if o.dim() < 2 or o.shape[1] != rows:
                raise ValueError(
                    f"the model returned a {type(out).__name__} whose tensors have shape "
                    f"{tuple(o.shape)}: a model that runs its own loop returns its logits "
                    f"(batch, classes), or its spikes and membranes over time (T, batch, "
                    f"classes) for a batch of {rows} rows")
        spikes = series[0].reshape(series[0].shape[0], rows, -1)
        mem = series[1].reshape(series[1].shape[0], rows, -1) if len(series) > 1 else None
        return Outputs(None, spikes, mem, False)
    raise ValueError(f"the model returned a {type(out).__name__}: return a tensor of logits, "
                     "or (spikes, membrane) over time as snntorch's tutorials do")


def check_rows(out: Any, rows: int) -> None:
    """The model's output has one row per row of its input."""
    if not isinstance(out, Tensor):
        raise ValueError(f"the model returned a {type(out).__name__} at a time step: return a "
                         "tensor (or an snntorch neuron's (spikes, membrane))")
    if out.dim() == 0 or out.shape[0] != rows:
        raise ValueError(f"the model returned shape {tuple(out.shape)} for an input of {rows} "
                         "rows: its output must keep the batch as its first dimension (no fixed "
                         "batch size)")


def score(loss: Loss, out: Outputs, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits, per-row loss)`` of outputs ``out`` for targets ``target`` (one per row):
    the loss on the logits, or (snntorch's losses) on the outputs over time, whose
    prediction are then the logits."""
    if loss.reads == "logits":
        if out.logits is None:
            raise ValueError(
                f"the model returns its spikes and membranes over time, which the loss "
                f"{loss.name!r} cannot read: choose one of snntorch's losses (--loss "
                "ce_rate_loss, ce_count_loss, ...) or return logits")
        logits = out.logits.reshape(target.shape[0], -1)
        return logits, loss.from_logits(logits, target)
    series = out.membrane if loss.reads == "membrane" and out.membrane is not None \
        else out.spikes
    if series is None:  # logits alone: one step of them
        series = out.logits.unsqueeze(0)
    logits = out.logits if out.logits is not None else loss.prediction(series)
    return logits, loss.from_spikes(series, target)


@torch.no_grad()
def plain_outputs(model: nn.Module, x: Tensor, time_steps: int = 1) -> Outputs:
    """What a plain model (no engine: ``export_model``'s copy) returns for ``x``: a model that
    runs its own loop called once, any other run for ``time_steps`` steps of the constant
    input from rest, its logits the mean of its outputs."""
    if runs_own_loop(model):
        return own_loop(None, model(x), x.shape[0])
    reset_neurons(model)
    try:
        total = None
        for _ in range(time_steps):
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            total = out if total is None else total + out
    finally:
        reset_neurons(model)
    return Outputs(total.reshape(x.shape[0], -1) / time_steps)
