"""Firing rates of spiking layers, and the warning for a layer that is silent or saturated.

The firing rate of spiking layer ``l`` on a batch of ``B`` samples is the share of its
``n_l`` neurons and ``T`` time steps that spike in a clean pass (the reference pass; a noisy
one where the noise cannot be switched off)::

    rate_l = (1 / (T B n_l)) sum_t sum_b sum_i s_{l,t,b,i}        (s in {0, 1})

A layer whose rate is below ``SILENT`` passes (almost) nothing on, and its activity barely
changes with the noise, so no rule can learn through it; one above ``SATURATED`` spikes at
(almost) every step and is as blind. Each such layer in the first epoch gets one warning line
that names it and what to change (``firing_warnings``).

Example::

    >>> import snntorch as snn, torch
    >>> from torch import nn
    >>> from noisynets import wrap
    >>> net = wrap(nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, threshold=1e3,
    ...            init_hidden=True), nn.Linear(3, 2)), time_steps=4)
    >>> firing_rates(net, torch.rand(8, 4), torch.zeros(8, dtype=torch.long))
    [0.0, None]
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisynets.core.network import Network
from noisynets.core.record import Passes

SILENT = 1e-3  # a layer spiking in fewer than this share of its neuron-steps is silent
SATURATED = 0.99  # ... in more than this share, saturated


@torch.no_grad()
def firing_rates(network: Network, x: Tensor, y: Tensor) -> list[float | None]:
    """Per layer its firing rate on ``(x, y)`` (module doc); ``None`` for a layer whose nodes
    do not spike. Leaves the noise streams untouched; one forward, none if nothing spikes."""
    if not any(layer.spiking for layer in network.layers):
        return [None] * network.num_layers
    with network.untouched_noise():
        passes = Passes.clean(network.num_layers, network.both_noisy)
        record = network.run(x, y, passes, keep_states=True)
    return [float(out[:, 0].float().mean()) if layer.spiking else None
            for layer, out in zip(network.layers, record.outputs)]


def firing_warnings(network: Network, rates: list[float | None], time_steps: int,
             noise_std: float | None = None) -> list[str]:
    """One line per layer whose firing rate is below ``SILENT`` or above ``SATURATED``: which
    layer, its rate, and what to change (threshold, input scale, time steps, noise)."""
    lines = []
    for k, (layer, rate) in enumerate(zip(network.layers, rates)):
        if rate is None or SILENT <= rate <= SATURATED:
            continue
        threshold = getattr(layer.unit, "threshold", None)
        now = "" if threshold is None else f" (now {float(torch.as_tensor(threshold).mean()):g})"
        name = f"layer {k + 1} ({type(layer.unit).__name__} after {layer.op_type})"
        noise = "" if noise_std is None else f", now {noise_std:g}"
        steps = (f"--time-steps, now {time_steps}" if network.steps_model
                 else "in the model's own loop")
        if rate < SILENT:
            lines.append(
                f"warning: {name} is silent, firing rate {rate:.2g}: it passes nothing on and "
                f"no rule learns through it; lower its threshold{now}, scale its input up, "
                f"run more time steps ({steps}) or add noise "
                f"(--noise-std{noise})")
        else:
            lines.append(
                f"warning: {name} is saturated, firing rate {rate:.3g}: it spikes at almost "
                f"every step and no rule learns through it; raise its threshold{now} or "
                f"scale its input down")
    return lines
