"""Training: one step, evaluation, the per-layer diagnostics, and the whole run behind the CLI.

One training step (DESIGN.md, "The path of one training step")::

    record = rule.step(network, x, y)        # batched forward, estimates written into .grad
    optimizer.step()                         # any torch.optim optimizer
    network.update_decorrelation(record)     # R_l <- R_l - eta_R C_l R_l from the clean inputs

Nothing in a step waits for the device: losses are summed on it and read once per epoch.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from noisynets.config import TrainConfig, resolve
from noisynets.data import Dataset, load_dataset
from noisynets.decorrelation import mean_abs_correlation
from noisynets.network import Network, Passes, Record
from noisynets.noise import make_noise
from noisynets.rules import Rule, make_rule, uses_decorrelation
from noisynets.rules.bp import backprop
from noisynets.traces import TraceWriter


@dataclass
class EpochStats:
    """The measurements taken after one epoch (``epoch = 0``: before training)."""

    epoch: int
    step: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    alignment: list[float]
    decorrelation: list[float]
    estimate_norm: list[float]
    zero_change_fraction: float
    seconds: float


@dataclass
class RunResult:
    """A finished (or interrupted) run: its resolved config and one ``EpochStats`` per epoch."""

    config: TrainConfig
    history: list[EpochStats] = field(default_factory=list)
    initial: EpochStats | None = None
    seconds: float = 0.0
    out: str | None = None
    device: str = "cpu"

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else self.initial
        return {
            "algo": self.config.algo,
            "dataset": self.config.dataset,
            "epochs": len(self.history),
            "test_accuracy": last.test_accuracy,
            "test_loss": last.test_loss,
            "train_loss": last.train_loss,
            "initial_test_accuracy": self.initial.test_accuracy if self.initial else None,
            "seconds": round(self.seconds, 3),
            "device": self.device,
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
    """The network, rule and optimizer a resolved ``config`` describes."""
    network = Network(
        [data.num_features, *config.hidden, data.num_classes],
        unit=config.unit,
        noise=make_noise(config.noise, config.noise_std),
        both_noisy=config.both_noisy,
        decorrelation=uses_decorrelation(config.algo),
        decorrelation_lr=config.decor_lr,
        decorrelation_fraction=config.decor_fraction,
        time_steps=config.time_steps,
        encoding=config.encoding,
        loss=config.loss,
        beta=config.beta,
        threshold=config.threshold,
        threshold_noise=config.threshold_noise,
        seed=config.seed,
    )
    rule = make_rule(config.algo, noise_samples=config.noise_samples)
    rule.check(network)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    else:
        optimizer = torch.optim.SGD(network.parameters(), lr=config.lr)
    return network, rule, optimizer


def train_step(
    network: Network, rule: Rule, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Record:
    """One step: estimate into ``.grad``, the optimizer's update, one decorrelation update."""
    record = rule.step(network, x, y)
    optimizer.step()
    network.update_decorrelation(record)
    return record


