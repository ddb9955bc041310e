"""Noise sources: declared statistics, the telegraph process, seeding and ``make_noise``.

Statistical checks use 200k draws and a tolerance of ``Z`` standard errors of the estimate.
"""

from __future__ import annotations

import math

import pytest
import torch

from noisynets.core.noise import (
    NOISES,
    Bernoulli,
    CenteredBernoulli,
    Gain,
    Gaussian,
    Logistic,
    NoiseSource,
    Shot,
    Sum,
    Telegraph,
    make_noise,
)

Z = 5.0  # standard errors allowed (a seeded draw; a false alarm is ~1e-6 per check)
ROWS, NODES = 1000, 200  # 200k draws per call


def assert_close(estimate: float, target: float, se: float, what: str) -> None:
    tol = Z * se + 1e-9 * max(abs(target), 1e-12)  # the floor only absorbs rounding
    assert abs(estimate - target) <= tol, f"{what}: {estimate:.6g} vs {target:.6g} (tol {tol:.3g})"


def assert_mean_variance(x: torch.Tensor, mean: float, variance: float) -> None:
    """The empirical mean of ``x`` and its second moment about ``mean`` match, within ``Z`` SE."""
    x = x.double().flatten()
    n = x.numel()
    assert_close(x.mean().item(), mean, x.std().item() / math.sqrt(n), "mean")
    d2 = (x - mean) ** 2
    assert_close(d2.mean().item(), variance, d2.std().item() / math.sqrt(n), "variance")


def additive_sources() -> list[NoiseSource]:
    return [
        Gaussian(0.3),
        Bernoulli(0.3),
        Bernoulli(0.3, p=0.1),
        CenteredBernoulli(0.3),
        CenteredBernoulli(0.3, p=0.8),
        Telegraph(0.3, switch=0.2),
        Shot(0.3, rate=3.0),
        Shot(0.3, rate=50.0),
        Logistic(std=0.3),
        Logistic(scale=1.0),
        Sum([Gaussian(0.2), Telegraph(0.1, switch=0.05), Shot(0.3, rate=5.0)]),
        Sum([Gaussian(1.0), Gaussian(1.0)]),
        Sum([Bernoulli(0.2, p=0.3), Bernoulli(0.2, p=0.3)]),
    ]


@pytest.mark.parametrize("source", additive_sources(), ids=repr)
def test_empirical_mean_and_variance_match_the_declared_ones(source):
    source.reseed(11)
    a = torch.randn(ROWS, NODES, dtype=torch.float64)  # additive: eps does not depend on a
    eps = source(a)
    assert source.additive
    assert_mean_variance(eps, source.mean, source.variance)
    # and over several steps (stateful sources advance; the marginal stays the same)
    eps = torch.stack([source(a) for _ in range(3)])
    assert_mean_variance(eps[-1], source.mean, source.variance)


def test_declared_statistics_of_the_formulas():
    assert Bernoulli(0.3, p=0.1).amplitude == pytest.approx(0.3 / math.sqrt(0.09))
    assert Bernoulli(0.3, p=0.1).mean == pytest.approx(0.1 * 0.3 / math.sqrt(0.09))
    assert CenteredBernoulli(0.3, p=0.1).mean == 0.0
    assert Shot(0.3, rate=4.0).charge == pytest.approx(0.15)
    assert Logistic(std=0.3).scale == pytest.approx(0.3 * math.sqrt(3) / math.pi)
    assert Logistic(std=0.3).variance == pytest.approx(0.09)
    assert Logistic(scale=1.0).variance == pytest.approx(math.pi**2 / 3)
    assert Sum([Gaussian(0.2), Shot(0.3), Bernoulli(0.1, p=0.2)]).variance == pytest.approx(
        0.04 + 0.09 + 0.01
    )
    assert Sum([Bernoulli(0.1, p=0.2), Gaussian(0.2)]).mean == pytest.approx(0.1 * 0.2 / 0.4)
    assert Telegraph(0.1, switch=0.2).autocorrelation(3) == pytest.approx(0.6**3)


def test_bernoulli_takes_two_values():
    eps = Bernoulli(0.3, p=0.2)(torch.zeros(100, 50))
    a = Bernoulli(0.3, p=0.2).amplitude
    assert torch.unique(eps).tolist() == pytest.approx([0.0, a])
    eps = CenteredBernoulli(0.3, p=0.2)(torch.zeros(100, 50, dtype=torch.float64))
    assert sorted(torch.unique(eps).tolist()) == pytest.approx([-0.2 * a, 0.8 * a])


