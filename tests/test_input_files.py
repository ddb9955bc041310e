"""Every file it reads is checked before it is used (issue 27): the inputs of ``noisynets
predict`` and the recorded noise of ``replay`` are known by their content, not their name;
the size a header claims is checked against the file and a limit before anything is
allocated; only regular files are opened; a CSV's first row is data unless it is a header of
names, and a row that does not parse is named, never dropped."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from noisynets.cli import main
from noisynets.config import TrainConfig
from noisynets.core.noise import make_noise
from noisynets.run import train

ROOT = Path(__file__).parents[1]
X = np.random.default_rng(0).random((5, 64))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(hidden=[8], epochs=1, trace_every=0, figures=False, out=str(out)),
          progress=False, log=None)
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_bytes(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def header_only(shape: tuple[int, ...], payload: bytes = bytes(64)) -> bytes:
    """A .npy file whose header claims ``shape`` (float64) and that holds ``payload``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue() + payload


def csv_text(rows: np.ndarray) -> str:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows)


def predicted(run: Path, path: Path, tmp_path: Path) -> list[str]:
    out = tmp_path / "p.csv"
    out.unlink(missing_ok=True)
    assert main(["predict", str(run), "--input", str(path), "-o", str(out)]) == 0
    return out.read_text().splitlines()


def test_a_csv_that_starts_with_a_byte_order_mark_keeps_its_first_row(run, tmp_path):
    """The mark made the first row a "header": one prediction fewer, silently."""
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "bom.csv").write_text(csv_text(X), encoding="utf-8-sig")
    lines = predicted(run, tmp_path / "bom.csv", tmp_path)
    assert len(lines) == 1 + len(X)
    assert lines == predicted(run, tmp_path / "x.npy", tmp_path)


def test_a_header_of_names_is_a_header_and_a_first_row_that_does_not_parse_is_named(
        run, tmp_path, cli_fails):
    names = ",".join(f"pixel_{i}" for i in range(64))
    (tmp_path / "named.csv").write_text(names + "\n" + csv_text(X))
    assert len(predicted(run, tmp_path / "named.csv", tmp_path)) == 1 + len(X)
    first = csv_text(X).splitlines()
    first[0] = first[0].replace(first[0].split(",")[2], "abc", 1)
    (tmp_path / "broken.csv").write_text("\n".join(first) + "\n")
    cli_fails(["predict", str(run), "--input", str(tmp_path / "broken.csv"), "-o",
               str(tmp_path / "b.csv")], "broken.csv", "line 1, column 3", "'abc'")
    later = csv_text(X) + "0.5," * 63 + "x\n"
    (tmp_path / "later.csv").write_text(later)
    cli_fails(["predict", str(run), "--input", str(tmp_path / "later.csv"), "-o",
               str(tmp_path / "b.csv")], "line 6, column 64", "'x'")
    (tmp_path / "ragged.csv").write_text(csv_text(X) + "1,2\n")
    cli_fails(["predict", str(run), "--input", str(tmp_path / "ragged.csv"), "-o",
               str(tmp_path / "b.csv")], "line 6 has 2 values", "64")
    assert not (tmp_path / "b.csv").exists()


@pytest.mark.parametrize("name, content", [
    ("npz_named.npy", lambda: npz_bytes(x=X)),
    ("npy_named.npz", lambda: npy_bytes(X)),
    ("npy_named.csv", lambda: npy_bytes(X)),
    ("csv_named.npy", lambda: csv_text(X).encode()),
])
def test_an_input_file_is_known_by_its_content_not_its_name(run, tmp_path, name, content):
    np.save(tmp_path / "x.npy", X)
    (tmp_path / name).write_bytes(content())
    assert predicted(run, tmp_path / name, tmp_path) == predicted(run, tmp_path / "x.npy",
                                                                  tmp_path)


