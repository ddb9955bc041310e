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
import json
import os
import pickle
import random
import struct
import warnings
import zipfile
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


# --- run folders, model files, sweep files, paths, full disks (issue 18) ---------------------

BAD_VALUES = ["3", -1, 1.5, None, [], {}, [1], {"x": 1}, True, 10**30]
MODEL_FILES = {
    "raises on import": "raise RuntimeError('boom')\n",
    "syntax error": "def net(:\n",
    "no function": "x = 1\n",
    "not callable": "net = 5\n",
    "needs arguments": "def net(width):\n    pass\n",
    "raises": "def net():\n    raise KeyError('inside')\n",
    "returns None": "def net():\n    return None\n",
    "returns a list": "def net():\n    return [1, 2]\n",
    "returns a tensor": "import torch\ndef net():\n    return torch.zeros(3)\n",
    "returns a class": "from torch import nn\ndef net():\n    return nn.Linear\n",
    "exits": "import sys\ndef net():\n    sys.exit(3)\n",
    "lstm": "from torch import nn\ndef net():\n    return nn.Sequential(nn.LSTM(64, 10))\n",
    "empty": "from torch import nn\ndef net():\n    return nn.Sequential()\n",
    "no weights": "from torch import nn\ndef net():\n    return nn.Sequential(nn.ReLU())\n",
    "wrong input size": "from torch import nn\ndef net():\n"
                        "    return nn.Sequential(nn.Flatten(), nn.Linear(7, 10))\n",
    "wrong output size": "from torch import nn\ndef net():\n"
                         "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n",
    "batchnorm": "from torch import nn\ndef net():\n    return nn.Sequential(nn.Flatten(), "
                 "nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))\n",
    "embedding": "from torch import nn\ndef net():\n"
                 "    return nn.Sequential(nn.Embedding(64, 10))\n",
    "not a sequential": "from torch import nn\nclass M(nn.Module):\n    def forward(self, x):\n"
                        "        return x\ndef net():\n    return M()\n",
    "parameter free": "from torch import nn\ndef net():\n    return nn.Sequential(nn.Flatten())\n",
    "binary": None,
}
SWEEP_FILES = [
    "x", "[grid]\nseed = 1\n", "[grid]\nseed = []\n", "[grid]\nseed = [[]]\n",
    "[grid]\nnope = [1]\n", "[grid]\nlr = [-1]\n", "[grid]\nlr = ['a']\n", "[grid]\nout = ['x']\n",
    "[grid]\nresume = ['x']\n", "[grid]\nseed = [0, 0]\n", "[train]\nepochs = 0\n",
    "[train]\nepochs = 'x'\n", "[train]\nbogus = 1\n", "[train]\n[train.sub]\nx = 1\n",
    "[grid]\nseed = {a = 1}\n", "[gird]\nseed = [1]\n", "[grid]\n[grid.x]\ny = [1]\n",
    "seed = [1]\n", "[grid]\nseed = [0]\n[train]\nseed = 0\n",
    "[grid]\n" + "\n".join(f"k{i} = [1, 2]" for i in range(20)) + "\n",
    "[grid]\nhidden = [[0]]\n", "[grid]\nhidden = [['a']]\n", "[grid]\nalgo = ['x']\n",
    "[grid]\nalgo = [1]\n", "[grid]\ndataset = ['imagenet']\n", "[grid]\nnoise = ['pink']\n",
    "[grid]\nseed = [1.5]\n", "[grid]\nseed = [true]\n", "[grid]\nthreads = [0]\n",
    "[grid]\nmodel = ['nope.py:f']\n", "[train]\nmodel = 5\n", "[grid]\nseed = [1e400]\n",
    "\x00\x01\x02", "[grid]\nseed = [0]\n[other]\n", "[[grid]]\nseed = [0]\n",
    "[grid]\nepochs = [99999999999999999999]\n", "[train]\nhidden = [100000, 100000, 100000]\n",
    "[grid]\nseed = [0]\nseed = [1]\n",
]


def state_cases(data: dict, schema: dict) -> list[tuple[str, dict]]:
    """Per schema key: the file without it, and the key set to each of ``BAD_VALUES``."""
    cases = []
    for key in schema:
        cases.append((f"no {key}", {k: v for k, v in data.items() if k != key}))
        cases += [(f"{key}={value!r}"[:40], {**data, key: value}) for value in BAD_VALUES]
    return cases


