"""What the install and the test suite promise: dask, tensorboard and pynwb are extras (each
named in a one-line error when missing, all in ``dev`` for CI), a refused run leaves no folder
behind, and the old name ``noisynets.data.Dataset`` still works, with a warning."""

from __future__ import annotations

import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from noisynets.config import TrainConfig
from noisynets.run import train

ROOT = Path(__file__).resolve().parent.parent


def test_the_optional_packages_are_extras_and_ci_installs_them_all():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith(("dask", "distributed", "tensorboard", "pynwb"))
                   for d in project["dependencies"])
    extras = project["optional-dependencies"]
    for extra, package in (("sweep", "dask"), ("tensorboard", "tensorboard"), ("nwb", "pynwb")):
        assert any(d.startswith(package) for d in extras[extra]), extra
        assert any(d.startswith(package) for d in extras["dev"]), extra


def test_a_sweep_on_dask_without_dask_names_the_extra(monkeypatch, tmp_path):
    from noisynets.sweep import _on_dask

    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ValueError, match=r"noisynets\[sweep\]") as e:
        _on_dask([], tmp_path, 2, None, lambda run, record: None)
    assert "\n" not in str(e.value)


def test_tensorboard_without_tensorboard_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ValueError, match=r"noisynets\[tensorboard\]"):
        train(TrainConfig(hidden=[8], epochs=1, trace_every=0, figures=False, tensorboard=True,
                          out=str(tmp_path / "run")), progress=False, log=None)
    assert not (tmp_path / "run").exists()  # refused: no folder left


def test_a_refused_run_leaves_no_folder_behind(monkeypatch, tmp_path):
    """A run refused after its folder was named (here: no data files) removes the folder it
    made, and ./runs with it when that is empty: the working tree stays clean."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="data-root"):
        train(TrainConfig(dataset="fashion-mnist", data_root=str(tmp_path / "none")),
              progress=False, log=None)
    assert list(tmp_path.iterdir()) == []


def test_the_old_name_of_the_data_splits_still_works_with_a_warning():
    import noisynets.data as data

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert data.Dataset is data.DataSplits
    assert any(issubclass(w.category, DeprecationWarning) and "DataSplits" in str(w.message)
               for w in caught)


def test_the_header_of_a_data_parallel_run_says_how_many_processes():
    from types import SimpleNamespace

    import torch

    from noisynets.config import resolve
    from noisynets.run import header

    state = SimpleNamespace(config=resolve(TrainConfig()), out=Path("runs/x"))
    two = header(state, "[64, 10]", torch.device("cpu"), SimpleNamespace(size=2))
    assert "2 processes (data-parallel)" in two
    assert "processes" not in header(state, "[64, 10]", torch.device("cpu"), None)


def test_stdout_is_flushed_line_by_line_when_redirected(monkeypatch, tmp_path):
    """The CLI sets a redirected stdout line-buffered: the table arrives line by line, not in
    bursts."""
    import io

    from noisynets.cli import main

    stream = io.TextIOWrapper(io.BytesIO(), write_through=False)
    monkeypatch.setattr(sys, "stdout", stream)
    main(["inspect", str(tmp_path / "none.h5")])
    assert stream.line_buffering
