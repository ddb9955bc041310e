"""The files that let a run be used and continued: the saved model and the checkpoint.

* ``model.pt`` -- the trained network: ``{"format", "version", "config", "network", "model",
  "inputs"}`` where ``model`` is the plain trained model, every ``R`` folded into its weights
  (``noisynets.export_model(network).state_dict()``: what a fresh instance of the user's own
  class takes with ``load_state_dict``, no noisynets needed), ``network`` the wrapper's whole
  state for resuming (``Network.state_dict()``: the unfolded weights and every layer's
  decorrelator ``R``), and ``inputs`` what inference needs instead of the training data
  (``noisynets.inference.input_spec``); since version 3 also ``noisynets_version`` and the
  run's identity ``run``; since version 4 its ``digest``. Version 1 files (before version 2,
  ``model`` was the *unfolded* ``state_dict``, and there was no ``inputs``) still load through
  ``network``, and version 2 and 3 files (no identity, no digest) load as they are.
  Plain tensors and numbers only, so ``torch.load(path, weights_only=True)`` reads it.
* ``checkpoint.pt`` -- everything a run needs to continue exactly where it stopped: the model,
  the optimizer, every noise source's generator and state, the data order's generator, torch's
  global random state, the measurements so far and how far the trace file had got; since
  version 2 the run's identity, since version 3 its ``digest``.

* ``identity.json`` -- the run's identity, written when it starts (``new_identity``): a
  random id and the sha256 of its settings, its data and its ``--model`` file. A checkpoint and
  a model file carry the same identity (``"run"``); ``check_identity`` refuses one that belongs
  to another run, and a folder without ``identity.json`` whose file says its run wrote one (a
  deleted identity is not taken for a run of an older noisynets).

Both ``.pt`` files are written atomically (``files.atomic``): to a temporary file in the same
folder, flushed to disk, then renamed over the old one, so a run killed at any moment, or a
full disk, leaves the previous complete file. They are checked before use: ``load`` reads
with ``weights_only=True`` and checks every key against ``MODEL_SCHEMA`` /
``CHECKPOINT_SCHEMA`` (a table of key -> what it must be, a test, the format version that
brought it: a new key is one line), then the file's ``digest`` -- the sha256 of everything it
holds (``content_digest``: every tensor's dtype, shape and bytes, every other value's type and
text), written when it was saved (``sealed``) -- so a file damaged on disk or in a copy is
refused in one line naming it, never trained on or scored; and every weight and optimizer
tensor must be finite (a non-finite weight is damage: a run never saves one). A file of a
version before the digest (checkpoint 1-2, model 1-3: written by an older noisynets) is read
without it, as before. ``check_fits`` and ``check_optimizer`` compare every tensor's shape
and dtype with the network the config builds. ``consent_to_model`` decides
whether a run's model file may be imported (only when the user names it again, or trusts it).

Example::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "x.pt"
    >>> save_atomic({"a": torch.ones(2)}, path)
    >>> torch.load(path, weights_only=True)["a"]
    tensor([1., 1.])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from noisynets.config import TrainConfig, finite
from noisynets.core.network import Network
from noisynets.core.noise import NoiseSource
from noisynets.files import atomic
from noisynets.training import EpochStats

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
# of checkpoint.pt: 2 adds noisynets_version and the run's identity ("run"), 3 the digest;
# 1 and 2 are still read
FORMAT_VERSION = 3
# of model.pt: 2 adds the folded ``model`` and ``inputs``, 3 noisynets_version and the run's
# identity ("run"), 4 the digest; 1 to 3 are still read
MODEL_VERSION = 4


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, all or nothing (``files.atomic``): a full disk, torch's
    ``RuntimeError`` included, is one ``ValueError`` and leaves the previous file and no
    temporary one."""
    with atomic(path) as tmp:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()


