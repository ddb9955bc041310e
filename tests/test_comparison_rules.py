"""The comparison rules (issue 30) against autograd: wp, es, wfg, afg and opzo estimate the
gradient (the mean of many estimates is BP's gradient, in direction and in scale); fa and dfa
are exact formulas (a hand-written backward with the same fixed matrices; fa with B = W is
BP); each refuses in one line where it cannot run, keeps its matrices in the network's state,
and learns on the digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from noisynets import Network, make_rule, uses_decorrelation
from noisynets.cli import main
from noisynets.config import TrainConfig
from noisynets.rules import COMPARISONS, OPZO
from noisynets.rules.base import feedback_of
from noisynets.run import train
from noisynets.training import cosine


def flat(grads) -> list[torch.Tensor]:
    return [torch.cat([g[0].flatten(), g[1]]) for g in grads]


def assert_is_gradient(mean, truth, name, tolerance=0.1):
    for k, (m, g) in enumerate(zip(mean, truth)):
        c, ratio = cosine(m, g), (m.norm() / g.norm()).item()
        assert c > 1 - tolerance, f"{name} layer {k + 1}: cosine {c:.3f}"
        assert abs(ratio - 1) < tolerance * 1.5, f"{name} layer {k + 1}: norm ratio {ratio:.3f}"


@pytest.fixture
def net() -> Network:
    return Network([6, 8, 7, 3], noise_std=1e-4, seed=0).double()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,),
                                                                              generator=g)


@pytest.mark.parametrize("name,samples", [("wp", 40000), ("es", 20000), ("wfg", 40000),
                                          ("afg", 40000)])
def test_mean_of_many_estimates_is_the_gradient(net, data, name, samples):
    x, y = data
    truth = flat(make_rule("bp").gradients(net, x, y)[0])
    mean = flat(make_rule(name, noise_samples=samples).gradients(net, x, y)[0])
    assert_is_gradient(mean, truth, name)


def test_opzo_without_momentum_is_unbiased_where_the_samples_share_their_jacobian(data):
    """A linear network: every sample's do/da_l is the same, so the batch-averaged Jacobian
    estimate times the exact output error is the gradient (module doc of rules.opzo)."""
    net = Network([6, 8, 7, 3], unit="identity", noise_std=1e-2, seed=0).double()
    x, y = data
    truth = flat(make_rule("bp").gradients(net, x, y)[0])
    rule = OPZO(noise_samples=20000, momentum=0.0)
    assert_is_gradient(flat(rule.gradients(net, x, y)[0]), truth, "opzo")


def test_opzo_learns_its_feedback_in_step_only(net, data):
    x, y = data
    rule = make_rule("opzo")
    rule.gradients(net, x, y)  # diagnostics: the feedback stays where it was
    feedback = feedback_of(net)
    assert int(feedback.get("updates")) == 0 and feedback.get("M_0").abs().sum() == 0
    rule.step(net, x, y)
    first = feedback.get("M_0").clone()
    assert int(feedback.get("updates")) == 1 and first.abs().sum() > 0
    rule.step(net, x, y)
    assert not torch.equal(first, feedback.get("M_0"))


def leaky(a):
    return F.leaky_relu(a, 0.01)


def hand_backward(net, x, y, feedback):
    """A dense leaky-ReLU MLP's weight gradients with the error sent down by
    ``feedback(l, delta_{l+1}, g_o)`` (the error at layer l's output, before its unit)."""
    Ws = [layer.weight for layer in net.layers]
    bs = [layer.bias for layer in net.layers]
    hs, As = [x], []
    for k, (W, b) in enumerate(zip(Ws, bs)):
        a = hs[-1] @ W.T + b
        As.append(a)
        hs.append(leaky(a) if k < len(Ws) - 1 else a)
    o = As[-1].detach().requires_grad_(True)
    g_o = torch.autograd.grad(F.cross_entropy(o, y, reduction="sum"), o)[0] / x.shape[0]
    deltas = [None] * len(Ws)
    deltas[-1] = g_o
    for k in range(len(Ws) - 2, -1, -1):
        slope = torch.where(As[k] > 0, 1.0, 0.01).to(x.dtype)
        deltas[k] = feedback(k + 1, deltas[k + 1], g_o) * slope
    return [torch.cat([(d.T @ h).flatten(), d.sum(0)]) for d, h in zip(deltas, hs)]


def test_fa_is_the_hand_written_backward_with_its_fixed_matrices(net, data):
    x, y = data
    got = flat(make_rule("fa").gradients(net, x, y)[0])
    B = feedback_of(net)
    want = hand_backward(net, x, y, lambda k, d, g: d @ B.get(f"B_{k}"))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.detach())


