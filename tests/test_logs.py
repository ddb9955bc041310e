"""The training loop's hooks and options: metrics.csv, steps.csv and TensorBoard hold exactly
the run's numbers, learning-rate schedules follow torch.optim.lr_scheduler's formulas and
resume exactly, clip_grad has clip_grad_norm_'s semantics, early stopping stops where its
definition says, and the options' bad values are refused in one line."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import h5py
import numpy as np
import pytest
import torch

from noisynets import Network
from noisynets.checkpoints import sealed
from noisynets.config import TrainConfig, resolve
from noisynets.hooks import EarlyStopping
from noisynets.rules import make_rule
from noisynets.run import make_optimizer, resume, train
from noisynets.training import EpochStats, clip, fit

SMALL = dict(hidden=[32], epochs=4, batch_size=64, trace_every=20, figures=False, threads=1,
             seed=2)


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def results(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_metrics_csv_holds_every_evaluation_of_results_json(tmp_path):
    """metrics.csv: one row per evaluation (epoch 0 too), each number the one in results.json
    (the same float, printed by csv); the columns are the trace file's metrics."""
    out = tmp_path / "run"
    train(TrainConfig(**SMALL, out=str(out), val_fraction=0.2), progress=False, log=None)
    rows = read_csv(out / "metrics.csv")
    history = results(out)["history"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    for row, h in zip(rows, history):
        for name in ("train_loss", "val_loss", "val_accuracy", "lr", "skipped_steps"):
            assert float(row[name]) == h[name], name
        assert [float(row[f"alignment_layer_{k + 1}"]) for k in range(2)] == h["alignment"]
        assert [float(row[f"alignment_std_layer_{k + 1}"]) for k in range(2)] == \
            h["alignment_std"]
        assert row["test_loss"] == ("" if h["test_loss"] is None else str(h["test_loss"]))


HEAVISIDE = dict(hidden=[16, 16], unit="heaviside", epochs=1, batch_size=128, trace_every=5,
                 figures=False, threads=1, seed=0)


def test_the_changed_fraction_reaches_the_stats_metrics_csv_results_and_trace(tmp_path):
    """A Heaviside network: every evaluation's changed_fraction is None for the first layer
    (its input is the data) and in (0, 1) for the layers behind Heaviside units, the same
    number in the EpochStats, results.json's history, metrics.csv (empty: not counted) and the
    trace file (NaN)."""
    from noisynets.traces import TraceReader

    out = tmp_path / "run"
    r = train(TrainConfig(**HEAVISIDE, out=str(out)), progress=False, log=None)
    stats = [r.initial, *r.history]
    for s in stats:
        assert s.changed_fraction[0] is None
        assert all(0 < c < 1 for c in s.changed_fraction[1:]), s.changed_fraction
    assert [h["changed_fraction"] for h in results(out)["history"]] == \
        [s.changed_fraction for s in stats]
    rows = read_csv(out / "metrics.csv")
    metrics = TraceReader(out / "trace.h5").metrics()
    for e, (row, s) in enumerate(zip(rows, stats, strict=True)):
        assert row["changed_fraction_layer_1"] == ""
        assert np.isnan(metrics["changed_fraction_layer_1"][e])
        for k in (2, 3):
            assert float(row[f"changed_fraction_layer_{k}"]) == s.changed_fraction[k - 1]
            assert metrics[f"changed_fraction_layer_{k}"][e] == s.changed_fraction[k - 1]


def test_a_checkpoint_and_trace_from_before_the_changed_fraction_resume(tmp_path):
    """A run whose checkpoint, results.json and trace file predate changed_fraction (the
    field and its datasets removed) resumes: its old evaluations keep None, the new ones
    carry the counts in results.json and metrics.csv, and the trace file keeps its metrics."""
    out = tmp_path / "run"

    def log(line: str) -> None:
        if line.startswith("    2 "):  # epoch 2's row: after its checkpoint
            raise Stop

    with pytest.raises(Stop):
        train(TrainConfig(**{**HEAVISIDE, "epochs": 3}, out=str(out)), progress=False, log=log)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    for h in [checkpoint["initial"], *checkpoint["history"]]:
        del h["changed_fraction"]
    torch.save(sealed(checkpoint), out / "checkpoint.pt")  # as an older run saved it
    with h5py.File(out / "trace.h5", "r+") as f:
        for k in (1, 2, 3):
            del f[f"metrics/changed_fraction_layer_{k}"]
    resumed = resume(out, progress=False, log=None)
    assert [h.changed_fraction for h in [resumed.initial, *resumed.history[:2]]] == [None] * 3
    history = results(out)["history"]
    assert [h["changed_fraction"] for h in history[:3]] == [None] * 3
    assert history[3]["changed_fraction"][0] is None
    assert all(0 < c < 1 for c in history[3]["changed_fraction"][1:])
    rows = read_csv(out / "metrics.csv")
    assert [r["changed_fraction_layer_2"] == "" for r in rows] == [True, True, True, False]
    with h5py.File(out / "trace.h5", "r") as f:
        assert not any(name.startswith("changed_fraction") for name in f["metrics"])
        assert f["count/evaluations"][0] == 4


def test_steps_csv_has_every_step_and_its_epoch_mean_is_the_train_loss(tmp_path):
    """steps.csv: one row per step, numbered 1..S; the sample-weighted mean of an epoch's step
    losses is the epoch's train_loss (batches of 64 and a last, smaller one)."""
    out = tmp_path / "run"
    r = train(TrainConfig(**SMALL, out=str(out)), progress=False, log=None)
    rows = read_csv(out / "steps.csv")
    n = 1438  # digits' training split
    per_epoch = math.ceil(n / 64)
    assert [int(row["step"]) for row in rows] == list(range(1, 4 * per_epoch + 1))
    sizes = [64] * (per_epoch - 1) + [n - 64 * (per_epoch - 1)]
    for e, stats in enumerate(r.history, start=1):
        losses = [float(row["loss"]) for row in rows if int(row["epoch"]) == e]
        mean = sum(s * loss for s, loss in zip(sizes, losses)) / n
        assert mean == pytest.approx(stats.train_loss, rel=1e-12, abs=1e-12)


def test_tensorboard_event_files_read_back_with_tensorboards_own_reader(tmp_path):
    """--tensorboard: tensorboard's EventAccumulator finds train/step_loss at every step with
    the values of steps.csv, and each epoch's metrics at the epoch's step."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(TrainConfig(**SMALL, out=str(out), tensorboard=True), progress=False, log=None)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    steps = read_csv(out / "steps.csv")
    loss = events.Scalars("train/step_loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in steps]
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in steps],
                                                    rel=1e-6)  # TensorBoard keeps float32
    history = results(out)["history"]
    accuracy = events.Scalars("epoch/test_accuracy")
    assert [e.step for e in accuracy] == [h["step"] for h in history]
    assert [e.value for e in accuracy] == pytest.approx([h["test_accuracy"] for h in history],
                                                        rel=1e-6)
    assert "epoch/alignment_layer_2" in events.Tags()["scalars"]


@pytest.mark.parametrize("schedule, expected", [
    ("cosine", lambda e: 1e-3 * (1 + math.cos(math.pi * (e - 1) / 4)) / 2),
    ("step", lambda e: 1e-3 * 0.5 ** ((e - 1) // 2)),
    ("exponential", lambda e: 1e-3 * 0.5 ** (e - 1)),
    ("constant", lambda e: 1e-3),
])
def test_the_schedule_in_results_json_is_the_documented_formula(tmp_path, schedule, expected):
    """results.json's lr_schedule and every epoch's lr: epoch e of E trains at the rate of
    make_scheduler's formula (lr_step 2, lr_gamma 0.5 where they apply)."""
    out = tmp_path / "run"
    gamma = 1.0 if schedule in ("cosine", "constant") else 0.5
    train(TrainConfig(**{**SMALL, "trace_every": 0}, out=str(out), lr=1e-3,
                      lr_schedule=schedule, lr_step=2, lr_gamma=gamma),
          progress=False, log=None)
    summary = results(out)
    assert summary["lr_schedule"]["schedule"] == schedule
    by_epoch = summary["lr_schedule"]["lr_by_epoch"]
    assert by_epoch[0] == 1e-3
    assert by_epoch[1:] == pytest.approx([expected(e) for e in range(1, 5)], rel=1e-12)
    assert [h["lr"] for h in summary["history"]] == by_epoch


class Stop(Exception):
    pass


def test_a_run_stopped_after_its_checkpoint_and_resumed_ends_as_the_run_uninterrupted(
        tmp_path):
    """A run with a cosine schedule, weight decay and clipping, interrupted right after its
    epoch-2 checkpoint and resumed, ends with the same results, metrics.csv and steps.csv as
    the uninterrupted run: the scheduler's state is restored (cosine's rate depends on its
    epoch count, not only on the optimizer's last rate), the logs are cut back."""
    config = dict(**SMALL, lr_schedule="cosine", weight_decay=1e-3, clip_grad=0.5,
                  val_fraction=0.2)
    whole = tmp_path / "whole"
    train(TrainConfig(**config, out=str(whole)), progress=False, log=None)
    cut = tmp_path / "cut"

    def log(line: str) -> None:
        if line.startswith("    3 "):  # epoch 3's row: after its results, before its checkpoint
            raise Stop

    with pytest.raises(Stop):
        train(TrainConfig(**config, out=str(cut), checkpoint_every=2), progress=False, log=log)
    assert results(cut)["epochs"] == 3
    resume(cut, progress=False, log=None)

    def same(a: dict, b: dict) -> None:
        skip = {"seconds", "out"}
        for key in a.keys() - skip:
            if key == "config":
                continue
            if key == "history":
                for ha, hb in zip(a[key], b[key], strict=True):
                    assert {k: v for k, v in ha.items() if k != "seconds"} == \
                        {k: v for k, v in hb.items() if k != "seconds"}
            else:
                assert a[key] == b[key], key

    same(results(whole), results(cut))
    for name in ("metrics.csv", "steps.csv"):
        a, b = read_csv(whole / name), read_csv(cut / name)
        for ra, rb in zip(a, b, strict=True):
            ra.pop("seconds", None), rb.pop("seconds", None)
            assert ra == rb, name


def test_clip_scales_all_estimates_together_as_clip_grad_norm(small_net, batch):
    """clip(network, c): every estimate times min(1, c / ||g||), ||g|| the norm of all of them
    together (not per layer): the direction is kept, the total norm becomes c."""
    rule = make_rule("np")
    rule.step(small_net, *batch)
    params = small_net.trained_parameters()
    before = [p.grad.clone() for p in params]
    total = torch.cat([g.flatten() for g in before]).norm()
    c = float(total) / 3
    clip(small_net, c)
    for p, g in zip(params, before):
        torch.testing.assert_close(p.grad, g * (c / total), rtol=1e-6, atol=0)
    clip(small_net, 10 * c)  # below the limit: unchanged
    for p, g in zip(params, before):
        torch.testing.assert_close(p.grad, g * (c / total), rtol=1e-6, atol=0)


def test_early_stopping_waits_patience_epochs_after_the_lowest_validation_loss():
    """Keras's rule with min_delta 0: stop at the patience-th epoch in a row that brings no
    validation loss below the lowest so far; an equal loss is no improvement."""
    def stats(epoch, loss):
        return EpochStats(epoch, 0, 1.0, None, None, [0.0], [0.0], [0.0], 0.0, 0.0,
                          val_loss=loss)

    stop = EarlyStopping(2)
    decisions = [stop(stats(e, v)) for e, v in enumerate([1.0, 0.8, 0.9, 0.8, 0.7, 0.75, 0.7],
                                                         start=1)]
    assert decisions == [False, False, False, True, False, False, True]
    resumed = EarlyStopping(2, [stats(1, 1.0), stats(2, 0.8), stats(3, 0.9)])
    assert resumed(stats(4, 0.8)) is True and resumed.best_epoch == 2


def test_fit_stops_when_stop_says_so_and_measures_the_test_split_then():
    """fit(stop=...): training ends after the epoch stop() was true for; that epoch is marked
    stopped and, with a validation split, carries the test split's numbers."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    net = Network([6, 8, 3], seed=0)
    rule = make_rule("bp")
    history = fit(net, rule, torch.optim.SGD(net.trained_parameters(), lr=0.1), (x, y), 5,
                  16, test=(x[:16], y[:16]), progress=False, validation=(x[:16], y[:16]),
                  stop=lambda s: s.epoch == 2)
    assert [h.epoch for h in history] == [1, 2]
    assert history[-1].stopped and history[-1].test_loss is not None
    assert history[0].test_loss is None and not history[0].stopped


def test_an_early_stopped_run_says_so_and_is_not_resumed(tmp_path):
    """With patience 1 and a learning rate that makes the validation loss rise, the run stops
    after epoch 2, records stopped_early, measures the test split, and --resume refuses."""
    out = tmp_path / "run"
    r = train(TrainConfig(**{**SMALL, "trace_every": 0, "epochs": 10}, out=str(out),
                          val_fraction=0.2, early_stopping=1, lr=0.5, optimizer="sgd",
                          algo="bp"),
              progress=False, log=None)
    summary = results(out)
    assert summary["stopped_early"] is True and len(r.history) < 10
    assert r.history[-1].stopped and r.history[-1].test_accuracy is not None
    assert r.history[-1].val_loss >= min(h.val_loss for h in r.history[:-1])
    with pytest.raises(ValueError, match="stopped early"):
        resume(out, progress=False, log=None)


def test_optimizers_get_weight_decay_and_momentum():
    """make_optimizer: adam and sgd couple the decay into the gradient, adamw decouples it;
    momentum reaches sgd."""
    net = Network([4, 3], seed=0)
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                      ("sgd", torch.optim.SGD)):
        c = resolve(TrainConfig(algo="bp", optimizer=name, weight_decay=1e-4,
                                momentum=0.9 if name == "sgd" else 0.0))
        opt = make_optimizer(c, net.trained_parameters())
        assert type(opt) is cls and opt.param_groups[0]["weight_decay"] == 1e-4
        if name == "sgd":
            assert opt.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("change, words", [
    (dict(momentum=0.9), ["momentum", "sgd"]),
    (dict(optimizer="sgd", momentum=1.0), ["momentum", "[0, 1)"]),
    (dict(early_stopping=3), ["early_stopping", "--val-fraction"]),
    (dict(lr_schedule="cosinus"), ["lr_schedule", "did you mean cosine"]),
    (dict(lr_gamma=2.0), ["lr_gamma"]),
    (dict(clip_grad=0.0), ["clip_grad"]),
    (dict(weight_decay=-1.0), ["weight_decay"]),
    (dict(dataset="fashion_mnist"), ["did you mean fashion-mnist"]),
])
def test_bad_optimisation_settings_are_refused_in_one_line(change, words):
    with pytest.raises(ValueError) as e:
        resolve(dataclasses.replace(TrainConfig(), **change))
    assert "\n" not in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_the_cli_takes_the_options_and_any_case_of_a_rule(cli_fails, tmp_path):
    from noisynets.cli import config_from_args, make_parser

    args = make_parser().parse_args(
        ["train", "--algo", "DANP", "--lr-schedule", "cosine", "--weight-decay", "1e-4",
         "--clip-grad", "1.0", "--early-stopping", "5", "--val-fraction", "0.1",
         "--tensorboard"])
    c = resolve(config_from_args(args))
    assert (c.algo, c.lr_schedule, c.weight_decay, c.clip_grad, c.early_stopping,
            c.tensorboard) == ("danp", "cosine", 1e-4, 1.0, 5, True)
    toml = tmp_path / "c.toml"
    toml.write_text("learning_rate = 0.01\n")
    cli_fails(["train", "--config", str(toml)], "learning_rate", "did you mean lr?")
    cli_fails(["train", "--dataset", "fashion_mnist"], "did you mean fashion-mnist?")
    cli_fails(["train", "--early-stopping", "2"], "--val-fraction")


def test_probe_diagnostics_are_the_mean_and_std_over_the_batches(small_net):
    """probe_diagnostics of P batches: each value the mean of diagnostics() of every batch, and
    alignment_std the sample standard deviation (P - 1) of the cosines, from the same noise."""
    from noisynets.training import diagnostics, probe_diagnostics

    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(16, 10, generator=g, dtype=torch.float64),
                torch.randint(0, 5, (16,), generator=g)) for _ in range(3)]
    rule = make_rule("anp")
    each = [diagnostics(small_net, rule, x, y) for x, y in batches]
    got = probe_diagnostics(small_net, rule, batches)
    cos = torch.tensor([d["alignment"] for d in each], dtype=torch.float64)
    assert got["alignment"] == pytest.approx(cos.mean(0).tolist(), rel=1e-12)
    assert got["alignment_std"] == pytest.approx(
        ((cos - cos.mean(0)).pow(2).sum(0) / 2).sqrt().tolist(), rel=1e-12)
    for name in ("decorrelation", "estimate_norm"):
        assert got[name] == pytest.approx(
            [sum(d[name][k] for d in each) / 3 for k in range(4)], rel=1e-12)
    assert probe_diagnostics(small_net, rule, batches[:1])["alignment_std"] == [0.0] * 4
    assert got["changed_fraction"] == [None] * 4  # no layer behind discontinuous units
