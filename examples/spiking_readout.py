"""snntorch's tutorial network with a spiking readout, written the ``init_hidden`` way.

``Flatten - Linear(64, 300) - Leaky - Linear(300, 10) - Leaky(output=True)``: both neurons
keep their state (``init_hidden=True``), so the model is an ``nn.Sequential`` that the engine
runs for ``T`` steps. The readout neuron spikes; the logits are its spike counts, and
cross-entropy on them is snntorch's ``ce_count_loss``. Its leaky integrate-and-fire equation,
per step t (snntorch's ``Leaky``, reset by subtraction)::

    U_t = beta U_{t-1} + I_t - S_{t-1} theta        S_t = [U_t > theta]

noisynets trains it as it is, on the 8x8 digits::

    noisynets train --model examples/spiking_readout.py:tutorial_readout --epochs 10
"""

import snntorch as snn
from torch import nn

NUM_INPUTS, NUM_HIDDEN, NUM_OUTPUTS = 64, 300, 10  # the 8x8 digits
BETA = 0.95


def tutorial_readout() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(NUM_INPUTS, NUM_HIDDEN),
        snn.Leaky(beta=BETA, init_hidden=True),
        nn.Linear(NUM_HIDDEN, NUM_OUTPUTS),
        snn.Leaky(beta=BETA, init_hidden=True, output=True),
    )
