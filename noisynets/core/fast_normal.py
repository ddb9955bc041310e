"""A fast Gaussian generator for the CPU: the ``fast`` generator of the noise sources.

torch's CPU generator (mt19937) draws one number after another on one core: about 4 ns per
normal on this project's 2-core AMD EPYC, half of a spiking perturbation step. ``FastNormal``
draws N(0, std^2) float32 from ``normal.c`` (beside this file), a small C library compiled
at first use and kept in ``$NOISYNETS_CACHE`` (or ``~/.cache/noisynets``):

    bits     xoshiro128+ (Blackman and Vigna 2021), 8 generators side by side, one per SIMD
             lane; the top 24 bits of each output make a uniform
    normals  Box-Muller:  r = std sqrt(-2 ln u1),  z = r cos(2 pi u2),  z' = r sin(2 pi u2),
             u1 in (0, 1], u2 in [0, 1), in SIMD loops (glibc's vector logf, cosf, sinf)

about 1.2 ns per normal on one core of that machine, 3-3.5x faster than torch's 4 ns (a
draw of 256,000 numbers, the two interleaved, medians; ``noisynets bench`` measures both in a
training step). It runs on the calling thread: split over two threads by pthreads it was
several times *slower* on the project's shared 2-core machine, where the second thread waits
for a core; so was a split into two halves (the second from the state jumped 2^64 steps,
the same numbers on any thread count) in OpenMP, in torch's own thread pool: 1.4x faster
on the idle machine (0.24 against 0.33 ms for 256,000 numbers), 4-7x slower at load 1.5.
Why these bits: the counter-based Philox4x32-10 in the same SIMD loops took 2.8 ns per
number for its bits alone here (AVX2 multiplies 32 x 32 -> 64 bits in only half its lanes,
and Philox needs ten such rounds per four numbers), while xoshiro128+ takes 0.2 ns.
The state is 32 words (4 per lane), seeded from a 64-bit seed by SplitMix64
(the authors' recommendation), so a seed fixes the stream exactly on a CPU, and
``get_state``/``set_state`` restore it. A draw takes whole chunks of ``CHUNK`` numbers (the
last cut to length): the numbers depend on the state and the draws' lengths, not on where in
memory they land.

Where no C compiler works, ``library()`` is ``None`` after one warning, and the sources fall
back to torch's generator (``noisynets.core.noise``).

Example::

    >>> from noisynets.core.fast_normal import FastNormal
    >>> z = FastNormal(seed=0).normal((1000,), std=0.5)
    >>> z.shape, z.dtype
    (torch.Size([1000]), torch.float32)
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from noisynets.core.precision import cache_dir, cpu_flags

LANES = 8  # xoshiro128+ generators side by side (normal.c's LANES)
WORDS = 4 * LANES  # the state: 4 words per generator
CHUNK = 256  # normals per chunk (normal.c's 2 CHUNK)
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-shared", "-fPIC")
_MASK64 = 2**64 - 1


def _compiler() -> str | None:
    """``$CC``, else ``cc``, ``gcc`` or ``clang`` on the path."""
    named = os.environ.get("CC", "").strip()
    if named:
        return shutil.which(named)
    return next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)


def _build(source: bytes, compiler: str) -> Path:
    """The compiled library of ``source``, from the cache or compiled into it (atomically:
    concurrent runs see a whole file or none). Its name hashes the source, the flags, the
    compiler and the CPU, so another machine sharing the folder compiles its own."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout.splitlines()[:1]
    key = hashlib.sha256(repr((source, FLAGS, version, platform.machine(),
                               sorted(cpu_flags()))).encode()).hexdigest()[:16]
    folder = cache_dir() / "normal"
    path = folder / f"normal-{key}.so"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    c_file = folder / f"normal-{key}.{os.getpid()}.c"
    tmp = folder / f"normal-{key}.{os.getpid()}.so"
    try:
        c_file.write_bytes(source)
        done = subprocess.run([compiler, *FLAGS, str(c_file), "-o", str(tmp), "-lm"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise OSError(f"{compiler} failed: {why}")
        tmp.replace(path)
    finally:
        c_file.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return path


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled ``normal.c``, or ``None`` (after one warning) where it cannot be built."""
    try:
        compiler = _compiler()
        if compiler is None:
            raise OSError("no C compiler (cc, gcc or clang; or $CC) on the path")
        source = resources.files("noisynets.core").joinpath("normal.c").read_bytes()
        lib = ctypes.CDLL(str(_build(source, compiler)))
        lib.normal_fill.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                    ctypes.c_float]
        lib.normal_fill.restype = None
        if lib.normal_lanes() != LANES or lib.normal_chunk() != CHUNK:
            raise OSError("normal.c and fast_normal.py disagree on LANES or CHUNK")
    except (OSError, subprocess.SubprocessError) as err:
        warnings.warn(f"the fast Gaussian generator cannot be built ({err}): the noise is "
                      "drawn with torch's generator instead (install gcc, or set CC)",
                      RuntimeWarning, stacklevel=2)
        return None
    return lib


def available() -> bool:
    """Whether the fast generator runs here (its library compiled and loaded)."""
    return library() is not None


def seed_state(seed: int) -> Tensor:
    """The ``WORDS`` state words of ``seed``: the high halves of SplitMix64's outputs,
    ``x <- x + 0x9E3779B97F4A7C15``, ``z = mix(x)`` (Steele, Lea and Flood 2014), as int32."""
    x = int(seed) & _MASK64
    words = []
    for _ in range(WORDS):
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        words.append((z ^ (z >> 31)) >> 32)
    state = torch.tensor(words, dtype=torch.int64).view(4, LANES)
    state[0] |= (state == 0).all(0).to(torch.int64)  # no generator starts all zero
    return state.reshape(-1).to(torch.int32)


class FastNormal:
    """One stream of N(0, std^2) float32 numbers on the CPU (module doc); ``state`` is its
    ``WORDS`` int32 words, advanced in place by every draw."""

    def __init__(self, seed: int = 0, state: Tensor | None = None) -> None:
        self.state = seed_state(seed) if state is None else self._checked(state).clone()

    @staticmethod
    def _checked(state: Tensor) -> Tensor:
        if not (isinstance(state, Tensor) and state.dtype == torch.int32
                and state.shape == (WORDS,) and state.device.type == "cpu"):
            raise ValueError(f"a fast generator's state is {WORDS} int32 words on the CPU, "
                             f"got {state!r}")
        return state

    def get_state(self) -> Tensor:
        return self.state.clone()

    def set_state(self, state: Tensor) -> None:
        self.state = self._checked(state).clone()

    def normal(self, shape: tuple[int, ...] | torch.Size, std: float,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """``std * z``, ``z ~ N(0, 1)``, of ``shape`` on the CPU: drawn in float32 and cast to
        ``dtype`` (a float64 draw has float32's 24 bits). Needs ``available()``."""
        lib = library()
        if lib is None:
            raise RuntimeError("the fast generator is not available here (see its warning)")
        out = torch.empty(shape, dtype=torch.float32)
        lib.normal_fill(self.state.data_ptr(), out.data_ptr(), out.numel(), float(std))
        return out if dtype == torch.float32 else out.to(dtype)
