"""Noise sources: the intrinsic noise of a layer's nodes.

A noise source turns a layer's activity ``a`` into the perturbation ``eps`` that enters its
nodes, ``at = a + eps`` (docs/algorithms.md, "Two passes, one forward"). Each source owns a seeded
``torch.Generator`` on the device of the activity it perturbs, so a seed fixes every draw.
A layer calls its source once per time step, so a stateful source (``Telegraph``) advances
one step per call.

Sources (docs/algorithms.md, "Noise that cannot be read or switched off"): ``Gaussian``,
``Bernoulli``, ``CenteredBernoulli`` (binary devices), ``Telegraph`` (random telegraph noise,
a stochastic magnetic tunnel junction), ``Gain`` (multiplicative), ``Shot`` (Poisson),
``Logistic`` (Heaviside + logistic = stochastic binary unit), ``Sum`` (independent sources
added), and two device models: ``MTJ`` (the stochastic magnetic tunnel junction of
artcogsys/MTJ-Node-Perturbation) and ``Replay`` (recorded device noise from a file).

``make_noise(spec, std)`` builds a source from a spec string::

    spec      := component ("+" component)*
    component := NAME | NAME ":" key "=" value ("," key "=" value)*

``NAME`` is one of ``NOISES`` or ``DEVICE_NOISES``, the keys are its constructor's arguments,
the values numbers (``replay``'s ``file``, ``dataset`` and ``mode`` are text);
``std`` is every component's default scale, an explicit ``std=`` overrides it (``mtj`` keeps its
measured numbers and ``replay`` its recorded values unless given ``std=`` or ``scale=``).

Example::

    >>> import torch
    >>> from noisynets.core.noise import Gaussian, make_noise
    >>> noise = Gaussian(std=0.1, seed=0)
    >>> eps = noise(torch.zeros(4, 3))
    >>> eps.shape
    torch.Size([4, 3])
    >>> make_noise("gaussian+telegraph:switch=0.05", 1e-3).variance
    2e-06
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

NOISES: tuple[str, ...] = (
    "gaussian",
    "bernoulli",
    "centered_bernoulli",
    "telegraph",
    "gain",
    "shot",
    "logistic",
)
# Models of particular devices: measured numbers (mtj) or recorded noise (replay: needs file=).
DEVICE_NOISES: tuple[str, ...] = ("mtj", "replay")


def _number(
    name: str,
    value: float,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (else ValueError)."""
    try:
        x = float(value)
    except OverflowError:  # an integer too large for a float
        x = math.inf
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{name}={x} must be finite")
    if x < low or (low_open and x == low) or x > high or (high_open and x == high):
        if high == math.inf:
            interval = f"{'>' if low_open else '>='} {low:g}"
        else:
            interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}={x:g} must be {interval}")
    return x


