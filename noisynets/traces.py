"""HDF5 trace files: the clean and noisy activity of a fixed probe set, streamed during a run.

Plain datasets and attributes only, so any HDF5 reader opens the file. Layout (``SCHEMA``;
docs/traces.md lists it), with ``<k>`` the layer number 1..L::

    /                               attrs: format, format_version, noisynets_version,
                                    torch_version, created, device, seed, config (JSON text)
    /metrics/<name>                 (evaluations,)    one row per evaluation
    /traces/step                    (records,)        the training step of each record
    /traces/probe_index             (probe,)          the training samples traced
    /traces/loss_clean, loss_noisy  (records, probe)  per-sample loss of each pass
    /traces/layer_<k>/input         (records, probe, inputs)   decorrelated input, clean pass
    /traces/layer_<k>/activity_clean, activity_noisy  (records, probe, units)
    /traces/layer_<k>/spikes, spikes_noisy            (records, time, probe, units) uint8
    /traces/layer_<k>/membrane, membrane_noisy        (records, time, probe, units)
    /traces/layer_<k>/spike_events  (events, 4) int32: record, time, sample, unit (clean pass)
    /traces/layer_<k>/unit_index, input_index         which units / inputs are traced

``spikes``/``membrane`` exist for spiking layers, ``spike_events`` when asked for. Activities and
inputs are summed over the T time steps, as the learning rules see them. Every dataset grows
along its first axis and is chunked; the record datasets are gzip-compressed (the metrics, a few
numbers per evaluation, are not); the writer opens the file, appends one
record or one row of metrics, flushes and closes it again, so a run that dies (even by SIGKILL)
leaves a file that holds everything written before, and a reader can open it while the run goes
on. Nothing accumulates in memory.

``TraceWriter`` writes a file; ``TraceReader`` reads one, also while its run writes it (it
retries a read that meets a half-written record and returns complete records and evaluations
only), and ``TraceReader.describe`` is the text of ``noisynets inspect``. ``noisynets.export``
and ``noisynets.plots`` read through ``TraceReader``.

Read it without noisynets::

    import h5py
    with h5py.File("runs/<run>/trace.h5", "r") as f:
        activity = f["traces/layer_1/activity_clean"][:]   # (records, probe, units)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np
import torch

from noisynets.core.record import Record
from noisynets.files import reserve, temporary, why

FORMAT = "noisynets-trace"
FORMAT_VERSION = 2  # 1: resizable datasets, counted by their length (read, never written)
READABLE_VERSIONS = (1, 2)

# Every dataset a trace file can hold: (path, shape, dtype, when it is there).
SCHEMA: tuple[tuple[str, str, str, str], ...] = (
    ("/metrics/<name>", "(evaluations,)", "float64", "always"),
    ("/traces/step", "(records,)", "int64", "always"),
    ("/traces/probe_index", "(probe,)", "int64", "always"),
    ("/traces/loss_clean", "(records, probe)", "float32", "always"),
    ("/traces/loss_noisy", "(records, probe)", "float32", "always"),
    ("/traces/layer_<k>/input", "(records, probe, inputs)", "float32", "traced layers"),
    ("/traces/layer_<k>/input_index", "(inputs,)", "int64", "traced layers"),
    ("/traces/layer_<k>/activity_clean", "(records, probe, units)", "float32", "traced layers"),
    ("/traces/layer_<k>/activity_noisy", "(records, probe, units)", "float32", "traced layers"),
    ("/traces/layer_<k>/unit_index", "(units,)", "int64", "traced layers"),
    ("/traces/layer_<k>/spikes", "(records, time, probe, units)", "uint8", "spiking layers"),
    ("/traces/layer_<k>/spikes_noisy", "(records, time, probe, units)", "uint8",
     "spiking layers"),
    ("/traces/layer_<k>/membrane", "(records, time, probe, units)", "float32", "spiking layers"),
    ("/traces/layer_<k>/membrane_noisy", "(records, time, probe, units)", "float32",
     "spiking layers"),
    ("/traces/layer_<k>/spike_events", "(events, 4)", "int32", "spiking layers, if asked"),
    ("/traces/layer_<k>/spike_event_count", "(1,)", "int64", "spiking layers, if asked"),
    ("/count/records", "(1,)", "int64", "always"),
    ("/count/evaluations", "(1,)", "int64", "always"),
)

# Room for HDF5's metadata (headers, attributes, the config text) beyond the datasets.
_METADATA_ROOM = 1 << 20

# A read that meets a half-written file is tried this often, this many seconds apart.
_READ_TRIES = 40
_READ_PAUSE = 0.05
_T = TypeVar("_T")


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """Open a trace file without HDF5's file lock, so a reader and the run's writer coexist."""
    return h5py.File(path, mode, locking=False)


def spread(count: int, limit: int | None, shape: Sequence[int] | None = None) -> np.ndarray:
    """``limit`` indices spread evenly over ``range(count)`` (all of them if None or 0).

    For a feature map (``shape = (C, H, W)``) whole channels are kept, spread evenly over the
    channels, as many as ``limit`` allows (at least one): a traced map stays a map.
    """
    if not limit or limit >= count:
        return np.arange(count)
    if shape is not None and len(shape) == 3:
        channels, size = int(shape[0]), int(shape[1]) * int(shape[2])
        kept = spread(channels, max(1, limit // size))
        return (kept[:, None] * size + np.arange(size)[None, :]).ravel()
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


class TraceWriter:
    """Streams metrics and probe records of one run into an HDF5 file that survives any kill.

    Every dataset is allocated in full when the file is made (``records`` records,
    ``evaluations`` evaluations, contiguous, uncompressed), and the counts of complete records
    and evaluations live in ``/count``. An append writes into space that already exists --
    raw data only, no HDF5 metadata changes -- and raises its count last, so a run killed at any
    moment, mid-write included, leaves a file whose structure is whole and whose counted
    records are complete; a reader reads the counted rows only. The file is made under a
    temporary name, its every block reserved on disk (``posix_fallocate``: HDF5 leaves the
    early-allocated space sparse, and a write into a hole on a full disk fails inside HDF5's
    cache, whose later flushes fail again at every close and finally crash the process), then
    renamed into place: a full disk shows when the file is made, with one line, never in the
    middle of a run. After any failed write the writer stops and never opens the file again.

    Args:
        path: the file (created; an existing one is replaced).
        sizes: the network's ``[d_0, n_1, ..., n_L]`` (its input size, then every layer's
            node count), or the node counts ``[n_1, ..., n_L]`` alone when ``inputs`` is given.
        spiking: per layer, whether it emits spikes (LIF hidden layers).
        time_steps: T.
        probe_index: the training samples traced.
        attrs: file attributes (``config`` may be a dict: it is stored as JSON text).
        layers: the layer numbers (1..L) to trace; all by default.
        units: the most units (and inputs) traced per layer, spread evenly; 0 or None: all.
            A feature map keeps whole channels.
        spike_events: also store spikes as an event list (record, time, sample, unit).
        inputs: per layer the size of its (flattened) input, where it is not the node count
            of the layer before (a convolutional network, pooling in between).
        shapes: per layer ``(input_shape, node_shape)`` of one sample, stored as the layer's
            attributes ``input_shape`` and ``shape``; default the flat sizes.
        records, evaluations: how many the file holds room for (a run knows: one record per
            ``trace_every`` steps and step 0, one evaluation per epoch and epoch 0).
        metrics: the names of the metrics of an evaluation (``metric_names``).
    """

    def __init__(
        self,
        path: str | Path,
        sizes: Sequence[int],
        spiking: Sequence[bool],
        time_steps: int,
        probe_index: Sequence[int],
        attrs: dict[str, Any],
        layers: Sequence[int] | None = None,
        units: int | None = None,
        spike_events: bool = False,
        inputs: Sequence[int] | None = None,
        shapes: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
        records: int = 1000,
        evaluations: int = 1000,
        metrics: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        if inputs is None:
            inputs, sizes = list(sizes[:-1]), list(sizes[1:])
        num_layers = len(sizes)
        if shapes is None:
            shapes = [((i,), (n,)) for i, n in zip(inputs, sizes)]
        self.layers = list(range(1, num_layers + 1)) if layers is None else sorted(set(layers))
        bad = [k for k in self.layers if not 1 <= k <= num_layers]
        if bad:
            raise ValueError(f"trace layers {bad} out of range: the network has layers "
                             f"1..{num_layers}")
        self.time_steps = int(time_steps)
        self.spiking = list(spiking)
        self.spike_events = spike_events
        self.unit_index = {k: spread(sizes[k - 1], units, shapes[k - 1][1]) for k in self.layers}
        self.input_index = {k: spread(inputs[k - 1], units, shapes[k - 1][0])
                            for k in self.layers}
        self.records = self.evaluations = 0
        self.capacity = int(records)
        self.metrics = list(metrics)
        self.events = {k: 0 for k in self.layers}
        probe = np.asarray(probe_index, dtype=np.int64)
        self.probe = len(probe)
        self.broken = False
        tmp = temporary(self.path)
        need = self._planned_bytes(int(evaluations)) + _METADATA_ROOM
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = need  # the open below says what is wrong with the place
        if free < need:  # HDF5's own metadata writes must never meet a full disk either
            raise ValueError(f"cannot write trace file {str(self.path)!r}: No space left on "
                             f"device (it needs {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB "
                             "are free; trace less with --trace-every, --trace-units or "
                             "--trace-probe)")
        try:
            with h5py.File(tmp, "w", locking=False) as f:
                for key, value in attrs.items():
                    if isinstance(value, dict):
                        value = json.dumps(value)
                    f.attrs[key] = str(value) if isinstance(value, str) else value
                f.attrs["format"] = FORMAT
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs.setdefault("created", datetime.now(UTC).isoformat())
                count = f.create_group("count")
                _fixed(count, "records", (1,), np.int64)
                _fixed(count, "evaluations", (1,), np.int64)
                count["records"][0] = count["evaluations"][0] = 0
                group = f.create_group("metrics")
                for name in self.metrics:
                    _fixed(group, name, (int(evaluations),), np.float64)
                traces = f.create_group("traces")
                traces.create_dataset("probe_index", data=probe)
                n = self.capacity
                _fixed(traces, "step", (n,), np.int64)
                _fixed(traces, "loss_clean", (n, self.probe), np.float32)
                _fixed(traces, "loss_noisy", (n, self.probe), np.float32)
                for k in self.layers:
                    self._layer(traces, k, sizes[k - 1], inputs[k - 1], shapes[k - 1])
            reserve(tmp)  # every block on disk now: no append can meet a full disk
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as e:
            size = _size(tmp)
            tmp.unlink(missing_ok=True)
            raise ValueError(f"cannot write trace file {str(self.path)!r}: {why(e)}"
                             + (f" (it needs {size / 2**20:.1f} MiB; trace less with "
                                "--trace-every, --trace-units or --trace-probe)"
                                if size else "")) from None

    def _planned_bytes(self, evaluations: int) -> int:
        """The bytes of every dataset the file will hold (``_fixed`` allocates them)."""
        n, p = self.capacity, self.probe
        total = 8 * (len(self.metrics) * evaluations + n + p + 2) + 2 * 4 * n * p
        for k in self.layers:
            units, inputs = len(self.unit_index[k]), len(self.input_index[k])
            total += 8 * (units + inputs) + 4 * n * p * (inputs + 2 * units)
            if self.spiking[k - 1]:
                slots = n * self.time_steps * p * units
                total += slots * (2 + 2 * 4) + (16 * slots + 8 if self.spike_events else 0)
        return total

    def _layer(self, traces: h5py.Group, k: int, size: int, inputs: int,
               shapes: tuple[Sequence[int], Sequence[int]]) -> None:
        g = traces.create_group(f"layer_{k}")
        g.attrs["units"] = size
        g.attrs["inputs"] = inputs
        g.attrs["input_shape"] = np.asarray(shapes[0], dtype=np.int64)
        g.attrs["shape"] = np.asarray(shapes[1], dtype=np.int64)
        g.attrs["spiking"] = bool(self.spiking[k - 1])
        g.create_dataset("unit_index", data=self.unit_index[k])
        g.create_dataset("input_index", data=self.input_index[k])
        units, traced_inputs, n = len(self.unit_index[k]), len(self.input_index[k]), self.capacity
        _fixed(g, "input", (n, self.probe, traced_inputs), np.float32)
        _fixed(g, "activity_clean", (n, self.probe, units), np.float32)
        _fixed(g, "activity_noisy", (n, self.probe, units), np.float32)
        if self.spiking[k - 1]:
            shape = (n, self.time_steps, self.probe, units)
            _fixed(g, "spikes", shape, np.uint8)
            _fixed(g, "spikes_noisy", shape, np.uint8)
            _fixed(g, "membrane", shape, np.float32)
            _fixed(g, "membrane_noisy", shape, np.float32)
            if self.spike_events:  # room for every slot to spike
                _fixed(g, "spike_events", (n * self.time_steps * self.probe * units, 4),
                       np.int32)
                _fixed(g, "spike_event_count", (1,), np.int64)
                g["spike_event_count"][0] = 0

    @classmethod
    def resume(cls, path: str | Path, records: int, evaluations: int) -> TraceWriter:
        """The writer of an existing file, its counts set back to ``records`` records and
        ``evaluations`` evaluations (a run continued from a checkpoint writes again what came
        after): nothing duplicated, nothing missing."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self.broken = False
        if self.path.is_symlink():
            raise ValueError(f"cannot continue trace file {str(self.path)!r}: it is a symbolic "
                             "link, and a run folder's files must be its own")
        try:
            with h5py.File(self.path, "r+", locking=False) as f:
                if f.attrs.get("format_version") != FORMAT_VERSION or "count" not in f:
                    raise ValueError("it is not of this noisynets' format")
                traces = f["traces"]
                self.layers = sorted(int(name.split("_")[1]) for name in traces
                                     if name.startswith("layer_"))
                flags = {k: bool(traces[f"layer_{k}"].attrs["spiking"]) for k in self.layers}
                self.spiking = [flags.get(k, False) for k in range(1, max(flags, default=0) + 1)]
                spikes = [traces[f"layer_{k}/spikes"] for k in self.layers if flags[k]]
                self.time_steps = int(spikes[0].shape[1]) if spikes else 1
                self.spike_events = any(f"layer_{k}/spike_events" in traces for k in self.layers)
                self.unit_index = {k: traces[f"layer_{k}/unit_index"][:] for k in self.layers}
                self.input_index = {k: traces[f"layer_{k}/input_index"][:] for k in self.layers}
                self.probe = int(traces["probe_index"].shape[0])
                self.capacity = int(traces["step"].shape[0])
                self.metrics = list(f["metrics"])
                if int(f["count/records"][0]) < records or \
                        int(f["count/evaluations"][0]) < evaluations:
                    raise ValueError("it holds fewer records or evaluations than the "
                                     "checkpoint says: it is not this run's")
                self.events = {}
                for k in self.layers:
                    group = traces[f"layer_{k}"]
                    if "spike_event_count" in group:
                        rows = group["spike_events"][: int(group["spike_event_count"][0])]
                        self.events[k] = int((rows[:, 0] < records).sum())
                        group["spike_event_count"][0] = self.events[k]
                f["count/evaluations"][0] = evaluations
                f["count/records"][0] = records
        except (OSError, KeyError) as e:
            raise ValueError(f"cannot continue trace file {str(self.path)!r}: {e}") from None
        except ValueError as e:
            raise ValueError(f"cannot continue trace file {str(self.path)!r}: {e}") from None
        self.records, self.evaluations = records, evaluations
        return self

    @contextmanager
    def _open(self) -> Iterator[h5py.File]:
        """The file for one append. After a failed write the writer never touches the file
        again: HDF5's state after a failed write is not to be trusted (its cached metadata
        fails again at every close), and the counted records before are whole."""
        if getattr(self, "broken", False):
            raise ValueError(f"trace file {str(self.path)!r} stopped at record {self.records} "
                             "after a failed write; the records before are intact")
        if self.path.is_symlink():
            raise ValueError(f"trace file {str(self.path)!r} is a symbolic link: a run "
                             "folder's files must be its own")
        try:
            f = _open_unbuffered(self.path)
        except OSError as e:
            raise ValueError(f"cannot write trace file {str(self.path)!r}: {why(e)}") from None
        try:
            yield f
            f.flush()
        except (OSError, RuntimeError) as e:  # a vanished or damaged file, an I/O error
            self.broken = True
            raise ValueError(f"cannot write trace file {str(self.path)!r}: {why(e)}; the "
                             "records before are intact") from None
        finally:
            try:
                f.close()
            except (OSError, RuntimeError):
                self.broken = True

    def append_metrics(self, row: dict[str, float | Sequence[float]]) -> None:
        """One evaluation: scalars, and per-layer lists stored as ``<name>_layer_<k>`` (the
        names given at creation; a missing value is NaN). The count rises last."""
        flat = flatten_metrics(row)
        with self._open() as f:
            metrics = f["metrics"]
            room = min((metrics[name].shape[0] for name in self.metrics), default=0)
            if self.metrics and self.evaluations >= room:
                raise ValueError(f"trace file {str(self.path)!r} has room for {room} "
                                 "evaluations only")
            for name in self.metrics:
                value = flat.get(name)
                metrics[name][self.evaluations] = np.nan if value is None else value
            f.flush()
            f["count/evaluations"][0] = self.evaluations + 1
        self.evaluations += 1

    def append_record(self, step: int, record: Record) -> None:
        """One probe record: a forward of the probe set with a reference and a noisy pass,
        run with ``keep_states=True``. Its data first, then its step, then the count."""
        def numpy(t: torch.Tensor, dtype: Any = np.float32) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=False)

        i = self.records
        if i >= self.capacity:
            raise ValueError(f"trace file {str(self.path)!r} has room for {self.capacity} "
                             "records only")
        with self._open() as f:
            traces = f["traces"]
            traces["loss_clean"][i] = numpy(record.loss[0])
            traces["loss_noisy"][i] = numpy(record.loss[1])
            for k in self.layers:
                g = traces[f"layer_{k}"]
                units = torch.as_tensor(self.unit_index[k], device=record.loss.device)
                inputs = torch.as_tensor(self.input_index[k], device=record.loss.device)
                activity = record.activity[k - 1].index_select(-1, units)
                g["input"][i] = numpy(record.inputs[k - 1].index_select(-1, inputs))
                g["activity_clean"][i] = numpy(activity[0])
                g["activity_noisy"][i] = numpy(activity[1])
                if not self.spiking[k - 1]:
                    continue
                spikes = record.outputs[k - 1].index_select(-1, units)  # (T, P, B, units)
                membrane = record.membrane[k - 1].index_select(-1, units)
                g["spikes"][i] = numpy(spikes[:, 0], np.uint8)
                g["spikes_noisy"][i] = numpy(spikes[:, 1], np.uint8)
                g["membrane"][i] = numpy(membrane[:, 0])
                g["membrane_noisy"][i] = numpy(membrane[:, 1])
                if self.spike_events:
                    events = torch.nonzero(spikes[:, 0]).to("cpu").numpy().astype(np.int32)
                    events[:, 2] = self.unit_index[k][events[:, 2]]
                    rows = np.column_stack([np.full(len(events), i, np.int32), events])
                    start = self.events[k]
                    if len(rows):
                        g["spike_events"][start:start + len(rows)] = rows.astype(np.int32)
                    self.events[k] = start + len(rows)
            traces["step"][i] = step
            f.flush()
            for k in self.layers:  # the record is complete: its counts rise
                if self.spike_events and self.spiking[k - 1]:
                    traces[f"layer_{k}/spike_event_count"][0] = self.events[k]
            f["count/records"][0] = i + 1
        self.records += 1


