"""Data sets for noisynets: loading, validation and clear errors.

Seven data sets are known (see ``DATASETS``):

``digits``
    The 8x8 handwritten digits shipped inside the package (``noisynets/embedded/digits.csv.gz``,
    UCI "Optical Recognition of Handwritten Digits", CC BY 4.0). Needs no files and no network.
    Fixed split: sample ``i`` (0-based, file order) is a test sample when ``i % 5 == 4``, else a
    training sample (1438 train / 359 test). Pixels 0..16 are scaled by 1/16.
``fashion-mnist`` and ``mnist``
    The four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each plain or ``.gz``.
    Pixels are scaled by 1/255.
``cifar10``
    The python pickle batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``), in a folder
    ``cifar-10-batches-py/`` under the searched place or directly in it. Pixels scaled by 1/255.
``teacher``
    The classical benchmark of node perturbation (Werfel, Xie and Seung 2005; Hiratani et al.
    2022): a regression task whose targets a random *teacher* network computes, generated
    from a seed, no files. ``teacher:key=value,...`` sets its sizes and label noise (see
    ``teacher_student``); the targets are real-valued, ``task == "regression"``.
``randman``
    A spiking classification task made from a seed, no files: the random-manifold spike
    patterns of Zenke and Vogels (2021). Every input channel fires once per sample, and the
    class is in the *timing* of the spikes, not in their counts, so a network must integrate
    over time. ``randman:key=value,...`` sets its size (see ``random_manifolds``).
``shd``
    The Spiking Heidelberg Digits (Cramer et al. 2022): a user's own ``shd_train.h5`` and
    ``shd_test.h5`` in their published HDF5 layout (``spikes/times``, ``spikes/units``,
    ``labels``; 700 channels, 20 classes), binned into time steps (see ``load_shd``;
    ``shd:steps=100,max_time=1.4,channels=700``).

``randman`` and ``shd`` are sequences: their inputs have shape ``(n, T, channels)`` (spike
counts per step), ``DataSplits.sequence`` is true, and a network takes them with
``encoding="sequence"`` (step t gets ``x[:, t]``).

Files are looked for, in this order (``search_paths``): the explicit ``root`` argument (the folder
itself, then ``root/<name>/``), ``$NOISYNETS_DATA/<name>/``, ``./data/<name>/`` and
``/usr/share/datasets/<name>/``. The first place that holds any of the expected files is used;
if it lacks some of them, that is an error rather than a silent fall-through.

Every problem (unknown name, missing files, truncated or corrupt files) raises ``DataError``, a
``ValueError`` whose message is one line saying what is wrong, where, and how to fix it.

Images are returned flattened, as float32 tensors of shape ``(n, features)`` with values in
[0, 1]; labels are int64 tensors of shape ``(n,)``. ``DataSplits.input_shape`` is the shape a
model receives one sample in: ``(C, H, W)`` for images, ``(features,)`` for vectors,
``(T, channels)`` for sequences.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DATASETS", "DataError", "DataSplits", "load_dataset", "search_paths"]


def __getattr__(name: str) -> Any:
    """``Dataset``, the old name of ``DataSplits``: deprecated (it is not a
    ``torch.utils.data.Dataset``)."""
    if name == "Dataset":
        import warnings

        warnings.warn("noisynets.data.Dataset is now noisynets.data.DataSplits (it is not a "
                      "torch.utils.data.Dataset); the old name goes in a later version",
                      DeprecationWarning, stacklevel=2)
        return DataSplits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist", "cifar10", "teacher", "randman",
                             "shd")

ENV_VAR = "NOISYNETS_DATA"
VALIDATION_SEED = 20231002  # fixes which training samples form the validation split
SYSTEM_DATA_DIR = Path("/usr/share/datasets")  # read at call time, so tests can monkeypatch it

NUM_CLASSES = 10
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_IMAGE_SHAPE = (3, 32, 32)

DIGITS_RESOURCE = "embedded/digits.csv.gz"
DIGITS_TEST_EVERY = 5  # sample i is a test sample when i % 5 == 4

_IDX_UBYTE = 0x08

_HOW_TO_GET = {
    "fashion-mnist": (
        "install it with 'sudo apt-get install -y dataset-fashion-mnist' (files go to "
        "/usr/share/datasets/fashion-mnist/), or put the four IDX files "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, plain or .gz) in one of these folders"
    ),
    "mnist": (
        "put your own copy of the four MNIST IDX files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, plain or .gz) "
        f"in ./data/mnist/ or in $NOISYNETS_DATA/mnist/ (set {ENV_VAR} to a folder holding "
        "mnist/), or pass its folder with --data-root DIR (root= in Python)"
    ),
    "shd": (
        "put your own copies of the Spiking Heidelberg Digits files shd_train.h5 and "
        "shd_test.h5 (as their authors publish them, unpacked from .h5.gz) in ./data/shd/ or "
        f"$NOISYNETS_DATA/shd/ (set {ENV_VAR} to a folder holding shd/), or pass their folder "
        "with --data-root DIR (root= in Python)"
    ),
    "cifar10": (
        "unpack your own copy of cifar-10-python.tar.gz (the folder cifar-10-batches-py/ with "
        "data_batch_1..5 and test_batch) into ./data/cifar10/ or $NOISYNETS_DATA/cifar10/ "
        f"(set {ENV_VAR} to a folder holding cifar10/), or pass its folder with --data-root "
        "DIR (root= in Python)"
    ),
}


class DataError(ValueError):
    """A data set is unknown, missing, incomplete or corrupt (one-line, user-facing message)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True)
