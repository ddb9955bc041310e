"""Run configuration: a dataclass, the presets that fill what a user leaves out, and validation.

A field left ``None`` takes the preset for the run's data set, rule and unit (``PRESETS``,
``RULE_LR`` and ``UNIT_PRESETS``; the README's table lists them). ``resolve`` returns a config
with every field set and checked; a bad value raises ``ValueError`` with a one-line message.
Configs load from TOML files whose keys are the field names.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisynets.data import DATASETS, teacher_options
from noisynets.losses import LOSSES
from noisynets.models import ARCHS
from noisynets.network import ENCODINGS
from noisynets.noise import make_noise
from noisynets.precision import PRECISIONS
from noisynets.rules import RULES
from noisynets.units import UNITS

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "the preset"."""

    algo: str = "danp"
    dataset: str = "digits"
    arch: str = "mlp"
    model: str | None = None
    hidden: list[int] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    decor_lr: float | None = None
    decor_fraction: float | None = None
    noise: str = "gaussian"
    noise_std: float | None = None
    noise_samples: int = 1
    both_noisy: bool = False
    optimizer: str = "adam"
    loss: str | None = None
    unit: str = "leaky_relu"
    time_steps: int | None = None
    encoding: str = "current"
    beta: float = 0.9
    threshold: float = 1.0
    threshold_noise: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    data_root: str | None = None
    standardize: bool | None = None
    out: str | None = None
    checkpoint_every: int = 1
    max_bad_steps: int = 10
    trace_every: int = 50
    trace_probe: int = 16
    trace_layers: list[int] | None = None
    trace_units: int = 256
    spike_events: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Per data set: the network and the schedule.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(
        hidden=[1000, 1000, 1000], epochs=40, batch_size=64, noise_std=1e-3, decor_lr=1e-3,
        decor_fraction=1.0,
    ),
    "fashion-mnist": dict(
        hidden=[1000, 1000, 1000], epochs=5, batch_size=1000, noise_std=1e-3, decor_lr=1e-3,
        decor_fraction=0.1,
    ),
}
PRESETS["mnist"] = PRESETS["fashion-mnist"]
PRESETS["cifar10"] = PRESETS["fashion-mnist"]
PRESETS["teacher"] = dict(
    hidden=[100], epochs=20, batch_size=100, noise_std=1e-3, decor_lr=1e-3, decor_fraction=1.0,
    loss="mse",
)
for preset in PRESETS.values():
    preset.setdefault("loss", "ce")
    preset.setdefault("standardize", False)

# Per data set: what the convolutional architecture (--arch conv) changes.
CONV_PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(epochs=20, batch_size=64, decor_fraction=1.0, standardize=True),
    "fashion-mnist": dict(epochs=5, batch_size=256, decor_fraction=0.1, standardize=True),
}
CONV_PRESETS["mnist"] = CONV_PRESETS["fashion-mnist"]
CONV_PRESETS["cifar10"] = CONV_PRESETS["fashion-mnist"]

# Per data set and rule: Adam's learning rate.
RULE_LR: dict[str, dict[str, float]] = {
    "digits": dict(bp=1e-3, dbp=1e-3, np=1e-3, dnp=1e-3, inp=1e-3, dinp=1e-3, anp=1e-3, danp=1e-3),
    "fashion-mnist": dict(
        bp=1e-4, dbp=3e-4, np=1e-4, dnp=3e-4, inp=3e-4, dinp=3e-4, anp=1e-4, danp=5e-4
    ),
}
RULE_LR["mnist"] = RULE_LR["fashion-mnist"]
RULE_LR["cifar10"] = RULE_LR["fashion-mnist"]
RULE_LR["teacher"] = {rule: 1e-3 for rule in RULE_LR["digits"]}
# With --arch conv (Fashion-MNIST: BP and DANP as in a reference implementation of the same
# net; the others not tuned).
CONV_LR: dict[str, float] = dict(
    bp=1e-3, dbp=1e-3, np=1e-3, dnp=1e-3, inp=1e-3, dinp=1e-3, anp=1e-3, danp=2e-3
)
# With --optimizer sgd: one learning rate per rule, whatever the data set (chosen on digits).
SGD_LR: dict[str, float] = dict(
    bp=0.1, dbp=0.1, np=1e-3, dnp=1e-3, inp=1e-3, dinp=1e-3, anp=1e-3, danp=1e-2
)

# Per unit: what changes for units that need it (a discontinuous unit needs a noise large enough
# to flip it; a spiking unit runs for several time steps).
UNIT_PRESETS: dict[str, dict[str, Any]] = {
    "heaviside": dict(hidden=[300, 300], noise_std=0.3),
    "sign": dict(hidden=[300, 300], noise_std=0.3),
    "stochastic_binary": dict(hidden=[300, 300]),
    "lif": dict(hidden=[1000], time_steps=10, noise_std=0.2),
}


