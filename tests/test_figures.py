"""The figures say what was measured: the reference pass as it was (clean or noisy), the train
loss as the mean over an epoch's steps (epoch 0: the training split before training), accuracy
as a fraction with validation and the final test point apart, alignment on linear axes with
hidden layers and readout apart and a band over the probe batches, the noisy-minus-reference
drive over training, rasters on integer time steps, no empty panels, and no axis blown up from
a tiny change.

The figures are built from hand-made ``RunResult``s and trace files (no training) and inspected
as matplotlib figures before they are saved.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import ScalarFormatter

from noisynets import Record
from noisynets.config import TrainConfig
from noisynets.plots import learning_curve, learning_curve_figure, trace_figure, trace_file_figure
from noisynets.run import RunResult, metric_names
from noisynets.traces import TraceWriter
from noisynets.training import EpochStats

# Per layer alignment of a 4-layer net as a run shows it: hidden layers at 0.01-0.07 and the
# output layer near 0.5; every layer changes by a factor of 1.5 or more over the epochs.
ALIGNMENT = [[0.020, 0.032, 0.055, 0.45], [0.015, 0.047, 0.070, 0.52],
             [0.030, 0.038, 0.045, 0.28]]


def stats(epoch: int, train_loss: float = 2.0, test_loss: float | None = 1.5,
          test_accuracy: float | None = 0.5, layers: int = 4, **kw) -> EpochStats:
    values = {"alignment": ALIGNMENT[epoch % 3][-layers:], "decorrelation": [0.2] * layers,
              "estimate_norm": [1.0] * layers}
    values.update({k: kw.pop(k) for k in list(kw) if k in values})
    return EpochStats(epoch=epoch, step=10 * epoch, train_loss=train_loss, test_loss=test_loss,
                      test_accuracy=test_accuracy, zero_change_fraction=0.0, seconds=0.1 * epoch,
                      **values, **kw)


def result(history: list[EpochStats], **config) -> RunResult:
    config = {"algo": "danp", "dataset": "digits", "hidden": [8, 8, 8], "loss": "ce",
              "noise_std": 1e-3, **config}
    return RunResult(config=TrainConfig(**config), initial=history[0], history=history[1:])


def classification(**config) -> RunResult:
    return result([stats(0, 2.4, 2.4, 0.10), stats(1, 1.8, 1.3, 0.79), stats(2, 0.9, 0.7, 0.90)],
                  **config)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def panel(fig: Figure, title: str) -> Axes:
    """The one panel whose title starts with ``title``."""
    found = [ax for ax in fig.axes if ax.get_title().startswith(title)]
    assert len(found) == 1, [ax.get_title() for ax in fig.axes]
    return found[0]


def legend(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def panel_texts(fig: Figure) -> list[str]:
    """Every text of the panels (titles, labels, legends), the figure's title left out."""
    return [t.get_text() for ax in fig.axes for t in ax.findobj(Text) if t.get_text()]


def line(ax: Axes, label_part: str):
    found = [ln for ln in ax.get_lines() if label_part in ln.get_label()]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return found[0]


def trace_file(path: Path, config: dict, history: list[EpochStats], records: int = 0,
               layers: int = 2) -> Path:
    """A trace file of a [20, 24, 10] network (layer 1 spiking when ``unit`` is lif) with the
    metrics of ``history`` and ``records`` probe records of random activity (none by default:
    a figure of curves alone is quicker to build)."""
    spiking = config.get("unit") == "lif"
    time_steps = 3 if spiking else 1
    config = {"algo": "danp", "dataset": "digits", "hidden": [24], "loss": "ce",
              "noise": "gaussian", "noise_std": 1e-3, "seed": 0, "time_steps": time_steps,
              **config}
    writer = TraceWriter(path, [20, 24, 10], [spiking, False], time_steps, range(4),
                         attrs={"config": config}, records=max(records, 1),
                         evaluations=max(len(history), 1), metrics=metric_names(layers))
    for h in history:
        writer.append_metrics(dataclasses.asdict(h))
    g = torch.Generator().manual_seed(0)
    for r in range(records):
        writer.append_record(5 * r, Record(
            inputs=[torch.randn(4, 20, generator=g), torch.randn(4, 24, generator=g)],
            activity=[torch.randn(2, 4, 24, generator=g), torch.randn(2, 4, 10, generator=g)],
            loss=torch.rand(2, 4, generator=g), time_steps=time_steps,
            outputs=[(torch.rand(time_steps, 2, 4, 24, generator=g) > 0.7).float(),
                     torch.randn(time_steps, 2, 4, 10, generator=g)],
            membrane=[torch.randn(time_steps, 2, 4, 24, generator=g), None]))
    return path


