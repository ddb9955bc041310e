"""What the engine adds beside the weight operations during a ``Forward``, one hook each.

* a recurrent neuron's recurrent weight: its input ``S_{t-1}`` summed for the Record;
* a node module after a layer: its outputs (and membrane) where the Record keeps them
  (traces, local losses);
* a discontinuous unit (Heaviside, sign, spikes): its output, marked for the next layer's
  event-driven difference product;
* a ``units.LIF`` node with threshold noise: the noise, in its layer's noisy passes;
* ``nn.Dropout`` (any ``_DropoutNd``): one mask per sample and forward, the same in every pass
  and call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import snntorch as snn
import torch
from torch import Tensor, nn

from noisynets.core.record import mirrored

if TYPE_CHECKING:
    from noisynets.core.forward import Forward


def recurrent_input(f: Forward, k: int, module: nn.Module, args: tuple) -> tuple:
    """A recurrent weight's input ``S_{t-1}`` (all passes): its reference rows summed for
    the Record, in the network's dtype (snntorch's spikes are float32)."""
    previous = args[0]
    weight = f.layers[k].recurrent_parameters()[0]
    if previous.dtype != weight.dtype:
        previous = previous.to(weight.dtype)
    reference = previous[: f.B].detach().reshape(f.B, -1)
    f.previous[k] = reference if f.previous[k] is None else f.previous[k] + reference
    pending = f.pending.pop(k, None)
    if pending is not None:
        f.on_step(k, pending[0], pending[1], pending[2], pending[3], reference)
    return (previous, *args[1:])


def node_output(f: Forward, k: int, module: nn.Module, args: tuple, out: Any) -> None:
    """Layer ``k``'s node outputs (and a neuron's membrane) where the Record keeps them."""
    h = out[0] if isinstance(out, tuple) else out
    flat = h.reshape(h.shape[0], -1)
    if f.keep_states:
        f.outputs[k].append(flat.detach().to(f.network.dtype))
        mem = getattr(module, "mem", None) if isinstance(module, snn.SpikingNeuron) else None
        if isinstance(mem, Tensor) and mem.shape == h.shape:
            f.membrane[k].append(mem.detach().reshape(h.shape[0], -1).clone())
    if f.network.heads is not None:
        flat = flat.to(f.network.dtype)
        f.hidden[k] = flat.clone() if f.hidden[k] is None else f.hidden[k] + flat


def discontinuous(f: Forward, module: nn.Module, args: tuple, out: Any) -> None:
    """A discontinuous unit's last output, known by its storage to the next layer."""
    h = out[0] if isinstance(out, tuple) else out
    if isinstance(h, Tensor):
        f.discontinuous[id(module)] = h


def threshold_noise(f: Forward, k: int, module: nn.Module, args: tuple) -> None:
    """``units.LIF``'s threshold noise in the layer's noisy passes (zero elsewhere)."""
    layer, (start, stop) = f.layers[k], f.passes.noisy[k]
    current = args[0]
    if stop <= start:
        module.threshold_shift = None
        return
    B = f.B
    shift = torch.zeros_like(current)
    shift[start * B: stop * B] = f.draw(layer.threshold_noise, current[start * B: stop * B])
    if f.passes.antithetic:
        shift[start * B: stop * B] = mirrored(shift[start * B: stop * B], B)
    module.threshold_shift = shift


def dropout(f: Forward, module: nn.Module, h: Tensor) -> Tensor:
    """Dropout with one mask per sample and forward, the same in every pass and call
    (of the global batch when sharded), repeated over the passes: ``nn.Dropout``'s
    ``bernoulli(1 - p) / (1 - p)``, any other dropout module's own dropout of ones."""
    mask = f._masks.get(id(module))
    if mask is None or mask.shape[1:] != h.shape[1:]:
        shape = (f.B, *h.shape[1:])
        if type(module) is nn.Dropout:
            keep = 1.0 - module.p
            mask = f.draw(lambda o: torch.bernoulli(torch.full_like(o, keep)) / keep,
                             h.new_zeros(shape))
        else:
            drop = type(module).forward
            mask = f.draw(lambda o: drop(module, torch.ones_like(o)), h.new_zeros(shape))
        f._masks[id(module)] = mask
    return h * mask.repeat(h.shape[0] // f.B, *([1] * (h.dim() - 1)))
