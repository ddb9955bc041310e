"""``noisynets bench``: what a training step of every rule costs, measured in one run.

Three networks, each rule's step timed interleaved with the others' (round after round, so a
busy machine slows them alike), the median of ``steps`` rounds after two warm-up steps:

* the dense network (``--hidden``, default 784-1000-1000-1000-10, batch 1000): BP, DBP, NP,
  INP, ANP, DANP at K = 1, and NP, INP, ANP, DANP at K = 4 noise samples;
* the spiking network (784-1000-10 LIF, batch 256): DANP against BPTT (DBP) at T = 25 and
  T = 100, and their peak memory at T = 25, 100 and 400 (the perturbation rules keep only the
  sums over the steps, BPTT every step);
* the convolutional network of ``--arch conv`` (1x28x28, batch 256): BP, DBP, ANP, DANP;
* with ``--rules all``, every one of the fifteen rules (``noisynets.rules.RULES``: the paper's
  eight and the comparisons wp, es, wfg, afg, fa, dfa, opzo) at K = 1 (es: its default
  ``ES_PAIRS`` antithetic pairs) on the dense network, and each rule not listed above on the
  spiking network at T = 25 (wfg and afg's tangents need no noise, the rest as configured);
* the event-driven difference product of a 1000 x 1000 layer whose input changed in 1 % of
  its entries (Heaviside units), against the dense product, in float64 and float32.

Also in the same run: the CPU's model and SIMD features, the machine's matrix-multiply
throughput in every number format the difference pass can use, the FLOPs of each step
(``torch.utils.flop_counter``) and the share of that throughput they achieve, and each step's
peak memory -- on a GPU ``torch.cuda.max_memory_allocated``; on the CPU the growth of the
peak resident set of a fresh process that runs a few steps of that rule alone. Every rule runs
at its defaults (``precision="auto"``: see ``noisynets.core.precision``; ``--precision`` sets it).
The Gaussian noise of every perturbation step is drawn by ``--generator`` (``fast``, the
default here, or ``torch``: ``noisynets.core.noise.GENERATORS``); the spiking DANP steps are also
timed with the other generator, interleaved with the rest, so one run compares the two.

``--json``: the last line of stdout is one JSON object with ``anp_over_bp``, ``danp_over_dbp``
(K = 1), ``k4_over_k1`` (DANP), ``spiking_time_over_bptt``, ``spiking_memory_over_bptt``,
``conv_danp_over_dbp``, ``spiking_time_over_bptt_t100``, ``spiking_memory_growth`` (DANP's
peak memory at T = 400 over T = 25), ``bptt_memory_growth`` (BPTT's), ``noise_share`` (per
perturbation step: the share of its time that drawing the Gaussian noise takes, measured as the
same step with every draw taken from a block drawn once, interleaved with the rest),
``spiking_time_over_bptt_free_noise`` and ``..._t100_free_noise`` (the spiking ratios with the
noise drawn once: what is left when the generator is set aside), ``generator`` (the one that
drew: ``fast``, or ``torch`` where it was asked for, on a GPU, or where no C compiler works),
``generators`` (per generator, for the spiking DANP steps: ``spiking_time_over_bptt``,
``spiking_time_over_bptt_t100`` and ``noise_share``), ``event_speedup`` (dense over
event-driven time, float64), ``event_speedup_float32``, ``event_bit_identical``, the machine,
the throughput and the full table.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from noisynets.core.layer import Layer
from noisynets.core.network import Network
from noisynets.core.noise import GENERATORS, Gaussian, generator_in_use, use_generator
from noisynets.core.precision import (
    PRECISIONS,
    cpu_flags,
    cpu_model,
    difference_dtype,
    fast_bfloat16,
)
from noisynets.models import conv_net
from noisynets.rules import COMPARISONS, make_rule, uses_decorrelation
from noisynets.training import train_step


@dataclass
class Case:
    """One measured configuration: a network, a rule, K."""

    network: str  # "dense", "spiking" or "conv"
    rule: str
    samples: int = 1
    time_steps: int = 0  # spiking: T (0: the setup's)
    free_noise: bool = False  # every Gaussian draw taken from a block drawn once (noise_share)
    generator: str = "torch"  # of the Gaussian noise (noisynets.core.noise.GENERATORS)
    seconds: float = 0.0
    flops: float = 0.0
    peak_mib: float | None = None
    times: list[float] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        tail = f":T{self.time_steps}" if self.time_steps else ""
        return f"{self.network}:{self.rule}:K{self.samples}{tail}:{self.generator}" + (
            ":free" if self.free_noise else "")


@dataclass
class Setup:
    """The sizes of the three networks."""

    hidden: list[int]
    batch_size: int = 1000
    spiking_hidden: list[int] = field(default_factory=lambda: [1000])
    time_steps: int = 25
    long_time_steps: list[int] = field(default_factory=lambda: [100, 400])  # timed, memory
    spiking_batch: int = 256
    conv_batch: int = 256
    inputs: int = 784
    event_size: int = 1000  # the layer of the event-driven product: event_size^2 weights
    precision: str = "auto"  # of the difference products (noisynets.core.precision)
    generator: str = "fast"  # of the Gaussian noise (noisynets.core.noise.GENERATORS)


def memory_needed(setup: Setup) -> int:
    """Bytes the dense network's K = 4 step needs at the least: the activity and input of its
    ``5 B`` stacked rows in every layer, and its weights with Adam's two moments, float32."""
    widths = [setup.inputs, *setup.hidden, 10]
    rows = 5 * setup.batch_size * sum(widths) * 2
    weights = sum(a * b for a, b in zip(widths, widths[1:])) * 3
    return 4 * (rows + weights)


