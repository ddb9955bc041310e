"""NIR export of a trained spiking run, through snntorch's own exporter and importer.

Properties proven: ``noisynets export RUN --format nir`` writes a file that ``nir.read`` reads,
whose nodes are the model's (R folded into the affine and convolution weights), and which,
imported back by snntorch, gives the run's network's logits (the mean over its T steps) on
the test inputs -- for a zero-reset snntorch model and for the built-in ``--unit lif --reset
zero``, whose file norse's importer runs to the same logits too (where norse is installed);
what NIR cannot hold (a subtract reset among it) is refused with one line naming the fix.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

nir = pytest.importorskip("nir")
pytest.importorskip("nirtorch")

from noisynets.cli import main  # noqa: E402
from noisynets.config import TrainConfig  # noqa: E402
from noisynets.data import load_dataset  # noqa: E402
from noisynets.export_nir import load_nir, nir_readout  # noqa: E402
from noisynets.inference import load_trained  # noqa: E402
from noisynets.run import train  # noqa: E402

MODELS = textwrap.dedent('''
    import snntorch as snn
    from torch import nn


    def leaky():
        return snn.Leaky(beta=0.9, threshold=0.5, init_hidden=True, reset_mechanism="zero")


    def conv():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), leaky(), nn.AvgPool2d(2),
                             nn.Dropout(0.1), nn.Flatten(), nn.Linear(64, 16), leaky(),
                             nn.Linear(16, 10))


    def leaky_mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), leaky(), nn.Linear(16, 10))


    def subtract():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16),
                             snn.Leaky(beta=0.9, init_hidden=True), nn.Linear(16, 10))


    def rate():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


    def max_pool():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), leaky(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64, 10))
''')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nir")
    (root / "nets.py").write_text(MODELS)

    def run(name: str, epochs: int = 1) -> Path:
        out = root / name
        if out.exists():  # trained by an earlier test
            return out
        if name.startswith("builtin_"):  # the built-in LIF: builtin_zero, builtin_subtract
            net = dict(unit="lif", reset=name.removeprefix("builtin_"), hidden=[16])
        else:
            net = dict(model=f"{root / 'nets.py'}:{name}")
        train(TrainConfig(**net, epochs=epochs, trace_every=0, time_steps=4, batch_size=256,
                          figures=False, out=str(out)),
              progress=False, log=None)
        return out

    return run


def test_an_exported_spiking_run_reads_back_and_gives_the_networks_outputs(runs, tmp_path,
                                                                            cli_fails):
    out = runs("conv")
    rates = json.loads((out / "results.json").read_text())["history"][-1]["firing_rate"]
    assert all(0 < r < 1 for r in rates[:2])  # both layers spike: the outputs depend on it
    target = tmp_path / "model.nir"
    cli_fails(["export", str(out), "--format", "nir", "-o", str(target)], "--trust-model")
    assert main(["export", str(out), "--format", "nir", "-o", str(target), "--model",
                 f"{out.parent / 'nets.py'}:conv"]) == 0
    graph = nir.read(str(target))
    kinds = {type(node).__name__ for node in graph.nodes.values()}
    assert {"Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine"} <= kinds
    assert int(graph.metadata["time_steps"]) == 4
    network, _, _ = load_trained(out, trust_model=True)
    conv = network.layers[0]
    exported = next(n for n in graph.nodes.values() if isinstance(n, nir.Conv2d))
    torch.testing.assert_close(torch.as_tensor(exported.weight),
                               conv.folded_weight().detach())  # R folded in
    assert not torch.allclose(conv.folded_weight(), conv.weight, atol=1e-4)
    x = load_dataset("digits").test_x.view(-1, 1, 8, 8)
    with torch.no_grad():
        expected = network(x)
    got = nir_readout(load_nir(target), x, 4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (expected.argmax(-1) == got.argmax(-1)).all()


@pytest.mark.parametrize("name", ["builtin_zero", "leaky_mlp"])
def test_zero_reset_networks_export_and_snntorch_reads_back_their_outputs(runs, tmp_path, name):
    """The built-in LIF with --reset zero and a zero-reset snntorch model: exported, read by
    nir.read, imported by snntorch, the graph gives the network's logits on the test inputs."""
    out = runs(name)
    target = tmp_path / "model.nir"
    trust = [] if name.startswith("builtin") else ["--trust-model"]
    assert main(["export", str(out), "--format", "nir", "-o", str(target), *trust]) == 0
    graph = nir.read(str(target))
    lif = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)]
    assert len(lif) == 1 and (lif[0].v_reset == 0).all()
    network, _, _ = load_trained(out, trust_model=True)
    x = load_dataset("digits").test_x.view(-1, 1, 8, 8)
    with torch.no_grad():
        expected = network(x)
    rates = json.loads((out / "results.json").read_text())["history"][-1]["firing_rate"]
    assert 0 < rates[0] < 1  # the hidden layer spikes: the outputs depend on it
    torch.testing.assert_close(nir_readout(load_nir(target), x, 4), expected, rtol=0, atol=1e-5)


