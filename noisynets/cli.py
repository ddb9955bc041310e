"""The ``noisynets`` command: ``train`` (the main job) and the tools around it.

* ``noisynets train ...``: train a network; the run folder gets ``trace.h5`` among others.
* ``noisynets inspect FILE``: what a trace file holds, and its last metrics.
* ``noisynets plot FILE [-o OUT.png]``: the figure of a trace file (``plots.trace_figure``).
* ``noisynets export FILE --format {npz,csv} [-o OUT]``: the file's data for other tools
  (docs/traces.md describes both layouts).

``inspect``, ``plot`` and ``export`` also read a file whose run is still writing it, or was
killed: they see the complete records and evaluations.

A user mistake (an unknown name, a bad number, a missing or corrupt data file, a file that is
not a trace, an output that cannot be written) prints one line, ``noisynets: error: ...``, and
exits with status 2; it never shows a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import numpy as np

from noisynets.config import DEVICES, OPTIMIZERS, TrainConfig, load_toml
from noisynets.data import DATASETS
from noisynets.losses import LOSSES
from noisynets.network import ENCODINGS
from noisynets.noise import NOISES
from noisynets.rules import RULES
from noisynets.units import UNITS

if TYPE_CHECKING:
    import h5py

    from noisynets.traces import TraceReader


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def positive_float(text: str) -> float:
    value = nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--config", metavar="FILE.toml",
                   help="read settings from a TOML file (keys: the long option names with "
                        "underscores); options given on the command line win")
    p.add_argument("--algo", choices=RULES, help=f"learning rule (default {d.algo})")
    p.add_argument("--dataset", choices=DATASETS, help=f"data set (default {d.dataset})")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the data set's files")
    p.add_argument("--hidden", type=positive_int, nargs="+", metavar="N",
                   help="hidden layer sizes (default: the data set's preset)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: preset)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: preset)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: preset)")
    p.add_argument("--decor-lr", type=nonnegative_float,
                   help="decorrelation learning rate eta_R (default: preset)")
    p.add_argument("--decor-fraction", type=positive_float,
                   help="share of the batch used for the correlation estimate, in (0, 1]")
    p.add_argument("--noise", metavar="SPEC",
                   help="intrinsic node noise: NAME or NAME:key=value,... and sums joined by +; "
                        f"names: {', '.join(NOISES)} (default gaussian)")
    p.add_argument("--noise-std", type=positive_float, help="noise scale s (default: preset)")
    p.add_argument("--noise-samples", type=positive_int, help="noisy passes K per step (1)")
    p.add_argument("--both-noisy", action="store_true", default=None,
                   help="the noise cannot be switched off: both passes are noisy (anp, danp)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="torch optimizer (adam)")
    p.add_argument("--loss", choices=tuple(LOSSES), help="per-sample loss (ce)")
    p.add_argument("--unit", choices=UNITS, help="hidden units (leaky_relu)")
    p.add_argument("--time-steps", type=positive_int, help="time steps T (lif: 10, else 1)")
    p.add_argument("--encoding", choices=ENCODINGS, help="input over time: current | poisson")
    p.add_argument("--beta", type=positive_float, help="LIF membrane decay (0.9)")
    p.add_argument("--threshold", type=positive_float, help="LIF threshold (1.0)")
    p.add_argument("--threshold-noise", type=nonnegative_float,
                   help="std of Gaussian noise on the LIF threshold (0)")
    p.add_argument("--seed", type=nonnegative_int, help="seed of weights, noise and data order (0)")
    p.add_argument("--device", choices=DEVICES, help="auto | cpu | cuda (auto)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: a new one under ./runs/)")
    p.add_argument("--trace-every", type=nonnegative_int,
                   help="trace the probe samples every N steps into trace.h5 (50; 0: off)")
    p.add_argument("--trace-probe", type=positive_int, help="probe samples traced (16)")
    p.add_argument("--trace-layers", type=positive_int, nargs="+", metavar="K",
                   help="layers to trace, numbered from 1 (all)")
    p.add_argument("--trace-units", type=nonnegative_int,
                   help="most units (and inputs) traced per layer, spread evenly (256; 0: all)")
    p.add_argument("--spike-events", action="store_true", default=None,
                   help="also store spikes as event lists (record, time, sample, unit)")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object on the last line of stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_parser() -> Parser:
    parser = Parser(
        prog="noisynets", description="Learning in noisy networks by node perturbation."
    )
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    train = sub.add_parser("train", help="train a network (the main job)")
    add_train_arguments(train)
    trace_file = "a trace file (the trace.h5 of a run folder), also one still being written"
    inspect = sub.add_parser("inspect", help="what a trace file holds, and its last metrics")
    inspect.add_argument("file", metavar="FILE", help=trace_file)
    plot = sub.add_parser("plot", help="draw the figure of a trace file (PNG)")
    plot.add_argument("file", metavar="FILE", help=trace_file)
    plot.add_argument("-o", "--output", metavar="OUT.png",
                      help="the figure (default: FILE's name with .png, beside it)")
    export = sub.add_parser("export", help="write a trace file's data as .npz or CSV files")
    export.add_argument("file", metavar="FILE", help=trace_file)
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                        help="npz: one archive of every dataset; csv: a folder of CSV files")
    export.add_argument("-o", "--output", metavar="OUT",
                        help="the .npz file or the CSV folder (default: beside FILE, "
                             "FILE's name with .npz or _csv)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the TOML file, then the command line."""
    fields = load_toml(args.config) if args.config else {}
    for name in TrainConfig.__dataclass_fields__:
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    try:
        return TrainConfig(**fields)
    except TypeError as e:
        raise ValueError(str(e)) from None