def damaged_files(folder: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (a damaged file, words its one line must hold)."""
    whole = npz_bytes(x=X)
    packed = npz_bytes(compressed=True, x=X)
    files: dict[str, tuple[bytes, list[str]]] = {
        "truncated.npz": (whole[: len(whole) // 2], ["damaged", "zip"]),
        "flipped.npz": (whole[:200] + bytes(b ^ 0xFF for b in whole[200:220]) + whole[220:],
                        ["damaged", "CRC"]),
        "flipped_packed.npz": (packed[:100] + bytes(b ^ 0xFF for b in packed[100:110])
                               + packed[110:], ["damaged"]),
        "rows_1e10.npy": (header_only((10**10, 64)), ["claims", "(10000000000, 64)", "GiB"]),
        "short.npy": (header_only((100, 64)), ["claims", "holds 64 bytes"]),
        "rows_1e10.npz": (b"", ["claims", "GiB"]),
        "empty.npy": (b"", ["is empty"]),
        "objects.npy": (b"", ["objects", "not numbers"]),
        "junk.bin": (bytes(range(256)) * 3, ["neither .npy, .npz nor UTF-8"]),
    }
    out = {}
    for name, (data, words) in files.items():
        path = folder / name
        path.write_bytes(data)
        out[name] = (path, words)
    with zipfile.ZipFile(folder / "rows_1e10.npz", "w") as z:
        z.writestr("x.npy", header_only((10**10, 64)))
    np.save(folder / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with h5py.File(folder / "rows_1e10.h5", "w") as f:
        f.create_dataset("x", shape=(10**10,), dtype="f8")
    out["rows_1e10.h5"] = (folder / "rows_1e10.h5", ["claims", "(10000000000,)", "GiB"])
    with h5py.File(folder / "unwritten.h5", "w") as f:
        f.create_dataset("x", shape=(10**5,), dtype="f8")
    out["unwritten.h5"] = (folder / "unwritten.h5", ["claims", "holds 0 bytes"])
    return out


def test_every_damaged_input_file_is_one_line_and_writes_nothing(run, tmp_path, cli_fails):
    for name, (path, words) in damaged_files(tmp_path).items():
        if name.endswith(".h5"):
            words = ["HDF5 file", ".npy, .npz or .csv"]
        cli_fails(["predict", str(run), "--input", str(path), "-o", str(tmp_path / "p.npz")],
                  name, *words)
    assert not (tmp_path / "p.npz").exists()
    assert not list(tmp_path.glob(".*tmp-*"))


def test_every_damaged_recording_is_one_line(tmp_path):
    for name, (path, words) in damaged_files(tmp_path).items():
        if name == "junk.bin":
            words = ["a .csv file (by its content)", ".npy, .npz or HDF5"]
        with pytest.raises(ValueError, match="replay") as error:
            make_noise(f"replay:file={path}", 1e-3)
        message = str(error.value)
        assert "\n" not in message and name in message, message
        assert all(word in message for word in words), (words, message)


def test_a_recording_is_known_by_its_content_not_its_name(tmp_path):
    """A .npz named .npy (and the reverse) was a traceback as replay's recording."""
    trace = np.random.default_rng(1).normal(size=(2, 40))
    np.save(tmp_path / "rec.npy", trace)
    (tmp_path / "npz_named.npy").write_bytes(npz_bytes(v=trace))
    (tmp_path / "npy_named.npz").write_bytes(npy_bytes(trace))
    a = torch.zeros(3, 4, dtype=torch.float64)
    expected = make_noise(f"replay:file={tmp_path / 'rec.npy'}", 1e-3)(a)
    for name in ("npz_named.npy", "npy_named.npz"):
        torch.testing.assert_close(make_noise(f"replay:file={tmp_path / name}", 1e-3)(a),
                                   expected)


def test_a_fifo_is_refused_not_waited_on(tmp_path, cli_fails):
    """Opening a FIFO blocks until a writer comes: the replay of one hung for ever. Here the
    test itself holds the FIFO open for writing, with bytes in it, so code that opened and
    read it would get them at once and fail another way: the test cannot hang and needs no
    time limit."""
    fifo = tmp_path / "noise.npy"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(writer, b"x" * 4096)
        cli_fails(["train", "--noise", f"replay:file={fifo}", "--epochs", "1", "--out",
                   str(tmp_path / "run")], "not a regular file")
    finally:
        os.close(writer)
