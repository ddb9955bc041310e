"""Run folders that survive a full disk, damaged or foreign files, and untrusted code.

* A disk that fills up during tracing or during a checkpoint: one line, exit status 2, no
  temporary file left, every counted trace record readable with plain h5py, the previous
  checkpoint valid (the run resumes once there is room). A small tmpfs is mounted for it
  (skipped, with the reason, where mounting is impossible).
* A resume from each damaged checkpoint of issue 18 (an unknown setting, a config that is a
  list or missing, ``epoch = "3"``, a tensor of the wrong shape, a raw pickle, a checkpoint
  of another run, a newer format) is one line and exit 2, and changes nothing.
* A run trained with ``--model`` never imports its model file from the folder alone: the
  model file here writes a marker file when imported.
* Paths: too long, under a file, read-only, symbolic links.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from noisynets.checkpoints import CHECKPOINT_FILE, MODEL_FILE, load, sealed
from noisynets.cli import main
from noisynets.config import TrainConfig
from noisynets.files import atomic, remove_stale, write_text_atomic
from noisynets.run import train

WORKER = Path(__file__).with_name("full_disk_worker.py")
SMALL = ["--hidden", "32", "--epochs", "3", "--batch-size", "64", "--trace-every", "5",
         "--checkpoint-every", "1", "--threads", "1", "--no-progress", "--no-figures",
         "--seed", "2"]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_worker(mode: str, disk: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, str(WORKER), mode, str(disk / "filler"), *argv],
                          capture_output=True, text=True, env=env)


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("noisynets: error: "), proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def counted_records_read(path: Path) -> int:
    """Every counted record of every record dataset, read with plain h5py."""
    with h5py.File(path, "r") as f:
        n = int(f["count/records"][0])
        steps = f["traces/step"][:n]
        assert list(steps) == list(range(0, 5 * n, 5))
        for group in f["traces"].values():
            if isinstance(group, h5py.Group):
                for name, dataset in group.items():
                    if dataset.shape and dataset.shape[0] == f["traces/step"].shape[0]:
                        rows = dataset[:n]
                        assert np.isfinite(rows).all(), name
        return n


def test_a_disk_that_fills_up_during_tracing_ends_in_one_line_and_a_readable_trace(
        small_disk):
    """The trace file's space is reserved when it is made, so records keep going into it
    after the disk is full; the next file that needs room (results.json) fails in one line."""
    run = small_disk / "run"
    proc = run_worker("trace:7", small_disk, ["train", *SMALL, "--out", str(run)])
    one_error_line(proc, "results.json", "No space left on device")
    assert temporaries(small_disk) == []
    assert counted_records_read(run / "trace.h5") >= 7
    assert json.loads((run / "results.json").read_text())["epochs"] == 1  # the one before
    (small_disk / "filler").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


def test_trace_writes_that_meet_a_full_disk_fail_in_one_line_without_a_crash(small_disk):
    """Without the reservation, HDF5 itself meets the full disk: with its sieve buffer off,
    the failed write raises at once (no later flush prints errors or crashes the process),
    and the writer stops; every record counted before reads back."""
    run = small_disk / "run"
    # rows of 16 KiB: smaller than HDF5's sieve buffer (64 KiB), which would hold them
    argv = ["train", *SMALL, "--hidden", "64", "--trace-every", "1", "--trace-units", "0",
            "--trace-probe", "64", "--out", str(run)]
    proc = run_worker("noreserve", small_disk, argv)
    one_error_line(proc, "trace.h5", "No space left on device")
    assert temporaries(small_disk) == []
    with h5py.File(run / "trace.h5", "r") as f:
        n = int(f["count/records"][0])
        assert n >= 1
        assert list(f["traces/step"][:n]) == list(range(n))
        assert f["traces/layer_1/activity_clean"][:n].shape == (n, 64, 64)


def test_a_disk_that_fills_up_during_a_checkpoint_keeps_the_previous_one(small_disk):
    """torch.save's RuntimeError on a full disk is one line; no temporary file is left;
    the checkpoint of the epoch before is whole, and the run resumes from it."""
    run = small_disk / "run"
    proc = run_worker("checkpoint:2", small_disk, ["train", *SMALL, "--out", str(run)])
    one_error_line(proc, "checkpoint.pt", "No space left on device")
    assert temporaries(small_disk) == []
    assert load(run / CHECKPOINT_FILE, "checkpoint")["epoch"] == 1
    counted_records_read(run / "trace.h5")
    (small_disk / "filler").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert load(run / CHECKPOINT_FILE, "checkpoint")["epoch"] == 3


def test_a_trace_file_that_does_not_fit_is_refused_when_it_is_made(small_disk, cli_fails):
    line = cli_fails(["train", *SMALL, "--hidden", "500", "--trace-every", "1",
                      "--trace-units", "0", "--trace-probe", "100", "--out",
                      str(small_disk / "run")], "trace.h5", "No space left on device",
                     "MiB")
    assert "--trace-every" in line and "are free" in line  # the free-space check
    assert temporaries(small_disk) == []


def test_a_trace_file_whose_reservation_fails_is_removed(small_disk, cli_fails, monkeypatch):
    """Past the free-space check (here: switched off), the reservation itself meets the full
    disk: one line, and neither the file nor its temporary stays."""
    from noisynets import traces

    monkeypatch.setattr(traces.TraceWriter, "_planned_bytes",
                        lambda self, evaluations: -traces._METADATA_ROOM)
    cli_fails(["train", *SMALL, "--hidden", "500", "--trace-every", "1", "--trace-units", "0",
               "--trace-probe", "100", "--out", str(small_disk / "run")], "trace.h5",
              "No space left on device", "MiB")
    assert temporaries(small_disk) == []
    assert not (small_disk / "run" / "trace.h5").exists()


def test_a_read_only_place_is_one_line(small_disk, cli_fails):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    cli_fails(["train", *SMALL, "--out", str(small_disk / "run")], "Read-only file system")


# --- temporaries and atomic writes ---------------------------------------------------------

def test_stale_temporaries_of_killed_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".checkpoint.pt.tmp-{dead}"
    stale_figure = tmp_path / f".trace.png.tmp-{dead}.png"
    live = tmp_path / f".model.pt.tmp-{os.getpid()}"
    other = tmp_path / ".notes.tmp-x"
    for path in (stale, stale_figure, live, other):
        path.write_bytes(b"x")
    assert sorted(remove_stale(tmp_path)) == sorted([stale, stale_figure])
    assert live.exists() and other.exists()


def test_a_resume_cleans_what_a_killed_checkpoint_write_left(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    (run / MODEL_FILE).unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run / f".checkpoint.pt.tmp-{dead}").write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert temporaries(run) == []


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . "
                                                "unexpected pos 64 vs 0")])
def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "results.json"
    write_text_atomic(path, "old")
    with pytest.raises(ValueError, match=r"cannot write .*results.json"):
        with atomic(path) as tmp:
            tmp.write_text("half")
            raise error
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# --- damaged, foreign and newer checkpoints ------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two runs of different seeds, each with its checkpoint after its last epoch."""
    base = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        train(TrainConfig(hidden=[8], epochs=1, trace_every=0, figures=False, seed=seed,
                          out=str(base / f"seed{seed}")), progress=False, log=None)
    return base


