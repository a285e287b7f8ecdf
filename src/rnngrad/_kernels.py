"""The optional compiled fast path: the two time loops of BPTT as numba kernels.

With ``pip install rnngrad[fast]`` (numba), :func:`rnngrad.model.forward` and
:func:`rnngrad.bptt.backward` hand their time loops to the kernels here when the hidden
activation is one of the built-ins and one step's recurrent product is small. Everything
else (input projection, output layer, loss, weight gradients) stays in NumPy, where it is
already one BLAS product over all T·B rows. Without numba, or for a user's own
:class:`~rnngrad.activations.Activation`, the NumPy loops run; the results agree
(tests/test_kernels.py).

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

Four more kernels serve the rest of a call where NumPy needs several passes or a Python-level
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
import os

import numpy as np

from .activations import Activation, Identity, ReLU, Sigmoid, Softmax, Tanh
from .workspace import Workspace, empty

# The optional extra rnngrad[fast]; numba itself is imported on first use (_jit_module).
_AVAILABLE = all(importlib.util.find_spec(name) is not None for name in ("numba", "scipy"))

__all__ = ["available", "enabled", "set_enabled", "numba_version", "recurrence_kind",
           "forward_recurrence", "backward_recurrence", "softmax_applies", "softmax_with_bias",
           "sigmoid_applies", "sigmoid_with_bias", "softmax_cross_entropy_index", "token_weight_grad",
           "MAX_STEP_MACS"]

#: Kernels serve a step of at most this many multiply-adds (B·H·H); larger steps are BLAS-bound.
MAX_STEP_MACS = 1 << 18
# Codes of the built-in hidden activations (exact types: a subclass may change the maths).
_KINDS = {Tanh: 0, ReLU: 1, Sigmoid: 2, Identity: 3}  # the codes of _kernels_jit

_enabled = os.environ.get("RNNGRAD_DISABLE_KERNELS", "") in ("", "0")


def available() -> bool:
    """True if numba and scipy are installed, so the kernels can run."""
    return _AVAILABLE


def enabled() -> bool:
    """True if the kernels are available and switched on (the default when numba is installed)."""
    return _AVAILABLE and _enabled


def set_enabled(flag: bool) -> bool:
    """Switch the kernels on or off (e.g. to time or test the NumPy path); returns the previous
    setting. The environment variable RNNGRAD_DISABLE_KERNELS=1 switches them off at import."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


def numba_version() -> str | None:
    if not _AVAILABLE:
        return None
    from importlib.metadata import version
    return version("numba")


_jit = None  # rnngrad._kernels_jit once imported


def _jit_module():
    # The first call imports numba and loads the compiled kernels; later calls skip the
    # import machinery (about a microsecond per call, twice per gradients call).
    global _jit
    if _jit is None:
        from . import _kernels_jit
        _jit = _kernels_jit
    return _jit


def recurrence_kind(f: Activation, h: np.ndarray) -> int | None:
    """The kernel code for hidden activation ``f`` on arrays like ``h`` (T, B, H), or None for
    the NumPy loop (no numba, kernels off, a user's activation, or a BLAS-sized step)."""
    if not enabled():
        return None
    kind = _KINDS.get(type(f))
    if kind is None or h.dtype not in (np.float32, np.float64):
        return None
    B, H = h.shape[1], h.shape[2]
    return kind if B * H * H <= MAX_STEP_MACS else None


#: The softmax kernel serves rows of at most this many outputs. Its row maximum is a
#: sequential loop, so on long rows NumPy's vectorised passes win (bias + softmax, measured on
#: the bench machine: the kernel 2.6× faster at O = 16, 2.1× at 65, 1.3× at 64 with
#: N = 3200, about equal at 128, 1.2× slower at 256).
MAX_SOFTMAX_OUTPUTS = 128


def softmax_applies(g: Activation, a: np.ndarray) -> bool:
    """True if the output layer's softmax runs as a kernel for logits like ``a`` (N, O): the
    built-in Softmax, float32 (the compiled exp of _kernels_jit; float64 would call libm's
    exp per element and lose to NumPy), O <= MAX_SOFTMAX_OUTPUTS, and kernels on."""
    return (enabled() and type(g) is Softmax and a.dtype == np.float32
            and a.shape[-1] <= MAX_SOFTMAX_OUTPUTS)


