"""The pure parts of data-parallel gradients: cutting a batch into row shards, one shard's
share of the gradient (the function a worker runs), and the fixed-order sum on the client.

NumPy only (no Dask here): :mod:`rnngrad.distributed` ships these functions to the workers.

Sharding is by batch rows b, the only axis the loss is a sum over without coupling:
L = sum_b sum_t w_tb L_t(y_hat_tb, y_tb), and sequence b's states depend on its own x, h0
and parameters alone. So with the rows cut into shards S_1, ..., S_N,

    L = sum_i L_{S_i},   dL/dtheta = sum_i dL_{S_i}/dtheta   (theta: every W_x, W_h, b_h, W_y, b_y)

and every per-sequence quantity (dh_t, dy_hat_t, dx_t, dh_0, h_last) of a row is the one its
own shard computes. "mean" divides by the unmasked count of the whole batch, not the shard's:
w_tb = m_tb / count (:func:`rnngrad.head.loss_weights`), and every output of a gradients call is
linear in w, so a shard's "mean" share is its "sum" result divided by the global count.
"""

from __future__ import annotations

import copy

import numpy as np

from .network import Gradients

__all__ = ["shard_bounds", "take_rows", "take_steps", "shard_gradients", "combine", "sequence_axis",
           "state_axis"]


def shard_bounds(batch: int, shards: int) -> list[tuple[int, int]]:
    """Row ranges [lo, hi) cutting ``batch`` rows into ``shards`` contiguous pieces whose sizes
    differ by at most one (the first ones smaller), in row order."""
    cuts = [i * batch // shards for i in range(shards + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def take_rows(arr, lo: int, hi: int, axis: int):
    """Rows [lo, hi) of ``arr`` along its batch ``axis``, as a compact copy (what is shipped), or None."""
    if arr is None:
        return None
    return np.ascontiguousarray(np.take(arr, np.arange(lo, hi), axis=axis))


def take_steps(arr, window: tuple[int, int] | None, axis: int):
    """Steps [start, stop) of ``arr`` along its time ``axis`` (a view), or ``arr`` for no window."""
    if arr is None or window is None:
        return arr
    index = [slice(None)] * arr.ndim
    index[axis] = slice(*window)
    return arr[tuple(index)]


def sequence_axis(ndim: int, batch_first: bool) -> int:
    """The batch axis of a returned sequence: dh (T, B, H) or (U, T, B, H), dy_hat (T, B, O), dx
    (T, B, D); with batch_first (B, T, ...) and (U, B, T, H)."""
    return ndim - (3 if batch_first else 2)


def state_axis(ndim: int) -> int:
    """The batch axis of an array shaped as h0: (B, H) or (U, B, H)."""
    return ndim - 2


def shard_gradients(held: dict, params: dict, window, h0, dropout_masks, count, need, engine,
                    states: bool) -> tuple:
    """One shard's share of the batch's loss and gradients (runs on a worker).

    Parameters
    ----------
    held : the shard, sent once: {"model": the RNN (configuration; its params unused),
        "x", "y", "mask" (or None), "lengths" (or None)}: the shard's rows of each, in the
        model's layout ((T, B_i, ...), or (B_i, T, ...) with batch_first)
    params : the parameters of this step, keyed as ``model.params``
    window : (start, stop) steps of x, y and mask to use, or None for all
    h0 : the shard's rows of h0 ((U, B_i, H) or (B_i, H)), or None (zeros)
    dropout_masks : the shard's rows of each level's mask in the model's layout, or None
    count : None for reduction "sum"; for "mean", the unmasked count of the whole batch
    need, engine : as :meth:`rnngrad.RNN.gradients`
    states : also return dh, dy_hat, dx, dh0 (else only what training needs)

    Returns
    -------
    (loss, grads, dh, dy_hat, dx, dh0, h_last), the state fields None where not computed or
    not asked for. ``model.gradients(reduction="sum")`` is the core's whole computation;
    dividing its result by the global count is "mean" over the whole batch (module docstring).
    """
    model = copy.copy(held["model"])  # a shallow copy per call: two threads of one worker may share held
    model.params = params
    t_axis = 1 if model.batch_first else 0
    x, y, mask = (take_steps(held[k], window, t_axis) for k in ("x", "y", "mask"))
    res = model.gradients(x, y, h0=h0, mask=mask, reduction="sum", need=need, dropout_masks=dropout_masks,
                          engine=engine, lengths=held["lengths"])

    def share(a):  # out of place: some returned arrays are views of one another
        return a if a is None or count is None else a / count

    loss = res.loss if count is None else res.loss / count
    grads = {k: share(v) for k, v in res.grads.items()}
    fields = (res.dh, res.dy_hat, res.dx, res.dh0) if states else (None,) * 4
    return (loss, grads) + tuple(share(a) for a in fields) + (res.h_last,)


def _concatenate(parts, axis_of) -> np.ndarray | None:
    if parts[0] is None:
        return None
    return np.concatenate(parts, axis=axis_of(parts[0].ndim))


def combine(parts: list[tuple], batch_first: bool) -> Gradients:
    """The batch's :class:`rnngrad.Gradients` from the shards' results, in shard order.

    The sum runs in the order of ``parts`` (shard 0, 1, ...) whatever order the workers
    finished in, so a batch cut into the same shards gives the same bits on every run.
    Each array is new and writable (an optimizer may clip gradients in place).
    """
    loss = 0.0
    for p in parts:
        loss += p[0]
    grads = {k: np.array(v, copy=True) for k, v in parts[0][1].items()}
    for p in parts[1:]:
        for k, v in grads.items():
            v += p[1][k]
    seq = lambda n: sequence_axis(n, batch_first)  # noqa: E731
    dh, dy_hat, dx = (_concatenate([p[i] for p in parts], seq) for i in (2, 3, 4))
    dh0, h_last = (_concatenate([p[i] for p in parts], state_axis) for i in (5, 6))
    # forward is None: the caches stay on the workers (they are as large as the states, and a
    # gradients call's result is what the client needs).
    return Gradients(float(loss), grads, dh, dy_hat, dx, dh0, h_last, None)
