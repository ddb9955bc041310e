"""Bring your own network: the rules on a user's nn.Sequential, convolutions with patch
decorrelation, spiking snntorch models, and clear refusals of what cannot work."""

from __future__ import annotations

import pytest
import snntorch as snn
import torch
import torch.nn.functional as F
from reference import brute_force, flat, record_noise, use_basis_noise
from torch import nn

import noisynets
from noisynets import Network, Passes, make_rule
from noisynets.core.decorrelation import decorrelate, mean_abs_correlation
from noisynets.core.layer import Layer
from noisynets.core.noise import Gaussian
from noisynets.training import cosine, fit


def small_conv() -> nn.Sequential:
    """Pooling between a convolution and its nodes, a strided grouped convolution, a readout."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d(2), nn.Tanh(),
        nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(16, 3),
    ).double()


def conv_data(batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (batch,), generator=g))


def perturb_decorrelators(net: Network, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(1)
    for layer in net.layers:
        if layer.decorrelator is not None:
            R = layer.decorrelator.R
            R.add_(scale * torch.randn(R.shape, generator=g, dtype=R.dtype))


# --- the convolution's vector-Jacobian product and its patch decorrelation ------------------

@pytest.mark.parametrize("decorrelation", [False, True])
def test_the_conv_vjp_is_the_explicit_outer_product_of_signals_and_patches(decorrelation):
    """g_W = sum over samples and positions of e (R patch)^T per group; g_b = T sum e."""
    op = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2).double()
    if decorrelation:
        decorrelate(op)
    layer = Layer("op", op, Gaussian(0.0))
    net_like = layer.decorrelator
    if net_like is not None:
        g = torch.Generator().manual_seed(2)
        net_like.R.add_(0.2 * torch.randn(net_like.R.shape, generator=g, dtype=torch.float64))
    x = torch.randn(5, 4, 9, 9, dtype=torch.float64)
    seen, a = layer.product(x)
    layer.in_shape = tuple(x.shape[1:])
    e = torch.randn(a.shape, dtype=torch.float64)
    g_w, g_b = layer.gradient(e.flatten(1), seen.flatten(1), time_steps=3)  # count 1: sums

    patches = F.unfold(x, 3, dilation=2, padding=2, stride=2)  # (B, 4*9, L)
    L = patches.shape[-1]
    E = e.reshape(5, 6, L)
    expected_w = torch.zeros(6, 18, dtype=torch.float64)
    expected_a = torch.zeros(5, 6, L, dtype=torch.float64)
    for group in range(2):
        P = patches[:, group * 18:(group + 1) * 18, :]  # (B, 18, L)
        if decorrelation:
            P = layer.decorrelator.R[group] @ P
        rows = slice(group * 3, (group + 1) * 3)
        for n in range(5):
            expected_w[rows] += E[n, rows] @ P[n].T
            expected_a[n, rows] = layer.weight.reshape(6, 18)[rows] @ P[n]
    torch.testing.assert_close(g_w, expected_w.view(6, 2, 3, 3))
    torch.testing.assert_close(g_b, 3 * E.sum((0, 2)))
    torch.testing.assert_close(a.reshape(5, 6, L), expected_a + op.bias[:, None])


def test_conv_decorrelation_lowers_the_patches_mean_absolute_correlation():
    """R learns from the reference pass's patches until they are far less correlated."""
    data = noisynets.data.load_dataset("digits")
    x = data.train_x.view(-1, 1, 8, 8)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 10))
    net = Network(model, decorrelation=True, decorrelation_lr=0.05, decorrelation_fraction=0.5)
    y = data.train_y
    layer = net.layers[0]
    with torch.no_grad():
        record = net.run(x[:512], y[:512], Passes.clean(2))
        before = mean_abs_correlation(layer.decorrelation_rows(record.inputs[0])).item()
        for step in range(200):
            index = torch.arange(step * 64, step * 64 + 64) % x.shape[0]
            net.update_decorrelation(net.run(x[index], y[index], Passes.clean(2)))
        record = net.run(x[:512], y[:512], Passes.clean(2))
        after = mean_abs_correlation(layer.decorrelation_rows(record.inputs[0])).item()
    assert before > 0.3 and after < before / 3, (before, after)


# --- the estimators on a convolutional network --------------------------------------------

@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("decorrelation", [False, True])
def test_np_on_a_conv_net_with_basis_noise_is_autograds_gradient(decorrelation, T):
    net = Network(small_conv(), decorrelation=decorrelation, time_steps=T, seed=0)
    perturb_decorrelators(net)
    x, y = conv_data()
    passes = use_basis_noise(net, x, y, 1e-5, layerwise=False)
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = make_rule("np", noise_samples=passes).gradients(net, x, y)
    for k, (e, g) in enumerate(zip(flat(estimate), flat(truth))):
        torch.testing.assert_close(e, g, rtol=1e-6, atol=1e-9,
                                   msg=lambda m, k=k: f"layer {k + 1}: {m}")


