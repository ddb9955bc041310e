"""The batched forward equals a brute-force one: every pass and time step run on its own,
unfolded, replaying the recorded noise (docs/algorithms.md, "Two passes, one forward" and
"Time steps").

Across units, time steps, decorrelation (with ``R`` folded into ``W`` and not), both-noisy,
encodings, noise with memory, threshold noise and every pass plan, the ``Record`` of one
batched forward -- every pass's summed activity, the reference pass's summed input, every
pass's loss -- is what the passes give when run one at a time.
"""

from __future__ import annotations

import pytest
import torch
from reference import brute_force, record_noise
from snntorch import spikegen

import noisynets.core.steps
from noisynets import Network, Passes
from noisynets.core.noise import Telegraph, make_noise


def perturb_decorrelators(net: Network, seed: int) -> None:
    """Move every ``R`` away from the identity, so that a missed ``R`` shows."""
    g = torch.Generator().manual_seed(seed)
    for layer in net.layers:
        if layer.decorrelator is not None:
            R = layer.decorrelator.R
            R.add_(0.2 * torch.randn(R.shape, generator=g, dtype=R.dtype))


def plans(L: int, both_noisy: bool) -> dict[str, Passes]:
    out = {
        "clean": Passes.clean(L, both_noisy),
        "perturbed": Passes.perturbed(L, 1, both_noisy),
        "perturbed K=3": Passes.perturbed(L, 3, both_noisy),
    }
    if not both_noisy:
        out["layerwise K=2"] = Passes.layerwise(L, 2)
    return out


CASES = [
    # unit, time steps, encoding, noise spec, threshold noise
    ("leaky_relu", 1, "current", "gaussian", 0.0),
    ("leaky_relu", 3, "current", "gaussian", 0.0),
    ("tanh", 2, "current", "telegraph:switch=0.3", 0.0),
    ("heaviside", 1, "current", "gaussian", 0.0),
    ("sign", 2, "current", "centered_bernoulli:p=0.3", 0.0),
    ("stochastic_binary", 1, "current", "gaussian", 0.0),
    ("lif", 4, "current", "gaussian", 0.0),
    ("lif", 4, "current", "telegraph:switch=0.2", 0.3),
    ("lif", 3, "poisson", "gaussian", 0.0),
]


@pytest.mark.parametrize("both_noisy", [False, True], ids=["clean-ref", "both-noisy"])
@pytest.mark.parametrize("decorrelation", [False, True], ids=["plain", "decor"])
@pytest.mark.parametrize("batch", [2, 9])
@pytest.mark.parametrize("unit,T,encoding,spec,threshold_noise", CASES,
                         ids=[f"{c[0]}-T{c[1]}-{c[2]}-{c[3].split(':')[0]}" for c in CASES])
def test_the_batched_forward_is_the_brute_force_one(
    monkeypatch, unit, T, encoding, spec, threshold_noise, batch, decorrelation, both_noisy
):
    scale = 0.3 if unit in ("heaviside", "sign", "lif") else 0.05
    net = Network(
        [6, 7, 5, 4], unit=unit, noise=make_noise(spec, scale), decorrelation=decorrelation,
        both_noisy=both_noisy, time_steps=T, encoding=encoding, threshold_noise=threshold_noise,
        threshold=0.5, seed=3,
    ).double()
    perturb_decorrelators(net, 0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 6, generator=g, dtype=torch.float64) * 2.0
    y = torch.randint(0, 4, (batch,), generator=g)
    for name, passes in plans(net.num_layers, both_noisy).items():
        noise = record_noise(net)
        spikes: list[torch.Tensor] = []
        original = spikegen.rate_conv

        def rate_conv(data, spikes=spikes, original=original):
            out = original(data)
            spikes.append(out.clone())
            return out

        monkeypatch.setattr(noisynets.core.steps.spikegen, "rate_conv", rate_conv)
        record = net.run(x, y, passes)
        brute = brute_force(net, x, y, passes, noise, spikes if encoding == "poisson" else None)
        for k in range(net.num_layers):
            torch.testing.assert_close(record.activity[k], brute.activity[k],
                                       msg=lambda m, k=k, name=name: f"{name}, layer {k + 1}: {m}")
            torch.testing.assert_close(record.inputs[k], brute.inputs[k],
                                       msg=lambda m, k=k, name=name: f"{name}, input {k + 1}: {m}")
        torch.testing.assert_close(record.loss, brute.loss, msg=lambda m, name=name: f"{name}: {m}")
        for layer in net.layers:  # unwrap for the next plan
            layer.noise = layer.noise.inner
            if layer.threshold_noise is not None:
                layer.threshold_noise = layer.threshold_noise.inner


def test_a_leak_between_steps_is_caught(monkeypatch):
    """Not blind: a forward whose first-layer drive keeps the noise of the previous step (the
    copy of the cached drive left out) is refused by the engine's own guard (the cached drive
    changed in place), or, were it not, differs from the brute-force reference."""
    net = Network([6, 7, 4], time_steps=3, noise=Telegraph(0.1, switch=0.5), seed=0).double()
    x, y = torch.rand(5, 6, dtype=torch.float64), torch.zeros(5, dtype=torch.long)
    passes = Passes.perturbed(2, 1)
    noise = record_noise(net)
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda self, *a, **k: self)
    try:
        record = net.run(x, y, passes)
    except ValueError as e:
        assert "in place" in str(e)
        return
    finally:
        monkeypatch.setattr(torch.Tensor, "clone", real_clone)
    brute = brute_force(net, x, y, passes, noise)
    assert not torch.allclose(record.activity[0], brute.activity[0])


def test_lif_networks_run_in_float64():
    net = Network([6, 8, 3], unit="lif", time_steps=3, threshold=0.5, seed=0).double()
    x = torch.rand(4, 6, dtype=torch.float64)
    record = net.run(x, torch.zeros(4, dtype=torch.long), Passes.perturbed(2), keep_states=True)
    assert record.activity[0].dtype == record.loss.dtype == torch.float64
    assert record.outputs[0].dtype == torch.float64
    assert record.outputs[0].sum() > 0, "some neuron spiked"
