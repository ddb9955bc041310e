"""The main job: ``noisynets train`` with no arguments (DANP, intrinsic Gaussian noise, digits)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_noisynets_train_with_no_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from noisynets.cli import main; sys.exit(main([]))"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1 and "danp-digits" in folders[0].name
    result = json.loads((folders[0] / "results.json").read_text())
    assert result["algo"] == "danp" and result["dataset"] == "digits"
    assert result["config"]["noise_std"] > 0
    assert result["test_accuracy"] >= 0.85, result["test_accuracy"]
    assert (folders[0] / "learning_curve.png").exists()
    assert "final test accuracy" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(lines) == result["epochs"] + 1  # the per-epoch table, epoch 0 included
