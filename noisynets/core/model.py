"""What the engine reads of a user's module before it runs it: its layers, and what it refuses.

A network is weight operations (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``; a recurrent
neuron's recurrent weight belongs to its neuron's layer) wired by whatever the module's
``forward`` does. ``find_layers`` lists them in the order the module registers them, each with
its *unit*: the first node module (a torch activation, a noisynets unit, an snntorch neuron)
registered after it and before the next weight operation -- the module that turns its drive
into outputs, for descriptions, traces, threshold noise and firing rates. A weight operation
whose weight is frozen (``requires_grad=False``) is not a layer: it runs as written.

``check_model`` refuses, in one line naming the module and why, what cannot work: batch
normalisation in training mode (its batch statistics mix the stacked passes), recurrent
layers and modules with trainable parameters the rules do not estimate, operations that
overwrite their input in place (``inplace=True``), convolutions with a padding other than
zeros, a model without a weight operation, and in an ``nn.Sequential`` (whose time loop the
engine runs) a neuron that does not keep its own state (``init_hidden=False``).

Example::

    >>> from torch import nn
    >>> [(name, type(unit).__name__) for name, op, unit in
    ...  find_layers(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))]
    [('0', 'Tanh'), ('2', 'NoneType')]
"""

from __future__ import annotations

from typing import Any

import snntorch as snn
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from noisynets.core.decorrelation import Decorrelator
from noisynets.core.ops import kind_of
from noisynets.core.units import ACTIVATIONS

REFUSED: dict[tuple[type[nn.Module], ...], str] = {
    (nn.RNNBase, nn.RNNCellBase): (
        "recurrent layers are not supported: node perturbation here needs weight operations "
        "it knows (spiking neurons with their own membrane, snn.RLeaky and snn.RSynaptic, "
        "are fine)"
    ),
    (snn.SLSTM, snn.SConv2dLSTM): (
        "spiking LSTMs are not supported: their gates are weight operations inside the "
        "neuron; use snn.Leaky or snn.Synaptic after an nn.Linear/nn.Conv2d"
    ),
}


def is_node(module: nn.Module) -> bool:
    """An activation, a noisynets unit or an snntorch neuron: what turns a drive into outputs."""
    return isinstance(module, ACTIVATIONS) or isinstance(module, snn.SpikingNeuron)


def recurrent_weights(model: nn.Module) -> set[int]:
    """The ids of the recurrent weight operations inside recurrent neurons."""
    return {id(m.recurrent) for m in model.modules()
            if isinstance(m, (snn.RLeaky, snn.RSynaptic)) and hasattr(m, "recurrent")}