def _normal(a: Tensor, std: float, g: torch.Generator) -> Tensor:
    """``std * z``, ``z ~ N(0, 1)`` of ``a``'s shape, dtype and device: the numbers of
    ``randn(...) * std`` to the bit, drawn and scaled in one pass."""
    return torch.empty(a.shape, device=a.device, dtype=a.dtype).normal_(0.0, std, generator=g)


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype uniforms and counts are drawn in: ``dtype`` if single/double, else float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class NoiseSource(nn.Module):
    """Base class: ``forward(a)`` returns the perturbation ``eps`` of activity ``a``.

    Attributes a subclass declares:

    * ``additive`` -- ``eps`` does not depend on ``a`` (required by NP, which divides by the
      noise variance);
    * ``mean`` and ``variance`` -- the per-node statistics of ``eps`` for additive sources
      (a non-additive source raises ``ValueError`` for ``variance``);
    * ``zero_mean`` -- every node's ``eps`` has mean 0 (required by NP and INP, whose estimates
      are unbiased only for zero-mean perturbations);
    * ``summed_variance(T)`` -- ``Var(sum_{t<T} eps_t)`` of one node, the variance of the
      perturbation a node receives over ``T`` time steps. The default, ``T * variance``, holds
      for noise independent across steps; a source with memory (``Telegraph``) overrides it.
    """

    additive: bool = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        """Restart the source's random stream from ``seed``."""
        self.seed = int(seed)
        self._generator = None
        self.reset()

    def generator(self, device: torch.device) -> torch.Generator:
        """The source's generator on ``device`` (created, seeded, on first use there)."""
        g = self._generator
        if g is None or g.device != device:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generator = g
        return g

    def reset(self) -> None:
        """Forget any state carried between draws (stateless sources have none)."""

    def get_state(self) -> dict[str, Any]:
        """What the next draws depend on, for ``set_state`` to restore."""
        g = self._generator
        return {"generator": None if g is None else (g.device, g.get_state())}

    def set_state(self, state: dict[str, Any]) -> None:
        if state["generator"] is None:
            self._generator = None
        else:
            device, rng = state["generator"]
            self.generator(device).set_state(rng)

    @property
    def mean(self) -> float | Tensor:
        """``E[eps]`` of a node: a number, or a tensor of per-node means."""
        raise NotImplementedError

    @property
    def zero_mean(self) -> bool:
        """Whether every node's noise has mean 0."""
        mean = self.mean
        return bool((mean == 0).all()) if isinstance(mean, Tensor) else mean == 0

    @property
    def variance(self) -> float:
        raise NotImplementedError

    def summed_variance(self, steps: int) -> float:
        """``Var(sum_{t<steps} eps_t)`` of one node: ``steps * variance`` (independent steps)."""
        return int(steps) * self.variance

    @property
    def spec(self) -> str:
        """The source in one line, as ``make_noise`` reads it: ``telegraph:std=0.001,...``."""
        names = {cls: name for name, (cls, _) in _SOURCES.items()}
        name = names.get(type(self), type(self).__name__)
        args = self.extra_repr().replace(", ", ",")
        return f"{name}:{args}" if args else name

    def forward(self, a: Tensor) -> Tensor:
        raise NotImplementedError


class Gaussian(NoiseSource):
    """Gaussian node noise: ``eps ~ N(0, std^2)``, independent per node, sample and step.

    Statistics: mean 0, variance ``std^2``.
    """

    def __init__(self, std: float = 1e-3, seed: int = 0) -> None:
        super().__init__(seed)
        self.std = _number("std", std)

    @property
    def mean(self) -> float:
        return 0.0

    @property
    def variance(self) -> float:
        return self.std**2

    def forward(self, a: Tensor) -> Tensor:
        g = self.generator(a.device)
        return _normal(a, self.std, g)

    def extra_repr(self) -> str:
        return f"std={self.std:g}"


class Bernoulli(NoiseSource):
    """Binary (on/off) node noise: ``eps = A * b``, ``b ~ Bernoulli(p)``, ``A = std/sqrt(p(1-p))``.

    Independent per node, sample and step. Statistics: mean ``A * p``, variance ``std^2``
    (the amplitude ``A`` is chosen so that the standard deviation is ``std``).
    """

    def __init__(self, std: float = 1e-3, p: float = 0.5, seed: int = 0) -> None:
        super().__init__(seed)
        self.std = _number("std", std)
        self.p = _number("p", p, 0.0, 1.0, low_open=True, high_open=True)

    @property
    def amplitude(self) -> float:
        """``A = std / sqrt(p (1 - p))``, the size of a binary event."""
        return self.std / math.sqrt(self.p * (1.0 - self.p))

    @property
    def mean(self) -> float:
        return self.amplitude * self.p

    @property
    def variance(self) -> float:
        return self.std**2

    def _bits(self, a: Tensor) -> Tensor:
        g = self.generator(a.device)
        u = torch.rand(a.shape, generator=g, device=a.device, dtype=_float_dtype(a.dtype))
        return (u < self.p).to(a.dtype)

    def forward(self, a: Tensor) -> Tensor:
        return self._bits(a) * self.amplitude

    def extra_repr(self) -> str:
        return f"std={self.std:g}, p={self.p:g}"


class CenteredBernoulli(Bernoulli):
    """Centred binary noise: ``eps = A * (b - p)``, ``b ~ Bernoulli(p)``, ``A = std/sqrt(p(1-p))``.

    A binary device whose mean is removed: it takes ``A (1 - p)`` with probability ``p`` and
    ``-A p`` otherwise. Statistics: mean 0, variance ``std^2``.
    """

    @property
    def mean(self) -> float:
        return 0.0

    def forward(self, a: Tensor) -> Tensor:
        return (self._bits(a) - self.p) * self.amplitude


