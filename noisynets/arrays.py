"""Arrays from a user's file, read so that the file is what its content says, and no more.

``read_array(path, what, kinds)`` reads the inputs of ``noisynets predict`` and the recorded
noise of ``replay``:

* only a regular file is opened (a FIFO would block the read for ever, a device never ends);
* its kind is recognised by its first bytes, not its name (``kind_of``): ``npy``
  (``\\x93NUMPY``), ``npz`` (a zip archive, ``PK\\x03\\x04``), ``hdf5`` (``\\x89HDF\\r\\n\\x1a\\n``,
  at byte 0 or a later power of two from 512), else ``csv`` (text);
* the size a header claims -- a ``.npy``'s shape and dtype, an ``.npz`` member's, an HDF5
  dataset's -- is checked against what the file can hold and against ``MAX_BYTES`` before
  anything is allocated: a header claiming 10^10 rows is refused, not a ``MemoryError``;
* a CSV (UTF-8, a byte-order mark allowed) is numbers separated by commas, one sample per
  row, at most ``MAX_TEXT_BYTES``; its first row is a header only when every field is a name
  (no field a number), and a row that does not parse is named with its line and column,
  never dropped.

Every problem is one ``ValueError`` naming the file as ``what`` says (``--input 'x.csv'``).

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "x.csv"
    >>> _ = path.write_text("\\ufeffa,b\\n1,2\\n3,4\\n")
    >>> read_array(path, "x").tolist()
    [[1.0, 2.0], [3.0, 4.0]]
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path

import numpy as np

MAX_BYTES = 2**30  # the most bytes of numbers one file may claim (1 GiB)
MAX_TEXT_BYTES = 2**28  # the largest CSV (256 MiB: parsed, it takes about ten times that)
KINDS: tuple[str, ...] = ("npy", "npz", "hdf5", "csv")
_SUFFIX = {"npy": ".npy", "npz": ".npz", "hdf5": "HDF5", "csv": ".csv"}
_HDF5 = b"\x89HDF\r\n\x1a\n"
_NAME = re.compile(r"[A-Za-z_][\w .\-\[\]()/]*")


def kind_of(path: Path) -> str:
    """``npy``, ``npz``, ``hdf5`` or ``csv``: what the first bytes of the file at ``path``
    say it is."""
    with path.open("rb") as f:
        head = f.read(8)
        if head.startswith(b"\x93NUMPY"):
            return "npy"
        if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
            return "npz"
        offset = 512  # HDF5's superblock may follow a user block of 512, 1024, ... bytes
        while head != _HDF5 and offset < min(os.fstat(f.fileno()).st_size, 2**24):
            f.seek(offset)
            head, offset = f.read(8), offset * 2
        return "hdf5" if head == _HDF5 else "csv"


def read_array(path: str | Path, what: str, kinds: tuple[str, ...] = KINDS,
               dataset: str | None = None, name: str = "x") -> np.ndarray:
    """The array of numbers in the file ``path`` (module doc), of one of ``kinds``: a
    ``.npy``'s array, an ``.npz``'s array ``name`` (or its only one), an HDF5 file's
    ``dataset`` (or its only one), a CSV's rows (2-D, float64)."""
    path = Path(path)
    where = f"{what} {str(path)!r}"
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise ValueError(f"{where}: {e.strerror or 'cannot be read'}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{where} is not a regular file (a folder, FIFO or device): name a "
                         "file")
    wanted = ", ".join(_SUFFIX[k] for k in kinds[:-1]) + f" or {_SUFFIX[kinds[-1]]}"
    kind = "csv"
    try:
        if os.stat(path).st_size == 0:
            raise ValueError(f"{where} is empty: give a {wanted} file")
        kind = kind_of(path)
        if kind not in kinds:
            raise ValueError(f"{where} is {'an' if kind == 'hdf5' else 'a'} {_SUFFIX[kind]} "
                             f"file (by its content); give a {wanted} file")
        if dataset is not None and kind != "hdf5":
            raise ValueError(f"{where}: dataset={dataset!r} names a data set of an HDF5 "
                             f"file, and this is a {_SUFFIX[kind]} file")
        array = {"npy": _npy, "npz": _npz, "hdf5": _hdf5, "csv": _csv}[kind](
            path, where, dataset if kind == "hdf5" else name)
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where} is damaged or not a {_SUFFIX[kind]} file of numbers "
                         f"({_reason(e)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, KeyError,
            TypeError, NotImplementedError) as e:  # numpy's, zipfile's and zlib's ways to fail
        raise ValueError(f"{where} is damaged or not a {_SUFFIX[kind]} file of numbers "
                         f"({_reason(e)})") from None
    if array.dtype.kind not in "biuf" or array.size == 0:
        raise ValueError(f"{where} holds {array.dtype} values of shape {array.shape}: give "
                         "numbers")
    return array


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split()).strip("\"'")
    return f"{type(error).__name__}: {text}"[:160]


