"""Experiment 12: all fifteen rules -- the paper's eight and the seven comparisons of issue 30
(wp, es, wfg, afg, fa, dfa, opzo) -- on the same networks, noise and data.

    python simulations/comparison.py --workers 1            # the grid docs/results.md reports
    python simulations/comparison.py --workers 1 --settings conv spiking   # some settings only
    python simulations/comparison.py --quick                # three rules, one setting: seconds

Per setting (``SETTINGS``: the digits with a dense, a convolutional and a spiking (LIF) net,
Fashion-MNIST with a dense one; each reduced to fit a shared 2-core machine, docs/results.md
section 12) every rule's Adam learning rate is chosen from the setting's ``lrs`` (``LRS``
unless it names its own) on the validation split (10 % of the training set, seed 0, final
validation accuracy), then that rate runs with seeds 0..N-1 and the test accuracy is measured
once after the last epoch; every rule of a setting runs the same epochs. Beside
it, on the digits' dense net (``probe``): every rule's single-estimate cosine with BP per
layer (mean over ``PROBES`` batches of 64 at the initial weights) and its median step time,
one process, one thread (peak memory is not measured here: ``noisynets bench`` measures it
per rule in fresh processes). Writes ``comparison.json`` and ``comparison.png`` (test
accuracy per rule and setting).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, final, save, sweep  # noqa: E402

from noisynets import Network, make_rule, uses_decorrelation  # noqa: E402
from noisynets.data import load_dataset  # noqa: E402
from noisynets.rules import RULES  # noqa: E402
from noisynets.training import cosine, train_step  # noqa: E402

LRS = [1e-3, 3e-3, 1e-2]
COMMON = dict(val_fraction=0.1, trace_every=0, figures=False, threads=1)
# The conv setting keeps the conv preset of the digits (batch 32, eta_R = 1e-2, standardized
# inputs, K = 4 noisy passes for the perturbation rules) but 5 epochs instead of 20; the spiking
# one the LIF preset's noise (0.2) with 100 instead of 1000 hidden units and T = 5 instead of
# 10; Fashion-MNIST a 784-256-10 net, batch 100, 1 epoch, and its own learning rates.
SETTINGS = {
    "dense": dict(dataset="digits", hidden=[64], epochs=5, batch_size=32),
    "conv": dict(dataset="digits", arch="conv", epochs=5),
    "spiking": dict(dataset="digits", unit="lif", hidden=[100], time_steps=5, epochs=6,
                    batch_size=32),
    "fashion": dict(dataset="fashion-mnist", hidden=[256], epochs=1, batch_size=100,
                    lrs=[3e-4, 1e-3, 3e-3]),
}
QUICK_RULES = ["bp", "danp", "dfa"]
PROBES = 10


def rule_grid(args, name: str, rules: list[str], train: dict) -> dict[str, dict]:
    """Per rule: the learning rate chosen on the validation split and its seeds' results."""
    lrs = train.pop("lrs", LRS)
    lrs = [1e-3] if args.quick else lrs
    search = sweep(args, f"{name}_lr", {"algo": rules, "lr": lrs}, {**train, "seed": 0})
    chosen = {}
    for algo in rules:
        scores = {lr: (final(search, {"algo": algo, "lr": lr}, "val_accuracy") or [0.0])[0]
                  for lr in lrs}
        chosen[algo] = max(scores, key=lambda lr: scores[lr])
    out = {}
    for algo in rules:
        # Seed 0 at the chosen rate is the search's own run (a run is fixed by its config at
        # one thread: the same numbers to the bit), so only the other seeds run again.
        # The quick form runs seed 0 again instead, to exercise the seeds' sweep.
        first = final(search, {"algo": algo, "lr": chosen[algo]}, "test_accuracy")
        seeds = args.seed_list[:1] if args.quick else args.seed_list[1:]
        rest = final(sweep(args, f"{name}_{algo}", {"seed": seeds},
                           {**train, "algo": algo, "lr": chosen[algo]}), {},
                     "test_accuracy") if seeds else []
        out[algo] = {"lr": chosen[algo], "test_accuracy": rest if args.quick else first + rest}
    return out


