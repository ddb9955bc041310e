"""noisynets sweep: the grid, the summary, skipping finished runs, failures, a Dask cluster."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from noisynets.cli import main
from noisynets.sweep import Sweep, load_sweep, run_name, run_sweep

TINY = """
[grid]
algo = ["bp", "danp"]
seed = [0, 1]

[train]
dataset = "digits"
hidden = [32]
epochs = 2
batch_size = 128
trace_every = 0
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_grid_is_every_combination_in_file_order(tmp_path):
    sweep = load_sweep(write(tmp_path / "s.toml", TINY))
    runs = sweep.runs()
    assert [r.name for r in runs] == ["algo-bp_seed-0", "algo-bp_seed-1", "algo-danp_seed-0",
                                      "algo-danp_seed-1"]
    assert runs[2].fields == {"dataset": "digits", "hidden": [32], "epochs": 2,
                              "batch_size": 128, "trace_every": 0, "algo": "danp", "seed": 0}
    assert run_name({"hidden": [100, 50], "noise": "telegraph:switch=0.1", "lr": 0.001}) == (
        "hidden-100x50_noise-telegraph-switch-0.1_lr-0.001")
    assert [r.name for r in Sweep({}, {"epochs": 1}).runs()] == ["run"]


@pytest.mark.parametrize("text, message", [
    ("[gird]\nalgo = ['bp']", "unknown table [gird] (did you mean [grid]?)"),
    ("[grid]\nalgoo = ['bp']", "unknown key 'algoo' (did you mean algo?)"),
    ("[grid]\nalgo = 'bp'", "algo = 'bp' must be a non-empty list"),
    ("[grid]\nalgo = []", "must be a non-empty list"),
    ("[grid]\nseed = [0, 0]", "seed lists a value twice"),
    ("[grid]\nalgo = ['bp']\n[train]\nalgo = 'np'", "algo in both [grid] and [train]"),
    ("[grid]\nout = ['a', 'b']", "'out' cannot be set"),
    ("[grid]\nalgo = ['bp', 'xnp']", "the run algo-xnp: unknown algo 'xnp'"),
    ("[grid]\nlr = [0.1, -1.0]", "the run lr--1: lr -1.0 must be a finite number > 0"),
    ("[grid]\nseed = [0, 1]\n[train]\nepochs = 'ten'", "epochs 'ten' must be an integer"),
    ("[grid\n", "is not valid TOML"),
])
def test_a_bad_sweep_file_gets_one_line_and_exit_2(tmp_path, capsys, text, message):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ValueError, match=None) as e:
        load_sweep(path)
    assert message in str(e.value)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisynets: error: sweep file") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_sweep_in_process_writes_runs_and_a_summary_and_skips_finished_runs(tmp_path):
    out = tmp_path / "sweep"
    result = run_sweep(load_sweep(write(tmp_path / "s.toml", TINY)), out, workers=1,
                       progress=False, log=None)
    assert [r["status"] for r in result.runs] == ["done"] * 4
    finals = {}
    for run in result.runs:
        saved = json.loads((out / run["name"] / "results.json").read_text())
        assert saved["config"]["algo"] == run["values"]["algo"]
        assert saved["config"]["seed"] == run["values"]["seed"]
        assert saved["epochs"] == 2 and (out / run["name"] / "model.pt").exists()
        finals.setdefault(run["values"]["algo"], []).append(saved["test_accuracy"])
    rows = json.loads((out / "sweep.json").read_text())["summary"]
    for row in rows:  # the summary is the spread of the runs' own final values
        values = finals[row["algo"]]
        assert row["test_accuracy_mean"] == pytest.approx(statistics.fmean(values))
        assert row["test_accuracy_std"] == pytest.approx(statistics.stdev(values))
        assert row["test_accuracy_min"] == min(values)
    table = (out / "summary.md").read_text()
    bp = finals["bp"]
    assert (f"| bp | 2 | {statistics.fmean(bp):.4f} ± {statistics.stdev(bp):.4f} "
            f"[{min(bp):.4f}, {max(bp):.4f}]") in table
    csv_lines = (out / "runs.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,algo,seed,status") and len(csv_lines) == 5
    assert len((out / "summary.csv").read_text().splitlines()) == 3
    assert (out / "summary.png").stat().st_size > 10_000

    stamps = {r["name"]: (out / r["name"] / "model.pt").stat().st_mtime_ns for r in result.runs}
    again = run_sweep(load_sweep(tmp_path / "s.toml"), out, workers=1, progress=False, log=None)
    assert [r["status"] for r in again.runs] == ["skipped"] * 4
    assert stamps == {r["name"]: (out / r["name"] / "model.pt").stat().st_mtime_ns
                      for r in again.runs}

    changed = write(tmp_path / "s2.toml", TINY.replace("epochs = 2", "epochs = 3"))
    with pytest.raises(ValueError, match="holds a run of other settings: epochs 2"):
        run_sweep(load_sweep(changed), out, workers=1, progress=False, log=None)


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path, capsys):
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n"
        "def good():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
        "def broken():\n    raise RuntimeError('the model cannot be built')\n")
    text = f"""
[grid]
model = ["{tmp_path / 'nets.py'}:good", "{tmp_path / 'nets.py'}:broken"]
[train]
epochs = 1
trace_every = 0
"""
    path = write(tmp_path / "s.toml", text)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--workers", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "the model cannot be built" in err
    rows = (out / "runs.csv").read_text().splitlines()
    assert ",done," in rows[1] and ",failed," in rows[2]
    assert "the model cannot be built" in rows[2]


