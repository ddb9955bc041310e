"""Per-step products (docs/algorithms.md, "Per-step products"): ``g_W = sum_t e_t xh_t^T``.

On a LIF network whose firing function is smooth (a sigmoid of the membrane, reset by
subtracting that smooth spike, nothing detached), BPTT is the exact gradient of the forward.
With noise made of basis directions in (time step, node) space -- over ``2 N T`` passes every
node is pushed by ``+c`` and ``-c`` at one step at a time -- NP and INP with per-step products
must reproduce it, layer by layer, at T > 1, while the summed products of the paper's rules
cannot (a hidden layer's input varies over the steps).
"""

from __future__ import annotations

import pytest
import snntorch as snn
import torch
from reference import flat, use_basis_noise
from torch import Tensor, nn

import noisynets
from noisynets import Network, Passes, make_rule
from noisynets.core.noise import NoiseSource, Telegraph
from noisynets.rules import ANP

T = 3
B = 4
C = 1e-5


class SmoothLeaky(snn.Leaky):
    """``U_t = beta U_{t-1} + I_t - theta S_{t-1}``, ``S_t = sigmoid(4 (U_t - theta))``: a
    leaky integrate-and-fire neuron with a smooth spike, so autograd through time is exact."""

    def __init__(self) -> None:
        super().__init__(beta=0.8, threshold=0.5, init_hidden=True,
                         spike_grad=lambda u: torch.sigmoid(4.0 * u))
        snn.SpikingNeuron.instances.remove(self)

    def mem_reset(self, mem: Tensor) -> Tensor:
        return self.spike_grad(mem - self.threshold)  # not detached: the exact reset


class StepBasis(NoiseSource):
    """Basis noise in (step, node) space for a layer of ``n`` nodes at ``offset`` among
    ``total``: in a block of ``2 total T`` passes, pass ``i`` pushes pair ``j = i // 2``
    (step ``j // total``, global node ``j % total``) by ``+c`` or ``-c``. Over the block every
    (step, node) entry has mean 0 and ``mean(eps eps^T) = c^2 / (total T) I``: the per-step
    variance, independent across steps."""

    def __init__(self, n: int, offset: int, total: int) -> None:
        super().__init__()
        self.n, self.offset, self.total, self.calls = n, offset, total, 0

    mean = 0.0

    @property
    def variance(self) -> float:
        return C**2 / (self.total * T)

    def forward(self, a: Tensor) -> Tensor:
        t, self.calls = self.calls % T, self.calls + 1
        count = 2 * self.total * T
        eps = torch.zeros(count, B, self.n, dtype=a.dtype)
        for i in range(count):
            step, node = divmod(i // 2, self.total)
            if step == t and 0 <= node - self.offset < self.n:
                eps[i, :, node - self.offset] = C if i % 2 == 0 else -C
        return eps.view(a.shape)


def dense(decorrelation: bool = False) -> Network:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), SmoothLeaky(), nn.Linear(6, 6), SmoothLeaky(),
                          nn.Linear(6, 4))
    net = noisynets.wrap(model, time_steps=T, per_step=True, decorrelation=decorrelation,
                         seed=0).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(2.0)
            layer.bias.normal_(0.3, 0.3, generator=g)
            if layer.decorrelator is not None:
                R = layer.decorrelator.R
                R.add_(0.2 * torch.randn(R.shape, generator=g, dtype=R.dtype))
    return net


