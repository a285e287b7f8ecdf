"""How the gradient flows back through time: ‖dL/dh_t‖ per step and the spectral radius of W_h.

Seed §3B's recursion for the hidden-state gradient,

    dL/dh_t = W_y^T dL_t/da_t  +  W_h^T (f'(z_{t+1}) ⊙ dL/dh_{t+1}),

multiplies the gradient by W_h^T diag(f'(z)) once per step back in time, so its norm
shrinks (vanishes) or grows (explodes) roughly like ρ(W_h)^(T-t) times the product of
the f' factors. To see that product alone, :func:`gradient_flow` puts the loss on the
last step only (a mask): then the direct term is zero for t < T, and dL/dh_t is exactly
the gradient of the final loss carried back T - t steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .model import RNN
from .network import layer_param_names
from .validation import as_array, check_finite, check_positive_int

__all__ = ["FlowResult", "gradient_flow", "layer_flows", "flow_ratio", "spectral_radius", "flow_sweep", "fresh_models"]


@dataclass
class FlowResult:
    """Gradient flow of one model on one batch.

    Attributes
    ----------
    label : str, a name for plots (e.g. "tanh, ρ=1")
    norms : (T,) ‖dL/dh_t‖₂ over the H units of the first layer (forward direction), averaged
        over the B sequences: the gradient that reaches furthest back, to x_1
    abs_dh : (T, B, H) |dL/dh_t| per unit of that layer, for a heatmap
    ratio : float, ‖dL/dh_1‖ / ‖dL/dh_T‖ of ``norms`` (see :func:`flow_ratio`)
    spectral_radius : float, ρ(W_h) = max |eigenvalue of W_h| of the first layer
    loss : float, the loss whose gradient is shown (summed over the batch)
    layer_norms : (U, T) the same norms for every layer and direction (U = num_layers ·
        directions, layer-major), named by ``layer_names`` ("layer 0", "layer 0 reverse", ...)
    """

    label: str
    norms: np.ndarray
    abs_dh: np.ndarray
    ratio: float
    spectral_radius: float
    loss: float
    layer_norms: np.ndarray | None = None
    layer_names: tuple = ()


def spectral_radius(W_h) -> float:
    """ρ(W_h) = max_i |λ_i(W_h)| for a square (H, H) matrix.

    ρ < 1 with a contracting f makes the back-propagated gradient vanish geometrically;
    ρ > 1 allows it to explode (whether it does depends on f' along the trajectory).
    """
    W = as_array("W_h", W_h, np.dtype(np.float64))
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ValueError(f"W_h must be a square (H, H) matrix; got shape {W.shape}")
    check_finite("W_h", W)
    return float(np.abs(np.linalg.eigvals(W)).max())


def flow_ratio(norms) -> float:
    """‖dL/dh_1‖ / ‖dL/dh_T‖ from the (T,) per-step norms: below 1 the gradient from the end
    vanishes on its way back to the start, above 1 it explodes. ``inf`` when only the
    denominator is 0, ``nan`` when both are."""
    n = as_array("norms", norms, np.dtype(np.float64))
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"norms must be a non-empty (T,) array; got shape {n.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(n[0]) / np.float64(n[-1]))


def gradient_flow(model: RNN, x, y, h0=None, mask=None, label: str | None = None) -> FlowResult:
    """Per-step norms of dL/dh_t for ``model`` on a batch.

    Parameters
    ----------
    model : RNN
    x : (T, B, D) floats or (T, B) token indices
    y : targets for the model's loss, (T, B, O) or (T, B) class indices
    h0 : (B, H) or (U, B, H), optional (zeros)
    mask : (T, B) bool, optional
        Which steps carry loss. **Default (None): the last step only**, so that dL/dh_t
        shows how the gradient of the final loss decays or grows back in time (for a
        bidirectional model, whose mask marks sequence lengths, every step). Pass
        ``np.ones((T, B), bool)`` to count every step as in training.
    label : str, optional, stored in the result for plots

    Returns
    -------
    FlowResult with ``norms`` (T,) = mean over b of ‖dL/dh_{t,b}‖₂ (the loss is summed,
    not averaged, over the batch, so each sequence's gradient is its own), ``abs_dh``
    (T, B, H), ``ratio`` and ``spectral_radius``, of the first layer; ``layer_norms`` of
    every layer and direction. :func:`layer_flows` gives a full result per layer.
    """
    flows = layer_flows(model, x, y, h0=h0, mask=mask, label=label)
    first = flows[0]
    first.label = label if label is not None else f"{model.f.name}"
    first.layer_norms = np.stack([r.norms for r in flows])
    first.layer_names = tuple(r.label.rsplit(", ", 1)[-1] for r in flows) if len(flows) > 1 else ("layer 0",)
    return first


def layer_flows(model: RNN, x, y, h0=None, mask=None, label: str | None = None) -> list[FlowResult]:
    """:func:`gradient_flow` for every layer and direction of ``model`` (one FlowResult each, in
    PyTorch's layer-major order, labelled "<label>, layer k[ reverse]"; a one-layer model gives one,
    labelled ``label``). Each has its own spectral radius, of its W_h; ``norms`` are in the input's
    time order, and a reverse unit's ``ratio`` is ‖dL/dh_T‖ / ‖dL/dh_1‖, the same ratio in its own time."""
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
    if mask is None and not model.bidirectional:
        xa = np.asarray(x)
        if xa.ndim < 2:
            raise ValueError(f"x must have shape (T, B, D) or (T, B); got shape {xa.shape}")
        mask = np.zeros(xa.shape[:2], dtype=bool)  # (T, B), or (B, T) for a batch-first model
        mask[(slice(None), -1) if model.batch_first else -1] = True
    res = model.gradients(x, y, h0=h0, mask=mask, reduction="sum", need=())
    dh = res.dh if res.dh.ndim == 4 else res.dh[None]  # (U, T, B, H)
    if model.batch_first:
        dh = dh.swapaxes(1, 2)
    base = label if label is not None else f"{model.f.name}"
    flows = []
    for k in range(model.num_layers):
        for d in range(model.directions):
            u = k * model.directions + d
            norms = np.linalg.norm(dh[u], axis=2).mean(axis=1)
            name = base if dh.shape[0] == 1 else f"{base}, layer {k}" + (" reverse" if d else "")
            W_h = layer_param_names(k, d)[1]
            # A reverse unit's recursion runs from t = T back to t = 1 of its own time, which is
            # t = 1 forward to t = T of ours: its ratio is taken in its own time.
            ratio = flow_ratio(norms[::-1] if d else norms)
            flows.append(FlowResult(label=name, norms=norms, abs_dh=np.abs(dh[u]), ratio=ratio,
                                    spectral_radius=spectral_radius(model.params[W_h]), loss=res.loss))
    return flows


def flow_sweep(hidden_activations: Sequence[str] = ("tanh", "relu", "sigmoid"),
               scales: Sequence[float] = (0.5, 1.0, 1.5), T: int = 50, batch_size: int = 16,
               input_size: int = 4, hidden_size: int = 32, seed: int = 0) -> list[FlowResult]:
    """Gradient flow of fresh models for each hidden activation × W_h scale.

    The models and the batch are those of :func:`fresh_models`; the loss is on the last step
    (see :func:`gradient_flow`).

    Returns
    -------
    list of FlowResult, activations outer, scales inner, labelled "f, ρ(W_h)=s".
    """
    models, x, y = fresh_models(hidden_activations, scales, T, batch_size, input_size, hidden_size, seed)
    return [gradient_flow(model, x, y, label=label) for label, model in models]


def fresh_models(hidden_activations: Sequence[str] = ("tanh", "relu", "sigmoid"),
                 scales: Sequence[float] = (0.5, 1.0, 1.5), T: int = 50, batch_size: int = 16,
                 input_size: int = 4, hidden_size: int = 32, seed: int = 0):
    """The fresh models of :func:`flow_sweep` and their batch: ([(label, model)], x, y).

    Each model is ``RNN(input_size, hidden_size, 1, f, "identity", "mse",
    recurrent_init="orthogonal", seed=seed)`` with W_h multiplied by the scale, so
    ρ(W_h) equals the scale exactly (an orthogonal matrix has every |λ| = 1). All share
    one batch: x ~ N(0, 1) of shape (T, B, D), y ~ N(0, 1) of shape (T, B, 1), h0 = 0.
    """
    T = check_positive_int("T", T)
    B = check_positive_int("batch_size", batch_size)
    D = check_positive_int("input_size", input_size)
    H = check_positive_int("hidden_size", hidden_size)
    if isinstance(hidden_activations, str):
        raise TypeError("hidden_activations must be a sequence of names, e.g. ('tanh', 'relu')")
    scales = [float(s) for s in scales]
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers; got {scales}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, D))
    y = rng.standard_normal((T, B, 1))
    models = []
    for f in hidden_activations:
        for s in scales:
            model = RNN(D, H, 1, hidden_activation=f, output_activation="identity", loss="mse",
                        recurrent_init="orthogonal", seed=seed)
            model.params["W_h"] *= s
            models.append((f"{f}, ρ(W_h)={s:g}", model))
    return models, x, y
