"""Writing a run's files so that a full disk, a kill or a bad path never leaves a broken one.

* ``atomic(path)``: a context manager that yields a temporary path beside ``path``
  (``.NAME.tmp-<pid>``); whatever is written there replaces ``path`` by one ``os.replace``
  after an ``fsync`` when the block ends without an error, and is removed when it raises.
  So a reader sees the old file or the new one, never a half-written one, and a full disk
  leaves the old file as it was. Any error of the writer (``OSError``, torch's
  ``RuntimeError`` on a full disk, matplotlib's) becomes one ``ValueError``: ``cannot write
  'PATH': REASON``.
* ``write_text_atomic(path, text)``: ``atomic`` for a text file (results, summaries).
* ``remove_stale(folder)``: the temporaries a killed process (SIGKILL: no cleanup ran) left in
  ``folder``; those of a process still alive stay.
* ``reserve(path)``: the blocks of an existing file allocated on disk now
  (``posix_fallocate``), so writes into it later never meet a full disk.
* ``why(error)``: the one-line reason of an ``OSError``.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "a.txt"
    >>> write_text_atomic(path, "hello")
    >>> path.read_text()
    'hello'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)(\.[A-Za-z0-9]+)?$")


def why(error: BaseException) -> str:
    """The reason of ``error`` in one line: ``strerror`` of an ``OSError``, else its text."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = " ".join(str(error).split())
    hdf5 = re.search(r"error message = '([^']+)'", text)  # HDF5's report of a failed write
    if hdf5:
        return hdf5.group(1)
    if "unexpected pos" in text or "PytorchStreamWriter failed" in text:
        return "the write failed part-way (is the disk full?)"
    return text or type(error).__name__


def temporary(path: str | Path, suffix: bool = False) -> Path:
    """The temporary file beside ``path`` that this process writes before the rename:
    ``.NAME.tmp-<pid>``, with ``path``'s suffix again at the end if ``suffix`` (for a writer
    that picks the format by it, as matplotlib does)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix if suffix else ''}")


@contextmanager
def atomic(path: str | Path, suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path (``temporary``); on success it replaces ``path`` (fsynced,
    renamed), on any error it is removed and the error becomes ``ValueError("cannot write
    'PATH': ...")``."""
    path = Path(path)
    tmp = temporary(path, suffix)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as e:
        full = isinstance(e, RuntimeError) and _nearly_full(tmp.parent)
        _remove(tmp)
        if full:  # torch.save's RuntimeError hides the ENOSPC behind it
            raise ValueError(f"cannot write {str(path)!r}: No space left on device") from None
        if isinstance(e, ValueError) and str(e).startswith("cannot write"):
            raise
        raise ValueError(f"cannot write {str(path)!r}: {why(e)}") from None
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """``path.write_bytes(data)``, all or nothing."""
    with atomic(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``path.write_text(text)``, all or nothing."""
    write_bytes_atomic(path, text.encode())


def remove_stale(folder: str | Path) -> list[Path]:
    """Remove the ``.NAME.tmp-<pid>`` files in ``folder`` whose process is gone (a run killed
    while it wrote them); returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and not _alive(int(match.group(1))) and not entry.is_symlink() \
                and entry.is_file():
            _remove(entry)
            removed.append(entry)
    return removed


def reserve(path: str | Path) -> None:
    """Allocate every block of the file ``path`` on disk now (its holes included), so that
    later writes within its size never fail for want of space; ``OSError`` if the disk has
    no room (the file is left as it was: the caller removes it)."""
    with open(path, "rb+") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            os.posix_fallocate(f.fileno(), 0, size)


def _nearly_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 2**20


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
