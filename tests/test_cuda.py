"""The device path on a GPU (skipped where torch sees none): every tensor of a step on the
device, the batched forward still equal to the brute-force one, NP exact, every rule training,
a wrapped spiking conv net, and the benchmark. ``benchmarks/gpu_check.sh`` runs these."""

from __future__ import annotations

import json

import pytest
import snntorch as snn
import torch
from reference import brute_force, flat, record_noise, use_basis_noise
from torch import nn

import noisynets
from noisynets import Network, Passes, make_rule
from noisynets.config import TrainConfig
from noisynets.rules import COMPARISONS, PAPER_RULES
from noisynets.run import train
from noisynets.training import fit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("unit,T", [("leaky_relu", 1), ("lif", 3)])
def test_the_batched_forward_on_the_gpu_is_the_brute_force_one(unit, T):
    """The forward runs on the GPU; the brute force replays its noise on the CPU."""
    net = Network([6, 7, 5, 4], unit=unit, time_steps=T, noise_std=0.3, decorrelation=True,
                  threshold=0.5, seed=0).double().to(CUDA)
    x = torch.rand(5, 6, dtype=torch.float64, device=CUDA) * 2
    y = torch.randint(0, 4, (5,), device=CUDA)
    for passes in (Passes.perturbed(3, 2), Passes.layerwise(3, 2)):
        noise = record_noise(net)
        record = net.run(x, y, passes)
        assert record.activity[0].device.type == "cuda"
        for source, _ in noise:
            source.draws = [d.cpu() for d in source.draws]
        brute = brute_force(net.cpu(), x.cpu(), y.cpu(), passes, noise)
        net.to(CUDA)
        for k in range(3):
            torch.testing.assert_close(record.activity[k].cpu(), brute.activity[k])
        torch.testing.assert_close(record.loss.cpu(), brute.loss)
        for layer in net.layers:
            layer.noise = layer.noise.inner


def test_np_with_basis_noise_on_the_gpu_is_autograds_gradient():
    net = Network([5, 6, 6, 6], time_steps=2, seed=2).double().to(CUDA)
    x = torch.randn(4, 5, dtype=torch.float64, device=CUDA)
    y = torch.randint(0, 6, (4,), device=CUDA)
    passes = use_basis_noise(net, x, y, 1e-5, layerwise=False)
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = make_rule("np", noise_samples=passes).gradients(net, x, y)
    for e, g in zip(flat(estimate), flat(truth)):
        torch.testing.assert_close(e, g, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("algo", PAPER_RULES)
def test_every_rule_trains_on_the_gpu(algo, tmp_path):
    config = TrainConfig(algo=algo, hidden=[128, 128], epochs=3, batch_size=32, device="cuda",
                         trace_every=10, out=str(tmp_path))
    result = train(config, progress=False, log=None)
    assert result.device.startswith("cuda")
    assert result.history[-1].test_accuracy > 0.5


@pytest.mark.parametrize("algo", COMPARISONS)
def test_every_comparison_runs_on_the_gpu(algo, tmp_path):
    config = TrainConfig(algo=algo, hidden=[64], epochs=1, batch_size=64, device="cuda",
                         trace_every=0, out=str(tmp_path))
    result = train(config, progress=False, log=None)
    assert result.device.startswith("cuda")
    assert result.history[-1].train_loss < 10


def test_a_wrapped_spiking_conv_net_trains_on_the_gpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), snn.Leaky(beta=0.9, init_hidden=True),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(128, 10)).to(CUDA)
    net = noisynets.wrap(model, noise="telegraph", noise_std=0.05, both_noisy=True,
                         decorrelation=True, time_steps=4, seed=0)
    data = noisynets.data.load_dataset("digits")
    x = data.train_x.view(-1, 1, 8, 8).to(CUDA)
    y = data.train_y.to(CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    history = fit(net, make_rule("danp"), optimizer, (x, y), epochs=2, batch_size=32,
                  test=(data.test_x.view(-1, 1, 8, 8).to(CUDA), data.test_y.to(CUDA)),
                  progress=False)
    assert history[-1].test_accuracy > 0.2


def test_the_benchmark_runs_on_the_gpu(capsys):
    from noisynets.cli import main

    assert main(["bench", "--quick", "--json", "--device", "cuda"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["device"].startswith("cuda") and summary["spiking_memory_over_bptt"] > 0
