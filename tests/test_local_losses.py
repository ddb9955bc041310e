"""Local losses (docs/algorithms.md, "Local losses"): every hidden layer k has a linear readout
head H_k, and its ANP estimate reads the head's own loss change,

    e_k = dL_k * N_{<=k} / ||da_{<=k}||^2 * da_k,

while the top layer keeps plain ANP on the network's loss. The tests: the mean of many
estimates points along autograd's gradient of each head's loss (the top layer's along the
network loss'), one estimate's error is smaller than plain ANP's, the heads learn by their exact
gradient, a short run learns and resumes exactly, and what is not built is refused in one line.
"""

from __future__ import annotations

import json
import signal

import pytest
import torch
from torch import nn

import noisynets
from noisynets import Network, Passes, make_rule
from noisynets.cli import main
from noisynets.config import TrainConfig
from noisynets.rules import ANP
from noisynets.rules.bp import backprop
from noisynets.run import train
from noisynets.training import cosine


def tanh_net(noise_std: float, local_losses: bool = True, decorrelation: bool = False):
    """The 6-12-12-3 tanh network of tests/test_variance_reduction.py, float64, with heads."""
    net = Network([6, 12, 12, 3], unit="tanh", noise_std=noise_std, seed=0,
                  local_losses=local_losses, decorrelation=decorrelation).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    return net, x, torch.randint(0, 3, (16,), generator=g)


