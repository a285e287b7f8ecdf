"""Figures of where the gradient comes from and how the state dynamics carry it, as PNG files.

:func:`plot_influence` (the map ‖dL_s/dh_t‖), :func:`plot_contributions` (each step's share of
every parameter gradient) and :func:`plot_lyapunov` (the Lyapunov spectrum beside the decay of
‖dL/dh_t‖ it predicts). matplotlib is imported inside the functions, through
:mod:`rnngrad.plots`, which draws on an Agg canvas and writes each file atomically.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_influence", "plot_contributions", "plot_lyapunov"]


def _figure(figsize):
    from .plots import _figure as figure  # imports matplotlib, with the message that explains its absence

    return figure(figsize)


def _save(fig, path) -> str:
    from .plots import save_figure

    return save_figure(fig, path)


def _log_range(values: np.ndarray, span: float = 1e-12):
    """(vmin, vmax) of the positive entries for a log colour scale, at most ``span`` apart."""
    positive = values[values > 0]
    vmax = float(positive.max()) if positive.size else 1.0
    vmin = max(float(positive.min()) if positive.size else vmax, vmax * span)
    return vmin, (vmax if vmax > vmin else vmin * 10)


def _contributions(c, what: str):
    if not all(hasattr(c, a) for a in ("norms", "influence", "grads")):
        raise TypeError(f"{what} needs the result of rnngrad.per_step_contributions; got {type(c).__name__}")
    return c


def plot_influence(c, path, title: str | None = None) -> str:
    """Heatmap of the influence map ‖dL_s/dh_t‖ (rows s, the loss step; columns t, the state
    step), log colour scale; exact zeros (t > s of a unidirectional network) are left blank.

    c : :class:`rnngrad.contributions.PerStepContributions` computed with ``influence=True``.
    Returns the path written.
    """
    c = _contributions(c, "plot_influence")
    if c.influence is None:
        raise ValueError("c has no influence map; compute it with per_step_contributions(..., influence=True)")
    grid = np.asarray(c.influence, dtype=np.float64)
    T = grid.shape[0]
    fig = _figure((6.4, 5.2))
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    ax = fig.add_subplot()
    vmin, vmax = _log_range(grid)
    shown = np.ma.masked_where(grid <= 0, np.maximum(grid, vmin))
    cmap = colormaps["viridis"].with_extremes(bad="white")  # exact zeros blank
    im = ax.imshow(shown, origin="lower", cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax), aspect="auto",
                   interpolation="nearest", extent=(-0.5, T - 0.5, -0.5, T - 0.5))
    fig.colorbar(im, ax=ax, label="‖∂L_s/∂h_t‖ (Frobenius over batch and units; loss units per unit of h)")
    ax.set_xlabel("t, step of the hidden state h_t")
    ax.set_ylabel("s, step of the loss L_s")
    ax.set_title(title or "influence of h_t on the loss at step s")
    return _save(fig, path)


def plot_contributions(c, path, names=None, title: str | None = None) -> str:
    """Each step's term of every parameter gradient. Left: ‖term_t‖ against t on a log scale, one
    line per parameter. Right: the same as a heatmap, each parameter's row divided by its own
    maximum, so that where in time each gradient comes from reads at a glance.

    c : :class:`rnngrad.contributions.PerStepContributions`;  names : parameters to show (default all)
    Returns the path written.
    """
    c = _contributions(c, "plot_contributions")
    names = list(c.norms) if names is None else list(names)
    unknown = [n for n in names if n not in c.norms]
    if not names or unknown:
        raise ValueError(f"names must be parameter names of c, from {list(c.norms)}; got {names!r}")
    norms = np.array([np.asarray(c.norms[n], dtype=np.float64) for n in names])  # (P, T)
    T = norms.shape[1]
    t = np.arange(T)
    fig = _figure((12.0, 4.2 + 0.12 * len(names)))
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    ax, hx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    # A log axis cannot show 0: an exact zero (W_h's term at t = 0 when h_0 = 0) is a gap in its line.
    for i, (n, row) in enumerate(zip(names, norms)):
        ax.semilogy(t, np.where(row > 0, row, np.nan), ("-", "--", ":", "-.")[(i // 10) % 4],
                    color=f"C{i % 10}", marker="o", markersize=2.5, label=n)
    ax.set_xlabel("time step t")
    ax.set_ylabel("‖step t's term of ∂L/∂θ‖_F")
    ax.set_title("per-step contributions to each gradient")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(names) > 8 else 1)
    scaled = norms / np.where(norms.max(axis=1, keepdims=True) > 0, norms.max(axis=1, keepdims=True), 1)
    vmin, _ = _log_range(scaled, 1e-8)
    cmap = colormaps["magma"].with_extremes(bad="white")  # exact zeros blank
    im = hx.imshow(np.ma.masked_where(scaled <= 0, np.maximum(scaled, vmin)), aspect="auto", origin="upper",
                   cmap=cmap, norm=LogNorm(vmin=vmin, vmax=1.0), interpolation="nearest",
                   extent=(-0.5, T - 0.5, len(names) - 0.5, -0.5))
    hx.set_yticks(range(len(names)), names, fontsize=7)
    hx.set_xlabel("time step t")
    fig.colorbar(im, ax=hx, label="‖term_t‖ / max_t ‖term_t‖ (per parameter; blank: exactly 0)")
    hx.set_title("share of each step, per parameter")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _decay_curve(flow) -> np.ndarray:
    """(T,) ‖dL_s/dh_t‖ for the loss at the last step s = T - 1, from the accepted inputs."""
    if hasattr(flow, "influence") and getattr(flow, "influence") is not None:
        return np.asarray(flow.influence, dtype=np.float64)[-1]
    if hasattr(flow, "norms") and not isinstance(getattr(flow, "norms"), dict):
        return np.asarray(flow.norms, dtype=np.float64)  # a FlowResult
    arr = np.asarray(flow, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == arr.shape[1]:
        return arr[-1]
    if arr.ndim == 1 and arr.size >= 2:
        return arr
    raise ValueError("flow_norms_or_dh must be (T,) norms ‖dL/dh_t‖ for a loss at the last step (e.g. "
                     "rnngrad.diagnostics.gradient_flow(...).norms or a FlowResult), a (T, T) influence map, "
                     f"or a PerStepContributions with an influence map; got shape {arr.shape}")


def plot_lyapunov(lam, flow_norms_or_dh, path, spectral_radius: float | None = None,
                  title: str | None = None) -> str:
    """The Lyapunov spectrum beside the gradient decay it predicts.

    Left: the exponents lambda_i (natural log per step) against i, with log ρ(W_h) if given.
    Right: the measured ‖dL_s/dh_t‖ for the loss at the last step s = T - 1, against s - t, on a
    log scale, and the prediction ‖dL_s/dh_s‖ exp(lambda_1 (s - t)) (and ρ^(s - t) if given).

    lam : (k,) exponents from :func:`rnngrad.dynamics.lyapunov`
    flow_norms_or_dh : (T,) norms (e.g. ``gradient_flow(...).norms``, whose loss is on the last
        step), a FlowResult, a (T, T) influence map, or a PerStepContributions
    spectral_radius : ρ(W_h), optional (:func:`rnngrad.dynamics.spectral_radii`)
    Returns the path written.
    """
    lam = np.asarray(lam, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"lam must be a non-empty (k,) array of exponents; got shape {lam.shape}")
    norms = _decay_curve(flow_norms_or_dh)
    T = norms.size
    lag = (T - 1) - np.arange(T)  # s - t with s = T - 1
    fig = _figure((12.0, 4.4))
    ax, gx = fig.subplots(1, 2)
    finite = np.isfinite(lam)
    i = np.arange(1, lam.size + 1)
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.plot(i[finite], lam[finite], "o-", color="C0", markersize=4, label="λ_i")
    if spectral_radius is not None:
        ax.axhline(np.log(spectral_radius), color="C3", linestyle="--", linewidth=1,
                   label=f"log ρ(W_h) = {np.log(spectral_radius):.3g}")
    ax.set_xlabel("index i")
    ax.set_ylabel("Lyapunov exponent λ_i (natural log per step)")
    ax.set_title(f"spectrum along the trajectory (λ_1 = {lam[0]:.3g})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    measured = np.where(norms > 0, norms, np.nan)  # a log axis cannot show 0
    gx.semilogy(lag, measured, "o", color="C0", markersize=3, label="measured ‖∂L_s/∂h_t‖")
    anchor = norms[-1] if norms[-1] > 0 else 1.0
    predicted = anchor * np.exp(lam[0] * lag)
    gx.semilogy(lag, predicted, "-", color="C1", label=f"‖∂L_s/∂h_s‖ exp(λ_1 (s - t)), λ_1 = {lam[0]:.3g}")
    shown = np.concatenate([measured[np.isfinite(measured)], predicted[np.isfinite(predicted) & (predicted > 0)]])
    if spectral_radius is not None:
        gx.semilogy(lag, anchor * float(spectral_radius) ** lag, "--", color="C3",
                    label=f"‖∂L_s/∂h_s‖ ρ^(s - t), ρ = {spectral_radius:.3g}")
    if shown.size:  # the measured curve and λ_1's line set the scale; ρ's line may leave it
        gx.set_ylim(shown.min() / 3, shown.max() * 3)
    gx.set_xlabel("s - t, steps back from the loss (s = T - 1)")
    gx.set_ylabel("‖∂L_s/∂h_t‖")
    gx.set_title("gradient decay and the rate λ_1 predicts")
    gx.grid(True, which="major", alpha=0.3)
    gx.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
