"""The decorrelator (docs/algorithms.md, "Decorrelation")."""

from __future__ import annotations

import torch

from noisynets.core.decorrelation import Decorrelator, mean_abs_correlation


def correlated_gaussian(m: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.eye(d) + 0.6 * torch.randn(d, d, generator=g) / d**0.5
    return torch.randn(m, d, generator=g) @ mixing.T + 0.8 * torch.randn(m, 1, generator=g)


def test_decorrelation_lowers_the_mean_off_diagonal_correlation_tenfold():
    x = correlated_gaussian(2000, 16)
    before = mean_abs_correlation(x).item()
    dec = Decorrelator(16)
    for _ in range(300):
        dec.update(dec(x[torch.randint(0, 2000, (200,))]), lr=0.05)
    after = mean_abs_correlation(dec(x)).item()
    assert before > 0.2
    assert after < before / 10, (before, after)


def test_the_low_rank_update_equals_the_direct_one():
    """``Xh^T (Xh R)/m - diag(mean Xh^2) R`` (m < d) is ``C R`` with C's diagonal zeroed."""
    d, m = 12, 5
    R = torch.eye(d, dtype=torch.float64) + 0.1 * torch.randn(d, d, dtype=torch.float64)
    xh = torch.randn(m, d, dtype=torch.float64)
    C = xh.T @ xh / m
    C.fill_diagonal_(0)
    expected = R - 0.01 * C @ R
    dec = Decorrelator(d).double()
    dec.R.copy_(R)
    dec.update(xh, lr=0.01)  # m < d: the low-rank form
    torch.testing.assert_close(dec.R, expected)
    dec.R.copy_(R)
    dec.update(torch.cat([xh] * 3), lr=0.01)  # m = 15 >= d: the direct form, the same C
    torch.testing.assert_close(dec.R, expected)


def test_the_decorrelator_starts_as_the_identity():
    x = torch.randn(7, 4)
    torch.testing.assert_close(Decorrelator(4)(x), x)


def test_update_decorrelation_is_r_minus_eta_c_r_from_the_configured_share_over_t():
    """``Network.update_decorrelation``: per layer ``R <- R - eta C R``, ``C`` the zero-diagonal
    second moment of the first ``ceil(fraction B)`` reference inputs, each the mean over T."""
    import math

    from noisynets import Network, Passes

    T, fraction, eta = 3, 0.4, 0.05
    net = Network([6, 5, 3], decorrelation=True, decorrelation_lr=eta,
                  decorrelation_fraction=fraction, time_steps=T, seed=0).double()
    g = torch.Generator().manual_seed(0)
    for layer in net.layers:
        layer.decorrelator.R.add_(0.1 * torch.randn(layer.decorrelator.R.shape, generator=g,
                                                    dtype=torch.float64))
    x = torch.rand(10, 6, generator=g, dtype=torch.float64)
    record = net.run(x, torch.zeros(10, dtype=torch.long), Passes.perturbed(2))
    m = math.ceil(fraction * 10)
    expected = []
    for layer, xh in zip(net.layers, record.inputs):
        mean_input = xh[:m] / T
        C = mean_input.T @ mean_input / m
        C.fill_diagonal_(0.0)
        R = layer.decorrelator.R
        expected.append(R - eta * C @ R)
    net.update_decorrelation(record)
    for layer, want in zip(net.layers, expected):
        torch.testing.assert_close(layer.decorrelator.R, want)
