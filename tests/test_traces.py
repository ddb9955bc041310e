"""Trace files: they survive SIGKILL, can be read while the run writes them, hold exactly the
documented datasets, keep the writer's memory flat, and `inspect`/`plot`/`export` read them
(and fail with one line on a bad file or output)."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from noisynets import Record
from noisynets.cli import main
from noisynets.config import TrainConfig
from noisynets.export import export_csv, export_npz
from noisynets.run import train
from noisynets.traces import SCHEMA, TraceReader, TraceWriter

DOCS = Path(__file__).resolve().parents[1] / "docs" / "traces.md"
PER_RECORD = [path for path, shape, _, _ in SCHEMA if shape.startswith("(records")]
RUN = [sys.executable, "-m", "noisynets.cli", "train", "--trace-every", "1", "--epochs", "30",
       "--hidden", "64", "--no-progress"]


# --- helpers --------------------------------------------------------------------------------

def run_cli(capsys, argv: list[str]) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def start_run(out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([*RUN, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)


def wait_for_records(proc: subprocess.Popen, path: Path, count: int, limit: float = 90) -> None:
    """Until ``path`` holds ``count`` complete records (the run must still be going)."""
    deadline = time.monotonic() + limit
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before it wrote {count} "
                        f"records: {proc.stderr.read().decode()[-2000:]}")
        if path.exists():
            try:
                if TraceReader(path).num_records >= count:
                    return
            except (ValueError, KeyError):
                pass  # the writer is still creating the file
        assert time.monotonic() < deadline, f"no {count} records in {limit} s"
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    proc.stderr.close()


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def docs_table() -> list[tuple[str, str, str, str]]:
    """The dataset table of docs/traces.md: (path, shape, dtype, present) per row."""
    rows = []
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`/[^`]+`", cells[0]):
            rows.append((cells[0].strip("`"), cells[1], cells[2], cells[3]))
    return rows


def docs_metric_names(layers: list[int]) -> set[str]:
    """The metric names of docs/traces.md's "Metrics" section, ``<k>`` expanded."""
    section = DOCS.read_text().split("### Metrics", 1)[1].split("\n## ", 1)[0]
    names = set()
    for token in re.findall(r"`([a-z_<>]+)`", section):
        names |= {token.replace("<k>", str(k)) for k in layers} if "<k>" in token else {token}
    return names


def documented_datasets(path: Path) -> set[str]:
    """The datasets docs/traces.md says the file must hold, given its layers and config."""
    reader = TraceReader(path)
    spiking = [k for k in reader.layers if reader.spiking(k)]
    asked = bool(reader.config.get("spike_events"))
    every_layer = {int(name.rsplit("_", 1)[1]) for name in reader.metrics()
                   if name.startswith("alignment_layer_")}
    layers_for = {"always": [None], "traced layers": reader.layers, "spiking layers": spiking,
                  "spiking layers, if asked": spiking if asked else []}
    expected = set()
    for pattern, _, _, present in docs_table():
        for k in layers_for[present]:
            name = pattern if k is None else pattern.replace("<k>", str(k))
            if "<name>" in name:
                expected |= {name.replace("<name>", m) for m in docs_metric_names(every_layer)}
            else:
                expected.add(name)
    return expected


def fake_record(g: torch.Generator, probe: int, time_steps: int) -> Record:
    """A Record of a [20, 24, 10] network whose first layer spikes."""
    return Record(
        inputs=[torch.randn(probe, 20, generator=g), torch.randn(probe, 24, generator=g)],
        activity=[torch.randn(2, probe, 24, generator=g), torch.randn(2, probe, 10, generator=g)],
        loss=torch.rand(2, probe, generator=g),
        time_steps=time_steps,
        outputs=[(torch.rand(time_steps, 2, probe, 24, generator=g) > 0.7).float(),
                 torch.randn(time_steps, 2, probe, 10, generator=g)],
        membrane=[torch.randn(time_steps, 2, probe, 24, generator=g), None],
    )


@pytest.fixture(scope="module")
def rate_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rate")
    train(TrainConfig(epochs=2, hidden=[32], trace_every=5, out=str(out)), progress=False,
          log=None)
    return out / "trace.h5"