def check_memory(setup: Setup) -> None:
    """``ValueError`` when ``memory_needed`` is more than the machine's memory."""
    import os

    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    need = memory_needed(setup)
    if need > have:
        raise ValueError(f"--batch-size {setup.batch_size} and --hidden "
                         f"{' '.join(map(str, setup.hidden))} need at least {need / 2**30:.3g} "
                         f"GiB, this machine has {have / 2**30:.3g} GiB: choose smaller ones")


def build(case: Case, setup: Setup, device: torch.device) -> Callable[[], Any]:
    """A function that runs one training step of ``case`` (network, data and optimizer made)."""
    g = torch.Generator().manual_seed(0)
    decorrelation = uses_decorrelation(case.rule)
    common = dict(decorrelation=decorrelation, decorrelation_fraction=0.1, seed=0,
                  precision=setup.precision)
    if case.network == "dense":
        batch, shape = setup.batch_size, (setup.inputs,)
        net = Network([setup.inputs, *setup.hidden, 10], **common)
    elif case.network == "spiking":
        batch, shape = setup.spiking_batch, (setup.inputs,)
        net = Network([setup.inputs, *setup.spiking_hidden, 10], unit="lif",
                      time_steps=case.time_steps or setup.time_steps, noise_std=0.1, **common)
    else:
        batch, shape = setup.conv_batch, (1, 28, 28)
        torch.manual_seed(0)
        net = Network(conv_net(shape, 10, "leaky_relu"), **common)
    net.to(device)
    use_generator(net, case.generator)
    x = torch.rand(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    rule = make_rule(case.rule, noise_samples=case.samples)
    optimizer = torch.optim.Adam(net.trained_parameters(), lr=1e-4)
    step = functools.partial(train_step, net, rule, optimizer, x, y)
    return functools.partial(without_generator, step) if case.free_noise else step


def free_noise(source: Gaussian, a: torch.Tensor) -> torch.Tensor:
    """A Gaussian source's draw without its generator: one block per shape, drawn once."""
    blocks = source.__dict__.setdefault("_drawn_once", {})
    key = (tuple(a.shape), a.dtype, a.device)
    if key not in blocks:
        blocks[key] = torch.randn(a.shape, dtype=a.dtype).to(a.device)
    return blocks[key] * source.std


def without_generator(step: Callable[[], Any]) -> Any:
    """``step`` with every Gaussian draw taken from ``free_noise``: what the step would cost
    if drawing the noise were free (torch's CPU generator draws serially, on one core)."""
    drawn = Gaussian.forward
    Gaussian.forward = free_noise  # type: ignore[method-assign]
    try:
        return step()
    finally:
        Gaussian.forward = drawn  # type: ignore[method-assign]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(cases: list[Case], steps: dict[str, Callable[[], Any]], rounds: int,
                     device: torch.device) -> None:
    """Two warm-up steps each, then ``rounds`` rounds of one step of every case."""
    for case in cases:
        for _ in range(2):
            steps[case.name]()
    sync(device)
    for _ in range(rounds):
        for case in cases:
            start = time.perf_counter()
            steps[case.name]()
            sync(device)
            case.times.append(time.perf_counter() - start)
    for case in cases:
        case.seconds = statistics.median(case.times)


