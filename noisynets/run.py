"""A run: the whole job behind ``noisynets train``, its folder, and continuing or evaluating it.

``train(config)`` resolves the config, loads the data, builds the network, trains, and keeps
its run folder up to date:

* ``results.json`` -- the config and every evaluation, rewritten after every epoch;
* ``trace.h5`` -- metrics every epoch, probe records every ``trace_every`` steps;
* ``model.pt`` -- the trained network (``noisynets.checkpoints``), at every checkpoint and at
  the end; never one with a non-finite weight;
* ``checkpoint.pt`` -- every ``checkpoint_every`` epochs, what ``resume(folder)`` needs to
  continue exactly: a run killed at any moment and resumed ends with the metrics and trace
  file of the same run uninterrupted;
* ``learning_curve.png`` and ``trace.png`` (unless ``figures`` is off);
* ``identity.json`` -- who the run is (``checkpoints.new_identity``), written when it starts.

Every file is written whole or not at all (``noisynets.files``); a full disk stops the run
with one ``ValueError`` and leaves the previous files valid.

An existing, non-empty folder is refused unless ``overwrite``. A step whose loss, activity or
estimate is not finite is skipped and counted; ``max_bad_steps`` in a row stop the run with
``DivergenceError``, which names the layer and what to change, and everything written so far
stays. ``evaluate_run(folder)`` loads a run's model and measures it on the test split.

Started by ``torchrun`` (``WORLD_SIZE > 1``) the run is data-parallel (``noisynets.parallel``):
every process loads the same data and seed and trains on its share of every batch, rank 0
names the run folder and alone writes files and logs, and the run is the one-process run on
the same batches. ``results.json`` records ``world_size``; a checkpoint resumes with any number
of processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from noisynets.checkpoints import (
    CHECKPOINT_FILE,
    FORMAT_VERSION,
    IDENTITY_FILE,
    MODEL_FILE,
    check_fits,
    check_identity,
    check_optimizer,
    config_fields,
    consent_to_model,
    data_digest,
    file_digest,
    load,
    model_state,
    new_identity,
    noise_states,
    random_states,
    read_identity,
    save_atomic,
    set_noise_states,
    set_random_states,
)
from noisynets.config import TrainConfig, resolve
from noisynets.data import Dataset, load_dataset
from noisynets.files import remove_stale, write_text_atomic
from noisynets.models import conv_net, he_normal, load_model
from noisynets.network import Network, Passes, Record
from noisynets.noise import make_noise
from noisynets.parallel import World, decided_by_main, session
from noisynets.precision import difference_dtype
from noisynets.rules import Rule, make_rule, uses_decorrelation
from noisynets.traces import TraceWriter, flatten_metrics
from noisynets.training import (
    Diverged,
    EpochStats,
    check_shardable,
    epoch_stats,
    evaluate,
    fit,
)

RESULTS_FILE = "results.json"
RUN_FILES = (RESULTS_FILE, "trace.h5", "trace.png", "learning_curve.png", MODEL_FILE,
             CHECKPOINT_FILE, IDENTITY_FILE)


class DivergenceError(RuntimeError):
    """A run stopped because its steps kept giving non-finite values (one-line message)."""


@dataclass
class RunResult:
    """A finished (or interrupted) run: its resolved config and one ``EpochStats`` per epoch."""

    config: TrainConfig
    history: list[EpochStats] = field(default_factory=list)
    initial: EpochStats | None = None
    seconds: float = 0.0
    out: str | None = None
    device: str = "cpu"
    precision: str = "float32"  # the difference and estimate products, as resolved
    data_files: str = ""
    world_size: int = 1  # processes that trained it (data-parallel under torchrun)

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else self.initial
        return {
            "algo": self.config.algo,
            "dataset": self.config.dataset,
            "epochs": len(self.history),
            "test_accuracy": last.test_accuracy,
            "test_loss": last.test_loss,
            "train_loss": last.train_loss,
            "val_accuracy": last.val_accuracy,
            "val_loss": last.val_loss,
            "initial_test_accuracy": self.initial.test_accuracy if self.initial else None,
            "skipped_steps": sum(h.skipped_steps for h in self.history),
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "world_size": self.world_size,
            "precision": self.precision,
            "data_files": self.data_files,
            "out": self.out,
            "config": self.config.to_dict(),
            "history": [asdict(h) for h in ([self.initial] if self.initial else [])
                        + self.history],
        }


def choose_device(name: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' is not available (this torch build sees no GPU): use --device cpu, "
            "or install a CUDA build of torch (see the README)"
        )
    return torch.device(name)


def build(config: TrainConfig, data: Dataset) -> tuple[Network, Rule, torch.optim.Optimizer]:
    """The network, rule and optimizer a resolved ``config`` describes: the fully connected
    stack of ``hidden`` (``arch = "mlp"``), the convolutional preset (``"conv"``), or the
    user's own model (``model = "FILE.py:FUNCTION"``). Call ``torch.manual_seed`` first: a
    user's model initialises itself from torch's global generator."""
    if config.model is not None:
        model: list[int] | torch.nn.Module = load_model(config.model)
    elif config.arch == "conv":
        with torch.random.fork_rng(devices=[]):  # the seed sets the weights, below
            model = conv_net(data.input_shape, data.num_classes, config.unit, config.beta,
                             config.threshold)
        g = torch.Generator().manual_seed(config.seed)
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                he_normal(module, g)
    else:
        model = [data.num_features, *config.hidden, data.num_classes]
    network = Network(
        model,
        unit=config.unit,
        noise=make_noise(config.noise, config.noise_std),
        both_noisy=config.both_noisy,
        decorrelation=uses_decorrelation(config.algo),
        decorrelation_lr=config.decor_lr,
        decorrelation_fraction=config.decor_fraction,
        time_steps=config.time_steps,
        encoding=config.encoding,
        loss=config.loss,
        precision=config.precision,
        beta=config.beta,
        threshold=config.threshold,
        threshold_noise=config.threshold_noise,
        seed=config.seed,
    )
    rule = make_rule(config.algo, noise_samples=config.noise_samples)
    rule.check(network)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(network.trained_parameters(), lr=config.lr)
    else:
        optimizer = torch.optim.SGD(network.trained_parameters(), lr=config.lr)
    return network, rule, optimizer


def run_folder(config: TrainConfig, overwrite: bool = False) -> Path:
    """``config.out``, or a new folder ``runs/<time>-<algo>-<dataset>``. A folder that holds
    anything is refused unless ``overwrite``, which removes the files of an earlier run."""
    if config.out is not None:
        path = Path(config.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{config.algo}-{config.dataset.partition(':')[0]}"
        path = Path("runs") / name
        n = 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{name}-{n}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a file: name a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ValueError(
                f"--out {str(path)!r} exists and is not empty: name another folder, add "
                f"--overwrite to replace its run, or --resume {str(path)!r} to continue it")
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create run folder {str(path)!r}: {e.strerror}") from None
    return path


def train(
    config: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    overwrite: bool = False,
) -> RunResult:
    """The whole job: resolve ``config``, train, and write the run folder (module doc)."""
    config = resolve(config)
    return _start(config, lambda: run_folder(config, overwrite), None, progress, log)


def resume(
    folder: str | Path,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    threads: int | None = None,
    model: str | None = None,
    trust_model: bool = False,
) -> RunResult:
    """Continue the run in ``folder`` from its last checkpoint (from the start when it was
    killed before its first one), with its own settings; ``threads`` may differ.

    The checkpoint is checked before use (``checkpoints.CHECKPOINT_SCHEMA``, its identity
    against the folder's ``identity.json``, every tensor against the network its config
    builds). A run trained with ``--model FILE.py:FN`` imports its model file only when
    ``model`` names it again (the same content as when the run started) or ``trust_model``:
    a run folder alone never runs code."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--resume {str(folder)!r}: no such run folder")
    remove_stale(folder)
    checkpoint = None
    if (folder / CHECKPOINT_FILE).exists() or (folder / CHECKPOINT_FILE).is_symlink():
        path = folder / CHECKPOINT_FILE
        checkpoint = load(path, "checkpoint")
        fields = config_fields(checkpoint, path)
        check_identity(checkpoint, folder, path)
        recorded = checkpoint["run"].get("model") if checkpoint["version"] >= 2 else None
    elif (folder / RESULTS_FILE).exists():
        path = folder / RESULTS_FILE
        try:
            fields = json.loads(path.read_text())["config"]
            if not isinstance(fields, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ValueError(f"--resume: {str(path)!r} is damaged and there "
                             "is no checkpoint: start the run again") from None
        fields = config_fields({"config": fields}, path)
        identity = read_identity(folder)
        recorded = None if identity is None else identity["model"]
    else:
        raise ValueError(f"--resume {str(folder)!r}: it holds no run (no {CHECKPOINT_FILE}, no "
                         f"{RESULTS_FILE})")
    if fields.get("model") is not None:
        fields["model"] = consent_to_model(str(fields["model"]), recorded or None, model,
                                           trust_model)
    config = resolve(TrainConfig(**{**fields, "out": str(folder)}))
    if threads is not None:
        config = dataclasses.replace(config, threads=threads)
    if checkpoint is None:
        return _start(config, lambda: run_folder(config, overwrite=True), None, progress, log)
    if checkpoint["epoch"] >= config.epochs and (folder / MODEL_FILE).exists():
        raise ValueError(f"--resume {str(folder)!r}: the run finished all {config.epochs} "
                         "epochs already")
    return _start(config, lambda: folder, checkpoint, progress, log)


def _start(
    config: TrainConfig,
    folder: Callable[[], Path],
    checkpoint: dict[str, Any] | None,
    progress: bool,
    log: Callable[[str], None] | None,
) -> RunResult:
    """``_run`` in the run folder ``folder()`` names; under torchrun in every process, with
    the folder named by rank 0."""
    with session(choose_device(config.device)) as world:
        out = decided_by_main(folder, world)
        return _run(config, out, checkpoint, progress, log, world)


def _run(
    config: TrainConfig,
    out: Path,
    checkpoint: dict[str, Any] | None,
    progress: bool,
    log: Callable[[str], None] | None,
    world: World | None = None,
) -> RunResult:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = choose_device(config.device) if world is None else world.device
    main = world is None or world.main  # the process that writes files and logs
    if not main:
        progress, log = False, None
    if main:
        remove_stale(out)  # what a killed run left half-written
    data = load_dataset(config.dataset, config.data_root)
    identity = run_identity(config, data, out, checkpoint, main)
    if config.val_fraction > 0:
        data = data.with_validation(config.val_fraction)
    if config.standardize:
        data = data.standardized()
    torch.manual_seed(config.seed)
    network, rule, optimizer = build(config, data)
    network.to(device)
    data = to_device(data, device)
    if world is not None:
        check_shardable(data, config.batch_size, world)
    validation = None if data.val_x is None else (data.val_x, data.val_y)
    precision = difference_dtype(config.precision, data.train_x.dtype, device)
    result = RunResult(config=config, out=str(out), device=str(device),
                       precision=str(precision).removeprefix("torch."), data_files=data.origin,
                       world_size=1 if world is None else world.size)
    shapes = model_shapes(network, data, config)
    generator = torch.Generator().manual_seed(config.seed)  # the order of the data
    start = time.perf_counter()
    first_epoch, step = 1, 0
    if checkpoint is not None:
        path = out / CHECKPOINT_FILE
        check_fits(checkpoint["network"], network.state_dict(), path)
        check_optimizer(checkpoint["optimizer"], optimizer, path)
        try:
            network.load_state_dict(checkpoint["network"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            noise = checkpoint["noise"]
            set_noise_states(network, noise if world is None else on_device(noise, device))
            generator.set_state(checkpoint["data_order"])
            with torch.random.fork_rng(devices=[]):  # only a check: applied below
                set_random_states(checkpoint["random"])
        except (RuntimeError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"{str(path)!r} does not fit the run its config builds "
                             f"({' '.join(str(e).split())[:120]}): start the run "
                             "again") from None
        result.initial = EpochStats(**checkpoint["initial"])
        result.history = [EpochStats(**h) for h in checkpoint["history"]]
        first_epoch, step = checkpoint["epoch"] + 1, checkpoint["step"]
        start -= checkpoint["seconds"]
    writer = probe_x = probe_y = None
    if config.trace_every > 0 and main:
        if checkpoint is not None:
            writer = TraceWriter.resume(out / "trace.h5", checkpoint["trace_records"],
                                        1 + len(result.history))
        else:
            probe_index = torch.arange(min(config.trace_probe, data.train_x.shape[0]))
            steps = config.epochs * math.ceil(data.train_x.shape[0] / config.batch_size)
            writer = TraceWriter(
                out / "trace.h5", [s["units"] for s in shapes],
                [layer.spiking for layer in network.layers], network.time_steps, probe_index,
                attrs=trace_attributes(config, device, data.origin),
                layers=config.trace_layers, units=config.trace_units,
                spike_events=config.spike_events, inputs=[s["inputs"] for s in shapes],
                shapes=[(s["input_shape"], s["shape"]) for s in shapes],
                records=1 + steps // config.trace_every, evaluations=1 + config.epochs,
                metrics=metric_names(network.num_layers),
            )
        index = torch.arange(writer.probe, device=device)
        probe_x, probe_y = data.train_x[index], data.train_y[index]

    def save_results() -> None:
        if not main:
            return
        text = json.dumps(strict_json(result.summary()), indent=2, allow_nan=False) + "\n"
        write_text_atomic(out / RESULTS_FILE, text)

    def save_model() -> None:
        if main and all(bool(torch.isfinite(p).all()) for p in network.parameters()):
            save_atomic(model_state(network, config.to_dict(), identity), out / MODEL_FILE)

    def trace(step: int) -> None:
        if writer is not None and step % config.trace_every == 0:
            writer.append_record(step, probe_record(network, probe_x, probe_y))

    def save_checkpoint(stats: EpochStats) -> None:
        if not main:
            return
        save_atomic({
            "format": "noisynets-checkpoint", "version": FORMAT_VERSION,
            "noisynets_version": trace_attributes(config, device)["noisynets_version"],
            "run": identity, "config": config.to_dict(),
            "epoch": stats.epoch, "step": stats.step, "seconds": stats.seconds,
            "network": network.state_dict(), "optimizer": optimizer.state_dict(),
            "noise": noise_states(network), "random": random_states(),
            "data_order": generator.get_state(),
            "initial": asdict(result.initial), "history": [asdict(h) for h in result.history],
            "trace_records": 0 if writer is None else writer.records,
        }, out / CHECKPOINT_FILE)
        save_model()

    emit = log or (lambda line: None)
    emit(f"{config.algo} on {config.dataset}: {describe(network, shapes)}, "
         f"{plural(config.epochs, 'epoch')}, batch {config.batch_size}, lr {config.lr:g}, "
         f"noise {config.noise} {config.noise_std:g}, device {device}, run folder {out}")
    emit(f"data: {data.origin}")
    if checkpoint is None:
        train_split = (data.train_x, data.train_y)
        probe = (data.train_x[: config.batch_size], data.train_y[: config.batch_size])
        result.initial = epoch_stats(network, rule, (data.test_x, data.test_y), probe, 0,
                                     start, train=train_split, validation=validation,
                                     final=False)
        if writer is not None:
            writer.append_metrics(asdict(result.initial))
        trace(0)
    else:
        set_random_states(checkpoint["random"])
        if world is not None and device.type == "cuda" and checkpoint["random"]["cuda"]:
            torch.cuda.set_rng_state(checkpoint["random"]["cuda"][0], device)  # rank 0's GPU
        emit(f"continuing after epoch {checkpoint['epoch']} (step {step})")
    split = "val" if validation is not None else "test"
    emit(f"{'epoch':>5} {'train loss':>10} {split + ' loss':>9} {split + ' acc':>8} "
         f"{'alignment':>9}" + ("   (test split: after the last epoch)" if validation
                                is not None else ""))
    for stats in [result.initial, *result.history]:
        emit(_row(stats))

    def on_epoch(stats: EpochStats) -> None:
        result.history.append(stats)
        result.seconds = time.perf_counter() - start
        if writer is not None:
            writer.append_metrics(asdict(stats))
        save_results()
        every = config.checkpoint_every
        if every and (stats.epoch % every == 0 or stats.epoch == config.epochs):
            save_checkpoint(stats)
        line = _row(stats)
        if validation is not None and stats.test_loss is not None:
            line += f"   test loss {stats.test_loss:.4f}" + (
                "" if stats.test_accuracy is None else f", test acc {stats.test_accuracy:.4f}")
        if progress:
            tqdm.write(line, file=sys.stdout)
        else:
            emit(line)

    try:
        try:
            fit(network, rule, optimizer, data, config.epochs, config.batch_size,
                seed=config.seed, progress=progress, on_epoch=on_epoch, on_step=trace,
                name=config.algo, max_bad_steps=config.max_bad_steps, first_epoch=first_epoch,
                first_step=step, generator=generator, start=start, world=world)
            save_model()
        except Diverged as e:
            raise DivergenceError(
                f"training diverged: {e}, so nothing was applied; lower --lr (now "
                f"{config.lr:g}) or --noise-std (now {config.noise_std:g}). Everything up to "
                f"the last good step is in {out}") from None
    except BaseException:
        # Already failing (a full disk, an interrupt): keep what can still be written, and
        # let the first error be the one reported.
        result.seconds = time.perf_counter() - start
        _quietly(save_results)
        _quietly(lambda: finish_figures(result, writer, out, main and config.figures))
        raise
    result.seconds = time.perf_counter() - start
    save_results()
    finish_figures(result, writer, out, main and config.figures)
    return result


def finish_figures(result: RunResult, writer: TraceWriter | None, out: Path,
                   figures: bool) -> None:
    """``learning_curve.png`` and ``trace.png``, each written whole or not at all."""
    from noisynets.plots import learning_curve, trace_figure

    if not figures:
        return
    if result.history:
        learning_curve(result, out / "learning_curve.png")
    if writer is not None and writer.records:
        trace_figure(writer.path, out / "trace.png")


def _quietly(write: Callable[[], None]) -> None:
    try:
        write()
    except (OSError, ValueError, RuntimeError):
        pass


def run_identity(config: TrainConfig, data: Dataset, out: Path,
                 checkpoint: dict[str, Any] | None, main: bool = True) -> dict[str, str]:
    """The run's identity (``checkpoints.new_identity``): made and written to
    ``identity.json`` when the run starts; on resume the recorded one, whose data digest
    must be that of the data loaded now."""
    digest = data_digest(data.train_x, data.train_y, data.test_x, data.test_y)
    if checkpoint is not None:
        recorded = read_identity(out) or checkpoint.get("run") or None
    if checkpoint is None or recorded is None:
        source = None if config.model is None else Path(config.model.rpartition(":")[0])
        model = file_digest(source) if source is not None and source.is_file() else ""
        identity = new_identity(config.to_dict(), digest, model)
        if main:
            write_text_atomic(out / IDENTITY_FILE, json.dumps(identity, indent=2) + "\n")
        return identity
    if recorded["data"] != digest:
        raise ValueError(f"the data set {config.dataset!r} ({data.origin}) is not the one the "
                         f"run in {str(out)!r} started with: resuming needs the same data")
    return recorded


def on_device(states: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Noise states (``checkpoints.noise_states``) whose CUDA generators move to ``device``:
    every rank of a data-parallel run continues the streams rank 0 saved, on its own GPU."""
    if device.type != "cuda":
        return states
    return [{**s, "generator": (str(device), s["generator"][1])}
            if s["generator"] is not None and s["generator"][0].startswith("cuda") else s
            for s in states]


def load_network(
    folder: str | Path, dataset: str | None = None, data_root: str | None = None,
    model: str | None = None, trust_model: bool = False,
) -> tuple[Network, TrainConfig, Dataset]:
    """The trained network of the run in ``folder`` (its ``model.pt``, decorrelators included),
    rebuilt from the run's config, on the run's device (CPU if it has no GPU now); with the
    config and the data set (or ``dataset``) it was built for. ``model.pt`` is checked before
    use (``checkpoints.MODEL_SCHEMA``, its identity, every tensor); a ``--model`` run's file
    is imported only when ``model`` names it again or ``trust_model`` (see ``resume``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"run folder {str(folder)!r} does not exist or is not a folder")
    path = folder / MODEL_FILE
    state = load(path, "model")
    fields = config_fields(state, path)
    check_identity(state, folder, path)
    if fields.get("model") is not None:
        recorded = state["run"].get("model") if state["version"] >= 2 else None
        fields["model"] = consent_to_model(str(fields["model"]), recorded or None, model,
                                           trust_model)
    config = resolve(TrainConfig(**{**fields, "out": str(folder)}))
    if dataset is not None:
        config = resolve(dataclasses.replace(config, dataset=dataset))
    if data_root is not None:
        config = dataclasses.replace(config, data_root=data_root)
    if config.device == "cuda" and not torch.cuda.is_available():
        config = dataclasses.replace(config, device="cpu")
    device = choose_device(config.device)
    data = load_dataset(config.dataset, config.data_root)
    if config.standardize:
        data = data.standardized()
    torch.manual_seed(config.seed)
    network, _, _ = build(config, data)
    check_fits(state["network"], network.state_dict(), path)
    try:
        network.load_state_dict(state["network"])
    except RuntimeError as e:
        raise ValueError(f"{str(folder / MODEL_FILE)!r} does not fit the network its config "
                         f"describes ({str(e).splitlines()[0]})") from None
    return network.to(device), config, to_device(data, device)


def evaluate_run(
    folder: str | Path, dataset: str | None = None, data_root: str | None = None,
    model: str | None = None, trust_model: bool = False,
) -> dict[str, Any]:
    """Load the model of the run in ``folder`` and measure it on the test split of its data
    set (or of ``dataset``): ``{"test_loss", "test_accuracy", "samples", "dataset", ...}``;
    ``model``, ``trust_model``: as for ``load_network``."""
    network, config, data = load_network(folder, dataset, data_root, model, trust_model)
    loss, accuracy = evaluate(network, data.test_x, data.test_y)
    return {"run": str(folder), "dataset": config.dataset, "data_files": data.origin,
            "samples": int(data.test_x.shape[0]), "test_loss": loss, "test_accuracy": accuracy}


def metric_names(layers: int) -> list[str]:
    """The names of an evaluation's metrics in the trace file, for ``layers`` layers."""
    fields = {f.name: [0.0] * layers if f.name in ("alignment", "decorrelation",
                                                   "estimate_norm") else 0.0
              for f in dataclasses.fields(EpochStats)}
    return list(flatten_metrics(fields))


def network_shapes(network: Network, x: Tensor, y: Tensor) -> list[dict[str, Any]]:
    """Per layer: its (flattened) input and node counts, and one sample's input and node
    shapes, from a clean forward of ``x`` that leaves the noise streams untouched."""
    with torch.no_grad(), network.untouched_noise():
        record = network.run(x, y, Passes.clean(network.num_layers))
    return [dict(inputs=int(seen.shape[-1]), units=int(a.shape[-1]),
                 input_shape=list(layer.in_shape), shape=list(layer.node_shape))
            for layer, seen, a in zip(network.layers, record.inputs, record.activity)]


def model_shapes(network: Network, data: Dataset, config: TrainConfig
                 ) -> list[dict[str, Any]]:
    """``network_shapes`` of one training sample, or a ``ValueError`` saying why the
    network cannot take the data set's samples or give one output per class."""
    try:
        shapes = network_shapes(network, data.train_x[:1], data.train_y[:1])
    except (RuntimeError, IndexError, ValueError, TypeError) as e:
        raise ValueError(f"the network does not fit the data set {config.dataset!r} (samples "
                         f"of shape {tuple(data.input_shape)}, {data.num_classes} outputs): "
                         f"{' '.join(str(e).split())[:160]}") from None
    if shapes[-1]["units"] != data.num_classes:
        raise ValueError(f"the network has {shapes[-1]['units']} outputs, the data set "
                         f"{config.dataset!r} needs {data.num_classes}: make its last layer "
                         f"that wide")
    return shapes


def describe(network: Network, shapes: list[dict[str, Any]]) -> str:
    """``[64, 1000, 10]`` for a dense stack; ``1x28x28 -> 16x28x28 -> ... -> 10`` else."""
    if network.sizes is not None:
        return str(network.sizes)
    parts = [shapes[0]["input_shape"]] + [s["shape"] for s in shapes]
    return " -> ".join("x".join(str(d) for d in shape) for shape in parts)


def probe_record(network: Network, x: Tensor, y: Tensor) -> Record:
    """A reference and a noisy pass of the probe samples, with spikes and membrane kept; the
    noise streams are left as they were, so tracing does not change the run."""
    with torch.no_grad(), network.untouched_noise():
        passes = Passes.perturbed(network.num_layers, 1, network.both_noisy)
        return network.run(x, y, passes, keep_states=True)


def trace_attributes(config: TrainConfig, device: torch.device, data_files: str = ""
                     ) -> dict[str, Any]:
    """The attributes of a run's trace file (docs/traces.md, "Attributes")."""
    import noisynets

    return {
        "noisynets_version": noisynets.__version__,
        "torch_version": torch.__version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "seed": config.seed,
        "data_files": data_files,
        "config": config.to_dict(),
    }


def to_device(data: Dataset, device: torch.device) -> Dataset:
    """``data`` with its tensors on ``device`` and every sample in its ``input_shape``."""
    shape = data.input_shape
    validation = {} if data.val_x is None else dict(
        val_x=data.val_x.to(device).view(-1, *shape), val_y=data.val_y.to(device))
    return dataclasses.replace(
        data,
        train_x=data.train_x.to(device).view(-1, *shape), train_y=data.train_y.to(device),
        test_x=data.test_x.to(device).view(-1, *shape), test_y=data.test_y.to(device),
        **validation,
    )


def plural(count: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``: strict JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _row(stats: EpochStats) -> str:
    """An epoch's line of the table: the validation split's numbers where there is one."""
    mean_alignment = sum(stats.alignment) / len(stats.alignment)
    validating = stats.val_loss is not None
    loss = stats.val_loss if validating else stats.test_loss
    acc = stats.val_accuracy if validating else stats.test_accuracy
    test_loss = "-" if loss is None else f"{loss:.4f}"
    accuracy = "-" if acc is None else f"{acc:.4f}"
    return (f"{stats.epoch:>5} {stats.train_loss:>10.4f} {test_loss:>9} "
            f"{accuracy:>8} {mean_alignment:>9.3f}")