def conv_maxpool() -> Network:
    """``Conv2d -> MaxPool2d -> neuron``: the pooling between the weight operation and its
    nodes, where a product at the summed input is not the estimate."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), SmoothLeaky(),
                          nn.Flatten(), nn.Linear(8, 3))
    net = noisynets.wrap(model, time_steps=T, per_step=True, seed=0).double()
    with torch.no_grad():
        net.layers[0].weight.mul_(3.0)
        net.layers[0].bias.fill_(0.4)
    return net


def data(shape: tuple[int, ...], classes: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(6)
    return (torch.randn(B, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (B,), generator=g))


def node_counts(net: Network, x: Tensor, y: Tensor) -> list[int]:
    return [a.shape[-1] for a in net.run(x, y, Passes.clean(net.num_layers)).activity]


def use_step_basis(net: Network, sizes: list[int], layerwise: bool) -> int:
    """Global (NP) or per-layer (INP, equal sizes) step-basis noise; the passes of a block."""
    total, offset = sum(sizes), 0
    for layer, n in zip(net.layers, sizes):
        layer.noise = StepBasis(n, 0, n) if layerwise else StepBasis(n, offset, total)
        offset += n
    return 2 * T * (max(sizes) if layerwise else total)


def assert_is_bptt(estimate, truth, what: str) -> None:
    for k, (e, g) in enumerate(zip(flat(estimate), flat(truth))):
        torch.testing.assert_close(e, g, rtol=1e-6, atol=1e-9,
                                   msg=lambda m, k=k: f"{what}, layer {k + 1}: {m}")


@pytest.mark.parametrize("decorrelation", [False, True])
def test_per_step_np_with_step_basis_noise_is_bptt_on_a_smooth_lif_network(decorrelation):
    net = dense(decorrelation)
    x, y = data((5,), 4)
    passes = use_step_basis(net, node_counts(net, x, y), layerwise=False)
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = make_rule("np", noise_samples=passes).gradients(net, x, y)
    assert_is_bptt(estimate, truth, "per-step NP")


def test_summed_products_are_not_bptt_there():
    """The reason for the option: the paper's summed products on the same network and noise
    (basis pushes constant over the steps) miss the hidden layers' gradient."""
    net = dense()
    net.per_step = False
    x, y = data((5,), 4)
    passes = use_basis_noise(net, x, y, C, layerwise=False)
    truth = make_rule("bp").gradients(net, x, y)[0]
    summed = make_rule("np", noise_samples=passes).gradients(net, x, y)[0]
    error = [float((s[0] - g[0]).norm() / g[0].norm()) for s, g in zip(summed, truth)]
    # Exact where the input or the error signal is the same at every step: the first layer
    # (a constant current) and the readout (the loss sees the mean of its drive); 2 % off in
    # the hidden layer, whose input spikes and error both vary over the steps.
    assert error[0] < 1e-7 and error[2] < 1e-7 and error[1] > 0.01, error


def test_per_step_inp_with_step_basis_noise_is_bptt_on_a_smooth_lif_network():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), SmoothLeaky(), nn.Linear(6, 6), SmoothLeaky(),
                          nn.Linear(6, 6))  # equal sizes: one block of passes per layer
    net = noisynets.wrap(model, time_steps=T, per_step=True, seed=0).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(2.0)
            layer.bias.fill_(0.3)
    x, y = data((5,), 6)
    passes = use_step_basis(net, [6, 6, 6], layerwise=True)
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = make_rule("inp", noise_samples=passes).gradients(net, x, y)
    assert_is_bptt(estimate, truth, "per-step INP")


def test_per_step_np_through_max_pooling_before_the_nodes_is_bptt():
    net = conv_maxpool()
    x, y = data((1, 4, 4), 3)
    passes = use_step_basis(net, node_counts(net, x, y), layerwise=False)
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = make_rule("np", noise_samples=passes).gradients(net, x, y)
    assert_is_bptt(estimate, truth, "per-step NP, Conv2d-MaxPool2d-neuron")


def test_summed_products_through_max_pooling_before_the_nodes_are_exact_in_layer_1():
    """The nodes are the convolution's outputs, so the pooling after them is part of the
    network the loss sees and a summed product needs no refusal: with basis pushes constant
    over the steps, summed NP is BPTT in the first layer, whose input is the same at every
    step (as for a dense network, ``test_summed_products_are_not_bptt_there``)."""
    net = conv_maxpool()
    net.per_step = False
    x, y = data((1, 4, 4), 3)
    passes = use_basis_noise(net, x, y, C, layerwise=False)
    truth = make_rule("bp").gradients(net, x, y)[0]
    summed = make_rule("np", noise_samples=passes).gradients(net, x, y)[0]
    error = [float((s[0] - g[0]).norm() / g[0].norm()) for s, g in zip(summed, truth)]
    assert error[0] < 1e-7, error


