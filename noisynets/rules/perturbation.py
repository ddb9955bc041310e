"""The node-perturbation family: NP, INP and ANP (docs/algorithms.md, "The rules").

A rule turns what a forward reports into a node-wise error signal ``e_{l,k,n}`` for every
layer ``l``, noisy pass ``k`` and sample ``n``, with ``dL_n = loss(noisy) - loss(reference)``.
Each weight operation's estimate is its own vector-Jacobian product with ``mean_k e`` at the
reference pass's input, averaged over the batch (``Network.gradients``, or for a system that
runs outside torch ``noisynets.observer.DenseLayers``); for a dense layer::

    g_W_l = mean_{k,n} e_{l,k,n} xh_{l-1,n}^T        g_b_l = T mean_{k,n} e_{l,k,n}

``antithetic=True`` (every rule here) draws the K noisy passes as K antithetic pairs, 2K
passes with noise ``eps_j`` and ``-eps_j`` (``Passes.antithetic``); the formulas are unchanged,
and for NP the mean over a pair is the central difference
``e = (L(+eps) - L(-eps)) / (2 s^2) * eps``, free of the loss's even-order terms in ``eps``.
It needs noise the system draws (refused for intrinsic noise in both passes) and zero mean.

On a network with local losses (``Network(local_losses=True)``) ANP estimates every hidden
layer from its own readout head's loss change (``ANP.local_signals``) and steps the heads by
their exact local gradient; NP and INP refuse such a network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from noisynets.core.network import Network
from noisynets.core.per_step import StepScales
from noisynets.core.record import ANTITHETIC_INTRINSIC, Passes, Record
from noisynets.rules.base import Gradients, Layers, Rule


def check_controllable_noise(rule: str, network: Network) -> None:
    """NP and INP need a noise-free reference pass and zero-mean noise (docs/algorithms.md),
    and full-precision observations: through an ADC neither the injected noise (NP) nor the
    equality ``da_k = eps_k`` (INP) survives."""
    network.check_summed_products()
    if getattr(network, "adc", None) is not None:
        raise ValueError(
            f"{rule} needs the noise (np) or activity changes equal to it (inp) in full "
            f"precision, but the network is read through an ADC ({network.adc.spec}): use anp "
            "or danp, which learn from the quantised activities"
        )
    if network.both_noisy:
        raise ValueError(
            f"{rule} needs a noise-free reference pass and control of the noise; the network's "
            "noise is intrinsic in both passes: use anp or danp"
        )
    for k, layer in enumerate(network.layers):
        if not layer.noise.zero_mean:
            raise ValueError(
                f"{rule} needs zero-mean noise, but layer {k + 1}'s {layer.noise.spec} has a "
                "non-zero mean (bernoulli, or telegraph with offsets): use centered_bernoulli, "
                "telegraph without offset_std, or anp/danp, which need no noise statistics"
            )


def check_independent_steps(network: Network) -> None:
    """Per-step NP divides by the per-step variance: the noise must not carry memory."""
    T = network.time_steps
    for k, layer in enumerate(network.layers):
        summed, variance = layer.noise.summed_variance(T), T * layer.noise.variance
        if abs(summed - variance) > 1e-9 * max(abs(variance), 1e-300):
            raise ValueError(
                f"np with per-step products needs noise independent across time steps; layer "
                f"{k + 1}'s {layer.noise.spec} has memory: use summed products (no "
                "--per-step-products), or anp/danp")


def check_drawn_noise(rule: str, network: Network, draws: str, memory_fix: str) -> None:
    """A rule that draws its own perturbations (``draws``) from every layer's noise source
    needs additive, zero-mean noise without memory; one ``ValueError`` naming the layer
    otherwise (``memory_fix``: what to use instead of noise with memory)."""
    for k, layer in enumerate(network.layers):
        noise = layer.noise
        if not noise.additive or not noise.zero_mean:
            raise ValueError(f"{rule} draws {draws} from each layer's noise source, but layer "
                             f"{k + 1}'s {noise.spec} is not additive zero-mean noise: use "
                             "gaussian or centered_bernoulli")
    try:
        check_independent_steps(network)
    except ValueError:
        raise ValueError(f"{rule} draws {draws} from each layer's noise source, which must have "
                         f"no memory (telegraph noise has): use {memory_fix}") from None


def check_antithetic(rule: str, network: Network) -> None:
    """Antithetic pairs negate the drawn noise: they need control of it, and noise whose
    negation has the same distribution's mean (zero-mean noise)."""
    if network.both_noisy:
        raise ValueError(f"{rule}: {ANTITHETIC_INTRINSIC}")
    for k, layer in enumerate(network.layers):
        if not layer.noise.zero_mean:
            raise ValueError(
                f"{rule} with antithetic pairs needs zero-mean noise (the pair's second pass "
                f"gets -eps), but layer {k + 1}'s {layer.noise.spec} has a non-zero mean: "
                "turn antithetic off, or use centered_bernoulli"
            )


