"""Shared fixtures: small float64 networks and a fixed batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from noisynets import Network


@pytest.fixture
def small_net() -> Network:
    """The 10-20-20-20-5 leaky-ReLU network of docs/algorithms.md, in float64, noise 1e-4."""
    return Network([10, 20, 20, 20, 5], noise_std=1e-4, seed=0).double()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (32,), generator=g)
    return x, y


@pytest.fixture
def cli_fails(capsys):
    """Run ``noisynets ARGV`` in-process and check it fails as a user mistake must: exit
    status 2 and one line ``noisynets: error: ...`` holding every one of ``words``."""
    from noisynets.cli import main

    def fails(argv: list[str], *words: str) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("noisynets: error: ")
        assert "Traceback" not in err
        for word in words:
            assert word in lines[0], (word, lines[0])
        return lines[0]

    return fails


@pytest.fixture
def killed_run():
    """``kill(args, out)``: ``noisynets train *args --out out`` in a subprocess, killed (SIGKILL)
    wherever it is once its second epoch's checkpoint exists; returns its return code."""
    def kill(args: list[str], out: Path) -> int:
        proc = subprocess.Popen([sys.executable, "-m", "noisynets.cli", "train", *args,
                                 "--out", str(out), "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while True:  # until the second checkpoint, then kill it wherever it is
                assert proc.poll() is None, proc.stderr.read().decode()
                try:
                    epochs = json.loads((out / "results.json").read_text())["epochs"]
                except (OSError, ValueError, KeyError):
                    epochs = 0
                if epochs >= 2 and (out / "checkpoint.pt").exists():
                    break
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
        return proc.returncode
    return kill


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, unmounted afterwards; skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8): the full-disk tests "
                    "cannot make a disk to fill")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
