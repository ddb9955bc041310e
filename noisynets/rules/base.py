"""The interface every learning rule shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

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
