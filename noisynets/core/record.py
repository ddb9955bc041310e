"""A plan of passes and what a system reports of one batched forward of them: ``Passes``,
``Record``.

For ``P`` passes of a batch of ``B`` samples one forward runs ``P * B`` rows, pass ``p`` in rows
``p*B .. (p+1)*B``; a ``Passes`` plan says, per layer, which passes carry that layer's noise.
Pass 0 is the reference pass. A ``Record`` is what the rules estimate from: per layer the
reference pass's input and every pass's activity (summed over the layer's calls, the time
steps), and every pass's loss -- never the noise.

Example::

    >>> Passes.perturbed(3, samples=2)
    Passes(count=3, noisy=((1, 3), (1, 3), (1, 3)), antithetic=False)
    >>> Passes.layerwise(2).noisy
    ((1, 2), (2, 3))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ANTITHETIC_INTRINSIC = (
    "antithetic noise pairs need noise the system draws and can negate; the network's noise is "
    "intrinsic in both passes: turn antithetic off (drop --antithetic)"
)


@dataclass(frozen=True)
class Passes:
    """A plan of ``count`` passes; ``noisy[l] = (start, stop)``: the passes noisy in layer ``l``.

    ``antithetic``: the noisy passes of every layer come in antithetic pairs: of its
    ``2K`` noisy passes, pass ``start + K + j`` carries the negated noise of pass ``start + j``
    (``eps``, ``-eps``; ``mirrored``). It needs noise the system draws and can negate.
    """

    count: int
    noisy: tuple[tuple[int, int], ...]
    antithetic: bool = False

    @staticmethod
    def clean(num_layers: int, both_noisy: bool = False) -> Passes:
        """One pass: noise-free, or noisy when the network cannot switch its noise off."""
        return Passes(1, ((0, 1 if both_noisy else 0),) * num_layers)

    @staticmethod
    def perturbed(
        num_layers: int, samples: int = 1, both_noisy: bool = False, antithetic: bool = False
    ) -> Passes:
        """A reference pass and ``samples`` passes with every layer noisy (NP, ANP);
        ``antithetic``: ``samples`` pairs of passes, ``2 * samples`` noisy passes."""
        if antithetic and both_noisy:
            raise ValueError(ANTITHETIC_INTRINSIC)
        samples *= 2 if antithetic else 1
        start = 0 if both_noisy else 1
        return Passes(1 + samples, ((start, 1 + samples),) * num_layers, antithetic)

    @staticmethod
    def layerwise(num_layers: int, samples: int = 1, antithetic: bool = False) -> Passes:
        """A clean pass and ``samples`` passes per layer, each noisy in that layer only (INP);
        ``antithetic``: ``samples`` pairs of passes per layer."""
        samples *= 2 if antithetic else 1
        blocks = tuple((1 + k * samples, 1 + (k + 1) * samples) for k in range(num_layers))
        return Passes(1 + num_layers * samples, blocks, antithetic)


def mirrored(eps: Tensor, B: int) -> Tensor:
    """Antithetic pairs: the rows of ``2K`` passes of ``B`` samples, the second ``K`` passes
    replaced by the negated first ``K`` (``[eps_1..eps_K, -eps_1..-eps_K]``)."""
    if eps.shape[0] % (2 * B):
        raise ValueError(f"antithetic pairs need an even number of noisy passes, got "
                         f"{eps.shape[0] // B}")
    half = eps.shape[0] // 2
    return torch.cat([eps[:half], -eps[:half]])


@dataclass
class Record:
    """What a system can report of one batched forward: no noise values. It is the
    observation every perturbation rule estimates from (``Rule.estimate``), also when a
    system outside torch reports it (``noisynets.observer``).

    * ``inputs[l]``   -- (B, d_l): layer l's input in the reference pass (pass 0), summed over
      its calls (the time steps), flattened: decorrelated (``xh = R x``) for a dense layer,
      the raw feature maps for a convolution (whose ``R`` acts on patches, folded into the
      kernel);
    * ``activity[l]`` -- (P, B, n_l): layer l's activity (its weight operation's output plus
      the node noise) in every pass, summed over its calls, flattened;
    * ``loss``        -- (P, B): the per-sample loss of every pass;
    * ``time_steps``  -- T, the calls of a layer in one forward (``steps`` where layers differ);
    * ``steps``       -- per layer the number of its calls, where they differ from
      ``time_steps``; else None;
    * ``outputs`` and ``membrane`` -- per layer (T, P, B, n_l), only when asked for (traces):
      the outputs of the layer's nodes (its unit's, or its activity where it has none) and a
      spiking unit's membrane;
    * ``recurrent_inputs`` -- per layer (B, n_l), the reference pass's previous-step spikes
      ``sum_t S_{l,t-1}`` that a recurrent neuron's (``RLeaky``, ``RSynaptic``) recurrent
      weight acts on, summed over the steps; None for other layers;
    * ``readout`` -- (P, B, C), the logits when they are not the last layer's mean activity:
      a spiking readout's spike counts ``sum_t S_t`` or peak membrane ``max_t U_t``, or what a
      model's own ``forward`` returns; else None;
    * ``local_loss`` -- with local losses, per hidden layer k (P, B): the loss of its readout
      head ``loss(H_k x_k, y)`` in every pass, ``x_k`` its output averaged over the T steps;
    * ``local_inputs`` -- with local losses, per hidden layer (B, n_k): the reference pass's
      ``x_k`` (averaged over the steps), the input the heads learn from; else None.
    """

    inputs: list[Tensor]
    activity: list[Tensor]
    loss: Tensor
    time_steps: int
    outputs: list[Tensor] | None = None
    membrane: list[Tensor | None] | None = None
    readout: Tensor | None = None
    recurrent_inputs: list[Tensor | None] | None = None
    local_loss: list[Tensor] | None = None
    local_inputs: list[Tensor] | None = None
    steps: list[int] | None = None

    @property
    def logits(self) -> Tensor:
        """(P, B, C): the readout of every pass: ``readout``, or the output layer's summed
        activity over its T calls divided by T."""
        if self.readout is not None:
            return self.readout
        return self.activity[-1] / self.steps_of(len(self.activity) - 1)

    def steps_of(self, layer: int) -> int:
        """The number of calls of layer ``layer`` in the forward (its T)."""
        return self.time_steps if self.steps is None else self.steps[layer]
