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
    identity_version,
    load,
    model_state,
    new_identity,
    noise_states,
    random_states,
    read_identity,
    save_atomic,
    sealed,
    set_noise_states,
    set_random_states,
)
from noisynets.config import TrainConfig, check_threads, preset_names, resolve
from noisynets.core.network import Network
from noisynets.core.noise import generator_in_use, use_generator
from noisynets.core.precision import difference_dtype
from noisynets.core.record import Passes, Record
from noisynets.core.units import set_reset
from noisynets.data import DataSplits, load_dataset
from noisynets.describe import describe, describe_layers, model_shapes
from noisynets.files import RUN_FILE_NAMES, remove_stale, write_text_atomic
from noisynets.firing import firing_warnings
from noisynets.hooks import (
    METRICS_FILE,
    STEPS_FILE,
    TENSORBOARD_FOLDER,
    EarlyStopping,
    Hook,
    MetricsCSV,
    StepLossCSV,
    TensorBoard,
    summary_writer_class,
)
from noisynets.inference import input_spec
from noisynets.models import conv_net, he_normal, load_model
from noisynets.parallel import World, decided_by_main, session
from noisynets.rules import NOISELESS, Rule, make_rule, uses_decorrelation
from noisynets.traces import TraceWriter, flatten_metrics
from noisynets.training import (
    Diverged,
    EpochStats,
    check_shardable,
    epoch_stats,
    evaluate,
    fit,
    probe_split,
)

RESULTS_FILE = "results.json"
RUN_FILES = RUN_FILE_NAMES  # every file a run writes in its folder (and tensorboard/)


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
    generator: str = "torch"  # that drew the Gaussian noise, as resolved (generator_in_use)
    data_files: str = ""
    world_size: int = 1  # processes that trained it (data-parallel under torchrun)
    layers: list[dict[str, Any]] = field(default_factory=list)  # what the network really is
    model: dict[str, Any] = field(default_factory=dict)  # the model as a whole (describe)

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
            "stopped_early": any(h.stopped for h in self.history),
            "lr_schedule": self.schedule(),
            "skipped_steps": sum(h.skipped_steps for h in self.history),
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "world_size": self.world_size,
            "precision": self.precision,
            "generator": self.generator,
            "data_files": self.data_files,
            "out": self.out,
            "config": self.config.to_dict(),
            "layers": self.layers,
            "model": self.model,
            "history": [asdict(h) for h in ([self.initial] if self.initial else [])
                        + self.history],
        }


    def schedule(self) -> dict[str, Any]:
        """The learning rate's schedule and the rate of every epoch's steps (epoch 0: the
        starting rate)."""
        c = self.config
        epochs = ([self.initial] if self.initial else []) + self.history
        return {"schedule": c.lr_schedule, "lr": c.lr, "lr_step": c.lr_step,
                "lr_gamma": c.lr_gamma, "optimizer": c.optimizer,
                "weight_decay": c.weight_decay, "momentum": c.momentum,
                "clip_grad": c.clip_grad, "early_stopping": c.early_stopping,
                "lr_by_epoch": [h.lr for h in epochs]}


def choose_device(name: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' is not available (this torch build sees no GPU): use --device cpu, "
            "or install a CUDA build of torch (docs/install.md)"
        )
    return torch.device(name)


