"""Per-step losses L_t(y_hat_t, y_t): value beside gradient dL_t/dy_hat_t (seed §2C, §3A).

Every function here works on rows: ``y_hat`` and logits ``a`` are (N, O) with
N = T·B, targets ``y`` are (N, O) floats or, for categorical cross-entropy, (N,)
integer class indices. Each returns per-row values (N,), so that masking and the
"mean" reduction are one weighted sum in :mod:`rnngrad.head`.

The seed writes dL_t/dy_hat_t = y_hat_t - y_t for cross-entropy. That is not the
gradient with respect to y_hat (which is -y / y_hat); it is the gradient with
respect to the *logits* a_t for the canonical pairs, where the Jacobian of g and
the gradient of L cancel:

=========================  ====================================  ====================
pair (g, L)                L_t per row                           dL_t/da_t (fused)
=========================  ====================================  ====================
softmax, cross_entropy     logsumexp(a) - sum_k y_k a_k           y_hat·sum(y) - y
sigmoid, cross_entropy     sum_k softplus(a_k) - y_k a_k          y_hat - y
identity, mse              sum_k (a_k - y_k)^2                    2 (y_hat - y)
=========================  ====================================  ====================

:func:`fused_path` returns these as fast, stable paths; they are computed from the
logits, so a logit of ±1000 gives a finite loss and gradient where log(y_hat)
would be log(0). Every other pair takes the general chain rule in
:func:`rnngrad.head.output_backward`: dL/da = J_g(a)^T dL/dy_hat. The tests prove
that the fused and general paths agree.

Writing your own loss: subclass :class:`Loss`, implement ``value`` and ``grad``
(both per row, as below) and set ``target`` to "real" (any finite target, shape
(T, B, O)) or "unit_interval" (values in [0, 1]).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .activations import Activation, Identity, Sigmoid, Softmax
from .workspace import empty

__all__ = [
    "Loss",
    "CrossEntropy",
    "BinaryCrossEntropy",
    "MSE",
    "LOSSES",
    "TARGET_KINDS",
    "resolve_loss",
    "fused_path",
    "softmax_cross_entropy_index",
]


class Loss:
    """Base class of per-step losses.

    Attributes
    ----------
    name : str
    needs_probabilities : bool
        True if y_hat must be probabilities (output activation with
        ``probabilities = True``); cross-entropy on an identity output is refused.
    needs_elementwise_output : bool
        True if each output unit is a quantity of its own (binary cross-entropy: an independent
        probability per unit), so the output activation must be element-wise.
    target : str
        What targets it takes (one of :data:`TARGET_KINDS`): "index_or_distribution" ((T, B)
        class indices or (T, B, O) rows on the simplex), "unit_interval" ((T, B, O) in [0, 1])
        or "real" ((T, B, O), any finite value).
    """

    name: str = "loss"
    needs_probabilities: bool = False
    needs_elementwise_output: bool = False
    target: str = "real"

    def value(self, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-row loss, shape (N,), from y_hat (N, O) and targets."""
        raise NotImplementedError

    def grad(self, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-row gradient dL_t/dy_hat_t, shape (N, O)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropy(Loss):
    """Categorical cross-entropy, L_t = -sum_k y_k log y_hat_k.

    y: (N,) integer class indices, or (N, O) probability rows.
    dL_t/dy_hat_k = -y_k / y_hat_k.
    """

    name = "cross_entropy"
    needs_probabilities = True
    target = "index_or_distribution"

    def value(self, y_hat, y):
        with np.errstate(divide="ignore"):
            if y.ndim == 1:
                return -np.log(np.take_along_axis(y_hat, y[:, None], axis=1)[:, 0])
            # 0 · log 0 counts as 0, as in the limit.
            logs = np.where(y != 0, np.log(np.where(y != 0, y_hat, 1)), 0)
        return -np.einsum("nk,nk->n", y, logs)

    def grad(self, y_hat, y):
        with np.errstate(divide="ignore"):
            if y.ndim == 1:
                g = np.zeros_like(y_hat)
                rows = np.arange(len(y))
                g[rows, y] = -1 / y_hat[rows, y]
                return g
            return np.where(y != 0, -y / np.where(y != 0, y_hat, 1), 0)


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy per unit, L_t = -sum_k [y_k log y_hat_k + (1-y_k) log(1-y_hat_k)].

    y: (N, O) in [0, 1]. dL_t/dy_hat_k = -y_k / y_hat_k + (1 - y_k) / (1 - y_hat_k).
    ``loss="cross_entropy"`` with a sigmoid output means this loss.
    """

    name = "binary_cross_entropy"
    needs_probabilities = True
    # Through softmax's coupled outputs the loss has no stable form from the logits.
    needs_elementwise_output = True
    target = "unit_interval"

    def value(self, y_hat, y):
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = np.where(y != 0, y * np.log(np.where(y != 0, y_hat, 1)), 0)
            neg = np.where(y != 1, (1 - y) * np.log1p(-np.where(y != 1, y_hat, 0)), 0)
        return -(pos + neg).sum(axis=1)

    def grad(self, y_hat, y):
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = np.where(y != 0, y / np.where(y != 0, y_hat, 1), 0)
            neg = np.where(y != 1, (1 - y) / (1 - np.where(y != 1, y_hat, 0)), 0)
        return neg - pos


class MSE(Loss):
    """Squared error summed over units, L_t = sum_k (y_hat_k - y_k)^2; dL_t/dy_hat = 2 (y_hat - y).

    The seed's form; no 1/O factor (divide by O yourself, or use reduction="mean"
    to average over time steps and sequences).
    """

    name = "mse"
    target = "real"

    def value(self, y_hat, y):
        d = y_hat - y
        return np.einsum("nk,nk->n", d, d)

    def grad(self, y_hat, y):
        return 2 * (y_hat - y)


LOSSES = {cls.name: cls for cls in (CrossEntropy, BinaryCrossEntropy, MSE)}
#: The kinds of targets a loss may take (``Loss.target``).
TARGET_KINDS = ("index_or_distribution", "unit_interval", "real")


def resolve_loss(name: str, output_activation: Activation) -> Loss:
    """The loss object for a name; "cross_entropy" on a sigmoid output is binary."""
    if name == "cross_entropy" and type(output_activation) is Sigmoid:
        return BinaryCrossEntropy()
    return LOSSES[name]()


# --- fused paths for the canonical pairs -------------------------------------------
# Each takes logits a (N, O), y_hat = g(a) (N, O), targets, the engine (rnngrad.engines) and an
# optional Workspace, and returns (per-row loss (N,), dL/da (N, O), dL/dy_hat (N, O) or None when not wanted).


def _row_sums(m: np.ndarray) -> np.ndarray:
    """Sums of the rows of m (N, O), as a product with a ones vector: NumPy's sum along short
    rows goes row by row and is several times slower (0.15 against 0.015 ms on (8000, 16))."""
    return m @ np.ones(m.shape[1], dtype=m.dtype)


def _softmax_cross_entropy_da(y_hat, y, workspace=None):
    """dL/da of softmax + cross-entropy, the seed's y_hat - y: y_hat - e_y for class indices y
    (N,), y_hat sum_k y_k - y for target rows (N, O) (for rows that sum to one the seed's form;
    keeping sum(y) makes it the exact gradient of the loss for any target row)."""
    if y.ndim == 1:
        da = empty(workspace, "da", y_hat.shape, y_hat.dtype)
        np.copyto(da, y_hat)
        da.reshape(-1)[np.arange(0, y_hat.size, y_hat.shape[1]) + y] -= 1  # (n, y_n), flattened
        return da
    da = y_hat * _row_sums(y)[:, None]
    da -= y
    return da


def _softmax_cross_entropy(a, y_hat, y, want_dy_hat, engine, workspace=None):
    fast = (engine.softmax_cross_entropy_index if y.ndim == 1 else _softmax_cross_entropy_rows)(
        y_hat, y, want_dy_hat, workspace)
    if fast is not None:
        return fast
    m = a.max(axis=1)
    lse = m + np.log(np.exp(a - m[:, None]).sum(axis=1))
    da = _softmax_cross_entropy_da(y_hat, y)
    if y.ndim == 1:
        rows = np.arange(len(y))
        a_y = a[rows, y]
        loss = lse - a_y
        dy_hat = None
        if want_dy_hat:
            # -1 / y_hat_y = -exp(lse - a_y), exact where y_hat_y underflows to 0.
            dy_hat = np.zeros_like(y_hat)
            with np.errstate(over="ignore"):
                dy_hat[rows, y] = -np.exp(lse - a_y)
        return loss, da, dy_hat
    loss = lse * _row_sums(y) - np.einsum("nk,nk->n", y, a)
    dy_hat = None
    if want_dy_hat:
        with np.errstate(over="ignore"):
            dy_hat = np.where(y != 0, -y * np.exp(np.where(y != 0, lse[:, None] - a, 0)), 0)
    return loss, da, dy_hat


def softmax_cross_entropy_index(y_hat, y, want_dy_hat, workspace=None):
    """The softmax + cross-entropy rows for class indices from y_hat alone, or None.

    With p_n = y_hat[n, y_n] = exp(a_y - lse): L_n = -log p_n, dL/da = y_hat - e_y and
    dL/dy_hat = -e_y / p_n. The forward pass has already paid for the row maximum, the
    exponentials and the row sums of the softmax; this reuses them instead of forming
    log-sum-exp again over all N·O logits (a third of the output layer's element-wise
    work). -log p_n is as accurate as lse - a_y while p_n is a normal number: a relative
    error of p_n becomes the same absolute error of L_n. If any p_n is below the
    smallest normal (a logit far below the row maximum, where exp underflows), None
    sends the call to the log-sum-exp path, which stays exact there. dL/da and dL/dy_hat
    are written into the workspace's arrays when one is given. (The NumPy reference of
    :meth:`rnngrad.engines.NumpyEngine.softmax_cross_entropy_index`.)
    """
    N, O = y_hat.shape
    flat = np.arange(0, N * O, O)  # index of (n, y_n) in the flattened rows
    flat += y
    p = np.take(y_hat, flat)
    if not p.min() >= np.finfo(y_hat.dtype).tiny:  # also catches NaN
        return None
    loss = np.log(p)
    np.negative(loss, out=loss)
    da = _softmax_cross_entropy_da(y_hat, y, workspace)
    dy_hat = None
    if want_dy_hat:
        dy_hat = empty(workspace, "dy_hat", y_hat.shape, y_hat.dtype)  # C order: reshape(-1) is a view
        dy_hat.fill(0)
        dy_hat.reshape(-1)[flat] = np.divide(-1, p)
    return loss, da, dy_hat


def _softmax_cross_entropy_rows(y_hat, y, want_dy_hat, workspace=None):
    """The softmax + cross-entropy rows for target rows y (N, O) from y_hat alone, or None.

    As :func:`softmax_cross_entropy_index`: with log y_hat = a - lse, L_n = -sum_k y_k log
    y_hat_k, dL/da = y_hat sum_k y_k - y and dL/dy_hat = -y / y_hat, without forming
    log-sum-exp again; None (the log-sum-exp path) if some y_hat is below the smallest normal
    number, where its log would lose digits or be -inf.
    """
    if not y_hat.min() >= np.finfo(y_hat.dtype).tiny:  # also catches NaN
        return None
    log_y_hat = np.log(y_hat)
    log_y_hat *= y
    loss = _row_sums(log_y_hat)
    np.negative(loss, out=loss)
    da = _softmax_cross_entropy_da(y_hat, y)
    dy_hat = None
    if want_dy_hat:
        dy_hat = np.divide(y, y_hat)
        np.negative(dy_hat, out=dy_hat)
    return loss, da, dy_hat


def _sigmoid_binary_cross_entropy(a, y_hat, y, want_dy_hat, engine, workspace=None):
    # -[y log s(a) + (1-y) log s(-a)] with log s(±a) = min(±a, 0) - log1p(e^{-|a|}) (see
    # log_sigmoid): both share log1p(e^{-|a|}), and the rest is (1-y) a for a >= 0 and y (-a)
    # for a < 0. One exp and one log1p per unit, and a sum of non-negative terms: no
    # cancellation, also for soft targets next to 0 or 1 (softplus(a) - y a would cancel).
    # That is (1-y) max(a, 0) + y max(-a, 0), computed as products, not np.where (ten times
    # slower than a plain pass here); max(-a, 0) = max(a, 0) - a exactly, and neither
    # overflows (|a| + a would, beyond half the largest float).
    relu = np.maximum(a, 0)
    terms = (1 - y) * relu
    relu -= a
    terms += y * relu
    terms += np.log1p(np.exp(-np.abs(a)))
    loss = _row_sums(terms)
    da = y_hat - y
    dy_hat = None
    if want_dy_hat:
        # -y / s(a) + (1-y) / (1 - s(a)) = -y (1 + e^{-a}) + (1-y)(1 + e^{a}).
        dy_hat = _bce_dy_hat(a, y, a.dtype)
        if a.dtype == np.float32 and not np.isfinite(dy_hat).all():
            # e^{|a|} overflows float32 from |a| = 88.7, where y e^{|a|} may still be a float32
            # number (y = 1e-7, a = -100: 2.7e36): then again in float64 (rare, so not always).
            with np.errstate(over="ignore"):
                dy_hat = _bce_dy_hat(a, y, np.float64).astype(np.float32)
    return loss, da, dy_hat


def _bce_dy_hat(a, y, dtype):
    """-y (1 + e^{-a}) + (1-y)(1 + e^{a}) with its exps in ``dtype``; a term whose factor y or
    1 - y is 0 is 0 even where its exp overflows (0 · inf would be NaN)."""
    with np.errstate(over="ignore", invalid="ignore"):
        pos = y * (1 + np.exp(-a, dtype=dtype))
        neg = (1 - y) * (1 + np.exp(a, dtype=dtype))
    for term, factor in ((pos, y), (neg, 1 - y)):
        if np.isnan(term).any():  # rare: only there, the slower masked form
            term[factor == 0] = 0
    with np.errstate(over="ignore"):
        return neg - pos


def _identity_mse(a, y_hat, y, want_dy_hat, engine, workspace=None):
    d = y_hat - y
    loss = np.einsum("nk,nk->n", d, d)
    da = 2 * d
    return loss, da, (da.copy() if want_dy_hat else None)


_FUSED = {
    (Softmax, CrossEntropy): _softmax_cross_entropy,
    (Sigmoid, BinaryCrossEntropy): _sigmoid_binary_cross_entropy,
    (Identity, MSE): _identity_mse,
}


def fused_path(output_activation: Activation, loss: Loss) -> Callable | None:
    """The fused (g, L) function for a canonical pair of built-in objects, else None.

    Matched on exact types, so a user's subclass always takes the general path.
    """
    return _FUSED.get((type(output_activation), type(loss)))
