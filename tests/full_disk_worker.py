"""``noisynets ARGV`` in a process of its own, with the disk filled up at a chosen moment
(tests/test_safe_files.py): ``python tests/full_disk_worker.py MODE FILLER ARGV...``.

* ``trace:N``: the disk is filled to the last byte (the file ``FILLER``) just before the N-th
  trace record is written;
* ``checkpoint:N``: just before the N-th checkpoint is written, the disk is filled up to
  ``LEAVE`` bytes, so torch.save starts and fails part-way;
* ``noreserve``: the trace file's space is neither checked nor reserved, so its own writes
  meet the full disk: the last defence, HDF5 without its sieve buffer.

The process exits with ``main``'s status; a crash (SIGSEGV) shows as a negative status.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LEAVE = 64 * 1024


def fill(filler: Path, leave: int) -> None:
    """Write ``filler`` until only ``leave`` bytes are free (0: until the disk refuses)."""
    stat = os.statvfs(filler.parent)
    free = stat.f_bavail * stat.f_frsize - leave
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while free > 0:
            free -= os.write(fd, b"\0" * min(free, 1 << 20))
        while not leave:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)

def main() -> int:
    mode, filler, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    from noisynets import run, traces
    from noisynets.cli import main as cli

    kind, _, when = mode.partition(":")
    calls = {"n": 0}
    if kind == "trace":
        append = traces.TraceWriter.append_record

        def append_record(self, step, record):
            calls["n"] += 1
            if calls["n"] == int(when):
                fill(filler, 0)
            return append(self, step, record)

        traces.TraceWriter.append_record = append_record
    elif kind == "checkpoint":
        save = run.save_atomic

        def save_atomic(obj, path):
            if Path(path).name == "checkpoint.pt":
                calls["n"] += 1
                if calls["n"] == int(when):
                    fill(filler, LEAVE)
            return save(obj, path)

        run.save_atomic = save_atomic
    elif kind == "noreserve":  # neither the free-space check nor the reservation
        traces.reserve = lambda path: None
        traces.TraceWriter._planned_bytes = lambda self, evaluations: -traces._METADATA_ROOM
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