def build(config: TrainConfig, data: DataSplits) -> tuple[Network, Rule, torch.optim.Optimizer]:
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
        model = [data.step_features, *config.hidden, data.num_classes]
    network = Network(
        model,
        unit=config.unit,
        noise=config.noise,
        noise_std=config.noise_std,
        readout_noise_std=config.readout_noise_std,
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
        per_step=config.per_step,
        readout=config.readout,
        seed=config.seed,
        weight_noise=config.weight_noise,
        adc=config.adc,
        local_losses=config.local_losses,
    )
    set_reset(network, config.reset)
    use_generator(network, config.generator)
    rule = make_rule(config.algo, noise_samples=config.noise_samples,
                     antithetic=bool(config.antithetic), seed=config.seed)
    rule.check(network)
    rule.prepare(network, torch.zeros(1, *data.input_shape))
    return network, rule, make_optimizer(config, network.trained_parameters())


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
        recorded = (checkpoint["run"].get("model")
                    if checkpoint["version"] >= identity_version("checkpoint") else None)
    elif (folder / RESULTS_FILE).exists():
        path = folder / RESULTS_FILE
        try:
            if not path.is_file():  # a FIFO would block the read
                raise OSError
            fields = json.loads(path.read_text())["config"]
            if not isinstance(fields, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
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
        config = dataclasses.replace(config, threads=check_threads(threads))
    if checkpoint is None:
        return _start(config, lambda: run_folder(config, overwrite=True), None, progress, log)
    if any(h.get("stopped") for h in checkpoint["history"]):
        raise ValueError(f"--resume {str(folder)!r}: the run stopped early after epoch "
                         f"{checkpoint['epoch']} (--early-stopping): it is finished")
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
    the folder named by rank 0. A new run refused before it trains (bad data, a model the rule
    cannot train, a trace file the disk has no room for) leaves no folder behind that it
    made, and none of the files it had begun (``identity.json``, ``trace.h5``, the logs), so
    the same ``--out`` can be used again; a resumed run's folder keeps everything."""
    if config.tensorboard:
        summary_writer_class()  # refused before the folder is made
    with session(choose_device(config.device)) as world:
        out = decided_by_main(folder, world)
        main = world is None or world.main
        before = set(_entries(out)) if main and checkpoint is None else None
        try:
            prepared = _prepare(config, out, checkpoint, progress, log, world)
        except BaseException:
            if before is not None:
                remove_new_files(out, before)
            if main:
                remove_if_empty(out)
            raise
        try:
            return _train(prepared)
        except BaseException:
            if main:
                remove_if_empty(out)
            raise


def remove_if_empty(folder: Path) -> None:
    """``folder`` and the empty folders above it that ``run_folder`` made, removed while they
    are empty (a refused run leaves nothing in the tree)."""
    for path in [folder, *[p for p in folder.parents if p == Path("runs")]]:
        try:
            path.rmdir()
        except OSError:
            return  # not empty, or not there


def _entries(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in folder.iterdir()]
    except OSError:
        return []


def remove_new_files(folder: Path, before: set[str]) -> None:
    """The run files and temporaries in ``folder`` that were not among ``before`` (the names
    there when the run began), removed: what a refused run had begun."""
    import shutil

    for name in set(_entries(folder)) - before:
        path = folder / name
        if name not in (*RUN_FILES, TENSORBOARD_FOLDER) and ".tmp-" not in name:
            continue  # not the run's: left alone
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            pass


@dataclass
class RunState:
    """What the pieces of a run share: its config and folder, the trained objects, the data
    order, the results so far and the trace file (``None`` when not tracing or not rank 0)."""

    config: TrainConfig
    out: Path
    network: Network
    rule: Rule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    result: RunResult
    writer: TraceWriter | None
    main: bool
    start: float
    inputs: dict[str, Any] | None = None  # what inference needs of the data (model.pt)
    identity: dict[str, str] | None = None  # the run's identity (identity.json)

    def save_results(self) -> None:
        if self.main:
            text = json.dumps(strict_json(self.result.summary()), indent=2,
                              allow_nan=False) + "\n"
            write_text_atomic(self.out / RESULTS_FILE, text)

    def save_model(self) -> None:
        if self.main and all(bool(torch.isfinite(p).all()) for p in self.network.parameters()):
            save_atomic(model_state(self.network, self.config.to_dict(), self.inputs,
                                    self.identity), self.out / MODEL_FILE)

    def save_checkpoint(self, stats: EpochStats) -> None:
        import noisynets

        if not self.main:
            return
        save_atomic(sealed({
            "format": "noisynets-checkpoint", "version": FORMAT_VERSION,
            "noisynets_version": noisynets.__version__,
            "run": self.identity or {}, "config": self.config.to_dict(),
            "epoch": stats.epoch, "step": stats.step, "seconds": stats.seconds,
            "network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "noise": noise_states(self.network), "random": random_states(),
            "data_order": self.generator.get_state(),
            "initial": asdict(self.result.initial),
            "history": [asdict(h) for h in self.result.history],
            "trace_records": 0 if self.writer is None else self.writer.records,
        }), self.out / CHECKPOINT_FILE)
        self.save_model()


class Results(Hook):
    """Every epoch into the run's history and ``results.json``; at the end the final time."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def on_epoch(self, stats: EpochStats) -> None:
        if stats.epoch == 0:  # before training
            self.state.result.initial = stats
            return
        self.state.result.history.append(stats)
        self.state.result.seconds = time.perf_counter() - self.state.start
        self.state.save_results()

    def close(self) -> None:
        self.state.result.seconds = time.perf_counter() - self.state.start
        self.state.save_results()


class Checkpoints(Hook):
    """``checkpoint.pt`` and ``model.pt`` every ``checkpoint_every`` epochs and after the last
    (also after an early stop)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def on_epoch(self, stats: EpochStats) -> None:
        every, epochs = self.state.config.checkpoint_every, self.state.config.epochs
        due = stats.epoch % every == 0 or stats.epoch == epochs or stats.stopped if every else False
        if stats.epoch > 0 and due:
            self.state.save_checkpoint(stats)


class Tracing(Hook):
    """The probe samples' record every ``trace_every`` steps and every evaluation's metrics
    into ``trace.h5``."""

    def __init__(self, state: RunState, probe: tuple[Tensor, Tensor]) -> None:
        self.state, self.probe = state, probe

    def on_step(self, step: int, loss: Tensor) -> None:
        self.record(step)

    def record(self, step: int) -> None:
        if step % self.state.config.trace_every == 0:
            self.state.writer.append_record(step, probe_record(self.state.network, *self.probe))

    def on_epoch(self, stats: EpochStats) -> None:
        self.state.writer.append_metrics(asdict(stats))
        if stats.epoch == 0:
            self.record(0)


class Table(Hook):
    """The console's table: a line per epoch, through the progress bar when there is one."""

    def __init__(self, emit: Callable[[str], None], progress: bool, schedule: bool,
                 patience: int, network: Network | None = None, time_steps: int = 1,
                 noise_std: float | None = None) -> None:
        self.emit, self.progress, self.schedule = emit, progress, schedule
        self.patience = patience
        # The network, for the first epoch's warning on silent or saturated spiking layers.
        self.network, self.time_steps, self.noise_std = network, time_steps, noise_std

    def on_epoch(self, stats: EpochStats) -> None:
        line = _row(stats, self.schedule)
        if stats.epoch == 1 and stats.firing_rate and self.network is not None:
            for warning in firing_warnings(self.network, stats.firing_rate, self.time_steps,
                                           self.noise_std):  # one line per silent layer
                if self.progress:
                    with tqdm.external_write_mode(file=sys.stdout):
                        self.emit(warning)
                else:
                    self.emit(warning)
        if stats.val_loss is not None and stats.test_loss is not None:
            line += f"   test loss {stats.test_loss:.4f}" + (
                "" if stats.test_accuracy is None else f", test acc {stats.test_accuracy:.4f}")
        if stats.stopped:
            line += "   early stop: no lower validation loss for " + plural(
                self.patience, "epoch")
        if self.progress:
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()
        else:
            self.emit(line)


class Figures(Hook):
    """``learning_curve.png`` and ``trace.png`` at the end (unless ``figures`` is off)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def close(self) -> None:
        from noisynets.plots import learning_curve, trace_figure

        state = self.state
        if state.result.history and state.main and state.config.figures:
            learning_curve(state.result, state.out / "learning_curve.png")
        if state.writer is not None and state.writer.records and state.config.figures:
            trace_figure(state.writer.path, state.out / "trace.png")


@dataclass
class Prepared:
    """A run ready to train (``_prepare``): its state, data and hooks, where to start."""

    state: RunState
    data: DataSplits
    hooks: list[Hook]
    emit: Callable[[str], None]
    progress: bool
    checkpoint: dict[str, Any] | None
    first_epoch: int
    step: int
    early: EarlyStopping | None
    device: torch.device
    world: World | None
    network_text: str


def _run(
    config: TrainConfig,
    out: Path,
    checkpoint: dict[str, Any] | None,
    progress: bool,
    log: Callable[[str], None] | None,
    world: World | None = None,
) -> RunResult:
    """The run in ``out``: prepared (``_prepare``), then trained (``_train``)."""
    return _train(_prepare(config, out, checkpoint, progress, log, world))


def _prepare(
    config: TrainConfig,
    out: Path,
    checkpoint: dict[str, Any] | None,
    progress: bool,
    log: Callable[[str], None] | None,
    world: World | None = None,
) -> Prepared:
    """Everything before the first line of the run: data, identity, network, the state of a
    checkpoint, the trace file and the other hooks. An error here refuses the run."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = choose_device(config.device) if world is None else world.device
    main = world is None or world.main  # the process that writes files and logs
    if not main:
        progress, log = False, None
    emit = log or (lambda line: None)
    if main:
        remove_stale(out)  # what a killed run left half-written
    data, inputs, digest = prepare_data(config, device, world)
    identity = run_identity(config, data, digest, out, checkpoint, main)
    torch.manual_seed(config.seed)
    network, rule, optimizer = build(config, data)
    network.to(device)
    precision = difference_dtype(config.precision, data.train_x.dtype, device)
    result = RunResult(config=config, out=str(out), device=str(device),
                       precision=str(precision).removeprefix("torch."), data_files=data.origin,
                       world_size=1 if world is None else world.size,
                       generator=generator_in_use(config.generator, device))
    state = RunState(config, out, network, rule, optimizer, make_scheduler(config, optimizer),
                     torch.Generator().manual_seed(config.seed),  # the order of the data
                     result, None, main, time.perf_counter(), inputs, identity)
    shapes, model = model_shapes(network, data, config)
    result.layers = describe_layers(network, shapes)
    result.model = model
    first_epoch, step = 1, 0
    if checkpoint is not None:
        first_epoch, step = restore(state, checkpoint, world, device)
    probe = open_trace(state, data, shapes, checkpoint) if config.trace_every > 0 else None
    hooks = run_hooks(state, probe, emit, progress, checkpoint)
    early = (EarlyStopping(config.early_stopping, result.history)
             if config.early_stopping else None)
    return Prepared(state, data, hooks, emit, progress, checkpoint, first_epoch, step, early,
                    device, world, describe(network, shapes, model))


def _train(prepared: Prepared) -> RunResult:
    """The prepared run: its first lines, the initial evaluation (or a checkpoint's rows),
    ``fit``, the model file, and every hook closed."""
    state, data, hooks, emit = prepared.state, prepared.data, prepared.hooks, prepared.emit
    checkpoint, world, device = prepared.checkpoint, prepared.world, prepared.device
    config, result, step = state.config, state.result, prepared.step

    def on_loss(step: int, loss: Tensor) -> None:
        for hook in hooks:
            hook.on_step(step, loss)

    def on_epoch(stats: EpochStats) -> None:
        for hook in hooks:
            hook.on_epoch(stats)

    emit(header(state, prepared.network_text, device, world))
    emit(f"data: {data.origin}")
    if checkpoint is not None:
        set_random_states(checkpoint["random"])
        if world is not None and device.type == "cuda" and checkpoint["random"]["cuda"]:
            torch.cuda.set_rng_state(checkpoint["random"]["cuda"][0], device)  # rank 0's GPU
        emit(f"continuing after epoch {checkpoint['epoch']} (step {step})")
    emit(table_header(data.val_x is not None, state.scheduler is not None))
    if checkpoint is None:
        on_epoch(initial_stats(state, data))  # epoch 0, before training
    else:
        for stats in [result.initial, *result.history]:
            emit(_row(stats, state.scheduler is not None))

    try:
        try:
            fit(state.network, state.rule, state.optimizer, data, config.epochs,
                config.batch_size, seed=config.seed, progress=prepared.progress,
                on_epoch=on_epoch, on_loss=on_loss, name=config.algo,
                max_bad_steps=config.max_bad_steps, first_epoch=prepared.first_epoch,
                first_step=step, generator=state.generator, start=state.start, world=world,
                scheduler=state.scheduler, clip_grad=config.clip_grad, stop=prepared.early,
                probe_batches=config.probe_batches)
            state.save_model()
        except Diverged as e:
            raise DivergenceError(
                f"training diverged: {e}, so nothing was applied; lower --lr (now "
                f"{config.lr:g}) or --noise-std (now {config.noise_std:g}). Everything up to "
                f"the last good step is in {state.out}") from None
    except BaseException:
        # Already failing (a full disk, an interrupt): keep what can still be written, and
        # let the first error be the one reported.
        for hook in hooks:
            _quietly(hook.close)
        raise
    for hook in hooks:
        hook.close()
    return result


def _quietly(write: Callable[[], None]) -> None:
    try:
        write()
    except (OSError, ValueError, RuntimeError):
        pass


def run_identity(config: TrainConfig, data: DataSplits, digest: str, out: Path,
                 checkpoint: dict[str, Any] | None, main: bool = True) -> dict[str, str]:
    """The run's identity (``checkpoints.new_identity``): made and written to
    ``identity.json`` when the run starts; on resume the recorded one, whose data digest
    (``digest``, of the data set as loaded) must be that of the data loaded now."""
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


def prepare_data(config: TrainConfig, device: torch.device, world: World | None
                 ) -> tuple[DataSplits, dict[str, Any], str]:
    """The run's data set: loaded, its validation split held out, standardized if asked, on
    ``device``; checked to split over ``world``'s processes. With what inference needs of it
    (``inference.input_spec``: shapes and the standardisation) and the digest of the data as
    loaded (``checkpoints.data_digest``, the run identity's ``data``)."""
    data = load_dataset(config.dataset, config.data_root)
    digest = data_digest(data.train_x, data.train_y, data.test_x, data.test_y)
    if config.val_fraction > 0:
        data = data.with_validation(config.val_fraction)
    inputs = input_spec(data, bool(config.standardize))
    if config.standardize:
        data = data.standardized()
    data = to_device(data, device)
    if world is not None:
        check_shardable(data, config.batch_size, world)
    return data, inputs, digest


def make_optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]
                   ) -> torch.optim.Optimizer:
    """``torch.optim.Adam``, ``AdamW`` or ``SGD`` (with ``momentum``) at ``lr``, with
    ``weight_decay`` (Adam, SGD: ``g <- g + lambda w``; AdamW: decoupled,
    ``w <- w - lr lambda w``)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer
                   ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The ``torch.optim.lr_scheduler`` of ``lr_schedule``, stepped once per epoch, so epoch
    ``e`` (from 1) of ``E`` trains at ``lr_e`` (``None`` for ``constant``: ``lr_e = lr``):

    * ``cosine``: ``CosineAnnealingLR(T_max=E)``, ``lr_e = lr (1 + cos(pi (e-1) / E)) / 2``;
    * ``step``: ``StepLR(lr_step, lr_gamma)``, ``lr_e = lr gamma^floor((e-1) / lr_step)``;
    * ``exponential``: ``ExponentialLR(lr_gamma)``, ``lr_e = lr gamma^(e-1)``."""
    lr_scheduler = torch.optim.lr_scheduler
    if config.lr_schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.lr_schedule == "step":
        return lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    if config.lr_schedule == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    return None