@pytest.fixture(scope="module")
def spiking_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lif")
    train(TrainConfig(epochs=1, hidden=[32], trace_every=5, unit="lif", time_steps=3,
                      noise_std=0.1, spike_events=True, out=str(out)), progress=False, log=None)
    return out / "trace.h5"


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory) -> Path:
    """The spiking convolutional preset: feature maps (16x8x8, 32x4x4) traced by channel."""
    out = tmp_path_factory.mktemp("conv")
    train(TrainConfig(arch="conv", unit="lif", epochs=1, time_steps=2, trace_every=5,
                      trace_units=100, out=str(out)), progress=False, log=None)
    return out / "trace.h5"


# --- a run killed, a run read while it writes -------------------------------------------------

def killed_run(folder: Path, delay: float) -> Path:
    """A run that writes a record every step (and the lif layer's spike events), killed
    with SIGKILL ``delay`` seconds after its third record: wherever it was, writes included."""
    path = folder / "trace.h5"
    proc = start_run(folder)
    try:
        wait_for_records(proc, path, 3)
        time.sleep(delay)
        assert proc.poll() is None, f"the run finished within {delay:.2f} s: nothing to kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    return path


def assert_whole(path: Path, capsys) -> int:
    """Plain h5py opens the file; every counted record is complete; the CLI reads it."""
    with h5py.File(path, "r") as f:  # plain h5py, file locking on: the file is whole
        n = int(f["count/records"][0])
        steps = f["traces/step"][:n]
        rows = {name: f[name].shape[0] for name in
                {p.replace("<k>", str(k)) for p in PER_RECORD for k in (1, 2)} if name in f}
        for name in rows:
            f[name][:n]  # every counted row reads
    assert n >= 3
    assert not {name: r for name, r in rows.items() if r < n}
    np.testing.assert_array_equal(steps, np.arange(n))
    out = run_cli(capsys, ["inspect", str(path)])
    assert re.search(rf"^records\s+{n}\b", out, re.M), out
    reader = TraceReader(path)
    assert reader.activity(1, "clean").shape[0] == reader.num_records == n
    return n


def test_sigkill_leaves_a_readable_file_of_complete_records(tmp_path, capsys):
    path = killed_run(tmp_path / "run", random.uniform(0.2, 1.5))
    assert_whole(path, capsys)
    run_cli(capsys, ["plot", str(path)])
    assert path.with_suffix(".png").stat().st_size > 20_000


@pytest.mark.slow
def test_runs_killed_at_many_moments_leave_every_complete_record_readable(tmp_path, capsys):
    """40 kills spread over a record's writing (a record every few ms): the file is whole
    every time, mid-write or not."""
    for k in range(40):
        assert_whole(killed_run(tmp_path / f"run{k}", k * 0.0137), capsys)


def test_a_reader_sees_the_records_grow_while_the_run_writes(tmp_path):
    path = tmp_path / "run" / "trace.h5"
    proc = start_run(tmp_path / "run")
    counts: list[int] = []
    try:
        wait_for_records(proc, path, 1)
        deadline = time.monotonic() + 60
        while len(set(counts)) < 5 and proc.poll() is None and time.monotonic() < deadline:
            reader = TraceReader(path)
            n = reader.num_records
            activity = reader.activity(1, "noisy")
            assert activity.shape[0] >= n and activity.shape[1:] == (16, 64)
            assert reader.steps()[-1] >= n - 1
            counts.append(n)
            time.sleep(0.02)
    finally:
        stop(proc)
    assert counts == sorted(counts), counts
    assert len(set(counts)) >= 5, f"the record count did not grow: {counts}"


# --- the schema -----------------------------------------------------------------------------

def test_the_docs_table_is_the_schema():
    assert docs_table() == [tuple(row) for row in SCHEMA]


