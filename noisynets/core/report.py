"""What a finished forward reports: its ``Record``, and the noise for the rules that read it.

Per layer the Record holds what a system could report of it (docs/algorithms.md, "Time
steps"): the activity ``a_l = sum_t I_{l,t}`` of every pass, read through the network's ADC
when it has one; the reference pass's input of every weight operation, summed over its calls
(``xh = R x`` for a decorrelated dense layer); each pass's loss on what the model returned;
the readout; with local losses each head's loss; with ``keep_states`` every step's outputs and
membranes. The injected noise is not in it: only
``injected_noise`` returns it, for the rules that must read it (NP).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from noisynets.core.record import Record
from noisynets.core.steps import Outputs, score

if TYPE_CHECKING:
    from noisynets.core.forward import Forward
    from noisynets.core.network import Network


def make_record(network: Network, f: Forward, out: Outputs, y: Tensor, loss: bool) -> Record:
    """The Record of a finished forward ``f`` of ``network`` whose model returned ``out``
    (module doc); the losses against targets ``y`` unless ``loss`` is False."""
    P, B = f.P, f.B
    calls = list(f.calls)
    T = network.time_steps if network.steps_model else max(calls)
    activity = [a.view(P, B, -1) for a in f.activity]
    if network.adc is not None:  # what the system reports is read through its ADC
        activity = [network.adc.read(a) for a in activity]
    inputs = [layer.decorrelator.decorrelate(s) if f.weights.get(k) is not None
              and layer.decorrelator is not None and not layer.conv else s
              for k, (layer, s) in enumerate(zip(network.layers, f.inputs))]
    if network.adc is not None:  # a hidden layer's input is the output of nodes: read too
        inputs = inputs[:1] + [network.adc.read(s) for s in inputs[1:]]
    record = Record(inputs, activity, activity[0].new_zeros(P, B), T,
                    steps=None if all(c == T for c in calls) else calls)
    target = y.repeat(P, *([1] * (y.dim() - 1)))
    if out.activity:  # the logits are the readout layer's activity, as the rules see it
        out.logits = (activity[-1] / calls[-1]).reshape(P * B, -1)
    if loss:
        logits, losses = score(network.loss, out, target)
        record.loss = losses.view(P, B)
    else:
        logits = out.logits if out.logits is not None else network.loss.prediction(
            out.spikes if network.loss.reads == "spikes" or out.membrane is None
            else out.membrane)
    if not out.activity:
        record.readout = logits.reshape(P, B, -1)
    if any(r is not None for r in f.previous):
        record.recurrent_inputs = f.previous
    if network.heads is not None and loss:
        outs = [f.hidden[k] / calls[k] for k in range(network.num_layers - 1)]
        if network.adc is not None:  # the heads read node outputs, as the next layer does
            outs = [network.adc.read(o) for o in outs]
        record.local_loss = [network.loss_fn(head(o), target).view(P, B)
                             for head, o in zip(network.heads, outs)]
        record.local_inputs = [o[:B] for o in outs]
    if f.keep_states:
        record.outputs = [torch.stack(o).view(len(o), P, B, -1) for o in f.outputs]
        record.membrane = [torch.stack(m).view(len(m), P, B, -1) if m else None
                           for m in f.membrane]
    return record

def injected_noise(f: Forward, x: Tensor) -> list[Tensor]:
    """Per layer the noise it injected, summed over its calls (noisy passes, B, n_l)."""
    if not f.read_noise:
        return []
    out = []
    for k, (start, stop) in enumerate(f.passes.noisy):
        n = f.activity[k].shape[-1]
        out.append(f.noise[k].reshape(stop - start, f.B, n) if stop > start
                   else torch.zeros(0, f.B, n, device=x.device, dtype=x.dtype))
    return out
