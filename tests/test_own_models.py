"""Any PyTorch model as its author wrote it (issue 26): the engine works through the weight
operations of any ``nn.Module``, and that module is the trained network.

Properties proven:

* the batched forward of a model that runs its own time loop (snntorch's tutorial network),
  of residual blocks (``x + f(x)``), concatenation, nested modules and several outputs is the
  model itself run once per pass with the recorded noise added by plain forward hooks
  (``reference.hooked_brute_force``): activities, inputs and losses, summed over the calls;
* NP with basis noise is autograd's gradient on a residual network and on a concatenation
  (an exact check of the whole path: the calls, the sums, each weight operation's VJP);
* after DANP has moved every ``R`` far from the identity, ``model(x)`` *is* the network's
  noise-free output (dense, convolutional and spiking), and ``export_model(model)`` loads
  into a fresh instance of the user's class and scores the network's accuracy exactly;
* snntorch's functional losses are per sample, the batch mean snntorch's own;
* ``noisynets train --model FILE.py:Net --loss ce_rate_loss`` trains the tutorial network,
  and results.json says what the model is; what cannot run is refused in one line.
"""

from __future__ import annotations

import json
import textwrap

import h5py
import pytest
import snntorch as snn
import snntorch.functional as SF
import torch
from reference import flat, hooked_brute_force, record_noise, use_basis_noise
from torch import nn

import noisynets
from noisynets import Passes, make_rule
from noisynets.core.losses import make_loss
from noisynets.training import evaluate, fit


class Tutorial(nn.Module):
    """snntorch's tutorial network, small: its own loop, neurons without init_hidden."""

    def __init__(self, hidden: int = 12, steps: int = 5) -> None:
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(6, hidden)
        self.lif1 = snn.Leaky(beta=0.95)
        self.fc2 = nn.Linear(hidden, 3)
        self.lif2 = snn.Leaky(beta=0.95)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for _ in range(self.steps):
            cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec), torch.stack(mem2_rec)


