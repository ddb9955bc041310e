"""The fast Gaussian generator (``noisynets.core.fast_normal``) and its use by the noise sources.

Properties proven: the compiled stream is the documented formula (xoshiro128+ lanes and
Box-Muller, written out in numpy); its numbers are N(0, std^2) (moments, a Kolmogorov-Smirnov
test on 2^21 draws), independent between consecutive blocks, neighbouring numbers and
seeds; a seed fixes it to the bit and a saved state resumes it exactly, through a checkpoint
too; ``generator="torch"`` is torch's own stream, untouched; without a compiler the sources
fall back to torch's generator with one warning; a run records which generator drew.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from noisynets import Network
from noisynets.core import fast_normal
from noisynets.core.fast_normal import CHUNK, LANES, FastNormal, seed_state
from noisynets.core.noise import MTJ, Gain, Gaussian, NoiseSource, make_noise, use_generator

pytestmark = pytest.mark.skipif(not fast_normal.available(), reason="no C compiler here")


def reference(seed: int, n: int, std: float) -> np.ndarray:
    """``normal.c`` written out: xoshiro128+ in ``LANES`` lanes, uniforms from the top 24
    bits, Box-Muller per chunk (float64 maths: equal to a few float32 ulps)."""
    s = seed_state(seed).numpy().view(np.uint32).reshape(4, LANES).astype(np.uint64)
    mask = np.uint64(0xFFFFFFFF)
    out = []
    while sum(map(len, out)) < n:
        bits = []
        for _ in range(CHUNK // LANES):
            bits.append((s[0] + s[3]) & mask)
            t = (s[1] << np.uint64(9)) & mask
            s[2] ^= s[0]
            s[3] ^= s[1]
            s[1] ^= s[2]
            s[0] ^= s[3]
            s[2] ^= t
            s[3] = ((s[3] << np.uint64(11)) | (s[3] >> np.uint64(21))) & mask
        bits = np.concatenate(bits)
        half = CHUNK // 2
        u1 = ((bits[:half] >> np.uint64(8)) + 1) * 2.0**-24
        u2 = (bits[half:] >> np.uint64(8)) * 2.0**-24
        r = std * np.sqrt(-2 * np.log(u1))
        out += [r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)]
    return np.concatenate(out)[:n]


def test_the_stream_is_the_documented_formula():
    z = FastNormal(seed=7).normal((3 * CHUNK + 5,), std=0.5)  # a chunk cut to length at the end
    np.testing.assert_allclose(z.numpy(), reference(7, 3 * CHUNK + 5, 0.5), rtol=1e-5, atol=1e-6)


def test_the_numbers_are_standard_normal_and_independent():
    """Moments and a one-sample KS test against Phi on 2e6 draws; correlations (of the values
    and of their squares) between consecutive blocks, neighbouring numbers (SIMD lanes, the
    Box-Muller pair) and two seeds all within 5 / sqrt(n) of 0."""
    n = 2**21  # whole chunks
    stream = FastNormal(seed=1)
    z = stream.normal((n,), 1.0).double()
    mean, var = z.mean(), z.var()
    skew, kurt = ((z - mean) ** 3).mean() / var**1.5, ((z - mean) ** 4).mean() / var**2
    assert abs(mean) < 5 / math.sqrt(n) and abs(var - 1) < 5 * math.sqrt(2 / n)
    assert abs(skew) < 5 * math.sqrt(6 / n) and abs(kurt - 3) < 5 * math.sqrt(24 / n)
    ordered = z.sort().values
    cdf = torch.special.ndtr(ordered)
    k = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(k / n - cdf, cdf - (k - 1) / n).max()
    assert ks < 1.95 / math.sqrt(n)  # the KS test's critical value at 0.001
    bound = 5 / math.sqrt(n // 2)

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    following = stream.normal((n,), 1.0).double()  # the next block of the same stream
    other = FastNormal(seed=2).normal((n,), 1.0).double()
    pairs = {"next block": (z, following), "other seed": (z, other),
             "neighbour": (z[:-1], z[1:]), "next lane": (z[:-LANES], z[LANES:]),
             "Box-Muller pair": (z.view(-1, CHUNK)[:, : CHUNK // 2].reshape(-1),
                                 z.view(-1, CHUNK)[:, CHUNK // 2:].reshape(-1))}
    for name, (a, b) in pairs.items():
        assert abs(corr(a, b)) < bound, name
        assert abs(corr(a**2, b**2)) < bound, f"{name}, squares"


def test_a_seed_fixes_the_stream_and_a_saved_state_resumes_it_exactly():
    a, b = FastNormal(seed=3), FastNormal(seed=3)
    assert torch.equal(a.normal((1000,), 0.1), b.normal((1000,), 0.1))
    assert not torch.equal(FastNormal(seed=4).normal((1000,), 0.1),
                           FastNormal(seed=3).normal((1000,), 0.1))
    saved = a.get_state()
    first = a.normal((37, 11), 0.1)
    a.set_state(saved)
    assert torch.equal(a.normal((37, 11), 0.1), first)
    assert not torch.equal(a.normal((37, 11), 0.1), first)  # the stream went on
    with pytest.raises(ValueError, match="32 int32 words"):
        a.set_state(torch.zeros(5))


@pytest.mark.parametrize("source", [Gaussian(0.3), Gain(0.3), MTJ(), make_noise(
    "gaussian+telegraph", 0.3)], ids=["gaussian", "gain", "mtj", "sum"])
def test_a_fast_source_is_fixed_by_its_seed_and_resumes_from_its_state(source):
    use_generator(source, "fast")
    a = torch.ones(64, 50)
    source.reseed(5)
    first = [source(a) for _ in range(3)]
    source.reseed(5)
    assert all(torch.equal(source(a), f) for f in first)
    # a sum's children keep their own states, as in a network
    parts = [m for m in source.modules() if isinstance(m, NoiseSource)]
    saved = [part.get_state() for part in parts]
    after = source(a)
    for part, state in zip(parts, saved):
        part.set_state(state)
    assert torch.equal(source(a), after)
    torch_kind = use_generator(type(source)(0.3) if not hasattr(source, "sources")
                               else make_noise("gaussian+telegraph", 0.3), "torch")
    torch_kind.reseed(5)
    assert not torch.equal(torch_kind(a), first[0])  # another stream than torch's


def test_the_torch_generator_is_torchs_own_stream_untouched():
    """``generator="torch"`` (the default) draws ``normal_`` from a generator seeded with the
    source's seed: the numbers of every recorded result, to the bit."""
    for dtype in (torch.float32, torch.float64):
        a = torch.zeros(300, 7, dtype=dtype)
        source = Gaussian(0.2, seed=11)
        assert source.generator_kind == "torch"
        g = torch.Generator().manual_seed(11)
        expected = torch.randn(300, 7, generator=g, dtype=dtype) * 0.2
        assert torch.equal(source(a), expected)


