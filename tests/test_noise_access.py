""""The rule never reads eps" is true by construction (docs/algorithms.md, "Noise that cannot
be read or switched off").

The noise source below hands its layer a sealed tensor: the one operation allowed on it is
addition, the layer's ``activity + eps``. Anything else that touches it -- a rule, a record,
a diagnostic -- raises. ANP and DANP train unchanged with it; NP, which needs the noise
values, cannot.
"""

from __future__ import annotations

import pytest
import torch

from noisynets import Network, make_rule
from noisynets.core.noise import Gaussian
from noisynets.training import train_step


class NoiseReadOutsideItsLayer(AssertionError):
    pass


class Sealed(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__,
                    torch.Tensor.add, torch.Tensor.add_, torch.add):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        raise NoiseReadOutsideItsLayer(f"noise read by {getattr(func, '__name__', func)}")


class SealedGaussian(Gaussian):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return super().forward(a).as_subclass(Sealed)


def make(noise, decorrelation, both_noisy=False):
    return Network([10, 16, 16, 5], noise=noise, decorrelation=decorrelation, seed=0,
                   both_noisy=both_noisy)


@pytest.mark.parametrize("both_noisy", [False, True])
@pytest.mark.parametrize("decorrelation", [False, True])
def test_anp_trains_identically_without_reading_the_noise(batch, decorrelation, both_noisy):
    x, y = batch
    x = x.float()
    nets = [make(Gaussian(0.01), decorrelation, both_noisy),
            make(SealedGaussian(0.01), decorrelation, both_noisy)]
    for net in nets:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(5):
            train_step(net, make_rule("anp"), optimizer, x, y)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(nets[1].layers[0].weight, make(Gaussian(0.01), False).layers[0].weight)


def test_the_sealed_noise_does_catch_a_read(batch):
    x, y = batch
    with pytest.raises(NoiseReadOutsideItsLayer):
        make_rule("np").step(make(SealedGaussian(0.01), False), x.float(), y)


def test_the_anp_interface_has_no_noise_argument():
    import inspect

    from noisynets.rules import ANP

    assert list(inspect.signature(ANP.signals).parameters) == ["record"]
