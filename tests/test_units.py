"""Units (docs/algorithms.md, "Units"): every unit type learns with ANP; the LIF neuron's reset
follows the spike it emitted; BP cannot train through a discontinuous unit; a Heaviside unit
with logistic noise is a Bernoulli(sigmoid) unit; NP and INP refuse noise they cannot read."""

from __future__ import annotations

import pytest
import torch

from noisynets import Network, Passes, make_rule
from noisynets.config import TrainConfig
from noisynets.core.units import LIF, UNITS
from noisynets.run import train

# Per unit: a noise scale large enough to move the unit (a Heaviside unit must flip).
NOISE = {"heaviside": 0.3, "sign": 0.3, "stochastic_binary": 1e-3, "lif": 0.2}


@pytest.mark.parametrize("unit", [u if u == "lif" else pytest.param(u, marks=pytest.mark.slow)
                                  for u in UNITS])
def test_every_unit_learns_with_anp_on_the_digits(unit, tmp_path):
    config = TrainConfig(
        algo="danp", unit=unit, hidden=[128], epochs=8, batch_size=32,
        noise_std=NOISE.get(unit, 1e-3), time_steps=5 if unit == "lif" else None,
        trace_every=0, out=str(tmp_path),
    )
    result = train(config, progress=False, log=None)
    before, after = result.initial.test_accuracy, result.history[-1].test_accuracy
    assert after > 0.5 and after > before + 0.3, (unit, before, after)


@pytest.mark.slow
def test_lif_units_learn_from_poisson_spike_input(tmp_path):
    config = TrainConfig(algo="danp", unit="lif", encoding="poisson", hidden=[128], epochs=8,
                         batch_size=32, time_steps=5, trace_every=0, out=str(tmp_path))
    result = train(config, progress=False, log=None)
    before, after = result.initial.test_accuracy, result.history[-1].test_accuracy
    assert after > 0.5 and after > before + 0.3, (before, after)


def test_the_lif_reset_follows_the_spike_it_emitted_even_with_a_noisy_threshold():
    g = torch.Generator().manual_seed(0)
    lif = LIF(beta=0.8, threshold=1.0)
    mem_prev = torch.zeros(200, 50)
    spike_prev = torch.zeros(200, 50)
    for _ in range(30):
        current = 0.5 + 0.5 * torch.randn(200, 50, generator=g)
        shift = 0.5 * torch.randn(200, 50, generator=g)  # threshold noise, new every step
        lif.threshold_shift = shift
        spike = lif(current)
        mem = lif.mem
        torch.testing.assert_close(mem, 0.8 * mem_prev + current - spike_prev * 1.0)
        assert torch.equal(spike, (mem - 1.0 - shift > 0).float())
        mem_prev, spike_prev = mem, spike
    assert 0.05 < spike.mean() < 0.95


def test_bp_passes_no_gradient_through_heaviside_units():
    net = Network([10, 20, 20, 5], unit="heaviside", noise_std=0.3, seed=0)
    x, y = torch.randn(16, 10), torch.randint(0, 5, (16,))
    grads, _ = make_rule("bp").gradients(net, x, y)
    assert all(torch.count_nonzero(w) == 0 for w, _ in grads[:-1])
    assert torch.count_nonzero(grads[-1][0]) > 0  # the readout learns
    anp, _ = make_rule("anp").gradients(net, x, y)
    assert all(torch.count_nonzero(w) > 0 for w, _ in anp)  # ANP reaches every layer


def test_a_stochastic_binary_unit_is_bernoulli_of_the_sigmoid():
    net = Network([1, 3, 2], unit="stochastic_binary", seed=0).double()
    layer = net.layers[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0], [0.0], [-2.0]]))
        layer.bias.zero_()
    x = torch.ones(4000, 1, dtype=torch.float64)
    record = net.run(x, torch.zeros(4000, dtype=torch.long), Passes.perturbed(2, samples=10),
                     keep_states=True)
    spikes = record.outputs[0][0, 1:]  # (noisy passes, samples, units)
    p = torch.sigmoid(torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64))
    se = (p * (1 - p) / spikes[..., 0].numel()).sqrt()
    assert ((spikes.mean((0, 1)) - p).abs() < 5 * se).all(), spikes.mean((0, 1))
    assert torch.equal(record.outputs[0][0, 0], (record.activity[0][0] > 0).double())


@pytest.mark.parametrize("name", ["np", "inp", "dnp", "dinp"])
def test_np_and_inp_refuse_noise_that_is_intrinsic_in_both_passes(name):
    net = Network([4, 6, 3], both_noisy=True, decorrelation=name.startswith("d"))
    with pytest.raises(ValueError, match="both passes"):
        make_rule(name).step(net, torch.randn(2, 4), torch.tensor([0, 1]))


def test_np_refuses_noise_whose_variance_depends_on_the_activity():
    from noisynets.core.noise import Gain

    net = Network([4, 6, 3], noise=Gain(0.1))
    with pytest.raises(ValueError, match="additive"):
        make_rule("np").step(net, torch.randn(2, 4), torch.tensor([0, 1]))


def test_nothing_of_a_spiking_network_outlives_it():
    """snntorch keeps every neuron in a class-level list and a neuron keeps its last membrane
    (and with it the whole BPTT graph); three networks trained with BPTT and deleted must
    all be collected."""
    import gc
    import weakref

    refs = []
    for seed in range(3):
        net = Network([10, 20, 5], unit="lif", time_steps=4, seed=seed)
        optimizer = torch.optim.Adam(net.parameters())
        make_rule("bp").step(net, torch.randn(8, 10), torch.randint(0, 5, (8,)))
        optimizer.step()
        refs += [weakref.ref(m) for m in net.modules()]  # neurons included
        refs += [weakref.ref(p) for p in net.parameters()]
        del net, optimizer
    gc.collect()
    alive = [type(r()).__name__ for r in refs if r() is not None]
    assert not alive, alive
