"""A spiking network BPTT cannot train on this machine and DANP can: peak memory against T.

    python simulations/bptt_memory.py
    python simulations/bptt_memory.py --quick

A LIF network on the embedded digits (64-1000-10, ``--unit lif``, beta 0.9, noise 0.2, batch
256, float32). BPTT (``dbp``) keeps every time step for its backward pass, so its memory grows
linearly in T; DANP keeps only the sums over the steps (docs/algorithms.md, "Time steps").

1. Peak memory of two training steps of each rule at T = 25, 50, 100, 200, 400, each in a
   fresh process (``noisynets.bench.memory_probe``'s measure: the growth of the peak resident
   set, ``VmHWM``, over what the process held before the steps), under an address-space cap
   (``RLIMIT_AS``) of 4 GiB above the process's size, so no probe can take more.
2. A least-squares line through BPTT's memory, and the T where it passes the machine's memory
   (``MemTotal``, 24 GB here): ``T*``.
3. At ``T*``: BPTT's step under the same cap, which fails (it would need the extrapolated
   memory; the cap keeps it from taking the machine's); and DANP (Adam 1e-2) trained at ``T*``
   for 2 epochs on the first 512 training samples (4 steps of 256) under an address-space
   cap of 1 GiB above its size, its peak memory measured the same way, tested on the test split
   before and after.

Every child process runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (``MMAP_THRESHOLD``).

The probes are kept in ``probes.json`` and not measured again by a later call with the same
settings. ``--quick``: 64 hidden neurons, batch 32, T = 5 and 20, checked at 4x the longest.

Figure ``bptt_memory.png``: peak memory against T for both rules, the fitted line, the
machine's memory and ``T*``. Everything measured is in ``bptt_memory.json``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, save  # noqa: E402

GIB = 2**30
FULL = dict(hidden=1000, batch=256, steps=[25, 50, 100, 200, 400], cap_gib=4.0,
            train_samples=512, epochs=2, lr=1e-2)
QUICK = dict(hidden=64, batch=32, steps=[5, 20], cap_gib=1.0, train_samples=64, epochs=1,
             lr=3e-3)
DANP_CAP_GIB = 1.0  # DANP's training runs under this address-space cap above its size
# glibc's malloc maps every block of more than this many bytes on its own and unmaps it when
# freed, so the peak resident set counts the tensors alive at once, not blocks a fragmented
# heap keeps (without it DANP's peak varied from 36 to 377 MiB between runs at T = 200).
MMAP_THRESHOLD = 65536


def machine_memory() -> int:
    """Bytes of memory this machine has (``MemTotal``)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def status_kib(field: str) -> int:
    """A ``kB`` field of this process's ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def capped(cap_gib: float) -> None:
    """Limit this process's address space to its present size plus ``cap_gib`` GiB: an
    allocation beyond raises ``MemoryError`` instead of taking the machine's memory."""
    limit = status_kib("VmSize") * 1024 + int(cap_gib * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def child(payload: dict[str, Any]) -> dict[str, Any]:
    """Inside a fresh process: build the network, cap the address space, then either two
    training steps (``probe``) or a short DANP training (``train``); the peak memory those
    added, in MiB (``VmHWM`` reset to the current size first), and what happened."""
    import torch

    from noisynets.core.network import Network
    from noisynets.data import load_dataset
    from noisynets.rules import make_rule, uses_decorrelation
    from noisynets.training import batches, evaluate, train_step

    torch.set_num_threads(1)
    rule_name, T, s = payload["rule"], payload["T"], payload["settings"]
    data = load_dataset("digits")
    torch.manual_seed(0)
    net = Network([data.num_features, s["hidden"], data.num_classes], unit="lif",
                  time_steps=T, noise_std=0.2, decorrelation=uses_decorrelation(rule_name),
                  seed=0)
    rule = make_rule(rule_name)
    optimizer = torch.optim.Adam(net.trained_parameters(), lr=s["lr"])
    n = s["train_samples"] if payload["mode"] == "train" else s["batch"]
    x, y = data.train_x[:n], data.train_y[:n]
    capped(payload["cap_gib"])
    Path("/proc/self/clear_refs").write_text("5")  # peak := current
    base = status_kib("VmRSS")
    out: dict[str, Any] = dict(rule=rule_name, T=T, cap_gib=payload["cap_gib"])
    start = time.perf_counter()
    try:
        if payload["mode"] == "probe":
            for _ in range(2):
                train_step(net, rule, optimizer, x, y)
        else:
            out["test_accuracy"] = [evaluate(net, data.test_x, data.test_y)[1]]
            out["train_loss"] = []  # per epoch, the mean loss of its reference passes
            g = torch.Generator().manual_seed(0)
            for _ in range(s["epochs"]):
                total = 0.0
                for index in batches(n, s["batch"], g, torch.device("cpu")):
                    record = train_step(net, rule, optimizer, x[index], y[index])
                    total += record.loss[0].sum().item()
                out["train_loss"].append(total / n)
                print(json.dumps(dict(epoch=len(out["train_loss"]), train_loss=total / n)),
                      file=sys.stderr, flush=True)
            out["test_accuracy"].append(evaluate(net, data.test_x, data.test_y)[1])
        out["failed"] = None
    except (MemoryError, RuntimeError, ValueError) as e:  # a failed allocation, as torch
        # reports it (RuntimeError) or the engine names the forward it failed in (ValueError)
        out["failed"] = " ".join(str(e).split())[:160] or type(e).__name__
    out["peak_mib"] = (status_kib("VmHWM") - base) / 1024
    out["seconds"] = time.perf_counter() - start
    return out


def measure(rule: str, T: int, settings: dict[str, Any], cap_gib: float,
            mode: str = "probe") -> dict[str, Any]:
    """``child`` in a fresh process."""
    payload = json.dumps(dict(rule=rule, T=T, settings=settings, cap_gib=cap_gib, mode=mode))
    code = ("import json, sys; sys.path.insert(0, sys.argv[2]); from bptt_memory import child; "
            "print(json.dumps(child(json.loads(sys.argv[1]))))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    proc = subprocess.run([sys.executable, "-c", code, payload, str(Path(__file__).parent)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return dict(rule=rule, T=T, cap_gib=cap_gib, peak_mib=None, seconds=None,
                    failed=f"exit {proc.returncode}: " + " ".join(proc.stderr.split()[-20:]))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``m = a + b T`` through ``(T, m)``."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mm = sum(m for _, m in points) / n
    b = sum((t - mt) * (m - mm) for t, m in points) / sum((t - mt) ** 2 for t, _ in points)
    return mm - b * mt, b


def main() -> None:
    args = arguments("bptt_memory", __doc__)
    settings = dict(QUICK if args.quick else FULL)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    memory = machine_memory()
    saved = out / "probes.json"  # the probes of an earlier call with the same settings
    earlier = json.loads(saved.read_text()) if saved.exists() else {}
    if earlier.get("settings") != settings:
        earlier = dict(settings=settings, probes=[])
    probes = earlier["probes"]
    for T in settings["steps"]:
        for rule in ("dbp", "danp"):
            if not any(p["rule"] == rule and p["T"] == T for p in probes):
                probes.append(measure(rule, T, settings, settings["cap_gib"]))
                saved.write_text(json.dumps(earlier, indent=1))
    bptt = [(p["T"], p["peak_mib"]) for p in probes if p["rule"] == "dbp" and not p["failed"]]
    a, b = fit_line(bptt)
    T_star = math.ceil((memory / 2**20 - a) / b)
    if args.quick:  # too small to pass the machine's memory: check the path at 4x the probes
        T_star = 4 * max(settings["steps"])
    else:
        T_star = int(math.ceil(T_star / 100) * 100)
    print(f"BPTT: {a:.1f} MiB + {b:.3f} MiB per step; passes {memory / GIB:.1f} GiB at "
          f"T = {math.ceil((memory / 2**20 - a) / b)}; checked at T* = {T_star}")
    bptt_at_star = measure("dbp", T_star, settings, settings["cap_gib"])
    danp_at_star = measure("danp", T_star, settings, DANP_CAP_GIB, mode="train")
    result = dict(settings=settings, machine_memory_bytes=memory, probes=probes,
                  bptt_fit=dict(intercept_mib=a, slope_mib_per_step=b), T_star=T_star,
                  bptt_needs_mib=a + b * T_star, bptt_at_T_star=bptt_at_star,
                  danp_at_T_star=danp_at_star)
    (out / "bptt_memory.json").write_text(json.dumps(result, indent=1))
    print(f"BPTT at T = {T_star} under a {settings['cap_gib']:g} GiB cap: "
          f"{bptt_at_star['failed'] or 'did not fail'}")
    print(f"DANP at T = {T_star}: peak {danp_at_star['peak_mib']} MiB, test accuracy "
          f"{danp_at_star.get('test_accuracy')}, {danp_at_star['seconds']} s")
    figure(result, out / "bptt_memory.png")


def figure(result: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    probes, T_star = result["probes"], result["T_star"]
    for rule, label, color in (("dbp", "BPTT (dbp)", "C0"), ("danp", "DANP", "C1")):
        points = [(p["T"], p["peak_mib"]) for p in probes if p["rule"] == rule and not p["failed"]]
        ax.plot(*zip(*points), "o-", color=color, label=f"{label}, measured")
    a, b = result["bptt_fit"]["intercept_mib"], result["bptt_fit"]["slope_mib_per_step"]
    Ts = [min(p["T"] for p in probes), T_star]
    ax.plot(Ts, [a + b * t for t in Ts], "--", color="C0",
            label=f"BPTT fit: {a:.0f} + {b:.2f} T MiB")
    ax.axhline(result["machine_memory_bytes"] / 2**20, color="k", lw=0.8,
               label="this machine's memory")
    bptt = result["bptt_at_T_star"]
    cap = bptt["cap_gib"] * 1024
    if bptt["failed"]:
        ax.plot([T_star], [cap], "x", color="C0", ms=10, mew=2,
                label=f"BPTT at T* = {T_star}: out of memory at its {cap / 1024:g} GiB cap "
                      f"(needs {result['bptt_needs_mib'] / 1024:.1f} GiB)")
    elif bptt["peak_mib"] is not None:
        ax.plot([T_star], [bptt["peak_mib"]], "o", color="C0", mfc="none", ms=8,
                label=f"BPTT at T* = {T_star}: ran in {bptt['peak_mib']:.0f} MiB")
    danp = result["danp_at_T_star"]
    if danp["peak_mib"] is not None:
        acc = danp.get("test_accuracy") or [None]
        ax.plot([T_star], [max(danp["peak_mib"], 1)], "*", color="C1", ms=12,
                label=f"DANP trained at T*: {danp['peak_mib']:.0f} MiB, test acc "
                      + (f"{acc[-1]:.2f}" if acc[-1] is not None else "-"))
    ax.set(xscale="log", yscale="log", xlabel="time steps T",
           ylabel="peak memory of a training step (MiB)",
           title="memory of a training step: BPTT grows with T, DANP does not")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--figure"]:  # redraw from a finished call's bptt_memory.json
        folder = Path(sys.argv[2])
        figure(json.loads((folder / "bptt_memory.json").read_text()), folder / "bptt_memory.png")
    else:
        main()
