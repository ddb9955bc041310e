"""Training: one step, evaluation, the per-layer diagnostics, and training for epochs.

One training step::

    record = rule.step(network, x, y)        # batched forward, estimates written into .grad
    optimizer.step()                         # any torch.optim optimizer
    network.update_decorrelation(record)     # R_l <- R_l - eta_R C_l R_l from the clean inputs

``fit`` trains on a named data set, the user's own tensors ``(x, y)``, a torch ``Dataset`` or
a ``DataLoader``. Nothing in a step waits for the device (losses are summed on it and read once
per epoch) unless the divergence guard is on, which reads one flag per step. The whole run
behind ``noisynets train`` -- its folder, files, checkpoints and resume -- is ``noisynets.run``.
Given a ``world`` of processes (``noisynets.parallel``), ``fit`` trains data-parallel: each
rank steps on its share of every global batch, and the steps are those of the whole batch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from noisynets.core.decorrelation import mean_abs_correlation
from noisynets.core.network import Network
from noisynets.core.record import Passes, Record
from noisynets.data import DataSplits
from noisynets.firing import firing_rates
from noisynets.parallel import (
    Shard,
    World,
    all_reduce_gradients,
    all_reduce_sum,
    any_rank,
    shard_of,
)
from noisynets.rules import Rule
from noisynets.rules.bp import backprop


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
    skipped_steps: int = 0  # steps skipped for a non-finite value (the divergence guard)
    val_loss: float | None = None  # on the validation split, where there is one
    val_accuracy: float | None = None
    firing_rate: list[float | None] | None = None  # per layer; None where it does not spike
    # per layer: the share of its input entries a noisy pass changed; None where not counted
    changed_fraction: list[float | None] | None = None
    lr: float | None = None  # the learning rate of the epoch's steps (first parameter group)
    alignment_std: list[float] = field(default_factory=list)  # over the probe batches
    stopped: bool = False  # early stopping ended the run after this epoch


def train_step(
    network: Network, rule: Rule, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
    shard: Shard | None = None, clip_grad: float | None = None,
) -> Record:
    """One step: estimate into ``.grad``, the optimizer's update, one decorrelation update.
    With a ``shard`` (``x``, ``y``: this rank's rows of the global batch) the estimates and the
    decorrelation's rows are summed over the ranks: the step of the whole global batch. With
    ``clip_grad`` the estimates are first scaled as ``torch.nn.utils.clip_grad_norm_`` does:
    ``g <- g * min(1, clip_grad / ||g||)``, ``||g||`` the norm of all estimates together."""
    with network.sharded(shard):
        record = rule.step(network, x, y)
        if shard is not None:
            all_reduce_gradients(network.trained_parameters(), shard)
        clip(network, clip_grad)
        optimizer.step()
        network.update_decorrelation(record)
    return record


def guarded_step(
    network: Network, rule: Rule, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
    shard: Shard | None = None, clip_grad: float | None = None,
) -> tuple[Record, str | None]:
    """``train_step``, unless the step's loss, activity or estimate is not finite (on any
    rank, with a ``shard``): then nothing is applied (no update of the weights, the
    optimizer's state or ``R``) and the second value says what, and in which layer, was not
    finite."""
    with network.sharded(shard):
        record = rule.step(network, x, y)
        if shard is not None:
            all_reduce_gradients(network.trained_parameters(), shard)
        problem = nonfinite(network, record, None if shard is None else shard.world)
        if problem is None:
            clip(network, clip_grad)
            optimizer.step()
            network.update_decorrelation(record)
        else:
            optimizer.zero_grad(set_to_none=True)
    return record, problem


def clip(network: Network, max_norm: float | None) -> None:
    """``torch.nn.utils.clip_grad_norm_`` of the trained parameters' estimates (no host sync);
    nothing when ``max_norm`` is None."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(list(network.trained_parameters()), max_norm)


def nonfinite(network: Network, record: Record, world: World | None = None) -> str | None:
    """``None`` when the record's losses and activities and every estimate in ``.grad`` are
    finite (one host sync; in every rank of ``world``), else the first that was not, from the
    input layer up, e.g. ``"activity of layer 2"``."""
    checks = []
    for k, (layer, a) in enumerate(zip(network.layers, record.activity)):
        checks.append((f"activity of layer {k + 1}", a))
        checks += [(f"estimate of layer {k + 1}", p.grad) for p in (layer.weight, layer.bias)
                   if p is not None and p.grad is not None]
    for k, head in enumerate(network.heads or []):
        checks += [(f"estimate of head {k + 1}", p.grad) for p in head.parameters()
                   if p.grad is not None]
    checks.append(("loss", record.loss))
    bad = ~torch.stack([torch.isfinite(t).all() for _, t in checks]).all()
    if world is not None:
        bad = any_rank(bad, world)
    if not bool(bad):
        return None
    return next((what for what, t in checks if not bool(torch.isfinite(t).all())),
                "value in another process's share of the batch")


@torch.no_grad()
def evaluate(
    network: Network | torch.nn.Module, x: Tensor | Iterable[tuple[Tensor, Tensor]],
    y: Tensor | None = None, batch_size: int = 2000, loss: str | Callable[..., Tensor] = "ce",
    time_steps: int = 1,
) -> tuple[float, float | None]:
    """Mean loss and accuracy (0..1) of ``network`` on ``(x, y)``, or on the batches of a
    ``DataLoader`` ``x``; the accuracy is ``None`` for real-valued targets (regression).
    Runs in eval mode (dropout off). ``network`` may also be a plain module (the folded copy
    of ``noisynets.export_model``): its outputs are ``core.steps.plain_outputs(model, x,
    time_steps)`` and its per-sample ``loss`` a name of ``noisynets.core.losses.LOSS_NAMES``
    or a function (a ``Network`` uses its own)."""
    if isinstance(x, Tensor):
        batches: Iterable[tuple[Tensor, Tensor]] = (
            (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
    else:
        batches = x
    if isinstance(network, Network):
        def forward_losses(xb: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
            record = network.run(xb, target, Passes.clean(network.num_layers,
                                                          network.both_noisy))
            return record.logits[0], record.loss[0]
    else:
        from noisynets.core.losses import make_loss
        from noisynets.core.steps import plain_outputs, score

        plain_loss = make_loss(loss)

        def forward_losses(xb: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
            return score(plain_loss, plain_outputs(network, xb, time_steps), target)
    device = next(network.parameters()).device
    total = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n, regression = 0, False
    was_training = network.training
    network.eval()
    try:
        for xb, target in batches:
            xb, target = xb.to(device), target.to(device)
            logits, losses = forward_losses(xb, target)
            total += losses.double().sum()
            regression = target.is_floating_point()
            if not regression:
                correct += (logits.argmax(-1) == target).sum()
            n += xb.shape[0]
    finally:
        network.train(was_training)
    n = max(1, n)
    return total.item() / n, None if regression else correct.item() / n


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
    was zero; per spiking layer its firing rate (``firing.firing_rates``; ``None`` for other
    layers); and per layer the share of its input entries that a noisy pass changed
    (``changed_fraction``: for the inputs of discontinuous units, else None). Leaves ``.grad``
    and the noise streams untouched."""
    for layer in network.layers:
        layer.count_changes = True
    try:
        with network.untouched_noise():
            estimate, record = rule.gradients(network, x, y)
    finally:
        for layer in network.layers:
            layer.count_changes = False
    changed = [layer.changed_fraction for layer in network.layers]
    with network.untouched_noise():
        reference, _ = reference_gradients(network, rule, x, y)
    flat = [flatten(g) for g in estimate]
    flat_bp = [flatten(g) for g in reference]
    if record.activity[0].shape[0] > 1:
        change = sum((a[1:] - a[:1]).pow(2).sum(-1) for a in record.activity)
        zero = (change == 0).double().mean().item()
    else:
        zero = 0.0
    rows = [layer.decorrelation_rows(seen / record.steps_of(k))[..., :DIAGNOSTIC_ROWS, :]
            for k, (layer, seen) in enumerate(zip(network.layers, record.inputs))]
    return {
        "alignment": [cosine(e, r) for e, r in zip(flat, flat_bp)],
        "decorrelation": [mean_abs_correlation(r).item() for r in rows],
        "estimate_norm": [e.norm().item() for e in flat],
        "zero_change_fraction": zero,
        "firing_rate": firing_rates(network, x, y),
        "changed_fraction": changed,
    }


def probe_diagnostics(
    network: Network, rule: Rule, probes: list[tuple[Tensor, Tensor]]
) -> dict[str, Any]:
    """``diagnostics`` of every probe batch, averaged: per layer the mean over the ``P``
    batches of each value (of ``firing_rate`` and ``changed_fraction``: over the batches
    where it was measured; None where it never was), and ``alignment_std``, the standard
    deviation of the alignment cosine over them (``sqrt(sum (c_p - mean)^2 / (P - 1))``; 0
    for one batch)."""
    each = [diagnostics(network, rule, x, y) for x, y in probes]
    mean = {name: [sum(d[name][k] for d in each) / len(each) for k in range(len(each[0][name]))]
            for name in ("alignment", "decorrelation", "estimate_norm")}
    cosines = torch.tensor([d["alignment"] for d in each], dtype=torch.float64)
    spread = cosines.std(0) if len(each) > 1 else torch.zeros(cosines.shape[1],
                                                              dtype=torch.float64)
    measured = {name: layer_means([d[name] for d in each])  # None: not measured in a layer
                for name in ("firing_rate", "changed_fraction")}
    return {**mean, **measured, "alignment_std": spread.tolist(),
            "zero_change_fraction": sum(d["zero_change_fraction"] for d in each) / len(each)}


def layer_means(values: list[list[float | None]]) -> list[float | None]:
    """Per layer ``k`` the mean of ``values[p][k]`` over the batches ``p`` where it is not
    None; None where it is None in every batch."""
    means: list[float | None] = []
    for k in range(len(values[0])):
        known = [v[k] for v in values if v[k] is not None]
        means.append(sum(known) / len(known) if known else None)
    return means


DIAGNOSTIC_ROWS = 4096  # at most this many input rows (or patches) per layer for correlations


def flatten(grad: tuple[Tensor | None, ...]) -> Tensor:
    """A layer's weight and bias estimates (and a recurrent neuron's) as one vector."""
    return torch.cat([g.flatten() for g in grad if g is not None])


def batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> list[Tensor]:
    """A shuffled epoch: index tensors of ``batch_size`` on ``device`` (the last one may be
    smaller). The permutation is drawn on the CPU, so a seed orders the data alike everywhere,
    and moved to the device once per epoch."""
    return list(torch.randperm(n, generator=generator).to(device).split(batch_size))


TrainData = (DataSplits | tuple[Tensor, Tensor] | torch.utils.data.Dataset
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


def sharded_batches(
    tensors: tuple[Tensor, Tensor], batch_size: int, generator: torch.Generator,
    device: torch.device, world: World,
) -> Iterator[tuple[Tensor, Tensor, Shard]]:
    """``epoch_batches`` of tensors, each global batch cut to this rank's share: ``(x, y,
    shard)``. Every rank draws the same permutation, so the global batches are one process's."""
    x, y = tensors
    for index in batches(x.shape[0], batch_size, generator, device):
        shard = shard_of(index.shape[0], world)
        mine = shard.take(index)
        yield x[mine], y[mine], shard


def check_shardable(train: TrainData, batch_size: int | None, world: World) -> None:
    """``ValueError`` unless ``train`` splits over ``world``: tensors or a noisynets data set
    whose every batch (the last one of an epoch too) has a sample for every rank."""
    tensors = as_tensors(train)
    if tensors is None:
        raise ValueError("data-parallel training splits tensors or a noisynets data set, not a "
                         "torch Dataset or DataLoader: pass the data as tensors (x, y)")
    n = tensors[0].shape[0]
    smallest = min(n, batch_size, n % batch_size or batch_size)
    if smallest < world.size:
        raise ValueError(f"a batch of {smallest} samples (of {n}, in batches of {batch_size}) "
                         f"cannot be split over {world.size} processes: change the batch size "
                         "or run fewer processes")


def as_tensors(data: Any) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` of a noisynets ``DataSplits`` (its training split) or a pair of tensors; else
    ``None`` (a torch ``Dataset`` or ``DataLoader``)."""
    if isinstance(data, DataSplits):
        return data.train_x, data.train_y
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, Tensor) for t in data):
        if data[0].shape[0] != data[1].shape[0]:
            raise ValueError(f"x has {data[0].shape[0]} samples but y {data[1].shape[0]}")
        return data[0], data[1]
    if isinstance(data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        return None
    raise TypeError(f"training data must be a noisynets DataSplits, a pair of tensors (x, y), a "
                    f"torch Dataset or a DataLoader, not {type(data).__name__}")


class Diverged(Exception):
    """``max_bad_steps`` steps in a row had a non-finite loss, activity or estimate."""

    def __init__(self, step: int, epoch: int, count: int, problem: str) -> None:
        super().__init__(f"{count} steps in a row up to step {step} (epoch {epoch}) had a "
                         f"non-finite {problem}")
        self.step, self.epoch, self.count, self.problem = step, epoch, count, problem


def fit(
    network: Network,
    rule: Rule,
    optimizer: torch.optim.Optimizer,
    train: TrainData,
    epochs: int,
    batch_size: int | None = None,
    test: DataSplits | tuple[Tensor, Tensor] | torch.utils.data.DataLoader | None = None,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    name: str | None = None,
    max_bad_steps: int = 0,
    first_epoch: int = 1,
    first_step: int = 0,
    generator: torch.Generator | None = None,
    start: float | None = None,
    validation: tuple[Tensor, Tensor] | None = None,
    world: World | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip_grad: float | None = None,
    stop: Callable[[EpochStats], bool] | None = None,
    on_loss: Callable[[int, Tensor], None] | None = None,
    probe_batches: int = 1,
) -> list[EpochStats]:
    """Train for ``epochs`` epochs on ``train`` and measure after every epoch.

    ``train`` is a noisynets ``DataSplits`` (its training split; then ``test`` defaults to its
    test split), the user's tensors ``(x, y)``, a torch ``Dataset`` or a ``DataLoader``; tensors
    and data sets are shuffled with ``generator`` (default: one seeded by ``seed``) into batches
    of ``batch_size``. ``test`` (a pair of tensors or a ``DataLoader``) is evaluated after every
    epoch; the diagnostics use the first ``probe_batches`` batches of the training data (the
    same every epoch; one for a torch ``Dataset`` or ``DataLoader``): their mean, and the
    alignment's standard deviation over them. ``on_step(step)`` runs after every training step
    (steps count from 1), ``on_loss(step, loss)`` too, with the step's mean reference-pass loss
    as a 0-d tensor on the device (reading it is the caller's host sync), ``on_epoch(stats)``
    after every epoch's evaluation; ``name`` labels the progress bar (default: the rule's).

    ``scheduler`` (any ``torch.optim.lr_scheduler``) steps once after every epoch, before
    ``on_epoch``; the epoch's ``lr`` is the learning rate its steps used. ``clip_grad`` scales
    the estimates as ``torch.nn.utils.clip_grad_norm_`` before every update. ``stop(stats)``
    returning True ends training after that epoch (early stopping): then its test split is
    measured as after the last epoch, and ``stats.stopped`` is set.

    ``max_bad_steps > 0`` guards against divergence: a step whose loss, activity or estimate
    is not finite is skipped (nothing applied; it costs one host sync per step) and counted in
    the epoch's ``skipped_steps``; that many bad steps in a row raise ``Diverged``.
    ``first_epoch``, ``first_step``, ``generator`` and ``start`` continue a run. With a
    ``validation`` split (a noisynets ``DataSplits`` brings its own) every epoch is measured on
    it, and ``test`` only after the last epoch.

    With a ``world`` of processes (``noisynets.parallel``; every rank calls ``fit`` alike)
    each global batch is split over the ranks and the step is the one of the whole batch; the
    epoch's ``train_loss`` is the global mean, and every rank measures the same."""
    device = next(network.parameters()).device
    tensors = as_tensors(train)
    if batch_size is None and not isinstance(train, torch.utils.data.DataLoader):
        raise ValueError("give batch_size: the data is not a DataLoader with batches of its own")
    if world is not None:
        check_shardable(train, batch_size, world)
    if isinstance(train, DataSplits) and validation is None and train.val_x is not None:
        validation = (train.val_x, train.val_y)
    if test is None and isinstance(train, DataSplits):
        test = (train.test_x, train.test_y)
    elif isinstance(test, DataSplits):
        test = (test.test_x, test.test_y)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    if tensors is not None:
        steps_per_epoch = math.ceil(tensors[0].shape[0] / batch_size)
        probe = probe_split(tensors, batch_size, probe_batches, device)
    else:
        loader = train if isinstance(train, torch.utils.data.DataLoader) else None
        steps_per_epoch = len(loader) if loader is not None else math.ceil(
            len(train) / batch_size)
        probe = [next(epoch_batches(train, batch_size or 1, torch.Generator().manual_seed(seed),
                                    device))]
    history: list[EpochStats] = []
    bar = tqdm(
        total=(epochs - first_epoch + 1) * steps_per_epoch, disable=not progress, unit="step",
        file=sys.stderr, desc=name or rule.name, dynamic_ncols=True, leave=False,
    )
    start = time.perf_counter() if start is None else start
    step, bad = first_step, 0
    network.train()
    try:
        for epoch in range(first_epoch, epochs + 1):
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            samples = skipped = 0
            lr = optimizer.param_groups[0]["lr"]
            if world is None:
                shares = ((x, y, None) for x, y in epoch_batches(train, batch_size, generator,
                                                                  device))
            else:
                shares = sharded_batches(tensors, batch_size, generator, device, world)
            for x, y, shard in shares:
                step += 1
                if max_bad_steps > 0:
                    record, problem = guarded_step(network, rule, optimizer, x, y, shard,
                                                   clip_grad)
                    if problem is not None:
                        bad, skipped = bad + 1, skipped + 1
                        if bad >= max_bad_steps:
                            raise Diverged(step, epoch, bad, problem)
                        bar.update()
                        continue
                    bad = 0
                else:
                    record = train_step(network, rule, optimizer, x, y, shard, clip_grad)
                loss_sum += record.loss[0].double().sum()
                samples += x.shape[0]
                if on_loss is not None:
                    on_loss(step, record.loss[0].detach().double().mean())
                if on_step is not None:
                    on_step(step)
                bar.update()
            if world is not None:  # the global mean: one sum over the ranks per epoch
                totals = torch.stack([loss_sum, loss_sum.new_tensor(samples)])
                all_reduce_sum([totals], world)
                loss_sum, samples = totals[0], totals[1].item()
            stats = epoch_stats(network, rule, test, probe, epoch, start,
                                train_loss=loss_sum.item() / max(1, samples), step=step,
                                validation=validation, final=epoch == epochs)
            stats.skipped_steps, stats.lr = skipped, lr
            if stop is not None and epoch < epochs and stop(stats):
                stats.stopped = True
                if test is not None and validation is not None:  # measured as the last epoch
                    with network.untouched_noise():
                        both = isinstance(test, (tuple, list))
                        stats.test_loss, stats.test_accuracy = (
                            evaluate(network, *test) if both else evaluate(network, test))
            if scheduler is not None:
                scheduler.step()
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
            if stats.stopped:
                break
    finally:
        bar.close()
    return history


def probe_split(
    tensors: tuple[Tensor, Tensor], batch_size: int, count: int, device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    """The first ``count`` batches of ``batch_size`` of the training tensors (fewer where the
    split is smaller): the fixed batches the diagnostics are taken on every epoch."""
    x, y = tensors
    n = min(x.shape[0], count * batch_size)
    return [(xb.to(device), yb.to(device))
            for xb, yb in zip(x[:n].split(batch_size), y[:n].split(batch_size))]


def epoch_stats(
    network: Network,
    rule: Rule,
    test: tuple[Tensor, Tensor] | torch.utils.data.DataLoader | None,
    probe: tuple[Tensor, Tensor] | list[tuple[Tensor, Tensor]],
    epoch: int,
    start: float,
    train_loss: float | None = None,
    step: int = 0,
    train: tuple[Tensor, Tensor] | None = None,
    validation: tuple[Tensor, Tensor] | None = None,
    final: bool = True,
) -> EpochStats:
    """Evaluate and take the diagnostics on the fixed training batch ``probe`` (or the mean
    over a list of them, ``probe_diagnostics``); without ``train_loss``, measure it on
    ``train`` (default: the first probe batch). With a ``validation`` split, that is evaluated
    every time and ``test`` only when ``final``; without one, ``test`` every time (loss and
    accuracy: None where not measured)."""
    with network.untouched_noise():
        test_loss = test_accuracy = val_loss = val_accuracy = None
        if validation is not None:
            val_loss, val_accuracy = evaluate(network, *validation)
        if test is not None and (validation is None or final):
            both = isinstance(test, (tuple, list))
            test_loss, test_accuracy = evaluate(network, *test) if both else evaluate(
                network, test)
        probes = probe if isinstance(probe, list) else [probe]
        if train_loss is None:
            train_loss, _ = evaluate(network, *(train if train is not None else probes[0]))
        diag = probe_diagnostics(network, rule, probes)
    return EpochStats(
        epoch=epoch, step=step, train_loss=train_loss, test_loss=test_loss,
        test_accuracy=test_accuracy, seconds=time.perf_counter() - start,
        val_loss=val_loss, val_accuracy=val_accuracy, **diag,
    )


