"""Nothing it writes is left half-done or lands on a run's own files (issue 27).

* An output path that is one of a run's files (its model, checkpoint, identity, trace, logs,
  figures) is refused before anything is computed, for every command that writes one; the
  one exception is ``plot``'s default, the trace figure the run itself draws, redrawn.
* Every output (predictions, exports of every format, figures) goes through the atomic write
  the run files use: a full disk leaves no file and no temporary, and is one line.
* A refused run, for any reason (a model file of any kind of mistake, a trace file the disk
  has no room for), leaves no folder, so the same ``--out`` takes the next run.
* TensorBoard's writer thread never prints a traceback: a read-only folder is one line.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from noisynets.cli import main
from noisynets.config import TrainConfig
from noisynets.files import RUN_FILE_NAMES, RUN_FOLDER_NAMES
from noisynets.run import train

SMALL = ["--hidden", "8", "--epochs", "1", "--threads", "1", "--no-progress", "--no-figures"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(hidden=[8], epochs=1, trace_every=5, out=str(out), threads=1),
          progress=False, log=None)
    return out


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name)


def test_the_run_file_names_are_every_file_a_run_writes(run):
    from noisynets.checkpoints import CHECKPOINT_FILE, IDENTITY_FILE, MODEL_FILE
    from noisynets.hooks import METRICS_FILE, STEPS_FILE, TENSORBOARD_FOLDER
    from noisynets.run import RESULTS_FILE

    for name in (CHECKPOINT_FILE, IDENTITY_FILE, MODEL_FILE, METRICS_FILE, STEPS_FILE,
                 RESULTS_FILE):
        assert name in RUN_FILE_NAMES
    assert TENSORBOARD_FOLDER in RUN_FOLDER_NAMES
    assert {p.name for p in run.iterdir()} <= set(RUN_FILE_NAMES)


def test_no_output_lands_on_a_runs_own_file(run, tmp_path, cli_fails):
    """``export RUN/trace.h5 --format nwb -o RUN/model.pt`` exited 0 and replaced the trained
    model with the NWB file; only the trace file itself was protected."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = digests(copy)
    trace = str(copy / "trace.h5")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 64), np.float32))
    (tmp_path / "link.npz").symlink_to(copy / "model.pt")
    commands = [["export", trace, "--format", "csv", "-o", str(copy)],
                ["predict", str(copy), "--input", str(x), "-o", str(tmp_path / "link.npz")]]
    for name in (*RUN_FILE_NAMES, *RUN_FOLDER_NAMES):
        target = str(copy / name)
        commands += [["export", trace, "--format", "npz", "-o", target],
                     ["export", trace, "--format", "nwb", "-o", target],
                     ["export", str(copy), "--format", "nir", "-o", target]]
        if name != "trace.png":  # plot's own figure of this trace: redrawn (below)
            commands.append(["plot", trace, "-o", target])
        if name.endswith(".csv"):  # the kinds predict writes
            commands.append(["predict", str(copy), "--input", str(x), "-o", target])
    for argv in commands:
        cli_fails(argv, "output", "name another")
    assert digests(copy) == before
    assert main(["plot", trace]) == 0  # plot's default: the run's own trace figure, redrawn
    assert temporaries(copy) == []


def test_a_full_disk_leaves_no_half_written_prediction_export_or_figure(run, small_disk,
                                                                        cli_fails):
    """``predict -o`` on a full disk printed a clean line and left a truncated file; the
    NWB export left a truncated .nwb and a traceback."""
    filler = small_disk / "filler"
    x = run.parent / "many.npy"
    np.save(x, np.random.default_rng(0).random((5000, 64)).astype(np.float32))
    with filler.open("wb") as f:  # the disk full to its last 8 KiB
        try:
            f.write(b"\0" * (4 * 2**20 - 8192))
        except OSError:
            pass
    trace = str(run / "trace.h5")
    for argv in (["predict", str(run), "--input", str(x), "-o", str(small_disk / "p.csv")],
                 ["predict", str(run), "--input", str(x), "-o", str(small_disk / "p.npz")],
                 ["export", trace, "--format", "npz", "-o", str(small_disk / "e.npz")],
                 ["export", trace, "--format", "nwb", "-o", str(small_disk / "e.nwb")],
                 ["export", trace, "--format", "csv", "-o", str(small_disk / "csv")],
                 ["plot", trace, "-o", str(small_disk / "t.png")]):
        cli_fails(argv, "cannot write", "No space left on device")
    left = sorted(p.name for p in small_disk.rglob("*") if p.is_file())
    assert left == ["filler"], left


