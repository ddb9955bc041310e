"""The interface every learning rule shares."""

from __future__ import annotations

from torch import Tensor

from noisynets.network import Network, Passes, Record

Gradients = list[tuple[Tensor, Tensor]]


class Rule:
    """A learning rule: estimates ``dLoss/dW_l`` and ``dLoss/db_l`` of every layer.

    ``passes`` is the plan of the batched forward the rule runs; ``gradients`` returns the
    estimates and the record of that forward; ``step`` writes the estimates into
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

    def step(self, network: Network, x: Tensor, y: Tensor) -> Record:
        grads, record = self.gradients(network, x, y)
        network.set_gradients(grads)
        return record

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
