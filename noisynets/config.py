"""Run configuration: a dataclass, the presets that fill what a user leaves out, and validation.

A field left ``None`` takes the preset for the run's data set, rule and unit (``PRESETS``,
``RULE_LR`` and ``UNIT_PRESETS``; docs/cli.md's Presets tables list them). ``resolve`` returns
a config with every field set and checked; a bad value raises ``ValueError`` with a one-line
message. Configs load from TOML files whose keys are the field names.

One set of validators serves the command line, TOML files and sweep files: the ``_integer``,
``_number`` checks of ``resolve`` (a value of the wrong type, out of range or not finite is a
``ValueError`` naming the setting), the argparse types built on them (``positive_int``,
``positive_float``, ...: the same ranges, for options that are not settings too), and
``check_values``, which refuses what TOML can hold but no setting can (dates, tables, lists of
lists). Every count is at most ``LARGEST``; threads at most ``MAX_THREADS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import difflib
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisynets.core.analog import make_adc, make_weight_noise
from noisynets.core.losses import LOSS_NAMES
from noisynets.core.noise import GENERATORS, make_noise
from noisynets.core.precision import PRECISIONS
from noisynets.core.steps import ENCODINGS, READOUTS
from noisynets.core.units import RESETS, UNITS
from noisynets.data import DATASETS, dataset_options, sequence_steps
from noisynets.models import ARCHS
from noisynets.rules import NOISELESS, RULES

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
# Learning-rate schedules (torch.optim.lr_scheduler, stepped once per epoch; run.make_scheduler).
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step", "exponential")
# TOML keys and option names users write for a field of another name.
ALIASES: dict[str, str] = {
    "learning_rate": "lr", "num_epochs": "epochs", "n_epochs": "epochs", "batch": "batch_size",
    "algorithm": "algo", "rule": "algo", "optim": "optimizer", "scheduler": "lr_schedule",
    "lr_scheduler": "lr_schedule", "patience": "early_stopping", "max_grad_norm": "clip_grad",
    "grad_clip": "clip_grad", "hidden_sizes": "hidden", "sigma": "noise_std",
}
LARGEST = 10**9  # the largest count any setting takes (sizes, epochs, steps, samples)
MAX_THREADS = 1024  # torch.set_num_threads beyond a few thousand crashes the process (SIGSEGV)
MAX_ROWS = 10**8  # the most rows one batched forward stacks: (1 + noisy passes) * batch size
MAX_PARAMETERS = 2 * 10**9  # the largest dense network a run builds
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "the preset"."""

    algo: str = "danp"
    dataset: str = "digits"
    arch: str | None = None  # mlp (the default) or conv; None with a model file
    model: str | None = None
    hidden: list[int] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    decor_lr: float | None = None
    decor_fraction: float | None = None
    noise: str = "gaussian"
    noise_std: float | None = None
    readout_noise_std: float | None = None  # the readout layer's noise, where it differs
    noise_samples: int | None = None
    antithetic: bool | None = None
    local_losses: bool = False  # a readout head per hidden layer drives its estimate (anp, danp)
    both_noisy: bool = False
    weight_noise: str | None = None
    adc: str | None = None
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    lr_schedule: str | None = None  # constant (cosine for randman)
    lr_step: int | None = None  # step: epochs between decays (preset: a third of the epochs)
    lr_gamma: float | None = None  # step, exponential: the factor (preset: 0.1, 0.9)
    clip_grad: float | None = None  # the largest norm of all estimates together
    early_stopping: int = 0  # patience in epochs on the validation loss (0: off)
    probe_batches: int = 4  # training batches the diagnostics average over
    loss: str | None = None
    unit: str | None = None  # leaky_relu (the default), ...; None with a model file
    time_steps: int | None = None
    encoding: str | None = None  # current (sequence for randman and shd)
    beta: float = 0.9
    threshold: float = 1.0
    threshold_noise: float = 0.0
    reset: str = "subtract"  # of the built-in LIF: subtract (snntorch's default) or zero (NIR's)
    per_step: bool = False
    readout: str = "spikes"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    generator: str = "torch"  # of the Gaussian noise: torch (every recorded result) or fast
    threads: int | None = None
    data_root: str | None = None
    standardize: bool | None = None
    val_fraction: float = 0.0
    out: str | None = None
    checkpoint_every: int = 1
    max_bad_steps: int = 10
    trace_every: int = 50
    trace_probe: int = 16
    trace_layers: list[int] | None = None
    trace_units: int = 256
    spike_events: bool = False
    figures: bool = True
    tensorboard: bool = False

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
# The sequence data sets: spiking input, a small LIF network (applied after the unit's preset).
# randman (docs/results.md, section 15): the readout's own noise 2.0 against the hidden layer's
# 0.2, so that its part of the loss change is not lost among the hidden layer's spike flips;
# eta_R = 0.1; and a cosine schedule, which ends the estimate's random walk.
SEQUENCE_PRESETS: dict[str, dict[str, Any]] = {
    "randman": dict(hidden=[1000], epochs=30, batch_size=32, noise_std=0.2,
                    readout_noise_std=2.0, decor_lr=1e-1, decor_fraction=1.0,
                    lr_schedule="cosine"),
    "shd": dict(hidden=[256], epochs=20, batch_size=128, noise_std=0.2, decor_lr=1e-3,
                decor_fraction=0.1),
}
PRESETS.update({name: dict(preset) for name, preset in SEQUENCE_PRESETS.items()})
for preset in PRESETS.values():
    preset.setdefault("loss", "ce")
    preset.setdefault("standardize", False)

