"""A task where recurrence matters: the XOR of two cues that arrive at different time steps.

    python simulations/delayed_xor.py --algo danp --recurrent --per-step --epochs 10 --seed 0
    python simulations/delayed_xor.py --algo dbp --epochs 10 --seed 0   # feed-forward: chance

Each sample is a sequence of T = 6 steps of 4 input channels (``encoding="sequence"``): at
step 0 a cue ``a`` on channel ``a`` (0 or 1), at step 3 a cue ``b`` on channel ``2 + b``, zeros
elsewhere, plus Gaussian noise of std 0.05; the label is ``a XOR b``. The network is
``Linear(4, 32) - neuron - Linear(32, 2)`` with ``beta = 0.3``: a membrane that keeps 0.3^3 of
a cue three steps later, and a readout that sums over the steps, so a feed-forward
``snn.Leaky`` can only add a function of ``a`` to one of ``b`` (chance, 0.5, for XOR) while an
``snn.RLeaky`` can carry ``a`` in its recurrent spikes until ``b`` arrives. 2048 training and
512 test samples (seeds 0 and 1), batch 32, Adam, noise std 0.1. Prints the test accuracy
after every epoch. ``--quick`` (what the tests run): 256 training and 128 test samples and
2 epochs, to show the script runs, not what it learns.
"""

from __future__ import annotations

import argparse

import snntorch as snn
import torch
from torch import Tensor, nn

import noisynets
from noisynets import make_rule
from noisynets.training import fit

T, DELAY = 6, 3


def task(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` sequences (n, T, 4) and their labels ``a XOR b``."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    x = torch.zeros(n, T, 4)
    x[torch.arange(n), 0, a] = 1.0
    x[torch.arange(n), DELAY, 2 + b] = 1.0
    x += 0.05 * torch.randn(x.shape, generator=g)
    return x, a ^ b


def model(recurrent: bool, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    neuron = (snn.RLeaky(beta=0.3, linear_features=32, init_hidden=True) if recurrent
              else snn.Leaky(beta=0.3, init_hidden=True))
    m = nn.Sequential(nn.Linear(4, 32), neuron, nn.Linear(32, 2))
    with torch.no_grad():
        m[0].weight.mul_(3.0)  # torch's default scale barely drives the neurons
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", default="danp")
    p.add_argument("--recurrent", action="store_true", help="snn.RLeaky (else snn.Leaky)")
    p.add_argument("--per-step", action="store_true", help="per-step products")
    p.add_argument("--noise-std", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="256 training and 128 test samples, 2 epochs: a check that it runs")
    args = p.parse_args()
    train, test, epochs = (256, 128, 2) if args.quick else (2048, 512, args.epochs)
    torch.set_num_threads(1)
    net = noisynets.wrap(model(args.recurrent, args.seed), time_steps=T, encoding="sequence",
                         noise_std=args.noise_std, per_step=args.per_step,
                         decorrelation=args.algo.startswith("d"), seed=args.seed)
    optimizer = torch.optim.Adam(net.trained_parameters(), lr=args.lr)
    history = fit(net, make_rule(args.algo), optimizer, task(train, 0), epochs=epochs,
                  batch_size=32, test=task(test, 1), progress=False)
    print(" ".join(f"{h.test_accuracy:.3f}" for h in history))


if __name__ == "__main__":
    main()