def resumable(finished: Path, tmp_path: Path, seed: int = 0) -> Path:
    """A copy of a run whose model.pt is gone: ``--resume`` continues it (to its end)."""
    run = tmp_path / f"run{seed}"
    shutil.copytree(finished / f"seed{seed}", run)
    (run / MODEL_FILE).unlink()
    return run


def edited(run: Path, change) -> Path:
    """The run's checkpoint changed by ``change`` and saved with the digest of what it holds
    then (``checkpoints.sealed``): the checks after the digest's see the change."""
    path = run / CHECKPOINT_FILE
    data = torch.load(path, weights_only=True)
    change(data)
    torch.save(sealed(data), path)
    return path


W1 = "model.1.parametrizations.weight.original"  # the first layer's W (R apart, DANP)
DAMAGE = {
    "unknown setting": (lambda d: d["config"].__setitem__("future_option", 1),
                        ["does not know", "future_option", "written by noisynets"]),
    "config a list": (lambda d: d.__setitem__("config", [1, 2]), ["'config' is list"]),
    "no config": (lambda d: d.pop("config"), ["has no 'config'"]),
    "epoch text": (lambda d: d.__setitem__("epoch", "3"), ["'epoch' is '3'"]),
    "wrong shape": (lambda d: d["network"].__setitem__(W1, torch.zeros(3, 3)),
                    ["does not fit the network", W1, "(3, 3)"]),
    "wrong dtype": (lambda d: d["network"].__setitem__(W1, d["network"][W1].double()),
                    ["float64"]),
    "missing tensor": (lambda d: d["network"].pop("model.3.parametrizations.weight.0.R"),
                       ["it lacks"]),
    "optimizer shape": (lambda d: d["optimizer"]["state"][0].__setitem__(
        "exp_avg", torch.zeros(2)), ["does not fit the optimizer"]),
    "newer format": (lambda d: d.update(version=7, noisynets_version="9.9"),
                     ["written by noisynets 9.9", "this is noisynets"]),
    "no random state": (lambda d: d.pop("random"), ["has no 'random'"]),
    "history junk": (lambda d: d.__setitem__("history", [{"epoch": "x"}]), ["'history'"]),
    "noise junk": (lambda d: d.__setitem__("noise", [{"generator": ("cpu", "x")}] * 2),
                   ["does not fit"]),
    "noise count": (lambda d: d["noise"].pop(), ["1 noise sources", "the network 2"]),
    "identity edited": (lambda d: d["run"].__setitem__("id", "0" * 32),
                        ["belongs to another run"]),
    "settings edited": (lambda d: d["config"].__setitem__("lr", 0.5),
                        ["other than those its run started with"]),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_resume_from_a_damaged_checkpoint_is_one_line(finished, tmp_path, cli_fails,
                                                        name):
    change, words = DAMAGE[name]
    run = resumable(finished, tmp_path)
    path = edited(run, change)
    before = digest(path)
    cli_fails(["train", "--resume", str(run)], *words)
    assert digest(path) == before


def test_the_undamaged_copy_resumes(finished, tmp_path):
    """The control for the damaged ones: the same copy, not edited, resumes."""
    run = resumable(finished, tmp_path)
    edited(run, lambda d: None)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


def test_a_raw_pickle_as_checkpoint_is_one_line_without_warnings(finished, tmp_path,
                                                                 cli_fails):
    run = resumable(finished, tmp_path)
    (run / CHECKPOINT_FILE).write_bytes(pickle.dumps({"format": "noisynets-checkpoint"}))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        cli_fails(["train", "--resume", str(run)], "not a readable noisynets checkpoint")
    assert [str(w.message) for w in shown] == []


def test_a_checkpoint_of_another_run_is_refused_as_foreign(finished, tmp_path, cli_fails):
    run = resumable(finished, tmp_path)
    shutil.copy(finished / "seed1" / CHECKPOINT_FILE, run / CHECKPOINT_FILE)
    cli_fails(["train", "--resume", str(run)], "belongs to another run")
    shutil.copy(finished / "seed1" / MODEL_FILE, run / MODEL_FILE)
    cli_fails(["evaluate", str(run)], "model.pt", "belongs to another run")


def test_changed_data_is_refused_on_resume(finished, tmp_path, cli_fails, monkeypatch):
    from noisynets import run as run_module

    run = resumable(finished, tmp_path)
    real = run_module.load_dataset

    def other_data(*args):
        data = real(*args)
        data.train_x[0, 0] += 1
        return data

    monkeypatch.setattr(run_module, "load_dataset", other_data)
    cli_fails(["train", "--resume", str(run)], "is not the one the run", "started with")


def test_symbolic_links_in_a_run_folder_are_refused(finished, tmp_path, cli_fails):
    run = resumable(finished, tmp_path)
    elsewhere = tmp_path / "elsewhere.pt"
    (run / CHECKPOINT_FILE).rename(elsewhere)
    (run / CHECKPOINT_FILE).symlink_to(elsewhere)
    cli_fails(["train", "--resume", str(run)], "symbolic link")
    shutil.copy(finished / "seed0" / MODEL_FILE, elsewhere)
    (run / MODEL_FILE).symlink_to(elsewhere)
    cli_fails(["evaluate", str(run)], "symbolic link")


# --- model files run no code without consent -----------------------------------------------

MODEL_CODE = '''
from pathlib import Path
Path(__file__).with_name("imported.marker").write_text("imported")
from torch import nn


def net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LeakyReLU(), nn.Linear(16, 10))
'''


def test_a_model_run_folder_imports_its_model_file_only_with_consent(tmp_path, cli_fails):
    code = tmp_path / "code" / "nets.py"
    code.parent.mkdir()
    code.write_text(MODEL_CODE)
    marker = code.with_name("imported.marker")
    run = tmp_path / "run"
    train(TrainConfig(model=f"{code}:net", epochs=1, trace_every=0, figures=False,
                      out=str(run)), progress=False, log=None)
    assert marker.exists()
    marker.unlink()
    (run / MODEL_FILE).rename(tmp_path / "model.pt")  # the run is resumable again
    cli_fails(["train", "--resume", str(run)], "--model FILE.py:net", "--trust-model")
    assert not marker.exists()
    (tmp_path / "model.pt").rename(run / MODEL_FILE)
    cli_fails(["evaluate", str(run)], "--model FILE.py:net", "--trust-model")
    assert not marker.exists()
    cli_fails(["evaluate", str(run), "--model", f"{code}:other"], "FILE.py:net")
    assert not marker.exists()
    assert main(["evaluate", str(run), "--model", f"{code}:net"]) == 0
    assert marker.exists()
    marker.unlink()
    code.write_text(MODEL_CODE + "\n# changed\n")
    cli_fails(["evaluate", str(run), "--model", f"{code}:net"], "not the file this run")
    assert not marker.exists()
    assert main(["evaluate", str(run), "--trust-model"]) == 0
    assert marker.exists()
    code.write_text(MODEL_CODE)
    (run / MODEL_FILE).unlink()
    assert main(["train", "--resume", str(run), "--model", f"{code}:net",
                 "--no-progress"]) == 0


# --- paths ----------------------------------------------------------------------------------

def test_every_path_mistake_is_one_line(finished, tmp_path, cli_fails):
    long = str(tmp_path / ("x" * 300))
    trace = tmp_path / "t.h5"
    train(TrainConfig(hidden=[8], epochs=1, trace_every=5, figures=False,
                      out=str(tmp_path / "traced")), progress=False, log=None)
    shutil.copy(tmp_path / "traced" / "trace.h5", trace)
    cli_fails(["train", *SMALL, "--out", long], "File name too long")
    cli_fails(["train", *SMALL, "--out", str(trace / "run")], "t.h5")
    cli_fails(["train", "--resume", long], "File name too long")
    cli_fails(["evaluate", long], "File name too long")
    cli_fails(["evaluate", str(trace)], "not a folder")
    cli_fails(["plot", str(trace), "-o", long + ".png"], "File name too long")
    cli_fails(["export", str(trace), "--format", "npz", "-o", long + ".npz"],
              "File name too long")
    cli_fails(["export", str(trace), "--format", "csv", "-o", long], "File name too long")
    cli_fails(["inspect", long], "File name too long")
    sweep = tmp_path / "s.toml"
    sweep.write_text("[grid]\nseed = [0]\n[train]\nhidden = [8]\nepochs = 1\n")
    cli_fails(["sweep", str(sweep), "--out", long, "--workers", "1"], "File name too long")
    cli_fails(["sweep", str(sweep), "--out", str(trace), "--workers", "1"], "t.h5")
    assert temporaries(tmp_path) == []


# --- library calls name their bad argument -------------------------------------------------

def test_a_forward_names_its_bad_argument():
    from noisynets import Network, Passes

    net = Network([4, 5, 3], seed=0)
    x, y, plan = torch.zeros(2, 4), torch.tensor([0, 2]), Passes.perturbed(2)
    net.run(x, y, plan)  # the control: these arguments are right
    mistakes = [
        ((x, y, Passes.perturbed(3)), ValueError, "pass plan has 3 layers"),
        ((x, y, Passes(2, ((0, 3), (0, 1)))), ValueError, r"passes.noisy\[0\]"),
        ((x, y, "perturbed"), TypeError, "noisynets.Passes"),
        ((x.long(), y, plan), TypeError, "x has dtype torch.int64"),
        ((x.numpy(), y, plan), TypeError, "x must be a torch.Tensor"),
        ((x, [0, 1], plan), TypeError, "y must be a torch.Tensor"),
        ((x, torch.tensor([0, 1, 2]), plan), ValueError, "3 targets for the 2 samples"),
        ((x, torch.tensor([0, 3]), plan), ValueError, "labels up to 3.*0..2"),
        ((x, torch.tensor([-1, 0]), plan), ValueError, "labels up to -1"),
        ((x, y.float(), plan), TypeError, "class labels"),
        ((x, y.to("meta"), plan), ValueError, "y is on meta"),
    ]
    for args, error, words in mistakes:
        with pytest.raises(error, match=words):
            net.run(*args)


def test_a_checkpoint_of_format_1_still_resumes(finished, tmp_path):
    """Run folders of the noisynets before identities: no identity.json, no "run" key."""
    run = resumable(finished, tmp_path)
    (run / "identity.json").unlink()
    edited(run, lambda d: (d.pop("run"), d.pop("noisynets_version"), d.update(version=1)))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


# --- damage on disk is refused, never trained on or scored (issue 27) ----------------------

def flipped(path: Path, count: int = 64) -> None:
    """``count`` bytes in the middle of ``path`` inverted: the damage of a disk or a copy."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_model_file_with_flipped_bytes_is_refused_not_scored(finished, tmp_path, cli_fails):
    """It was scored (exit 0, test loss 5451.9 against 2.28 intact)."""
    run = tmp_path / "run"
    shutil.copytree(finished / "seed0", run)
    flipped(run / MODEL_FILE)
    before = digest(run / MODEL_FILE)
    cli_fails(["evaluate", str(run)], "model.pt", "is damaged", "sha256")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 64), np.float32))
    cli_fails(["predict", str(run), "--input", str(x)], "model.pt", "is damaged")
    assert digest(run / MODEL_FILE) == before
    assert not (tmp_path / "x_predictions.csv").exists()


def test_a_checkpoint_with_flipped_bytes_is_refused_not_trained_on(finished, tmp_path,
                                                                  cli_fails):
    """It trained on and ended in "training diverged ... lower --lr", the wrong way."""
    run = resumable(finished, tmp_path)
    flipped(run / CHECKPOINT_FILE)
    cli_fails(["train", "--resume", str(run)], "checkpoint.pt", "is damaged", "sha256")


@pytest.mark.parametrize("file", [MODEL_FILE, CHECKPOINT_FILE])
def test_non_finite_weights_are_damage(finished, tmp_path, cli_fails, file):
    """A run never saves a non-finite weight; a file with one (its digest made to match) was
    scored as loss nan with exit 0."""
    run = tmp_path / "run"
    shutil.copytree(finished / "seed0", run)
    data = torch.load(run / file, weights_only=True)
    data["network"][W1][0, 0] = float("nan")
    torch.save(sealed(data), run / file)
    if file == MODEL_FILE:
        cli_fails(["evaluate", str(run)], "model.pt", "not finite", W1)
    else:
        (run / MODEL_FILE).unlink()
        cli_fails(["train", "--resume", str(run)], "checkpoint.pt", "not finite")


def test_a_run_folder_without_its_identity_is_not_trusted_more(finished, tmp_path, cli_fails):
    """Deleting identity.json switched the identity check off: the run was taken for one of
    an older noisynets. Now its files say their run wrote one, and it is asked for."""
    run = resumable(finished, tmp_path)
    (run / "identity.json").unlink()
    cli_fails(["train", "--resume", str(run)], "identity.json", "is missing", "checkpoint.pt")
    shutil.copy(finished / "seed0" / MODEL_FILE, run / MODEL_FILE)
    cli_fails(["evaluate", str(run)], "identity.json", "is missing", "model.pt")


def test_files_of_the_versions_before_the_digest_still_load(finished, tmp_path):
    """A checkpoint of format 2 and a model file of format 3 (identities, no digest) load as
    they did: what can be checked of them (schema, finite weights, fit, identity) is."""
    run = resumable(finished, tmp_path)
    edited(run, lambda d: (d.pop("digest"), d.update(version=2)))
    data = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    assert "digest" in data  # edited() sealed it again: the old version ignores the key
    torch.save({k: v for k, v in data.items() if k != "digest"}, run / CHECKPOINT_FILE)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    model = torch.load(run / MODEL_FILE, weights_only=True)
    model.pop("digest")
    model["version"] = 3
    torch.save(model, run / MODEL_FILE)
    assert main(["evaluate", str(run)]) == 0
    model["network"][W1][0, 0] = float("inf")  # still checked
    torch.save(model, run / MODEL_FILE)
    with pytest.raises(ValueError, match="not finite"):
        load(run / MODEL_FILE, "model")