# Per data set: what the convolutional architecture (--arch conv) changes. On the digits
# chosen on the validation split (simulations/presets/conv_digits.toml, docs/results.md): batch 32,
# eta_R = 1e-2 and, for the perturbation rules, K = 4 noisy passes per step.
CONV_PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(epochs=20, batch_size=32, decor_fraction=1.0, decor_lr=1e-2,
                   standardize=True, noise_samples=4),
    "fashion-mnist": dict(epochs=5, batch_size=256, decor_fraction=0.1, standardize=True),
}
CONV_PRESETS["mnist"] = CONV_PRESETS["fashion-mnist"]
CONV_PRESETS["cifar10"] = CONV_PRESETS["fashion-mnist"]

# Per data set and rule: Adam's learning rate.
RULE_LR: dict[str, dict[str, float]] = {
    "digits": dict(bp=1e-3, dbp=1e-3, np=1e-3, dnp=1e-3, inp=1e-3, dinp=1e-3, anp=1e-3, danp=1e-3,
                   wp=1e-3, es=1e-3, wfg=1e-3, afg=1e-3, fa=1e-3, dfa=1e-3, opzo=1e-3),
    "fashion-mnist": dict(
        bp=1e-4, dbp=3e-4, np=1e-4, dnp=3e-4, inp=3e-4, dinp=3e-4, anp=1e-4, danp=5e-4,
        wp=1e-4, es=1e-4, wfg=1e-4, afg=1e-4, fa=1e-4, dfa=1e-4, opzo=1e-4,
    ),
}
RULE_LR["mnist"] = RULE_LR["fashion-mnist"]
RULE_LR["cifar10"] = RULE_LR["fashion-mnist"]
RULE_LR["teacher"] = {rule: 1e-3 for rule in RULE_LR["digits"]}
RULE_LR["randman"] = {rule: 1e-3 for rule in RULE_LR["digits"]}
RULE_LR["shd"] = {rule: 1e-3 for rule in RULE_LR["digits"]}
# With --arch conv (Fashion-MNIST: BP and DANP as in a reference implementation of the same
# net; the others not tuned).
CONV_LR: dict[str, float] = dict(
    bp=1e-3, dbp=1e-3, np=1e-3, dnp=1e-3, inp=1e-3, dinp=1e-3, anp=1e-3, danp=2e-3,
    wp=1e-3, es=1e-3, wfg=1e-3, afg=1e-3, fa=1e-3, dfa=1e-3, opzo=1e-3,
)
# With --arch conv on the digits, where they differ from CONV_LR (chosen on the validation
# split: simulations/presets/conv_digits.toml, conv_lif_digits.toml).
CONV_LR_DIGITS: dict[str, float] = dict(danp=1e-2)
# With --optimizer sgd: one learning rate per rule, whatever the data set (chosen on digits).
SGD_LR: dict[str, float] = dict(
    bp=0.1, dbp=0.1, np=1e-3, dnp=1e-3, inp=1e-3, dinp=1e-3, anp=1e-3, danp=1e-2,
    wp=1e-3, es=1e-3, wfg=1e-3, afg=1e-3, fa=0.1, dfa=0.1, opzo=1e-2,
)
# Evolution strategies: the antithetic pairs of its population per step, unless set.
ES_PAIRS = 4

