"""snntorch models as its tutorials write them: a spiking readout (``output=True``, the loss on
spike counts or on the membrane), learnable ``beta``/``threshold`` (BPTT trains them, the
perturbation rules hold them fixed and say so once)."""

from __future__ import annotations

import warnings

import pytest
import snntorch as snn
import snntorch.functional as SF
import snntorch.functional.quant as quant
import torch
from torch import nn

import noisynets
from noisynets import Passes, make_rule
from noisynets.training import diagnostics, fit


def tutorial_model(learn: bool = False, smooth: bool = False) -> nn.Sequential:
    """snntorch tutorial 5's network: Linear - Leaky - Linear - Leaky(output=True)."""
    torch.manual_seed(0)
    options = dict(init_hidden=True, learn_beta=learn, learn_threshold=learn)
    if smooth:  # a smooth spike and no reset: autograd through time is the exact gradient
        options.update(spike_grad=lambda u: torch.sigmoid(4.0 * u), reset_mechanism="none")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), snn.Leaky(beta=0.9, **options),
                          nn.Linear(32, 10), snn.Leaky(beta=0.9, output=True, **options))
    with torch.no_grad():  # torch's default scale barely fires on digits' 64 inputs in [0, 1]
        for op in (model[1], model[3]):
            op.weight.mul_(3.0)
    return model


@pytest.mark.parametrize("readout", ["spikes", "membrane"])
def test_a_spiking_readouts_loss_is_snntorch_functionals(readout):
    """The per-sample loss of every pass is ``SF.ce_count_loss`` of the readout's spikes
    (``readout="spikes"``) or ``SF.ce_max_membrane_loss`` of its membrane (``"membrane"``)."""
    net = noisynets.wrap(tutorial_model(), time_steps=6, noise_std=0.3, readout=readout,
                         seed=0)
    x, y = torch.rand(5, 64) * 3, torch.tensor([0, 3, 9, 1, 3])
    record = net.run(x, y, Passes.perturbed(2, 2), keep_states=True)
    for p in range(3):
        if readout == "spikes":
            spikes = record.outputs[-1][:, p]  # (T, B, C)
            expected = SF.ce_count_loss(reduction="none")(spikes, y)
            torch.testing.assert_close(record.logits[p], spikes.sum(0))
        else:
            expected = SF.ce_max_membrane_loss(reduction="none")(record.membrane[-1][:, p], y)
        torch.testing.assert_close(record.loss[p], expected)
    assert record.outputs[-1].unique().tolist() in ([0.0, 1.0], [0.0], [1.0])  # spikes
    logits = net(x)
    torch.testing.assert_close(logits, record.logits[0])  # evaluate's logits: the clean pass


@pytest.mark.parametrize("readout", ["spikes", "membrane"])
def test_the_tutorial_model_with_a_spiking_readout_trains_on_digits_by_bptt(readout):
    data = noisynets.data.load_dataset("digits")
    net = noisynets.wrap(tutorial_model(), time_steps=5, noise_std=0.05, decorrelation=True,
                         readout=readout, seed=0)
    optimizer = torch.optim.Adam(net.trained_parameters(), lr=5e-3)
    history = fit(net, make_rule("dbp"), optimizer, (data.train_x, data.train_y), epochs=3,
                  batch_size=32, test=(data.test_x, data.test_y), progress=False)
    assert history[-1].test_accuracy > 0.8, [h.test_accuracy for h in history]  # chance 0.1


@pytest.mark.parametrize("algo", ["np", "inp", "anp"])
def test_the_perturbation_rules_estimate_a_spiking_readouts_bptt_direction(algo):
    """On the Heaviside spiking readout (no exact gradient: BPTT's is a surrogate) the mean of
    20 estimates points along BPTT's in every layer. (Training it by DANP is the shortfall
    docs/algorithms.md reports: it stays near chance in a few epochs.)"""
    data = noisynets.data.load_dataset("digits")
    net = noisynets.wrap(tutorial_model(), time_steps=5, noise_std=0.3, seed=0)
    alignment = diagnostics(net, make_rule(algo, noise_samples=20), data.train_x[:256],
                            data.train_y[:256])["alignment"]
    assert min(alignment) > 0.5, alignment