@pytest.mark.parametrize("run", ["rate_run", "spiking_run", "conv_run"])
def test_a_run_file_holds_exactly_the_documented_datasets(run, request):
    path = request.getfixturevalue(run)
    found = set(TraceReader(path).datasets())
    expected = documented_datasets(path)
    assert found - expected == set(), "datasets in the file that docs/traces.md does not list"
    assert expected - found == set(), "datasets docs/traces.md lists that the file lacks"
    if run == "spiking_run":
        assert "/traces/layer_1/spike_events" in found
        assert "/traces/layer_2/spikes" not in found  # the output layer does not spike


def test_feature_maps_are_traced_by_whole_channels_with_their_shape(conv_run, capsys):
    """Layer 1 (16x8x8) keeps 100 // 64 = 1 channel, layer 2 (32x4x4) 6 of 32 channels."""
    reader = TraceReader(conv_run)
    attrs = reader.attributes()
    assert list(attrs["/traces/layer_1"]["shape"]) == [16, 8, 8]
    assert list(attrs["/traces/layer_1"]["input_shape"]) == [1, 8, 8]
    assert list(attrs["/traces/layer_2"]["shape"]) == [32, 4, 4]
    assert list(attrs["/traces/layer_2"]["input_shape"]) == [16, 4, 4]
    for k, (size, channels) in {1: (64, 1), 2: (16, 6)}.items():
        index = reader.unit_index(k)
        assert len(index) == size * channels
        chosen = index.reshape(channels, size)
        np.testing.assert_array_equal(chosen - chosen[:, :1], np.tile(np.arange(size),
                                                                       (channels, 1)))
        assert (chosen[:, 0] % size == 0).all()
    assert reader.spiking(1) and reader.spiking(2) and not reader.spiking(3)
    out = run_cli(capsys, ["inspect", str(conv_run)])
    assert "1024 units (16x8x8), 64 inputs (1x8x8)" in out


# --- the writer's memory --------------------------------------------------------------------

@pytest.mark.slow
def test_the_writers_memory_stays_flat_over_2000_records(tmp_path):
    probe, steps = 4, 3
    writer = TraceWriter(tmp_path / "m.h5", [20, 24, 10], [True, False], steps, range(probe),
                         attrs={"seed": 0}, spike_events=True)
    g = torch.Generator().manual_seed(0)
    at_200 = 0
    for i in range(2000):
        writer.append_record(i, fake_record(g, probe, steps))
        if i == 199:
            at_200 = rss_kb()
    growth = rss_kb() - at_200
    assert growth < 4096, f"RSS grew by {growth} kB between record 200 and 2000"
    reader = TraceReader(tmp_path / "m.h5")
    assert reader.num_records == 2000
    assert reader.spikes(1).shape == (2000, steps, probe, 24)


# --- what a run traces ----------------------------------------------------------------------

def test_trace_layers_and_units_choose_what_is_traced(tmp_path, capsys):
    run_cli(capsys, ["train", "--epochs", "1", "--hidden", "32", "32", "--trace-every", "10",
                     "--trace-layers", "2", "--trace-units", "8", "--out", str(tmp_path),
                     "--no-progress"])
    reader = TraceReader(tmp_path / "trace.h5")
    assert reader.layers == [2]
    assert not any("/layer_1/" in p or "/layer_3/" in p for p in reader.datasets())
    assert reader.activity(2).shape[1:] == (16, 8)
    assert reader.input(2).shape[1:] == (16, 8)
    np.testing.assert_array_equal(reader.unit_index(2), np.linspace(0, 31, 8).round())


def test_trace_every_0_writes_no_trace_file(tmp_path, capsys):
    run_cli(capsys, ["train", "--epochs", "1", "--hidden", "16", "--trace-every", "0",
                     "--out", str(tmp_path), "--no-progress"])
    assert (tmp_path / "results.json").exists()
    assert not (tmp_path / "trace.h5").exists()


# --- inspect, plot, export ------------------------------------------------------------------

