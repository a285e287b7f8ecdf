"""A network: layers × directions, then the output head; its whole forward and backward.

    level 0        x ──> layer (forward direction) ──┐
                   x ─flip─> layer (reverse) ─flip─┴─ [h_fwd; h_rev] ─ dropout ─> level 1 ...
    top level      ... ─> h_t (T, B, C) ──> head: y_hat_t = g(W_y h_t + b_y) ──> L

Layer k > 0 reads the states of layer k - 1 (both directions, concatenated: C = H or 2H),
so each layer's input projection is still one product over all T·B rows. The reverse
direction runs the same :func:`rnngrad.layer.layer_forward` on sequences flipped within
their own lengths, and its results are flipped back: h_t of the reverse direction depends
on x_t..x_{l-1} of its sequence (l its length) and never on padding.

Backward, top down (the seed's §3B with a second source of dL/dh_t):

    dL/dh_t(top)   = da_t W_y                                 from the head (§3B direct term)
    dL/dh_t(k)     = [dL/dx_t(k+1), fwd + flipped rev] * m_t   from the layer above, through
                                                              its dropout mask m_t
    then in each layer  dh_t += dz_{t+1} W_h                  the recursive term (§3B)

A layer's backward takes the part arriving from outside and adds the recursion itself
(:func:`rnngrad.layer.layer_backward`). These are pure functions: parameters, inputs and
the architecture in, arrays out; :class:`rnngrad.RNN` validates and calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .activations import Activation
from .head import head_backward, head_forward, output_loss
from .layer import LayerCache, layer_backward, layer_forward
from .losses import Loss
from .workspace import Workspace, empty

__all__ = ["Architecture", "Forward", "Gradients", "forward", "backward", "loss", "layer_param_names",
           "flip_index", "flip", "check_finite_states", "OPTIONAL_GRADS", "LAYER_PARAMS", "HEAD_PARAMS"]

#: The state gradients a gradients call may skip (``need``).
OPTIONAL_GRADS = ("dx", "dh0", "dy_hat")
#: Each layer's parameters, in the seed's names (suffixed by layer and direction, see
#: :func:`layer_param_names`), and the head's.
LAYER_PARAMS = ("W_x", "W_h", "b_h")
HEAD_PARAMS = ("W_y", "b_y")


@lru_cache(maxsize=None)  # called for every layer on every call: a lookup, not string formatting
def layer_param_names(layer: int, direction: int) -> tuple[str, str, str]:
    """The keys of layer ``layer``'s parameters in ``direction`` (0 forward, 1 reverse).

    The first layer's forward direction has the seed's names, W_x, W_h, b_h; deeper layers
    add ``_l{k}`` and the reverse direction ``_reverse``, as PyTorch names them
    (``W_h_l1_reverse`` is PyTorch's ``weight_hh_l1_reverse``).
    """
    suffix = (f"_l{layer}" if layer else "") + ("_reverse" if direction else "")
    return tuple(name + suffix for name in LAYER_PARAMS)


class Architecture(NamedTuple):
    """What the network's functions need to know besides the parameters (a tuple: built on
    every call, and cheap to build)."""

    num_layers: int
    bidirectional: bool
    f: Activation
    g: Activation
    loss: Loss

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def units(self) -> int:
        """The number of (layer, direction) pairs, PyTorch's num_layers * num_directions."""
        return self.num_layers * self.directions


@dataclass
class Forward:
    """What the forward pass computed; :func:`backward` takes it as its cache.

    Attributes
    ----------
    x : (T, B, D) floats or (T, B) token indices
    h0 : (U, B, H) initial states, U = num_layers · directions (layer-major, direction-minor)
    h : (T, B, C) the top layer's states that the head reads, C = H or 2H ([forward; reverse])
    a : (T, B, O) output pre-activations (logits)
    y_hat : (T, B, O) outputs g(a)
    h_last : (U, B, H) each unit's final state: h_T, or with sequence lengths l_b the state
        after the last valid step (for the reverse direction, after it has read x_0)
    layers : U :class:`rnngrad.layer.LayerCache`, layer-major; a reverse unit's arrays are in
        flipped time
    dropout_masks : one (T, B, C) array per level below the top (entries 0 or 1 / (1 - p)),
        the mask multiplied into that level's output, or None without dropout
    lengths : (B,) valid steps per sequence, or None (every sequence has T)
    """

    x: np.ndarray
    h0: np.ndarray
    h: np.ndarray
    a: np.ndarray
    y_hat: np.ndarray
    h_last: np.ndarray
    layers: list = field(default_factory=list)
    dropout_masks: list | None = None
    lengths: np.ndarray | None = None


