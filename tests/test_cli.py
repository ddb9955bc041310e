"""The command line: the main job's output, and one clear line (exit 2) for every user mistake."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
import torch

from noisynets import data
from noisynets.cli import main


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """A machine with no data sets installed anywhere."""
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.delenv("NOISYNETS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--algo", "backprop"], ["--algo", "backprop", "danp"]),
        (["train", "--dataset", "imagenet"], ["dataset", "imagenet", "fashion-mnist", "teacher"]),
        (["train", "--dataset", "teacher:width=3"], ["teacher", "width=3", "hidden"]),
        (["train", "--dataset", "teacher:train=ten"], ["train='ten'", "integer"]),
        (["train", "--arch", "conv", "--dataset", "teacher"], ["teacher", "--arch mlp"]),
        # the message states the rule it enforces, the same for every value it refuses
        (["train", "--epochs", "0"], ["--epochs", "'0'", "integer from 1"]),
        (["train", "--epochs", "-3"], ["--epochs", "'-3'", "integer from 1"]),
        (["train", "--epochs", "10" * 20], ["--epochs", "integer from 1 to 1_000_000_000"]),
        (["train", "--lr", "0"], ["--lr", "'0'", "finite number > 0"]),
        (["train", "--lr", "-1"], ["--lr", "'-1'", "finite number > 0"]),
        (["train", "--batch-size", "ten"], ["--batch-size", "'ten'", "integer"]),
        (["train", "--lr", "nan"], ["--lr", "'nan'", "finite"]),
        (["train", "--lr=-1e-3"], ["--lr", "'-1e-3'"]),
        (["train", "--noise-std", "inf"], ["--noise-std", "'inf'", "finite"]),
        (["train", "--noise-std", "0"], ["--noise-std", "'0'", "> 0"]),
        (["train", "--noise", "gaussian:std=0"], ["std=0", "std > 0"]),
        (["train", "--hidden", "100", "0"], ["--hidden", "'0'"]),
        (["train", "--decor-fraction", "1.5"], ["decor_fraction", "1.5"]),
        (["train", "--seed", "-1"], ["--seed", "'-1'"]),
        (["train", "--unit", "relu6"], ["--unit", "relu6"]),
        (["train", "--bogus"], ["--bogus"]),
        (["fly"], ["fly"]),
        (["train", "--algo", "np", "--both-noisy"], ["np", "both passes", "anp"]),
        (["train", "--algo", "dinp", "--both-noisy"], ["inp", "both passes"]),
        (["train", "--noise", "telegraph:switch=2"], ["switch", "2"]),
        (["train", "--noise", "pink"], ["pink", "gaussian"]),
        (["train", "--threshold-noise", "0.1"], ["threshold_noise", "lif"]),
        (["train", "--reset", "zero"], ["reset 'zero'", "--unit lif"]),
        (["train", "--reset", "none"], ["--reset", "'none'", "subtract", "zero"]),
        (["train", "--reset", "zero", "--model", "nets.py:f"], ["reset 'zero'", "model file",
                                                                "reset_mechanism='zero'"]),
        (["train", "--generator", "mt19937"], ["--generator", "torch", "fast"]),
        (["train", "--encoding", "sequence"], ["sequence", "randman or shd"]),
        (["train", "--dataset", "randman", "--encoding", "poisson"],
         ["randman", "sequences", "--encoding poisson"]),
        (["train", "--dataset", "randman:steps=20", "--time-steps", "10"],
         ["time_steps 10", "20 steps", "randman:steps=10"]),
        (["train", "--dataset", "randman", "--arch", "conv"], ["randman", "--arch mlp"]),
        (["train", "--dataset", "randman:colour=3"], ["randman", "colour=3", "channels"]),
        (["train", "--dataset", "shd:steps=x"], ["shd", "steps='x'", "integer"]),
        (["train", "--dataset", "digits:x=1"], ["digits:x=1", "teacher, randman and shd"]),
        (["train", "--algo", "np", "--noise", "bernoulli"], ["np", "zero-mean", "bernoulli",
                                                              "centered_bernoulli", "anp"]),
        (["train", "--algo", "inp", "--noise", "telegraph:offset_std=0.1"],
         ["inp", "zero-mean", "offset_std=0.1"]),
        (["train", "--threads", "0"], ["--threads", "'0'", "from 1"]),
        (["train", "--hidden", "100000", "100000"], ["hidden", "weights", "smaller"]),
        (["train", "--out="], ["out", "non-empty"]),
        (["train", "--config="], ["config file"]),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(cli_fails, argv, words):
    cli_fails(argv, *words)


def test_a_missing_data_set_names_the_places_searched(cli_fails, no_data):
    line = cli_fails(["train", "--dataset", "mnist", "--out", str(no_data / "run")], "mnist")
    assert str(no_data / "system") in line
    assert not (no_data / "run").exists() or not any((no_data / "run").iterdir())


def test_a_corrupt_data_file_is_named(cli_fails, no_data):
    root = no_data / "files"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 7))
    cli_fails(["train", "--dataset", "mnist", "--data-root", str(root)], "idx")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_clear_error(cli_fails, tmp_path):
    cli_fails(["train", "--device", "cuda", "--out", str(tmp_path)], "cuda", "--device cpu")


def test_a_bad_config_file_is_a_clear_error(cli_fails, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('algo = "danp"\nlearning_rate = 0.1\n')
    cli_fails(["train", "--config", str(bad)], "learning_rate")
    cli_fails(["train", "--config", str(tmp_path / "none.toml")], "none.toml")
    bad.write_text("epochs = [\n")
    cli_fails(["train", "--config", str(bad)], "TOML")
    bad.write_text('epochs = "many"\n')
    cli_fails(["train", "--config", str(bad)], "epochs", "many")


def test_train_json_reports_the_run(capsys, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("hidden = [32]\nepochs = 3\n")
    argv = ["train", "--config", str(config), "--epochs", "2", "--algo", "anp", "--json",
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    for key in ("algo", "dataset", "epochs", "test_accuracy", "train_loss", "seconds", "out"):
        assert key in result
    assert result["algo"] == "anp" and result["dataset"] == "digits"
    assert result["epochs"] == 2 and result["config"]["hidden"] == [32]
    assert [h["epoch"] for h in result["history"]] == [0, 1, 2]  # as the table and trace
    for h in result["history"]:
        assert {"epoch", "train_loss", "test_accuracy", "alignment"} <= set(h)
        assert len(h["alignment"]) == 2
    assert 0 <= result["test_accuracy"] <= 1
    folder = tmp_path / "run"
    assert json.loads((folder / "results.json").read_text())["test_accuracy"] == \
        result["test_accuracy"]
    assert (folder / "learning_curve.png").stat().st_size > 10_000


def test_a_one_epoch_run_speaks_of_one_epoch_and_labels_its_progress_bar(capsys, tmp_path):
    from noisynets.config import TrainConfig
    from noisynets.run import train

    argv = ["train", "--algo", "danp", "--hidden", "16", "--epochs", "1", "--threads", "1",
            "--trace-every", "0", "--out", str(tmp_path / "cli"), "--no-progress"]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert ", 1 epoch," in out and "after 1 epoch in" in out and "epochs" not in out
    config = TrainConfig(algo="danp", hidden=[16], epochs=1, trace_every=0,
                         out=str(tmp_path / "lib"))
    train(config, progress=True, log=None)
    assert "danp" in capsys.readouterr().err  # the progress bar names the rule asked for


def test_the_console_script_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "noisynets.cli", "train", "--lr", "0"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--lr" in proc.stderr
