"""Figures as PNG files: the loss curve of a training run and the gradient-flow picture.

matplotlib is imported inside each function (it is an optional dependency, and the
core must import without it), and figures are drawn on an Agg canvas without pyplot,
so no display and no global figure state are involved. Files are written atomically:
to a temporary file in the target directory, then renamed over the target, so a reader
never sees half a PNG and an interrupted run leaves the previous figure intact.
"""

from __future__ import annotations

import math
import numbers
import os
import textwrap
from typing import Iterable, Mapping, Sequence

import numpy as np

from ._io import atomic_write

__all__ = ["FIGURE_FORMATS", "plot_loss", "loss_figure", "loss_axis_range", "best_point", "loss_unit", "run_title",
           "plot_flow", "save_figure"]


def _figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'rnngrad[cli]' (or matplotlib)") from None
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


#: The figure formats, by file suffix (matplotlib writes each; JPEG through Pillow, which
#: matplotlib requires). Any other suffix is written as PNG.
FIGURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg", ".pdf": "pdf"}


def save_figure(fig, path) -> str:
    """Write ``fig`` at ``path`` atomically (creating its folder), in the format its suffix names
    (:data:`FIGURE_FORMATS`; PNG otherwise); returns the path as a string."""
    path = os.fspath(path)
    fmt = FIGURE_FORMATS.get(os.path.splitext(path)[1].lower(), "png")
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=110))
    return path


LN2 = math.log(2.0)  # nats per bit: bits = nats / ln 2


def _number(row: Mapping, key: str):
    """The finite float at ``row[key]``, or None (absent, None, NaN or infinite)."""
    v = row.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"metrics_rows: {key!r} at step {row['step']} must be a number or None; "
                        f"got {type(v).__name__} {v!r}")
    v = float(v)
    return v if math.isfinite(v) else None


def _series(rows: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values), each (N,), of the rows whose ``key`` holds a finite number."""
    pts = [(float(r["step"]), v) for r in rows if (v := _number(r, key)) is not None]
    return (np.array([s for s, _ in pts]), np.array([v for _, v in pts])) if pts else (np.empty(0), np.empty(0))


def _finite(values, name: str) -> np.ndarray:
    try:
        v = np.array([np.nan if x is None else x for x in values], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers (None allowed); got {values!r}") from None
    return v[np.isfinite(v)]


def loss_axis_range(values, keep=(), decades: float = 1.5, stretch: float = 2.0) -> tuple[str, float, float, int]:
    """(scale, lo, hi, n_clipped): a y axis on which the bulk of a loss curve is readable.

    The bulk is the 2nd to 98th percentile of the finite ``values`` (numpy's "nearest" method,
    so both ends are actual points; with fewer than 26 values they are the extremes, and nothing
    is clipped). ``scale`` is "log" when every value and every ``keep`` is positive and the bulk
    spans more than ``decades`` decades, else "linear". In the coordinates of that scale (log10 v
    on a log axis), each side of the axis reaches the farthest value on that side if the distance
    from the far end of the bulk to it is at most ``stretch`` times the bulk's height; otherwise
    that side stops at the bulk, so that one spike cannot flatten the rest. Every ``keep`` value
    (a baseline, the best point) lies inside. A height below a floor (0.1 decade, or 10% of the
    largest magnitude) is widened to it, then 5% is added on each side. ``n_clipped`` counts the
    finite values outside [lo, hi]. None, NaN and infinities are ignored.
    """
    v, k = _finite(values, "values"), _finite(keep, "keep")
    if v.size == 0:
        raise ValueError("values holds no finite number; pass at least one finite loss")
    lo_b, hi_b = (float(q) for q in np.quantile(v, [0.02, 0.98], method="nearest"))
    log = bool(np.all(v > 0) and np.all(k > 0) and math.log10(hi_b / lo_b) > decades)
    to = np.log10 if log else np.asarray
    fv, fk, blo, bhi = to(v), to(k), float(to(lo_b)), float(to(hi_b))
    floor = 0.1 if log else (0.1 * max(abs(blo), abs(bhi)) or 1.0)
    reach = stretch * max(bhi - blo, floor)
    hi = float(fv.max()) if fv.max() - blo <= reach else bhi
    lo = float(fv.min()) if bhi - fv.min() <= reach else blo
    lo, hi = min([lo, *fk]), max([hi, *fk])
    if hi - lo < floor:
        lo, hi = (lo + hi - floor) / 2, (lo + hi + floor) / 2
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    n_clipped = int(np.count_nonzero((fv < lo) | (fv > hi)))
    return ("log", 10.0 ** lo, 10.0 ** hi, n_clipped) if log else ("linear", lo, hi, n_clipped)


def best_point(metrics_rows: Iterable[Mapping], key: str = "val_loss") -> tuple[int, float] | None:
    """(step, value) of the smallest finite ``key`` over the rows (the earliest on a tie), or None."""
    steps, values = _series(list(metrics_rows), key)
    if not values.size:
        return None
    i = int(np.argmin(values))  # argmin takes the first of equal minima
    return int(steps[i]), float(values[i])


def loss_unit(loss: str, per: str = "step") -> str:
    """The y-axis unit of a mean loss: ``loss_unit("cross_entropy", "char")`` is "nats/char"."""
    name = {"cross_entropy": "nats", "binary_cross_entropy": "nats", "mse": "squared error"}.get(loss, loss)
    return f"{name}/{per}"


def _compact(x: float, digits: int = 3, sci_below: float = 1e-4) -> str:
    """``x`` to ``digits`` significant digits, exponents written short: 3.7e7, 1.44e4, 3e-3."""
    s = f"{x:.{digits}g}" if not (x and abs(x) < sci_below) else f"{x:.{digits - 1}e}"
    if "e" in s:
        m, e = s.split("e")
        s = f"{m.rstrip('0').rstrip('.') if '.' in m else m}e{int(e)}"
    return s


def _short(x) -> str:
    """3e-3 rather than 0.003: the way a learning rate is written on a command line."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or isinstance(x, (int, np.integer)):
        return str(x)
    return _compact(float(x), sci_below=0.01)