def cmd_train(args: argparse.Namespace) -> int:
    from noisynets.training import train

    config = config_from_args(args)
    progress = not args.no_progress and sys.stderr.isatty()
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = train(config, progress=progress, log=log)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"final test accuracy {summary['test_accuracy']:.4f} after {summary['epochs']} "
              f"epochs in {summary['seconds']:.1f} s; results in {summary['out']}")
    return 0


# --- inspect, plot, export -----------------------------------------------------------------

EXPORT_FORMATS: tuple[str, ...] = ("npz", "csv")
_READ_TRIES = 40
T = TypeVar("T")


def open_trace(path: str | Path) -> TraceReader:
    """A ``TraceReader`` of ``path``, or a ``ValueError`` that says what is wrong with it."""
    import h5py

    from noisynets.traces import TraceReader

    p = Path(path)
    if not p.exists():
        raise ValueError(f"trace file {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"{str(p)!r} is a folder: name a trace file, e.g. "
                         f"{str(p / 'trace.h5')!r}")
    try:
        hdf5 = h5py.is_hdf5(p)
    except OSError as e:
        raise ValueError(f"cannot read {str(p)!r}: {e}") from None
    if not hdf5:
        raise ValueError(f"{str(p)!r} is not an HDF5 file (a noisynets trace file is the "
                         "trace.h5 of a run folder)")
    return retry_read(lambda: TraceReader(p), p)


def retry_read(read: Callable[[], T], path: str | Path) -> T:
    """``read()``, tried again for a while when it fails as a read can while the run writes the
    file (the writer holds it for a moment per record); then a ``ValueError``."""
    for attempt in range(_READ_TRIES):
        try:
            return read()
        except (OSError, KeyError) as e:
            if attempt == _READ_TRIES - 1:
                message = " ".join(str(e).split()).strip("\"'")
                raise ValueError(f"cannot read trace file {str(path)!r}: {message}") from None
            time.sleep(0.05)
    raise AssertionError("unreachable")


def schema_row(path: str) -> tuple[str, str, str, str] | None:
    """The ``traces.SCHEMA`` row a dataset path falls under (None: not in the schema)."""
    from noisynets.traces import SCHEMA

    pattern = re.sub(r"^/metrics/[^/]+$", "/metrics/<name>", path)
    pattern = re.sub(r"/layer_\d+/", "/layer_<k>/", pattern)
    return next((row for row in SCHEMA if row[0] == pattern), None)


