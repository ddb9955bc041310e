"""Device noise: the MTJ preset, replayed recordings, PCM weight noise and the ADC readout,
each checked against its documented formula, and the rules that refuse what they cannot
estimate."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from noisynets import Network, Passes
from noisynets.core.analog import ADC, PCMWeights, make_adc, make_weight_noise
from noisynets.core.noise import MTJ, Replay, make_noise
from noisynets.rules import make_rule
from noisynets.traces import TraceReader


def assert_close(value, expected, sd, what):
    assert abs(value - expected) < 5 * sd, f"{what}: {value} vs {expected} (sd {sd})"


# --- MTJ -------------------------------------------------------------------------------------


def test_mtj_preset_has_the_studys_numbers():
    source = make_noise("mtj", 0.5)  # --noise-std does not rescale the measured device
    assert (source.std, source.offset, source.flip, source.dc) == (9.08e-4, 5.93e-3, 0.0809, 0)
    assert source.zero_mean and source.variance == pytest.approx(9.08e-4**2 + 5.93e-3**2)
    assert make_noise("mtj:flip=0.2,offset=0.01", 1.0).flip == 0.2


def test_mtj_offset_is_a_chain_along_the_samples_continued_across_draws():
    # flip = 1: the offset alternates sign from each sample to the next, exactly, and the
    # next draw continues the chain (catches a per-row draw without the running product,
    # and a chain restarted at every call)
    source = MTJ(std=0.0, offset=1.0, flip=1.0, seed=3)
    a = torch.zeros(5, 4, dtype=torch.float64)
    first, second = source(a), source(a)
    assert torch.equal(first[1:], -first[:-1]) and torch.equal(second[0], -first[-1])
    assert set(first.unique().tolist()) == {-1.0, 1.0}
    # flip = 0: each node keeps its state; the states start at +-1 with probability 1/2
    frozen = MTJ(std=0.0, offset=1.0, flip=0.0, seed=3)(torch.zeros(3, 4000))
    assert torch.equal(frozen[0], frozen[2])
    assert_close(frozen[0].mean().item(), 0.0, 1 / math.sqrt(4000), "mean state")


def test_mtj_statistics_match_the_model():
    source = MTJ(seed=0)
    eps = torch.cat([source(torch.zeros(1000, 50, dtype=torch.float64)) for _ in range(40)])
    n = eps.numel()
    assert_close(eps.var().item(), source.variance, source.variance * math.sqrt(2 / n) * 30,
                 "variance")  # the telegraph part is correlated: far fewer effective samples
    signs = torch.sign(eps - 0.0)
    offsets = torch.where(signs > 0, 1.0, -1.0)  # std << offset: the sign is the state's
    lag1 = (offsets[1:] * offsets[:-1]).mean().item()
    assert_close(lag1, 1 - 2 * 0.0809, 0.01, "lag-1 correlation of the state")
    assert_close((eps - 5.93e-3 * offsets).std().item(), 9.08e-4, 2e-5, "Gaussian part")


# --- replay ----------------------------------------------------------------------------------


def test_replay_trace_mode_replays_each_trace_in_order(tmp_path):
    traces = np.arange(3 * 7, dtype=np.float64).reshape(3, 7)  # trace j, time t: 7 j + t
    np.save(tmp_path / "rec.npy", traces)
    source = make_noise(f"replay:file={tmp_path / 'rec.npy'}", 1e-3)
    a = torch.zeros(4, 5, dtype=torch.float64)  # 4 rows, 5 nodes: traces 0 1 2 0 1
    first, second = source(a), source(a)
    p = int(first[0, 0])  # trace 0 starts at time p
    stride = 7 // 2  # nodes 3 and 4 replay their traces 3 steps later: not node 0's values
    for draw, start in ((first, p), (second, p + 4)):
        for r in range(4):
            for j in range(5):
                assert draw[r, j] == traces[j % 3, (start + (j // 3) * stride + r) % 7]


def test_replay_pool_mode_draws_recorded_values_and_centres(tmp_path):
    values = np.array([1.0, 2.0, 4.0, 9.0])
    np.save(tmp_path / "pool.npy", values)
    raw = Replay(str(tmp_path / "pool.npy"), mode="pool", seed=1)
    eps = raw(torch.zeros(2000, 3, dtype=torch.float64))
    assert set(eps.unique().tolist()) == set(values.tolist())
    assert raw.mean == pytest.approx(4.0) and not raw.zero_mean
    centred = Replay(str(tmp_path / "pool.npy"), mode="pool", center=1, scale=2.0, seed=1)
    assert set(centred(torch.zeros(50, 3)).unique().tolist()) <= {-6.0, -4.0, 0.0, 10.0}
    assert centred.zero_mean and centred.variance == pytest.approx(4 * values.var())


def test_replay_reads_hdf5_and_names_what_is_wrong(tmp_path):
    path = tmp_path / "rec.h5"
    with h5py.File(path, "w") as f:
        f["mtj/voltage"] = np.ones((2, 10))
        f["other"] = np.zeros(4)
    source = make_noise(f"replay:file={path},dataset=mtj/voltage", 1e-3)
    assert torch.equal(source(torch.zeros(3, 2)), torch.ones(3, 2))
    with pytest.raises(ValueError, match="holds 2 data sets.*dataset=NAME"):
        make_noise(f"replay:file={path}", 1e-3)
    with pytest.raises(ValueError, match="no such file|No such file"):
        make_noise(f"replay:file={tmp_path / 'missing.npy'}", 1e-3)
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"shape \(length,\) or \(traces, length\)"):
        make_noise(f"replay:file={tmp_path / 'cube.npy'}", 1e-3)
    with pytest.raises(ValueError, match="replay needs file=PATH"):
        make_noise("replay:mode=pool", 1e-3)


# --- PCM weights -----------------------------------------------------------------------------


def test_pcm_without_noise_reads_the_weights_back():
    W = torch.randn(6, 5, dtype=torch.float64)
    exact = PCMWeights(prog=0, read=0, drift=0)
    # catches a conductance mapping that is not undone (w_max / g_max, the pair's difference)
    assert torch.allclose(exact.weight(0, W), W, rtol=0, atol=1e-14)


def test_pcm_programming_noise_follows_the_polynomial():
    W = torch.ones(400, 500, dtype=torch.float64)  # every |W| = w_max: x = 1 (and 0 for g-)
    g_prog, nu, w_max = PCMWeights(seed=2).program(0, W)
    s_full = 0.26348 + 1.9650 - 1.1731  # uS, at g = g_max = 25 uS
    assert_close((g_prog[0] - 25.0).std().item(), s_full, s_full / 300, "programming sd at x=1")
    # the unused device of the pair (target 0) gets max(0, 0.26348 z): a half-normal
    assert_close(g_prog[1].mean().item(), 0.26348 / math.sqrt(2 * math.pi), 0.26348 / 300,
                 "g- programmed from 0")
    assert_close(nu[0].mean().item(), 0.049, 0.001, "drift exponent at x=1")  # mu clipped
    assert float(w_max) == 1.0


def test_pcm_drift_and_read_noise_follow_the_model():
    model = PCMWeights(read=0)
    g = torch.full((2, 1000), 12.5, dtype=torch.float64)
    nu = torch.full_like(g, 0.06)
    year = 3.15e7
    assert torch.allclose(model.conductance(g, nu, year), g * ((year + 20) / 20) ** -0.06)
    noisy = PCMWeights(seed=4).conductance(g, torch.zeros_like(g), 0.0)
    q = min(0.2, 0.0088 / max(1e-3, 0.5**0.65))
    s_read = q * math.sqrt(math.log((20 + 250e-9) / (2 * 250e-9)))
    assert_close((noisy / 12.5 - 1).std().item(), s_read, s_read / 20, "relative read noise")


def aihwkit_pcm(W: torch.Tensor, z: list[torch.Tensor], prog: float, read: float,
                drift: float, time: float, gmax: float, compensate: bool) -> torch.Tensor:
    """The read weights of aihwkit's ``PCMLikeNoiseModel`` (its published formulas:
    Nandakumar et al., ICECS 2019; Joshi et al., Nat. Commun. 11, 2473, 2020), written out
    here in float64 on the normal draws ``z`` = (programming, drift exponent, read)."""
    w_max = W.abs().max()
    g_target = torch.stack([W.clamp(min=0), (-W).clamp(min=0)]) / w_max * gmax
    x = g_target / gmax
    sigma_prog = (0.26348 + 1.9650 * x + -1.1731 * x**2) * gmax / 25.0
    g_prog = (g_target + prog * sigma_prog * z[0]).clamp(min=0.0)
    relative = (g_target / gmax).abs().clamp(min=1e-7)
    mu = (-0.0155 * relative.log() + 0.0244).clamp(min=0.049, max=0.1)
    sigma_nu = (-0.0125 * relative.log() - 0.0059).clamp(min=0.008, max=0.045)
    nu = (mu + sigma_nu * z[1]).abs() * drift
    t, t_0, t_read = time + 20.0, 20.0, 250e-9
    g_drift = g_prog * (t / t_0) ** (-nu) if t > t_0 else g_prog
    q = (0.0088 / ((g_prog / gmax).abs() ** 0.65).clamp(min=1e-3)).clamp(max=0.2)
    sigma_read = q * math.sqrt(math.log((t + t_read) / (2 * t_read)))
    g = (g_drift + g_drift.abs() * read * sigma_read * z[2]).clamp(min=0.0)
    weights = (g[0] - g[1]) * w_max / gmax
    if compensate:  # the programmed over the drifted conductance, summed over the layer
        weights = weights * ((g_prog[0] - g_prog[1]).abs().sum()
                             / (g_drift[0] - g_drift[1]).abs().sum())
    return weights


@pytest.mark.parametrize("options", [
    dict(prog=1.0, read=1.0, drift=1.0, time=3600.0, gmax=25.0, compensate=0),
    dict(prog=1.0, read=1.0, drift=1.0, time=0.0, gmax=25.0, compensate=0),
    dict(prog=0.5, read=2.0, drift=1.5, time=3.15e7, gmax=40.0, compensate=1),
])
def test_pcm_is_aihwkits_model_draw_for_draw(monkeypatch, options):
    """Every read weight equals ``aihwkit_pcm`` fed the very normal draws the model made
    (recorded as ``torch.randn`` returns them), to float64 rounding: the programming
    polynomial, the drift exponent's clipped mean and spread, the drift, the read noise with
    its time term, the pair's read-back and the drift compensation. The weights span 1e-4 to
    1 of the largest, and zeros, so that every clip binds somewhere (a 5 % tolerance on a
    standard deviation cannot see a 2 % error in a constant; this sees any)."""
    g = torch.Generator().manual_seed(3)
    magnitude = 10 ** (-4 * torch.rand(20, 30, generator=g, dtype=torch.float64))
    sign = torch.where(torch.rand(20, 30, generator=g) < 0.5, -1.0, 1.0).double()
    W = magnitude * sign
    W[0, :5] = 0.0
    draws: list[torch.Tensor] = []
    randn = torch.randn

    def recorded(*args, **kwargs):
        z = randn(*args, **kwargs)
        draws.append(z.clone())
        return z

    monkeypatch.setattr(torch, "randn", recorded)
    read = PCMWeights(seed=5, **options).weight(0, W)
    monkeypatch.undo()
    assert [tuple(z.shape) for z in draws] == [(2, 20, 30)] * 3
    expected = aihwkit_pcm(W, draws, **options)
    torch.testing.assert_close(read, expected, rtol=1e-12, atol=1e-15)
    assert (read - W).abs().max() > 1e-3  # the noise is there: the check is not of W alone


def test_pcm_programs_once_per_update_and_reads_anew_every_forward():
    W = torch.nn.Parameter(torch.randn(8, 4, dtype=torch.float64))
    model = PCMWeights(read=0, seed=1)
    first, again = model.weight(0, W), model.weight(0, W)
    assert torch.equal(first, again)  # no update: the same programmed devices
    with torch.no_grad():
        W.add_(0.0)  # an in-place update (as an optimizer step) reprograms
    assert not torch.equal(model.weight(0, W), first)
    reading = PCMWeights(seed=1)
    assert not torch.equal(reading.weight(0, W), reading.weight(0, W))  # read noise


def test_the_passes_of_one_forward_read_the_same_weights():
    net = Network([6, 8, 3], noise_std=1e-3, seed=0, weight_noise="pcm").double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.zeros(5, dtype=torch.long)
    # passes 0 and 1 are clean, pass 2 noisy: 0 and 1 must be identical
    record = net.run(x, y, Passes(3, ((2, 3), (2, 3))))
    assert all(torch.equal(a[0], a[1]) for a in record.activity)
    clean = Network([6, 8, 3], noise_std=1e-3, seed=0).double()
    assert not torch.equal(net(x), clean(x))  # the weights are noisy


def test_bp_trains_through_the_ideal_model_of_the_device():
    net = Network([6, 8, 3], noise_std=1e-3, seed=0, weight_noise="pcm:read=0").double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    grads, _ = make_rule("bp").gradients(net, x, y)
    # the same gradient as a plain network holding the read weights (straight through)
    read = [net.weight_noise.weight(k, layer.weight).detach() for k, layer in
            enumerate(net.layers)]
    plain = Network([6, 8, 3], noise_std=1e-3, seed=0).double()
    with torch.no_grad():
        for layer, w in zip(plain.layers, read):
            layer.weight.copy_(w)
    expected, _ = make_rule("bp").gradients(plain, x, y)
    for (g, _), (e, _) in zip(grads, expected):
        assert torch.allclose(g, e, rtol=1e-12, atol=1e-14)


# --- ADC -------------------------------------------------------------------------------------


def test_adc_is_a_signed_mid_tread_quantiser():
    adc = ADC(bits=3, range=1.0)  # step 1/4, codes -4..3
    a = torch.tensor([-5.0, -1.0, -0.3, -0.125, 0.1, 0.37, 0.74, 0.9, 3.0])
    expected = torch.tensor([-1.0, -1.0, -0.25, -0.0, 0.0, 0.25, 0.75, 0.75, 0.75])
    assert torch.equal(adc.read(a), expected)  # catches step = range / 2^bits, clip at +4
    assert make_adc("6").bits == 6 and make_adc("bits=4,range=2").step == 0.25
    with pytest.raises(ValueError, match="bits=2.5"):
        make_adc("bits=2.5")


def test_the_rule_sees_only_quantised_activities_and_losses():
    net = Network([6, 8, 3], noise_std=0.05, seed=0, adc="bits=5,range=2").double()
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    record = net.run(x, y, Passes.perturbed(2))
    step = net.adc.step
    for a in record.activity:
        assert torch.equal(torch.round(a / step) * step, a)
    assert torch.equal(torch.round(record.inputs[1] / step) * step, record.inputs[1])
    assert not torch.equal(torch.round(record.inputs[0] / step) * step, record.inputs[0])
    logits = record.activity[-1].reshape(-1, 3)
    assert torch.allclose(record.loss, net.loss_fn(logits, y.repeat(2)).view(2, 7))


# --- refusals, CLI, trace attributes ---------------------------------------------------------


@pytest.mark.parametrize("rule, options, words", [
    ("np", dict(adc="bits=8"), ["np", "ADC", "anp or danp"]),
    ("inp", dict(adc="bits=8"), ["inp", "ADC"]),
    ("np", dict(noise="mtj:dc=0.04"), ["zero-mean"]),
    ("np", dict(noise="replay:file={rec}"), ["zero-mean"]),
    ("np", dict(noise="replay:file={rec},center=1"), ["correlated in time", "mode=pool"]),
])
def test_np_and_inp_refuse_what_they_cannot_estimate(tmp_path, rule, options, words):
    np.save(tmp_path / "rec.npy", np.random.default_rng(0).normal(0.5, 0.1, (3, 50)))
    options = {k: v.format(rec=tmp_path / "rec.npy") for k, v in options.items()}
    with pytest.raises(ValueError) as err:
        make_rule(rule).check(Network([4, 5, 3], **options))
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("options", [
    dict(noise="mtj"), dict(noise="replay:file={rec},mode=pool,center=1"),
    dict(weight_noise="pcm")])
def test_np_takes_what_it_can_estimate(tmp_path, options):
    np.save(tmp_path / "rec.npy", np.random.default_rng(0).normal(0.5, 0.1, (3, 50)))
    options = {k: v.format(rec=tmp_path / "rec.npy") for k, v in options.items()}
    net = Network([4, 5, 3], **options)
    make_rule("np").check(net)
    grads, _ = make_rule("np").gradients(net, torch.randn(6, 4), torch.zeros(6, dtype=torch.long))
    assert all(torch.isfinite(g).all() for g, _ in grads)


def test_cli_names_bad_device_options(cli_fails):
    cli_fails(["train", "--weight-noise", "pcm:time=-1"], "time=-1", "[0, 1e+12]")
    cli_fails(["train", "--weight-noise", "rram"], "rram", "pcm")
    cli_fails(["train", "--adc", "bits=0"], "bits=0", "1 to 32")
    cli_fails(["train", "--noise", "replay:file=/no/such.npy"], "/no/such.npy")
    cli_fails(["train", "--algo", "np", "--adc", "8"], "np", "ADC", "danp")


def test_a_run_records_its_device_noise_in_the_trace_file(tmp_path):
    from noisynets.cli import main

    out = tmp_path / "run"
    argv = ["train", "--hidden", "16", "--epochs", "1", "--threads", "1", "--noise", "mtj",
            "--weight-noise", "pcm:time=60", "--adc", "bits=10,range=8", "--out", str(out),
            "--no-figures", "--no-progress", "--trace-every", "5"]
    assert main(argv) == 0
    config = TraceReader(out / "trace.h5").config
    assert (config["noise"], config["weight_noise"], config["adc"]) == (
        "mtj", "pcm:time=60", "bits=10,range=8")
    assert json.loads((out / "results.json").read_text())["config"]["adc"] == "bits=10,range=8"


def test_weight_noise_spec_round_trips():
    model = make_weight_noise("pcm:time=3600,compensate=1")
    assert model.time == 3600 and model.compensate
    assert make_weight_noise(model.spec).spec == model.spec
    assert make_weight_noise("none") is None and make_adc("none") is None


def test_a_checkpoint_resumes_the_same_devices_and_diagnostics_change_nothing():
    import copy

    from noisynets.checkpoints import noise_states, set_noise_states
    from noisynets.training import diagnostics, evaluate, train_step

    def build():
        net = Network([6, 8, 3], noise_std=1e-2, decorrelation=True, seed=0,
                      weight_noise="pcm").double()
        return net, torch.optim.Adam(net.trained_parameters(), lr=1e-2)

    def snapshot(net, opt):
        return (copy.deepcopy(net.state_dict()), noise_states(net),
                copy.deepcopy(opt.state_dict()))

    def restored(saved):
        net, opt = build()
        net.load_state_dict(saved[0])
        set_noise_states(net, saved[1])
        opt.load_state_dict(saved[2])
        return net, opt

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    rule = make_rule("danp")
    a, opt_a = build()
    for _ in range(3):
        train_step(a, rule, opt_a, x, y)
    after_update = snapshot(a, opt_a)  # the weights changed since they were programmed
    b, opt_b = restored(after_update)
    c, opt_c = build()
    for _ in range(3):
        train_step(c, rule, opt_c, x, y)
    diagnostics(c, rule, x, y)  # inside untouched_noise: it must change nothing
    for _ in range(2):
        ra, rb, rc = (train_step(n, rule, o, x, y) for n, o in ((a, opt_a), (b, opt_b),
                                                                  (c, opt_c)))
        assert torch.equal(ra.loss, rb.loss) and torch.equal(ra.loss, rc.loss)
    evaluate(a, x, y)  # a forward: the devices now hold the current weights
    d, opt_d = restored(snapshot(a, opt_a))
    ra, rd = train_step(a, rule, opt_a, x, y), train_step(d, rule, opt_d, x, y)
    assert torch.equal(ra.loss, rd.loss)
    assert all(torch.equal(p, q) for p, q in zip(a.trained_parameters(),
                                                 d.trained_parameters()))