def _schedule_words(spec: str) -> str:
    """"warmup=100,start=0.33,cosine=900,eta_min=0.0" as "warmup 100 + cosine", "step=1000,gamma=0.5"
    as "step 1000 ×0.5": the title's short form of a learning-rate schedule."""
    items = dict(part.strip().partition("=")[::2] for part in str(spec).split(","))
    words = [f"warmup {items['warmup']}"] if items.get("warmup") else []
    words += ["cosine"] if "cosine" in items else []
    if items.get("step"):
        words.append(f"step {items['step']}" + (f" ×{items['gamma']}" if items.get("gamma") else ""))
    return " + ".join(words) or str(spec)


def run_title(name, config: Mapping) -> str:
    """"NAME — data: H=256, tanh, adam lr=3e-3, k=64, B=32, clip 5" from a run's settings
    (``dataclasses.asdict(TrainConfig)``); keys that are absent or None are left out."""
    c = config
    data = (f"task {c['task']}" if c.get("task") else
            os.path.basename(str(c["text"])) if c.get("text") else "default corpus")
    net = f"H={c['hidden_size']}" if c.get("hidden_size") else ""
    if (c.get("num_layers") or 1) > 1:
        net += f"×{c['num_layers']} layers"
    parts = [net + (" bidirectional" if c.get("bidirectional") else ""), c.get("hidden_activation")]
    if c.get("optimizer"):
        opt = f"{c['optimizer']} lr={_short(c['lr'])}" if c.get("lr") is not None else str(c["optimizer"])
        schedule = c.get("lr_schedule")
        parts.append(opt + (f" {_schedule_words(schedule)}" if schedule and schedule != "constant" else ""))
    for key, label in (("chunk_len", "T=" if c.get("task") else "k="), ("batch_size", "B=")):
        if c.get(key) is not None:
            parts.append(f"{label}{c[key]}")
    if c.get("clip_norm"):
        parts.append(f"clip {_short(c['clip_norm'])}")
    return f"{name} — {data}: " + ", ".join(str(p) for p in parts if p)


def _checked_rows(metrics_rows) -> list:
    rows = list(metrics_rows)
    if not rows or any(not isinstance(r, Mapping) or "step" not in r for r in rows):
        raise ValueError("metrics_rows must be a non-empty sequence of dicts, each with a 'step'")
    return rows


def _checked_options(baseline, baseline_label, title, unit, note, best):
    for name, value in (("baseline_label", baseline_label), ("title", title), ("unit", unit), ("note", note)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None; got {type(value).__name__} {value!r}")
    if baseline is not None:
        if isinstance(baseline, bool) or not isinstance(baseline, numbers.Real) or not math.isfinite(baseline):
            raise ValueError(f"baseline must be a finite number or None; got {baseline!r}")
        baseline = float(baseline)
    if best is not None:
        ok = (isinstance(best, (tuple, list)) and len(best) == 2
              and all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in best))
        if not ok:
            raise ValueError(f"best must be (step, value), two finite numbers, or None to take the "
                             f"smallest val_loss; got {best!r}")
        best = (int(best[0]), float(best[1]))
    return baseline, best


