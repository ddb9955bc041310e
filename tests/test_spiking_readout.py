"""Spiking readouts: the readout layer's own noise scale (``readout_noise_std``), and the
presets a model file with a spiking readout gets (K = 4 noisy passes; DANP Adam 3e-3 on the
digits)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import snntorch as snn
import torch
from torch import nn

import noisynets
from noisynets import Passes
from noisynets.config import TrainConfig, preset_names, resolve
from noisynets.core.noise import Gaussian

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
READOUT_MODEL = f"{EXAMPLES / 'spiking_readout.py'}:tutorial_readout"
TUTORIAL_NET = f"{EXAMPLES / 'tutorial_net.py'}:Net"


def spiking_readout() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), snn.Leaky(beta=0.9, init_hidden=True),
                         nn.Linear(16, 4), snn.Leaky(beta=0.9, init_hidden=True, output=True))


def noise_of(readout_noise_std):
    net = noisynets.wrap(spiking_readout(), time_steps=3, noise_std=0.2,
                         readout_noise_std=readout_noise_std, seed=0)
    x, y = torch.rand(5, 8) * 3, torch.tensor([0, 1, 2, 3, 0])
    _, noise = net.run_reading_noise(x, y, Passes.perturbed(2, 2))
    return net, noise


def test_the_readout_gets_its_own_noise_scale_from_the_same_streams():
    """Only the last layer's scale changes: every layer draws from the stream it draws from
    without the option, so the hidden layer's noise is the same to the bit and the readout's
    is the same draw at the other scale."""
    plain, noise = noise_of(None)
    net, scaled = noise_of(0.5)
    assert [layer.noise.std for layer in net.layers] == [0.2, 0.5]
    assert [layer.noise.std for layer in plain.layers] == [0.2, 0.2]
    assert torch.equal(scaled[0], noise[0])
    torch.testing.assert_close(scaled[1], noise[1] * 2.5)


def test_np_divides_by_the_readouts_own_variance():
    net, _ = noise_of(0.5)
    T = net.time_steps
    assert [layer.noise.summed_variance(T) for layer in net.layers] == pytest.approx(
        [T * 0.04, T * 0.25])


@pytest.mark.parametrize("value", [0, -0.1, math.nan, math.inf, True, "0.5"])
def test_a_bad_readout_noise_std_is_one_line(value):
    with pytest.raises(ValueError, match="readout_noise_std") as err:
        noisynets.wrap(spiking_readout(), readout_noise_std=value)
    assert "\n" not in str(err.value)


def test_a_readout_noise_std_needs_a_spec_not_a_source():
    with pytest.raises(ValueError, match="readout_noise_std scales a noise spec"):
        noisynets.wrap(spiking_readout(), noise=Gaussian(0.1), readout_noise_std=0.5)
    net = noisynets.wrap(spiking_readout(), noise="telegraph:switch=0.1", noise_std=0.1,
                         readout_noise_std=0.3)
    assert [type(layer.noise).__name__ for layer in net.layers] == ["Telegraph"] * 2
    assert [layer.noise.std for layer in net.layers] == [0.1, 0.3]


@pytest.mark.parametrize("value", [0, -1, math.nan, "x"])
def test_the_config_refuses_a_bad_readout_noise_std(value):
    with pytest.raises(ValueError, match="readout_noise_std"):
        resolve(TrainConfig(readout_noise_std=value))


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "ten"])
def test_the_command_line_refuses_a_bad_readout_noise_std(cli_fails, text):
    cli_fails(["train", "--readout-noise-std", text], "--readout-noise-std", repr(text))


def test_a_run_with_a_readout_noise_std_says_so(tmp_path):
    from noisynets.run import train

    result = train(TrainConfig(model=READOUT_MODEL, readout_noise_std=0.3, epochs=1,
                               batch_size=256, time_steps=2, noise_samples=1, trace_every=0,
                               figures=False, out=str(tmp_path / "run")), progress=False,
                   log=(lines := []).append)
    assert "readout noise 0.3" in lines[0]
    assert result.config.readout_noise_std == 0.3


def test_a_model_with_a_spiking_readout_gets_four_noisy_passes_and_danp_a_larger_rate():
    """Both tutorial models (a Sequential ending in ``Leaky(output=True)``, and the net that
    runs its own loop and returns its readout's spikes) get K = 4, and on the digits DANP Adam
    3e-3; BPTT keeps its rate, other data sets theirs; a spiking model with a linear readout
    and the built-in networks keep K = 1 and 1e-3."""
    for model in (READOUT_MODEL, TUTORIAL_NET):
        config = resolve(TrainConfig(model=model))
        assert (config.noise_samples, config.lr, config.noise_std) == (4, 3e-3, 0.2)
        assert "spiking readout" in preset_names(config)[-1]
        assert resolve(TrainConfig(model=model, algo="dbp")).lr == 1e-3
        assert resolve(TrainConfig(model=model, algo="anp")).lr == 1e-3
        fashion = resolve(TrainConfig(model=model, dataset="fashion-mnist"))
        assert (fashion.noise_samples, fashion.lr) == (4, 5e-4)
    assert resolve(TrainConfig(model=READOUT_MODEL, lr=1e-4)).lr == 1e-4
    assert resolve(TrainConfig(model=READOUT_MODEL, noise_samples=1)).noise_samples == 1
    for built_in in (TrainConfig(), TrainConfig(unit="lif")):
        assert (resolve(built_in).noise_samples, resolve(built_in).lr) == (1, 1e-3)


def test_a_spiking_model_with_a_linear_readout_keeps_one_noisy_pass(tmp_path):
    file = tmp_path / "nets.py"
    file.write_text("import snntorch as snn\nfrom torch import nn\n\ndef dense():\n"
                    "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), "
                    "snn.Leaky(beta=0.9, init_hidden=True), nn.Linear(32, 10))\n")
    config = resolve(TrainConfig(model=f"{file}:dense"))
    assert (config.noise_samples, config.time_steps, config.lr) == (1, 10, 1e-3)
    assert preset_names(config) == ["digits", "spiking model"]


@pytest.mark.parametrize("loss, kept", [("ce", False), ("ce_rate_loss", True)])
def test_a_stepped_model_keeps_its_outputs_over_time_only_for_a_loss_that_reads_them(loss, kept):
    """A loss on the logits needs only the sum of the readout's outputs, so the forward keeps
    nothing per step (DANP's memory stays flat in T); snntorch's losses get the (T, P B, C)
    series. The loss and logits are the same either way."""
    from noisynets.core.forward import Forward
    from noisynets.core.steps import run_model

    net = noisynets.Network([8, 16, 3], unit="lif", time_steps=5, noise_std=0.3, loss=loss,
                            seed=0)
    x, y = torch.rand(4, 8) * 3, torch.tensor([0, 1, 2, 0])
    passes = Passes.perturbed(2, 1)
    with Forward(net, passes, 4) as forward:
        out = run_model(net, forward, x)
        forward.finish()
    assert (out.spikes is not None) == kept
    if kept:
        assert tuple(out.spikes.shape) == (5, 8, 3)
        torch.testing.assert_close(out.spikes.sum(0) / 5, out.logits)
    record = net.run(x, y, passes)
    assert record.loss.shape == (2, 4) and torch.isfinite(record.loss).all()
