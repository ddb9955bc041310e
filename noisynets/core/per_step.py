"""Per-step products: the estimate taken at every call of a layer, memory flat in T.

A rule's node signal is ``e_{l,t} = c_l * v_{l,t}`` per noisy pass and sample: a scale ``c_l``
known only after the pass (it holds the loss change) times a per-call vector, the activity
change ``da_{l,t} = I_{l,t} - I_{l,t}(reference)`` or, reading the noise, ``eps_{l,t}``
(docs/algorithms.md, "Per-step products"). The forward runs once to measure ``dL`` and
``sum_t ||da_{l,t}||^2``, inside ``untouched_noise``; ``scales(record, squares)`` returns per
layer its passes ``(lo, hi)`` and ``c_l`` of shape (hi - lo, B); the forward then runs again
on the same noise and every call adds its product::

    g_W_l = mean_{k,n} sum_t e_{l,t,k,n} xh_{l-1,t,n}^T
    g_b_l = mean_{k,n} sum_t e_{l,t,k,n}

(each weight operation's own vector-Jacobian product at that call's input; a recurrent
neuron's recurrent weight at that step's previous spikes).

The readout, where the loss reads the mean of its activity over its ``T`` calls (the Record has
no ``readout``), has the same error at every step: there the summed product is exact, and it
is taken instead, without the noise of the ``T`` separate terms::

    g_W_L = mean_{k,n} (sum_t e_{L,t,k,n}) (sum_t xh_{L-1,t,n})^T / T
    g_b_L = mean_{k,n} sum_t e_{L,t,k,n}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from noisynets.core.precision import difference_dtype
from noisynets.core.record import Passes, Record

if TYPE_CHECKING:
    from noisynets.core.network import Network

# ``scales(record, squares) -> [((lo, hi), c_l)]`` of a rule's per-step signal, per layer.
StepScales = Callable[[Record, list[Tensor]], list[tuple[tuple[int, int], Tensor]]]


def step_gradients(
    network: Network, x: Tensor, y: Tensor, passes: Passes, scales: StepScales,
    read_noise: bool = False,
) -> tuple[list[tuple[Tensor, Tensor | None]], Record]:
    """Per layer the per-step estimate ``(g_W, g_b, *recurrent)`` (module doc), and the
    Record of the second forward."""
    network.tell_fixed_neuron_parameters()
    P, B, L = passes.count, x.shape[0], network.num_layers
    squares = [x.new_zeros(P - 1, B) for _ in range(L)]

    def measure(k: int, t: int, xh: Tensor, current: Tensor, eps: Tensor | None,
                previous: Tensor | None) -> None:
        drive = current.reshape(P, B, -1)
        squares[k] += (drive[1:] - drive[:1]).pow(2).sum(-1)

    with network.untouched_noise():
        first = network.forward_passes(x, y, passes, on_step=measure)[0]
    plan = scales(first, squares)
    low = difference_dtype(network.precision, x.dtype, x.device)
    sums: list[list[Tensor] | None] = [None] * L
    # The readout's error is the same at every step where the loss reads the mean of its
    # activity: there the summed product is exact, and it drops the per-step noise.
    k_out = L - 1
    readout_summed = (first.readout is None and network.loss.reads == "logits"
                      and network.layers[k_out].recurrent is None)
    totals: list[Tensor | None] = [None, None]  # sum_t e_t, sum_t xh_t of the readout

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
        if readout_summed and k == k_out:
            seen = xh.reshape(B, -1)
            totals[0] = e if totals[0] is None else totals[0] + e
            totals[1] = seen if totals[1] is None else totals[1] + seen
            return
        layer = network.layers[k]
        grads = layer.gradient(e, xh.reshape(B, -1), 1, (hi - lo) * B, low)
        if layer.recurrent is not None:
            grads = grads + layer.recurrent_gradient(e, previous, 1, (hi - lo) * B)
        sums[k] = list(grads) if sums[k] is None else [
            None if old is None else old + new for old, new in zip(sums[k], grads)]

    record = network.forward_passes(x, y, passes, on_step=accumulate)[0]
    if totals[0] is not None:
        (lo, hi), _ = plan[k_out]
        calls = first.steps[k_out] if first.steps else first.time_steps
        sums[k_out] = list(network.layers[k_out].gradient(
            totals[0] / calls, totals[1], calls, (hi - lo) * B, low))
    grads = []
    for layer, summed in zip(network.layers, sums):
        params = [layer.weight, layer.bias, *layer.recurrent_parameters()]
        grads.append(tuple(summed) if summed is not None else tuple(
            None if p is None else torch.zeros_like(p) for p in params))
    return grads, record
