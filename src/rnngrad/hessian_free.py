"""Hessian-free optimisation (Martens 2010; Martens & Sutskever 2011): truncated conjugate
gradient on the damped Gauss-Newton model, with Levenberg-Marquardt damping.

At parameters P with loss L, gradient g and Gauss-Newton matrix G (:mod:`rnngrad.curvature`),
one step minimises the quadratic model of L(P + d)

    q(d) = g^T d + 1/2 d^T (G + lambda I) d

by conjugate gradient on (G + lambda I) d = -g, which needs only products G v, never G. CG
starts from warm_start · d_prev (the previous step's solution, Martens' warm start) and stops
after ``max_cg_iters`` products, when the residual is below ``cg_tol`` · |g|, or when q stopped
improving (Martens 2010: at iteration i, with k = max(10, i / 10), q_i < 0 and
(q_i - q_{i-k}) / q_i < k · ``progress_eps``).

The damping follows the reduction ratio rho = (L(P + d) - L(P)) / q(d), the actual reduction
over the reduction the model predicted (q(0) = 0): rho < 1/4 means the model was too
optimistic, lambda *= ``boost`` (3/2); rho > 3/4 means it was good, lambda *= ``drop`` (2/3).
A step that does not lower the loss is undone (its rho is then <= 0, so lambda grows). rho is
taken against the damped model q that CG minimised, as in Martens 2010. Not implemented: the
structural damping of Martens & Sutskever 2011, CG backtracking and a line search.

Parameters are updated in place, as :mod:`rnngrad.optim` does. An objective is anything with
``curvature()`` (an object with ``loss``, ``grads`` and ``gnvp(v)`` at the current parameters,
such as :class:`rnngrad.curvature.LossCurvature`) and ``loss()``; :class:`RNNObjective` is the
one for an RNN on a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .curvature import GN_SPLITS, curvature_at
from .validation import check_choice, check_positive_int, check_real

__all__ = ["HessianFree", "HFStep", "RNNObjective", "CGResult", "conjugate_gradient"]


# --- trees (dicts shaped like model.params) as vectors -----------------------------------------

def _dot(u: dict, v: dict) -> float:
    return float(sum(np.vdot(u[k], v[k]) for k in u))


def _combine(a: float, u: dict, b: float, v: dict) -> dict:
    """a u + b v, a new tree."""
    return {k: a * u[k] + b * v[k] for k in u}


@dataclass
class CGResult:
    """x : the last iterate (a tree);  q : q(x) = 1/2 x^T A x - b^T x;  iterations : products
    with A after the start;  reason : why it stopped ("residual", "progress", "max_iters",
    "curvature": a direction with p^T A p <= 0)."""

    x: dict
    q: float
    iterations: int
    reason: str


def conjugate_gradient(matvec, b: dict, x0: dict, max_iters: int, tol: float = 0.0,
                       progress_eps: float = 0.0) -> CGResult:
    """Minimise q(x) = 1/2 x^T A x - b^T x (solve A x = b) for symmetric positive definite A,
    given as ``matvec(v) -> A v`` on trees, from x0; stopping rules as the module docstring."""
    r = _combine(1.0, b, -1.0, matvec(x0))
    x, p = x0, r
    rr = _dot(r, r)
    b_norm = math.sqrt(_dot(b, b))
    qs = [-0.5 * _dot(x, _combine(1.0, b, 1.0, r))]  # q(x) = -1/2 <x, b + r>, as r = b - A x
    for i in range(1, max_iters + 1):
        if math.sqrt(rr) <= tol * b_norm:
            return CGResult(x, qs[-1], i - 1, "residual")
        Ap = matvec(p)
        pAp = _dot(p, Ap)
        if not pAp > 0:
            return CGResult(x, qs[-1], i - 1, "curvature")
        alpha = rr / pAp
        x = _combine(1.0, x, alpha, p)
        r = _combine(1.0, r, -alpha, Ap)
        rr_new = _dot(r, r)
        p = _combine(1.0, r, rr_new / rr, p)
        rr = rr_new
        qs.append(-0.5 * _dot(x, _combine(1.0, b, 1.0, r)))
        k = max(10, i // 10)
        if progress_eps and i > k and qs[i] < 0 and (qs[i] - qs[i - k]) / qs[i] < k * progress_eps:
            return CGResult(x, qs[i], i, "progress")
    reason = "residual" if math.sqrt(rr) <= tol * b_norm else "max_iters"
    return CGResult(x, qs[-1], max_iters, reason)


@dataclass
class RNNObjective:
    """The loss of an RNN on one batch, as :class:`HessianFree` takes it (at ``model.params``).

    Data arguments as :meth:`rnngrad.RNN.gradients`; ``split`` chooses the Gauss-Newton matrix
    (:func:`rnngrad.gnvp`)."""

    model: object
    x: object
    y: object
    h0: object = None
    mask: object = None
    reduction: str = "sum"
    lengths: object = None
    dropout_masks: object = None
    split: str = "auto"

    def __post_init__(self):
        check_choice("split", self.split, GN_SPLITS)

    def _data(self) -> dict:
        return dict(h0=self.h0, mask=self.mask, reduction=self.reduction, lengths=self.lengths,
                    dropout_masks=self.dropout_masks)

    def curvature(self):
        return _WithSplit(curvature_at(self.model, self.x, self.y, **self._data()), self.split)

    def loss(self) -> float:
        return self.model.loss(self.x, self.y, **self._data())


@dataclass
class _WithSplit:
    """A LossCurvature whose gnvp uses a fixed split."""

    curv: object
    split: str

    @property
    def loss(self):
        return self.curv.loss

    @property
    def grads(self):
        return self.curv.grads

    def gnvp(self, v):
        return self.curv.gnvp(v, split=self.split)


@dataclass
class HFStep:
    """What one :meth:`HessianFree.step` did.

    loss, new_loss : L before and at P + d (new_loss is the loss after the step only if accepted)
    predicted : q(d), the damped model's change of L;  rho : (new_loss - loss) / predicted
    damping : lambda used;  next_damping : lambda for the next step
    cg : the :class:`CGResult`;  warm : whether CG started from the previous solution
    accepted : whether P + d was kept
    """

    loss: float
    new_loss: float
    predicted: float
    rho: float
    damping: float
    next_damping: float
    cg: CGResult
    warm: bool
    accepted: bool


class HessianFree:
    """Hessian-free optimiser over a parameter dict (``model.params``), updated in place.

    Parameters
    ----------
    params : dict of float arrays, the parameters the objective reads
    damping : float > 0, the initial lambda of G + lambda I; the damping rule adapts it, so it
        only needs the right order of magnitude (that of G's large eigenvalues is safe)
    max_cg_iters : int, CG products per step;  cg_tol : relative residual to stop CG at
    progress_eps : Martens' relative-progress threshold (0 disables it)
    warm_start : float in [0, 1], the decay of the previous solution CG starts from (0: from 0)
    boost, drop : the damping factors for rho < 1/4 (> 1) and rho > 3/4 (< 1)
    """

    def __init__(self, params: dict, damping: float = 1.0, max_cg_iters: int = 250, cg_tol: float = 1e-10,
                 progress_eps: float = 5e-4, warm_start: float = 0.95, boost: float = 1.5, drop: float = 2 / 3):
        if not isinstance(params, dict) or not params:
            raise TypeError(f"params must be a non-empty dict of arrays (model.params); got {type(params).__name__}")
        self.params = params
        self.damping = check_real("damping", damping)
        self.max_cg_iters = check_positive_int("max_cg_iters", max_cg_iters)
        self.cg_tol = check_real("cg_tol", cg_tol, positive=False)
        self.progress_eps = check_real("progress_eps", progress_eps, positive=False)
        self.warm_start = check_real("warm_start", warm_start, positive=False)
        if self.warm_start > 1:
            raise ValueError(f"warm_start must lie in [0, 1]; got {warm_start}")
        self.boost, self.drop = check_real("boost", boost), check_real("drop", drop)
        if not (self.boost > 1 and self.drop < 1):
            raise ValueError(f"boost must be > 1 and drop < 1 (they raise and lower the damping); got {boost}, {drop}")
        self.previous = None  # the last CG solution, the warm start of the next

    def adjust_damping(self, rho: float) -> float:
        """The Levenberg-Marquardt rule: lambda * boost if rho < 1/4, * drop if rho > 3/4."""
        if not rho >= 0.25:  # also NaN: a step that made the loss NaN
            return self.damping * self.boost
        if rho > 0.75:
            return self.damping * self.drop
        return self.damping

    def step(self, objective) -> HFStep:
        """One Hessian-free step on ``objective`` (see the module docstring)."""
        curv = objective.curvature()
        g = curv.grads
        lam = self.damping

        def matvec(v):
            return _combine(1.0, curv.gnvp(v), lam, v)

        b = {k: -v for k, v in g.items()}
        zero = {k: np.zeros_like(v) for k, v in g.items()}
        warm = self.previous is not None and self.warm_start > 0
        # As Martens 2010, whether or not q(start) < q(0): on a quadratic just stepped along,
        # g is orthogonal to d_prev and q(0.95 d_prev) > 0, but on the losses of networks the
        # previous directions stay useful (a kind of momentum; in tests/test_hessian_free.py
        # it beats both a cold start and a start checked against 0).
        x0 = {k: self.warm_start * v for k, v in self.previous.items()} if warm else zero
        cg = conjugate_gradient(matvec, b, x0, self.max_cg_iters, self.cg_tol, self.progress_eps)
        d = cg.x
        self.previous = d
        before = {k: p.copy() for k, p in self.params.items()}
        for k, p in self.params.items():
            p += d[k].astype(p.dtype, copy=False)
        new_loss = objective.loss()
        # q(d) < 0 unless g = 0 (then d = 0 and nothing is predicted: rho = -inf, more damping).
        rho = (new_loss - curv.loss) / cg.q if cg.q < 0 else -math.inf
        accepted = math.isfinite(new_loss) and new_loss < curv.loss
        if not accepted:  # back to the very same numbers (p - d could differ in the last bit)
            for k, p in self.params.items():
                np.copyto(p, before[k])
        self.damping = self.adjust_damping(rho)
        return HFStep(curv.loss, new_loss, cg.q, rho, lam, self.damping, cg, warm, accepted)
