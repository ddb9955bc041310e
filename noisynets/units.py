"""Units: the nonlinearity (or neuron model) that turns a node's noisy activity into its output.

Every unit is "activity plus intrinsic noise, then a nonlinearity" (ALGORITHMS.md, "Units").
A unit is called once per time step with the node's input current ``I_t`` (its activity with
the noise already added) and its state, and returns its output and new state::

    h_t, state = unit(I_t, state)

Rate, discontinuous and stochastic units are stateless (``state`` stays ``None``) and run for
one time step; the leaky integrate-and-fire unit keeps a membrane potential and runs for ``T``.

Example::

    >>> import torch
    >>> from noisynets.units import make_unit
    >>> h, _ = make_unit("heaviside")(torch.tensor([-1.0, 0.5]), None)
    >>> h
    tensor([0., 1.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import snntorch as snn
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RateUnit(nn.Module):
    """A stateless unit ``h = f(a)``."""

    stateful = False

    def __init__(self, name: str, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.name = name
        self.fn = fn

    def forward(self, current: Tensor, state: Any = None) -> tuple[Tensor, None]:
        return self.fn(current), None

    def extra_repr(self) -> str:
        return self.name


def heaviside(a: Tensor) -> Tensor:
    """``h = 1 if a > 0 else 0``. Its derivative is zero almost everywhere (and in autograd)."""
    return (a > 0).to(a.dtype) + 0.0 * a


def sign(a: Tensor) -> Tensor:
    """``h = +1 if a > 0 else -1``. Its derivative is zero almost everywhere (and in autograd)."""
    return torch.where(a > 0, 1.0, -1.0).to(a.dtype) + 0.0 * a


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons: ``snntorch.Leaky`` driven by a noisy input current.

    Per time step, with input current ``I_t`` (the node's activity plus its intrinsic noise)::

        U_t = beta * U_{t-1} + I_t - S_{t-1} * theta        (reset by subtraction)
        S_t = Heaviside(U_t - theta)

    The reset always follows the spike ``S_{t-1}`` the neuron actually emitted. Backpropagation
    through time uses snntorch's surrogate gradient (arctan) for ``dS/dU``.
    """

    stateful = True

    def __init__(self, beta: float = 0.9, threshold: float = 1.0) -> None:
        super().__init__()
        self.beta = float(beta)
        self.threshold = float(threshold)
        self.neuron = snn.Leaky(beta=self.beta, threshold=self.threshold)

    def forward(self, current: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        mem = torch.zeros_like(current) if state is None else state
        spk, mem = self.neuron(current, mem)
        return spk, mem

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, threshold={self.threshold:g}"


RATE_UNITS: dict[str, Callable[[Tensor], Tensor]] = {
    "leaky_relu": lambda a: F.leaky_relu(a, 0.01),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda a: a,
    "heaviside": heaviside,
    "sign": sign,
}
UNITS: tuple[str, ...] = (*RATE_UNITS, "lif")


def make_unit(name: str, beta: float = 0.9, threshold: float = 1.0) -> nn.Module:
    """The unit called ``name`` (one of ``UNITS``)."""
    if name == "lif":
        return LIF(beta=beta, threshold=threshold)
    if name not in RATE_UNITS:
        raise ValueError(f"unknown unit {name!r}: choose one of {', '.join(UNITS)}")
    return RateUnit(name, RATE_UNITS[name])
