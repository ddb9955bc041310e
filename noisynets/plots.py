"""Figures (matplotlib, headless): the learning curve of a run and the figure of a trace file.

``learning_curve(result, path)`` draws a run's ``learning_curve.png`` from its ``RunResult``,
by epoch (epoch 0: before training), one panel each:

* **Loss** (per sample). *Train*: the mean over the epoch's training steps of the reference
  pass's loss, measured while the weights changed; at epoch 0 (an open marker) the loss on the
  whole training split before training. *Validation*, where the run held a validation split
  out (``--val-fraction``), else *test*. With a validation split the test split is measured
  once, after the last epoch: one marker, *test (final)*.
* **Accuracy**, a fraction 0..1 as in ``results.json``: validation and test as for the loss.
  Left out for a regression task (the teacher data set), which has none.
* **Alignment with BP**, two panels on linear axes that hold 0: the *hidden layers* and the
  *readout* (the output layer), apart, since the readout's cosine (typically 0.3-0.5) is ten
  times the hidden layers' (0.01-0.1). Per layer the mean cosine of the rule's estimate with
  the BP gradient of the same batch over the ``--probe-batches`` fixed training batches, and a
  band of one standard deviation over them (``alignment_std``).

``trace_figure(file, out)`` draws a trace file (``trace.png``, ``noisynets plot``): the same
panels from the file's metrics and the **input decorrelation** per layer (the mean
|off-diagonal correlation| of each layer's input as its ``R`` sees it; titled *input
correlation* for a rule that does not decorrelate); then per traced layer the **noisy minus
reference drive** ``da = a_noisy - a_ref`` over training (``a = W xh + b``, the drive into the
units, which the trace calls activity): at every record's step the median and the 25-75 % and
5-95 % ranges over the probe samples and traced units; the distribution of ``da`` of every
layer at the last record; one channel of every feature map; and a spike raster of every
spiking layer (one probe sample, reference pass, integer time steps, the traced units only).
Each layer has one colour in every panel.

What the labels promise:

* The reference pass is the *clean pass*, unless the run made every pass noisy
  (``both_noisy``): then there is no clean pass, and the figures say *reference pass (noisy)*.
* A panel without data -- no accuracy for a regression, no records yet, a metric that is NaN
  throughout -- is left out, not drawn empty; a file with nothing to show yet gives a figure
  that says so and what the file holds.
* Linear axes never use an offset ("+8e-1"), and every curve panel's y range has a minimum
  (accuracy 0.05; loss 10 % of its size; decorrelation 0.05), so that the change of a
  one-epoch run from 0.8012 to 0.8015 is drawn as the near-flat line it is.

``sweep_figure(result, path)`` draws a sweep's ``summary.png`` (``noisynets.sweep``): per group
of runs the mean learning curve over the seeds with their range as a band, and every seed's
final value, each group in one colour in both panels; the title names the data and network.

``learning_curve_figure(result)`` and ``trace_file_figure(file)`` return the figure without
saving it (``plt.close`` it when done). Example::

    from noisynets.plots import trace_figure
    trace_figure("runs/<run>/trace.h5", "runs/<run>/trace.png")
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from noisynets.rules import RULES, uses_decorrelation  # noqa: E402
from noisynets.traces import TraceReader, as_reader, flatten_metrics, layer_metric  # noqa: E402

if TYPE_CHECKING:
    from noisynets.run import RunResult
    from noisynets.sweep import SweepResult

Panel = Callable[[plt.Axes], None]

_STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
    "ytick.labelsize": 10, "legend.fontsize": 9, "figure.titlesize": 13,
    "axes.formatter.useoffset": False,
}
_COLUMNS = 4
# The least y range of a curve panel: a change smaller than this is drawn as (nearly) flat.
_LEAST_ACCURACY_RANGE = 0.05  # accuracy (fraction)
_LEAST_LOSS_RANGE = 0.1  # loss: this share of its largest magnitude
_LEAST_CORRELATION_RANGE = 0.05  # mean |off-diagonal correlation|
_LEAST_ALIGNMENT_RANGE = 0.02  # cosine
# What a panel over training says when the file holds one record.
ONE_RECORD = "one record: train longer or lower --trace-every for a curve over training"

# The quantiles of da = noisy - reference drawn over training: 5-95 %, 25-75 %, the median.
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# --- The learning curve of a run -------------------------------------------------------------

def learning_curve(result: RunResult, path: str | Path) -> Path:
    """Loss, accuracy and per-layer alignment with BP by epoch, in one PNG (module doc).
    Returns ``path``."""
    return _save(learning_curve_figure(result), Path(path), dpi=110)


def learning_curve_figure(result: RunResult) -> Figure:
    """The figure of ``learning_curve``, not saved: one row of curve panels."""
    history = ([result.initial] if result.initial else []) + list(result.history)
    rows = [flatten_metrics(dataclasses.asdict(h)) for h in history]
    names = list(dict.fromkeys(name for row in rows for name in row))
    metrics = {name: np.array([_number(row.get(name)) for row in rows]) for name in names}
    config = result.config.to_dict()
    data = {"config": config, "metrics": metrics}
    panels = _curve_panels(data, decorrelation=False)
    with plt.rc_context(_STYLE):
        if not panels:
            return _note_figure(f"{_run_title(config)}\n\nno evaluations: nothing to plot")
        fig = plt.figure(figsize=(4.8 * len(panels), 4.2), layout="constrained")
        _draw(fig, [panels], len(panels))
        fig.suptitle(_run_title(config))
    return fig


# --- The figure of a trace file -------------------------------------------------------------

def trace_figure(trace: str | Path | TraceReader, out: str | Path) -> Path:
    """One PNG of a trace file: learning curves, alignment with BP (hidden layers, readout) and
    input decorrelation per layer by epoch; per traced layer ``da = noisy - reference`` drive
    over training, and its distribution at the last record; a spike raster of the last record
    for every spiking layer (one probe sample, reference pass). See the module doc.

    ``trace`` is a trace file or its ``TraceReader``. Works on a file whose run is still
    writing or was killed: what is not there yet is left out. Returns ``out``.
    """
    return _save(trace_file_figure(trace), Path(out), dpi=100)


def trace_file_figure(trace: str | Path | TraceReader) -> Figure:
    """The figure of ``trace_figure``, not saved."""
    reader = as_reader(trace)
    data = _figure_data(reader)
    sections: list[list[Panel]] = [_curve_panels(data, decorrelation=True), _record_panels(data)]
    sections = [s for s in sections if s]
    with plt.rc_context(_STYLE):
        if not sections:
            held = reader.describe().split("\ndatasets")[0]
            return _note_figure(f"{_figure_title(reader.path, data)}\n\nnothing to plot yet: no "
                                f"evaluations and no complete records. The file holds:\n\n{held}")
        columns = max(_COLUMNS, len(sections[0]))  # the curves in one row
        rows = sum(math.ceil(len(s) / columns) for s in sections)
        fig = plt.figure(figsize=(4.6 * columns, 3.9 * rows + 0.5), layout="constrained")
        _draw(fig, sections, columns)
        fig.suptitle(_figure_title(reader.path, data))
    return fig


def _record_panels(data: dict[str, Any]) -> list[Panel]:
    """The panels of the last complete record: none without one."""
    layers = [k for k in data["layers"] if "clean" in data["last"][k]]
    if not layers:
        return []
    return ([partial(_change_over_training_panel, data, k) for k in layers]
            + [partial(_change_panel, data)]
            + [partial(_map_panel, data, k) for k in data["maps"] if k in layers]
            + [partial(_raster_panel, data, k) for k in data["spiking"]
               if "spikes" in data["last"][k]])


def _draw(fig: Figure, sections: list[list[Panel]], columns: int) -> None:
    """Every section's panels, ``columns`` a row, each section starting a new row."""
    rows = sum(math.ceil(len(s) / columns) for s in sections)
    grid = fig.add_gridspec(rows, columns)
    row = 0
    for section in sections:
        for i, draw in enumerate(section):
            ax = fig.add_subplot(grid[row + i // columns, i % columns])
            ax.grid(alpha=0.3)  # before drawing: an image panel turns it off
            draw(ax)
            _no_offset(ax)
        row += math.ceil(len(section) / columns)


def _save(fig: Figure, out: Path, dpi: int) -> Path:
    from noisynets.files import atomic

    try:  # all or nothing: a full disk leaves no half-written figure
        with plt.rc_context(_STYLE), atomic(out, suffix=True) as tmp:
            fig.savefig(tmp, dpi=dpi, format=out.suffix.lstrip(".") or "png")
    except ValueError as e:
        raise ValueError(f"cannot write figure {str(out)!r}: "
                         f"{str(e).rpartition(': ')[2]}") from None
    finally:
        plt.close(fig)
    return out


def _note_figure(text: str) -> Figure:
    """A figure without panels that says why."""
    fig = plt.figure(figsize=(10, 2 + 0.18 * text.count("\n")))
    fig.text(0.02, 0.97, text, va="top", ha="left", family="monospace", fontsize=10)
    return fig


def _figure_data(reader: TraceReader) -> dict[str, Any]:
    """Everything the figure shows: complete records and evaluations only."""
    steps = reader.steps()
    records = len(steps)  # a record the run adds meanwhile is left out
    probe = reader.probe_index()
    attrs = reader.attributes()
    datasets = reader.datasets()
    data: dict[str, Any] = {
        "config": reader.config, "metrics": reader.metrics(), "records": records,
        "steps": np.asarray(steps[:records], dtype=np.float64),
        "step": int(steps[-1]) if records else None,
        "first_step": int(steps[0]) if records else None,
        "sample": int(probe[0]) if len(probe) else None,
        "layers": reader.layers, "spiking": [], "maps": [], "last": {},
    }
    for k in data["layers"]:
        group = f"/traces/layer_{k}"
        spikes = f"{group}/spikes" in datasets
        shape = attrs.get(group, {}).get("shape")
        last: dict[str, Any] = {"units": int(attrs.get(group, {}).get("units", 0)),
                                "unit_index": reader.unit_index(k),
                                "shape": None if shape is None else [int(d) for d in shape]}
        if last["shape"] is not None and len(last["shape"]) == 3:
            data["maps"].append(k)
        if records:
            clean = reader.activity(k, "clean", slice(0, records))
            noisy = reader.activity(k, "noisy", slice(0, records))
            last["clean"], last["noisy"] = clean[-1], noisy[-1]
            last["da_quantiles"] = np.quantile(
                (noisy - clean).reshape(records, -1).astype(np.float64), _QUANTILES, axis=1)
            last["drive_std"] = float(np.std(clean[-1]))
            if spikes:
                last["spikes"] = reader.spikes(k, "clean", records - 1)[:, 0]  # (time, units)
        if bool(attrs.get(group, {}).get("spiking", spikes)):
            data["spiking"].append(k)
        data["last"][k] = last
    return data


def architecture(c: Any) -> str:
    """The network of a config (a ``TrainConfig`` or its dict) in a few words."""
    get = c.get if isinstance(c, dict) else lambda key, default=None: getattr(c, key, default)
    if get("model"):
        text = f"model {get('model')}"
    elif get("arch") == "conv":
        text = f"conv net, {get('unit', '?')} units"
    else:
        hidden = " ".join(str(h) for h in get("hidden") or [])
        text = f"hidden [{hidden}], {get('unit', '?')} units"
    if (get("time_steps") or 1) > 1:
        text += f", T = {get('time_steps')}"
    return text


def _run_title(c: dict[str, Any]) -> str:
    """The run in one line: rule, data, network, noise, seed, and a run without a clean pass."""
    std = c.get("noise_std")
    std_text = f"{std:g}" if isinstance(std, (int, float)) else "?"
    text = (f"{str(c.get('algo', '?')).upper()} on {c.get('dataset', '?')}, {architecture(c)}, "
            f"noise {c.get('noise', '?')} {std_text}, seed {c.get('seed', '?')}")
    if _both_noisy(c):
        text += "; every pass noisy (no clean pass)"
    return text


def _figure_title(path: Path, data: dict[str, Any]) -> str:
    parts = [f"{path.name}:"]
    if data["config"]:
        parts.append(f"{_run_title(data['config'])};")
    if data["records"]:
        parts.append(f"{data['records']} records, steps {data['first_step']}..{data['step']}")
    else:
        parts.append("no records yet")
    return " ".join(parts)


# --- What the labels say -------------------------------------------------------------------

def _both_noisy(config: dict[str, Any]) -> bool:
    return config.get("both_noisy") is True


def _reference(config: dict[str, Any]) -> str:
    """The name of the reference pass: clean, unless every pass is noisy."""
    return "reference pass (noisy)" if _both_noisy(config) else "clean pass"


def _output_layer(data: dict[str, Any]) -> int | None:
    """The number of the output layer (the last one with a per-layer metric)."""
    layers = [k for name in ("alignment", "decorrelation", "estimate_norm")
              for k in layer_metric(data["metrics"], name)]
    return max(layers) if layers else None


def _layer_label(data: dict[str, Any], k: int) -> str:
    return f"layer {k} (output)" if k == _output_layer(data) else f"layer {k}"


# --- The curve panels: loss, accuracy, alignment, decorrelation by epoch ----------------------

def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _series(data: dict[str, Any], name: str) -> np.ndarray | None:
    """Metric ``name`` as floats aligned with the epochs, or None where it holds no finite
    value (not measured, or NaN throughout)."""
    m = data["metrics"]
    if name not in m:
        return None
    epochs = len(m["epoch"])
    values = np.asarray(m[name], dtype=np.float64)[:epochs]
    return values if np.isfinite(values).any() else None


def _layer_series(data: dict[str, Any], name: str) -> dict[int, np.ndarray]:
    """Per layer metric ``name`` by layer number, the layers with a finite value only."""
    epochs = len(data["metrics"]["epoch"])
    found = {k: np.asarray(v, dtype=np.float64)[:epochs]
             for k, v in layer_metric(data["metrics"], name).items()}
    return {k: v for k, v in found.items() if np.isfinite(v).any()}


def _curve_panels(data: dict[str, Any], decorrelation: bool) -> list[Panel]:
    """The curve panels that have data (none before the first evaluation)."""
    m = data["metrics"]
    if "epoch" not in m or not len(m["epoch"]):
        return []
    panels: list[Panel] = []
    if any(_series(data, n) is not None for n in ("train_loss", "val_loss", "test_loss")):
        panels.append(partial(_loss_panel, data))
    if any(_series(data, n) is not None for n in ("val_accuracy", "test_accuracy")):
        panels.append(partial(_accuracy_panel, data))
    alignment = _layer_series(data, "alignment")
    output = _output_layer(data)
    if any(k != output for k in alignment):
        panels.append(partial(_alignment_panel, data, False))
    if output in alignment:
        panels.append(partial(_alignment_panel, data, True))
    if decorrelation and _layer_series(data, "decorrelation"):
        panels.append(partial(_layer_metric_panel, data, "decorrelation"))
    return panels


def _plot(ax: plt.Axes, x: np.ndarray, y: np.ndarray | None, fmt: str, **kw: Any) -> bool:
    """Plot the finite points of ``y`` (a line breaks at a gap); nothing if there are none."""
    if y is None or not np.isfinite(y).any():
        return False
    ax.plot(x, y, fmt, **kw)
    return True


def _splits(data: dict[str, Any], what: str, ax: plt.Axes, color: str) -> list[np.ndarray]:
    """Validation (every epoch) and test (every epoch, or its final point only when there is
    a validation split) of ``what`` (``loss``, ``accuracy``); returns the values drawn."""
    epoch = np.asarray(data["metrics"]["epoch"], dtype=np.float64)
    val, test = _series(data, f"val_{what}"), _series(data, f"test_{what}")
    drawn = [v for v in (val, test) if v is not None]
    _plot(ax, epoch, val, "d-", ms=5, color="C2", label="validation")
    if val is not None:
        _plot(ax, epoch, test, "s", ms=8, color=color, label="test (final)")
    else:
        _plot(ax, epoch, test, "s--", ms=5, color=color, label="test")
    return drawn


def _loss_panel(data: dict[str, Any], ax: plt.Axes) -> None:
    m, config = data["metrics"], data["config"]
    epoch = np.asarray(m["epoch"], dtype=np.float64)
    reference = _reference(config)
    drawn = []
    train = _series(data, "train_loss")
    if train is not None:
        later = epoch > 0
        _plot(ax, epoch[later], train[later], "o-", ms=5, color="C0",
              label=f"train, {reference}:\nmean over the epoch's steps")
        _plot(ax, epoch[~later], train[~later], "o", ms=7, color="C0", mfc="white", mew=1.8,
              zorder=3, label=f"train, {reference}:\ntraining split before training")
        drawn.append(train)
    drawn += _splits(data, "loss", ax, "C1")
    loss = config.get("loss")
    ax.set(xlabel="epoch", ylabel=f"loss ({loss}, mean per sample)" if loss
           else "loss (mean per sample)", title="Loss")
    scale = max(float(np.nanmax(np.abs(np.concatenate(drawn)))), 1e-12)
    _least_range(ax, drawn, _LEAST_LOSS_RANGE * scale)
    _integer_ticks(ax)
    ax.legend(fontsize="small", framealpha=0.8)


def _accuracy_panel(data: dict[str, Any], ax: plt.Axes) -> None:
    drawn = _splits(data, "accuracy", ax, "C1")
    ax.set(xlabel="epoch", ylabel="accuracy (fraction)",
           title="Accuracy" if _series(data, "val_accuracy") is not None else "Test accuracy")
    _least_range(ax, drawn, _LEAST_ACCURACY_RANGE, bounds=(0.0, 1.0))
    _integer_ticks(ax)
    ax.legend(framealpha=0.8)


def _layer_color(k: int) -> str:
    """Layer ``k``'s colour, the same in every panel."""
    return f"C{(k - 1) % 10}"


def _layer_metric_panel(data: dict[str, Any], name: str, ax: plt.Axes) -> None:
    m = data["metrics"]
    epoch = np.asarray(m["epoch"], dtype=np.float64)
    series = _layer_series(data, name)
    for k, values in series.items():
        _plot(ax, epoch, values, "o-", ms=4, color=_layer_color(k), label=_layer_label(data, k))
    algo = data["config"].get("algo")
    plain = algo in RULES and not uses_decorrelation(algo)
    ax.set(xlabel="epoch", ylabel="mean |off-diagonal correlation|",
           title="Input correlation (rule does not decorrelate)" if plain
           else "Input decorrelation")
    top = float(np.nanmax(np.concatenate(list(series.values()))))
    ax.set_ylim(0, max(1.15 * top, _LEAST_CORRELATION_RANGE))
    _integer_ticks(ax)
    ax.legend(fontsize="small", ncol=2 if len(series) > 4 else 1)


def _alignment_panel(data: dict[str, Any], readout: bool, ax: plt.Axes) -> None:
    """The alignment of the hidden layers (``readout`` False) or of the readout, on a linear
    axis that holds 0: per layer the mean cosine over the probe batches, and a band of one
    standard deviation over them where the file has it."""
    epoch = np.asarray(data["metrics"]["epoch"], dtype=np.float64)
    output = _output_layer(data)
    series = {k: v for k, v in _layer_series(data, "alignment").items()
              if (k == output) == readout}
    spread = layer_metric(data["metrics"], "alignment_std")
    drawn: list[np.ndarray] = [np.zeros(1)]
    banded = False
    for k, values in series.items():
        color = _layer_color(k)
        _plot(ax, epoch, values, "o-", ms=4, color=color, label=_layer_label(data, k))
        std = np.asarray(spread.get(k, []), dtype=np.float64)[: len(epoch)]
        if len(std) == len(values) and np.isfinite(std).any() and np.nanmax(std) > 0:
            ax.fill_between(epoch, values - std, values + std, color=color, alpha=0.2, lw=0)
            drawn += [values - std, values + std]
            banded = True
        drawn.append(values)
    ax.axhline(0.0, color="k", lw=0.8, zorder=1)
    batches = data["config"].get("probe_batches")
    ax.set(xlabel="epoch", ylabel="cosine(estimate, BP gradient)",
           title=f"Alignment with BP: {'readout' if readout else 'hidden layers'}")
    _least_range(ax, drawn, _LEAST_ALIGNMENT_RANGE, bounds=(-1.0, 1.0))
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, 0.0), max(high, 0.0))
    _integer_ticks(ax)
    title = (f"mean, band: ±1 std over {batches} probe batches" if banded and batches
             else "one probe batch" if not banded else None)
    ax.legend(fontsize="small", ncol=2 if len(series) > 4 else 1, title=title,
              title_fontsize="x-small")


