"""Checks at the public boundary, shared by every entry point.

Validate once at the edge, trust inside: :class:`rnngrad.RNN` and
:func:`rnngrad.check_gradients` call these before any arithmetic, and the pure
functions of :mod:`rnngrad.network`, :mod:`rnngrad.layer` and :mod:`rnngrad.head` assume what
they check.
Every message names the argument, what was expected and what was given.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "check_choice",
    "check_positive_int",
    "check_dtype",
    "check_seed",
    "as_array",
    "check_shape",
    "all_finite",
    "check_finite",
    "check_params",
    "check_inputs",
    "check_h0",
    "check_mask",
    "lengths_from_mask",
    "check_lengths",
    "check_targets",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """A string from ``choices``, or ValueError listing them."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {sorted(choices)}; got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")
    return value


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    return int(value)


def check_real(name: str, value, *, positive: bool = True) -> float:
    """A finite real number (int, float or NumPy scalar, not bool), > 0 or >= 0; as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a {'positive' if positive else 'non-negative'} number; "
                        f"got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be a finite {'positive' if positive else 'non-negative'} "
                         f"number; got {value!r}")
    return value


def check_need(need, optional: Sequence[str]) -> frozenset:
    """``need`` of a gradients call as a set of names from ``optional``: None means all, a single
    name means that one, otherwise an iterable of names (an empty one: none)."""
    if need is None:
        return frozenset(optional)
    if isinstance(need, str):  # need="dh0" means ("dh0",), not ("d", "h", "0")
        need = (need,)
    try:
        names = list(need)
    except TypeError:
        raise TypeError(f"need must be None, a name or an iterable of names from {list(optional)}; "
                        f"got {type(need).__name__} {need!r}") from None
    bad = [n for n in names if not isinstance(n, str) or n not in optional]
    if bad:
        raise ValueError(f"need may name only {list(optional)}; got {bad!r}")
    return frozenset(names)


def check_seed(seed):
    """None, a non-negative int or a numpy Generator (anything np.random.default_rng takes as a seed
    that users mean as one); returns a Generator."""
    if isinstance(seed, np.random.Generator) or seed is None:
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None, a non-negative integer or a numpy.random.Generator; "
                        f"got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed}")
    return np.random.default_rng(int(seed))


def check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64; got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be numpy.float32 or numpy.float64; got {dt}")
    return dt


def as_array(name: str, value, dtype: np.dtype | None = None) -> np.ndarray:
    """``value`` as an ndarray of real numbers (converted to ``dtype`` when given)."""
    if value is None:
        raise TypeError(f"{name} must be an array; got None")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be a rectangular array of numbers (ragged nested lists are not)") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers; got an array of dtype {arr.dtype}")
    if not arr.dtype.isnative:
        # Big-endian data (from a file, say): the value checks below read the raw bytes of
        # native integers, so convert first (the same numbers, in this machine's byte order).
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def _fmt(shape: Sequence) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_shape(name: str, arr: np.ndarray, expected: Sequence, labels: str) -> None:
    """Raise unless ``arr.shape`` matches ``expected`` (None matches any size).

    ``labels`` names the dimensions for the message, e.g. "(T, B, D)".
    """
    # A plain loop, not all() over a generator: this runs for several arrays on every call.
    shape = arr.shape
    if len(shape) == len(expected):
        for e, s in zip(expected, shape):
            if e is not None and e != s:
                break
        else:
            return
    want = _fmt(["?" if e is None else e for e in expected])
    raise ValueError(f"{name} must have shape {labels} = {want}; got shape {_fmt(arr.shape)}")


def all_finite(arr: np.ndarray) -> bool:
    """True if no entry of a float array is NaN or ±Inf.

    v·v is NaN or Inf exactly when some entry is (quiet NaN and Inf propagate through a
    product and a sum of non-negative terms), and it is one BLAS call: two to three times
    cheaper than ``np.isfinite(arr).all()``, which allocates a boolean array and reduces
    it. This is paid on every call for every parameter and input, so it counts for small
    models. Only a sum of squares that overflows (entries beyond ~1e19 in float32, ~1e154
    in float64) takes the exact element-wise test.
    """
    # np.vdot, not np.dot: dot checks the floating-point status and would warn (or raise,
    # under the caller's np.errstate) when the sum of squares overflows, and wrapping it in
    # np.errstate costs a microsecond per array, more than the product itself on small
    # models; vdot does not check (tests/test_fastpaths.py holds NumPy to that).
    total = np.vdot(arr, arr)
    if math.isfinite(total):
        return True
    return bool(np.isfinite(arr).all())


def check_finite(name: str, arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and not all_finite(arr):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")


def check_params(params: Mapping, shapes: Mapping[str, tuple], dtype: np.dtype) -> dict:
    """The parameter dict with every entry present, of its shape, finite, in ``dtype``."""
    # type() first: isinstance against the Mapping ABC costs about a microsecond per call.
    if type(params) is not dict and not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays; got {type(params).__name__}")
    missing = [k for k in shapes if k not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; expected keys {list(shapes)}")
    if len(params) != len(shapes):
        unknown = [k for k in params if k not in shapes]
        raise ValueError(f"params has keys this model does not have: {unknown}; expected keys {list(shapes)}")
    out = {}
    squares = 0.0
    for key, shape in shapes.items():
        arr = params[key]
        # Called on every gradients call: arrays already of the right type skip as_array,
        # and the names of the messages are formatted only when one is raised.
        if type(arr) is not np.ndarray or arr.dtype != dtype:
            arr = as_array(f"params[{key!r}]", arr, dtype)
        if arr.shape != shape:
            raise ValueError(
                f"params[{key!r}] must have shape {_fmt(shape)}; got shape {_fmt(arr.shape)}"
            )
        squares += np.vdot(arr, arr)  # see all_finite: one finiteness test for every array
        out[key] = arr
    if not math.isfinite(squares):  # some entry is NaN or Inf, or the sum overflowed: find out
        for key, arr in out.items():
            if not all_finite(arr):
                check_finite(f"params[{key!r}]", arr)
    return out


def _out_of_range(idx: np.ndarray, n: int) -> bool:
    """True if some integer in ``idx`` lies outside [0, n).

    For 64-bit integers this is one reduction instead of a min and a max: a negative
    int64 read as uint64 is at least 2^63 > n. (In a narrower type, -1 read as unsigned
    could be below n.)"""
    if idx.dtype.kind == "i":
        if idx.dtype.itemsize != 8:
            return bool(idx.min() < 0 or idx.max() >= n)
        idx = idx.view(np.uint64)
    return bool(idx.max() >= n)


def check_inputs(x, input_size: int, dtype: np.dtype) -> np.ndarray:
    """x as (T, B, D) floats in ``dtype``, or (T, B) integer token indices in [0, D).

    Integer token indices select a column of W_x (a one-hot input without the
    one-hot matrix); a (T, B, D) integer array is taken as numbers and converted.
    """
    arr = as_array("x", x)
    tokens = arr.ndim == 2 and arr.dtype.kind in "iu"
    if not tokens and arr.ndim != 3:
        raise ValueError(
            f"x must have shape (T, B, D) = (?, ?, {input_size}) with real values, or (T, B) with "
            f"integer token indices; got shape {_fmt(arr.shape)} of dtype {arr.dtype}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"x must have T >= 1 and B >= 1; got shape {_fmt(arr.shape)}")
    if tokens:
        if _out_of_range(arr, input_size):
            raise ValueError(
                f"x holds token indices, which must lie in [0, input_size={input_size}); "
                f"got values from {arr.min()} to {arr.max()}"
            )
        return arr.astype(np.intp, copy=False)
    check_shape("x", arr, (None, None, input_size), "(T, B, D)")
    arr = as_array("x", arr, dtype)
    check_finite("x", arr)
    return arr


def check_h0(h0, batch: int, hidden_size: int, dtype: np.dtype, units: int = 1, name: str = "h0") -> np.ndarray:
    """h0 as (U, B, H) in ``dtype`` (zeros when None), U = num_layers · directions; ``name`` is the
    argument named in errors (e.g. "h0_tangent", shaped as h0).

    With U = 1, h0 may also be (B, H), as the seed's single layer takes it.
    """
    if h0 is None:
        return np.zeros((units, batch, hidden_size), dtype=dtype)
    arr = as_array(name, h0, dtype)
    if units == 1 and arr.ndim != 3:
        check_shape(name, arr, (batch, hidden_size), "(B, H)")
        arr = arr[None]
    else:
        check_shape(name, arr, (units, batch, hidden_size), "(num_layers * directions, B, H)")
    check_finite(name, arr)
    return arr


def check_lengths(lengths, T: int, B: int) -> np.ndarray:
    """Sequence lengths as a (B,) intp array of integers in [1, T]."""
    arr = as_array("lengths", lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers (the valid steps of each sequence); got dtype {arr.dtype}")
    check_shape("lengths", arr, (B,), "(B,)")
    if arr.size and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must lie in [1, T={T}] (every sequence needs a valid step); "
                         f"got values from {arr.min()} to {arr.max()}")
    return arr.astype(np.intp)


def lengths_from_mask(mask: np.ndarray) -> np.ndarray:
    """The (B,) sequence lengths of a (T, B) bool mask that is a prefix of valid steps followed by
    padding in every column; ValueError naming the first column that is not, or that is empty."""
    T = mask.shape[0]
    lengths = np.count_nonzero(mask, axis=0)
    bad = np.flatnonzero((mask != (np.arange(T)[:, None] < lengths[None, :])).any(axis=0))
    if bad.size:
        b = int(bad[0])
        raise ValueError(
            f"mask must mark each sequence's valid steps followed by padding (True/1 then False/0 down "
            f"each column) for a bidirectional network, whose reverse direction starts at each "
            f"sequence's last valid step; column {b} is {mask[:, b].astype(int).tolist()[:20]}"
            f"{'...' if T > 20 else ''}. To weight the loss of single steps, pass the sequence lengths as "
            f"lengths= and the mask as the loss weights")
    if not lengths.all():
        b = int(np.flatnonzero(lengths == 0)[0])
        raise ValueError(f"mask leaves sequence {b} without any valid step; every sequence of a "
                         f"bidirectional network needs at least one (drop it from the batch)")
    return lengths


def check_mask(mask, T: int, B: int) -> np.ndarray | None:
    """mask as a (T, B) bool array (None if absent); values must be 0/1 or bool."""
    if mask is None:
        return None
    arr = as_array("mask", mask)
    check_shape("mask", arr, (T, B), "(T, B)")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("mask must hold only 0/1 or True/False values")
        arr = arr.astype(bool)
    return arr


def check_targets(y, loss, T: int, B: int, O: int, dtype: np.dtype, mask: np.ndarray | None):
    """Targets as rows: (T·B,) integer indices or (T·B, O) floats in ``dtype``.

    What is allowed depends on ``loss.target``; values are checked only at unmasked
    positions, and masked positions are set to a harmless value (class 0, or a row of
    zeros) so that padding such as -1 or NaN never reaches an index or a log.
    """
    arr = as_array("y", y)
    if T != B and arr.ndim >= 2 and arr.shape[:2] == (B, T):
        # The usual cause: x was passed with the other layout, so T and B were read from the wrong axes.
        raise ValueError(f"y has shape {_fmt(arr.shape)} but x, read as (T, B, ...), gives (T, B) = ({T}, {B}): x and "
                         f"y disagree on which axis is time (one of them is batch-first?); pass both time-major, "
                         f"or both batch-first to a model built with batch_first=True")
    kind = loss.target
    keep = None if mask is None else mask.reshape(-1)
    if arr.ndim == 2 and arr.dtype.kind in "iu":
        if kind != "index_or_distribution":
            raise ValueError(
                f"y must have shape (T, B, O) = ({T}, {B}, {O}) for loss {loss.name!r}; "
                f"integer class indices of shape (T, B) are for cross_entropy with a softmax output"
            )
        check_shape("y", arr, (T, B), "(T, B)")
        idx = arr.reshape(-1).astype(np.intp, copy=False)
        if keep is not None:
            idx = np.where(keep, idx, 0)
        if idx.size and _out_of_range(idx, O):
            raise ValueError(
                f"y holds class indices, which must lie in [0, output_size={O}); "
                f"got values from {idx.min()} to {idx.max()}"
                + (" at unmasked positions" if keep is not None else "")
            )
        return idx
    if arr.ndim == 2 and kind == "index_or_distribution":
        raise TypeError(
            f"y of shape (T, B) must hold integer class indices; got dtype {arr.dtype}. "
            f"Pass probability rows as shape (T, B, O) = ({T}, {B}, {O})"
        )
    labels = "(T, B, O)"
    if kind == "index_or_distribution":
        labels += " (or (T, B) class indices)"
    check_shape("y", arr, (T, B, O), labels)
    full = as_array("y", arr, dtype)
    if not all_finite(full):  # only then is the slower masked form needed: NaN padding is allowed
        check_finite("y", full if mask is None else np.where(mask[..., None], full, 0))
    arr = full.reshape(T * B, O)
    live = arr if keep is None else arr[keep]
    if kind in ("unit_interval", "index_or_distribution") and live.size:
        if live.min() < 0 or live.max() > 1:
            raise ValueError(f"y must lie in [0, 1] for loss {loss.name!r}; got values from {live.min()} to {live.max()}")
    if kind == "index_or_distribution" and live.size:
        sums = live @ np.ones(O, dtype=live.dtype)  # NumPy's sum along short rows is slower
        tol = 1e-4 if dtype == np.float32 else 1e-6
        worst = np.abs(sums - 1).max()
        if worst > tol:
            raise ValueError(
                f"y rows must be probability distributions (each summing to 1) for cross_entropy "
                f"with a softmax output; a row sums to {sums[np.argmax(np.abs(sums - 1))]:.6g}"
            )
    if keep is not None and not keep.all():
        arr = arr.copy()
        arr[~keep] = 0
    return arr
