"""The compiled float32 tanh and sigmoid of rnngrad[fast] against float64, over every float32
input: the largest error in units in the last place (ulp) of the float32 result.

    python benchmarks/ulp_exhaustive.py            # both, a few minutes on 2 cores
    python benchmarks/ulp_exhaustive.py --chunk 22 # smaller chunks (2^22 inputs) for less memory

tanh is odd and computed from |x|, so every non-negative float32 (+inf included) is checked;
the sigmoid on every float32 of both signs (±inf included). NaN inputs give NaN (tested in
tests/test_engines.py). The error is counted in ulps of the exact value, 2^(e-24) for
|exact| in [2^(e-1), 2^e), so that a result one step below a power of two is not measured in
the larger step above it. The reference is NumPy's float64 tanh / exp, whose own error (about
1e-16 relative) is far below a float32 ulp (6e-8 relative). tests/test_engines.py checks dense
grids of the same on every run; this script is the once-over. Not part of CI.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rnngrad import Sigmoid, Tanh
from rnngrad.engines import numba_available
from rnngrad.engines.numba_engine import RECURRENCE_KERNELS

# The kernels' codes of the two activations (as Activation.kernel names them).
_TANH, _SIGMOID = (RECURRENCE_KERNELS[cls.kernel] for cls in (Tanh, Sigmoid))


def _max_ulp(kind: int, bits: np.ndarray) -> tuple[float, float]:
    x = bits.view(np.float32)
    ours = x.copy()
    from rnngrad.engines import _numba_kernels
    _numba_kernels._activate(kind, ours, np.float32(1))
    x64 = x.astype(np.float64)
    if kind == _TANH:
        ref = np.tanh(x64)
    else:
        e = np.exp(-np.abs(x64))
        ref = np.where(x64 >= 0, 1 / (1 + e), e / (1 + e))
    _, exponent = np.frexp(np.abs(ref))
    ulp = np.maximum(np.ldexp(1.0, exponent - 24), 2.0 ** -149)  # float32's ulp at the exact value
    err = np.abs(ours.astype(np.float64) - ref) / ulp
    i = int(np.argmax(err))
    return float(err[i]), float(x[i])


def check(kind: int, lo_bits: int, hi_bits: int, chunk: int) -> tuple[float, float, int]:
    """Max ulp error over the float32 bit patterns [lo_bits, hi_bits) (all of one sign)."""
    worst, at, count = 0.0, 0.0, 0
    for start in range(lo_bits, hi_bits, chunk):
        bits = np.arange(start, min(start + chunk, hi_bits), dtype=np.uint32)
        err, x = _max_ulp(kind, bits)
        count += bits.size
        if err > worst:
            worst, at = err, x
    return worst, at, count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunk", type=int, default=24, help="log2 of the inputs per chunk (default 24)")
    args = p.parse_args(argv)
    if not numba_available():
        raise SystemExit("needs rnngrad[fast] (numba and scipy)")
    chunk = 1 << args.chunk
    f32 = lambda v: int(np.float32(v).view(np.uint32))  # noqa: E731
    sign = 1 << 31
    top = f32(np.inf) + 1  # every finite float32 and +inf
    cases = [("tanh, every x >= 0", _TANH, [(0, top)]),
             ("sigmoid, every x", _SIGMOID, [(0, top), (sign, sign | top)])]
    for name, kind, ranges in cases:
        t0 = time.perf_counter()
        results = [check(kind, lo, hi, chunk) for lo, hi in ranges]
        worst, at, _ = max(results)
        count = sum(r[2] for r in results)
        print(f"{name}: {count:,} float32 inputs, max error {worst:.6f} ulp (at x = {at!r}), "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