def per_record(path: str) -> bool:
    """Whether a dataset has one row per record (its first axis is ``records``)."""
    row = schema_row(path)
    return row is not None and row[1].startswith("(records")


def complete(f: h5py.File, path: str) -> np.ndarray:
    """A dataset's rows of complete records and evaluations: a run killed while it writes can
    leave a record's data without its step (the writer's last act), or an evaluation's first
    metrics without the rest; those rows are left out."""
    d = f[path]
    if per_record(path):
        return d[: f["traces/step"].shape[0]]
    if path.startswith("/metrics/"):
        return d[: min(m.shape[0] for m in f["metrics"].values())]
    if path.endswith("/spike_events"):
        events = d[:]
        return events[events[:, 0] < f["traces/step"].shape[0]]
    return d[:]


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a JSON-able value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def file_attributes(f: h5py.File) -> dict[str, dict[str, Any]]:
    """``{group path: {name: value}}`` of every group with attributes; the root's ``config``
    (JSON text in the file) decoded."""
    import h5py

    groups = {"/": f}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and len(obj.attrs):
            groups["/" + name] = obj

    f.visititems(visit)
    attrs = {path: {k: _plain(v) for k, v in g.attrs.items()} for path, g in groups.items()}
    if isinstance(attrs["/"].get("config"), str):
        try:
            attrs["/"]["config"] = json.loads(attrs["/"]["config"])
        except json.JSONDecodeError:
            pass
    return attrs


def dataset_paths(f: h5py.File) -> list[str]:
    import h5py

    found: list[str] = []
    f.visititems(lambda name, obj: found.append("/" + name)
                 if isinstance(obj, h5py.Dataset) else None)
    return sorted(found, key=_natural)


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# inspect

_METRIC_ORDER = ("epoch", "step", "test_accuracy", "train_loss", "test_loss", "seconds",
                 "zero_change_fraction")


def describe(reader: TraceReader) -> str:
    """The text ``noisynets inspect`` prints."""
    from noisynets.plots import layer_metric, metrics_table
    from noisynets.traces import open_h5

    attrs = reader.attrs
    lines = [f"trace file    {reader.path} ({reader.path.stat().st_size / 1e6:.2f} MB)"]
    lines.append(f"format        {attrs.get('format')}, version {attrs.get('format_version')}")
    for name in ("created", "device", "seed"):
        lines.append(f"{name:<13} {attrs.get(name, '?')}")
    lines.append(f"versions      noisynets {attrs.get('noisynets_version', '?')}, "
                 f"torch {attrs.get('torch_version', '?')}")
    config = attrs.get("config")
    if isinstance(config, dict) and config:
        items = [f"{k} = {_compact(v)}" for k, v in config.items()]
        lines.extend(_wrap(items, "config        ", " " * 14))
    with open_h5(reader.path) as f:
        steps = f["traces/step"][:]
        probe = f["traces/probe_index"].shape[0]
        layers = sorted((k for k in f["traces"] if k.startswith("layer_")), key=_natural)
        layer_attrs = {k: dict(f["traces"][k].attrs) for k in layers}
        traced = {k: (f["traces"][k]["unit_index"].shape[0],
                      f["traces"][k]["input_index"].shape[0]) for k in layers}
        events = {k: "spike_events" in f["traces"][k] for k in layers}
        paths = dataset_paths(f)
        shapes = {p: (f[p].shape, str(f[p].dtype)) for p in paths}
    if len(steps):
        lines.append(f"records       {len(steps)} (steps {steps[0]}..{steps[-1]})")
    else:
        lines.append("records       0 (none yet)")
    lines.append(f"probe         {probe} samples")
    lines.append("layers")
    for k in layers:
        a = layer_attrs[k]
        spiking = "spiking" if bool(a.get("spiking", False)) else "not spiking"
        if events[k]:
            spiking += ", spike events"
        lines.append(f"  {k:<9} {a.get('units', '?')} units, {a.get('inputs', '?')} inputs; "
                     f"traced {traced[k][0]} units, {traced[k][1]} inputs; {spiking}")
    lines.append("datasets")
    width = max((len(p) for p in paths), default=0)
    for p in paths:
        shape, dtype = shapes[p]
        lines.append(f"  {p:<{width}}  {str(shape):<22} {dtype}")
    metrics = metrics_table(reader.metrics())
    evaluations = min((len(v) for v in metrics.values()), default=0)
    if not evaluations:
        lines.append("final metrics: none yet (no evaluation written)")
        return "\n".join(lines)
    last = {name: float(v[-1]) for name, v in metrics.items()}
    lines.append(f"final metrics (the last of {evaluations} evaluations)")
    scalars = [name for name in _METRIC_ORDER if name in last]
    per_layer = {name: layer_metric(metrics, name)
                 for name in ("alignment", "decorrelation", "estimate_norm")}
    shown = set(scalars) | {f"{n}_layer_{k}" for n, s in per_layer.items() for k in s}
    scalars += sorted(set(last) - shown, key=_natural)
    lines.extend(_wrap([f"{n} = {_number(n, last[n])}" for n in scalars], "  ", "  "))
    columns = [n for n, s in per_layer.items() if s]
    if columns:
        lines.append("  " + f"{'layer':<7}" + "".join(f"{n:>15}" for n in columns))
        for k in sorted({k for s in per_layer.values() for k in s}):
            row = "".join(f"{per_layer[n][k][-1]:>15.4g}" if k in per_layer[n] else f"{'-':>15}"
                          for n in columns)
            lines.append(f"  {k:<7}{row}")
    return "\n".join(lines)


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


