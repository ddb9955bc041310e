"""A trained spiking network as a NIR graph (the Neuromorphic Intermediate Representation),
written by snntorch's own exporter, ``R`` folded in.

``to_nir(network, input_shape)`` folds every decorrelator into its weights
(``noisynets.export_model``) and hands the plain model to ``snntorch.export_to_nir``; the
graph then runs again through ``snntorch.import_from_nir`` (``load_nir``). One NIR evaluation
is one time step: the network's logits are the mean over its ``T`` steps of the graph's output
for the constant input ``x``, from neurons at rest (``nir_readout``); ``T``, the encoding and
this readout are in the graph's ``metadata``. NIR's ``LIF`` node is
``tau dv/dt = (v_leak - v) + R I``, reset to ``v_reset`` after a spike; snntorch writes
``snn.Leaky``'s ``beta`` as ``tau = dt / (1 - beta)`` with ``dt = 1e-4``.

What NIR (through snntorch's exporter) holds, and so what is exported: a feed-forward
``nn.Sequential`` of ``nn.Linear``, ``nn.Conv2d`` (numeric padding), ``nn.AvgPool2d`` (no
padding), ``nn.Flatten`` and ``snn.Leaky`` neurons that reset to zero
(``reset_mechanism="zero"``: NIR's LIF has no reset by subtraction), with plain spikes
(``graded_spikes_factor = 1``, no inhibition, no quantisation). ``nn.Dropout`` (off at
inference) is left out. Anything else is refused with one line naming the module and what to
use instead. Every export is checked: the graph is imported back and must give the model's
logits on a random input, else it is refused.

Example::

    from noisynets.export_nir import export_run, load_nir, nir_readout
    export_run("runs/<run>", "model.nir")              # noisynets export RUN --format nir
    module = load_nir("model.nir")                     # snntorch modules, batched inputs
    logits = nir_readout(module, x, time_steps=10)
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import snntorch as snn
import torch
from torch import Tensor, nn

from noisynets.core.export import readout
from noisynets.core.model import flat_modules
from noisynets.core.network import Network
from noisynets.core.steps import reset_neurons

SUPPORTED = "nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.Flatten, nn.Dropout and snn.Leaky"


@contextlib.contextmanager
def _quiet() -> Any:
    """snntorch's exporter and importer print notes and warnings; nirtorch logs them and warns
    that the exporter's entry point is to be renamed."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _nir() -> tuple[Any, Any, Any]:
    """``(nir, snntorch.export_to_nir, snntorch.import_from_nir)``; ``ValueError`` with one
    line naming the extra when nir or nirtorch is missing."""
    try:
        import nir
        from snntorch.export_nir import export_to_nir
        from snntorch.import_nir import import_from_nir
    except ImportError:
        raise ValueError("--format nir needs the nir and nirtorch packages: pip install "
                         "'noisynets[nir]' (or pip install nir nirtorch)") from None
    return nir, export_to_nir, import_from_nir


def check_exportable(network: Network) -> None:
    """``ValueError`` with one line for the first module NIR cannot hold (module doc)."""
    if not isinstance(network.model, nn.Sequential):
        raise ValueError(f"NIR export takes an nn.Sequential, the way snntorch's exporter "
                         f"reads a network; the model is a {type(network.model).__name__}")
    if not any(layer.spiking for layer in network.layers):
        raise ValueError("NIR export is for spiking networks (snn.Leaky neurons): this one has "
                         "none; use model.pt (torch.load) for a rate network")
    for position, (name, module) in enumerate(flat_modules(network.model)):
        where = f"module {name!r} ({type(module).__name__}, position {position})"
        if type(module) is snn.Leaky:
            why = None
            if module.reset_mechanism != "zero":
                why = (f"resets by {module.reset_mechanism}, and NIR's LIF resets to v_reset: "
                       "train it with snn.Leaky(reset_mechanism='zero')")
            elif float(module.graded_spikes_factor) != 1.0 or module.inhibition or (
                    module.state_quant):
                why = ("has graded spikes, inhibition or quantised state, which NIR's LIF does "
                       "not hold: use a plain snn.Leaky")
            if why:
                raise ValueError(f"NIR export: {where} {why}")
        elif isinstance(module, snn.SpikingNeuron):
            raise ValueError(f"NIR export: {where} is a neuron the export does not take (a "
                             "built-in --unit lif network resets by subtraction): train a "
                             "--model file whose neurons are snn.Leaky(reset_mechanism='zero')")
        elif isinstance(module, nn.Conv2d):
            if isinstance(module.padding, str):
                raise ValueError(f"NIR export: {where} has padding={module.padding!r}: give "
                                 "the padding as numbers")
        elif isinstance(module, nn.AvgPool2d):
            if module.padding not in (0, (0, 0)) or module.ceil_mode:
                raise ValueError(f"NIR export: {where} pads or rounds up, which NIR's "
                                 "AvgPool2d does not hold: use padding=0, ceil_mode=False")
        elif not isinstance(module, (nn.Linear, nn.Flatten, nn.Dropout)):
            raise ValueError(f"NIR export: {where} cannot be held by snntorch's NIR exporter, "
                             f"which takes {SUPPORTED}")