def load(path: str | Path, kind: str) -> dict[str, Any]:
    """A model or checkpoint file (``kind``), read with ``weights_only=True`` and checked
    against its schema (``MODEL_SCHEMA``, ``CHECKPOINT_SCHEMA``); ``ValueError`` with one line
    for a missing, unreadable, foreign, newer or damaged file."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{str(path)!r} is a symbolic link: a run folder's files must be its "
                         "own (copy the file in instead)")
    if not path.is_file():
        raise ValueError(f"no {kind} file {str(path)!r}")
    try:
        with warnings.catch_warnings():  # a raw pickle makes torch warn before it fails
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any damage: truncated, not a torch file, a forbidden object
        raise ValueError(f"{str(path)!r} is not a readable noisynets {kind} file "
                         f"({type(e).__name__}): replace it or start the run again") from None
    if not isinstance(data, dict) or data.get("format") != f"noisynets-{kind}":
        raise ValueError(f"{str(path)!r} is not a noisynets {kind} file")
    if kind == "checkpoint":
        check_schema(data, CHECKPOINT_SCHEMA, path, FORMAT_VERSION)
    else:
        check_schema(data, MODEL_SCHEMA, path, MODEL_VERSION)
    if data["version"] >= digest_version(kind) and content_digest(data) != data["digest"]:
        raise ValueError(f"{str(path)!r} is damaged: what it holds is not what was saved (its "
                         "sha256 differs from the digest written with it); replace it or start "
                         "the run again")
    check_finite(data, path)
    return data


# --- the digest: damage is refused, not used -----------------------------------------------

def content_digest(data: dict[str, Any]) -> str:
    """sha256 of everything ``data`` holds but its ``"digest"``: per value its type, per
    tensor its dtype, shape and bytes, per container its length and items in order."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in data.items() if k != "digest"})
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(f"D{len(value)};".encode())
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)};".encode())
        for item in value:
            _feed(h, item)
    elif isinstance(value, str):
        h.update(f"S{len(value)};".encode() + value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, float):
        h.update(f"F{value.hex()};".encode())
    else:  # None, bool, int, torch.device, torch.dtype: what weights_only reads
        h.update(f"{type(value).__name__}{value!r};".encode())


def sealed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its ``"digest"`` (``content_digest``): what ``save_atomic`` writes of a
    model or checkpoint file."""
    return {**data, "digest": content_digest(data)}


def digest_version(kind: str) -> int:
    """The first format version of a ``kind`` file ("model", "checkpoint") with a digest."""
    return 4 if kind == "model" else 3


def check_finite(data: dict[str, Any], path: str | Path) -> None:
    """Every floating tensor of the weights (``network``, ``model``) and of the optimizer's
    state is finite: a run never saves a non-finite one, so one is damage."""
    def tensors(value: Any, name: str) -> Any:
        if isinstance(value, Tensor):
            yield name, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from tensors(item, f"{name}.{key}" if name else str(key))

    for key in ("network", "model", "optimizer"):
        for name, t in tensors(data.get(key), ""):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{str(path)!r} is damaged: {key} tensor {name!r} holds "
                                 "values that are not finite (a run never saves one); replace "
                                 "it or start the run again")


# --- the schema: what every key of a file must be -----------------------------------------

def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return finite(value)


def _tensors(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, Tensor)
                                           for k, v in value.items())


def _stats(value: Any) -> bool:
    names = {f.name for f in dataclasses.fields(EpochStats)}
    required = {f.name for f in dataclasses.fields(EpochStats)
                if f.default is dataclasses.MISSING}
    return isinstance(value, dict) and required <= set(value) <= names and all(
        v is None or _number(v) or (isinstance(v, bool) and k == "stopped")
        or (isinstance(v, list) and all(x is None or _number(x) for x in v))
        for k, v in value.items())


def _random(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"cpu", "cuda"} \
        and _byte_tensor(value["cpu"]) and isinstance(value["cuda"], list) \
        and all(_byte_tensor(t) for t in value["cuda"])


def _byte_tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _run(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(k), str) for k in RUN_KEYS)


# key -> (what it must be, the test, the first format version that has it). One line per key:
# a new key of model.pt or checkpoint.pt is one more line here.
Schema = dict[str, tuple[str, Callable[[Any], bool], int]]


def _common(newest: int, identity_since: int, digest_since: int) -> Schema:
    """The keys both files have; ``newest``: the file's format version, ``identity_since``:
    the version that brought noisynets_version and the run's identity, ``digest_since`` the
    digest's."""
    return {
        "format": ("text", lambda v: isinstance(v, str), 1),
        "version": (f"an integer from 1 to {newest}",
                    lambda v: _integer(v) and 1 <= v <= newest, 1),
        "noisynets_version": ("text", lambda v: isinstance(v, str), identity_since),
        "config": ("a table of settings", lambda v: isinstance(v, dict)
                   and all(isinstance(k, str) for k in v), 1),
        "run": ("the run's identity (identity.json)", lambda v: v == {} or _run(v),
                identity_since),
        "network": ("a state dict of tensors", _tensors, 1),
        "digest": ("the sha256 of the file's contents", lambda v: isinstance(v, str)
                   and len(v) == 64 and all(c in "0123456789abcdef" for c in v), digest_since),
    }


