"""The numba code behind :mod:`rnngrad.engines.numba_engine`, imported on first use (numba's import and the
kernels' loading from its cache take a while; ``import rnngrad`` should not pay for them).
See :mod:`rnngrad.engines.numba_engine` for what is computed and why it is written this way."""

import math

import numba
import numpy as np
import scipy.linalg  # noqa: F401  (numba's np.dot calls scipy's BLAS)
from numba.core import types as _types
from numba.extending import overload as _overload

_TANH, _RELU, _SIGMOID, _IDENTITY = 0, 1, 2, 3


_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


# expm1 Taylor coefficients 1/k!, k = 2..11: on |u| <= 20/32 the series is exact to 1e-11.
_C = tuple(1.0 / math.factorial(k) for k in range(2, 12))
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11 = _C


@numba.njit(inline="always")
def _tanh32(x):
    # tanh(a) = e / (e + 2) with e = expm1(2a), a = |x|; expm1(2u) = expm1(u)(expm1(u) + 2)
    # five times takes the series on u = 2a/32 back to 2a without cancellation. From
    # |x| = 9.0109, tanh rounds to 1 in float32; clamping at 10 keeps u <= 20/32 and the
    # rounding right (a clamp at 9 gave 0.99999994 instead of 1 for every |x| > 9.0109).
    a = abs(np.float64(x))
    if a > 10.0:  # False for NaN, which must come out NaN (as np.tanh) so divergence shows
        a = 10.0
    u = a * (2.0 / 32.0)
    p = _C11
    p = p * u + _C10
    p = p * u + _C9
    p = p * u + _C8
    p = p * u + _C7
    p = p * u + _C6
    p = p * u + _C5
    p = p * u + _C4
    p = p * u + _C3
    p = p * u + _C2
    e = u + u * u * p
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    e = e * (e + 2.0)
    t = e / (e + 2.0)
    return np.float32(t if x >= 0 else -t)


def _by_dtype(float32_impl, other_impl):
    """A function for use inside kernels that compiles to ``float32_impl`` for a float32
    argument and to ``other_impl`` otherwise (chosen when numba types the call)."""
    def dispatch(x):  # pragma: no cover - replaced by the overload inside kernels
        raise NotImplementedError

    @_overload(dispatch, inline="always")
    def _dispatch_overload(x):
        if x == _types.float32:
            return lambda x: float32_impl(x)
        return lambda x: other_impl(x)

    return dispatch


_tanh = _by_dtype(_tanh32, math.tanh)


# exp(x) for float32 x <= 0 (softmax after the row maximum): e^x = (e^(x/1024))^1024, a
# degree-7 series on |x/1024| <= 0.102 (relative error 3e-13) and ten squarings in float64
# (error below 1e-12 in all), rounded once to float32: as accurate as a correctly rounded
# expf except within 1e-4 ulp of a rounding boundary, and vectorisable, unlike libm's expf.
# Below -104, e^x rounds to 0 in float32; NaN passes through.
_E2, _E3, _E4, _E5, _E6, _E7 = (1.0 / math.factorial(k) for k in range(2, 8))


@numba.njit(inline="always")
def _exp_nonpositive32(x):
    u = np.float64(x)
    u = u if not (u < -104.0) else -104.0
    u = u * (1.0 / 1024.0)
    e = 1.0 + u * (1.0 + u * (_E2 + u * (_E3 + u * (_E4 + u * (_E5 + u * (_E6 + u * _E7))))))
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    return e


_exp_nonpositive = _by_dtype(_exp_nonpositive32, math.exp)


@numba.njit(inline="always")
def _sigmoid64(x):
    # As activations.Sigmoid: exp(-|x|) never overflows.
    e = math.exp(-abs(x))
    r = 1.0 / (1.0 + e)
    return r if x >= 0 else e * r


@numba.njit(inline="always")
def _sigmoid32(x):
    # The same in float64 with the vectorisable exp above (libm's expf is a call per element),
    # rounded once to float32. Below -104, e^x is 0 in float32 and so is the sigmoid.
    u = abs(np.float64(x))
    e = _exp_nonpositive32(-u)
    r = 1.0 / (1.0 + e)
    return np.float32(r if x >= 0 else e * r)


_sigmoid = _by_dtype(_sigmoid32, _sigmoid64)


# `one` is 1 in the arrays' dtype: a bare literal would promote float32 arithmetic to float64.


@_jit
def _activate(kind, v, one):
    # v[j] = f(v[j]) in place, one loop per kind so that each vectorises. (With separate
    # input and output arrays that are the same memory, LLVM's overlap check would send
    # every call to the scalar loop.)
    zero = one - one
    if kind == _TANH:
        for j in range(v.shape[0]):
            v[j] = _tanh(v[j])
    elif kind == _RELU:
        for j in range(v.shape[0]):
            # v <= 0 is False for NaN, which passes through as np.maximum lets it.
            v[j] = zero if v[j] <= zero else v[j]
    elif kind == _SIGMOID:
        for j in range(v.shape[0]):
            v[j] = _sigmoid(v[j])


@_jit
def _scale_by_derivative(kind, h, dh, dz, one):
    # dz[j] = f'(h[j]) * dh[j], f' from the output as in activations.py.
    n = h.shape[0]
    zero = one - one
    if kind == _TANH:
        for j in range(n):
            dz[j] = (one - h[j] * h[j]) * dh[j]
    elif kind == _RELU:
        for j in range(n):
            dz[j] = (one if h[j] > zero else zero) * dh[j]
    elif kind == _SIGMOID:
        for j in range(n):
            dz[j] = (h[j] * (one - h[j])) * dh[j]
    else:
        for j in range(n):
            dz[j] = dh[j]


