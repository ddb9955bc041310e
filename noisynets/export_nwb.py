"""A trace file as an NWB file (Neurodata Without Borders, via ``pynwb``: the ``[nwb]`` extra).

``export_nwb(trace, out)`` writes what ``noisynets export FILE --format nwb`` writes. The probe
samples are presented one after another: every record's every probe sample is one *trial* of
``T`` time steps of ``dt`` seconds each (``dt`` = 1 ms by default: the simulation has no
physical time, so the clock is nominal and says so)::

    trial j = r * probe + p              (record r, probe sample p)
    time of step t of trial j = (j T + t) dt,   trial j spans [j T dt, (j + 1) T dt)

The file holds:

* ``trials`` -- one row per trial: ``start_time``, ``stop_time``, ``record``, ``step`` (the
  training step of the record), ``sample`` (the probe sample's index in the training set);
* ``units`` (the Units table) -- one row per traced unit of every spiking layer and per pass:
  ``spike_times`` (s, the spikes of every trial on the clock above), ``layer``, ``unit`` (its
  number in the layer, from 0), ``pass`` (``reference`` or ``noisy``);
* processing module ``network``: per traced layer and pass a ``TimeSeries``
  ``layer_<k>_activity_<pass>`` -- the activity ``a = W xh + b`` summed over the time steps,
  one value per trial (``rate = 1 / (T dt)``, unit ``a.u.``), columns the traced units; and
  for a spiking layer ``layer_<k>_membrane_<pass>``, the membrane potential after every time
  step (``rate = 1 / dt``, unit ``a.u.``: the LIF threshold is in the same units); and the
  ``layers`` table: every layer's number, inputs, units, shape, whether it spikes, how many
  units are traced;
* processing module ``training``: the ``metrics`` table, one row per evaluation (epoch 0:
  before training), a column per metric (``docs/traces.md``);
* metadata: ``session_description`` names rule, data set and network,
  ``experiment_description`` describes the network, ``notes`` holds the trace file's
  attributes (the run's whole config among them) as JSON, ``session_start_time`` is the trace
  file's ``created``, ``source_script`` the noisynets version.

Example::

    from noisynets.export_nwb import export_nwb
    export_nwb("runs/<run>/trace.h5", "runs/<run>/run.nwb")
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from noisynets.files import write_bytes_atomic
from noisynets.traces import TraceReader, as_reader, metric_sort_key

PASSES = {"clean": "reference", "noisy": "noisy"}
DEFAULT_DT = 1e-3  # seconds per simulated time step (nominal)


def _pynwb() -> Any:
    try:
        import pynwb
    except ImportError:
        raise ValueError("--format nwb needs the pynwb package: pip install 'noisynets[nwb]' "
                         "(or pip install pynwb)") from None
    return pynwb


def network_text(reader: TraceReader) -> str:
    """The traced network in one line, e.g. ``64 -> 40 (LIF, spiking) -> 10 (readout)``."""
    attrs = reader.attributes()
    layers = reader.layers
    parts: list[str] = []
    for i, k in enumerate(layers):
        a = attrs.get(f"/traces/layer_{k}", {})
        if i == 0:
            parts.append("x".join(str(d) for d in a.get("input_shape", [a.get("inputs")])))
        shape = "x".join(str(d) for d in a.get("shape", [a.get("units")]))
        kind = "spiking" if a.get("spiking") else "rate"
        parts.append(f"{shape} (layer {k}, {kind})")
    config = reader.config
    return (f"{' -> '.join(parts)}; rule {config.get('algo', '?')}, unit "
            f"{config.get('unit', '?')}, T = {config.get('time_steps', 1)} time steps, noise "
            f"{config.get('noise', '?')} {config.get('noise_std', '?')}")


def export_nwb(trace: str | Path | TraceReader, out: str | Path, dt: float = DEFAULT_DT
               ) -> Path:
    """Write the NWB file of a trace file (module doc); complete records and evaluations
    only. Returns ``out``."""
    pynwb = _pynwb()
    from hdmf.common import DynamicTable, VectorData

    if not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt {dt!r} must be a number of seconds > 0")
    reader = as_reader(trace)
    out = Path(out)
    attrs = reader.attributes()
    root = attrs.get("/", {})
    config = reader.config
    time_steps = int(config.get("time_steps") or 1)
    steps = reader.steps()
    probe = reader.probe_index()
    records, samples = len(steps), len(probe)
    trials = records * samples
    created = root.get("created")
    try:
        start = datetime.fromisoformat(created) if created else datetime.now().astimezone()
    except ValueError:
        start = datetime.now().astimezone()
    if start.tzinfo is None:
        start = start.astimezone()
    nwb = pynwb.NWBFile(
        session_description=(f"noisynets run: {config.get('algo', '?')} on "
                             f"{config.get('dataset', '?')}, trace file {reader.path.name}"),
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, f"noisynets:{reader.path.resolve()}:"
                                                      f"{created}")),
        session_start_time=start,
        experiment_description=network_text(reader),
        notes=json.dumps(root, default=str),
        source_script=f"noisynets {root.get('noisynets_version', '?')}",
        source_script_file_name="noisynets/export_nwb.py",
    )
    # Trials: every record's every probe sample, T steps each.
    for name, description in (("record", "the trace record (0-based)"),
                              ("step", "the training step of the record"),
                              ("sample", "the probe sample's index in the training set")):
        nwb.add_trial_column(name=name, description=description)
    duration = time_steps * dt
    for r in range(records):
        for p in range(samples):
            j = r * samples + p
            nwb.add_trial(start_time=j * duration, stop_time=(j + 1) * duration, record=r,
                          step=int(steps[r]), sample=int(probe[p]))
    network = nwb.create_processing_module(
        "network", "the probe samples' activity and membrane potential per traced layer")
    rows: dict[str, list[Any]] = {n: [] for n in ("layer", "inputs", "units", "shape", "spiking",
                                                  "traced_units")}
    spiking_layers = []
    for k in reader.layers:
        a = attrs.get(f"/traces/layer_{k}", {})
        index = reader.unit_index(k)
        spiking = bool(a.get("spiking"))
        for name, value in (("layer", k), ("inputs", int(a.get("inputs", 0))),
                            ("units", int(a.get("units", 0))),
                            ("shape", "x".join(str(d) for d in a.get("shape", []))),
                            ("spiking", spiking), ("traced_units", len(index))):
            rows[name].append(value)
        if records == 0:
            continue
        for which, label in PASSES.items():
            activity = reader.activity(k, which).reshape(trials, -1)  # (record, sample) order
            network.add(pynwb.TimeSeries(
                name=f"layer_{k}_activity_{label}", data=activity, unit="a.u.",
                rate=1.0 / duration, starting_time=0.0,
                description=(f"layer {k}, {label} pass: the activity (drive) a = W xh + b of "
                             f"the traced units {_units_text(index)}, summed over the "
                             f"{time_steps} time steps, one value per trial")))
            if spiking:
                membrane = _per_step(reader.membrane(k, which))
                network.add(pynwb.TimeSeries(
                    name=f"layer_{k}_membrane_{label}", data=membrane, unit="a.u.",
                    rate=1.0 / dt, starting_time=0.0,
                    description=(f"layer {k}, {label} pass: the membrane potential of the "
                                 f"traced units {_units_text(index)} after every time step "
                                 "(threshold "
                                 f"{config.get('threshold', '?')}, same units)")))
        if spiking:
            spiking_layers.append((k, index))
    network.add(DynamicTable(
        name="layers", description="the network's layers (numbered from 1) as traced",
        columns=[VectorData(name=n, description=n.replace("_", " "), data=v)
                 for n, v in rows.items()]))
    if spiking_layers and records:
        nwb.add_unit_column(name="layer", description="the layer (numbered from 1)")
        nwb.add_unit_column(name="unit", description="the unit's number in its layer (from 0)")
        nwb.add_unit_column(name="pass", description="reference or noisy pass")
        for k, index in spiking_layers:
            for which, label in PASSES.items():
                spikes = _per_step(reader.spikes(k, which))  # (trials * T, units)
                for column, unit in enumerate(index):
                    times = np.flatnonzero(spikes[:, column]) * dt
                    nwb.add_unit(spike_times=times, layer=k, unit=int(unit), **{"pass": label})
    metrics = reader.metrics()
    names = sorted(metrics, key=metric_sort_key)
    if names:
        training = nwb.create_processing_module("training", "the run's evaluations")
        training.add(DynamicTable(
            name="metrics", description="one row per evaluation (epoch 0: before training); "
                                        "NaN where not measured",
            columns=[VectorData(name=n, description=n.replace("_", " "),
                                data=np.asarray(metrics[n], dtype=np.float64))
                     for n in names]))

    def write(file: Any) -> None:
        with pynwb.NWBHDF5IO(file=file, mode="w") as nwb_io:
            nwb_io.write(nwb)

    write_bytes_atomic(out, hdf5_image(write))
    return out


def hdf5_image(write: Callable[[Any], None]) -> bytes:
    """The bytes of the HDF5 file that ``write(h5py_file)`` makes, made in memory: the file
    on disk is then written whole or not at all (``files.write_bytes_atomic``), and a full
    disk never meets HDF5, which could only print the failure of its own flushes."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        write(f)
    return buffer.getvalue()


def _per_step(values: np.ndarray) -> np.ndarray:
    """``(records, time, probe, units)`` as ``(records * probe * time, units)`` in trial order:
    row ``(r probe + p) T + t``."""
    records, time, probe, units = values.shape
    return np.ascontiguousarray(values.transpose(0, 2, 1, 3)).reshape(records * probe * time,
                                                                       units)


def _units_text(index: np.ndarray) -> str:
    return f"({len(index)}: {', '.join(str(int(u)) for u in index[:8])}" + (
        ", ...)" if len(index) > 8 else ")")