# Per unit: what changes for units that need it (a discontinuous unit needs a noise large enough
# to flip it; a spiking unit runs for several time steps).
UNIT_PRESETS: dict[str, dict[str, Any]] = {
    "heaviside": dict(hidden=[300, 300], noise_std=0.3),
    "sign": dict(hidden=[300, 300], noise_std=0.3),
    "stochastic_binary": dict(hidden=[300, 300]),
    "lif": dict(hidden=[1000], time_steps=10, noise_std=0.2),
}
# What a model file (--model) that holds a spiking neuron (an snntorch neuron) gets: the
# spiking unit's time steps and noise.
SPIKING_MODEL_PRESET: dict[str, Any] = dict(time_steps=10, noise_std=0.2)
# What a model file whose readout is a spiking neuron (its last weight operation drives one;
# the loss reads spike counts or rates) gets besides: K = 4 noisy passes per step. Its loss is
# piecewise constant in the readout's drive, and one estimate of its spiking layers is poorly
# aligned (docs/results.md, "Spiking readouts"); on the digits DANP's Adam rate is 3e-3 too.
# 3 seeds of both tutorial models by DANP: 0.63-0.95 after 10 epochs with K = 1 and 1e-3,
# 0.947-0.969 with K = 4 and 3e-3.
SPIKING_READOUT_PRESET: dict[str, Any] = dict(noise_samples=4)
SPIKING_READOUT_LR_DIGITS: dict[str, float] = dict(danp=3e-3)
# The defaults ``arch`` and ``unit`` had before a model file left them unset (older records).
BUILT_IN_DEFAULTS: dict[str, str] = dict(arch="mlp", unit="leaky_relu")


MAX_CONFIG_BYTES = 1_000_000


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The tables of a TOML file of at most ``MAX_CONFIG_BYTES``; a ``ValueError`` naming the
    file says why it cannot be read."""
    where = f"{what} {str(path)!r}"
    path = Path(path)
    if not str(path).strip() or not path.exists():
        raise ValueError(f"{where} does not exist")
    if not path.is_file():
        raise ValueError(f"{where} is not a file")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(f"{where} is larger than {MAX_CONFIG_BYTES:_} bytes: it is no "
                             f"noisynets {what.split()[0]}")
        return tomllib.loads(raw.decode("utf-8"))
    except OSError as e:
        raise ValueError(f"{where} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where} is not valid TOML: {e}") from None
    except RecursionError:
        raise ValueError(f"{where} nests its values too deeply: it is no noisynets "
                         f"{what.split()[0]}") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise ValueError(f"{where} holds a number it cannot read: {e}") from None


def check_keys(keys: Any, where: str) -> None:
    """Every key must be a ``TrainConfig`` field: an unknown one is named with the closest
    valid one."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in keys:
        if key not in names:
            plain = str(key).replace("-", "_").lower()
            close = [ALIASES[plain]] if plain in ALIASES else difflib.get_close_matches(
                plain, names, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint}; the keys are the long "
                             "options of noisynets train with underscores")


