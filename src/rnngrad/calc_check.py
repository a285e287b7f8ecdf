"""Finite-difference checks of the calculations beyond BPTT: RTRL, forward mode and curvature.

Each is checked along random directions v (a tree shaped as ``model.params``, unit norm over
all of it), in float64, with central differences of step eps:

    rtrl   <g_RTRL, v>       against (L(θ + εv) − L(θ − εv)) / 2ε
    jvp    L_dot(v)          against the same difference of L
    hvp    H v               against (∇L(θ + εv) − ∇L(θ − εv)) / 2ε   (∇L by BPTT, itself checked by gradcheck)

An entry passes on ``max_rel_error <= rtol or max_abs_error <= atol`` as
:func:`rnngrad.check_gradients` decides; ``atol`` defaults to the rounding floor of the
differences, 8 u max(|f|, 1) / eps with f the differenced quantity (L, or ∇L for hvp).
"""

from __future__ import annotations

import numpy as np

from .gradcheck import GradCheckEntry, GradCheckReport, _relative
from .model import RNN
from .validation import check_choice, check_positive_int, check_real

__all__ = ["check_calculation", "METHODS"]

METHODS = ("rtrl", "jvp", "hvp")


def _directions(model: RNN, k: int, rng: np.random.Generator) -> list[dict]:
    out = []
    for _ in range(k):
        v = {n: rng.standard_normal(p.shape) for n, p in model.params.items()}
        norm = np.sqrt(sum(float(np.square(a).sum()) for a in v.values()))
        out.append({n: a / norm for n, a in v.items()})
    return out


def _shifted(model: RNN, v: dict, step: float) -> RNN:
    m = model.copy()
    m.params = {n: p + step * v[n] for n, p in model.params.items()}
    return m


def check_calculation(model: RNN, x, y, method: str, h0=None, mask=None, reduction: str = "sum",
                      eps: float = 1e-6, rtol: float = 1e-6, directions: int = 4, seed: int = 0,
                      atol: float | None = None) -> GradCheckReport:
    """Check ``method`` ("rtrl", "jvp" or "hvp") against central differences along ``directions``
    random unit directions; a report as :func:`rnngrad.check_gradients` returns, one entry per
    compared quantity."""
    from . import curvature, forward_mode, rtrl

    check_choice("method", method, METHODS)
    eps, rtol = check_real("eps", eps), check_real("rtol", rtol, positive=False)
    k = check_positive_int("directions", directions)
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
    model = model.astype(np.float64)
    kw = dict(h0=h0, mask=mask, reduction=reduction)
    vs = _directions(model, k, np.random.default_rng(seed))
    loss = model.loss(x, y, **kw)
    floor = atol if atol is not None else 8 * np.finfo(np.float64).eps * max(abs(loss), 1.0) / eps
    entries = {}
    if method in ("rtrl", "jvp"):
        if method == "rtrl":
            g = rtrl.rtrl_gradients(model, x, y, **kw).grads
            analytic = [sum(float((g[n] * v[n]).sum()) for n in g) for v in vs]
            label = "<g_RTRL, v>"
        else:
            analytic = [forward_mode.jvp(model, x, y, v, **kw)[1] for v in vs]
            label = "L_dot(v)"
        numeric = [(_shifted(model, v, eps).loss(x, y, **kw) - _shifted(model, v, -eps).loss(x, y, **kw)) / (2 * eps)
                   for v in vs]
        abs_err, rel_err = _relative(np.array(analytic), np.array(numeric))
        entries[label] = GradCheckEntry(label, (k,), k, abs_err, rel_err, rel_err <= rtol or abs_err <= floor)
    else:
        for i, v in enumerate(vs):
            hv = curvature.hvp(model, x, y, v, **kw)
            plus = _shifted(model, v, eps).gradients(x, y, need=(), **kw).grads
            minus = _shifted(model, v, -eps).gradients(x, y, need=(), **kw).grads
            a = np.concatenate([hv[n].ravel() for n in hv])
            d = np.concatenate([((plus[n] - minus[n]) / (2 * eps)).ravel() for n in hv])
            # The differences' rounding: u |∇L| / eps per entry (the differenced quantity is ∇L, not L).
            g_scale = max(max(float(np.abs(plus[n]).max(initial=0.0)) for n in plus), 1.0)
            tol = atol if atol is not None else 8 * np.finfo(np.float64).eps * g_scale / eps
            abs_err, rel_err = _relative(a, d)
            label = f"H v_{i}"
            entries[label] = GradCheckEntry(label, (a.size,), a.size, abs_err, rel_err,
                                            rel_err <= rtol or abs_err <= tol)
    return GradCheckReport(entries=entries, loss=float(loss), eps=eps, rtol=rtol, mode=f"{method}, {k} directions",
                           atol=float(floor))