def test_inspect_prints_the_summary_and_final_metrics(rate_run, capsys):
    out = run_cli(capsys, ["inspect", str(rate_run)])
    reader = TraceReader(rate_run)
    m = reader.metrics()
    assert re.search(rf"^records\s+{reader.num_records} \(steps 0\.\.{reader.steps()[-1]}\)",
                     out, re.M), out
    assert "noisynets-trace, version 2" in out and "probe         16 samples" in out
    assert re.search(r"layer_1 +32 units, 64 inputs; traced 32 units, 64 inputs; not spiking",
                     out), out
    assert re.search(r"/traces/layer_1/activity_clean +\(\d+, 16, 32\) +float32", out), out
    assert f"epoch = {int(m['epoch'][-1])}," in out
    assert f"test_accuracy = {m['test_accuracy'][-1]:.4g}" in out
    row = re.search(r"^  1 +(\S+) +(\S+) +(\S+)$", out, re.M)
    assert row and float(row[1]) == pytest.approx(m["alignment_layer_1"][-1], rel=1e-3)
    assert float(row[2]) == pytest.approx(m["decorrelation_layer_1"][-1], rel=1e-3)


def test_inspect_of_a_spiking_run(spiking_run, capsys):
    out = run_cli(capsys, ["inspect", str(spiking_run)])
    assert re.search(r"layer_1 .*; spiking, spike events", out), out
    assert re.search(r"layer_2 .*; not spiking", out), out
    assert re.search(r"/traces/layer_1/spikes +\(\d+, 3, 16, 32\) +uint8", out), out


def test_inspect_and_plot_a_file_without_records_or_metrics(tmp_path, capsys):
    path = tmp_path / "new.h5"
    TraceWriter(path, [20, 24, 10], [True, False], 3, range(4), attrs={"seed": 1})
    out = run_cli(capsys, ["inspect", str(path)])
    assert re.search(r"^records\s+0\b", out, re.M) and "final metrics: none yet" in out
    run_cli(capsys, ["plot", str(path)])
    assert (tmp_path / "new.png").stat().st_size > 10_000


def test_a_half_written_evaluation_is_left_out(rate_run, tmp_path, capsys):
    path = tmp_path / "half.h5"
    path.write_bytes(rate_run.read_bytes())
    evaluations = TraceReader(rate_run).metrics()["epoch"].shape[0]
    with h5py.File(path, "a") as f:  # as if killed after an evaluation's metrics, uncounted
        f["count/evaluations"][0] = evaluations - 1
        f["metrics/epoch"][evaluations - 1] = 99
    evaluations -= 1
    out = run_cli(capsys, ["inspect", str(path)])
    assert f"the last of {evaluations} evaluations" in out and "epoch = 99" not in out
    run_cli(capsys, ["export", str(path), "--format", "npz", "-o", str(tmp_path / "h.npz")])
    with np.load(tmp_path / "h.npz") as z:
        assert z["metrics__epoch"].shape == z["metrics__test_loss"].shape == (evaluations,)


