"""The trained model is a plain torch model: every R folded into its weights, model.pt holds it,
a fresh instance of the user's class loads it, and a run is used for inference without data.

Properties proven:
* the folded copy's outputs equal the network's noise-free forward (float64: to 1e-12), for a
  dense layer, a convolution and a grouped convolution, after DANP training has moved R far
  from the identity; for a spiking model, ``readout`` (neurons reset, the T steps averaged)
  equals the network's logits, twice in a row;
* the copy is independent of the network (training on does not change it) and in eval mode;
* a fresh instance of the user's class, ``load_state_dict(model.pt["model"])``, scores exactly
  ``evaluate``'s accuracy, and ``evaluate`` of the folded copy equals ``evaluate(net)``;
* ``load_trained`` needs no data set, ``noisynets predict`` writes ``evaluate``'s labels, and a
  version 1 model.pt still loads; bad input files are one-line errors.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import snntorch as snn
import torch
from torch import nn

import noisynets
from noisynets.checkpoints import model_state
from noisynets.config import TrainConfig, resolve
from noisynets.core.decorrelation import trained_weight
from noisynets.core.export import export_model, readout
from noisynets.data import load_dataset
from noisynets.inference import load_trained, predict
from noisynets.run import train
from noisynets.training import evaluate, fit


def user_model() -> nn.Sequential:
    """A user's model: a convolution, a grouped convolution, pooling, two dense layers."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Dropout(0.1),
        nn.Linear(32, 10),
    )


def spiking_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), snn.Leaky(beta=0.8, threshold=0.5, init_hidden=True),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 16),
        snn.Leaky(beta=0.9, threshold=0.5, init_hidden=True), nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    x = data.train_x[:512].view(-1, 1, 8, 8).double()
    return x, data.train_y[:512], data.test_x.view(-1, 1, 8, 8).double(), data.test_y


def trained(model: nn.Module, digits, dtype=torch.float64, **options) -> noisynets.Network:
    """``model`` in ``dtype``, trained by DANP with a fast decorrelation, so R moves far."""
    x, y, _, _ = digits
    net = noisynets.wrap(model.to(dtype), noise_std=1e-3, decorrelation=True,
                         decorrelation_lr=1e-2, seed=0, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(net, noisynets.make_rule("danp"), optimizer, (x.to(dtype), y), epochs=2, batch_size=64,
        test=None, progress=False)
    for layer in net.layers:  # the fold is then visible: R is far from the identity
        R = layer.decorrelator.R
        assert (R - torch.eye(R.shape[-1], dtype=R.dtype)).abs().max() > 1e-3
    return net


def test_the_folded_copy_computes_the_trained_network_dense_and_conv(digits):
    net = trained(user_model(), digits)
    _, _, x_test, y_test = digits
    plain = net.folded()
    assert not plain.training  # eval mode: dropout off
    net.eval()
    with torch.no_grad():
        expected = net(x_test)
        torch.testing.assert_close(plain(x_test), expected, rtol=0, atol=1e-12)
        # R lives in the user's module (a parametrization of each weight): the module itself
        # is the trained network, in the middle of training and after it.
        torch.testing.assert_close(net.model(x_test), expected, rtol=0, atol=1e-12)
    assert evaluate(plain, x_test, y_test) == pytest.approx(evaluate(net, x_test, y_test),
                                                           rel=1e-12)
    # Independent: the network trains on, the copy stays.
    before = [p.clone() for p in plain.parameters()]
    with torch.no_grad():
        for p in net.model.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, plain.parameters()))


