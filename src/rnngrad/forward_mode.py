"""Forward mode: the tangent of every state, output and of the loss along one direction (JVPs).

Write v_dot for the directional derivative of a quantity v along a direction (P_dot, x_dot,
h0_dot) of the parameters, the float inputs and the initial states,
v_dot = d/de v(P + e P_dot, x + e x_dot, h0 + e h0_dot) at e = 0 (Pearlmutter's R{v}).
Differentiating seed §2 once, in the row convention of :mod:`rnngrad.layer`:

    z_dot_t     = h_dot_{t-1} W_h^T + c_t,                                          (T, B, H)
    c_t         = h_{t-1} W_h_dot^T + x_t W_x_dot^T + x_dot_t W_x^T + b_h_dot       (T, B, H)
    h_dot_t     = f'(z_t) * z_dot_t,    h_dot_0 = h0_dot                            (T, B, H)
    a_dot_t     = h_dot_t W_y^T + h_t W_y_dot^T + b_y_dot                           (T, B, O)
    y_hat_dot_t = J_g(a_t) a_dot_t                                                  (T, B, O)
    L_dot       = sum_n <dL/da_n, a_dot_n>   (dL/da weighted by the mask / mean, as the head has it)

c_t needs no recursion, so it is a product over all T·B rows before the time loop; the loop
carries only h_dot_{t-1} W_h^T, the same linear recursion as the forward pass with f replaced
by its Jacobian. Stacked levels feed their output tangent (through the same dropout mask) to
the level above as its x_dot; a reverse unit reads it flipped within each sequence's length,
exactly as :func:`rnngrad.network.forward` feeds the states. Padding has zero states, so zero
tangents.

:func:`forward_tangents` returns every tangent (:class:`ForwardTangents`); :func:`jvp` wraps it
for (L, L_dot). :func:`network_tangents` is the pure function underneath, also used by
:mod:`rnngrad.curvature` as the R-forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import Activation, Softmax
from .engines import get_engine
from .head import output_backward
from .layer import LayerCache, derivative_blocks, input_projection
from .network import Architecture, Forward, flip, flip_index, forward, layer_param_names
from .validation import check_h0, as_array, check_finite, check_shape

__all__ = ["ForwardTangents", "NetworkTangents", "forward_tangents", "jvp", "network_tangents",
           "unit_tangent", "activation_jvp", "check_tree", "prepare_call", "Call"]


# --- the pure functions ------------------------------------------------------------------------

def activation_jvp(g: Activation, v: np.ndarray, a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """J_g(a) v for rows v, a, out = g(a) of any leading shape (last axis units).

    Element-wise g: g'(a) * v. Softmax: its Jacobian diag(s) - s s^T is symmetric, so J v is
    its VJP, s * (v - <v, s>). Another non-element-wise g must define ``jvp(v, a, out)``.
    """
    if g.elementwise:
        return v * g.derivative(a, out)
    if type(g) is Softmax:
        return g.vjp(v, a, out)
    if hasattr(g, "jvp"):
        return np.asarray(g.jvp(v, a, out), dtype=out.dtype)
    raise TypeError(f"output activation {g.name!r} is not element-wise and defines no jvp(v, a, out) "
                    f"(its Jacobian times v); add that method to use forward mode and curvature products")


def unit_tangent(cache: LayerCache, x_dot: np.ndarray | None, h0_dot: np.ndarray | None, W_x: np.ndarray,
                 W_h: np.ndarray, W_x_dot: np.ndarray, W_h_dot: np.ndarray, b_h_dot: np.ndarray,
                 f: Activation) -> tuple[np.ndarray, np.ndarray]:
    """(z_dot, h_dot), each (T, B, H), of one unit (a layer in one direction, in its own time).

    cache : the unit's :class:`rnngrad.layer.LayerCache` (x (T, B, D) or (T, B) tokens)
    x_dot : (T, B, D) tangent of the unit's input, or None (tokens, or a constant input)
    h0_dot : (B, H) or None (zero);  W_x (H, D), W_h (H, H) and their tangents, b_h_dot (H,)
    """
    T, B, H = cache.h.shape
    # c_t, every step at once; input_projection is the row lookup of W_x_dot for tokens.
    z_dot = input_projection(cache.x, W_x_dot)
    if x_dot is not None:
        z_dot += input_projection(x_dot, W_x)
    z_dot += (cache.h_prev.reshape(T * B, H) @ W_h_dot.T).reshape(T, B, H)
    z_dot += b_h_dot
    fp = derivative_blocks(f, cache.z, cache.h)
    h_dot = np.empty_like(z_dot)
    W_hT = np.ascontiguousarray(W_h.T)
    prev = h0_dot
    for t in range(T):
        if prev is not None:
            z_dot[t] += prev @ W_hT
        np.multiply(fp[t], z_dot[t], out=h_dot[t])
        prev = h_dot[t]
    return z_dot, h_dot


@dataclass
class NetworkTangents:
    """What :func:`network_tangents` computed (time-major, the network's own layout).

    Attributes
    ----------
    z_dot, h_dot : one (T, B, H) array per unit, layer-major; a reverse unit's in flipped time
    x_dot : one per unit, the tangent of the input it read (flipped for a reverse unit), or None
    out_dot : (T, B, C) tangent of the top level's output, the h the head reads
    a_dot, y_hat_dot : (T, B, O)
    h_last_dot : (U, B, H) tangent of each unit's final state
    """

    z_dot: list
    h_dot: list
    x_dot: list
    out_dot: np.ndarray
    a_dot: np.ndarray
    y_hat_dot: np.ndarray
    h_last_dot: np.ndarray


def network_tangents(params: dict, dot: dict, cache: Forward, arch: Architecture,
                     x_dot: np.ndarray | None = None, h0_dot: np.ndarray | None = None) -> NetworkTangents:
    """The tangents of the whole forward pass (module docstring) along ``dot``.

    params, dot : trees of the model's keys (dot the parameters' tangent); cache : the
    :class:`rnngrad.network.Forward` of ``params`` (time-major); x_dot (T, B, D) or None;
    h0_dot (U, B, H) or None. Inputs are trusted and share the cache's dtype.
    """
    dirs = arch.directions
    T, B = cache.x.shape[:2]
    lengths = cache.lengths
    index = None if lengths is None else flip_index(lengths, T)
    padding = None if lengths is None else np.arange(T)[:, None] >= lengths[None, :]
    z_dots, h_dots, x_dots, finals = [], [], [], []
    inp_dot = x_dot
    for k in range(arch.num_layers):
        level = []
        for d in range(dirs):
            u = k * dirs + d
            n_x, n_h, n_b = layer_param_names(k, d)
            unit_x_dot = inp_dot if d == 0 or inp_dot is None else flip(inp_dot, index)
            z_dot, h_dot = unit_tangent(cache.layers[u], unit_x_dot, None if h0_dot is None else h0_dot[u],
                                        params[n_x], params[n_h], dot[n_x], dot[n_h], dot[n_b], arch.f)
            if padding is not None:
                h_dot[padding] = 0  # padding states are zeros, constants (see network.forward)
            z_dots.append(z_dot)
            h_dots.append(h_dot)
            x_dots.append(unit_x_dot)
            finals.append(h_dot[-1] if lengths is None else h_dot[lengths - 1, np.arange(B)])
            level.append(h_dot)
        out = level[0].copy() if dirs == 1 else np.concatenate([level[0], flip(level[1], index)], axis=-1)
        if cache.dropout_masks is not None and k < arch.num_layers - 1:
            out *= cache.dropout_masks[k]
        inp_dot = out
    TB, C = T * B, inp_dot.shape[-1]
    a_dot = inp_dot.reshape(TB, C) @ params["W_y"].T + cache.h.reshape(TB, C) @ dot["W_y"].T + dot["b_y"]
    a_dot = a_dot.reshape(cache.a.shape)
    y_hat_dot = activation_jvp(arch.g, a_dot, cache.a, cache.y_hat)
    return NetworkTangents(z_dots, h_dots, x_dots, inp_dot, a_dot, y_hat_dot, np.stack(finals))


def loss_tangent(da: np.ndarray, a_dot: np.ndarray) -> float:
    """L_dot = sum_n <dL/da_n, a_dot_n>, for da (N, O) from :func:`rnngrad.head.output_backward`
    (already weighted: masked rows are exactly 0) and a_dot (N, O)."""
    return float(np.vdot(da, a_dot))


# --- the boundary ----------------------------------------------------------------------------

def check_tree(name: str, tree, shapes: dict, dtype: np.dtype) -> dict:
    """``tree`` as a dict with exactly the keys of ``shapes``, each an array of its shape, finite,
    in ``dtype`` (a tree is structured like ``model.params``)."""
    if not isinstance(tree, dict):
        raise TypeError(f"{name} must be a dict with the keys and shapes of model.params; "
                        f"got {type(tree).__name__}")
    missing = [k for k in shapes if k not in tree]
    unknown = [k for k in tree if k not in shapes]
    if missing or unknown:
        raise ValueError(f"{name} must have exactly the keys of model.params {list(shapes)}; "
                         f"missing {missing}, unknown {unknown}")
    out = {}
    for key, shape in shapes.items():
        arr = as_array(f"{name}[{key!r}]", tree[key], dtype)
        check_shape(f"{name}[{key!r}]", arr, shape, "as model.params")
        check_finite(f"{name}[{key!r}]", arr)
        out[key] = arr
    return out


@dataclass
class Call:
    """A validated call (time-major): what every forward-mode and curvature entry point needs."""

    params: dict
    cache: Forward
    y: np.ndarray | None
    w: np.ndarray | None
    arch: Architecture
    engine: object
    single: bool  # states shaped (B, H) at the boundary, as h0


def prepare_call(model, x, y, h0=None, mask=None, reduction="sum", lengths=None, dropout_masks=None,
                 dropout_seed=None, engine=None) -> Call:
    """Validate the data as :meth:`rnngrad.RNN.gradients` does (the model's own checks), then run
    the forward pass. ``y`` may be None (no loss)."""
    engine = get_engine(engine)
    if y is None:
        params, xs, h0s, _, lengths, masks = model._prepare(x, h0, mask, dropout_seed, dropout_masks, lengths)
        ys = w = None
    else:
        params, xs, h0s, ys, w, lengths, masks = model._prepare_loss(x, y, h0, mask, reduction, None,
                                                                    dropout_seed, dropout_masks, lengths)
    arch = model.architecture
    cache = forward(params, xs, h0s, arch, engine, lengths, masks)
    return Call(params, cache, ys, w, arch, engine, model._single_state(h0))


def _check_x_tangent(model, x_tangent, cache: Forward) -> np.ndarray | None:
    if x_tangent is None:
        return None
    if cache.x.ndim == 2:
        raise TypeError("x_tangent is only for float inputs (T, B, D); x holds token indices, which are "
                        "discrete and have no tangent: pass x_tangent=None")
    arr = as_array("x_tangent", x_tangent, model.dtype)
    T, B, D = cache.x.shape
    if model.batch_first:
        check_shape("x_tangent", arr, (B, T, D), "(B, T, D) as x")
        arr = arr.swapaxes(0, 1)
    else:
        check_shape("x_tangent", arr, (T, B, D), "(T, B, D) as x")
    check_finite("x_tangent", arr)
    return arr


def _check_h0_tangent(model, h0_tangent, cache: Forward) -> np.ndarray | None:
    if h0_tangent is None:
        return None
    U, B, H = cache.h0.shape
    return check_h0(h0_tangent, B, H, model.dtype, units=U, name="h0_tangent")


@dataclass
class ForwardTangents:
    """Result of :func:`forward_tangents`: values and their tangents, shaped as
    :meth:`rnngrad.RNN.gradients` shapes the corresponding gradients ((B, T, ...) sequences with
    ``batch_first``).

    Attributes
    ----------
    loss, loss_dot : L and its directional derivative (floats), None when called without y
    y_hat, y_hat_dot : (T, B, O) outputs and their tangent;  a_dot : (T, B, O) of the logits
    h_dot : (T, B, C) tangent of the top level's states, the h the head reads (``forward.h``)
    states_dot : tangent of every unit's states: (T, B, H) for one layer and one direction,
        else (U, T, B, H), layer-major, direction-minor, in natural time (as ``Gradients.dh``)
    h_last_dot : tangent of ``h_last``, shaped as h0
    forward : the :class:`rnngrad.network.Forward` of the call
    """

    loss: float | None
    loss_dot: float | None
    y_hat: np.ndarray
    y_hat_dot: np.ndarray
    a_dot: np.ndarray
    h_dot: np.ndarray
    states_dot: np.ndarray
    h_last_dot: np.ndarray
    forward: Forward


def forward_tangents(model, x, y=None, tangents=None, h0=None, mask=None, reduction: str = "sum",
                     lengths=None, x_tangent=None, h0_tangent=None, dropout_masks=None, dropout_seed=None,
                     engine=None) -> ForwardTangents:
    """Every tangent of a forward pass along (tangents, x_tangent, h0_tangent).

    Parameters
    ----------
    model : :class:`rnngrad.RNN`
    x, y, h0, mask, reduction, lengths, dropout_masks, dropout_seed, engine : as
        :meth:`rnngrad.RNN.gradients`; y may be None (then no loss and no loss_dot)
    tangents : dict with the keys and shapes of ``model.params``: the parameters' direction;
        None means zero
    x_tangent : direction of the inputs, shaped as x (float inputs only); None means zero
    h0_tangent : direction of the initial states, shaped as h0 ((B, H) or (U, B, H)); None: zero

    Returns
    -------
    :class:`ForwardTangents`
    """
    call = prepare_call(model, x, y, h0, mask, reduction, lengths, dropout_masks, dropout_seed, engine)
    cache, arch = call.cache, call.arch
    shapes = model.shapes
    dot = ({k: np.zeros(s, dtype=model.dtype) for k, s in shapes.items()} if tangents is None
           else check_tree("tangents", tangents, shapes, model.dtype))
    x_dot = _check_x_tangent(model, x_tangent, cache)
    h0_dot = _check_h0_tangent(model, h0_tangent, cache)
    tan = network_tangents(call.params, dot, cache, arch, x_dot, h0_dot)
    loss = loss_dot = None
    if call.y is not None:
        O = cache.a.shape[-1]
        loss, da, _ = output_backward(cache.a.reshape(-1, O), cache.y_hat.reshape(-1, O), call.y, call.w,
                                      arch.g, arch.loss, call.engine, want_dy_hat=False)
        loss_dot = loss_tangent(da, tan.a_dot.reshape(-1, O))
    index = None if cache.lengths is None else flip_index(cache.lengths, cache.x.shape[0])
    states = np.stack([h if u % arch.directions == 0 else flip(h, index) for u, h in enumerate(tan.h_dot)])
    h_last_dot = tan.h_last_dot
    if arch.units == 1:
        states = states[0]
    if call.single:
        h_last_dot = h_last_dot[0]
    sequences = [cache.y_hat, tan.y_hat_dot, tan.a_dot, tan.out_dot]
    if model.batch_first:
        sequences = [s.swapaxes(0, 1) for s in sequences]
        states = states.swapaxes(-3, -2)
    model._public(cache, call.single)
    return ForwardTangents(loss, loss_dot, *sequences, states, h_last_dot, cache)


def jvp(model, x, y, tangents, h0=None, mask=None, reduction: str = "sum", lengths=None, x_tangent=None,
        h0_tangent=None, dropout_masks=None, dropout_seed=None, engine=None) -> tuple[float, float]:
    """(L, L_dot): the loss and its directional derivative along (tangents, x_tangent, h0_tangent).

    L_dot = <dL/dP, tangents> + <dL/dx, x_tangent> + <dL/dh0, h0_tangent>, computed in one forward
    pass (no backward pass). Arguments as :func:`forward_tangents`; ``tangents`` is a dict shaped
    like ``model.params`` (or None, zero).
    """
    if y is None:
        raise TypeError("jvp needs the targets y (the loss's); for the tangents of the outputs and "
                        "states alone call forward_tangents(model, x, tangents=...)")
    res = forward_tangents(model, x, y, tangents, h0, mask, reduction, lengths, x_tangent, h0_tangent,
                           dropout_masks, dropout_seed, engine)
    return res.loss, res.loss_dot
