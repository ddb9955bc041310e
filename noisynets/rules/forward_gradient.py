"""Forward gradients: weight-perturbed (WFG, Baydin et al. 2022) and activity-perturbed (AFG,
Ren et al. 2023) (docs/algorithms.md, "Forward gradients").

A forward gradient replaces a loss difference by the exact directional derivative of the
loss along a random tangent ``v`` with ``E[v v^T] = I``, and estimates ``(grad . v) v``:

    WFG: v over weights and biases,  g_W_l = mean_k [ (sum_j <dLoss/dW_j, v_{j,k}>) v_{W,l,k} ]
    AFG: u over every sample's nodes,
         e_{l,n} = mean_k [ (sum_j <dloss_n/da_{j,n}, u_{j,k,n}>) u_{l,k,n} ] / T_l,
         g_W_l = the weight operation's VJP with e_l (as NP's): mean_n e_{l,n} xh_{l-1,n}^T

Relation to the perturbation rules: WP's ``dLoss / s^2 * xi`` with ``xi = s v`` is
``(grad . v) v + O(s)``; NP's ``dL / s^2 * eps`` with ``eps = s u`` is AFG's signal
``+ O(s)``. The forward gradients are the ``s -> 0`` limits of WP and NP, without the
finite-difference error and without the noise's physical role: they need the network's
derivatives. The tangents are draws of every layer's noise source divided by its standard
deviation (Gaussian noise: ``N(0, I)``), so a seed and the noise states fix them.

The directional derivative is computed here with torch's reverse mode -- the same number that
forward-mode differentiation gives (snntorch's surrogate spike defines only a backward), at
BP's cost rather than a forward-mode pass's; the estimate and its statistics are the method's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from noisynets.core.forward import Forward, Route
from noisynets.core.network import Network
from noisynets.core.record import Passes, Record
from noisynets.rules.base import Gradients, Rule, check_no_recurrent
from noisynets.rules.bp import backprop, detached
from noisynets.rules.perturbation import check_drawn_noise, check_no_local_losses


def check_tangents(rule: str, network: Network) -> None:
    """Tangents come from every layer's noise source: additive, zero-mean, memoryless."""
    check_no_local_losses(rule, network)
    check_drawn_noise(rule, network, "its tangents", "gaussian")


def tangent(network: Network, k: int, like: Tensor) -> Tensor:
    """A draw of layer ``k``'s noise source shaped like ``like``, scaled to unit variance."""
    noise = network.layers[k].noise
    return noise(like.detach().new_zeros(like.shape)) / math.sqrt(noise.variance)


class ForwardGradient(Rule):
    """What WFG and AFG share: ``K`` tangents per step (``noise_samples``), no antithetic
    pairs (the derivative is exact), one clean pass, and the refusals of ``check_tangents``."""

    def __init__(self, noise_samples: int = 1, antithetic: bool = False) -> None:
        if antithetic:
            raise ValueError(f"{self.name} differentiates exactly: antithetic pairs do not "
                             "apply")
        self.noise_samples = int(noise_samples)

    def check(self, network: Network) -> None:
        check_tangents(self.name, network)

    def passes(self, network: Network) -> Passes:
        return Passes.clean(network.num_layers, network.both_noisy)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(noise_samples={self.noise_samples})"


class WFG(ForwardGradient):
    """Weight-perturbed forward gradient (Baydin et al. 2022): ``K`` tangents ``v`` over all
    weights and biases, ``g = mean_k (grad . v_k) v_k`` (module doc). Unbiased; variance
    grows with the number of weights."""

    name = "wfg"

    def check(self, network: Network) -> None:
        super().check(network)
        check_no_recurrent(self.name, network)

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        grads, record = backprop(network, x, y, self.passes(network))
        K = self.noise_samples
        with torch.no_grad():
            v = [[None if g is None else tangent(network, k, g.expand(K, *g.shape))
                  for g in layer] for k, layer in enumerate(grads)]
            slope = sum((g * t).flatten(1).sum(1)
                        for layer, ts in zip(grads, v) for g, t in zip(layer, ts)
                        if g is not None)  # (K,): grad . v_k
            out = [tuple(None if t is None else torch.tensordot(slope, t, 1) / K for t in ts)
                   for ts in v]
        return out, record


class NodeTangent(Route):
    """Adds a zero ``z_l`` (one per layer, the same at every call) to each layer's activity,
    so that ``dloss/dz_l`` is ``sum_t dloss/da_{l,t}``."""

    def __init__(self) -> None:
        self.z: dict[int, Tensor] = {}

    def leave(self, forward: Forward, k: int, h: Tensor, a: Tensor) -> Tensor:
        if k not in self.z:
            self.z[k] = a.detach().new_zeros(a.shape).requires_grad_(True)
        return a + self.z[k]


class AFG(ForwardGradient):
    """Activity-perturbed forward gradient (Ren et al. 2023, without local losses): ``K``
    tangents ``u`` over every node of every sample, ``e_l = mean_k (dloss . u_k) u_{l,k} / T``
    (module doc), turned into weight estimates by each operation's own VJP, like NP. Unbiased
    (for T = 1; summed products over time as NP); variance grows with the number of nodes."""

    name = "afg"

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        route = NodeTangent()
        with torch.enable_grad():
            record = network.run(x, y, self.passes(network), route=route)
            zs = [route.z[k] for k in range(network.num_layers)]
            deltas = torch.autograd.grad(record.loss[0].sum(), zs, allow_unused=True)
        record = detached(record)
        with torch.no_grad():
            B, K = x.shape[0], self.noise_samples
            delta = [torch.zeros_like(z) if d is None else d for d, z in zip(deltas, zs)]
            delta = [d.reshape(B, -1) for d in delta]
            u = [tangent(network, k, d.expand(K, *d.shape)) for k, d in enumerate(delta)]
            slope = sum((d * t).sum(-1) for d, t in zip(delta, u))  # (K, B)
            signals = [slope.unsqueeze(-1) * t / record.steps_of(k) for k, t in enumerate(u)]
            return network.gradients(signals, record), record
