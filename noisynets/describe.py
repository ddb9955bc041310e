"""What a run says its network is: the header's line and ``results.json``'s ``layers`` and
``model``, from one clean forward of a sample.

Per layer: its name in the model, its weight operation, its node (the unit module after it:
an activation or a neuron with its decay, threshold and reset; ``function`` where the model
applies a function; ``readout`` for the last layer when it has none), whether it spikes, is
decorrelated or recurrent, how many times a forward calls it (T) and which layers feed it.
For the model: its class, who runs the time loop (the engine, or its own ``forward``), T, its
readout (the logits, or a spiking neuron's spike counts or peak membrane), recurrence and
skip connections (a layer fed by a layer other than the one before it, or by several).

Example::

    >>> import torch
    >>> from noisynets import Network
    >>> net = Network([4, 8, 3])
    >>> shapes, model = network_shapes(net, torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))
    >>> describe(net, shapes, model)
    '[4, 8, 3]'
"""

from __future__ import annotations

from typing import Any

import snntorch as snn
import torch
from torch import Tensor

from noisynets.core.model import wiring
from noisynets.core.network import Network
from noisynets.core.record import Passes


def network_shapes(network: Network, x: Tensor, y: Tensor
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per layer: its (flattened) input and node counts, one sample's input and node shapes,
    its calls; and the model's description (``describe_model``), with its number of outputs;
    from clean forwards of ``x`` that leave the noise streams untouched."""
    with torch.no_grad(), network.untouched_noise():
        record = network.run(x, y, Passes.clean(network.num_layers))
    shapes = [dict(inputs=int(seen.shape[-1]), units=int(a.shape[-1]),
                   input_shape=list(layer.in_shape), shape=list(layer.node_shape),
                   calls=record.steps_of(k))
              for k, (layer, seen, a) in enumerate(zip(network.layers, record.inputs,
                                                       record.activity))]
    model = describe_model(network, x, record.time_steps)
    model["outputs"] = int(record.logits.shape[-1])
    return shapes, model


def model_shapes(network: Network, data: Any, config: Any
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``network_shapes`` of one training sample, or a ``ValueError`` saying why the
    network cannot take the data set's samples or give one output per class."""
    try:
        shapes, model = network_shapes(network, data.train_x[:1], data.train_y[:1])
    except (RuntimeError, IndexError, ValueError, TypeError, NotImplementedError) as e:
        # NotImplementedError: an operation torch has not for the tensors (meta ones)
        raise ValueError(f"the network does not fit the data set {config.dataset!r} (samples "
                         f"of shape {tuple(data.input_shape)}, {data.num_classes} outputs): "
                         f"{' '.join(str(e).split())[:200]}") from None
    if model["outputs"] != data.num_classes:
        raise ValueError(f"the network has {model['outputs']} outputs, the data set "
                         f"{config.dataset!r} needs {data.num_classes}: make its readout "
                         f"that wide")
    return shapes, model


def describe_model(network: Network, x: Tensor, time_steps: int) -> dict[str, Any]:
    """The model as a whole (module doc)."""
    feeds = wiring(network, x)
    skips = any(set(f) - {k - 1, k} for k, f in enumerate(feeds)) or any(
        len(set(f) - {k}) > 1 for k, f in enumerate(feeds))
    if network.spiking_readout:
        what = "spike counts" if network.readout == "spikes" else "peak membrane"
        readout = f"spiking neuron ({what})"
    elif network.loss.reads != "logits":
        readout = f"{network.loss.reads} over time ({network.loss_name})"
    else:
        readout = "logits"
    return {
        "class": type(network.model).__name__,
        "time_loop": "engine" if network.steps_model else "its own forward",
        "time_steps": int(time_steps),
        "readout": readout,
        "loss": network.loss_name,
        "recurrent": any(layer.recurrent is not None or k in f
                         for k, (layer, f) in enumerate(zip(network.layers, feeds))),
        "skip_connections": bool(skips),
        "feeds": [[j + 1 for j in f] for f in feeds],
    }


def describe(network: Network, shapes: list[dict[str, Any]], model: dict[str, Any]) -> str:
    """``[64, 1000, 10]`` for a dense stack; else ``Class: 1x28x28 -> (Conv2d+LeakyReLU)
    16x28x28 -> ... -> 10`` and what the model is beyond its layers."""
    if network.sizes is not None:
        return str(network.sizes)
    parts = [shapes[0]["input_shape"]] + [s["shape"] for s in shapes]
    text = ["x".join(str(d) for d in shape) for shape in parts]
    for k, layer in enumerate(network.layers):
        node = "" if layer.unit is None else f"+{type(layer.unit).__name__}"
        text[k + 1] = f"({layer.op_type}{node}) {text[k + 1]}"
    extra = [f"readout {model['readout']}"]
    if model["time_loop"] != "engine":
        extra.append(f"T {model['time_steps']} in its own forward")
    if model["recurrent"]:
        extra.append("recurrent")
    if model["skip_connections"]:
        extra.append("skip connections")
    return f"{model['class']}: " + " -> ".join(text) + f" ({', '.join(extra)})"


def describe_layers(network: Network, shapes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer (``results.json``'s ``layers``): its name, weight operation, node, whether it
    spikes, is decorrelated and recurrent, its calls, and one sample's input and node shapes."""
    rows = []
    for k, (layer, shape) in enumerate(zip(network.layers, shapes)):
        last = k == network.num_layers - 1
        if layer.unit is not None:
            node = node_text(layer.unit)
        else:
            node = "readout" if last else "function"
        rows.append({
            "layer": k + 1, "name": layer.name, "op": layer.op_text, "node": node,
            "spiking": layer.spiking, "decorrelated": layer.decorrelator is not None,
            "recurrent": layer.recurrent is not None, "calls": shape["calls"],
            "input_shape": shape["input_shape"], "shape": shape["shape"],
        })
    return rows


def node_text(unit: torch.nn.Module) -> str:
    """A node's repr; a spiking neuron's with its decay, threshold and reset."""
    if not isinstance(unit, snn.SpikingNeuron):
        return repr(unit)
    values = {name: getattr(unit, name) for name in ("alpha", "beta", "threshold")
              if isinstance(getattr(unit, name, None), Tensor)}
    text = ", ".join(f"{k}={float(v.float().mean()):g}" + ("" if v.numel() == 1 else " (mean)")
                     for k, v in values.items())
    return f"{type(unit).__name__}({text}, reset={unit.reset_mechanism})"
