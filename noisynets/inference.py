"""A trained run used for inference: its network loaded without the training data, and the
labels and scores (or regression outputs) of a file of inputs (``noisynets predict``).

``model.pt`` (``noisynets.checkpoints``) records what inference needs of the data,
``input_spec``: one sample's shape, the number of outputs, the task and the standardisation the
run applied (``x -> (x - mean) / std``, the training split's mean and standard deviation), so
``load_trained(folder)`` rebuilds the network from the run's config alone. A version 1
``model.pt`` has no such record: it loads through its data set, as ``noisynets evaluate`` does.

Input files (``read_inputs``): ``.npy`` (one array), ``.npz`` (the array ``x``, or its only
array) or ``.csv`` (numbers separated by commas, one sample per row, flattened; a first line
that is not numbers is a header), as raw inputs -- the run's standardisation is applied here.
The samples are ``(n, *shape)``, ``(n, features)`` or one sample of ``shape``.

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
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from noisynets.checkpoints import MODEL_FILE
from noisynets.config import TrainConfig, resolve
from noisynets.data import DataSplits
from noisynets.network import Network

INPUT_SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".csv")
OUTPUT_SUFFIXES: tuple[str, ...] = (".csv", ".npz")


def input_spec(data: DataSplits, standardize: bool) -> dict[str, Any]:
    """What ``model.pt["inputs"]`` records of the (unstandardised) training data ``data``:
    ``{"shape", "outputs", "task", "mean", "std"}`` (``mean``, ``std``: ``None`` unless
    ``standardize``)."""
    mean = std = None
    if standardize:
        mean, std = float(data.train_x.mean()), float(data.train_x.std())
    return {"shape": list(data.input_shape), "outputs": int(data.num_classes),
            "task": data.task, "mean": mean, "std": std}


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
    step = shape[1:] if config.encoding == "sequence" else shape  # a sequence: one step's
    shapes = SimpleNamespace(input_shape=shape, num_features=math.prod(shape),
                             step_features=math.prod(step), num_classes=int(spec["outputs"]))
    torch.manual_seed(config.seed)
    network, _, _ = build(config, shapes)  # type: ignore[arg-type]
    check_fits(state["network"], network.state_dict(), folder / MODEL_FILE)
    try:
        network.load_state_dict(state["network"])
    except RuntimeError as e:
        raise ValueError(f"{str(folder / MODEL_FILE)!r} does not fit the network its config "
                         f"describes ({str(e).splitlines()[0]})") from None
    return network.to(choose_device(config.device)).eval(), config, spec


def read_inputs(path: str | Path, spec: dict[str, Any]) -> Tensor:
    """The samples of file ``path`` as a float32 tensor ``(n, *shape)``, standardised as the
    run was (module doc); ``ValueError`` with one line for a file that is missing, of another
    kind, not numbers, not finite, or of a shape the model does not take."""
    path = Path(path)
    where = f"--input {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    if path.suffix.lower() not in INPUT_SUFFIXES:
        raise ValueError(f"{where}: unknown file type {path.suffix or '(none)'!r}: give a "
                         f"{', '.join(INPUT_SUFFIXES)} file")
    array = _read_array(path, where)
    if array.dtype.kind not in "fiub" or array.size == 0:
        raise ValueError(f"{where} holds {array.dtype} values of shape {array.shape}: give "
                         "numbers, one sample per row")
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
    x = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where} holds values that are not finite (NaN or inf): replace them")
    if spec.get("mean") is not None:
        x = (x - spec["mean"]) / spec["std"]
    return x


def _read_array(path: Path, where: str) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.keys())
                if "x" in names:
                    return archive["x"]
                if len(names) == 1:
                    return archive[names[0]]
                raise ValueError(f"{where} holds the arrays {', '.join(names) or '(none)'}: "
                                 "name the inputs x")
        with path.open() as f:
            first = f.readline()
        try:
            [float(v) for v in first.split(",")]
            header = 0
        except ValueError:
            header = 1
        return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=header, dtype=np.float64)
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where} is not a readable {suffix} file of numbers "
                         f"({' '.join(str(e).split())[:120]})") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{where} cannot be read: {e}") from None


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
            model: str | None = None, trust_model: bool = False) -> Path:
    """Write the predictions of the run in ``folder`` for the samples in file ``inputs`` to
    ``out`` (default: beside ``inputs``, ``<name>_predictions.csv``); returns ``out``.
    ``model``, ``trust_model``: as for ``load_trained``."""
    inputs = Path(inputs)
    out = Path(out) if out is not None else inputs.with_name(inputs.stem + "_predictions.csv")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"-o {str(out)!r}: unknown file type {out.suffix or '(none)'!r}: "
                         f"name a {' or '.join(OUTPUT_SUFFIXES)} file")
    if out.is_dir() or not out.parent.is_dir():
        raise ValueError(f"-o {str(out)!r}: name a file in a folder that exists")
    if out.exists() and out.resolve() == inputs.resolve():
        raise ValueError(f"-o {str(out)!r} is the input file: name another file")
    network, config, spec = load_trained(folder, model, trust_model)
    x = read_inputs(inputs, spec)
    result = predictions(network, config, spec, x)
    try:
        if out.suffix.lower() == ".npz":
            np.savez(out, **result)
        else:
            with out.open("w", newline="") as f:
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
    except OSError as e:
        raise ValueError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    return out