@torch.no_grad()
def evaluate(network: Network, x: Tensor, y: Tensor, batch_size: int = 2000) -> tuple[float, float]:
    """Mean loss and accuracy (0..1) of ``network`` on ``(x, y)``."""
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, x.shape[0], batch_size):
        logits = network(x[i : i + batch_size])
        target = y[i : i + batch_size]
        loss += network.loss_fn(logits, target).double().sum()
        correct += (logits.argmax(-1) == target).sum()
    n = max(1, x.shape[0])
    return loss.item() / n, correct.item() / n


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two tensors, flattened (0 when either is zero)."""
    a, b = a.flatten().double(), b.flatten().double()
    denominator = a.norm() * b.norm()
    return (a @ b / denominator).item() if denominator > 0 else 0.0


def reference_gradients(
    network: Network, rule: Rule, x: Tensor, y: Tensor
) -> tuple[list[tuple[Tensor, Tensor]], Record]:
    """The BP gradient that ``rule``'s estimate on ``(x, y)`` refers to, and its record.

    With a noise-free reference pass that is plain BP. With intrinsic noise in every pass the
    rule estimates the gradient at its reference pass's noisy operating point, so BP runs the
    rule's own plan of passes and differentiates the loss of pass 0: run from the noise state
    the rule's forward started from, pass 0 carries exactly the same noise.
    """
    passes = rule.passes(network) if network.both_noisy else Passes.clean(network.num_layers)
    return backprop(network, x, y, passes)


def diagnostics(network: Network, rule: Rule, x: Tensor, y: Tensor) -> dict[str, Any]:
    """Per layer: the cosine of the rule's estimate with the BP gradient of the same batch at
    the same operating point (``alignment``, see ``reference_gradients``), the mean
    |off-diagonal correlation| of the layer's input (``decorrelation``), and the estimate's
    norm; and the fraction of noisy samples whose whole-network activity change ``||da||``
    was zero. Leaves ``.grad`` and the noise streams untouched."""
    with network.untouched_noise():
        estimate, record = rule.gradients(network, x, y)
    with network.untouched_noise():
        reference, _ = reference_gradients(network, rule, x, y)
    flat = [torch.cat([w.flatten(), b]) for w, b in estimate]
    flat_bp = [torch.cat([w.flatten(), b]) for w, b in reference]
    if record.activity[0].shape[0] > 1:
        change = sum((a[1:] - a[:1]).pow(2).sum(-1) for a in record.activity)
        zero = (change == 0).double().mean().item()
    else:
        zero = 0.0
    return {
        "alignment": [cosine(e, r) for e, r in zip(flat, flat_bp)],
        "decorrelation": [mean_abs_correlation(i).item() for i in record.inputs],
        "estimate_norm": [e.norm().item() for e in flat],
        "zero_change_fraction": zero,
    }


def batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> list[Tensor]:
    """A shuffled epoch: index tensors of ``batch_size`` on ``device`` (the last one may be
    smaller). The permutation is drawn on the CPU, so a seed orders the data alike everywhere,
    and moved to the device once per epoch."""
    return list(torch.randperm(n, generator=generator).to(device).split(batch_size))


def fit(
    network: Network,
    rule: Rule,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    name: str | None = None,
) -> list[EpochStats]:
    """Train for ``epochs`` epochs on ``data`` (already on the network's device).

    ``on_step(step)`` runs after every training step (steps count from 1), ``on_epoch(stats)``
    after every epoch's evaluation; ``name`` labels the progress bar (default: the rule's)."""
    device = data.train_x.device
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(data.train_x.shape[0] / batch_size)
    probe = slice(0, min(batch_size, data.train_x.shape[0]))
    history: list[EpochStats] = []
    bar = tqdm(
        total=epochs * steps_per_epoch, disable=not progress, unit="step", file=sys.stderr,
        desc=name or rule.name, dynamic_ncols=True, leave=False,
    )
    start = time.perf_counter()
    step = 0
    try:
        for epoch in range(1, epochs + 1):
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            for index in batches(data.train_x.shape[0], batch_size, generator, device):
                record = train_step(network, rule, optimizer, data.train_x[index],
                                    data.train_y[index])
                loss_sum += record.loss[0].double().sum()
                step += 1
                if on_step is not None:
                    on_step(step)
                bar.update()
            stats = epoch_stats(network, rule, data, epoch, probe, start,
                                train_loss=loss_sum.item() / data.train_x.shape[0], step=step)
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
    finally:
        bar.close()
    return history


def epoch_stats(
    network: Network,
    rule: Rule,
    data: Dataset,
    epoch: int,
    probe: slice,
    start: float,
    train_loss: float | None = None,
    step: int = 0,
) -> EpochStats:
    """Evaluate on the test set and take the diagnostics on a fixed batch of training data."""
    with network.untouched_noise():
        test_loss, test_accuracy = evaluate(network, data.test_x, data.test_y)
        if train_loss is None:
            train_loss, _ = evaluate(network, data.train_x, data.train_y)
        diag = diagnostics(network, rule, data.train_x[probe], data.train_y[probe])
    return EpochStats(
        epoch=epoch, step=step, train_loss=train_loss, test_loss=test_loss,
        test_accuracy=test_accuracy, seconds=time.perf_counter() - start, **diag,
    )


def run_folder(config: TrainConfig) -> Path:
    """``config.out``, or a new folder ``runs/<time>-<algo>-<dataset>``."""
    if config.out is not None:
        path = Path(config.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{stamp}-{config.algo}-{config.dataset}"
        n = 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{stamp}-{config.algo}-{config.dataset}-{n}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a file: name a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create run folder {str(path)!r}: {e.strerror}") from None
    return path


def train(
    config: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> RunResult:
    """The whole job: resolve the config, load data, train, and write the run folder.

    The folder gets ``results.json`` (rewritten after every epoch, so an interrupted run keeps
    what it measured), ``trace.h5`` (metrics every epoch, probe records every
    ``trace_every`` steps; see ``noisynets.traces``), ``learning_curve.png`` and the trace
    file's figure ``trace.png``.
    """
    from noisynets.plots import learning_curve, trace_figure

    config = resolve(config)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = choose_device(config.device)
    data = load_dataset(config.dataset, config.data_root)
    torch.manual_seed(config.seed)
    network, rule, optimizer = build(config, data)
    network.to(device)
    data = to_device(data, device)
    out = run_folder(config)
    result = RunResult(config=config, out=str(out), device=str(device))
    results_file = out / "results.json"
    writer = probe_x = probe_y = None
    if config.trace_every > 0:
        probe_index = torch.arange(min(config.trace_probe, data.train_x.shape[0]))
        writer = TraceWriter(
            out / "trace.h5", network.sizes,
            [layer.unit.stateful for layer in network.layers], network.time_steps, probe_index,
            attrs=trace_attributes(config, device), layers=config.trace_layers,
            units=config.trace_units, spike_events=config.spike_events,
        )
        probe_x = data.train_x[probe_index.to(device)]
        probe_y = data.train_y[probe_index.to(device)]

    def save() -> None:
        results_file.write_text(json.dumps(result.summary(), indent=2) + "\n")

    def trace(step: int) -> None:
        if writer is not None and step % config.trace_every == 0:
            writer.append_record(step, probe_record(network, probe_x, probe_y))

    def record_metrics(stats: EpochStats) -> None:
        if writer is not None:
            writer.append_metrics(asdict(stats))

    emit = log or (lambda line: None)
    emit(f"{config.algo} on {config.dataset}: {network.sizes}, {plural(config.epochs, 'epoch')}, "
         f"batch {config.batch_size}, lr {config.lr:g}, noise {config.noise} "
         f"{config.noise_std:g}, device {device}, run folder {out}")
    start = time.perf_counter()
    result.initial = epoch_stats(network, rule, data, 0, slice(0, config.batch_size), start)
    record_metrics(result.initial)
    trace(0)
    emit(f"{'epoch':>5} {'train loss':>10} {'test loss':>9} {'test acc':>8} {'alignment':>9}")
    emit(_row(result.initial))

    def on_epoch(stats: EpochStats) -> None:
        result.history.append(stats)
        result.seconds = time.perf_counter() - start
        record_metrics(stats)
        save()
        line = _row(stats)
        if progress:
            tqdm.write(line, file=sys.stdout)
        else:
            emit(line)

    try:
        fit(network, rule, optimizer, data, config.epochs, config.batch_size, seed=config.seed,
            progress=progress, on_epoch=on_epoch, on_step=trace, name=config.algo)
    finally:
        result.seconds = time.perf_counter() - start
        save()
        if result.history:
            learning_curve(result, out / "learning_curve.png")
        if writer is not None and writer.records:
            trace_figure(writer.path, out / "trace.png")
    return result


def probe_record(network: Network, x: Tensor, y: Tensor) -> Record:
    """A reference and a noisy pass of the probe samples, with spikes and membrane kept; the
    noise streams are left as they were, so tracing does not change the run."""
    with torch.no_grad(), network.untouched_noise():
        passes = Passes.perturbed(network.num_layers, 1, network.both_noisy)
        return network.run(x, y, passes, keep_states=True)


def trace_attributes(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """The attributes of a run's trace file (DESIGN.md, "Trace files")."""
    import noisynets

    return {
        "noisynets_version": noisynets.__version__,
        "torch_version": torch.__version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "seed": config.seed,
        "config": config.to_dict(),
    }


def to_device(data: Dataset, device: torch.device) -> Dataset:
    """``data`` with its tensors on ``device``."""
    return replace(
        data,
        train_x=data.train_x.to(device), train_y=data.train_y.to(device),
        test_x=data.test_x.to(device), test_y=data.test_y.to(device),
    )


def plural(count: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _row(stats: EpochStats) -> str:
    mean_alignment = sum(stats.alignment) / len(stats.alignment)
    return (f"{stats.epoch:>5} {stats.train_loss:>10.4f} {stats.test_loss:>9.4f} "
            f"{stats.test_accuracy:>8.4f} {mean_alignment:>9.3f}")

