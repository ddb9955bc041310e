"""Sweeps: every combination of a grid of settings, each an ordinary run, on a Dask cluster.

A sweep file (TOML) has two tables. ``[grid]`` lists values; every combination of them is one
run. ``[train]`` holds the settings every run shares. Both take the keys of
``noisynets train --config`` (the long options with underscores)::

    [grid]
    algo = ["bp", "danp"]
    seed = [0, 1, 2]

    [train]
    dataset = "fashion-mnist"
    epochs = 20

``run_sweep(sweep, out)`` runs the combinations through Dask distributed -- an embedded local
cluster sized to the machine, or a running cluster at ``scheduler`` (dask-jobqueue on SLURM or
PBS, Kubernetes, a set of machines) -- and writes under ``out``:

* one run folder per combination, ``out/<key>-<value>_<key>-<value>...`` (``noisynets.run``:
  results.json, trace.h5, model.pt, checkpoint.pt, figures);
* ``runs.csv`` -- one row per run: its grid values, status, final metrics, seconds, error;
* ``summary.csv`` and ``summary.md`` -- per combination of the grid's values other than
  ``seed``: the number of seeds and the final metric's mean, standard deviation (n - 1),
  minimum and maximum;
* ``summary.png`` -- the mean learning curve per group with its seed range, and the final
  metric of every seed;
* ``sweep.json`` -- all of the above, with every run's history.

A run folder that holds a finished run of the same settings is skipped, one with a checkpoint
is resumed from it (``noisynets.run.resume``), any other is started again: a killed sweep
finishes only what is missing. A run that fails is reported with its error and the others go
on. Runs start seed by seed (every combination of the first seed, then of the next), so a
sweep cut short holds whole seeds. Unless ``[train]`` sets ``threads``, each run gets
``cores // runs at once`` torch threads of its machine, so runs do not oversubscribe the
cores.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import itertools
import json
import logging
import math
import os
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisynets.config import TrainConfig, check_keys, check_values, read_toml, resolve
from noisynets.files import atomic, write_text_atomic

TABLES = ("grid", "train")
MAX_RUNS = 100_000
GROUP_EXCLUDED = ("seed",)  # the grid keys the summary pools over


@dataclass
class Run:
    """One combination: its folder name, its grid values and every setting of its run."""

    name: str
    values: dict[str, Any]
    fields: dict[str, Any]


@dataclass
class Sweep:
    """A grid of values and the settings all runs share (``load_sweep`` reads one)."""

    grid: dict[str, list[Any]]
    train: dict[str, Any] = field(default_factory=dict)
    where: str = "sweep"  # how errors name it: "sweep file 'x.toml'"

    def __post_init__(self) -> None:
        check_sweep(self.grid, self.train, self.where)

    def runs(self) -> list[Run]:
        """Every combination of the grid's values, in the file's order (the last key varies
        fastest), each checked as a train config."""
        keys = list(self.grid)
        runs = []
        names: set[str] = set()
        for combination in itertools.product(*(self.grid[k] for k in keys)):
            values = dict(zip(keys, combination))
            name = run_name(values)
            if name in names:
                raise ValueError(f"grid values {values} give the folder name {name!r} of "
                                 "another combination: make the values differ in more than "
                                 "punctuation")
            names.add(name)
            fields = {**self.train, **values}
            try:
                resolve(TrainConfig(**fields))
            except ValueError as e:
                raise ValueError(f"the run {name}: {e}") from None
            runs.append(Run(name, values, fields))
        return runs


def check_sweep(grid: Any, train: Any, where: str) -> None:
    """``ValueError`` unless ``grid`` maps train keys to non-empty lists of distinct values
    and ``train`` maps other train keys to values."""
    if not isinstance(grid, dict) or not isinstance(train, dict):
        raise ValueError(f"{where}: [grid] and [train] must be tables of key = value")
    check_keys(grid, f"{where} [grid]")
    check_keys(train, f"{where} [train]")
    check_values(grid, f"{where} [grid]", grid=True)
    check_values(train, f"{where} [train]")
    for key in ("out", "resume"):
        if key in grid or key in train:
            raise ValueError(f"{where}: {key!r} cannot be set: the sweep gives every run its "
                             "own folder under --out")
    both = sorted(set(grid) & set(train))
    if both:
        raise ValueError(f"{where}: {', '.join(both)} in both [grid] and [train]: keep each "
                         "key in one table")
    count = 1
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where} [grid]: {key} = {values!r} must be a non-empty list of "
                             f"values, e.g. {key} = [{_example(key)}]")
        texts = [json.dumps(v) for v in values]
        if len(set(texts)) < len(texts):
            raise ValueError(f"{where} [grid]: {key} lists a value twice: {values!r}")
        count *= len(values)
    if count > MAX_RUNS:
        raise ValueError(f"{where}: the grid makes {count:_} runs, more than {MAX_RUNS:_}: "
                         "split it into several sweeps")


def _example(key: str) -> str:
    return {"algo": '"bp", "danp"', "seed": "0, 1, 2"}.get(key, "...")


def load_sweep(path: str | Path) -> Sweep:
    """The sweep in a TOML file with tables ``[grid]`` and ``[train]`` (module doc)."""
    where = f"sweep file {str(path)!r}"
    data = read_toml(path, "sweep file")
    for key in data:
        if key not in TABLES:
            close = difflib.get_close_matches(key, TABLES, n=1, cutoff=0.5)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise ValueError(f"{where}: unknown table [{key}]{hint}; a sweep file has [grid] "
                             "(the values to combine) and [train] (the settings all runs share)")
    sweep = Sweep(data.get("grid", {}), data.get("train", {}), where)
    try:
        sweep.runs()
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return sweep


def run_name(values: dict[str, Any]) -> str:
    """The folder of a combination: ``algo-bp_seed-0``; a list value joins with ``x``."""
    if not values:
        return "run"
    return "_".join(f"{key}-{re.sub(r'[^A-Za-z0-9.+-]+', '-', value_text(value)) or 'none'}"
                    for key, value in values.items())


def value_text(value: Any) -> str:
    """A grid value in a few characters: ``[100, 50]`` is ``100x50``, ``0.001`` is ``0.001``."""
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- running ------------------------------------------------------------------------------


def finished(folder: Path, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of the finished run in ``folder`` when it is one of these settings; else
    ``None``. A folder holding a run of other settings is a ``ValueError``."""
    results = folder / "results.json"
    if not results.exists():
        return None
    try:
        if not results.is_file():  # a FIFO would block the read
            raise OSError
        summary = json.loads(results.read_text())
        recorded = summary["config"]
        if not isinstance(recorded, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None  # damaged: the run starts again
    wanted = resolve(TrainConfig(**{**fields, "out": str(folder)}))
    differ = [k for k, v in wanted.to_dict().items()
              if k not in ("out", "threads") and recorded.get(k, v) != v]
    if differ:
        shown = ", ".join(f"{k} {recorded.get(k)!r} (the sweep: {getattr(wanted, k)!r})"
                          for k in differ[:3])
        raise ValueError(f"{folder} holds a run of other settings: {shown}; remove the folder "
                         "or give the sweep another --out")
    done = summary.get("epochs") == wanted.epochs and (folder / "model.pt").exists()
    return summary if done else None


def execute(fields: dict[str, Any], folder: str, threads: int | dict[str, int] | None
            ) -> dict[str, Any]:
    """Run (or resume) one combination in ``folder``; on a Dask worker or in this process.
    Returns ``{"status": "done", "summary": ...}`` or ``{"status": "failed", "error": ...}``."""
    from noisynets.checkpoints import CHECKPOINT_FILE
    from noisynets.run import resume, train

    if isinstance(threads, dict):  # per worker, from the cluster's layout
        threads = threads.get(_worker_address(), None) or _cores()
    fields = dict(fields)
    if fields.get("threads") is None and threads is not None:
        fields["threads"] = threads
    path = Path(folder)
    try:
        if (path / CHECKPOINT_FILE).exists():
            result = resume(path, progress=False, log=None, threads=fields.get("threads"),
                            model=fields.get("model"))  # the sweep file names its model
        else:
            result = train(TrainConfig(**{**fields, "out": folder}), progress=False, log=None,
                           overwrite=True)
        return {"status": "done", "summary": _strict(result.summary())}
    except Exception as e:  # a failed run is reported; the sweep goes on
        return {"status": "failed", "error": f"{type(e).__name__}: {' '.join(str(e).split())}"}


def _strict(summary: dict[str, Any]) -> dict[str, Any]:
    from noisynets.run import strict_json

    return strict_json(summary)


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class SweepResult:
    """What a sweep did: per run its name, grid values, status and summary or error."""

    out: str
    runs: list[dict[str, Any]]
    grid: dict[str, list[Any]]
    train: dict[str, Any]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["status"] == "failed"]


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> SweepResult:
    """Run every combination of ``sweep`` under ``out`` (module doc) and write the summary.

    ``scheduler``: the address of a running Dask scheduler, e.g. ``tcp://10.0.0.5:8786``;
    without it an embedded local cluster of ``workers`` processes (default: one per core, at
    most one per run). ``workers = 1`` without a scheduler runs in this process, no cluster.
    The workers of a running cluster write the run folders under ``out`` (made absolute), so
    they need it, and the data sets, at the same paths: a shared file system.
    """
    from tqdm import tqdm

    emit = log or (lambda line: None)
    out = Path(out).absolute()  # the workers of a cluster write there: a shared file system
    runs = sweep.runs()
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers {workers!r} must be an integer >= 1")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file: name a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create sweep folder {str(out)!r}: {e.strerror}") from None
    records: dict[str, dict[str, Any]] = {}
    todo: list[Run] = []
    for run in runs:
        summary = finished(out / run.name, run.fields)
        if summary is None:
            todo.append(run)
        else:
            records[run.name] = {"status": "skipped", "summary": summary}
    emit(f"sweep of {len(runs)} runs in {out}: {len(runs) - len(todo)} finished already, "
         f"{len(todo)} to run")
    if "seed" in sweep.grid:  # seed by seed: a sweep cut short has whole seeds
        todo.sort(key=lambda run: sweep.grid["seed"].index(run.values["seed"]))
    bar = tqdm(total=len(todo), disable=not progress, unit="run", desc="sweep", leave=False)

    def report(run: Run, record: dict[str, Any]) -> None:
        records[run.name] = record
        bar.update()
        line = f"{run.name}: {describe(record)}"
        if progress:
            tqdm.write(line)
        else:
            emit(line)

    try:
        if todo and scheduler is None and (workers or min(len(todo), _cores())) == 1:
            for run in todo:
                report(run, execute(run.fields, str(out / run.name), None))
        elif todo:
            _on_dask(todo, out, workers, scheduler, report)
    finally:
        bar.close()
        result = SweepResult(str(out), [
            {"name": r.name, "values": r.values, **records.get(r.name, {"status": "missing"})}
            for r in runs], sweep.grid, sweep.train)
        write_summary(result)
    return result