def _wrap(text: str, width: int) -> str:
    """Lines of at most ``width`` characters; a long "NAME — SETTINGS" title breaks after the dash
    first, so that the run's name stands on a line of its own."""
    parts = text.split("\n")
    if len(text) > width and len(parts) == 1 and " — " in text:
        name, rest = text.split(" — ", 1)
        parts = [name + " —", rest]
    return "\n".join(textwrap.fill(part, width) for part in parts)


def _spans_decades(v: np.ndarray, decades: float = 1.5) -> bool:
    return bool(v.size and np.all(v > 0) and v.max() / v.min() > 10.0 ** decades)


def _draw_losses(ax, train, val, baseline, baseline_label) -> None:
    # A lone point needs a marker: a line through one point draws nothing.
    if train[1].size:
        ax.plot(*train, "-", color="C0", linewidth=1.4, marker="o" if train[1].size == 1 else None,
                markersize=3, label="training")
    if val[1].size:
        ax.plot(*val, "-", color="C1", linewidth=1.4, marker="o" if val[1].size <= 150 else None,
                markersize=3, label="validation")
    if baseline is not None:
        ax.axhline(baseline, color="0.35", linestyle="--", linewidth=1,
                   label=_wrap(f"{baseline_label} = {baseline:.4g}", 50))  # a long note must not widen the legend


def _mark_clipped(ax, series, lo: float, hi: float) -> str:
    """Triangles on the top (bottom) edge at the steps of the points above (below) the axis; the note."""
    from matplotlib.transforms import blended_transform_factory

    edge = blended_transform_factory(ax.transData, ax.transAxes)  # x in steps, y in axes fractions
    above = below = 0
    far = None  # (value, step) of the point farthest above
    for (steps, values), color in series:
        for side, where, y, marker in (("above", values > hi, 0.985, "^"), ("below", values < lo, 0.015, "v")):
            if where.any():
                ax.plot(steps[where], np.full(where.sum(), y), marker, color=color, markersize=6,
                        transform=edge, clip_on=False, linestyle="none")
        above, below = above + int((values > hi).sum()), below + int((values < lo).sum())
        if (values > hi).any():
            i = int(np.argmax(values))
            far = max(far or (-math.inf, 0), (float(values[i]), int(steps[i])))
    counts = [f"{n} point{'s' if n > 1 else ''} {side} (marked {mark})"
              for n, side, mark in ((above, "above", "▲"), (below, "below", "▼")) if n]
    note = "y clipped to the bulk of the data: " + " and ".join(counts) + " not shown"
    return note + (f", the highest {_compact(far[0])} at step {far[1]}" if far else "")


# Where the best point's text may go, in points from the point, nearest first (up and to the right
# first among equals): a free spot beside the point, else farther out, where the curves part.
_OFFSETS = sorted(((dx * sx, dy * sy) for dx in (12, 40, 80, 140) for dy in (18, 45, 80)
                   for sy in (1, -1) for sx in (1, -1)), key=lambda o: (math.hypot(*o), -o[1], -o[0]))


def _free_offset(ax, point, series, size) -> tuple[float, float]:
    """The offset (in _OFFSETS) whose text box of ``size`` (width, height in pixels) stays inside
    the axes and covers the fewest samples of the drawn lines, found in axes fractions."""
    to_axes = ax.transData + ax.transAxes.inverted()
    samples = []
    for steps, values in series:
        if values.size:
            xy = to_axes.transform(np.column_stack([steps, values]))
            x = np.linspace(xy[0, 0], xy[-1, 0], 1000)  # lines are straight in display space
            samples.append(np.column_stack([x, np.interp(x, xy[:, 0], xy[:, 1])]))
    samples = np.vstack(samples)
    px, py = to_axes.transform([point])[0]
    per_pixel = 1 / np.array([ax.bbox.width, ax.bbox.height])
    per_point = ax.figure.dpi / 72 * per_pixel
    margin = 4 * per_point  # the box's pad and a little air
    w, h = size * per_pixel + 2 * margin

    def cost(offset):
        x0 = px + offset[0] * per_point[0] - (margin[0] if offset[0] > 0 else w - margin[0])
        y0 = py + offset[1] * per_point[1] - (margin[1] if offset[1] > 0 else h - margin[1])
        inside = ((samples[:, 0] > x0) & (samples[:, 0] < x0 + w) & (samples[:, 1] > y0) & (samples[:, 1] < y0 + h))
        return (x0 < 0 or y0 < 0 or x0 + w > 1 or y0 + h > 1, int(inside.sum()))
    return min(_OFFSETS, key=cost)  # the first of the cheapest, so the nearest placements win ties