def check_values(data: dict[str, Any], where: str, grid: bool = False) -> None:
    """Every value of a table of settings is one a setting can take: text, a number, true or
    false, or a list of those (``grid``: a list of such values); a date, a table or a deeper
    list is named with its key."""
    def plain(value: Any) -> bool:
        return isinstance(value, (str, int, float, bool))

    def setting(value: Any) -> bool:
        return plain(value) or (isinstance(value, list) and all(plain(v) for v in value))

    for key, value in data.items():
        values = value if grid and isinstance(value, list) else [value]
        for v in values:
            if not setting(v):
                kind = ("a date or time" if isinstance(v, (datetime.date, datetime.time))
                        else "a table" if isinstance(v, dict) else "a list of lists")
                raise ValueError(f"{where}: {key} holds {kind}; a setting takes text, a number, "
                                 "true or false, or a list of them")


def load_toml(path: str | Path) -> dict[str, Any]:
    """The fields of a TOML config file (keys are ``TrainConfig`` field names), checked: an
    unknown key is named with the closest valid one, a value of the wrong type or range with
    its key, each error with the file's name."""
    where = f"config file {str(path)!r}"
    data = read_toml(path)
    check_keys(data, where)
    check_values(data, where)
    try:
        resolve(TrainConfig(**data))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return data


def dataset_name(dataset: str) -> str:
    """The data set a name or spec names: ``teacher:inputs=10`` is ``teacher``."""
    return dataset.partition(":")[0].strip().lower() if isinstance(dataset, str) else dataset