def two_layer_history(**kw) -> list[EpochStats]:
    return [stats(e, 2.4 - e, 2.4 - e, 0.1 + 0.3 * e, layers=2, **kw) for e in range(3)]


# --- 1. the reference pass as it was ---------------------------------------------------------

def test_with_every_pass_noisy_no_panel_speaks_of_a_clean_pass(tmp_path):
    curve = learning_curve_figure(classification(algo="anp", both_noisy=True))
    trace = trace_file_figure(trace_file(tmp_path / "t.h5", {"algo": "anp", "both_noisy": True,
                                                              "unit": "lif"},
                                         two_layer_history(), records=2))
    for fig in (curve, trace):
        texts = panel_texts(fig)
        assert not [t for t in texts if "clean" in t.lower()], texts
        assert any("reference pass (noisy)" in t for t in texts), texts
    assert "no clean pass" in trace.get_suptitle()
    assert any("reference pass (noisy)" in t for t in legend(panel(curve, "Loss")))
    assert "noisy - ref drive" in panel(trace, "Layer 1:").get_title()
    assert "reference pass (noisy)" in panel(trace, "Layer 1 spikes").get_title()


def test_with_a_clean_reference_pass_the_panels_say_clean_pass(tmp_path):
    curve = learning_curve_figure(classification())
    trace = trace_file_figure(trace_file(tmp_path / "t.h5", {"unit": "lif"},
                                         two_layer_history(), records=2))
    assert any("clean pass" in t for t in legend(panel(curve, "Loss")))
    assert "noisy - clean drive" in panel(trace, "Layer 1:").get_title()
    assert "clean pass" in panel(trace, "Layer 1 spikes").get_title()
    assert "no clean pass" not in trace.get_suptitle()


# --- 2. what the train loss is ----------------------------------------------------------------

@pytest.mark.parametrize("source", ["run", "trace"])
def test_the_train_loss_says_it_is_the_mean_over_the_epochs_steps(source, tmp_path):
    if source == "run":
        fig = learning_curve_figure(classification())
    else:
        fig = trace_file_figure(trace_file(tmp_path / "t.h5", {}, two_layer_history()))
    ax = panel(fig, "Loss")
    mean = line(ax, "mean over the epoch's steps")
    before = line(ax, "before training")
    assert list(mean.get_xdata()) == [1, 2]  # epoch 0 is not a mean over steps
    assert list(before.get_xdata()) == [0] and "training split" in before.get_label()
    assert before.get_linestyle() == "None"


# --- 3. accuracy as a fraction; validation and the final test point ---------------------------

def test_accuracy_is_a_fraction_as_in_the_json():
    ax = panel(learning_curve_figure(classification()), "Test accuracy")
    assert "fraction" in ax.get_ylabel() and "%" not in ax.get_ylabel()
    np.testing.assert_allclose(line(ax, "test").get_ydata(), [0.10, 0.79, 0.90])
    assert ax.get_ylim()[1] < 1.5


@pytest.mark.parametrize("source", ["run", "trace"])
def test_validation_curves_and_the_final_test_point(source, tmp_path):
    history = [stats(e, 2.4 - 0.5 * e, None, None, val_loss=2.3 - 0.4 * e,
                     val_accuracy=0.2 + 0.3 * e, layers=2) for e in range(3)]
    history[-1].test_loss, history[-1].test_accuracy = 1.5, 0.75
    if source == "run":
        fig = learning_curve_figure(result(history, hidden=[8]))
    else:
        fig = trace_file_figure(trace_file(tmp_path / "t.h5", {}, history))
    for title, values in (("Loss", [2.3, 1.9, 1.5]), ("Accuracy", [0.2, 0.5, 0.8])):
        ax = panel(fig, title)
        assert "validation" in legend(ax) and "test (final)" in legend(ax)
        np.testing.assert_allclose(line(ax, "validation").get_ydata(), values)
        test = line(ax, "test (final)")
        y = np.asarray(test.get_ydata(), dtype=float)
        assert np.isfinite(y).sum() == 1 and test.get_xdata()[np.isfinite(y)][0] == 2
        assert test.get_linestyle() == "None"  # a marker, not a curve
    assert "fraction" in panel(fig, "Accuracy").get_ylabel()


