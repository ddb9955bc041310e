"""Runs that survive: the saved model, checkpoints and exact resume after SIGKILL, the
divergence guard, and run folders that are never silently reused."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from noisynets.cli import main
from noisynets.config import TrainConfig
from noisynets.run import evaluate_run, train

# Stateful noise (telegraph), Poisson input (torch's global generator) and decorrelation:
# everything a resumed run must restore.
ARGS = ["--algo", "danp", "--hidden", "64", "--epochs", "5", "--batch-size", "32",
        "--noise", "telegraph:switch=0.2", "--encoding", "poisson", "--time-steps", "2",
        "--trace-every", "10", "--checkpoint-every", "1", "--threads", "1", "--seed", "3"]


def strict(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in strict JSON")
    return json.loads(text, parse_constant=refuse)


def without_seconds(results: dict) -> dict:
    results = dict(results)
    results.pop("seconds")
    results["history"] = [{k: v for k, v in h.items() if k != "seconds"}
                          for h in results["history"]]
    results.pop("out")
    results["config"] = {k: v for k, v in results["config"].items() if k != "out"}
    return results


def trace_contents(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) and name != "metrics/seconds" else None)
    return out


def test_a_run_killed_mid_epoch_and_resumed_ends_exactly_as_the_run_uninterrupted(tmp_path,
                                                                                killed_run):
    whole = tmp_path / "whole"
    assert main(["train", *ARGS, "--out", str(whole), "--no-progress"]) == 0
    cut = tmp_path / "cut"
    returncode = killed_run(ARGS, cut)
    assert returncode == -signal.SIGKILL
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    a = strict((whole / "results.json").read_text())
    b = strict((cut / "results.json").read_text())
    assert a["epochs"] == b["epochs"] == 5
    assert without_seconds(a) == without_seconds(b)
    first, second = trace_contents(whole / "trace.h5"), trace_contents(cut / "trace.h5")
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    ma = torch.load(whole / "model.pt", weights_only=True)["network"]
    mb = torch.load(cut / "model.pt", weights_only=True)["network"]
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_the_saved_model_loads_with_weights_only_and_evaluates_as_the_run_ended(tmp_path):
    out = tmp_path / "run"
    result = train(TrainConfig(hidden=[32], epochs=2, trace_every=0, out=str(out)),
                   progress=False, log=None)
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["format"] == "noisynets-model"
    assert set(state["model"]) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    assert any(k.endswith("parametrizations.weight.0.R") for k in state["network"])
    report = evaluate_run(out)
    assert report["test_accuracy"] == result.history[-1].test_accuracy
    from noisynets.run import load_network

    network, _, data = load_network(out)
    assert torch.equal(network.layers[0].decorrelator.R,
                       state["network"]["model.1.parametrizations.weight.0.R"])
    assert report["test_loss"] == pytest.approx(result.history[-1].test_loss)


def test_resume_before_the_first_checkpoint_starts_over_and_refuses_other_options(
        tmp_path, cli_fails):
    out = tmp_path / "run"
    assert main(["train", "--hidden", "16", "--epochs", "2", "--trace-every", "0", "--out",
                 str(out), "--no-progress"]) == 0
    finished = strict((out / "results.json").read_text())
    cli_fails(["train", "--resume", str(out)], "finished all 2 epochs")
    (out / "checkpoint.pt").unlink()
    (out / "model.pt").unlink()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    again = strict((out / "results.json").read_text())
    assert without_seconds(again) == without_seconds(finished)
    cli_fails(["train", "--resume", str(out), "--lr", "0.1"], "--resume", "--lr")
    cli_fails(["train", "--resume", str(tmp_path / "nothing")], "no such run folder")
    (tmp_path / "empty").mkdir()
    cli_fails(["train", "--resume", str(tmp_path / "empty")], "holds no run")
    (out / "checkpoint.pt").write_bytes(b"garbage")
    cli_fails(["train", "--resume", str(out)], "not a readable noisynets checkpoint")


def test_an_existing_run_folder_is_refused_unless_overwrite(tmp_path, cli_fails):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cli_fails(["train", "--out", str(out)], "exists and is not empty", "--overwrite")
    assert main(["train", "--hidden", "16", "--epochs", "1", "--trace-every", "0", "--out",
                 str(out), "--overwrite", "--no-progress"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # only a run's own files are replaced
    assert (out / "model.pt").exists()


def test_a_diverging_run_is_stopped_reported_and_saves_nothing_nan(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["train", "--hidden", "32", "--epochs", "3", "--lr", "1e30",
                   "--max-bad-steps", "3", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3 and len(err) == 1, err
    assert "diverged" in err[0] and "layer" in err[0] and "--lr" in err[0], err[0]
    assert "Traceback" not in err[0]
    results = strict((out / "results.json").read_text())
    assert results["config"]["lr"] == 1e30
    if (out / "model.pt").exists():
        state = torch.load(out / "model.pt", weights_only=True)["network"]
        assert all(torch.isfinite(t).all() for t in state.values())


def test_skipped_steps_are_counted_and_never_applied():
    """A step whose loss is NaN changes nothing: not the weights, nor Adam's state, nor R."""
    from noisynets import Network, make_rule
    from noisynets.training import guarded_step

    net = Network([4, 8, 3], decorrelation=True, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    _, problem = guarded_step(net, make_rule("danp"), optimizer, x, y)
    assert problem is None
    before = {k: v.clone() for k, v in net.state_dict().items()}
    adam = {k: v.clone() for k, v in optimizer.state[net.layers[0].weight].items()}
    x[0, 0] = float("nan")
    _, problem = guarded_step(net, make_rule("danp"), optimizer, x, y)
    assert problem == "activity of layer 1"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(adam[k], v)
               for k, v in optimizer.state[net.layers[0].weight].items())


def test_a_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous file whole."""
    from noisynets.checkpoints import save_atomic

    path = tmp_path / "checkpoint.pt"
    save_atomic({"epoch": 1}, path)

    def broken(obj, f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(ValueError, match="No space left"):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_validation_split_is_measured_every_epoch_and_the_test_split_once(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--hidden", "32", "--epochs", "3", "--val-fraction", "0.2",
                 "--trace-every", "0", "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "val loss" in table and "test split: after the last epoch" in table
    results = strict((out / "results.json").read_text())
    history = results["history"]
    assert all(h["val_accuracy"] is not None for h in history)
    assert [h["test_accuracy"] is not None for h in history] == [False, False, False, True]
    assert results["test_accuracy"] == history[-1]["test_accuracy"]
    from noisynets.data import load_dataset

    full = load_dataset("digits")
    split = full.with_validation(0.2)
    assert split.train_x.shape[0] + split.val_x.shape[0] == full.train_x.shape[0]
    assert torch.equal(split.val_x, full.with_validation(0.2).val_x)  # the same every run