class DataSplits:
    """A loaded data set's splits (not a ``torch.utils.data.Dataset``: wrap a split in
    ``torch.utils.data.TensorDataset`` for a ``DataLoader``): flattened float32 inputs and
    int64 labels (classification) or float32 targets of shape (n, outputs) (regression;
    ``num_classes`` is then the number of outputs)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    image_shape: tuple[int, ...]
    num_classes: int
    source: str
    task: str = "classification"
    files: tuple[str, ...] = ()  # the files loaded (none for embedded or generated data)
    val_x: torch.Tensor | None = None  # a validation split of the training set, if made
    val_y: torch.Tensor | None = None
    sequence: bool = False  # samples are (T, channels): one input per time step

    @property
    def origin(self) -> str:
        """Where the data came from, in a line: its files, or ``embedded`` / the generator."""
        return ", ".join(self.files) if self.files else self.source

    @property
    def num_features(self) -> int:
        """Number of input features per sample (the product of ``image_shape``)."""
        return int(np.prod(self.image_shape))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample as a model receives it: ``(C, H, W)`` for images, ``(features,)``,
        ``(T, channels)`` for a sequence."""
        shape = tuple(self.image_shape)
        return (1, *shape) if len(shape) == 2 and not self.sequence else shape

    @property
    def step_features(self) -> int:
        """The inputs of one time step: ``channels`` for a sequence, else ``num_features``."""
        return int(np.prod(self.image_shape[1:])) if self.sequence else self.num_features

    def with_validation(self, fraction: float) -> DataSplits:
        """``ceil(fraction * n)`` training samples set aside as the validation split: the same
        ones for every run of this data set (a permutation from the fixed seed
        ``VALIDATION_SEED``), so that settings are chosen on them and the test split is
        touched once, at the end."""
        n = int(self.train_x.shape[0])
        count = math.ceil(fraction * n)
        if not 0 < count < n:
            raise DataError(f"a validation share of {fraction:g} of {n} training samples "
                            f"leaves {n - count} to train on: choose a share in (0, 1)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
        kept, held = order[: n - count].sort().values, order[n - count:].sort().values
        return replace(self, train_x=self.train_x[kept], train_y=self.train_y[kept],
                       val_x=self.train_x[held], val_y=self.train_y[held])

    def standardized(self) -> DataSplits:
        """The inputs shifted and scaled by the training set's mean and standard deviation
        (one number each, over every sample and feature)."""
        mean, std = self.train_x.mean(), self.train_x.std()
        val_x = None if self.val_x is None else (self.val_x - mean) / std
        return replace(self, train_x=(self.train_x - mean) / std,
                       test_x=(self.test_x - mean) / std, val_x=val_x)


# --------------------------------------------------------------------------------------------
# public API


def load_dataset(name: str, root: str | os.PathLike[str] | None = None) -> DataSplits:
    """Load data set ``name`` (one of ``DATASETS``); ``root`` is searched first (see module doc).

    ``digits`` is embedded in the package and ignores ``root``.
    """
    if isinstance(name, str) and name.strip().lower().startswith("teacher"):
        return teacher_student(**teacher_options(name))
    if isinstance(name, str) and name.strip().lower().startswith("randman"):
        return random_manifolds(**spec_options(name, "randman", RANDMAN_KEYS))
    if isinstance(name, str) and name.strip().lower().startswith("shd"):
        return load_shd(root, **spec_options(name, "shd", SHD_KEYS))
    name = _canonical_name(name)
    if name == "digits":
        return _load_digits()
    place = _find_place(name, root)
    if name == "cifar10":
        return _load_cifar10(place)
    return _load_idx_dataset(name, place)


def search_paths(name: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for data set ``name``, in order (empty for the embedded ``digits``)."""
    name = _canonical_name(name.partition(":")[0])
    if name in ("digits", "teacher", "randman"):
        return []
    paths: list[Path] = []
    if root is not None:
        base = Path(root).expanduser().absolute()
        paths += [base, base / name]
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        paths.append(Path(env).expanduser().absolute() / name)
    paths.append(Path.cwd() / "data" / name)
    paths.append(Path(SYSTEM_DATA_DIR) / name)
    return list(dict.fromkeys(paths))  # drop duplicates, keep order


# --------------------------------------------------------------------------------------------
# finding files


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid names are: {', '.join(DATASETS)}")
    return key


def _expected_files(name: str) -> tuple[str, ...]:
    if name == "cifar10":
        return (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)
    if name == "shd":
        return SHD_FILES
    return IDX_FILES


def _candidate_dirs(name: str, place: Path) -> list[Path]:
    """The folders at one search place that may hold the files themselves."""
    return [place / CIFAR_DIR, place] if name == "cifar10" else [place]


def _present(folder: Path, filename: str) -> Path | None:
    """The file ``filename`` in ``folder``, plain or ``.gz`` (plain preferred; HDF5 files
    plain only), if present."""
    gz = () if filename.endswith(".h5") else (folder / f"{filename}.gz",)
    for candidate in (folder / filename, *gz):
        if candidate.is_file():
            return candidate
    return None


def _find_place(name: str, root: str | os.PathLike[str] | None) -> Path:
    """The first folder holding any of the data set's files; it must hold all of them. An
    explicit ``root`` must exist and hold the data set: it is never passed over."""
    expected = _expected_files(name)
    if root is not None:
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataError(f"--data-root {str(root)!r} is not a folder: give the folder that "
                            f"holds the {name} files")
        for folder in _candidate_dirs(name, base) + _candidate_dirs(name, base / name):
            if any(_present(folder, f) is not None for f in expected):
                break
        else:
            raise DataError(
                f"--data-root {str(root)!r} holds no {name} files (looked in {base} and "
                f"{base / name} for {', '.join(expected)}, plain or .gz)")
    for place in search_paths(name, root):
        for folder in _candidate_dirs(name, place):
            missing = [f for f in expected if _present(folder, f) is None]
            if len(missing) == len(expected):
                continue
            if missing:
                raise DataError(
                    f"data set {name!r} in {folder} is incomplete: missing "
                    f"{', '.join(missing)} (plain or .gz); add the missing files or remove "
                    "the folder"
                )
            return folder
    searched = ", ".join(str(p) for p in search_paths(name, root))
    raise DataError(
        f"data set {name!r} not found; searched: {searched}; to fix: {_HOW_TO_GET[name]}"
    )


MAX_FILE_BYTES = 4 * 2**30  # no data file of a supported data set is larger, unpacked


def _read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The (decompressed, for ``.gz``) contents of ``path``, or a DataError naming it. At most
    ``limit`` bytes are unpacked (and one more, to tell a file that holds more): a small
    compressed file cannot make the reader allocate more than its format allows."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        if path.suffix == ".gz" and not isinstance(exc, (FileNotFoundError, PermissionError)):
            raise DataError(
                f"{path} is not a valid gzip file ({exc or type(exc).__name__}); the file is "
                "truncated or corrupt: replace it with a fresh copy") from None
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (EOFError, zlib.error) as exc:
        raise DataError(
            f"{path} is not a valid gzip file ({exc or type(exc).__name__}); the file is "
            "truncated or corrupt: replace it with a fresh copy"
        ) from None
    if len(data) > limit:
        raise DataError(f"{path} holds more than {limit:_} bytes (unpacked), more than its "
                        "format says: the file is corrupt or not what its name says")
    return data


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


def _idx_size(path: Path, ndim: int) -> int:
    """The size an IDX file of ``ndim`` dimensions declares in its header (its first
    ``4 + 4 ndim`` bytes, read alone) -- a DataError if that is beyond ``MAX_FILE_BYTES``; a
    short or garbled header gives the header's size, and ``_parse_idx`` names the problem."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            head = f.read(4 + 4 * ndim)
    except (OSError, EOFError, zlib.error):
        return 4 + 4 * ndim  # unreadable: _read_bytes says why
    if len(head) < 4 + 4 * ndim:
        return 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", head[4:4 + 4 * ndim])
    size = 4 + 4 * ndim + math.prod(dims)
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}'s IDX header declares {dims}, {size:_} bytes: no such data "
                        "set exists; the file is corrupt: replace it with a fresh copy")
    return size