def count_flops(step: Callable[[], Any]) -> float:
    """The floating-point operations of one step (matrix products and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def throughput(device: torch.device, size: int = 1024, repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of a ``size x size`` matrix product in each number format."""
    out = {}
    g = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=g).to(device)
    b = torch.rand(size, size, generator=g).to(device)
    for dtype in (torch.float32, torch.bfloat16):
        x, w = a.to(dtype), b.to(dtype)
        for _ in range(2):
            x @ w
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            x @ w
        sync(device)
        seconds = (time.perf_counter() - start) / repeats
        out[str(dtype).removeprefix("torch.")] = 2 * size**3 / seconds / 1e9
    return out


def peak_memory(case: Case, setup: Setup, device: torch.device) -> float:
    """MiB a few steps of ``case`` add to the peak memory: on a GPU in this process, on the
    CPU in a fresh one (a process's peak resident set only grows)."""
    if device.type == "cuda":
        step = build(case, setup, device)
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(3):
            step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    code = ("import json, sys; from noisynets.bench import memory_probe; "
            "print(memory_probe(json.loads(sys.argv[1])))")
    payload = json.dumps({"case": asdict(case), "setup": asdict(setup)})
    proc = subprocess.run([sys.executable, "-c", code, payload], capture_output=True,
                          text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def memory_probe(payload: dict[str, Any]) -> float:
    """Inside a fresh process: how far three steps raise the peak resident set over what the
    process held before them, in MiB. On Linux the peak (``VmHWM``) is reset to the current
    size first (a process's peak is inherited from the one that started it); elsewhere
    ``ru_maxrss`` is used as it is."""
    case = Case(**{k: v for k, v in payload["case"].items() if k != "times"})
    step = build(case, Setup(**payload["setup"]), torch.device("cpu"))
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak := current
        base = _status_kib(status, "VmRSS")
        read = functools.partial(_status_kib, status, "VmHWM")
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        read = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    for _ in range(3):
        step()
    return (read() - base) / 1024


def _status_kib(status: Path, field: str) -> int:
    """A ``kB`` field of ``/proc/self/status``."""
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in {status}")


# ``--rules``: the paper's rules only (the default), or every rule.
RULE_SETS: tuple[str, ...] = ("paper", "all")
# With ``--rules all``: the rules added on the dense network and on the spiking one.
MORE_DENSE: tuple[str, ...] = ("dnp", "dinp", *COMPARISONS)
MORE_SPIKING: tuple[str, ...] = ("bp", "np", "dnp", "inp", "dinp", "anp", *COMPARISONS)


def samples_of(rule: str) -> int:
    """The K a rule runs at by default: es its antithetic pairs, every other rule 1."""
    from noisynets.config import ES_PAIRS

    return ES_PAIRS if rule == "es" else 1


def run(setup: Setup, device: torch.device, rounds: int, memory: str = "all",
        log: Callable[[str], None] = print, rules: str = "paper") -> dict[str, Any]:
    """Measure every case; the summary ratios and the table. ``memory``: ``all`` cases'
    peak memory, the ``spiking`` ones only, or ``none``; ``rules``: ``paper`` (the cases the
    ratios need) or ``all`` (every rule on the dense and the spiking network, module doc)."""
    if rules not in RULE_SETS:
        raise ValueError(f"rules {rules!r}: one of {', '.join(RULE_SETS)}")
    gen = setup.generator
    other = next(g for g in GENERATORS if g != gen)
    dense = [Case("dense", r, generator=gen) for r in ("bp", "dbp", "np", "inp", "anp", "danp")]
    dense += [Case("dense", r, 4, generator=gen) for r in ("np", "inp", "anp", "danp")]
    T, (T_mid, T_long) = setup.time_steps, setup.long_time_steps
    spiking = [Case("spiking", r, generator=gen) for r in ("dbp", "danp")]
    spiking += [Case("spiking", r, time_steps=T_mid, generator=gen) for r in ("dbp", "danp")]
    if rules == "all":
        dense += [Case("dense", r, samples_of(r), generator=gen) for r in MORE_DENSE]
        spiking += [Case("spiking", r, samples_of(r), generator=gen) for r in MORE_SPIKING]
    conv = [Case("conv", r, generator=gen) for r in ("bp", "dbp", "anp", "danp")]
    free = [Case("dense", "anp", free_noise=True, generator=gen),
            Case("spiking", "danp", free_noise=True, generator=gen),
            Case("spiking", "danp", time_steps=T_mid, free_noise=True, generator=gen),
            Case("conv", "danp", free_noise=True, generator=gen)]
    compared = [Case("spiking", "danp", generator=other),  # the other generator, interleaved
                Case("spiking", "danp", time_steps=T_mid, generator=other)]
    cases = dense + spiking + conv + free + compared
    longest = [Case("spiking", r, time_steps=T_long, generator=gen)
               for r in ("dbp", "danp")]  # memory only
    precision = difference_dtype(setup.precision, torch.float32, device)
    host = machine(device)
    drew = {g: generator_in_use(g, device) for g in GENERATORS}
    log(f"device {device} ({host['cpu']}; SIMD: {' '.join(host['simd']) or 'none listed'}), "
        f"torch threads {torch.get_num_threads()}, difference products in "
        f"{str(precision).removeprefix('torch.')} (fast bfloat16: {fast_bfloat16(device)}), "
        f"Gaussian noise drawn by the {drew[gen]} generator (and, to compare, {drew[other]})")
    gflops = throughput(device)
    log("matrix products: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gflops.items())
        + f" (bfloat16 {gflops['bfloat16'] / gflops['float32']:.2f}x float32)")
    steps = {case.name: build(case, setup, device) for case in cases}
    for case in cases:
        case.flops = count_flops(steps[case.name])
    time_interleaved(cases, steps, rounds, device)
    events = event_speed(device, rounds, setup.event_size)
    for case in cases + longest:
        if case.free_noise or any(case is c for c in compared):
            continue
        if memory == "all" or (memory == "spiking" and case.network == "spiking"):
            # A fresh process's peak swings by some 10 MiB from run to run (the allocator's
            # arenas): the spiking cases, whose growth over T is compared, take the least of 2.
            repeats = 2 if case.network == "spiking" else 1
            case.peak_mib = min(peak_memory(case, setup, device) for _ in range(repeats))
    by = {case.name: case for case in cases + longest}

    def ratio(a: str, b: str, what: str = "seconds") -> float | None:
        top, bottom = getattr(by[a], what), getattr(by[b], what)
        return None if top is None or not bottom else top / bottom

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    def name(key: str) -> str:
        """A case's name from ``network:rule:K<k>[:T<t>]`` (the run's generator)."""
        return f"{key}:{gen}"

    table = []
    for case in cases:
        if case.free_noise:
            continue
        base = {"dense": "dense:bp:K1", "spiking": "spiking:dbp:K1", "conv": "conv:bp:K1"}
        if case.time_steps:
            base["spiking"] = f"spiking:dbp:K1:T{case.time_steps}"
        table.append({
            "network": case.network, "rule": case.rule, "K": case.samples,
            "generator": case.generator,
            "T": case.time_steps or (T if case.network == "spiking" else 1),
            "seconds": round(case.seconds, 5),
            "over_bp": rounded(ratio(case.name, name(base[case.network]))),
            "gflop": round(case.flops / 1e9, 3),
            "fraction_of_fp32_throughput": round(
                case.flops / case.seconds / 1e9 / gflops["float32"], 3),
            "peak_mib": None if case.peak_mib is None else round(case.peak_mib, 1),
        })
    def spiking_ratios(g: str) -> dict[str, Any]:
        """The spiking DANP steps with generator ``g``: over BPTT's, and the noise's share."""
        steps = {"": "spiking:danp:K1", "_t100": f"spiking:danp:K1:T{T_mid}"}
        bptt = {"": name("spiking:dbp:K1"), "_t100": name(f"spiking:dbp:K1:T{T_mid}")}
        return {**{f"spiking_time_over_bptt{k}": rounded(ratio(f"{v}:{g}", bptt[k]))
                   for k, v in steps.items()},
                "noise_share": {v: rounded(1 - ratio(f"{name(v)}:free", f"{v}:{g}"))
                                for v in steps.values()}}

    summary = {
        "anp_over_bp": rounded(ratio(name("dense:anp:K1"), name("dense:bp:K1"))),
        "danp_over_dbp": rounded(ratio(name("dense:danp:K1"), name("dense:dbp:K1"))),
        "k4_over_k1": rounded(ratio(name("dense:danp:K4"), name("dense:danp:K1"))),
        "spiking_time_over_bptt": rounded(ratio(name("spiking:danp:K1"),
                                                name("spiking:dbp:K1"))),
        "spiking_memory_over_bptt": rounded(ratio(name("spiking:danp:K1"),
                                                  name("spiking:dbp:K1"), "peak_mib")),
        "conv_danp_over_dbp": rounded(ratio(name("conv:danp:K1"), name("conv:dbp:K1"))),
        "spiking_time_over_bptt_t100": rounded(ratio(name(f"spiking:danp:K1:T{T_mid}"),
                                                     name(f"spiking:dbp:K1:T{T_mid}"))),
        "spiking_memory_growth": rounded(ratio(name(f"spiking:danp:K1:T{T_long}"),
                                               name("spiking:danp:K1"), "peak_mib")),
        "bptt_memory_growth": rounded(ratio(name(f"spiking:dbp:K1:T{T_long}"),
                                            name("spiking:dbp:K1"), "peak_mib")),
        "spiking_peak_mib": {f"{c.rule}:T{c.time_steps or T}": rounded(c.peak_mib)
                             for c in spiking + longest},
        "noise_share": {c.name.removesuffix(f":{gen}:free"): rounded(
            1 - ratio(c.name, c.name.removesuffix(":free"))) for c in free},
        "spiking_time_over_bptt_free_noise": rounded(ratio(name("spiking:danp:K1") + ":free",
                                                           name("spiking:dbp:K1"))),
        "spiking_time_over_bptt_t100_free_noise": rounded(ratio(
            name(f"spiking:danp:K1:T{T_mid}") + ":free", name(f"spiking:dbp:K1:T{T_mid}"))),
        "generator": drew[gen],
        "generators": {drew[g]: spiking_ratios(g) for g in (gen, other)},
        "event_speedup": events["float64"]["speedup"],
        "event_speedup_float32": events["float32"]["speedup"],
        "event_bit_identical": events["float64"]["bit_identical"],
        "events": events,
        "machine": host,
        "precision": str(precision).removeprefix("torch."),
        "throughput_gflops": {k: round(v, 1) for k, v in gflops.items()},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "setup": asdict(setup),
        "rules": rules,
        "table": table,
    }
    log(f"{'network':<8} {'rule':<5} {'K':>2} {'T':>4} {'s/step':>9} {'x BP':>6} {'GFLOP':>8} "
        f"{'of fp32 peak':>12} {'peak MiB':>9}")
    for row in table:
        mib = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        log(f"{row['network']:<8} {row['rule']:<5} {row['K']:>2} {row['T']:>4} "
            f"{row['seconds']:>9.4f} "
            f"{row['over_bp']:>6.2f} {row['gflop']:>8.2f} "
            f"{row['fraction_of_fp32_throughput']:>12.2f} {mib:>9}")
    spiking_memory = summary["spiking_memory_over_bptt"]
    log(f"ANP/BP {summary['anp_over_bp']:.2f}, DANP/DBP {summary['danp_over_dbp']:.2f}, "
        f"DANP K=4/K=1 {summary['k4_over_k1']:.2f}, spiking DANP/BPTT time "
        f"{summary['spiking_time_over_bptt']:.2f}"
        + ("" if spiking_memory is None else f" memory {spiking_memory:.2f}")
        + f", conv DANP/DBP {summary['conv_danp_over_dbp']:.2f}")
    log(f"spiking DANP/BPTT time at T = {T_mid}: {summary['spiking_time_over_bptt_t100']:.2f}")
    log(f"drawing the noise ({drew[gen]} generator): "
        + ", ".join(f"{v:.0%} of {k}" for k, v in summary["noise_share"].items())
        + "; spiking DANP/BPTT with the noise drawn once: "
        f"{summary['spiking_time_over_bptt_free_noise']:.2f} at T = {T}, "
        f"{summary['spiking_time_over_bptt_t100_free_noise']:.2f} at T = {T_mid}")
    for g, row in summary["generators"].items():
        shares = list(row["noise_share"].values())
        log(f"spiking DANP/BPTT with the {g} generator: {row['spiking_time_over_bptt']:.2f} at "
            f"T = {T} (noise {shares[0]:.0%} of the step), "
            f"{row['spiking_time_over_bptt_t100']:.2f} at T = {T_mid} (noise {shares[1]:.0%})")
    if summary["spiking_memory_growth"] is not None:
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in summary["spiking_peak_mib"].items())
        log(f"peak MiB {peaks}; growth T = {T} -> {T_long}: DANP "
            f"{summary['spiking_memory_growth']:.2f}x, BPTT {summary['bptt_memory_growth']:.2f}x")
    for name, e in events.items():
        log(f"event-driven difference product, {e['changed'] * 100:g} % changed, {name}: "
            f"{e['speedup']:.1f}x faster than dense ({e['event_s'] * 1e3:.2f} against "
            f"{e['dense_s'] * 1e3:.2f} ms), bit-identical (exact sums): {e['bit_identical']}, "
            f"largest difference (any weights) {e['max_abs_diff']:.1e}")
    return summary


