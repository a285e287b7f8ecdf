"""Which time steps make the gradient: per-step terms of every weight gradient, and the influence
map ‖dL_s/dh_t‖.

Every parameter gradient of seed §3 is a sum over time of one term per step (rows, as in
:mod:`rnngrad.layer`; sums over the B sequences of the batch):

    dL/dW_x = sum_t dz_t^T x_t        dL/dW_h = sum_t dz_t^T h_{t-1}      dL/db_h = sum_t dz_t
    dL/dW_y = sum_t da_t^T h_t        dL/db_y = sum_t da_t

with dz_t = f'(z_t) ⊙ dL/dh_t (the total dL/dh_t of seed §3B) and da_t = dL/da_t at the head.
Step t's term of a weight is a (H, D) matrix summed over the batch; its squared Frobenius norm
needs no matrix at all:

    ‖sum_b dz_tb^T r_tb‖_F^2 = sum_{b,b'} (dz_t dz_t^T)_{bb'} (r_t r_t^T)_{bb'}      (B x B Grams)

(:func:`step_norms`; it forms the (H, D) terms a few steps at a time instead when that is
cheaper, and for token inputs sums dz over the sequences that read the same token). The
factors dz_t and da_t come from one forward and one backward pass (:func:`unit_factors`,
:func:`head_factors`); :meth:`PerStepContributions.terms` forms the full terms on request.

The influence map is ‖dL_s/dh_t‖ (Frobenius over batch and units), the part of the state
gradient that the loss at step s alone sends back to step t: one backward pass per loss step s
(:func:`influence_maps`), O(T^2 B H^2) per layer in all.

Conventions. Step t of a reverse-direction unit is the step at which it reads x_t (its own
time runs backwards: its h_{t-1} is the state it held before reading x_t). Dropout is off
(evaluation): the terms are those of ``model.gradients`` without a dropout seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import network
from .engines import get_engine
from .head import output_backward
from .layer import LayerCache, derivative_blocks
from .model import RNN
from .network import flip, flip_index, layer_param_names
from .validation import check_positive_int

__all__ = ["PerStepContributions", "per_step_contributions", "step_norms", "step_terms", "unit_factors",
           "head_factors", "influence_maps", "TERMS_LIMIT"]

#: The most elements :meth:`PerStepContributions.terms` forms unless told otherwise (400 MB of float64).
TERMS_LIMIT = 50_000_000
# Temporaries of the norm computations are kept to about this many elements (32 MB of float64).
_CHUNK_ELEMENTS = 1 << 22
# The influence map's batched copies of the forward cache, about this many elements (128 MB).
_INFLUENCE_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Factor:
    """Step t's term of one gradient is sum_b left_tb^T right_tb.

    left : (T, B, H) dz_t or da_t, in input time;  right : (T, B, D) floats, (T, B) token
    indices into D = ``width`` columns, or None for a bias (the term is then sum_b left_tb).
    """

    left: np.ndarray
    right: np.ndarray | None
    width: int = 0


def _gram_norms(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(T,) ‖sum_b l_tb^T r_tb‖_F^2 as sum_{b,b'} (l l^T)_{bb'} (r r^T)_{bb'}: O(B^2 (H + D)) a step."""
    T, B = left.shape[:2]
    out = np.empty(T)
    step = max(1, _CHUNK_ELEMENTS // (B * B))
    for s in range(0, T, step):
        l, r = (np.asarray(a[s:s + step], dtype=np.float64) for a in (left, right))
        out[s:s + step] = np.einsum("tbc,tbc->t", l @ l.transpose(0, 2, 1), r @ r.transpose(0, 2, 1))
    return out


def _direct_norms(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(T,) the same by forming a block of steps' (H, D) terms: O(B H D) a step."""
    T, B, H = left.shape
    D = right.shape[2]
    out = np.empty(T)
    step = max(1, _CHUNK_ELEMENTS // (H * D + B * (H + D)))
    for s in range(0, T, step):
        l, r = (np.asarray(a[s:s + step], dtype=np.float64) for a in (left, right))
        term = l.transpose(0, 2, 1) @ r  # (t, H, D)
        out[s:s + step] = np.einsum("thd,thd->t", term, term)
    return out


def _token_segments(left: np.ndarray, tokens: np.ndarray, width: int):
    """For token inputs, step t's term has column k = sum of dz_tb over the b that read token k:
    the (t, k) keys that occur and those sums (one sort and one segmented sum, as
    :func:`rnngrad.layer.token_weight_grad`)."""
    T, B, H = left.shape
    keys = (np.arange(T)[:, None] * width + tokens).reshape(-1)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    sums = np.add.reduceat(left.reshape(T * B, H)[order], starts, axis=0)
    return sorted_keys[starts], sums


def step_norms(factor: Factor, method: str | None = None) -> np.ndarray:
    """(T,) Frobenius norm of each step's term of one gradient (see :class:`Factor`), in float64.

    ``method`` "gram" or "direct" forces a path for floats (for tests); by default the cheaper:
    Grams when B (H + D) <= H D, else the terms a block of steps at a time. Grams lose relative
    accuracy when the batch's rank-one pieces nearly cancel (the error in ‖C_t‖² is about
    eps · (sum_b ‖l_b‖‖r_b‖)², so ‖C_t‖ loses that divided by 2 ‖C_t‖²); the direct path does not.
    """
    left, right = factor.left, factor.right
    T, B, H = left.shape
    if right is None:
        return np.linalg.norm(left.sum(axis=1, dtype=np.float64), axis=1)
    if right.ndim == 2:  # tokens: exact sums of the rows that share a column
        keys, sums = _token_segments(np.asarray(left, dtype=np.float64), right, factor.width)
        squares = np.bincount(keys // factor.width, weights=np.einsum("nh,nh->n", sums, sums), minlength=T)
        return np.sqrt(squares)
    D = right.shape[2]
    if method is None:
        method = "gram" if B * (H + D) <= H * D else "direct"
    squares = _gram_norms(left, right) if method == "gram" else _direct_norms(left, right)
    return np.sqrt(np.maximum(squares, 0))  # a Gram sum of a zero term may round below 0


def step_terms(factor: Factor, steps=slice(None)) -> np.ndarray:
    """The terms themselves: (T', H, D) for a weight, (T', H) for a bias, for the steps selected
    by ``steps`` (a slice or index array into the T steps), in the factors' dtype."""
    left = factor.left[steps]
    right = None if factor.right is None else factor.right[steps]
    if right is None:
        return left.sum(axis=1)
    if right.ndim == 3:
        return np.ascontiguousarray(left.transpose(0, 2, 1) @ right)
    T, B, H = left.shape
    D = factor.width
    keys, sums = _token_segments(left, right, D)
    out = np.zeros((T * D, H), dtype=left.dtype)
    out[keys] = sums
    return np.ascontiguousarray(out.reshape(T, D, H).transpose(0, 2, 1))


def unit_factors(cache: network.Forward, dh: np.ndarray, arch: network.Architecture, params: dict) -> dict:
    """:class:`Factor` of every layer parameter, in input time.

    cache : the forward pass;  dh : (U, T, B, H) total dL/dh_t of every unit in input time, as
    :func:`rnngrad.network.backward` returns it. dz_t = f'(z_t) ⊙ dh_t (seed §3C); a reverse
    unit's cache is in its own (flipped) time, so its dz, inputs and h_{t-1} are flipped back.
    """
    T = cache.x.shape[0]
    index = None if cache.lengths is None else flip_index(cache.lengths, T)
    dirs = arch.directions
    out = {}
    for k in range(arch.num_layers):
        for d in range(dirs):
            u = k * dirs + d
            lc = cache.layers[u]
            own = (lambda a: a) if d == 0 else (lambda a: flip(a, index))  # own time <-> input time
            dz = derivative_blocks(arch.f, lc.z, lc.h) * own(dh[u])
            dz, x, h_prev = own(dz), own(lc.x), own(lc.h_prev)
            n_x, n_h, n_b = layer_param_names(k, d)
            out[n_x] = Factor(dz, x, params[n_x].shape[1])
            out[n_h] = Factor(dz, h_prev, params[n_h].shape[1])
            out[n_b] = Factor(dz, None)
    return out


def head_factors(cache: network.Forward, y: np.ndarray, w: np.ndarray | None, arch: network.Architecture,
                 engine) -> dict:
    """:class:`Factor` of W_y and b_y: da_t (T, B, O) from :func:`rnngrad.head.output_backward`
    (the same fused or general path as the gradients call) and the top states h_t (T, B, C)."""
    T, B, O = cache.a.shape
    _, da, _ = output_backward(cache.a.reshape(T * B, O), cache.y_hat.reshape(T * B, O), y, w, arch.g,
                               arch.loss, engine, want_dy_hat=False)
    da = da.reshape(T, B, O)
    return {"W_y": Factor(da, cache.h, cache.h.shape[2]), "b_y": Factor(da, None)}


def _tile(arr: np.ndarray | None, S: int) -> np.ndarray | None:
    """(T, B, ...) -> (T, S·B, ...): S copies of the batch side by side (copy j in columns jB..jB+B-1)."""
    # np.tile always makes a new C-contiguous array, as the engines' kernels need (a reshaped
    # broadcast view would keep a zero stride when B = 1).
    return None if arr is None else np.tile(arr, (1, S) + (1,) * (arr.ndim - 2))


def _tiled_cache(cache: network.Forward, S: int) -> network.Forward:
    """The forward cache of a batch of S copies of every sequence (see :func:`_tile`); the cache
    itself for S = 1 (a backward pass only reads it)."""
    if S == 1:
        return cache
    layers = [LayerCache(_tile(lc.x, S), np.tile(lc.h0, (S, 1)), _tile(lc.h, S), _tile(lc.z, S),
                         _tile(lc.h_prev, S)) for lc in cache.layers]
    lengths = None if cache.lengths is None else np.tile(cache.lengths, S)
    return network.Forward(_tile(cache.x, S), np.tile(cache.h0, (1, S, 1)), _tile(cache.h, S), _tile(cache.a, S),
                           _tile(cache.y_hat, S), cache.h_last, layers, None, lengths)


def influence_maps(params: dict, cache: network.Forward, y: np.ndarray, w: np.ndarray | None,
                   arch: network.Architecture, engine) -> np.ndarray:
    """(U, T, T) map [u, s, t] = ‖dL_s/dh^u_t‖_F (over B and H) for every unit u.

    L_s = sum_b w_sb L_t(y_hat_sb, y_sb) is the loss of step s alone, so sum_s L_s = L. Its state
    gradients are a :func:`rnngrad.network.backward` with the row weights of the other steps set
    to zero. Vectorised over s: S loss steps at a time run as one backward pass over a batch of S
    copies of the sequences, copy j weighted for its own step s_j (S chosen to keep the copies to
    about 16M elements). Work O(T^2 B H^2) per unit; a step with no loss leaves its row zero.
    """
    T, B = cache.x.shape[:2]
    U = arch.units
    base = (np.ones(T * B, dtype=cache.h.dtype) if w is None else w).reshape(T, B)
    steps = np.flatnonzero(base.any(axis=1))
    out = np.zeros((U, T, T))
    H, O = cache.layers[0].h.shape[2], cache.a.shape[2]
    per_copy = T * B * (sum(lc.x[0, 0].size + 5 * H for lc in cache.layers) + 3 * O)  # cache, dh, dz, head
    S_max = max(1, _INFLUENCE_ELEMENTS // per_copy)
    y_steps = y.reshape((T, B) + y.shape[1:])
    for first in range(0, steps.size, S_max):
        chosen = steps[first:first + S_max]
        S = chosen.size
        # w[t, j, b] = base[t, b] if t == s_j else 0: copy j carries the loss of step s_j alone.
        w_s = base[:, None, :] * (np.arange(T)[:, None] == chosen[None, :])[:, :, None]
        y_s = _tile(y_steps, S).reshape((T * S * B,) + y.shape[1:])
        dh = network.backward(params, _tiled_cache(cache, S), y_s, w_s.reshape(-1).astype(base.dtype), arch,
                              engine, need=frozenset()).dh  # (U, T, S·B, H)
        dh = dh.reshape(U, T, S, B, -1)
        out[:, chosen, :] = np.sqrt(np.einsum("utjbh,utjbh->ujt", dh, dh, dtype=np.float64))
    return out


def unit_names(num_layers: int, directions: int) -> tuple:
    return tuple(f"layer {k}" + (" reverse" if d else "") for k in range(num_layers) for d in range(directions))


@dataclass
class PerStepContributions:
    """The result of :func:`per_step_contributions`.

    Attributes
    ----------
    loss : float, L as reduced by the call
    grads : dict, dL/d(name) from the same backward pass (the sums over t of the terms)
    norms : dict, for every name of ``model.params`` a (T,) float64 array: ‖step t's term of
        dL/d(name)‖_F
    influence : (T, T) float64 [s, t] = ‖dL_s/dh_t‖_F over (B, C), h_t the top layer's states the
        head reads ([forward; reverse] for a bidirectional network); zero for t > s in a
        unidirectional network, not for a bidirectional one. None if not computed.
    unit_influence : (U, T, T) the same map for each layer and direction's own states h^u_t
        (U = num_layers · directions, layer-major, names in ``unit_names``), or None
    unit_names : ("layer 0", "layer 0 reverse", ...)
    """

    loss: float
    grads: dict
    norms: dict
    influence: np.ndarray | None
    unit_influence: np.ndarray | None
    unit_names: tuple
    factors: dict = field(repr=False, default_factory=dict)

    @property
    def T(self) -> int:
        return next(iter(self.norms.values())).shape[0]

    def _factor(self, name: str) -> Factor:
        if name not in self.factors:
            raise KeyError(f"no parameter named {name!r}; the names are {list(self.factors)}")
        return self.factors[name]

    def terms(self, name: str, max_elements: int = TERMS_LIMIT) -> np.ndarray:
        """(T, *shape) the full per-step terms of dL/d(name); their sum over t is grads[name].

        Refused (ValueError) when T times the parameter's size exceeds ``max_elements``
        (default :data:`TERMS_LIMIT` = 50 million): use ``norms[name]``, ``term(name, t)`` for
        single steps, or pass a larger ``max_elements`` if the memory is there.
        """
        max_elements = check_positive_int("max_elements", max_elements)
        self._factor(name)
        shape = self.grads[name].shape
        size = self.T * int(np.prod(shape))
        if size > max_elements:
            raise ValueError(f"terms({name!r}) would hold T x {shape} = {size:,} elements, more than "
                             f"max_elements={max_elements:,}; use norms[{name!r}] for the per-step norms, "
                             f"term({name!r}, t) for one step, or pass max_elements={size} if the memory is there")
        return step_terms(self._factor(name))

    def term(self, name: str, t: int) -> np.ndarray:
        """Step t's term of dL/d(name), shaped as the parameter."""
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not -self.T <= t < self.T:
            raise ValueError(f"t must be a step index in [0, {self.T}); got {t!r}")
        return step_terms(self._factor(name), slice(t, t + 1 if t != -1 else None))[0]


def per_step_contributions(model: RNN, x, y, h0=None, mask=None, reduction: str = "sum", lengths=None,
                           influence: bool = True, engine=None) -> PerStepContributions:
    """Per-step terms of every parameter gradient, their norms, and the influence map.

    Parameters
    ----------
    model : RNN (any depth and direction; batch_first is honoured, and the results are indexed
        by time t either way)
    x, y, h0, mask, reduction, lengths, engine : as :meth:`rnngrad.RNN.gradients`
    influence : bool, default True; False skips the influence map (T backward passes)

    Returns
    -------
    :class:`PerStepContributions`: ``norms[name]`` (T,), ``terms(name)`` (T, *shape),
    ``influence`` (T, T), ``unit_influence`` (U, T, T), ``grads``, ``loss``.
    """
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
    if not isinstance(influence, (bool, np.bool_)):
        raise TypeError(f"influence must be True or False; got {type(influence).__name__}")
    engine = get_engine(engine)
    # The model's own boundary: the same validation, time-major arrays, target rows and loss
    # weights as a gradients call (no dropout: evaluation).
    params, xs, h0s, ys, w, lengths, _ = model._prepare_loss(x, y, h0, mask, reduction, lengths=lengths)
    arch = model.architecture
    cache = network.forward(params, xs, h0s, arch, engine, lengths)
    res = network.backward(params, cache, ys, w, arch, engine, need=frozenset())  # the one BPTT pass
    factors = unit_factors(cache, res.dh, arch, params)
    factors.update(head_factors(cache, ys, w, arch, engine))
    factors = {name: factors[name] for name in model.params}
    norms = {name: step_norms(f) for name, f in factors.items()}
    unit_map = top = None
    if influence:
        unit_map = influence_maps(params, cache, ys, w, arch, engine)
        top = np.sqrt((unit_map[-arch.directions:] ** 2).sum(axis=0))  # [h_fwd; h_rev] of the top layer
    return PerStepContributions(res.loss, res.grads, norms, top, unit_map,
                                unit_names(arch.num_layers, arch.directions), factors)
