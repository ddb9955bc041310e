"""Every rule learns on real data: the embedded 8x8 digits, in seconds (the comparison rules
of issue 30: tests/test_comparison_rules.py)."""

from __future__ import annotations

import pytest

from noisynets.config import TrainConfig
from noisynets.rules import PAPER_RULES
from noisynets.run import train

QUICK = ("bp", "dnp", "inp", "danp")  # one per rule family in the default run; all with -m slow


@pytest.mark.parametrize("algo", [a if a in QUICK else pytest.param(a, marks=pytest.mark.slow)
                                  for a in PAPER_RULES])
def test_every_rule_raises_test_accuracy_on_the_digits(algo, tmp_path):
    config = TrainConfig(algo=algo, hidden=[128, 128], epochs=3, batch_size=32, out=str(tmp_path))
    result = train(config, progress=False, log=None)
    before, after = result.initial.test_accuracy, result.history[-1].test_accuracy
    assert after > 0.5 and after > before + 0.3, (before, after)  # chance is 0.1


def test_the_same_seed_gives_identical_results_on_the_cpu(tmp_path):
    def run(seed: int, out: str):
        config = TrainConfig(algo="danp", hidden=[64], epochs=2, batch_size=64, seed=seed,
                             device="cpu", out=str(tmp_path / out))
        return train(config, progress=False, log=None).summary()

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    for key in ("test_accuracy", "train_loss", "test_loss"):
        assert a[key] == b[key]
    assert [h["alignment"] for h in a["history"]] == [h["alignment"] for h in b["history"]]
    assert a["train_loss"] != c["train_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bp", "danp"])
def test_sgd_presets_train_too(algo, tmp_path):
    config = TrainConfig(algo=algo, optimizer="sgd", hidden=[128, 128], epochs=4, batch_size=32,
                         trace_every=0, out=str(tmp_path))
    result = train(config, progress=False, log=None)
    before, after = result.initial.test_accuracy, result.history[-1].test_accuracy
    assert after > 0.5 and after > before + 0.3, (before, after)


@pytest.mark.slow
def test_the_mse_loss_trains_too(tmp_path):
    config = TrainConfig(algo="danp", loss="mse", hidden=[128, 128], epochs=4, batch_size=32,
                         trace_every=0, out=str(tmp_path))
    result = train(config, progress=False, log=None)
    before, after = result.initial.test_accuracy, result.history[-1].test_accuracy
    assert after > 0.5 and after > before + 0.3, (before, after)
