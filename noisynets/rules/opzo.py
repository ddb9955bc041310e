"""OPZO: a single-noisy-pass zeroth-order rule with learned feedback, after "Online
Pseudo-Zeroth-Order Training of Neuromorphic Spiking Neural Networks" (Xiao et al., ICLR 2026;
no code is public). docs/algorithms.md, "OPZO", states our reading of the paper.

One noisy pass, every layer perturbed (as NP); ``eps_l`` the noise layer l received (summed
over its T calls), ``s_l^2 = Var(sum_t eps_t)``, ``do = o(noisy) - o(reference)`` the change
of the logits. The loss's difference is replaced by its local linearisation at the readout,
``dL ~ g_o . do`` with ``g_o = dloss/do`` exact, and NP's ``eps dL / s^2`` becomes a
Jacobian estimate, averaged over the batch and, with momentum ``lambda``, over steps -- the
learned feedback ``M_l`` (n_l x C), kept in the network (``network.feedback``)::

    J_l = mean_{k,n} eps_{l,k,n} do_{k,n}^T / s_l^2           (E[J_l] = (do/da_l)^T, first order)
    M_l <- lambda M_l + (1 - lambda) J_l                       (M_l = J_l at the first step)
    e_{l,n} = M_l g_{o,n};   the output layer, read out linearly: e_L = g_o / T (exact)
    g_W_l = mean_n e_{l,n} xh_{l-1,n}^T                        (each operation's own VJP)

With ``momentum = 0`` and a batch whose samples share their Jacobian (a linear network, or
one sample) the estimate is unbiased; in general ``M_l`` is the batch- and time-averaged
Jacobian, a direct-feedback-alignment matrix that follows the network. ``step`` updates
``M``; ``gradients`` alone (diagnostics) leaves it where it was.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisynets.core.network import Network
from noisynets.core.record import Passes, Record
from noisynets.rules.base import Gradients, Rule, feedback_of, learn_shapes, output_gradient
from noisynets.rules.perturbation import NP


class OPZO(Rule):
    """Single noisy pass, learned feedback ``M_l`` from the noise and the logits' change, the
    exact output error ``g_o`` projected by it (module doc). Needs the noise values (refused
    for intrinsic noise), the loss's derivative by the logits, and one n_l x C matrix per
    layer; no backward pass through the network."""

    name = "opzo"

    def __init__(self, noise_samples: int = 1, antithetic: bool = False,
                 momentum: float = 0.9) -> None:
        self.noise_samples = int(noise_samples)
        self.antithetic = bool(antithetic)
        self.momentum = float(momentum)
        self.pending: list[Tensor] | None = None

    def check(self, network: Network) -> None:
        try:
            NP(self.noise_samples, self.antithetic).check(network)
        except ValueError as err:
            raise ValueError(f"opzo reads the noise as np does: {err}") from None
        if network.per_step:
            raise ValueError("opzo takes summed products: drop --per-step-products")

    def prepare(self, network: Network, x: Tensor) -> None:
        feedback = feedback_of(network)
        if "updates" in feedback._buffers:
            return
        C = learn_shapes(network, x)
        for k, layer in enumerate(network.layers):
            n = 1
            for d in layer.node_shape:
                n *= d
            feedback.put(f"M_{k}", torch.zeros(n, C, device=network.device,
                                               dtype=network.dtype))
        feedback.put("updates", torch.zeros((), dtype=torch.long, device=network.device))

    def passes(self, network: Network) -> Passes:
        return Passes.perturbed(network.num_layers, self.noise_samples,
                                antithetic=self.antithetic)

    def gradients(self, network: Network, x: Tensor, y: Tensor) -> tuple[Gradients, Record]:
        self.check(network)
        self.prepare(network, x)
        feedback = feedback_of(network)
        with torch.no_grad():
            record, noise = network.run_reading_noise(x, y, self.passes(network))
            do = record.logits[1:] - record.logits[:1]  # (K, B, C)
            g_o = output_gradient(network, record.logits[0], y)  # (B, C)
            first = feedback.get("updates") == 0
            lam = torch.where(first, 0.0, self.momentum)
            M, signals = [], []
            for k, (layer, eps) in enumerate(zip(network.layers, noise)):
                s2 = layer.noise.summed_variance(record.steps_of(k))
                J = torch.einsum("kbn,kbc->nc", eps, do.to(eps.dtype)) / (
                    s2 * eps.shape[0] * eps.shape[1])
                M.append(lam * feedback.get(f"M_{k}") + (1 - lam) * J)
                signals.append((g_o.to(eps.dtype) @ M[-1].mT).unsqueeze(0))
            if record.readout is None:  # logits = a_L / T: the output layer's exact error
                signals[-1] = (g_o / record.steps_of(len(signals) - 1)).unsqueeze(0)
            self.pending = M
            return network.gradients(signals, record), record

    def step(self, network: Network, x: Tensor, y: Tensor) -> Record:
        """The estimates into ``.grad``, and the learned feedback ``M`` moved on."""
        record = super().step(network, x, y)
        feedback = feedback_of(network)
        for k, M in enumerate(self.pending or []):
            feedback.get(f"M_{k}").copy_(M)
        feedback.get("updates").add_(1)
        self.pending = None
        return record

    def __repr__(self) -> str:
        return f"OPZO(noise_samples={self.noise_samples}, momentum={self.momentum:g})"
