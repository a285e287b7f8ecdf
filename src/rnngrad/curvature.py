"""Curvature of the loss: exact Hessian-vector and Gauss-Newton-vector products.

Hessian (Pearlmutter 1994, forward over reverse). Apply R{.} = d/de (.)(P + e V) at e = 0 to
every line of backprop through time (:mod:`rnngrad.network`). The R-forward pass is
:func:`rnngrad.forward_mode.network_tangents` (z_dot, h_dot, a_dot); the R-backward pass, in
rows, with dz = f'(z) * dh and da = dL/da of the ordinary backward pass:

    R(da)_t   = H_a(a_t) a_dot_t                   H_a: Hessian of w_n L_t(g(a)) in a (O, O)
    R(dW_y)   = sum_t R(da_t)^T h_t + da_t^T h_dot_t,     R(db_y) = sum_t R(da_t)
    R(dh_t)   = [R(da_t) W_y + da_t V_y]  (the top level; below: the level above's R(dx_t))
                + R(dz_{t+1}) W_h + dz_{t+1} V_h
    R(dz_t)   = f'(z_t) * R(dh_t) + f''(z_t) * z_dot_t * dh_t
    R(dW_x)   = sum_t R(dz_t)^T x_t + dz_t^T x_dot_t,     R(db_h) = sum_t R(dz_t)
    R(dW_h)   = sum_t R(dz_t)^T h_{t-1} + dz_t^T h_dot_{t-1}
    R(dx_t)   = R(dz_t) W_x + dz_t V_x             (handed to the level below, through its dropout mask)

and H V = R(dL/dP). Gauss-Newton (Schraudolph 2002; Martens & Sutskever 2011): G = J^T M J with
J = da/dP, so G V is an R-forward pass to J V = a_dot, one product with the output curvature M,
and one ordinary backward pass with M a_dot in place of dL/da (:func:`network_pullback`). M is

    split "logits":  M = H_a, the exact Hessian of L∘g in the logits (PSD for the canonical pairs
                     softmax + cross-entropy, sigmoid + binary cross-entropy, identity + MSE);
    split "outputs": M = J_g^T H_L J_g, H_L the Hessian of L in y_hat (PSD for every convex L: MSE,
                     cross-entropy, binary cross-entropy), so G is J_yhat^T H_L J_yhat;
    split "auto":    "logits" for a canonical pair, "outputs" otherwise: always PSD here.

For a non-canonical pair H_a = J_g^T H_L J_g + sum_k (dL/dy_hat_k) Hess g_k, whose second term
may be indefinite; that is why "auto" splits at y_hat there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import Activation, Identity, ReLU, Sigmoid, Softmax, Tanh
from .forward_mode import Call, NetworkTangents, activation_jvp, check_tree, network_tangents, prepare_call
from .head import output_backward
from .layer import derivative_blocks, input_projection, input_weight_grad, ones
from .losses import MSE, BinaryCrossEntropy, CrossEntropy, Loss, fused_path
from .network import Architecture, backward, flip, flip_index, layer_param_names
from .validation import check_choice

__all__ = ["hvp", "gnvp", "curvature_at", "LossCurvature", "GN_SPLITS", "second_derivative",
           "loss_hessian_vp", "logit_hessian_vp", "output_curvature_vp", "network_pullback",
           "unit_r_backward"]

GN_SPLITS = ("auto", "logits", "outputs")

# --- second derivatives of the built-in activations and losses --------------------------------
# From the stored output, as their first derivatives in activations.py: f'' of tanh is
# d/dz (1 - h^2) = -2 h h' = -2 h (1 - h^2); of sigmoid d/dz s(1 - s) = s' (1 - 2 s).
_SECOND_DERIVATIVES = {
    Tanh: lambda h: -2 * h * (1 - h * h),
    Sigmoid: lambda s: s * (1 - s) * (1 - 2 * s),
    ReLU: np.zeros_like,  # 0 away from the kink, where f' is constant
    Identity: np.zeros_like,
}


def second_derivative(act: Activation, z: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """Element-wise f''(z), given z (None when the activation's f' needs only out) and out = f(z).

    A user's activation defines ``second_derivative(z, out)``; the built-ins are tabled here."""
    if hasattr(act, "second_derivative"):
        return np.asarray(act.second_derivative(z, out), dtype=out.dtype)
    rule = _SECOND_DERIVATIVES.get(type(act))
    if rule is None:
        raise TypeError(f"activation {act.name!r} has no second derivative; define "
                        f"second_derivative(z, out) on it (element-wise f''(z)) to use curvature products")
    return rule(out)


