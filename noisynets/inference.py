"""A trained run used for inference: its network loaded without the training data, and the
labels and scores (or regression outputs) of a file of inputs (``noisynets predict``).

``model.pt`` (``noisynets.checkpoints``) records what inference needs of the data,
``input_spec``: one sample's shape, the number of outputs, the task and the standardisation the
run applied (``x -> (x - mean) / std``, the training split's mean and standard deviation), so
``load_trained(folder)`` rebuilds the network from the run's config alone. A version 1
``model.pt`` has no such record: it loads through its data set, as ``noisynets evaluate`` does.

Input files (``read_inputs``, through ``noisynets.arrays.read_array``, which knows a file by
its content, not its name): ``.npy`` (one array), ``.npz`` (the array ``x``, or its only
array) or CSV text (numbers separated by commas, one sample per row, flattened; a first line
of names, none a number, is a header, and a line that does not parse is named, never
skipped), as raw inputs -- the run's standardisation is applied here.
The samples are ``(n, *shape)``, ``(n, features)`` or one sample of ``shape``.

Inputs far from what the model saw: ``input_spec`` records the range ``[min, max]`` of the raw
training inputs, and ``predict`` checks a file against it (``out_of_range_check``): a value more
than the range's width outside it -- raw 0..16 pixels where training used pixels / 16 -- gets
one warning line (``out_of_range="warn"``, the default), an error (``"refuse"``) or nothing
(``"ignore"``). A model file written before the range was recorded is not checked.

Outputs (``predict``): ``.csv`` (default; a header, then per sample ``label`` and ``score_0 ..
score_{C-1}``, the softmax probabilities of a cross-entropy model and the logits otherwise; a
regression: ``output_0 ..``) or ``.npz`` (arrays ``labels`` and ``scores``, or ``outputs``).

Example::

    from noisynets.inference import load_trained, predict
    network, config, spec = load_trained("runs/<run>")      # in eval mode
    predict("runs/<run>", "my_inputs.npy", "predictions.csv")
"""

from __future__ import annotations

import csv
import dataclasses
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from noisynets.arrays import read_array
from noisynets.checkpoints import MODEL_FILE
from noisynets.config import TrainConfig, resolve
from noisynets.core.network import Network
from noisynets.data import DataSplits
from noisynets.files import atomic, check_output

INPUT_KINDS: tuple[str, ...] = ("npy", "npz", "csv")  # by the file's content
OUTPUT_SUFFIXES: tuple[str, ...] = (".csv", ".npz")


def input_spec(data: DataSplits, standardize: bool) -> dict[str, Any]:
    """What ``model.pt["inputs"]`` records of the (unstandardised) training data ``data``:
    ``{"shape", "outputs", "task", "mean", "std", "min", "max"}`` (``mean``, ``std``: ``None``
    unless ``standardize``; ``min``, ``max``: the range of the raw training inputs)."""
    mean = std = None
    if standardize:
        mean, std = float(data.train_x.mean()), float(data.train_x.std())
    return {"shape": list(data.input_shape), "outputs": int(data.num_classes),
            "task": data.task, "mean": mean, "std": std,
            "min": float(data.train_x.min()), "max": float(data.train_x.max())}


def load_trained(folder: str | Path, model: str | None = None, trust_model: bool = False
                 ) -> tuple[Network, TrainConfig, dict[str, Any]]:
    """The trained network of the run in ``folder`` in eval mode, its config and its
    ``input_spec``; on the run's device (the CPU if it has no GPU now). Needs no data files
    (a version 1 ``model.pt``: its data set's). ``model.pt`` is checked as for ``noisynets
    evaluate`` (``run.load_network``), and a run trained with ``--model`` imports its model
    file only when ``model`` names it again or ``trust_model``
    (``checkpoints.consent_to_model``)."""
    from noisynets.checkpoints import check_fits
    from noisynets.run import build, choose_device, load_model_file, load_network

    folder = Path(folder)
    state, fields = load_model_file(folder, model, trust_model)
    spec = state.get("inputs")
    if spec is None:  # version 1: the data set gives the shapes and the standardisation
        from noisynets.data import load_dataset

        network, config, _ = load_network(folder, model=model, trust_model=trust_model)
        spec = input_spec(load_dataset(config.dataset, config.data_root), config.standardize)
        return network.eval(), config, spec
    config = resolve(TrainConfig(**{**fields, "out": str(folder)}))
    if config.device == "cuda" and not torch.cuda.is_available():
        config = dataclasses.replace(config, device="cpu")
    shape = tuple(int(d) for d in spec["shape"])
    shapes = SimpleNamespace(input_shape=shape, num_features=math.prod(shape),
                             num_classes=int(spec["outputs"]))
    torch.manual_seed(config.seed)
    network, _, _ = build(config, shapes)  # type: ignore[arg-type]
    check_fits(network.current_keys(state["network"]), network.state_dict(), folder / MODEL_FILE)
    try:
        network.load_state_dict(state["network"])
    except RuntimeError as e:
        raise ValueError(f"{str(folder / MODEL_FILE)!r} does not fit the network its config "
                         f"describes ({str(e).splitlines()[0]})") from None
    return network.to(choose_device(config.device)).eval(), config, spec


