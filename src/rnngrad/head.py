"""The output head and the loss over its rows: seed §2A, §2C and §3A.

The head reads the top layer's states h_t (T, B, C), where C = H, or 2H for a
bidirectional network ([forward; reverse]), and works on all N = T·B rows at once:

    a_t     = W_y h_t + b_y                 (N, O) one product                     §2A
    y_hat_t = g(a_t)                        (N, O)                                 §2A
    L       = sum_n w_n L_t(y_hat_n, y_n)   w: mask, or 1/count for "mean"         §2C
    da_t    = J_g(a_t)^T dL_t/dy_hat_t      (fused to y_hat - y for canonical pairs) §3A
    dW_y    = sum_t da_t^T h_t              one (O, N) @ (N, C) product            §3A.1
    db_y    = sum_t da_t                                                           §3A.2
    dh_t    = da_t W_y                      the direct term of §3B, handed to the layers

The seed's §3A writes dy_hat_t/dW_y = h_t^T, dropping g'(a_t); the general chain rule keeps
it (J_g above), and for softmax J_g is the full (O, O) Jacobian, applied as a VJP without
being formed (:meth:`rnngrad.activations.Softmax.vjp`).
"""

from __future__ import annotations

import numpy as np

from .activations import Activation
from .layer import ones
from .losses import Loss, fused_path
from .workspace import Workspace, buffer

__all__ = ["head_forward", "head_backward", "output_loss", "output_backward", "loss_weights",
           "output_activation"]


def output_activation(g: Activation, a: np.ndarray, b_y: np.ndarray, y_hat: np.ndarray | None) -> np.ndarray:
    """a <- a + b_y in place, and y_hat = g(a) into ``y_hat`` (N, O) or a new array (NumPy reference)."""
    a += b_y
    return g.fn(a) if y_hat is None else g.fn(a, out=y_hat)


def head_forward(h: np.ndarray, W_y: np.ndarray, b_y: np.ndarray, g: Activation, engine,
                 workspace: Workspace | None = None):
    """a = W_y h_t + b_y and y_hat = g(a) for every row of h (T, B, C); returns (a, y_hat),
    each (T, B, O)."""
    T, B, C = h.shape
    O = W_y.shape[0]
    dtype = h.dtype
    a = np.dot(h.reshape(T * B, C), W_y.T, out=buffer(workspace, "a", (T * B, O), dtype))
    y_hat = engine.output_activation(g, a, b_y, buffer(workspace, "y_hat", (T * B, O), dtype))
    return a.reshape(T, B, O), y_hat.reshape(T, B, O)


def loss_weights(mask: np.ndarray | None, reduction: str, T: int, B: int, dtype) -> np.ndarray | None:
    """Per-row weights w_n of L = sum w_n L_t, flattened to (T·B,); None means all ones."""
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


def output_loss(a: np.ndarray, y_hat: np.ndarray, y: np.ndarray, w: np.ndarray | None, g: Activation,
                loss: Loss, engine, workspace: Workspace | None = None) -> float:
    """L alone from the head's logits and outputs (any leading shape, last axis O); targets as
    rows (see :func:`rnngrad.validation.check_targets`)."""
    O = a.shape[-1]
    a, y_hat = a.reshape(-1, O), y_hat.reshape(-1, O)
    fused = fused_path(g, loss)
    rows = fused(a, y_hat, y, False, engine, workspace)[0] if fused else loss.value(y_hat, y)
    return _weighted_sum(rows, w)


def output_backward(a: np.ndarray, y_hat: np.ndarray, y: np.ndarray, w: np.ndarray | None,
                    g: Activation, loss: Loss, engine, want_dy_hat: bool = True,
                    workspace: Workspace | None = None):
    """Loss and gradients at the output for all N = T·B rows at once.

    Parameters
    ----------
    a, y_hat : (N, O) logits and outputs
    y : (N,) class indices or (N, O) targets
    w : (N,) row weights, or None for all ones

    Returns
    -------
    (L, dL/da (N, O), dL/dy_hat (N, O) or None)
    """
    fused = fused_path(g, loss)
    if fused is not None:
        rows, da, dy_hat = fused(a, y_hat, y, want_dy_hat, engine, workspace)
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


def head_backward(h: np.ndarray, a: np.ndarray, y_hat: np.ndarray, y: np.ndarray, w: np.ndarray | None,
                  W_y: np.ndarray, g: Activation, loss: Loss, engine, want_dy_hat: bool = True,
                  workspace: Workspace | None = None):
    """§3A over all rows, and the direct term of §3B.

    Parameters
    ----------
    h : (T, B, C) the states the head read;  a, y_hat : (T, B, O)
    y : (N,) or (N, O) targets as rows;  w : (N,) weights or None

    Returns
    -------
    (L, {"W_y": (O, C), "b_y": (O,)}, dh (T, B, C) = da_t W_y, dy_hat (T, B, O) or None)
    """
    T, B, C = h.shape
    N = T * B
    O = a.shape[-1]
    dtype = h.dtype
    ws = workspace
    L, da, dy_hat = output_backward(a.reshape(N, O), y_hat.reshape(N, O), y, w, g, loss, engine,
                                    want_dy_hat=want_dy_hat, workspace=ws)
    grads = {
        "W_y": np.dot(da.T, h.reshape(N, C), out=buffer(ws, "dW_y", (O, C), dtype)),
        # A column sum as a product with a ones vector (see layer.layer_backward).
        "b_y": np.dot(ones(N, dtype), da, out=buffer(ws, "db_y", (O,), dtype)),
    }
    dh = np.dot(da, W_y, out=buffer(ws, "dh", (N, C), dtype)).reshape(T, B, C)
    return L, grads, dh, (None if dy_hat is None else dy_hat.reshape(T, B, O))