def check_no_local_losses(rule: str, network: Network) -> None:
    """Local losses are built for the activity-based rules only."""
    if getattr(network, "local_losses", False):
        raise ValueError(f"local losses are for anp and danp; {rule} does not read the heads' "
                         "losses: use anp/danp or drop local losses (--local-losses)")


def guarded(scale: Tensor, norm_sq: Tensor) -> Tensor:
    """``scale`` where it is finite and ``||da||^2 > 0``; 0 (no contribution) elsewhere."""
    return torch.where(torch.isfinite(scale) & (norm_sq > 0), scale, torch.zeros_like(scale))


class NP(Rule):
    """Node perturbation with accessible noise: every layer perturbed at once.

    ``g_W_l = mean_n [ dL_n / s^2 * eps_{l,n} xh_{l-1,n}^T ]``, where ``eps`` is the noise a
    node received summed over the T time steps and ``s^2 = Var(sum_t eps_t)`` its variance
    (``T`` times the per-step variance only for noise independent across steps; the source
    states it, ``NoiseSource.summed_variance``). Unbiased for zero-mean additive noise; other
    noise is refused. It reads the noise values, through the network's accessible-noise path.
    """

    name = "np"

    def __init__(self, noise_samples: int = 1, antithetic: bool = False) -> None:
        self.noise_samples = int(noise_samples)
        self.antithetic = bool(antithetic)

    def check(self, network: Network) -> None:
        check_no_local_losses("np", network)
        check_controllable_noise("np", network)
        if self.antithetic:
            check_antithetic("np", network)
        for k, layer in enumerate(network.layers):
            if not layer.noise.additive:
                raise ValueError(
                    f"np needs additive noise with a known variance; layer {k + 1} has "
                    f"{type(layer.noise).__name__}: use anp or danp"
                )
            try:
                layer.noise.summed_variance(network.time_steps)
            except ValueError as err:
                raise ValueError(f"np divides by the noise variance, which layer {k + 1}'s "
                                 f"noise cannot state: {err}") from None

    def passes(self, network: Network) -> Passes:
        return Passes.perturbed(network.num_layers, self.noise_samples,
                                antithetic=self.antithetic)

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        if network.per_step:
            check_independent_steps(network)
            with torch.no_grad():
                return network.step_gradients(x, y, self.passes(network), self.step_scales(
                    network, self.passes(network)), read_noise=True)
        with torch.no_grad():
            record, noise = network.run_reading_noise(x, y, self.passes(network))
            variances = [layer.noise.summed_variance(record.time_steps)
                         for layer in network.layers]
            return self.estimate(record, network, noise, variances), record

    def estimate(self, record: Record, layers: Layers, noise: Sequence[Tensor] | None = None,
                 variances: Sequence[float] | None = None) -> Gradients:
        """The estimate from an observation ``record``, the noise each layer received (summed
        over time, (K, B, n_l)) and its variance ``Var(sum_t eps_t)``."""
        if noise is None or variances is None:
            raise ValueError("np reads the noise: give the noise each layer received and its "
                             "variance (noise=..., variances=...), or use anp/danp")
        return layers.gradients(self.signals(record, list(noise), list(variances)), record)

    @staticmethod
    def signals(record: Record, noise: list[Tensor], variances: list[float]) -> list[Tensor]:
        """``e_l = dL / s_l^2 * eps_l`` from the noise summed over time and its variance."""
        dL = record.loss[1:] - record.loss[:1]
        return [(dL / variance).unsqueeze(-1) * eps for eps, variance in zip(noise, variances)]

    @staticmethod
    def step_scales(network: Network, passes: Passes) -> StepScales:
        """Per-step NP: ``e_{l,t} = dL / sigma_l^2 * eps_{l,t}``, ``sigma_l^2`` the per-step
        variance (noise independent across steps, so ``E[dL eps_t] = sigma^2 dLoss/dI_t``)."""
        variances = [layer.noise.variance for layer in network.layers]

        def scales(record: Record, squares: list[Tensor]) -> list:
            out = []
            for (lo, hi), variance in zip(passes.noisy, variances):
                dL = record.loss[lo:hi] - record.loss[:1]
                out.append(((lo, hi), dL / variance))
            return out
        return scales

    def __repr__(self) -> str:
        extra = ", antithetic=True" if self.antithetic else ""
        return f"NP(noise_samples={self.noise_samples}{extra})"


