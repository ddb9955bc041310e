"""Every simulation runs in its --quick form: its sweeps finish and its figure is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SIMULATIONS = Path(__file__).parent.parent / "simulations"


def simulate(name: str, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SIMULATIONS / f"{name}.py"), "--quick", "--out", str(out),
               "--no-progress"]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_rules_then_alignment_which_reuses_its_runs(tmp_path):
    simulate("rules", tmp_path)
    sweep = json.loads((tmp_path / "rules" / "sweep.json").read_text())
    assert sorted({r["values"]["algo"] for r in sweep["runs"]}) == sorted(
        ["bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp"])
    assert all(r["status"] == "done" for r in sweep["runs"])
    assert is_png(tmp_path / "rules.png")
    proc = simulate("alignment", tmp_path)
    assert "16 finished already, 0 to run" in proc.stdout  # the same sweep: nothing runs again
    assert is_png(tmp_path / "alignment.png")


@pytest.mark.parametrize("name, sweeps", [
    ("noisy_hardware", ["noise_types", "noise_levels"]),
    ("spiking", ["lif_mlp", "lif_conv", "heaviside_mlp"]),
    ("scaling", ["depth", "width", "noise_samples"]),
    ("conv", ["conv"]),
    ("device_noise", ["node_noise", "weight_noise", "adc_bits"]),
    ("spiking_readout", [f"{model}_{run}" for model in ("tutorial", "readout")
                         for run in ("danp", "danp_k4_lr1e-3", "danp_k1", "dbp")]),
    ("comparison", ["dense_lr", "dense_bp", "dense_danp", "dense_dfa"]),
])
def test_a_simulation_runs_its_sweeps_and_draws_its_figure(tmp_path, name, sweeps):
    simulate(name, tmp_path)
    for sweep in sweeps:
        result = json.loads((tmp_path / sweep / "sweep.json").read_text())
        assert result["runs"] and all(r["status"] == "done" for r in result["runs"])
    assert is_png(tmp_path / f"{name}.png")


def test_estimator_statistics_quick_prints_every_rule():
    proc = subprocess.run([sys.executable, str(SIMULATIONS / "estimator_statistics.py"),
                           "--quick"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["np", "inp", "anp"]
    inp_mean_cosines = [float(v) for v in rows[1][1:5]]
    assert min(inp_mean_cosines) > 0.9  # INP's mean estimate is the gradient


def test_estimator_quality_quick_measures_every_method_on_the_three_networks(tmp_path):
    """The cosines lie in [-1, 1], one per layer; K = 4 passes beat one pass in the readout
    of the dense network (the mean over 3 batches), and the figure is drawn."""
    proc = subprocess.run([sys.executable, str(SIMULATIONS / "estimator_quality.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads((tmp_path / "estimator_quality.json").read_text())["cosines"]
    assert list(found) == ["dense 128x3", "conv", "conv LIF"]
    for network, layers in [("dense 128x3", 4), ("conv", 3), ("conv LIF", 3)]:
        for method, batches in found[network].items():
            assert len(batches) == 3 and all(len(c) == layers for c in batches), method
            assert all(-1 <= v <= 1 for c in batches for v in c), method
    readout = {m: sum(c[-1] for c in b) / 3 for m, b in found["dense 128x3"].items()}
    assert readout["DANP K=4"] > readout["DANP"]
    assert is_png(tmp_path / "estimator_quality.png")


def test_delayed_xor_quick_prints_the_accuracy_after_every_epoch():
    """The recurrent layer with per-step products, the README's command for this task."""
    proc = subprocess.run([sys.executable, str(SIMULATIONS / "delayed_xor.py"), "--quick",
                           "--algo", "danp", "--recurrent", "--per-step"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracies = [float(a) for a in proc.stdout.split()]
    assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies), proc.stdout


def test_bptt_memory_quick_measures_both_rules_under_a_cap(tmp_path):
    """Every probe ran in a capped process and reported its peak; BPTT's line has a positive
    slope; DANP trained at the checked T and was tested before and after."""
    simulate("bptt_memory", tmp_path)
    result = json.loads((tmp_path / "bptt_memory.json").read_text())
    assert {p["rule"] for p in result["probes"]} == {"dbp", "danp"}
    assert all(p["failed"] is None and p["peak_mib"] >= 0 for p in result["probes"])
    assert result["bptt_fit"]["slope_mib_per_step"] > 0
    danp = result["danp_at_T_star"]
    assert danp["failed"] is None and len(danp["test_accuracy"]) == 2
    assert is_png(tmp_path / "bptt_memory.png")
