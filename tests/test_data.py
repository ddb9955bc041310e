"""Tests for noisynets.data: embedded digits, IDX and CIFAR loaders, search order, errors."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from noisynets import data
from noisynets.data import DATASETS, DataError, DataSplits, load_dataset, search_paths

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")

# ---------------------------------------------------------------------------------------------
# helpers that write tiny data sets


def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    """An IDX file (unsigned bytes) holding ``array``; ``magic`` overrides the 4-byte magic."""
    array = np.asarray(array, dtype=np.uint8)
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return header + dims + array.tobytes()


def write_file(path: Path, content: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def tiny_idx_arrays(seed: int = 0, n_train: int = 12, n_test: int = 5, side: int = 4):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }


def write_idx_dataset(folder: Path, gz: bool = False, seed: int = 0, **kw) -> dict:
    arrays = tiny_idx_arrays(seed, **kw)
    for name, array in arrays.items():
        write_file(folder / name, idx_bytes(array), gz=gz)
    return arrays


def write_cifar_dataset(folder: Path, n: int = 3, str_keys: bool = False) -> dict:
    rng = np.random.default_rng(1)
    batches = {}
    for name in (*data.CIFAR_TRAIN_BATCHES, data.CIFAR_TEST_BATCH):
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        keys = ("data", "labels") if str_keys else (b"data", b"labels")
        content = pickle.dumps({keys[0]: images, keys[1]: labels}, protocol=2)
        write_file(folder / name, content)
        batches[name] = (images, labels)
    return batches


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No NOISYNETS_DATA, cwd in an empty folder, system location pointed into tmp_path."""
    monkeypatch.delenv("NOISYNETS_DATA", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    return tmp_path


# ---------------------------------------------------------------------------------------------
# embedded digits


def test_dataset_names():
    assert DATASETS == ("digits", "fashion-mnist", "mnist", "cifar10", "teacher")


def test_digits_shape_split_and_range():
    ds = load_dataset("digits")
    assert isinstance(ds, DataSplits)
    assert ds.name == "digits" and ds.source == "embedded"
    assert ds.image_shape == (8, 8) and ds.num_classes == 10 and ds.num_features == 64
    # sample i is a test sample when i % 5 == 4: 1797 samples -> 1438 train, 359 test
    assert ds.train_x.shape == (1438, 64) and ds.test_x.shape == (359, 64)
    assert ds.train_y.shape == (1438,) and ds.test_y.shape == (359,)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.test_x.dtype == torch.float32 and ds.test_y.dtype == torch.int64
    for x in (ds.train_x, ds.test_x):
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert ds.train_x.max() == 1.0  # pixels / 16 reaches 1
    # pixels are multiples of 1/16
    assert torch.equal(ds.train_x * 16, torch.round(ds.train_x * 16))


def test_the_documented_digits_split_is_the_loaded_one():
    import re

    ds = data.load_dataset("digits")
    sizes = (ds.train_x.shape[0], ds.test_x.shape[0])
    train, test = re.search(r"\((\d+) train / (\d+) test\)", data.__doc__).groups()
    assert (int(train), int(test)) == sizes
    install = (Path(__file__).parent.parent / "docs" / "install.md").read_text()
    assert f"({sizes[0]:,} train / {sizes[1]} test)" in install


def test_digits_split_matches_file_order():
    table = np.loadtxt(
        gzip.open(Path(data.__file__).parent / "embedded" / "digits.csv.gz"), delimiter=","
    )
    ds = load_dataset("digits")
    test_rows = table[4::5]
    train_rows = np.delete(table, np.s_[4::5], axis=0)
    np.testing.assert_allclose(ds.test_x.numpy(), test_rows[:, :64] / 16)
    np.testing.assert_array_equal(ds.test_y.numpy(), test_rows[:, 64])
    np.testing.assert_allclose(ds.train_x.numpy(), train_rows[:, :64] / 16)
    np.testing.assert_array_equal(ds.train_y.numpy(), train_rows[:, 64])


def test_digits_class_balance():
    ds = load_dataset("digits")
    train_counts = torch.bincount(ds.train_y, minlength=10)
    test_counts = torch.bincount(ds.test_y, minlength=10)
    assert len(train_counts) == 10 and len(test_counts) == 10
    # every class occurs in both splits, with enough samples to measure per-class accuracy
    assert train_counts.min() >= 100 and test_counts.min() >= 20
    assert int(train_counts.sum()) == 1438 and int(test_counts.sum()) == 359


def test_digits_ignores_search_paths(isolated: Path):
    assert search_paths("digits") == []
    assert load_dataset("digits", root=isolated / "nowhere").source == "embedded"


# ---------------------------------------------------------------------------------------------
# IDX loader


@pytest.mark.parametrize("gz", [False, True])
def test_idx_loader(isolated: Path, gz: bool):
    folder = isolated / "mine"
    arrays = write_idx_dataset(folder, gz=gz)
    ds = load_dataset("mnist", root=folder)
    assert ds.name == "mnist" and ds.source == str(folder.absolute())
    assert ds.image_shape == (4, 4) and ds.num_features == 16 and ds.num_classes == 10
    assert ds.train_x.shape == (12, 16) and ds.test_x.shape == (5, 16)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    expected = arrays["train-images-idx3-ubyte"].reshape(12, 16) / 255
    np.testing.assert_allclose(ds.train_x.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0


def test_idx_mixed_plain_and_gz(isolated: Path):
    folder = isolated / "mixed"
    for i, (name, array) in enumerate(tiny_idx_arrays().items()):
        write_file(folder / name, idx_bytes(array), gz=i % 2 == 0)
    assert load_dataset("fashion-mnist", root=folder).train_x.shape == (12, 16)


def test_root_may_hold_a_subfolder_per_dataset(isolated: Path):
    write_idx_dataset(isolated / "all" / "mnist")
    ds = load_dataset("mnist", root=isolated / "all")
    assert ds.source == str((isolated / "all" / "mnist").absolute())


def test_search_paths_order(isolated: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NOISYNETS_DATA", str(isolated / "env"))
    root = isolated / "explicit"
    assert search_paths("mnist", root=root) == [
        root,
        root / "mnist",
        isolated / "env" / "mnist",
        isolated / "cwd" / "data" / "mnist",
        isolated / "system" / "mnist",
    ]
    assert search_paths("MNIST")[0] == isolated / "env" / "mnist"


def test_search_order_root_env_cwd_system(isolated: Path, monkeypatch: pytest.MonkeyPatch):
    places = {
        "root": isolated / "explicit",
        "env": isolated / "env" / "mnist",
        "cwd": isolated / "cwd" / "data" / "mnist",
        "system": isolated / "system" / "mnist",
    }
    for seed, folder in enumerate(places.values()):
        write_idx_dataset(folder, seed=seed, n_train=10 + seed)
    monkeypatch.setenv("NOISYNETS_DATA", str(isolated / "env"))

    def loaded_from(root=None) -> str:
        return load_dataset("mnist", root=root).source

    assert loaded_from(places["root"]) == str(places["root"])
    assert load_dataset("mnist", root=places["root"]).train_x.shape[0] == 10
    assert loaded_from() == str(places["env"])
    monkeypatch.delenv("NOISYNETS_DATA")
    assert loaded_from() == str(places["cwd"])
    monkeypatch.chdir(isolated)  # no ./data/mnist here
    assert loaded_from() == str(places["system"])
    assert load_dataset("mnist").train_x.shape[0] == 13


def test_an_explicit_root_without_the_files_is_an_error(isolated: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    """A root the user named is never passed over for another copy of the data."""
    write_idx_dataset(isolated / "env" / "mnist")
    monkeypatch.setenv("NOISYNETS_DATA", str(isolated / "env"))
    empty = isolated / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="--data-root .*empty.* holds no mnist files"):
        load_dataset("mnist", root=empty)
    with pytest.raises(DataError, match="--data-root .*nowhere.* is not a folder"):
        load_dataset("mnist", root=isolated / "nowhere")
    loaded = load_dataset("mnist", root=isolated / "env")
    assert loaded.files[0] == str(isolated / "env" / "mnist" / "train-images-idx3-ubyte")
    assert loaded.origin.count(", ") == 3  # the four IDX files it read


# ---------------------------------------------------------------------------------------------
# CIFAR-10 loader


@pytest.mark.parametrize("subfolder", [True, False])
@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar_loader(isolated: Path, subfolder: bool, str_keys: bool):
    place = isolated / "cifar"
    folder = place / "cifar-10-batches-py" if subfolder else place
    batches = write_cifar_dataset(folder, n=3, str_keys=str_keys)
    ds = load_dataset("cifar10", root=place)
    assert ds.name == "cifar10" and ds.source == str(folder.absolute())
    assert ds.image_shape == (3, 32, 32) and ds.num_features == 3072 and ds.num_classes == 10
    assert ds.train_x.shape == (15, 3072) and ds.test_x.shape == (3, 3072)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    expected_train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]) / 255
    np.testing.assert_allclose(ds.train_x.numpy(), expected_train, rtol=1e-6)
    np.testing.assert_array_equal(ds.test_y.numpy(), batches["test_batch"][1])


def test_cifar_from_cwd_data(isolated: Path):
    write_cifar_dataset(isolated / "cwd" / "data" / "cifar10" / "cifar-10-batches-py")
    assert load_dataset("cifar10").train_x.shape == (15, 3072)


# ---------------------------------------------------------------------------------------------
# errors


def test_unknown_name():
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagenet")
    assert_one_line_error(excinfo, "imagenet", *DATASETS)
    with pytest.raises(DataError):
        search_paths("imagenet")


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)
    assert "\n" not in str(DataError("a\nb"))


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10"])
def test_missing_dataset_names_places_and_fix(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, name: str
):
    monkeypatch.setenv("NOISYNETS_DATA", str(isolated / "env"))
    with pytest.raises(DataError) as excinfo:
        load_dataset(name)
    places = search_paths(name)
    assert len(places) == 3
    message = assert_one_line_error(excinfo, name, *(str(p) for p in places))
    if name == "fashion-mnist":
        assert "apt-get install -y dataset-fashion-mnist" in message
    else:
        assert "NOISYNETS_DATA" in message and "./data/" in message
        assert "--data-root DIR" in message