SIMD = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
        "amx_tile", "amx_bf16", "neon", "asimd", "sve")


def machine(device: torch.device) -> dict[str, Any]:
    """The CPU's model and the SIMD features the matrix products may use; the GPU's name."""
    out: dict[str, Any] = {"cpu": cpu_model(), "simd": [f for f in SIMD if f in cpu_flags()]}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def event_speed(device: torch.device, rounds: int, n: int = 1000,
                changed: float = 0.01) -> dict[str, dict[str, Any]]:
    """The difference product of an ``n x n`` dense layer whose
    input difference ``dh`` (batch 1000) is nonzero (+-1, as for Heaviside units) in a
    ``changed`` share of its entries: the dense ``dh W^T`` against ``Layer.event_product``,
    interleaved, medians of ``rounds``; per dtype the speed-up, whether the two are equal to
    the bit where the sums are exact (weights on a 2^-10 grid) and their largest difference
    with He-normal weights."""
    g = torch.Generator().manual_seed(0)
    dh = (torch.rand(1000, n, generator=g) < changed).double()
    dh[:, ::2] *= -1
    out = {}
    for dtype in (torch.float64, torch.float32):
        layer = Layer("event", nn.Linear(n, n).to(device, dtype), Gaussian(0.0))
        W = (torch.randn(n, n, generator=g, dtype=torch.float64) * (2 / n) ** 0.5)
        x, W = dh.to(device, dtype), W.to(device, dtype)
        grid = torch.round(W * 1024) / 1024
        identical = torch.equal(layer.event_product(x, grid), F.linear(x, grid))
        layer.casts.clear()
        diff = float((layer.event_product(x, W) - F.linear(x, W)).abs().max())
        times: dict[str, list[float]] = {"dense": [], "event": []}
        for r in range(rounds + 1):
            for name in times:
                layer.casts.clear()  # the transpose is made once per forward: count it
                start = time.perf_counter()
                layer.event_product(x, W) if name == "event" else F.linear(x, W)
                sync(device)
                if r:
                    times[name].append(time.perf_counter() - start)
        dense, event = statistics.median(times["dense"]), statistics.median(times["event"])
        out[str(dtype).removeprefix("torch.")] = {
            "changed": changed, "dense_s": dense, "event_s": event,
            "speedup": round(dense / event, 2), "bit_identical": identical,
            "max_abs_diff": diff}
    return out


MAX_STEPS = 10_000  # timed rounds: enough for any median


def add_arguments(p: argparse.ArgumentParser) -> None:
    from noisynets.config import integer, positive_int

    p.add_argument("--hidden", type=positive_int, nargs="+", default=[1000, 1000, 1000],
                   metavar="N", help="hidden layers of the dense network (1000 1000 1000)")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="dense batch (1000)")
    p.add_argument("--steps", type=lambda text: integer(text, 1, MAX_STEPS), default=20,
                   help=f"timed rounds, median taken (20; at most {MAX_STEPS:_})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true",
                   help="small networks and few rounds: checks that the benchmark runs")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="number format of the difference products (auto)")
    p.add_argument("--generator", choices=GENERATORS, default="fast",
                   help="generator of the Gaussian noise of every perturbation step (fast); "
                        "the spiking DANP steps are timed with the other one too")
    p.add_argument("--rules", choices=RULE_SETS, default="paper",
                   help="paper: the paper's rules (default); all: every rule, the comparisons "
                        "too, on the dense and the spiking network")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object on the last line of stdout")