MODEL_SCHEMA: Schema = {
    **_common(MODEL_VERSION, 3, 4),
    "model": ("a state dict of tensors", _tensors, 1),  # 2: folded (1: the unfolded one)
    "inputs": ("what inference needs (a table, or None)",
               lambda v: v is None or (isinstance(v, dict)
                                       and all(isinstance(k, str) for k in v)), 2),
}
CHECKPOINT_SCHEMA: Schema = {
    **_common(FORMAT_VERSION, 2, 3),
    "epoch": ("an integer >= 0", _integer, 1),
    "step": ("an integer >= 0", _integer, 1),
    "seconds": ("a finite number", _number, 1),
    "optimizer": ("an optimizer state dict", lambda v: isinstance(v, dict)
                  and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list), 1),
    "noise": ("a list of noise states", lambda v: isinstance(v, list)
              and all(isinstance(s, dict) and "generator" in s for s in v), 1),
    "random": ("torch's random states", _random, 1),
    "data_order": ("a generator state", _byte_tensor, 1),
    "initial": ("an evaluation", _stats, 1),
    "history": ("a list of evaluations", lambda v: isinstance(v, list)
                and all(_stats(h) for h in v), 1),
    "trace_records": ("an integer >= 0", _integer, 1),
}


def identity_version(kind: str) -> int:
    """The first format version of a ``kind`` file ("model", "checkpoint") with an identity."""
    return 3 if kind == "model" else 2


def check_schema(data: dict[str, Any], schema: Schema, path: str | Path,
                 newest: int = FORMAT_VERSION) -> None:
    """Every key ``schema`` names for the file's format version is there and is what it
    must be; a file of a format newer than ``newest`` (the newest this noisynets writes)
    says so ("written by noisynets X, this is Y")."""
    import noisynets

    version = data.get("version")
    if _integer(version) and version > newest or "version" not in data:
        by = data.get("noisynets_version", "a newer version")
        raise ValueError(f"{str(path)!r} was written by noisynets {by} (format {version!r}), "
                         f"this is noisynets {noisynets.__version__} (format "
                         f"{newest}): upgrade noisynets to read it")
    for key, (what, test, since) in schema.items():
        if since > (version if _integer(version) else newest):
            continue
        if key not in data:
            raise ValueError(f"{str(path)!r} is damaged: it has no {key!r} ({what}); "
                             "replace it or start the run again")
        if not test(data[key]):
            shown = repr(data[key]) if not isinstance(data[key], (dict, list)) \
                else type(data[key]).__name__
            raise ValueError(f"{str(path)!r} is damaged: {key!r} is {shown[:60]}, not "
                             f"{what}; replace it or start the run again")


def check_fits(state: dict[str, Tensor], expected: dict[str, Tensor], path: str | Path,
               what: str = "network") -> None:
    """``state`` holds exactly the tensors of ``expected`` (a freshly built network's
    ``state_dict()``), each of the same shape and dtype."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{str(path)!r} does not fit the {what} its config builds: "
                         + (f"it lacks {missing[:3]}" if missing else f"it has {extra[:3]} too"))
    for name, reference in expected.items():
        tensor = state[name]
        if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
            raise ValueError(f"{str(path)!r} does not fit the {what} its config builds: "
                             f"{name!r} is {tuple(tensor.shape)} {str(tensor.dtype)[6:]}, the "
                             f"{what} has {tuple(reference.shape)} {str(reference.dtype)[6:]}")


def check_optimizer(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                    path: str | Path) -> None:
    """The optimizer state has the parameter groups of ``optimizer`` and, per parameter,
    tensors that are scalars or of that parameter's shape."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = state["param_groups"]
    counts = [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in groups]
    if counts != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(f"{str(path)!r} does not fit the optimizer its config builds: "
                         f"parameter groups {counts}")
    for index, values in state["state"].items():
        if not _integer(index) or index >= len(params) or not isinstance(values, dict):
            raise ValueError(f"{str(path)!r} is damaged: optimizer state {index!r}")
        for name, value in values.items():
            if isinstance(value, Tensor) and value.dim() and (
                    value.shape != params[index].shape or not value.is_floating_point()):
                raise ValueError(f"{str(path)!r} does not fit the optimizer its config builds:"
                                 f" {name} of parameter {index} is {tuple(value.shape)}, the "
                                 f"parameter {tuple(params[index].shape)}")


def config_fields(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The file's settings, every key one this noisynets knows."""
    import noisynets

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data["config"]) - known)
    if unknown:
        by = data.get("noisynets_version", "another version")
        raise ValueError(f"{str(path)!r} has settings this noisynets does not know "
                         f"({', '.join(unknown[:4])}): written by noisynets {by}, this is "
                         f"noisynets {noisynets.__version__}")
    return dict(data["config"])


# --- the run's identity -------------------------------------------------------------------

