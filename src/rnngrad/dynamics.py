"""Lyapunov exponents of the state dynamics along the trajectory a model runs on x.

One layer's state map h_{t-1} -> h_t = f(W_h h_{t-1} + W_x x_t + b_h) has the Jacobian

    J_t = dh_t/dh_{t-1} = diag(f'(z_t)) W_h                                    (H, H)

(seed §3B's recursive factor: dL/dh_{t-1} = J_t^T dL/dh_t), so a perturbation of h_0 grows like
the product J_T ... J_1, and the gradient of a loss at step s, carried back to step t, like
(J_s ... J_{t+1})^T. The Lyapunov exponents lambda_1 >= ... >= lambda_H are the growth rates of
that product's singular values, in natural log per step: ‖dL_s/dh_t‖ ~ exp(lambda_1 (s - t)).

Computed by the Benettin / Shimada-Nagashima method (:func:`qr_exponents`): push k orthonormal
tangent vectors Q (H, k) through the Jacobians, re-orthonormalise by a QR factorisation
J Q = Q' R every ``interval`` steps, and average log |R_ii| over the steps. Since
J_T ... J_1 Q_0 = Q_T R_T ... R_1 and the diagonal of a product of triangular matrices is the
product of their diagonals, the result is (1/T) log |diag R| of the QR factorisation of the
whole product: the interval changes only the rounding (the columns of a long unreorthonormalised
product become nearly parallel, and the small exponents lose about exp((lambda_1 - lambda_k) m)
relative accuracy over an interval of m steps).

Stacked networks (``unit=None``): the state is every layer's h^j_t stacked (num_layers · H), and
the tangent map is applied layer by layer without forming the Jacobian,

    dh^0_t = D^0_t W_h^0 dh^0_{t-1},    dh^j_t = D^j_t (W_h^j dh^j_{t-1} + W_x^j dh^{j-1}_t),

with D^j_t = diag(f'(z^j_t)). That Jacobian is block lower-triangular, so its spectrum is, in
the long run, the union of the layers' own spectra (``unit=(j, 0)``). A bidirectional network's
state is no map forward in time (its reverse direction reads the future), so there only one
unit's own dynamics are defined: ``unit=(layer, direction)``, in that unit's own time (the
reverse direction's step 1 reads x_T).
"""

from __future__ import annotations

import numbers
from typing import Callable

import numpy as np

from .diagnostics import spectral_radius
from .layer import derivative_blocks
from .model import RNN
from .network import layer_param_names
from .validation import as_array, check_positive_int, check_seed

__all__ = ["lyapunov", "qr_exponents", "initial_tangents", "tangent_step", "spectral_radii"]


def initial_tangents(n: int, k: int, seed=0) -> np.ndarray:
    """Q_0 (n, k) with orthonormal columns: ``np.linalg.qr(default_rng(seed).standard_normal((n, k)))[0]``.

    Random rather than the first k columns of the identity, which would miss the leading
    directions of a map that keeps coordinate axes (a diagonal W_h) when k < n.
    """
    rng = check_seed(seed)
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


def qr_exponents(step: Callable, T: int, q0: np.ndarray, B: int, interval: int = 1, warmup: int = 0,
                 lengths: np.ndarray | None = None) -> np.ndarray:
    """Benettin's method: (B, k) Lyapunov exponents, column i from the i-th tangent vector.

    Parameters
    ----------
    step : ``step(t, V)`` returns J_t V for tangents V (B, n, k), t = 0..T-1 (its own time)
    q0 : (n, k) orthonormal columns, the same start for each of the B trajectories
    interval : QR every ``interval`` steps (and at the end of the warm-up and of the run)
    warmup : the first ``warmup`` steps align Q but are not counted
    lengths : (B,) valid steps per trajectory; steps t >= l_b leave its tangents unchanged

    Returns (1/(l_b - warmup)) sum log |R_ii| for each b, float64; -inf where a direction is
    annihilated (f' = 0 on every unit it reaches, as dead ReLUs).
    """
    V = np.broadcast_to(q0, (B,) + q0.shape).copy()
    logs = np.zeros((B, q0.shape[1]))
    valid = None if lengths is None else np.arange(T)[:, None] < lengths[None, :]
    since = 0  # steps since the last QR
    for t in range(T):
        new = step(t, V)
        V = new if valid is None else np.where(valid[t][:, None, None], new, V)
        since += 1
        n = t + 1
        if since == interval or n == warmup or n == T:
            V, R = np.linalg.qr(V)
            if n > warmup:
                with np.errstate(divide="ignore"):
                    logs += np.log(np.abs(np.diagonal(R, axis1=1, axis2=2)))
            since = 0
    counted = (T if lengths is None else lengths) - warmup
    return logs / np.broadcast_to(counted, (B,))[:, None]


def tangent_step(fprimes: list, W_h: list, W_x: list) -> Callable:
    """``step(t, V)`` = J_t V for the stacked state of len(W_h) layers (see the module docstring).

    fprimes : per layer (T, B, H) f'(z^j_t);  W_h : per layer (H, H);  W_x : per layer (H, C)
    (the first one unused). V (B, L·H, k). One layer: J_t V = f'(z_t) ⊙ (W_h V).
    """
    H = W_h[0].shape[0]

    def step(t: int, V: np.ndarray) -> np.ndarray:
        out = np.empty_like(V)
        below = None
        for j, (fp, Wh) in enumerate(zip(fprimes, W_h)):
            rows = slice(j * H, (j + 1) * H)
            pre = Wh @ V[:, rows]
            if j:
                pre += W_x[j] @ below
            out[:, rows] = fp[t][:, :, None] * pre
            below = out[:, rows]
        return out

    return step


