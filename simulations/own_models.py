"""Experiment 11: the models researchers write, trained as written (issue 26).

    python simulations/own_models.py
    python simulations/own_models.py --quick

Each a ``--model`` file of ``examples/``, on the embedded digits, 10 epochs, seeds 0-2, DANP
and its reference (BPTT or BP), every other option the presets the model gets:

* ``tutorial``: snntorch's tutorial network (``examples/tutorial_net.py:Net``: two
  ``nn.Linear``, two ``snn.Leaky(beta=0.95)`` without ``init_hidden``, its own loop over 25
  steps, returning spikes and membranes over time) with snntorch's ``ce_rate_loss``;
* ``residual_mlp`` and ``residual_cnn``: ``examples/residual.py``'s residual blocks
  (``x + f(x)``) as ``nn.Module`` subclasses, no batch normalisation;
* ``conv_file``: ``examples/conv_net.py:ConvNet`` (the layers of ``--arch conv``, PyTorch's
  own initialisation) with no other options, against ``--arch conv``'s preset, DANP.

Figure ``own_models.png``: the final test accuracy of every seed per model and rule.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, final, save, sweep  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODELS = {  # name: (model, its reference rule, extra options)
    "tutorial": (f"{EXAMPLES / 'tutorial_net.py'}:Net", "dbp", {"loss": "ce_rate_loss"}),
    "residual_mlp": (f"{EXAMPLES / 'residual.py'}:ResidualMLP", "dbp", {}),
    "residual_cnn": (f"{EXAMPLES / 'residual.py'}:ResidualCNN", "dbp", {}),
}
CONV_FILE = f"{EXAMPLES / 'conv_net.py'}:ConvNet"


def main() -> None:
    args = arguments("own_models", __doc__, epochs=10)
    seeds = [0] if args.quick else args.seed_list
    epochs = 1 if args.quick else args.epochs
    common = dict(dataset="digits", epochs=epochs, trace_every=0, figures=False)
    finals: dict[str, list[float]] = {}
    for name, (model, reference, extra) in MODELS.items():
        if args.quick and name == "tutorial":
            extra = {**extra, "batch_size": 256}
        result = sweep(args, name, {"algo": ["danp", reference], "seed": seeds},
                       {**common, "model": model, **extra})
        for algo in ("danp", reference):
            finals[f"{name}\n{algo}"] = final(result, {"algo": algo}, "test_accuracy")
    result = sweep(args, "conv_file", {"algo": ["danp"], "seed": seeds},
                   {**common, "model": CONV_FILE})
    finals["conv file\ndanp"] = final(result, {"algo": "danp"}, "test_accuracy")
    result = sweep(args, "conv_arch", {"algo": ["danp"], "seed": seeds},
                   {**common, "arch": "conv"})
    finals["--arch conv\ndanp"] = final(result, {"algo": "danp"}, "test_accuracy")
    for label, values in finals.items():
        mean = sum(values) / len(values)
        print(f"{label.replace(chr(10), ' '):24s} {mean:.4f}  "
              + " ".join(f"{v:.4f}" for v in values))
    fig, ax = plt.subplots(figsize=(11, 4.3))
    for i, values in enumerate(finals.values()):
        ax.scatter([i] * len(values), values, color=f"C{i}", s=14, zorder=3)
        ax.hlines(sum(values) / len(values), i - 0.3, i + 0.3, color=f"C{i}")
    ax.set_xticks(range(len(finals)), list(finals), fontsize=8)
    ax.set(ylabel="final test accuracy (fraction)",
           title=f"your own models on the digits, {epochs} epochs: seeds (dots), mean (line)")
    fig.tight_layout()
    save(fig, Path(args.out) / "own_models.png")


if __name__ == "__main__":
    main()