def cmd_inspect(args: argparse.Namespace) -> int:
    reader = open_trace(args.file)
    print(retry_read(lambda: describe(reader), reader.path))
    return 0


# plot

def cmd_plot(args: argparse.Namespace) -> int:
    from noisynets.plots import trace_figure

    reader = open_trace(args.file)
    out = Path(args.output) if args.output else reader.path.with_suffix(".png")
    check_output(out)
    path = retry_read(lambda: trace_figure(reader, out), reader.path)
    print(f"figure written to {path}")
    return 0


def check_output(out: Path, folder: bool = False) -> None:
    """A ``ValueError`` unless ``out`` can be written (a file, or with ``folder`` a folder)."""
    if folder:
        if out.exists() and not out.is_dir():
            raise ValueError(f"output {str(out)!r} is a file: name a folder for CSV files")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create output folder {str(out)!r}: {e.strerror}") from None
    elif out.is_dir():
        raise ValueError(f"output {str(out)!r} is a folder: name a file")
    elif not out.parent.is_dir():
        raise ValueError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not exist")


# export

def export_key(path: str) -> str:
    """The npz key of a dataset: its path without the leading '/', each '/' as '__'."""
    return path.lstrip("/").replace("/", "__")


def export_npz(path: str | Path, out: str | Path) -> Path:
    """Every dataset (complete records and evaluations only) as an array keyed by
    ``export_key``, and ``attrs``: JSON text ``{group path: {name: value}}``."""
    from noisynets.traces import open_h5

    out = Path(out)
    with open_h5(path) as f:
        arrays = {export_key(p): complete(f, p) for p in dataset_paths(f)}
        attrs = file_attributes(f)
    arrays["attrs"] = np.array(json.dumps(attrs))
    with _write(out, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return out


def export_csv(path: str | Path, out: str | Path) -> Path:
    """A folder of CSV files (docs/traces.md, "Export"): ``metrics.csv``, ``records.csv``,
    ``attributes.json``, and one long-format file per traced dataset of two or more axes."""
    from noisynets.traces import open_h5

    out = Path(out)
    with open_h5(path) as f:
        metrics = {p.rsplit("/", 1)[1]: complete(f, p) for p in dataset_paths(f)
                   if p.startswith("/metrics/")}
        names = sorted(metrics, key=_metric_column)
        with _write(out / "metrics.csv", "w", newline="") as handle:
            w = csv.writer(handle)
            w.writerow(names)
            for i in range(min((len(v) for v in metrics.values()), default=0)):
                w.writerow([_csv_number(n, metrics[n][i]) for n in names])
        steps = f["traces/step"][:]
        records = len(steps)
        with _write(out / "records.csv", "w", newline="") as handle:
            handle.write("record,step\n")
            np.savetxt(handle, np.column_stack([np.arange(records), steps]), fmt="%d",
                       delimiter=",")
        with _write(out / "attributes.json", "w") as handle:
            json.dump(file_attributes(f), handle, indent=2)
            handle.write("\n")
        probe = f["traces/probe_index"][:]
        for p in dataset_paths(f):
            d = f[p]
            if not p.startswith("/traces/") or d.ndim < 2:
                continue
            name = export_key(p.removeprefix("/traces/"))
            if p.endswith("/spike_events"):
                rows = complete(f, p).astype(np.int64)
                rows[:, 2] = probe[rows[:, 2]]
                with _write(out / f"{name}.csv", "w", newline="") as handle:
                    handle.write("record,time,sample,unit\n")
                    np.savetxt(handle, rows, fmt="%d", delimiter=",")
                continue
            # Labels of the axes after the record axis: the sample's index in the training
            # set, the unit's (or input's) number in its layer, the time step.
            layer = f[p.rsplit("/", 1)[0]]
            features = ("input", layer["input_index"][:]) if p.endswith("/input") else \
                ("unit", layer["unit_index"][:] if "unit_index" in layer else None)
            axes = {2: [("sample", probe)], 3: [("sample", probe), features],
                    4: [("time", None), ("sample", probe), features]}[d.ndim]
            fmt = ["%d"] * d.ndim + ["%d" if d.dtype.kind in "ui" else "%.9g"]
            with _write(out / f"{name}.csv", "w", newline="") as handle:
                handle.write(",".join(["record", *(a for a, _ in axes), "value"]) + "\n")
                for r in range(records):  # one record at a time: memory stays small
                    block = d[r]
                    grid = np.indices(block.shape).reshape(block.ndim, -1)
                    labels = [g if index is None else index[g] for g, (_, index) in
                              zip(grid, axes)]
                    table = np.column_stack([np.full(block.size, r), *labels,
                                             block.reshape(-1)])
                    np.savetxt(handle, table, fmt=fmt, delimiter=",")
    return out


def _metric_column(name: str) -> tuple[int, list[Any]]:
    if name in _METRIC_ORDER:
        return (_METRIC_ORDER.index(name), [])
    return (len(_METRIC_ORDER), _natural(name))


def _csv_number(name: str, value: float) -> str:
    value = float(value)
    if name in ("epoch", "step") and value.is_integer():
        return str(int(value))
    return repr(value)


def _write(path: Path, mode: str, **kwargs: Any) -> IO[Any]:
    try:
        return open(path, mode, **kwargs)
    except OSError as e:
        raise ValueError(f"cannot write {str(path)!r}: {e.strerror}") from None


def cmd_export(args: argparse.Namespace) -> int:
    reader = open_trace(args.file)
    if args.format == "npz":
        out = Path(args.output) if args.output else reader.path.with_suffix(".npz")
        check_output(out)
        retry_read(lambda: export_npz(reader.path, out), reader.path)
    else:
        out = (Path(args.output) if args.output
               else reader.path.with_name(reader.path.stem + "_csv"))
        check_output(out, folder=True)
        retry_read(lambda: export_csv(reader.path, out), reader.path)
    print(f"{args.format} export written to {out}")
    return 0


COMMANDS = {"train": cmd_train, "inspect": cmd_inspect, "plot": cmd_plot, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``noisynets`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["train"]
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("name a command: " + ", ".join(COMMANDS))
        return COMMANDS[args.command](args)
    except (UsageError, ValueError) as e:
        message = " ".join(str(e).split())
        print(f"noisynets: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("noisynets: interrupted; what was measured so far is in the run folder",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