def _least_range(ax: plt.Axes, drawn: Sequence[np.ndarray], least: float,
                 bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
    """Widen the y axis to at least ``least`` around the data (inside ``bounds``), so a tiny
    change is not blown up to the panel's height."""
    values = np.concatenate([np.asarray(v, dtype=np.float64) for v in drawn])
    values = values[np.isfinite(values)]
    if not len(values):
        return
    low, high = float(values.min()), float(values.max())
    if high - low >= least:
        return
    middle = (low + high) / 2
    low, high = middle - least / 2, middle + least / 2
    if low < bounds[0]:
        low, high = bounds[0], bounds[0] + least
    elif high > bounds[1]:
        low, high = bounds[1] - least, bounds[1]
    ax.set_ylim(low - 0.05 * least, high + 0.05 * least)


def _no_offset(ax: plt.Axes) -> None:
    """No "+8e-1" offset on a linear axis: tick labels show the values themselves."""
    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, matplotlib.ticker.ScalarFormatter):
            formatter.set_useOffset(False)


def _integer_ticks(ax: plt.Axes) -> None:
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


# --- The panels of the last record ----------------------------------------------------------

def _activity_label(data: dict[str, Any], symbol: str) -> str:
    steps = data["config"].get("time_steps") or 1
    return f"{symbol}, summed over {steps} time steps (a.u.)" if steps > 1 else f"{symbol} (a.u.)"


