"""Every malformed input gets one line and exit status 2, and damages nothing.

Several hundred generated mistakes (seeded, so a failure repeats): bad option values, TOML
configs of the wrong shape and type, random bytes and crafted data, trace, model and
checkpoint files. Each runs the CLI in-process; the test collects every case whose answer is
not a single ``noisynets: error: ...`` line with status 2, or that changed a file it was given.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import random
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from noisynets.cli import main

INT_OPTIONS = ["--epochs", "--batch-size", "--hidden", "--noise-samples", "--time-steps",
               "--seed", "--trace-every", "--trace-probe", "--trace-units", "--threads",
               "--checkpoint-every", "--max-bad-steps", "--trace-layers"]
FLOAT_OPTIONS = ["--lr", "--noise-std", "--decor-lr", "--decor-fraction", "--beta",
                 "--threshold", "--threshold-noise", "--val-fraction"]
CHOICE_OPTIONS = ["--algo", "--arch", "--unit", "--loss", "--optimizer", "--encoding",
                  "--device", "--precision"]
BAD_INTS = ["", "abc", "1.5", "-1", "1e3", "nan", "9" * 40, "0x10", " ", "--"]
BAD_FLOATS = ["", "abc", "nan", "inf", "-inf", "-1", "1e999", "1,5", " ", "5%"]
BAD_NOISE = ["", "+", "gaussian+", ":", "gaussian:", "gaussian:std", "gaussian:std=",
             "gaussian:std=abc", "gaussian:std=-1", "gaussian:std=0", "gaussian:std=inf",
             "telegraph:switch=0", "telegraph:switch=2", "bernoulli:p=1", "bernoulli:p=0",
             "shot:rate=0", "logistic:std=1,scale=1", "pink", "gaussian:mean=1",
             "gaussian:std=1,std=2", "gaussian:std=1e999", "telegraph:offset_std=nan"]
BAD_DATASETS = ["imagenet", "", "teacher:", "teacher:inputs", "teacher:inputs=0",
                "teacher:inputs=-3", "teacher:hidden=1.5", "teacher:label_noise=-1",
                "teacher:width=3", "teacher:train=1e9x", "digits:x=1", "teacher:seed=abc"]
TOML_VALUES = [("epochs", "'5'"), ("epochs", "5.5"), ("epochs", "-1"), ("epochs", "true"),
               ("epochs", "[1]"), ("epochs", "99999999999999999999"),
               ("hidden", "'abc'"), ("hidden", "[]"), ("hidden", "[0]"), ("hidden", "[1.5]"),
               ("hidden", "[100000, 100000, 100000]"), ("hidden", "5"),
               ("lr", "'fast'"), ("lr", "-1"), ("lr", "nan"), ("lr", "inf"), ("lr", "[1]"),
               ("noise_std", "0"), ("noise_std", "'x'"), ("noise", "5"), ("noise", "'pink'"),
               ("out", "5"), ("out", "''"), ("data_root", "5"), ("data_root", "[]"),
               ("spike_events", "'yes'"), ("both_noisy", "1"), ("standardize", "'no'"),
               ("algo", "5"), ("algo", "'backprop'"), ("dataset", "[1]"), ("unit", "'relu6'"),
               ("trace_layers", "'1'"), ("trace_layers", "[0]"), ("trace_layers", "[9]"),
               ("trace_units", "-1"), ("seed", "-5"), ("seed", "1.5"), ("threads", "0"),
               ("device", "'tpu'"), ("precision", "'half'"), ("decor_fraction", "2"),
               ("val_fraction", "1"), ("beta", "1.5"), ("model", "5"), ("model", "'x.py'"),
               ("batch_size", "0"), ("time_steps", "0"), ("noise_samples", "1e3"),
               ("encoding", "'spikes'"), ("optimizer", "'lbfgs'"), ("loss", "'hinge'"),
               ("checkpoint_every", "-1"), ("max_bad_steps", "'many'"), ("arch", "'resnet'")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def idx_bytes(dims: tuple[int, ...], payload: bytes, code: int = 8) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_idx_folder(folder: Path, mutate: dict[str, bytes]) -> None:
    """A tiny valid MNIST-like folder, with some files replaced by ``mutate``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": idx_bytes((4, 2, 2), bytes(16)),
        "train-labels-idx1-ubyte": idx_bytes((4,), bytes([0, 1, 2, 3])),
        "t10k-images-idx3-ubyte": idx_bytes((2, 2, 2), bytes(8)),
        "t10k-labels-idx1-ubyte": idx_bytes((2,), bytes([4, 5])),
    }
    files.update(mutate)
    for name, data in files.items():
        if data is not None:  # None: that file is left out (its .gz stands in)
            (folder / name).write_bytes(data)