def _check_unit(model: RNN, unit):
    if unit is None:
        if model.bidirectional:
            raise ValueError("a bidirectional network's stacked state is no map forward in time (its reverse "
                             "direction reads the future); pass unit=(layer, direction) for one direction's own "
                             "dynamics, e.g. unit=(0, 0) or unit=(0, 1)")
        return None
    if (not isinstance(unit, tuple) or len(unit) != 2
            or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in unit)
            or not (0 <= unit[0] < model.num_layers and 0 <= unit[1] < model.directions)):
        raise ValueError(f"unit must be None or a (layer, direction) pair with layer in [0, {model.num_layers}) "
                         f"and direction in [0, {model.directions}); got {unit!r}")
    return int(unit[0]), int(unit[1])


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def lyapunov(model: RNN, x, h0=None, k: int | None = None, *, interval: int = 1, warmup: int = 0,
             lengths=None, unit=None, q0=None, seed=0, per_sequence: bool = False, engine=None) -> np.ndarray:
    """Lyapunov exponents (natural log per step) of the state dynamics along x, descending.

    Parameters
    ----------
    model : RNN
    x : (T, B, D) floats or (T, B) tokens ((B, T, ...) with batch_first); each of the B
        sequences is its own trajectory
    h0 : initial states as for :meth:`rnngrad.RNN.forward`, optional (zeros)
    k : how many exponents, the largest; default all n (n = H for one unit, num_layers · H for
        the stacked state)
    interval : re-orthonormalise every ``interval`` steps (1: every step; see the module docstring
        for the rounding a longer interval costs)
    warmup : steps at the start that align the tangents but are not counted (the transient of Q_0);
        must be below every sequence's length
    lengths : (B,) valid steps per sequence, optional; sequence b's exponents average its
        l_b - warmup counted steps
    unit : None (the stacked state of a unidirectional network) or (layer, direction): that unit's
        own J_t = diag(f'(z_t)) W_h in its own time
    q0 : (n, k) orthonormal start, optional; default :func:`initial_tangents` (n, k, seed)
    per_sequence : False: the mean over the B sequences of each one's spectrum (each sorted
        descending first), shape (k,); True: each sequence's, shape (B, k)

    Returns float64 exponents; -inf for a direction annihilated along the way (e.g. dead ReLUs).
    """
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
    chosen = _check_unit(model, unit)
    interval = check_positive_int("interval", interval)
    warmup = _check_count("warmup", warmup, 0)
    fwd = model.forward(x, h0, lengths=lengths, engine=engine)
    T, B = fwd.layers[0].h.shape[:2]
    lens = fwd.lengths
    if warmup >= (T if lens is None else int(lens.min())):
        raise ValueError(f"warmup must be below the shortest sequence's length "
                         f"({T if lens is None else int(lens.min())}); got {warmup}")
    layers = [(chosen[0], chosen[1])] if chosen else [(j, 0) for j in range(model.num_layers)]
    p = model.params
    fprimes, W_h, W_x = [], [], []
    for j, d in layers:
        lc = fwd.layers[j * model.directions + d]
        fprimes.append(np.asarray(derivative_blocks(model.f, lc.z, lc.h), dtype=np.float64))
        n_x, n_h, _ = layer_param_names(j, d)
        W_h.append(np.asarray(p[n_h], dtype=np.float64))
        W_x.append(np.asarray(p[n_x], dtype=np.float64))
    n = len(layers) * model.hidden_size
    k = n if k is None else _check_count("k", k, 1)
    if k > n:
        raise ValueError(f"k must be at most the state size n = {n}; got {k}")
    if q0 is None:
        q0 = initial_tangents(n, k, seed)
    else:
        q0 = as_array("q0", q0, np.dtype(np.float64))
        if q0.shape != (n, k):
            raise ValueError(f"q0 must have shape (n, k) = ({n}, {k}); got {q0.shape}")
        if not np.allclose(q0.T @ q0, np.eye(k), atol=1e-10):
            raise ValueError("q0 must have orthonormal columns; pass np.linalg.qr(q0)[0]")
    spectra = qr_exponents(tangent_step(fprimes, W_h, W_x), T, q0, B, interval, warmup, lens)
    spectra = -np.sort(-spectra, axis=1)
    return spectra if per_sequence else spectra.mean(axis=0)


def spectral_radii(model: RNN) -> dict:
    """{W_h name: ρ(W_h)} for every layer and direction, to set beside the exponents: for f = identity
    and a constant J = W_h, lambda_i = log |μ_i(W_h)|, so lambda_1 = log ρ(W_h); a saturating f
    makes lambda_1 smaller (f' <= 1 for tanh)."""
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
    return {layer_param_names(j, d)[1]: spectral_radius(model.params[layer_param_names(j, d)[1]])
            for j in range(model.num_layers) for d in range(model.directions)}