def test_incomplete_folder(isolated: Path):
    folder = isolated / "cwd" / "data" / "mnist"
    write_idx_dataset(folder)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist")
    assert_one_line_error(excinfo, str(folder), "t10k-labels-idx1-ubyte", "incomplete")


IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"


@pytest.mark.parametrize(
    ("filename", "make_content", "suffix", "problem"),
    [
        (IMAGES, lambda good: b"this is not gzip", ".gz", "gzip"),
        (IMAGES, lambda good: gzip.compress(good)[:-30], ".gz", "gzip"),  # truncated .gz
        (IMAGES, lambda good: b"\x08\x03" + good[2:], "", "magic"),
        (IMAGES, lambda good: good[:2] + b"\x0d" + good[3:], "", "dtype"),
        (IMAGES, lambda good: good[:3] + b"\x02" + good[4:], "", "dimensions"),
        (IMAGES, lambda good: good[:-7], "", "bytes"),  # truncated
        (IMAGES, lambda good: gzip.compress(good[:-7]), ".gz", "bytes"),  # truncated, then gzipped
        (IMAGES, lambda good: good + b"\x00", "", "bytes"),  # trailing garbage
        (IMAGES, lambda good: good[:6], "", "bytes"),  # header cut
        (IMAGES, lambda good: b"", "", "magic"),
        (LABELS, lambda good: idx_bytes(np.zeros(11)), "", "labels"),  # count mismatch
        (LABELS, lambda good: idx_bytes(np.full(12, 10)), "", "outside 0..9"),
    ],
)
def test_corrupt_idx_files(isolated: Path, filename, make_content, suffix, problem):
    folder = isolated / "bad"
    arrays = write_idx_dataset(folder)
    (folder / filename).unlink()
    path = write_file(folder / f"{filename}{suffix}", make_content(idx_bytes(arrays[filename])))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", root=folder)
    assert_one_line_error(excinfo, str(path), problem)


