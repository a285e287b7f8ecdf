"""One recurrent layer, one direction: its forward pass (seed §2B) and its backward (§3B, §3C).

Row convention: a hidden state is a row h_t (B, H), so the seed's column-vector product
W_h^T v appears here as ``v @ W_h``. Shapes: T steps, B sequences, D inputs (the layer's
input width: D for the first layer, H or 2H above it), H hidden units.

Forward:

    z_t  = W_h h_{t-1} + W_x x_t + b_h                  (T, B, H)   seed §2B
    h_t  = f(z_t)                                       (T, B, H)   seed §2B

Backward, given dh_t = the part of dL/dh_t that arrives from outside the layer (from the
output head, or from the layer above), for every t:

    dh_t += dz_{t+1} W_h        the recursive term, so dh_t becomes the total dL/dh_t   §3B
    dz_t  = f'(z_t) * dh_t      element-wise (seed §4)
    dW_x  = sum_t dz_t^T x_t    one product over all T·B rows (a scatter-add for tokens) §3C.3
    dW_h  = sum_t dz_t^T h_{t-1}                                                          §3C.4
    db_h  = sum_t dz_t                                                                    §3C.5
    dx_t  = dz_t W_x,   dh_0 = dz_1 W_h

Everything that does not depend on the recurrence is one product over all T·B rows: the
input projection before the time loop, dW_x, dW_h and db_h after it. Inside the loops
there is only the recurrence, and the loops themselves are the engine's
(:mod:`rnngrad.engines`): :func:`recurrence_forward` and :func:`recurrence_backward` below
are the NumPy reference, a compiled engine runs the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import Activation
from .workspace import Workspace, buffer, empty

__all__ = ["LayerCache", "layer_forward", "layer_backward", "input_projection", "ones",
           "recurrence_forward", "recurrence_backward", "derivative_blocks", "input_weight_grad"]


@dataclass
class LayerCache:
    """What :func:`layer_forward` computed; :func:`layer_backward` takes it.

    Attributes
    ----------
    x : (T, B, D) floats or (T, B) token indices, the layer's input sequence
    h0 : (B, H) initial state
    h : (T, B, H) hidden states h_1..h_T
    z : (T, B, H) pre-activations, or None when f' is computed from h alone
    h_prev : (T, B, H) h_0..h_{T-1}: a view of one (T+1, B, H) array that holds h_0 before
        h_1, so dW_h = sum_t dz_t^T h_{t-1} is one product over all T·B rows with no copy.
    """

    x: np.ndarray
    h0: np.ndarray
    h: np.ndarray
    z: np.ndarray | None
    h_prev: np.ndarray


def ones(n: int, dtype) -> np.ndarray:
    """A vector of n ones: the left operand of the column sums below (``np.dot(ones, m)``).

    np.empty + fill: np.ones goes through np.empty, np.copyto and a Python frame, about three
    times the cost of this for the short vectors of a small model's call."""
    out = np.empty(n, dtype=dtype)
    out.fill(1)
    return out


