"""The arguments of a forward, checked before any work: ``check_forward``.

A wrong argument of ``Network.run`` (and ``forward``) is a ``TypeError`` (not a tensor, not a
floating-point input, labels that are not integers) or a ``ValueError`` (a pass plan that does
not fit the network, batch sizes that differ, a tensor on another device than the network,
class labels out of range), each naming the argument and what to do. Only shapes, dtypes and
devices are read -- no value leaves the device -- except the label range of labels on the
CPU, which costs no host sync there.

Example::

    >>> import torch
    >>> from noisynets import Network, Passes
    >>> net = Network([4, 3])
    >>> net.run(torch.zeros(2, 4), torch.tensor([0, 5]), Passes.clean(1))
    Traceback (most recent call last):
    ...
    ValueError: y holds class labels up to 5, the network has 3 outputs: labels must be 0..2
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_passes(passes: Any, num_layers: int) -> None:
    """``passes.count >= 1`` and per layer one ``(start, stop)`` with
    ``0 <= start <= stop <= count``."""
    count, noisy = getattr(passes, "count", None), getattr(passes, "noisy", None)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1 or not isinstance(
            noisy, (tuple, list)):
        raise TypeError(f"passes {passes!r} must be a noisynets.Passes (Passes.clean, "
                        "Passes.perturbed, Passes.layerwise)")
    if len(noisy) != num_layers:
        raise ValueError(f"the pass plan has {len(noisy)} layers, the network {num_layers}")
    for k, block in enumerate(noisy):
        if not (isinstance(block, (tuple, list)) and len(block) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in block)
                and 0 <= block[0] <= block[1] <= count):
            raise ValueError(f"passes.noisy[{k}] = {block!r} must be (start, stop) with "
                             f"0 <= start <= stop <= {count} (the passes noisy in layer {k + 1})")


def check_forward(x: Any, y: Any, passes: Any, num_layers: int, outputs: int | None,
                  device: torch.device | None, loss: str) -> None:
    """The arguments of one forward of a network of ``num_layers`` layers, ``outputs``
    output nodes (None: not known before the forward), parameters on ``device``, loss
    ``loss`` (``"ce"``: ``y`` holds class labels)."""
    check_passes(passes, num_layers)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor (a batch of samples), got {type(x).__name__}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor (a batch of targets), got {type(y).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x has dtype {x.dtype}: give a floating-point batch, e.g. x.float()")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x has shape {tuple(x.shape)}: give a batch (B, features...) of B >= 1")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} targets for the {x.shape[0]} samples of x")
    for name, t in (("x", x), ("y", y)):
        if device is not None and t.device.type != device.type:
            raise ValueError(f"{name} is on {t.device}, the network on {device}: move it with "
                             f"{name}.to({str(device)!r})")
    if loss == "ce":
        if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
            raise TypeError(f"y has dtype {y.dtype} and shape {tuple(y.shape)}: class labels "
                            "are one integer per sample (torch.long)")
        if outputs is not None and y.device.type == "cpu" and y.numel():
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= outputs:
                raise ValueError(f"y holds class labels up to {high if high >= outputs else low},"
                                 f" the network has {outputs} outputs: labels must be "
                                 f"0..{outputs - 1}")