@pytest.mark.parametrize("decorrelation", [pytest.param(False, marks=pytest.mark.slow), True])
def test_inp_and_anp_on_a_conv_net_keep_their_statistics(decorrelation):
    """INP's mean is the gradient; ANP's mean is a descent direction, exact in layer 1. The
    nodes are the convolution's outputs (128 before the pooling): ANP's mean needs the
    estimates of 48,000 noisy passes for its first layer's cosine to pass 0.95."""
    net = Network(small_conv(), decorrelation=decorrelation, noise_std=1e-4, seed=0)
    perturb_decorrelators(net)
    x, y = conv_data(batch=16, seed=1)
    truth = flat(make_rule("bp").gradients(net, x, y)[0])
    inp = flat(make_rule("inp", noise_samples=4000).gradients(net, x, y)[0])
    for k, (m, g) in enumerate(zip(inp, truth)):
        assert cosine(m, g) > 0.95, (k, cosine(m, g))
        assert 0.9 < float(m.norm() / g.norm()) < 1.1, (k, float(m.norm() / g.norm()))
    anp = [flat(make_rule("anp", noise_samples=16000).gradients(net, x, y)[0]) for _ in range(3)]
    cosines = [cosine(sum(parts), g) for parts, g in zip(zip(*anp), truth)]
    assert min(cosines) > 0.3 and cosines[0] > 0.95, cosines


# --- the same machinery for every network --------------------------------------------------

def test_the_wrapped_form_of_the_built_in_network_gives_the_same_estimates():
    built = Network([12, 16, 16, 4], decorrelation=True, seed=3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.LeakyReLU(0.01),
                          nn.Linear(16, 16), nn.LeakyReLU(0.01), nn.Linear(16, 4))
    wrapped = noisynets.wrap(model, decorrelation=True, seed=3)
    model.load_state_dict(built.model.state_dict())  # W and R, as parametrized
    for ours, theirs in zip(built.layers, wrapped.layers):  # the same noise streams
        theirs.noise.reseed(ours.noise.seed)
    x, y = torch.rand(10, 12), torch.randint(0, 4, (10,))
    for name in ("bp", "np", "inp", "anp"):
        a, _ = make_rule(name, noise_samples=2).gradients(built, x, y)
        b, _ = make_rule(name, noise_samples=2).gradients(wrapped, x, y)
        for u, v in zip(flat(a), flat(b)):
            assert torch.equal(u, v), name


def leaky_net(conv: bool) -> nn.Sequential:
    torch.manual_seed(0)
    if conv:
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), snn.Leaky(beta=0.9, init_hidden=True),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), snn.Leaky(beta=0.9, init_hidden=True),
                         nn.Linear(128, 10))


@pytest.mark.parametrize("algo", ["danp", "dbp"])
@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_an_snntorch_sequential_model_trains_with_danp_and_bptt(conv, algo):
    data = noisynets.data.load_dataset("digits")
    x, y = data.train_x.view(-1, 1, 8, 8), data.train_y
    net = noisynets.wrap(leaky_net(conv), noise_std=0.05, time_steps=5, decorrelation=True,
                         seed=0)
    optimizer = torch.optim.Adam(net.trained_parameters(), lr=2e-3 if algo == "dbp" else 5e-3)
    test = (data.test_x.view(-1, 1, 8, 8), data.test_y)
    history = fit(net, make_rule(algo), optimizer, (x, y), epochs=4, batch_size=32, test=test,
                  progress=False)
    # Chance is 0.1; BPTT reaches 0.9 in these 4 epochs, DANP (noisier estimates of many
    # nodes, spike flips) about 0.5-0.8 depending on the net.
    floor = 0.8 if algo == "dbp" else 0.45
    assert history[-1].test_accuracy > floor, [h.test_accuracy for h in history]


def test_snntorch_neurons_start_every_batch_at_rest_and_keep_no_graph():
    net = noisynets.wrap(leaky_net(False), noise_std=0.2, time_steps=4)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    first = net.run(x, y, Passes.clean(2))
    make_rule("bp").gradients(net, x, y)
    net.model(x)  # the model called on its own leaves its neurons charged
    again = net.run(x, y, Passes.clean(2))
    assert torch.equal(first.activity[1], again.activity[1])  # driven by the spikes
    leaky = net.layers[0].unit
    assert leaky.mem.numel() == 0, "the membrane of the last forward was left on the neuron"
    net.model(x)
    assert leaky.mem.numel() > 0


