"""The estimators' statistics against autograd (docs/algorithms.md, "What the estimates estimate").

NP and INP are unbiased: the mean of many estimates is the gradient. ANP is biased by design
(a positive semi-definite preconditioning), so its mean is a descent direction in every layer.
One INP estimate, and one ANP estimate averaged over the layers, align better than one of NP.
"""

from __future__ import annotations

import pytest
import torch

from noisynets import Network, Passes, Record, make_rule
from noisynets.core.noise import make_noise
from noisynets.rules import ANP, INP, NP
from noisynets.training import cosine


def flat(grads: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.cat([w.flatten(), b]) for w, b in grads]


def true_gradient(net: Network, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    return flat(make_rule("bp").gradients(net, x, y)[0])


def test_bp_is_autograd_of_the_mean_loss(small_net: Network, batch) -> None:
    x, y = batch
    small_net.zero_grad()
    torch.nn.functional.cross_entropy(small_net(x), y).backward()
    expected = [torch.cat([layer.weight.grad.flatten(), layer.bias.grad])
                for layer in small_net.layers]
    for got, want in zip(true_gradient(small_net, x, y), expected):
        torch.testing.assert_close(got, want)


NOISES = [("gaussian", 1), ("centered_bernoulli:p=0.3", 1), ("telegraph:switch=0.1", 4)]


@pytest.mark.parametrize("spec,T", NOISES, ids=[f"{s.split(':')[0]}-T{t}" for s, t in NOISES])
@pytest.mark.parametrize("name", ["np", "inp"])
def test_mean_of_many_np_and_inp_estimates_is_the_gradient(batch, name, spec, T):
    """Unbiased for every zero-mean noise they accept, also for noise correlated over time
    (telegraph noise over T = 4 steps has Var(sum_t eps_t) = 12.4 s^2, not 4 s^2)."""
    net = Network([10, 20, 20, 20, 5], noise=make_noise(spec, 1e-4), time_steps=T,
                  seed=0).double()
    x, y = batch
    truth = true_gradient(net, x, y)
    mean = flat(make_rule(name, noise_samples=6000).gradients(net, x, y)[0])
    for k, (m, g) in enumerate(zip(mean, truth)):
        assert cosine(m, g) > 0.95, f"{name} layer {k + 1}: cosine {cosine(m, g):.3f}"
        ratio = (m.norm() / g.norm()).item()
        assert 0.9 < ratio < 1.1, f"{name} layer {k + 1}: norm ratio {ratio:.3f}"


@pytest.mark.parametrize("spec", ["bernoulli", "telegraph:offset_std=0.01",
                                  "gaussian+bernoulli:p=0.2"])
@pytest.mark.parametrize("name", ["np", "inp", "dnp", "dinp"])
def test_np_and_inp_refuse_noise_with_a_non_zero_mean(name, spec):
    """Their estimates are biased under such noise (cosine 0.1-0.5, 3-16x the gradient's
    length); ANP and DANP are the rules for it."""
    net = Network([4, 6, 3], noise=make_noise(spec, 1e-3), decorrelation=name[0] == "d")
    with pytest.raises(ValueError, match="zero-mean noise.*anp/danp"):
        make_rule(name).step(net, torch.randn(2, 4), torch.tensor([0, 1]))
    make_rule("anp").step(net, torch.randn(2, 4), torch.tensor([0, 1]))


def test_mean_of_many_anp_estimates_is_a_descent_direction(small_net: Network, batch):
    x, y = batch
    truth = true_gradient(small_net, x, y)
    mean = flat(make_rule("anp", noise_samples=6000).gradients(small_net, x, y)[0])
    cosines = [cosine(m, g) for m, g in zip(mean, truth)]
    assert min(cosines) > 0.3, cosines
    # Exact (up to sampling) for the first layer, where da carries no upstream perturbation.
    assert cosines[0] > 0.95, cosines


def single_estimates(name: str, net: Network, x, y, count: int) -> list[list[torch.Tensor]]:
    """``count`` independent single-sample estimates of rule ``name``, from one batched forward
    of ``count`` noisy passes, each estimated against the clean pass on its own."""
    L = net.num_layers
    if name == "np":
        record, noise = net.run_reading_noise(x, y, Passes.perturbed(L, count))
        variances = [layer.noise.variance for layer in net.layers]
        signals = NP.signals(record, noise, variances)
        return [flat(net.gradients([e[k : k + 1] for e in signals], record))
                for k in range(count)]
    if name == "inp":
        record = net.run(x, y, Passes.layerwise(L, count))
        picks = [[0] + [1 + layer * count + k for layer in range(L)] for k in range(count)]
        signals = lambda r: INP.signals(r, Passes.layerwise(L, 1))  # noqa: E731
    else:
        record = net.run(x, y, Passes.perturbed(L, count))
        picks = [[0, 1 + k] for k in range(count)]
        signals = ANP.signals
    subs = [Record(record.inputs, [a[p] for a in record.activity], record.loss[p],
                   record.time_steps) for p in picks]
    return [flat(net.gradients(signals(sub), sub)) for sub in subs]


def test_a_single_inp_or_anp_estimate_aligns_better_than_one_of_np(small_net: Network, batch):
    x, y = batch
    truth = true_gradient(small_net, x, y)
    single = {}
    for name in ("np", "inp", "anp"):
        estimates = single_estimates(name, small_net, x, y, 400)
        single[name] = torch.tensor([[cosine(e, g) for e, g in zip(est, truth)]
                                     for est in estimates]).mean(0)
    assert (single["inp"] > single["np"]).all(), single
    assert single["anp"].mean() > single["np"].mean(), single


def test_single_estimates_are_the_estimates_of_one_noisy_pass(small_net: Network, batch):
    """The helper above computes what the rules compute (same seed, one noisy pass)."""
    x, y = batch
    for name in ("np", "inp", "anp"):
        net = Network([10, 20, 20, 20, 5], noise_std=1e-4, seed=0).double()
        via_rule = flat(make_rule(name).gradients(net, x, y)[0])
        net = Network([10, 20, 20, 20, 5], noise_std=1e-4, seed=0).double()
        via_helper = single_estimates(name, net, x, y, 1)[0]
        for a, b in zip(via_rule, via_helper):
            torch.testing.assert_close(a, b)


def test_k_noise_samples_average_the_estimates(small_net: Network, batch):
    """K noisy passes against one clean pass: a better estimate than one pass."""
    x, y = batch
    truth = true_gradient(small_net, x, y)

    def mean_cosine(k: int) -> float:
        rule = make_rule("anp", noise_samples=k)
        return sum(cosine(e, g) for _ in range(20)
                   for e, g in zip(flat(rule.gradients(small_net, x, y)[0]), truth)) / 80

    assert mean_cosine(64) > mean_cosine(1) + 0.2


def test_anp_guards_samples_whose_activity_did_not_change():
    """A sample with ||da|| = 0 contributes nothing (no division by zero, no NaN)."""
    from noisynets import Record
    from noisynets.rules import ANP

    activity = [torch.zeros(2, 3, 4), torch.zeros(2, 3, 2)]
    activity[0][1, 0, 0] = 1.0  # only node 0 of sample 0 of the noisy pass changed
    loss = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.5, 1.0]])
    record = Record([torch.ones(3, 5), torch.ones(3, 4)], activity, loss, 1)
    e, _ = ANP.signals(record)
    assert torch.isfinite(e).all()
    # Sample 0 alone: dL = 1, N = 6, ||da||^2 = 1 -> signal 6 on node 0; samples 1, 2: nothing.
    expected = torch.zeros(1, 3, 4)
    expected[0, 0, 0] = 6.0
    torch.testing.assert_close(e, expected)


@pytest.mark.parametrize("name", ["bp", "anp"])
def test_with_both_passes_noisy_the_bp_reference_is_taken_at_the_rules_operating_point(name):
    """The estimate refers to the gradient at pass 1's noisy operating point, so the alignment
    diagnostic's BP gradient must see exactly that pass's noise, not a fresh draw."""
    from noisynets.core.noise import Telegraph
    from noisynets.training import diagnostics, reference_gradients

    net = Network([10, 20, 20, 5], noise=Telegraph(0.3, switch=0.2), both_noisy=True, seed=0)
    x, y = torch.randn(16, 10), torch.randint(0, 5, (16,))
    rule = make_rule(name)
    with net.untouched_noise():
        estimate, record = rule.gradients(net, x, y)
    with net.untouched_noise():
        reference, seen = reference_gradients(net, rule, x, y)
    assert torch.equal(seen.loss[0], record.loss[0])
    assert torch.equal(seen.activity[0][0], record.activity[0][0])
    if name == "bp":  # BP's estimate is its own reference: alignment 1 in every layer
        assert diagnostics(net, rule, x, y)["alignment"] == pytest.approx([1.0] * 3)