def resolve(config: TrainConfig) -> TrainConfig:
    """A copy of ``config`` with the presets filled in, validated."""
    if isinstance(config.algo, str):
        config = dataclasses.replace(config, algo=config.algo.strip().lower())
    _choice("algo", config.algo, RULES)
    name = dataset_name(config.dataset)
    _choice("dataset", name, DATASETS)
    dataset_options(config.dataset)  # raises on a bad spec
    steps = sequence_steps(config.dataset)  # a sequence data set's T
    if config.model is not None:  # the model file defines the network: no arch, no unit
        for key, default in BUILT_IN_DEFAULTS.items():
            if getattr(config, key) not in (None, default):
                raise ValueError(f"{key} {getattr(config, key)!r} chooses a built-in network, "
                                 f"but the model file {config.model!r} defines the network: "
                                 f"leave out --{key}")
        config = dataclasses.replace(config, arch=None, unit=None)
    else:
        unit = "lif" if steps is not None else BUILT_IN_DEFAULTS["unit"]
        config = dataclasses.replace(config, arch=config.arch or BUILT_IN_DEFAULTS["arch"],
                                     unit=config.unit or unit)
        _choice("arch", config.arch, ARCHS)
        _choice("unit", config.unit, UNITS)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    if config.loss is not None:
        _choice("loss", config.loss, LOSS_NAMES)
    config = dataclasses.replace(config, encoding=config.encoding or (
        "current" if steps is None else "sequence"))
    _choice("encoding", config.encoding, ENCODINGS)
    if config.encoding == "sequence" and steps is None:
        raise ValueError("encoding 'sequence' takes inputs with a time axis (batch, T, ...): "
                         "use it with --dataset randman or shd, or "
                         "noisynets.wrap(model, encoding='sequence') on your own sequences")
    if steps is not None and config.encoding != "sequence":
        raise ValueError(f"the samples of {name} are sequences (T, channels): leave out "
                         f"--encoding {config.encoding} (they take encoding sequence)")
    if steps is not None and config.time_steps not in (None, steps):
        raise ValueError(f"time_steps {config.time_steps!r}: the samples of "
                         f"{config.dataset!r} have {steps} steps: leave out --time-steps, or "
                         f"set {name}:steps={config.time_steps}")
    _choice("readout", config.readout, READOUTS)
    _choice("device", config.device, DEVICES)
    _choice("precision", config.precision, PRECISIONS)
    _choice("generator", config.generator, GENERATORS)
    _choice("reset", config.reset, RESETS)
    if config.model is not None and not isinstance(config.model, str):
        raise ValueError(f"model {config.model!r} must be FILE.py:FUNCTION")
    conv = config.arch == "conv" and config.model is None
    if conv and (name == "teacher" or steps is not None):
        raise ValueError(f"the {name} data set is {'sequences' if steps else 'vectors'}, not "
                         "images: use --arch mlp")
    preset = dict(PRESETS[name])
    spiking_readout = False
    if config.model is None:
        preset.update(UNIT_PRESETS.get(config.unit, {}))
    else:  # presets follow the model: a spiking one the spiking unit's, a conv one the conv's
        kind = model_kind(config.model)
        if kind.spiking:
            preset.update(SPIKING_MODEL_PRESET)
            if kind.spiking_readout:
                preset.update(SPIKING_READOUT_PRESET)
                spiking_readout = True
            if kind.own_loop:  # its forward sets T
                preset["time_steps"] = 1
        conv = kind.conv and name in CONV_PRESETS
    if conv:
        preset.update(CONV_PRESETS[name])
    if steps is not None:
        preset.update(SEQUENCE_PRESETS[name], time_steps=steps)
    if conv or config.model is not None:
        preset["hidden"] = None  # the dense stack's sizes do not apply
    if config.optimizer == "sgd":
        preset["lr"] = SGD_LR[config.algo]
    elif conv:
        preset["lr"] = (CONV_LR_DIGITS if name == "digits" else CONV_LR).get(
            config.algo, CONV_LR[config.algo])
    else:
        preset["lr"] = RULE_LR[name][config.algo]
        if spiking_readout and name == "digits":
            preset["lr"] = SPIKING_READOUT_LR_DIGITS.get(config.algo, preset["lr"])
    preset.setdefault("time_steps", 1)
    preset.setdefault("antithetic", False)
    if config.algo == "es":
        preset["noise_samples"] = ES_PAIRS
    preset.setdefault("noise_samples", 1)
    preset.setdefault("lr_schedule", "constant")
    schedule = config.lr_schedule or preset["lr_schedule"]
    preset["lr_gamma"] = {"step": 0.1, "exponential": 0.9}.get(schedule, 1.0)
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
    rows = (1 + c.noise_samples * (2 if c.antithetic else 1)) * c.batch_size
    if rows > MAX_ROWS and c.algo not in ("bp", "dbp"):
        raise ValueError(f"noise_samples {c.noise_samples} and batch_size {c.batch_size} stack "
                         f"{rows:_} rows in one forward, more than {MAX_ROWS:_}: lower one "
                         "of them")
    for name in ("trace_every", "trace_units", "checkpoint_every", "max_bad_steps"):
        _integer(name, getattr(c, name), 0)
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
    if c.readout_noise_std is not None:
        _positive_float("readout_noise_std", c.readout_noise_std)
    _nonnegative_float("decor_lr", c.decor_lr)
    if c.antithetic is True and c.algo in (*NOISELESS, "wfg", "afg"):
        raise ValueError(f"antithetic pairs are for the perturbation rules; {c.algo} uses no "
                         "noise passes: drop --antithetic")
    if c.antithetic is True and c.both_noisy:
        raise ValueError("antithetic pairs need noise the system draws and can negate; with "
                         "both_noisy the noise is intrinsic: drop --antithetic")
    if c.local_losses is True and c.algo not in ("anp", "danp"):
        raise ValueError(f"local losses are for anp and danp, not {c.algo}: use --algo anp/danp "
                         "or drop --local-losses")
    if c.local_losses is True and (c.arch == "conv" or c.per_step):
        what = "--arch conv" if c.arch == "conv" else "--per-step-products"
        raise ValueError(f"local losses need dense hidden layers and summed products, not "
                         f"{what}: drop {what} or --local-losses")
    _nonnegative_float("threshold_noise", c.threshold_noise)
    if c.threshold_noise > 0 and c.model is None and c.unit != "lif":
        raise ValueError(f"threshold_noise {c.threshold_noise:g} needs --unit lif")
    if c.reset != "subtract" and c.model is not None:
        raise ValueError(f"reset {c.reset!r} is the built-in LIF's (--unit lif); the neurons "
                         f"of the model file {c.model!r} set their own: use snn.Leaky("
                         f"reset_mechanism={c.reset!r}) there and leave out --reset")
    if c.reset != "subtract" and c.unit != "lif":
        raise ValueError(f"reset {c.reset!r} is for spiking units: add --unit lif or leave "
                         "out --reset")
    for name in ("both_noisy", "per_step", "standardize", "spike_events", "figures",
                 "tensorboard", "antithetic", "local_losses"):
        if not isinstance(getattr(c, name), bool):
            raise ValueError(f"{name} {getattr(c, name)!r} must be true or false")
    for name in ("out", "data_root", "model"):
        value = getattr(c, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{name} {value!r} must be a non-empty path")
    if c.hidden is not None:
        sizes = [1, *c.hidden, 1]
        if sum(a * b for a, b in zip(sizes, sizes[1:])) > MAX_PARAMETERS:
            raise ValueError(f"hidden {c.hidden} makes a network of more than "
                             f"{MAX_PARAMETERS:_} weights: choose smaller layers")
    if not isinstance(c.noise, str):
        raise ValueError(f"noise {c.noise!r} must be a noise spec such as 'gaussian'")
    make_noise(c.noise, c.noise_std)  # raises on a bad spec
    make_weight_noise(c.weight_noise)
    make_adc(c.adc)
    _nonnegative_float("val_fraction", c.val_fraction)
    if c.val_fraction >= 1:
        raise ValueError(f"val_fraction {c.val_fraction:g} must be in [0, 1): the share of the "
                         "training set held out for validation")
    _positive_float("decor_fraction", c.decor_fraction)
    if c.decor_fraction > 1:
        raise ValueError(f"decor_fraction {c.decor_fraction} must be in (0, 1]")
    if c.beta > 1:
        raise ValueError(f"beta {c.beta} must be in (0, 1]")
    check_optimisation(c)
    if c.threads is not None:
        check_threads(c.threads)
    _integer("seed", c.seed, 0)
    if c.model is not None:
        c.model = absolute_model(c.model)
    return c


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """What a model file's network is, for its presets: convolutions, spiking neurons, a
    spiking readout (its last weight operation drives a spiking neuron), a forward that runs
    its own time loop."""

    conv: bool = False
    spiking: bool = False
    own_loop: bool = False
    spiking_readout: bool = False


def model_kind(spec: str) -> ModelKind:
    """The ``ModelKind`` of the model that ``spec`` (``FILE.py:NAME``) builds; an empty kind
    where the file cannot build a model: building the run then says why, in one line
    (``models.load_model``), when the run starts (a sweep's other runs go on)."""
    import torch
    from torch import nn

    from noisynets.core.export import spiking
    from noisynets.core.model import find_layers, runs_own_loop
    from noisynets.models import load_model

    with torch.random.fork_rng(devices=[]):  # a model's initialisation draws from torch's
        try:
            model = load_model(spec)
        except ValueError:
            return ModelKind()
    conv = any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules())
    layers = find_layers(model)
    last = layers[-1][2] if layers else None
    return ModelKind(conv, spiking(model), runs_own_loop(model),
                     last is not None and spiking(last))