def test_fast_draws_come_in_the_activitys_dtype_and_a_network_runs_on_them():
    source = Gaussian(0.2, seed=0, generator="fast")
    eps = source(torch.zeros(10, 3, dtype=torch.float64))
    assert eps.dtype == torch.float64
    assert torch.equal(eps, eps.float().double())  # float32's numbers, cast
    nets = [use_generator(Network([8, 16, 4], unit="lif", time_steps=3, noise_std=0.3,
                                  seed=2), "fast") for _ in range(2)]
    x, y = torch.rand(5, 8), torch.tensor([0, 1, 2, 3, 0])
    from noisynets import Passes

    records = [net.run(x, y, Passes.perturbed(2, 1)) for net in nets]
    assert all(torch.equal(a, b) for a, b in zip(records[0].activity, records[1].activity))
    plain = Network([8, 16, 4], unit="lif", time_steps=3, noise_std=0.3, seed=2)
    clean = plain.run(x, y, Passes.perturbed(2, 1))
    assert not torch.equal(clean.activity[0][1], records[0].activity[0][1])


def test_without_a_compiler_the_sources_fall_back_to_torch_with_one_warning(monkeypatch,
                                                                              tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("NOISYNETS_CACHE", str(tmp_path / "cache"))
    fast_normal.library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fast = Gaussian(0.2, seed=3, generator="fast")
            drawn = [fast(torch.zeros(50, 4)) for _ in range(3)]
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and "torch's generator instead" in messages[0], messages
        plain = Gaussian(0.2, seed=3)
        assert all(torch.equal(d, plain(torch.zeros(50, 4))) for d in drawn)
    finally:
        fast_normal.library.cache_clear()


def test_a_bad_generator_is_a_one_line_error():
    with pytest.raises(ValueError, match="generator='philox' must be one of torch, fast"):
        Gaussian(0.1, generator="philox")
    with pytest.raises(ValueError, match="generator='philox'"):
        use_generator(Gaussian(0.1), "philox")


def test_a_checkpoint_resumes_the_fast_stream_exactly(tmp_path):
    from noisynets.checkpoints import noise_states, set_noise_states

    net = use_generator(Network([6, 9, 3], noise_std=0.1, seed=0), "fast")
    a = torch.zeros(4, 9)
    net.layers[0].noise(a)
    path = tmp_path / "states.pt"
    torch.save(noise_states(net), path)
    sizes = (9, 3)
    expected = [layer.noise(torch.zeros(4, n)) for layer, n in zip(net.layers, sizes)]
    fresh = use_generator(Network([6, 9, 3], noise_std=0.1, seed=0), "fast")
    set_noise_states(fresh, torch.load(path, weights_only=True))
    got = [layer.noise(torch.zeros(4, n)) for layer, n in zip(fresh.layers, sizes)]
    assert all(torch.equal(e, g) for e, g in zip(expected, got))


def test_a_run_records_the_generator_and_a_seed_fixes_a_fast_run(tmp_path, cli_fails):
    import h5py

    from noisynets.cli import main

    args = ["train", "--dataset", "digits", "--hidden", "20", "--epochs", "1",
            "--generator", "fast", "--no-progress", "--no-figures", "--trace-every", "5"]
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("a", "b")]
    assert results[0]["generator"] == "fast" and results[0]["config"]["generator"] == "fast"
    losses = [[(h["train_loss"], h["test_loss"]) for h in r["history"]] for r in results]
    assert losses[0] == losses[1]  # the same seed: the same run, to the bit
    with h5py.File(tmp_path / "a" / "trace.h5", "r") as f:
        assert f.attrs["generator"] == "fast"
    cli_fails([*args[:-2], "--generator", "mt19937"], "--generator", "torch", "fast")
