"""Training: one step, evaluation, the per-layer diagnostics, and the whole run behind the CLI.

One training step::

    record = rule.step(network, x, y)        # batched forward, estimates written into .grad
    optimizer.step()                         # any torch.optim optimizer
    network.update_decorrelation(record)     # R_l <- R_l - eta_R C_l R_l from the clean inputs

``fit`` trains on a named data set, the user's own tensors ``(x, y)``, a torch ``Dataset`` or
a ``DataLoader``. Nothing in a step waits for the device: losses are summed on it and read once
per epoch.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
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
from noisynets.models import conv_net, he_normal, load_model
from noisynets.network import Network, Passes, Record
from noisynets.noise import make_noise
from noisynets.precision import difference_dtype
from noisynets.rules import Rule, make_rule, uses_decorrelation
from noisynets.rules.bp import backprop
from noisynets.traces import TraceWriter


@dataclass
class EpochStats:
    """The measurements taken after one epoch (``epoch = 0``: before training)."""

    epoch: int
    step: int
    train_loss: float
    test_loss: float | None  # None without test data
    test_accuracy: float | None  # None for a regression task, or without test data
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
    precision: str = "float32"  # the noisy passes' difference products, as resolved

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
            "precision": self.precision,
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


def train_step(
    network: Network, rule: Rule, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Record:
    """One step: estimate into ``.grad``, the optimizer's update, one decorrelation update."""
    record = rule.step(network, x, y)
    optimizer.step()
    network.update_decorrelation(record)
    return record