def preset_names(config: TrainConfig, kind: ModelKind | None = None) -> list[str]:
    """The presets a run's unset options came from: its data set, then what its network is
    (``conv``, ``spiking`` or a unit's), e.g. ``["digits", "conv"]``."""
    name = dataset_name(config.dataset)
    names = [name]
    if config.model is None:
        if config.unit in UNIT_PRESETS:
            names.append(config.unit)
        if config.arch == "conv":
            names.append("conv")
        return names
    kind = kind or model_kind(config.model)
    if kind.spiking:
        what = [w for w, on in (("spiking readout", kind.spiking_readout),
                                ("its own loop", kind.own_loop)) if on]
        names.append("spiking model" + (f" ({', '.join(what)})" if what else ""))
    if kind.conv and name in CONV_PRESETS:
        names.append("conv")
    return names


def check_optimisation(c: TrainConfig) -> None:
    """The optimiser's settings: weight decay, momentum (sgd only), the schedule and its
    step and factor, gradient clipping, early stopping (it needs a validation split)."""
    _choice("lr_schedule", c.lr_schedule, SCHEDULES)
    _nonnegative_float("weight_decay", c.weight_decay)
    _nonnegative_float("momentum", c.momentum)
    if c.momentum >= 1:
        raise ValueError(f"momentum {c.momentum:g} must be in [0, 1)")
    if c.momentum > 0 and c.optimizer != "sgd":
        raise ValueError(f"momentum {c.momentum:g} is for --optimizer sgd (adam and adamw have "
                         "their own betas): leave out --momentum or use --optimizer sgd")
    if c.lr_step is None:
        c.lr_step = max(1, c.epochs // 3)
    _positive_int("lr_step", c.lr_step)
    _positive_float("lr_gamma", c.lr_gamma)
    if c.lr_gamma > 1:
        raise ValueError(f"lr_gamma {c.lr_gamma:g} must be in (0, 1]: the factor the learning "
                         "rate is multiplied by")
    if c.clip_grad is not None:
        _positive_float("clip_grad", c.clip_grad)
    _integer("early_stopping", c.early_stopping, 0)
    if c.early_stopping and c.val_fraction <= 0:
        raise ValueError(f"early_stopping {c.early_stopping} watches the validation loss: hold "
                         "out a validation split with --val-fraction, e.g. 0.1")
    _positive_int("probe_batches", c.probe_batches)


def absolute_model(spec: str) -> str:
    """``FILE.py:FUNCTION`` with the file's absolute path, so a run's record finds it from
    anywhere (``evaluate``, ``--resume``)."""
    path, colon, function = spec.rpartition(":")
    if not colon or not path:
        return spec  # load_model says what is wrong with it
    return f"{Path(path).expanduser().absolute()}:{function}"


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value).lower().replace("_", "-"), choices, n=1,
                                          cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown {name} {value!r}{hint}: choose one of {', '.join(choices)}")


