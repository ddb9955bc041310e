"""The files that let a run be used and continued: the saved model and the checkpoint.

* ``model.pt`` -- the trained network: ``{"format", "version", "config", "network", "model",
  "inputs"}`` where ``model`` is the plain trained model, every ``R`` folded into its weights
  (``noisynets.export_model(network).state_dict()``: what a fresh instance of the user's own
  class takes with ``load_state_dict``, no noisynets needed), ``network`` the wrapper's whole
  state for resuming (``Network.state_dict()``: the unfolded weights and every layer's
  decorrelator ``R``), and ``inputs`` what inference needs instead of the training data
  (``noisynets.inference.input_spec``). Version 1 files (before version 2, ``model`` was the
  *unfolded* ``state_dict``, and there was no ``inputs``) still load through ``network``.
  Plain tensors and numbers only, so ``torch.load(path, weights_only=True)`` reads it.
* ``checkpoint.pt`` -- everything a run needs to continue exactly where it stopped: the model,
  the optimizer, every noise source's generator and state, the data order's generator, torch's
  global random state, the measurements so far and how far the trace file had got.

Both are written atomically: to a temporary file in the same folder, flushed to disk, then
renamed over the old one, so a run killed at any moment leaves the previous complete file.

Example::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "x.pt"
    >>> save_atomic({"a": torch.ones(2)}, path)
    >>> torch.load(path, weights_only=True)["a"]
    tensor([1., 1.])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from noisynets.network import Network
from noisynets.noise import NoiseSource

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1  # of checkpoint.pt
MODEL_VERSION = 2  # of model.pt: 2 adds the folded ``model`` and ``inputs``


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, all or nothing: a temporary file, fsync, then a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write {str(path)!r}: {e.strerror or e}") from None


def load(path: str | Path, kind: str) -> dict[str, Any]:
    """A model or checkpoint file (``kind``), read with ``weights_only=True``; ``ValueError``
    with one line for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no {kind} file {str(path)!r}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any damage: truncated, not a torch file, a forbidden object
        raise ValueError(f"{str(path)!r} is not a readable noisynets {kind} file "
                         f"({type(e).__name__}): replace it or start the run again") from None
    if not isinstance(data, dict) or data.get("format") != f"noisynets-{kind}":
        raise ValueError(f"{str(path)!r} is not a noisynets {kind} file")
    return data


def model_state(
    network: Network, config: dict[str, Any], inputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``model.pt`` holds (module doc)."""
    return {
        "format": "noisynets-model", "version": MODEL_VERSION, "config": config,
        "network": network.state_dict(), "model": network.folded().state_dict(),
        "inputs": inputs,
    }


def noise_states(network: Network) -> list[dict[str, Any]]:
    """Every noise source's state, in module order, with devices as text (``weights_only``)."""
    states = []
    for source in network.modules():
        if isinstance(source, NoiseSource):
            state = dict(source.get_state())
            if state["generator"] is not None:
                device, rng = state["generator"]
                state["generator"] = (str(device), rng)
            states.append(state)
    return states


def set_noise_states(network: Network, states: list[dict[str, Any]]) -> None:
    sources = [m for m in network.modules() if isinstance(m, NoiseSource)]
    if len(sources) != len(states):
        raise ValueError(f"the checkpoint holds {len(states)} noise sources, the network "
                         f"{len(sources)}: it belongs to another network")
    for source, state in zip(sources, states):
        state = dict(state)
        if state["generator"] is not None:
            device, rng = state["generator"]
            state["generator"] = (torch.device(device), rng)
        source.set_state(state)


def random_states() -> dict[str, Any]:
    """torch's global generators (Poisson input, dropout, a user's model initialisation)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
