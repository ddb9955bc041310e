"""Spiking data with temporal structure: the generated random-manifold task and the SHD loader.

Properties proven: ``randman`` is the formula of ``random_manifolds`` (a per-component loop
gives the same spike times), one spike per channel, balanced, fixed by its seed, its class in
the timing and not in the counts; ``shd`` reads files in the published HDF5 layout (written
here, nothing downloaded), bins them as documented, is found like every data set, and every bad
file or option is a one-line error raised before anything large is allocated.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from noisynets import data
from noisynets.data import DataError, load_dataset, random_manifolds


def one_line(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --------------------------------------------------------------------------------------------
# random manifolds


def test_randman_is_its_formula_one_spike_per_channel_and_balanced():
    """A loop over the Fourier components, classes and samples (Zenke's ``randman`` written
    out) gives the generator's spike times, drawing from the same seeded generator."""
    classes, channels, steps, dim, alpha, train, test = 3, 4, 16, 2, 1.5, 6, 3
    got = random_manifolds(classes, channels, steps, dim, alpha, train, test, seed=5)
    g = torch.Generator().manual_seed(5)
    F = math.ceil(1e-3 ** (-1 / alpha))
    n = (train + test) // classes
    times = []  # per class: (n, channels) spike steps
    for _ in range(classes):
        a, b, c = torch.rand(3, channels, dim, F, generator=g, dtype=torch.float64)
        x = torch.rand(n, dim, generator=g, dtype=torch.float64)
        f = torch.ones(n, channels, dtype=torch.float64)
        for j in range(channels):
            for d in range(dim):
                total = torch.zeros(n, dtype=torch.float64)
                for i in range(1, F):  # a_0 = 0: no constant term
                    total += a[j, d, i] * (i + 1) ** -alpha * torch.sin(
                        2 * math.pi * (i * b[j, d, i] * x[:, d] + c[j, d, i]))
                f[:, j] *= total
        low, high = f.min(0).values, f.max(0).values
        times.append(torch.floor(steps * (f - low) / (high - low + 1e-7)).long())
    order = torch.randperm(train, generator=g)
    expected = torch.cat([t[: train // classes] for t in times])[order]
    labels = torch.arange(classes).repeat_interleave(train // classes)[order]
    assert got.train_x.shape == (train, steps, channels) and got.sequence
    assert torch.equal(got.train_x.argmax(1), expected)
    assert torch.equal(got.train_y, labels)
    assert (got.train_x.sum(1) == 1).all() and (got.test_x.sum(1) == 1).all()
    assert torch.equal(got.test_y.bincount(), torch.full((classes,), test // classes))
    assert got.input_shape == (steps, channels) and got.step_features == channels


def test_randman_is_fixed_by_its_seed_and_its_class_is_in_the_timing():
    one, again = load_dataset("randman:seed=3,train=200,test=100"), random_manifolds(
        seed=3, train=200, test=100)
    other = random_manifolds(seed=4, train=200, test=100)
    assert torch.equal(one.train_x, again.train_x) and torch.equal(one.test_y, again.test_y)
    assert not torch.equal(one.train_x, other.train_x)
    # every sample has the same counts: nothing but the timing tells the classes apart
    assert (one.train_x.sum(1) == 1).all()
    # and the timing does: the nearest class mean of the spike times beats chance by far
    t_train, t_test = one.train_x.argmax(1).double(), one.test_x.argmax(1).double()
    means = torch.stack([t_train[one.train_y == k].mean(0) for k in range(10)])
    guess = torch.cdist(t_test, means).argmin(1)
    assert (guess == one.test_y).double().mean() > 0.3  # chance: 0.1


@pytest.mark.parametrize("spec,words", [
    ("randman:train=15", ("train=15", "multiple of classes=10")),
    ("randman:classes=1", ("classes=1", "from 2")),
    ("randman:alpha=0", ("alpha=0", "(0, 100)")),
    ("randman:colour=2", ("colour=2", "valid keys", "channels")),
    ("randman:steps=x", ("steps='x'", "integer")),
    ("randman:train=1000000000,steps=1000", ("GiB", "fewer samples or steps")),
])
def test_bad_randman_specs_are_one_line_errors(spec, words):
    with pytest.raises(DataError) as excinfo:
        load_dataset(spec)
    one_line(excinfo, *words)


# --------------------------------------------------------------------------------------------
# Spiking Heidelberg Digits


def write_shd(path: Path, samples: list[tuple[list[float], list[int]]], labels: list[int],
              units_dtype: str = "uint16") -> Path:
    """An SHD file in the published layout: ``spikes/times`` (float32 seconds) and
    ``spikes/units`` (uint16) as variable-length arrays, one per sample, ``labels`` (uint16),
    and an ``extra`` group as the published files have."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        spikes = f.create_group("spikes")
        times = spikes.create_dataset("times", (len(samples),),
                                      dtype=h5py.vlen_dtype(np.float32))
        units = spikes.create_dataset("units", (len(samples),),
                                      dtype=h5py.vlen_dtype(np.dtype(units_dtype)))
        for k, (t, u) in enumerate(samples):
            times[k] = np.asarray(t, dtype=np.float32)
            units[k] = np.asarray(u, dtype=units_dtype)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
        f.create_group("extra").create_dataset("speaker", data=np.zeros(len(labels), np.uint16))
    return path


TRAIN = [([0.0, 0.05, 0.5, 1.39, 1.41], [0, 699, 3, 3, 5]), ([], []), ([0.75], [350])]
TEST = [([0.2, 0.2], [10, 11])]


def write_pair(folder: Path) -> None:
    write_shd(folder / "shd_train.h5", TRAIN, [0, 19, 7])
    write_shd(folder / "shd_test.h5", TEST, [4])


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("NOISYNETS_DATA", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    return tmp_path


def test_shd_files_in_the_published_layout_are_read_and_binned(isolated):
    """Spike at time t on unit u counts in step floor(t steps / max_time), channel
    u // (700 / channels); spikes at max_time or later are left out."""
    write_pair(isolated / "cwd" / "data" / "shd")
    shd = load_dataset("shd:steps=14,channels=70")  # 0.1 s per step, 10 units per channel
    assert shd.sequence and shd.num_classes == 20 and shd.input_shape == (14, 70)
    assert shd.train_x.shape == (3, 14, 70) and shd.test_x.shape == (1, 14, 70)
    assert shd.train_y.tolist() == [0, 19, 7] and shd.test_y.tolist() == [4]
    expected = torch.zeros(3, 14, 70)
    for step, channel in ((0, 0), (0, 69), (5, 0), (13, 0)):  # 1.41 s is past max_time
        expected[0, step, channel] += 1
    expected[2, 7, 35] = 1
    assert torch.equal(shd.train_x, expected)
    assert shd.test_x[0, 2, 1] == 2 and shd.test_x.sum() == 2  # two units, one channel
    assert shd.files[0].endswith("shd_train.h5") and shd.step_features == 70
    full = load_dataset("shd")  # the defaults: 100 steps of 14 ms, 700 channels
    assert full.train_x.shape == (3, 100, 700) and full.train_x[0, 3, 699] == 1


@pytest.mark.parametrize("where", ["root", "env", "system"])
def test_shd_is_found_like_every_data_set(isolated, monkeypatch, where):
    folder = {"root": isolated / "mine", "env": isolated / "env" / "shd",
              "system": isolated / "system" / "shd"}[where]
    write_pair(folder)
    if where == "env":
        monkeypatch.setenv("NOISYNETS_DATA", str(isolated / "env"))
    shd = load_dataset("shd", root=folder if where == "root" else None)
    assert shd.source == str(folder) and shd.train_x.shape[0] == 3


def test_missing_shd_files_name_the_places_and_how_to_get_them(isolated):
    with pytest.raises(DataError) as excinfo:
        load_dataset("shd")
    one_line(excinfo, "'shd' not found", str(isolated / "cwd" / "data" / "shd"),
             "shd_train.h5", "--data-root")
    write_shd(isolated / "cwd" / "data" / "shd" / "shd_train.h5", TRAIN, [0, 1, 2])
    with pytest.raises(DataError) as excinfo:
        load_dataset("shd")
    one_line(excinfo, "incomplete", "shd_test.h5")


def corrupt(folder: Path, how: str) -> str:
    """Write a train file broken in one way; the test file is fine."""
    train = folder / "shd_train.h5"
    write_shd(folder / "shd_test.h5", TEST, [4])
    if how == "not hdf5":
        train.write_bytes(b"\x89HDF\r\n" + bytes(200))
        return "not a readable HDF5 file"
    if how == "truncated":
        write_shd(train, TRAIN, [0, 19, 7])
        train.write_bytes(train.read_bytes()[:600])
        return "not a readable HDF5 file"
    if how == "no units":
        with h5py.File(train, "w") as f:
            f.create_dataset("spikes/times", (1,), dtype=h5py.vlen_dtype(np.float32))
            f.create_dataset("labels", data=np.zeros(1, np.uint16))
        return "'spikes/units'"
    if how == "lengths":
        write_shd(train, TRAIN, [0, 19])
        return "2 labels but 3 spike time"
    if how == "claims":  # a header that claims a billion samples, in a file of a few KB
        with h5py.File(train, "w") as f:
            for key in ("spikes/times", "spikes/units"):
                f.create_dataset(key, (10**9,), dtype=h5py.vlen_dtype(np.float32),
                                 chunks=(1024,))
            f.create_dataset("labels", (10**9,), dtype=np.uint16, chunks=(1024,))
        return "claims 1_000_000_000 samples"
    if how == "unit":
        write_shd(train, [([0.1], [700])], [0])
        return "units outside 0..699"
    if how == "time":
        write_shd(train, [([-0.1], [3])], [0])
        return "negative or not finite"
    if how == "pairs":
        with h5py.File(write_shd(train, TRAIN, [0, 19, 7]), "a") as f:
            f["spikes/units"][0] = np.asarray([1, 2], dtype=np.uint16)
        return "sample 0 has 5 spike times but 2 units"
    if how == "label":
        write_shd(train, TRAIN, [0, 20, 7])
        return "labels outside 0..19"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["not hdf5", "truncated", "no units", "lengths", "claims",
                                 "unit", "time", "pairs", "label"])
def test_a_corrupt_shd_file_is_a_one_line_error(isolated, how):
    folder = isolated / "cwd" / "data" / "shd"
    folder.mkdir(parents=True)
    words = corrupt(folder, how)
    with pytest.raises(DataError) as excinfo:
        load_dataset("shd")
    one_line(excinfo, "shd_train.h5", words)


@pytest.mark.parametrize("spec,words", [
    ("shd:channels=300", ("channels=300", "divide 700")),
    ("shd:max_time=0", ("max_time=0", "> 0")),
    ("shd:steps=0", ("steps=0", "from 1")),
    ("shd:steps=100000000", ("GiB", "fewer steps or channels")),
])
def test_bad_shd_options_are_one_line_errors_before_any_allocation(isolated, spec, words):
    write_pair(isolated / "cwd" / "data" / "shd")
    with pytest.raises(DataError) as excinfo:
        load_dataset(spec)
    one_line(excinfo, *words)


# --------------------------------------------------------------------------------------------
# runs on sequences


def test_a_run_on_a_sequence_data_set_trains_with_its_time_steps_and_reloads(isolated):
    """``--dataset randman`` sets encoding sequence, T = the data's steps and LIF units; the
    run learns above chance and its saved network, reloaded, gives the same test accuracy.
    ``shd`` files in the published layout train the same way."""
    from noisynets.config import TrainConfig, resolve
    from noisynets.inference import load_trained
    from noisynets.run import evaluate, train

    spec = "randman:classes=4,steps=8,channels=16,train=160,test=80"
    config = TrainConfig(algo="dbp", dataset=spec, hidden=[32], epochs=3, batch_size=16,
                         lr=1e-2, trace_every=8, figures=False, out=str(isolated / "run"))
    resolved = resolve(config)
    assert (resolved.encoding, resolved.time_steps, resolved.unit) == ("sequence", 8, "lif")
    result = train(config, progress=False, log=None)
    assert result.history[-1].test_accuracy > 0.4  # chance: 0.25
    network, _, spec_in = load_trained(isolated / "run")
    assert spec_in["shape"] == [8, 16]
    data = load_dataset(spec)
    _, accuracy = evaluate(network, data.test_x, data.test_y)
    assert accuracy == pytest.approx(result.history[-1].test_accuracy)
    write_pair(isolated / "cwd" / "data" / "shd")
    shd = train(TrainConfig(algo="danp", dataset="shd:steps=8,channels=70", hidden=[16],
                            epochs=1, batch_size=2, trace_every=0, figures=False,
                            out=str(isolated / "shd")), progress=False, log=None)
    assert shd.config.time_steps == 8 and len(shd.history) == 1


def test_the_randman_preset_gives_the_readout_its_own_noise_and_a_cosine_schedule():
    """docs/results.md, section 15: the readout's noise 2.0 against the hidden layer's 0.2,
    eta_R = 0.1 and a cosine schedule; a setting given wins, and other data sets keep a
    constant rate."""
    from noisynets.config import TrainConfig, resolve

    preset = resolve(TrainConfig(dataset="randman", algo="danp"))
    assert (preset.noise_std, preset.readout_noise_std, preset.decor_lr, preset.lr_schedule) \
        == (0.2, 2.0, 0.1, "cosine")
    given = resolve(TrainConfig(dataset="randman", algo="danp", lr_schedule="constant",
                                readout_noise_std=0.2))
    assert (given.lr_schedule, given.readout_noise_std, given.lr_gamma) == ("constant", 0.2, 1.0)
    step = resolve(TrainConfig(dataset="randman", algo="danp", lr_schedule="step"))
    assert (step.lr_schedule, step.lr_gamma) == ("step", 0.1)
    digits = resolve(TrainConfig(dataset="digits", algo="danp"))
    assert (digits.lr_schedule, digits.readout_noise_std) == ("constant", None)


@pytest.mark.slow
def test_danp_learns_the_random_manifolds_at_the_preset(isolated):
    """``noisynets train --dataset randman --algo danp --seed 0``: 0.958 here (BPTT 0.990,
    chance 0.1; at the earlier preset, the readout's noise 0.2, eta_R = 1e-3 and a constant
    rate, 0.670)."""
    from noisynets.config import TrainConfig
    from noisynets.run import train

    result = train(TrainConfig(algo="danp", dataset="randman", seed=0, threads=1,
                               trace_every=0, figures=False, out=str(isolated / "run")),
                   progress=False, log=None)
    assert result.history[-1].test_accuracy > 0.85
