"""Data-parallel training is the one-process run: the same estimates, R, noise and results.

Two processes (torchrun, gloo on the CPU) each take a share of every batch; what they compute
together must equal one process on the whole batch up to the rounding of the sums.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from parallel_worker import CASES, guard_case, run_case

from noisynets import Network
from noisynets.cli import main
from noisynets.parallel import World, shard_of
from noisynets.training import fit

HERE = Path(__file__).parent
CPU = torch.device("cpu")


def torchrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` with one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *args], capture_output=True, text=True, env=env, cwd=cwd)


def launch(script: Path, *args: str, folder: Path, size: int = 2) -> None:
    """``script ARGS`` in ``size`` processes, as torchrun starts them (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``; one thread each), meeting through a file store in
    ``folder`` (``NOISYNETS_TEST_STORE``) instead of torchrun's TCP store: under load that store
    failed to start (a client then waits 2 x 60 s for port 0) or its worker died with SIGABRT
    ("terminate called without an active exception"). Every process must exit with 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(size),
           "NOISYNETS_TEST_STORE": str(folder / "store")}
    procs = [subprocess.Popen([sys.executable, str(script), *args],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(size)]
    outputs = [p.communicate() for p in procs]
    failed = [(r, p.returncode, err[-3000:]) for r, (p, (_, err)) in enumerate(zip(procs, outputs))
              if p.returncode != 0]
    assert not failed, failed


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("parallel")
    launch(HERE / "parallel_worker.py", str(folder / "results.pt"), folder=folder)
    return torch.load(folder / "results.pt", weights_only=True)


def test_shares_split_a_batch_as_tensor_split_does():
    for total in (1, 7, 16, 65):
        for size in (1, 2, 3, 5):
            shares = [shard_of(total, World(r, size, CPU)) for r in range(size)]
            parts = torch.arange(total).tensor_split(size)
            assert [(s.offset, s.size) for s in shares] == [
                (int(p[0]) if len(p) else total, len(p)) for p in parts]
            assert sum(s.size for s in shares) == total


def assert_close(b: torch.Tensor, a: torch.Tensor, what: str) -> None:
    """``b`` equals ``a`` to 1e-10 of ``a``'s largest entry: float64 rounding of the sums over
    processes, amplified by later steps (the rules divide loss differences by the noise)."""
    assert a.shape == b.shape, what
    if a.dtype == torch.bool:
        assert torch.equal(a, b), what
    else:
        error = (b - a).abs().max().item()
        assert error <= 1e-10 * a.abs().max().item(), f"{what}: off by {error:.3g}"


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_take_the_steps_of_one(two_processes, name):
    """Estimates of every step, losses, final weights, R and telegraph states: NP, INP (K = 2),
    ANP, DANP (R from 12 of 16 samples), BP, telegraph noise, both passes noisy with gain and
    telegraph noise, LIF units with Poisson input and threshold noise, a grouped convolution
    (R from patches), and dropout; three steps, the last on an uneven split (4 + 3)."""
    alone = run_case(name, None)
    together = two_processes[name]
    for step, (a_step, b_step) in enumerate(zip(alone["grads"], together["grads"])):
        for k, (a, b) in enumerate(zip(a_step, b_step)):
            assert a.abs().max() > 0
            assert_close(b, a, f"step {step + 1}, estimate of parameter {k}")
    for key in ("loss", "weights", "R", "telegraph"):
        assert len(alone[key]) == len(together[key]), key
        for k, (a, b) in enumerate(zip(alone[key], together[key])):
            assert_close(b, a, f"{key} {k}")


def test_a_step_that_is_bad_on_one_process_is_skipped_on_every_one(two_processes):
    assert guard_case(None) == ("loss", True)  # one process: the loss of sample 12
    assert two_processes["guard"] == [("value in another process's share of the batch", True),
                                      ("loss", True)]


def test_data_that_does_not_split_is_refused_with_what_to_do():
    net = Network([4, 3], seed=0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    world = World(0, 2, CPU)  # the checks come before any exchange: no processes needed
    x, y = torch.randn(9, 4), torch.randint(0, 3, (9,))
    with pytest.raises(ValueError, match="Dataset or DataLoader: pass the data as tensors"):
        fit(net, None, optimizer, torch.utils.data.TensorDataset(x, y), 1, 4, world=world)
    with pytest.raises(ValueError, match="a batch of 1 samples .* cannot be split over 2"):
        fit(net, None, optimizer, (x, y), 1, 4, world=world)


@pytest.mark.slow
def test_a_two_process_run_writes_one_run_folder_of_the_one_process_run(tmp_path):
    """Rank 0 names the folder (no --out: a new one under runs/) and alone writes the files;
    the history is the one-process run's up to float32 rounding."""
    args = ["train", "--dataset", "digits", "--hidden", "32", "--epochs", "1", "--no-progress",
            "--threads", "1", "--trace-every", "0"]
    proc = torchrun("-m", "noisynets.cli", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1, folders
    two = json.loads((folders[0] / "results.json").read_text())
    assert two["world_size"] == 2
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert one["world_size"] == 1
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "test_loss", "test_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key


def train_args(out: Path, seed: int) -> list[str]:
    return ["train", "--dataset", "digits", "--hidden", "64", "--epochs", "3", "--seed",
            str(seed), "--out", str(out), "--no-progress", "--json", "--threads", "1"]


@pytest.mark.slow
def test_a_two_process_run_is_the_one_process_run(tmp_path):
    """``torchrun ... noisynets train``: rank 0 writes the run folder; its results match the
    one-process run's, far inside the spread of one-process runs over seeds."""
    proc = torchrun("-m", "noisynets.cli", *train_args(tmp_path / "two", 0), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["world_size"] == 2
    assert {p.name for p in (tmp_path / "two").iterdir()} >= {
        "results.json", "trace.h5", "model.pt", "checkpoint.pt", "learning_curve.png"}
    assert not (tmp_path / "runs").exists()  # no other rank made a folder of its own
    one = {}
    for seed in (0, 1, 2):  # one process: this one
        assert main(train_args(tmp_path / f"one-{seed}", seed)) == 0
        one[seed] = json.loads((tmp_path / f"one-{seed}" / "results.json").read_text())
    assert one[0]["world_size"] == 1
    accuracies = [one[s]["test_accuracy"] for s in one]
    spread = max(accuracies) - min(accuracies)
    assert abs(two["test_accuracy"] - one[0]["test_accuracy"]) <= max(0.01, spread)
    for a, b in zip(one[0]["history"], two["history"]):  # float32: rounding, nothing more
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
