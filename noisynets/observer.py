"""The rule as an observer: weight estimates from what the user's own system reports.

On hardware, or in another simulator, the forward runs elsewhere. A perturbation rule needs
only an *observation* of a batched forward of ``P`` passes of ``B`` samples (pass 0 the
reference, passes 1.. noisy), per layer ``l = 1..L`` (docs/algorithms.md, "Intrinsic,
inaccessible noise")::

    inputs[l]    (B, d_l)     layer l's input in the reference pass, decorrelated (xh = R x)
                              where the layer has an R, summed over the time steps
    activity[l]  (P, B, n_l)  layer l's activity a_l (before its nonlinearity) in every pass,
                              summed over the time steps
    loss         (P, B)       every pass's per-sample loss

That is a ``noisynets.Record``, the very object the built-in forward hands the rules:
``Rule.estimate(record, layers)`` is how every perturbation rule estimates, and
``Rule.gradients`` (the built-in forward) is one caller of it, this module another.
``observation`` builds a Record from numpy or torch arrays and checks it, naming the bad
array, its shape and what it should be in one line. ``Observer`` holds a rule and the
layer sizes; its ``estimate`` returns per layer ``(g_W, g_b)`` (torch tensors, shape
(n_l, d_l) and (n_l,)) for a dense layer::

    e_{l,k,n} = the rule's node signal (ANP: dL_{k,n} N / ||da_{k,n}||^2 da_{l,k,n})
    g_W_l = sum_{k,n} e_{l,k,n} xh_{l-1,n}^T / (K B)     g_b_l = T sum_{k,n} e_{l,k,n} / (K B)

ANP and DANP need nothing else; NP also needs the noise each layer received (summed over
time, (K, B, n_l)) and its variance, which a system can give only where its noise is
accessible; INP needs the plan ``Passes.layerwise`` (``Observer.plan`` says which layers each
pass must perturb). ``Observer.decorrelate`` updates the user's ``R`` matrices from the same
observation (``R <- R - eta C R``, docs/algorithms.md, "Decorrelation").

Example (a two-layer system that only reports observations)::

    >>> import numpy as np
    >>> from noisynets.observer import Observer
    >>> obs = Observer("danp", [4, 3, 2])
    >>> rng = np.random.default_rng(0)
    >>> inputs = [rng.normal(size=(5, 4)), rng.normal(size=(5, 3))]
    >>> activity = [rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 2))]
    >>> loss = rng.random((2, 5))
    >>> [tuple(g.shape) for g, _ in obs.estimate(inputs, activity, loss)]
    [(3, 4), (2, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from noisynets.core.decorrelation import Decorrelator
from noisynets.core.record import Passes, Record
from noisynets.rules import Rule, make_rule, uses_decorrelation
from noisynets.rules.base import Gradients

# The rules that learn from an observation alone (a Record, and for np the noise).
OBSERVABLE: tuple[str, ...] = ("np", "dnp", "inp", "dinp", "anp", "danp")


def _tensor(name: str, value: Any, dtype: torch.dtype | None) -> Tensor:
    """``value`` (numpy array, torch tensor, nested list) as a floating tensor."""
    if isinstance(value, Tensor):
        t = value.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"{name} is a {type(value).__name__}, not an array of numbers") from None
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} has dtype {t.dtype}: give real numbers")
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def observation(
    inputs: Sequence[Any], activity: Sequence[Any], loss: Any, time_steps: int = 1,
    sizes: Sequence[int] | None = None, passes: int | None = None,
    dtype: torch.dtype | None = None,
) -> Record:
    """A checked ``Record`` from arrays: ``inputs[l]`` (B, d_l), ``activity[l]`` (P, B, n_l),
    ``loss`` (P, B) (module doc). ``sizes = [d_0, n_1, ..., n_L]`` and ``passes = P``, where
    given, are checked too. ``dtype`` (default: the loss's floating dtype) is every tensor's.
    Raises ``ValueError`` with one line naming the array that is wrong and why."""
    if isinstance(time_steps, bool) or int(time_steps) != time_steps or time_steps < 1:
        raise ValueError(f"time_steps {time_steps!r} must be an integer >= 1")
    if isinstance(inputs, (Tensor, np.ndarray)) or isinstance(activity, (Tensor, np.ndarray)):
        raise ValueError("inputs and activity are lists with one array per layer, "
                         "inputs[l] (B, d_l) and activity[l] (P, B, n_l)")
    inputs, activity = list(inputs), list(activity)
    loss_t = _tensor("loss", loss, dtype)
    dtype = loss_t.dtype
    if loss_t.dim() != 2:
        raise ValueError(f"loss has shape {tuple(loss_t.shape)}: it must be (P, B), one "
                         "per-sample loss per pass (pass 0 the reference), e.g. (2, B)")
    P, B = loss_t.shape
    if P < 2:
        raise ValueError(f"loss has {P} pass: a perturbation rule needs the reference pass "
                         "and at least one noisy pass, shape (1 + K, B)")
    if passes is not None and P != passes:
        raise ValueError(f"loss has {P} passes, the rule's plan {passes}: run the passes "
                         "Observer.plan lists")
    L = len(activity)
    if L == 0 or len(inputs) != L:
        raise ValueError(f"{len(inputs)} inputs and {L} activities: give one of each per "
                         "layer (inputs[l] is the input of the layer whose activity is "
                         "activity[l])")
    if sizes is not None and len(sizes) != L + 1:
        raise ValueError(f"{L} layers observed, the observer has {len(sizes) - 1} "
                         f"(sizes {list(sizes)})")
    if not torch.isfinite(loss_t).all():
        raise ValueError("loss holds values that are not finite")
    xs, acts = [], []
    for k, (x, a) in enumerate(zip(inputs, activity)):
        x, a = _tensor(f"inputs[{k}]", x, dtype), _tensor(f"activity[{k}]", a, dtype)
        if x.dim() != 2 or x.shape[0] != B:
            raise ValueError(f"inputs[{k}] has shape {tuple(x.shape)}: it must be (B, d) = "
                             f"({B}, d), layer {k + 1}'s input in the reference pass, flattened")
        if a.dim() != 3 or a.shape[:2] != (P, B):
            raise ValueError(f"activity[{k}] has shape {tuple(a.shape)}: it must be (P, B, n) = "
                             f"({P}, {B}, n), layer {k + 1}'s activity in every pass (pass 0 "
                             "the reference), flattened")
        if sizes is not None and (x.shape[1] != sizes[k] or a.shape[2] != sizes[k + 1]):
            raise ValueError(f"layer {k + 1} is {sizes[k]} -> {sizes[k + 1]}, but inputs[{k}] "
                             f"has {x.shape[1]} features and activity[{k}] {a.shape[2]} nodes")
        for name, t in ((f"inputs[{k}]", x), (f"activity[{k}]", a)):
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} holds values that are not finite")
        xs.append(x)
        acts.append(a)
    if all(bool((a[1:] == a[:1]).all()) for a in acts):
        raise ValueError("every noisy pass's activity equals the reference pass's in every "
                         "layer: the system added no noise (or reported one pass twice)")
    return Record(xs, acts, loss_t, int(time_steps))


class DenseLayers:
    """The weight estimates of dense layers ``a_l = W_l xh_{l-1} + b_l`` from node signals:
    ``g_W = sum_{k,n} e_{k,n} xh_n^T / (K B)``, ``g_b = T sum_{k,n} e_{k,n} / (K B)`` (the
    same products as ``Layer.gradient`` of an ``nn.Linear``), a ``rules.base.Layers``."""

    def __init__(self, bias: bool = True) -> None:
        self.bias = bool(bias)

    def gradients(
        self, signals: Sequence[Tensor], record: Record
    ) -> list[tuple[Tensor, Tensor | None]]:
        out = []
        for e, x in zip(signals, record.inputs):
            K, B = e.shape[0], e.shape[1]
            e = e.sum(0)
            g_b = e.sum(0) * record.time_steps / (K * B) if self.bias else None
            out.append(((e.T @ x) / (K * B), g_b))
        return out


class Observer:
    """A perturbation rule that learns a system it can only observe.

    Args:
        rule: ``anp``, ``danp``, ``np``, ``dnp``, ``inp``, ``dinp`` (or a ``Rule``); the
            ``d`` prefix means the system decorrelates its inputs with ``R`` matrices, which
            ``decorrelate`` updates.
        sizes: ``[d_0, n_1, ..., n_L]``, the input features and every layer's nodes.
        noise_samples: K, the noisy passes per observation.
        bias: whether the layers have biases (``g_b`` is ``None`` otherwise).
        decorrelation_lr: ``eta_R`` of ``decorrelate``.
    """

    def __init__(
        self, rule: str | Rule, sizes: Sequence[int], noise_samples: int = 1, bias: bool = True,
        decorrelation_lr: float = 1e-3,
    ) -> None:
        if isinstance(rule, str):
            if rule not in OBSERVABLE:
                raise ValueError(f"rule {rule!r}: an observer runs a node-perturbation rule, "
                                 f"one of {', '.join(OBSERVABLE)}")
            self.decorrelated = uses_decorrelation(rule)
            rule = make_rule(rule, noise_samples)
        elif isinstance(rule, Rule):
            self.decorrelated = False
        else:
            raise TypeError(f"rule {rule!r} must be a rule's name or a Rule")
        self.rule = rule
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) < 2 or min(self.sizes) < 1 or list(sizes) != self.sizes:
            raise ValueError(f"sizes {list(sizes)} must list the input size and >= 1 layer, "
                             "all integers >= 1")
        self.layers = DenseLayers(bias)
        self.decorrelation_lr = float(decorrelation_lr)

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def plan(self) -> Passes:
        """The passes the system must run: ``plan.count`` passes, pass 0 the reference, and
        ``plan.noisy[l] = (start, stop)``: the passes whose layer ``l`` is noisy."""
        network = _Shape(self.num_layers)
        return self.rule.passes(network)  # type: ignore[arg-type]

    def record(self, inputs: Sequence[Any], activity: Sequence[Any], loss: Any,
               time_steps: int = 1) -> Record:
        """The checked observation (``observation``) of this observer's layers and plan."""
        return observation(inputs, activity, loss, time_steps, self.sizes, self.plan.count)

    def estimate(
        self, inputs: Sequence[Any] | Record, activity: Sequence[Any] | None = None,
        loss: Any = None, time_steps: int = 1, noise: Sequence[Any] | None = None,
        variances: Sequence[float] | None = None,
    ) -> Gradients:
        """Per layer ``(g_W, g_b)`` from an observation (arrays, or a ``Record``); ``noise``
        and ``variances`` only for NP (the noise of each layer, (K, B, n_l), and
        ``Var(sum_t eps_t)``)."""
        record = inputs if isinstance(inputs, Record) else self.record(
            inputs, activity, loss, time_steps)
        if isinstance(inputs, Record):
            observation(record.inputs, record.activity, record.loss, record.time_steps,
                        self.sizes, self.plan.count)
        eps = None
        if noise is not None:
            dtype = record.loss.dtype
            eps = [_tensor(f"noise[{k}]", n, dtype) for k, n in enumerate(noise)]
            for k, (n, a) in enumerate(zip(eps, record.activity)):
                if n.shape != (a.shape[0] - 1, *a.shape[1:]):
                    raise ValueError(f"noise[{k}] has shape {tuple(n.shape)}: it must be "
                                     f"{(a.shape[0] - 1, *a.shape[1:])}, the noise layer "
                                     f"{k + 1} received in each noisy pass")
        return self.rule.estimate(record, self.layers, eps, variances)

    def decorrelate(self, R: Sequence[Any], record: Record, fraction: float = 1.0) -> None:
        """One step ``R_l <- R_l - eta_R C_l R_l`` of every layer's ``R`` (torch tensors or
        float numpy arrays, updated in place) from the reference inputs ``record.inputs``
        (already ``R x``), averaged over time; ``C`` from the first ``ceil(fraction B)`` rows."""
        if len(R) != self.num_layers:
            raise ValueError(f"give one R per layer: {self.num_layers} layers, {len(R)} R")
        m = max(1, int(np.ceil(fraction * record.inputs[0].shape[0])))
        for k, (r, x) in enumerate(zip(R, record.inputs)):
            t = r if isinstance(r, Tensor) else torch.from_numpy(np.asarray(r))
            if t.shape != (x.shape[1], x.shape[1]):
                raise ValueError(f"R[{k}] has shape {tuple(t.shape)}: layer {k + 1} needs "
                                 f"({x.shape[1]}, {x.shape[1]})")
            if not isinstance(r, Tensor) and not np.shares_memory(t.numpy(), r):
                raise ValueError(f"R[{k}] cannot be updated in place: give a float numpy array")
            decorrelator = Decorrelator(x.shape[1])
            decorrelator.R = t
            rows = x[:m].to(t.dtype) / record.time_steps
            decorrelator.update(rows, self.decorrelation_lr)


class _Shape:
    """The two facts a rule's pass plan depends on, for a system outside torch."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.both_noisy = False
