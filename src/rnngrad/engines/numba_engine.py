"""The numba engine (``pip install rnngrad[fast]``): the two BPTT time loops and three
element-wise passes of the output compiled.

Everything else (input projections, the output layer's products, the loss, the weight
gradients) stays in NumPy, where it is already one BLAS product over all T·B rows. Where a
kernel does not apply — an activation without a ``kernel`` name (a user's own), a dtype
other than float32/float64, a step so large that BLAS dominates — each method runs the NumPy
reference of :class:`NumpyEngine`, so the engine is complete on its own; the results agree
(tests/test_engines.py).

Why a kernel: a NumPy step is three or four calls (product, add, activation) of about a
microsecond each, while a step of a small model is a few thousand multiply-adds. For
(T, B, H) = (1000, 8, 64) the loop overhead is most of the time; a compiled loop removes it.
When B·H·H is large the step is a real matrix product, BLAS wins, and the NumPy loop runs
(:data:`MAX_STEP_MACS`).

The kernels compute exactly what the NumPy loops compute, with the same formulas:

    forward   z_t <- (z_t + b_h) + h_{t-1} W_h^T,  h_t = f(z_t)  (h_t overwrites z_t)  seed §2B
    backward  dh_t <- dh_t + dz_{t+1} W_h,  dz_t = f'(h_t) * dh_t                 seed §3B

The per-step product is ``np.dot``, which numba compiles to a call of scipy's BLAS (hence
scipy in the extra): for these sizes OpenBLAS is several times faster than a loop written in
numba, and a step of at most :data:`MAX_STEP_MACS` = 2^18 multiply-adds is below OpenBLAS's
threading threshold (65536 · 4), so scipy's OpenBLAS runs it on the calling thread and its
thread pool never wakes to contend with NumPy's. ``error_model="numpy"`` drops numba's
division-by-zero checks, which would otherwise stop the element-wise loops vectorising.
Only the BLAS build differs from the NumPy loops: float64 results agree to about 1e-15.

The other kernels serve the rest of a call where NumPy needs several passes or a Python-level
loop: the float32 output softmax and sigmoid with their bias (one pass each), the softmax +
cross-entropy rows on class indices, and dW_x for token inputs as a scatter-add.

tanh in float32 is evaluated in float64 by a vectorisable expm1 (Taylor series on 2|z|/32,
then five doublings ``e <- e (e + 2)``) and rounded once: within 0.5 ulp of tanh over all
float32 inputs, as accurate as a correctly rounded tanhf, about as fast as NumPy's and
unlike libm's tanhf vectorised; the float32 sigmoid likewise from a vectorisable exp, within
0.5012 ulp (both checked over every float32 input by benchmarks/ulp_exhaustive.py). In
float64 the kernels use libm's tanh and exp.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..workspace import empty
from .numpy_engine import NumpyEngine

__all__ = ["NumbaEngine", "available", "numba_version", "MAX_STEP_MACS", "MAX_SOFTMAX_OUTPUTS",
           "RECURRENCE_KERNELS"]


def available() -> bool:
    """True if numba and scipy are installed, so this engine can run."""
    return all(importlib.util.find_spec(name) is not None for name in ("numba", "scipy"))


def numba_version() -> str | None:
    if not available():
        return None
    from importlib.metadata import version
    return version("numba")


#: Kernels serve a step of at most this many multiply-adds (B·H·H); larger steps are BLAS-bound.
MAX_STEP_MACS = 1 << 18
#: The hidden activations the compiled time loops know, by ``Activation.kernel``, with their codes
#: in the kernels.
RECURRENCE_KERNELS = {"tanh": 0, "relu": 1, "sigmoid": 2, "identity": 3}
#: The softmax kernel serves rows of at most this many outputs. Its row maximum is a
#: sequential loop, so on long rows NumPy's vectorised passes win (bias + softmax, measured on
#: the bench machine: the kernel 2.6× faster at O = 16, 2.1× at 65, 1.3× at 64 with
#: N = 3200, about equal at 128, 1.2× slower at 256).
MAX_SOFTMAX_OUTPUTS = 128

# The dtypes the kernels are compiled for, as dtype objects: ``dtype in _KERNEL_DTYPES`` is an
# identity hit (comparing a dtype with the scalar types np.float32, np.float64 converts them on
# every call), and the per-dtype constants the kernels take are looked up, not rebuilt per call.
_FLOAT32 = np.dtype(np.float32)
_KERNEL_DTYPES = (_FLOAT32, np.dtype(np.float64))
_ONE = {dt: dt.type(1) for dt in _KERNEL_DTYPES}
_TINY = {dt: dt.type(np.finfo(dt).tiny) for dt in _KERNEL_DTYPES}


class NumbaEngine(NumpyEngine):
    """Compiled time loops and output passes; the NumPy reference wherever they do not apply."""

    name = "numba"

    def __init__(self):
        # numba and the compiled kernels are imported when the engine is first made (by the
        # first call that uses it), not by ``import rnngrad``, which should not pay for them.
        from . import _numba_kernels
        self.kernels = _numba_kernels

    def recurrence_code(self, f, B: int, H: int, dtype) -> int | None:
        """The kernel code for hidden activation ``f`` on (B, H) steps of ``dtype``, or None for
        the NumPy loop (an activation without a kernel, another dtype, or a BLAS-sized step)."""
        code = RECURRENCE_KERNELS.get(f.kernel)
        if code is None or dtype not in _KERNEL_DTYPES or B * H * H > MAX_STEP_MACS:
            return None
        return code

    def recurrence_forward(self, f, z, h0, W_h, b_h, h, workspace=None, key=""):
        B, H = h0.shape
        code = self.recurrence_code(f, B, H, z.dtype)
        if code is None or h is not z:  # the kernel writes h_t over z_t (f' from h alone)
            return NumpyEngine.recurrence_forward(f, z, h0, W_h, b_h, h, workspace, key)
        # W_h^T as a C-contiguous copy (H·H elements, once per call): passed as the Fortran-ordered
        # view W_h.T, BLAS's transposed path made the (8, 64) @ (64, 64) steps of the
        # (1000, 8, 16, 64, 16) bench shape 0.88 instead of 0.61 µs each (numba 0.68, scipy 1.17).
        self.kernels._forward(z, np.ascontiguousarray(h0), np.ascontiguousarray(W_h.T),
                              np.ascontiguousarray(b_h), code, _ONE[z.dtype])

    def recurrence_backward(self, f, dh, h, z, W_h, dz):
        B, H = h.shape[1], h.shape[2]
        code = self.recurrence_code(f, B, H, h.dtype) if z is None else None
        if code is None:
            return NumpyEngine.recurrence_backward(f, dh, h, z, W_h, dz)
        self.kernels._backward(dh, h, np.ascontiguousarray(W_h), code, dz, _ONE[h.dtype])

    def output_activation(self, g, a, b_y, y_hat):
        # Float32 only: the kernels' own exp; in float64 they would call libm's exp per element
        # and lose to NumPy.
        if a.dtype == _FLOAT32 and (g.kernel == "sigmoid" or (
                g.kernel == "softmax" and a.shape[-1] <= MAX_SOFTMAX_OUTPUTS)):
            y_hat = np.empty_like(a) if y_hat is None else y_hat
            # One pass over the logits instead of NumPy's five (bias, row maximum, exp, row sum,
            # divide) for softmax, seven for sigmoid, each a call on small outputs and a sweep
            # over memory on large ones.
            kernel = self.kernels._softmax_rows if g.kernel == "softmax" else self.kernels._sigmoid_rows
            kernel(a, np.ascontiguousarray(b_y), y_hat)
            return y_hat
        return NumpyEngine.output_activation(g, a, b_y, y_hat)

    def softmax_cross_entropy_index(self, y_hat, y, want_dy_hat, workspace=None):
        """As :func:`rnngrad.losses.softmax_cross_entropy_index`, in one kernel call."""
        dtype = y_hat.dtype
        tiny = _TINY.get(dtype)
        if tiny is None:
            tiny = dtype.type(np.finfo(dtype).tiny)
        loss = np.empty(y_hat.shape[0], dtype=dtype)
        da = empty(workspace, "da", y_hat.shape, dtype)
        dy_hat = empty(workspace, "dy_hat", y_hat.shape if want_dy_hat else (0, 0), dtype)
        ok = self.kernels._softmax_cross_entropy_index(np.ascontiguousarray(y_hat), y, tiny, loss, da, dy_hat,
                                                       want_dy_hat)
        if not ok:
            return None
        return loss, da, (dy_hat if want_dy_hat else None)

    def token_weight_grad(self, x, dz, D):
        """dW_x^T (D, H) as one scatter-add in the order of the rows (bounds-checked)."""
        out = np.zeros((D, dz.shape[1]), dtype=dz.dtype)
        if not self.kernels._scatter_rows(x, np.ascontiguousarray(dz), out):
            raise ValueError(f"x holds token indices, which must lie in [0, {D}); "
                             f"got values from {x.min()} to {x.max()}")
        return out
