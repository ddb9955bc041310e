"""Built-in architectures, and the user's own model loaded from a Python file.

* ``mlp``: ``Flatten, Linear, unit, ..., Linear`` (``--arch mlp``, the default);
* ``conv_net``: ``Conv2d 16 5x5 - unit - AvgPool 2 - Conv2d 32 5x5 - unit - AvgPool 2 -
  Flatten - Linear`` (``--arch conv``), for image data of any size;
* ``load_model("my_nets.py:make_model")``: calls a function of no arguments in a Python file
  and returns the ``nn.Module`` it builds (``--model``).

Each is a plain ``nn.Sequential`` that ``noisynets.Network`` wraps; ``he_normal`` gives the
built-in ones He-normal weights and zero biases from a seeded generator.

Example::

    >>> conv_net((1, 28, 28), 10, "leaky_relu")[-1]
    Linear(in_features=1568, out_features=10, bias=True)
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from noisynets.core.units import make_unit

ARCHS: tuple[str, ...] = ("mlp", "conv")


def mlp(
    sizes: Sequence[int], unit: str, beta: float = 0.9, threshold: float = 1.0
) -> nn.Sequential:
    """``Flatten, Linear(d_0, n_1), unit, ..., Linear(n_{L-1}, n_L)``."""
    modules: list[nn.Module] = [nn.Flatten()]
    for k in range(len(sizes) - 1):
        modules.append(nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2:
            modules.append(make_unit(unit, beta=beta, threshold=threshold))
    return nn.Sequential(*modules)


def conv_net(
    input_shape: Sequence[int],
    outputs: int,
    unit: str,
    beta: float = 0.9,
    threshold: float = 1.0,
    channels: Sequence[int] = (16, 32),
    kernel: int = 5,
) -> nn.Sequential:
    """Per entry of ``channels``: a ``kernel x kernel`` convolution (padding keeps the size),
    the unit, 2x2 average pooling; then a linear readout of the flattened maps."""
    if len(input_shape) != 3:
        raise ValueError(f"the conv architecture needs images (C, H, W), got input shape "
                         f"{tuple(input_shape)}: use --arch mlp")
    c, h, w = input_shape
    modules: list[nn.Module] = []
    for out in channels:
        modules += [nn.Conv2d(c, out, kernel, padding=kernel // 2),
                    make_unit(unit, beta=beta, threshold=threshold), nn.AvgPool2d(2)]
        c, h, w = out, h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"images of shape {tuple(input_shape)} are too small for "
                         f"{len(channels)} pooling steps")
    modules += [nn.Flatten(), nn.Linear(c * h * w, outputs)]
    return nn.Sequential(*modules)


@torch.no_grad()
def he_normal(module: nn.Module, generator: torch.Generator) -> None:
    """He-normal weights (``std = sqrt(2 / fan_in)``) from ``generator``, zero biases, for an
    ``nn.Linear`` or ``nn.Conv2d``."""
    weight = module.weight
    fan_in = weight[0].numel()
    weight.copy_(torch.randn(weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
    if module.bias is not None:
        module.bias.zero_()


def load_model(spec: str) -> nn.Module:
    """The module built by ``FUNCTION()`` in the Python file of ``spec = "FILE.py:FUNCTION"``.

    Raises ``ValueError`` with one line for a missing file, a file that fails to import, a
    missing function, or a function that needs arguments or returns no ``nn.Module``.
    """
    path_text, colon, name = str(spec).rpartition(":")
    if not colon or not path_text or not name.isidentifier():
        raise ValueError(f"--model {spec!r} must be FILE.py:FUNCTION, e.g. my_nets.py:make_model")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"--model: file {path_text!r} does not exist")
    module_name = f"noisynets_user_model_{abs(hash(str(path.resolve())))}"
    loader = importlib.util.spec_from_file_location(module_name, path)
    if loader is None or loader.loader is None:
        raise ValueError(f"--model: {path_text!r} is not a Python file")
    code = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = code
    try:
        loader.loader.exec_module(code)
    except (Exception, SystemExit) as e:  # the user's file: any error, in one line
        del sys.modules[module_name]
        raise ValueError(f"--model: importing {path_text!r} failed: "
                         f"{type(e).__name__}: {e}") from None
    function = getattr(code, name, None)
    if not callable(function):
        raise ValueError(f"--model: {path_text!r} has no function or class {name!r}")
    with warnings.catch_warnings(record=True) as said:  # shown only if the model is used
        warnings.simplefilter("always")
        try:
            model = function()
        except TypeError as e:
            raise ValueError(f"--model: {name}() in {path_text!r} must take no arguments "
                             f"({e})") from None
        except (Exception, SystemExit) as e:  # the user's code
            raise ValueError(f"--model: {name}() in {path_text!r} failed: "
                             f"{type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model: {name}() in {path_text!r} returned a "
                         f"{type(model).__name__}, not an nn.Module")
    check_tensors(model, f"--model: {name}() in {path_text!r}")
    for warning in said:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    return model


def check_tensors(model: nn.Module, where: str) -> None:
    """Every parameter and buffer of ``model`` holds data (not on torch's ``meta`` device,
    which has shapes only), and every parameter has entries (a layer of zero width has no
    nodes to perturb)."""
    for kind, named in (("parameter", model.named_parameters()),
                        ("buffer", model.named_buffers())):
        for tensor_name, tensor in named:
            if tensor.is_meta:
                raise ValueError(f"{where} built {kind} {tensor_name!r} on the meta device "
                                 "(a shape without data): build the model with real tensors")
            if kind == "parameter" and tensor.numel() == 0:
                raise ValueError(f"{where} built {kind} {tensor_name!r} of shape "
                                 f"{tuple(tensor.shape)}, with no entries: every layer needs "
                                 "at least one input and one node")