class INP(Rule):
    """Iterative node perturbation: L noisy passes, pass k perturbs layer k only.

    ``g_W_k = mean_n [ dL_n^(k) * n_k / ||da_{k,n}||^2 * da_{k,n} xh_{k-1,n}^T ]``, where
    ``da_k = eps_k`` exactly because nothing upstream of layer k is perturbed in pass k.
    It needs layer-selective control of the noise, and zero-mean noise.
    """

    name = "inp"

    def __init__(self, noise_samples: int = 1, antithetic: bool = False) -> None:
        self.noise_samples = int(noise_samples)
        self.antithetic = bool(antithetic)

    def check(self, network: Network) -> None:
        check_no_local_losses("inp", network)
        check_controllable_noise("inp", network)
        if self.antithetic:
            check_antithetic("inp", network)

    def passes(self, network: Network) -> Passes:
        return Passes.layerwise(network.num_layers, self.noise_samples, self.antithetic)

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        if network.per_step:
            passes = self.passes(network)
            with torch.no_grad():
                return network.step_gradients(x, y, passes, self.step_scales(passes))
        with torch.no_grad():
            record = network.run(x, y, self.passes(network))
            return self.estimate(record, network), record

    def estimate(self, record: Record, layers: Layers, noise: Sequence[Tensor] | None = None,
                 variances: Sequence[float] | None = None) -> Gradients:
        """The estimate from an observation ``record`` of the plan
        ``Passes.layerwise(L, noise_samples)``."""
        passes = Passes.layerwise(len(record.activity), self.noise_samples)
        return layers.gradients(self.signals(record, passes), record)

    @staticmethod
    def signals(record: Record, passes: Passes) -> list[Tensor]:
        """``e_k = dL^(k) * n_k / ||da_k||^2 * da_k`` from the passes that perturb layer k."""
        signals = []
        for activity, (start, stop) in zip(record.activity, passes.noisy):
            da = activity[start:stop] - activity[:1]
            dL = record.loss[start:stop] - record.loss[:1]
            norm_sq = da.pow(2).sum(-1)
            scale = guarded(dL * da.shape[-1] / norm_sq, norm_sq)
            signals.append(scale.unsqueeze(-1) * da)
        return signals

    @staticmethod
    def step_scales(passes: Passes) -> StepScales:
        """Per-step INP: ``e_{k,t} = dL^(k) * n_k T / sum_t ||da_{k,t}||^2 * da_{k,t}``: the
        perturbation is a vector of ``n_k T`` (node, step) entries."""
        def scales(record: Record, squares: list[Tensor]) -> list:
            out = []
            T = record.time_steps
            for activity, sq, (lo, hi) in zip(record.activity, squares, passes.noisy):
                dL = record.loss[lo:hi] - record.loss[:1]
                norm_sq = sq[lo - 1:hi - 1]
                out.append(((lo, hi), guarded(dL * activity.shape[-1] * T / norm_sq, norm_sq)))
            return out
        return scales

    def __repr__(self) -> str:
        extra = ", antithetic=True" if self.antithetic else ""
        return f"INP(noise_samples={self.noise_samples}{extra})"