def _mark_best(ax, best, bits: bool, series) -> None:
    """Star the best point and annotate it where the text hides no line. Call it once the figure
    holds everything else: it lays the figure out first, so the axes have their final size."""
    from matplotlib.text import Text

    step, value = best
    text = f"best {value:.4g}" + (f" ({value / LN2:.4g} bits)" if bits else "") + f" at step {step}"
    ax.plot([step], [value], "*", color="C3", markersize=11, markeredgecolor="k", markeredgewidth=0.5, zorder=5)
    note = ax.annotate(text, (step, value), xytext=_OFFSETS[0], textcoords="offset points", fontsize=8, zorder=6,
                       bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.6", "alpha": 0.9},
                       arrowprops={"arrowstyle": "-", "color": "0.4", "linewidth": 0.8})
    fig = ax.figure
    fig.get_layout_engine().execute(fig)
    extent = Text.get_window_extent(note, fig.canvas.get_renderer())  # the text alone, not its arrow
    dx, dy = _free_offset(ax, (step, value), series, np.array([extent.width, extent.height]))
    note.xyann = (dx, dy)
    note.set_horizontalalignment("left" if dx > 0 else "right")
    note.set_verticalalignment("bottom" if dy > 0 else "top")


def _log_ticks(axis) -> None:
    """On a log axis of a few decades, ticks at 1, 2, 5 times powers of ten, labelled as plain
    numbers (0.02, 0.5, 3e4): 10^0 and 10^-1 alone say too little about a curve between them."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda y, _: _compact(y, digits=2)))
    axis.set_minor_formatter(NullFormatter())


def _epoch_axis(ax, rows) -> None:
    """Epochs along the top, when every row's epoch is the same multiple of its step."""
    ratios = np.array([e / r["step"] for r in rows if r["step"] and (e := _number(r, "epoch")) is not None])
    if not ratios.size or ratios[0] <= 0 or np.ptp(ratios) > 1e-9 * ratios[0]:
        return
    per_step = float(ratios[0])
    top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda e: e / per_step))
    top.set_xlabel("epoch", fontsize=8)
    top.tick_params(labelsize=8)


def _loss_panel(ax, train, val, baseline, baseline_label, best, unit, bits) -> list[str]:
    """Draw the losses on a robust y range (:func:`loss_axis_range`); returns the notes for the figure."""
    values = np.concatenate([train[1], val[1]])
    keep = [x for x in (baseline, None if best is None else best[1]) if x is not None]
    scale, lo, hi, n_clipped = loss_axis_range(values, keep)
    _draw_losses(ax, train, val, baseline, baseline_label)
    ax.set_yscale(scale)
    ax.set_ylim(lo, hi)
    notes = []
    if scale == "log":
        notes.append(f"log y axis: the losses span {math.log10(values.max() / values.min()):.1f} decades")
    if n_clipped:
        notes.append(_mark_clipped(ax, [(train, "C0"), (val, "C1")], lo, hi))
    few_decades = scale == "log" and hi / lo < 1e4
    if few_decades:
        _log_ticks(ax.yaxis)
    ax.set_ylabel(f"loss ({unit})" if unit else "loss")
    if bits:
        right = ax.secondary_yaxis("right", functions=(lambda n: n / LN2, lambda b: b * LN2))
        right.set_ylabel("bits per character (nats / ln 2)")
        if few_decades:
            _log_ticks(right.yaxis)
    ax.grid(True, which="major", alpha=0.3)
    if scale == "log":
        ax.grid(True, which="minor", alpha=0.1)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    return notes


def _lr_panel(ax, steps, lr) -> None:
    ax.plot(steps, lr, "-", color="C2", linewidth=1.2)
    if _spans_decades(lr):
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_ylabel("learning rate", fontsize=8)
    ax.grid(True, alpha=0.3)