MODEL_MISTAKES = {
    "meta tensors": "import torch\nfrom torch import nn\ndef net():\n    return nn.Sequential("
                    "nn.Flatten(), nn.Linear(64, 16, device='meta'), nn.ReLU(), "
                    "nn.Linear(16, 10))\n",
    "zero width": "from torch import nn\ndef net():\n    return nn.Sequential(nn.Flatten(), "
                  "nn.Linear(64, 0), nn.ReLU(), nn.Linear(0, 10))\n",
    "zero outputs": "from torch import nn\ndef net():\n    return nn.Sequential(nn.Flatten(), "
                    "nn.Linear(64, 0))\n",
}


def test_a_refused_run_leaves_no_folder_and_the_same_out_takes_the_next(tmp_path, cli_fails):
    """Every --model error (13 of 13 kinds) left --out with an identity.json, after which the
    same --out was refused as not empty."""
    from test_fuzz import MODEL_FILES

    out = tmp_path / "out"
    kinds = {**MODEL_FILES, **MODEL_MISTAKES}
    for k, (name, text) in enumerate(kinds.items()):
        path = tmp_path / f"m{k}.py"
        if text is None:
            path.write_bytes(bytes(range(256)))
        else:
            path.write_text(text)
        cli_fails(["train", "--model", f"{path}:net", *SMALL, "--trace-every", "0", "--out",
                   str(out)])
        assert not out.exists(), (name, sorted(p.name for p in out.iterdir()))
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    cli_fails(["train", "--model", f"{tmp_path / 'm0.py'}:net", *SMALL, "--out", str(keep),
               "--overwrite"], "importing")
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"]  # the user's file stays
    assert main(["train", *SMALL, "--trace-every", "0", "--out", str(out)]) == 0


def test_a_run_the_disk_has_no_room_for_leaves_no_folder(small_disk, cli_fails):
    out = small_disk / "run"
    cli_fails(["train", *SMALL, "--hidden", "500", "--trace-every", "1", "--trace-units", "0",
               "--trace-probe", "100", "--out", str(out)], "trace.h5", "No space left")
    assert not out.exists()
    assert main(["train", *SMALL, "--trace-every", "0", "--out", str(out)]) == 0


def test_a_read_only_tensorboard_folder_on_resume_is_one_line(tmp_path):
    """It was a clean line, then a traceback from the writer's thread."""
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--trace-every", "0", "--tensorboard",
                 "--out", str(run)]) == 0
    (run / "model.pt").unlink()
    folder = run / "tensorboard"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        proc = subprocess.run([sys.executable, "-m", "noisynets.cli", "train", "--resume",
                               str(run), "--no-progress"], capture_output=True, text=True,
                              env={"PYTHONPATH": str(Path(__file__).parents[1]),
                                   "PATH": "/usr/bin:/bin"})
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
    assert proc.returncode == 2, proc.stderr[-800:]
    assert proc.stderr.count("\n") == 1, proc.stderr[-800:]
    assert "tensorboard" in proc.stderr and "Read-only file system" in proc.stderr


def test_a_writer_thread_that_fails_is_one_line_from_the_next_call(tmp_path, monkeypatch,
                                                                   capfd):
    """A disk that fills up under TensorBoard's writer: its thread's error is raised by the
    writer's next call, as one ValueError, and its thread prints nothing."""
    pytest.importorskip("tensorboard")
    import time

    from tensorboard.summary.writer import record_writer

    from noisynets.hooks import TensorBoard
    from noisynets.training import EpochStats

    hook = TensorBoard(tmp_path / "tb")

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    stats = EpochStats(epoch=1, step=3, train_loss=1.0, test_loss=1.0, test_accuracy=0.5,
                       alignment=[0.1], decorrelation=[0.0], estimate_norm=[1.0],
                       zero_change_fraction=0.0, seconds=1.0)
    with pytest.raises(ValueError, match="cannot write .*tb.*No space left"):
        for _ in range(50):  # the thread meets the error a moment later
            hook.write(stats, [(3, 1.0)])
            time.sleep(0.05)
    assert "Exception in thread" not in capfd.readouterr().err