@dataclass
class Gradients:
    """Result of :meth:`rnngrad.RNN.gradients`.

    Attributes
    ----------
    loss : float, L (seed §2C), reduced as asked
    grads : dict, dL/dparameter under exactly the keys of ``model.params``
    dh : total dL/dh_t (direct + recursive, seed §3B): (T, B, H) for one layer and one
        direction, else (U, T, B, H), U = num_layers · directions, PyTorch's layer-major,
        direction-minor order
    dy_hat : (T, B, O) dL/dy_hat_t, or None if not asked for
    dx : (T, B, D) dL/dx_t for float inputs, else None
    dh0 : dL/dh_0 shaped as h0: (B, H) or (U, B, H); None if not asked for
    h_last : the final states shaped as h0, the h0 of the next chunk in truncated BPTT
    forward : the :class:`Forward` cache
    """

    loss: float
    grads: dict
    dh: np.ndarray
    dy_hat: np.ndarray | None
    dx: np.ndarray | None
    dh0: np.ndarray | None
    h_last: np.ndarray
    forward: Forward


def flip_index(lengths: np.ndarray, T: int) -> np.ndarray:
    """(T, B) time index that reverses each sequence within its length l_b: t -> l_b - 1 - t for
    t < l_b, padding (t >= l_b) left in place. Its own inverse."""
    t = np.arange(T)[:, None]
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def flip(arr: np.ndarray, index: np.ndarray | None) -> np.ndarray:
    """``arr`` (T, B, ...) with each sequence reversed in time (within its length when ``index``
    from :func:`flip_index` is given); a new C-contiguous array."""
    if index is None:
        return np.ascontiguousarray(arr[::-1])
    return arr[index, np.arange(arr.shape[1])]