def tensor_cases(data: dict) -> list[tuple[str, dict]]:
    cases = []
    for name, t in data["network"].items():
        for label, value in (("shape", torch.zeros(t.numel() + 1)), ("dtype", t.double()),
                             ("int", t.long()), ("scalar", torch.tensor(1.0)),
                             ("empty", torch.zeros(0))):
            cases.append((f"{name} {label}", {**data, "network": {**data["network"],
                                                                  name: value}}))
        cases.append((f"no {name}", {**data, "network": {k: v for k, v in
                                                         data["network"].items() if k != name}}))
    cases.append(("extra tensor", {**data, "network": {**data["network"], "x": torch.ones(1)}}))
    return cases


def deep_cases(data: dict) -> list[tuple[str, dict]]:
    """Damage inside the optimizer, noise and random states of a checkpoint."""
    opt = data["optimizer"]
    short = torch.zeros(5, dtype=torch.uint8)
    return [
        ("opt no state", {**data, "optimizer": {"param_groups": opt["param_groups"]}}),
        ("opt groups", {**data, "optimizer": {**opt, "param_groups": []}}),
        ("opt group junk", {**data, "optimizer": {**opt, "param_groups": [5]}}),
        ("opt state key", {**data, "optimizer": {**opt, "state": {"a": {}}}}),
        ("opt state big", {**data, "optimizer": {**opt, "state": {99: {}}}}),
        ("opt exp_avg", {**data, "optimizer": {**opt, "state": {
            **opt["state"], 0: {**opt["state"][0], "exp_avg": torch.zeros(5, 5)}}}}),
        ("opt lr text", {**data, "optimizer": {**opt, "param_groups": [
            {**opt["param_groups"][0], "lr": "fast"}]}}),
        ("noise empty", {**data, "noise": []}),
        ("noise junk", {**data, "noise": [{"generator": 5}] * len(data["noise"])}),
        ("noise device", {**data, "noise": [{"generator": ("tpu", short)}]
                          * len(data["noise"])}),
        ("noise short rng", {**data, "noise": [{"generator": ("cpu", short)}]
                             * len(data["noise"])}),
        ("random short", {**data, "random": {"cpu": short, "cuda": []}}),
        ("data_order short", {**data, "data_order": short}),
        ("history long", {**data, "history": data["history"] * 5}),
        ("epoch huge", {**data, "epoch": 10**6}),
        ("trace records", {**data, "trace_records": 10**6}),
    ]