class Residual(nn.Module):
    """Two residual blocks ``x + tanh(W x)`` between an input layer and a readout."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.out(h)


class Branches(nn.Module):
    """Two branches concatenated, and a layer used twice (two calls a forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(6, 4)
        self.shared = nn.Linear(9, 9)
        self.out = nn.Linear(9, 3)

    def forward(self, x):
        h = torch.cat([torch.tanh(self.a(x)), torch.sigmoid(self.b(x))], dim=1)
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.out(h)


class Concat(nn.Module):
    """Two branches concatenated into the readout."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(6, 4)
        self.out = nn.Linear(9, 3)

    def forward(self, x):
        return self.out(torch.cat([torch.tanh(self.a(x)), torch.sigmoid(self.b(x))], dim=1))


class ResidualConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + torch.tanh(self.block(h))
        return self.out(nn.functional.avg_pool2d(h, 2).flatten(1))


def data(shape=(6,), classes: int = 3, batch: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, *shape, generator=g, dtype=torch.float64) * 2,
            torch.randint(0, classes, (batch,), generator=g))


def move_decorrelators(net, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(1)
    for layer in net.layers:
        R = layer.decorrelator.R
        R.add_(scale * torch.randn(R.shape, generator=g, dtype=R.dtype))


CASES = {  # snntorch's neurons spike in float32 whatever their input: the tutorial runs in it
    "tutorial": (Tutorial, (6,), dict(loss="ce_rate_loss", noise_std=0.3)),
    "residual": (Residual, (6,), dict(noise_std=0.1)),
    "branches": (Branches, (6,), dict(noise_std=0.1)),
    "concat": (Concat, (6,), dict(noise_std=0.1)),
    "residual conv": (ResidualConv, (1, 8, 8), dict(noise_std=0.1)),
}


@pytest.mark.parametrize("both_noisy", [False, True], ids=["clean-ref", "both-noisy"])
@pytest.mark.parametrize("name", list(CASES))
def test_the_batched_forward_is_the_model_run_once_per_pass(name, both_noisy):
    make, shape, options = CASES[name]
    torch.manual_seed(0)
    dtype = torch.float32 if name == "tutorial" else torch.float64
    net = noisynets.wrap(make().to(dtype), decorrelation=True, both_noisy=both_noisy, seed=0,
                         **options)
    move_decorrelators(net)
    x, y = data(shape)
    x = x.to(dtype)
    passes = Passes.perturbed(net.num_layers, 2, both_noisy)
    noise = record_noise(net)
    record = net.run(x, y, passes)
    brute = hooked_brute_force(net, x, y, passes, noise)
    for k in range(net.num_layers):
        torch.testing.assert_close(record.activity[k], brute.activity[k])
        torch.testing.assert_close(record.inputs[k], brute.inputs[k])
    torch.testing.assert_close(record.loss, brute.loss.to(record.loss.dtype))
    if name == "tutorial":
        assert record.time_steps == 5 and record.readout.shape == (3, 5, 3)
    if name == "branches":
        assert record.steps == [1, 1, 2, 1]  # the shared layer runs twice a forward


@pytest.mark.parametrize("name", ["residual", "concat", "residual conv"])
def test_np_with_basis_noise_is_autograds_gradient_on_models_of_any_shape(name):
    make, shape, options = CASES[name]
    torch.manual_seed(0)
    net = noisynets.wrap(make().double(), decorrelation=True, seed=0)
    move_decorrelators(net)
    x, y = data(shape)
    passes = use_basis_noise(net, x, y, 1e-5, layerwise=False)
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = make_rule("np", noise_samples=passes).gradients(net, x, y)
    for k, (e, g) in enumerate(zip(flat(estimate), flat(truth))):
        torch.testing.assert_close(e, g, rtol=1e-6, atol=1e-9,
                                   msg=lambda m, k=k: f"layer {k + 1}: {m}")


def test_every_rule_runs_on_a_model_that_runs_its_own_loop():
    torch.manual_seed(0)
    x, y = data()
    x = x.float()
    for per_step in (False, True):
        net = noisynets.wrap(Tutorial(), loss="ce_rate_loss", noise_std=0.3,
                             per_step=per_step, decorrelation=True, seed=0)
        for rule in ("bp", "np", "inp", "anp"):
            grads, record = make_rule(rule).gradients(net, x, y)
            assert all(torch.isfinite(g).all() for layer in grads for g in layer)
            assert record.time_steps == 5


def test_snntorchs_losses_are_per_sample_and_average_to_snntorchs_own():
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(7, 6, 4, generator=g) > 0.6).float()
    mem = torch.randn(7, 6, 4, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    for name, series in (("ce_rate_loss", spikes), ("ce_count_loss", spikes),
                         ("mse_count_loss", spikes), ("ce_max_membrane_loss", mem),
                         ("mse_membrane_loss", mem)):
        per_sample = make_loss(name).from_spikes(series, y)
        assert per_sample.shape == (6,)
        torch.testing.assert_close(per_sample.mean(),
                                   getattr(SF, name)()(series, y).float().reshape(()), msg=name)


def train_danp(model, x, y, **options):
    net = noisynets.wrap(model, decorrelation=True, decorrelation_lr=1e-2, seed=0,
                         **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(net, make_rule("danp"), optimizer, (x, y), epochs=2, batch_size=16, test=None,
        progress=False)
    for layer in net.layers:  # R is far from the identity: the fold is visible
        R = layer.decorrelator.R
        assert (R - torch.eye(R.shape[-1], dtype=R.dtype)).abs().max() > 1e-3
    return net


@pytest.mark.parametrize("name", ["residual", "residual conv", "tutorial"])
def test_the_users_module_is_the_trained_network_and_exports_to_a_fresh_instance(name):
    make, shape, options = CASES[name]
    torch.manual_seed(0)
    dtype = torch.float32 if name == "tutorial" else torch.float64
    model = make().to(dtype)
    x, y = data(shape, batch=64, seed=2)
    x = x.to(dtype)
    net = train_danp(model, x, y, **options)
    net.eval()
    with torch.no_grad():
        expected = net(x)  # the network's noise-free output (logits, or spike counts)
        out = model(x)
        logits = out[0].sum(0) if isinstance(out, tuple) else out
        torch.testing.assert_close(logits.to(expected.dtype), expected, rtol=0, atol=1e-5)
    plain = noisynets.export_model(model)
    fresh = make().to(dtype)
    fresh.load_state_dict(plain.state_dict())  # a plain instance of the user's own class
    loss, accuracy = evaluate(fresh.eval(), x, y, loss=options.get("loss", "ce"))
    expected_loss, expected_accuracy = evaluate(net, x, y)
    assert accuracy == expected_accuracy  # exactly; the loss to rounding (W R x folded)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert not any("parametrizations" in k for k in plain.state_dict())


MODEL_FILE = textwrap.dedent('''
    import snntorch as snn
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 32)
            self.lif1 = snn.Leaky(beta=0.95)
            self.fc2 = nn.Linear(32, 10)
            self.lif2 = snn.Leaky(beta=0.95)

        def forward(self, x):
            mem1 = self.lif1.init_leaky()
            mem2 = self.lif2.init_leaky()
            spk_rec, mem_rec = [], []
            for step in range(4):
                spk1, mem1 = self.lif1(self.fc1(x.flatten(1)), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                spk_rec.append(spk2)
                mem_rec.append(mem2)
            return torch.stack(spk_rec), torch.stack(mem_rec)
''')


def test_the_tutorial_network_trains_from_the_command_line(tmp_path, cli_fails):
    from noisynets.cli import main

    file = tmp_path / "nets.py"
    file.write_text(MODEL_FILE)
    out = tmp_path / "run"
    assert main(["train", "--model", f"{file}:Net", "--loss", "ce_rate_loss", "--epochs", "1",
                 "--batch-size", "128", "--trace-every", "5", "--no-figures", "--no-progress",
                 "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    with h5py.File(out / "trace.h5") as trace:  # every step of the model's own loop traced
        assert trace["traces/layer_1/spikes"].shape[1] == 4
    assert result["model"]["time_loop"] == "its own forward"
    assert result["model"]["time_steps"] == 4
    assert result["model"]["readout"] == "spikes over time (ce_rate_loss)"
    assert result["config"]["time_steps"] == 1 and result["config"]["noise_std"] == 0.2
    assert [layer["calls"] for layer in result["layers"]] == [4, 4]
    cli_fails(["train", "--model", f"{file}:Net", "--time-steps", "3", "--out",
               str(tmp_path / "b")], "runs its own loop over time steps")
    cli_fails(["train", "--model", f"{file}:Net", "--out", str(tmp_path / "c")],
              "choose one of snntorch's losses")


def test_a_model_file_with_convolutions_gets_the_conv_presets(tmp_path):
    from noisynets.config import TrainConfig, preset_names, resolve

    file = tmp_path / "nets.py"
    file.write_text("from torch import nn\n\ndef conv():\n    return nn.Sequential("
                    "nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),"
                    " nn.Linear(144, 10))\n")
    config = resolve(TrainConfig(model=f"{file}:conv"))
    assert (config.batch_size, config.decor_lr, config.noise_samples, config.standardize) == (
        32, 1e-2, 4, True)
    assert config.lr == 1e-2 and preset_names(config) == ["digits", "conv"]


def test_a_layer_called_twice_sums_its_calls_and_its_bias_enters_twice():
    """ANP's estimate from a forward in which one layer runs twice: its activity and input
    are the sums over its two calls, and its bias part is twice the VJP's (``steps``)."""
    torch.manual_seed(0)
    net = noisynets.wrap(Branches().double(), noise_std=0.05, seed=0)
    x, y = data()
    estimate, record = make_rule("anp", noise_samples=3).gradients(net, x, y)
    assert record.steps == [1, 1, 2, 1]
    da = [a[1:] - a[:1] for a in record.activity]
    dL = record.loss[1:] - record.loss[:1]
    norm_sq = sum(d.pow(2).sum(-1) for d in da)
    N = sum(d.shape[-1] for d in da)
    e = (dL * N / norm_sq).unsqueeze(-1) * da[2]  # the shared layer
    g_w = torch.einsum("kni,nj->ij", e, record.inputs[2]) / (3 * 5)
    g_b = 2 * e.sum((0, 1)) / (3 * 5)
    torch.testing.assert_close(estimate[2][0], g_w)
    torch.testing.assert_close(estimate[2][1], g_b)


@pytest.mark.parametrize("encoding", ["sequence", "poisson"])
def test_the_reference_pass_of_a_changing_input_is_the_clean_forward(encoding):
    """With an input that changes at every step (a sequence, Poisson spikes), the reference
    pass of a batched forward of a clean and a noisy pass is the clean forward itself, step
    for step: a drive buffered from an earlier step (right only for a constant input) kept
    the reference pass at step 1's drive and DANP did not learn the random manifolds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 40), snn.Leaky(beta=0.9, init_hidden=True),
                          nn.Linear(40, 3))
    net = noisynets.wrap(model, noise_std=0.2, time_steps=5, encoding=encoding, seed=0)
    x = torch.rand(8, 5, 6) if encoding == "sequence" else torch.rand(8, 6)
    y = torch.randint(0, 3, (8,))
    L = net.num_layers
    with torch.no_grad():
        torch.manual_seed(1)  # Poisson spikes come from torch's generator: the same in both
        clean = net.run(x, y, Passes.clean(L))
        torch.manual_seed(1)
        both = net.run(x, y, Passes.perturbed(L, 1))
    for k in range(L):
        torch.testing.assert_close(both.activity[k][0], clean.activity[k][0])
    torch.testing.assert_close(both.loss[0], clean.loss[0])