class ANP(Rule):
    """Activity-based node perturbation: one noisy pass, every layer perturbed.

    ``g_W_l = mean_n [ dL_n * N / ||da_n||^2 * da_{l,n} xh_{l-1,n}^T ]`` with
    ``||da_n||^2 = sum_l ||da_{l,n}||^2`` and ``N = n_1 + ... + n_L``. It uses the observed
    activity change ``da``, never the noise: its input is a ``Record``, which holds no noise.
    With intrinsic noise in both passes the reference pass is itself noisy; the rule is the same.
    """

    name = "anp"

    def __init__(self, noise_samples: int = 1, antithetic: bool = False) -> None:
        self.noise_samples = int(noise_samples)
        self.antithetic = bool(antithetic)

    def check(self, network: Network) -> None:
        network.check_summed_products()
        if self.antithetic:
            check_antithetic("anp", network)
        if getattr(network, "local_losses", False):
            network.check_local_losses()

    def passes(self, network: Network) -> Passes:
        return Passes.perturbed(network.num_layers, self.noise_samples, network.both_noisy,
                                self.antithetic)

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        if network.per_step:
            with torch.no_grad():
                return network.step_gradients(x, y, self.passes(network), self.step_scales)
        with torch.no_grad():
            record = network.run(x, y, self.passes(network))
            return self.estimate(record, network), record

    def estimate(self, record: Record, layers: Layers, noise: Sequence[Tensor] | None = None,
                 variances: Sequence[float] | None = None) -> Gradients:
        """The estimate from an observation ``record``: a reference pass and K noisy ones;
        with the heads' losses in it (``record.local_loss``), the local-loss estimate."""
        signals = self.signals if record.local_loss is None else self.local_signals
        return layers.gradients(signals(record), record)

    def step(self, network: Network, x: Tensor, y: Tensor) -> Record:
        """The estimates into ``.grad``, and with local losses the heads' exact gradients."""
        record = super().step(network, x, y)
        if record.local_loss is not None:
            network.set_head_gradients(record, y)
        return record

    @staticmethod
    def step_scales(record: Record, squares: list[Tensor]) -> list:
        """Per-step ANP: ``e_{l,t} = dL * N T / sum_{l,t} ||da_{l,t}||^2 * da_{l,t}``."""
        dL = record.loss[1:] - record.loss[:1]
        norm_sq = sum(squares)
        N = sum(a.shape[-1] for a in record.activity)
        scale = guarded(dL * N * record.time_steps / norm_sq, norm_sq)
        return [((1, record.loss.shape[0]), scale)] * len(squares)

    @staticmethod
    def signals(record: Record) -> list[Tensor]:
        """``e_l = dL * N / ||da||^2 * da_l``, ``||da||^2`` the whole network's change."""
        da = [a[1:] - a[:1] for a in record.activity]
        dL = record.loss[1:] - record.loss[:1]
        norm_sq = sum(d.pow(2).sum(-1) for d in da)
        N = sum(d.shape[-1] for d in da)
        scale = guarded(dL * N / norm_sq, norm_sq)
        return [scale.unsqueeze(-1) * d for d in da]

    @staticmethod
    def local_signals(record: Record) -> list[Tensor]:
        """Local losses: hidden layer k from its head's loss change and layers 1..k,

            e_k = dL_k * N_{<=k} / ||da_{<=k}||^2 * da_k,   dL_k = L_k(noisy) - L_k(reference),

        ``N_{<=k} = n_1 + ... + n_k``, ``||da_{<=k}||^2 = sum_{j<=k} ||da_j||^2``; the top layer
        is plain ANP on the network's loss (``signals``)."""
        if record.local_loss is None:
            raise ValueError("the record holds no local losses: run a network built with "
                             "local_losses=True")
        da = [a[1:] - a[:1] for a in record.activity]
        squares = [d.pow(2).sum(-1) for d in da]
        out = []
        for k, local in enumerate(record.local_loss):
            dL = local[1:] - local[:1]
            norm_sq = sum(squares[: k + 1])
            N = sum(d.shape[-1] for d in da[: k + 1])
            out.append(guarded(dL * N / norm_sq, norm_sq).unsqueeze(-1) * da[k])
        return out + ANP.signals(record)[len(out):]

    def __repr__(self) -> str:
        extra = ", antithetic=True" if self.antithetic else ""
        return f"ANP(noise_samples={self.noise_samples}{extra})"