@pytest.mark.slow  # 450 cases, two minutes or more on two busy cores
def test_hundreds_of_damaged_run_folders_model_files_and_paths_get_one_line_each(
        tmp_path, monkeypatch, capfd):
    """Issue 18's surfaces: every case is refused in one line with status 2 (or, where the
    changed value is still a valid one, runs to the end with status 0), changes none of the
    files it was given, imports no model file without consent, and never crashes."""
    import shutil
    import subprocess

    from noisynets.checkpoints import CHECKPOINT_SCHEMA, MODEL_SCHEMA, sealed
    from noisynets.config import TrainConfig
    from noisynets.run import train

    rng = random.Random(18)
    monkeypatch.chdir(tmp_path)
    for seed in (0, 1):
        train(TrainConfig(hidden=[8], epochs=1, trace_every=5, figures=False, seed=seed,
                          out=str(tmp_path / f"seed{seed}")), progress=False, log=None)
    capfd.readouterr()
    base = tmp_path / "seed0"
    checkpoint = torch.load(base / "checkpoint.pt", weights_only=True)
    model = torch.load(base / "model.pt", weights_only=True)

    cases: list[tuple[str, list[str], list[Path], bool]] = []  # name, argv, inputs, may pass
    count = iter(range(10**6))

    def folder_with(name: str, data: dict | bytes, file: str) -> Path:
        folder = tmp_path / f"f{next(count)}"
        shutil.copytree(base, folder)
        (folder / "model.pt").unlink()
        path = folder / file
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:  # sealed, so the checks after the digest's see the change (unless it is the case)
            torch.save(data if "digest" in name else sealed(data), path)
        return folder

    def valid(schema: dict, data: dict) -> bool:
        return all(k in data and schema[k][1](data[k]) for k in schema)

    for name, data in state_cases(checkpoint, CHECKPOINT_SCHEMA) + tensor_cases(checkpoint) \
            + deep_cases(checkpoint):
        folder = folder_with(name, data, "checkpoint.pt")
        benign = valid(CHECKPOINT_SCHEMA, data) and not name.endswith(("shape", "dtype", "int",
                                                                       "scalar", "empty"))
        cases.append((f"checkpoint {name}", ["train", "--resume", str(folder), "--no-progress"],
                      [folder / "checkpoint.pt"], benign))
    for name, data in state_cases(model, MODEL_SCHEMA) + tensor_cases(model):
        folder = folder_with(name, data, "model.pt")
        benign = valid(MODEL_SCHEMA, data)
        cases.append((f"model {name}", ["evaluate", str(folder)], [folder / "model.pt"], benign))
    other = tmp_path / "seed1"
    for file, command in (("checkpoint.pt", ["train", "--resume"]), ("model.pt", ["evaluate"])):
        folder = folder_with("foreign", (other / file).read_bytes(), file)
        cases.append((f"foreign {file}", [*command, str(folder)], [folder / file], False))
        for k in range(6):
            blob = bytearray((base / file).read_bytes())
            for _ in range(10):
                blob[rng.randrange(len(blob))] ^= 0xFF
            folder = folder_with("flipped", bytes(blob), file)
            cases.append((f"flipped {file} {k}", [*command, str(folder)], [folder / file], True))
    (tmp_path / "identity_junk").mkdir()
    shutil.copytree(base, tmp_path / "identity_junk", dirs_exist_ok=True)
    (tmp_path / "identity_junk" / "identity.json").write_text("[1]")
    cases.append(("identity junk", ["evaluate", str(tmp_path / "identity_junk")], [], False))

    # --model files: each must be refused at train, and never resumed without consent
    code = tmp_path / "code"
    code.mkdir()
    for k, (name, text) in enumerate(MODEL_FILES.items()):
        path = code / f"m{k}.py"
        if text is None:
            path.write_bytes(rng.randbytes(200))
        else:
            path.write_text(text)
        cases.append((f"--model {name}", ["train", "--model", f"{path}:net", "--epochs", "1",
                                          "--trace-every", "0", "--no-figures", "--out",
                                          str(tmp_path / f"mrun{k}")], [path], False))
    marker_code = code / "marker.py"
    marker_code.write_text("from pathlib import Path\nPath(__file__).with_name('marker')"
                           ".write_text('x')\nfrom torch import nn\ndef net():\n    return "
                           "nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    consent_run = tmp_path / "consent"
    train(TrainConfig(model=f"{marker_code}:net", epochs=1, trace_every=0, figures=False,
                      out=str(consent_run)), progress=False, log=None)
    (code / "marker").unlink()
    for argv in (["train", "--resume", str(consent_run)], ["evaluate", str(consent_run)],
                 ["evaluate", str(consent_run), "--model", f"{marker_code}:other"],
                 ["evaluate", str(consent_run), "--model", f"{code / 'm0.py'}:net"],
                 ["evaluate", str(consent_run), "--model", "nothing.py:net"],
                 ["evaluate", str(consent_run), "--model", "net"],
                 ["train", "--trust-model", "--epochs", "1"]):
        cases.append((f"consent {argv[1:]}", argv, [marker_code], False))

    # sweep files of every wrong kind
    for k, text in enumerate(SWEEP_FILES):
        path = tmp_path / f"sweep{k}.toml"
        path.write_text(text)
        cases.append((f"sweep {text[:30]!r}", ["sweep", str(path), "--workers", "1", "--out",
                                               str(tmp_path / f"sw{k}")], [path], False))
    for k in range(8):
        path = tmp_path / f"sweep_random{k}.toml"
        path.write_bytes(rng.randbytes(rng.randint(1, 200)))
        cases.append((f"sweep random {k}", ["sweep", str(path), "--workers", "1"], [path], False))

    # paths: too long, under a file, a file for a folder, symbolic links
    long = str(tmp_path / ("y" * 300))
    trace = base / "trace.h5"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    good_sweep = tmp_path / "good_sweep.toml"
    good_sweep.write_text("[grid]\nseed = [0]\n[train]\nhidden = [8]\nepochs = 1\n")
    for where in (long, str(a_file / "sub"), str(a_file)):
        cases += [
            (f"train --out {where[-12:]}", ["train", "--epochs", "1", "--out", where], [], False),
            (f"resume {where[-12:]}", ["train", "--resume", where], [], False),
            (f"evaluate {where[-12:]}", ["evaluate", where], [], False),
            (f"inspect {where[-12:]}", ["inspect", where], [], False),
            (f"plot -o {where[-12:]}", ["plot", str(trace), "-o", where + "/p.png"], [trace],
             False),
            (f"export npz {where[-12:]}", ["export", str(trace), "--format", "npz", "-o",
                                           where + "/e.npz"], [trace], False),
            (f"export csv {where[-12:]}", ["export", str(trace), "--format", "csv", "-o",
                                           where + "/csv"], [trace], False),
            (f"sweep --out {where[-12:]}", ["sweep", str(good_sweep), "--workers", "1", "--out",
                                            where], [good_sweep], False),
            (f"config {where[-12:]}", ["train", "--config", where], [], False),
            (f"data-root {where[-12:]}", ["train", "--dataset", "mnist", "--data-root", where],
             [], False),
            (f"model {where[-12:]}", ["train", "--model", where + ":net"], [], False),
            (f"sweep file {where[-12:]}", ["sweep", where], [], False),
        ]
    links = tmp_path / "links"
    shutil.copytree(base, links)
    (links / "model.pt").unlink()
    for name in ("checkpoint.pt", "identity.json", "trace.h5"):
        target = tmp_path / f"outside_{name}"
        shutil.copy(base / name, target)
        folder = tmp_path / f"link_{name}"
        shutil.copytree(links, folder)
        (folder / name).unlink()
        (folder / name).symlink_to(target)
        cases.append((f"symlink {name}", ["train", "--resume", str(folder)], [target], False))
    folder = tmp_path / "link_model"
    shutil.copytree(base, folder)
    (folder / "model.pt").unlink()
    (folder / "model.pt").symlink_to(base / "model.pt")
    cases.append(("symlink model.pt", ["evaluate", str(folder)], [base / "model.pt"], False))

    # small full file systems (where a tmpfs can be mounted)
    disks = []
    if os.geteuid() == 0 and shutil.which("mount"):
        for k, size in enumerate(("16k", "64k", "256k", "1m", "2m")):
            disk = tmp_path / f"disk{k}"
            disk.mkdir()
            if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(disk)], capture_output=True).returncode == 0:
                disks.append(disk)
                for j, extra in enumerate((["--trace-every", "1", "--trace-units", "0"],
                                           ["--trace-every", "0", "--hidden", "1000"])):
                    cases.append((f"disk {size} {j}", ["train", "--epochs", "2", "--no-progress",
                                                       "--out", str(disk / f"run{j}"), *extra],
                                  [], False))
    try:
        defects = run_cases(cases, capfd, tmp_path, code / "marker")
    finally:
        for disk in disks:
            subprocess.run(["umount", str(disk)], capture_output=True)
    assert len(cases) >= 300, len(cases)
    print(f"issue 18 fuzz: {len(cases)} tried, {len(cases) - len(defects)} clean, "
          f"{len(defects)} defects")
    assert not defects, f"{len(defects)} of {len(cases)}:\n" + "\n".join(
        f"{name}: {what}" for name, what in defects)


