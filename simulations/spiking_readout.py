"""Spiking readouts that learn: snntorch's two tutorial models by DANP, beside BPTT.

    python simulations/spiking_readout.py
    python simulations/spiking_readout.py --quick

On the embedded digits, 10 epochs, seeds 0-2, every other option the presets a model file
gets (docs/cli.md, Presets):

* ``tutorial``: ``examples/tutorial_net.py:Net`` (64-1000-10, two ``snn.Leaky(beta=0.95)``
  without ``init_hidden``, its own loop over 25 steps, returning spikes and membranes), with
  snntorch's ``ce_rate_loss``;
* ``readout``: ``examples/spiking_readout.py:tutorial_readout``, ``Flatten - Linear(64, 300) -
  Leaky - Linear(300, 10) - Leaky(output=True)`` with ``init_hidden`` (T = 10, the logits the
  readout's spike counts, cross-entropy on them: snntorch's ``ce_count_loss``).

Per model four runs of each seed: DANP at the spiking-readout preset (K = 4 noisy passes per
step, Adam 3e-3), DANP at K = 4 with Adam 1e-3, DANP with one noisy pass and Adam 1e-3 (the
preset before), and BPTT (``dbp``, the same decorrelated network by autograd through time
with snntorch's surrogate gradient, Adam 1e-3).

Figure ``spiking_readout.png``: test accuracy per epoch of each model (mean over seeds, band
the range), and the readout's single-estimate cosine with BPTT's gradient per epoch.

``--causes`` measures, instead, what slows DANP on a spiking readout, along one DANP run with
one noisy pass and one with four (Adam 1e-3; seed 2, the worst of the three; ``--seeds``
does not apply) of each model, at
epochs 0, 1, 3 and 10, on the first 256 training samples: the share of noisy passes whose loss
did not change (``dL = 0``: no readout spike count moved) and whose whole activity did not
(the diagnostics' ``zero_change_fraction``; a noisy pass's dL is measured on one pass, K = 4
for the statistics), the share of samples whose readout is silent in
the reference pass, each layer's firing rate, its share of ``||da||^2``, the spread of its
per-step drive against the noise, and each layer's cosine with BPTT's gradient of one estimate
and of the mean of 32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, curve, final, histories, save, sweep  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODELS = {  # name: (model, extra options)
    "tutorial": (f"{EXAMPLES / 'tutorial_net.py'}:Net", {"loss": "ce_rate_loss"}),
    "readout": (f"{EXAMPLES / 'spiking_readout.py'}:tutorial_readout", {}),
}
RULES = [  # (label, algo, extra options, folder suffix)
    ("DANP, preset: K = 4, Adam 3e-3", "danp", {}, ""),
    ("DANP, K = 4, Adam 1e-3", "danp", {"lr": 1e-3}, "_k4_lr1e-3"),
    ("DANP, K = 1, Adam 1e-3 (the preset before)", "danp", {"noise_samples": 1, "lr": 1e-3},
     "_k1"),
    ("BPTT (dbp)", "dbp", {}, ""),
]


def main() -> None:
    if "--causes" in sys.argv:
        sys.argv.remove("--causes")
        quick = "--quick" in sys.argv
        for name in MODELS:
            for samples in (1, 4):
                causes(name, 2, [0, 1] if quick else [0, 1, 3, 10], samples)
        return
    args = arguments("spiking_readout", __doc__, epochs=10)
    seeds = [0] if args.quick else args.seed_list
    common = dict(dataset="digits", epochs=1 if args.quick else args.epochs, trace_every=0,
                  figures=False, threads=1)
    if args.quick:
        common["batch_size"] = 256
    results = {}
    for name, (model, extra) in MODELS.items():
        for label, algo, options, suffix in RULES:
            folder = f"{name}_{algo}{suffix}"
            results[name, label] = sweep(args, folder, {"algo": [algo], "seed": seeds},
                                         {**common, "model": model, **extra, **options})
    for (name, label), result in results.items():
        values = final(result, {}, "test_accuracy")
        print(f"{name:9s} {label:44s} mean {sum(values) / len(values):.4f}  seeds "
              + " ".join(f"{v:.4f}" for v in values))
    figure(results, Path(args.out) / "spiking_readout.png")


def causes(name: str, seed: int, epochs: list[int], samples: int = 1) -> None:
    """Train ``name`` by DANP (K = ``samples``, Adam 1e-3, the model's other presets) and
    print the candidate causes of its slow learning at ``epochs`` (module doc)."""
    import torch

    from noisynets.config import TrainConfig, resolve
    from noisynets.core.record import Passes
    from noisynets.data import load_dataset
    from noisynets.rules import make_rule
    from noisynets.run import build
    from noisynets.training import diagnostics, fit

    model, extra = MODELS[name]
    config = resolve(TrainConfig(model=model, seed=seed, noise_samples=samples, lr=1e-3,
                                 threads=1, **extra))
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    data = load_dataset("digits")
    net, rule, optimizer = build(config, data)
    x, y = data.train_x[:256], data.train_y[:256]
    mean_of = make_rule(config.algo, noise_samples=32)

    def fmt(values: list) -> str:
        return "/".join("-" if v is None else f"{v:.3f}" for v in values)

    def measure(epoch: int) -> None:
        with net.untouched_noise(), torch.no_grad():
            record = net.run(x, y, Passes.perturbed(net.num_layers, 4))
        zero_dL = (record.loss[1:] == record.loss[:1]).double().mean().item()
        silent = (record.logits[0].sum(-1) == 0).double().mean().item()
        da = [a[1:] - a[:1] for a in record.activity]
        squares = [d.pow(2).sum(-1).mean().item() for d in da]
        T = net.layers[0].calls
        drive = [(a[0] / T).std().item() for a in record.activity]
        one, many = diagnostics(net, rule, x, y), diagnostics(net, mean_of, x, y)
        print(f"{name} K={samples} seed {seed} epoch {epoch}: dL=0 {zero_dL:.3f}, ||da||=0 "
              f"{one['zero_change_fraction']:.3f}, silent readout {silent:.3f}, firing rate "
              f"{fmt(one['firing_rate'])}, share of ||da||^2 "
              f"{fmt([q / sum(squares) for q in squares])}, drive spread per step "
              f"{fmt(drive)} (noise {config.noise_std:g}), cosine with BPTT: one estimate "
              f"{fmt(one['alignment'])}, mean of 32 {fmt(many['alignment'])}", flush=True)

    def on_epoch(stats) -> None:
        if stats.epoch in epochs:
            print(f"{name} K={samples} seed {seed} epoch {stats.epoch}: test accuracy "
                  f"{stats.test_accuracy:.4f}")
            measure(stats.epoch)

    measure(0)
    fit(net, rule, optimizer, data, max(epochs), config.batch_size, seed=config.seed,
        progress=False, on_epoch=on_epoch)


def figure(results, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, name in zip(axes, MODELS):
        for i, (label, _, _, _) in enumerate(RULES):
            for _, runs in histories(results[name, label]):
                epochs, mean, low, high = curve(runs, "test_accuracy")
                ax.plot(epochs, mean, marker="o", markersize=3, color=f"C{i}", label=label)
                ax.fill_between(epochs, low, high, color=f"C{i}", alpha=0.15)
        ax.set(xlabel="epoch (0: before training)", ylabel="test accuracy (fraction)",
               title=f"{name} model: mean over seeds, band = range", ylim=(0, 1))
        ax.legend(fontsize=8, loc="lower right")
    ax = axes[2]
    for j, name in enumerate(MODELS):
        for i, (label, algo, _, _) in enumerate(RULES):
            if algo == "dbp":
                continue
            for _, runs in histories(results[name, label]):
                epochs, mean, _, _ = curve(runs, "alignment", index=-1)
                ax.plot(epochs, mean, "-" if j == 0 else "--", marker="o", markersize=3,
                        color=f"C{i}", label=f"{name}, {label}")
    ax.set(xlabel="epoch (0: before training)", ylabel="cosine with BPTT's gradient",
           title="the readout layer's estimate (mean of 4 probe batches)", ylim=(0, 1))
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