class Telegraph(NoiseSource):
    """Random telegraph noise, a model of a stochastic magnetic tunnel junction.

    Every entry of the activity (each row and node) has a two-state ``s in {-1, +1}`` that
    flips with probability ``switch`` per call (one call per time step)::

        s_t   = -s_{t-1} with probability switch, else s_{t-1}
        eps_t = std * s_t + offset

    ``offset`` is a per-node constant (shape ``a.shape[1:]``, i.e. ``(nodes,)``), drawn once
    from ``N(0, offset_std^2)`` with the source's generator when first needed and then fixed
    (device mismatch); it is ``None`` while ``offset_std == 0``. The state is kept between
    calls while the activity's shape and device stay the same; otherwise (first call, new
    shape or device, after ``reset()``) it is drawn from the stationary distribution, each
    state with probability 1/2. ``reset()`` forgets the state but keeps the offset (the same
    device restarted); ``reseed()`` forgets both (a new device). State and offset are plain
    attributes, not buffers, so ``state_dict`` does not depend on them.

    Statistics, per node: mean ``offset`` (``mean`` is 0.0 without offsets, else the
    per-node ``offset`` tensor, which exists once drawn); variance ``std^2``; lag-k
    autocorrelation ``rho^k`` with ``rho = 1 - 2 switch``; expected fraction of entries that
    flip per step ``switch``. Summed over ``T`` steps the variance is not ``T std^2``::

        Var(sum_{t<T} eps_t) = std^2 * sum_{t,t'<T} rho^|t-t'|
                             = std^2 * (T + 2 sum_{k=1}^{T-1} (T - k) rho^k)
    """

    def __init__(
        self, std: float = 1e-3, switch: float = 0.1, offset_std: float = 0.0, seed: int = 0
    ) -> None:
        super().__init__(seed)
        self.std = _number("std", std)
        self.switch = _number("switch", switch, 0.0, 1.0, low_open=True)
        self.offset_std = _number("offset_std", offset_std)
        self._state: Tensor | None = None  # bool, True for s = +1
        self.offset: Tensor | None = None

    @property
    def mean(self) -> float | Tensor:
        if self.offset_std == 0.0:
            return 0.0
        if self.offset is None:
            raise ValueError(
                "telegraph noise with offset_std > 0 has per-node means (its offsets), drawn "
                "at its first use"
            )
        return self.offset

    @property
    def zero_mean(self) -> bool:
        return self.offset_std == 0.0

    @property
    def variance(self) -> float:
        return self.std**2

    def summed_variance(self, steps: int) -> float:
        rho = 1.0 - 2.0 * self.switch
        T = int(steps)
        return self.std**2 * (T + 2.0 * sum((T - k) * rho**k for k in range(1, T)))

    def autocorrelation(self, lag: int) -> float:
        """The correlation of ``eps_t`` and ``eps_{t+lag}`` of one entry: ``(1-2 switch)^lag``."""
        return (1.0 - 2.0 * self.switch) ** int(lag)

    def reset(self) -> None:
        self._state = None

    def reseed(self, seed: int) -> None:
        self.offset = None
        super().reseed(seed)

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "state": self._state, "offset": self.offset}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._state, self.offset = state["state"], state["offset"]

    def _offset(self, a: Tensor, g: torch.Generator) -> Tensor | None:
        if self.offset_std == 0.0:
            return None
        shape = a.shape[1:] if a.dim() > 1 else a.shape
        offset = self.offset
        if offset is None or offset.shape != shape:
            dtype = _float_dtype(a.dtype)
            offset = torch.randn(shape, generator=g, device=a.device, dtype=dtype)
            offset = offset * self.offset_std
        elif offset.device != a.device:
            offset = offset.to(a.device)
        self.offset = offset
        return offset

    def forward(self, a: Tensor) -> Tensor:
        g = self.generator(a.device)
        offset = self._offset(a, g)
        state = self._state
        u = torch.rand(a.shape, generator=g, device=a.device, dtype=_float_dtype(a.dtype))
        if state is None or state.shape != a.shape or state.device != a.device:
            state = u < 0.5  # stationary: each state with probability 1/2
        else:
            state = state ^ (u < self.switch)
        self._state = state
        eps = (state.to(a.dtype) * 2.0 - 1.0) * self.std
        return eps if offset is None else eps + offset.to(a.dtype)

    def extra_repr(self) -> str:
        return f"std={self.std:g}, switch={self.switch:g}, offset_std={self.offset_std:g}"


