"""Residual networks written as PyTorch users write them: ``nn.Module`` subclasses whose
``forward`` adds each block's input to its output (``x + f(x)``), no batch normalisation.

* ``ResidualMLP``: a dense input layer, two residual blocks, a linear readout;
* ``ResidualCNN``: a convolution, two residual convolution blocks, pooling, a linear readout,
  for images (C, H, W).

Both take the 8x8 digits as they are (``ResidualMLP`` flattens them)::

    noisynets train --model examples/residual.py:ResidualMLP --epochs 10
    noisynets train --model examples/residual.py:ResidualCNN --epochs 10
"""

import torch
from torch import nn


class Block(nn.Module):
    """``x + act(op(x))``: a residual block around one weight operation."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.op(x))


class ResidualMLP(nn.Module):
    def __init__(self, inputs: int = 64, width: int = 1000, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(inputs, width)
        self.act = nn.LeakyReLU(0.01)
        self.blocks = nn.Sequential(Block(nn.Linear(width, width)),
                                    Block(nn.Linear(width, width)))
        self.out = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x.flatten(1)))
        return self.out(self.blocks(h))


class ResidualCNN(nn.Module):
    def __init__(self, channels: int = 16, classes: int = 10, size: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.01)
        self.blocks = nn.Sequential(Block(nn.Conv2d(channels, channels, 3, padding=1)),
                                    Block(nn.Conv2d(channels, channels, 3, padding=1)))
        self.pool = nn.AvgPool2d(2)
        self.out = nn.Linear(channels * (size // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = int(x[0].numel() ** 0.5)
        h = self.act(self.inp(x.reshape(x.shape[0], 1, side, side)))
        return self.out(self.pool(self.blocks(h)).flatten(1))
