"""Three training steps of small float64 networks, on one process or on a share of each batch.

``run_case(name, world)`` builds case ``name``'s network from a fixed seed and takes three
steps on global batches of 16, 16 and 7 samples (the last one split unevenly), each with the
estimates, the optimizer's update and a decorrelation update; it returns every step's
estimates and loss, and the final weights, ``R`` and noise states. With a ``world``
(``noisynets.parallel``) every rank takes its share of each batch, as ``noisynets.training.fit``
does. Run under torchrun, rank 0 saves every case's result to ``OUTFILE``::

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/parallel_worker.py OUT

The tests start the two processes themselves (``tests/test_parallel.py``, ``launch``), with
torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and a file store named by
``NOISYNETS_TEST_STORE`` to meet through, in place of the TCP store of torchrun's agent, which
on a busy machine failed to start or took a worker down with it.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from noisynets import Network, make_rule
from noisynets.core.noise import NoiseSource
from noisynets.parallel import World, init_from_environment, shard_of
from noisynets.training import guarded_step, train_step

BATCHES = (16, 16, 7)


def conv_model() -> nn.Sequential:
    """A grouped convolution (its R: one per group, patches as rows), pooling, a readout."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 5))


def dropout_model() -> nn.Sequential:
    torch.manual_seed(6)
    return nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Dropout(0.3), nn.Linear(30, 5))


# name: (rule, network options); every network is decorrelated, float64.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "np": ("np", {}),
    "inp": ("inp", dict(noise_samples=2)),
    "anp": ("anp", {}),
    "danp": ("danp", dict(decorrelation_fraction=0.7)),  # m = 12: 8 rows of rank 0, 4 of 1
    "bp": ("bp", {}),
    "telegraph": ("np", dict(noise="telegraph:switch=0.3", noise_std=1e-3)),
    "both_noisy": ("anp", dict(both_noisy=True, noise="gain+telegraph:switch=0.2",
                               noise_samples=2)),
    "lif_poisson": ("anp", dict(unit="lif", time_steps=3, encoding="poisson",
                                threshold_noise=0.05, noise_std=0.05)),
    "conv": ("anp", dict(model="conv", decorrelation_fraction=0.5)),
    "dropout": ("anp", dict(model="dropout")),
}


def data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed samples of every batch, one after the other."""
    g = torch.Generator().manual_seed(11)
    n = sum(BATCHES)
    if CASES[name][1].get("model") == "conv":
        x = torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64)
    else:
        x = torch.rand(n, 20, generator=g, dtype=torch.float64)  # in [0, 1]: Poisson rates
    return x, torch.randint(0, 5, (n,), generator=g)


def build(name: str) -> tuple[Network, Any, torch.optim.Optimizer]:
    algo, options = CASES[name]
    options = dict(options)
    samples = options.pop("noise_samples", 1)
    model = {"conv": conv_model, "dropout": dropout_model}.get(options.pop("model", None))
    options.setdefault("noise_std", 1e-4)
    options.setdefault("decorrelation_lr", 0.1)
    net = Network(model().double() if model else [20, 30, 30, 5], decorrelation=True, seed=3,
                  **options).double()
    torch.manual_seed(7)  # torch's global generator: Poisson spikes and dropout masks
    optimizer = torch.optim.SGD(net.trained_parameters(), lr=0.5)
    return net, make_rule(algo, noise_samples=samples), optimizer


def run_case(name: str, world: World | None) -> dict[str, Any]:
    net, rule, optimizer = build(name)
    x, y = data(name)
    out: dict[str, Any] = {"grads": [], "loss": []}
    start = 0
    for size in BATCHES:
        xb, yb = x[start : start + size], y[start : start + size]
        start += size
        shard = None
        if world is not None:
            shard = shard_of(size, world)
            xb, yb = shard.take(xb), shard.take(yb)
        record = train_step(net, rule, optimizer, xb, yb, shard)
        out["grads"].append([p.grad.clone() for p in net.trained_parameters()])
        loss = record.loss[0].sum().reshape(1)
        if world is not None:
            torch.distributed.all_reduce(loss)
        out["loss"].append(loss / size)
    out["weights"] = [p.detach().clone() for p in net.trained_parameters()]
    out["R"] = [layer.decorrelator.R.clone() for layer in net.layers]
    out["telegraph"] = [m._state.clone() for m in net.modules()
                        if isinstance(m, NoiseSource) and getattr(m, "_state", None) is not None]
    return out


def guard_case(world: World | None) -> tuple[str | None, bool]:
    """A step whose loss is infinite for one sample only (an infinite MSE target of sample 12,
    in rank 1's share), while every activity and estimate stays finite (ANP gives that sample
    no weight): what the divergence guard says, and whether the weights stayed as they were."""
    net = Network([20, 30, 5], loss="mse", seed=3).double()
    optimizer = torch.optim.SGD(net.trained_parameters(), lr=0.5)
    g = torch.Generator().manual_seed(12)
    x = torch.rand(16, 20, generator=g, dtype=torch.float64)
    y = torch.rand(16, 5, generator=g, dtype=torch.float64)
    y[12] = torch.inf
    shard = None if world is None else shard_of(16, world)
    if shard is not None:
        x, y = shard.take(x), shard.take(y)
    before = [p.detach().clone() for p in net.trained_parameters()]
    _, problem = guarded_step(net, make_rule("anp"), optimizer, x, y, shard)
    return problem, all(torch.equal(a, p) for a, p in zip(before, net.trained_parameters()))


def main(path: str) -> None:
    torch.set_num_threads(1)
    store = os.environ.get("NOISYNETS_TEST_STORE")
    if store:  # started by the tests: meet through a file, no TCP store
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{store}", rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]), timeout=timedelta(minutes=10))
    world = init_from_environment(torch.device("cpu"))
    assert world is not None, "run me with torchrun (WORLD_SIZE > 1)"
    results: dict[str, Any] = {name: run_case(name, world) for name in CASES}
    guards: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(guards, guard_case(world))
    results["guard"] = guards
    if world.main:
        torch.save(results, path)
    # Every rank out of its last collective before any tears the group down: a rank whose
    # peer closed its connections mid-operation dies in gloo with SIGABRT ("terminate called
    # without an active exception"), seen once under load.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
