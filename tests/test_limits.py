"""Every number is bounded (issue 27): threads, batch sizes, bit widths, learning rates, times
and sizes from the command line, TOML or sweep files are checked for range and finiteness,
each in one line naming the value, before anything runs; so are the values TOML can hold that
no setting can (dates, tables, lists of lists, deep nesting)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from noisynets.config import TrainConfig, resolve

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("argv, words", [
    (["train", "--threads", "9" * 30], ["--threads", "from 1 to 1_024"]),
    (["train", "--adc", "bits=inf"], ["adc", "bits=inf", "integer from 1 to 32"]),
    (["train", "--adc", "bits=nan"], ["adc", "bits=nan"]),
    (["train", "--adc", "inf"], ["adc", "bits=inf"]),
    (["train", "--adc", "bits=8,range=1e308"], ["range=1e+308", "1e+06"]),
    (["train", "--weight-noise", "pcm:gmax=1e300"], ["gmax=1e+300", "(0, 1e+06]"]),
    (["train", "--weight-noise", "pcm:prog=1e300"], ["prog=1e+300"]),
    (["train", "--weight-noise", "pcm:time=1e300"], ["time=1e+300"]),
    (["train", "--noise-samples", "1000000000", "--hidden", "8"],
     ["noise_samples 1000000000", "rows in one forward", "lower one"]),
    (["bench", "--batch-size", "9" * 30], ["--batch-size", "integer from 1"]),
    (["bench", "--batch-size", "99999999"], ["--batch-size 99999999", "GiB", "smaller"]),
    (["bench", "--hidden", "0"], ["--hidden", "'0'"]),
    (["bench", "--steps", "100000"], ["--steps", "from 1 to 10_000"]),
    (["train", "--resume", "anywhere", "--threads", "5000"], ["--threads", "5000"]),
])
def test_a_number_out_of_range_is_one_line(cli_fails, argv, words):
    cli_fails(argv, *words)


@pytest.mark.parametrize("text, words", [
    ("lr = 1" + "0" * 400 + "\n", ["lr", "about 400 digits", "finite number"]),
    ("lr = 1" + "0" * 5000 + "\n", ["cannot read", "digits"]),
    ("epochs = " + "[" * 5000 + "]" * 5000 + "\n", ["nests its values too deeply"]),
    ("seed = 1979-05-27\n", ["seed", "a date"]),
    ("lr = 07:32:00\n", ["lr", "a date or time"]),
    ("hidden = [[1, 2]]\n", ["hidden", "list of lists"]),
    ("noise = {std = 1}\n", ["noise", "a table"]),
    ("threads = 5000\n", ["threads 5000", "1_024"]),
    ("batch_size = 1" + "0" * 30 + "\n", ["batch_size", "integer from 1"]),
    ("adc = 'bits=inf'\n", ["bits=inf"]),
])
def test_a_toml_value_no_setting_can_take_is_one_line(cli_fails, tmp_path, text, words):
    path = tmp_path / "c.toml"
    path.write_text(text)
    cli_fails(["train", "--config", str(path)], str(path), *words)


@pytest.mark.parametrize("text, words", [
    ("[grid]\nseed = [1979-05-27]\n", ["[grid]", "seed", "a date"]),
    ("[grid]\nhidden = [[[8]]]\n", ["[grid]", "hidden", "list of lists"]),
    ("[grid]\nseed = [0]\n[train]\nlr = {a = 1}\n", ["[train]", "lr", "a table"]),
    ("[grid]\nseed = [0]\n[train]\nthreads = 2000\n", ["threads 2000"]),
    ("[grid]\nlr = [1" + "0" * 400 + "]\n", ["lr", "about 400 digits"]),
    ("[grid]\nseed = [" + "[" * 3000 + "]" * 3000 + "]\n", ["too deeply"]),
])
def test_a_sweep_value_no_setting_can_take_is_one_line(cli_fails, tmp_path, text, words):
    path = tmp_path / "s.toml"
    path.write_text(text)
    cli_fails(["sweep", str(path), "--workers", "1", "--out", str(tmp_path / "out")],
              str(path), *words)
    assert not (tmp_path / "out").exists()


def test_the_library_refuses_the_same_values_with_the_same_words():
    """One set of validators: ``resolve`` says what the command line says."""
    for fields, words in ((dict(threads=5000), "threads 5000"),
                          (dict(lr=10**400), "about 400 digits"),
                          (dict(adc="bits=inf"), "bits=inf"),
                          (dict(noise_samples=10**9), "rows in one forward")):
        with pytest.raises(ValueError, match=words):
            resolve(TrainConfig(**fields))


def test_the_noise_and_device_classes_refuse_numbers_too_large_for_a_float():
    from noisynets.core.analog import ADC
    from noisynets.core.noise import Gaussian

    with pytest.raises(ValueError, match="must be finite"):
        Gaussian(std=10**400)
    for bits in (float("inf"), float("nan"), 10**400, 33, 2.5):
        with pytest.raises(ValueError, match="integer from 1 to 32"):
            ADC(bits=bits)


def test_a_million_threads_is_refused_before_torch_sees_them(tmp_path):
    """It ended in SIGSEGV (torch.set_num_threads beyond what the system can make)."""
    proc = subprocess.run([sys.executable, "-m", "noisynets.cli", "train", "--threads=1000000",
                           "--epochs", "1", "--hidden", "4", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr[-500:]
    assert proc.stderr.count("\n") == 1 and "--threads" in proc.stderr
    assert not (tmp_path / "run").exists()
