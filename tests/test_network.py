"""The batched clean/noisy forward and the Record it returns (docs/algorithms.md, "Two passes,
one forward")."""

from __future__ import annotations

import torch

from noisynets import Network, Passes


def test_the_reference_pass_of_a_perturbed_forward_is_the_clean_forward(small_net, batch):
    x, y = batch
    clean = small_net.run(x, y, Passes.clean(4))
    perturbed = small_net.run(x, y, Passes.perturbed(4, samples=3))
    for c, p in zip(clean.activity, perturbed.activity):
        torch.testing.assert_close(p[0], c[0])
        assert (p[1:] != p[:1]).all(dim=-1).all(), "every node of every noisy pass is perturbed"
    torch.testing.assert_close(perturbed.loss[0], clean.loss[0])
    torch.testing.assert_close(small_net(x), clean.logits[0])


def test_inp_passes_perturb_one_layer_each(small_net, batch):
    x, y = batch
    record = small_net.run(x, y, Passes.layerwise(4, samples=2))
    assert record.loss.shape == (9, 32)
    for k in range(4):
        block = slice(1 + 2 * k, 3 + 2 * k)
        for layer in range(4):
            same = torch.equal(record.activity[layer][block],
                               record.activity[layer][:1].expand(2, -1, -1))
            assert same == (layer < k), (k, layer)


def test_with_intrinsic_noise_in_both_passes_the_reference_pass_is_noisy(batch):
    x, y = batch
    quiet = Network([10, 20, 5], noise_std=1e-2, seed=0).double()
    noisy = Network([10, 20, 5], noise_std=1e-2, seed=0, both_noisy=True).double()
    a = quiet.run(x, y, Passes.perturbed(2)).activity[0]
    b = noisy.run(x, y, Passes.perturbed(2, both_noisy=True)).activity[0]
    torch.testing.assert_close(a[0], b[0], atol=0.1, rtol=0)  # same weights, small noise
    assert not torch.equal(a[0], b[0])
    assert not torch.equal(b[0], b[1]), "the two passes carry independent noise"


def test_the_first_layer_multiplies_its_input_once(monkeypatch, small_net, batch):
    x, y = batch
    rows = []
    first = small_net.layers[0]
    for name in ("product", "difference"):  # every product the layer computes, and its rows
        original = getattr(first, name)
        monkeypatch.setattr(first, name, lambda h, *a, f=original: rows.append(h.shape[0])
                            or f(h, *a))
    small_net.run(x, y, Passes.perturbed(4, samples=5))
    assert rows == [32]


def test_the_same_seed_builds_the_same_network_and_noise(batch):
    x, y = batch
    a = Network([10, 20, 5], noise_std=0.1, seed=3).run(x.float(), y, Passes.perturbed(2))
    b = Network([10, 20, 5], noise_std=0.1, seed=3).run(x.float(), y, Passes.perturbed(2))
    c = Network([10, 20, 5], noise_std=0.1, seed=4).run(x.float(), y, Passes.perturbed(2))
    torch.testing.assert_close(a.activity[1], b.activity[1], rtol=0, atol=0)
    assert not torch.equal(a.activity[1], c.activity[1])


def test_layers_draw_independent_noise(batch):
    x, y = batch
    net = Network([10, 10, 10, 10], unit="identity", noise_std=1.0, seed=0)
    record, noise = net.run_reading_noise(x.float(), y, Passes.perturbed(3))
    assert not torch.equal(noise[0], noise[1])
    assert not torch.equal(noise[1], noise[2])


def test_forwards_inside_untouched_noise_do_not_change_the_noise_streams(batch):
    from noisynets.core.noise import make_noise

    x, y = batch
    x = x.float()
    spec = "gaussian+telegraph:switch=0.2"
    plain = Network([10, 20, 5], noise=make_noise(spec, 0.1), seed=0, encoding="poisson")
    probed = Network([10, 20, 5], noise=make_noise(spec, 0.1), seed=0, encoding="poisson")
    torch.manual_seed(0)
    first = plain.run(x.sigmoid(), y, Passes.perturbed(2)).activity[0]
    second = plain.run(x.sigmoid(), y, Passes.perturbed(2)).activity[0]
    torch.manual_seed(0)
    assert torch.equal(probed.run(x.sigmoid(), y, Passes.perturbed(2)).activity[0], first)
    with probed.untouched_noise():
        probed.run(x[:4].sigmoid(), y[:4], Passes.perturbed(2, samples=3))
    assert torch.equal(probed.run(x.sigmoid(), y, Passes.perturbed(2)).activity[0], second)


def test_decorrelated_layers_compute_w_r_x_whether_or_not_they_fold_r_into_w():
    """a = W (R x) + b; a layer may form W R once instead of decorrelating every row."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    for batch_size in (2, 64):  # 2 rows: R x per row; 2 passes of 64 rows: (W R) x
        net = Network([10, 30, 3], decorrelation=True, seed=0).double()
        for layer in net.layers:
            R = layer.decorrelator.R
            R.add_(0.1 * torch.randn(R.shape, generator=g, dtype=R.dtype))
        x = torch.randn(batch_size, 10, generator=g, dtype=torch.float64)
        y = torch.zeros(batch_size, dtype=torch.long)
        record = net.run(x, y, Passes.perturbed(2))
        l1, l2 = net.layers
        xh1 = x @ l1.decorrelator.R.T
        a1 = F.linear(xh1, l1.weight, l1.bias)
        xh2 = F.leaky_relu(a1, 0.01) @ l2.decorrelator.R.T
        torch.testing.assert_close(record.inputs[0], xh1)
        torch.testing.assert_close(record.activity[0][0], a1)
        torch.testing.assert_close(record.inputs[1], xh2)
        torch.testing.assert_close(record.activity[1][0], F.linear(xh2, l2.weight, l2.bias))
