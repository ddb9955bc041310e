"""The trained model as a plain torch module: every decorrelator ``R`` folded into its weights.

During training ``R`` is a parametrization of each decorrelated weight in the user's module
(``noisynets.core.decorrelation``): the module computes ``(W R) x + b`` and its
``state_dict`` holds ``W`` and ``R`` apart (``...parametrizations.weight.original`` and
``...parametrizations.weight.0.R``). ``export_model(model)`` returns an independent copy with
the parametrizations removed and the folded weight ``W' = W R`` left in their place::

    dense:        W' = W R                     a = W' x + b = W (R x) + b
    convolution:  W'_o = W_o R  per filter o   (W_o flattened over (in_channels / groups,
                                               kernel), the order of ``F.unfold``'s patch
                                               rows; one ``R`` per group)

biases unchanged, every snntorch neuron's state emptied, in eval mode: a plain module of the
user's own class, whose ``state_dict`` a fresh instance of that class takes with
``load_state_dict``, no noisynets needed. For a stateless model ``copy(x) == model(x)``; a
model that runs its own time loop is called the same way; a model whose neurons keep their
own state is read with ``readout(copy, x, T)``: neurons from rest, ``x`` at each of the ``T``
steps, the mean of the ``T`` outputs -- the network's logits (a membrane within rounding of
the threshold may spike in one and not the other: float rounding, seen through a threshold).

Example::

    >>> import torch
    >>> from torch import nn
    >>> import noisynets
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> net = noisynets.wrap(model, decorrelation=True)
    >>> _ = net.layers[0].decorrelator.R.mul_(0.5)  # a trained R, say
    >>> plain = noisynets.export_model(model)
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(plain(x), model(x), atol=1e-6) and torch.allclose(plain(x), net(x))
    True
    >>> sorted(plain.state_dict())[:2]
    ['0.bias', '0.weight']
"""

from __future__ import annotations

import copy

import snntorch as snn
import torch
from torch import Tensor, nn

from noisynets.core.decorrelation import fold_into_weight
from noisynets.core.steps import reset_neurons


@torch.no_grad()
def export_model(model: nn.Module) -> nn.Module:
    """An independent copy of ``model`` (a ``Network``: its model) with every ``R`` folded
    into its weight operation, neuron states emptied, in eval mode (module doc)."""
    from noisynets.core.network import Network

    if isinstance(model, Network):
        model = model.model
    plain = copy.deepcopy(model)
    for module in list(plain.modules()):
        fold_into_weight(module)
    reset_neurons(plain)
    return plain.eval()


def spiking(model: nn.Module) -> bool:
    """Whether ``model`` holds a spiking neuron (any snntorch neuron, ``units.LIF`` too)."""
    return any(isinstance(m, snn.SpikingNeuron) for m in model.modules())


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