def softmax_with_bias(a: np.ndarray, b_y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a <- a + b_y in place, and y_hat = softmax(a) row by row into ``out`` (N, O) or a new
    array; a (N, O) C-contiguous.

    One pass over the logits instead of NumPy's five (bias, row maximum, exp, row sum, divide),
    each of which costs a call on small outputs and a sweep over memory on large ones.
    """
    y_hat = np.empty_like(a) if out is None else out
    _jit_module()._softmax_rows(a, np.ascontiguousarray(b_y), y_hat)
    return y_hat


def sigmoid_applies(g: Activation, a: np.ndarray) -> bool:
    """True if the output layer's sigmoid runs as a kernel for logits like ``a`` (N, O): the
    built-in Sigmoid, float32 (the compiled exp; float64 would call libm per element), kernels on."""
    return enabled() and type(g) is Sigmoid and a.dtype == np.float32


def sigmoid_with_bias(a: np.ndarray, b_y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a <- a + b_y in place, and y_hat = sigmoid(a) into ``out`` (N, O) or a new array; a (N, O)
    C-contiguous. One pass instead of NumPy's seven (bias, sign, |a|, exp, 1 + e, divide, select)."""
    y_hat = np.empty_like(a) if out is None else out
    _jit_module()._sigmoid_rows(a, np.ascontiguousarray(b_y), y_hat)
    return y_hat


def token_weight_grad(x: np.ndarray, dz: np.ndarray, D: int) -> np.ndarray:
    """dW_x^T (D, H) for token indices x (N,) in [0, D) and dz (N, H): row x_n gains dz_n, in
    the order of n (the scatter-add that np.add.at does one Python-level item at a time)."""
    out = np.zeros((D, dz.shape[1]), dtype=dz.dtype)
    if not _jit_module()._scatter_rows(x, np.ascontiguousarray(dz), out):
        raise ValueError(f"x holds token indices, which must lie in [0, {D}); "
                         f"got values from {x.min()} to {x.max()}")
    return out


def softmax_cross_entropy_index(y_hat: np.ndarray, y: np.ndarray, want_dy_hat: bool,
                                workspace: Workspace | None = None):
    """:func:`rnngrad.losses._softmax_cross_entropy_index` as one kernel call, or None where
    that function would return None (a y_hat[n, y_n] below the smallest normal number)."""
    loss = np.empty(y_hat.shape[0], dtype=y_hat.dtype)
    da = empty(workspace, "da", y_hat.shape, y_hat.dtype)
    dy_hat = empty(workspace, "dy_hat", y_hat.shape if want_dy_hat else (0, 0), y_hat.dtype)
    ok = _jit_module()._softmax_cross_entropy_index(
        np.ascontiguousarray(y_hat), y, y_hat.dtype.type(np.finfo(y_hat.dtype).tiny), loss, da, dy_hat,
        want_dy_hat)
    if not ok:
        return None
    return loss, da, (dy_hat if want_dy_hat else None)


def forward_recurrence(z: np.ndarray, h0: np.ndarray, W_h: np.ndarray, b_h: np.ndarray,
                       kind: int) -> np.ndarray:
    """h_t = f((z_t + b_h) + h_{t-1} W_h^T) for t = 1..T, written over z (T, B, H); returns z.

    z holds W_x x_t on entry (the bias is added inside the step loop, which saves a pass over
    z); h0 (B, H); W_h (H, H); b_h (H,).
    """
    # W_h^T as a C-contiguous copy (H·H elements, once per call): passed as the Fortran-ordered
    # view W_h.T, BLAS's transposed path made the (8, 64) @ (64, 64) steps of the
    # (1000, 8, 16, 64, 16) bench shape 0.88 instead of 0.61 µs each (numba 0.68, scipy 1.17).
    _jit_module()._forward(z, np.ascontiguousarray(h0), np.ascontiguousarray(W_h.T),
                           np.ascontiguousarray(b_h), kind, z.dtype.type(1))
    return z


def backward_recurrence(dh: np.ndarray, h: np.ndarray, W_h: np.ndarray, kind: int,
                        out: np.ndarray | None = None) -> np.ndarray:
    """dz_t = f'(h_t) * dh_t with dh_t += dz_{t+1} W_h, for t = T..1; returns dz (T, B, H),
    written into ``out`` if given.

    dh (T, B, H) holds the direct terms da_t W_y on entry and the totals dL/dh_t on return;
    h (T, B, H) the hidden states; W_h (H, H).
    """
    dz = np.empty_like(h) if out is None else out
    _jit_module()._backward(dh, h, np.ascontiguousarray(W_h), kind, dz, h.dtype.type(1))
    return dz