# --- 4. alignment: linear, hidden layers and readout apart, a band over the probe batches -----

def height_share(ax: Axes, ys) -> float:
    """The share of the panel's height that ``ys`` spans as drawn."""
    points = np.column_stack([np.zeros(len(ys)), np.asarray(ys, dtype=float)])
    drawn = ax.transAxes.inverted().transform(ax.transData.transform(points))
    return float(np.ptp(drawn[:, 1]))


@pytest.mark.parametrize("source", ["run", "trace"])
def test_every_layers_alignment_visibly_varies_and_the_output_layer_is_named(source, tmp_path):
    if source == "run":
        fig = learning_curve_figure(classification())
    else:
        history = [stats(e, layers=4) for e in range(3)]
        fig = trace_file_figure(trace_file(tmp_path / "t.h5", {}, history, layers=4))
    hidden, readout = panel(fig, "Alignment with BP: hidden"), panel(fig, "Alignment with BP: r")
    assert legend(hidden) == ["layer 1", "layer 2", "layer 3"]
    assert legend(readout) == ["layer 4 (output)"]
    for k in range(4):
        ax = readout if k == 3 else hidden
        assert ax.get_yscale() == "linear"
        ys = line(ax, f"layer {k + 1}").get_ydata()
        np.testing.assert_allclose(ys, [a[k] for a in ALIGNMENT])
        low, high = ax.get_ylim()
        assert low <= 0 <= high and low <= min(ys) and max(ys) <= high  # 0 is on the axis
        assert height_share(ax, ys) > 0.05, (k, height_share(ax, ys))


@pytest.mark.parametrize("source", ["run", "trace"])
def test_the_alignment_band_is_one_std_over_the_probe_batches(source, tmp_path):
    """alignment_std draws a band mean - std .. mean + std per layer, named in the legend."""
    spread = [[0.01, 0.1], [0.02, 0.05], [0.005, 0.2]]
    history = [stats(e, layers=2, alignment_std=spread[e]) for e in range(3)]
    if source == "run":
        fig = learning_curve_figure(result(history, hidden=[8], probe_batches=4))
    else:
        fig = trace_file_figure(trace_file(tmp_path / "t.h5", {"probe_batches": 4}, history))
    for k, title in ((0, "Alignment with BP: hidden"), (1, "Alignment with BP: readout")):
        ax = panel(fig, title)
        assert "4 probe batches" in ax.get_legend().get_title().get_text()
        (band,) = ax.collections
        ys = band.get_paths()[0].vertices[:, 1]
        mean = np.array([ALIGNMENT[e][-2:][k] for e in range(3)])
        std = np.array([spread[e][k] for e in range(3)])
        assert min(ys) == pytest.approx(min(mean - std)) and \
            max(ys) == pytest.approx(max(mean + std))


def test_the_console_table_shows_hidden_and_readout_alignment_apart():
    from noisynets.run import _row

    row = _row(stats(1, layers=4)).split()
    hidden, readout = float(row[-2]), float(row[-1])
    assert hidden == pytest.approx(np.mean(ALIGNMENT[1][:3]), abs=5e-4)
    assert readout == pytest.approx(ALIGNMENT[1][3], abs=5e-4)


def test_negative_alignment_stays_on_the_axis():
    history = [stats(e, alignment=[a, 0.3], layers=2) for e, a in enumerate([-0.02, 0.01, 0.05])]
    ax = panel(learning_curve_figure(result(history, hidden=[8])), "Alignment with BP: hidden")
    assert ax.get_ylim()[0] <= -0.02 and ax.get_ylim()[1] >= 0.05
    assert height_share(ax, [-0.02, 0.05]) > 0.5


# --- 5. no empty panels -----------------------------------------------------------------------

def assert_no_empty_panel(fig: Figure) -> None:
    assert fig.axes
    empty = [ax.get_title() for ax in fig.axes if not ax.has_data()]
    assert not empty, empty