def test_gain_noise_is_multiplicative():
    source = Gain(0.2, seed=3)
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(ROWS, NODES, generator=g, dtype=torch.float64) + 0.5) * torch.where(
        torch.rand(ROWS, NODES, generator=g) < 0.5, -1.0, 1.0
    ).double()
    eps = source(a)
    assert_mean_variance(eps / a, 0.0, 0.04)
    assert source.relative_variance == pytest.approx(0.04)
    assert torch.equal(source(torch.zeros(3, 4)), torch.zeros(3, 4))
    assert not source.additive and source.mean == 0.0
    with pytest.raises(ValueError, match="depends on the activity"):
        _ = source.variance
    mixed = Sum([Gaussian(0.1), Gain(0.1)])
    assert not mixed.additive
    with pytest.raises(ValueError, match="Gain"):
        _ = mixed.variance


def telegraph_states(source: Telegraph, shape: tuple[int, ...], steps: int) -> torch.Tensor:
    """``s_t`` of every entry for ``steps`` calls: (steps, *shape), values +-1."""
    a = torch.zeros(shape, dtype=torch.float64)
    return torch.stack([source(a) for _ in range(steps)]) / source.std


@pytest.mark.parametrize("switch", [0.05, 0.15, 0.5, 1.0])
def test_telegraph_flips_and_autocorrelation(switch):
    source = Telegraph(0.5, switch=switch, seed=2)
    s = telegraph_states(source, (200, 100), 31)  # 20k chains of 31 steps
    assert torch.equal(s.abs(), torch.ones_like(s))
    flips = (s[1:] != s[:-1]).double()
    n = flips.numel()
    se = math.sqrt(switch * (1 - switch) / n)
    assert_close(flips.mean().item(), switch, se, "fraction of flips per step")
    for lag in (1, 3):
        rho = (1 - 2 * switch) ** lag
        assert rho == pytest.approx(source.autocorrelation(lag))
        x = s[::lag]  # pairs (t, t + lag) over disjoint windows: independent products
        products = (x[1:] * x[:-1]).flatten()
        se = math.sqrt((1 - rho**2) / products.numel())
        assert_close(products.mean().item(), rho, se, f"lag-{lag} autocorrelation")


def flip_fraction(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x != y).double().mean().item()


def test_telegraph_state_continues_with_the_shape_and_restarts_otherwise():
    switch = 0.05
    source = Telegraph(1.0, switch=switch, seed=4)
    a, b = torch.zeros(400, 50), torch.zeros(400, 60)
    n = a.numel()
    first = source(a)
    second = source(a)
    assert_close(flip_fraction(first, second), switch, math.sqrt(switch * 0.95 / n), "continues")
    assert source(b).shape == b.shape  # a new shape: a fresh stationary state
    third = source(a)  # and back: fresh again, independent of `second`
    assert_close(flip_fraction(second, third), 0.5, math.sqrt(0.25 / n), "restarts")
    fourth = source(a)
    assert_close(flip_fraction(third, fourth), switch, math.sqrt(switch * 0.95 / n), "continues")
    source.reset()
    fifth = source(a)
    assert_close(flip_fraction(fourth, fifth), 0.5, math.sqrt(0.25 / n), "reset")
    assert source.state_dict() == {}  # the state is no buffer


def test_telegraph_offsets_are_per_node_and_fixed():
    std, offset_std, nodes = 0.1, 0.02, 100_000
    source = Telegraph(std, switch=0.3, offset_std=offset_std, seed=5)
    a = torch.zeros(2, nodes, dtype=torch.float64)
    eps = source(a)
    offset = source.offset.clone()
    assert offset.shape == (nodes,)
    se_mean = offset_std / math.sqrt(nodes)
    assert_close(offset.mean().item(), 0.0, se_mean, "offset mean")
    se_std = offset_std / math.sqrt(2 * nodes)
    assert_close(offset.std().item(), offset_std, se_std, "offset std")
    for _ in range(3):  # fixed across calls; around it the telegraph takes +-std
        torch.testing.assert_close((eps - offset).abs(), torch.full_like(eps, std))
        eps = source(a)
        assert torch.equal(source.offset, offset)
    source.reset()  # forgets the state, not the device's offset
    source(a)
    assert torch.equal(source.offset, offset)
    source.reseed(5)  # a new device from the same seed: the same offset
    source(a)
    assert torch.equal(source.offset, offset)
    source.reseed(6)
    source(a)
    assert not torch.equal(source.offset, offset)
    assert torch.equal(source.mean, source.offset) and not source.zero_mean
    assert source.variance == pytest.approx(std**2)
    assert source.state_dict() == {}
    assert Telegraph(std)(a).abs().eq(std).all() and Telegraph(std).offset is None


