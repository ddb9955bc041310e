"""The precision of the noisy passes' difference products and of the estimates' products.

A noisy pass runs as the reference pass plus a *difference*: per layer
``da = W (h_noisy - h_ref)`` (docs/algorithms.md, "Two passes, one forward"). The rules need
only a few significant digits of ``da``, and an estimate ``e^T xh`` only a few of its own, so
those products may run in a cheaper number format than the reference pass, whose activities
and losses stay in the network's own dtype (BP's products stay in it too).

``PRECISIONS``: ``auto`` (bfloat16 where the hardware multiplies it faster than float32 — a
CUDA GPU of compute capability 8 or more, a CPU with AVX512-BF16 or AMX — and the network's own
dtype elsewhere), ``float32``, ``bfloat16`` and ``float64``. The choice depends on the hardware
only, never on a timing, so a seed still fixes a run on a given machine.

Example::

    >>> import torch
    >>> difference_dtype("float32", torch.float64, torch.device("cpu"))
    torch.float32
    >>> difference_dtype("auto", torch.float64, torch.device("cpu"))
    torch.float64
"""

from __future__ import annotations

import functools
from pathlib import Path

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
    """Whether ``device`` multiplies bfloat16 matrices faster than float32 ones."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
