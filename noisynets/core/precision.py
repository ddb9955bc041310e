"""The precision of the noisy passes' difference products and of the estimates' products.

A noisy pass runs as the reference pass plus a *difference*: per layer
``da = W (h_noisy - h_ref)`` (docs/algorithms.md, "Two passes, one forward"). The rules need
only a few significant digits of ``da``, and an estimate ``e^T xh`` only a few of its own, so
those products may run in a cheaper number format than the reference pass, whose activities
and losses stay in the network's own dtype (BP's products stay in it too).

``PRECISIONS``: ``auto``, ``float32``, ``bfloat16`` and ``float64``. ``auto`` is bfloat16 for a
float32 network where the hardware multiplies it faster than float32, and the network's own
dtype elsewhere: on a CUDA GPU of compute capability 8 or more; on a CPU with AVX512-BF16 or
AMX where a difference product in bfloat16 (casts included) measured faster than in float32
(``bfloat16_speedup``: timed once per machine and torch version, the result kept in
``$NOISYNETS_CACHE`` or ``~/.cache/noisynets``, so every later run on that machine makes the
same choice and a seed still fixes a run). A CPU without those instructions never measures:
there bfloat16 is emulated, several times slower.

Where results depend on it: a dense layer behind discontinuous units (Heaviside, sign,
spikes) whose input changed in few entries takes the event-driven difference product
(``Layer.event_product``), which sums the changed columns in the network's dtype, not in
the chosen format. Where ``auto`` picks bfloat16, such a layer's activities therefore depend
on which path a forward took (measured on a float32 Heaviside network: up to 2.9e-3, once a
flipped unit); where it picks the network's dtype (every CPU without fast bfloat16, such as
an AVX2-only one) both paths compute in float32 and agree to rounding. ``--precision
float32`` makes every path the same on any machine.

Example::

    >>> import torch
    >>> difference_dtype("float32", torch.float64, torch.device("cpu"))
    torch.float32
    >>> difference_dtype("auto", torch.float64, torch.device("cpu"))
    torch.float64
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float64")


def difference_dtype(precision: str, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the difference products of a network in ``dtype`` on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of "
                         f"{', '.join(PRECISIONS)}")
    if precision != "auto":
        return getattr(torch, precision)
    if dtype == torch.float32 and fast_bfloat16(device):
        return torch.bfloat16
    return dtype


@functools.cache
def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices faster than float32 ones: measured on
    a CPU with bfloat16 instructions (and kept), by compute capability on a GPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    key = f"{cpu_model()} | torch {torch.__version__}"
    cache = cache_dir() / "precision.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError, RecursionError):
        known = {}
    if not isinstance(known, dict) or not isinstance(known.get(key), dict):
        known = known if isinstance(known, dict) else {}
        known[key] = bfloat16_speedup()
        try:  # atomically: a reader sees the old file or the new one
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1))
            tmp.replace(cache)
        except OSError:
            pass  # a read-only home: measured again in the next process
    return bool(known[key]["bfloat16_faster"])


def bfloat16_speedup(rows: int = 1024, features: int = 1024, repeats: int = 7) -> dict[str, Any]:
    """Time a difference product ``dh W^T`` (``rows x features`` by ``features^2``) in float32
    and in bfloat16 with its casts (``dh`` to bfloat16, the result back), interleaved, the
    median of ``repeats``; bfloat16 counts as faster only when it takes under 0.9x the time."""
    g = torch.Generator().manual_seed(0)
    dh = torch.randn(rows, features, generator=g)
    W = torch.randn(features, features, generator=g)
    Wb = W.to(torch.bfloat16)
    runs: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    steps = {"float32": lambda: dh @ W.T,
             "bfloat16": lambda: (dh.to(torch.bfloat16) @ Wb.T).to(torch.float32)}
    for _ in range(repeats + 1):  # the first round warms up
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            runs[name].append(time.perf_counter() - start)
    fp32, bf16 = (statistics.median(runs[name][1:]) for name in ("float32", "bfloat16"))
    return {"float32_s": fp32, "bfloat16_s": bf16, "bfloat16_faster": bf16 < 0.9 * fp32,
            "threads": torch.get_num_threads()}


def cache_dir() -> Path:
    """Where measured choices are kept: ``$NOISYNETS_CACHE``, else ``~/.cache/noisynets``."""
    return Path(os.environ.get("NOISYNETS_CACHE") or Path.home() / ".cache" / "noisynets")


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