@pytest.mark.parametrize("neuron", [
    lambda: snn.Leaky(beta=0.8, init_hidden=True),
    lambda: snn.Synaptic(alpha=0.7, beta=0.8, init_hidden=True),
], ids=["Leaky", "Synaptic"])
@pytest.mark.parametrize("both_noisy", [False, True])
def test_a_wrapped_spiking_conv_net_runs_its_passes_as_the_brute_force_forward(neuron,
                                                                            both_noisy):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), neuron(), nn.MaxPool2d(2),
                          nn.Conv2d(3, 4, 3, groups=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(16, 3)).double()
    net = noisynets.wrap(model, noise_std=0.3, time_steps=3, decorrelation=True,
                         both_noisy=both_noisy, seed=0)
    perturb_decorrelators(net)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 3
    y = torch.randint(0, 3, (4,))
    passes = Passes.perturbed(3, 2, both_noisy)
    noise = record_noise(net)
    record = net.run(x, y, passes)
    brute = brute_force(net, x, y, passes, noise)
    for k in range(3):
        torch.testing.assert_close(record.activity[k], brute.activity[k])
        torch.testing.assert_close(record.inputs[k], brute.inputs[k])
    torch.testing.assert_close(record.loss, brute.loss)


def test_dropout_draws_the_same_mask_in_every_pass_of_a_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 50), nn.ReLU(), nn.Dropout(0.5), nn.Linear(50, 4))
    net = noisynets.wrap(model, noise_std=1e-6)
    x, y = torch.rand(8, 10), torch.randint(0, 4, (8,))
    record = net.run(x, y, Passes.perturbed(2, 3))
    out = record.activity[1]  # the readout sees the dropped-out hidden layer
    assert (out[1:] - out[:1]).abs().max() < 1e-3, "a different mask in a noisy pass"
    net.eval()
    assert torch.equal(net(x), net(x)), "no dropout in eval mode"


# --- what cannot work is refused in one line -----------------------------------------------

REFUSALS = [
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)),
     "module '1' (BatchNorm1d) normalises with statistics of the batch in training mode"),
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.LSTM(8, 8), nn.Linear(8, 2)),
     "module '2' (LSTM): recurrent layers are not supported"),
    (lambda: nn.Sequential(nn.Linear(4, 8), snn.SLSTM(8, 8, init_hidden=True), nn.Linear(8, 2)),
     "(SLSTM): spiking LSTMs are not supported"),
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.PReLU(), nn.Linear(8, 2)),
     "module '1' (PReLU) has a trainable parameter 'weight' the rules cannot estimate"),
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.ConvTranspose1d(8, 8, 1), nn.Linear(8, 2)),
     "module '1' (ConvTranspose1d) has a trainable parameter 'weight'"),
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2)),
     "module '1' (ReLU) works in place (inplace=True)"),
    (lambda: nn.Sequential(nn.Linear(4, 8), snn.Leaky(beta=0.9), nn.Linear(8, 2)),
     "module '1' (Leaky) needs init_hidden=True"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                           nn.Flatten(), nn.Linear(2, 2)), "padding_mode='reflect'"),
    (lambda: nn.Sequential(nn.Linear(4, 2).requires_grad_(False)),
     "the model has no trainable weight operation"),
    (lambda: nn.Sequential(), "the model has no trainable weight operation"),
]


@pytest.mark.parametrize("make,words", REFUSALS, ids=[w[:30] for _, w in REFUSALS])
def test_a_model_the_machinery_cannot_run_is_refused_in_one_line(make, words):
    with pytest.raises(ValueError) as info:
        noisynets.wrap(make())
    message = str(info.value)
    assert words in message and "\n" not in message, message


class FixedBatch(nn.Module):
    """A forward that hard-codes the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x.reshape(5, 4))


class InPlace(nn.Module):
    """A forward that changes a weight operation's output in place."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.fc(x)
        h += 1.0
        return self.out(h)


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.spare = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


RUN_REFUSALS = [
    (FixedBatch, "failed on 2 passes of 5 samples stacked as 10 rows"),
    (InPlace, "the model changed the output of layer 1 ('fc') in place"),
    (Unused, "the model's forward did not call spare"),
]


@pytest.mark.parametrize("make,words", RUN_REFUSALS, ids=[w[:30] for _, w in RUN_REFUSALS])
def test_a_forward_the_engine_cannot_record_is_refused_in_one_line(make, words):
    net = noisynets.wrap(make())
    x, y = torch.rand(5, 4), torch.randint(0, 2, (5,))
    with pytest.raises(ValueError) as info:
        make_rule("anp").gradients(net, x, y)
    message = str(info.value)
    assert words in message and "\n" not in message, message