def input_projection(x: np.ndarray, W_x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """W_x x_t for every t at once: (T, B, H), into ``out`` (C-contiguous) or a new array.

    x (T, B, D) floats: one (T·B, D) @ (D, H) product. x (T, B) token indices: the one-hot
    product W_x e_k is column k of W_x, so this is a row lookup in W_x^T.
    """
    if out is None:
        out = np.empty(x.shape[:2] + (W_x.shape[0],), dtype=W_x.dtype)
    if x.ndim == 2:
        np.take(np.ascontiguousarray(W_x.T), x, axis=0, out=out)
    else:
        T, B, D = x.shape
        np.dot(x.reshape(T * B, D), W_x.T, out=out.reshape(T * B, -1))
    return out


def recurrence_forward(f: Activation, z: np.ndarray, h0: np.ndarray, W_h: np.ndarray, b_h: np.ndarray,
                       h: np.ndarray, workspace: Workspace | None = None, key: str = "") -> None:
    """The forward time loop in NumPy: h_t = f(z_t + b_h + h_{t-1} W_h^T) for t = 1..T.

    z (T, B, H) holds W_x x_t on entry; h (T, B, H) receives the states and may be z itself
    (when f' needs only h, h_t overwrites z_t). h0 (B, H), W_h (H, H), b_h (H,).
    """
    z += b_h
    B, H = h0.shape
    # A contiguous W_h^T makes each step a plain row-major GEMM (h_{t-1} W_h^T = (W_h h_{t-1})^T).
    W_hT = empty(workspace, key + "W_hT", (H, H), W_h.dtype)
    np.copyto(W_hT, W_h.T)
    rec = np.empty((B, H), dtype=z.dtype)
    h_prev = h0
    for t in range(z.shape[0]):
        z_t = z[t]
        np.dot(h_prev, W_hT, out=rec)
        z_t += rec
        h_t = h[t]
        r = f.fn(z_t, out=h_t)
        if r is not h_t:  # a user's activation may return a new array instead
            h_t[...] = r
        h_prev = h_t


# f'(z) is evaluated this many elements at a time (1 MiB of float32).
_BLOCK_ELEMENTS = 1 << 18


def derivative_blocks(f: Activation, z: np.ndarray | None, h: np.ndarray,
                      out: np.ndarray | None = None) -> np.ndarray:
    """f'(z_t) for every t as a (T, B, H) array (``out`` or a new one), a block of steps at a time.

    One call per block, not per step, keeps the call overhead small; blocks keep the
    temporaries of f.derivative (1 - h*h makes two) to a block instead of two (T, B, H)
    arrays, which would raise the peak memory of a gradients call by 2·T·B·H elements.
    """
    T = h.shape[0]
    dz = np.empty_like(h) if out is None else out
    step = max(1, _BLOCK_ELEMENTS // max(1, h[0].size))
    for s in range(0, T, step):
        block = slice(s, s + step)
        dz[block] = f.derivative(None if z is None else z[block], h[block])
    return dz


def recurrence_backward(f: Activation, dh: np.ndarray, h: np.ndarray, z: np.ndarray | None,
                        W_h: np.ndarray, dz: np.ndarray) -> None:
    """The backward time loop in NumPy (seed §3B): for t = T..1, dh_t += dz_{t+1} W_h and
    dz_t = f'(z_t) * dh_t.

    dh (T, B, H) holds the gradient arriving from outside the layer on entry and the total
    dL/dh_t on return; dz (T, B, H) receives dL/dz_t. f'(z_t) is evaluated for every t first,
    a few vectorised calls (see :func:`derivative_blocks`), and scaled by dh_t in place.
    """
    T, B, H = h.shape
    derivative_blocks(f, z, h, out=dz)
    rec = np.empty((B, H), dtype=h.dtype)
    dz[T - 1] *= dh[T - 1]
    for t in range(T - 2, -1, -1):
        np.dot(dz[t + 1], W_h, out=rec)
        dh[t] += rec
        dz[t] *= dh[t]


def input_weight_grad(x: np.ndarray, dz: np.ndarray, D: int, engine, out: np.ndarray | None = None) -> np.ndarray:
    """dW_x = sum_t dz_t^T x_t, (H, D), for dz (N, H) and x (N, D) floats or (N,) token indices.

    For tokens x_t is one-hot, so column k of dW_x is the sum of dz over the rows whose token
    is k: a scatter-add, which the engine runs (:meth:`NumpyEngine.token_weight_grad`).
    """
    if x.ndim == 2:
        return np.dot(dz.T, x, out=out)
    dW_xT = engine.token_weight_grad(x, dz, D)
    if out is None:
        return np.ascontiguousarray(dW_xT.T)
    np.copyto(out, dW_xT.T)
    return out


def token_weight_grad(x: np.ndarray, dz: np.ndarray, D: int) -> np.ndarray:
    """dW_x^T (D, H) for token indices x (N,) in [0, D) and dz (N, H): row x_n gains dz_n.

    A sort, then one segmented sum (np.add.at would loop per row in Python)."""
    H = dz.shape[1]
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    dW_xT = np.zeros((D, H), dtype=dz.dtype)
    dW_xT[xs[starts]] = np.add.reduceat(dz[order], starts, axis=0)
    return dW_xT


def layer_forward(x: np.ndarray, h0: np.ndarray, W_x: np.ndarray, W_h: np.ndarray, b_h: np.ndarray,
                  f: Activation, engine, workspace: Workspace | None = None, key: str = "") -> LayerCache:
    """Seed §2B for one layer over a whole batch: h_t = f(W_h h_{t-1} + W_x x_t + b_h).

    Parameters
    ----------
    x : (T, B, D) floats, or (T, B) integer token indices in [0, D)
    h0 : (B, H)
    W_x (H, D), W_h (H, H), b_h (H,) : the layer's parameters
    f : the hidden activation (element-wise)
    engine : runs the time loop (:mod:`rnngrad.engines`)
    workspace, key : optional; the layer's arrays are the workspace's arrays ``key + name``

    Inputs are trusted (see :mod:`rnngrad.validation`); arrays share one float dtype.
    """
    T, B = x.shape[:2]
    H = W_h.shape[0]
    dtype = W_h.dtype
    # h_0..h_T in one array, h_0 first: h_prev = states[:-1] needs no copy (see LayerCache).
    states = empty(workspace, key + "h", (T + 1, B, H), dtype)
    states[0] = h0
    h = states[1:]
    keep_z = f.derivative_needs_input
    # When f' comes from h alone, h_t overwrites z_t in place: one (T, B, H) array.
    z = input_projection(x, W_x, out=buffer(workspace, key + "z", (T, B, H), dtype) if keep_z else h)
    engine.recurrence_forward(f, z, h0, W_h, b_h, h, workspace, key)
    # Positional: a dataclass called with keywords costs twice as much (CPython packs them into a dict).
    return LayerCache(x, h0, h, z if keep_z else None, states[:-1])  # x, h0, h, z, h_prev


def layer_backward(cache: LayerCache, dh: np.ndarray, W_x: np.ndarray, W_h: np.ndarray, f: Activation,
                   engine, need_dx: bool = True, need_dh0: bool = True,
                   workspace: Workspace | None = None, key: str = "", names=("W_x", "W_h", "b_h")):
    """Seed §3B and §3C for one layer.

    Parameters
    ----------
    cache : the layer's :class:`LayerCache`
    dh : (T, B, H) C-contiguous, the gradient arriving from outside the layer; on return the
        total dL/dh_t (direct + recursive), written in place
    W_x (H, D), W_h (H, H) : the layer's weights
    need_dx, need_dh0 : whether to compute dL/dx_t (float inputs only) and dL/dh_0

    Returns
    -------
    (grads, dx, dh0): grads a dict of dW_x (H, D), dW_h (H, H), db_h (H,) under ``names`` (the
    layer's parameter names, default "W_x", "W_h", "b_h"); dx (T, B, D) or
    None; dh0 (B, H) or None.
    """
    x, h = cache.x, cache.h
    T, B, H = h.shape
    N = T * B
    dtype = h.dtype
    ws = workspace
    dz = empty(ws, key + "dz", (T, B, H), dtype)
    engine.recurrence_backward(f, dh, h, cache.z, W_h, dz)
    dz_rows = dz.reshape(N, H)
    # Column sums as a product with a ones vector: NumPy's sum over the long axis of an
    # (N, small) array runs row by row and is ten times slower than this BLAS call.
    column_ones = ones(N, dtype)
    x_rows = x.reshape(N, -1) if x.ndim == 3 else x.reshape(N)
    n_x, n_h, n_b = names
    grads = {
        n_x: input_weight_grad(x_rows, dz_rows, W_x.shape[1], engine,
                               out=buffer(ws, key + "dW_x", W_x.shape, dtype)),
        n_h: np.dot(dz_rows.T, cache.h_prev.reshape(N, H), out=buffer(ws, key + "dW_h", (H, H), dtype)),
        n_b: np.dot(column_ones, dz_rows, out=buffer(ws, key + "db_h", (H,), dtype)),
    }
    dx = None
    if need_dx and x.ndim == 3:
        dx = np.dot(dz_rows, W_x, out=buffer(ws, key + "dx", (N, W_x.shape[1]), dtype)).reshape(T, B, -1)
    dh0 = np.dot(dz[0], W_h, out=buffer(ws, key + "dh0", (B, H), dtype)) if need_dh0 else None
    return grads, dx, dh0