class Gain(NoiseSource):
    """Multiplicative (gain) noise: ``at = a (1 + std z)``, ``z ~ N(0, 1)``, so ``eps = a std z``.

    Independent per node, sample and step. ``eps`` depends on ``a``, so the source is not
    additive: its mean is 0 but its variance ``std^2 a^2`` is not a constant, and ``variance``
    raises ``ValueError`` (``relative_variance`` is ``std^2``, the variance of ``eps / a``).
    """

    additive = False

    def __init__(self, std: float = 1e-3, seed: int = 0) -> None:
        super().__init__(seed)
        self.std = _number("std", std)

    @property
    def mean(self) -> float:
        return 0.0

    @property
    def variance(self) -> float:
        raise ValueError(
            "gain noise is multiplicative: the variance of eps = a * std * z is std^2 * a^2, "
            "which depends on the activity (see relative_variance)"
        )

    @property
    def relative_variance(self) -> float:
        """The variance of ``eps / a``: ``std^2``."""
        return self.std**2

    def forward(self, a: Tensor) -> Tensor:
        g = self.generator(a.device)
        return a * _normal(a, self.std, g)

    def extra_repr(self) -> str:
        return f"std={self.std:g}"


class Shot(NoiseSource):
    """Poisson (shot) noise: ``eps = q (N - rate)``, ``N ~ Poisson(rate)``, ``q = std/sqrt(rate)``.

    ``rate`` is the expected number of charge carriers (events) per step and ``q`` their charge.
    Independent per node, sample and step. Statistics: mean 0, variance ``std^2``; it is skewed
    (skewness ``1/sqrt(rate)``) and tends to Gaussian as ``rate`` grows.
    """

    def __init__(self, std: float = 1e-3, rate: float = 10.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.std = _number("std", std)
        self.rate = _number("rate", rate, low_open=True)

    @property
    def charge(self) -> float:
        """``q = std / sqrt(rate)``."""
        return self.std / math.sqrt(self.rate)

    @property
    def mean(self) -> float:
        return 0.0

    @property
    def variance(self) -> float:
        return self.std**2

    def forward(self, a: Tensor) -> Tensor:
        g = self.generator(a.device)
        rate = torch.full(a.shape, self.rate, device=a.device, dtype=_float_dtype(a.dtype))
        counts = torch.poisson(rate, generator=g)
        return ((counts - self.rate) * self.charge).to(a.dtype)

    def extra_repr(self) -> str:
        return f"std={self.std:g}, rate={self.rate:g}"


class Logistic(NoiseSource):
    """Logistic noise: ``eps = scale * log(u / (1 - u))``, ``u ~ U(0, 1)``.

    Give ``std`` or ``scale`` (not both; neither: ``std = 1e-3``); a logistic variable's
    standard deviation is ``scale * pi / sqrt(3)``, so ``scale = std * sqrt(3) / pi``.
    Independent per node, sample and step. Statistics: mean 0, variance ``scale^2 pi^2 / 3``.

    A Heaviside unit with logistic noise of scale 1 is a stochastic binary unit:
    ``P(a + eps > 0) = sigmoid(a)``, i.e. ``Heaviside(a + eps) ~ Bernoulli(sigmoid(a))``.
    """

    def __init__(self, std: float | None = None, scale: float | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        if std is not None and scale is not None:
            raise ValueError(f"give std or scale, not both (got std={std}, scale={scale})")
        if scale is None:
            scale = _number("std", 1e-3 if std is None else std) * math.sqrt(3.0) / math.pi
        self.scale = _number("scale", scale)

    @property
    def std(self) -> float:
        return self.scale * math.pi / math.sqrt(3.0)

    @property
    def mean(self) -> float:
        return 0.0

    @property
    def variance(self) -> float:
        return (self.scale * math.pi) ** 2 / 3.0

    def forward(self, a: Tensor) -> Tensor:
        g = self.generator(a.device)
        dtype = _float_dtype(a.dtype)
        u = torch.rand(a.shape, generator=g, device=a.device, dtype=dtype)
        u = u.clamp_min(torch.finfo(dtype).tiny)  # rand may return 0; never 1
        return (torch.logit(u) * self.scale).to(a.dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


class Sum(NoiseSource):
    """The sum of several independent sources: ``eps = sum_i eps_i``.

    Statistics: means and variances add (the children are independent). The sum is additive
    iff every child is. ``reseed(seed)`` (also done at construction, overriding the children's
    own seeds) gives every child a distinct seed derived from ``seed``, so that two equal
    children do not draw the same values; ``reset()`` resets every child.
    """

    def __init__(self, sources: Iterable[NoiseSource], seed: int = 0) -> None:
        super().__init__(seed)
        sources = list(sources)
        if not sources:
            raise ValueError("Sum needs at least one noise source")
        for s in sources:
            if not isinstance(s, NoiseSource):
                raise ValueError(f"Sum takes noise sources, got {type(s).__name__}")
        self.sources = nn.ModuleList(sources)
        self.reseed(self.seed)

    @property
    def additive(self) -> bool:  # type: ignore[override]
        return all(s.additive for s in self.sources)

    @property
    def mean(self) -> float | Tensor:
        return sum(s.mean for s in self.sources)

    @property
    def zero_mean(self) -> bool:
        return all(s.zero_mean for s in self.sources)

    @property
    def variance(self) -> float:
        if not self.additive:
            names = ", ".join(type(s).__name__ for s in self.sources if not s.additive)
            raise ValueError(
                f"a sum with multiplicative sources ({names}) has no activity-free variance"
            )
        return sum(s.variance for s in self.sources)

    def summed_variance(self, steps: int) -> float:
        return sum(s.summed_variance(steps) for s in self.sources)

    def reseed(self, seed: int) -> None:
        super().reseed(seed)
        g = torch.Generator().manual_seed(self.seed)
        seeds = torch.randint(2**62, (len(self.sources),), generator=g).tolist()
        for s, child_seed in zip(self.sources, seeds):
            s.reseed(child_seed)

    def reset(self) -> None:
        for s in self.sources:
            s.reset()

    @property
    def spec(self) -> str:
        return "+".join(s.spec for s in self.sources)

    def forward(self, a: Tensor) -> Tensor:
        eps = self.sources[0](a)
        for s in self.sources[1:]:
            eps = eps + s(a)
        return eps


class MTJ(NoiseSource):
    """A stochastic magnetic tunnel junction node, as the group's MTJ study models it.

    Source: the simulated sMTJ noise of artcogsys/MTJ-Node-Perturbation (``simulatedMTJNoise``
    in ``nodeperturbation/noise.py``; Phys. Rev. Applied 2025), whose numbers were fitted to
    measured device voltages. Every node carries a telegraph offset ``o s`` with ``s in
    {-1, +1}``, plus white Gaussian noise; along the rows of a draw (the samples, one after
    the other, as the device produces them) the state flips with probability ``flip``::

        s_n   = -s_{n-1} with probability flip, else s_{n-1}      (per node)
        eps_n = std * z_n + offset * s_n,    z_n ~ N(0, 1)

    The chain continues from the last row of one draw into the next (its state is kept while
    the node shape and device stay the same); its first state is +1 or -1 with probability
    1/2 each, its stationary distribution. Defaults: ``std = 9.08e-4`` (0.00090841466),
    ``offset = 5.93e-3`` (0.0059316154), ``flip = 0.0809``. The study's device also has a
    constant level of 0.0421 V, which shifts every activity alike and is left out here
    (``dc``, default 0, restores it; it gives the noise a non-zero mean, which NP refuses).

    Statistics, per node: mean ``dc``; variance ``std^2 + offset^2``; the offset part's
    lag-k correlation along the samples ``(1 - 2 flip)^k``. Over ``T`` steps the same sample's
    draws are a whole draw apart in the chain (``r`` rows: correlation ``(1 - 2 flip)^r``,
    below 1e-4 for r >= 50), so ``summed_variance(T)`` is ``T`` times the variance to that
    precision.
    """

    def __init__(
        self, std: float = 9.08e-4, offset: float = 5.93e-3, flip: float = 0.0809,
        dc: float = 0.0, seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.std = _number("std", std)
        self.offset = _number("offset", offset)
        self.flip = _number("flip", flip, 0.0, 1.0)
        self.dc = _number("dc", dc, -math.inf)
        self._state: Tensor | None = None  # per node: +1 or -1

    @property
    def mean(self) -> float:
        return self.dc

    @property
    def variance(self) -> float:
        return self.std**2 + self.offset**2

    def reset(self) -> None:
        self._state = None

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "state": self._state}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._state = state["state"]

    def forward(self, a: Tensor) -> Tensor:
        g = self.generator(a.device)
        dtype = _float_dtype(a.dtype)
        nodes = a.shape[1:]
        state = self._state
        if state is None or state.shape != nodes or state.device != a.device:
            state = torch.where(torch.rand(nodes, generator=g, device=a.device) < 0.5, 1.0, -1.0)
        flips = torch.rand(a.shape, generator=g, device=a.device, dtype=dtype) < self.flip
        signs = torch.cumprod(1.0 - 2.0 * flips.to(dtype), dim=0) * state.to(dtype)
        self._state = signs[-1].clone()
        return (_normal(a, self.std, g) + signs.to(a.dtype) * self.offset + self.dc).to(a.dtype)

    def extra_repr(self) -> str:
        return f"std={self.std:g}, offset={self.offset:g}, flip={self.flip:g}, dc={self.dc:g}"


REPLAY_MODES: tuple[str, ...] = ("trace", "pool")


def load_recording(file: str, dataset: str | None = None) -> Tensor:
    """The recorded noise in ``file`` -- ``.npy``, ``.npz`` (its only array) or HDF5 (with
    ``dataset``, or the file's only data set), known by its content
    (``noisynets.arrays.read_array``: a regular file, its claimed size checked before reading)
    -- as a float64 tensor of shape (length,) or (traces, length)."""
    from noisynets.arrays import read_array

    path = str(file)
    values = read_array(path, "recorded noise", ("npy", "npz", "hdf5"), dataset=dataset)
    if values.ndim not in (1, 2) or values.size < 2:
        raise ValueError(f"recorded noise {path!r} must be numbers, shape (length,) or "
                         f"(traces, length) with at least 2 values; got {values.dtype} "
                         f"{values.shape}")
    data = torch.as_tensor(values, dtype=torch.float64)
    if not torch.isfinite(data).all():
        raise ValueError(f"recorded noise {path!r} holds values that are not finite")
    if float(data.abs().max()) > torch.finfo(torch.float32).max:
        raise ValueError(f"recorded noise {path!r} holds values beyond float32's range "
                         f"(|v| up to {float(data.abs().max()):.3g}): scale it with scale=")
    return data


class Replay(NoiseSource):
    """Recorded device noise, replayed: the user's measured fluctuations drive the nodes.

    The file (``load_recording``) holds one trace, shape (length,), or several, shape
    (traces, length), in the units of the activity (``scale`` multiplies them). Two modes:

    * ``trace`` -- node ``j`` replays trace ``j mod M`` (``M`` traces of length ``L``) in
      order: the rows ``r`` of a draw take the values at positions ``p + s_j + r`` (modulo
      ``L``), and the next draw goes on from ``p + rows``. Nodes that share a trace replay
      disjoint stretches of it: ``s_j = (j div M) * (L div c)``, ``c = ceil(nodes / M)``.
      The start ``p`` is drawn once, uniformly, from the source's generator (so that layers
      and seeds replay different stretches). The recording's correlations in time are kept.
    * ``pool`` -- every entry is drawn independently and uniformly from all recorded values
      (with replacement): the recording's distribution without its correlations.

    ``center = 1`` subtracts the mean (each trace's own in ``trace`` mode, the pool's in
    ``pool`` mode). Statistics: mean 0 when centred, else the recording's mean (per node in
    ``trace`` mode); ``variance`` is the pool's population variance (``pool`` mode, exact for
    its independent draws). In ``trace`` mode the nodes have their own variances and the sum
    over time steps has the recording's unknown correlations, so ``variance`` raises: NP,
    which divides by it, refuses such a source.
    """

    def __init__(
        self, file: str, mode: str = "trace", scale: float = 1.0, center: float = 0.0,
        dataset: str | None = None, seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if mode not in REPLAY_MODES:
            raise ValueError(f"mode={mode!r} must be one of {', '.join(REPLAY_MODES)}")
        if center not in (0, 1):
            raise ValueError(f"center={center!r} must be 0 or 1")
        self.file, self.mode, self.dataset = str(file), mode, dataset
        self.scale = _number("scale", scale, low_open=True)
        self.center = bool(center)
        data = load_recording(self.file, dataset)
        data = data if data.dim() == 2 else data.unsqueeze(0)
        if mode == "pool":
            data = data.reshape(1, -1)
        if self.center:
            data = data - data.mean(-1, keepdim=True)
        self.data = data * self.scale  # (traces, length); not a buffer: not in state_dict
        self._position: int | None = None
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def mean(self) -> float | Tensor:
        if self.center:
            return 0.0
        means = self.data.mean(-1)
        return float(means[0]) if means.numel() == 1 else means

    @property
    def zero_mean(self) -> bool:
        return self.center or bool((self.data.mean(-1) == 0).all())

    @property
    def variance(self) -> float:
        if self.mode == "trace":
            raise ValueError(
                f"replayed traces of {self.file!r} are correlated in time and each node has "
                "its own variance: replay with mode=pool,center=1 for np, or train with anp or "
                "danp, which need no noise statistics"
            )
        return float(self.data.var(unbiased=False))

    def reset(self) -> None:
        """A device restarted: the replay goes on where it was (a recording has no state)."""

    def reseed(self, seed: int) -> None:
        self._position = None
        super().reseed(seed)

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "position": self._position}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._position = state["position"]

    def _values(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = self.data.to(device=device, dtype=dtype)
        return self._cache[key]

    def forward(self, a: Tensor) -> Tensor:
        g = self.generator(a.device)
        data = self._values(a.device, a.dtype)
        traces, length = data.shape
        if self.mode == "pool":
            index = torch.randint(length, a.shape, generator=g, device=a.device)
            return data[0][index]
        if self._position is None:
            self._position = int(torch.randint(length, (1,), generator=g, device=a.device))
        rows = a.shape[0]
        nodes = a[0].numel()
        node = torch.arange(nodes, device=a.device)
        stride = length // -(-nodes // traces)  # L div ceil(nodes / M)
        start = self._position + (node // traces) * stride
        time = (start.unsqueeze(0) + torch.arange(rows, device=a.device).unsqueeze(1)) % length
        self._position = (self._position + rows) % length
        return data[(node % traces).unsqueeze(0), time].view(a.shape)

    def extra_repr(self) -> str:
        dataset = "" if self.dataset is None else f", dataset={self.dataset}"
        return (f"file={self.file}, mode={self.mode}, scale={self.scale:g}, "
                f"center={int(self.center)}{dataset}")


_SOURCES: dict[str, tuple[type[NoiseSource], tuple[str, ...]]] = {
    "gaussian": (Gaussian, ("std",)),
    "bernoulli": (Bernoulli, ("std", "p")),
    "centered_bernoulli": (CenteredBernoulli, ("std", "p")),
    "telegraph": (Telegraph, ("std", "switch", "offset_std")),
    "gain": (Gain, ("std",)),
    "shot": (Shot, ("std", "rate")),
    "logistic": (Logistic, ("std", "scale")),
    "mtj": (MTJ, ("std", "offset", "flip", "dc")),
    "replay": (Replay, ("file", "mode", "scale", "center", "dataset")),
}
_TEXT_KEYS: frozenset[str] = frozenset({"file", "mode", "dataset"})
_OWN_SCALE: frozenset[str] = frozenset({"mtj", "replay"})  # no default std: measured numbers


def key_values(
    text: str,
    keys: Sequence[str],
    bad: Callable[[str], ValueError],
    name: str = "",
    text_keys: Sequence[str] = (),
) -> dict[str, float | str]:
    """``key=value,...`` (the arguments of a spec's ``NAME:...``) as a dict: keys lower-cased,
    each one of ``keys`` and given once, values numbers (text for ``text_keys``); else the
    ``ValueError`` of ``bad(why)``, ``why`` naming the bad part (and ``name``, the component)."""
    valid = f"valid keys{f' for {name}' if name else ''}: {', '.join(keys)}"
    within, of = (f" in {name}", f" for {name}") if name else ("", "")
    out: dict[str, float | str] = {}
    for item in text.split(","):
        key, eq, value = (t.strip() for t in item.partition("="))
        if not eq or not key or not value:
            raise bad(f"{item.strip()!r}{within} is not key=value; {valid}")
        key = key.lower()
        if key not in keys:
            raise bad(f"unknown key {key!r}{of}; {valid}")
        if key in out:
            raise bad(f"key {key!r} given twice{of}")
        if key in text_keys:
            out[key] = value
            continue
        try:
            out[key] = float(value)
        except ValueError:
            raise bad(f"{key}={value!r}{within} is not a number") from None
    return out


def _component(spec: str, text: str, std: float) -> NoiseSource:
    def bad(why: str) -> ValueError:
        return ValueError(f"bad noise spec {spec!r}: {why}")

    name, colon, args = (t.strip() for t in text.partition(":"))
    if not name:
        raise bad(
            f"empty component {text!r}; expected NAME or NAME:key=value,... joined by '+' "
            f"(names: {', '.join(NOISES + DEVICE_NOISES)})"
        )
    if name.lower() not in _SOURCES:
        raise bad(f"unknown noise {name!r}; valid names: {', '.join(NOISES + DEVICE_NOISES)}")
    name = name.lower()
    cls, keys = _SOURCES[name]
    valid = f"valid keys for {name}: {', '.join(keys)}"
    kwargs: dict[str, Any] = key_values(args, keys, bad, name, _TEXT_KEYS) if colon else {}
    for key in ("std", "scale"):
        if kwargs.get(key) == 0:
            raise bad(f"{key}=0 in {name} injects no noise, and no rule can learn from "
                      f"no perturbation: give {key} > 0")
    if name == "replay" and "file" not in kwargs:
        raise bad("replay needs file=PATH (.npy, .h5 or .hdf5); " + valid)
    if "std" not in kwargs and "scale" not in kwargs and name not in _OWN_SCALE:
        kwargs["std"] = std
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise bad(f"{name}: {err}; {valid}") from None


def make_noise(spec: str, std: float) -> NoiseSource:
    """The noise source a spec describes: ``NAME``, ``NAME:key=value,...``, sums joined by ``+``.

    ``NAME`` is one of ``NOISES``; the keys are the constructor's arguments (``std`` and
    ``p``, ``switch``, ``offset_std``, ``rate`` or ``scale``), the values numbers. ``std`` is
    each component's default scale; an explicit ``std=`` (or, for logistic, ``scale=``)
    overrides it. One component gives that source, several a ``Sum``. Raises ``ValueError``
    (one line, naming the bad part) for an unknown name or key, a value that is not a finite
    number, or one out of range (``p`` in (0, 1), ``switch`` in (0, 1], ``rate`` > 0, ``std``,
    ``scale``, ``offset_std`` >= 0).

        >>> make_noise("gaussian+telegraph:switch=0.05,offset_std=0.001", 0.01)
        Sum(
          (sources): ModuleList(
            (0): Gaussian(std=0.01)
            (1): Telegraph(std=0.01, switch=0.05, offset_std=0.001)
          )
        )
    """
    if not isinstance(spec, str):
        raise ValueError(f"noise spec {spec!r} must be a string such as 'gaussian'")
    try:
        std = _number("std", std)
    except ValueError as err:
        raise ValueError(f"noise {err}") from None
    sources = [_component(spec, text, std) for text in spec.split("+")]
    return sources[0] if len(sources) == 1 else Sum(sources)