@pytest.mark.parametrize("run", ["rate_run", "spiking_run", "conv_run"])
def test_plot_writes_the_figure(run, request, tmp_path, capsys):
    path = request.getfixturevalue(run)
    out = tmp_path / "figure.png"
    run_cli(capsys, ["plot", str(path), "-o", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000


def test_plot_writes_beside_the_file_by_default(rate_run, capsys):
    out = run_cli(capsys, ["plot", str(rate_run)])
    figure = rate_run.with_suffix(".png")
    assert str(figure) in out and figure.stat().st_size > 20_000


@pytest.mark.parametrize("run", ["rate_run", "spiking_run"])
def test_export_npz_round_trips_every_dataset(run, request, tmp_path, capsys):
    path = request.getfixturevalue(run)
    out = tmp_path / "t.npz"
    run_cli(capsys, ["export", str(path), "--format", "npz", "-o", str(out)])
    reader = TraceReader(path)
    names = set(reader.datasets())
    counted = reader.arrays()  # the rows that hold data
    with np.load(out) as z, h5py.File(path, "r", locking=False) as f:
        assert set(z.files) == {n.lstrip("/").replace("/", "__") for n in names} | {"attrs"}
        for name in names:
            array = z[name.lstrip("/").replace("/", "__")]
            assert array.dtype == f[name].dtype
            np.testing.assert_array_equal(array, counted[name])
        attrs = json.loads(z["attrs"].item())
    assert attrs["/"]["format"] == "noisynets-trace"
    assert attrs["/"]["config"]["hidden"] == [32]
    assert attrs["/traces/layer_1"]["units"] == 32


def test_export_csv_writes_metrics_and_long_tables(spiking_run, tmp_path, capsys):
    out = tmp_path / "csv"
    run_cli(capsys, ["export", str(spiking_run), "--format", "csv", "-o", str(out)])
    reader = TraceReader(spiking_run)
    metrics = reader.metrics()
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(metrics["epoch"]) == 2  # before training, after epoch 1
    assert set(rows[0]) == set(metrics)
    assert [float(r["test_accuracy"]) for r in rows] == metrics["test_accuracy"].tolist()
    activity = np.loadtxt(out / "layer_1__activity_noisy.csv", delimiter=",", skiprows=1)
    records = reader.num_records
    assert activity.shape == (records * 16 * 32, 4)
    expected = reader.activity(1, "noisy")
    r, s, u = activity[:, :3].astype(int).T
    np.testing.assert_array_equal(activity[:, 3].astype(np.float32), expected[r, s, u])
    spikes = np.loadtxt(out / "layer_1__spikes.csv", delimiter=",", skiprows=1, dtype=np.int64)
    assert spikes.shape == (records * 3 * 16 * 32, 5)
    assert spikes[:, 4].sum() == reader.spikes(1).sum()
    events = np.loadtxt(out / "layer_1__spike_events.csv", delimiter=",", skiprows=1, ndmin=2)
    assert len(events) == reader.spikes(1).sum()
    assert (out / "layer_1__spike_events.csv").read_text().startswith("record,time,sample,unit")
    assert (out / "loss_clean.csv").read_text().startswith("record,sample,value\n")
    assert (out / "layer_2__input.csv").read_text().startswith("record,sample,input,value\n")
    assert (out / "records.csv").read_text().count("\n") == records + 1


def test_export_csv_writes_beside_the_file_by_default(rate_run, capsys):
    run_cli(capsys, ["export", str(rate_run), "--format", "csv"])
    assert (rate_run.parent / "trace_csv" / "metrics.csv").exists()


def test_the_library_exports_a_path_or_a_reader(spiking_run, tmp_path, capsys):
    run_cli(capsys, ["export", str(spiking_run), "--format", "npz", "-o", str(tmp_path / "c.npz")])
    run_cli(capsys, ["export", str(spiking_run), "--format", "csv", "-o", str(tmp_path / "c")])
    assert export_npz(spiking_run, tmp_path / "p.npz") == tmp_path / "p.npz"
    export_npz(TraceReader(spiking_run), tmp_path / "r.npz")
    with np.load(tmp_path / "c.npz") as c, np.load(tmp_path / "p.npz") as a, \
            np.load(tmp_path / "r.npz") as b:
        assert set(a.files) == set(b.files) == set(c.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
    out = export_csv(spiking_run, tmp_path / "new" / "folder")  # the folder is created
    for name in (p.name for p in (tmp_path / "c").iterdir()):
        assert (out / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name


# --- the reader: complete rows, clear errors ------------------------------------------------

def test_the_reader_returns_complete_records_and_evaluations_only(spiking_run, tmp_path):
    whole = TraceReader(spiking_run)
    records, evaluations = whole.num_records, len(whole.metrics()["epoch"])
    path = tmp_path / "half.h5"
    path.write_bytes(spiking_run.read_bytes())
    with h5py.File(path, "a") as f:  # as if killed after writing a record, before counting it
        f["count/records"][0] = records - 1
        f["count/evaluations"][0] = evaluations - 1
    records, evaluations = records - 1, evaluations - 1
    reader = TraceReader(path)
    assert reader.datasets()["/traces/loss_clean"][0] == (records + 1, 16)  # the room
    assert reader.loss("clean").shape == (records, 16)
    assert reader.activity(1, "noisy", -1).shape == (16, 32)
    assert {len(v) for v in reader.metrics().values()} == {evaluations}
    events = reader.read("/traces/layer_1/spike_events")
    assert len(events) and events[:, 0].max() == records - 1  # the uncounted record's: out
    last = reader.read("traces/layer_1/spike_events", records=-1)
    assert len(last) and set(last[:, 0]) == {records - 1}
    arrays = reader.arrays()
    assert set(arrays) == set(reader.datasets())
    assert arrays["/traces/step"].shape == (records,)
    assert arrays["/metrics/epoch"].shape == (evaluations,)
    with pytest.raises(KeyError, match="no dataset"):
        reader.read("/traces/layer_2/spikes")


def test_the_reader_says_what_is_wrong_with_a_file(cli_fails, rate_run, tmp_path):
    (tmp_path / "notes.h5").write_text("not HDF5\n")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(rate_run.read_bytes())
    with h5py.File(broken, "a") as f:
        del f["traces/step"]
    for path, words in [(tmp_path / "nope.h5", "does not exist"), (tmp_path, "is a folder"),
                        (tmp_path / "notes.h5", "not an HDF5 file"),
                        (tmp_path / "other.h5", "not a noisynets trace file"),
                        (broken, "lacks /traces/step")]:
        with pytest.raises(ValueError, match=words):
            TraceReader(path)
    cli_fails(["plot", str(broken)], "not a whole noisynets trace file")


def test_a_crafted_file_whose_layer_is_a_dataset_is_one_line_for_every_command(
        cli_fails, rate_run, tmp_path):
    """inspect, plot and the NWB export met a KeyError (a traceback)."""
    crafted = tmp_path / "crafted.h5"
    crafted.write_bytes(rate_run.read_bytes())
    with h5py.File(crafted, "a") as f:
        del f["traces/layer_1"]
        f["traces/layer_1"] = np.arange(3)
    for command in (["inspect"], ["plot", "-o", str(tmp_path / "p.png")],
                    ["export", "--format", "npz", "-o", str(tmp_path / "e.npz")],
                    ["export", "--format", "csv", "-o", str(tmp_path / "csv")],
                    ["export", "--format", "nwb", "-o", str(tmp_path / "e.nwb")]):
        if command[-1].endswith(".nwb"):
            pytest.importorskip("pynwb")
        cli_fails([command[0], str(crafted), *command[1:]], "/traces/layer_1 is not a group")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.h5"]


# --- mistakes -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["inspect"], ["plot"], ["export", "--format", "npz"]])
def test_a_missing_file_gets_one_line(cli_fails, command, tmp_path):
    cli_fails([command[0], str(tmp_path / "nope.h5"), *command[1:]], "nope.h5",
          "does not exist")


def test_a_file_that_is_not_hdf5_gets_one_line(cli_fails, tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not HDF5\n")
    cli_fails(["inspect", str(path)], "notes.h5", "not an HDF5 file")
    cli_fails(["plot", str(path)], "not an HDF5 file")


def test_an_hdf5_file_that_is_not_a_trace_gets_one_line(cli_fails, tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    cli_fails(["inspect", str(path)], "other.h5", "not a noisynets trace")
    cli_fails(["export", str(path), "--format", "csv"], "not a noisynets trace")


def test_a_folder_instead_of_a_file_gets_one_line(cli_fails, tmp_path):
    cli_fails(["inspect", str(tmp_path)], "is a folder")


def test_an_unknown_export_format_gets_one_line(cli_fails, rate_run):
    cli_fails(["export", str(rate_run), "--format", "xml"], "--format", "xml", "npz")
    cli_fails(["export", str(rate_run)], "--format")


def test_an_unwritable_output_gets_one_line(cli_fails, rate_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cli_fails(["plot", str(rate_run), "-o", str(tmp_path / "no" / "such" / "f.png")],
          "cannot write", "does not exist")
    cli_fails(["plot", str(rate_run), "-o", str(tmp_path)], "is a folder")
    cli_fails(["export", str(rate_run), "--format", "npz", "-o", str(blocker / "t.npz")],
          "cannot write")
    cli_fails(["export", str(rate_run), "--format", "csv", "-o", str(blocker)], "is a file")
    cli_fails(["export", str(rate_run), "--format", "csv", "-o", str(blocker / "csv")],
          "cannot create")