def local_targets(net: Network, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, autograd's ``dL_k/d(W_k, b_k)`` of its head's mean loss at the reference
    pass (the top layer: of the network's loss), flattened."""
    out = []
    with torch.enable_grad():
        record = net.run(x, y, Passes.clean(net.num_layers))
        for k, layer in enumerate(net.layers):
            loss = record.local_loss[k] if k < net.num_layers - 1 else record.loss
            w, b = torch.autograd.grad(loss[0].mean(), (layer.weight, layer.bias))
            out.append(torch.cat([w.flatten(), b]))
    return out


def flat(grads) -> list[torch.Tensor]:
    return [torch.cat([w.flatten(), b]) for w, b, *_ in grads]


def decorrelated(net: Network, x: torch.Tensor, y: torch.Tensor) -> Network:
    """``net`` after a few decorrelation steps, so that ``R`` is not the identity."""
    net.decorrelation_lr = 0.2
    for _ in range(5):
        net.update_decorrelation(net.run(x, y, Passes.clean(net.num_layers)))
    assert (net.layers[1].decorrelator.R - torch.eye(12, dtype=torch.float64)).abs().max() > 1e-3
    return net


@pytest.mark.parametrize("name", ["anp", "danp"])
def test_the_mean_of_many_estimates_is_each_heads_gradient(name):
    """Measured (K = 6000, s = 1e-3): cosine 0.999 in the first layer (norm ratio 0.99), where
    ``da_1 = eps_1`` and the estimate is INP's on the head's loss; 0.91 in the second, where
    ``da_2`` carries the propagated change of layer 1 (ANP's bias, as without heads); 0.95 in
    the top layer, plain ANP on the network's loss."""
    net, x, y = tanh_net(1e-3, decorrelation=name == "danp")
    if name == "danp":
        net = decorrelated(net, x, y)
    truth = local_targets(net, x, y)
    mean = flat(make_rule(name, noise_samples=6000).gradients(net, x, y)[0])
    cosines = [cosine(m, t) for m, t in zip(mean, truth)]
    assert cosines[0] > 0.99, cosines
    assert 0.9 < (mean[0].norm() / truth[0].norm()).item() < 1.1
    assert min(cosines) > 0.85, cosines
    # The first layer follows its head's loss, not the network's.
    network = flat(backprop(net, x, y, Passes.clean(net.num_layers))[0])
    assert cosines[0] > cosine(mean[0], network[0]) + 0.05, (cosines, cosine(mean[0], network[0]))


def single_errors(local: bool, n: int = 2000) -> list[float]:
    """Per layer, ``E||g_hat - g||^2 / ||g||^2`` of one estimate against its own target (the
    head's gradient with local losses, the network's without), from ``n`` single passes."""
    net, x, y = tanh_net(1e-3, local_losses=local)
    truth = local_targets(net, x, y) if local else flat(make_rule("bp").gradients(net, x, y)[0])
    record = net.run(x, y, Passes.perturbed(net.num_layers, n))
    signals = (ANP.local_signals if local else ANP.signals)(record)
    singles = [flat(net.gradients([e[k : k + 1] for e in signals], record)) for k in range(n)]
    return [(torch.stack([s[layer] for s in singles]) - truth[layer]).pow(2).sum(1).mean().item()
            / truth[layer].pow(2).sum().item() for layer in range(net.num_layers)]


def test_one_estimate_of_the_first_layer_has_a_smaller_error_than_plain_anps():
    """Measured on the 6-12-12-3 tanh network, s = 1e-3, 2000 single estimates: the first
    layer's relative mean squared error is 39.4 with plain ANP (N = 27 nodes per estimate) and
    8.5 with local losses (N_{<=1} = 12); the second layer's 20.5 and 11.3; the top layer's is
    plain ANP's in both (10.7)."""
    plain, local = single_errors(False), single_errors(True)
    assert local[0] < 0.5 * plain[0], (plain, local)
    assert local[1] < plain[1], (plain, local)
    assert local[2] == pytest.approx(plain[2], rel=1e-9), (plain, local)


def test_the_heads_gradient_is_autograds_of_the_local_loss():
    net, x, y = tanh_net(1e-2)
    record = make_rule("anp").step(net, x, y)
    clean = net.run(x, y, Passes.clean(net.num_layers))
    for k, head in enumerate(net.heads):
        with torch.enable_grad():
            x_k = torch.tanh(clean.activity[k][0]).detach()  # layer k's output, reference pass
            loss = nn.functional.cross_entropy(head(x_k), y)
            w, b = torch.autograd.grad(loss, (head.weight, head.bias))
        torch.testing.assert_close(head.weight.grad, w, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(head.bias.grad, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(record.local_inputs[k], x_k)
    trained = {id(p) for p in net.trained_parameters()}
    assert all(id(p) in trained for p in net.heads.parameters())


def test_the_heads_are_state_not_part_of_the_folded_model():
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(),
                          nn.Linear(12, 3))
    net = noisynets.wrap(model, local_losses=True, decorrelation=True)
    assert {k for k in net.state_dict() if k.startswith("heads.")} == {
        "heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias"}
    folded = noisynets.export_model(net)
    assert set(folded.state_dict()) == {f"{k}.{p}" for k in (0, 2, 4) for p in ("weight", "bias")}
    x = torch.randn(5, 6)
    torch.testing.assert_close(folded(x), net(x))


def test_a_short_run_with_local_losses_learns_the_digits(tmp_path):
    config = TrainConfig(algo="danp", hidden=[64, 64], epochs=2, batch_size=32, lr=1e-2,
                         decor_lr=1e-2, local_losses=True, trace_every=0, out=str(tmp_path))
    result = train(config, progress=False, log=None)
    before, after = result.initial.test_accuracy, result.history[-1].test_accuracy
    assert after > 0.6 and after > before + 0.3, (before, after)  # chance is 0.1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["local_losses"] is True


ARGS = ["--algo", "danp", "--hidden", "64", "64", "--epochs", "4", "--batch-size", "32",
        "--local-losses", "--noise-samples", "2", "--checkpoint-every", "1", "--trace-every",
        "0", "--threads", "1", "--seed", "3"]


def test_a_run_with_local_losses_killed_and_resumed_ends_exactly_as_the_run_uninterrupted(
        tmp_path, killed_run):
    whole = tmp_path / "whole"
    assert main(["train", *ARGS, "--out", str(whole), "--no-progress"]) == 0
    cut = tmp_path / "cut"
    assert killed_run(ARGS, cut) == -signal.SIGKILL
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    a = json.loads((whole / "results.json").read_text())
    b = json.loads((cut / "results.json").read_text())
    assert a["epochs"] == b["epochs"] == 4
    for key in ("test_accuracy", "test_loss", "train_loss"):
        assert a[key] == b[key], key
    assert [h["alignment"] for h in a["history"]] == [h["alignment"] for h in b["history"]]
    ma = torch.load(whole / "model.pt", weights_only=True)["network"]
    mb = torch.load(cut / "model.pt", weights_only=True)["network"]
    assert any(k.startswith("heads.") for k in ma)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_other_rules_and_what_is_not_built_are_refused_with_the_fix():
    net, x, y = tanh_net(1e-3)
    for name in ("np", "dinp", "bp"):
        with pytest.raises(ValueError, match="local losses are for anp and danp.*drop local"):
            make_rule(name).step(net, x, y)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(ValueError, match="dense hidden layers.*convolution.*--arch mlp"):
        noisynets.wrap(conv, local_losses=True)
    with pytest.raises(ValueError, match="summed products: drop per-step"):
        Network([6, 12, 3], unit="lif", time_steps=2, per_step=True, local_losses=True)
    with pytest.raises(ValueError, match="at least one hidden layer"):
        Network([6, 3], local_losses=True)


@pytest.mark.parametrize("argv, words", [
    (["train", "--algo", "dnp", "--local-losses"], ["local losses", "dnp", "--local-losses"]),
    (["train", "--algo", "bp", "--local-losses"], ["local losses", "bp", "--local-losses"]),
    (["train", "--arch", "conv", "--local-losses"], ["dense", "--arch conv", "--local-losses"]),
    (["train", "--unit", "lif", "--time-steps", "2", "--per-step-products", "--local-losses"],
     ["summed products", "--per-step-products", "--local-losses"]),
])
def test_the_cli_refuses_local_losses_in_one_line(cli_fails, argv, words):
    cli_fails(argv, *words)


def test_without_local_losses_the_rule_is_plain_anp():
    """``local_losses`` off (the default): no heads, no local losses in the record, and the
    estimate equals the network with heads' top layer (plain ANP there)."""
    plain, x, y = tanh_net(1e-3, local_losses=False)
    with plain.untouched_noise():
        assert plain.heads is None and plain.run(x, y, Passes.perturbed(3)).local_loss is None
    local = tanh_net(1e-3)[0]
    a = make_rule("anp").gradients(plain, x, y)[0]
    b = make_rule("anp").gradients(local, x, y)[0]
    torch.testing.assert_close(a[-1][0], b[-1][0])
    assert not torch.allclose(a[0][0], b[0][0])


def test_over_time_steps_a_head_reads_its_layers_output_averaged_over_the_steps():
    """T = 3 LIF hidden layers: ``L_k^p = loss(H_k (1/T) sum_t x_{k,t}^p, y)`` in every pass."""
    net = Network([6, 12, 12, 3], unit="lif", time_steps=3, noise_std=0.3, seed=0,
                  local_losses=True).double()
    x, y = 2 * torch.rand(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    record = net.run(x, y, Passes.perturbed(net.num_layers, 2), keep_states=True)
    for k, head in enumerate(net.heads):
        mean = record.outputs[k].mean(0)  # (P, B, n_k)
        assert mean.abs().sum() > 0
        expected = nn.functional.cross_entropy(head(mean.reshape(-1, 12)), y.repeat(3),
                                               reduction="none").view(3, 8)
        torch.testing.assert_close(record.local_loss[k], expected)
        torch.testing.assert_close(record.local_inputs[k], mean[0])
    make_rule("danp").step(net, x, y)  # the rule runs on it
