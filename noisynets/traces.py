"""HDF5 trace files: the clean and noisy activity of a fixed probe set, streamed during a run.

Plain datasets and attributes only, so any HDF5 reader opens the file. Layout (``SCHEMA``; the
README lists it), with ``<k>`` the layer number 1..L::

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
along its first axis, is chunked and gzip-compressed; the writer opens the file, appends one
record or one row of metrics, flushes and closes it again, so a run that dies (even by SIGKILL)
leaves a file that holds everything written before, and a reader can open it while the run goes
on. Nothing accumulates in memory.

Read it without noisynets::

    import h5py
    with h5py.File("runs/<run>/trace.h5", "r") as f:
        activity = f["traces/layer_1/activity_clean"][:]   # (records, probe, units)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np
import torch

from noisynets.network import Record

FORMAT = "noisynets-trace"
FORMAT_VERSION = 1

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
)

_RETRIES = 50
_T = TypeVar("_T")


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """Open a trace file without HDF5's file lock, so a reader and the run's writer coexist."""
    return h5py.File(path, mode, locking=False)


def spread(count: int, limit: int | None) -> np.ndarray:
    """``limit`` indices spread evenly over ``range(count)`` (all of them if None or 0)."""
    if not limit or limit >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


class TraceWriter:
    """Streams metrics and probe records of one run into an HDF5 file.

    Args:
        path: the file (created; an existing one is replaced).
        sizes: the network's ``[d_0, n_1, ..., n_L]``.
        spiking: per layer, whether it emits spikes (LIF hidden layers).
        time_steps: T.
        probe_index: the training samples traced.
        attrs: file attributes (``config`` may be a dict: it is stored as JSON text).
        layers: the layer numbers (1..L) to trace; all by default.
        units: the most units (and inputs) traced per layer, spread evenly; 0 or None: all.
        spike_events: also store spikes as an event list (record, time, sample, unit).
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
    ) -> None:
        self.path = Path(path)
        num_layers = len(sizes) - 1
        self.layers = list(range(1, num_layers + 1)) if layers is None else sorted(set(layers))
        bad = [k for k in self.layers if not 1 <= k <= num_layers]
        if bad:
            raise ValueError(f"trace layers {bad} out of range: the network has layers "
                             f"1..{num_layers}")
        self.time_steps = int(time_steps)
        self.spiking = list(spiking)
        self.spike_events = spike_events
        self.unit_index = {k: spread(sizes[k], units) for k in self.layers}
        self.input_index = {k: spread(sizes[k - 1], units) for k in self.layers}
        self.records = 0
        probe = np.asarray(probe_index, dtype=np.int64)
        self.probe = len(probe)
        with h5py.File(self.path, "w", locking=False) as f:
            for key, value in attrs.items():
                if isinstance(value, dict):
                    value = json.dumps(value)
                f.attrs[key] = str(value) if isinstance(value, str) else value
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs.setdefault("created", datetime.now(timezone.utc).isoformat())
            f.create_group("metrics")
            traces = f.create_group("traces")
            traces.create_dataset("probe_index", data=probe)
            self._grow(traces, "step", (), np.int64)
            self._grow(traces, "loss_clean", (self.probe,), np.float32)
            self._grow(traces, "loss_noisy", (self.probe,), np.float32)
            for k in self.layers:
                g = traces.create_group(f"layer_{k}")
                units, inputs = len(self.unit_index[k]), len(self.input_index[k])
                g.attrs["units"] = sizes[k]
                g.attrs["inputs"] = sizes[k - 1]
                g.attrs["spiking"] = bool(self.spiking[k - 1])
                g.create_dataset("unit_index", data=self.unit_index[k])
                g.create_dataset("input_index", data=self.input_index[k])
                self._grow(g, "input", (self.probe, inputs), np.float32)
                self._grow(g, "activity_clean", (self.probe, units), np.float32)
                self._grow(g, "activity_noisy", (self.probe, units), np.float32)
                if self.spiking[k - 1]:
                    shape = (self.time_steps, self.probe, units)
                    self._grow(g, "spikes", shape, np.uint8)
                    self._grow(g, "spikes_noisy", shape, np.uint8)
                    self._grow(g, "membrane", shape, np.float32)
                    self._grow(g, "membrane_noisy", shape, np.float32)
                    if spike_events:
                        self._grow(g, "spike_events", (4,), np.int32, chunk_rows=4096)

    @staticmethod
    def _grow(group: h5py.Group, name: str, row: tuple[int, ...], dtype: Any,
              chunk_rows: int = 1) -> None:
        group.create_dataset(
            name, shape=(0, *row), maxshape=(None, *row), dtype=dtype,
            chunks=(chunk_rows, *row) if row else (256,), compression="gzip",
            compression_opts=4, shuffle=True,
        )

    @contextmanager
    def _open(self) -> Iterator[h5py.File]:
        f = h5py.File(self.path, "a", locking=False)
        try:
            yield f
            f.flush()
        finally:
            f.close()

    @staticmethod
    def _append(dataset: h5py.Dataset, rows: np.ndarray) -> None:
        n = dataset.shape[0]
        dataset.resize(n + rows.shape[0], axis=0)
        dataset[n:] = rows

    def append_metrics(self, row: dict[str, float | Sequence[float]]) -> None:
        """One evaluation: scalars, and per-layer lists stored as ``<name>_layer_<k>``."""
        flat: dict[str, float] = {}
        for name, value in row.items():
            if isinstance(value, (list, tuple)):
                flat.update({f"{name}_layer_{k + 1}": v for k, v in enumerate(value)})
            else:
                flat[name] = value
        with self._open() as f:
            metrics = f["metrics"]
            for name, value in flat.items():
                if name not in metrics:
                    metrics.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.float64,
                                           chunks=(256,))
                self._append(metrics[name], np.asarray([value], dtype=np.float64))

    def append_record(self, step: int, record: Record) -> None:
        """One probe record: a forward of the probe set with a reference and a noisy pass,
        run with ``keep_states=True``."""
        def numpy(t: torch.Tensor, dtype: Any = np.float32) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=False)

        with self._open() as f:
            traces = f["traces"]
            self._append(traces["loss_clean"], numpy(record.loss[0:1]))
            self._append(traces["loss_noisy"], numpy(record.loss[1:2]))
            for k in self.layers:
                g = traces[f"layer_{k}"]
                units = torch.as_tensor(self.unit_index[k], device=record.loss.device)
                inputs = torch.as_tensor(self.input_index[k], device=record.loss.device)
                activity = record.activity[k - 1].index_select(-1, units)
                self._append(g["input"], numpy(record.inputs[k - 1].index_select(-1, inputs))[None])
                self._append(g["activity_clean"], numpy(activity[0:1]))
                self._append(g["activity_noisy"], numpy(activity[1:2]))
                if not self.spiking[k - 1]:
                    continue
                spikes = record.outputs[k - 1].index_select(-1, units)  # (T, P, B, units)
                membrane = record.membrane[k - 1].index_select(-1, units)
                self._append(g["spikes"], numpy(spikes[:, 0], np.uint8)[None])
                self._append(g["spikes_noisy"], numpy(spikes[:, 1], np.uint8)[None])
                self._append(g["membrane"], numpy(membrane[:, 0])[None])
                self._append(g["membrane_noisy"], numpy(membrane[:, 1])[None])
                if self.spike_events:
                    events = torch.nonzero(spikes[:, 0]).to("cpu").numpy().astype(np.int32)
                    events[:, 2] = self.unit_index[k][events[:, 2]]
                    rows = np.column_stack([np.full(len(events), self.records, np.int32), events])
                    self._append(g["spike_events"], rows.astype(np.int32))
            # The step lands last: a record counts once all of its data is in the file.
            self._append(traces["step"], np.asarray([step], dtype=np.int64))
        self.records += 1