RUNS_NOW = [  # once refused, when noisynets parsed an nn.Sequential in order
    lambda: nn.Linear(4, 2),
    lambda: nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)),
    lambda: nn.Sequential(nn.ReLU(), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Sigmoid()),
    lambda: nn.Sequential(nn.Linear(4, 8), nn.Softmax(dim=1), nn.Linear(8, 2)),
    lambda: nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.ReLU(), nn.Linear(8, 2)),
    lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2),
                          snn.Leaky(0.9, init_hidden=True), nn.Flatten()),
    lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8).eval().requires_grad_(False),
                          nn.ReLU(), nn.Linear(8, 2)),
]


@pytest.mark.parametrize("make", RUNS_NOW)
def test_models_of_any_shape_run_every_rule(make):
    torch.manual_seed(0)
    net = noisynets.wrap(make(), decorrelation=True, time_steps=2, seed=0)
    x, y = torch.rand(6, 4), torch.randint(0, 2, (6,))
    for name in ("bp", "np", "inp", "anp"):
        grads, record = make_rule(name).gradients(net, x, y)
        assert all(torch.isfinite(g).all() for layer in grads for g in layer if g is not None)
    net.train()
    assert all(not m.training for m in net.model.modules()
               if isinstance(m, nn.BatchNorm1d)), "batch normalisation stays in eval mode"


def test_the_cli_refuses_such_a_model_with_exit_status_2(cli_fails, tmp_path):
    file = tmp_path / "nets.py"
    file.write_text("from torch import nn\n\ndef make():\n"
                    "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8),"
                    " nn.ReLU(), nn.Linear(8, 10))\n\ndef broken():\n    raise RuntimeError('x')\n"
                    "\ndef needs(size):\n    return None\n")
    cli_fails(["train", "--model", f"{file}:make"], "BatchNorm1d", "training mode")
    cli_fails(["train", "--model", f"{file}:missing"], "has no function or class 'missing'")
    cli_fails(["train", "--model", f"{file}:broken"], "broken() in", "RuntimeError: x")
    cli_fails(["train", "--model", f"{file}:needs"], "must take no arguments")
    cli_fails(["train", "--model", "nowhere.py:make"], "does not exist")
    cli_fails(["train", "--model", "nets.py"], "FILE.py:FUNCTION")


# --- your data and your loss ---------------------------------------------------------------

def test_the_teacher_student_task_is_learned_as_a_regression(tmp_path):
    """Targets from a random teacher network; the test MSE falls far below the targets'
    variance, and the run reports no accuracy (JSON null), only the loss."""
    import json

    from noisynets.cli import main

    data = noisynets.data.load_dataset("teacher:inputs=10,hidden=20,outputs=3,train=2000,"
                                       "test=500,label_noise=0.01")
    assert data.task == "regression" and data.train_y.dtype == torch.float32
    assert data.train_y.shape == (2000, 3)
    variance = data.test_y.var(0).mean().item()
    out = tmp_path / "run"
    assert main(["train", "--dataset", "teacher:inputs=10,hidden=20,outputs=3,train=2000,"
                 "test=500,label_noise=0.01", "--algo", "danp", "--hidden", "64",
                 "--epochs", "10", "--batch-size", "20", "--trace-every", "0", "--out", str(out),
                 "--no-progress", "--json"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["test_accuracy"] is None and result["config"]["loss"] == "mse"
    assert result["test_loss"] < 0.5 * variance, (result["test_loss"], variance)


def test_fit_takes_the_users_tensors_a_dataset_or_a_dataloader_and_any_per_sample_loss():
    """The same seeded run from tensors and from a TensorDataset; a DataLoader and a custom
    loss (a callable returning one loss per sample) train too."""
    data = noisynets.data.load_dataset("digits")
    x, y = data.train_x, data.train_y
    test = (data.test_x, data.test_y)

    def run(train, loss="ce", epochs=4):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
        net = noisynets.wrap(model, decorrelation=True, loss=loss, seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        return fit(net, make_rule("danp"), optimizer, train, epochs=epochs, batch_size=32,
                   test=test, progress=False)

    from_tensors = run((x, y))
    from_dataset = run(torch.utils.data.TensorDataset(x, y))
    assert from_tensors[-1].test_accuracy > 0.7
    assert from_dataset[-1].test_accuracy > 0.7
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                         shuffle=True)
    assert run(loader)[-1].test_accuracy > 0.6

    def smooth_ce(logits, target):  # cross-entropy with label smoothing, per sample
        return F.cross_entropy(logits, target, reduction="none", label_smoothing=0.1)

    assert run((x, y), loss=smooth_ce)[-1].test_accuracy > 0.7
    with pytest.raises(TypeError, match="pair of tensors"):
        run([1, 2, 3])
