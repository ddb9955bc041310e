"""Feedback alignment (FA, Lillicrap et al. 2016) and direct feedback alignment (DFA, Nokland
2016): a backward pass without the transposed weights (docs/algorithms.md, "Feedback
alignment").

Both run the reference pass with autograd and change only where the error travels:

    FA:   delta_{x_{l-1}} = B_l^T delta_{a_l}     (BP: W_l^T delta_{a_l}); B_l fixed, W_l's shape
    DFA:  delta_{x_{l-1}} = D_l g_o,  g_o = dloss/do  (o the logits); D_l fixed, (|x_{l-1}|, C)

where ``x_{l-1}`` is the input of weight operation ``l`` (the previous layer's output after
its unit and whatever the model does before operation ``l``: pooling, flattening). From
there autograd carries the error through that unit (its derivative, a spiking unit's
surrogate and its time steps) to the weight operation below, whose gradient is the usual
``delta_{a} x^T``; the last layer's gradient is exact. With ``B_l = W_l`` FA is BP.

The matrices are drawn once from a generator seeded with the rule's ``seed``, ``B_l`` with
He-normal scale ``sqrt(2 / fan_in)``, ``D_l ~ N(0, 1/C)``, and kept in the network
(``network.feedback``), so checkpoints and exact resume carry them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from noisynets.core.forward import Forward, Route
from noisynets.core.network import Network
from noisynets.core.record import Passes, Record
from noisynets.rules.base import Gradients, Rule, feedback_of, learn_shapes, output_gradient
from noisynets.rules.bp import backprop, by_layer, detached
from noisynets.rules.perturbation import check_no_local_losses


def check_feedback(rule: str, network: Network) -> None:
    check_no_local_losses(rule, network)
    if network.decorrelated:
        raise ValueError(f"{rule} is defined here for plain networks (no decorrelation): "
                         "use bp/dbp or anp/danp for decorrelated ones")


class FeedbackPath(Route):
    """FA's forward: operation ``l >= 1`` multiplies a detached input (``W_l`` learns, but
    passes no error down) and adds ``c - c.detach()`` with ``c = op(x; B_l)``, zero in value,
    whose derivative carries ``B_l^T delta`` to the input."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.feedback = feedback_of(network)

    def enter(self, forward: Forward, k: int, h: Tensor) -> Tensor:
        return h.detach() if k > 0 else h

    def leave(self, forward: Forward, k: int, h: Tensor, a: Tensor) -> Tensor:
        if k == 0 or not h.requires_grad:
            return a
        layer = self.network.layers[k]
        c = layer.kind.product(layer.op, h, self.feedback.get(f"B_{k}").to(h.dtype), None)
        return a + (c - c.detach())


class FixedFeedback(Rule):
    """What FA and DFA share: fixed random feedback matrices drawn from ``seed`` (kept in the
    network's state), one clean pass, no noise, and the refusals of ``check_feedback``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def check(self, network: Network) -> None:
        check_feedback(self.name, network)

    def passes(self, network: Network) -> Passes:
        return Passes.clean(network.num_layers, network.both_noisy)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


class FA(FixedFeedback):
    """Feedback alignment: BP with every layer's ``W_l^T`` replaced by a fixed random
    ``B_l^T`` in the backward pass (module doc). Needs a backward pass and one extra matrix per
    layer; no noise."""

    name = "fa"

    def prepare(self, network: Network, x: Tensor) -> None:
        feedback = feedback_of(network)
        g = torch.Generator().manual_seed(self.seed)
        for k, layer in enumerate(network.layers):
            W = layer.weight
            if k > 0 and f"B_{k}" not in feedback._buffers:
                B = torch.randn(W.shape, generator=g, dtype=torch.float64)
                feedback.put(f"B_{k}", (B * math.sqrt(2.0 / W[0].numel())).to(W.device, W.dtype))

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        self.prepare(network, x)
        return backprop(network, x, y, self.passes(network), route=FeedbackPath(network))


class DirectInputs(Route):
    """DFA's forward: operation ``l >= 1`` multiplies a detached input; the input itself (one
    per call) is kept, to receive ``D_l g_o``."""

    def __init__(self) -> None:
        self.inputs: dict[int, list[Tensor]] = {}

    def enter(self, forward: Forward, k: int, h: Tensor) -> Tensor:
        if k == 0 or not h.requires_grad:
            return h
        self.inputs.setdefault(k, []).append(h)
        return h.detach()


class DFA(FixedFeedback):
    """Direct feedback alignment: the output error ``g_o`` projected by a fixed random
    ``D_l`` onto the input of every weight operation ``l >= 1`` at every call, and carried
    from there through the units below by autograd (module doc). Needs the loss's derivative by
    the logits, a local backward through each unit, and one extra matrix per layer; no noise.
    """

    name = "dfa"

    def prepare(self, network: Network, x: Tensor) -> None:
        feedback = feedback_of(network)
        if all(f"D_{k}" in feedback._buffers for k in range(1, network.num_layers)):
            return
        C = learn_shapes(network, x)
        g = torch.Generator().manual_seed(self.seed)
        for k, layer in enumerate(network.layers):
            if k > 0:
                D = torch.randn(math.prod(layer.in_shape), C, generator=g, dtype=torch.float64)
                feedback.put(f"D_{k}", (D / math.sqrt(C)).to(network.device, network.dtype))

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        self.prepare(network, x)
        feedback = feedback_of(network)
        route = DirectInputs()
        params = [p for layer in network.layers
                  for p in (layer.weight, layer.bias, *layer.recurrent_parameters())
                  if p is not None]
        B = x.shape[0]
        with torch.enable_grad():
            record = network.run(x, y, self.passes(network), route=route)
            g_o = output_gradient(network, record.logits[0], y)
            outputs, errors = [record.loss[0].mean()], [None]
            for k, inputs in route.inputs.items():
                projected = g_o @ feedback.get(f"D_{k}").mT / B  # (B, |x_{k-1}|)
                for h in inputs:
                    outputs.append(h)
                    errors.append(projected.to(h.dtype).reshape(h.shape))
            flat = torch.autograd.grad(outputs, params, errors, allow_unused=True)
        found = {id(p): torch.zeros_like(p) if g is None else g for p, g in zip(params, flat)}
        return by_layer(network, found), detached(record)

