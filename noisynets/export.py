"""A trace file's data for other tools: one ``.npz`` archive, or a folder of CSV files.

docs/traces.md ("Export") describes both layouts. Both hold the complete records and
evaluations only (what ``TraceReader`` returns), so they work on the file of a run that is still
writing it or was killed.

Example::

    from noisynets.export import export_csv, export_npz
    export_npz("runs/<run>/trace.h5", "runs/<run>/trace.npz")
    export_csv("runs/<run>/trace.h5", "runs/<run>/trace_csv")
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from noisynets.files import atomic, atomic_folder
from noisynets.traces import TraceReader, as_reader, metric_sort_key

# The most values of one dataset a CSV export holds in memory at once (a block of records).
_BLOCK_VALUES = 1 << 18


def export_key(path: str) -> str:
    """The npz key of a dataset: its path without the leading '/', each '/' as '__'."""
    return path.lstrip("/").replace("/", "__")


def export_npz(trace: str | Path | TraceReader, out: str | Path) -> Path:
    """Every dataset (complete records and evaluations only) as an array keyed by
    ``export_key``, and ``attrs``: JSON text ``{group path: {name: value}}``. Returns ``out``."""
    reader = as_reader(trace)
    out = Path(out)
    arrays = {export_key(p): rows for p, rows in reader.arrays().items()}
    arrays["attrs"] = np.array(json.dumps(reader.attributes()))
    with _write(out, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return out


def export_csv(trace: str | Path | TraceReader, out: str | Path) -> Path:
    """A folder of CSV files (created if need be): ``metrics.csv``, ``records.csv``,
    ``attributes.json``, and one long-format file per traced dataset of two or more axes.
    Returns ``out``."""
    reader = as_reader(trace)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} is a file: name a folder for CSV files")
    with atomic_folder(out) as folder:  # every file complete, or none moved in
        _write_csv(reader, folder)
    return out


def _write_csv(reader: TraceReader, out: Path) -> None:
    """The CSV files of ``export_csv`` into the folder ``out``."""
    metrics = reader.metrics()
    names = sorted(metrics, key=metric_sort_key)
    with _write(out / "metrics.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(names)
        for i in range(min((len(v) for v in metrics.values()), default=0)):
            w.writerow([_csv_number(n, metrics[n][i]) for n in names])
    steps = reader.steps()
    records = len(steps)  # later records of a live run are left out of every file
    with _write(out / "records.csv", "w", newline="") as handle:
        handle.write("record,step\n")
        np.savetxt(handle, np.column_stack([np.arange(records), steps]), fmt="%d",
                   delimiter=",")
    with _write(out / "attributes.json", "w") as handle:
        json.dump(reader.attributes(), handle, indent=2)
        handle.write("\n")
    probe = reader.probe_index()
    for p, (shape, dtype) in reader.datasets().items():
        if not p.startswith("/traces/") or len(shape) < 2:
            continue
        name = export_key(p.removeprefix("/traces/"))
        if p.endswith("/spike_events"):
            rows = reader.read(p, slice(0, records)).astype(np.int64)
            rows[:, 2] = probe[rows[:, 2]]
            with _write(out / f"{name}.csv", "w", newline="") as handle:
                handle.write("record,time,sample,unit\n")
                np.savetxt(handle, rows, fmt="%d", delimiter=",")
            continue
        # Labels of the axes after the record axis: the time step, the sample's index in the
        # training set, the unit's (or input's) number in its layer.
        axes: list[tuple[str, np.ndarray | None]] = [("sample", probe)]
        if len(shape) >= 3:
            feature = "input" if p.endswith("/input") else "unit"
            axes.append((feature, reader.read(f"{p.rsplit('/', 1)[0]}/{feature}_index")))
        if len(shape) == 4:
            axes.insert(0, ("time", None))
        fmt = ["%d"] * len(shape) + ["%d" if np.dtype(dtype).kind in "ui" else "%.9g"]
        block = max(1, _BLOCK_VALUES // max(1, int(np.prod(shape[1:]))))
        with _write(out / f"{name}.csv", "w", newline="") as handle:
            handle.write(",".join(["record", *(a for a, _ in axes), "value"]) + "\n")
            for start in range(0, records, block):  # a block of records: memory stays small
                values = reader.read(p, slice(start, min(start + block, records)))
                grid = np.indices(values.shape).reshape(values.ndim, -1)
                labels = [g if index is None else index[g] for g, (_, index) in
                          zip(grid[1:], axes)]
                table = np.column_stack([grid[0] + start, *labels, values.reshape(-1)])
                np.savetxt(handle, table, fmt=fmt, delimiter=",")


def _csv_number(name: str, value: float) -> str:
    value = float(value)
    if name in ("epoch", "step") and value.is_integer():
        return str(int(value))
    return repr(value)


@contextmanager
def _write(path: Path, mode: str, **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)``, all or nothing (``files.atomic``): a full disk leaves no
    half-written file and is one ``ValueError``. (Within ``atomic_folder`` each file of a
    CSV export is also whole on its own.)"""
    with atomic(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
