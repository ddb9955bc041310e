"""Weight perturbation (WP) and evolution strategies (ES): perturb the weights, not the nodes
(docs/algorithms.md, "Weight perturbation and evolution strategies").

K noisy passes; pass k runs the network with every layer's weights and biases moved by
``xi_{l,k}`` (drawn once per forward, the same for every sample and time step, from layer
l's own noise source, variance ``s_l^2``); ``dLoss_k = mean_n [loss_n(k) - loss_n(0)]``::

    g_W_l = mean_k [ dLoss_k / s_l^2 * xi_{W,l,k} ],   g_b_l likewise with xi_{b,l,k}

ES draws the K passes as antithetic pairs ``(xi_j, -xi_j)`` -- a population of 2K perturbed
networks, run as noisy passes of one batched forward -- and the same formula becomes the
central difference ``mean_j (Loss(+xi_j) - Loss(-xi_j)) / (2 s^2) * xi_j``.

The engine runs pass k as ``a_k = a_ref + op_0(x_k - x_ref) + op(x_k; xi_{W,l,k}, xi_{b,l,k})``:
the perturbed weights' product is the clean one plus the perturbation's own product.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisynets.core.forward import Forward, Route
from noisynets.core.network import Network
from noisynets.core.record import Passes, Record
from noisynets.rules.base import Gradients, Rule, check_no_recurrent
from noisynets.rules.perturbation import check_drawn_noise, check_no_local_losses


def check_weight_noise(rule: str, network: Network) -> None:
    """The rule draws the weights' perturbations itself from every layer's source: the noise
    must be switchable (not intrinsic), additive, zero-mean, memoryless, of known variance."""
    check_no_local_losses(rule, network)
    check_no_recurrent(rule, network)
    if network.both_noisy:
        raise ValueError(f"{rule} perturbs the weights with draws it controls, but the "
                         "network's noise is intrinsic in both passes: use anp or danp")
    check_drawn_noise(rule, network, "the weights' perturbations",
                      "gaussian or centered_bernoulli")


class WeightNoise(Route):
    """Adds ``op(x_k; xi_{W,k}, xi_{b,k})`` to the rows of every noisy pass k of each layer;
    ``xi`` drawn at a layer's first call and kept for its other calls (the time steps)."""

    def __init__(self, network: Network, samples: int, antithetic: bool) -> None:
        self.network, self.samples, self.antithetic = network, samples, antithetic
        self.xi: dict[int, tuple[Tensor, Tensor | None]] = {}

    def draw(self, k: int) -> tuple[Tensor, Tensor | None]:
        layer = self.network.layers[k]
        K = self.samples // 2 if self.antithetic else self.samples
        drawn = [layer.noise(p.detach().new_zeros(K, *p.shape))
                 for p in (layer.weight, layer.bias) if p is not None]
        if self.antithetic:
            drawn = [torch.cat([d, -d]) for d in drawn]
        return drawn[0], drawn[1] if len(drawn) > 1 else None

    def leave(self, forward: Forward, k: int, h: Tensor, a: Tensor) -> Tensor:
        if k not in self.xi:
            self.xi[k] = self.draw(k)
        xi_w, xi_b = self.xi[k]
        layer, B = self.network.layers[k], forward.B
        for p in range(1, forward.P):
            rows = slice(p * B, (p + 1) * B)
            a[rows] += layer.kind.product(layer.op, h[rows], xi_w[p - 1],
                                          None if xi_b is None else xi_b[p - 1])
        forward.noised.update(range(1, forward.P))
        return a


class WP(Rule):
    """Weight perturbation: K noisy passes, each with every weight and bias perturbed.

    ``g_W_l = mean_k [ dLoss_k / s_l^2 * xi_{W,l,k} ]`` (module doc), ``s_l^2`` the variance
    of layer l's noise source, ``dLoss_k`` the batch-mean loss change of pass k. Unbiased to
    first order in ``s``; its variance grows with the number of weights (NP's with the number
    of nodes). It needs control of the perturbation: refused for intrinsic noise.
    """

    name = "wp"

    def __init__(self, noise_samples: int = 1, antithetic: bool = False) -> None:
        self.noise_samples = int(noise_samples)
        self.antithetic = bool(antithetic)

    def check(self, network: Network) -> None:
        check_weight_noise(self.name, network)

    def passes(self, network: Network) -> Passes:
        K = self.noise_samples * (2 if self.antithetic else 1)
        return Passes(1 + K, ((0, 0),) * network.num_layers, self.antithetic)

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        passes = self.passes(network)
        route = WeightNoise(network, passes.count - 1, self.antithetic)
        with torch.no_grad():
            record = network.run(x, y, passes, route=route)
            dLoss = (record.loss[1:] - record.loss[:1]).mean(1)  # (K,)
            grads = []
            for k, layer in enumerate(network.layers):
                scale = dLoss / (layer.noise.variance * dLoss.shape[0])
                grads.append(tuple(None if xi is None else torch.tensordot(scale.to(xi.dtype),
                                                                          xi, 1)
                                   for xi in route.xi[k]))
        return grads, record

    def __repr__(self) -> str:
        extra = ", antithetic=True" if self.antithetic else ""
        return f"{type(self).__name__}(noise_samples={self.noise_samples}{extra})"


class ES(WP):
    """Evolution strategies with antithetic sampling: a population of ``noise_samples`` pairs
    of perturbed networks ``(W + xi_j, W - xi_j)``, run as 2K noisy passes of one forward:

        g_W_l = mean_j [ (Loss(+xi_j) - Loss(-xi_j)) / (2 s_l^2) * xi_{W,l,j} ]

    (Salimans et al. 2017 without fitness shaping, so that the estimate is the gradient's
    scale). Always antithetic; otherwise ``WP``.
    """

    name = "es"

    def __init__(self, noise_samples: int = 1, antithetic: bool = True) -> None:
        super().__init__(noise_samples, antithetic=True)

    def __repr__(self) -> str:
        return f"ES(noise_samples={self.noise_samples})"
