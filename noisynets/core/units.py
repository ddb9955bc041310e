"""Units: the modules that turn a node's noisy activity into its output.

Every unit is "activity plus intrinsic noise, then a nonlinearity" (docs/algorithms.md,
"Units"). A unit is an ordinary ``nn.Module`` called once per time step with the node's input
current ``I_t`` (its activity, the noise already added): a torch activation (``nn.LeakyReLU``,
``nn.Tanh``, ...), one of the discontinuous units below, or a spiking neuron from snntorch,
which keeps its membrane between the steps of a batch.

* ``Heaviside`` and ``Sign``: discontinuous units; autograd sees a zero derivative.
* ``StochasticBinary``: a Heaviside unit whose node carries logistic noise of scale 1 (the
  network gives it that noise): ``Heaviside(a + logistic) ~ Bernoulli(sigmoid(a))``.
* ``LIF``: ``snntorch.Leaky`` whose reset (by subtraction or to zero, ``RESETS``) follows the
  spike it emitted and whose threshold can be noisy; ``set_reset`` changes a network's.

``make_unit(name)`` builds the unit of a name in ``UNITS`` (the ``--unit`` option).

Example::

    >>> import torch
    >>> Heaviside()(torch.tensor([-1.0, 0.5]))
    tensor([0., 1.])
"""

from __future__ import annotations

from typing import Any

import snntorch as snn
import torch
from torch import Tensor, nn