def test_a_sequence_run_exports_one_step_per_evaluation(tmp_path):
    """A run on the generated spiking sequences (``--encoding sequence``): the graph takes one
    step's channels, and fed step t's input x[:, t] it gives the network's logits."""
    spec = "randman:classes=4,steps=6,channels=12,train=40,test=20"
    out = tmp_path / "run"
    train(TrainConfig(dataset=spec, unit="lif", reset="zero", hidden=[16], epochs=1,
                      batch_size=8, trace_every=0, figures=False, out=str(out)),
          progress=False, log=None)
    target = tmp_path / "model.nir"
    assert main(["export", str(out), "--format", "nir", "-o", str(target)]) == 0
    graph = nir.read(str(target))
    assert graph.metadata["encoding"] == "sequence" and "x[:, t]" in graph.metadata["readout"]
    network, _, _ = load_trained(out)
    x = load_dataset(spec).test_x
    with torch.no_grad():
        expected = network(x)
    got = nir_readout(load_nir(target), x, 6, sequence=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["builtin_zero", "leaky_mlp"])
def test_norse_runs_an_exported_graph_to_the_networks_outputs(runs, tmp_path, name):
    """A second framework's NIR importer (norse) on the exported file, its r moved into the
    weights (``unit_resistance``: norse takes r = 1), gives the network's logits too."""
    norse = pytest.importorskip("norse.torch")
    from noisynets.export_nir import batched, unit_resistance

    out = runs(name)
    target = tmp_path / "model.nir"
    assert main(["export", str(out), "--format", "nir", "-o", str(target),
                 "--trust-model"]) == 0
    graph = nir.read(str(target))
    portable = unit_resistance(graph)
    lif = next(k for k, n in graph.nodes.items() if isinstance(n, nir.LIF))
    assert (portable.nodes[lif].r == 1).all() and not (graph.nodes[lif].r == 1).all()
    module = batched(norse.from_nir(portable, dt=1e-4))  # snntorch's dt: tau = dt / (1 - beta)
    network, _, _ = load_trained(out, trust_model=True)
    x = load_dataset("digits").test_x.view(-1, 1, 8, 8)
    with torch.no_grad():
        expected = network(x)
    got = nir_readout(module, x, 4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name,words", [
    ("subtract", ("resets by subtract", "reset_mechanism='zero'", "--reset zero")),
    ("builtin_subtract", ("LIF", "resets by subtraction", "--reset zero")),
    ("rate", ("spiking networks", "model.pt")),
    ("max_pool", ("MaxPool2d", "nn.AvgPool2d")),
])
def test_what_nir_cannot_hold_is_refused_with_one_line(runs, tmp_path, cli_fails, name, words):
    out = runs(name)
    cli_fails(["export", str(out), "--format", "nir", "-o", str(tmp_path / "m.nir"),
               "--trust-model"], *words)
    assert not (tmp_path / "m.nir").exists()


def test_nir_export_of_a_file_that_is_no_run_is_refused(tmp_path, cli_fails):
    (tmp_path / "trace.h5").write_text("")
    cli_fails(["export", str(tmp_path / "trace.h5"), "--format", "nir"], "not a run folder")


def test_nir_export_without_nir_names_the_extra(runs, monkeypatch, tmp_path, cli_fails):
    out = runs("conv")
    monkeypatch.setitem(sys.modules, "nir", None)
    cli_fails(["export", str(out), "--format", "nir", "-o", str(tmp_path / "m.nir"),
               "--trust-model"], "noisynets[nir]")
