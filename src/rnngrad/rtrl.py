"""Gradients carried forward in time: real-time recurrent learning (RTRL, Williams & Zipser 1989)
and its unbiased rank-one approximation UORO (Tallec & Ollivier 2017).

Backprop through time (:meth:`rnngrad.RNN.gradients`) runs the seed's §3B backwards from t = T.
RTRL gets the same dL/dtheta in one forward sweep, by carrying the sensitivity of the state to
every recurrent parameter, P_t = dh_t/dtheta (B, H, N), beside the state (row convention as in
:mod:`rnngrad.layer`: h_t is a row, theta flattened to N columns):

    z_t  = W_h h_{t-1} + W_x u_t + b_h,   h_t = f(z_t)          seed §2B (u_t: x_t, or the layer below)
    P_t  = diag(f'(z_t)) (W_h P_{t-1} + W_x Pu_t + E_t)          Pu_t = du_t/dtheta (0 for x_t)
    E_t  = dz_t/dtheta with h_{t-1}, u_t held fixed: for W_h[p, q] it is e_p h_{t-1}[q],
           for W_x[p, q] it is e_p u_t[q], for b_h[p] it is e_p
    dL/dtheta += (dL_t/dh_t) P_t,   dL_t/dh_t = da_t W_y           seed §3B's direct term only
    dL/dW_y   += da_t^T h_t,   dL/db_y += da_t                      seed §3A, exact at once

E_t is never formed densely: in the (B, H, H, D) view of the W_x columns it is u_t on the diagonal
i = p, so it is added in place on that diagonal (:func:`add_explicit_term`). The cost per step is
the product W_h P_{t-1}: O(B H^2 N) time with N ~ H^2 + H D per layer, O(B H N) memory, against
BPTT's O(B H^2) time per step and O(T B H) memory. Stacked layers are the same chain: layer k's
columns start with all of layer k-1's (its input u_t = h^{k-1}_t brings W_x^k Pu_t with
Pu_t = P^{k-1}_t), then its own. A bidirectional network is refused: its reverse direction reads
x_t..x_T, the future of a forward sweep.

h_0 is handled as one more parameter: columns with P_0 = I give dL/dh_0. The total dL/dh_t of
the seed's §3B (and dL/dx_t, which follows from it) is a backward quantity: a forward sweep has
it only by carrying a sensitivity to a perturbation of every state, h_t <- h_t + eps_t, i.e. T·H
more columns per layer (O(T^2) time). ``need=("dh", "dx")`` does exactly that; by default they
are None.

UORO keeps, per sequence, a rank-one estimate dh_t/dtheta ~ s_t theta_t^T (s_t over all layers'
states, theta_t over all recurrent parameters) whose expectation over random signs nu_t is exact:

    s_t     = rho0 J_t s_{t-1} + rho1 nu_t              J_t = dh_t/dh_{t-1} (a forward tangent)
    theta_t = theta_{t-1} / rho0 + (nu_t^T dF/dtheta) / rho1    (one step's vector-Jacobian product)
    dL/dtheta ~ sum_t (dL_t/dh_t . s_t) theta_t,   rho0, rho1 balancing the two factors' norms.

Map: :func:`layers_step` (seed §2B, one step of every layer, by :func:`rnngrad.layer.layer_forward`),
:func:`sensitivity_update` and :func:`add_explicit_term` (P_t), :func:`rtrl_step` / :class:`RTRLState`
(the online API), :func:`rtrl_gradients` (a whole batch), :func:`uoro_gradients`. The head is
:func:`rnngrad.head.head_forward` / :func:`rnngrad.head.head_backward` on one step's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .engines import get_engine
from .head import head_backward, head_forward
from .layer import LayerCache, derivative_blocks, layer_forward
from .network import Forward, Gradients, layer_param_names
from .validation import as_array, check_h0, check_inputs, check_need, check_positive_int, check_seed, check_targets

__all__ = ["rtrl_gradients", "rtrl_init", "rtrl_step", "RTRLState", "RTRLStep", "uoro_gradients",
           "sensitivity_update", "add_explicit_term", "layers_step", "RTRL_OPTIONAL_GRADS", "DEFAULT_MAX_BYTES"]

#: The state gradients rtrl_gradients may compute (``need``); "dh" and "dx" cost O(T^2) (see above).
RTRL_OPTIONAL_GRADS = ("dh", "dx", "dh0", "dy_hat")
_DEFAULT_NEED = frozenset(("dh0", "dy_hat"))
#: Refuse sensitivities larger than this (bytes) unless ``max_bytes`` says otherwise: 1 GiB.
DEFAULT_MAX_BYTES = 1 << 30
# Small (B, H) steps: the NumPy engine (a compiled engine's dispatch would cost more than the step).
_ENGINE = get_engine("numpy")
_EPS = 1e-7  # UORO's guard in rho0, rho1 against 0 / 0 (Tallec & Ollivier's epsilon)


# --- the column layout of theta -------------------------------------------------------------------
class Block(NamedTuple):
    """Layer k's own columns in the flattened theta: W_x (H·D_k, row-major), W_h (H·H), b_h (H),
    then optionally h_0 (H) and eps_1..eps_T (T·H); ``end`` is the end of every column of layers <= k."""

    W_x: slice
    W_h: slice
    b_h: slice
    h0: slice | None
    eps: slice | None
    end: int


def layout(widths, H: int, with_h0: bool, eps_steps: int = 0) -> tuple[Block, ...]:
    """The :class:`Block` of each layer, for input widths D_k (``widths``): layer k's columns follow
    those of layers < k, so layer k - 1's P is the first columns of layer k's."""
    blocks, n = [], 0
    for D in widths:
        sizes = (H * D, H * H, H, H if with_h0 else 0, eps_steps * H)
        edges = np.cumsum((n,) + sizes).tolist()
        blocks.append(Block(*(slice(a, b) if b > a else None for a, b in zip(edges, edges[1:])), edges[-1]))
        n = edges[-1]
    return tuple(blocks)


def _widths(model) -> list[int]:
    return [model.input_size] + [model.hidden_size] * (model.num_layers - 1)


def _unflatten(model, g: np.ndarray, blocks) -> dict:
    """The recurrent parameters' gradients from a flat (N,) vector, under model.params' names."""
    H = model.hidden_size
    out = {}
    for k, (D, b) in enumerate(zip(_widths(model), blocks)):
        n_x, n_h, n_b = layer_param_names(k, 0)
        out.update({n_x: g[b.W_x].reshape(H, D), n_h: g[b.W_h].reshape(H, H), n_b: g[b.b_h]})
    return out


# --- one step ----------------------------------------------------------------------------------
class Unit(NamedTuple):
    """One layer at one step: input u_t (B, D) or token indices (B,), h_{t-1}, h_t, z_t (or None
    when f' needs only h), f'(z_t), all (B, H)."""

    u: np.ndarray
    h_prev: np.ndarray
    h: np.ndarray
    z: np.ndarray | None
    d: np.ndarray


def layers_step(params: dict, f, h: np.ndarray, x_t: np.ndarray, valid: np.ndarray | None) -> list[Unit]:
    """Seed §2B for one step of every layer, from the states h (L, B, H) (not modified).

    ``valid`` (B,) bool or None: where False the sequence is in padding, and the layer above
    reads 0 there (as :func:`rnngrad.network.forward` gives it).
    """
    units, u = [], x_t
    for k in range(h.shape[0]):
        n_x, n_h, n_b = layer_param_names(k, 0)
        c = layer_forward(u[None], h[k], params[n_x], params[n_h], params[n_b], f, _ENGINE)
        d = derivative_blocks(f, c.z, c.h)[0]
        units.append(Unit(u, c.h_prev[0], c.h[0], None if c.z is None else c.z[0], d))
        u = c.h[0] if valid is None else c.h[0] * valid[:, None]
    return units


def add_explicit_term(out: np.ndarray, block: Block, h_prev: np.ndarray, u: np.ndarray) -> None:
    """out += E_t = dz_t/d(W_x, W_h, b_h) with h_{t-1} and u_t fixed, in place on its diagonal.

    out (B, H, N). dz_t[i]/dW_h[p, q] = [i = p] h_{t-1}[q]: in the (B, H, H, H) view of the W_h
    columns that is h_{t-1} on the diagonal (i, i, :), and likewise u_t for W_x and 1 for b_h;
    nothing else is touched (the Kronecker form e_i (x) h_{t-1}^T is never built). Token inputs
    u (B,): the one-hot u_t has a single 1, at column u[b].
    """
    B, H = h_prev.shape
    # einsum("biiq->biq") is a writeable view of the diagonal i = p (no copy, no index arrays).
    np.einsum("biiq->biq", out[..., block.W_h].reshape(B, H, H, H))[...] += h_prev[:, None, :]
    np.einsum("bii->bi", out[..., block.b_h].reshape(B, H, H))[...] += 1
    W_x = np.einsum("biiq->biq", out[..., block.W_x].reshape(B, H, H, -1))  # (B, H, D)
    if u.ndim == 1:
        W_x[np.arange(B), :, u] += 1
    else:
        W_x += u[:, None, :]


def sensitivity_update(P_new: np.ndarray, P: np.ndarray, P_in: np.ndarray | None, unit: Unit,
                       W_x: np.ndarray, W_h: np.ndarray, block: Block) -> None:
    """P_t = diag(f'(z_t)) (W_h P_{t-1} + W_x Pu_t + E_t), written into P_new.

    P, P_new (B, H, N_k), distinct arrays; P_in (B, D_k, N_{k-1}) = du_t/dtheta, the layer below's
    P_t (its columns are the first N_{k-1} of this layer's), or None for layer 0 (x_t is data).
    """
    np.matmul(W_h, P, out=P_new)  # (H, H) @ (B, H, N): one GEMM per sequence
    if P_in is not None:
        P_new[..., :P_in.shape[-1]] += np.matmul(W_x, P_in)
    add_explicit_term(P_new, block, unit.h_prev, unit.u)
    P_new *= unit.d[..., None]


@dataclass
class RTRLState:
    """What RTRL carries from one step to the next (build it with :func:`rtrl_init`).

    Attributes
    ----------
    h : (L, B, H) the states h_t of every layer
    P : L arrays (B, H, N_k), P_t = dh_t/dtheta of layer k over the columns of layers <= k
    blocks : the column layout (:func:`layout`)
    spare : L arrays shaped as P, the next step's output (swapped with P after each step)
    signature : (D, H, L, dtype) of the model the state was made for
    """

    h: np.ndarray
    P: list
    blocks: tuple
    spare: list = field(repr=False)
    signature: tuple = ()


class RTRLStep(NamedTuple):
    """One step's contribution (:func:`rtrl_step`): ``loss`` L_t (float), ``grads`` dL_t/dtheta
    under the keys of model.params (RTRL's: through P_t), ``y_hat`` (B, O)."""

    loss: float
    grads: dict
    y_hat: np.ndarray


def _check_unidirectional(model, who: str) -> None:
    if model.bidirectional:
        raise ValueError(f"{who} needs a unidirectional model: the reverse direction of a bidirectional "
                         f"network reads x_t..x_T, the future of a forward-in-time sweep; use "
                         f"model.gradients (BPTT) for it")


def _new_state(model, params: dict, h0: np.ndarray, blocks, max_bytes: int) -> RTRLState:
    B, H = h0.shape[1:]
    itemsize = np.dtype(model.dtype).itemsize
    need = 2 * itemsize * B * H * sum(b.end for b in blocks)  # P and its spare
    if need > max_bytes:
        raise ValueError(
            f"RTRL's sensitivities dh_t/dtheta need {need / 2**20:.1f} MiB (B={B}, H={H}, "
            f"{model.num_layers} layer(s): O(B H^3) each), above max_bytes={max_bytes}; use model.gradients "
            f"(BPTT, O(T B H)) or uoro_gradients (O(B H^2)), a smaller batch or H, or raise max_bytes")
    P = [np.zeros((B, H, b.end), dtype=model.dtype) for b in blocks]
    i = np.arange(H)
    for k, b in enumerate(blocks):
        if b.h0 is not None:
            P[k][:, i, b.h0.start + i] = 1  # dh_0/dh_0 = I
    return RTRLState(h0.copy(), P, blocks, [np.empty_like(p) for p in P],
                     (model.input_size, H, model.num_layers, np.dtype(model.dtype)))


def _advance(params: dict, f, state: RTRLState, x_t: np.ndarray, valid: np.ndarray | None,
             t: int | None = None) -> list[Unit]:
    """One forward step of the states and sensitivities, in place on ``state``; returns the units.

    Where ``valid`` is False (padding) h stays as it was, to end as h_last. P there is left to run
    on: padding comes after a sequence's last valid step and has no loss (weight 0), so nothing
    ever reads it. ``t`` marks the step whose eps_t columns (when the layout has them) start at I.
    """
    units = layers_step(params, f, state.h, x_t, valid)
    H = state.h.shape[-1]
    i = np.arange(H)
    for k, (unit, b) in enumerate(zip(units, state.blocks)):
        n_x, n_h, _ = layer_param_names(k, 0)
        P_new = state.spare[k]
        sensitivity_update(P_new, state.P[k], None if k == 0 else state.P[k - 1], unit, params[n_x],
                           params[n_h], b)
        if b.eps is not None:
            P_new[:, i, b.eps.start + t * H + i] = 1  # h_t <- h_t + eps_t: dh_t/deps_t = I
        state.P[k], state.spare[k] = P_new, state.P[k]
        state.h[k] = unit.h if valid is None else np.where(valid[:, None], unit.h, state.h[k])
    return units


def _head_step(params: dict, model, top: np.ndarray, y_t, w_t, want_dy_hat: bool):
    """The loss at one step and the head's gradients (seed §3A), for the top states ``top`` (B, H):
    (L_t, {"W_y", "b_y"}, dL_t/dh_t (B, H) (§3B's direct term), a (B, O), y_hat (B, O),
    dL/dy_hat (B, O) or None)."""
    a, y_hat = head_forward(top[None], params["W_y"], params["b_y"], model.g, _ENGINE)
    L, head_grads, dh, dy_hat = head_backward(top[None], a, y_hat, y_t, w_t, params["W_y"], model.g,
                                              model.loss_fn, _ENGINE, want_dy_hat=want_dy_hat)
    return L, head_grads, dh[0], a[0], y_hat[0], (None if dy_hat is None else dy_hat[0])


def _through_P(dh: np.ndarray, P: np.ndarray) -> np.ndarray:
    """(dL_t/dh_t) P_t per sequence: (B, N) from dh (B, H) and P (B, H, N)."""
    return np.matmul(dh[:, None, :], P)[:, 0, :]


# --- the online API ---------------------------------------------------------------------------
def rtrl_init(model, batch_size: int, h0=None, max_bytes: int = DEFAULT_MAX_BYTES) -> RTRLState:
    """A fresh :class:`RTRLState` for ``batch_size`` parallel streams: h = h0 (zeros if None;
    (L, B, H), or (B, H) for one layer) and P = 0. ValueError for a bidirectional model, or when
    P would exceed ``max_bytes``."""
    _check_unidirectional(model, "rtrl_init")
    B = check_positive_int("batch_size", batch_size)
    h0 = check_h0(h0, B, model.hidden_size, model.dtype, units=model.num_layers)
    blocks = layout(_widths(model), model.hidden_size, with_h0=False)
    return _new_state(model, model.checked_params(), h0, blocks, max_bytes)


def rtrl_step(model, state: RTRLState, x_t, y_t, weight=None) -> RTRLStep:
    """Consume one time step of every stream: advance ``state`` (in place) and return this step's
    loss and gradient contribution.

    Parameters
    ----------
    model : the unidirectional :class:`rnngrad.RNN`; its current ``params`` are read at every
        call, so an optimizer may update them between calls
    state : from :func:`rtrl_init` for this model; h and P advance to step t
    x_t : (B, D) floats, or (B,) integer token indices
    y_t : (B, O) targets, or (B,) class indices (cross_entropy with softmax)
    weight : (B,) non-negative loss weights (0: no loss at this step for that stream), optional

    Returns
    -------
    :class:`RTRLStep`: ``loss`` L_t = sum_b weight_b L_t(y_hat_tb, y_tb) and ``grads``
    dL_t/dtheta = (dL_t/dh_t) P_t (exact for the parameters the stream was run with), plus the
    head's exact dL_t/dW_y, dL_t/db_y. Summed over steps 1..t with unchanged parameters they are
    exactly dL_{1..t}/dtheta (what model.gradients returns over those steps, with h0 = the
    state's start).

    Training on a stream: sum ``grads`` over k steps, update the parameters, go on with the same
    state. RTRL then keeps P, computed under the old parameters (Williams & Zipser's real-time
    approximation: with a small learning rate the error is small); to drop it, make a new state
    from ``state.h``: ``rtrl_init(model, B, h0=state.h)``.
    """
    if not isinstance(state, RTRLState):
        raise TypeError(f"state must be an rnngrad.RTRLState from rtrl_init; got {type(state).__name__}")
    B = state.h.shape[1]
    signature = (model.input_size, model.hidden_size, model.num_layers, np.dtype(model.dtype))
    if state.signature != signature:
        raise ValueError(f"state was made for a model with (input_size, hidden_size, num_layers, dtype) = "
                         f"{state.signature}, not {signature}; make one with rtrl_init(model, batch_size)")
    x = as_array("x_t", x_t)
    if x.shape[:1] != (B,) or x.ndim not in (1, 2) or (x.ndim == 1 and x.dtype.kind not in "iu"):
        raise ValueError(f"x_t must have shape (B, D) = ({B}, {model.input_size}) or (B,) = ({B},) token "
                         f"indices, one step of each stream; got shape {x.shape}")
    x = check_inputs(x[None], model.input_size, model.dtype)[0]
    w = None
    if weight is not None:
        w = as_array("weight", weight, model.dtype)
        if w.shape != (B,) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"weight must be {B} finite non-negative numbers (B,), one per stream; "
                             f"got shape {w.shape}")
    y = as_array("y_t", y_t)
    y = check_targets(y[None], model.loss_fn, 1, B, model.output_size, model.dtype,
                      None if w is None else (w != 0)[None])
    params = model.checked_params()
    _advance(params, model.f, state, x, None)
    L, head_grads, dh, _, y_hat, _ = _head_step(params, model, state.h[-1], y, w, False)
    grads = _unflatten(model, _through_P(dh, state.P[-1]).sum(axis=0), state.blocks)
    grads.update(head_grads)
    return RTRLStep(L, {k: grads[k] for k in model.params}, y_hat)


# --- a whole batch ----------------------------------------------------------------------------
class _Records:
    """The forward pass's arrays, kept step by step to return the same :class:`Forward` cache as
    :func:`rnngrad.network.forward` (every layer's states, z where f' needs it, a, y_hat)."""

    def __init__(self, model, x: np.ndarray, h0: np.ndarray, want_dy_hat: bool):
        T, B = x.shape[:2]
        H, O, dtype = model.hidden_size, model.output_size, model.dtype
        self.states = [np.empty((T + 1, B, H), dtype=dtype) for _ in range(model.num_layers)]
        for k, s in enumerate(self.states):
            s[0] = h0[k]
        self.z = [np.empty((T, B, H), dtype=dtype) if model.f.derivative_needs_input else None
                  for _ in range(model.num_layers)]
        self.a, self.y_hat = np.empty((T, B, O), dtype=dtype), np.empty((T, B, O), dtype=dtype)
        self.dy_hat = np.empty((T, B, O), dtype=dtype) if want_dy_hat else None

    def keep(self, t: int, units: list[Unit], valid, a, y_hat, dy_hat) -> None:
        for k, unit in enumerate(units):
            # Padding is zero, as network.forward leaves it.
            self.states[k][t + 1] = unit.h if valid is None else unit.h * valid[:, None]
            if self.z[k] is not None:
                self.z[k][t] = unit.z
        self.a[t], self.y_hat[t] = a, y_hat
        if dy_hat is not None:
            self.dy_hat[t] = dy_hat

    def forward(self, x, h0, h_last, lengths) -> Forward:
        caches, inp = [], x
        for s, z in zip(self.states, self.z):
            caches.append(LayerCache(inp, s[0], s[1:], z, s[:-1]))
            inp = s[1:]
        return Forward(x, h0, inp, self.a, self.y_hat, h_last, caches, None, lengths)


def _prepare(model, who, x, y, h0, mask, reduction, lengths):
    _check_unidirectional(model, who)
    params, xs, h0s, ys, w, lengths, _ = model._prepare_loss(x, y, h0, mask, reduction, None, None, None,
                                                             lengths)
    B = xs.shape[1]
    rows = (lambda a, t: a[t * B:(t + 1) * B])  # step t's rows of the (T·B, ...) targets and weights
    valid = (lambda t: None) if lengths is None else (lambda t: t < lengths)
    return params, xs, h0s, ys, w, lengths, rows, valid


def _result(model, h0_given, loss, grads, dh, dx, dh0, rec: _Records, xs, h0s, h_last, lengths) -> Gradients:
    """The :class:`Gradients` shaped as :meth:`rnngrad.RNN.gradients` shapes it."""
    single = model._single_state(h0_given)
    fwd = model._public(rec.forward(xs, h0s, h_last, lengths), single)
    if dh is not None and model.num_layers == 1:
        dh = dh[0]
    if dh0 is not None and single:
        dh0 = dh0[0]
    dy_hat = rec.dy_hat
    if model.batch_first:
        dh = None if dh is None else dh.swapaxes(-3, -2)
        dy_hat, dx = (None if a is None else a.swapaxes(0, 1) for a in (dy_hat, dx))
    return Gradients(loss, {k: grads[k] for k in model.params}, dh, dy_hat, dx, dh0, fwd.h_last, fwd)


def rtrl_gradients(model, x, y, h0=None, mask=None, reduction: str = "sum", lengths=None, need=None,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> Gradients:
    """The loss and its exact gradients by real-time recurrent learning: one sweep forward in time.

    Arguments as :meth:`rnngrad.RNN.gradients` (x, y, h0, mask, reduction, lengths, batch_first);
    no dropout (the evaluation network), no engine choice (NumPy).

    Parameters
    ----------
    need : names from ``("dh", "dx", "dh0", "dy_hat")``, optional; default ``("dh0", "dy_hat")``.
        "dh0": dL/dh_0 from sensitivities to h_0 (H more columns per layer).
        "dh", "dx": the total dL/dh_t of every layer and dL/dx_t (float inputs), from sensitivities
        to a perturbation of every state (T·H more columns per layer: O(T^2 B H^3) time) —
        backward quantities that a forward sweep can only get this way.
    max_bytes : refuse (ValueError) if the sensitivities P would need more memory than this.

    Returns
    -------
    :class:`rnngrad.Gradients`, as model.gradients: ``loss``; ``grads`` under the keys of
    model.params (exact: equal to BPTT's to rounding); ``dy_hat`` (T, B, O) (local to each step);
    ``dh0`` shaped as h0; ``dh`` ((T, B, H), or (L, T, B, H)) and ``dx`` (T, B, D) only when asked
    for, else None (dx is None for token inputs, as in model.gradients); ``h_last``; ``forward``,
    the same cache as model.forward's (every layer's states; z at padding steps may differ, where
    no gradient reads it).

    ValueError for a bidirectional model (its reverse direction needs the future).
    """
    need = _DEFAULT_NEED if need is None else check_need(need, RTRL_OPTIONAL_GRADS)
    params, xs, h0s, ys, w, lengths, rows, valid = _prepare(model, "rtrl_gradients", x, y, h0, mask,
                                                            reduction, lengths)
    T, B = xs.shape[:2]
    H = model.hidden_size
    state_grads = bool(need & {"dh", "dx"})
    blocks = layout(_widths(model), H, with_h0="dh0" in need or state_grads, eps_steps=T if state_grads else 0)
    state = _new_state(model, params, h0s, blocks, max_bytes)
    rec = _Records(model, xs, h0s, "dy_hat" in need)
    total, G = 0.0, np.zeros((B, blocks[-1].end), dtype=model.dtype)  # sum_t dL_t/dh_t P_t per sequence
    head = {"W_y": np.zeros_like(params["W_y"]), "b_y": np.zeros_like(params["b_y"])}
    for t in range(T):
        units = _advance(params, model.f, state, xs[t], valid(t), t)
        L_t, head_t, dh_t, a, y_hat, dy_hat = _head_step(params, model, _top(units, valid(t)), rows(ys, t),
                                                         None if w is None else rows(w, t), "dy_hat" in need)
        rec.keep(t, units, valid(t), a, y_hat, dy_hat)
        total += L_t
        G += _through_P(dh_t, state.P[-1])
        for k in head:
            head[k] += head_t[k]
    grads = _unflatten(model, G.sum(axis=0), blocks)
    grads.update(head)
    dh0 = np.stack([G[:, b.h0] for b in blocks]) if "dh0" in need else None
    dh = dx = None
    if state_grads:
        dh = np.stack([G[:, b.eps].reshape(B, T, H).swapaxes(0, 1) for b in blocks])  # (L, T, B, H)
        if "dx" in need and xs.ndim == 3:  # dL/dx_t = (f'(z_t) * dL/dh_t) W_x of the first layer
            d = derivative_blocks(model.f, rec.z[0], rec.states[0][1:])
            dx = np.matmul(d * dh[0], params["W_x"])
        if "dh" not in need:
            dh = None
    return _result(model, h0, total, grads, dh, dx, dh0, rec, xs, h0s, state.h.copy(), lengths)


def _top(units: list[Unit], valid) -> np.ndarray:
    """The head's input at one step: the top layer's h_t, zero in padding (as network.forward)."""
    top = units[-1].h
    return top if valid is None else top * valid[:, None]


# --- UORO -------------------------------------------------------------------------------------
def _tangent(units: list[Unit], s: np.ndarray, params: dict) -> np.ndarray:
    """J_t s_{t-1} (L, B, H): one step's forward tangent, s^k <- f'(z^k) (W_h^k s^k + W_x^k s^{k-1}_new)."""
    out, below = np.empty_like(s), None
    for k, unit in enumerate(units):
        n_x, n_h, _ = layer_param_names(k, 0)
        v = s[k] @ params[n_h].T
        if below is not None:
            v += below @ params[n_x].T
        v *= unit.d
        out[k] = below = v
    return out


def _step_vjp(units: list[Unit], nu: np.ndarray, params: dict, blocks, out: np.ndarray) -> None:
    """out (B, N) = nu_t^T dF/dtheta per sequence: the seed's §3C for one step, h_{t-1} fixed, with the
    cotangent nu^k (B, H) arriving at every layer's h_t (the layer above adds its dz W_x)."""
    B, H = nu.shape[1:]
    c = nu[-1]
    for k in range(len(units) - 1, -1, -1):
        unit, b = units[k], blocks[k]
        dz = unit.d * c
        out[:, b.W_h] = (dz[:, :, None] * unit.h_prev[:, None, :]).reshape(B, H * H)
        out[:, b.b_h] = dz
        W_x = out[:, b.W_x].reshape(B, H, -1)
        if unit.u.ndim == 1:  # one-hot input: only column u[b]
            W_x[...] = 0
            W_x[np.arange(B), :, unit.u] = dz
        else:
            W_x[...] = dz[:, :, None] * unit.u[:, None, :]
        if k:
            c = nu[k - 1] + dz @ params[layer_param_names(k, 0)[0]]


def uoro_gradients(model, x, y, h0=None, mask=None, reduction: str = "sum", lengths=None,
                   seed=None) -> Gradients:
    """An unbiased estimate of the loss's gradient by UORO (Tallec & Ollivier 2017), forward in time
    with O(B (H^2 + H D)) memory: E[grads] over ``seed`` is the exact gradient.

    Arguments as :func:`rtrl_gradients`; ``seed`` (int or Generator) draws the random signs nu_t.
    Returns :class:`rnngrad.Gradients` with the exact ``loss``, ``dy_hat``, ``h_last`` and
    ``forward``, the head's exact dW_y, db_y, the recurrent parameters' *estimates*, and
    ``dh``, ``dx``, ``dh0`` None. One draw is noisy (its error is typically of the order of the
    gradient itself): average many, or use it where an unbiased, cheap direction is what is wanted.
    """
    rng = check_seed(seed)
    params, xs, h0s, ys, w, lengths, rows, valid = _prepare(model, "uoro_gradients", x, y, h0, mask,
                                                            reduction, lengths)
    T, B = xs.shape[:2]
    H, L, dtype = model.hidden_size, model.num_layers, model.dtype
    blocks = layout(_widths(model), H, with_h0=False)
    h, s = h0s.copy(), np.zeros((L, B, H), dtype=dtype)  # s_0 theta_0^T = dh_0/dtheta = 0
    theta, vjp = np.zeros((B, blocks[-1].end), dtype=dtype), np.empty((B, blocks[-1].end), dtype=dtype)
    rec = _Records(model, xs, h0s, True)
    total, G = 0.0, np.zeros(blocks[-1].end, dtype=dtype)
    head = {"W_y": np.zeros_like(params["W_y"]), "b_y": np.zeros_like(params["b_y"])}
    for t in range(T):
        v = valid(t)
        units = layers_step(params, model.f, h, xs[t], v)
        Js = _tangent(units, s, params)
        nu = (2 * rng.integers(0, 2, size=(L, B, H)) - 1).astype(dtype)
        _step_vjp(units, nu, params, blocks, vjp)
        # rho0, rho1 depend on nu only through |nu^T dF/dtheta|, even in nu: the estimate stays unbiased.
        rho0 = np.sqrt((np.linalg.norm(theta, axis=1) + _EPS) / (np.sqrt((Js * Js).sum(axis=(0, 2))) + _EPS))
        rho1 = np.sqrt((np.linalg.norm(vjp, axis=1) + _EPS) / (np.sqrt(L * H) + _EPS))
        s_new = rho0[:, None] * Js + rho1[:, None] * nu
        theta_new = theta / rho0[:, None] + vjp / rho1[:, None]
        # As in RTRL, only h is held in padding (to end as h_last): s and theta there meet no loss.
        s[...], theta[...] = s_new, theta_new
        for k, unit in enumerate(units):
            h[k] = unit.h if v is None else np.where(v[:, None], unit.h, h[k])
        L_t, head_t, dh_t, a, y_hat, dy_hat = _head_step(params, model, _top(units, v), rows(ys, t),
                                                         None if w is None else rows(w, t), True)
        rec.keep(t, units, v, a, y_hat, dy_hat)
        total += L_t
        G += ((dh_t * s[-1]).sum(axis=1)) @ theta  # sum_b (dL_t/dh_t . s_t) theta_t
        for k in head:
            head[k] += head_t[k]
    grads = _unflatten(model, G, blocks)
    grads.update(head)
    return _result(model, h0, total, grads, None, None, None, rec, xs, h0s, h, lengths)