def idx_cases(rng: random.Random) -> list[dict[str, bytes]]:
    image, label = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
    cases = [
        {image: b""}, {image: b"\x00\x00"}, {image: idx_bytes((4, 2, 2), bytes(15))},
        {image: idx_bytes((4, 2, 2), bytes(17))}, {image: idx_bytes((4, 2, 2), bytes(16), 9)},
        {image: idx_bytes((4, 4), bytes(16))}, {image: b"\x01\x02\x08\x03" + bytes(28)},
        {image: idx_bytes((2**32 - 1, 2**32 - 1, 2**32 - 1), bytes(16))},
        {image: idx_bytes((2**31, 2**31, 4), bytes(16))},
        {image: idx_bytes((0, 2, 2), b"")}, {label: idx_bytes((4,), bytes([0, 1, 2, 200]))},
        {label: idx_bytes((3,), bytes([0, 1, 2]))}, {label: idx_bytes((4,), bytes(4), 0x0D)},
        {image: None, image + ".gz": b"not gzip at all"},
        {image: None, image + ".gz": gzip.compress(idx_bytes((4, 2, 2), bytes(16)))[:-5]},
        {image: None, image + ".gz": gzip.compress(idx_bytes((4, 2, 2), bytes(16) * 10**5))},
        {"t10k-images-idx3-ubyte": idx_bytes((2, 3, 3), bytes(18))},
    ]
    for _ in range(14):
        name = rng.choice([image, label, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
        cases.append({name: rng.randbytes(rng.randint(0, 64))})
    return cases


def pickle_cases(rng: random.Random) -> list[bytes]:
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    good = np.zeros((2, 3072), np.uint8)
    cases = [
        pickle.dumps(Boom()), pickle.dumps([1, 2, 3]), pickle.dumps({b"data": good}),
        pickle.dumps({b"data": good, b"labels": [1.5, 2.5]}),
        pickle.dumps({b"data": good, b"labels": ["a", "b"]}),
        pickle.dumps({b"data": good, b"labels": [1, 99]}),
        pickle.dumps({b"data": good, b"labels": [1]}),
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [1, 2]}),
        pickle.dumps({b"data": good.astype(np.float64), b"labels": [1, 2]}),
        pickle.dumps({b"data": good, b"labels": [2**70, 1]}), b"", b"\x80\x04",
    ]
    huge = bytearray(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]},
                                  protocol=2))
    cases.append(bytes(huge).replace(b"\x01\x00\x00\x00", b"\xff\xff\xff\x7f", 1))
    cases += [rng.randbytes(rng.randint(1, 200)) for _ in range(7)]
    return cases