def test_train_and_test_image_sizes_must_match(isolated: Path):
    folder = isolated / "sizes"
    write_idx_dataset(folder)
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((5, 3, 3))))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", root=folder)
    assert_one_line_error(excinfo, str(folder))


def _write_batch(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"definitely not a pickle", "pickle"),
        (pickle.dumps({b"data": np.zeros((3, 3072), np.uint8)})[:-20], "pickle"),  # truncated
        (pickle.dumps(Path("x")), "refusing"),  # not a numpy global: never executed
        (pickle.dumps([1, 2, 3]), "dict"),
        (pickle.dumps({b"labels": [1, 2, 3]}), "data"),
        (pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [1, 2, 3]}), "shape"),
        (pickle.dumps({b"data": np.zeros((3, 3072), np.float32), b"labels": [1, 2, 3]}), "uint8"),
        (pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]}), "labels"),
        (pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2, 10]}), "0..9"),
        (
            pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": ["a", "b", "c"]}),
            "labels",
        ),
    ],
)
def test_corrupt_cifar_batches(isolated: Path, content: bytes, problem: str):
    folder = isolated / "cifar"
    write_cifar_dataset(folder)
    path = folder / "data_batch_3"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", root=folder)
    assert_one_line_error(excinfo, str(path), problem)


def test_cifar_bad_gzip_batch(isolated: Path):
    folder = isolated / "cifar"
    write_cifar_dataset(folder)
    (folder / "test_batch").unlink()
    (folder / "test_batch.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", root=folder)
    assert_one_line_error(excinfo, str(folder / "test_batch.gz"), "gzip")


# ---------------------------------------------------------------------------------------------
# the real Fashion-MNIST (installed by `apt-get install -y dataset-fashion-mnist`)


@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("NOISYNETS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("fashion-mnist")
    assert ds.source == str(FMNIST_SYSTEM)
    assert ds.train_x.shape == (60000, 784) and ds.test_x.shape == (10000, 784)
    assert ds.image_shape == (28, 28) and ds.num_features == 784 and ds.num_classes == 10
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert 0.0 <= float(ds.train_x.min()) and float(ds.train_x.max()) <= 1.0
    assert torch.equal(torch.bincount(ds.train_y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(ds.test_y), torch.full((10,), 1000))