def test_fa_with_the_transposed_weights_is_bp(net, data):
    x, y = data
    rule = make_rule("fa")
    rule.prepare(net, x)
    for k, layer in enumerate(net.layers[1:], 1):
        feedback_of(net).get(f"B_{k}").copy_(layer.weight.detach())
    for g, w in zip(flat(rule.gradients(net, x, y)[0]),
                    flat(make_rule("bp").gradients(net, x, y)[0])):
        torch.testing.assert_close(g, w)


def test_dfa_is_the_hand_written_direct_projection(net, data):
    x, y = data
    got = flat(make_rule("dfa").gradients(net, x, y)[0])
    D = feedback_of(net)
    want = hand_backward(net, x, y, lambda k, d, g: g @ D.get(f"D_{k}").T)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.detach())


def test_fixed_matrices_follow_the_seed_and_are_the_networks_state(net, data):
    x, y = data
    a, b = make_rule("dfa", seed=1), make_rule("dfa", seed=2)
    a.gradients(net, x, y)
    other = Network([6, 8, 7, 3], noise_std=1e-4, seed=0).double()
    b.gradients(other, x, y)
    assert "feedback.D_1" in net.state_dict()
    assert not torch.equal(net.state_dict()["feedback.D_1"], other.state_dict()["feedback.D_1"])
    other.load_state_dict(net.state_dict())
    assert torch.equal(net.state_dict()["feedback.D_1"], other.state_dict()["feedback.D_1"])


def test_dfa_is_not_a_decorrelated_fa():
    assert not uses_decorrelation("dfa") and uses_decorrelation("danp")
    assert not any(uses_decorrelation(name) for name in COMPARISONS)


@pytest.mark.parametrize("name", ["wp", "es", "opzo"])
def test_rules_that_draw_or_read_the_noise_refuse_intrinsic_noise(name, net, data):
    net.both_noisy = True
    with pytest.raises(ValueError, match=name):
        make_rule(name).gradients(net, *data)


@pytest.mark.parametrize("name", ["wp", "wfg", "opzo"])
def test_rules_that_need_zero_mean_noise_refuse_bernoulli(name, data):
    net = Network([6, 8, 3], noise="bernoulli", seed=0).double()
    with pytest.raises(ValueError, match="zero-mean|non-zero mean"):
        make_rule(name).gradients(net, *data)