def run_cases(cases, capfd, root: Path, marker: Path) -> list[tuple[str, str]]:
    import time

    defects, seconds = [], []
    for name, argv, inputs, may_pass in cases:
        seconds.append((time.perf_counter(), name))
        before = {p: digest(p) for p in inputs}
        try:
            status = main(argv)
        except BaseException as e:  # noqa: BLE001 -- a crash is what this test looks for
            capfd.readouterr()
            defects.append((name, f"raised {type(e).__name__}: {e}"[:200]))
            seconds[-1] = (time.perf_counter() - seconds[-1][0], name)
            continue
        captured = capfd.readouterr()
        lines = captured.err.strip().splitlines()
        if marker.exists():
            defects.append((name, "imported the model file without consent"))
            marker.unlink()
        if status == 0 and not may_pass:
            defects.append((name, "accepted: every input here is a mistake"))
        elif argv[0] == "sweep" and status == 1 and len(lines) == 1 \
                and " runs failed: " in lines[0]:
            pass  # a sweep whose runs fail: status 1 and one line naming each (documented)
        elif status != 0 and (status != 2 or len(lines) != 1
                              or not lines[0].startswith("noisynets: error: ")):
            defects.append((name, f"status {status}: {captured.err[-300:]!r}"))
        changed = [str(p) for p in inputs if digest(p) != before[p]]
        if changed:
            defects.append((name, f"changed {changed}"))
        left = [str(p) for p in root.rglob("*.tmp-*")]
        if left:
            defects.append((name, f"left temporaries {left[:2]}"))
        seconds[-1] = (time.perf_counter() - seconds[-1][0], name)
    print("slowest:", sorted(seconds, reverse=True)[:12])
    return defects


# --- predict inputs, replay files, export targets, numbers at their limits, damaged model,
# --- checkpoint and identity files (issue 27) --------------------------------------------