@pytest.mark.parametrize("a", [-2.0, -0.5, 0.0, 1.0, 3.0])
def test_heaviside_with_logistic_noise_is_bernoulli_of_sigmoid(a):
    n = 200_000
    x = torch.full((n, 1), a, dtype=torch.float64)
    fired = (x + Logistic(scale=1.0, seed=7)(x) > 0).double().mean().item()
    p = 1 / (1 + math.exp(-a))
    assert_close(fired, p, math.sqrt(p * (1 - p) / n), f"P(1) at a={a}")


def every_source() -> list[NoiseSource]:
    return [make_noise(name, 0.1) for name in NOISES] + [
        make_noise("telegraph:offset_std=0.1", 0.1),
        make_noise("+".join(NOISES), 0.1),
    ]


@pytest.mark.parametrize("source", every_source(), ids=repr)
def test_same_seed_same_draws_different_seed_different(source):
    a = torch.randn(20, 30)

    def draws(seed: int) -> list[torch.Tensor]:
        source.reseed(seed)
        return [source(a) for _ in range(3)]

    first = draws(7)
    assert all(torch.equal(x, y) for x, y in zip(first, draws(7)))
    assert not any(torch.equal(x, y) for x, y in zip(first, draws(8)))
    assert not torch.equal(first[0], first[1])  # the stream advances


def test_sum_children_are_independent():
    source = Sum([Gaussian(1.0), Gaussian(1.0), Telegraph(1.0), Telegraph(1.0)], seed=3)
    seeds = [child.seed for child in source.sources]
    assert len(set(seeds)) == len(seeds)
    a = torch.zeros(100, 10)
    draws = [child(a) for child in source.sources]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[2], draws[3])
    source.reseed(4)
    assert [child.seed for child in source.sources] != seeds
    source.reseed(3)
    assert [child.seed for child in source.sources] == seeds
    assert torch.equal(source.sources[0](a), draws[0])


def test_sum_reset_resets_every_child():
    source = Sum([Telegraph(1.0, switch=0.01), Telegraph(1.0, switch=0.01)])
    a = torch.zeros(10, 10)
    source(a)
    assert all(child._state is not None for child in source.sources)
    source.reset()
    assert all(child._state is None for child in source.sources)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("source", every_source(), ids=repr)
def test_every_source_keeps_shape_and_dtype(source, dtype):
    a = torch.randn(8, 5, dtype=dtype)
    for _ in range(2):
        eps = source(a)
        assert eps.dtype == dtype and eps.shape == a.shape and eps.device == a.device
        assert torch.isfinite(eps).all()


def test_make_noise_parses_names_options_and_sums():
    assert set(NOISES) == {
        "gaussian",
        "bernoulli",
        "centered_bernoulli",
        "telegraph",
        "gain",
        "shot",
        "logistic",
    }
    kinds = [Gaussian, Bernoulli, CenteredBernoulli, Telegraph, Gain, Shot, Logistic]
    for name, kind in zip(NOISES, kinds):
        source = make_noise(name, 0.01)
        assert type(source) is kind and source.std == pytest.approx(0.01)

    source = make_noise("gaussian", 0.01)
    assert isinstance(source, Gaussian) and source.std == 0.01
    assert make_noise(" Gaussian ", 0.01).std == 0.01
    assert make_noise("gaussian:std=0.5", 0.01).std == 0.5
    source = make_noise("bernoulli:p=0.2", 0.01)
    assert (source.std, source.p) == (0.01, 0.2)
    source = make_noise("shot:rate=20, std=0.2", 0.01)
    assert (source.std, source.rate) == (0.2, 20.0)
    assert make_noise("logistic:scale=1", 0.01).scale == 1.0
    assert make_noise("logistic", 0.01).variance == pytest.approx(1e-4)
    assert make_noise("telegraph:switch=1", 0.01).switch == 1.0

    source = make_noise("gaussian+telegraph:switch=0.05,offset_std=0.001", 0.01)
    assert isinstance(source, Sum) and len(source.sources) == 2
    gauss, telegraph = source.sources
    assert isinstance(gauss, Gaussian) and gauss.std == 0.01
    assert isinstance(telegraph, Telegraph)
    assert (telegraph.std, telegraph.switch, telegraph.offset_std) == (0.01, 0.05, 0.001)
    assert source.variance == pytest.approx(2e-4)
    assert not make_noise("gaussian+gain", 0.01).additive


