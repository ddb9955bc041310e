"""``noisynets bench``: every rule's step measured in one run, the summary as JSON."""

from __future__ import annotations

import json

from noisynets.cli import main

KEYS = ("anp_over_bp", "danp_over_dbp", "k4_over_k1", "spiking_time_over_bptt",
        "spiking_memory_over_bptt", "conv_danp_over_dbp", "throughput_gflops", "table",
        "spiking_time_over_bptt_t100", "spiking_memory_growth", "bptt_memory_growth",
        "event_speedup", "event_speedup_float32", "event_bit_identical", "machine",
        "noise_share", "spiking_time_over_bptt_free_noise",
        "spiking_time_over_bptt_t100_free_noise")


def test_bench_quick_prints_the_ratios_and_the_table_as_json(capsys):
    assert main(["bench", "--quick", "--json", "--no-memory"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert all(key in summary for key in KEYS), summary.keys()
    from noisynets.core import fast_normal

    gen = summary["generator"]
    assert gen == ("fast" if fast_normal.available() else "torch")
    table = {(row["network"], row["rule"], row["K"], row["T"], row["generator"]): row
             for row in summary["table"]}
    assert len(table) == 20  # 18 steps, and the spiking DANP ones with torch's generator too
    assert table["spiking", "danp", 1, 6, "torch"]["seconds"] > 0  # the quick run's longer T
    table = {key[:4]: row for key, row in table.items() if key[4] == gen}
    assert all(row["seconds"] > 0 and row["gflop"] > 0 for row in table.values())
    # K = 4 noisy passes multiply more than one; decorrelation adds its products.
    assert table["dense", "danp", 4, 1]["gflop"] > table["dense", "danp", 1, 1]["gflop"]
    assert table["dense", "dbp", 1, 1]["gflop"] > table["dense", "bp", 1, 1]["gflop"]
    ratio = table["dense", "anp", 1, 1]["seconds"] / table["dense", "bp", 1, 1]["seconds"]
    assert abs(summary["anp_over_bp"] - ratio) < 1e-2
    assert {"float32", "bfloat16"} <= set(summary["throughput_gflops"])
    assert summary["event_bit_identical"] is True and summary["event_speedup"] > 0
    assert summary["machine"]["cpu"]
    assert set(summary["noise_share"]) == {"dense:anp:K1", "spiking:danp:K1",
                                           "spiking:danp:K1:T6", "conv:danp:K1"}
    assert set(summary["generators"]) == {gen, "torch"}
    for row in summary["generators"].values():
        assert row["spiking_time_over_bptt"] > 0 and row["spiking_time_over_bptt_t100"] > 0
        assert set(row["noise_share"]) == {"spiking:danp:K1", "spiking:danp:K1:T6"}
    assert summary["generators"][gen]["noise_share"]["spiking:danp:K1"] == summary[
        "noise_share"]["spiking:danp:K1"]


def test_bench_with_every_rule_times_all_fifteen_on_the_dense_net_and_spiking_ones(capsys):
    """``--rules all``: one run gives a row for each of the fifteen rules on the dense network
    (es at its default pairs) and on the spiking one, each with its time and FLOPs."""
    from noisynets.config import ES_PAIRS
    from noisynets.rules import RULES

    assert main(["bench", "--quick", "--json", "--no-memory", "--rules", "all"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rules"] == "all"
    rows = summary["table"]
    for network in ("dense", "spiking"):
        timed = {row["rule"] for row in rows if row["network"] == network and row["T"] <= 3}
        assert timed == set(RULES), (network, set(RULES) - timed)
    es = [row for row in rows if row["rule"] == "es"]
    assert es and all(row["K"] == ES_PAIRS for row in es)
    assert all(row["seconds"] > 0 and row["gflop"] > 0 for row in rows)
    # es runs 2 * ES_PAIRS perturbed passes, wp one: more products.
    dense = {(row["rule"], row["K"]): row for row in rows if row["network"] == "dense"}
    assert dense["es", ES_PAIRS]["gflop"] > dense["wp", 1]["gflop"]


def test_the_free_noise_step_leaves_every_generator_untouched():
    """``noise_share``'s comparison step takes its noise from a block drawn once: no source's
    generator moves, and the noise it adds is that block times the source's std."""
    import torch

    from noisynets import Network, Passes
    from noisynets.bench import free_noise, without_generator
    from noisynets.core.noise import Gaussian

    net = Network([4, 8, 3], noise_std=0.1, seed=0)
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    net.run(x, y, Passes.perturbed(2, 1))  # the generators exist
    sources = [m for m in net.modules() if isinstance(m, Gaussian)]
    before = [s.get_state()["generator"][1].clone() for s in sources]
    record = without_generator(lambda: net.run(x, y, Passes.perturbed(2, 1)))
    assert all(torch.equal(b, s.get_state()["generator"][1]) for b, s in zip(before, sources))
    clean = net.run(x, y, Passes.clean(2))
    drive = record.activity[0][1] - clean.activity[0][0]
    torch.testing.assert_close(drive, free_noise(sources[0], drive))
    assert Gaussian.forward is not free_noise  # put back


def test_bench_refuses_bad_sizes_in_one_line(cli_fails):
    cli_fails(["bench", "--steps", "0"], "--steps")
    cli_fails(["bench", "--hidden", "0"], "--hidden")