def read_inputs(path: str | Path, spec: dict[str, Any], out_of_range: str = "ignore",
                warn: Callable[[str], None] | None = None) -> Tensor:
    """The samples of file ``path`` as a float32 tensor ``(n, *shape)``, standardised as the
    run was (module doc); ``ValueError`` with one line for a file that is missing, not a
    regular file, of another kind (by its content: ``noisynets.arrays``), damaged, not numbers,
    not finite, or of a shape the model does not take. Raw values far outside the training
    range (``out_of_range_check``) are passed to ``warn`` (``out_of_range="warn"``), refused
    (``"refuse"``) or let through (``"ignore"``)."""
    path = Path(path)
    where = f"--input {str(path)!r}"
    if not path.exists():
        raise ValueError(f"{where}: no such file")
    array = read_array(path, "--input", INPUT_KINDS)
    shape = tuple(int(d) for d in spec["shape"])
    features = math.prod(shape)
    if array.shape == shape:
        array = array[None]
    elif array.ndim == 2 and array.shape[1] == features:
        array = array.reshape(-1, *shape)
    elif tuple(array.shape[1:]) != shape:
        raise ValueError(f"{where} holds an array of shape {tuple(array.shape)}: the model "
                         f"takes samples of shape {shape}, as (n, {', '.join(map(str, shape))})"
                         f" or (n, {features}), one sample per row")
    with np.errstate(over="ignore"):  # beyond float32: inf, refused below
        x = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where} holds values that are not finite (NaN or inf, or beyond "
                         "float32): replace them")
    if out_of_range not in OUT_OF_RANGE:
        raise ValueError(f"out_of_range {out_of_range!r}: choose one of {', '.join(OUT_OF_RANGE)}")
    problem = None if out_of_range == "ignore" else out_of_range_check(x, spec, where)
    if problem is not None:
        if out_of_range == "refuse":
            raise ValueError(f"{problem}; --out-of-range warn predicts all the same")
        if warn is not None:
            warn(problem)
    if spec.get("mean") is not None:
        x = (x - spec["mean"]) / spec["std"]
    return x


OUT_OF_RANGE: tuple[str, ...] = ("warn", "refuse", "ignore")


def out_of_range_check(x: Tensor, spec: dict[str, Any], where: str) -> str | None:
    """One line saying how far the raw inputs ``x`` lie outside the training range that
    ``spec`` recorded, when some value lies more than the range's width beyond it; ``None``
    when none does, or when ``spec`` has no range (a model file from before it was recorded)."""
    low, high = spec.get("min"), spec.get("max")
    if low is None or high is None or x.numel() == 0:
        return None
    width = max(high - low, 1e-12)
    far = (x < low - width) | (x > high + width)
    if not bool(far.any()):
        return None
    share = float(far.double().mean())
    return (f"{where}: values span [{float(x.min()):.4g}, {float(x.max()):.4g}] but the model "
            f"was trained on raw inputs in [{low:.4g}, {high:.4g}] ({share:.1%} of the values "
            "lie far outside): scale them as the training data was (the digits: pixels / 16)")


@torch.no_grad()
def predictions(network: Network, config: TrainConfig, spec: dict[str, Any], x: Tensor,
                batch_size: int = 2000) -> dict[str, np.ndarray]:
    """``{"labels", "scores"}`` (classification: argmax of the logits, and the softmax of a
    cross-entropy model or the logits) or ``{"outputs"}`` (regression) for inputs ``x``."""
    device = next(network.parameters()).device
    logits = torch.cat([network(x[i : i + batch_size].to(device)).cpu()
                        for i in range(0, x.shape[0], batch_size)])
    if spec.get("task") == "regression":
        return {"outputs": logits.numpy()}
    scores = logits.softmax(-1) if config.loss == "ce" else logits
    return {"labels": logits.argmax(-1).numpy(), "scores": scores.numpy()}


def predict(folder: str | Path, inputs: str | Path, out: str | Path | None = None,
            model: str | None = None, trust_model: bool = False, out_of_range: str = "warn",
            warn: Callable[[str], None] | None = None) -> Path:
    """Write the predictions of the run in ``folder`` for the samples in file ``inputs`` to
    ``out`` (default: beside ``inputs``, ``<name>_predictions.csv``); returns ``out``.
    ``model``, ``trust_model``: as for ``load_trained``; ``out_of_range``, ``warn``: as for
    ``read_inputs`` (a warning goes to ``warnings.warn`` when ``warn`` is ``None``)."""
    inputs = Path(inputs)
    out = Path(out) if out is not None else inputs.with_name(inputs.stem + "_predictions.csv")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"-o {str(out)!r}: unknown file type {out.suffix or '(none)'!r}: "
                         f"name a {' or '.join(OUTPUT_SUFFIXES)} file")
    check_output(out, [inputs])
    network, config, spec = load_trained(folder, model, trust_model)
    x = read_inputs(inputs, spec, out_of_range,
                    warn if warn is not None else lambda m: warnings.warn(m, stacklevel=3))
    result = predictions(network, config, spec, x)
    write_predictions(result, out)
    return out


def write_predictions(result: dict[str, np.ndarray], out: Path) -> None:
    """``predictions``'s ``result`` as the ``.npz`` or ``.csv`` file ``out`` (module doc),
    whole or not at all (``files.atomic``: a full disk leaves no half-written file)."""
    with atomic(out) as tmp:
        if out.suffix.lower() == ".npz":
            with tmp.open("wb") as f:
                np.savez(f, **result)
            return
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            if "outputs" in result:
                values = result["outputs"]
                w.writerow([f"output_{k}" for k in range(values.shape[1])])
                w.writerows([[repr(float(v)) for v in row] for row in values])
            else:
                labels, scores = result["labels"], result["scores"]
                w.writerow(["label", *(f"score_{k}" for k in range(scores.shape[1]))])
                w.writerows([[int(label), *(repr(float(v)) for v in row)]
                             for label, row in zip(labels, scores)])