def _has_second_derivative(act: Activation) -> bool:
    return hasattr(act, "second_derivative") or type(act) in _SECOND_DERIVATIVES


def loss_hessian_vp(loss: Loss, y_hat: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """H_L(y_hat_n) v_n per row (unweighted), H_L the Hessian of L_t in y_hat; (N, O).

    cross-entropy: diag(y / y_hat^2) (class indices: 1 / p^2 at the class); binary
    cross-entropy: diag(y / y_hat^2 + (1 - y) / (1 - y_hat)^2); MSE: 2 I. A user's loss defines
    ``hessian_vp(y_hat, y, v)``."""
    if hasattr(loss, "hessian_vp"):
        return np.asarray(loss.hessian_vp(y_hat, y, v), dtype=v.dtype)
    kind = type(loss)
    if kind is MSE:
        return 2 * v
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind is CrossEntropy and y.ndim == 1:
            out = np.zeros_like(v)
            rows = np.arange(len(y))
            out[rows, y] = v[rows, y] / y_hat[rows, y] ** 2
            return out
        if kind is CrossEntropy:
            return np.where(y != 0, y * v / np.where(y != 0, y_hat, 1) ** 2, 0)
        if kind is BinaryCrossEntropy:
            pos = np.where(y != 0, y / np.where(y != 0, y_hat, 1) ** 2, 0)
            neg = np.where(y != 1, (1 - y) / (1 - np.where(y != 1, y_hat, 0)) ** 2, 0)
            return (pos + neg) * v
    raise TypeError(f"loss {loss.name!r} has no Hessian; define hessian_vp(y_hat, y, v) on it "
                    f"(H_L(y_hat) v per row) to use curvature products")


def _activation_second_term(g: Activation, u: np.ndarray, v: np.ndarray, jv: np.ndarray,
                            a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """d/de J_g(a + e v)^T u at e = 0, u held fixed: the part of H_a that g's curvature adds.

    Element-wise g: g''(a) * u * v. Softmax: J^T u = s * (u - <s, u>), and its derivative along
    v, with ds = J v = jv, is jv * (u - <s, u>) - s <jv, u>."""
    if g.elementwise:
        return second_derivative(g, a, s) * u * v
    if type(g) is Softmax:
        return jv * (u - np.einsum("nk,nk->n", s, u)[:, None]) - s * np.einsum("nk,nk->n", jv, u)[:, None]
    raise TypeError(f"output activation {g.name!r} is not element-wise: the exact Hessian needs its "
                    f"second derivatives, which rnngrad knows only for softmax; use gnvp(split='outputs')")


def _weighted(m: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Row n of m (N, O) scaled by w_n, exactly 0 where w_n = 0 (a masked row may hold inf)."""
    if w is None:
        return m
    with np.errstate(invalid="ignore"):
        out = m * w[:, None]
    out[w == 0] = 0
    return out


def logit_hessian_vp(g: Activation, loss: Loss, a, y_hat, y, w, v) -> np.ndarray:
    """H_a v: the Hessian of sum_n w_n L_t(g(a_n), y_n) in the logits a times v, rows (N, O).

    Canonical pairs, from y_hat alone: softmax + cross-entropy S J_g v (S = sum_k y_k, 1 for
    class indices), sigmoid + binary cross-entropy y_hat (1 - y_hat) v, identity + MSE 2 v.
    Otherwise J_g^T H_L J_g v + (the curvature of g against dL/dy_hat)."""
    pair = (type(g), type(loss))
    if pair == (Softmax, CrossEntropy):
        jv = g.vjp(v, a, y_hat)
        rows = jv if y.ndim == 1 else jv * (y @ ones(y.shape[1], y.dtype))[:, None]
    elif pair == (Sigmoid, BinaryCrossEntropy):
        rows = y_hat * (1 - y_hat) * v
    elif pair == (Identity, MSE):
        rows = 2 * v
    else:
        jv = activation_jvp(g, v, a, y_hat)
        u = np.asarray(loss.grad(y_hat, y), dtype=v.dtype)
        with np.errstate(invalid="ignore"):  # inf only in masked rows, zeroed below
            rows = g.vjp(loss_hessian_vp(loss, y_hat, y, jv), a, y_hat) + _activation_second_term(
                g, u, v, jv, a, y_hat)
    return _weighted(rows, w)


def output_curvature_vp(split: str, g: Activation, loss: Loss, a, y_hat, y, w, v) -> np.ndarray:
    """M v for the Gauss-Newton matrix G = J^T M J of ``split`` (module docstring), rows (N, O)."""
    if split == "auto":
        split = "logits" if fused_path(g, loss) is not None else "outputs"
    if split == "logits":
        return logit_hessian_vp(g, loss, a, y_hat, y, w, v)
    jv = activation_jvp(g, v, a, y_hat)
    with np.errstate(invalid="ignore"):  # inf only in masked rows, zeroed by _weighted
        rows = g.vjp(loss_hessian_vp(loss, y_hat, y, jv), a, y_hat)
    return _weighted(rows, w)


# --- backward passes ---------------------------------------------------------------------------

class _Cotangent(Loss):
    """The linear loss L = sum_n <c_n, a_n> of a given cotangent c (passed as the targets y):
    its dL/da is c, so the network's backward pass with it (and an identity g) is the pullback
    J^T c. Only :func:`network_pullback` uses it."""

    name = "cotangent"

    def value(self, y_hat, y):
        return np.zeros(len(y), dtype=y.dtype)  # never read

    def grad(self, y_hat, y):
        return y


def network_pullback(params: dict, cache, c: np.ndarray, arch: Architecture, engine) -> dict:
    """J^T c: the parameters' gradient of sum_n <c_n, a_n> for a cotangent c (N, O) of the logits,
    by the network's own backward pass (:func:`rnngrad.network.backward`)."""
    linear = Architecture(arch.num_layers, arch.bidirectional, arch.f, Identity(), _Cotangent())
    return backward(params, cache, c, None, linear, engine, need=frozenset()).grads


def unit_r_backward(cache, z_dot, h_dot, x_dot, dh, src, W_x, W_h, b_h, V_x, V_h, f, engine,
                    need_dx: bool):
    """The R-backward pass of one unit (module docstring), in its own time.

    cache : its LayerCache;  z_dot, h_dot : (T, B, H) its tangents;  x_dot : tangent of
    its input or None;  dh : (T, B, H) its total dL/dh_t;  src : (T, B, H) R of the part of dL/dh_t
    from outside the unit;  W_x, W_h, b_h and V_x, V_h their direction.
    Returns ({"W_x": R(dW_x), "W_h": R(dW_h), "b_h": R(db_h)}, R(dx) (T, B, D) or None).
    """
    T, B, H = dh.shape
    N = T * B
    z = cache.z
    if z is None and hasattr(f, "second_derivative"):  # a user's f'' may read z, not kept for f'
        z = input_projection(cache.x, W_x) + (cache.h_prev.reshape(N, H) @ W_h.T).reshape(T, B, H) + b_h
    fp = derivative_blocks(f, cache.z, cache.h)
    dz = fp * dh
    c = second_derivative(f, z, cache.h) * z_dot * dh
    rdh = src.copy()
    rdh[:-1] += (dz[1:].reshape(-1, H) @ V_h).reshape(T - 1, B, H)
    rdz = np.empty_like(rdh)
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            rdh[t] += rdz[t + 1] @ W_h
        np.multiply(fp[t], rdh[t], out=rdz[t])
        rdz[t] += c[t]
    rdz_rows, dz_rows = rdz.reshape(N, H), dz.reshape(N, H)
    x_rows = cache.x.reshape(N, -1) if cache.x.ndim == 3 else cache.x.reshape(N)
    r_W_x = input_weight_grad(x_rows, rdz_rows, W_x.shape[1], engine)
    if x_dot is not None:
        r_W_x += dz_rows.T @ x_dot.reshape(N, -1)
    h_prev_dot = np.concatenate([np.zeros((1, B, H), dh.dtype), h_dot[:-1]])  # h0 is held fixed
    r_W_h = rdz_rows.T @ cache.h_prev.reshape(N, H) + dz_rows.T @ h_prev_dot.reshape(N, H)
    grads = {"W_x": r_W_x, "W_h": r_W_h, "b_h": ones(N, dh.dtype) @ rdz_rows}
    rdx = (rdz_rows @ W_x + dz_rows @ V_x).reshape(T, B, -1) if need_dx else None
    return grads, rdx


def _network_r_backward(call: Call, V: dict, tan: NetworkTangents, dh_units: list, da: np.ndarray,
                        rda: np.ndarray) -> dict:
    """H V from the R-forward tangents and the ordinary backward pass's dL/dh (unit time) and da."""
    P, cache, arch = call.params, call.cache, call.arch
    dirs = arch.directions
    T, B, C = cache.h.shape
    N = T * B
    index = None if cache.lengths is None else flip_index(cache.lengths, T)
    out = {"W_y": rda.T @ cache.h.reshape(N, C) + da.T @ tan.out_dot.reshape(N, C),
           "b_y": ones(N, da.dtype) @ rda}
    rdout = (rda @ P["W_y"] + da @ V["W_y"]).reshape(T, B, C)
    layers = {}
    for k in range(arch.num_layers - 1, -1, -1):
        H = cache.layers[k * dirs].h.shape[-1]
        rdinput = None
        for d in range(dirs):
            u = k * dirs + d
            names = layer_param_names(k, d)
            src = rdout if dirs == 1 else (rdout[..., :H] if d == 0 else flip(rdout[..., H:], index))
            W_x, W_h, b_h = (P[n] for n in names)
            grads, rdx = unit_r_backward(cache.layers[u], tan.z_dot[u], tan.h_dot[u], tan.x_dot[u], dh_units[u],
                                         src, W_x, W_h, b_h, V[names[0]], V[names[1]], arch.f, call.engine,
                                         need_dx=k > 0)
            layers.update(zip(names, grads.values()))
            if rdx is not None:
                rdx = rdx if d == 0 else flip(rdx, index)
                rdinput = rdx if rdinput is None else rdinput + rdx
        if k > 0:
            rdout = rdinput if cache.dropout_masks is None else rdinput * cache.dropout_masks[k - 1]
    layers.update(out)
    return layers


def _check_hessian_support(arch: Architecture) -> None:
    """Refuse, before any work, an activation or loss whose second derivatives are unknown."""
    fix = "to use hvp (gnvp needs only first derivatives of g and the Hessian of L)"
    if not _has_second_derivative(arch.f):
        raise TypeError(f"hidden activation {arch.f.name!r} has no second derivative; define "
                        f"second_derivative(z, out) on it (element-wise f''(z)) {fix}")
    if fused_path(arch.g, arch.loss) is not None:
        return  # the canonical pairs' H_a is known in closed form
    if arch.g.elementwise and not _has_second_derivative(arch.g):
        raise TypeError(f"output activation {arch.g.name!r} has no second derivative; define "
                        f"second_derivative(z, out) on it {fix}")
    if not arch.g.elementwise and type(arch.g) is not Softmax:
        raise TypeError(f"output activation {arch.g.name!r} is not element-wise and rnngrad knows the "
                        f"second derivatives of softmax only; use gnvp(split='outputs') instead of hvp")
    if not hasattr(arch.loss, "hessian_vp") and type(arch.loss) not in (MSE, CrossEntropy, BinaryCrossEntropy):
        raise TypeError(f"loss {arch.loss.name!r} has no Hessian; define hessian_vp(y_hat, y, v) on it "
                        f"(H_L(y_hat) v per row) to use hvp or gnvp")


# --- the public entry points -------------------------------------------------------------------

@dataclass
class LossCurvature:
    """The loss's curvature at one point (parameters and data), for many products.

    Built by :func:`curvature_at`, which runs the forward and the backward pass once; each
    :meth:`hvp` then costs an R-forward and an R-backward pass, each :meth:`gnvp` an R-forward
    and a backward pass. The parameters are copied: later changes to ``model.params`` do not
    reach it.

    Attributes
    ----------
    loss : float, L at the point;  grads : dict dL/dP under the keys of ``model.params``
    """

    loss: float
    grads: dict
    call: Call
    shapes: dict
    dh_units: list
    da: np.ndarray

    def hvp(self, v: dict) -> dict:
        """H v: the exact Hessian of L in all parameters times the tree v (keys of model.params)."""
        _check_hessian_support(self.call.arch)
        V = check_tree("v", v, self.shapes, self.da.dtype)
        return _hessian_vector(self.call, V, self.dh_units, self.da)

    def gnvp(self, v: dict, split: str = "auto") -> dict:
        """G v: the Gauss-Newton matrix J^T M J of ``split`` (see :mod:`rnngrad.curvature`) times v."""
        check_choice("split", split, GN_SPLITS)
        V = check_tree("v", v, self.shapes, self.da.dtype)
        return _gauss_newton_vector(self.call, V, split)


def _logit_rows(call: Call):
    O = call.cache.a.shape[-1]
    return call.cache.a.reshape(-1, O), call.cache.y_hat.reshape(-1, O)


def _hessian_vector(call: Call, V: dict, dh_units: list, da: np.ndarray) -> dict:
    arch = call.arch
    tan = network_tangents(call.params, V, call.cache, arch)
    a, y_hat = _logit_rows(call)
    rda = logit_hessian_vp(arch.g, arch.loss, a, y_hat, call.y, call.w, tan.a_dot.reshape(a.shape))
    grads = _network_r_backward(call, V, tan, dh_units, da, rda)
    return {k: grads[k] for k in V}


def _gauss_newton_vector(call: Call, V: dict, split: str) -> dict:
    arch = call.arch
    tan = network_tangents(call.params, V, call.cache, arch)
    a, y_hat = _logit_rows(call)
    m = output_curvature_vp(split, arch.g, arch.loss, a, y_hat, call.y, call.w, tan.a_dot.reshape(a.shape))
    grads = network_pullback(call.params, call.cache, m, arch, call.engine)
    return {k: grads[k] for k in V}


def curvature_at(model, x, y, h0=None, mask=None, reduction: str = "sum", lengths=None, dropout_masks=None,
                 dropout_seed=None, engine=None) -> LossCurvature:
    """The :class:`LossCurvature` of ``model``'s loss at its current parameters on (x, y); data
    arguments as :meth:`rnngrad.RNN.gradients`."""
    call = prepare_call(model, x, y, h0, mask, reduction, lengths, dropout_masks, dropout_seed, engine)
    call.params = {k: p.copy() for k, p in call.params.items()}
    arch, cache = call.arch, call.cache
    res = backward(call.params, cache, call.y, call.w, arch, call.engine, need=frozenset())
    index = None if cache.lengths is None else flip_index(cache.lengths, cache.x.shape[0])
    # Gradients.dh is in natural time; a reverse unit's R-backward runs in its own (flipped) time.
    dh_units = [dh if u % arch.directions == 0 else flip(dh, index) for u, dh in enumerate(res.dh)]
    a, y_hat = _logit_rows(call)
    _, da, _ = output_backward(a, y_hat, call.y, call.w, arch.g, arch.loss, call.engine, want_dy_hat=False)
    return LossCurvature(res.loss, {k: res.grads[k] for k in model.shapes}, call, model.shapes, dh_units, da)


def hvp(model, x, y, v, h0=None, mask=None, reduction: str = "sum", lengths=None, dropout_masks=None,
        dropout_seed=None, engine=None) -> dict:
    """H v: the exact Hessian of the loss in all parameters times v, a dict shaped like
    ``model.params`` (Pearlmutter's R-operator through the recurrence; module docstring).
    Data arguments as :meth:`rnngrad.RNN.gradients`. Returns a dict shaped like ``model.params``."""
    _check_hessian_support(model.architecture)
    check_tree("v", v, model.shapes, model.dtype)  # before the forward and backward passes
    return curvature_at(model, x, y, h0, mask, reduction, lengths, dropout_masks, dropout_seed, engine).hvp(v)


def gnvp(model, x, y, v, h0=None, mask=None, reduction: str = "sum", lengths=None, dropout_masks=None,
         dropout_seed=None, engine=None, split: str = "auto") -> dict:
    """G v = J^T M J v, the Gauss-Newton matrix of the loss times v (a dict shaped like
    ``model.params``); J = da/dP, M the output curvature of ``split`` ("auto": the Hessian of L∘g
    in the logits for the canonical pairs, J_g^T H_L J_g otherwise; both positive semi-definite).
    Data arguments as :meth:`rnngrad.RNN.gradients`. One forward, one R-forward and one backward pass."""
    check_choice("split", split, GN_SPLITS)
    V = check_tree("v", v, model.shapes, model.dtype)
    call = prepare_call(model, x, y, h0, mask, reduction, lengths, dropout_masks, dropout_seed, engine)
    return _gauss_newton_vector(call, V, split)