def exportable_copy(network: Network, input_shape: tuple[int, ...]) -> nn.Sequential:
    """The plain, folded model as snntorch's exporter needs it: its modules in one
    ``nn.Sequential``, dropout left out, pooling sizes as pairs, every neuron's ``beta`` and
    ``threshold`` one value per neuron (NIR types every node by its shape)."""
    check_exportable(network)
    plain = network.folded()
    with torch.no_grad(), network.untouched_noise():  # one sample fixes every node's shape
        network(torch.zeros(1, *input_shape, dtype=network.layers[0].weight.dtype,
                            device=network.layers[0].weight.device))
    shapes = {id(layer.unit): layer.node_shape for layer in network.layers if layer.spiking}
    originals = dict(flat_modules(network.model))
    modules: list[nn.Module] = []
    for name, module in flat_modules(plain):
        if isinstance(module, nn.Dropout):
            continue
        if isinstance(module, nn.AvgPool2d):
            pair = nn.modules.utils._pair
            module = nn.AvgPool2d(pair(module.kernel_size),
                                  pair(module.stride or module.kernel_size))
        elif isinstance(module, snn.Leaky):
            shape = shapes[id(originals[name])]
            module = snn.Leaky(
                beta=torch.full(shape, float(module.beta)),
                threshold=torch.full(shape, float(module.threshold)),
                init_hidden=True, reset_mechanism="zero", reset_delay=module.reset_delay)
        modules.append(module.cpu())
    return nn.Sequential(*modules).eval()


def to_nir(network: Network, input_shape: tuple[int, ...]) -> Any:
    """The NIR graph of ``network`` (module doc) for samples of ``input_shape``, checked by a
    round trip; ``ValueError`` with one line for what NIR cannot hold."""
    _, export_to_nir, _ = _nir()
    model = exportable_copy(network, input_shape)
    with _quiet():
        graph = export_to_nir(model, torch.zeros(1, *input_shape), ignore_dims=[0])
    graph.metadata = {
        "source": "noisynets", "time_steps": network.time_steps, "encoding": network.encoding,
        "readout": "logits = mean over time_steps steps of the output for the constant input, "
                   "neurons starting at rest",
    }
    x = torch.rand(4, *input_shape, generator=torch.Generator().manual_seed(0))
    expected = readout(model, x, network.time_steps)
    got = nir_readout(import_nir(graph), x, network.time_steps)
    error = float((got - expected).abs().max())
    if not error <= 1e-5 * (1 + float(expected.abs().max())):
        raise ValueError(f"NIR export: the graph, imported back by snntorch, differs from the "
                         f"model by {error:.3g}: this model cannot be held by NIR as exported")
    return graph


def import_nir(graph: Any) -> nn.Module:
    """``snntorch.import_from_nir(graph)``, made to take batches: NIR's ``Flatten`` counts
    dimensions without the batch, so each torch ``Flatten`` starts one dimension later."""
    _, _, import_from_nir = _nir()
    with _quiet():
        module = import_from_nir(graph)
    for m in module.modules():
        if isinstance(m, nn.Flatten) and m.start_dim >= 0:
            m.start_dim += 1
            m.end_dim = m.end_dim + 1 if m.end_dim >= 0 else m.end_dim
    return module


def load_nir(path: str | Path) -> nn.Module:
    """The NIR file ``path`` (``nir.read``) as snntorch modules that take batches."""
    nir, _, _ = _nir()
    return import_nir(nir.read(str(path)))


@torch.no_grad()
def nir_readout(module: nn.Module, x: Tensor, time_steps: int) -> Tensor:
    """The logits of an imported graph: its output averaged over ``time_steps`` steps of the
    constant input ``x``, from neurons at rest (snntorch's importer returns ``(output,
    state)``; its neurons keep their own state)."""
    reset_neurons(module)
    total = torch.zeros(())
    for _ in range(time_steps):
        out = module(x)
        total = total + (out[0] if isinstance(out, tuple) else out)
    reset_neurons(module)
    return total / time_steps


def export_run(folder: str | Path, out: str | Path, model: str | None = None,
               trust_model: bool = False) -> Path:
    """The trained network of the run in ``folder`` as a NIR file ``out``; returns ``out``.
    ``model``, ``trust_model``: as for ``inference.load_trained``."""
    from noisynets.files import check_output, write_bytes_atomic
    from noisynets.inference import load_trained

    out = Path(out)
    check_output(out)
    nir, _, _ = _nir()
    network, _, spec = load_trained(folder, model, trust_model)
    graph = to_nir(network.cpu(), tuple(int(d) for d in spec["shape"]))
    buffer = io.BytesIO()  # made in memory, written whole or not at all
    nir.write(buffer, graph)
    write_bytes_atomic(out, buffer.getvalue())
    return out