def find_layers(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """``(name, op, unit)`` of every trainable weight operation, in registration order."""
    inner = recurrent_weights(model)
    layers: list[list] = []
    current: list | None = None
    for name, module in model.named_modules():
        if id(module) in inner:
            continue
        if kind_of(module) is not None:
            weight = module.parametrizations.weight.original if parametrize.is_parametrized(
                module, "weight") else module.weight
            current = [name, module, None] if weight.requires_grad else None
            if current is not None:
                layers.append(current)
        elif is_node(module) and current is not None and current[2] is None:
            current[2] = module
    return [tuple(layer) for layer in layers]


def where(name: str, module: nn.Module) -> str:
    return f"module {name!r} ({type(module).__name__})"


def check_model(model: nn.Module) -> None:
    """``ValueError`` naming the module and why, for a model the engine cannot run (module
    doc); ``TypeError`` for one that is not an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model must be an nn.Module, got {type(model).__name__}")
    inner = recurrent_weights(model)
    owned = set()  # parameters of weight operations and neurons: what may be trained
    for name, module in model.named_modules():
        for types, why in REFUSED.items():
            if isinstance(module, types):
                raise ValueError(f"{where(name, module)}: {why}")
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"{where(name, module)} normalises with statistics of the batch in training "
                "mode, which mixes the stacked passes of a sample: call .eval() on it (then it "
                "is the fixed affine map of its running statistics), fold it into the layer "
                "before, or remove it")
        if getattr(module, "inplace", False) is True and not isinstance(
                module, nn.modules.dropout._DropoutNd):
            raise ValueError(f"{where(name, module)} works in place (inplace=True), which "
                             "overwrites the activity noisynets records: set inplace=False")
        kind = kind_of(module)
        if kind is not None:
            if getattr(module, "padding_mode", "zeros") != "zeros":
                raise ValueError(f"{where(name, module)} has padding_mode="
                                 f"{module.padding_mode!r}: use the default 'zeros'")
            if parametrize.is_parametrized(module) and (
                    set(module.parametrizations.keys()) != {"weight"} or not all(
                        isinstance(p, Decorrelator) for p in module.parametrizations.weight)):
                raise ValueError(f"{where(name, module)} has a parametrization of its own "
                                 "(weight norm, ...): the rules estimate its plain weight; "
                                 "remove it")
            owned.update(id(p) for p in module.parameters())
        elif isinstance(module, snn.SpikingNeuron) or id(module) in inner:
            owned.update(id(p) for p in module.parameters())
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in owned:
                raise ValueError(
                    f"{where(name, module)} has a trainable parameter {pname!r} the rules "
                    "cannot estimate (they train nn.Linear, nn.Conv1d and nn.Conv2d weights): "
                    "freeze it (requires_grad_(False)) or remove the module")
    if not find_layers(model):
        raise ValueError("the model has no trainable weight operation (nn.Linear, nn.Conv1d, "
                         "nn.Conv2d)")
    if isinstance(model, nn.Sequential):
        for name, module in model.named_modules():
            if isinstance(module, snn.SpikingNeuron) and not module.init_hidden:
                raise ValueError(
                    f"{where(name, module)} needs init_hidden=True: in an nn.Sequential, "
                    "whose time loop noisynets runs, a neuron keeps its state itself, the "
                    "snntorch way (or write a module whose forward runs its own loop)")


def runs_own_loop(model: nn.Module) -> bool:
    """Whether ``model``'s forward runs its own time loop: it holds an snntorch neuron that
    takes its state as an argument (``init_hidden=False``)."""
    return any(isinstance(m, snn.SpikingNeuron) and not m.init_hidden for m in model.modules())


def unit_follows(model: nn.Module, op: nn.Module, unit: nn.Module | None) -> bool:
    """In an ``nn.Sequential``, whether ``unit`` is the module right after ``op`` and of a
    kind that keeps nothing of its input (so the engine may rewrite ``op``'s output)."""
    if unit is None or not isinstance(model, nn.Sequential):
        return False
    flat = list(sequence(model))
    return any(a is op and b is unit for a, b in zip(flat, flat[1:])) and is_node(unit)


def sequence(model: nn.Sequential):
    """The modules of a (nested) ``nn.Sequential`` in the order they run."""
    for _, module in flat_modules(model):
        yield module


def flat_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of a (nested) ``nn.Sequential`` in the order they run, with their names."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{sub}", m) for sub, m in flat_modules(child)]
        else:
            out.append((name, child))
    return out


class _Sources(torch.overrides.TorchFunctionMode):
    """Carries, through every torch operation, the set of layers each tensor is computed from."""

    def __init__(self) -> None:
        super().__init__()
        self.of: dict[int, tuple[Tensor, frozenset[int]]] = {}

    def sources(self, value: Any) -> frozenset[int]:
        found: frozenset[int] = frozenset()
        for t in _tensors(value):
            entry = self.of.get(id(t))
            if entry is not None and entry[0] is t:
                found |= entry[1]
        return found

    def mark(self, value: Any, sources: frozenset[int]) -> None:
        for t in _tensors(value):
            self.of[id(t)] = (t, sources)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.mark(out, self.sources((args, kwargs)))
        return out


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


@torch.no_grad()
def wiring(network: Any, x: Tensor) -> list[list[int]]:
    """Per layer, the layers whose outputs its input is computed from (0-based; empty: the
    data alone), learned from one clean forward of ``x`` that follows every torch operation
    (a residual sum's input comes from two layers, a recurrent weight's from its own)."""
    from noisynets.core.record import Passes

    mode = _Sources()
    feeds: list[set[int]] = [set() for _ in network.layers]
    handles = []
    for k, layer in enumerate(network.layers):
        ops = [layer.op] + ([layer.recurrent] if layer.recurrent is not None else [])
        for op in ops:
            handles.append(op.register_forward_pre_hook(
                lambda m, args, k=k: feeds[k].update(mode.sources(args))))
            handles.append(op.register_forward_hook(
                lambda m, args, out, k=k: mode.mark(out, frozenset({k}))))
    try:
        with network.untouched_noise(), mode:
            y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            network.run(x, y, Passes.clean(network.num_layers))
    finally:
        for handle in handles:
            handle.remove()
    return [sorted(f) for f in feeds]
