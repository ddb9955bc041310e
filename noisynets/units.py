"""Units: the nonlinearity (or neuron model) that turns a node's noisy activity into its output.

Every unit is "activity plus intrinsic noise, then a nonlinearity" (ALGORITHMS.md, "Units").
A unit is called once per time step with the node's input current ``I_t`` (its activity with
the noise already added) and its state, and returns its output and new state::

    h_t, state = unit(I_t, state)

Rate, discontinuous and stochastic units are stateless (``state`` stays ``None``) and run for
one time step; the leaky integrate-and-fire unit keeps a membrane potential and runs for ``T``.
A ``stochastic_binary`` unit is a Heaviside unit whose layer carries logistic noise of scale 1:
``Heaviside(a + logistic) ~ Bernoulli(sigmoid(a))``, so it needs no machinery of its own.

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

    def forward(
        self, current: Tensor, state: Any = None, threshold_shift: Tensor | None = None
    ) -> tuple[Tensor, None]:
        return self.fn(current if threshold_shift is None else current - threshold_shift), None

    def extra_repr(self) -> str:
        return self.name


def heaviside(a: Tensor) -> Tensor:
    """``h = 1 if a > 0 else 0``. Its derivative is zero almost everywhere (and in autograd)."""
    return (a > 0).to(a.dtype) + 0.0 * a


def sign(a: Tensor) -> Tensor:
    """``h = +1 if a > 0 else -1``. Its derivative is zero almost everywhere (and in autograd)."""
    return torch.where(a > 0, 1.0, -1.0).to(a.dtype) + 0.0 * a


class _Leaky(snn.Leaky):
    """``snntorch.Leaky`` whose reset is the spike it emitted and whose threshold can be noisy.

    snntorch recomputes the reset from the previous membrane and the *current* threshold. With a
    noisy threshold that would draw the reset independently of the spike; here the reset is the
    stored spike itself, and the spike is ``Heaviside(U_t - (theta + xi_theta,t))``, in the
    membrane's dtype (snntorch's surrogate returns float32 even for a float64 membrane).

    snntorch registers every neuron in the class-level list ``SpikingNeuron.instances`` (for its
    ``init_hidden`` helpers, which this neuron does not use), which would keep every network
    alive for the whole process; this neuron takes itself off that list.
    """

    last_spike: Tensor | None = None
    threshold_shift: Tensor | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        snn.SpikingNeuron.instances.remove(self)

    def mem_reset(self, mem: Tensor) -> Tensor:
        if self.last_spike is None:
            return super().mem_reset(mem)
        return self.last_spike.detach()

    def fire(self, mem: Tensor) -> Tensor:
        shifted = mem if self.threshold_shift is None else mem - self.threshold_shift
        return super().fire(shifted).to(mem.dtype)


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons (``snntorch.Leaky``) driven by a noisy input current.

    Per time step, with input current ``I_t`` (the node's activity plus its intrinsic noise)
    and, optionally, threshold noise ``xi_t``::

        U_t = beta * U_{t-1} + I_t - S_{t-1} * theta        (reset by subtraction)
        S_t = Heaviside(U_t - theta - xi_t)

    The reset always follows the spike ``S_{t-1}`` the neuron actually emitted. The state is
    ``(U, S)``. Backpropagation through time uses snntorch's surrogate gradient (arctan).

    Example::

        >>> import torch
        >>> lif = LIF(beta=0.5)
        >>> state = None
        >>> for t in range(3):
        ...     s, state = lif(torch.tensor([0.6]), state)
        ...     print(int(s.item()), round(state[0].item(), 2))
        0 0.6
        0 0.9
        1 1.05
    """

    stateful = True

    def __init__(self, beta: float = 0.9, threshold: float = 1.0) -> None:
        super().__init__()
        self.beta = float(beta)
        self.threshold = float(threshold)
        self.neuron = _Leaky(beta=self.beta, threshold=self.threshold)

    def forward(
        self,
        current: Tensor,
        state: tuple[Tensor, Tensor] | None,
        threshold_shift: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if state is None:
            state = (torch.zeros_like(current), torch.zeros_like(current))
        mem, spike = state
        neuron = self.neuron
        neuron.last_spike, neuron.threshold_shift = spike, threshold_shift
        try:
            spike, mem = neuron(current, mem)
        finally:
            # The state lives in what this returns, not in the neuron: a membrane left on the
            # neuron would keep the last forward's whole graph alive.
            neuron.last_spike = neuron.threshold_shift = neuron.reset = None
            neuron.mem = neuron.mem.new_zeros(0)
        return spike, (mem, spike)

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
UNITS: tuple[str, ...] = (*RATE_UNITS, "stochastic_binary", "lif")


def make_unit(name: str, beta: float = 0.9, threshold: float = 1.0) -> nn.Module:
    """The unit called ``name`` (one of ``UNITS``)."""
    if name == "lif":
        return LIF(beta=beta, threshold=threshold)
    if name == "stochastic_binary":  # a Heaviside unit; its logistic noise is the layer's
        return RateUnit(name, heaviside)
    if name not in RATE_UNITS:
        raise ValueError(f"unknown unit {name!r}: choose one of {', '.join(UNITS)}")
    return RateUnit(name, RATE_UNITS[name])
