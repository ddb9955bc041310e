"""snntorch's tutorial network (tutorials 5 and 6), written as its tutorials write it.

Two ``nn.Linear`` layers and two ``snn.Leaky(beta=0.95)`` neurons that take their state as
arguments (no ``init_hidden``); ``forward`` starts the neurons with ``init_leaky()``, loops over
25 time steps itself and returns the output layer's spikes and membranes stacked over time,
(T, batch, classes). noisynets trains it as it is::

    noisynets train --model examples/tutorial_net.py:Net --loss ce_rate_loss

or from Python::

    import noisynets
    from examples.tutorial_net import Net
    model = Net()
    net = noisynets.wrap(model, loss="ce_rate_loss", decorrelation=True)
"""

import snntorch as snn
import torch
from torch import nn

NUM_INPUTS, NUM_HIDDEN, NUM_OUTPUTS = 64, 1000, 10  # the 8x8 digits
NUM_STEPS = 25
BETA = 0.95


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(NUM_INPUTS, NUM_HIDDEN)
        self.lif1 = snn.Leaky(beta=BETA)
        self.fc2 = nn.Linear(NUM_HIDDEN, NUM_OUTPUTS)
        self.lif2 = snn.Leaky(beta=BETA)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec = []
        mem2_rec = []
        for _step in range(NUM_STEPS):
            cur1 = self.fc1(x.flatten(1))
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)
