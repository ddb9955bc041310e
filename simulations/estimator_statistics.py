"""What NP, INP and ANP estimate: the cosine of their estimates with the true gradient.

For one fixed batch of a small float64 network (10-20-20-20-5 leaky-ReLU, batch 64, Gaussian
node noise s = 1e-4, seed 0) it prints, per layer and rule,

* the cosine of the *mean* of many estimates with the BP gradient (and the ratio of norms):
  NP and INP are unbiased, so both tend to 1; ANP's mean is a preconditioned gradient;
* the mean cosine of a *single* estimate (one noisy pass) with the BP gradient.

These are the figures quoted in docs/algorithms.md. Usage::

    python simulations/estimator_statistics.py [--samples 20000] [--singles 1000] [--seed 0]
    python simulations/estimator_statistics.py --quick   # 2000 and 100: a few seconds
"""

from __future__ import annotations

import argparse

import torch

from noisynets import Network, make_rule


def flat(grads) -> list[torch.Tensor]:
    return [torch.cat([w.flatten(), b]) for w, b in grads]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000, help="estimates averaged")
    parser.add_argument("--singles", type=int, default=1000, help="single estimates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="2000 averaged and 100 single estimates (a few seconds)")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.singles = 2000, 100

    net = Network([10, 20, 20, 20, 5], noise_std=1e-4, seed=args.seed).double()
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(64, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (64,), generator=g)
    truth = flat(make_rule("bp").gradients(net, x, y)[0])
    chunk = min(1000, args.samples)
    print(f"10-20-20-20-5 leaky ReLU, batch 64, noise 1e-4, float64, seed {args.seed}; "
          f"mean of {args.samples} estimates, {args.singles} single estimates")
    print(f"{'rule':<5} {'mean-estimate cosine per layer':<34} {'norm ratio':<26} "
          f"single-estimate cosine per layer")
    for name in ("np", "inp", "anp"):
        rule = make_rule(name, noise_samples=chunk)
        total = [torch.zeros_like(t) for t in truth]
        for _ in range(args.samples // chunk):
            for acc, e in zip(total, flat(rule.gradients(net, x, y)[0])):
                acc += e / (args.samples // chunk)
        single_rule = make_rule(name)
        singles = torch.tensor([[cosine(e, t) for e, t in
                                 zip(flat(single_rule.gradients(net, x, y)[0]), truth)]
                                for _ in range(args.singles)]).mean(0)
        mean_cos = " ".join(f"{cosine(m, t):.3f}" for m, t in zip(total, truth))
        ratio = " ".join(f"{float(m.norm() / t.norm()):.2f}" for m, t in zip(total, truth))
        single = " ".join(f"{c:.2f}" for c in singles.tolist())
        print(f"{name:<5} {mean_cos:<34} {ratio:<26} {single}")


if __name__ == "__main__":
    main()
