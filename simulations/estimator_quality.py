"""How good is one estimate? Per method and layer, its cosine with BP at the presets.

On the digits, for the three networks of the presets -- dense (``--hidden 128 128 128``), conv
(``--arch conv``) and spiking conv (``--arch conv --unit lif``, T = 10; BP is BPTT through the
surrogate, the smoothed gradient) -- each network is first trained by its preset's DANP for
``--warmup`` epochs (so that the weights and the decorrelators are past their initial values),
then, on ``--batches`` training batches of the preset's size, every method estimates the
gradient once per batch at the same weights and noise streams it would train with:

* the three rules on the decorrelated network (DNP, DINP, DANP) as the paper defines them
  (one noisy pass, or L for DINP);
* DANP with K = 2 and K = 4 noisy passes (``--noise-samples``);
* DANP and DNP with one antithetic pair (``--antithetic``: 2 noisy passes, ``eps`` and
  ``-eps``), to set against K = 2 at the same cost.

Per layer it reports the mean and the standard deviation over the batches of the cosine of the
estimate with the BP gradient of the same batch at the same operating point
(``training.reference_gradients``). A figure (bars: mean, whiskers: spread over batches) and a
JSON file with every number land in ``--out``. Usage::

    python simulations/estimator_quality.py [--batches 20] [--warmup 2] [--seed 0] [--out DIR]
    python simulations/estimator_quality.py --quick    # 3 batches, no warm-up: seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from noisynets.cli import nonnegative_int, positive_int  # noqa: E402
from noisynets.config import TrainConfig, resolve  # noqa: E402
from noisynets.data import load_dataset  # noqa: E402
from noisynets.rules import make_rule  # noqa: E402
from noisynets.run import build, to_device  # noqa: E402
from noisynets.training import cosine, fit, flatten, reference_gradients  # noqa: E402

NETWORKS: dict[str, dict] = {
    "dense 128x3": dict(hidden=[128, 128, 128]),
    "conv": dict(arch="conv"),
    "conv LIF": dict(arch="conv", unit="lif"),
}
# (label, rule, K, antithetic)
METHODS: list[tuple[str, str, int, bool]] = [
    ("DNP", "dnp", 1, False),
    ("DINP", "dinp", 1, False),
    ("DANP", "danp", 1, False),
    ("DANP K=2", "danp", 2, False),
    ("DANP K=4", "danp", 4, False),
    ("DNP pair", "dnp", 1, True),
    ("DANP pair", "danp", 1, True),
]


def measure(settings: dict, batches: int, warmup: int, seed: int) -> dict[str, list[list[float]]]:
    """Per method, per batch, per layer: the cosine of one estimate with BP's gradient."""
    config = resolve(TrainConfig(algo="danp", dataset="digits", seed=seed, **settings))
    data = load_dataset("digits")
    if config.standardize:
        data = data.standardized()
    data = to_device(data, torch.device("cpu"))  # images in their shape for a convolution
    torch.manual_seed(seed)
    network, rule, optimizer = build(config, data)
    if warmup:
        fit(network, rule, optimizer, data, warmup, config.batch_size, seed=seed, progress=False)
    g = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(data.train_x.shape[0], generator=g)
    found: dict[str, list[list[float]]] = {label: [] for label, *_ in METHODS}
    with torch.no_grad():
        for b in range(batches):
            index = order[(b * config.batch_size) % len(order):][: config.batch_size]
            x, y = data.train_x[index], data.train_y[index]
            for label, name, k, antithetic in METHODS:
                method = make_rule(name, noise_samples=k, antithetic=antithetic)
                with network.untouched_noise():
                    estimate, _ = method.gradients(network, x, y)
                with network.untouched_noise():
                    truth, _ = reference_gradients(network, method, x, y)
                found[label].append([cosine(flatten(e), flatten(t))
                                     for e, t in zip(estimate, truth)])
            for k, layer in enumerate(network.layers):  # fresh noise for the next batch
                layer.noise.reseed(10_000 * seed + 1000 * k + b + 1)
    return found


def summarize(cosines: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per layer: the mean and the standard deviation (n - 1) over batches."""
    layers = list(zip(*cosines))
    spread = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in layers]
    return [statistics.fmean(c) for c in layers], spread


def figure(results: dict[str, dict[str, list[list[float]]]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4), squeeze=False)
    for ax, (net, found) in zip(axes[0], results.items()):
        labels = list(found)
        layers = len(next(iter(found.values()))[0])
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            mean, spread = summarize(found[label])
            ax.bar([j + (i - len(labels) / 2 + 0.5) * width for j in range(layers)], mean,
                   width, yerr=spread, capsize=2, label=label)
        ax.set_xticks(range(layers), [f"layer {j + 1}" for j in range(layers)])
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
        ax.set_title(net)
        ax.set_ylabel("cosine of one estimate with BP")
        ax.axhline(0, color="k", lw=0.5)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=positive_int, default=20, help="batches measured (20)")
    p.add_argument("--warmup", type=nonnegative_int, default=2,
                   help="epochs of the preset's DANP before measuring (2)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--quick", action="store_true", help="3 batches, no warm-up: seconds")
    p.add_argument("--out", metavar="DIR", help="folder of the figure and the JSON file")
    p.add_argument("--no-progress", action="store_true", help="(for the shared test harness)")
    args = p.parse_args()
    if args.quick:
        args.batches, args.warmup = 3, 0
    out = Path(args.out or Path("runs") / "simulations" /
               ("estimator_quality" + ("_quick" if args.quick else "")))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    for net, settings in NETWORKS.items():
        results[net] = measure(settings, args.batches, args.warmup, args.seed)
        print(f"{net}: {args.batches} batches after {args.warmup} warm-up epochs, seed "
              f"{args.seed}; per layer, the mean ± std over batches of the cosine with BP")
        for label, cosines in results[net].items():
            mean, spread = summarize(cosines)
            cells = " / ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, spread))
            print(f"  {label:<10} {cells}")
    (out / "estimator_quality.json").write_text(json.dumps(
        {"batches": args.batches, "warmup": args.warmup, "seed": args.seed,
         "cosines": results}, indent=1))
    figure(results, out / "estimator_quality.png")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
