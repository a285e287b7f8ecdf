"""Backpropagation through time: seed §3, as vector-Jacobian products.

Row convention: a hidden state is a row h_t (B, H), so the seed's column-vector
product W_h^T v appears here as ``v @ W_h``. With dz_t = dL/dz_t and
da_t = dL/da_t:

    da_t    = J_g(a_t)^T dL_t/dy_hat_t      (fused to y_hat - y for canonical pairs)   §3A
    dW_y    = sum_t da_t^T h_t              one (O, T·B) @ (T·B, H) product             §3A.1
    db_y    = sum_t da_t                                                                §3A.2
    dh_t    = da_t W_y  +  dz_{t+1} W_h     direct + recursive                          §3B
    dz_t    = f'(z_t) * dh_t                element-wise (seed §4)
    dW_x    = sum_t dz_t^T x_t              one product (a scatter-add for token inputs) §3C.3
    dW_h    = sum_t dz_t^T h_{t-1}          one product                                 §3C.4
    db_h    = sum_t dz_t                                                                §3C.5
    dx_t    = dz_t W_x,   dh_0 = dz_1 W_h

The seed's §3A writes dy_hat_t/dW_y = h_t^T, dropping g'(a_t); the general chain rule
keeps it (J_g above), and for softmax J_g is the full (O, O) Jacobian, applied as a
VJP without being formed. Everything that does not depend on the recurrence is done
for all T·B rows at once; the time loop holds only ``dh_t += dz_{t+1} W_h`` and
``dz_t = f'(z_t) * dh_t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from . import _kernels
from .activations import Activation
from .losses import Loss, fused_path
from .validation import check_need
from .workspace import Workspace, buffer, empty

if TYPE_CHECKING:  # model.py imports this module
    from .model import Forward

__all__ = ["Gradients", "backward", "output_backward", "output_loss", "loss_weights", "OPTIONAL_GRADS"]

OPTIONAL_GRADS = ("x", "h0", "y_hat")


@dataclass
class Gradients:
    """Result of :meth:`rnngrad.RNN.gradients`.

    Attributes
    ----------
    loss : float
        L (seed §2C), reduced as asked.
    grads : dict
        "W_x" (H, D), "W_h" (H, H), "b_h" (H,), "W_y" (O, H), "b_y" (O,): dL/dparameter;
        "h" (T, B, H): total dL/dh_t (direct + recursive, seed §3B);
        "y_hat" (T, B, O): dL/dy_hat_t; "x" (T, B, D): dL/dx_t (float inputs only);
        "h0" (B, H): dL/dh_0.
    h_last : (B, H)
        The final hidden state h_T, the h0 of the next chunk in truncated BPTT.
    forward : Forward
        The forward cache (h, a, y_hat, ...).
    """

    loss: float
    grads: dict
    h_last: np.ndarray
    forward: "Forward"


def loss_weights(mask: np.ndarray | None, reduction: str, T: int, B: int, dtype) -> np.ndarray | None:
    """Per-row weights m_tb of L = sum m_tb L_t, flattened to (T·B,); None means all ones."""
    if mask is None and reduction == "sum":
        return None
    w = np.ones(T * B, dtype=dtype) if mask is None else mask.reshape(-1).astype(dtype)
    if reduction == "mean":
        count = int(np.count_nonzero(w))
        if count == 0:
            raise ValueError("reduction='mean' needs at least one unmasked (t, b); mask is all zeros")
        w /= count
    return w


def _weighted_sum(rows: np.ndarray, w: np.ndarray | None) -> float:
    if w is None:
        return float(rows.sum())
    # A masked row may hold inf (log 0 of a padded position); 0 · inf must not become NaN.
    return float(np.dot(w, np.where(w != 0, rows, 0)))


def _weight_rows(m: np.ndarray, w: np.ndarray) -> np.ndarray:
    """m (N, O) with row n scaled by w_n, and exactly 0 in the rows where w_n = 0 (a masked row
    may hold inf, such as -1/y_hat of a padded position, and 0 · inf must not become NaN).
    The masked rows are zeroed by index: np.where over all N·O entries is ten times slower
    than a multiplication here."""
    with np.errstate(invalid="ignore"):  # 0 · inf in a masked row: set to 0 just below
        out = m * w[:, None]
    dead = np.flatnonzero(w == 0)
    if dead.size:
        out[dead] = 0
    return out


def output_loss(cache: "Forward", y: np.ndarray, w: np.ndarray | None, g: Activation, loss: Loss,
                workspace: Workspace | None = None) -> float:
    """L alone, from the forward cache; targets as rows (see :func:`rnngrad.validation.check_targets`)."""
    N = cache.a.shape[0] * cache.a.shape[1]
    a = cache.a.reshape(N, -1)
    y_hat = cache.y_hat.reshape(N, -1)
    fused = fused_path(g, loss)
    rows = fused(a, y_hat, y, False, workspace)[0] if fused else loss.value(y_hat, y)
    return _weighted_sum(rows, w)


def output_backward(a: np.ndarray, y_hat: np.ndarray, y: np.ndarray, w: np.ndarray | None,
                    g: Activation, loss: Loss, want_dy_hat: bool = True,
                    workspace: Workspace | None = None):
    """Loss and gradients at the output layer for all N = T·B rows at once.

    Parameters
    ----------
    a, y_hat : (N, O) logits and outputs
    y : (N,) class indices or (N, O) targets
    w : (N,) row weights, or None for all ones
    workspace : optional; the fused softmax + cross-entropy path writes into it

    Returns
    -------
    (L, dL/da (N, O), dL/dy_hat (N, O) or None)
    """
    fused = fused_path(g, loss)
    if fused is not None:
        rows, da, dy_hat = fused(a, y_hat, y, want_dy_hat, workspace)
        if w is not None:
            da *= w[:, None]
            if dy_hat is not None:
                dy_hat = _weight_rows(dy_hat, w)
        return _weighted_sum(rows, w), da, dy_hat
    # General chain rule: dL/da = J_g(a)^T dL/dy_hat.
    rows = loss.value(y_hat, y)
    dy_hat = np.asarray(loss.grad(y_hat, y), dtype=y_hat.dtype)
    if w is not None:
        dy_hat = _weight_rows(dy_hat, w)
    # A user's activation may compute its VJP in another dtype (np.ones is float64): cast, so
    # that a float32 model returns float32 gradients and a workspace's buffers fit.
    da = np.asarray(g.vjp(dy_hat, a, y_hat), dtype=y_hat.dtype)
    return _weighted_sum(rows, w), da, (dy_hat if want_dy_hat else None)


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


def input_weight_grad(x: np.ndarray, dz: np.ndarray, D: int, out: np.ndarray | None = None) -> np.ndarray:
    """dW_x = sum_t dz_t^T x_t, (H, D), for dz (N, H) and x (N, D) floats or (N,) token indices.

    For tokens x_t is one-hot, so column k of dW_x is the sum of dz over the rows whose
    token is k: a sort, then one segmented sum (np.add.at would loop per row).
    """
    if x.ndim == 2:
        return np.dot(dz.T, x, out=out)
    if _kernels.enabled():  # the same scatter-add as one compiled loop (rnngrad[fast])
        dW_xT = _kernels.token_weight_grad(x, dz, D)
    else:
        H = dz.shape[1]
        order = np.argsort(x, kind="stable")
        xs = x[order]
        starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
        dW_xT = np.zeros((D, H), dtype=dz.dtype)
        dW_xT[xs[starts]] = np.add.reduceat(dz[order], starts, axis=0)
    if out is None:
        return np.ascontiguousarray(dW_xT.T)
    np.copyto(out, dW_xT.T)
    return out


def backward(params: Mapping[str, np.ndarray], cache: "Forward", y: np.ndarray, w: np.ndarray | None,
             f: Activation, g: Activation, loss: Loss, need: Iterable[str] | None = None,
             workspace: Workspace | None = None) -> Gradients:
    """Every gradient of seed §1 from the forward cache (see the module docstring).

    Parameters
    ----------
    params : dict of W_x (H, D), W_h (H, H), b_h (H,), W_y (O, H), b_y (O,)
    cache : Forward from :func:`rnngrad.model.forward` with the same params
    y : (N,) class indices or (N, O) targets, N = T·B, row t·B + b
    w : (N,) loss weights or None (see :func:`loss_weights`)
    need : names from OPTIONAL_GRADS to compute; None for all
    workspace : optional; every returned array except h_last is written into its arrays
        and is overwritten by the next call that uses it (see :mod:`rnngrad.workspace`)
    """
    need = check_need(need, OPTIONAL_GRADS)
    W_x, W_h, W_y = params["W_x"], params["W_h"], params["W_y"]
    x, h0, h = cache.x, cache.h0, cache.h
    T, B, H = h.shape
    N = T * B
    h_rows = h.reshape(N, H)
    dtype = h.dtype
    ws = workspace

    # §3A: output layer over all rows at once.
    L, da, dy_hat = output_backward(cache.a.reshape(N, -1), cache.y_hat.reshape(N, -1), y, w,
                                    g, loss, want_dy_hat="y_hat" in need, workspace=ws)
    dW_y = np.dot(da.T, h_rows, out=buffer(ws, "dW_y", (da.shape[1], H), dtype))
    # Column sums as a product with a ones vector: NumPy's sum over the long axis of an
    # (N, small) array runs row by row and is ten times slower than this BLAS call.
    ones = np.ones(N, dtype=da.dtype)
    db_y = np.dot(ones, da, out=buffer(ws, "db_y", (da.shape[1],), dtype))

    # §3B: dh starts as the direct term da_t W_y and gains the recursive term in the loop;
    # dz starts as f'(z_t) for every t (a few vectorised calls, see derivative_blocks) and is
    # scaled by dh_t in place.
    dh = np.dot(da, W_y, out=buffer(ws, "dh", (N, H), dtype)).reshape(T, B, H)
    dz = empty(ws, "dz", (T, B, H), dtype)
    kind = _kernels.recurrence_kind(f, h) if cache.z is None else None
    if kind is not None:  # the same loop compiled (rnngrad[fast]; see _kernels.py)
        _kernels.backward_recurrence(dh, h, W_h, kind, out=dz)
    else:
        derivative_blocks(f, cache.z, h, out=dz)
        rec = np.empty((B, H), dtype=h.dtype)
        dz[T - 1] *= dh[T - 1]
        for t in range(T - 2, -1, -1):
            np.dot(dz[t + 1], W_h, out=rec)
            dh[t] += rec
            dz[t] *= dh[t]

    # §3C: parameter gradients as single products over all steps.
    dz_rows = dz.reshape(N, H)
    # h_prev is a view of the forward pass's states; a Forward built by hand may lack it.
    h_prev = cache.h_prev if cache.h_prev is not None else np.concatenate([h0[None], h[:-1]])
    dW_h = np.dot(dz_rows.T, h_prev.reshape(N, H), out=buffer(ws, "dW_h", (H, H), dtype))
    x_rows = x.reshape(N, -1) if x.ndim == 3 else x.reshape(N)
    grads = {
        "W_y": dW_y,
        "b_y": db_y,
        "W_x": input_weight_grad(x_rows, dz_rows, W_x.shape[1], out=buffer(ws, "dW_x", W_x.shape, dtype)),
        "W_h": dW_h,
        "b_h": np.dot(ones, dz_rows, out=buffer(ws, "db_h", (H,), dtype)),
        "h": dh,
    }
    if "y_hat" in need:
        grads["y_hat"] = dy_hat.reshape(T, B, -1)
    if "x" in need and x.ndim == 3:
        grads["x"] = np.dot(dz_rows, W_x, out=buffer(ws, "dx", (N, W_x.shape[1]), dtype)).reshape(T, B, -1)
    if "h0" in need:
        grads["h0"] = np.dot(dz[0], W_h, out=buffer(ws, "dh0", (B, H), dtype))
    return Gradients(loss=L, grads=grads, h_last=h[-1].copy(), forward=cache)
