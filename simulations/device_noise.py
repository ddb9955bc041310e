"""Experiment 7: device noise: DANP against BP under each device noise model, an ADC readout of
few bits, and PCM conductance drift after training.

    python simulations/device_noise.py
    python simulations/device_noise.py --quick
    python simulations/device_noise.py --record FILE.npy    # only write the MTJ recording

On the embedded digits (64-256-256-256-10 leaky ReLU, batch 64, Adam 1e-3, 10 epochs, seeds
0-2; the reference pass noise-free). BP is given the ideal software model of the device: it
trains the same simulated device by autograd (through the weight noise and the ADC with a
straight-through gradient), which the hardware itself could not do; DANP only observes.

* ``node_noise``: the MTJ preset (``--noise mtj``) and the replay of a recording
  (``--noise replay:file=...,center=1``): the recording, ``mtj_recording.npy`` in the output
  folder, is 64 traces of 20,000 samples of the MTJ model with the study's constant level of
  0.0421 V (``MTJ(dc=0.042092104)``, seed 0), a stand-in for measured device voltages;
* ``weight_noise``: PCM weights (``--weight-noise pcm``: programming, read noise and drift,
  read right after programming); each trained network is then loaded, programmed once from
  its trained weights and read ``t`` seconds later (``drift``: t = 0 s ... 1 year, without
  and with global drift compensation), its test accuracy averaged over 5 reads of the test
  set (the same programmed devices and reads at every t);
* ``adc_bits``: the activities read through a signed ADC of full scale +-8 and 4 ... 12 bits,
  Gaussian node noise of scale 0.03 (about half the step of 8 bits).

Figure ``device_noise.png``: accuracy per device model, against ADC bits and against drift
time; ``drift.csv`` holds the drift table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, final, save, sweep  # noqa: E402

from noisynets.core.noise import MTJ  # noqa: E402
from noisynets.run import load_network  # noqa: E402
from noisynets.training import evaluate  # noqa: E402

FULL = dict(dataset="digits", hidden=[256, 256, 256], epochs=10, trace_every=0)
QUICK = dict(dataset="digits", hidden=[64], epochs=1, batch_size=256, trace_every=0,
             figures=False)
BITS = [4, 6, 8, 10, 12]
ADC_RANGE = 8.0
ADC_NOISE = 0.03
DRIFT_TIMES = [0.0, 60.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0]
DRIFT_NAMES = ["0 s", "1 min", "1 h", "1 day", "1 month", "1 year"]
READS = 5
RULES = ["danp", "bp"]


def record(path: Path, traces: int = 64, length: int = 20_000, seed: int = 0) -> Path:
    """Write a recording of the MTJ model (with its constant level) as (traces, length)."""
    source = MTJ(dc=0.042092104, seed=seed)
    values = source(torch.zeros(length, traces, dtype=torch.float64)).T.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, values.astype(np.float32))
    return path


def main() -> None:
    if "--record" in sys.argv:
        path = record(Path(sys.argv[sys.argv.index("--record") + 1]))
        print(f"MTJ recording: {path}")
        return
    args = arguments("device_noise", __doc__, epochs=FULL["epochs"])
    train = dict(QUICK) if args.quick else {**FULL, "epochs": args.epochs}
    seeds = [0] if args.quick else args.seed_list
    bits = BITS[::2] if args.quick else BITS
    out = Path(args.out)
    recording = out / "mtj_recording.npy"
    if not recording.exists():
        record(recording)
    replay = f"replay:file={recording.absolute()},center=1"
    nodes = sweep(args, "node_noise", {"algo": RULES, "noise": ["mtj", replay], "seed": seeds},
                  train)
    weights = sweep(args, "weight_noise", {"algo": RULES, "weight_noise": ["pcm"],
                                           "seed": seeds}, train)
    adc = sweep(args, "adc_bits", {"algo": RULES, "adc": [f"bits={b},range={ADC_RANGE:g}"
                                                          for b in bits], "seed": seeds},
                {**train, "noise_std": ADC_NOISE})
    times = DRIFT_TIMES[::2] if args.quick else DRIFT_TIMES
    drift = drift_table(weights, times, out / "drift.csv")
    figure(nodes, weights, adc, drift, replay, bits, times, out / "device_noise.png")


def drift_table(weights, times: list[float], path: Path) -> list[dict]:
    """Each trained PCM network read ``t`` s after its last programming: the mean test
    accuracy of ``READS`` reads of the test set, without and with drift compensation."""
    rows = []
    for run in weights.runs:
        if "summary" not in run:
            continue
        network, config, data = load_network(run["summary"]["out"])
        for compensate in (False, True):
            for t in times:
                network.weight_noise.time = t
                network.weight_noise.compensate = compensate
                network.weight_noise.reseed(network.weight_noise.seed)  # the same reads
                accuracy = np.mean([evaluate(network, data.test_x, data.test_y)[1]
                                    for _ in range(READS)])
                rows.append(dict(algo=config.algo, seed=config.seed, compensate=compensate,
                                 time=t, test_accuracy=float(accuracy)))
    lines = ["algo,seed,compensate,time_s,test_accuracy"] + [
        f"{r['algo']},{r['seed']},{int(r['compensate'])},{r['time']:g},{r['test_accuracy']:.4f}"
        for r in rows]
    path.write_text("\n".join(lines) + "\n")
    print(f"drift table: {path}")
    for algo in RULES:
        for compensate in (False, True):
            means = [np.mean([r["test_accuracy"] for r in rows if r["algo"] == algo
                              and r["compensate"] == compensate and r["time"] == t])
                     for t in times]
            print(f"drift {algo} compensate={int(compensate)}: "
                  + " ".join(f"{m:.4f}" for m in means))
    return rows


def figure(nodes, weights, adc, drift, replay, bits, times, path: Path) -> None:
    fig, (ax, ax_bits, ax_drift) = plt.subplots(1, 3, figsize=(15, 4.6))
    models = [("MTJ", nodes, {"noise": "mtj"}), ("replay", nodes, {"noise": replay}),
              ("PCM weights", weights, {"weight_noise": "pcm"}),
              ("ADC 8 bits", adc, {"adc": f"bits=8,range={ADC_RANGE:g}"})]
    for offset, algo, color in [(-0.15, "danp", "k"), (0.15, "bp", "C0")]:
        for i, (_, result, values) in enumerate(models):
            acc = final(result, {**values, "algo": algo}, "test_accuracy")
            ax.scatter([i + offset] * len(acc), acc, color=color, s=14,
                       label=algo.upper() if i == 0 else None)
            if acc:
                ax.hlines(np.mean(acc), i + offset - 0.12, i + offset + 0.12, color=color)
    ax.set_xticks(range(len(models)), [m[0] for m in models])
    ax.set(ylabel="final test accuracy (fraction)", title="each device model: seeds, mean")
    ax.legend(fontsize=8)
    for algo, color in [("danp", "k"), ("bp", "C0")]:
        means = [np.mean(final(adc, {"algo": algo, "adc": f"bits={b},range={ADC_RANGE:g}"},
                               "test_accuracy") or [np.nan]) for b in bits]
        ax_bits.plot(bits, means, "o-", color=color, label=algo.upper())
        for compensate, style in ((False, "o-"), (True, "s--")):
            means = [np.mean([r["test_accuracy"] for r in drift if r["algo"] == algo
                              and r["compensate"] == compensate and r["time"] == t] or [np.nan])
                     for t in times]
            label = f"{algo.upper()}{', compensated' if compensate else ''}"
            ax_drift.plot(range(len(times)), means, style, color=color, label=label)
    ax_bits.set(xlabel=f"ADC bits (full scale +-{ADC_RANGE:g}, node noise {ADC_NOISE:g})",
                ylabel="final test accuracy (fraction)", title="accuracy against ADC bits")
    ax_bits.legend(fontsize=8)
    names = [DRIFT_NAMES[DRIFT_TIMES.index(t)] for t in times]
    ax_drift.set_xticks(range(len(times)), names)
    ax_drift.set(xlabel="time since the last programming", ylabel="test accuracy (fraction)",
                 title="PCM drift after training")
    ax_drift.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