def test_per_step_anp_is_its_formula_step_by_step():
    """``e_{l,t} = dL N T / sum_{l,t} ||da_{l,t}||^2 * da_{l,t}``, ``g_W = mean sum_t e xh^T``,
    from every step's currents recorded on their own (Gaussian noise, K = 2); the readout,
    whose error is the same at every step (the loss reads its mean), by the summed product
    ``g_W = mean (sum_t e_t) (sum_t xh_t)^T / T``."""
    net = dense(decorrelation=True)
    for layer in net.layers:
        layer.noise = noisynets.core.noise.Gaussian(0.05, seed=7)
    x, y = data((5,), 4)
    K, P, L = 2, 3, net.num_layers
    currents: list[list[Tensor]] = [[] for _ in range(L)]
    inputs: list[list[Tensor]] = [[] for _ in range(L)]

    def keep(k, t, xh, current, eps, previous):
        currents[k].append(current.reshape(P, B, -1).clone())
        inputs[k].append(xh.reshape(B, -1).clone())

    with net.untouched_noise():
        record = net.forward_passes(x, y, Passes.perturbed(L, K), on_step=keep)[0]
    estimate, again = ANP(noise_samples=K).gradients(net, x, y)
    torch.testing.assert_close(again.loss, record.loss)  # the replay ran on the same noise
    dL = record.loss[1:] - record.loss[:1]
    da = [[c[1:] - c[:1] for c in steps] for steps in currents]
    norm_sq = sum(d.pow(2).sum(-1) for steps in da for d in steps)
    N = sum(c[0].shape[-1] for c in currents)
    scale = dL * N * T / norm_sq
    for k in range(L):
        if k < L - 1:
            g_w = sum(torch.einsum("kn,kni,nj->ij", scale, da[k][t], inputs[k][t])
                      for t in range(T)) / (K * B)
        else:
            g_w = torch.einsum("kn,kni,nj->ij", scale, sum(da[k]), sum(inputs[k])) / (T * K * B)
        g_b = sum(torch.einsum("kn,kni->i", scale, da[k][t])
                  for t in range(T)) / (K * B)
        torch.testing.assert_close(estimate[k][0], g_w)
        torch.testing.assert_close(estimate[k][1], g_b)


def test_per_step_products_advance_the_noise_as_one_forward_does():
    """The measuring forward leaves no trace: the record, and the noise streams after the
    step, are those of a single forward of the rule's passes."""
    net = dense()
    x, y = data((5,), 4)
    before = [layer.noise.get_state() for layer in net.layers]
    _, record = make_rule("np").gradients(net, x, y)
    after = [layer.noise.get_state()["generator"][1] for layer in net.layers]
    for layer, state in zip(net.layers, before):
        layer.noise.set_state(state)
    plain = net.run(x, y, Passes.perturbed(net.num_layers, 1))
    torch.testing.assert_close(record.loss, plain.loss)
    for layer, state in zip(net.layers, after):
        assert torch.equal(layer.noise.get_state()["generator"][1], state)


def test_per_step_np_refuses_noise_with_memory_in_one_line():
    net = dense()
    net.per_step = True
    for layer in net.layers:
        layer.noise = Telegraph(0.05, switch=0.2)
    x, y = data((5,), 4)
    with pytest.raises(ValueError, match="independent across time steps") as info:
        make_rule("np").gradients(net, x, y)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("readout", ["spikes", "membrane"])