def _accuracy_panel(ax, steps, acc) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.plot(steps, acc, "-", color="C4", linewidth=1.2, marker="o" if acc.size <= 150 else None, markersize=3)
    i = int(np.argmax(acc))  # the first of equal maxima
    ax.plot([steps[i]], [acc[i]], "*", color="C3", markersize=10, markeredgecolor="k", markeredgewidth=0.5)
    ax.text(0.99, 0.08, f"best {acc[i]:.1%} at step {int(steps[i])}, last {acc[-1]:.1%}", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=8, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.7"})
    pad = max(0.05 * float(np.ptp(acc)), 0.01)
    ax.set_ylim(max(0.0, acc.min()) - pad, min(1.0, acc.max()) + pad)  # room for a marker at 0% or 100%
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("val accuracy", fontsize=8)
    ax.grid(True, alpha=0.3)


def loss_figure(metrics_rows: Iterable[Mapping], baseline: float | None = None, baseline_label: str = "baseline",
                title: str | None = None, *, unit: str | None = None, best: tuple | None = None,
                note: str | None = None):
    """The figure :func:`plot_loss` writes, as a matplotlib Figure (on an Agg canvas)."""
    rows = _checked_rows(metrics_rows)
    baseline, best = _checked_options(baseline, baseline_label, title, unit, note, best)
    train, val = _series(rows, "train_loss"), _series(rows, "val_loss")
    if not train[1].size and not val[1].size:
        raise ValueError("metrics_rows holds no finite 'train_loss' or 'val_loss' to plot")
    best = best_point(rows) if best is None else best
    acc, lr = _series(rows, "val_accuracy"), _series(rows, "lr")
    panels = [(draw, s) for draw, s, on in ((_accuracy_panel, acc, acc[1].size > 0),
                                            (_lr_panel, lr, lr[1].size > 1 and np.ptp(lr[1]) > 0)) if on]
    fig = _figure((7.4, 4.6 + 1.5 * len(panels)))  # first: it explains a missing matplotlib
    from matplotlib.ticker import MaxNLocator

    axes = fig.subplots(1 + len(panels), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [3] + [1] * len(panels)})[:, 0]
    bits = _series(rows, "val_bpc")[1].size > 0
    notes = _loss_panel(axes[0], train, val, baseline, baseline_label, best, unit, bits)
    for (draw, series), ax in zip(panels, axes[1:]):
        draw(ax, *series)
    if lr[1].size and _lr_panel not in [draw for draw, _ in panels]:
        notes.append(f"learning rate {_short(float(lr[1][0]))} throughout")
    steps = np.concatenate([train[0], val[0]])
    if steps.min() == steps.max():  # one step: give the x axis a width (matplotlib warns otherwise)
        axes[0].set_xlim(steps.min() - 1, steps.max() + 1)
    _epoch_axis(axes[0], rows)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # whole steps
    axes[-1].set_xlabel("update step")
    if note:
        notes.append(note)
    if notes:
        axes[0].set_title(_wrap("; ".join(notes), 115), loc="left", fontsize=8, color="0.3")
    fig.suptitle(_wrap(title or "loss", 88), fontsize=10)
    if best is not None:
        _mark_best(axes[0], best, bits, [train, val])
    return fig


def plot_loss(metrics_rows: Iterable[Mapping], path, baseline: float | None = None,
              baseline_label: str = "baseline", title: str | None = None, *, unit: str | None = None,
              best: tuple | None = None, note: str | None = None) -> str:
    """Training and validation loss against the update step, as a PNG.

    The y axis is chosen by :func:`loss_axis_range`: log when the bulk of the losses spans more
    than 1.5 decades, else linear; either way clipped to the bulk when a few points (a divergence
    spike) would flatten the rest, with the clipped points marked on the edge and counted in a
    note above the axes. The best validation point is starred and annotated. Small panels below
    show the validation accuracy (rows with ``val_accuracy``) and the learning rate (rows whose
    ``lr`` varies; log scale if it spans decades); with ``val_bpc`` in the rows, the right axis
    reads in bits per character, bits = nats / ln 2. Epochs run along the top.

    Parameters
    ----------
    metrics_rows : iterable of dicts with "step" and any of "train_loss", "val_loss", "epoch",
        "lr", "val_bpc", "val_accuracy" (absent, None or non-finite on a row: left out there)
    path : where to write the PNG (its folder is created if need be)
    baseline : float, optional, drawn as a dashed horizontal line (e.g. ln V for text)
    baseline_label : str, its legend entry
    title : str, optional, the run's name and settings (see :func:`run_title`); wrapped if long
    unit : str, optional, the loss's unit for the y axis (see :func:`loss_unit`), e.g. "nats/char"
    best : (step, value), optional; default: the smallest finite val_loss of the rows
    note : str, optional, added to the notes above the axes

    Returns the path written.
    """
    fig = loss_figure(metrics_rows, baseline, baseline_label, title, unit=unit, best=best, note=note)
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
