"""Time one training step of every rule against BP's, on the same network and batch.

    python benchmarks/step_time.py                       # 784-1000-1000-1000-10, batch 1000
    python benchmarks/step_time.py --hidden 256 256 --batch-size 256 --device cuda
    python benchmarks/step_time.py --arch conv --batch-size 256   # the --arch conv network

Prints, per rule, the median seconds per step (estimate + optimizer + decorrelation update)
and the ratio to BP's step measured in the same run; also the forward-only time of the batched
clean and noisy passes relative to one clean forward (ideal: 2x for K = 1).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from noisynets import RULES, Network, Passes, make_rule, uses_decorrelation
from noisynets.models import conv_net
from noisynets.training import train_step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[1000, 1000, 1000])
    p.add_argument("--inputs", type=int, default=784)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", choices=("mlp", "conv"), default="mlp",
                   help="mlp: --inputs, --hidden; conv: the --arch conv network on 1x28x28")
    args = p.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    shape = (1, 28, 28) if args.arch == "conv" else (args.inputs,)
    x = torch.rand(args.batch_size, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    sizes = [args.inputs, *args.hidden, 10]

    def network(**options) -> Network:
        model = conv_net(shape, 10, "leaky_relu") if args.arch == "conv" else sizes
        return Network(model, seed=0, **options).to(device)

    print(f"network {'conv ' + str(shape) if args.arch == 'conv' else sizes}, batch "
          f"{args.batch_size}, device {device}, torch threads {torch.get_num_threads()}")

    results = {}
    for name in ["bp", *[r for r in args.rules if r != "bp"]]:
        net = network(decorrelation=uses_decorrelation(name), decorrelation_fraction=0.1)
        rule = make_rule(name)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        step = functools.partial(train_step, net, rule, optimizer, x, y)
        results[name] = median_seconds(step, device, args.repeats)
    print(f"{'rule':>6} {'s/step':>9} {'x BP':>6}")
    for name, seconds in results.items():
        print(f"{name:>6} {seconds:>9.4f} {seconds / results['bp']:>6.2f}")

    net = network()
    with torch.no_grad():
        clean = median_seconds(lambda: net.run(x, y, Passes.clean(net.num_layers)), device,
                               args.repeats)
        both = median_seconds(lambda: net.run(x, y, Passes.perturbed(net.num_layers)), device,
                              args.repeats)
    print(f"batched clean + noisy forward: {both / clean:.2f} x one clean forward")


if __name__ == "__main__":
    main()