def load_toml(path: str | Path) -> dict[str, Any]:
    """The fields of a TOML config file (keys are ``TrainConfig`` field names)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"config file {str(path)!r}: unknown key(s) {', '.join(unknown)}")
    return data


def dataset_name(dataset: str) -> str:
    """The data set a name or spec names: ``teacher:inputs=10`` is ``teacher``."""
    return dataset.partition(":")[0].strip().lower() if isinstance(dataset, str) else dataset


def resolve(config: TrainConfig) -> TrainConfig:
    """A copy of ``config`` with the presets filled in, validated."""
    _choice("algo", config.algo, RULES)
    name = dataset_name(config.dataset)
    _choice("dataset", name, DATASETS)
    if name == "teacher":
        teacher_options(config.dataset)  # raises on a bad spec
    elif config.dataset != name:
        raise ValueError(f"dataset {config.dataset!r}: only teacher takes key=value options")
    _choice("arch", config.arch, ARCHS)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    if config.loss is not None:
        _choice("loss", config.loss, LOSSES)
    _choice("unit", config.unit, UNITS)
    _choice("encoding", config.encoding, ENCODINGS)
    _choice("device", config.device, DEVICES)
    _choice("precision", config.precision, PRECISIONS)
    if config.model is not None and not isinstance(config.model, str):
        raise ValueError(f"model {config.model!r} must be FILE.py:FUNCTION")
    conv = config.arch == "conv" and config.model is None
    if conv and name == "teacher":
        raise ValueError("the teacher data set is vectors, not images: use --arch mlp")
    preset = dict(PRESETS[name])
    preset.update(UNIT_PRESETS.get(config.unit, {}))
    if conv:
        preset.update(CONV_PRESETS[name])
    if conv or config.model is not None:
        preset["hidden"] = None  # the dense stack's sizes do not apply
    if config.optimizer == "sgd":
        preset["lr"] = SGD_LR[config.algo]
    elif conv:
        preset["lr"] = CONV_LR[config.algo]
    else:
        preset["lr"] = RULE_LR[name][config.algo]
    preset.setdefault("time_steps", 1)
    filled = {
        name: preset[name] if getattr(config, name) is None else getattr(config, name)
        for name in preset
    }
    c = dataclasses.replace(config, **filled)
    if c.hidden is not None or preset["hidden"] is not None:  # a dense stack
        if not isinstance(c.hidden, (list, tuple)) or not c.hidden:
            raise ValueError(f"hidden {c.hidden!r} must be a list of layer sizes, e.g. "
                             "[1000, 1000]")
        c.hidden = list(c.hidden)
        for h in c.hidden:
            _positive_int("hidden", h)
    for name in ("epochs", "batch_size", "noise_samples", "time_steps", "trace_probe"):
        _positive_int(name, getattr(c, name))
    for name in ("trace_every", "trace_units", "checkpoint_every", "max_bad_steps"):
        if isinstance(getattr(c, name), bool) or not isinstance(getattr(c, name), int) \
                or getattr(c, name) < 0:
            raise ValueError(f"{name} {getattr(c, name)!r} must be an integer >= 0")
    if c.trace_layers is not None:
        if not isinstance(c.trace_layers, (list, tuple)) or not c.trace_layers:
            raise ValueError(f"trace_layers {c.trace_layers!r} must be a list of layer numbers")
        c.trace_layers = list(c.trace_layers)
        layers = len(c.hidden) + 1 if c.hidden is not None else None  # else: the writer checks
        for k in c.trace_layers:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (
                    layers is not None and k > layers):
                raise ValueError(f"trace layer {k!r} does not exist: the network has layers "
                                 f"1..{layers}")
    for name in ("lr", "noise_std", "beta", "threshold"):
        _positive_float(name, getattr(c, name))
    _nonnegative_float("decor_lr", c.decor_lr)
    _nonnegative_float("threshold_noise", c.threshold_noise)
    if c.threshold_noise > 0 and c.unit != "lif":
        raise ValueError(f"threshold_noise {c.threshold_noise:g} needs --unit lif")
    for name in ("both_noisy", "standardize"):
        if not isinstance(getattr(c, name), bool):
            raise ValueError(f"{name} {getattr(c, name)!r} must be true or false")
    if not isinstance(c.noise, str):
        raise ValueError(f"noise {c.noise!r} must be a noise spec such as 'gaussian'")
    make_noise(c.noise, c.noise_std)  # raises on a bad spec
    _positive_float("decor_fraction", c.decor_fraction)
    if c.decor_fraction > 1:
        raise ValueError(f"decor_fraction {c.decor_fraction} must be in (0, 1]")
    if c.beta > 1:
        raise ValueError(f"beta {c.beta} must be in (0, 1]")
    if c.threads is not None:
        _positive_int("threads", c.threads)
    if isinstance(c.seed, bool) or not isinstance(c.seed, int) or c.seed < 0:
        raise ValueError(f"seed {c.seed!r} must be an integer >= 0")
    return c


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} {value!r} must be a positive integer")


def _positive_float(name: str, value: Any) -> None:
    _nonnegative_float(name, value)
    if value == 0:
        raise ValueError(f"{name} {value!r} must be a positive, finite number")


def _nonnegative_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} {value!r} must be a number")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} {value!r} must be a finite number >= 0")