@pytest.mark.parametrize(
    "spec, part",
    [
        ("", "empty"),
        ("foo", "'foo'"),
        ("gaussian+", "empty"),
        ("+gaussian", "empty"),
        ("gaussian:", "key=value"),
        ("gaussian:std", "'std'"),
        ("gaussian:std=", "'std='"),
        ("gaussian:foo=1", "'foo'"),
        ("gain:p=0.5", "'p'"),
        ("gaussian:std=abc", "'abc'"),
        ("gaussian:std=nan", "std=nan"),
        ("gaussian:std=inf", "std=inf"),
        ("gaussian:std=-1", "std=-1"),
        ("gaussian:std=1,std=2", "twice"),
        ("bernoulli:p=0", "p=0"),
        ("bernoulli:p=1", "p=1"),
        ("centered_bernoulli:p=1.5", "p=1.5"),
        ("telegraph:switch=0", "switch=0"),
        ("telegraph:switch=1.01", "switch=1.01"),
        ("telegraph:offset_std=-0.1", "offset_std=-0.1"),
        ("shot:rate=0", "rate=0"),
        ("shot:rate=-2", "rate=-2"),
        ("logistic:scale=-1", "scale=-1"),
        ("logistic:std=1,scale=1", "not both"),
        ("gaussian+telegraph:switch=2", "switch=2"),
    ],
)
def test_make_noise_rejects_bad_specs(spec, part):
    with pytest.raises(ValueError) as info:
        make_noise(spec, 0.01)
    message = str(info.value)
    assert "\n" not in message and part in message, message
    if "'foo'" in part or "'p'" in part or "=" in part:
        assert "valid" in message, message
    if part == "'foo'" and spec == "foo":
        assert ", ".join(NOISES) in message


@pytest.mark.parametrize("std", [-0.1, math.nan, math.inf])
def test_make_noise_rejects_a_bad_default_std(std):
    with pytest.raises(ValueError, match="std"):
        make_noise("gaussian", std)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Gaussian(-1.0),
        lambda: Bernoulli(0.1, p=1.0),
        lambda: Telegraph(0.1, switch=0.0),
        lambda: Shot(0.1, rate=0.0),
        lambda: Logistic(std=0.1, scale=0.1),
        lambda: Sum([]),
    ],
)
def test_constructors_reject_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("source", additive_sources(), ids=repr)
def test_the_variance_summed_over_time_steps_is_the_declared_one(source):
    """``Var(sum_{t<T} eps_t)``: ``T s^2`` for independent steps, more for telegraph noise."""
    T = 5
    source.reseed(12)
    a = torch.zeros(ROWS, NODES, dtype=torch.float64)
    total = sum(source(a) for _ in range(T))
    assert_mean_variance(total, T * source.mean, source.summed_variance(T))


def test_telegraph_summed_variance_counts_the_correlation_of_its_steps():
    # switch 0.1, T = 4: rho = 0.8, 4 + 2 (3 rho + 2 rho^2 + rho^3) = 12.384
    assert Telegraph(1.0, switch=0.1).summed_variance(4) == pytest.approx(12.384)
    assert Telegraph(2.0, switch=0.5).summed_variance(4) == pytest.approx(16.0)  # independent
    assert Gaussian(2.0).summed_variance(4) == pytest.approx(16.0)


def test_only_centred_sources_claim_zero_mean():
    assert Gaussian(0.1).zero_mean and CenteredBernoulli(0.1, p=0.2).zero_mean
    assert Telegraph(0.1).zero_mean and Shot(0.1).zero_mean and Logistic(0.1).zero_mean
    assert not Bernoulli(0.1).zero_mean
    assert not Telegraph(0.1, offset_std=0.01).zero_mean
    assert not Sum([Gaussian(0.1), Bernoulli(0.1)]).zero_mean
    source = Telegraph(0.1, offset_std=0.01, seed=0)
    source(torch.zeros(3, 4))
    assert torch.equal(source.mean, source.offset)


@pytest.mark.parametrize("source", additive_sources() + [Gain(0.2)], ids=repr)
def test_a_sources_spec_is_one_line_that_make_noise_reads_back(source):
    assert "\n" not in source.spec
    assert repr(make_noise(source.spec, 1.0)) == repr(source)