_DRIVE = r"drive $a = W\hat{x} + b$"  # what the trace calls activity: the input to the units


def _record_label(data: dict[str, Any]) -> str:
    return f"record {data['records'] - 1}, step {data['step']}"


def _layer_title(data: dict[str, Any], k: int) -> str:
    return f"Layer {k} (output)" if k == _output_layer(data) else f"Layer {k}"


def _shared_bins(values: list[np.ndarray]) -> np.ndarray | int:
    """40 histogram bins spanning all of ``values``, so overlaid histograms compare."""
    everything = np.concatenate(values)
    return np.linspace(everything.min(), everything.max(), 41) if np.ptp(everything) > 0 else 20


def _change_over_training_panel(data: dict[str, Any], k: int, ax: plt.Axes) -> None:
    """Layer ``k``'s ``da = noisy - reference`` drive over training: per record the median
    and the 25-75 % and 5-95 % ranges over the probe samples and traced units."""
    last = data["last"][k]
    q = last["da_quantiles"]  # (5, records)
    steps = data["steps"]
    color = _layer_color(k)
    if len(steps) > 1:
        ax.fill_between(steps, q[0], q[4], color=color, alpha=0.18, lw=0, label="5-95 %")
        ax.fill_between(steps, q[1], q[3], color=color, alpha=0.4, lw=0, label="25-75 %")
        ax.plot(steps, q[2], "-", color=color, lw=1.5, label="median")
    else:  # a run shorter than one trace interval: one bar, and a word why
        ax.vlines(steps, q[0], q[4], color=color, alpha=0.4, lw=6, label="5-95 %")
        ax.vlines(steps, q[1], q[3], color=color, lw=6, label="25-75 %")
        ax.plot(steps, q[2], "_", color="k", ms=14, label="median")
        ax.text(0.02, 0.03, ONE_RECORD, transform=ax.transAxes, fontsize="x-small",
                color="0.3", va="bottom")
    ax.axhline(0.0, color="k", lw=0.8, zorder=1)
    name = "ref" if _both_noisy(data["config"]) else "clean"
    traced = len(last["unit_index"])
    ax.set(xlabel="training step",
           ylabel=_activity_label(data, rf"$\Delta a = a_\mathrm{{noisy}} - a_\mathrm{{{name}}}$"),
           title=f"{_layer_title(data, k)}: noisy - {name} drive over training\n"
                 f"({traced} of {last['units']} units; drive std {last['drive_std']:.3g} at "
                 f"step {data['step']})")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if len(steps) <= 8:
        ax.set_xticks(steps)  # the records' own steps
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize="x-small", framealpha=0.8, loc="upper right")


