"""Analog in-memory hardware: noisy weights (phase-change memory) and an ADC readout.

Two properties of an analog in-memory computing chip that node noise does not cover:

* ``PCMWeights`` -- the weights live as conductances of phase-change memory (PCM) devices,
  which are programmed with an error, read with 1/f noise and drift over time. This is the
  statistical PCM model of IBM's Analog Hardware Acceleration Kit (aihwkit,
  ``aihwkit.inference.noise.pcm.PCMLikeNoiseModel``; Nandakumar et al., ICECS 2019; Joshi et
  al., Nature Communications 11, 2473, 2020), written anew here. The noise is intrinsic: it
  changes what every pass computes, and no rule reads it (it is not in the ``Record``).
* ``ADC`` -- the activities a rule observes are read through an analog-to-digital converter
  of ``bits`` bits and full scale ``range``: the rule sees only quantised values.

``Network(..., weight_noise=..., adc=...)`` takes either (an object or a spec string:
``make_weight_noise("pcm:time=3600")``, ``make_adc("bits=6,range=4")``); the forward calls
``PCMWeights.weight`` once per layer and forward (``noisynets.core.forward``) and
``ADC.read`` on what it records. Both use a straight-through gradient, so BP trains through
the device as an ideal software model of it would (the value read, the gradient of the ideal
weight or activity).

Example::

    >>> import torch
    >>> from noisynets.core.analog import ADC, PCMWeights
    >>> ADC(bits=3, range=1.0).read(torch.tensor([-2.0, -0.3, 0.1, 0.9]))
    tensor([-1.0000, -0.2500,  0.0000,  0.7500])
    >>> w = torch.randn(4, 3)
    >>> PCMWeights(seed=0).weight(0, w).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from noisynets.core.noise import NoiseSource, _number, key_values

WEIGHT_NOISES: tuple[str, ...] = ("pcm",)

# aihwkit's PCMLikeNoiseModel: programming-noise polynomial (in uS, fitted at g_max = 25 uS),
# the 1/f fit's read time, the drift fit's first reading time, and its clip of g / g_max.
PROG_COEFF: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
PROG_G_MAX = 25.0
T_READ = 250e-9
T_0 = 20.0
ZERO_CLIP = 1e-7
# The ranges a spec may set: the three effects' scales (1 is the model's), the seconds since
# programming (about 30,000 years), the largest conductance in uS (a device has about 25), the
# ADC's full scale; beyond them a float32 forward overflows, or the model means nothing.
MAX_SCALE = 100.0
MAX_TIME = 1e12
MAX_G = 1e6
MAX_RANGE = 1e6


class PCMWeights(NoiseSource):
    """Phase-change-memory weights: programming noise, read noise and drift (aihwkit's model).

    Each weight ``W_ij`` of a layer is a pair of devices (aihwkit's single-pair converter),
    ``g+ = max(W, 0) / w_max * g_max`` and ``g- = max(-W, 0) / w_max * g_max`` with
    ``w_max = max |W|`` of the layer, and is read back as ``(g+ - g-) * w_max / g_max``.
    Per device of target conductance ``g_T`` (``x = g_T / g_max``):

    * programming, once per weight update (whenever the weight tensor changed):
      ``g_P = max(0, g_T + prog * s_P z)``, ``s_P = (c0 + c1 x + c2 x^2) g_max / 25``,
      ``(c0, c1, c2) = (0.26348, 1.9650, -1.1731)`` uS, and the device's drift exponent
      ``nu = drift * |mu + s_nu z'|`` with ``mu = clip(-0.0155 ln x + 0.0244, 0.049, 0.1)``,
      ``s_nu = clip(-0.0125 ln x - 0.0059, 0.008, 0.045)`` (``x`` clipped to >= 1e-7);
    * drift, ``time`` seconds after programming (``t = time + t0``, ``t0 = 20 s``):
      ``g_D = g_P (t / t0)^(-nu)``;
    * read noise, drawn anew at every forward (one read of the array serves the stacked
      passes of that forward, so a rule's reference and noisy passes see the same weights):
      ``g = max(0, g_D + read * |g_D| s_R z'')``, ``s_R = Q sqrt(ln((t + t_read) / (2 t_read)))``,
      ``Q = min(0.2, 0.0088 / max(1e-3, (g_P / g_max)^0.65))``, ``t_read = 250 ns``.

    ``compensate = 1`` rescales each layer's read weights by ``sum |W_P| / sum |W_D|`` (the
    programmed over the drifted conductance), a global drift compensation in the spirit of
    aihwkit's ``GlobalDriftCompensation``. ``prog``, ``read`` and ``drift`` scale the three
    effects (aihwkit's ``prog_noise_scale``, ``read_noise_scale``, ``drift_scale``); 0 turns
    one off.

    A layer is reprogrammed when its weight tensor changed (torch's version counter, bumped
    by every in-place update such as an optimizer step), so forwards that leave the weights
    unchanged (evaluation, diagnostics) read the same programmed devices. The ``c``-th
    programming of layer ``k`` draws from a generator seeded by ``(seed, k, c)``; read noise
    comes from the source's generator. ``get_state`` holds ``c``, and whether the weights
    changed since, so a checkpoint resumes the same devices and ``untouched_noise`` leaves the
    programming where it was. Decorrelation matrices ``R`` are digital: they carry no noise.
    """

    def __init__(
        self, prog: float = 1.0, read: float = 1.0, drift: float = 1.0, time: float = 0.0,
        gmax: float = 25.0, compensate: float = 0.0, seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.prog = _number("prog", prog, high=MAX_SCALE)
        self.read = _number("read", read, high=MAX_SCALE)
        self.drift = _number("drift", drift, high=MAX_SCALE)
        self.time = _number("time", time, high=MAX_TIME)
        self.gmax = _number("gmax", gmax, low_open=True, high=MAX_G)
        if compensate not in (0, 1):
            raise ValueError(f"compensate={compensate!r} must be 0 or 1")
        self.compensate = bool(compensate)
        # per layer: (weight tensor, its version when programmed, (g_P, nu, w_max))
        self._programmed: dict[int, tuple[Tensor, int, tuple[Tensor, Tensor, Tensor]]] = {}
        self._count: dict[int, int] = {}  # programmings so far, per layer
        self._restored: dict[int, bool] = {}  # after set_state: must the next one count?

    @property
    def mean(self) -> float:
        return 0.0

    @property
    def variance(self) -> float:
        raise ValueError("PCM weight noise is intrinsic to the weights: it has no node variance")

    @property
    def spec(self) -> str:
        return f"pcm:{self.extra_repr().replace(', ', ',')}"

    def reseed(self, seed: int) -> None:
        self._programmed, self._count, self._restored = {}, {}, {}
        super().reseed(seed)

    def get_state(self) -> dict[str, Any]:
        programmed = {}  # per layer: (programmings, version programmed, changed since)
        for k, count in self._count.items():
            if k in self._programmed:
                weight, version, _ = self._programmed[k]
                programmed[k] = (count, version, weight._version != version)
            else:  # restored, not read since
                programmed[k] = (count, -1, self._restored.get(k, True))
        return {**super().get_state(), "programmed": programmed}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        saved = state["programmed"]
        for k in list(self._programmed):
            if k not in saved or self._programmed[k][1] != saved[k][1] or (
                    self._count[k] != saved[k][0]):
                del self._programmed[k]  # not the devices the state describes
        self._count = {k: count for k, (count, _, _) in saved.items()}
        self._restored = {k: changed for k, (_, _, changed) in saved.items()
                          if k not in self._programmed}

    def program(self, k: int, W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(g_P, nu, w_max)`` of layer ``k``'s weights ``W``: conductances (2, *W.shape), the
        pair (g+, g-) programmed, their drift exponents, and the layer's largest |W|."""
        cached = self._programmed.get(k)
        if cached is not None and cached[0] is W and cached[1] == W._version and (
                cached[2][0].dtype == W.dtype and cached[2][0].device == W.device):
            return cached[2]
        count = self._count.get(k, 0)
        if self._restored.pop(k, True):  # new weights (a restored state: if they changed)
            count += 1
        with torch.no_grad():
            g = torch.Generator(device=W.device)
            g.manual_seed(hash((self.seed, k, count)) % 2**62)
            w = W.detach()
            w_max = w.abs().max().clamp_min(torch.finfo(w.dtype).tiny)
            target = torch.stack([w.clamp_min(0), (-w).clamp_min(0)]) / w_max * self.gmax
            x = target / self.gmax
            c0, c1, c2 = PROG_COEFF
            s_prog = (c0 + c1 * x + c2 * x * x) * (self.gmax / PROG_G_MAX)
            z = torch.randn(target.shape, generator=g, device=W.device, dtype=W.dtype)
            g_prog = (target + self.prog * s_prog * z).clamp_min(0.0)
            log_x = x.abs().clamp_min(ZERO_CLIP).log()
            mu = (-0.0155 * log_x + 0.0244).clamp(0.049, 0.1)
            s_nu = (-0.0125 * log_x - 0.0059).clamp(0.008, 0.045)
            z = torch.randn(target.shape, generator=g, device=W.device, dtype=W.dtype)
            nu = (mu + s_nu * z).abs() * self.drift
        programmed = (g_prog, nu, w_max)
        self._programmed[k] = (W, W._version, programmed)
        self._count[k] = count
        return programmed

    def conductance(self, g_prog: Tensor, nu: Tensor, time: float | None = None) -> Tensor:
        """Drifted and read conductances ``time`` (default ``self.time``) s after programming."""
        t = (self.time if time is None else time) + T_0
        g_drift = g_prog * (t / T_0) ** (-nu)
        if self.read == 0:
            return g_drift
        q = (0.0088 / (g_prog / self.gmax).pow(0.65).clamp_min(1e-3)).clamp_max(0.2)
        s_read = q * math.sqrt(math.log((t + T_READ) / (2 * T_READ)))
        z = torch.randn(g_prog.shape, generator=self.generator(g_prog.device),
                        device=g_prog.device, dtype=g_prog.dtype)
        return (g_drift + self.read * g_drift.abs() * s_read * z).clamp_min(0.0)

    def weight(self, k: int, W: Tensor) -> Tensor:
        """The weights of layer ``k`` as this forward reads them: value of the device, gradient
        of the ideal weight (straight through)."""
        g_prog, nu, w_max = self.program(k, W)
        with torch.no_grad():
            g = self.conductance(g_prog, nu)
            read = (g[0] - g[1]) * (w_max / self.gmax)
            if self.compensate:
                t = self.time + T_0
                drifted = g_prog * (t / T_0) ** (-nu)
                alpha = (g_prog[0] - g_prog[1]).abs().sum() / (
                    (drifted[0] - drifted[1]).abs().sum().clamp_min(torch.finfo(W.dtype).tiny))
                read = read * alpha
        return W + (read - W).detach()

    def forward(self, a: Tensor) -> Tensor:
        raise TypeError("PCMWeights perturbs weights (PCMWeights.weight), not node activities")

    def extra_repr(self) -> str:
        return (f"prog={self.prog:g}, read={self.read:g}, drift={self.drift:g}, "
                f"time={self.time:g}, gmax={self.gmax:g}, compensate={int(self.compensate)}")


class ADC(nn.Module):
    """A signed ``bits``-bit analog-to-digital converter of full scale ``range``.

    ``q(a) = D * clip(round(a / D), -2^(bits-1), 2^(bits-1) - 1)``, ``D = range / 2^(bits-1)``:
    the mid-tread two's-complement quantiser; values beyond the full scale saturate. The
    forward's value is ``q(a)``, its gradient that of ``a`` (straight through).
    """

    def __init__(self, bits: int = 8, range: float = 4.0) -> None:  # noqa: A002
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, (int, float)) \
                or not 1 <= bits <= 32 or int(bits) != bits:  # NaN, inf: not in [1, 32]
            raise ValueError(f"bits={bits!r} must be an integer from 1 to 32")
        self.bits = int(bits)
        self.range = _number("range", range, low_open=True, high=MAX_RANGE)

    @property
    def step(self) -> float:
        """``D = range / 2^(bits-1)``, the value of one least significant bit."""
        return self.range / 2 ** (self.bits - 1)

    @property
    def spec(self) -> str:
        return f"bits={self.bits},range={self.range:g}"

    def read(self, a: Tensor) -> Tensor:
        """``q(a)`` (straight-through gradient)."""
        D = self.step
        levels = 2 ** (self.bits - 1)
        with torch.no_grad():
            q = torch.round(a / D).clamp(-levels, levels - 1) * D
        return a + (q - a).detach() if a.requires_grad else q

    def extra_repr(self) -> str:
        return f"bits={self.bits}, range={self.range:g}"


def _bad(what: str, spec: str) -> Callable[[str], ValueError]:
    """The error of a bad ``what`` spec: ``bad <what> '<spec>': <why>``."""
    return lambda why: ValueError(f"bad {what} {spec!r}: {why}")


def make_weight_noise(spec: str | PCMWeights | None) -> PCMWeights | None:
    """The weight noise a spec names: ``pcm`` or ``pcm:key=value,...`` (keys ``prog``,
    ``read``, ``drift``, ``time``, ``gmax``, ``compensate``); ``None`` or ``none``: none."""
    if spec is None or isinstance(spec, PCMWeights):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"weight noise {spec!r} must be a spec such as 'pcm:time=3600'")
    name, colon, args = (t.strip() for t in spec.partition(":"))
    if name.lower() == "none" and not colon:
        return None
    if name.lower() not in WEIGHT_NOISES:
        raise ValueError(f"bad weight noise {spec!r}: unknown model {name!r}; valid: "
                         f"{', '.join(WEIGHT_NOISES)} (e.g. pcm:time=3600)")
    keys = ("prog", "read", "drift", "time", "gmax", "compensate")
    kwargs = key_values(args, keys, _bad("weight noise", spec)) if colon else {}
    try:
        return PCMWeights(**kwargs)
    except ValueError as err:
        raise ValueError(f"bad weight noise {spec!r}: {err}") from None


def make_adc(spec: str | ADC | None) -> ADC | None:
    """The ADC a spec names: ``BITS``, or ``bits=B,range=R`` (default range 4); ``None`` or
    ``none``: the activities are read exactly."""
    if spec is None or isinstance(spec, ADC):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"adc {spec!r} must be a spec such as 'bits=8,range=4'")
    text = spec.strip()
    if text.lower() == "none":
        return None
    kwargs = {"bits": text} if "=" not in text else key_values(text, ("bits", "range"),
                                                                _bad("adc", spec))
    try:
        bits = float(kwargs.get("bits", 8))
    except ValueError:
        raise ValueError(f"bad adc {spec!r}: bits={kwargs['bits']!r} is not a number") from None
    try:
        return ADC(bits=bits, range=kwargs.get("range", 4.0))
    except ValueError as err:
        raise ValueError(f"bad adc {spec!r}: {err}") from None