def test_per_step_np_on_a_spiking_readout_is_bptt(readout):
    """A model ending with a (smooth) neuron: the loss on its spike counts or peak membrane."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), SmoothLeaky(), nn.Linear(6, 4), SmoothLeaky())
    net = noisynets.wrap(model, time_steps=T, per_step=True, readout=readout, seed=0).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(2.0)
            layer.bias.fill_(0.3)
    x, y = data((5,), 4)
    passes = use_step_basis(net, node_counts(net, x, y), layerwise=False)
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = make_rule("np", noise_samples=passes).gradients(net, x, y)
    assert_is_bptt(estimate, truth, f"per-step NP, spiking readout ({readout})")


class SmoothRLeaky(snn.RLeaky):
    """``SmoothLeaky`` with a recurrent weight: ``U_t = beta U_{t-1} + I_t + V S_{t-1} + c -
    theta S_{t-1}``, every part smooth, so autograd through time is exact."""

    def __init__(self, n: int) -> None:
        super().__init__(beta=0.8, threshold=0.5, linear_features=n, init_hidden=True,
                         spike_grad=lambda u: torch.sigmoid(4.0 * u))
        snn.SpikingNeuron.instances.remove(self)

    def mem_reset(self, mem: Tensor) -> Tensor:
        return self.spike_grad(mem - self.threshold)


def recurrent_net(decorrelation: bool = False, per_step: bool = True) -> Network:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), SmoothRLeaky(6), nn.Linear(6, 4))
    net = noisynets.wrap(model, time_steps=T, per_step=per_step, decorrelation=decorrelation,
                         seed=0).double()
    with torch.no_grad():
        net.layers[0].weight.mul_(2.0)
        net.layers[0].bias.fill_(0.3)
        net.layers[0].recurrent.weight.mul_(3.0)
        net.layers[0].recurrent.bias.fill_(-0.2)
    return net


@pytest.mark.parametrize("decorrelation", [False, True])
def test_per_step_np_trains_a_recurrent_weight_with_bptts_gradient(decorrelation):
    """``g_V = sum_t e_t S_{t-1}^T``, ``g_c = sum_t e_t``: the recurrent weight acts on the
    previous step's spikes, with the node's own signal; exact with step-basis noise."""
    net = recurrent_net(decorrelation)
    x, y = data((5,), 4)
    passes = use_step_basis(net, node_counts(net, x, y), layerwise=False)
    truth, _ = make_rule("bp").gradients(net, x, y)
    estimate, _ = make_rule("np", noise_samples=passes).gradients(net, x, y)
    assert len(truth[0]) == len(estimate[0]) == 4  # W, b, V, c
    assert_is_bptt(estimate, truth, "per-step NP, RLeaky")


def test_the_recurrent_estimate_is_unbiased_under_gaussian_noise():
    """The mean of many per-step NP and INP estimates of V, c with Gaussian noise is BPTT's
    gradient (cosine > 0.95, norm within 10 %)."""
    net = recurrent_net()
    for layer in net.layers:
        layer.noise = noisynets.core.noise.Gaussian(1e-4, seed=11)
    x, y = data((5,), 4)
    truth = make_rule("bp").gradients(net, x, y)[0][0]
    g = torch.cat([truth[2].flatten(), truth[3]])
    for algo, K in (("np", 12000), ("inp", 3000)):
        estimate = make_rule(algo, noise_samples=K).gradients(net, x, y)[0][0]
        m = torch.cat([estimate[2].flatten(), estimate[3]])
        assert float(m @ g / (m.norm() * g.norm())) > 0.95, algo
        assert 0.9 < float(m.norm() / g.norm()) < 1.1, algo


def test_summed_products_of_a_recurrent_layer_are_their_formula_with_step_constant_noise():
    """The paper's summed products on a recurrent layer (``V S_{t-1} + c`` inside the
    neuron), NP with basis pushes held constant over the steps. Then NP's node signal is
    ``e_n = G_n / T``, ``G_n = sum_t dL_n/dI_{t,n}`` (BPTT's, of sample n alone), and::

        g_b = g_c = T mean_n e_n = mean_n G_n       (both biases enter every step: exact)
        g_W = mean_n e_n (sum_t x_n)^T              (the constant input current: exact)
        g_V = mean_n e_n (sum_t S_{t-1,n})^T = mean_n G_n (mean_t S_{t-1,n})^T

    with ``S_{t-1}`` the reference pass's spikes of the step before (``S_{-1} = 0``). A
    factor ``T`` moved between ``V`` and ``c``, or the current step's spikes in place of the
    previous step's, breaks it."""
    net = recurrent_net(per_step=False)
    x, y = data((5,), 4)
    passes = use_basis_noise(net, x, y, C, layerwise=False)
    W, b, V, c = make_rule("np", noise_samples=passes).gradients(net, x, y)[0][0]
    G = torch.stack([make_rule("bp").gradients(net, x[n:n + 1], y[n:n + 1])[0][0][3]
                     for n in range(B)])  # (B, nodes): dL_n/dc = sum_t dL_n/dI_t
    spikes = net.run(x, y, Passes.clean(net.num_layers), keep_states=True).outputs[0][:, 0]
    previous = torch.cat([torch.zeros_like(spikes[:1]), spikes[:-1]])  # S_{t-1}, (T, B, n)
    close = dict(rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(c, G.mean(0), **close)
    torch.testing.assert_close(b, G.mean(0), **close)
    torch.testing.assert_close(W, G.T @ x / B, **close)
    torch.testing.assert_close(V, G.T @ previous.mean(0) / B, **close)
    assert float(previous.abs().max()) > 0.1  # the spikes the recurrent weight sees are there
