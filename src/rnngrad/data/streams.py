"""Token streams for truncated backpropagation through time.

A long token sequence is cut into B parallel streams laid side by side (time-major),
and the streams are read in consecutive chunks of k steps:

    tokens  c_0 c_1 ... c_{N-1}                      L = (N - 1) // B steps per stream
    x[t, b] = c_{b·L + t},  y[t, b] = c_{b·L + t + 1}      t = 0..L-1   (y: the next character)
    chunk i = x[i·k : (i+1)·k], y[i·k : (i+1)·k]            each (k, B)

Chunk i + 1 continues each stream exactly where chunk i stopped, so the final hidden
state of one chunk is the right h0 for the next (no gradient flows across the cut).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..validation import check_positive_int

__all__ = ["make_streams", "num_chunks", "batches", "train_val_split"]


def _check_tokens(tokens) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise TypeError(f"tokens must be a 1-D array of integer token indices; got {arr.dtype} of shape {arr.shape}")
    return arr


def make_streams(tokens, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``tokens`` (N,) into ``batch_size`` streams of inputs and next-token targets.

    Returns
    -------
    x, y : (L, B) intp arrays, L = (N - 1) // B; ``y[t, b]`` is the token after ``x[t, b]``.
        The last ``N - 1 - B·L`` tokens are not used.
    """
    tokens = _check_tokens(tokens)
    B = check_positive_int("batch_size", batch_size)
    L = (tokens.size - 1) // B
    if L < 1:
        raise ValueError(
            f"tokens is too short for batch_size={B}: {tokens.size} tokens, need at least {B + 1}"
        )
    x = tokens[: B * L].reshape(B, L).T.astype(np.intp)
    y = tokens[1 : B * L + 1].reshape(B, L).T.astype(np.intp)
    # Contiguous so every chunk x[i·k:(i+1)·k] is a contiguous (k, B) block.
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def num_chunks(n_tokens: int, batch_size: int, chunk_len: int, drop_last: bool = False) -> int:
    """How many chunks :func:`batches` yields for ``n_tokens`` tokens."""
    L = (check_positive_int("n_tokens", n_tokens) - 1) // check_positive_int("batch_size", batch_size)
    k = check_positive_int("chunk_len", chunk_len)
    return L // k if drop_last else -(-L // k)


def batches(tokens, batch_size: int, chunk_len: int, drop_last: bool = False,
            start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)`` chunks of the streams of :func:`make_streams`, in order.

    Parameters
    ----------
    tokens : (N,) integer token indices
    batch_size : int, B streams
    chunk_len : int, k steps per chunk (the truncation length of BPTT)
    drop_last : bool, default False
        Leave out a final chunk shorter than k (it is yielded otherwise).
    start : int, default 0
        Index of the first chunk to yield (to resume part-way through an epoch).

    Yields
    ------
    x, y : (k, B) intp arrays (the last may have fewer than k steps); y is x shifted one
        token ahead. Carry ``h_last`` of one chunk as ``h0`` of the next.
    """
    x, y = make_streams(tokens, batch_size)
    k = check_positive_int("chunk_len", chunk_len)
    L = x.shape[0]
    if drop_last and L < k:
        raise ValueError(
            f"tokens is too short for one chunk: {np.asarray(tokens).size} tokens give streams of "
            f"{L} steps with batch_size={batch_size}, fewer than chunk_len={k}; need at least "
            f"{batch_size * k + 1} tokens"
        )
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be a non-negative integer chunk index; got {start!r}")
    stop = L - L % k if drop_last else L
    for t0 in range(int(start) * k, stop, k):
        yield x[t0 : t0 + k], y[t0 : t0 + k]


def train_val_split(tokens, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split ``tokens`` (N,) into a training part and the held-out tail.

    Text is sequential, so the split is one cut, not a shuffle: the last
    ``round(val_fraction · N)`` tokens are the validation set. Both parts are views.

    Returns
    -------
    train : (N - n_val,), val : (n_val,)
    """
    tokens = _check_tokens(tokens)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.floating)):
        raise TypeError(f"val_fraction must be a number in (0, 1); got {type(val_fraction).__name__}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1); got {val_fraction}")
    n_val = int(round(val_fraction * tokens.size))
    if n_val < 2 or tokens.size - n_val < 2:
        raise ValueError(
            f"tokens is too short to split with val_fraction={val_fraction}: {tokens.size} tokens "
            f"leave {tokens.size - n_val} for training and {n_val} for validation (each needs >= 2)"
        )
    return tokens[: tokens.size - n_val], tokens[tokens.size - n_val :]
