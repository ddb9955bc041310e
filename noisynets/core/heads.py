"""Local losses' readout heads: one linear head ``H_k`` per hidden layer, and its gradient.

With local losses (docs/algorithms.md, "Local losses") hidden layer ``k``'s ANP estimate is
driven by the loss change of its own head, ``L_k = loss(H_k x_k + c_k, y)``, where ``x_k`` is
the layer's node output (summed over time steps, divided by ``T``). The heads themselves are
trained by the exact gradient of one linear layer on a detached input::

    dL_k/dH_k = mean_n dloss/dz_{k,n} x_{k,n}^T,   dL_k/dc_k = mean_n dloss/dz_{k,n}

at the reference pass's ``x_k`` -- not backpropagation through the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from noisynets.core.layer import Layer
from noisynets.core.losses import LossFn
from noisynets.models import he_normal


def make_heads(layers: Sequence[Layer], g: torch.Generator) -> nn.ModuleList:
    """One readout head ``H_k`` (n_k -> C, bias on) per hidden layer, He-normal weights from
    the network's generator ``g`` (drawn after everything else it draws), zero biases."""
    last = layers[-1].weight
    heads = []
    for layer in layers[:-1]:
        head = nn.Linear(layer.out_features, layers[-1].out_features)
        with torch.no_grad():
            he_normal(head, g)
        heads.append(head.to(last.device, last.dtype))
    return nn.ModuleList(heads)


def check_local_losses(layers: Sequence[Layer], per_step: bool) -> None:
    """Local losses need hidden layers whose nodes are a dense layer's outputs, each with
    its unit (the heads read its outputs, ``n_k`` of them), and summed products."""
    if len(layers) < 2:
        raise ValueError("local losses need at least one hidden layer: add one, or drop "
                         "local losses (--local-losses)")
    if per_step:
        raise ValueError("local losses are built for summed products: drop per-step products "
                         "(--per-step-products) or local losses (--local-losses)")
    for k, layer in enumerate(layers):
        if layer.conv or (k < len(layers) - 1 and layer.unit is None):
            kind = "a convolution" if layer.conv else "no node module after it"
            raise ValueError(f"local losses need dense hidden layers, but layer {k + 1} has "
                             f"{kind}: use an mlp (--arch mlp) or drop local losses "
                             "(--local-losses)")


def head_gradients(heads: nn.ModuleList, loss_fn: LossFn, inputs: Sequence[Tensor],
                   y: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per head ``(dL_k/dH_k, dL_k/dc_k)`` of ``L_k = mean_n loss(H_k x_{k,n} + c_k, y_n)``
    at the reference pass's node outputs ``inputs`` (module doc)."""
    grads = []
    with torch.enable_grad():
        for head, x_k in zip(heads, inputs):
            local = loss_fn(head(x_k.detach()), y).mean()
            w, b = torch.autograd.grad(local, (head.weight, head.bias))
            grads.append((w, b))
    return grads