class TraceReader:
    """Reads a trace file, also while its run is still writing it.

    Example::

        reader = TraceReader("runs/<run>/trace.h5")
        reader.layers                                   # [1, 2, 3, 4]
        reader.activity(2, "noisy", records=slice(-5, None))   # (5, probe, units)
        reader.metrics()["test_accuracy"]
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"trace file {str(self.path)!r} does not exist")
        try:
            found = self._with_file(lambda f: f.attrs.get("format"))
        except OSError as e:
            raise ValueError(f"cannot read trace file {str(self.path)!r}: {e}") from None
        if found != FORMAT:
            raise ValueError(f"{str(self.path)!r} is not a noisynets trace file "
                             f"(its format attribute is {found!r})")

    def _with_file(self, read: Callable[[h5py.File], _T]) -> _T:
        """``read(f)`` on a fresh handle, tried again while the writer is mid-append (the open
        or the read can then meet a half-written file and fail with OSError)."""
        for attempt in range(_RETRIES):
            try:
                with open_h5(self.path) as f:
                    return read(f)
            except FileNotFoundError:
                raise
            except OSError:
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.02)
        raise AssertionError("unreachable")

    def _read(self, name: str, records: Any = slice(None)) -> np.ndarray:
        """A dataset's rows ``records``; of a per-record dataset only complete records (a record
        is complete once its step is written, the writer's last act)."""
        def read(f: h5py.File) -> np.ndarray:
            if name not in f:
                raise KeyError(f"{str(self.path)!r} has no dataset {name!r}")
            dataset = f[name]
            if name not in _PER_RECORD and name.rsplit("/", 1)[-1] not in _PER_RECORD_IN_LAYER:
                return dataset[records]
            n = f["traces/step"].shape[0]
            if isinstance(records, int):
                return dataset[range(n)[records]]
            if isinstance(records, slice):
                return dataset[slice(*records.indices(n))]
            return dataset[:n][records]

        return self._with_file(read)

    @property
    def attrs(self) -> dict[str, Any]:
        def read(f: h5py.File) -> dict[str, Any]:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}

        attrs = self._with_file(read)
        if "config" in attrs:
            attrs["config"] = json.loads(attrs["config"])
        return attrs

    @property
    def config(self) -> dict[str, Any]:
        return self.attrs.get("config", {})

    @property
    def layers(self) -> list[int]:
        return self._with_file(lambda f: sorted(
            int(name.split("_")[1]) for name in f["traces"] if name.startswith("layer_")))

    @property
    def num_records(self) -> int:
        return self._with_file(lambda f: int(f["traces/step"].shape[0]))

    def spiking(self, layer: int) -> bool:
        return self._with_file(lambda f: bool(f[f"traces/layer_{layer}"].attrs["spiking"]))

    def datasets(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every dataset in the file: its path, shape and dtype."""
        def read(f: h5py.File) -> dict[str, tuple[tuple[int, ...], str]]:
            found: dict[str, tuple[tuple[int, ...], str]] = {}

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    found["/" + name] = (tuple(obj.shape), str(obj.dtype))

            f.visititems(visit)
            return found

        return self._with_file(read)

    def metrics(self) -> dict[str, np.ndarray]:
        """Every metric, a 1-D array with one row per evaluation."""
        return self._with_file(lambda f: {name: d[:] for name, d in f["metrics"].items()})

    def steps(self) -> np.ndarray:
        return self._read("/traces/step")

    def probe_index(self) -> np.ndarray:
        return self._read("/traces/probe_index")

    def loss(self, which: str = "clean", records: Any = slice(None)) -> np.ndarray:
        return self._read(f"/traces/loss_{_which(which)}", records)

    def input(self, layer: int, records: Any = slice(None)) -> np.ndarray:
        return self._read(f"/traces/layer_{layer}/input", records)

    def activity(self, layer: int, which: str = "clean", records: Any = slice(None)) -> np.ndarray:
        return self._read(f"/traces/layer_{layer}/activity_{_which(which)}", records)

    def spikes(self, layer: int, which: str = "clean", records: Any = slice(None)) -> np.ndarray:
        suffix = "" if _which(which) == "clean" else "_noisy"
        return self._read(f"/traces/layer_{layer}/spikes{suffix}", records)

    def membrane(self, layer: int, which: str = "clean", records: Any = slice(None)) -> np.ndarray:
        suffix = "" if _which(which) == "clean" else "_noisy"
        return self._read(f"/traces/layer_{layer}/membrane{suffix}", records)

    def unit_index(self, layer: int) -> np.ndarray:
        return self._read(f"/traces/layer_{layer}/unit_index")


_PER_RECORD = {"/traces/step", "/traces/loss_clean", "/traces/loss_noisy"}
_PER_RECORD_IN_LAYER = {"input", "activity_clean", "activity_noisy", "spikes", "spikes_noisy",
                        "membrane", "membrane_noisy"}


def _which(which: str) -> str:
    if which not in ("clean", "noisy"):
        raise ValueError(f"which={which!r}: choose 'clean' or 'noisy'")
    return which
