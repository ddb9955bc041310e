"""The weight operations the engine knows, one short kind per type, registered by type.

A weight operation ``a = op(x; W, b)`` drives nodes. What a rule needs of it, per kind:

* ``product(op, x, W, b)`` -- ``op(x)`` with a given weight (``W R`` folded, or read with
  device noise);
* ``weight_vjp(op, e, x, W)`` -- the vector-Jacobian product ``e^T d op(x; W) / dW`` at input
  ``x`` for a node signal ``e`` shaped like ``op``'s output: for a dense layer ``e^T x``
  (summed over any positions between the batch and the features), for a convolution the
  correlation of ``e`` with the input patches (``aten.convolution_backward``, weight only);
* ``rows(op, x)`` -- the input vectors ``W`` multiplies, one per row: the input vectors of a
  dense layer, the input patches of a convolution (``in_channels / groups * kh * kw``
  features, per group), which a decorrelator ``R`` acts on;
* ``features(op)`` -- ``(d, groups)``: the length of those rows and the number of groups.

The bias enters once per output position and call, so its VJP is the sum of ``e`` over the
batch and the positions. ``KINDS`` maps ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` to their
kind; ``kind_of(module)`` finds it (``None``: not a weight operation).

Example::

    >>> import torch
    >>> from torch import nn
    >>> op = nn.Linear(3, 2)
    >>> x, e = torch.randn(4, 3), torch.randn(4, 2)
    >>> torch.allclose(Dense.weight_vjp(op, e, x, op.weight), e.T @ x)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Dense:
    """``nn.Linear``: ``a = x W^T + b`` on the last axis of ``x`` (B, ..., d)."""

    conv = False

    @staticmethod
    def product(op: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def weight_vjp(op: nn.Module, e: Tensor, x: Tensor, weight: Tensor) -> Tensor:
        """``sum_{n, positions} e_n x_n^T``: (out, in)."""
        return e.reshape(-1, e.shape[-1]).T @ x.reshape(-1, x.shape[-1])

    @staticmethod
    def bias_vjp(op: nn.Module, e: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
        """``sum_{n, positions} e_n``, summed in ``dtype``."""
        return e.reshape(-1, op.out_features).sum(0, dtype=dtype)

    @staticmethod
    def rows(op: nn.Module, x: Tensor) -> Tensor:
        """The input vectors, (m, d)."""
        return x.reshape(-1, x.shape[-1])

    @staticmethod
    def features(op: nn.Module) -> tuple[int, int]:
        return op.in_features, 1

    @staticmethod
    def out_features(op: nn.Module) -> int:
        return op.out_features


class Convolution:
    """``nn.Conv1d`` and ``nn.Conv2d`` with zero padding: ``a = conv(x; W, b)``."""

    conv = True

    @staticmethod
    def product(op: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return op._conv_forward(x, weight, bias)

    @staticmethod
    def output(op: nn.Module, e: Tensor, x: Tensor) -> Tensor:
        """A node signal ``e`` (N, nodes) in the shape of ``op``'s output for input ``x``."""
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                zip(x.shape[2:], op.kernel_size, op.stride, _padding(op, x), op.dilation)]
        return e.reshape(x.shape[0], op.out_channels, *size)

    @staticmethod
    def weight_vjp(op: nn.Module, e: Tensor, x: Tensor, weight: Tensor) -> Tensor:
        """torch's weight VJP of the convolution alone: no forward, no graph."""
        e = Convolution.output(op, e, x)
        _, g_w, _ = torch.ops.aten.convolution_backward(
            e, x, weight, None, op.stride, _padding(op, x), op.dilation, False,
            [0] * len(op.stride), op.groups, [False, True, False])
        return g_w

    @staticmethod
    def bias_vjp(op: nn.Module, e: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
        """``sum_{n, positions} e_n``, summed in ``e``'s dtype."""
        e = Convolution.output(op, e, x)
        return e.sum(dim=[0, *range(2, e.dim())])

    @staticmethod
    def rows(op: nn.Module, x: Tensor) -> Tensor:
        """The patches of ``x`` (N, C, ...) a convolution multiplies, each flattened
        channel-major in ``F.unfold``'s order: (N L, C k) or, grouped, (groups, N L, C k / G).
        """
        kernel, dilation, stride = op.kernel_size, op.dilation, op.stride
        padding = _padding(op, x)
        if x.dim() == 3:  # a 1-d convolution is a 2-d one of height 1
            x, kernel, dilation = x.unsqueeze(2), (1, *kernel), (1, *dilation)
            padding, stride = (0, *padding), (1, *stride)
        patches = F.unfold(x, kernel, dilation, padding, stride)
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        if op.groups > 1:
            patches = patches.view(patches.shape[0], op.groups, -1).transpose(0, 1)
        return patches

    @staticmethod
    def features(op: nn.Module) -> tuple[int, int]:
        size = 1
        for k in op.kernel_size:
            size *= k
        return op.in_channels // op.groups * size, op.groups

    @staticmethod
    def out_features(op: nn.Module) -> int:
        return op.out_channels


def _padding(op: nn.Module, x: Tensor) -> tuple[int, ...]:
    """The zero padding per spatial axis (``padding="same"`` resolved for ``x``)."""
    if op.padding == "valid":
        return (0,) * (x.dim() - 2)
    if op.padding == "same":
        out = []
        for k, d in zip(op.kernel_size, op.dilation):
            total = d * (k - 1)
            if total % 2:
                raise ValueError(f"{op} has padding='same' with an even kernel, which pads "
                                 "unevenly: give the padding as numbers")
            out.append(total // 2)
        return tuple(out)
    return tuple(op.padding)


KINDS: dict[type[nn.Module], type[Dense] | type[Convolution]] = {
    nn.Linear: Dense, nn.Conv1d: Convolution, nn.Conv2d: Convolution,
}


def kind_of(module: nn.Module) -> type[Dense] | type[Convolution] | None:
    """The kind of a weight operation (subclasses included); None for any other module."""
    for cls, kind in KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


def fold(W: Tensor, R: Tensor) -> Tensor:
    """``W R``: a dense weight (out, d) times ``R`` (d, d); a convolution's filters, each
    flattened over its patch features, times ``R`` of their group ((groups, d, d) or (d, d))."""
    if W.dim() == 2 and R.dim() == 2:
        return W @ R
    G = 1 if R.dim() == 2 else R.shape[0]
    flat = W.reshape(G, W.shape[0] // G, -1) @ R.view(G, *R.shape[-2:])
    return flat.reshape(W.shape)


def unfold_gradient(g: Tensor, R: Tensor) -> Tensor:
    """``dLoss/dW`` from ``dLoss/dW'`` of ``W' = W R``: ``dLoss/dW' R^T``, per group."""
    if g.dim() == 2 and R.dim() == 2:
        return g @ R.mT
    G = 1 if R.dim() == 2 else R.shape[0]
    out = g.reshape(G, g.shape[0] // G, -1) @ R.view(G, *R.shape[-2:]).mT
    return out.reshape(g.shape)
