"""BP: backpropagation of the reference pass's loss, the reference for every other rule."""

from __future__ import annotations

import torch
from torch import Tensor

from noisynets.core.forward import Route
from noisynets.core.network import Network
from noisynets.core.record import Passes, Record
from noisynets.rules.base import Gradients, Rule


def backprop(
    network: Network, x: Tensor, y: Tensor, passes: Passes,
    neuron_grads: list[tuple[Tensor, Tensor]] | None = None, route: Route | None = None,
) -> tuple[Gradients, Record]:
    """``dLoss/dW_l`` and ``dLoss/db_l`` of ``Loss = mean_n loss_n`` of pass 0 of a forward of
    ``passes``, and that forward's (detached) record; ``neuron_grads``, when given, receives
    ``(parameter, dLoss/dparameter)`` of the neurons' learnable parameters (``learn_beta``...).

    With intrinsic noise in every pass, pass 0 of a rule's own plan, run from the same noise
    state, is the operating point the rule's estimate refers to (``training.diagnostics``).
    ``route`` changes the weight operations' calls (``core.forward.Route``: feedback alignment).
    """
    params = network.trained_parameters()
    with torch.enable_grad():
        record = network.run(x, y, passes, route=route)
        flat = torch.autograd.grad(record.loss[0].mean(), params, allow_unused=True)
    found = {id(p): torch.zeros_like(p) if g is None else g for p, g in zip(params, flat)}
    grads = by_layer(network, found)
    if neuron_grads is not None:
        neuron_grads.extend((p, found[id(p)]) for p in network.neuron_parameters())
    return grads, detached(record)


def by_layer(network: Network, found: dict[int, Tensor]) -> Gradients:
    """Per layer ``(g_W, g_b, *recurrent)`` from gradients found by parameter id."""
    return [(found[id(layer.weight)], None if layer.bias is None else found[id(layer.bias)],
             *(found[id(p)] for p in layer.recurrent_parameters()))
            for layer in network.layers]


def detached(record: Record) -> Record:
    """``record`` with every tensor detached from autograd's graph."""
    return Record(
        [i.detach() for i in record.inputs],
        [a.detach() for a in record.activity],
        record.loss.detach(),
        record.time_steps,
        readout=None if record.readout is None else record.readout.detach(),
        recurrent_inputs=None if record.recurrent_inputs is None else [
            None if r is None else r.detach() for r in record.recurrent_inputs],
        steps=record.steps,
    )


class BP(Rule):
    """Backpropagation (autograd; through time for spiking units, with a surrogate gradient).

    ``g_W_l = dLoss/dW_l`` and ``g_b_l = dLoss/db_l`` of ``Loss = mean_n loss_n`` on the
    reference pass (noise-free unless the network's noise is intrinsic in both passes).
    A unit whose derivative is zero (Heaviside, sign) passes no gradient to the layers below it.
    BPTT also trains the neurons' learnable parameters (snntorch's ``learn_beta``,
    ``learn_threshold``, ...), which the perturbation rules hold fixed.
    """

    name = "bp"

    def check(self, network: Network) -> None:
        if getattr(network, "local_losses", False):
            raise ValueError("local losses are for anp and danp; bp trains the network's own "
                             "loss: use anp/danp or drop local losses (--local-losses)")

    def passes(self, network: Network) -> Passes:
        return Passes.clean(network.num_layers, network.both_noisy)

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        return backprop(network, x, y, self.passes(network))

    def step(self, network: Network, x: Tensor, y: Tensor) -> Record:
        """The weights' and biases' gradients, and the neurons' learnable parameters' too."""
        self.check(network)
        neuron_grads: list[tuple[Tensor, Tensor]] = []
        grads, record = backprop(network, x, y, self.passes(network), neuron_grads)
        network.set_gradients(grads)
        for parameter, grad in neuron_grads:
            parameter.grad = grad
        return record