def check_threads(threads: Any) -> int:
    """``threads`` as torch's thread count: an integer from 1 to ``MAX_THREADS``."""
    _integer("threads", threads, 1, MAX_THREADS)
    return threads


def shown(value: Any) -> str:
    """``repr(value)`` in at most 40 characters (an integer of thousands of digits has a
    repr Python refuses to make)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of about {int(value.bit_length() * math.log10(2))} digits>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def finite(value: Any) -> bool:
    """Whether ``value`` is a real number (not a bool) that is finite as a float; an integer
    too large for a float is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _integer(name: str, value: Any, low: int, high: int = LARGEST) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} {shown(value)} must be an integer from {low} to {high:_}")


def _positive_int(name: str, value: Any) -> None:
    _integer(name, value, 1)


def _positive_float(name: str, value: Any) -> None:
    _number(name, value, positive=True)


def _nonnegative_float(name: str, value: Any) -> None:
    _number(name, value, positive=False)


def _number(name: str, value: Any, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} {shown(value)} must be a number")
    if not finite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} {shown(value)} must be a finite number "
                         f"{'> 0' if positive else '>= 0'}")


# --- the same checks as argparse types, for the command line ------------------------------

def integer(text: str, low: int, high: int = LARGEST) -> int:
    """``text`` as an integer from ``low`` to ``high``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} must be an integer from {low} to "
                                         f"{high:_}")
    return value


def positive_int(text: str) -> int:
    return integer(text, 1)


def nonnegative_int(text: str) -> int:
    return integer(text, 0)


def thread_count(text: str) -> int:
    return integer(text, 1, MAX_THREADS)


def number(text: str, positive: bool) -> float:
    """``text`` as a finite number, ``> 0`` (``positive``) or ``>= 0``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} must be a finite number {'> 0' if positive else '>= 0'}")
    return value


def positive_float(text: str) -> float:
    return number(text, positive=True)


def nonnegative_float(text: str) -> float:
    return number(text, positive=False)