def _change_panel(data: dict[str, Any], ax: plt.Axes) -> None:
    layers = [k for k in data["layers"] if "clean" in data["last"][k]]
    changes = {k: (data["last"][k]["noisy"] - data["last"][k]["clean"]).ravel() for k in layers}
    bins = _shared_bins(list(changes.values()))
    for k, da in changes.items():
        ax.hist(da, bins=bins, histtype="step", lw=1.8, color=_layer_color(k), density=True,
                label=_layer_label(data, k))
    reference, name = (("reference", "ref") if _both_noisy(data["config"])
                       else ("clean", "clean"))
    ax.set(xlabel=_activity_label(
               data, rf"$\Delta a = a_\mathrm{{noisy}} - a_\mathrm{{{name}}}$"),
           ylabel="probability density (1/a.u.)",
           title=f"Noisy - {reference} drive, step {data['step']}")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    ax.legend(fontsize="small")


def _map_panel(data: dict[str, Any], k: int, ax: plt.Axes) -> None:
    """The first traced channel of a feature map: one probe sample's reference activity."""
    last = data["last"][k]
    channels, height, width = last["shape"]
    size = height * width
    first = int(last["unit_index"][0]) // size
    image = last["clean"][0, :size].reshape(height, width)
    shown = ax.imshow(image, cmap="viridis", interpolation="nearest")
    ax.figure.colorbar(shown, ax=ax, label=_activity_label(data, _DRIVE), shrink=0.85)
    ax.set(xlabel="column", ylabel="row",
           title=f"{_layer_title(data, k)} feature map: channel {first + 1} of {channels}, "
                 f"sample {data['sample']}\n{_reference(data['config'])} "
                 f"({_record_label(data)})")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(False)