def _final_states(h: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """(1, B, H) state after each sequence's last valid step (h_T without lengths); a copy, shaped
    as one unit's slice of h_last (so one unit needs no further view)."""
    if lengths is None:
        return h[-1:].copy()
    return h[lengths - 1, np.arange(h.shape[1])][None]


def forward(params: dict, x: np.ndarray, h0: np.ndarray, arch: Architecture, engine,
            lengths: np.ndarray | None = None, dropout_masks: list | None = None,
            workspace: Workspace | None = None) -> Forward:
    """The whole forward pass (seed §2) over a batch.

    Parameters
    ----------
    params : dict of every layer's W_x, W_h, b_h (keys from :func:`layer_param_names`) and W_y, b_y
    x : (T, B, D) floats, or (T, B) integer token indices in [0, D)
    h0 : (U, B, H), U = num_layers · directions
    arch : :class:`Architecture`;  engine : from :mod:`rnngrad.engines`
    lengths : (B,) ints in [1, T], or None (every sequence has T steps). Steps t >= l_b of
        sequence b are padding: its states there are zero, h_last is its state after step
        l_b - 1, and the reverse direction starts at that step
    dropout_masks : num_layers - 1 arrays (T, B, C) multiplied into the outputs of the levels
        below the top, or None
    workspace : optional (see :mod:`rnngrad.workspace`)

    Inputs are trusted (see :mod:`rnngrad.validation`); arrays share one float dtype.
    """
    dirs = arch.directions
    index = None if lengths is None else flip_index(lengths, x.shape[0])
    padding = None if lengths is None else np.arange(x.shape[0])[:, None] >= lengths[None, :]
    caches, finals = [], []
    inp = x
    for k in range(arch.num_layers):
        level = []
        for d in range(dirs):
            n_x, n_h, n_b = layer_param_names(k, d)
            u = k * dirs + d
            key = f"u{u}." if u else ""  # the first unit keeps the workspace's plain names
            cache = layer_forward(inp if d == 0 else flip(inp, index), h0[u], params[n_x], params[n_h],
                                  params[n_b], arch.f, engine, workspace, key)
            level.append(cache)
            finals.append(_final_states(cache.h, lengths))
        caches.extend(level)
        out = level[0].h if dirs == 1 else np.concatenate([level[0].h, flip(level[1].h, index)], axis=-1)
        if padding is not None and padding.any():
            # Padding is part of no sequence: zeros, as PyTorch's packed output. (In place on a
            # forward layer's own states is safe: no valid step follows padding, and no loss
            # reaches it, so its f' and h_{t-1} only ever meet a zero gradient.)
            out[padding] = 0
        if dropout_masks is not None and k < arch.num_layers - 1:
            out = out * dropout_masks[k]
        inp = out
    a, y_hat = head_forward(inp, params["W_y"], params["b_y"], arch.g, engine, workspace)
    h_last = finals[0] if len(finals) == 1 else np.concatenate(finals)
    # Positional (x, h0, h, a, y_hat, h_last, layers, dropout_masks, lengths): keywords cost twice as much.
    return Forward(x, h0, inp, a, y_hat, h_last, caches, dropout_masks, lengths)


def check_finite_states(cache: Forward, arch: Architecture) -> None:
    """Raise FloatingPointError naming the first unit and step whose states are Inf or NaN.

    States that grow without bound (an unbounded f such as ReLU, or identity, with a large
    W_h) overflow to Inf, and Inf - Inf gives NaN from there on; the loss is then NaN with no
    word of where. This says where, and what usually fixes it. Reverse units are checked in
    their own (flipped) time.
    """
    for u, layer in enumerate(cache.layers):
        bad = ~np.isfinite(layer.h).reshape(layer.h.shape[0], -1).all(axis=1)
        if bad.any():
            t = int(np.argmax(bad))
            k, d = divmod(u, arch.directions)
            # A reverse unit runs in flipped time: its step t is t steps before each sequence's end.
            where = (f"layer {k} (reverse direction) at its step {t}, counted from each sequence's end" if d
                     else f"layer {k} at step t={t}")
            raise FloatingPointError(
                f"the hidden states of {where} overflowed to Inf/NaN (f={arch.f.name}); scale W_h or the inputs down (e.g. recurrent_init, a lower "
                f"learning rate, gradient clipping) or use a bounded f such as tanh")
    for name, arr in (("outputs y_hat", cache.y_hat), ("output pre-activations a", cache.a)):
        if not np.isfinite(arr).all():
            raise FloatingPointError(f"the {name} are Inf/NaN although every hidden state is finite: "
                                     f"W_y or b_y hold Inf/NaN or overflow; check the head's parameters")


def loss(params: dict, cache: Forward, y: np.ndarray, w: np.ndarray | None, arch: Architecture, engine,
         workspace: Workspace | None = None) -> float:
    """L alone from a forward cache (no backward pass); y and w as :func:`backward`."""
    return output_loss(cache.a, cache.y_hat, y, w, arch.g, arch.loss, engine, workspace)


def backward(params: dict, cache: Forward, y: np.ndarray, w: np.ndarray | None, arch: Architecture, engine,
             need: frozenset = frozenset(OPTIONAL_GRADS), workspace: Workspace | None = None) -> Gradients:
    """Every gradient of seed §1 from the forward cache (see the module docstring).

    Parameters
    ----------
    params, arch, engine : as :func:`forward`;  cache : its result for the same params
    y : (N,) class indices or (N, O) targets, N = T·B, row t·B + b
    w : (N,) loss weights or None (see :func:`rnngrad.head.loss_weights`)
    need : the names of :data:`OPTIONAL_GRADS` to compute
    workspace : optional; every returned array except h_last is written into its arrays and is
        overwritten by the next call that uses it (see :mod:`rnngrad.workspace`)

    Returns
    -------
    :class:`Gradients`; its ``dh``, ``dh0`` and ``h_last`` are (U, T, B, H), (U, B, H), (U, B, H)
    here, for the caller to reshape.
    """
    dirs = arch.directions
    U = arch.num_layers * dirs  # arch.units
    T, B = cache.x.shape[:2]
    index = None if cache.lengths is None else flip_index(cache.lengths, T)
    L, grads, dout, dy_hat = head_backward(cache.h, cache.a, cache.y_hat, y, w, params["W_y"], arch.g,
                                           arch.loss, engine, want_dy_hat="dy_hat" in need, workspace=workspace)
    layer_grads, dh, dh0 = [None] * U, [None] * U, [None] * U
    dx = None
    for k in range(arch.num_layers - 1, -1, -1):
        need_dx = k > 0 or "dx" in need
        H = cache.layers[k * dirs].h.shape[-1]
        dinput = None
        for d in range(dirs):
            u = k * dirs + d
            names = layer_param_names(k, d)
            if dirs == 1:
                dh_u = dout
            elif d == 0:
                dh_u = np.ascontiguousarray(dout[..., :H])
            else:
                dh_u = flip(dout[..., H:], index)
            layer_grads[u], dx_u, dh0[u] = layer_backward(
                cache.layers[u], dh_u, params[names[0]], params[names[1]], arch.f, engine, need_dx=need_dx,
                need_dh0="dh0" in need, workspace=workspace, key=f"u{u}." if u else "", names=names)
            dh[u] = dh_u if d == 0 else flip(dh_u, index)
            if dx_u is not None:
                dx_u = dx_u if d == 0 else flip(dx_u, index)
                dinput = dx_u if dinput is None else dinput + dx_u
        if k > 0:
            if cache.dropout_masks is not None:
                dinput = dinput * cache.dropout_masks[k - 1]
            dout = dinput
        else:
            dx = dinput
    ordered = {}
    for g in layer_grads:
        ordered.update(g)
    ordered.update(grads)
    # Positional (loss, grads, dh, dy_hat, dx, dh0, h_last, forward): keywords cost twice as much.
    return Gradients(L, ordered, dh[0][None] if U == 1 else np.stack(dh), dy_hat, dx,
                     None if dh0[0] is None else (dh0[0][None] if U == 1 else np.stack(dh0)), cache.h_last, cache)