def _parse_idx(path: Path, data: bytes, ndim: int) -> np.ndarray:
    """Parse IDX bytes of unsigned bytes with ``ndim`` dimensions, validating everything."""
    fix = "the file is truncated or not an IDX file: replace it with a fresh copy"
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} has a bad IDX magic number ({data[:4].hex() or 'empty'}); {fix}")
    if data[2] != _IDX_UBYTE:
        raise DataError(
            f"{path} has IDX dtype code 0x{data[2]:02x}, expected 0x08 (unsigned byte); {fix}"
        )
    if data[3] != ndim:
        raise DataError(f"{path} has {data[3]} IDX dimensions, expected {ndim}; {fix}")
    header = 4 + 4 * ndim
    size = f"{len(data)} bytes" + (" after decompression" if path.suffix == ".gz" else "")
    if len(data) < header:
        raise DataError(f"{path} is {size}, too short for its IDX header; {fix}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(dims)  # Python integers: no overflow
    if len(data) != expected:
        raise DataError(f"{path} is {size} but its IDX header {dims} needs {expected}; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, rows, cols) and labels (n,) of one split (``train`` or ``t10k``)."""
    images_path = _present(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _present(folder, f"{prefix}-labels-idx1-ubyte")
    assert images_path is not None and labels_path is not None  # checked by _find_place
    images = _parse_idx(images_path, _read_bytes(images_path, _idx_size(images_path, 3)), 3)
    labels = _parse_idx(labels_path, _read_bytes(labels_path, _idx_size(labels_path, 1)), 1)
    if images.shape[0] == 0 or 0 in images.shape[1:]:
        raise DataError(f"{images_path} holds no images (IDX dimensions {images.shape})")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path} has {labels.shape[0]} labels but {images_path} has "
            f"{images.shape[0]} images; the files do not belong together: replace them"
        )
    _check_labels(labels_path, labels)
    return images, labels


def _load_idx_dataset(name: str, folder: Path) -> DataSplits:
    train_images, train_labels = _idx_split(folder, "train")
    test_images, test_labels = _idx_split(folder, "t10k")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"training images in {folder} are {train_images.shape[1:]} but test images are "
            f"{test_images.shape[1:]}; the files do not belong together: replace them"
        )
    return DataSplits(
        name=name,
        train_x=_to_features(train_images, 255),
        train_y=_to_labels(train_labels),
        test_x=_to_features(test_images, 255),
        test_y=_to_labels(test_labels),
        image_shape=tuple(int(d) for d in train_images.shape[1:]),
        num_classes=NUM_CLASSES,
        source=str(folder),
        files=tuple(str(_present(folder, f)) for f in IDX_FILES),
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any] | type]:
    """The only globals a CIFAR batch pickle may refer to (numpy arrays, and bytes)."""
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays, so a batch file cannot run code."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _get(batch: dict[Any, Any], key: str) -> Any:
    """``batch[key]``, whether the pickle stored the key as str or bytes."""
    if key in batch:
        return batch[key]
    return batch.get(key.encode())


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3072) uint8 and labels (n,) of one CIFAR-10 batch file."""
    fix = "the file is truncated or not a CIFAR-10 python batch: replace it with a fresh copy"
    data = _read_bytes(path)
    try:
        batch = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any failure while unpickling means a corrupt file
        reason = exc or type(exc).__name__
        raise DataError(f"{path} is not a readable pickle ({reason}); {fix}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a dict; {fix}")
    images, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(images, np.ndarray) or labels is None:
        raise DataError(f"{path} lacks a 'data' array or a 'labels' list; {fix}")
    features = int(np.prod(CIFAR_IMAGE_SHAPE))
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != features:
        raise DataError(
            f"{path} has data of shape {images.shape} and dtype {images.dtype}, expected "
            f"(n, {features}) uint8; {fix}"
        )
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError, OverflowError):
        labels = np.asarray([], dtype=object)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DataError(f"{path} has labels that are not a list of integers ({labels.dtype}); "
                        f"{fix}")
    labels = labels.astype(np.int64)
    if labels.shape != (images.shape[0],):
        raise DataError(f"{path} has {labels.size} labels for {images.shape[0]} images; {fix}")
    if images.shape[0] == 0:
        raise DataError(f"{path} holds no images; {fix}")
    _check_labels(path, labels)
    return images, labels


def _cifar_split(folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for batch_name in names:
        path = _present(folder, batch_name)
        assert path is not None  # checked by _find_place
        parts.append(_read_cifar_batch(path))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels


def _load_cifar10(folder: Path) -> DataSplits:
    train_images, train_labels = _cifar_split(folder, CIFAR_TRAIN_BATCHES)
    test_images, test_labels = _cifar_split(folder, (CIFAR_TEST_BATCH,))
    return DataSplits(
        name="cifar10",
        train_x=_to_features(train_images, 255),
        train_y=_to_labels(train_labels),
        test_x=_to_features(test_images, 255),
        test_y=_to_labels(test_labels),
        image_shape=CIFAR_IMAGE_SHAPE,
        num_classes=NUM_CLASSES,
        source=str(folder),
        files=tuple(str(folder / n) for n in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)),
    )


# --------------------------------------------------------------------------------------------
# embedded digits


def _load_digits() -> DataSplits:
    """The embedded 8x8 digits with the fixed split (test: i % 5 == 4); pixels / 16."""
    resource = resources.files(__package__ or "noisynets").joinpath(DIGITS_RESOURCE)
    where = f"the embedded file noisynets/{DIGITS_RESOURCE}"
    fix = "reinstall noisynets"
    try:
        text = gzip.decompress(resource.read_bytes())
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"cannot read {where} ({exc or type(exc).__name__}); {fix}") from None
    if table.shape[1] != 65 or table.shape[0] < DIGITS_TEST_EVERY:
        raise DataError(f"{where} has shape {table.shape}, expected (n, 65); {fix}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16:
        raise DataError(f"{where} has pixel values outside 0..16; {fix}")
    _check_labels(where, labels)
    is_test = np.arange(len(table)) % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
    return DataSplits(
        name="digits",
        train_x=_to_features(pixels[~is_test], 16),
        train_y=_to_labels(labels[~is_test]),
        test_x=_to_features(pixels[is_test], 16),
        test_y=_to_labels(labels[is_test]),
        image_shape=(8, 8),
        num_classes=NUM_CLASSES,
        source="embedded",
    )


# --------------------------------------------------------------------------------------------
# conversion helpers


def _check_labels(path: Path | str, labels: np.ndarray) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{path} has labels outside 0..{NUM_CLASSES - 1} (found {int(labels.min())}.."
            f"{int(labels.max())}); the file is corrupt: replace it with a fresh copy"
        )


def _to_features(images: np.ndarray, scale: float) -> torch.Tensor:
    """Flatten to (n, features) float32 and divide by ``scale`` (into [0, 1])."""
    flat = images.reshape(images.shape[0], -1).astype(np.float32)
    flat /= np.float32(scale)
    return torch.from_numpy(flat)


def _to_labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64).copy())


# --------------------------------------------------------------------------------------------
# the teacher-student regression task

TEACHER_KEYS: dict[str, type] = {
    "inputs": int, "hidden": int, "depth": int, "outputs": int, "label_noise": float,
    "train": int, "test": int, "seed": int,
}


def teacher_student(
    inputs: int = 20,
    hidden: int = 50,
    depth: int = 1,
    outputs: int = 5,
    label_noise: float = 0.0,
    train: int = 10000,
    test: int = 2000,
    seed: int = 0,
) -> DataSplits:
    """A regression task set by a random teacher network (Werfel et al. 2005; Hiratani et al.
    2022)::

        x ~ N(0, I_inputs)
        y = W_out tanh(W_depth ... tanh(W_1 x)) + label_noise * z,   z ~ N(0, I_outputs)

    with ``depth`` hidden layers of ``hidden`` tanh units (``depth = 0``: a linear teacher)
    and weights ``N(0, 1 / fan_in)``. ``seed`` fixes the teacher and the samples; the targets
    have shape (n, outputs).

        >>> data = teacher_student(inputs=4, outputs=2, train=10, test=5)
        >>> data.train_x.shape, data.train_y.shape, data.task
        (torch.Size([10, 4]), torch.Size([10, 2]), 'regression')
    """
    values = dict(inputs=inputs, hidden=hidden, depth=depth, outputs=outputs, train=train,
                  test=test, seed=seed)
    for key, value in values.items():
        low = 0 if key in ("depth", "seed") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DataError(f"teacher {key}={value!r} must be an integer >= {low}")
    if not isinstance(label_noise, (int, float)) or not 0 <= label_noise < float("inf"):
        raise DataError(f"teacher label_noise={label_noise!r} must be a finite number >= 0")
    g = torch.Generator().manual_seed(seed)
    sizes = [inputs] + [hidden] * depth + [outputs]
    weights = [torch.randn(n, d, generator=g) / d**0.5 for d, n in zip(sizes, sizes[1:])]

    def teach(x: torch.Tensor) -> torch.Tensor:
        for k, w in enumerate(weights):
            x = x @ w.T
            if k < len(weights) - 1:
                x = torch.tanh(x)
        return x + label_noise * torch.randn(x.shape, generator=g)

    train_x = torch.randn(train, inputs, generator=g)
    test_x = torch.randn(test, inputs, generator=g)
    return DataSplits(
        name="teacher", train_x=train_x, train_y=teach(train_x), test_x=test_x,
        test_y=teach(test_x), image_shape=(inputs,), num_classes=outputs,
        source=f"teacher-student, {'-'.join(map(str, sizes))}, label noise {label_noise:g}, "
               f"seed {seed}", task="regression",
    )


SEQUENCES: dict[str, dict[str, type]] = {}  # filled below: the sequence data sets' keys


def dataset_options(spec: str) -> dict[str, Any]:
    """The key=value options of a data set spec (``teacher``, ``randman`` and ``shd`` take
    them), checked; a ``DataError`` for a bad one, or for options on another data set."""
    name = spec.partition(":")[0].strip().lower()
    keys = {"teacher": TEACHER_KEYS, **SEQUENCES}.get(name)
    if keys is None:
        if ":" in spec:
            raise DataError(f"data set {spec!r}: only teacher, randman and shd take "
                            "key=value options")
        return {}
    return spec_options(spec, name, keys)


def sequence_steps(spec: str) -> int | None:
    """The time steps of a sequence data set's samples (``randman:steps=..``, ``shd:steps=..``),
    ``None`` for the others."""
    name = spec.partition(":")[0].strip().lower()
    if name not in SEQUENCES:
        return None
    return int(dataset_options(spec).get("steps", SEQUENCE_STEPS[name]))


def teacher_options(spec: str) -> dict[str, Any]:
    """``teacher`` or ``teacher:key=value,...`` as keyword arguments of ``teacher_student``."""
    return spec_options(spec, "teacher", TEACHER_KEYS)


def spec_options(spec: str, name: str, keys: dict[str, type]) -> dict[str, Any]:
    """``name`` or ``name:key=value,...`` as keyword arguments (each key one of ``keys``,
    its value of that type); else a ``DataError`` naming the bad part."""
    head, colon, args = spec.strip().partition(":")
    valid = f"valid keys: {', '.join(keys)}"
    if head.strip().lower() != name:
        raise DataError(f"unknown data set {spec!r}: choose one of {', '.join(DATASETS)}")
    options: dict[str, Any] = {}
    for item in args.split(",") if colon else []:
        key, eq, value = (t.strip() for t in item.partition("="))
        if not eq or key not in keys:
            raise DataError(f"bad {name} spec {spec!r}: {item.strip()!r} is not key=value "
                            f"with a known key; {valid}")
        try:
            options[key] = keys[key](value)
        except ValueError:
            kind = "an integer" if keys[key] is int else "a number"
            raise DataError(f"bad {name} spec {spec!r}: {key}={value!r} is not {kind}") from None
    return options


def _counts(name: str, values: dict[str, Any], low: dict[str, int]) -> None:
    """Each value an integer from its ``low`` (default 1) to ``LARGEST_COUNT``."""
    for key, value in values.items():
        least = low.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not (
                least <= value <= LARGEST_COUNT):
            raise DataError(f"{name} {key}={value!r} must be an integer from {least} to "
                            f"{LARGEST_COUNT:_}")


LARGEST_COUNT = 10**9
MAX_DENSE_BYTES = 8 * 2**30  # the largest (n, T, channels) float32 array a loader makes


def _dense_size(name: str, samples: int, steps: int, channels: int, fix: str) -> None:
    """A ``DataError`` before allocating ``samples x steps x channels`` float32 numbers that
    would exceed ``MAX_DENSE_BYTES``."""
    size = 4 * samples * steps * channels
    if size > MAX_DENSE_BYTES:
        raise DataError(f"{name}: {samples:_} samples of {steps} steps x {channels} channels "
                        f"take {size / 2**30:.1f} GiB (at most {MAX_DENSE_BYTES / 2**30:g}): "
                        f"{fix}")


# --------------------------------------------------------------------------------------------
# random-manifold spike patterns (Zenke and Vogels 2021)

RANDMAN_KEYS: dict[str, type] = {
    "classes": int, "channels": int, "steps": int, "dim": int, "alpha": float, "train": int,
    "test": int, "seed": int,
}
SEQUENCES["randman"] = RANDMAN_KEYS
RANDMAN_PRECISION = 1e-3  # the smallest amplitude a Fourier component keeps: F = ceil(p^-1/alpha)


def random_manifolds(
    classes: int = 10,
    channels: int = 20,
    steps: int = 25,
    dim: int = 1,
    alpha: float = 2.0,
    train: int = 1000,
    test: int = 500,
    seed: int = 0,
) -> DataSplits:
    """Random-manifold spike patterns (Zenke and Vogels 2021, "The remarkable robustness of
    surrogate gradient learning", their ``randman``): each class is a smooth random
    ``dim``-dimensional manifold in the space of spike times of ``channels`` inputs::

        f_kj(x) = prod_{d<dim} sum_{i<F} a_kjdi (i + 1)^-alpha sin(2 pi (i b_kjdi x_d + c_kjdi))
        t_j     = floor(steps * (f_kj(x) - min_x f_kj) / (max_x f_kj - min_x f_kj + 1e-7))

    with ``a, b, c ~ U(0, 1)`` (``a_kjd0 = 0``: no constant term), ``F = ceil(0.001^(-1/alpha))``
    Fourier components (``alpha``: the smoothness), and ``x ~ U(0, 1)^dim`` one sample of
    class ``k``, whose channel ``j`` fires one spike, at step ``t_j`` (the min and max over the
    class's samples, train and test together). Every sample has one spike per channel: the
    class is in their timing. ``train`` and ``test`` samples in all, the same number of each
    class, in a random order; ``seed`` fixes everything. Inputs ``(n, steps, channels)``.

        >>> data = random_manifolds(classes=2, channels=5, steps=8, train=6, test=4)
        >>> data.train_x.shape, data.sequence, int(data.train_x[0].sum())
        (torch.Size([6, 8, 5]), True, 5)
    """
    _counts("randman", dict(classes=classes, channels=channels, steps=steps, dim=dim,
                            train=train, test=test, seed=seed), {"seed": 0, "classes": 2})
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 100:
        raise DataError(f"randman alpha={alpha!r} must be a number in (0, 100)")
    for split, count in (("train", train), ("test", test)):
        if count % classes:
            raise DataError(f"randman {split}={count} must be a multiple of classes={classes} "
                            "(the same number of samples of each class)")
    _dense_size("randman", train + test, steps, channels, "choose fewer samples or steps")
    g = torch.Generator().manual_seed(seed)
    F = math.ceil(RANDMAN_PRECISION ** (-1 / alpha))
    i = torch.arange(F, dtype=torch.float64)
    per_train, per_test = train // classes, test // classes
    n = per_train + per_test
    x_parts, y_parts = [], []
    for k in range(classes):
        a, b, c = torch.rand(3, channels, dim, F, generator=g, dtype=torch.float64)
        a[..., 0] = 0.0
        x = torch.rand(n, dim, generator=g, dtype=torch.float64)
        phase = 2 * math.pi * (i * b * x[:, None, :, None] + c)  # (n, channels, dim, F)
        f = (a * (i + 1) ** -alpha * torch.sin(phase)).sum(-1).prod(-1)  # (n, channels)
        low, high = f.min(0).values, f.max(0).values
        t = torch.floor(steps * (f - low) / (high - low + 1e-7)).long().clamp_(0, steps - 1)
        raster = torch.zeros(n, steps, channels)
        raster[torch.arange(n)[:, None], t, torch.arange(channels)] = 1.0
        x_parts.append(raster)
        y_parts.append(torch.full((n,), k, dtype=torch.int64))
    inputs, labels = torch.stack(x_parts), torch.stack(y_parts)  # (classes, n, ...)
    order = {s: torch.randperm(classes * m, generator=g) for s, m in (("train", per_train),
                                                                        ("test", per_test))}
    train_x = inputs[:, :per_train].reshape(-1, steps, channels)[order["train"]]
    train_y = labels[:, :per_train].reshape(-1)[order["train"]]
    test_x = inputs[:, per_train:].reshape(-1, steps, channels)[order["test"]]
    test_y = labels[:, per_train:].reshape(-1)[order["test"]]
    return DataSplits(
        name="randman", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        image_shape=(steps, channels), num_classes=classes, sequence=True,
        source=f"random manifolds, {classes} classes, {channels} channels, {steps} steps, "
               f"dim {dim}, alpha {alpha:g}, seed {seed}",
    )


# --------------------------------------------------------------------------------------------
# the Spiking Heidelberg Digits (HDF5)

SHD_FILES: tuple[str, ...] = ("shd_train.h5", "shd_test.h5")
SHD_CHANNELS = 700
SHD_CLASSES = 20
SHD_KEYS: dict[str, type] = {"steps": int, "max_time": float, "channels": int}
SHD_VLEN_BYTES = 16  # an HDF5 variable-length element's reference: no sample takes fewer
SEQUENCES["shd"] = SHD_KEYS
SEQUENCE_STEPS: dict[str, int] = {"randman": 25, "shd": 100}  # their functions' defaults


def load_shd(root: str | os.PathLike[str] | None = None, steps: int = 100,
             max_time: float = 1.4, channels: int = SHD_CHANNELS) -> DataSplits:
    """The Spiking Heidelberg Digits from ``shd_train.h5`` and ``shd_test.h5`` (found as
    every data set's files are: module doc), binned into ``steps`` time steps::

        x[n, t, c] = #{spikes of sample n on a unit u with u // (700 / channels) = c
                       and floor(time * steps / max_time) = t}

    Spikes at ``max_time`` seconds or later are left out (1.4 s holds nearly every spike of
    SHD); ``channels`` (a divisor of 700) sums neighbouring units. The files' layout, as
    published: ``spikes/times`` (seconds) and ``spikes/units`` (0..699), one variable-length
    array per sample, and ``labels`` (0..19). Every size is checked before anything is
    allocated, and every problem is a one-line ``DataError``."""
    _counts("shd", dict(steps=steps, channels=channels), {})
    if isinstance(max_time, bool) or not isinstance(max_time, (int, float)) or not (
            0 < max_time < math.inf):
        raise DataError(f"shd max_time={max_time!r} must be a number of seconds > 0")
    if SHD_CHANNELS % channels:
        raise DataError(f"shd channels={channels} must divide {SHD_CHANNELS} (neighbouring "
                        "units are summed), e.g. 700, 350, 140 or 70")
    folder = _find_place("shd", root)
    parts = [_read_shd(folder / name, steps, max_time, channels) for name in SHD_FILES]
    (train_x, train_y), (test_x, test_y) = parts
    return DataSplits(
        name="shd", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        image_shape=(steps, channels), num_classes=SHD_CLASSES, sequence=True,
        source=str(folder), files=tuple(str(folder / name) for name in SHD_FILES),
    )


def _read_shd(path: Path, steps: int, max_time: float, channels: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binned spikes (n, steps, channels) and labels (n,) of one SHD file."""
    import h5py

    fix = "the file is truncated or not an SHD file: replace it with a fresh copy"
    try:
        size = path.stat().st_size
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file ({exc}); {fix}") from None
    with f:
        found = {}
        for key in ("spikes/times", "spikes/units", "labels"):
            item = f.get(key)
            if not isinstance(item, h5py.Dataset) or item.ndim != 1:
                raise DataError(f"{path} has no one-dimensional data set '{key}' (the SHD "
                                f"layout: spikes/times, spikes/units, labels); {fix}")
            found[key] = item
        n = found["labels"].shape[0]
        if n == 0:
            raise DataError(f"{path} holds no samples; {fix}")
        if found["spikes/times"].shape[0] != n or found["spikes/units"].shape[0] != n:
            raise DataError(f"{path} has {n} labels but {found['spikes/times'].shape[0]} spike "
                            f"time and {found['spikes/units'].shape[0]} unit arrays; {fix}")
        if n * SHD_VLEN_BYTES > size:
            raise DataError(f"{path} claims {n:_} samples but holds {size:_} bytes; {fix}")
        _dense_size(str(path), n, steps, channels, "choose fewer steps or channels "
                    "(shd:steps=..,channels=..)")
        if found["labels"].dtype.kind not in "iu":
            raise DataError(f"{path} has labels of type {found['labels'].dtype}, not integers; "
                            f"{fix}")
        try:
            labels = found["labels"][()].astype(np.int64)
            times, units = found["spikes/times"][()], found["spikes/units"][()]
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{path} cannot be read ({exc}); {fix}") from None
    if labels.min() < 0 or labels.max() >= SHD_CLASSES:
        raise DataError(f"{path} has labels outside 0..{SHD_CLASSES - 1} (found "
                        f"{int(labels.min())}..{int(labels.max())}); {fix}")
    counts = np.zeros((n, steps, channels), dtype=np.float32)
    group = SHD_CHANNELS // channels
    for k, (t, u) in enumerate(zip(times, units)):
        t, u = np.asarray(t, dtype=np.float64), np.asarray(u)
        if t.shape != u.shape or t.ndim != 1 or u.dtype.kind not in "iu":
            raise DataError(f"{path}: sample {k} has {t.size} spike times but {u.size} units "
                            f"(or units that are not integers); {fix}")
        if u.size and (u.min() < 0 or u.max() >= SHD_CHANNELS):
            raise DataError(f"{path}: sample {k} has units outside 0..{SHD_CHANNELS - 1}; "
                            f"{fix}")
        if not np.isfinite(t).all() or (t.size and t.min() < 0):
            raise DataError(f"{path}: sample {k} has spike times that are negative or not "
                            f"finite; {fix}")
        kept = t < max_time
        step = np.floor(t[kept] * (steps / max_time)).astype(np.int64).clip(0, steps - 1)
        np.add.at(counts[k], (step, u[kept].astype(np.int64) // group), 1.0)
    return torch.from_numpy(counts), torch.from_numpy(labels)