def trace_cases(tmp: Path, rng: random.Random, real: Path) -> list[Path]:
    files = []

    def new(name: str) -> Path:
        files.append(tmp / name)
        return files[-1]

    new("random.h5").write_bytes(rng.randbytes(3000))
    new("empty.h5").write_bytes(b"")
    data = real.read_bytes()
    for k, cut in enumerate((100, 1000, len(data) // 2, len(data) - 10)):
        new(f"cut{k}.h5").write_bytes(data[:cut])
    for k in range(4):
        flipped = bytearray(data)
        for _ in range(20):
            flipped[rng.randrange(len(flipped))] ^= 0xFF
        new(f"flipped{k}.h5").write_bytes(bytes(flipped))
    with h5py.File(new("plain.h5"), "w") as f:
        f["x"] = np.arange(3)
    crafted = [
        ("format", lambda f: f.attrs.__setitem__("format", "noisynets-trace")),
        ("no_traces", lambda f: (f.attrs.__setitem__("format", "noisynets-trace"),
                                 f.attrs.__setitem__("format_version", 1),
                                 f.create_group("metrics"))),
    ]
    for name, build in crafted:
        with h5py.File(new(f"{name}.h5"), "w") as f:
            build(f)
    tamper = [
        ("step_text", lambda f: (f["traces"].__delitem__("step"),
                                 f["traces"].create_dataset("step", data=np.array([b"a"])))),
        ("huge_extent", lambda f: (f["traces"].__delitem__("step"), f["traces"].create_dataset(
            "step", shape=(10**12,), maxshape=(None,), dtype=np.int64, chunks=(1024,)))),
        ("bad_layer", lambda f: (f["traces/layer_1"].__delitem__("activity_clean"),
                                 f["traces/layer_1"].create_dataset("activity_clean",
                                                                   data=np.zeros(3)))),
        ("metric_text", lambda f: (f["metrics"].__delitem__("epoch"),
                                   f["metrics"].create_dataset("epoch", data=np.array([b"x"])))),
        ("config_junk", lambda f: f.attrs.__setitem__("config", "{not json")),
        ("version", lambda f: f.attrs.__setitem__("format_version", 99)),
        ("probe_huge", lambda f: (f["traces"].__delitem__("probe_index"), f["traces"]
                                  .create_dataset("probe_index", shape=(10**12,),
                                                  dtype=np.int64, chunks=(1024,)))),
        ("units_attr", lambda f: f["traces/layer_1"].attrs.__setitem__("units", -5)),
        ("shape_attr", lambda f: f["traces/layer_1"].attrs.__setitem__("shape", [10**9] * 3)),
        ("unit_index", lambda f: (f["traces/layer_1"].__delitem__("unit_index"),
                                  f["traces/layer_1"].create_dataset("unit_index",
                                                                    data=np.array([10**9])))),
    ]
    for name, edit in tamper:
        path = new(f"tamper_{name}.h5")
        path.write_bytes(data)
        with h5py.File(path, "r+") as f:
            edit(f)
    return files


def checkpoint_cases(tmp: Path, rng: random.Random, run: Path) -> list[bytes]:
    model = (run / "model.pt").read_bytes()
    buffer = io.BytesIO()
    torch.save({"format": "noisynets-model", "version": 1, "config": {"algo": "danp"},
                "network": {"x": torch.zeros(1)}, "model": {}}, buffer)
    wrong_network = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save({"format": "something-else"}, buffer)
    foreign = buffer.getvalue()
    evil = pickle.dumps(type("Evil", (), {"__reduce__": lambda s: (print, ("pwned",))})())
    return [b"", rng.randbytes(500), model[:200], model[: len(model) // 2], wrong_network,
            foreign, evil, b"PK\x03\x04" + rng.randbytes(100)]


@pytest.mark.slow  # 480 cases, a minute or more; the default run keeps the short checks of
# tests/test_cli.py, test_data.py, test_traces.py and test_resume.py
def test_hundreds_of_malformed_inputs_get_one_line_each(tmp_path, monkeypatch, capfd):
    from noisynets import data
    from noisynets.config import TrainConfig
    from noisynets.run import train

    rng = random.Random(0)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.delenv("NOISYNETS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    train(TrainConfig(hidden=[8], epochs=1, trace_every=5, out=str(run)), progress=False,
          log=None)
    capfd.readouterr()

    cases: list[tuple[list[str], list[Path]]] = []  # (argv, files that must stay as they were)
    for option in INT_OPTIONS:
        cases += [(["train", option, value], []) for value in BAD_INTS]
    for option in FLOAT_OPTIONS:
        cases += [(["train", option, value], []) for value in BAD_FLOATS]
    for option in CHOICE_OPTIONS:
        cases += [(["train", option, value], []) for value in ("", "x", "ANP ", "1")]
    cases += [(["train", "--noise", spec], []) for spec in BAD_NOISE]
    cases += [(["train", "--dataset", spec], []) for spec in BAD_DATASETS]
    for k, (key, value) in enumerate(TOML_VALUES):
        path = tmp_path / f"c{k}.toml"
        path.write_text(f"{key} = {value}\n")
        cases.append((["train", "--config", str(path)], [path]))
    for k in range(12):
        path = tmp_path / f"r{k}.toml"
        path.write_bytes(rng.randbytes(rng.randint(1, 300)))
        cases.append((["train", "--config", str(path)], [path]))
    for k, mutate in enumerate(idx_cases(rng)):
        folder = tmp_path / f"idx{k}"
        write_idx_folder(folder, mutate)
        files = sorted(folder.iterdir())
        cases.append((["train", "--dataset", "mnist", "--data-root", str(folder)], files))
    for k, blob in enumerate(pickle_cases(rng)):
        folder = tmp_path / f"cifar{k}" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (folder / name).write_bytes(good)
        (folder / "data_batch_2").write_bytes(blob)
        cases.append((["train", "--dataset", "cifar10", "--data-root",
                       str(folder.parent)], sorted(folder.iterdir())))
    for path in trace_cases(tmp_path, rng, run / "trace.h5"):
        for command in (["inspect"], ["plot", "-o", str(tmp_path / "p.png")],
                        ["export", "--format", "npz", "-o", str(tmp_path / "e.npz")]):
            cases.append(([command[0], str(path), *command[1:]], [path]))
    for k, blob in enumerate(checkpoint_cases(tmp_path, rng, run)):
        folder = tmp_path / f"ckpt{k}"
        folder.mkdir()
        (folder / "checkpoint.pt").write_bytes(blob)
        (folder / "model.pt").write_bytes(blob)
        cases.append((["train", "--resume", str(folder)], [folder / "checkpoint.pt"]))
        cases.append((["evaluate", str(folder)], [folder / "model.pt"]))
    cases += [(["train", "--out", str(run / "results.json")], []),
              (["plot", str(run / "trace.h5"), "-o", str(run / "trace.h5")], []),
              (["export", str(run / "trace.h5"), "--format", "npz", "-o",
                str(run / "trace.h5")], []),
              (["export", str(run / "trace.h5"), "--format", "csv", "-o",
                str(run / "results.json")], [])]
    protected = [run / name for name in ("trace.h5", "results.json", "model.pt")]
    before_run = {p: digest(p) for p in protected}

    assert len(cases) >= 300, len(cases)
    defects = []
    for argv, inputs in cases:
        before = {p: digest(p) for p in inputs}
        try:
            status = main(argv)
        except BaseException as e:  # noqa: BLE001 -- a crash is what this test looks for
            defects.append((argv, f"raised {type(e).__name__}: {e}"[:200]))
            continue
        captured = capfd.readouterr()
        if "pwned" in captured.out:
            defects.append((argv, "a pickle ran code"))
        lines = captured.err.strip().splitlines()
        if status == 0:
            # Random bit flips may land in data, a garbled config attribute leaves the data
            # readable: those files may be read; every other input here is a mistake.
            if not any(word in " ".join(argv) for word in ("flipped", "config_junk")):
                defects.append((argv, "accepted: every input here is a mistake"))
            continue
        if status != 2 or len(lines) != 1 or not lines[0].startswith("noisynets: error: "):
            defects.append((argv, f"status {status}: {captured.err[-300:]!r}"))
        changed = [str(p) for p in inputs if digest(p) != before[p]]
        if changed:
            defects.append((argv, f"changed {changed}"))
        damaged = [str(p) for p in protected if digest(p) != before_run[p]]
        if damaged:
            defects.append((argv, f"damaged the earlier run's {damaged}"))
            before_run = {p: digest(p) for p in protected}
    assert not defects, f"{len(defects)} of {len(cases)}:\n" + "\n".join(
        f"{argv}: {what}" for argv, what in defects)
