"""Writing a run's files so that a full disk, a kill or a bad path never leaves a broken one.

* ``atomic(path)``: a context manager that yields a temporary path beside ``path``
  (``.NAME.tmp-<pid>``); whatever is written there replaces ``path`` by one ``os.replace``
  after an ``fsync`` when the block ends without an error, and is removed when it raises.
  So a reader sees the old file or the new one, never a half-written one, and a full disk
  leaves the old file as it was. Any error of the writer (``OSError``, torch's
  ``RuntimeError`` on a full disk, matplotlib's) becomes one ``ValueError``: ``cannot write
  'PATH': REASON``.
* ``write_text_atomic(path, text)``: ``atomic`` for a text file (results, summaries).
* ``atomic_folder(path)``: ``atomic`` for a folder of files (a CSV export): they are written
  into a temporary folder beside it and moved in only when every one is complete.
* ``remove_stale(folder)``: the temporaries a killed process (SIGKILL: no cleanup ran) left in
  ``folder``; those of a process still alive stay.
* ``reserve(path)``: the blocks of an existing file allocated on disk now
  (``posix_fallocate``), so writes into it later never meet a full disk.
* ``why(error)``: the one-line reason of an ``OSError``.
* ``check_output(out, sources)``: refuses, before anything is computed, an output path that is
  a file it is made from, or one of a run's own files (``RUN_FILE_NAMES`` in a run folder):
  an export or prediction never replaces a run's model, checkpoint or trace.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)(\.[A-Za-z0-9]+)?$")
# Every file a run writes in its folder (``noisynets.run``), and its TensorBoard folder.
RUN_FILE_NAMES: tuple[str, ...] = (
    "results.json", "trace.h5", "trace.png", "learning_curve.png", "model.pt", "checkpoint.pt",
    "metrics.csv", "steps.csv", "identity.json")
RUN_FOLDER_NAMES: tuple[str, ...] = ("tensorboard",)
_RUN_MARKERS = ("identity.json", "results.json", "model.pt", "checkpoint.pt")


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


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` (``.NAME.tmp-<pid>``); when the block ends
    without an error its files move into ``path`` (made, with the folders above it, if need
    be; other files there stay),
    each by one ``os.replace``, so an error (a full disk) leaves ``path`` as it was and no
    temporary folder: one ``ValueError("cannot write 'PATH': ...")``."""
    import shutil

    path = Path(path)
    tmp = temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        for entry in tmp.iterdir():
            with entry.open("rb+") as f:
                os.fsync(f.fileno())
        if not path.exists():
            os.rename(tmp, path)
            return
        for entry in sorted(tmp.iterdir()):
            os.replace(entry, path / entry.name)
        tmp.rmdir()
    except (OSError, RuntimeError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ValueError) and str(e).startswith("cannot write"):
            raise
        raise ValueError(f"cannot write {str(path)!r}: {why(e)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """``path.write_bytes(data)``, all or nothing. An HDF5 file made in memory (NWB, NIR) is
    written this way: HDF5 itself never meets the disk, whose failures it could only print
    (and, after one, crash the process at its exit)."""
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
        if match and not _alive(int(match.group(1))) and not entry.is_symlink():
            if entry.is_dir():  # an unfinished atomic_folder
                import shutil

                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_file():
                _remove(entry)
            else:
                continue
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


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run: any of its identity, results, model or checkpoint."""
    return any((Path(folder) / name).exists() for name in _RUN_MARKERS)


def check_output(out: str | Path, sources: Sequence[str | Path] = (), folder: bool = False,
                 redraws: str = "") -> None:
    """A ``ValueError`` unless the output ``out`` (a file; with ``folder``, a folder of files)
    can be written without touching what it is made from or a run: it is none of
    ``sources``; it is not one of a run's own files (``RUN_FILE_NAMES``, ``tensorboard/`` in
    a run folder) -- but for ``redraws``, the file the command makes anew from a source in
    the same folder (``plot``'s ``trace.png``); a folder output is not a run folder; and the
    folder it goes in exists. Symbolic links are followed: a link to a run's file is that
    file."""
    out = Path(out)
    real = out.resolve() if out.exists() or out.is_symlink() else out.parent.resolve() / out.name
    for source in map(Path, sources):
        if source.exists() and real == source.resolve():
            raise ValueError(f"output {str(out)!r} is the file it is made from: name another "
                             "file")
    near = any(Path(source).resolve().parent == real.parent for source in sources)
    if (real.name in RUN_FILE_NAMES + RUN_FOLDER_NAMES and is_run_folder(real.parent)
            and not (real.name == redraws and near)):
        raise ValueError(f"output {str(out)!r} is a file of the run in {str(real.parent)!r} "
                         "(its own file would be replaced): name another file")
    if folder:
        if out.exists() and not out.is_dir():
            raise ValueError(f"output {str(out)!r} is a file: name a folder")
        above = next(p for p in out.absolute().parents if p.exists())
        if not above.is_dir():
            raise ValueError(f"cannot create output folder {str(out)!r}: {str(above)!r} is a "
                             "file")
        if out.is_dir() and is_run_folder(real):
            raise ValueError(f"output {str(out)!r} is a run folder (its files would be "
                             "replaced): name another folder")
        return
    if out.is_dir():
        raise ValueError(f"output {str(out)!r} is a folder: name a file")
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not "
                         "exist")


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