def test_a_regression_run_has_no_accuracy_panel(tmp_path):
    history = [stats(e, 1.8 - 0.5 * e, 1.8 - 0.6 * e, None, layers=2) for e in range(3)]
    curve = learning_curve_figure(result(history, dataset="teacher", hidden=[8], loss="mse"))
    trace = trace_file_figure(trace_file(tmp_path / "t.h5", {"dataset": "teacher"}, history,
                                         records=1))
    assert [ax.get_title() for ax in curve.axes] == ["Loss", "Alignment with BP: hidden layers",
                                                     "Alignment with BP: readout"]
    for fig in (curve, trace):
        assert_no_empty_panel(fig)
        assert not [t for t in panel_texts(fig) if "accuracy" in t.lower()]


def test_trace_panels_without_data_are_left_out(tmp_path):
    # decorrelation NaN throughout, no spiking layer, evaluations but no records yet
    history = [stats(e, layers=2, decorrelation=[math.nan, math.nan]) for e in range(3)]
    fig = trace_file_figure(trace_file(tmp_path / "t.h5", {}, history))
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Test accuracy",
                                                   "Alignment with BP: hidden layers",
                                                   "Alignment with BP: readout"]
    # records, one spiking layer: its raster and every activity panel, all with data
    fig = trace_file_figure(trace_file(tmp_path / "s.h5", {"unit": "lif"}, two_layer_history(),
                                       records=1))
    assert_no_empty_panel(fig)
    assert len([ax for ax in fig.axes if "spikes" in ax.get_title()]) == 1
    activity = ("Layer 1: noisy - clean drive over", "Layer 2 (output): noisy - clean drive")
    assert len([ax for ax in fig.axes if ax.get_title().startswith(activity)]) == 2
    # a rate network: no raster
    fig = trace_file_figure(trace_file(tmp_path / "r.h5", {}, two_layer_history(), records=1))
    assert_no_empty_panel(fig)
    assert not [ax for ax in fig.axes if "spikes" in ax.get_title()]


def test_a_file_with_nothing_yet_says_so_without_empty_panels(tmp_path):
    fig = trace_file_figure(trace_file(tmp_path / "t.h5", {}, []))
    assert not fig.axes
    assert any("nothing to plot yet" in t.get_text() for t in fig.texts)


def test_input_correlation_of_a_rule_without_decorrelation_is_named_so(tmp_path):
    fig = trace_file_figure(trace_file(tmp_path / "t.h5", {"algo": "anp"}, two_layer_history()))
    assert panel(fig, "Input correlation").get_title().endswith("(rule does not decorrelate)")
    fig = trace_file_figure(trace_file(tmp_path / "d.h5", {"algo": "danp"}, two_layer_history()))
    panel(fig, "Input decorrelation")


# --- 6. one epoch, a tiny change --------------------------------------------------------------

@pytest.mark.parametrize("source", ["run", "trace"])
def test_a_tiny_change_is_drawn_flat_without_an_offset(source, tmp_path):
    history = [stats(0, 2.0001, 2.0003, 0.8012, layers=2),
               stats(1, 2.0000, 2.0002, 0.8015, layers=2)]
    if source == "run":
        fig = learning_curve_figure(result(history, hidden=[8]))
    else:
        fig = trace_file_figure(trace_file(tmp_path / "t.h5", {}, history))
    fig.canvas.draw()
    accuracy, loss = panel(fig, "Test accuracy"), panel(fig, "Loss")
    assert np.ptp(accuracy.get_ylim()) >= 0.05
    assert height_share(accuracy, [0.8012, 0.8015]) < 0.02
    assert np.ptp(loss.get_ylim()) >= 0.1 * 2.0
    assert height_share(loss, [2.0000, 2.0003]) < 0.02
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            assert axis.get_offset_text().get_text() == "", (ax.get_title(), axis)
            formatter = axis.get_major_formatter()
            if isinstance(formatter, ScalarFormatter):  # no offset however narrow the range
                assert not formatter.get_useOffset(), (ax.get_title(), axis)


# --- the thin savers keep their names, signatures and return values --------------------------

def test_the_savers_write_pngs_and_return_their_paths(tmp_path):
    out = learning_curve(classification(), tmp_path / "curve.png")
    assert out == tmp_path / "curve.png" and out.read_bytes()[:4] == b"\x89PNG"
    path = trace_file(tmp_path / "t.h5", {}, two_layer_history())  # no records: one row, fast
    out = trace_figure(str(path), str(tmp_path / "trace.png"))
    assert out == tmp_path / "trace.png" and out.read_bytes()[:4] == b"\x89PNG"
    assert not plt.get_fignums()  # saved figures are closed


