"""Gradient clipping over a ``grads`` dict (``model.gradients(...).grads``), in place, as torch.

    clip_grad_norm    total = sqrt(sum_k ||g_k||²);  g_k *= max_norm / (total + 1e-6) when that is < 1
    clip_grad_value   g_k = clamp(g_k, -c, c)

``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_`` are the definitions (and the tests'
oracle). The training loop clips by norm, then by value, then steps the optimizer.
"""

from __future__ import annotations

import math
import numbers
from typing import MutableMapping, Sequence

import numpy as np

__all__ = ["clip_grad_norm", "clip_grad_value"]


def _check_limit(name: str, value) -> float:
    """A real number >= 0, infinity allowed (an infinite limit only measures)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must lie in [0.0, inf]; got {value}")
    return value


def _sum_of_squares(a: np.ndarray) -> float:
    """||a||² as one BLAS call in a's dtype (as torch sums float32 gradients in float32). A
    float32 gradient of norm beyond ~1.8e19 overflows that sum to inf and would escape clipping
    exactly when clipping is needed: then the sum is redone in float64 (a copy, so only then)."""
    s = float(np.vdot(a, a))
    if not math.isfinite(s) and a.dtype != np.float64:
        r = a.ravel().astype(np.float64)
        s = float(np.dot(r, r))
    return s


def clip_grad_norm(grads: MutableMapping[str, np.ndarray], max_norm: float,
                   keys: Sequence[str] | None = None) -> float:
    """Scale the gradients in ``keys`` (default: every key of ``grads``) in place so their global 2-norm is at most ``max_norm``.

    ``total = sqrt(sum_k ||grads[k]||²)``; if ``total > max_norm`` every gradient is
    multiplied by ``max_norm / (total + 1e-6)``, as ``torch.nn.utils.clip_grad_norm_``.

    ``max_norm=math.inf`` only measures. Returns the norm *before* clipping (log it to
    watch for explosions). When it is not finite the gradients are left unchanged (torch
    would fill them with NaN), so the caller can see ``inf``/``nan`` and skip the step.
    """
    max_norm = _check_limit("max_norm", max_norm)
    arrays = _grad_arrays(grads, keys)
    total = math.sqrt(sum(_sum_of_squares(a) for a in arrays.values()))
    coef = max_norm / (total + 1e-6)
    if math.isfinite(total) and coef < 1.0:
        for a in arrays.values():
            a *= coef
    return total


def clip_grad_value(grads: MutableMapping[str, np.ndarray], clip_value: float,
                    keys: Sequence[str] | None = None) -> None:
    """Clamp every entry of the gradients in ``keys`` (default: every key of ``grads``) to [-clip_value, clip_value], in place
    (as ``torch.nn.utils.clip_grad_value_``)."""
    clip_value = _check_limit("clip_value", clip_value)
    for a in _grad_arrays(grads, keys).values():
        np.clip(a, -clip_value, clip_value, out=a)


def _grad_arrays(grads, keys: Sequence[str]) -> dict:
    if not isinstance(grads, MutableMapping):
        raise TypeError(f"grads must be a dict of arrays; got {type(grads).__name__}")
    if keys is None:
        keys = list(grads)
    if isinstance(keys, str):
        raise TypeError(f"keys must be a sequence of names such as {list(grads)[:3]}; got the string {keys!r}")
    out = {}
    for k in keys:
        if k not in grads:
            raise ValueError(f"grads is missing {k!r} (keys to clip: {list(keys)})")
        a = grads[k]
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or not a.flags.writeable:
            raise TypeError(f"grads[{k!r}] must be a writable floating-point numpy array (clipped in place)")
        out[k] = a
    return out
