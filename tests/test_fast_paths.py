"""Every fast path of the forward equals the plain computation it replaces, with exact
references (float64, hand-built patches, a random non-symmetric ``R``, T > 1).

Each test names the planted mistake it was seen to fail for:

* the rows of a convolution's ``R`` update unfolded with stride 1 or padding 0
  (``test_conv_decorrelation_rows_are_the_hand_built_patches``,
  ``test_conv_r_update_is_the_hand_built_one``);
* the low-precision difference pass multiplying by ``R`` instead of ``R^T``
  (``test_every_fast_path_is_the_brute_force_forward``);
* a dropout mask redrawn at every time step (``test_dropout_keeps_one_mask_over_time_steps``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import brute_force, record_noise
from torch import Tensor, nn

import noisynets
from noisynets import Network, Passes
from noisynets.core.decorrelation import decorrelate
from noisynets.core.layer import Layer
from noisynets.core.noise import Gaussian


def hand_patches(x: Tensor, k: int, stride: int, padding: int) -> Tensor:
    """Rows ``(n, i, j)`` of the ``k x k`` patches of ``x`` (N, C, H, W) a convolution with
    ``stride`` and zero ``padding`` multiplies, each flattened channel-major: by hand."""
    N, C, H, W = x.shape
    xp = torch.zeros(N, C, H + 2 * padding, W + 2 * padding, dtype=x.dtype)
    xp[:, :, padding:padding + H, padding:padding + W] = x
    rows = []
    for n in range(N):
        for i in range(0, H + 2 * padding - k + 1, stride):
            for j in range(0, W + 2 * padding - k + 1, stride):
                rows.append(xp[n, :, i:i + k, j:j + k].reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_decorrelation_rows_are_the_hand_built_patches(groups):
    """For a 3x3 convolution with stride 2 and padding 1, the rows ``R``'s update uses are
    the patches the convolution multiplies (built by hand), per group, times ``R^T``."""
    g = torch.Generator().manual_seed(0)
    op = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=groups).double()
    x = torch.randn(2, 2, 7, 7, generator=g, dtype=torch.float64)
    plain = Layer("op", op, Gaussian(0.1))
    plain.in_shape = (2, 7, 7)
    patches = hand_patches(x, 3, 2, 1)  # (2 * 4 * 4, 18)
    assert patches.shape == (32, 18)
    rows = plain.decorrelation_rows(x.reshape(2, -1))
    if groups == 1:
        assert torch.equal(rows, patches)
    else:
        assert torch.equal(rows, torch.stack([patches[:, :9], patches[:, 9:]]))
    decorrelate(op)
    decor = Layer("op", op, Gaussian(0.1))
    decor.in_shape = (2, 7, 7)
    R = decor.decorrelator.R
    R.copy_(R + 0.3 * torch.randn(R.shape, generator=g, dtype=R.dtype))
    rows = decor.decorrelation_rows(x.reshape(2, -1))
    if groups == 1:
        torch.testing.assert_close(rows, patches @ R.T, rtol=0, atol=1e-13)
    else:
        expected = torch.stack([patches[:, :9] @ R[0].T, patches[:, 9:] @ R[1].T])
        torch.testing.assert_close(rows, expected, rtol=0, atol=1e-13)


def test_conv_r_update_is_the_hand_built_one():
    """One decorrelation step of a strided, padded convolution's ``R`` inside a network:
    ``R <- R - eta (C - diag C) R`` with ``C`` the mean outer product of the hand-built
    decorrelated patches of the reference input (mean over T = 2 steps)."""
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 2)).double()
    net = noisynets.wrap(model, decorrelation=True, decorrelation_lr=0.1, time_steps=2,
                         noise_std=0.0, seed=0)
    R = net.layers[0].decorrelator.R
    R.copy_(R + 0.2 * torch.randn(R.shape, generator=g, dtype=R.dtype))
    R0 = R.clone()
    x = torch.randn(3, 1, 7, 7, generator=g, dtype=torch.float64)
    record = net.run(x, torch.zeros(3, dtype=torch.long), Passes.clean(2))
    net.update_decorrelation(record)
    xh = hand_patches(x, 3, 2, 1) @ R0.T  # (3 * 16, 9): m >= d, C's own branch
    C = xh.T @ xh / xh.shape[0]
    expected = R0 - 0.1 * (C - torch.diag(torch.diag(C))) @ R0
    torch.testing.assert_close(R, expected, rtol=0, atol=1e-12)


def random_decorrelators(net: Network, seed: int) -> None:
    """A random, far from symmetric ``R`` in every layer: ``R`` and ``R^T`` differ."""
    g = torch.Generator().manual_seed(seed)
    for layer in net.layers:
        R = layer.decorrelator.R
        R.copy_(R + 0.3 * torch.randn(R.shape, generator=g, dtype=R.dtype))
        assert (R - R.mT).abs().max() > 0.3


FAST = [
    # unit, T, precision of the difference pass, batch
    ("tanh", 3, "float32", 2),       # low-precision difference pass, rows decorrelated
    ("tanh", 3, "float64", 2),       # the plain-precision difference pass
    ("lif", 4, "float32", 2),        # spiking: the fused LIF update, the cached first drive
    ("leaky_relu", 2, "float32", 9),  # a batch large enough to fold R into W
    ("heaviside", 2, "float64", 3),  # event-driven differences of a discontinuous unit
]


@pytest.mark.parametrize("unit,T,precision,batch", FAST,
                         ids=[f"{u}-T{T}-{p}-B{b}" for u, T, p, b in FAST])
def test_every_fast_path_is_the_brute_force_forward(unit, T, precision, batch):
    """With a random ``R``, a small batch and T > 1, the batched forward (difference pass in
    ``precision``, ``R`` folded or applied to rows, the fused neurons, event-driven products,
    the first layer's drive buffer; without autograd as the rules run it, and with) gives the
    activity, inputs and losses of the brute-force forward: exactly up to float64 rounding, or
    to float32's where the difference products run in it."""
    scale = 0.3 if unit in ("heaviside", "lif") else 0.05
    net = Network([6, 20, 20, 4], unit=unit, noise_std=scale, decorrelation=True,
                  time_steps=T, precision=precision, threshold=0.5, seed=3).double()
    random_decorrelators(net, 0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 6, generator=g, dtype=torch.float64) * 2.0
    y = torch.randint(0, 4, (batch,), generator=g)
    tolerance = dict(rtol=1e-5, atol=1e-5) if precision == "float32" else {}
    for passes, grad in ((Passes.perturbed(3, 2), False), (Passes.layerwise(3, 1), False),
                         (Passes.perturbed(3, 2), True)):
        noise = record_noise(net)
        with torch.set_grad_enabled(grad):  # the rules' forward runs without autograd
            record = net.run(x, y, passes)
        brute = brute_force(net, x, y, passes, noise)
        for k in range(net.num_layers):
            torch.testing.assert_close(record.activity[k], brute.activity[k], **tolerance)
            torch.testing.assert_close(record.inputs[k], brute.inputs[k])
        torch.testing.assert_close(record.loss, brute.loss, **tolerance)
        for layer in net.layers:
            layer.noise = layer.noise.inner


def test_dropout_keeps_one_mask_over_time_steps():
    """Dropout draws one mask per sample and forward: at T = 4, with the data as a constant
    current and stateless units, layer 2 sees the same input at every step (and in every
    pass), and that input has the mask's zeros."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 40), nn.Tanh(), nn.Dropout(0.5), nn.Linear(40, 3))
    net = noisynets.wrap(model, noise_std=0.0, time_steps=4).double()
    x = torch.rand(5, 10, dtype=torch.float64) + 0.5
    record = net.run(x, torch.zeros(5, dtype=torch.long), Passes.perturbed(2, 1),
                     keep_states=True)
    steps = record.outputs[1]  # (T, P, B, 3): the readout of every step
    for t in range(1, 4):
        assert torch.equal(steps[t], steps[0]), f"step {t} saw another dropout mask"
    assert torch.equal(steps[:, 1], steps[:, 0])
    seen = record.inputs[1] / 4  # the reference input of one step
    hidden = torch.tanh(F.linear(x, model[0].weight, model[0].bias))
    dropped = seen == 0
    assert 0.2 < dropped.double().mean() < 0.8
    torch.testing.assert_close(seen[~dropped], 2 * hidden[~dropped])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "threshold-noise"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_the_fused_lif_step_is_snntorchs_to_the_bit(dtype, shifted, reset):
    """Without autograd ``LIF`` runs ``fused_step``; over 30 steps of random currents (and
    threshold shifts) its membrane and spikes equal snntorch's own step's to the bit, for
    both resets -- and, without threshold noise, those of a plain ``snn.Leaky`` too."""
    import snntorch as snn

    from noisynets.core.units import LIF

    g = torch.Generator().manual_seed(0)
    currents = torch.randn(30, 64, 50, generator=g, dtype=dtype) * 0.6
    shifts = torch.randn(30, 64, 50, generator=g, dtype=dtype) * 0.2
    fused, plain = (LIF(beta=0.8, threshold=0.7, reset=reset).to(dtype) for _ in range(2))
    leaky = snn.Leaky(beta=0.8, threshold=0.7, init_hidden=True, reset_mechanism=reset)
    currents[0, :, :5] = fused.threshold  # a membrane at the threshold exactly: no spike
    spikes, previous = 0, torch.zeros(64, 50, dtype=dtype)
    for t in range(30):
        for lif in (fused, plain):
            lif.threshold_shift = shifts[t] if shifted else None
        with torch.no_grad():
            s_fused = fused(currents[t])
        with torch.enable_grad():
            s_plain = plain(currents[t])
            s_leaky = leaky(currents[t])
        assert torch.equal(s_fused, s_plain), t
        assert torch.equal(fused.mem, plain.mem), t
        if not shifted:
            assert torch.equal(s_fused, s_leaky.to(dtype)), t
            assert torch.equal(fused.mem, leaky.mem), t
        assert s_fused.dtype == dtype
        if reset == "zero":  # a spike emptied the membrane: it holds this step's current
            fired = previous.bool()
            assert torch.equal(fused.mem[fired], currents[t][fired]), t
        previous = s_fused
        spikes += int(s_fused.sum())
    assert 0.05 < spikes / currents.numel() < 0.6  # spikes and resets were exercised


def test_a_lif_unit_changes_its_reset_and_refuses_an_unknown_one():
    from noisynets.core.units import LIF, set_reset

    net = Network([4, 6, 3], unit="lif", time_steps=3, seed=0)
    set_reset(net, "zero")
    lifs = [m for m in net.modules() if isinstance(m, LIF)]
    assert lifs and all(m.reset_mechanism == "zero" and m.fusable for m in lifs)
    assert "reset=zero" in repr(lifs[0])
    changed, built = LIF(beta=0.5, threshold=0.5), LIF(beta=0.5, threshold=0.5, reset="zero")
    changed.set_reset("zero")
    for t in range(4):  # snntorch's own step (autograd on) runs the new reset too
        assert torch.equal(changed(torch.full((3,), 0.4)), built(torch.full((3,), 0.4)))
        assert torch.equal(changed.mem, built.mem), t
    # 0.4, 0.6 (spike), emptied: 0.4, 0.6; by subtraction it would be 0.4, 0.6, 0.2, 0.5
    assert float(built.mem[0]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="unknown reset 'none'.*subtract, zero"):
        LIF(reset="none")


def dyadic(net: Network, bits: int = 10) -> None:
    """Round every weight (and ``R``) to multiples of ``2^-bits``: then every sum of the
    difference products is exact in float64, in any order."""
    with torch.no_grad():
        for p in [*net.trained_parameters(), *(layer.decorrelator.R for layer in net.layers
                                               if layer.decorrelator is not None)]:
            p.copy_(torch.round(p * 2**bits) / 2**bits)


@pytest.mark.parametrize("decorrelation", [False, True], ids=["plain", "decor"])
def test_event_driven_differences_are_the_dense_product(monkeypatch, decorrelation):
    """A Heaviside network whose noisy pass flips about 1 % of the hidden units: the
    event-driven difference product runs (and reports the changed fraction), and the whole
    record is the dense product's to the bit in float64 where the sums are exact (dyadic
    weights), and to 1e-12 with any weights."""
    import noisynets.core.layer

    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 64, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (200,), generator=g)
    default = noisynets.core.layer.EVENT_FRACTION
    for exact in (True, False):
        records, nets = [], []
        for fraction in (default, 0.0):
            monkeypatch.setattr(noisynets.core.layer, "EVENT_FRACTION", fraction)
            net = Network([64, 256, 256, 10], unit="heaviside", noise_std=0.01, seed=0,
                          decorrelation=decorrelation).double()
            if decorrelation:
                random_decorrelators(net, 1)
            if exact:
                dyadic(net)
            with torch.no_grad():  # as the rules run it; autograd runs the dense product
                records.append(net.run(x, y, Passes.perturbed(3, 2)))
            nets.append(net)
        events, dense = nets
        assert events.layers[1].events > 0 and dense.layers[1].events == 0
        fraction = events.layers[1].changed_fraction
        h = (records[0].activity[0] > 0).double()  # layer 1's outputs, T = 1
        assert fraction == (h[1:] != h[:1]).double().mean().item()
        assert 0.001 < fraction < 0.02, fraction
        for a, b in zip(records[0].activity, records[1].activity):
            if exact:
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        assert torch.equal(records[0].loss, records[1].loss) or not exact


def test_the_event_product_is_the_dense_product():
    """``Layer.event_product`` of a sparse ternary ``dh`` with a non-square ``W``: the dense
    ``dh W^T``, to the bit for dyadic weights, to 1e-12 for any."""
    g = torch.Generator().manual_seed(0)
    op = nn.Linear(300, 120, bias=False).double()
    layer = Layer("op", op, Gaussian(0.1))
    dh = (torch.rand(500, 300, generator=g) < 0.01).double()
    dh[:, ::7] *= -1
    W = torch.randn(120, 300, generator=g, dtype=torch.float64)
    torch.testing.assert_close(layer.event_product(dh, W), dh @ W.T, rtol=0, atol=1e-12)
    layer.casts = {}
    W = torch.round(W * 1024) / 1024
    assert torch.equal(layer.event_product(dh, W), dh @ W.T)


def test_the_diagnostics_report_the_changed_fraction_per_layer():
    """``training.diagnostics`` names, per layer, the share of input entries a noisy pass
    changed where the layer follows discontinuous units, and None elsewhere."""
    from noisynets import make_rule
    from noisynets.training import diagnostics

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(50, 16, generator=g), torch.randint(0, 4, (50,), generator=g)
    net = Network([16, 32, 32, 4], unit="heaviside", noise_std=0.05, seed=0)
    changed = diagnostics(net, make_rule("anp"), x, y)["changed_fraction"]
    assert changed[0] is None and all(0 < c < 0.5 for c in changed[1:]), changed
    smooth = Network([16, 32, 4], noise_std=0.05, seed=0)
    assert diagnostics(smooth, make_rule("anp"), x, y)["changed_fraction"] == [None, None]


@pytest.mark.parametrize("unit, time_steps", [("heaviside", 1), ("lif", 5)])
def test_the_changed_fraction_is_an_independent_count_of_the_changed_inputs(unit, time_steps):
    """``diagnostics``' changed_fraction of layer k >= 2 is, in the rule's own forward
    (repeated from the same noise state, keeping the states), the share of the noisy passes'
    entries of layer k's input -- the outputs of layer k - 1 at every time step -- that differ
    from the reference pass's: ``mean_{t, p >= 1, b, i} [h_{t,p,b,i} != h_{t,0,b,i}]``."""
    from noisynets import make_rule
    from noisynets.training import diagnostics, probe_diagnostics

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 16, generator=g), torch.randint(0, 4, (20,), generator=g)
    net = Network([16, 24, 24, 4], unit=unit, time_steps=time_steps, noise_std=0.3, seed=0)
    rule = make_rule("anp", noise_samples=2)
    changed = diagnostics(net, rule, x, y)["changed_fraction"]
    with torch.no_grad(), net.untouched_noise():
        record = net.run(x, y, rule.passes(net), keep_states=True)
    assert changed[0] is None
    for k in (2, 3):
        h = record.outputs[k - 2]  # (T, P, B, n): the input of layer k
        assert h.shape[:2] == (time_steps, 3)
        count = (h[:, 1:] != h[:, :1]).double().mean().item()
        assert 0 < count < 1
        assert changed[k - 1] == count, (k, changed, count)
    other = torch.rand(20, 16, generator=g), torch.randint(0, 4, (20,), generator=g)
    both = probe_diagnostics(net, rule, [(x, y), other])["changed_fraction"]
    second = diagnostics(net, rule, *other)["changed_fraction"]
    assert both == [None, *((a + b) / 2 for a, b in zip(changed[1:], second[1:]))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_no_grad_heaviside_and_sign_are_the_autograd_ones(dtype):
    """Without autograd Heaviside and sign write their outputs directly: the same values
    (zero and the threshold's neighbours included) and dtype as with autograd."""
    from noisynets.core.units import Heaviside, Sign

    a = torch.tensor([-2.0, -1e-300, -0.0, 0.0, 1e-300, 3.0], dtype=dtype)
    a = torch.cat([a, torch.randn(1000, dtype=dtype)])
    for unit in (Heaviside(), Sign()):
        with torch.enable_grad():
            plain = unit(a)
        with torch.no_grad():
            fast = unit(a)
        assert torch.equal(fast, plain) and fast.dtype == dtype, unit