def test_the_cli_refuses_in_one_line(capsys):
    assert main(["train", "--algo", "opzo", "--both-noisy", "--epochs", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "opzo" in err, err


@pytest.mark.parametrize("arch", ["mlp", "conv", "lif"])
@pytest.mark.parametrize("algo", COMPARISONS)
def test_every_comparison_runs_on_every_network(algo, arch, tmp_path):
    options = dict(arch="conv") if arch == "conv" else dict(unit="lif", hidden=[32],
                                                            time_steps=3) \
        if arch == "lif" else dict(hidden=[32])
    config = TrainConfig(algo=algo, epochs=1, batch_size=256, noise_samples=1,
                         trace_every=0, out=str(tmp_path), **options)
    result = train(config, progress=False, log=None)
    assert result.history[-1].train_loss == result.history[-1].train_loss  # finite


# Per rule: the gain over the initial accuracy it must show after 3 epochs, and settings that
# let it show it in seconds (the weight-space rules need a small net and K = 16 passes).
LEARNS = {"fa": (0.5, {}), "dfa": (0.3, {}), "opzo": (0.5, {}), "afg": (0.3, dict(lr=3e-3)),
          **{name: (0.3, dict(hidden=[16], noise_samples=16, lr=1e-2))
             for name in ("wp", "es", "wfg")}}


@pytest.mark.parametrize("algo", COMPARISONS)
def test_every_comparison_raises_test_accuracy_on_the_digits(algo, tmp_path):
    gain, settings = LEARNS[algo]
    config = TrainConfig(algo=algo, **{"hidden": [64], **settings}, epochs=3, batch_size=32,
                         trace_every=0, out=str(tmp_path))
    result = train(config, progress=False, log=None)
    before, after = result.initial.test_accuracy, result.history[-1].test_accuracy
    assert after > before + gain, (before, after)  # chance is 0.1


# --- ES: the antithetic pair is a central difference -------------------------------------


def es_estimate(sizes, std, data, pairs=6, unit="leaky_relu", loss="ce"):
    """ES's estimate on a fresh network: the same weights and, whatever ``std``, the same
    normal draws ``v`` (the perturbations are ``xi = std * v``)."""
    net = Network(sizes, unit=unit, noise_std=std, loss=loss, seed=0).double()
    return torch.cat(flat(make_rule("es", noise_samples=pairs).gradients(net, *data)[0]))


def test_es_on_a_quadratic_loss_has_no_even_order_error(data):
    """One linear layer under the MSE loss: the loss is quadratic in (W, b), so a pair's
    central difference ``Loss(W + xi) - Loss(W - xi) = 2 grad . xi`` is exact and ES's
    estimate ``mean_j (grad . v_j) v_j`` does not depend on the perturbation's size. A pair
    drawn without the minus sign is a forward difference, ``+ 1/2 xi^T H xi``: it moves with
    ``std``."""
    small = es_estimate([6, 3], 1e-3, data, loss="mse")
    large = es_estimate([6, 3], 1.0, data, loss="mse")
    torch.testing.assert_close(large, small, rtol=1e-7, atol=1e-10)


def test_es_error_shrinks_with_the_square_of_the_perturbation(data):
    """On a smooth nonlinear network the central difference's error is odd in ``xi``'s
    cube: ES's estimate moves from its small-noise limit as ``std^2`` (doubling ``std``
    quadruples the change), where a forward difference moves as ``std`` (doubles it)."""
    sizes = [6, 8, 7, 3]
    limit = es_estimate(sizes, 1e-5, data, unit="tanh")
    one, two = (es_estimate(sizes, s, data, unit="tanh") - limit for s in (0.02, 0.04))
    ratio = (two.norm() / one.norm()).item()
    assert 3.6 < ratio < 4.4, f"doubling std changed the estimate {ratio:.2f}x (central: 4x)"


def test_es_pairs_cut_the_error_below_independent_passes_at_the_same_cost(data):
    """On the quadratic the pair cancels the loss's curvature exactly, so at a large
    perturbation ES's K pairs (2K passes) err far less than WP's 2K independent forward
    differences, whose curvature term grows with ``std``; a pair without the minus sign is
    WP's error with half the draws."""
    x, y = data
    errors = {}
    for name, samples in (("es", 8), ("wp", 16)):
        net = Network([6, 3], noise_std=1.0, loss="mse", seed=0).double()
        truth = torch.cat(flat(make_rule("bp").gradients(net, x, y)[0]))
        rule = make_rule(name, noise_samples=samples)
        errs = [(torch.cat(flat(rule.gradients(net, x, y)[0])) - truth).norm() ** 2
                for _ in range(200)]
        errors[name] = torch.stack(errs).mean().item()
        if name == "es":
            # Gaussian v, n parameters: E|(g.v) v - g|^2 = (n + 1)|g|^2, over K pairs.
            n = truth.numel()
            expected = (n + 1) * truth.norm().item() ** 2 / samples
            assert 0.8 < errors[name] / expected < 1.25, (errors[name], expected)
    assert errors["es"] < errors["wp"] / 2, errors


# --- fa, dfa, opzo: their feedback matrices survive a kill and a resume -------------------


@pytest.mark.parametrize("algo", ["fa", "dfa", "opzo"])
def test_a_run_killed_and_resumed_ends_exactly_as_the_run_uninterrupted(algo, tmp_path,
                                                                         killed_run):
    """The matrices are the network's state: the checkpoint carries them (opzo's learned
    feedback and its update count move every step) and a resumed run ends to the bit as the
    run that was never stopped -- results, trace and model with its feedback."""
    import json
    import signal

    args = ["--algo", algo, "--hidden", "32", "--epochs", "4", "--batch-size", "64",
            "--trace-every", "10", "--checkpoint-every", "1", "--threads", "1", "--seed", "3"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", *args, "--out", str(whole), "--no-progress"]) == 0
    assert killed_run(args, cut) == -signal.SIGKILL
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0

    def results(run):
        out = json.loads((run / "results.json").read_text())
        return [{k: v for k, v in h.items() if k != "seconds"} for h in out["history"]]

    assert len(results(whole)) == 5 and results(whole) == results(cut)
    a = torch.load(whole / "model.pt", weights_only=True)["network"]
    b = torch.load(cut / "model.pt", weights_only=True)["network"]
    assert any(k.startswith("feedback.") for k in a), sorted(a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