@_jit
def _add_activate(kind, v, b, rec, one):
    # v[j] = f((v[j] + b[j]) + rec[j]): one step's bias, recurrent term and activation in a
    # single pass, summed in the order of the NumPy loop ((W_x x_t + b_h) + h_{t-1} W_h^T).
    # v does not overlap b or rec, so each loop vectorises.
    zero = one - one
    if kind == _TANH:
        for j in range(v.shape[0]):
            v[j] = _tanh((v[j] + b[j]) + rec[j])
    elif kind == _RELU:
        for j in range(v.shape[0]):
            s = (v[j] + b[j]) + rec[j]
            v[j] = zero if s <= zero else s  # NaN passes through, as with np.maximum
    elif kind == _SIGMOID:
        for j in range(v.shape[0]):
            v[j] = _sigmoid((v[j] + b[j]) + rec[j])
    else:
        for j in range(v.shape[0]):
            v[j] = (v[j] + b[j]) + rec[j]


@_jit
def _forward(z, h0, W_hT, b_h, kind, one):
    T, B, H = z.shape
    rec = np.empty((B, H), dtype=z.dtype)
    flat_rec = rec.reshape(B * H)
    b = np.empty(B * H, dtype=z.dtype)  # b_h once per row of a step, for one flat loop
    for j in range(B * H):
        b[j] = b_h[j % H]
    for t in range(T):
        np.dot(h0 if t == 0 else z[t - 1], W_hT, rec)
        # z[t] as a flat view: one loop per step, not one call per row
        _add_activate(kind, z[t].reshape(B * H), b, flat_rec, one)


@_jit
def _backward(dh, h, W_h, kind, dz, one):
    T, B, H = dh.shape
    rec = np.empty((B, H), dtype=dh.dtype)
    flat_rec = rec.reshape(B * H)
    for t in range(T - 1, -1, -1):
        dh_t = dh[t].reshape(B * H)
        if t < T - 1:
            np.dot(dz[t + 1], W_h, rec)
            for j in range(B * H):
                dh_t[j] += flat_rec[j]
        _scale_by_derivative(kind, h[t].reshape(B * H), dh_t, dz[t].reshape(B * H), one)


@_jit
def _softmax_rows(a, b_y, y_hat):
    # a <- a + b_y (the logits, kept in the cache); y_hat = softmax(a) row by row, with
    # the row maximum subtracted so that every exponent is <= 0; row sums in float64.
    N, O = a.shape
    e = np.empty(O, dtype=np.float64)
    for n in range(N):
        row = a[n]
        for k in range(O):
            row[k] += b_y[k]
        # The row maximum as a select, not max(): numba's max() branched and mispredicted on
        # random logits (0.29 -> 0.26 ms for (8000, 16)). NaN is skipped here, but comes out
        # NaN anyway, through its exp and the row sum, as in NumPy.
        m = row[0]
        for k in range(1, O):
            v = row[k]
            m = v if v > m else m
        for k in range(O):
            e[k] = _exp_nonpositive(row[k] - m)
        # Four running sums: a single one would be a chain of dependent additions.
        s0 = s1 = s2 = s3 = 0.0
        k = 0
        while k + 4 <= O:
            s0 += e[k]
            s1 += e[k + 1]
            s2 += e[k + 2]
            s3 += e[k + 3]
            k += 4
        while k < O:
            s0 += e[k]
            k += 1
        s = (s0 + s1) + (s2 + s3)
        inv = 1.0 / s
        out = y_hat[n]
        for k in range(O):
            out[k] = e[k] * inv


@_jit
def _softmax_cross_entropy_index(y_hat, y, tiny, loss, da, dy_hat, want_dy_hat):
    # As losses.softmax_cross_entropy_index; False (nothing usable written) if some
    # y_hat[n, y_n] is below the smallest normal number or NaN.
    N, O = y_hat.shape
    for n in range(N):
        if not y_hat[n, y[n]] >= tiny:
            return False
    for n in range(N):
        p = y_hat[n, y[n]]
        loss[n] = -math.log(p)
        for k in range(O):
            da[n, k] = y_hat[n, k]
        da[n, y[n]] -= 1
        if want_dy_hat:
            for k in range(O):
                dy_hat[n, k] = 0
            dy_hat[n, y[n]] = -1 / p
    return True


@_jit
def _sigmoid_rows(a, b_y, y_hat):
    # a <- a + b_y (the logits, kept in the cache); y_hat = sigmoid(a), one pass.
    N, O = a.shape
    for n in range(N):
        row = a[n]
        out = y_hat[n]
        for k in range(O):
            v = row[k] + b_y[k]
            row[k] = v
            out[k] = _sigmoid(v)


@_jit
def _scatter_rows(x, dz, out):
    # out[x[n]] += dz[n] for every row n, in the order of n: dW_x^T for token inputs. False
    # (and out partly written) at an index outside [0, D): numba does not check bounds.
    N, H = dz.shape
    D = out.shape[0]
    for n in range(N):
        if x[n] < 0 or x[n] >= D:
            return False
        target = out[x[n]]
        row = dz[n]
        for j in range(H):
            target[j] += row[j]
    return True
