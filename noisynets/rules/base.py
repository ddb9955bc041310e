"""The interface every learning rule shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from noisynets.core.network import Network
from noisynets.core.record import Passes, Record

Gradients = list[tuple[Tensor, Tensor]]


class Layers(Protocol):
    """What turns node signals into weight estimates: ``gradients(signals, record)`` returns
    per layer ``(g_W, g_b)`` for signals ``e_l`` of shape (K, B, n_l). A ``Network`` (each
    weight operation's own vector-Jacobian product) and ``noisynets.observer.DenseLayers``
    (dense layers of a system outside torch) are two."""

    def gradients(
        self, signals: Sequence[Tensor], record: Record
    ) -> list[tuple[Tensor, Tensor | None]]: ...


class Rule:
    """A learning rule: estimates ``dLoss/dW_l`` and ``dLoss/db_l`` of every layer.

    ``passes`` is the plan of the batched forward the rule runs; ``estimate`` turns an
    observation of such a forward (a ``Record``: what the system reports, never its noise)
    into estimates; ``gradients`` runs the built-in forward and estimates from its record,
    one user of ``estimate`` like ``noisynets.observer``; ``step`` writes the estimates into
    ``param.grad``, where any ``torch.optim`` optimizer applies them.
    """

    name = "rule"

    def check(self, network: Network) -> None:
        """Raise ``ValueError`` when the rule is not defined for ``network``."""

    def prepare(self, network: Network, x: Tensor) -> None:
        """Give ``network`` the state the rule keeps in it (feedback matrices), made for
        inputs shaped like ``x``'s samples; nothing for a rule that keeps none."""

    def passes(self, network: Network) -> Passes:
        """The passes of the rule's forward; pass 0 is the reference pass."""
        raise NotImplementedError

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        raise NotImplementedError

    def estimate(self, record: Record, layers: Layers, noise: Sequence[Tensor] | None = None,
                 variances: Sequence[float] | None = None) -> Gradients:
        """The estimates from an observation ``record`` (``noise`` and ``variances``: NP
        only). A rule that needs more than an observation (BP) raises ``ValueError``."""
        raise ValueError(f"{self.name} cannot learn from observations alone: it needs the "
                         "system's own gradient; use anp, danp, inp or np")

    def step(self, network: Network, x: Tensor, y: Tensor) -> Record:
        grads, record = self.gradients(network, x, y)
        network.set_gradients(grads)
        return record

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Feedback(nn.Module):
    """A rule's feedback matrices (fixed random ones for fa and dfa, learned ones for opzo),
    kept as buffers of ``network.feedback`` so that the network's ``state_dict`` -- and with
    it checkpoints and exact resume -- carries them."""

    def get(self, name: str) -> Tensor:
        return self._buffers[name]

    def put(self, name: str, value: Tensor) -> None:
        self.register_buffer(name, value)


def feedback_of(network: Network) -> Feedback:
    """The network's ``Feedback`` (made empty, on the network's device, when it has none)."""
    if not isinstance(network.feedback, Feedback):
        network.feedback = Feedback()
    return network.feedback


def learn_shapes(network: Network, x: Tensor) -> int:
    """One forward of a zero sample shaped like ``x``'s, leaving every noise stream where it
    was: after it each layer knows its input and node shapes (``Layer.in_shape``,
    ``node_shape``). Returns the number of logits C."""
    sample = torch.zeros(1, *x.shape[1:], dtype=x.dtype, device=network.device)
    with torch.no_grad(), network.untouched_noise():
        return int(network(sample).shape[-1])


def output_gradient(network: Network, logits: Tensor, y: Tensor) -> Tensor:
    """``dloss_n/do_n`` (B, C) of every sample's loss at logits ``o`` (B, C): the readout's
    own local derivative, no pass through the network."""
    if network.loss.reads != "logits":
        raise ValueError(f"the rule projects the loss's derivative by the logits, but the "
                         f"loss {network.loss_name!r} reads the outputs over time: use ce or "
                         "mse (--loss)")
    o = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        return torch.autograd.grad(network.loss.from_logits(o, y).sum(), o)[0]


def check_no_recurrent(rule: str, network: Network) -> None:
    """Rules that perturb or project onto the weight operations only cannot train a recurrent
    neuron's own weights."""
    for k, layer in enumerate(network.layers):
        if layer.recurrent is not None:
            raise ValueError(f"{rule} does not train a recurrent neuron's own weights (layer "
                             f"{k + 1}, {type(layer.unit).__name__}): use bp, anp or danp")
