"""Exact checks of every estimator's constants (docs/algorithms.md, "The rules").

Statistical checks (``test_estimators.py``) see a wrong direction but not always a wrong
length. Here the noise is made of basis directions (``reference.Basis``): over its passes
``mean(eps eps^T) = s^2 I`` exactly, so NP and INP must give autograd's gradient to about 1e-7,
for weights and biases, at T = 1 and at T > 1. ANP is checked against the formula evaluated by
hand, sample by sample, on a record where two layers change, and on a brute-force forward that
replays the noise of both noisy passes.
"""

from __future__ import annotations

import pytest
import torch
from reference import Basis, brute_force, flat, record_noise

from noisynets import Network, Passes, Record, make_rule
from noisynets.core.noise import Gaussian, Telegraph
from noisynets.rules import ANP, INP, NP

SIZES = [5, 6, 6, 6]  # equal layer sizes: INP's K = 2 n_k passes cover every layer at once
B = 7
C = 1e-5  # the size of a basis push


def network(T: int, unit: str = "leaky_relu", decorrelation: bool = False) -> Network:
    net = Network(SIZES, unit=unit, time_steps=T, decorrelation=decorrelation, seed=2).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in net.layers:
            layer.bias.normal_(0.0, 0.3, generator=g)
            if layer.decorrelator is not None:
                R = layer.decorrelator.R
                R.add_(0.2 * torch.randn(R.shape, generator=g, dtype=R.dtype))
    return net


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    return (torch.randn(B, SIZES[0], generator=g, dtype=torch.float64),
            torch.randint(0, SIZES[-1], (B,), generator=g))


def assert_is_the_gradient(estimate, truth, what: str) -> None:
    for k, (e, g) in enumerate(zip(flat(estimate), flat(truth))):
        torch.testing.assert_close(e, g, rtol=1e-6, atol=1e-9,
                                   msg=lambda m, k=k: f"{what}, layer {k + 1}: {m}")


@pytest.mark.parametrize("decorrelation", [False, True])
@pytest.mark.parametrize("T", [1, 4])
def test_np_with_basis_noise_is_the_gradient(T, decorrelation):
    net = network(T, decorrelation=decorrelation)
    N = sum(SIZES[1:])
    offsets = [sum(SIZES[1:k + 1]) for k in range(net.num_layers)]
    for layer, n, offset in zip(net.layers, SIZES[1:], offsets):
        layer.noise = Basis(C, n, offset, N, B)
    x, y = data()
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = NP(noise_samples=2 * N).gradients(net, x, y)
    assert_is_the_gradient(estimate, truth, f"NP, T={T}")


@pytest.mark.parametrize("decorrelation", [False, True])
@pytest.mark.parametrize("T", [1, 4])
def test_inp_with_basis_noise_is_the_gradient(T, decorrelation):
    net = network(T, decorrelation=decorrelation)
    n = SIZES[1]
    for layer in net.layers:
        layer.noise = Basis(C, n, 0, n, B)
    x, y = data()
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = make_rule("inp", noise_samples=2 * n).gradients(net, x, y)
    assert_is_the_gradient(estimate, truth, f"INP, T={T}")


def anp_by_hand(record: Record, pairs: list[tuple[int, int]]) -> list[torch.Tensor]:
    """docs/algorithms.md's ANP signal, one sample and one (reference, noisy) pair of passes at
    a time: ``e_{l,n} = dL_n * N / ||da_n||^2 * da_{l,n}``, shape (pairs, B, n_l) per layer."""
    L, B = len(record.activity), record.loss.shape[1]
    N = sum(a.shape[-1] for a in record.activity)
    signals = [torch.zeros(len(pairs), B, a.shape[-1], dtype=a.dtype) for a in record.activity]
    for j, (ref, noisy) in enumerate(pairs):
        for n in range(B):
            da = [record.activity[i][noisy, n] - record.activity[i][ref, n] for i in range(L)]
            norm_sq = sum(float(d @ d) for d in da)
            if norm_sq == 0:
                continue
            dL = float(record.loss[noisy, n] - record.loss[ref, n])
            for i in range(L):
                signals[i][j, n] = dL * N / norm_sq * da[i]
    return signals


def dense_gradients_by_hand(signals, record: Record) -> list[tuple]:
    """``g_W = mean_{k,n} e_{k,n} xh_n^T``, ``g_b = T mean_{k,n} e_{k,n}``, sample by sample."""
    grads = []
    for e, xh in zip(signals, record.inputs):
        K, B = e.shape[0], e.shape[1]
        g_w = sum(torch.outer(e[k, n], xh[n]) for k in range(K) for n in range(B)) / (K * B)
        g_b = record.time_steps * sum(e[k, n] for k in range(K) for n in range(B)) / (K * B)
        grads.append((g_w, g_b))
    return grads


