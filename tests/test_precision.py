"""The difference pass in a cheaper number format gives the same estimates (docs/algorithms.md,
"Two passes, one forward"): only ``da``'s product runs in bfloat16."""

from __future__ import annotations

import pytest
import torch
from reference import flat

from noisynets import Network, Passes, make_rule
from noisynets.core.precision import difference_dtype
from noisynets.training import cosine


@pytest.mark.parametrize("name", ["np", "inp", "anp", "danp"])
def test_a_bfloat16_difference_pass_gives_the_float32_estimate(name):
    """With the same noise, the estimates of the two formats agree to cosine 0.999 in every
    layer; the reference pass (activities, loss) is the same to the bit."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 50, generator=g), torch.randint(0, 10, (64,), generator=g)
    estimates, records = {}, {}
    for precision in ("float32", "bfloat16"):
        net = Network([50, 200, 200, 10], decorrelation=name == "danp", precision=precision,
                      noise_std=1e-2, seed=0)
        rule = make_rule(name.removeprefix("d"), noise_samples=2)
        estimates[precision], records[precision] = rule.gradients(net, x, y)
    for k, (a, b) in enumerate(zip(flat(estimates["float32"]), flat(estimates["bfloat16"]))):
        assert cosine(a, b) > 0.999, (k, cosine(a, b))
        assert 0.99 < float(b.norm() / a.norm()) < 1.01
    full, low = records["float32"], records["bfloat16"]
    assert torch.equal(full.loss[0], low.loss[0])
    assert not torch.equal(full.activity[-1][1:], low.activity[-1][1:]), "bf16 was not used"


def test_auto_keeps_float64_networks_exact_and_names_are_checked():
    cpu = torch.device("cpu")
    assert difference_dtype("auto", torch.float64, cpu) == torch.float64
    assert difference_dtype("bfloat16", torch.float32, cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        difference_dtype("half", torch.float32, cpu)
    with pytest.raises(ValueError, match="unknown precision"):
        Network([4, 3], precision="half")


def test_the_first_layer_and_passes_with_the_reference_input_need_no_product(monkeypatch):
    """INP's passes below the layer they perturb, and every pass at the first layer, have the
    reference pass's input: the difference product runs only on the passes that differ --
    after the network's first forward, which runs every pass below the first noise in full
    once, to check that they are the reference pass row for row."""
    net = Network([6, 5, 5, 5, 3], seed=0)
    rows: list[tuple[int, int]] = []
    for k, layer in enumerate(net.layers):
        original = layer.difference
        monkeypatch.setattr(layer, "difference",
                            lambda dh, *a, k=k, f=original: rows.append((k, dh.shape[0])) or
                            f(dh, *a))
    net.run(torch.rand(7, 6), torch.zeros(7, dtype=torch.long), Passes.layerwise(4, 2))
    assert rows == [(1, 8 * 7), (2, 8 * 7), (3, 8 * 7)] and net.rows_identical is True
    rows.clear()
    net.run(torch.rand(7, 6), torch.zeros(7, dtype=torch.long), Passes.layerwise(4, 2))
    assert rows == [(1, 2 * 7), (2, 4 * 7), (3, 6 * 7)]
    rows.clear()
    net.run(torch.rand(7, 6), torch.zeros(7, dtype=torch.long), Passes.perturbed(4, 3))
    assert rows == [(1, 3 * 7), (2, 3 * 7), (3, 3 * 7)]


class OwnNoise(torch.nn.Module):
    """A model that draws random numbers of its own, per row, before its first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(x + 0.1 * torch.randn_like(x))))


def test_a_model_with_randomness_of_its_own_runs_every_pass_in_full():
    """Its passes differ before any node noise: the first forward sees it, and every pass is
    then computed in full (each pass's activity is its own input's product)."""
    torch.manual_seed(0)
    net = Network(OwnNoise(), noise_std=0.0, seed=0)
    x, y = torch.rand(4, 6), torch.zeros(4, dtype=torch.long)
    record = net.run(x, y, Passes.perturbed(2, 2))
    assert net.rows_identical is False
    record = net.run(x, y, Passes.perturbed(2, 2))
    assert not torch.equal(record.activity[0][1], record.activity[0][0])


def test_auto_takes_the_measured_faster_format_and_keeps_the_choice(monkeypatch, tmp_path):
    """On a CPU with bfloat16 instructions ``auto`` takes bfloat16 only where it measured
    faster, never the slower one; the measurement is made once and kept on disk, so a later
    process makes the same choice without timing again. Without the instructions it never
    measures."""
    import noisynets.core.precision as precision

    cpu = torch.device("cpu")
    monkeypatch.setenv("NOISYNETS_CACHE", str(tmp_path))
    measured: list[bool] = []
    for faster in (False, True):
        (tmp_path / "precision.json").unlink(missing_ok=True)
        monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
        monkeypatch.setattr(precision, "bfloat16_speedup",
                            lambda f=faster: measured.append(f) or {"bfloat16_faster": f})
        precision.fast_bfloat16.cache_clear()
        expected = torch.bfloat16 if faster else torch.float32
        assert difference_dtype("auto", torch.float32, cpu) == expected
        assert difference_dtype("auto", torch.float64, cpu) == torch.float64
        precision.fast_bfloat16.cache_clear()  # a new process: the kept choice, no timing
        assert difference_dtype("auto", torch.float32, cpu) == expected
        assert measured == [False, True][: len(measured)] and len(measured) == 1 + faster
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    precision.fast_bfloat16.cache_clear()
    assert difference_dtype("auto", torch.float32, cpu) == torch.float32
    assert len(measured) == 2
    precision.fast_bfloat16.cache_clear()