def probe(rules: list[str]) -> dict[str, dict]:
    """Single-estimate cosine with BP per layer, step time and resident-set growth, digits,
    the dense net of ``SETTINGS``, batch 64, float32."""
    data = load_dataset("digits")
    x, y = data.train_x[:64 * PROBES].float(), data.train_y[:64 * PROBES]
    out = {}
    for algo in rules:
        net = Network([x.shape[1], 64, 10], seed=0, decorrelation=uses_decorrelation(algo))
        rule, bp = make_rule(algo, noise_samples=4 if algo == "es" else 1), make_rule("bp")
        cosines = []
        for b in range(PROBES):
            xb, yb = x[64 * b:64 * (b + 1)], y[64 * b:64 * (b + 1)]
            estimate = rule.gradients(net, xb, yb)[0]
            truth = bp.gradients(net, xb, yb)[0]
            cosines.append([cosine(torch.cat([e[0].flatten(), e[1]]),
                                   torch.cat([t[0].flatten(), t[1]]))
                            for e, t in zip(estimate, truth)])
        optimizer = torch.optim.Adam(net.trained_parameters(), lr=1e-3)
        times = []
        for b in range(3 * PROBES):
            xb, yb = x[64 * (b % PROBES):64 * (b % PROBES + 1)], y[64 * (b % PROBES):
                                                                  64 * (b % PROBES + 1)]
            start = time.perf_counter()
            train_step(net, rule, optimizer, xb, yb)
            times.append(time.perf_counter() - start)
        out[algo] = {"cosine": [statistics.mean(c[k] for c in cosines)
                                for k in range(len(cosines[0]))],
                     "step_ms": 1e3 * statistics.median(times[PROBES:])}
    return out


def figure(results: dict, path: Path) -> None:
    settings = [s for s in SETTINGS if s in results]
    rules = [r for r in RULES if any(r in results[s] for s in settings)]
    fig, ax = plt.subplots(figsize=(13, 4.5))
    width = 0.8 / max(1, len(settings))
    for i, setting in enumerate(settings):
        for j, algo in enumerate(rules):
            accs = results[setting].get(algo, {}).get("test_accuracy", [])
            if accs:
                ax.bar(j + (i - (len(settings) - 1) / 2) * width, statistics.mean(accs),
                       width, color=f"C{i}", label=setting if j == 0 else None)
                ax.plot([j + (i - (len(settings) - 1) / 2) * width] * len(accs), accs, "k.",
                        ms=3)
    ax.set_xticks(range(len(rules)), [r.upper() for r in rules])
    ax.set(ylabel="test accuracy", ylim=(0, 1), title="All rules, lr chosen per rule on the "
           "validation split (bars: mean over seeds, dots: seeds)")
    ax.legend()
    fig.tight_layout()
    save(fig, path)


def main() -> None:
    args = arguments("comparison", __doc__, extra=lambda p: p.add_argument(
        "--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
        help="the settings to run (all); the others' results in comparison.json are kept"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "comparison.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    settings = {"dense": SETTINGS["dense"]} if args.quick else {
        name: SETTINGS[name] for name in args.settings}
    rules = QUICK_RULES if args.quick else list(RULES)
    for name, setting in settings.items():
        train = {**COMMON, **setting}
        if args.quick:
            train.update(epochs=1)
        results[name] = rule_grid(args, name, rules, train)
        path.write_text(json.dumps(results, indent=1))
    if "dense" in settings or "probe" not in results:
        results["probe"] = probe(rules)
    path.write_text(json.dumps(results, indent=1))
    figure(results, out / "comparison.png")


if __name__ == "__main__":
    main()
