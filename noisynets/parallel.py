"""Data parallelism: N processes train one network on shares of every batch, as one process would.

``torchrun --standalone --nproc_per_node N --no-python noisynets train ...`` starts N processes
(ranks); each holds the whole network, and every global batch of ``B`` samples is split into
contiguous shares (``torch.tensor_split``: rank ``r`` gets ``B_r`` samples from ``o_r`` on). A
data-parallel run is the **same run** as the one-process run on the same global batches,
identical up to the rounding of the sums below, because:

* **the noise** is drawn for the whole global batch on every rank. A layer's noise source gets
  the activity of all ``B`` samples of each of its ``K`` noisy passes, zero outside the rank's
  rows, and the rank keeps its own rows of ``eps``::

      a_full[k, o_r : o_r + B_r] = a_local[k],  0 elsewhere          (K, B, ...)
      eps_local[k] = noise(a_full)[k, o_r : o_r + B_r]

  so every generator advances as in one process, a stateful source (telegraph) keeps the state
  of the whole batch, and an activity-dependent one (gain) sees the rank's own activity in the
  rank's rows. Threshold noise, Poisson input spikes and dropout masks are drawn the same way
  (the latter two from torch's global generator, seeded alike on every rank).
* **the estimates** are batch means, ``g = (1 / (K B)) sum_{k,n} v_{k,n}`` for every rule
  (docs/algorithms.md: NP, INP and ANP average their per-sample products over the K noisy
  passes and the batch, BP differentiates ``mean_n loss_n``). A rank computes the mean ``g_r``
  over its share, so::

      g = sum_r (B_r / B) g_r          (one all-reduce SUM of g_r * B_r / B)

  which holds for an uneven split too (the last, smaller batch of an epoch).
* **the decorrelation** learns from the first ``m = ceil(fraction B)`` samples of the global
  batch. Each rank puts the rows of its samples among them (``Layer.decorrelation_rows``: one
  row per sample of a dense layer, one per patch of a convolution) at their place in a tensor
  of zeros of the global row count; an all-reduce SUM adds only zeros to each row, so every
  rank holds exactly the rows one process would, and makes the same update of ``R``.
* **the divergence guard** decides on a flag all-reduced with MAX: a step is skipped on every
  rank when any rank saw a non-finite value.

Evaluation and the diagnostics run unsharded: every rank measures the same on the whole test
split and probe batch. Example (no processes needed to split a batch)::

    >>> import torch
    >>> from noisynets.parallel import World, shard_of
    >>> [(s.offset, s.size) for s in (shard_of(10, World(r, 3, torch.device("cpu")))
    ...                               for r in range(3))]
    [(0, 4), (4, 3), (7, 3)]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """The processes of a data-parallel run: this one's ``rank`` of ``size``, its ``device``
    and the process ``group`` (``None``: torch's default group)."""

    rank: int
    size: int
    device: torch.device
    group: Any = None

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and logs."""
        return self.rank == 0


@dataclass(frozen=True)
class Shard:
    """This rank's share of a global batch of ``total`` samples: rows ``offset .. offset +
    size``."""

    offset: int
    size: int
    total: int
    world: World

    def take(self, t: Tensor) -> Tensor:
        """The rank's rows of a global batch ``t`` (total, ...)."""
        return t[self.offset : self.offset + self.size]

    def drawn_globally(self, draw: Callable[[Tensor], Tensor], a: Tensor) -> Tensor:
        """``draw`` (a noise source, Poisson spikes, ...) of the global batch, this rank's rows.

        ``a`` holds ``K`` stacked blocks of the rank's ``size`` rows, (K * size, ...); ``draw``
        gets (K * total, ...) with ``a``'s rows at ``offset`` of each block and zeros
        elsewhere, and returns a tensor of that shape, from which the rank's rows come back.
        """
        rest = a.shape[1:]
        K = a.shape[0] // self.size
        full = a.new_zeros(K, self.total, *rest)
        full[:, self.offset : self.offset + self.size] = a.reshape(K, self.size, *rest)
        out = draw(full.view(K * self.total, *rest))
        out = out.view(K, self.total, *out.shape[1:])
        return out[:, self.offset : self.offset + self.size].reshape(a.shape[0], *out.shape[2:])


def shard_of(total: int, world: World) -> Shard:
    """The rank's contiguous share of a batch of ``total`` samples, split as
    ``torch.tensor_split`` does: the first ``total % size`` ranks get one sample more."""
    base, extra = divmod(int(total), world.size)
    offset = world.rank * base + min(world.rank, extra)
    return Shard(offset, base + (1 if world.rank < extra else 0), int(total), world)


def environment_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch, or runs alone: the one that
    prints."""
    return int(os.environ.get("RANK", "0")) == 0


def init_from_environment(device: torch.device) -> World | None:
    """Join the processes torchrun started (``WORLD_SIZE > 1``; ``RANK``, ``LOCAL_RANK``):
    gloo on the CPU, nccl on GPUs, where rank ``r`` uses ``cuda:LOCAL_RANK``. ``None`` when
    the process runs alone."""
    size = environment_world_size()
    if size <= 1:
        return None
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"rank {rank} needs {device} but torch sees "
                             f"{torch.cuda.device_count()} GPUs: start at most one process "
                             "per GPU (--nproc_per_node), or use --device cpu")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), device)


@contextmanager
def session(device: torch.device) -> Iterator[World | None]:
    """``init_from_environment`` for the block, and the process group destroyed after it (the
    group is left alone when it was there before)."""
    owned = environment_world_size() > 1 and not dist.is_initialized()
    world = init_from_environment(device)
    try:
        yield world
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def decided_by_main(decide: Callable[[], T], world: World | None) -> T:
    """``decide()`` run by rank 0 alone (after every rank got here), its result given to all;
    a ``ValueError`` it raises is raised on every rank."""
    if world is None:
        return decide()
    dist.barrier(group=world.group)
    box: list[Any] = [None]
    if world.main:
        try:
            box[0] = ("ok", decide())
        except ValueError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0, group=world.group)
    status, value = box[0]
    if status == "error":
        raise ValueError(value)
    return value


def all_reduce_sum(tensors: Sequence[Tensor], world: World) -> None:
    """Every rank's ``tensors`` replaced, in place, by their sum over the ranks: one all-reduce
    per dtype, of the tensors flattened into one buffer."""
    buckets: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        buckets.setdefault(t.dtype, []).append(t)
    for group in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=world.group)
        start = 0
        for t in group:
            t.copy_(flat[start : start + t.numel()].view_as(t))
            start += t.numel()


def all_reduce_gradients(parameters: Sequence[nn.Parameter], shard: Shard) -> None:
    """Each parameter's ``.grad``, the mean ``g_r`` over the rank's share, replaced by the
    global batch's mean ``g = sum_r (B_r / B) g_r`` (module doc)."""
    grads = []
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.mul_(shard.size / shard.total)
        grads.append(p.grad)
    all_reduce_sum(grads, shard.world)


def any_rank(flag: Tensor, world: World) -> Tensor:
    """A 0-d boolean tensor: ``flag`` on any rank (an all-reduce MAX), on the flag's device."""
    value = flag.to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=world.group)
    return value[0].bool()