def input_files(folder: Path, rng: random.Random) -> list[tuple[Path, int | None]]:
    """(a file, the samples a prediction of it must have: None where it must be refused)."""
    x = np.random.default_rng(27).random((6, 64))
    made: list[tuple[Path, int | None]] = []

    def new(name: str, data: bytes, samples: int | None) -> None:
        path = folder / name
        path.write_bytes(data)
        made.append((path, samples))

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    def npz(compressed: bool = False, **arrays: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
        return buffer.getvalue()

    def claims(shape: tuple[int, ...], descr: str = "<f8", tail: bytes = bytes(64)) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                      "shape": shape})
        return buffer.getvalue() + tail

    text = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in x)
    good = {"npy": npy(x), "npz": npz(x=x), "npz_packed": npz(True, x=x), "csv": text.encode(),
            "csv_bom": text.encode("utf-8-sig"), "one_sample": npy(x[0].reshape(1, 8, 8)),
            "images": npy(x.reshape(6, 1, 8, 8)), "ints": npy((x * 9).astype(np.int32)),
            "named_npz": npz(inputs=x), "header": ("a" + ",a" * 63 + "\n" + text).encode(),
            "blank_lines": ("\n" + text.replace("\n", "\n\n")).encode()}
    samples = {"one_sample": 1}
    for kind, data in good.items():
        for suffix in (".npy", ".npz", ".csv", ".bin"):  # every content under every name
            new(f"{kind}{suffix}", data, samples.get(kind, 6))
    bad = {
        "empty": b"", "junk": bytes(rng.randbytes(300)), "text": b"hello world\n",
        "header_only": ("a" + ",a" * 63 + "\n").encode(),
        "first_row_garbled": text.replace("0.", "x.", 1).encode(),
        "last_row_garbled": (text + "1," * 63 + "one\n").encode(),
        "ragged": (text + "1,2,3\n").encode(), "trailing_comma": text.replace("\n", ",\n").encode(),
        "nul": text.replace(",", "\x00,", 1).encode(), "long_field": b"1" * 200_000 + b"\n",
        "quoted_newline": ('"1\n2"' + ",0" * 63 + "\n").encode(),
        "overflow": (text + ",".join(["1e999"] * 64) + "\n").encode(),
        "nan": npy(np.full((2, 64), np.nan)), "inf32": npy(np.full((2, 64), 1e300)),
        "objects": b"", "strings": npy(np.array(["a"] * 64)), "complex": npy(x + 1j),
        "structured": npy(np.zeros(3, dtype=[("a", "f8"), ("b", "f8")])),
        "wrong_width": npy(x[:, :10]), "cube": npy(x.reshape(6, 4, 16)),
        "scalar": npy(np.array(1.0)),
        "zero_rows": npy(np.zeros((0, 64))), "rows_1e10": claims((10**10, 64)),
        "short": claims((100, 64)), "negative_shape": claims((-1, 64)),
        "object_descr": claims((2,), "|O"), "two_arrays": npz(a=x, b=x),
        "no_arrays": npz(), "npz_rows_1e10": b"", "hdf5": b"",
    }
    for name, data in bad.items():
        new(name, data, None)
    with (folder / "objects").open("wb") as f:
        np.save(f, np.array([1, "a"], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(folder / "npz_rows_1e10", "w") as z:
        z.writestr("x.npy", claims((10**10, 64)))
    with h5py.File(folder / "hdf5", "w") as f:
        f["x"] = x
    for k, data in enumerate((good["npz"], good["npz_packed"], good["npy"])):
        for cut in (len(data) // 3, len(data) - 7):
            new(f"cut{k}_{cut}", data[:cut], None)
    for k in range(8):  # random flips in an archive: damage that zip's CRC or zlib sees
        data = bytearray(good["npz"] if k % 2 else good["npz_packed"])
        for _ in range(4):
            data[rng.randrange(64, len(data) - 64)] ^= 0xFF
        new(f"flipped_npz{k}", bytes(data), None)
    fifo = folder / "fifo.npy"
    os.mkfifo(fifo)
    made.append((fifo, None))
    (folder / "a_folder.npy").mkdir()
    made.append((folder / "a_folder.npy", None))
    (folder / "link_to_fifo.npy").symlink_to(fifo)
    made.append((folder / "link_to_fifo.npy", None))
    return made


def recordings(folder: Path) -> list[tuple[Path, bool]]:
    """(a recorded-noise file, whether replay may use it)."""
    trace = np.random.default_rng(5).normal(size=(3, 50))
    made: list[tuple[Path, bool]] = []
    for name, array in (("trace.npy", trace), ("one.npy", trace[0])):
        np.save(folder / name, array)
        made.append((folder / name, True))
    (folder / "named.bin").write_bytes((folder / "trace.npy").read_bytes())
    made.append((folder / "named.bin", True))
    with h5py.File(folder / "rec.h5", "w") as f:
        f["v"] = trace
    made.append((folder / "rec.h5", True))
    return made


@pytest.mark.slow  # about 500 cases, several minutes on two busy cores
def test_the_newer_surfaces_get_one_line_each_and_lose_nothing(tmp_path, monkeypatch, capfd):
    """Issue 27's surfaces: predict inputs, replay files, export targets, numbers at their
    limits, damaged model.pt, checkpoint.pt and identity.json. Every case ends in one line
    and status 2, or (where the input is valid) status 0 with every sample predicted; none
    crashes, hangs (a case has 120 s), changes a file it was given or a run's files, leaves a
    temporary or a half-written output, or uses a damaged file."""
    import shutil
    import signal

    from noisynets.checkpoints import content_digest, load, sealed
    from noisynets.config import TrainConfig
    from noisynets.files import RUN_FILE_NAMES
    from noisynets.run import train

    rng = random.Random(27)
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "run"
    train(TrainConfig(hidden=[8], epochs=1, trace_every=5, threads=1, out=str(base)),
          progress=False, log=None)
    capfd.readouterr()
    intact = {name: digest(base / name) for name in RUN_FILE_NAMES if (base / name).exists()}
    main(["evaluate", str(base), "--json"])
    score = capfd.readouterr().out
    cases: list[tuple[str, list[str], list[Path], bool, object]] = []

    # predict inputs: each a file and its expected count of predictions
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path, samples in input_files(inputs, rng):
        out = tmp_path / f"p_{path.name.replace('.', '_')}.csv"

        def rows(out: Path = out, samples: int | None = samples) -> str | None:
            if samples is None:
                return "written for a refused input" if out.exists() else None
            count = len(out.read_text().splitlines()) - 1 if out.exists() else -1
            return None if count == samples else f"{count} predictions of {samples} samples"

        cases.append((f"predict {path.name}", ["predict", str(base), "--input", str(path),
                                                "-o", str(out)],
                      [path] if path.is_file() else [], samples is not None, rows))
    # the same files as recorded noise (refused unless numbers of the right shape)
    small = ["--hidden", "4", "--epochs", "1", "--trace-every", "0", "--no-figures",
             "--threads", "1", "--dataset", "teacher:train=64,test=16"]
    replay_inputs = tmp_path / "replay_in"
    replay_inputs.mkdir()
    for path, samples in input_files(replay_inputs, rng):
        if samples is not None and not path.name.startswith(("csv", "header", "blank")):
            continue  # numbers a recording may hold: replay trains on them (a few below)
        recordable = path.name in ("wrong_width", "hdf5")  # not samples, but recordings
        cases.append((f"replay {path.name}", ["train", "--noise", f"replay:file={path}",
                                              *small, "--out", str(tmp_path / (
                                                  f"r_{path.name}" if recordable else "never"))],
                      [path] if path.is_file() else [], recordable, None))
    for path, usable in recordings(tmp_path):
        cases.append((f"replay ok {path.name}", ["train", "--noise", f"replay:file={path}",
                                                 *small, "--out", str(tmp_path / f"r_{path.stem}")],
                      [path], usable, None))

    # export targets: a run's own files, a run folder, links to run files, odd places
    trace = str(base / "trace.h5")
    (tmp_path / "link.pt").symlink_to(base / "model.pt")
    fifo = tmp_path / "out_fifo.npz"
    os.mkfifo(fifo)
    targets = [str(base / name) for name in (*RUN_FILE_NAMES, "tensorboard")]
    targets += [str(base), str(tmp_path / "link.pt"), str(base / "nope" / "x.npz"),
                str(base / "model.pt" / "x.npz"), str(tmp_path / ("y" * 300 + ".npz"))]
    for target in targets:
        for fmt in ("npz", "csv", "nwb", "nir"):
            source = str(base) if fmt == "nir" else trace
            new_folder = fmt == "csv" and target.endswith("nope/x.npz")  # made: allowed
            cases.append((f"export {fmt} -o {Path(target).name[:20]}",
                          ["export", source, "--format", fmt, "-o", target], [], new_folder,
                          None))
        cases.append((f"plot -o {Path(target).name[:20]}", ["plot", trace, "-o", target], [],
                      Path(target).name == "trace.png", None))
        cases.append((f"predict -o {Path(target).name[:20]}",
                      ["predict", str(base), "--input", str(inputs / "npy.npy"), "-o",
                       target], [], False, None))

    # numbers at their limits, from the command line, TOML and sweep files
    limits = {"--threads": ["1025", "0", "9" * 30], "--batch-size": ["1000000001", "-1"],
              "--epochs": ["1000000001"], "--noise-samples": ["1000000000", "0"],
              "--lr": ["1e309", "1e-400", "-0", "nan"], "--noise-std": ["1e309", "5e-324x"],
              "--adc": ["bits=inf", "bits=-inf", "bits=nan", "bits=1e30", "bits=33",
                        "bits=8,range=inf", "bits=8,range=1e300", "0"],
              "--weight-noise": ["pcm:time=inf", "pcm:time=1e300", "pcm:gmax=1e300",
                                 "pcm:prog=1e300", "pcm:read=-1", "pcm:compensate=2"],
              "--noise": ["gaussian:std=1e309", f"gaussian:std=1{'0' * 400}",
                          "telegraph:switch=1e-400"]}
    for option, values in limits.items():
        cases += [(f"{option} {value[:20]}", ["train", option, value, "--out",
                                               str(tmp_path / "never")], [], False, None)
                  for value in values]
    for option, value in (("--batch-size", "9" * 30), ("--hidden", "0"), ("--steps", "10001"),
                          ("--batch-size", "100000000")):
        cases.append((f"bench {option} {value[:12]}", ["bench", option, value], [], False, None))
    toml_values = [f"lr = 1{'0' * 400}", f"lr = 1{'0' * 5000}", "lr = 1979-05-27",
                   "seed = 07:32:00", "epochs = 1979-05-27T07:32:00Z", "hidden = [[1]]",
                   "noise = {std = 1}", "threads = 1025", "batch_size = 1000000001",
                   "time_steps = -1", "lr = inf", "lr = nan", "adc = 'bits=inf'",
                   "epochs = " + "[" * 3000 + "]" * 3000, "noise_samples = 1e9"]
    for k, text in enumerate(toml_values):
        path = tmp_path / f"limit{k}.toml"
        path.write_text(text + "\n")
        cases.append((f"toml {text[:24]}", ["train", "--config", str(path), "--out",
                                            str(tmp_path / "never")], [path], False, None))
        sweep = tmp_path / f"sweep_limit{k}.toml"
        key, _, value = text.partition(" = ")
        sweep.write_text(f"[grid]\n{key} = [{value}]\n")
        cases.append((f"sweep {text[:24]}", ["sweep", str(sweep), "--workers", "1", "--out",
                                             str(tmp_path / f"sw{k}")], [sweep], False, None))

    # damaged model.pt, checkpoint.pt and identity.json
    model_bytes = (base / "model.pt").read_bytes()
    checkpoint_bytes = (base / "checkpoint.pt").read_bytes()
    intact_content = {name: content_digest(load(base / name, name.split(".")[0]))
                      for name in ("model.pt", "checkpoint.pt")}

    def damaged_folder(file: str, data: bytes | None) -> Path:
        folder = tmp_path / f"d{len(cases)}"
        shutil.copytree(base, folder)
        if file != "model.pt" or data is not None:
            (folder / "model.pt").unlink()  # evaluate needs it; resume needs it gone
        if data is None:
            (folder / file).unlink()
        else:
            (folder / file).write_bytes(data)
        return folder

    def damage_used(folder: Path, file: str):
        def check() -> str | None:  # accepted: only if what it holds is what was saved
            try:
                same = content_digest(load(folder / file, file.split(".")[0])) \
                    == intact_content[file]
            except ValueError:
                same = False
            return None if same else "a damaged file was used"
        return check

    for file, data in (("model.pt", model_bytes), ("checkpoint.pt", checkpoint_bytes)):
        command = ["evaluate"] if file == "model.pt" else ["train", "--resume"]
        for flips in (1, 8, 64):
            for k in range(6):
                blob = bytearray(data)
                start = rng.randrange(len(blob) // 4, len(blob) - 80) if k else len(blob) // 2
                for i in range(flips):
                    blob[start + i] ^= 0xFF
                folder = damaged_folder(file, bytes(blob))
                cases.append((f"{file} {flips} flipped at {start}", [*command, str(folder)],
                              [folder / file], True, damage_used(folder, file)))
        state = torch.load(base / file, weights_only=True)
        for name, value in (("nan", float("nan")), ("inf", float("inf"))):
            edited = {**state, "network": {**state["network"]}}
            key = next(iter(edited["network"]))
            edited["network"][key] = edited["network"][key].clone().fill_(value)
            buffer = io.BytesIO()
            torch.save(sealed(edited), buffer)
            folder = damaged_folder(file, buffer.getvalue())
            cases.append((f"{file} {name} weights", [*command, str(folder)], [folder / file],
                          False, None))
    identity = (base / "identity.json").read_text()
    for name, text in (("deleted", None), ("empty", ""), ("cut", identity[:30]),
                       ("list", "[1]"), ("other id", identity.replace(
                           json.loads(identity)["id"], "0" * 32)),
                       ("other config", identity.replace(json.loads(identity)["config"],
                                                         "1" * 64)),
                       ("binary", "\x00\xff"), ("deep", "[" * 5000 + "]" * 5000)):
        for command in (["evaluate"], ["train", "--resume"]):
            folder = damaged_folder("identity.json", None if text is None
                                    else text.encode("utf-8", "surrogateescape"))
            if command[0] == "train":
                (folder / "model.pt").unlink(missing_ok=True)
            else:
                shutil.copy(base / "model.pt", folder / "model.pt")
            cases.append((f"identity {name} {command[0]}", [*command, str(folder)], [], False,
                          None))

    # FIFOs where a run's files or a command's input belong: a read would wait for ever
    for file, command in (("identity.json", ["evaluate"]), ("results.json", ["train", "--resume"]),
                          ("model.pt", ["evaluate"]), ("checkpoint.pt", ["train", "--resume"]),
                          ("trace.h5", ["inspect"])):
        folder = tmp_path / f"fifo_{file}"
        shutil.copytree(base, folder)
        if command[-1] == "--resume":
            (folder / "checkpoint.pt").unlink()
        (folder / file).unlink(missing_ok=True)
        os.mkfifo(folder / file)
        target = folder / file if command == ["inspect"] else folder
        cases.append((f"fifo {file}", [*command, str(target)], [], False, None))
    for option in ("--config", "--model"):
        fifo = tmp_path / f"fifo{option[2:]}.py"
        os.mkfifo(fifo)
        value = f"{fifo}:net" if option == "--model" else str(fifo)
        cases.append((f"fifo {option}", ["train", option, value, "--out",
                                         str(tmp_path / "never")], [], False, None))

    class Hang(BaseException):  # not an OSError (TimeoutError is): no handler takes it
        pass

    def alarm(signum, frame):
        raise Hang("hung for 120 s")

    previous = signal.signal(signal.SIGALRM, alarm)
    defects: list[tuple[str, str]] = []
    try:
        for name, argv, inputs_, may_pass, check in cases:
            before = {p: digest(p) for p in inputs_}
            signal.alarm(120)
            try:
                with warnings.catch_warnings(record=True) as warned:
                    warnings.simplefilter("always")
                    status = main(argv)
            except BaseException as e:  # noqa: BLE001 -- a crash or a hang is the finding
                capfd.readouterr()
                defects.append((name, f"raised {type(e).__name__}: {e}"[:200]))
                continue
            finally:
                signal.alarm(0)
            if warned:  # printed beside the one line, outside this test
                defects.append((name, f"warned: {str(warned[0].message)[:100]}"))
            captured = capfd.readouterr()
            lines = captured.err.strip().splitlines()
            if status == 0 and not may_pass:
                defects.append((name, "accepted: the input is a mistake"))
            elif status != 0 and (status != 2 or len(lines) != 1
                                  or not lines[0].startswith("noisynets: error: ")):
                defects.append((name, f"status {status}: {captured.err[-300:]!r}"))
            if "Traceback" in captured.err or "Exception" in captured.err:
                defects.append((name, "a traceback"))
            problem = check() if check is not None and (status == 0 or "predict" in name) \
                else None
            if problem:
                defects.append((name, problem))
            changed = [str(p) for p in inputs_ if digest(p) != before[p]]
            if changed:
                defects.append((name, f"changed {changed}"))
            run_files = {n: digest(base / n) for n in intact}
            if run_files != intact:
                defects.append((name, "changed the run's own files"))
                intact = run_files
            left = [str(p) for p in tmp_path.rglob("*.tmp-*")]
            if left:
                defects.append((name, f"left temporaries {left[:2]}"))
            if (tmp_path / "never").exists():
                defects.append((name, "a refused run left its folder"))
                shutil.rmtree(tmp_path / "never")
    finally:
        signal.signal(signal.SIGALRM, previous)
    main(["evaluate", str(base), "--json"])
    assert capfd.readouterr().out == score  # the run still scores as it did
    print(f"issue 27 fuzz: {len(cases)} tried, {len(cases) - len(defects)} clean, "
          f"{len(defects)} defects")
    assert len(cases) >= 300, len(cases)
    assert not defects, f"{len(defects)} of {len(cases)}:\n" + "\n".join(
        f"{name}: {what}" for name, what in defects)