@pytest.mark.parametrize("groups", [1, 2])
def test_the_convolution_fold_is_r_on_patches_built_by_hand(groups):
    """A strided, dilated (grouped) convolution with a trained, non-symmetric ``R``: the
    network's noise-free activity and its folded copy's convolution both equal
    ``a = W_g (R_g P_g) + b`` per group ``g``, with the patches ``P`` (``in_channels / G *
    kh * kw`` rows, ``F.unfold``'s order) cut by hand, sample by sample, position by
    position. (Comparing the network with its copy cannot see ``R^T`` for ``R``: both take
    the same folded weight.)"""
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=groups)
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(6 * 5 * 5, 3)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 4, 9, 9, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    net = noisynets.wrap(model, noise_std=1e-3, decorrelation=True, seed=0)
    decorrelator = net.layers[0].decorrelator.R  # a learnt R, say: far from I, not symmetric
    with torch.no_grad():
        decorrelator.add_(0.3 * torch.randn(decorrelator.shape, generator=g,
                                            dtype=torch.float64))
    R = decorrelator.detach().reshape(groups, 36 // groups, -1)
    assert (R - R.mT).abs().max() > 0.1  # R and R^T differ: the check can tell them apart
    d, out = R.shape[-1], 6 // groups
    W = trained_weight(conv).detach().reshape(groups, out, d)  # the W the rule trains
    expected = torch.zeros(5, 6, 5, 5, dtype=torch.float64)
    padded = torch.nn.functional.pad(x[:5], (2, 2, 2, 2))
    for n in range(5):
        for i in range(5):
            for j in range(5):
                window = padded[n, :, 2 * i:2 * i + 5:2, 2 * j:2 * j + 5:2]  # (4, 3, 3)
                for k in range(groups):
                    patch = window[k * (4 // groups):(k + 1) * (4 // groups)].reshape(-1)
                    expected[n, k * out:(k + 1) * out, i, j] = W[k] @ (R[k] @ patch)
    expected += conv.bias.detach()[:, None, None]
    record = net.run(x[:5], y[:5], noisynets.Passes.clean(net.num_layers))
    torch.testing.assert_close(record.activity[0][0], expected.reshape(5, -1), rtol=1e-10,
                               atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(export_model(net)[0](x[:5]), expected, rtol=1e-10,
                                   atol=1e-12)


def test_the_folded_spiking_copy_averages_the_readout_over_the_time_steps(digits):
    # float32: snntorch's neurons spike in float32 whatever their input (the network casts).
    net = trained(spiking_model(), digits, torch.float32, time_steps=4)
    x_test = digits[2].float()
    plain = export_model(net)
    with torch.no_grad():
        expected = net(x_test)
        plain(x_test)  # a step left in the neurons: readout starts them from rest anyway
        first = readout(plain, x_test, 4)
        second = readout(plain, x_test, 4)  # the neurons start from rest every time
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=0, atol=1e-5)
    spikes = net.run(x_test, torch.zeros(len(x_test), dtype=torch.long),
                     noisynets.Passes.clean(net.num_layers), keep_states=True).outputs
    assert 0 < float(spikes[0].mean()) < 1 and 0 < float(spikes[1].mean()) < 1  # it spikes


def test_the_folded_copy_of_a_built_in_lif_network_starts_from_rest_every_time(digits):
    """noisynets' own LIF resets by its last emitted spike: the copy forgets it too."""
    net = noisynets.Network([64, 32, 10], unit="lif", time_steps=4, noise_std=0.2,
                            decorrelation=True, decorrelation_lr=1e-2, seed=0)
    x, y = digits[0].view(-1, 64).float(), digits[1]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    fit(net, noisynets.make_rule("danp"), optimizer, (x, y), epochs=1, batch_size=64,
        test=None, progress=False)
    plain = net.folded()
    with torch.no_grad():
        expected = net(x)
        for _ in range(2):
            torch.testing.assert_close(readout(plain, x, 4), expected, rtol=0, atol=1e-5)


MODEL_FILE = textwrap.dedent('''
    import snntorch as snn
    from torch import nn


    def make_model():
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10),
        )


    def spiking():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32),
                             snn.Leaky(beta=0.9, init_hidden=True), nn.Linear(32, 10))


    def silent():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32),
                             snn.Leaky(beta=0.9, threshold=1e4, init_hidden=True),
                             nn.Linear(32, 10))
''')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "my_nets.py"
    path.write_text(MODEL_FILE)
    namespace: dict = {}
    exec(compile(MODEL_FILE, str(path), "exec"), namespace)
    return path, namespace


@pytest.fixture(scope="module")
def run(models, tmp_path_factory):
    """A DANP run of the user's conv model file, with standardised inputs."""
    path, _ = models
    out = tmp_path_factory.mktemp("run") / "run"
    result = train(TrainConfig(model=f"{path}:make_model", epochs=2, trace_every=0,
                               standardize=True, decor_lr=1e-2, figures=False, out=str(out)),
                   progress=False, log=None)
    return out, result


def test_a_fresh_instance_of_the_users_class_scores_exactly_the_runs_accuracy(run, models):
    out, result = run
    _, namespace = models
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["version"] == 4 and state["inputs"]["mean"] is not None
    model = namespace["make_model"]()  # the user's own class, no noisynets in the way
    model.load_state_dict(state["model"])
    data = load_dataset("digits")
    x = ((data.test_x - state["inputs"]["mean"]) / state["inputs"]["std"]).view(-1, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == data.test_y).double().mean().item()
    assert accuracy == result.history[-1].test_accuracy
    # The network's own module carries R as a parametrization: it is the trained network.
    network, _, _ = load_trained(out, trust_model=True)
    with torch.no_grad():
        torch.testing.assert_close(network.model(x), model(x), rtol=0, atol=1e-5)
    # The unfolded weights alone (model.pt version 1's "model") score otherwise: the fold
    # matters.
    unfolded = namespace["make_model"]()
    unfolded.load_state_dict({name.removeprefix("model.").replace(
        ".parametrizations.weight.original", ".weight"): t for name, t in state["network"].items()
        if name.startswith("model.") and not name.endswith(".R")})
    with torch.no_grad():
        assert not torch.allclose(unfolded.eval()(x), model(x), atol=1e-3)


def test_a_run_loads_for_inference_without_its_data_and_predicts(run, models, monkeypatch,
                                                                 tmp_path, cli_fails):
    out, result = run
    model = f"{models[0]}:make_model"  # the run's model file, named again (consent)
    data = load_dataset("digits")

    def no_data(*args, **kwargs):
        raise AssertionError("inference read the data set")

    monkeypatch.setattr("noisynets.data.load_dataset", no_data)
    monkeypatch.setattr("noisynets.run.load_dataset", no_data)
    network, config, spec = load_trained(out, model)
    assert not network.training and spec["shape"] == [1, 8, 8]
    raw = data.test_x.numpy()
    np.save(tmp_path / "x.npy", raw)
    np.savetxt(tmp_path / "x.csv", raw, delimiter=",", header="pixels", comments="")
    written = predict(out, tmp_path / "x.npy", model=model)
    assert written == tmp_path / "x_predictions.csv"
    table = np.loadtxt(written, delimiter=",", skiprows=1)
    assert (table[:, 0] == data.test_y.numpy()).mean() == result.history[-1].test_accuracy
    standardized = (data.test_x - spec["mean"]) / spec["std"]  # as the run saw its inputs
    with torch.no_grad():
        scores = network(standardized.view(-1, 1, 8, 8)).softmax(-1).numpy()
    np.testing.assert_allclose(table[:, 1:], scores, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(table[:, 0], scores.argmax(1))
    from noisynets.cli import main

    cli_fails(["predict", str(out), "--input", str(tmp_path / "x.csv")], "--trust-model")
    assert main(["predict", str(out), "--input", str(tmp_path / "x.csv"), "-o",
                 str(tmp_path / "p.npz"), "--model", model]) == 0
    with np.load(tmp_path / "p.npz") as p:
        np.testing.assert_array_equal(p["labels"], table[:, 0])
    np.save(tmp_path / "bad.npy", raw[:, :10])
    cli_fails(["predict", str(out), "--trust-model", "--input", str(tmp_path / "bad.npy")],
              f"shape ({len(raw)}, 10)", "(n, 64)")
    (tmp_path / "x.txt").write_text("1,2")  # known by its content (CSV), whatever its name
    cli_fails(["predict", str(out), "--trust-model", "--input", str(tmp_path / "x.txt")],
              "x.txt", "shape (1, 2)")
    cli_fails(["predict", str(out), "--trust-model", "--input", str(tmp_path / "none.npy")],
              "no such file")
    (tmp_path / "junk.csv").write_text("1,2\nthree,4\n")
    cli_fails(["predict", str(out), "--trust-model", "--input", str(tmp_path / "junk.csv")],
              "junk.csv")
    cli_fails(["predict", str(out), "--trust-model", "--input", str(tmp_path / "x.npy"), "-o",
               str(tmp_path / "p.json")], "'.json'")


def test_predict_warns_in_one_line_when_inputs_lie_far_outside_the_training_range(
        run, models, tmp_path, capsys, cli_fails):
    """The digits were trained as pixels / 16, in [0, 1]: raw 0..16 pixels get one warning
    line (and are predicted all the same), --out-of-range refuse makes it an error, and inputs
    inside the range say nothing."""
    from noisynets.cli import main

    out, _ = run
    model = f"{models[0]}:make_model"
    state = torch.load(out / "model.pt", weights_only=True)
    assert (state["inputs"]["min"], state["inputs"]["max"]) == (0.0, 1.0)
    raw = load_dataset("digits").test_x.numpy()
    np.save(tmp_path / "pixels.npy", raw * 16)
    np.save(tmp_path / "scaled.npy", raw)
    assert main(["predict", str(out), "--input", str(tmp_path / "pixels.npy"),
                 "--model", model]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("noisynets: warning: --input"), err
    assert "[0, 16]" in err[0] and "[0, 1]" in err[0], err
    assert (tmp_path / "pixels_predictions.csv").exists()
    cli_fails(["predict", str(out), "--input", str(tmp_path / "pixels.npy"), "--model", model,
               "--out-of-range", "refuse"], "[0, 16]", "--out-of-range warn")
    for quiet in (["--input", str(tmp_path / "scaled.npy")],
                  ["--input", str(tmp_path / "pixels.npy"), "--out-of-range", "ignore"]):
        assert main(["predict", str(out), *quiet, "--model", model]) == 0
        assert "warning" not in capsys.readouterr().err


def test_a_version_1_model_file_still_loads(run, tmp_path):
    out, result = run
    state = torch.load(out / "model.pt", weights_only=True)
    old = tmp_path / "old"
    old.mkdir()
    del state["inputs"]
    state["version"] = 1
    torch.save(state, old / "model.pt")
    network, _, spec = load_trained(old, trust_model=True)  # no recorded hash: trusted
    assert spec["shape"] == [1, 8, 8] and spec["mean"] is not None
    new, _, _ = load_trained(out, trust_model=True)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(network(x), new(x))


def test_a_version_2_model_file_still_loads(run, tmp_path):
    """Version 2 (the folded model and inputs, before the run's identity) still loads."""
    out, result = run
    state = torch.load(out / "model.pt", weights_only=True)
    old = tmp_path / "v2"
    old.mkdir()
    del state["run"], state["noisynets_version"]
    state["version"] = 2
    torch.save(state, old / "model.pt")
    network, _, spec = load_trained(old, trust_model=True)  # no recorded hash: trusted
    assert spec == state["inputs"]
    new, _, _ = load_trained(out, trust_model=True)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(network(x), new(x))


def test_model_state_holds_the_folded_model_beside_the_wrapper(digits):
    net = trained(user_model(), digits)
    state = model_state(net, {})
    folded = net.folded().state_dict()
    assert state["model"].keys() == folded.keys()
    assert all(torch.equal(state["model"][k], folded[k]) for k in folded)
    assert any(k.endswith("parametrizations.weight.0.R") for k in state["network"])


def test_a_spiking_model_file_gets_the_spiking_presets(models):
    path, _ = models
    spiking = resolve(TrainConfig(model=f"{path}:spiking"))
    assert (spiking.time_steps, spiking.noise_std) == (10, 0.2)
    assert (spiking.unit, spiking.arch) == (None, None)
    rate = resolve(TrainConfig(model=f"{path}:make_model"))
    assert (rate.time_steps, rate.noise_std) == (1, 1e-3)
    given = resolve(TrainConfig(model=f"{path}:spiking", time_steps=3, noise_std=0.05))
    assert (given.time_steps, given.noise_std) == (3, 0.05)
    with pytest.raises(ValueError, match="leave out --unit"):
        resolve(TrainConfig(model=f"{path}:spiking", unit="lif"))


def test_a_silent_layer_gets_one_warning_and_every_epoch_its_firing_rate(models, tmp_path):
    path, _ = models
    lines: list[str] = []
    train(TrainConfig(model=f"{path}:silent", epochs=2, trace_every=0, figures=False,
                      out=str(tmp_path / "silent")), progress=False, log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1, lines
    assert "layer 1 (Leaky after Linear) is silent" in warnings[0]
    assert "threshold (now 10000)" in warnings[0] and "--time-steps, now 10" in warnings[0]
    results = json.loads((tmp_path / "silent" / "results.json").read_text())
    assert [h["firing_rate"] for h in results["history"]] == [[0.0, None]] * 3
    assert results["config"]["unit"] is None and results["config"]["arch"] is None
    assert results["layers"][0]["node"].startswith("Leaky(beta=0.9, threshold=10000")
    assert results["layers"][0]["spiking"] and not results["layers"][1]["spiking"]
    assert "(Linear+Leaky) 32" in lines[0]  # the header says what the model is
    lines.clear()
    train(TrainConfig(model=f"{path}:spiking", epochs=1, trace_every=0, figures=False,
                      out=str(tmp_path / "firing")), progress=False, log=lines.append)
    assert not [line for line in lines if line.startswith("warning:")], lines
    results = json.loads((tmp_path / "firing" / "results.json").read_text())
    assert 0 < results["history"][-1]["firing_rate"][0] < 1


def test_the_firing_rate_is_the_share_of_neuron_steps_that_spike():
    """Against the spikes the neurons themselves emit (a forward hook): mean over T, B, n."""
    from noisynets.firing import firing_rates

    net = noisynets.wrap(spiking_model(), time_steps=5, noise_std=0.3, seed=0)
    emitted: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for k, layer in enumerate(net.layers[:2]):
        layer.unit.register_forward_hook(lambda m, i, out, k=k: emitted[k].append(out))
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    rates = firing_rates(net, x, torch.zeros(32, dtype=torch.long))
    assert len(emitted[0]) == 5  # one clean pass of T steps
    expected = [float(torch.stack(emitted[k]).mean()) for k in (0, 1)]
    assert rates[:2] == pytest.approx(expected, rel=1e-6) and rates[2] is None
    assert all(0 < r < 1 for r in rates[:2])


def test_predict_writes_a_regressions_outputs(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(dataset="teacher", hidden=[8], epochs=1, trace_every=0, figures=False,
                      out=str(out)), progress=False, log=None)
    data = load_dataset("teacher")
    np.save(tmp_path / "x.npy", data.test_x[:20].numpy())
    written = predict(out, tmp_path / "x.npy", tmp_path / "y.csv")
    assert written.read_text().splitlines()[0] == ",".join(
        f"output_{k}" for k in range(data.num_classes))
    network, _, spec = load_trained(out)
    assert spec["task"] == "regression"
    with torch.no_grad():
        expected = network(data.test_x[:20]).numpy()
    np.testing.assert_allclose(np.loadtxt(written, delimiter=",", skiprows=1, ndmin=2),
                               expected, rtol=1e-6, atol=1e-7)


def test_a_saturated_layer_is_named_and_a_firing_one_is_not():
    from noisynets.firing import SATURATED, SILENT, firing_warnings

    net = noisynets.wrap(spiking_model(), time_steps=5)
    lines = firing_warnings(net, [0.995, 0.5, None], 5, 0.2)
    assert len(lines) == 1 and "layer 1 (Leaky after Conv2d) is saturated" in lines[0]
    assert "raise its threshold (now 0.5)" in lines[0]
    assert firing_warnings(net, [SILENT, SATURATED, None], 5) == []  # the bounds are fine
    assert "layer 2" in firing_warnings(net, [0.5, SILENT / 2, None], 5)[0]
