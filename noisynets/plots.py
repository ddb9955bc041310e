"""Figures (matplotlib, headless): the learning curve of a run and the figure of a trace file.

Example::

    from noisynets.plots import trace_figure
    trace_figure("runs/<run>/trace.h5", "runs/<run>/trace.png")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from noisynets.traces import TraceReader, as_reader, layer_metric  # noqa: E402

if TYPE_CHECKING:
    from noisynets.run import RunResult


def learning_curve(result: RunResult, path: str | Path) -> Path:
    """Train loss, test accuracy and per-layer alignment with BP, by epoch, in one PNG."""
    history = ([result.initial] if result.initial else []) + result.history
    epochs = [h.epoch for h in history]
    c = result.config
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    axes[0].plot(epochs[1:], [h.train_loss for h in history[1:]], "o-", label="train (clean pass)")
    axes[0].plot(epochs, [h.test_loss for h in history], "s--", label="test")
    axes[0].set(xlabel="epoch", ylabel=f"loss ({c.loss})", title="Loss")
    axes[0].legend()
    if any(h.test_accuracy is None for h in history):  # regression: no accuracy
        axes[1].plot(epochs, [h.test_loss for h in history], "o-", color="C2")
        axes[1].set(xlabel="epoch", ylabel=f"test loss ({c.loss})", title="Test loss",
                    yscale="log")
    else:
        axes[1].plot(epochs, [100 * h.test_accuracy for h in history], "o-", color="C2")
        axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    for k in range(len(history[0].alignment)):
        axes[2].plot(epochs, [h.alignment[k] for h in history], "o-", label=f"layer {k + 1}")
    axes[2].set(xlabel="epoch", ylabel="cosine(estimate, BP gradient)",
                title="Alignment with BP", ylim=(-0.05, 1.05))
    axes[2].legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{c.algo.upper()} on {c.dataset}, {architecture(c)}, "
                 f"noise {c.noise_std:g}, seed {c.seed}")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- The figure of a trace file -------------------------------------------------------------

_STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
    "ytick.labelsize": 10, "legend.fontsize": 9, "figure.titlesize": 13,
}
_COLUMNS = 4


def trace_figure(trace: str | Path | TraceReader, out: str | Path) -> Path:
    """One PNG of a trace file: learning curves, alignment with BP and input decorrelation per
    layer by epoch; clean and noisy activity distributions of the last record per traced layer
    and the distribution of ``da = noisy - clean``; a spike raster of the last record for
    every spiking layer (one probe sample, clean pass).

    ``trace`` is a trace file or its ``TraceReader``. Works on a file whose run is still
    writing or was killed: what is not there yet is left out (a panel says so). Returns ``out``.
    """
    reader = as_reader(trace)
    data = _figure_data(reader)
    sections: list[list[Callable[[plt.Axes], None]]] = [
        [partial(_loss_panel, data), partial(_accuracy_panel, data),
         partial(_layer_metric_panel, data, "alignment"),
         partial(_layer_metric_panel, data, "decorrelation")],
        [partial(_activity_panel, data, k) for k in data["layers"]]
        + [partial(_change_panel, data)]
        + [partial(_map_panel, data, k) for k in data["maps"]]
        + [partial(_raster_panel, data, k) for k in data["spiking"]],
    ]
    sections = [s for s in sections if s]
    rows = sum(math.ceil(len(s) / _COLUMNS) for s in sections)
    with plt.rc_context(_STYLE):
        fig = plt.figure(figsize=(4.6 * _COLUMNS, 3.9 * rows + 0.5), layout="constrained")
        grid = fig.add_gridspec(rows, _COLUMNS)
        row = 0
        for section in sections:
            for i, draw in enumerate(section):
                ax = fig.add_subplot(grid[row + i // _COLUMNS, i % _COLUMNS])
                draw(ax)
                ax.grid(alpha=0.3)
            row += math.ceil(len(section) / _COLUMNS)
        fig.suptitle(_figure_title(reader.path, data))
        out = Path(out)
        try:
            fig.savefig(out, dpi=100)
        except OSError as e:
            raise ValueError(f"cannot write figure {str(out)!r}: {e.strerror or e}") from None
        finally:
            plt.close(fig)
    return out


def _figure_data(reader: TraceReader) -> dict[str, Any]:
    """Everything the figure shows: complete records and evaluations only."""
    steps = reader.steps()
    records = len(steps)  # a record the run adds meanwhile is left out
    probe = reader.probe_index()
    attrs = reader.attributes()
    datasets = reader.datasets()
    data: dict[str, Any] = {
        "config": reader.config, "metrics": reader.metrics(), "records": records,
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
            last["clean"] = reader.activity(k, "clean", records - 1)
            last["noisy"] = reader.activity(k, "noisy", records - 1)
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


def _figure_title(path: Path, data: dict[str, Any]) -> str:
    c = data["config"]
    parts = [f"{path.name}:"]
    if c:
        parts.append(f"{str(c.get('algo', '?')).upper()} on {c.get('dataset', '?')}, "
                     f"{architecture(c)}, noise {c.get('noise', '?')} "
                     f"{c.get('noise_std', float('nan')):g}, seed {c.get('seed', '?')};")
    if data["records"]:
        parts.append(f"{data['records']} records, steps {data['first_step']}..{data['step']}")
    else:
        parts.append("no records yet")
    return " ".join(parts)


def _empty(ax: plt.Axes, title: str, text: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _loss_panel(data: dict[str, Any], ax: plt.Axes) -> None:
    m = data["metrics"]
    if "epoch" not in m or not len(m["epoch"]):
        _empty(ax, "Loss", "no evaluations yet")
        return
    loss = data["config"].get("loss", "ce")
    if "train_loss" in m:
        ax.plot(m["epoch"], m["train_loss"], "o-", ms=4, label="train (clean pass)")
    if "test_loss" in m:
        ax.plot(m["epoch"], m["test_loss"], "s--", ms=4, label="test")
    ax.set(xlabel="epoch", ylabel=f"loss ({loss}, per sample)", title="Loss")
    _integer_ticks(ax)
    ax.legend()


def _accuracy_panel(data: dict[str, Any], ax: plt.Axes) -> None:
    m = data["metrics"]
    if "epoch" not in m or "test_accuracy" not in m or not len(m["epoch"]):
        _empty(ax, "Test accuracy", "no evaluations yet")
        return
    if np.isnan(m["test_accuracy"]).all():
        _empty(ax, "Test accuracy", "none: a regression task\n(the test loss is beside)")
        return
    ax.plot(m["epoch"], 100 * m["test_accuracy"], "o-", ms=4, color="C2", label="test")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    _integer_ticks(ax)
    ax.legend(loc="lower right")


def _layer_metric_panel(data: dict[str, Any], name: str, ax: plt.Axes) -> None:
    title, ylabel = {
        "alignment": ("Alignment with BP", "cosine(estimate, BP gradient)"),
        "decorrelation": ("Input decorrelation", "mean |off-diagonal correlation|"),
    }[name]
    m = data["metrics"]
    series = layer_metric(m, name)
    if "epoch" not in m or not series or not len(m["epoch"]):
        _empty(ax, title, "no evaluations yet")
        return
    for k, values in series.items():
        ax.plot(m["epoch"], values, "o-", ms=4, label=f"layer {k}")
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    if name == "alignment":
        low = min(-0.05, float(np.nanmin([v.min() for v in series.values()])) - 0.05)
        ax.set_ylim(low, 1.05)
    else:
        top = float(np.nanmax([v.max() for v in series.values()]))
        ax.set_ylim(0, 1.15 * top if top > 0 else 1)
    _integer_ticks(ax)
    ax.legend(fontsize="small", ncol=2 if len(series) > 4 else 1)


def _integer_ticks(ax: plt.Axes) -> None:
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _activity_label(data: dict[str, Any], symbol: str) -> str:
    steps = data["config"].get("time_steps") or 1
    return f"{symbol}, summed over {steps} time steps (a.u.)" if steps > 1 else f"{symbol} (a.u.)"


def _record_label(data: dict[str, Any]) -> str:
    return f"record {data['records'] - 1}, step {data['step']}"


def _shared_bins(values: list[np.ndarray]) -> np.ndarray | int:
    """40 histogram bins spanning all of ``values``, so overlaid histograms compare."""
    everything = np.concatenate(values)
    return np.linspace(everything.min(), everything.max(), 41) if np.ptp(everything) > 0 else 20


def _activity_panel(data: dict[str, Any], k: int, ax: plt.Axes) -> None:
    title = f"Layer {k} activity"
    last = data["last"][k]
    if "clean" not in last:
        _empty(ax, title, "no records yet")
        return
    clean, noisy = last["clean"].ravel(), last["noisy"].ravel()
    bins = _shared_bins([clean, noisy])
    ax.hist(clean, bins=bins, alpha=0.55, color="C0", label="clean pass")
    ax.hist(noisy, bins=bins, histtype="step", lw=1.8, color="C3", label="noisy pass")
    traced = len(last["unit_index"])
    ax.set(xlabel=_activity_label(data, "activity $a$"), ylabel="count (samples x units)",
           title=f"{title} ({_record_label(data)})")
    ax.legend(title=f"{traced} of {last['units']} units", title_fontsize="small")


def _change_panel(data: dict[str, Any], ax: plt.Axes) -> None:
    title = "Noisy - clean activity"
    layers = [k for k in data["layers"] if "clean" in data["last"][k]]
    if not layers:
        _empty(ax, title, "no records yet")
        return
    changes = {k: (data["last"][k]["noisy"] - data["last"][k]["clean"]).ravel() for k in layers}
    bins = _shared_bins(list(changes.values()))
    for i, (k, da) in enumerate(changes.items()):
        ax.hist(da, bins=bins, histtype="step", lw=1.8, color=f"C{i}", density=True,
                label=f"layer {k}")
    ax.set(xlabel=_activity_label(data, r"$\Delta a = a_\mathrm{noisy} - a_\mathrm{clean}$"),
           ylabel="probability density (1/a.u.)",
           title=f"{title} ({_record_label(data)})")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    ax.legend(fontsize="small")


def _map_panel(data: dict[str, Any], k: int, ax: plt.Axes) -> None:
    """The first traced channel of a feature map: one probe sample's clean activity."""
    title = f"Layer {k} feature map"
    last = data["last"][k]
    if "clean" not in last:
        _empty(ax, title, "no records yet")
        return
    channels, height, width = last["shape"]
    size = height * width
    first = int(last["unit_index"][0]) // size
    image = last["clean"][0, :size].reshape(height, width)
    shown = ax.imshow(image, cmap="viridis", interpolation="nearest")
    ax.figure.colorbar(shown, ax=ax, label=_activity_label(data, "activity $a$"), shrink=0.85)
    ax.set(xlabel="column", ylabel="row",
           title=f"{title}: channel {first + 1} of {channels}, sample {data['sample']}\n"
                 f"clean pass ({_record_label(data)})")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(False)


def _raster_panel(data: dict[str, Any], k: int, ax: plt.Axes) -> None:
    title = f"Layer {k} spikes"
    last = data["last"][k]
    if "spikes" not in last:
        _empty(ax, title, "no records yet")
        return
    spikes = last["spikes"]  # (time, units)
    units = last["unit_index"]
    t, u = np.nonzero(spikes)
    steps, size = spikes.shape[0], last["units"]
    # One bar per spike: a time step wide, as high as the gap between traced units allows.
    height = 0.8 * (float(np.min(np.diff(units))) if len(units) > 1 else 1.0)
    ax.bar(t, height, width=0.8, bottom=units[u] - height / 2, color="k",
           label=f"spike ({len(t)} of {spikes.size} slots)")
    ax.set(xlabel="time step", ylabel="unit (number in layer)", xlim=(-0.5, steps - 0.5),
           ylim=(-0.5, 1.15 * size),
           title=f"{title}: sample {data['sample']}, clean pass\n({_record_label(data)})")
    _integer_ticks(ax)
    ax.legend(loc="upper right", fontsize="small", framealpha=0.9)