def test_anp_normalises_by_the_whole_networks_activity_change():
    """Two layers change by different amounts: one layer's own ||da_l||^2 would not do."""
    g = torch.Generator().manual_seed(0)
    activity = [torch.randn(3, 4, 5, generator=g, dtype=torch.float64),
                torch.randn(3, 4, 3, generator=g, dtype=torch.float64) * 7.0]
    activity[0][1:, 2] = activity[0][0, 2]  # sample 2: only the second layer changes
    inputs = [torch.randn(4, 6, generator=g, dtype=torch.float64),
              torch.randn(4, 5, generator=g, dtype=torch.float64)]
    loss = torch.rand(3, 4, generator=g, dtype=torch.float64)
    record = Record(inputs, activity, loss, time_steps=3)
    for got, want in zip(ANP.signals(record), anp_by_hand(record, [(0, 1), (0, 2)])):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("both_noisy", [False, True])
def test_anp_is_its_formula_on_the_passes_the_network_ran(both_noisy, K):
    """The rule's estimate is the formula applied to a brute-force replay of the passes, and
    with intrinsic noise the reference pass is noisy too (every pass of the plan)."""
    net = Network(SIZES, noise=Telegraph(0.05, switch=0.3), both_noisy=both_noisy, time_steps=2,
                  decorrelation=True, seed=1).double()
    x, y = data()
    noise = record_noise(net)
    estimate, record = ANP(noise_samples=K).gradients(net, x, y)
    noisy = ((0 if both_noisy else 1, 1 + K),) * net.num_layers  # written out, not Passes'
    brute = brute_force(net, x, y, Passes(1 + K, noisy), noise)
    replay = Record(brute.inputs, brute.activity, brute.loss, net.time_steps)
    expected = dense_gradients_by_hand(anp_by_hand(replay, [(0, 1 + k) for k in range(K)]), replay)
    for got, want in zip(estimate, expected):
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
    if both_noisy:
        clean = net.run(x, y, Passes.clean(net.num_layers))
        assert not torch.allclose(record.activity[0][0], clean.activity[0][0])


def test_np_is_its_formula_with_the_noise_summed_over_time():
    """NP at T > 1 with noise that has memory: dL / Var(sum_t eps_t) * sum_t eps_t."""
    source = Telegraph(0.05, switch=0.2)
    net = Network(SIZES, noise=source, time_steps=3, seed=1).double()
    x, y = data()
    noise = record_noise(net)
    estimate, record = NP(noise_samples=2).gradients(net, x, y)
    variance = source.summed_variance(3)
    dL = record.loss[1:] - record.loss[:1]
    for k, (g_w, g_b) in enumerate(estimate):
        eps = sum(noise[k][0].draws).view(2, B, -1)
        e = dL[..., None] / variance * eps
        torch.testing.assert_close(g_w, torch.einsum("kni,nj->ij", e, record.inputs[k]) / (2 * B))
        torch.testing.assert_close(g_b, 3 * e.sum((0, 1)) / (2 * B))


@pytest.mark.parametrize("name", ["inp", "anp"])
def test_k_samples_are_the_mean_of_k_single_estimates(name):
    """K noisy passes give the mean of the K one-pass estimates, not their sum (NP's K: the
    basis-noise test, whose K = 2N passes must give the gradient itself)."""
    K = 4
    net = Network(SIZES, noise=Gaussian(1e-3), time_steps=2, seed=0).double()
    x, y = data()
    together, record = make_rule(name, noise_samples=K).gradients(net, x, y)
    L = net.num_layers
    singles = []
    for k in range(K):
        if name == "inp":  # pass 1 + i K + k: sample k of layer i
            keep = [0] + [1 + i * K + k for i in range(L)]
            sub = Record(record.inputs, [a[keep] for a in record.activity], record.loss[keep], 2)
            singles.append(net.gradients(INP.signals(sub, Passes.layerwise(L, 1)), sub))
        else:
            keep = [0, 1 + k]
            sub = Record(record.inputs, [a[keep] for a in record.activity], record.loss[keep], 2)
            singles.append(net.gradients(ANP.signals(sub), sub))
    for i in range(L):
        for j in range(2):
            mean = sum(s[i][j] for s in singles) / K
            torch.testing.assert_close(together[i][j], mean)