def test_a_killed_sweep_on_a_two_worker_dask_cluster_finishes_only_the_missing_runs(tmp_path):
    """The 2-rule x 2-seed digits grid on an embedded local cluster of two workers: killed
    (the whole process group) as soon as one run has finished, then run again."""
    path = write(tmp_path / "s.toml", TINY.replace("epochs = 2", "epochs = 4")
                 .replace("[32]", "[128]"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "noisynets.cli", "sweep", str(path), "--out", str(out),
               "--workers", "2", "--no-progress", "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    names = [r.name for r in load_sweep(path).runs()]

    def finished() -> list[str]:
        done = []
        for name in names:
            try:
                saved = json.loads((out / name / "results.json").read_text())
            except (OSError, ValueError):
                continue
            if saved["epochs"] == 4 and (out / name / "model.pt").exists():
                done.append(name)
        return done

    while not finished() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    first = finished()
    assert 1 <= len(first) < 4, "the kill came after every run had finished"
    stamps = {name: (out / name / "model.pt").stat().st_mtime_ns for name in first}

    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    status = {r["name"]: r["status"] for r in result["runs"]}
    assert {n for n, s in status.items() if s == "skipped"} == set(first)
    assert {n for n, s in status.items() if s == "done"} == set(names) - set(first)
    assert stamps == {name: (out / name / "model.pt").stat().st_mtime_ns for name in first}
    assert sorted(finished()) == sorted(names)
    assert len(result["summary"]) == 2 and all(row["done"] == 2 for row in result["summary"])


@pytest.mark.slow  # starts a second cluster; the default run has the embedded one
def test_a_sweep_sent_to_a_running_cluster_gives_each_run_its_share_of_the_cores(tmp_path):
    import logging

    from distributed import LocalCluster

    path = write(tmp_path / "s.toml", TINY.replace('algo = ["bp", "danp"]', 'algo = ["bp"]'))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        result = run_sweep(load_sweep(path), tmp_path / "out", scheduler=cluster.scheduler_address,
                           progress=False, log=None)
    assert [r["status"] for r in result.runs] == ["done", "done"]
    cores = len(os.sched_getaffinity(0))
    for run in result.runs:  # two task slots on this machine: each run gets half its cores
        assert run["summary"]["config"]["threads"] == max(1, cores // 2)