# --- 7. the records: the noisy-minus-reference drive over training, rasters -------------------

def test_the_drive_difference_is_drawn_over_every_record_as_its_quantiles(tmp_path):
    """Per traced layer: the median and the 25-75 % and 5-95 % ranges of da = noisy - clean over
    the probe samples and units of every record (not only the last), at the records' steps,
    labelled as the drive it is."""
    from noisynets.traces import TraceReader

    path = trace_file(tmp_path / "t.h5", {}, two_layer_history(), records=3)
    reader = TraceReader(path)
    fig = trace_file_figure(path)
    for k in (1, 2):
        ax = panel(fig, f"Layer {k}" + (" (output)" if k == 2 else "") + ": noisy - clean drive")
        da = (reader.activity(k, "noisy") - reader.activity(k, "clean")).reshape(3, -1)
        median = line(ax, "median")
        np.testing.assert_array_equal(median.get_xdata(), [0, 5, 10])
        np.testing.assert_allclose(median.get_ydata(), np.median(da, axis=1), rtol=1e-6)
        outer = ax.collections[0].get_paths()[0].vertices[:, 1]
        assert min(outer) == pytest.approx(min(np.quantile(da, 0.05, axis=1)), rel=1e-6)
        assert max(outer) == pytest.approx(max(np.quantile(da, 0.95, axis=1)), rel=1e-6)
    texts = panel_texts(fig)
    assert not [t for t in texts if "activity $a$" in t], texts


def test_a_single_record_is_one_bar_per_layer_that_says_why(tmp_path):
    """A run shorter than one trace interval holds one record (step 0): the panels over training
    draw one bar and say what gives a curve; with two records they draw curves and say
    nothing."""
    from noisynets.plots import ONE_RECORD

    for records, said in ((1, True), (2, False)):
        path = trace_file(tmp_path / f"t{records}.h5", {}, two_layer_history(), records=records)
        fig = trace_file_figure(path)
        for k in (1, 2):
            ax = panel(fig, f"Layer {k}" + (" (output)" if k == 2 else "") + ": noisy - clean")
            assert (ONE_RECORD in [t.get_text() for t in ax.texts]) == said, records


def test_a_raster_has_integer_time_ticks_and_only_the_traced_units(tmp_path):
    path = trace_file(tmp_path / "t.h5", {"unit": "lif"}, two_layer_history(), records=1)
    ax = panel(trace_file_figure(path), "Layer 1 spikes")
    assert list(ax.get_xticks()) == [0, 1, 2]  # T = 3
    low, high = ax.get_ylim()
    assert low == pytest.approx(-0.5) and high == pytest.approx(23.5)  # units 0..23 traced


def test_the_sweep_figure_colours_each_group_alike_and_names_data_and_network(tmp_path):
    from noisynets.plots import sweep_figure
    from noisynets.sweep import SweepResult

    def run(algo, seed, accuracy):
        config = TrainConfig(algo=algo, seed=seed, hidden=[32]).to_dict()
        history = [{"epoch": e, "test_accuracy": accuracy * e / 2} for e in range(3)]
        return {"name": f"{algo}-{seed}", "values": {"algo": algo, "seed": seed},
                "status": "done", "summary": {"config": config, "test_accuracy": accuracy,
                                              "history": history}}

    runs = [run("bp", 0, 0.5), run("bp", 1, 0.6), run("danp", 0, 0.2), run("danp", 1, 0.3)]
    result = SweepResult(str(tmp_path / "s"), runs, {"algo": ["bp", "danp"], "seed": [0, 1]}, {})
    captured = {}
    original = plt.Figure.savefig

    def keep(fig, *args, **kw):
        captured["fig"] = fig
        return original(fig, *args, **kw)

    plt.Figure.savefig = keep
    try:
        sweep_figure(result, tmp_path / "summary.png")
    finally:
        plt.Figure.savefig = original
    fig = captured["fig"]
    curves, finals = fig.axes
    colors = [matplotlib.colors.to_hex(ln.get_color()) for ln in curves.get_lines()]
    dots = [matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in finals.collections
            if isinstance(c, matplotlib.collections.PathCollection)]  # the scatters
    assert len(set(colors)) == 2 and dots == colors
    assert "digits" in fig.get_suptitle() and "hidden [32]" in fig.get_suptitle()