def _on_dask(todo: list[Run], out: Path, workers: int | None, scheduler: str | None,
             report: Callable[[Run, dict[str, Any]], None]) -> None:
    """Submit every run to a Dask cluster and report each as it ends; a worker that dies
    fails its run, not the sweep."""
    try:
        import dask
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ValueError("running a sweep on a Dask cluster needs dask and distributed: pip "
                         "install 'noisynets[sweep]' (or run it in this process with "
                         "--workers 1)") from None

    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.worker.daemon": False,
                          "logging.distributed": "error"}):
        if scheduler is None:
            n = workers or max(1, min(len(todo), _cores()))
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            threads: int | dict[str, int] = max(1, _cores() // n)
        else:
            cluster = None
        try:
            try:
                client = Client(cluster if cluster is not None else scheduler, timeout="20s")
            except (OSError, TimeoutError) as e:
                raise ValueError(f"cannot reach the Dask scheduler at {scheduler!r} ({e}): "
                                 "start one (docs/sweeps.md) or leave out --scheduler") from None
            with client:
                if cluster is None:
                    threads = cluster_threads(client)
                futures = {client.submit(execute, run.fields, str(out / run.name), threads,
                                         key=f"noisynets-{out.name}-{run.name}", pure=False):
                           run for run in todo}
                for future in as_completed(futures):
                    try:
                        record = future.result()
                    except Exception as e:  # the worker died (memory, a signal)
                        record = {"status": "failed",
                                  "error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
                    report(futures[future], record)
        finally:
            if cluster is not None:
                cluster.close()


def cluster_threads(client: Any) -> dict[str, int]:
    """Per worker of a running cluster: its machine's cores over the task slots of all the
    workers on that machine."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(_cores)
    slots: dict[str, int] = {}
    for info in workers.values():
        slots[info["host"]] = slots.get(info["host"], 0) + info["nthreads"]
    return {address: max(1, cores.get(address, 1) // slots[info["host"]])
            for address, info in workers.items()}


def describe(record: dict[str, Any]) -> str:
    """A run's outcome in a few words."""
    if record["status"] == "failed":
        return f"failed: {record['error']}"
    s = record["summary"]
    what = "finished earlier" if record["status"] == "skipped" else "done"
    score = (f"test accuracy {s['test_accuracy']:.4f}" if s.get("test_accuracy") is not None
             else f"test loss {s['test_loss']:.4g}")
    return f"{what}, {score} after {s['epochs']} epochs ({s['seconds']:.3g} s)"


# --- the summary ----------------------------------------------------------------------------

METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_loss")


def groups(result: SweepResult) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The runs grouped by their grid values other than ``seed``, in grid order."""
    keys = [k for k in result.grid if k not in GROUP_EXCLUDED]
    grouped: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for run in result.runs:
        values = {k: run["values"][k] for k in keys}
        grouped.setdefault(json.dumps(values), (values, []))[1].append(run)
    return list(grouped.values())


def seed_curve(histories: list[list[dict[str, Any]]], key: str, index: int | None = None
               ) -> tuple[list[int], list[float], list[float], list[float]]:
    """From every seed's epoch history: the epochs and the mean, minimum and maximum over the
    seeds of ``key`` (element ``index`` of a per-layer metric such as ``alignment``)."""
    table: dict[int, list[float]] = {}
    for history in histories:
        for h in history:
            value = h.get(key)
            if value is not None and index is not None:
                value = value[index]
            if value is not None:
                table.setdefault(h["epoch"], []).append(value)
    epochs = sorted(table)
    return (epochs, [statistics.fmean(table[e]) for e in epochs],
            [min(table[e]) for e in epochs], [max(table[e]) for e in epochs])


def spread(values: list[float]) -> dict[str, float | None]:
    """``n``, mean, standard deviation (n - 1; None for one value), minimum and maximum."""
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def score_name(result: SweepResult) -> str:
    """``test_accuracy`` for classification, ``test_loss`` for a regression sweep."""
    summaries = [r["summary"] for r in result.runs if "summary" in r]
    if summaries and all(s.get("test_accuracy") is None for s in summaries):
        return "test_loss"
    return "test_accuracy"


def summary_rows(result: SweepResult) -> list[dict[str, Any]]:
    """Per group: its grid values and the spread of each final metric over its seeds."""
    rows = []
    for values, runs in groups(result):
        done = [r["summary"] for r in runs if "summary" in r]
        row: dict[str, Any] = {**values, "runs": len(runs), "done": len(done)}
        for metric in METRICS + ("seconds",):
            numbers = [s[metric] for s in done if s.get(metric) is not None]
            for stat, value in spread(numbers).items():
                if stat != "n":
                    row[f"{metric}_{stat}"] = value
        rows.append(row)
    return rows


def write_summary(result: SweepResult) -> None:
    """``runs.csv``, ``summary.csv``, ``summary.md``, ``summary.png`` and ``sweep.json``."""
    out = Path(result.out)
    keys = list(result.grid)
    with atomic(out / "runs.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", *keys, "status", "epochs", *METRICS, "seconds", "folder",
                         "error"])
        for run in result.runs:
            s = run.get("summary", {})
            writer.writerow([run["name"], *(_cell(run["values"][k]) for k in keys),
                             run["status"], s.get("epochs", ""),
                             *(_cell(s.get(m)) for m in METRICS), _cell(s.get("seconds")),
                             str(out / run["name"]), run.get("error", "")])
    rows = summary_rows(result)
    with atomic(out / "summary.csv") as tmp, tmp.open("w", newline="") as f:
        fields = list(rows[0]) if rows else []
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    write_text_atomic(out / "summary.md", markdown_table(result, rows))
    document = {"out": result.out, "grid": result.grid, "train": result.train,
                "summary": rows, "runs": result.runs}
    write_text_atomic(out / "sweep.json",
                      json.dumps(document, indent=1, allow_nan=False) + "\n")
    if any("summary" in r for r in result.runs):
        from noisynets.plots import sweep_figure

        sweep_figure(result, out / "summary.png")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def markdown_table(result: SweepResult, rows: list[dict[str, Any]]) -> str:
    """One line per group: mean ± std (min-max) of the final metrics over its seeds."""
    keys = [k for k in result.grid if k not in GROUP_EXCLUDED]
    score = score_name(result)
    metrics = [score]
    if any(r.get("val_accuracy_mean") is not None for r in rows) and score == "test_accuracy":
        metrics.insert(0, "val_accuracy")
    header = [*keys, "seeds", *(m.replace("_", " ") for m in metrics), "train loss",
              "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [_cell(row[k]) for k in keys]
        cells.append(f"{row['done']}" + ("" if row["done"] == row["runs"]
                                         else f" of {row['runs']}"))
        for metric in [*metrics, "train_loss"]:
            cells.append(_mean_spread(row, metric))
        seconds = row.get("seconds_mean")
        cells.append("-" if seconds is None else f"{seconds:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Final values; mean ± standard deviation over seeds (n - 1), the range in "
            "brackets. The train loss is the mean over the last epoch's steps.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def _mean_spread(row: dict[str, Any], metric: str) -> str:
    mean = row.get(f"{metric}_mean")
    if mean is None:
        return "-"
    std = row.get(f"{metric}_std")
    if std is None or not math.isfinite(std):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f} [{row[f'{metric}_min']:.4f}, {row[f'{metric}_max']:.4f}]"


def as_dict(result: SweepResult) -> dict[str, Any]:
    """The result as one JSON-ready object (``noisynets sweep --json``)."""
    return {**dataclasses.asdict(result), "summary": summary_rows(result),
            "failed": [r["name"] for r in result.failed]}