def _raster_panel(data: dict[str, Any], k: int, ax: plt.Axes) -> None:
    """One probe sample's spikes, reference pass: a bar per spike, time steps as integers,
    the y axis spanning the traced units only."""
    last = data["last"][k]
    spikes = last["spikes"]  # (time, units)
    units = np.asarray(last["unit_index"])
    t, u = np.nonzero(spikes)
    steps = spikes.shape[0]
    gap = float(np.min(np.diff(units))) if len(units) > 1 else 1.0
    height = 0.8 * gap  # as high as the gap between traced units allows
    ax.bar(t, height, width=0.8, bottom=units[u] - height / 2, color="k")
    ax.set(xlabel="time step", ylabel=f"unit (number in layer; {len(units)} of "
                                      f"{last['units']} traced)",
           xlim=(-0.5, steps - 0.5), ylim=(units.min() - gap / 2, units.max() + gap / 2),
           title=f"{_layer_title(data, k)} spikes: sample {data['sample']}, "
                 f"{_reference(data['config'])}\n({len(t)} spikes in {spikes.size} slots; "
                 f"{_record_label(data)})")
    if steps <= 20:
        ax.set_xticks(range(steps))
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


# --- sweeps ---------------------------------------------------------------------------------


def sweep_figure(result: SweepResult, path: str | Path) -> Path:
    """The figure of a sweep (``summary.png``): left, per group of runs (the grid's values other
    than the seed) the mean learning curve over its seeds, the band spanning the seeds' range;
    right, every seed's final value as a dot and the group's mean as a line. The curve is the
    validation split's where the runs hold one out, else the test split's; a regression sweep
    shows the loss."""
    from noisynets.sweep import groups, score_name, seed_curve, value_text

    score = score_name(result)
    validating = any(h.get(score.replace("test", "val")) is not None
                     for r in result.runs for h in r.get("summary", {}).get("history", []))
    curve_metric = score.replace("test", "val") if validating else score
    split = "validation" if validating else "test"
    what = "accuracy (fraction)" if score == "test_accuracy" else "loss"
    fig, (ax_curve, ax_final) = plt.subplots(1, 2, figsize=(12, 4.5),
                                             gridspec_kw={"width_ratios": [3, 2]})
    labels, finals = [], []
    for i, (values, runs) in enumerate(groups(result)):
        color = f"C{i % 10}"  # the group's colour in both panels
        label = ", ".join(f"{k}={value_text(v)}" for k, v in values.items()) or "all runs"
        labels.append(label)
        finals.append([r["summary"][score] for r in runs if "summary" in r
                       and r["summary"].get(score) is not None])
        histories = [r["summary"]["history"] for r in runs if "summary" in r]
        seeds = sum(any(h.get(curve_metric) is not None for h in history)
                    for history in histories)
        if not seeds:
            continue
        epochs, mean, low, high = seed_curve(histories, curve_metric)
        ax_curve.plot(epochs, mean, marker="o", markersize=3, color=color,
                      label=f"{label} (n={seeds})")
        if seeds > 1:
            ax_curve.fill_between(epochs, low, high, color=color, alpha=0.2)
    ax_curve.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_curve.set_xlabel("epoch (0: before training)")
    ax_curve.set_ylabel(f"{split} {what}")
    ax_curve.set_title(f"{split} {what} per epoch: mean over seeds, band = seed range")
    ax_curve.ticklabel_format(axis="y", useOffset=False)
    if labels:
        ax_curve.legend(fontsize=7)
    x = np.arange(len(labels))
    for i, values in enumerate(finals):
        if values:
            ax_final.hlines(np.mean(values), i - 0.3, i + 0.3, color="k", linewidth=2)
            ax_final.scatter(np.full(len(values), i), values, color=f"C{i % 10}", zorder=3,
                             s=14)
    ax_final.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    ax_final.set_ylabel(f"final {score.replace('_', ' ')}"
                        + (" (fraction)" if score == "test_accuracy" else ""))
    ax_final.set_title("final value: seeds (dots), mean (line)")
    numbers = [v for values in finals for v in values]
    if numbers and score == "test_accuracy":
        lo, hi = min(numbers), max(numbers)
        pad = max(0.01, 0.15 * (hi - lo))
        ax_final.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax_final.ticklabel_format(axis="y", useOffset=False)
    fig.suptitle(f"sweep {Path(result.out).name}: {len(result.runs)} runs; {_sweep_setup(result)}")
    fig.tight_layout()
    return _save(fig, Path(path), 110)


def _sweep_setup(result: SweepResult) -> str:
    """The data and network the sweep's runs share, or which of them its grid varies."""
    configs = [r["summary"]["config"] for r in result.runs if "summary" in r]
    if not configs:
        return "no run finished"
    data = sorted({str(c.get("dataset")) for c in configs})
    nets = sorted({architecture(c) for c in configs})
    data_text = data[0] if len(data) == 1 else "data " + " | ".join(data)
    net_text = nets[0] if len(nets) == 1 else "networks " + " | ".join(nets)
    return f"{data_text}, {net_text}"