class Heaviside(nn.Module):
    """``h = 1 if a > 0 else 0``. Its derivative is zero almost everywhere (and in autograd).
    Without autograd the comparison writes the floats directly (ten times faster than a
    boolean tensor cast; the same values for every finite ``a``)."""

    def forward(self, a: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return torch.gt(a, 0, out=torch.empty_like(a))
        return (a > 0).to(a.dtype) + 0.0 * a


class Sign(nn.Module):
    """``h = +1 if a > 0 else -1``. Its derivative is zero almost everywhere (and in autograd);
    without autograd computed as ``2 [a > 0] - 1`` in place (the same values, finite ``a``)."""

    def forward(self, a: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return torch.gt(a, 0, out=torch.empty_like(a)).mul_(2).sub_(1)
        return torch.where(a > 0, 1.0, -1.0).to(a.dtype) + 0.0 * a


class StochasticBinary(Heaviside):
    """A Heaviside unit whose node carries logistic noise of scale 1 (the network adds it):
    in a noisy pass ``h = Heaviside(a + logistic) ~ Bernoulli(sigmoid(a))``."""


class LIF(snn.Leaky):
    """Leaky integrate-and-fire neurons (``snntorch.Leaky``) driven by a noisy input current.

    Per time step, with input current ``I_t`` (the node's activity plus its intrinsic noise)
    and, optionally, threshold noise ``xi_t``::

        U_t = beta * U_{t-1} + I_t - S_{t-1} * theta        (reset="subtract", the default)
        U_t = beta * (1 - S_{t-1}) U_{t-1} + I_t            (reset="zero")
        S_t = Heaviside(U_t - theta - xi_t)

    (snntorch's ``reset_mechanism``: the zero reset empties the membrane after a spike, the
    reset NIR's LIF node has; ``noisynets export --format nir`` needs it.)

    The state lives in the neuron, snntorch's ``init_hidden`` way: ``mem`` (``U``) and
    ``spike`` (the last ``S``); the network resets both at the start of every forward.
    snntorch recomputes the reset from the previous membrane and the *current* threshold; with
    a noisy threshold that would draw the reset independently of the spike, so here the reset
    is the emitted spike itself. Without autograd (the perturbation rules) the step runs
    fused, ``fused_step``: the same operations in four tensor operations, equal to the bit, the
    membrane updated in place (a caller that keeps ``mem`` across steps keeps a copy).
    Spikes come in the membrane's dtype (snntorch's surrogate
    returns float32 even for a float64 membrane). Backpropagation through time uses snntorch's
    surrogate gradient (arctan).

    snntorch registers every neuron in the class-level list ``SpikingNeuron.instances`` (for
    helpers this neuron does not need), which would keep every network alive for the whole
    process; this neuron takes itself off that list.

    Example::

        >>> import torch
        >>> lif = LIF(beta=0.5)
        >>> for t in range(3):
        ...     s = lif(torch.tensor([0.6]))
        ...     print(int(s.item()), round(lif.mem.item(), 2))
        0 0.6
        0 0.9
        1 1.05
    """

    def __init__(self, beta: float = 0.9, threshold: float = 1.0,
                 reset: str = "subtract") -> None:
        super().__init__(beta=float(beta), threshold=float(threshold), init_hidden=True,
                         reset_mechanism=_reset(reset))
        snn.SpikingNeuron.instances.remove(self)
        self.spike: Tensor | None = None
        self.threshold_shift: Tensor | None = None

    @property
    def fusable(self) -> bool:
        """Whether ``fused_step`` is snntorch's step: reset by subtraction or to zero,
        delayed, no quantisation, inhibition or graded spikes (as this class makes them)."""
        return (self.reset_mechanism in RESETS and bool(self.reset_delay)
                and not self.state_quant and not self.inhibition
                and float(self.graded_spikes_factor) == 1.0)

    def set_reset(self, reset: str) -> None:
        """Reset by ``reset`` (``RESETS``) from now on. snntorch's ``reset_mechanism`` setter
        changes the recorded value but not the step it runs, so the step is chosen here too."""
        self.reset_mechanism = _reset(reset)
        self.state_function = self._base_sub if reset == "subtract" else self._base_zero

    def mem_reset(self, mem: Tensor) -> Tensor:
        if self.spike is None or self.spike.shape != mem.shape:
            return torch.zeros_like(mem)  # the first step: no spike yet
        return self.spike.detach()

    def fire(self, mem: Tensor) -> Tensor:
        shifted = mem if self.threshold_shift is None else mem - self.threshold_shift
        return super().fire(shifted).to(mem.dtype)

    def forward(self, current: Tensor, mem: Any = None) -> Tensor:  # type: ignore[override]
        if torch.is_grad_enabled() or not self.fusable:
            self.spike = super().forward(current)  # snntorch's own step, with its surrogate
        else:
            self.spike = self.fused_step(current)
        return self.spike

    def fused_step(self, current: Tensor) -> Tensor:
        """snntorch's step without autograd, in four in-place tensor operations::

            U_t = beta * U_{t-1} + I_t - S_{t-1} theta        (subtract)
            U_t = beta * ((1 - S_{t-1}) U_{t-1}) + I_t        (zero)
            S_t = [U_t - xi_t > theta]

        the same floating-point operations in the same order as ``snn.Leaky`` (``S theta``
        is exact for spikes in {0, 1}; ``x - theta > 0`` and ``x > theta`` agree for every
        IEEE float), so the membrane and the spikes are equal to the bit (tested)."""
        mem = self.mem
        if mem.shape != current.shape:
            mem = torch.zeros_like(current)  # the first step: from rest, no spike yet
            spike = None
        else:
            spike = self.spike if self.spike is not None and self.spike.shape == mem.shape \
                else None
        zero = self.reset_mechanism == "zero"
        if zero and spike is not None:
            mem.mul_(1 - spike)
        mem.mul_(self.beta.clamp(0, 1)).add_(current)  # in place: ``mem`` is this neuron's own
        if spike is not None and not zero:
            mem.addcmul_(spike, -self.threshold)
        self.mem = mem
        shifted = mem if self.threshold_shift is None else mem - self.threshold_shift
        return torch.gt(shifted, self.threshold, out=torch.empty_like(mem))  # no bool tensor

    def extra_repr(self) -> str:
        reset = "" if self.reset_mechanism == "subtract" else f", reset={self.reset_mechanism}"
        return f"beta={float(self.beta):g}, threshold={float(self.threshold):g}{reset}"


RESETS: tuple[str, ...] = ("subtract", "zero")


def _reset(reset: str) -> str:
    """``reset`` checked to be one of ``RESETS`` (else ValueError)."""
    if reset not in RESETS:
        raise ValueError(f"unknown reset {reset!r}: choose one of {', '.join(RESETS)}")
    return reset


def set_reset(module: nn.Module, reset: str) -> nn.Module:
    """Every ``LIF`` in ``module`` (a network, a model) resets by ``reset`` from now on;
    returns ``module``."""
    _reset(reset)
    for unit in module.modules():
        if isinstance(unit, LIF):
            unit.set_reset(reset)
    return module


def discontinuous(unit: nn.Module) -> bool:
    """Whether ``unit``'s outputs are piecewise constant (Heaviside, sign, stochastic-binary,
    a spiking neuron): a noisy pass changes few of them, and the next layer's difference
    product can run event-driven (``noisynets.core.layer.Layer.event_product``)."""
    return isinstance(unit, (Heaviside, Sign, snn.SpikingNeuron))


# torch's activations that a node may carry (a wrapped model may use any of them).
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Softplus, nn.Softsign, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid,
    nn.Hardswish, nn.LogSigmoid, nn.Tanhshrink, Heaviside, Sign,
)

UNITS: tuple[str, ...] = (
    "leaky_relu", "tanh", "sigmoid", "identity", "heaviside", "sign", "stochastic_binary", "lif",
)


def make_unit(name: str, beta: float = 0.9, threshold: float = 1.0,
              reset: str = "subtract") -> nn.Module:
    """The unit called ``name`` (one of ``UNITS``); ``beta``, ``threshold`` and ``reset`` for
    ``lif``."""
    units = {
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "identity": nn.Identity,
        "heaviside": Heaviside,
        "sign": Sign,
        "stochastic_binary": StochasticBinary,
        "lif": lambda: LIF(beta=beta, threshold=threshold, reset=reset),
    }
    if name not in units:
        raise ValueError(f"unknown unit {name!r}: choose one of {', '.join(UNITS)}")
    return units[name]()
