"""The trained model as a plain torch module: every decorrelator ``R`` folded into its weights.

A decorrelated layer computes ``a = W (R x) + b`` (docs/algorithms.md, "Decorrelation"); ``R``
lives in the wrapper (``Network.layers[l].decorrelator``), not in the user's module, so the
user's module alone computes ``W x + b``. ``export_model(net)`` returns an independent deep
copy of the user's module whose every weight operation carries ``W' = W R``::

    dense:        W' = W R                     a = W' x + b = W (R x) + b
    convolution:  W'_o = W_o R  per filter o   (W_o flattened over (in_channels / groups, kh,
                                               kw), the order of ``F.unfold``'s patch rows;
                                               one ``R`` per group), so
                                               a = conv(x; W', b) = W (R patches(x)) + b

biases unchanged. Nothing else changes: activations, snntorch neurons (their state emptied),
pooling, dropout. The copy is in eval mode (dropout off), so for every input

* a stateless network: ``copy(x) == net(x)``, to float rounding (``W (R x)`` and ``(W R) x``
  round differently);
* a spiking network with ``current`` encoding: ``readout(copy, x, T) == net(x)``, where
  ``readout`` starts every neuron from zero (snntorch's ``init_hidden`` state emptied), feeds
  ``x`` at each of the ``T`` steps and averages the readout layer's ``T`` outputs -- the
  network's logits. (With ``poisson`` encoding the network feeds spikes drawn from ``x``; the
  copy equals it step by step on the same spikes.) A membrane within rounding of the
  threshold may spike in one and not the other: float rounding, seen through a threshold.

The copy's ``state_dict`` is what ``model.pt["model"]`` holds: a fresh instance of the user's
own class takes it with ``load_state_dict``, no noisynets needed.

Example::

    >>> import torch
    >>> from torch import nn
    >>> import noisynets
    >>> net = noisynets.wrap(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
    ...                      decorrelation=True)
    >>> _ = net.layers[0].decorrelator.R.mul_(0.5)  # a trained R, say
    >>> plain = noisynets.export_model(net)
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(plain(x), net(x), atol=1e-6)
    True
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import snntorch as snn
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from noisynets.network import Network


@torch.no_grad()
def export_model(network: Network) -> nn.Module:
    """An independent copy of ``network.model`` with every ``R`` folded into its weight
    operation (module doc), neuron states emptied, in eval mode."""
    names = {id(module): name for name, module in network.model.named_modules()}
    plain = copy.deepcopy(network.model)
    for layer in network.layers:
        if layer.decorrelator is None:
            continue
        op = plain.get_submodule(names[id(layer.op)])
        op.weight.copy_(layer.folded_weight())
    reset_neurons(plain)
    return plain.eval()


def spiking(model: nn.Module) -> bool:
    """Whether ``model`` holds a spiking neuron (any snntorch neuron, ``units.LIF`` too)."""
    return any(isinstance(m, snn.SpikingNeuron) for m in model.modules())


def reset_neurons(model: nn.Module) -> None:
    """Every snntorch neuron of ``model`` starts its next step from zero: its ``init_hidden``
    state buffers emptied (snntorch makes them ``zeros_like`` the next input), and the last
    spike that ``units.LIF`` resets by forgotten."""
    for module in model.modules():
        if isinstance(module, snn.SpikingNeuron):
            for name in module._non_persistent_buffers_set:
                old = getattr(module, name)
                setattr(module, name, torch.zeros(0, device=old.device, dtype=old.dtype))
            for name in ("spike", "threshold_shift"):
                if hasattr(module, name):
                    setattr(module, name, None)


@torch.no_grad()
def readout(model: nn.Module, x: Tensor, time_steps: int = 1) -> Tensor:
    """The logits of a plain model: ``mean_t model(x)`` over ``time_steps`` steps of the
    constant input ``x``, from neurons reset to zero (a stateless model: ``model(x)``). The
    neurons are reset again afterwards, so nothing of ``x`` stays in them."""
    if time_steps == 1 and not spiking(model):
        return model(x)
    reset_neurons(model)
    try:
        total = model(x)
        for _ in range(time_steps - 1):
            total = total + model(x)
    finally:
        reset_neurons(model)
    return total / time_steps