def _open_unbuffered(path: Path) -> h5py.File:
    """``path`` for writing, without HDF5's file lock and without its sieve buffer: every
    raw write goes to the file at once, so a failed one raises here (``OSError``) instead of
    in a later buffer flush that h5py can only print and that leaves HDF5 broken."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_sieve_buf_size(0)
    fapl.set_file_locking(False, True)
    return h5py.File(h5py.h5f.open(str(path).encode(), h5py.h5f.ACC_RDWR, fapl=fapl))


def _size(path: Path) -> int:
    """The size the trace file would have had (0 when unknown)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fixed(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any) -> None:
    """A dataset of ``shape`` whose space is allocated now, contiguous: later writes into it
    change raw data only, never the file's structure. Unwritten space is not filled (the file
    system keeps it sparse) and is never read: counts say what holds data."""
    space = h5py.h5s.create_simple(shape)
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    plist.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype)), space,
                    dcpl=plist)


def flatten_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's values by metric name: a per-layer list ``alignment`` becomes
    ``alignment_layer_1``, ``alignment_layer_2``, ..."""
    flat: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{name}_layer_{k + 1}": v for k, v in enumerate(value)})
        else:
            flat[name] = value
    return flat


class TraceReader:
    """Reads a trace file, also while its run is still writing it, or after it was killed.

    Every read opens the file afresh (without HDF5's file lock) and is tried again for a while
    when it meets a half-written record; it returns complete records and evaluations only.
    A file that is missing, a folder, not HDF5, not a trace or unreadable is a ``ValueError``
    that says so, a dataset the file lacks a ``KeyError``.

    Example::

        reader = TraceReader("runs/<run>/trace.h5")
        reader.layers                                   # [1, 2, 3, 4]
        reader.activity(2, "noisy", records=slice(-5, None))   # (5, probe, units)
        reader.metrics()["test_accuracy"]
        reader.read("/traces/layer_1/spike_events", records=-1)   # the last record's events
        print(reader.describe())                        # what ``noisynets inspect`` prints
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        name = str(self.path)
        if not self.path.exists():
            raise ValueError(f"trace file {name!r} does not exist")
        if self.path.is_dir():
            raise ValueError(f"{name!r} is a folder: name a trace file, e.g. "
                             f"{str(self.path / 'trace.h5')!r}")
        try:
            hdf5 = h5py.is_hdf5(self.path)
        except OSError as e:
            raise ValueError(f"cannot read {name!r}: {e}") from None
        if not hdf5:
            raise ValueError(f"{name!r} is not an HDF5 file (a noisynets trace file is the "
                             "trace.h5 of a run folder)")
        found, version, missing = self._with_file(
            lambda f: (f.attrs.get("format"), f.attrs.get("format_version"), _missing(f)))
        if found != FORMAT:
            raise ValueError(f"{name!r} is not a noisynets trace file "
                             f"(its format attribute is {found!r})")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{name!r} is a trace file of format version {version!r}; this "
                             f"noisynets reads versions {', '.join(map(str, READABLE_VERSIONS))}")
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ValueError(f"{name!r} is not a whole noisynets trace file: it lacks "
                             f"{', '.join(missing[:3])}{more}")
        problem = self._with_file(_structure_problem)
        if problem:
            raise ValueError(f"{name!r} is a damaged or foreign trace file: {problem}")

    def _with_file(self, read: Callable[[h5py.File], _T]) -> _T:
        """``read(f)`` on a fresh handle. While the writer is mid-append, the open or the read
        can meet a half-written file and fail (``OSError``; ``KeyError`` for an object being
        written; ``RuntimeError`` from h5py's ``visititems``): tried again for a while, then a
        ``ValueError``."""
        for attempt in range(_READ_TRIES):
            try:
                with open_h5(self.path) as f:
                    return read(f)
            except FileNotFoundError:
                raise ValueError(f"trace file {str(self.path)!r} does not exist") from None
            except (AttributeError, IndexError, TypeError, ValueError) as e:
                # Not a writer mid-append: objects of the wrong kind or shape in the file.
                message = " ".join(str(e).split()).strip("\"'")
                raise ValueError(f"cannot read trace file {str(self.path)!r}: it is damaged "
                                 f"({type(e).__name__}: {message})") from None
            except (OSError, KeyError, RuntimeError) as e:
                if attempt == _READ_TRIES - 1:
                    message = " ".join(str(e).split()).strip("\"'")
                    raise ValueError(f"cannot read trace file {str(self.path)!r}: "
                                     f"{message}") from None
                time.sleep(_READ_PAUSE)
        raise AssertionError("unreachable")

    def read(self, path: str, records: Any = slice(None)) -> np.ndarray:
        """A dataset by its path (``"/traces/layer_1/input"``), complete rows only (``_rows``);
        ``records`` (an int, a slice or indices) picks among them: records of a per-record
        dataset, the events of those records of ``spike_events``, evaluations of a metric,
        rows of any other dataset."""
        path = "/" + path.lstrip("/")
        found = self._with_file(lambda f: _rows(f, path, records) if path in f else None)
        if found is None:
            raise KeyError(f"{str(self.path)!r} has no dataset {path!r}")
        return found

    def arrays(self) -> dict[str, np.ndarray]:
        """Every dataset by path, complete rows only: of a file whose run still writes it, the
        records and evaluations complete when the call starts, so that they fit together. Each
        dataset is read on its own: a short read is less likely to meet the writer."""
        records = slice(0, self.num_records)
        evaluations = slice(0, self._with_file(lambda f: _count(f, "evaluations")))
        first = {"records": records, "events": records, "evaluations": evaluations}
        return {p: self.read(p, first.get(_first_axis(p), slice(None))) for p in self.datasets()}

    def attributes(self) -> dict[str, dict[str, Any]]:
        """``{group path: {name: value}}`` of the root ``"/"`` and every group with attributes,
        as plain (JSON-able) values; the root's ``config`` (JSON text in the file) decoded."""
        def read(f: h5py.File) -> dict[str, dict[str, Any]]:
            groups: dict[str, Any] = {"/": f}

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Group) and len(obj.attrs):
                    groups["/" + name] = obj

            f.visititems(visit)
            return {path: {k: _plain(v) for k, v in g.attrs.items()} for path, g in groups.items()}

        attrs = self._with_file(read)
        if isinstance(attrs["/"].get("config"), str):
            try:
                attrs["/"]["config"] = json.loads(attrs["/"]["config"])
            except (json.JSONDecodeError, RecursionError):
                pass
        return attrs

    @property
    def attrs(self) -> dict[str, Any]:
        """The root's attributes (``attributes()["/"]``)."""
        return self.attributes()["/"]

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration (the root's ``config``; empty if it is missing or garbled)."""
        config = self.attrs.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def layers(self) -> list[int]:
        return self._with_file(lambda f: sorted(
            int(name.split("_")[1]) for name in f["traces"] if name.startswith("layer_")))

    @property
    def num_records(self) -> int:
        return self._with_file(lambda f: _count(f, "records"))

    def spiking(self, layer: int) -> bool:
        group = self.attributes().get(f"/traces/layer_{layer}")
        if group is None:
            raise KeyError(f"{str(self.path)!r} has no traced layer {layer}")
        return bool(group["spiking"])

    def datasets(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every dataset in the file: its path, shape and dtype (the shape as stored, which can
        count a record or an evaluation still being written)."""
        return self._with_file(lambda f: {p: (tuple(f[p].shape), str(f[p].dtype))
                                          for p in _dataset_paths(f)})

    def metrics(self) -> dict[str, np.ndarray]:
        """Every metric, a 1-D array with one row per complete evaluation."""
        return self._with_file(lambda f: {name: _rows(f, f"/metrics/{name}")
                                          for name in f["metrics"]})

    def steps(self) -> np.ndarray:
        return self.read("/traces/step")

    def probe_index(self) -> np.ndarray:
        return self.read("/traces/probe_index")

    def loss(self, which: str = "clean", records: Any = slice(None)) -> np.ndarray:
        return self.read(f"/traces/loss_{_which(which)}", records)

    def input(self, layer: int, records: Any = slice(None)) -> np.ndarray:
        return self.read(f"/traces/layer_{layer}/input", records)

    def activity(self, layer: int, which: str = "clean", records: Any = slice(None)) -> np.ndarray:
        return self.read(f"/traces/layer_{layer}/activity_{_which(which)}", records)

    def spikes(self, layer: int, which: str = "clean", records: Any = slice(None)) -> np.ndarray:
        suffix = "" if _which(which) == "clean" else "_noisy"
        return self.read(f"/traces/layer_{layer}/spikes{suffix}", records)

    def membrane(self, layer: int, which: str = "clean", records: Any = slice(None)) -> np.ndarray:
        suffix = "" if _which(which) == "clean" else "_noisy"
        return self.read(f"/traces/layer_{layer}/membrane{suffix}", records)

    def unit_index(self, layer: int) -> np.ndarray:
        return self.read(f"/traces/layer_{layer}/unit_index")

    def describe(self) -> str:
        """What the file holds and its last metrics: the text ``noisynets inspect`` prints."""
        attrs = self.attributes()
        root = attrs["/"]
        lines = [f"trace file    {self.path} ({self.path.stat().st_size / 1e6:.2f} MB)"]
        lines.append(f"format        {root.get('format')}, version {root.get('format_version')}")
        for name in ("created", "device", "seed"):
            lines.append(f"{name:<13} {root.get(name, '?')}")
        lines.append(f"versions      noisynets {root.get('noisynets_version', '?')}, "
                     f"torch {root.get('torch_version', '?')}")
        config = root.get("config")
        if isinstance(config, dict) and config:
            items = [f"{k} = {_compact(v)}" for k, v in config.items()]
            lines.extend(_wrap(items, "config        ", " " * 14))
        steps = self.steps()
        datasets = self.datasets()
        if len(steps):
            lines.append(f"records       {len(steps)} (steps {steps[0]}..{steps[-1]})")
        else:
            lines.append("records       0 (none yet)")
        lines.append(f"probe         {datasets['/traces/probe_index'][0][0]} samples")
        lines.append("layers")
        for k in self.layers:
            group = f"/traces/layer_{k}"
            a = attrs.get(group, {})
            spiking = "spiking" if bool(a.get("spiking", False)) else "not spiking"
            if f"{group}/spike_events" in datasets:
                spiking += ", spike events"
            traced = (datasets[f"{group}/unit_index"][0][0],
                      datasets[f"{group}/input_index"][0][0])
            shape = _shape_text(a.get("shape"))
            input_shape = _shape_text(a.get("input_shape"))
            lines.append(f"  {group.rsplit('/', 1)[1]:<9} {a.get('units', '?')} units{shape}, "
                         f"{a.get('inputs', '?')} inputs{input_shape}; traced {traced[0]} "
                         f"units, {traced[1]} inputs; {spiking}")
        lines.append("datasets")
        width = max((len(p) for p in datasets), default=0)
        for p, (shape, dtype) in datasets.items():
            lines.append(f"  {p:<{width}}  {str(shape):<22} {dtype}")
        metrics = self.metrics()
        evaluations = min((len(v) for v in metrics.values()), default=0)
        if not evaluations:
            lines.append("final metrics: none yet (no evaluation written)")
            return "\n".join(lines)
        last = {name: float(v[-1]) for name, v in metrics.items()}
        lines.append(f"final metrics (the last of {evaluations} evaluations)")
        per_layer = {name: layer_metric(metrics, name) for name in LAYER_METRICS}
        shown = {f"{n}_layer_{k}" for n, s in per_layer.items() for k in s}
        scalars = sorted(set(last) - shown, key=metric_sort_key)
        lines.extend(_wrap([f"{n} = {_number(n, last[n])}" for n in scalars], "  ", "  "))
        columns = [n for n, s in per_layer.items() if s]
        if columns:
            lines.append("  " + f"{'layer':<7}" + "".join(f"{n:>15}" for n in columns))
            for k in sorted({k for s in per_layer.values() for k in s}):
                row = "".join(f"{per_layer[n][k][-1]:>15.4g}" if k in per_layer[n]
                              else f"{'-':>15}" for n in columns)
                lines.append(f"  {k:<7}{row}")
        return "\n".join(lines)


def as_reader(trace: str | Path | TraceReader) -> TraceReader:
    """``trace`` if it is a ``TraceReader``, else a reader of the file ``trace``."""
    return trace if isinstance(trace, TraceReader) else TraceReader(trace)


# --- complete rows, by the schema -----------------------------------------------------------

def _shape_text(shape: Any) -> str:
    """`` (16x28x28)`` for a feature map's shape attribute; nothing for a vector or none."""
    if shape is None or np.ndim(shape) != 1 or len(shape) < 2:
        return ""
    return " (" + "x".join(str(int(d)) for d in shape) + ")"


# The first axis of every dataset of SCHEMA: records, evaluations, events, probe, inputs, units.
_FIRST_AXIS = {path: shape.strip("()").split(",")[0].strip() for path, shape, _, _ in SCHEMA}


def _first_axis(path: str) -> str | None:
    """The first axis ``SCHEMA`` gives the dataset ``path`` (None: not in the schema)."""
    pattern = re.sub(r"^/metrics/[^/]+$", "/metrics/<name>", path)
    pattern = re.sub(r"/layer_\d+/", "/layer_<k>/", pattern)
    return _FIRST_AXIS.get(pattern)


def _missing(f: h5py.File) -> list[str]:
    """The groups and datasets ``SCHEMA`` says the file holds (given its layers) that it lacks."""
    groups = [g for g in ("/metrics", "/traces") if g not in f]
    if groups:
        return groups
    layers = {name: bool(g.attrs.get("spiking", False)) for name, g in f["traces"].items()
              if name.startswith("layer_") and isinstance(g, h5py.Group)}
    where = {"always": ["layer_<k>"], "traced layers": list(layers),
             "spiking layers": [name for name, spiking in layers.items() if spiking]}
    missing = []
    counted = f.attrs.get("format_version") != 1  # version 1 files have no /count
    for path, _, _, present in SCHEMA:
        if path.startswith("/count/") and not counted:
            continue
        for layer in where.get(present, []):  # "spiking layers, if asked": optional
            name = path.replace("layer_<k>", layer)
            if "<name>" not in name and name not in f:
                missing.append(name)
    return missing


MAX_DATASET_BYTES = 4 * 2**30  # a dataset that declares more is not one noisynets wrote
_KINDS = {"float64": "f", "float32": "f", "int64": "i", "int32": "i", "uint8": "u"}


def _structure_problem(f: h5py.File) -> str | None:
    """What in ``f`` contradicts ``SCHEMA`` -- an object that is not a dataset, a wrong
    dtype, rank or size along a fixed axis, an index out of its layer, an absurd declared
    size -- or None. Checked before anything is read, so that a crafted file cannot make a
    reader allocate what it declares."""
    traces = f["traces"]
    for group in ("/metrics", "/traces", "/count"):
        if group in f and not isinstance(f[group], h5py.Group):
            return f"{group} is not a group"
    for name, obj in traces.items():
        if name.startswith("layer_") and not isinstance(obj, h5py.Group):
            return f"/traces/{name} is not a group of a layer's datasets"
    index = traces.get("probe_index")
    if not isinstance(index, h5py.Dataset) or index.ndim != 1:
        return "/traces/probe_index is not a list of samples"
    sizes = {"probe": index.shape[0], "4": 4}
    for path in _group_members(f):
        obj = f.get(path)
        pattern = _pattern(path)
        spec = next(((shape, dtype) for p, shape, dtype, _ in SCHEMA if p == pattern), None)
        if spec is None:
            continue
        if not isinstance(obj, h5py.Dataset):
            return f"{path} is not a dataset"
        axes = [a.strip() for a in spec[0].strip("()").split(",") if a.strip()]
        if obj.ndim != len(axes):
            return f"{path} has {obj.ndim} axes, the schema {len(axes)} {tuple(axes)}"
        if obj.dtype.kind != _KINDS[spec[1]]:
            return f"{path} holds {obj.dtype}, the schema {spec[1]}"
        if obj.size * obj.dtype.itemsize > MAX_DATASET_BYTES:
            return f"{path} declares {obj.size * obj.dtype.itemsize / 2**30:.0f} GiB"
        layer = re.search(r"/layer_(\d+)/", path)
        local = dict(sizes)
        if layer:
            group = traces[f"layer_{layer.group(1)}"]
            for axis, index in (("units", "unit_index"), ("inputs", "input_index")):
                if isinstance(group.get(index), h5py.Dataset) and group[index].ndim == 1:
                    local[axis] = group[index].shape[0]
        for axis, size in zip(axes, obj.shape):
            if axis in local and size != local[axis]:
                return f"{path} has {size} along {axis}, not {local[axis]}"
        if path.endswith("unit_index") and layer:
            attrs = traces[f"layer_{layer.group(1)}"].attrs
            shape = attrs.get("shape")
            if shape is not None and (np.ndim(shape) != 1 or
                                      int(np.prod(shape)) != attrs.get("units")):
                return f"layer {layer.group(1)}'s shape {shape!r} does not hold its units"
        if path.endswith(("unit_index", "input_index")) and layer and obj.size:
            limit = traces[f"layer_{layer.group(1)}"].attrs.get(
                "units" if path.endswith("unit_index") else "inputs")
            values = obj[:]
            if not isinstance(limit, (int, np.integer)) or values.min() < 0 or \
                    values.max() >= limit:
                return f"{path} indexes beyond its layer's {limit!r}"
    if "count" in f:
        for what, room in (("records", f["traces/step"].shape[0]),
                           ("evaluations", min((m.shape[0] for m in f["metrics"].values()),
                                               default=0))):
            if not 0 <= _count(f, what) <= room:
                return f"it counts {_count(f, what)} {what} where it has room for {room}"
    return None


def _group_members(f: h5py.File) -> list[str]:
    """The paths of every object under /metrics, /traces and /count, datasets or not."""
    found: list[str] = []
    f.visit(lambda name: found.append("/" + name)
            if name.startswith(("metrics/", "traces/", "count/")) else None)
    return found


def _pattern(path: str) -> str:
    """``SCHEMA``'s name for ``path`` (``/traces/layer_<k>/input``)."""
    pattern = re.sub(r"^/metrics/[^/]+$", "/metrics/<name>", path)
    return re.sub(r"/layer_\d+/", "/layer_<k>/", pattern)


def _rows(f: h5py.File, path: str, records: Any = slice(None)) -> np.ndarray:
    """The rows ``records`` of the dataset ``path`` among its complete ones. A record is
    complete once its step is in ``/traces/step`` (the writer's last act), an evaluation once
    every metric has its row: a run killed while it writes can leave a record's data without
    its step, or an evaluation's first metrics without the rest."""
    d = f[path]
    axis = _first_axis(path)
    if axis == "evaluations":
        return d[:_count(f, "evaluations")][records]
    if axis not in ("records", "events"):
        return d[records]
    n = _count(f, "records")
    if axis == "events":  # rows (record, time, sample, unit): the events of those records
        counter = path.rsplit("/", 1)[0] + "/spike_event_count"
        events = d[: int(f[counter][0])] if counter in f else d[:]
        return events[np.isin(events[:, 0], np.arange(n)[records])]
    if isinstance(records, int):
        return d[range(n)[records]]
    if isinstance(records, slice):
        return d[slice(*records.indices(n))]
    return d[:n][records]


def _count(f: h5py.File, what: str) -> int:
    """Complete ``records`` or ``evaluations``: the writer's count (version 2), else the
    length of ``/traces/step`` or of the shortest metric (version 1)."""
    if "count" in f:
        return int(f[f"count/{what}"][0])
    if what == "records":
        return int(f["traces/step"].shape[0])
    return min((m.shape[0] for m in f["metrics"].values()), default=0)


def _dataset_paths(f: h5py.File) -> list[str]:
    found: list[str] = []
    f.visititems(lambda name, obj: found.append("/" + name)
                 if isinstance(obj, h5py.Dataset) else None)
    return sorted(found, key=_natural)


def _natural(text: str) -> list[Any]:
    """A sort key that puts ``layer_2`` before ``layer_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a JSON-able value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _which(which: str) -> str:
    if which not in ("clean", "noisy"):
        raise ValueError(f"which={which!r}: choose 'clean' or 'noisy'")
    return which


# --- metrics --------------------------------------------------------------------------------

# The metrics of every evaluation, in the order ``inspect`` and the CSV export show them.
SCALAR_METRICS = ("epoch", "step", "test_accuracy", "train_loss", "test_loss", "seconds",
                  "zero_change_fraction", "skipped_steps", "val_loss", "val_accuracy")
# The per-layer metrics, stored as ``<name>_layer_<k>``.
LAYER_METRICS = ("alignment", "decorrelation", "estimate_norm")


def metric_sort_key(name: str) -> tuple[int, list[Any]]:
    """``SCALAR_METRICS`` in their order first, then the others by name (layer 2 before 10)."""
    if name in SCALAR_METRICS:
        return (SCALAR_METRICS.index(name), [])
    return (len(SCALAR_METRICS), _natural(name))


def layer_metric(metrics: dict[str, np.ndarray], name: str) -> dict[int, np.ndarray]:
    """``{k: metrics[f"{name}_layer_{k}"]}`` for every layer that has it, by layer number."""
    prefix = f"{name}_layer_"
    found = {int(key[len(prefix):]): value for key, value in metrics.items()
             if key.startswith(prefix) and key[len(prefix):].isdigit()}
    return dict(sorted(found.items()))


# --- the text of ``describe`` ---------------------------------------------------------------

def _wrap(items: list[str], first: str, indent: str, width: int = 100) -> list[str]:
    """``items`` joined by ", " into lines of at most ``width`` characters, never inside one."""
    lines, line = [], first
    for i, item in enumerate(items):
        text = item + ("," if i < len(items) - 1 else "")
        if line.strip() and len(line) + 1 + len(text) > width:
            lines.append(line.rstrip())
            line = indent
        line += ("" if line.isspace() or line == first else " ") + text
    lines.append(line.rstrip())
    return lines


def _compact(value: Any) -> str:
    if isinstance(value, list):
        return "[" + " ".join(_compact(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _number(name: str, value: float) -> str:
    if name in ("epoch", "step") and value.is_integer():
        return str(int(value))
    return f"{value:.4g}"
