"""NWB export: ``noisynets export trace.h5 --format nwb`` writes a file that pynwb reads back and
validates, for a rate and a spiking run, and what it holds is the trace file's data exactly:
spike times that put every spike back in its record, time step, sample and unit, activity and
membrane in trial order at their rates, the metrics, the config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from noisynets.cli import main
from noisynets.config import TrainConfig
from noisynets.run import train
from noisynets.traces import TraceReader

pynwb = pytest.importorskip("pynwb")


@pytest.fixture(scope="module")
def rate_trace(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rate")
    train(TrainConfig(epochs=1, hidden=[16], trace_every=10, trace_probe=4, figures=False,
                      threads=1, out=str(out)), progress=False, log=None)
    return out / "trace.h5"


@pytest.fixture(scope="module")
def spiking_trace(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lif")
    train(TrainConfig(epochs=1, hidden=[24], trace_every=10, trace_probe=5, unit="lif",
                      time_steps=3, noise_std=0.1, trace_units=10, figures=False, threads=1,
                      out=str(out)), progress=False, log=None)
    return out / "trace.h5"


def export(trace: Path, out: Path, capsys, *extra: str) -> Path:
    assert main(["export", str(trace), "--format", "nwb", "-o", str(out), *extra]) == 0
    assert "nwb export written to" in capsys.readouterr().out
    return out


@pytest.mark.parametrize("which", ["rate_trace", "spiking_trace"])
def test_the_file_reads_back_and_validates(which, request, tmp_path, capsys):
    trace = request.getfixturevalue(which)
    out = export(trace, tmp_path / "run.nwb", capsys)
    assert pynwb.validate(path=str(out)) == []
    reader = TraceReader(trace)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        notes = json.loads(nwb.notes)
        assert notes["config"] == reader.config and notes["seed"] == reader.config["seed"]
        assert "layer 1" in nwb.experiment_description
        assert reader.config["algo"] in nwb.session_description
        metrics = nwb.processing["training"]["metrics"].to_dataframe()
        for name, values in reader.metrics().items():
            np.testing.assert_array_equal(metrics[name].to_numpy(), values)
        layers = nwb.processing["network"]["layers"].to_dataframe()
        assert list(layers["layer"]) == reader.layers
        assert (nwb.units is not None) == (which == "spiking_trace")


def test_trials_activity_and_membrane_are_in_trial_order_at_their_rates(spiking_trace, tmp_path,
                                                                        capsys):
    """Trial j = r * probe + p spans [j T dt, (j+1) T dt); activity row j is record r's sample
    p (rate 1 / (T dt)), membrane row j T + t its time step t (rate 1 / dt)."""
    dt = 2e-3
    out = export(spiking_trace, tmp_path / "run.nwb", capsys, "--dt", str(dt))
    reader = TraceReader(spiking_trace)
    steps, probe = reader.steps(), reader.probe_index()
    T, P = 3, len(probe)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        trials = nwb.trials.to_dataframe()
        j = np.arange(len(steps) * P)
        np.testing.assert_allclose(trials["start_time"], j * T * dt, rtol=1e-12)
        np.testing.assert_allclose(trials["stop_time"], (j + 1) * T * dt, rtol=1e-12)
        np.testing.assert_array_equal(trials["step"], np.repeat(steps, P))
        np.testing.assert_array_equal(trials["sample"], np.tile(probe, len(steps)))
        network = nwb.processing["network"]
        for which, label in (("clean", "reference"), ("noisy", "noisy")):
            activity = network[f"layer_2_activity_{label}"]
            assert activity.rate == pytest.approx(1 / (T * dt)) and activity.unit == "a.u."
            a = reader.activity(2, which)  # (records, probe, units)
            for r, p in [(0, 0), (1, 3), (len(steps) - 1, P - 1)]:
                np.testing.assert_array_equal(activity.data[r * P + p], a[r, p])
            membrane = network[f"layer_1_membrane_{label}"]
            assert membrane.rate == pytest.approx(1 / dt)
            v = reader.membrane(1, which)  # (records, time, probe, units)
            for r, t, p in [(0, 0, 0), (0, 2, 1), (1, 1, 4), (len(steps) - 1, 2, P - 1)]:
                np.testing.assert_array_equal(membrane.data[(r * P + p) * T + t], v[r, t, p])


def test_spike_times_put_every_spike_back_in_its_record_step_sample_and_unit(
        spiking_trace, tmp_path, capsys):
    """Per traced unit and pass, a Units row whose spike times, read as (trial, time step) on
    the file's clock, rebuild the trace file's spike array exactly."""
    dt = 1e-3
    out = export(spiking_trace, tmp_path / "run.nwb", capsys)
    reader = TraceReader(spiking_trace)
    index = reader.unit_index(1)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        units = io.read().units.to_dataframe()
        assert len(units) == 2 * len(index)
        for which, label in (("clean", "reference"), ("noisy", "noisy")):
            spikes = reader.spikes(1, which)  # (records, time, probe, units)
            records, T, P, _ = spikes.shape
            rebuilt = np.zeros_like(spikes)
            rows = units[(units["pass"] == label) & (units["layer"] == 1)]
            assert list(rows["unit"]) == list(index)
            for column, times in enumerate(rows["spike_times"]):
                slot = np.rint(np.asarray(times) / dt).astype(int)
                trial, t = np.divmod(slot, T)
                r, p = np.divmod(trial, P)
                rebuilt[r, t, p, column] = 1
            assert spikes.sum() > 0
            np.testing.assert_array_equal(rebuilt, spikes)


def test_without_pynwb_the_export_names_the_extra(rate_trace, tmp_path, monkeypatch, cli_fails):
    monkeypatch.setitem(sys.modules, "pynwb", None)
    cli_fails(["export", str(rate_trace), "--format", "nwb", "-o", str(tmp_path / "x.nwb")],
              "noisynets[nwb]")
    assert not (tmp_path / "x.nwb").exists()