def _claim(shape: tuple[int, ...], dtype: np.dtype, room: int, where: str) -> None:
    """A header's claim: ``shape`` of ``dtype``, in at most ``room`` bytes and ``MAX_BYTES``."""
    if dtype.hasobject:
        raise ValueError(f"{where} holds objects (text or pickled Python objects), not "
                         "numbers: save a numeric array")
    need = math.prod(shape) * dtype.itemsize
    if need > MAX_BYTES:
        raise ValueError(f"{where} claims an array of shape {shape} ({need / 2**30:.3g} GiB), "
                         f"more than the {MAX_BYTES / 2**30:g} GiB a file may hold here")
    if need > room:
        raise ValueError(f"{where} claims an array of shape {shape} ({need:_} bytes) but holds "
                         f"{max(room, 0):_} bytes of it: it is cut short or its header is "
                         "wrong")


def _header(f: io.BufferedIOBase, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``.npy`` stream ``f`` (at its start); ``f`` left at the data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"{where} is a .npy file of version {version}, which numpy here "
                         "does not read")
    return tuple(int(d) for d in shape), dtype


def _npy(path: Path, where: str, _: str | None) -> np.ndarray:
    with path.open("rb") as f:
        shape, dtype = _header(f, where)
        _claim(shape, dtype, os.fstat(f.fileno()).st_size - f.tell(), where)
    return np.load(path, allow_pickle=False)


def _npz(path: Path, where: str, name: str | None) -> np.ndarray:
    with zipfile.ZipFile(path) as archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        if name in members:
            chosen = members[name]
        elif len(members) == 1:
            chosen = next(iter(members.values()))
        else:
            raise ValueError(f"{where} holds the arrays {', '.join(list(members)[:6]) or '(none)'}"
                             f": name the one to read {name}")
        if chosen.file_size > MAX_BYTES + 2**16:
            raise ValueError(f"{where} claims an array of {chosen.file_size:_} bytes, more than "
                             f"the {MAX_BYTES / 2**30:g} GiB a file may hold here")
        with archive.open(chosen) as member:
            shape, dtype = _header(member, where)
            _claim(shape, dtype, chosen.file_size - member.tell(), where)
        with archive.open(chosen) as member:
            array = np.lib.format.read_array(member, allow_pickle=False)
            while member.read(1 << 20):  # to its end (at most its claimed size): zipfile
                pass  # checks the member's CRC there
    return array


def _hdf5(path: Path, where: str, dataset: str | None) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            if dataset is None:
                if len(names) != 1:
                    raise ValueError(f"{where} holds {len(names)} data sets "
                                     f"({', '.join(names[:5]) or 'none'}): name one with "
                                     "dataset=NAME")
                dataset = names[0]
            if dataset.strip("/") not in names:
                raise ValueError(f"{where} has no data set {dataset!r}; it holds "
                                 f"{', '.join(names[:5]) or 'none'}")
            ds = f[dataset]
            shape = tuple(int(d) for d in ds.shape or ())
            room = MAX_BYTES
            if ds.id.get_create_plist().get_nfilters() == 0:  # stored as it is: the file
                room = min(room, ds.id.get_storage_size())  # must hold every byte
            _claim(shape, ds.dtype, room, where)
            return np.asarray(ds[()])
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where} is damaged or not an HDF5 file of numbers "
                         f"({_reason(e)})") from None
    except Exception as e:  # h5py's errors are of many kinds: every one is damage here
        raise ValueError(f"{where} is damaged or not an HDF5 file of numbers "
                         f"({_reason(e)})") from None


def _csv(path: Path, where: str, _: str | None) -> np.ndarray:
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"{where} is {size / 2**20:.4g} MiB of text, more than the "
                         f"{MAX_TEXT_BYTES / 2**20:g} MiB a CSV may hold here: save it as .npy")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{where} is neither .npy, .npz nor UTF-8 text (CSV)") from None
    reader = csv.reader(io.StringIO(text))
    rows: list[list[float]] = []
    header = False
    try:
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue  # a blank line
            if not rows and not header and all(
                    _NAME.fullmatch(f.strip()) and not _is_number(f) for f in fields):
                header = True  # a header of names
                continue
            rows.append(_numbers(fields, reader.line_num, where))
            if len(rows[-1]) != len(rows[0]):
                raise ValueError(f"{where}: line {reader.line_num} has {len(rows[-1])} values, "
                                 f"the first row {len(rows[0])}: every row is one sample")
    except csv.Error as e:  # a NUL byte, a field beyond the csv module's limit
        raise ValueError(f"{where}: line {reader.line_num}: {e}") from None
    if not rows:
        raise ValueError(f"{where} holds no rows of numbers")
    return np.array(rows, dtype=np.float64)


def _numbers(fields: list[str], line: int, where: str) -> list[float]:
    """A CSV row's fields as numbers; the first that is not one is named."""
    row = []
    for column, field in enumerate(fields, 1):
        try:
            row.append(float(field))
        except ValueError:
            raise ValueError(f"{where}: line {line}, column {column}: {field.strip()[:30]!r} is "
                             "not a number (every row is one sample of numbers; a first line of "
                             "names is a header)") from None
    return row


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