@torch.no_grad()
def evaluate(
    network: Network, x: Tensor | Iterable[tuple[Tensor, Tensor]], y: Tensor | None = None,
    batch_size: int = 2000,
) -> tuple[float, float | None]:
    """Mean loss and accuracy (0..1) of ``network`` on ``(x, y)``, or on the batches of a
    ``DataLoader`` ``x``; the accuracy is ``None`` for real-valued targets (regression).
    Runs in eval mode (dropout off)."""
    if isinstance(x, Tensor):
        batches: Iterable[tuple[Tensor, Tensor]] = (
            (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
    else:
        batches = x
    device = next(network.parameters()).device
    loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n, regression = 0, False
    was_training = network.training
    network.eval()
    try:
        for xb, target in batches:
            xb, target = xb.to(device), target.to(device)
            logits = network(xb)
            loss += network.loss_fn(logits, target).double().sum()
            regression = target.is_floating_point()
            if not regression:
                correct += (logits.argmax(-1) == target).sum()
            n += xb.shape[0]
    finally:
        network.train(was_training)
    n = max(1, n)
    return loss.item() / n, None if regression else correct.item() / n


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
    flat = [flatten(g) for g in estimate]
    flat_bp = [flatten(g) for g in reference]
    if record.activity[0].shape[0] > 1:
        change = sum((a[1:] - a[:1]).pow(2).sum(-1) for a in record.activity)
        zero = (change == 0).double().mean().item()
    else:
        zero = 0.0
    rows = [layer.decorrelation_rows(seen / record.time_steps)[..., :DIAGNOSTIC_ROWS, :]
            for layer, seen in zip(network.layers, record.inputs)]
    return {
        "alignment": [cosine(e, r) for e, r in zip(flat, flat_bp)],
        "decorrelation": [mean_abs_correlation(r).item() for r in rows],
        "estimate_norm": [e.norm().item() for e in flat],
        "zero_change_fraction": zero,
    }


DIAGNOSTIC_ROWS = 4096  # at most this many input rows (or patches) per layer for correlations


def flatten(grad: tuple[Tensor, Tensor | None]) -> Tensor:
    """A layer's weight and bias estimates as one vector."""
    w, b = grad
    return w.flatten() if b is None else torch.cat([w.flatten(), b.flatten()])


def batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> list[Tensor]:
    """A shuffled epoch: index tensors of ``batch_size`` on ``device`` (the last one may be
    smaller). The permutation is drawn on the CPU, so a seed orders the data alike everywhere,
    and moved to the device once per epoch."""
    return list(torch.randperm(n, generator=generator).to(device).split(batch_size))


TrainData = (Dataset | tuple[Tensor, Tensor] | torch.utils.data.Dataset
             | torch.utils.data.DataLoader)


def epoch_batches(
    train: TrainData, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """One shuffled epoch of ``(x, y)`` batches on ``device``: from a data set's training split
    or the user's tensors (a seeded permutation), a ``DataLoader`` (its own order), or a torch
    ``Dataset`` (a seeded shuffling ``DataLoader`` of ``batch_size``)."""
    tensors = as_tensors(train)
    if tensors is not None:
        x, y = tensors
        for index in batches(x.shape[0], batch_size, generator, device):
            yield x[index], y[index]
        return
    if not isinstance(train, torch.utils.data.DataLoader):
        train = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True,
                                            generator=generator)
    for x, y in train:
        yield x.to(device), y.to(device)


def as_tensors(data: Any) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` of a noisynets ``Dataset`` (its training split) or a pair of tensors; else
    ``None`` (a torch ``Dataset`` or ``DataLoader``)."""
    if isinstance(data, Dataset):
        return data.train_x, data.train_y
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, Tensor) for t in data):
        if data[0].shape[0] != data[1].shape[0]:
            raise ValueError(f"x has {data[0].shape[0]} samples but y {data[1].shape[0]}")
        return data[0], data[1]
    if isinstance(data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        return None
    raise TypeError(f"training data must be a noisynets Dataset, a pair of tensors (x, y), a "
                    f"torch Dataset or a DataLoader, not {type(data).__name__}")


def fit(
    network: Network,
    rule: Rule,
    optimizer: torch.optim.Optimizer,
    train: TrainData,
    epochs: int,
    batch_size: int | None = None,
    test: Dataset | tuple[Tensor, Tensor] | torch.utils.data.DataLoader | None = None,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    name: str | None = None,
) -> list[EpochStats]:
    """Train for ``epochs`` epochs on ``train`` and measure after every epoch.

    ``train`` is a noisynets ``Dataset`` (its training split; then ``test`` defaults to its
    test split), the user's tensors ``(x, y)``, a torch ``Dataset`` or a ``DataLoader``; tensors
    and data sets are shuffled with a generator seeded by ``seed`` into batches of
    ``batch_size``. ``test`` (a pair of tensors or a ``DataLoader``) is evaluated after every
    epoch; the diagnostics use a fixed batch of training data. ``on_step(step)`` runs after
    every training step (steps count from 1), ``on_epoch(stats)`` after every epoch's
    evaluation; ``name`` labels the progress bar (default: the rule's)."""
    device = next(network.parameters()).device
    tensors = as_tensors(train)
    if batch_size is None and not isinstance(train, torch.utils.data.DataLoader):
        raise ValueError("give batch_size: the data is not a DataLoader with batches of its own")
    if test is None and isinstance(train, Dataset):
        test = (train.test_x, train.test_y)
    elif isinstance(test, Dataset):
        test = (test.test_x, test.test_y)
    generator = torch.Generator().manual_seed(seed)
    if tensors is not None:
        steps_per_epoch = math.ceil(tensors[0].shape[0] / batch_size)
        probe = (tensors[0][:batch_size].to(device), tensors[1][:batch_size].to(device))
    else:
        loader = train if isinstance(train, torch.utils.data.DataLoader) else None
        steps_per_epoch = len(loader) if loader is not None else math.ceil(
            len(train) / batch_size)
        probe = next(epoch_batches(train, batch_size or 1, torch.Generator().manual_seed(seed),
                                   device))
    history: list[EpochStats] = []
    bar = tqdm(
        total=epochs * steps_per_epoch, disable=not progress, unit="step", file=sys.stderr,
        desc=name or rule.name, dynamic_ncols=True, leave=False,
    )
    start = time.perf_counter()
    step = 0
    network.train()
    try:
        for epoch in range(1, epochs + 1):
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            samples = 0
            for x, y in epoch_batches(train, batch_size, generator, device):
                record = train_step(network, rule, optimizer, x, y)
                loss_sum += record.loss[0].double().sum()
                samples += x.shape[0]
                step += 1
                if on_step is not None:
                    on_step(step)
                bar.update()
            stats = epoch_stats(network, rule, test, probe, epoch, start,
                                train_loss=loss_sum.item() / max(1, samples), step=step)
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
    finally:
        bar.close()
    return history


def epoch_stats(
    network: Network,
    rule: Rule,
    test: tuple[Tensor, Tensor] | torch.utils.data.DataLoader | None,
    probe: tuple[Tensor, Tensor],
    epoch: int,
    start: float,
    train_loss: float | None = None,
    step: int = 0,
    train: tuple[Tensor, Tensor] | None = None,
) -> EpochStats:
    """Evaluate on ``test`` (loss and accuracy: None without it) and take the diagnostics on
    the fixed training batch ``probe``; without ``train_loss``, measure it on ``train``."""
    with network.untouched_noise():
        test_loss, test_accuracy = None, None
        if isinstance(test, (tuple, list)):
            test_loss, test_accuracy = evaluate(network, *test)
        elif test is not None:
            test_loss, test_accuracy = evaluate(network, test)
        if train_loss is None:
            train_loss, _ = evaluate(network, *(train if train is not None else probe))
        diag = diagnostics(network, rule, *probe)
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
    if config.standardize:
        data = data.standardized()
    torch.manual_seed(config.seed)
    network, rule, optimizer = build(config, data)
    network.to(device)
    data = to_device(data, device)
    out = run_folder(config)
    precision = difference_dtype(config.precision, data.train_x.dtype, device)
    result = RunResult(config=config, out=str(out), device=str(device),
                       precision=str(precision).removeprefix("torch."))
    results_file = out / "results.json"
    writer = probe_x = probe_y = None
    shapes = network_shapes(network, data.train_x[:1], data.train_y[:1])
    if config.trace_every > 0:
        probe_index = torch.arange(min(config.trace_probe, data.train_x.shape[0]))
        writer = TraceWriter(
            out / "trace.h5", [s["units"] for s in shapes],
            [layer.spiking for layer in network.layers], network.time_steps, probe_index,
            attrs=trace_attributes(config, device), layers=config.trace_layers,
            units=config.trace_units, spike_events=config.spike_events,
            inputs=[s["inputs"] for s in shapes],
            shapes=[(s["input_shape"], s["shape"]) for s in shapes],
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
    emit(f"{config.algo} on {config.dataset}: {describe(network, shapes)}, "
         f"{plural(config.epochs, 'epoch')}, batch {config.batch_size}, lr {config.lr:g}, "
         f"noise {config.noise} {config.noise_std:g}, device {device}, run folder {out}")
    start = time.perf_counter()
    train_split = (data.train_x, data.train_y)
    probe = (data.train_x[: config.batch_size], data.train_y[: config.batch_size])
    result.initial = epoch_stats(network, rule, (data.test_x, data.test_y), probe, 0, start,
                                 train=train_split)
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


def network_shapes(network: Network, x: Tensor, y: Tensor) -> list[dict[str, Any]]:
    """Per layer: its (flattened) input and node counts, and one sample's input and node
    shapes, from a clean forward of ``x`` that leaves the noise streams untouched."""
    with torch.no_grad(), network.untouched_noise():
        record = network.run(x, y, Passes.clean(network.num_layers))
    return [dict(inputs=int(seen.shape[-1]), units=int(a.shape[-1]),
                 input_shape=list(layer.in_shape), shape=list(layer.node_shape))
            for layer, seen, a in zip(network.layers, record.inputs, record.activity)]


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


def trace_attributes(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """The attributes of a run's trace file (docs/traces.md, "Attributes")."""
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
    """``data`` with its tensors on ``device`` and every sample in its ``input_shape``."""
    shape = data.input_shape
    return replace(
        data,
        train_x=data.train_x.to(device).view(-1, *shape), train_y=data.train_y.to(device),
        test_x=data.test_x.to(device).view(-1, *shape), test_y=data.test_y.to(device),
    )


def plural(count: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _row(stats: EpochStats) -> str:
    mean_alignment = sum(stats.alignment) / len(stats.alignment)
    test_loss = "-" if stats.test_loss is None else f"{stats.test_loss:.4f}"
    accuracy = "-" if stats.test_accuracy is None else f"{stats.test_accuracy:.4f}"
    return (f"{stats.epoch:>5} {stats.train_loss:>10.4f} {test_loss:>9} "
            f"{accuracy:>8} {mean_alignment:>9.3f}")