IDENTITY_FILE = "identity.json"
RUN_KEYS = ("id", "config", "data", "model")  # model: the --model file's sha256, or ""
# Settings a resumed or evaluated run may differ in (the model file is identified by its
# content, the identity's "model", wherever it lies now).
_NOT_IDENTITY = ("out", "threads", "model")


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of the settings that make the run what it is (``_NOT_IDENTITY`` aside)."""
    kept = {k: v for k, v in sorted(config.items()) if k not in _NOT_IDENTITY}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def data_digest(*tensors: Tensor) -> str:
    """sha256 of the data set's tensors (their bytes, shapes and dtypes)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (a ``--model`` file: what consent is checked against)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def new_identity(config: dict[str, Any], data: str, model: str = "") -> dict[str, str]:
    """A new run's identity: a random id, the digests of its settings, its data and its
    ``--model`` file (``""``: none)."""
    return {"id": uuid.uuid4().hex, "config": config_digest(config), "data": data,
            "model": model}


def read_identity(folder: str | Path) -> dict[str, str] | None:
    """The identity a run folder recorded when its run started (None: an older run)."""
    path = Path(folder) / IDENTITY_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        if path.is_symlink() or not path.is_file():  # a FIFO would block the read
            raise ValueError
        identity = json.loads(path.read_text())
        if not _run(identity):
            raise ValueError
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError(f"{str(path)!r} is damaged: it records who the run is; start the "
                         "run again") from None
    return {k: identity[k] for k in RUN_KEYS}


def check_identity(data: dict[str, Any], folder: str | Path, path: str | Path) -> None:
    """The file ``path`` (read as ``data``) belongs to the run in ``folder``: its recorded
    identity is the folder's, and its settings are the ones that identity was made of."""
    identity = read_identity(folder)
    kind = "model" if data.get("format") == "noisynets-model" else "checkpoint"
    if data["version"] < identity_version(kind):
        return  # a run of an older noisynets: nothing to compare
    if identity is None:
        raise ValueError(f"{str(Path(folder) / IDENTITY_FILE)!r} is missing, but {str(path)!r} "
                         "was written by a run that records it: the run folder is incomplete; "
                         "copy back its identity.json or start the run again")
    if {k: data["run"].get(k) for k in RUN_KEYS} != identity:
        raise ValueError(f"{str(path)!r} belongs to another run (its identity "
                         f"{data['run'].get('id')!r}, the folder's {identity['id']!r}): "
                         "copy back this run's file or start the run again")
    if config_digest(data["config"]) != identity["config"]:
        raise ValueError(f"{str(path)!r} holds settings other than those its run started "
                         "with: it was edited or belongs to another run")


# --- consent before a run folder's model file runs ---------------------------------------

def consent_to_model(recorded: str, digest: str | None, given: str | None,
                     trust: bool) -> str:
    """The ``FILE.py:FUNCTION`` to import for a run trained with ``--model recorded``: the
    user's ``given`` one, whose file must hash to the recorded ``digest`` and whose function
    must be the recorded one, or ``recorded`` itself when the user ``trust``s the run. A run
    folder alone never makes noisynets import code."""
    if trust:
        return recorded
    function = recorded.rpartition(":")[2]
    if given is None:
        raise ValueError(f"this run trains your own model {recorded!r}, and importing a model "
                         f"file runs its code: name it again with --model FILE.py:{function} "
                         "(checked against the file the run started with) or add "
                         "--trust-model")
    path, colon, name = given.rpartition(":")
    if not colon or not path or name != function:
        raise ValueError(f"--model {given!r} must name the run's function: FILE.py:{function}")
    if not Path(path).expanduser().is_file():
        raise ValueError(f"--model: file {path!r} does not exist")
    if digest is None:
        raise ValueError("the run recorded no hash of its model file (an older noisynets): "
                         "add --trust-model to import it")
    if file_digest(Path(path).expanduser()) != digest:
        raise ValueError(f"--model: {path!r} is not the file this run started with (its "
                         "sha256 differs): name that file, or add --trust-model")
    return given


def model_state(network: Network, config: dict[str, Any],
                inputs: dict[str, Any] | None = None,
                run: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``model.pt`` holds (``MODEL_SCHEMA``, module doc); ``inputs``: what inference
    needs (``noisynets.inference.input_spec``), ``run``: the run's identity."""
    import noisynets

    return sealed({
        "format": "noisynets-model", "version": MODEL_VERSION,
        "noisynets_version": noisynets.__version__, "config": config, "run": run or {},
        "network": network.state_dict(), "model": network.folded().state_dict(),
        "inputs": inputs,
    })


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