def restore(state: RunState, checkpoint: dict[str, Any], world: World | None,
            device: torch.device) -> tuple[int, int]:
    """The state of ``checkpoint`` in ``state``, each tensor checked against the network and
    optimizer the config builds; returns the epoch and step to continue at."""
    path = state.out / CHECKPOINT_FILE
    check_fits(state.network.current_keys(checkpoint["network"]), state.network.state_dict(), path)
    check_optimizer(checkpoint["optimizer"], state.optimizer, path)
    try:
        state.network.load_state_dict(checkpoint["network"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        if state.scheduler is not None and checkpoint.get("scheduler") is not None:
            state.scheduler.load_state_dict(checkpoint["scheduler"])
        noise = checkpoint["noise"]
        set_noise_states(state.network, noise if world is None else on_device(noise, device))
        state.generator.set_state(checkpoint["data_order"])
        with torch.random.fork_rng(devices=[]):  # only a check: applied in _run
            set_random_states(checkpoint["random"])
    except (RuntimeError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"{str(path)!r} does not fit the run its config builds "
                         f"({' '.join(str(e).split())[:120]}): start the run "
                         "again") from None
    state.result.initial = EpochStats(**checkpoint["initial"])
    state.result.history = [EpochStats(**h) for h in checkpoint["history"]]
    state.start -= checkpoint["seconds"]
    return checkpoint["epoch"] + 1, checkpoint["step"]


def open_trace(state: RunState, data: DataSplits, shapes: list[dict[str, Any]],
               checkpoint: dict[str, Any] | None) -> tuple[Tensor, Tensor] | None:
    """The run's trace file (rank 0 only; continued on resume) in ``state.writer``; returns
    the probe samples it traces."""
    if not state.main:
        return None
    config, network = state.config, state.network
    device = next(network.parameters()).device
    if checkpoint is not None:
        state.writer = TraceWriter.resume(state.out / "trace.h5", checkpoint["trace_records"],
                                          1 + len(state.result.history))
    else:
        probe_index = torch.arange(min(config.trace_probe, data.train_x.shape[0]))
        steps = config.epochs * math.ceil(data.train_x.shape[0] / config.batch_size)
        state.writer = TraceWriter(
            state.out / "trace.h5", [s["units"] for s in shapes],
            [layer.spiking for layer in network.layers],
            max(s["calls"] for s in shapes),  # T: the engine's, or the model's own loop's
            probe_index,
            attrs=trace_attributes(config, device, data.origin),
            layers=config.trace_layers, units=config.trace_units,
            spike_events=config.spike_events, inputs=[s["inputs"] for s in shapes],
            shapes=[(s["input_shape"], s["shape"]) for s in shapes],
            records=1 + steps // config.trace_every, evaluations=1 + config.epochs,
            metrics=metric_names(network.num_layers),
        )
    index = torch.arange(state.writer.probe, device=device)
    return data.train_x[index], data.train_y[index]


def run_hooks(state: RunState, probe: tuple[Tensor, Tensor] | None,
              emit: Callable[[str], None], progress: bool,
              checkpoint: dict[str, Any] | None) -> list[Hook]:
    """The run's hooks, in the order they are called: results, the trace (when tracing), the
    CSV logs and TensorBoard (rank 0), then the checkpoint, then figures and the console's table.
    The checkpoint is the commit point: a resume continues every file from what it says, so
    everything it counts (trace metrics, steps.csv rows, TensorBoard events) is written before
    it -- a run killed between a file's write and the checkpoint resumes as well."""
    hooks: list[Hook] = [Results(state)]
    if probe is not None and state.writer is not None:
        hooks.append(Tracing(state, probe))
    if state.main:
        rows = [] if checkpoint is None else [state.result.initial, *state.result.history]
        last = None if checkpoint is None else checkpoint["step"]
        hooks.append(MetricsCSV(state.out / METRICS_FILE,
                                metric_names(state.network.num_layers), rows))
        hooks.append(StepLossCSV(state.out / STEPS_FILE, last))
        if state.config.tensorboard:
            hooks.append(TensorBoard(state.out / TENSORBOARD_FOLDER, rows, last))
    hooks.append(Checkpoints(state))
    if state.main:
        hooks.append(Figures(state))
    hooks.append(Table(emit, progress, state.scheduler is not None,
                       state.config.early_stopping, state.network, state.config.time_steps,
                       state.config.noise_std))
    return hooks


def initial_stats(state: RunState, data: DataSplits) -> EpochStats:
    """Epoch 0: the measurements before training, on the whole training split."""
    config = state.config
    validation = None if data.val_x is None else (data.val_x, data.val_y)
    probe = probe_split((data.train_x, data.train_y), config.batch_size, config.probe_batches,
                        data.train_x.device)
    stats = epoch_stats(state.network, state.rule, (data.test_x, data.test_y), probe, 0,
                        state.start, train=(data.train_x, data.train_y),
                        validation=validation, final=False)
    stats.lr = state.optimizer.param_groups[0]["lr"]
    return stats


def header(state: RunState, network: str, device: torch.device, world: World | None) -> str:
    """The run's first line: rule, data, network, schedule, device, processes, folder."""
    c = state.config
    schedule = "" if c.lr_schedule == "constant" else f" ({c.lr_schedule} schedule)"
    processes = ("" if world is None or world.size == 1
                 else f", {world.size} processes (data-parallel)")
    model = "" if c.model is None else f"model {Path(c.model).name} "
    steps = f", T {c.time_steps}" if c.time_steps > 1 else ""
    presets = "+".join(preset_names(c))
    return (f"{c.algo} on {c.dataset}: {model}{network}{steps}, {plural(c.epochs, 'epoch')}, batch "
            f"{c.batch_size}, {c.optimizer} lr {c.lr:g}{schedule}, noise {c.noise} "
            f"{c.noise_std:g}{options(c)}, presets {presets}, device {device}{processes}, run "
            f"folder {state.out}")


def table_header(validating: bool, schedule: bool) -> str:
    """The columns of the console's table (``_row``)."""
    split = "val" if validating else "test"
    return (f"{'epoch':>5} {'train loss':>10} {split + ' loss':>9} {split + ' acc':>8} "
            f"{'align hidden':>12} {'align out':>9}" + (f" {'lr':>9}" if schedule else "")
            + ("   (test split: after the last epoch)" if validating else ""))


def on_device(states: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Noise states (``checkpoints.noise_states``) whose CUDA generators move to ``device``:
    every rank of a data-parallel run continues the streams rank 0 saved, on its own GPU."""
    if device.type != "cuda":
        return states
    return [{**s, "generator": (str(device), s["generator"][1])}
            if s["generator"] is not None and s["generator"][0].startswith("cuda") else s
            for s in states]


def load_model_file(folder: Path, model: str | None = None, trust_model: bool = False
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked ``model.pt`` of the run in ``folder`` (``checkpoints.MODEL_SCHEMA``, its
    identity) and its settings, whose ``--model`` file is the one the user consents to
    (``checkpoints.consent_to_model``: named again as ``model``, or ``trust_model``)."""
    if not folder.is_dir():
        raise ValueError(f"run folder {str(folder)!r} does not exist or is not a folder")
    path = folder / MODEL_FILE
    state = load(path, "model")
    fields = config_fields(state, path)
    check_identity(state, folder, path)
    if fields.get("model") is not None:
        recorded = (state["run"].get("model")
                    if state["version"] >= identity_version("model") else None)
        fields["model"] = consent_to_model(str(fields["model"]), recorded or None, model,
                                           trust_model)
    return state, fields


def load_network(
    folder: str | Path, dataset: str | None = None, data_root: str | None = None,
    model: str | None = None, trust_model: bool = False,
) -> tuple[Network, TrainConfig, DataSplits]:
    """The trained network of the run in ``folder`` (its ``model.pt``, decorrelators included),
    rebuilt from the run's config, on the run's device (CPU if it has no GPU now); with the
    config and the data set (or ``dataset``) it was built for. ``model.pt`` is checked before
    use (``checkpoints.MODEL_SCHEMA``, its identity, every tensor); a ``--model`` run's file
    is imported only when ``model`` names it again or ``trust_model`` (see ``resume``)."""
    folder = Path(folder)
    state, fields = load_model_file(folder, model, trust_model)
    path = folder / MODEL_FILE
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
    check_fits(network.current_keys(state["network"]), network.state_dict(), path)
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
    per_layer = ("alignment", "alignment_std", "decorrelation", "estimate_norm", "firing_rate",
                 "changed_fraction")
    fields = {f.name: [0.0] * layers if f.name in per_layer else 0.0
              for f in dataclasses.fields(EpochStats)}
    return list(flatten_metrics(fields))


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
        "generator": generator_in_use(config.generator, device),
        "data_files": data_files,
        "config": config.to_dict(),
    }


def to_device(data: DataSplits, device: torch.device) -> DataSplits:
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


def options(config: TrainConfig) -> str:
    """The header's note of the variance-reduction options a run uses (``""`` for none)."""
    if config.algo in NOISELESS:
        return ""
    parts = [f"K = {config.noise_samples} noisy passes"] if config.noise_samples > 1 else []
    if config.readout_noise_std is not None:
        parts.append(f"readout noise {config.readout_noise_std:g}")
    if config.antithetic:
        parts.append("antithetic pairs")
    if config.local_losses:
        parts.append("local losses")
    return "".join(f", {p}" for p in parts)


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


def _row(stats: EpochStats, schedule: bool = False) -> str:
    """An epoch's line of the table: the validation split's numbers where there is one, the
    alignment of the hidden layers (their mean) and of the readout apart (the readout's
    cosine is typically ten times the hidden layers'), and the learning rate with a
    schedule."""
    *hidden, readout = stats.alignment
    validating = stats.val_loss is not None
    loss = stats.val_loss if validating else stats.test_loss
    acc = stats.val_accuracy if validating else stats.test_accuracy
    test_loss = "-" if loss is None else f"{loss:.4f}"
    accuracy = "-" if acc is None else f"{acc:.4f}"
    hidden_text = f"{sum(hidden) / len(hidden):.3f}" if hidden else "-"
    lr = "" if not schedule or stats.lr is None else f" {stats.lr:>9.3g}"
    return (f"{stats.epoch:>5} {stats.train_loss:>10.4f} {test_loss:>9} "
            f"{accuracy:>8} {hidden_text:>12} {readout:>9.3f}{lr}")
