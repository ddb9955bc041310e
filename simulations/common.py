"""What every simulation shares: its command line, running its sweeps, reading their runs.

Each simulation is a sweep definition (``noisynets.sweep``: a ``[grid]`` and ``[train]``
table, written as dicts) in a full and a ``--quick`` form, plus its figure. Its command line::

    python simulations/<name>.py [--quick] [--epochs E] [--seeds N] [--out DIR]
                                 [--workers N] [--scheduler ADDRESS]

``--quick`` runs a small form on the embedded digits in under a minute (the test suite runs
it). The runs land in ``DIR`` (default ``runs/simulations/<name>`` or ``..._quick``), one
sweep folder per sweep; runs that finished earlier are skipped, so a second call only redraws
the figure.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from noisynets.cli import positive_int  # noqa: E402
from noisynets.sweep import Sweep, SweepResult, groups, run_sweep  # noqa: E402
from noisynets.sweep import seed_curve as curve  # noqa: E402, F401  (the simulations' curves)


def arguments(name: str, doc: str, epochs: int | None = None,
              extra: Any = None) -> argparse.Namespace:
    """The simulation's options (module doc); ``args.out`` resolved to its folder. With
    ``epochs`` (the full form's), ``--epochs`` may change them; ``extra(parser)`` adds a
    simulation's own options."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    if extra is not None:
        extra(p)
    if epochs is not None:
        p.add_argument("--epochs", type=positive_int, default=epochs,
                       help=f"epochs of the full form ({epochs}); the folder name says so")
    p.add_argument("--quick", action="store_true",
                   help="a small form on the embedded digits, under a minute")
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="seeds 0..N-1 of the full form (3); a later call with more adds the "
                        "missing seeds to the same sweeps")
    p.add_argument("--out", metavar="DIR", help="folder of the simulation's sweeps")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="runs at once on an embedded Dask cluster (default: one per core; "
                        "1: in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask cluster's scheduler")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args()
    if args.out is None:
        suffix = "_quick" if args.quick else (
            f"_{args.epochs}epochs" if epochs is not None and args.epochs != epochs else "")
        args.out = str(Path("runs") / "simulations" / (name + suffix))
    if args.quick and args.workers is None and args.scheduler is None:
        args.workers = 1  # small runs: a cluster would cost more than it saves
    args.seed_list = list(range(args.seeds))
    return args


def sweep(args: argparse.Namespace, name: str, grid: dict[str, list[Any]],
          train: dict[str, Any]) -> SweepResult:
    """Run one sweep of the simulation into ``args.out/name`` and say how long it took."""
    start = time.perf_counter()
    result = run_sweep(Sweep(grid, train), Path(args.out) / name, workers=args.workers,
                       scheduler=args.scheduler, progress=not args.no_progress, log=print)
    if result.failed:
        raise SystemExit(f"{len(result.failed)} runs of {name} failed: "
                         + "; ".join(f"{r['name']}: {r['error']}" for r in result.failed))
    print(f"{name}: {len(result.runs)} runs in {time.perf_counter() - start:.0f} s "
          f"({platform.node()}, {platform.processor() or platform.machine()})")
    return result


def histories(result: SweepResult) -> list[tuple[dict[str, Any], list[list[dict[str, Any]]]]]:
    """Per group of runs (grid values other than the seed): every seed's epoch history."""
    return [(values, [r["summary"]["history"] for r in runs if "summary" in r])
            for values, runs in groups(result)]


def final(result: SweepResult, values: dict[str, Any], key: str) -> list[float]:
    """The final ``key`` (e.g. ``test_accuracy``) of every seed of the group ``values``."""
    return [r["summary"][key] for r in result.runs if "summary" in r
            and all(r["values"].get(k) == v for k, v in values.items())
            and r["summary"].get(key) is not None]


def save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")
