"""What tracing costs: the default run (``noisynets train``) with tracing at the default rate
against the same run with ``--trace-every 0``, alternated, each ``--repeats`` times.

    python benchmarks/trace_overhead.py
    python benchmarks/trace_overhead.py --trace-every 10 --repeats 3

Prints each run's training seconds (as reported in results.json), the medians and their ratio,
and whether both runs ended with the same test accuracy (tracing must not change a run).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from noisynets.config import TrainConfig
from noisynets.run import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace-every", type=int, default=TrainConfig().trace_every)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    seconds: dict[int, list[float]] = {args.trace_every: [], 0: []}
    accuracy: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for every in seconds:
                out = Path(folder) / f"run-{every}-{repeat}"
                result = train(TrainConfig(trace_every=every, out=str(out)), progress=False,
                               log=None)
                seconds[every].append(result.seconds)
                accuracy[every] = result.history[-1].test_accuracy
                records = len(list(out.glob("trace.h5")))
                print(f"trace every {every:>3} steps: {result.seconds:6.2f} s "
                      f"(trace file: {'yes' if records else 'no'})", flush=True)
    traced, plain = (statistics.median(seconds[k]) for k in seconds)
    print(f"median {traced:.2f} s traced vs {plain:.2f} s untraced: tracing costs "
          f"{100 * (traced / plain - 1):+.1f} % of the training time")
    same = accuracy[args.trace_every] == accuracy[0]
    print(f"final test accuracy {accuracy[0]:.4f} untraced, {accuracy[args.trace_every]:.4f} "
          f"traced: {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
