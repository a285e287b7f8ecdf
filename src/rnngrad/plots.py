"""Figures as PNG files: the loss curve of a training run and the gradient-flow picture.

matplotlib is imported inside each function (it is an optional dependency, and the
core must import without it), and figures are drawn on an Agg canvas without pyplot,
so no display and no global figure state are involved. Files are written atomically:
to a temporary file in the target directory, then renamed over the target, so a reader
never sees half a PNG and an interrupted run leaves the previous figure intact.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from ._io import atomic_write

__all__ = ["plot_loss", "plot_flow", "save_figure"]


def _figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'rnngrad[cli]' (or matplotlib)") from None
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path) -> str:
    """Write ``fig`` as a PNG at ``path`` atomically (creating its folder); returns the path as a string."""
    path = os.fspath(path)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    return path


def _number(row: Mapping, key: str):
    v = row.get(key)
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def plot_loss(metrics_rows: Iterable[Mapping], path, baseline: float | None = None,
              baseline_label: str = "baseline", title: str | None = None) -> str:
    """Training and validation loss against the step, as a PNG.

    Parameters
    ----------
    metrics_rows : iterable of dicts with "step" and "train_loss", "val_loss" (either may
        be missing or None on a row, e.g. validation logged only every so often)
    path : where to write the PNG (its folder is created if need be)
    baseline : float, optional, drawn as a dashed horizontal line (e.g. ln V for text)
    baseline_label, title : str, optional

    Returns the path written.
    """
    rows = list(metrics_rows)
    if not rows or any(not isinstance(r, Mapping) or "step" not in r for r in rows):
        raise ValueError("metrics_rows must be a non-empty sequence of dicts, each with a 'step'")
    series = {}
    for key in ("train_loss", "val_loss"):
        pts = [(float(r["step"]), _number(r, key)) for r in rows]
        series[key] = [(s, v) for s, v in pts if v is not None]
    if not series["train_loss"] and not series["val_loss"]:
        raise ValueError("metrics_rows holds no finite 'train_loss' or 'val_loss' to plot")
    fig = _figure((6.4, 4.0))
    ax = fig.add_subplot()
    style = {"train_loss": ("training", "C0", "-", None), "val_loss": ("validation", "C1", "-", "o")}
    for key, pts in series.items():
        if pts:
            label, color, ls, marker = style[key]
            s, v = zip(*pts)
            ax.plot(s, v, ls, color=color, marker=marker, markersize=3, label=label)
    if baseline is not None:
        ax.axhline(float(baseline), color="0.4", linestyle="--", linewidth=1,
                   label=f"{baseline_label} ({float(baseline):.3g})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_flow(results: Sequence, path, heatmap: int | str = 0, title: str | None = None) -> str:
    """The vanishing/exploding-gradient picture, as a PNG.

    Left: ‖dL/dh_t‖ against t on a log scale, one line per result (e.g. each hidden
    activation × W_h scale of :func:`rnngrad.diagnostics.flow_sweep`). Right: a heatmap
    of |dL/dh_t| for each hidden unit (rows) over time (columns), averaged over the
    batch, for the chosen result, on a log colour scale.

    Parameters
    ----------
    results : sequence of :class:`rnngrad.diagnostics.FlowResult`
    path : where to write the PNG
    heatmap : int index into ``results`` or a result's label, default 0
    title : str, optional

    Returns the path written.
    """
    results = list(results)
    if not results:
        raise ValueError("results is empty; pass FlowResults from rnngrad.diagnostics.gradient_flow")
    for r in results:
        if not all(hasattr(r, a) for a in ("label", "norms", "abs_dh", "ratio", "spectral_radius")):
            raise TypeError(f"results must hold rnngrad.diagnostics.FlowResult objects; got {type(r).__name__}")
    if isinstance(heatmap, str):
        labels = [r.label for r in results]
        if heatmap not in labels:
            raise ValueError(f"heatmap {heatmap!r} is not a label of results; labels are {labels}")
        chosen = results[labels.index(heatmap)]
    elif isinstance(heatmap, (int, np.integer)) and not isinstance(heatmap, bool) and -len(results) <= heatmap < len(results):
        chosen = results[heatmap]
    else:
        raise ValueError(f"heatmap must be an index in [0, {len(results)}) or a label; got {heatmap!r}")

    fig = _figure((12.0, 4.6))  # first: it explains a missing matplotlib
    from matplotlib.colors import LogNorm

    ax, hx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    # A log axis cannot show 0; the smallest positive double stands in for an exact zero.
    tiny = np.finfo(np.float64).tiny
    # One line style per label prefix before the first comma (the activation, for flow_sweep's
    # "f, ρ(W_h)=s" labels), so a sweep's nine lines are told apart without reading colours alone.
    styles = {}
    for i, r in enumerate(results):
        style = styles.setdefault(str(r.label).split(",")[0], ("-", "--", ":", "-.")[len(styles) % 4])
        norms = np.maximum(np.asarray(r.norms, dtype=np.float64), tiny)
        t = np.arange(1, norms.size + 1)
        ax.semilogy(t, norms, style, color=f"C{i % 10}", linewidth=2.0 if r is chosen else 1.3,
                    label=f"{r.label}  (ratio {r.ratio:.1e})")
    ax.set_xlabel("time step t (loss at t = T)")
    ax.set_ylabel("‖dL/dh_t‖ (mean over batch)")
    ax.set_title("gradient norm back through time")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best", title="ratio = ‖dL/dh_1‖ / ‖dL/dh_T‖", title_fontsize=7)

    grid = np.asarray(chosen.abs_dh, dtype=np.float64).mean(axis=1).T  # (H, T)
    positive = grid[grid > 0]
    vmax = positive.max() if positive.size else 1.0
    vmin = max(positive.min() if positive.size else vmax, vmax * 1e-12)
    T, H = grid.shape[1], grid.shape[0]
    im = hx.imshow(np.maximum(grid, vmin), aspect="auto", origin="lower", cmap="magma",
                   norm=LogNorm(vmin=vmin, vmax=vmax), extent=(0.5, T + 0.5, -0.5, H - 0.5),
                   interpolation="nearest")
    fig.colorbar(im, ax=hx, label="|dL/dh_t| (mean over batch)")
    hx.set_xlabel("time step t")
    hx.set_ylabel("hidden unit")
    hx.set_title(f"|dL/dh_t| per unit: {chosen.label}\nspectral radius {chosen.spectral_radius:.3g}, "
                 f"ratio {chosen.ratio:.2e}", fontsize=10)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