def finite_difference(net, x, y, parameter, h=1e-6):
    with torch.no_grad():
        parameter += h
        up = net.run(x, y, Passes.clean(net.num_layers)).loss[0].mean()
        parameter -= 2 * h
        down = net.run(x, y, Passes.clean(net.num_layers)).loss[0].mean()
        parameter += h
    return (up - down) / (2 * h)


def test_bptt_trains_learnable_beta_and_threshold_with_their_exact_gradient():
    """BP.step writes dLoss/dbeta and dLoss/dthreshold into .grad: the central difference of
    the loss, on a smooth network where autograd through time is exact."""
    net = noisynets.wrap(tutorial_model(learn=True, smooth=True), time_steps=4,
                         readout="membrane", seed=0).double()
    x, y = torch.rand(6, 64, dtype=torch.float64), torch.randint(0, 10, (6,))
    neurons = net.neuron_parameters()
    trained = {id(p) for p in net.trained_parameters()}
    assert len(neurons) == 4 and {id(p) for p in neurons} <= trained
    make_rule("bp").step(net, x, y)
    for p in neurons:
        torch.testing.assert_close(p.grad, finite_difference(net, x, y, p).reshape(p.shape),
                                   rtol=1e-5, atol=1e-9)


def test_perturbation_rules_hold_learnable_neuron_parameters_fixed_and_say_so_once():
    data = noisynets.data.load_dataset("digits")
    net = noisynets.wrap(tutorial_model(learn=True), time_steps=4, noise_std=0.05, seed=0)
    before = [p.detach().clone() for p in net.neuron_parameters()]
    optimizer = torch.optim.Adam(net.trained_parameters(), lr=5e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(net, make_rule("anp"), optimizer, (data.train_x[:256], data.train_y[:256]),
            epochs=1, batch_size=32, progress=False)
    told = [w for w in caught if "hold the neurons' learnable" in str(w.message)]
    assert len(told) == 1 and "beta, threshold" in str(told[0].message), told
    assert "bp/dbp" in str(told[0].message)
    for p, old in zip(net.neuron_parameters(), before):
        assert torch.equal(p, old)
    first = net.layers[0].weight.detach().clone()
    fit(net, make_rule("bp"), optimizer, (data.train_x[:64], data.train_y[:64]), epochs=1,
        batch_size=32, progress=False)
    assert not all(torch.equal(p, old) for p, old in zip(net.neuron_parameters(), before))
    assert not torch.equal(first, net.layers[0].weight)


HIDDEN = dict(init_hidden=True)
KINDS = {  # docs/algorithms.md's table of snntorch neurons: each one runs every rule
    "Leaky": lambda: snn.Leaky(beta=0.9, **HIDDEN),
    "Leaky reset zero": lambda: snn.Leaky(beta=0.9, reset_mechanism="zero", **HIDDEN),
    "Leaky reset none": lambda: snn.Leaky(beta=0.9, reset_mechanism="none", **HIDDEN),
    "Leaky no reset delay": lambda: snn.Leaky(beta=0.9, reset_delay=False, **HIDDEN),
    "Leaky graded spikes": lambda: snn.Leaky(beta=0.9, graded_spikes_factor=0.5,
                                             learn_graded_spikes_factor=True, **HIDDEN),
    "Leaky inhibition": lambda: snn.Leaky(beta=0.9, inhibition=True, **HIDDEN),
    "Leaky state_quant": lambda: snn.Leaky(beta=0.9, state_quant=quant.state_quant(
        num_bits=4, uniform=True), **HIDDEN),
    "Leaky per-neuron beta": lambda: snn.Leaky(beta=torch.full((16,), 0.8), **HIDDEN),
    "Leaky output": lambda: snn.Leaky(beta=0.9, output=True, **HIDDEN),
    "Synaptic learn_alpha": lambda: snn.Synaptic(alpha=0.8, beta=0.9, learn_alpha=True,
                                                 **HIDDEN),
    "Alpha": lambda: snn.Alpha(alpha=0.9, beta=0.8, **HIDDEN),
    "Lapicque": lambda: snn.Lapicque(beta=0.9, **HIDDEN),
    "RLeaky": lambda: snn.RLeaky(beta=0.9, linear_features=16, **HIDDEN),
    "RLeaky one-to-one": lambda: snn.RLeaky(beta=0.9, all_to_all=False, V=0.5, **HIDDEN),
    "RLeaky fixed recurrence": lambda: snn.RLeaky(beta=0.9, linear_features=16,
                                                  learn_recurrent=False, **HIDDEN),
    "RSynaptic": lambda: snn.RSynaptic(alpha=0.8, beta=0.9, linear_features=16, **HIDDEN),
}


@pytest.mark.parametrize("per_step", [False, True], ids=["summed", "per-step"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_snntorch_neuron_kind_of_the_table_runs_every_rule(kind, per_step):
    x, y = torch.rand(8, 10) * 2, torch.randint(0, 3, (8,))
    for algo in ("bp", "np", "inp", "danp"):
        torch.manual_seed(0)
        with warnings.catch_warnings():  # snntorch's inhibition, and parameters held fixed
            warnings.simplefilter("ignore")
            if kind == "Leaky output":  # (spikes, membrane): a Sequential's last module
                model = nn.Sequential(nn.Linear(10, 16), snn.Leaky(beta=0.9, **HIDDEN),
                                      nn.Linear(16, 3), KINDS[kind]())
            else:
                model = nn.Sequential(nn.Linear(10, 16), KINDS[kind](), nn.Linear(16, 3))
            net = noisynets.wrap(model, time_steps=4, noise_std=0.1, per_step=per_step,
                                 decorrelation=algo == "danp")
            grads, record = make_rule(algo).gradients(net, x, y)
        assert all(torch.isfinite(g).all() for layer in grads for g in layer), (kind, algo)
        recurrent = net.layers[0].recurrent_parameters()
        assert len(grads[0]) == 2 + len(recurrent)
        assert record.activity[0].shape[-1] == 16


def test_a_sequence_input_runs_its_passes_as_the_brute_force_forward():
    """``encoding="sequence"``: step t of the forward gets ``x[:, t]``, every pass, a
    recurrent layer among the layers."""
    from reference import brute_force, record_noise

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), snn.RLeaky(beta=0.5, linear_features=8,
                                                      init_hidden=True),
                          nn.Linear(8, 6), snn.Leaky(beta=0.8, init_hidden=True),
                          nn.Linear(6, 3)).double()
    net = noisynets.wrap(model, time_steps=5, encoding="sequence", noise_std=0.3,
                         decorrelation=True, seed=0)
    x = torch.rand(3, 5, 4, dtype=torch.float64) * 3
    y = torch.tensor([0, 2, 1])
    passes = Passes.perturbed(3, 2)
    noise = record_noise(net)
    record = net.run(x, y, passes)
    brute = brute_force(net, x, y, passes, noise, spikes=[x[:, t] for t in range(5)])
    for k in range(3):
        torch.testing.assert_close(record.activity[k], brute.activity[k])
    torch.testing.assert_close(record.loss, brute.loss)
    with pytest.raises(ValueError, match=r"inputs \(batch, T=5, ...\)"):
        net.run(torch.rand(3, 4, dtype=torch.float64), y, passes)


@pytest.mark.slow
def test_a_recurrent_layer_learns_a_delayed_xor_that_a_feed_forward_one_cannot():
    """simulations/delayed_xor.py, seed 0, 10 epochs, DINP with per-step products: RLeaky
    0.986, Leaky 0.562 (chance 0.5; BPTT on Leaky cannot either)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "simulations"))
    from delayed_xor import T, model, task

    accuracy = {}
    for recurrent in (False, True):
        net = noisynets.wrap(model(recurrent, 0), time_steps=T, encoding="sequence",
                             noise_std=0.1, per_step=True, decorrelation=True, seed=0)
        optimizer = torch.optim.Adam(net.trained_parameters(), lr=5e-3)
        history = fit(net, make_rule("dinp"), optimizer, task(2048, 0), epochs=10,
                      batch_size=32, test=task(512, 1), progress=False)
        accuracy[recurrent] = history[-1].test_accuracy
    assert accuracy[True] > 0.9 and accuracy[False] < 0.75, accuracy
