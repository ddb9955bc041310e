"""A convolutional network written as a user writes it: the same layers as the built-in
``--arch conv`` (two 5x5 convolutions of 16 and 32 channels, leaky ReLU, 2x2 average pooling,
a linear readout), as an ``nn.Module`` with PyTorch's default initialisation, for the 8x8
digits. A model file with convolutions gets the convolutional presets::

    noisynets train --model examples/conv_net.py:ConvNet
"""

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, side: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.side = side
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.act = nn.LeakyReLU(0.01)
        self.pool = nn.AvgPool2d(2)
        self.readout = nn.Linear(32 * (side // 4) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], 1, self.side, self.side)
        h = self.pool(self.act(self.conv1(h)))
        h = self.pool(self.act(self.conv2(h)))
        return self.readout(h.flatten(1))
