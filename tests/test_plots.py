"""Plots: valid PNG files written atomically, no temporary files left, clear errors; the loss
figure's y range (log for a divergence, the bulk of the data for a spike), best point and panels."""

import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from rnngrad.diagnostics import flow_sweep
from rnngrad.plots import (best_point, loss_axis_range, loss_figure, loss_unit, plot_flow, plot_loss,
                           run_title, save_figure)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the signature."""
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"  # complete file
    return struct.unpack(">II", data[16:24])


def rows(n=30, val_every=5):
    return [{"step": s, "train_loss": 4.0 * np.exp(-s / 10) + 1,
             "val_loss": 4.1 * np.exp(-s / 10) + 1.1 if s % val_every == 0 else None,
             "tokens_per_s": 1000.0} for s in range(n)]


def test_plot_loss_writes_a_png_and_nothing_else(tmp_path):
    out = tmp_path / "loss.png"
    assert plot_loss(rows(), out, baseline=np.log(60), baseline_label="ln V") == str(out)
    w, h = png_size(out)
    assert w > 300 and h > 200
    assert os.path.getsize(out) > 5000
    assert sorted(os.listdir(tmp_path)) == ["loss.png"]


def test_plot_loss_with_only_training_rows_and_overwrite(tmp_path):
    out = tmp_path / "loss.png"
    out.write_bytes(b"old")
    plot_loss([{"step": 0, "train_loss": 3.0, "val_loss": None}, {"step": 1, "train_loss": 2.5}], out)
    png_size(out)
    assert sorted(os.listdir(tmp_path)) == ["loss.png"]


def test_plot_loss_errors(tmp_path):
    with pytest.raises(ValueError, match="metrics_rows must be a non-empty"):
        plot_loss([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no finite 'train_loss' or 'val_loss'"):
        plot_loss([{"step": 0, "train_loss": None}], tmp_path / "x.png")
    assert os.listdir(tmp_path) == []


def test_plot_loss_creates_a_missing_folder(tmp_path):
    out = tmp_path / "new" / "sub" / "x.png"
    assert plot_loss(rows(), out) == str(out)
    png_size(out)
    assert os.listdir(out.parent) == ["x.png"]


@pytest.fixture(scope="module")
def sweep():
    return flow_sweep(("tanh", "relu"), (0.8, 1.2), T=20, batch_size=3, hidden_size=6)


def test_plot_flow_writes_a_png(tmp_path, sweep):
    out = tmp_path / "flow.png"
    plot_flow(sweep, out, heatmap="relu, ρ(W_h)=1.2", title="fresh models")
    w, h = png_size(out)
    assert w > h > 200
    assert os.path.getsize(out) > 10000
    assert sorted(os.listdir(tmp_path)) == ["flow.png"]


def test_plot_flow_handles_exact_zero_gradients(tmp_path, sweep):
    r = sweep[0]
    zeroed = type(r)(label="zeros", norms=np.zeros_like(r.norms), abs_dh=np.zeros_like(r.abs_dh),
                     ratio=float("nan"), spectral_radius=r.spectral_radius, loss=r.loss)
    plot_flow([zeroed, r], tmp_path / "flow.png", heatmap=0)
    png_size(tmp_path / "flow.png")


def test_plot_flow_errors(tmp_path, sweep):
    with pytest.raises(ValueError, match="results is empty"):
        plot_flow([], tmp_path / "f.png")
    with pytest.raises(ValueError, match="heatmap 'nope' is not a label"):
        plot_flow(sweep, tmp_path / "f.png", heatmap="nope")
    with pytest.raises(ValueError, match="heatmap must be an index"):
        plot_flow(sweep, tmp_path / "f.png", heatmap=10)
    with pytest.raises(TypeError, match="FlowResult"):
        plot_flow([1, 2], tmp_path / "f.png")
    assert os.listdir(tmp_path) == []


def test_interrupted_save_keeps_the_previous_file(tmp_path):
    out = tmp_path / "loss.png"
    plot_loss(rows(), out)
    before = out.read_bytes()

    class Failing:
        def savefig(self, fh, **kw):
            fh.write(PNG_SIGNATURE + b"half a picture")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_figure(Failing(), out)
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["loss.png"]


def test_importing_the_library_does_not_import_matplotlib():
    code = ("import sys, rnngrad, rnngrad.plots, rnngrad.diagnostics, rnngrad.optim, rnngrad.data; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the loss figure's y range, worked by hand ------------------------------------------------
# The bulk is the 2nd..98th percentile by numpy's "nearest" method: of 50 sorted values, indices
# round(0.02 * 49) = 1 and round(0.98 * 49) = 48. A side reaches its farthest value if that lies
# within 2 bulk heights of the far end of the bulk; then 5% of the height is added on each side.

def test_axis_range_of_a_smooth_curve_is_linear_over_all_of_it():
    # Bulk [1 + 2/49, 3 - 2/49], both ends within reach: the axis is [1, 3] plus 0.1 each side.
    assert loss_axis_range(np.linspace(3, 1, 50)) == pytest.approx(("linear", 0.9, 3.1, 0))


def test_axis_range_clips_one_spike_to_the_bulk():
    # 49 values from 1 to 3 and a spike: the bulk is [1 + 2/48, 3] (index 48 is the top of the
    # curve, the spike is index 49), far below 1.5 decades: linear; the spike, 3.7e7 - 1.04 above
    # the bulk's bottom, is beyond 2 heights (3.92): the top stops at 3; the bottom reaches 1.
    values = np.append(np.linspace(3, 1, 49), 3.7e7)
    assert loss_axis_range(values) == pytest.approx(("linear", 0.9, 3.1, 1))


def test_axis_range_of_a_decay_over_decades_is_log():
    # log10 values from 0 to -4: a bulk of 4 - 8/49 decades > 1.5, nothing beyond reach:
    # [-4, 0] plus 0.2 decades on each side.
    assert loss_axis_range(10.0 ** np.linspace(0, -4, 50)) == pytest.approx(("log", 10 ** -4.2, 10 ** 0.2, 0))


def test_axis_range_of_a_divergence_is_log_and_clips_far_points_on_both_sides():
    # 1, then 48 values from 1e3 to 1e5, then 1e12: the bulk is [1e3, 1e5], 2 decades: log. In
    # decades the bulk is [3, 5], reach 2 * 2 = 4: 1e12 (9 above 3) and 1 (5 below 5) are out;
    # [3, 5] plus 0.1 decade each side.
    values = np.concatenate([[1.0], 10.0 ** np.linspace(3, 5, 48), [1e12]])
    assert loss_axis_range(values) == pytest.approx(("log", 10 ** 2.9, 10 ** 5.1, 2))


def test_axis_range_always_shows_the_kept_values():
    curve = np.linspace(3, 1, 50)
    assert loss_axis_range(curve, keep=[5.0]) == pytest.approx(("linear", 0.8, 5.2, 0))
    assert loss_axis_range(curve, keep=[0.0]) == pytest.approx(("linear", -0.15, 3.15, 0))
    spike = np.append(np.linspace(3, 1, 49), 3.7e7)  # a kept point beyond the bulk widens the axis to it
    assert loss_axis_range(spike, keep=[6.0]) == pytest.approx(("linear", 0.75, 6.25, 1))


def test_axis_range_small_and_degenerate_inputs():
    # Fewer than 26 values: the bulk is all of them. A zero rules out the log axis.
    assert loss_axis_range([1.0, 1e-1, 1e-2, 1e-3, 0.0]) == pytest.approx(("linear", -0.05, 1.05, 0))
    assert loss_axis_range([1.0, 1e-1, 1e-2, 1e-3]) == pytest.approx(("log", 10 ** -3.15, 10 ** 0.15, 0))
    # A flat curve is widened to 10% of its value (then 5% each side): 2 +- 0.1, +- 0.01.
    assert loss_axis_range([2.0, 2.0, 2.0]) == pytest.approx(("linear", 1.89, 2.11, 0))
    assert loss_axis_range([0.0]) == pytest.approx(("linear", -0.55, 0.55, 0))
    # None, NaN and infinities are ignored, in values and in keep.
    assert loss_axis_range([None, math.nan, math.inf, 1.0, 3.0], keep=[None, math.nan]) == \
        pytest.approx(("linear", 0.9, 3.1, 0))


def test_axis_range_errors():
    with pytest.raises(ValueError, match="values holds no finite number"):
        loss_axis_range([None, math.nan])
    with pytest.raises(TypeError, match="values must be a sequence of numbers"):
        loss_axis_range(["a", 1.0])


# --- the loss figure -----------------------------------------------------------------------------

def text_rows(n=31, every=50, spike_at=None):
    """A text run's rows (with epoch, val_bpc, lr): a decay from ln 60 to about 1.5."""
    out = []
    for i in range(n):
        s = i * every
        train = 1.4 + (math.log(60) - 1.4) * math.exp(-s / 300)
        if s == spike_at:
            train = 3.7e7
        val = train + 0.05 if s != spike_at else 2.5
        out.append({"step": s, "epoch": s / 92.0, "train_loss": train, "val_loss": val,
                    "grad_norm": None if i == 0 else 1.0, "tokens_per_s": None, "elapsed_s": 0.1 * i,
                    "lr": 3e-3, "val_bpc": val / math.log(2)})
    return out


def loss_axes(fig):
    return fig.axes[0]


@pytest.mark.filterwarnings("error")
def test_a_spike_in_a_long_run_is_clipped_and_said_so(tmp_path):
    fig = loss_figure(text_rows(spike_at=400), baseline=math.log(60), unit="nats/char")
    ax = loss_axes(fig)
    lo, hi = ax.get_ylim()
    assert ax.get_yscale() == "linear" and hi < 5 and lo > 1  # the bulk, 1.4..4.1, fills the axis
    assert "1 point above (marked ▲) not shown, the highest 3.7e7 at step 400" in ax.get_title(loc="left")
    assert ax.get_ylabel() == "loss (nats/char)"
    save_figure(fig, tmp_path / "x.png")  # drawing (and constrained layout) happens here
    png_size(tmp_path / "x.png")


@pytest.mark.filterwarnings("error")
def test_a_divergence_gets_a_log_axis():
    # As a diverging adding-problem run: 1.9 at step 0, then 1e5 falling to 1e3, one point at 3e7.
    rows = [{"step": 0, "train_loss": 1.87, "val_loss": 1.88}, {"step": 2, "train_loss": 3.2e7, "val_loss": 1.0e5}]
    rows += [{"step": s, "train_loss": 1e5 * 0.92 ** s, "val_loss": 0.9e5 * 0.92 ** s} for s in range(4, 62, 2)]
    ax = loss_axes(loss_figure(rows, baseline=1 / 6))
    assert ax.get_yscale() == "log"
    assert "log y axis: the losses span" in ax.get_title(loc="left")
    lo, hi = ax.get_ylim()
    assert lo < 1 / 6 and hi > 1e5  # the baseline and the bulk, 1.9..1e5, are shown


@pytest.mark.filterwarnings("error")
def test_a_normal_run_is_linear_and_unclipped():
    ax = loss_axes(loss_figure(text_rows()))
    assert ax.get_yscale() == "linear"
    assert "clipped" not in ax.get_title(loc="left")
    assert "learning rate 3e-3 throughout" in ax.get_title(loc="left")


def test_best_point_is_the_smallest_val_loss():
    rows = rows_with_gaps()
    finite = [(r["step"], r["val_loss"]) for r in rows
              if isinstance(r.get("val_loss"), float) and math.isfinite(r["val_loss"])]
    expected = min(finite, key=lambda p: p[1])
    assert best_point(rows) == expected
    # The earliest of equal minima; None without any validation.
    tie = [{"step": 1, "val_loss": 2.0}, {"step": 2, "val_loss": 1.0}, {"step": 3, "val_loss": 1.0}]
    assert best_point(tie) == (2, 1.0)
    assert best_point([{"step": 1, "train_loss": 2.0, "val_loss": None}]) is None


def rows_with_gaps():
    """Validation every other row, a NaN, an infinity and a missing key, as metrics rows may hold."""
    rows = []
    for i, s in enumerate(range(0, 300, 10)):
        val = 3.0 - 0.1 * i + 0.02 * (i - 18) ** 2 if i % 2 == 0 else None
        rows.append({"step": s, "train_loss": 2.9 - 0.05 * i, "val_loss": val})
    rows[3]["train_loss"] = math.nan
    rows[4]["val_loss"] = math.inf
    del rows[5]["train_loss"]
    return rows


@pytest.mark.filterwarnings("error")
def test_the_best_point_is_starred_and_annotated():
    rows = rows_with_gaps()
    step, value = min(((r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None
                       and math.isfinite(r["val_loss"])), key=lambda p: p[1])
    ax = loss_axes(loss_figure(rows))
    assert f"best {value:.4g} at step {step}" in [t.get_text() for t in ax.texts]
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [step] and list(stars[0].get_ydata()) == [value]
    given = loss_axes(loss_figure(rows, best=(40, 2.5)))  # an explicit best wins
    assert "best 2.5 at step 40" in [t.get_text() for t in given.texts]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("case", ["single row", "gaps", "old rows", "all None", "only train", "nan val"])
def test_awkward_rows_draw_without_warnings(tmp_path, case):
    rows = {
        "single row": [{"step": 0, "epoch": 0.0, "train_loss": 4.1, "val_loss": 4.09, "grad_norm": None,
                        "tokens_per_s": None, "elapsed_s": 0.0, "lr": 3e-3, "val_bpc": 5.9, "val_accuracy": 0.1}],
        "gaps": rows_with_gaps(),
        "old rows": [{k: v for k, v in r.items() if k not in ("lr", "val_bpc")} for r in text_rows(5)],
        "all None": [{"step": s, "train_loss": 2.0 - s / 10, "val_loss": None, "lr": None, "val_bpc": None,
                      "val_accuracy": None, "epoch": None} for s in range(3)],
        "only train": [{"step": s, "train_loss": 2.0} for s in (5, 6)],
        "nan val": [{"step": 0, "train_loss": math.nan, "val_loss": 1.0}, {"step": 1, "val_loss": math.nan}],
    }[case]
    out = tmp_path / "loss.png"
    long_title = "runs/20261201-my_book — " + ", ".join(f"setting_{i}={i}" for i in range(25))
    assert plot_loss(rows, out, baseline=2.0, baseline_label="ln V", title=long_title, unit="nats/char",
                     note="a note") == str(out)
    w, h = png_size(out)
    assert w > 600 and h > 400
    assert sorted(os.listdir(tmp_path)) == ["loss.png"]


def test_a_long_title_is_wrapped():
    title = "runs/20261201-my_book — " + ", ".join(f"setting_{i}={i}" for i in range(25))
    fig = loss_figure(rows(), title=title)
    lines = fig.get_suptitle().split("\n")
    assert lines[0] == "runs/20261201-my_book —"  # the run's name on a line of its own
    assert len(lines) >= 3 and max(map(len, lines)) <= 88 and " ".join(lines) == title
    short = "runs/x — H=16, relu"
    assert loss_figure(rows(), title=short).get_suptitle() == short


@pytest.mark.filterwarnings("error")
def test_a_schedule_gets_a_learning_rate_panel_log_when_it_spans_decades():
    cosine = [dict(r, lr=1e-5 + (3e-3 - 1e-5) * (1 + math.cos(math.pi * r["step"] / 1500)) / 2) for r in text_rows()]
    fig = loss_figure(cosine)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "learning rate"
    assert fig.axes[1].get_yscale() == "log"  # 3e-3 down to 1e-5: 2.5 decades
    warmup = [dict(r, lr=3e-3 * min(1.0, (r["step"] + 50) / 500)) for r in text_rows()]
    fig = loss_figure(warmup)
    assert fig.axes[1].get_yscale() == "linear"  # 3e-4 to 3e-3: one decade


@pytest.mark.filterwarnings("error")
def test_accuracy_panel_and_bits_axis(tmp_path):
    acc = [dict(r, val_accuracy=min(1.0, 0.125 + r["step"] / 1000)) for r in text_rows()]
    fig = loss_figure(acc)
    assert [a.get_ylabel() for a in fig.axes] == ["loss", "val accuracy"]
    best_acc = max(acc, key=lambda r: r["val_accuracy"])  # 100% first reached at step 900
    assert f"best 100.0% at step {best_acc['step']}, last 100.0%" in [t.get_text() for t in fig.axes[1].texts]
    children = [c.get_ylabel() for c in fig.axes[0].child_axes]
    assert "bits per character (nats / ln 2)" in children  # the rows carry val_bpc
    assert not [c for c in loss_axes(loss_figure(rows())).child_axes if c.get_ylabel()]  # and these do not
    both = [dict(r, lr=3e-3 * (1 + math.cos(math.pi * r["step"] / 1500)) / 2) for r in acc]
    fig = loss_figure(both)
    assert [a.get_ylabel() for a in fig.axes] == ["loss", "val accuracy", "learning rate"]
    save_figure(fig, tmp_path / "x.png")  # all three panels draw without a warning


def test_epochs_along_the_top_only_when_proportional_to_steps():
    def top_labels(rs):
        return [c.get_xlabel() for c in loss_axes(loss_figure(rs)).child_axes]
    assert "epoch" in top_labels(text_rows())
    bent = text_rows()
    bent[3]["epoch"] = 99.0
    assert "epoch" not in top_labels(bent)


def test_loss_figure_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"best must be \(step, value\)"):
        plot_loss(rows(), tmp_path / "x.png", best=(1, math.nan))
    with pytest.raises(TypeError, match="title must be a string or None"):
        plot_loss(rows(), tmp_path / "x.png", title=3)
    with pytest.raises(ValueError, match="baseline must be a finite number"):
        plot_loss(rows(), tmp_path / "x.png", baseline=math.nan)
    with pytest.raises(TypeError, match="'val_loss' at step 2 must be a number or None; got str"):
        plot_loss([{"step": 1, "val_loss": 1.0}, {"step": 2, "val_loss": "1.0"}], tmp_path / "x.png")
    assert os.listdir(tmp_path) == []


def test_run_title_and_loss_unit():
    config = {"text": "/data/my_book.txt", "task": None, "hidden_size": 256, "num_layers": 1,
              "bidirectional": False, "hidden_activation": "tanh", "optimizer": "adam", "lr": 0.003,
              "clip_norm": 5.0, "chunk_len": 64, "batch_size": 32}
    assert run_title("runs/b", config) == "runs/b — my_book.txt: H=256, tanh, adam lr=3e-3, k=64, B=32, clip 5"
    task = dict(config, text=None, task="adding", num_layers=2, bidirectional=True, lr=0.1, clip_norm=None,
                lr_schedule="warmup=100,start=0.3333333333333333,cosine=900,eta_min=0.0", chunk_len=100)
    assert run_title("r", task) == ("r — task adding: H=256×2 layers bidirectional, tanh, "
                                    "adam lr=0.1 warmup 100 + cosine, T=100, B=32")
    stepped = dict(config, lr_schedule="step=1000,gamma=0.5")
    assert run_title("r", stepped) == "r — my_book.txt: H=256, tanh, adam lr=3e-3 step 1000 ×0.5, k=64, B=32, clip 5"
    assert run_title("r", dict(config, lr_schedule="constant")) == run_title("r", config)
    assert run_title("r", {}) == "r — default corpus: "
    assert loss_unit("cross_entropy", "char") == "nats/char"
    assert loss_unit("mse") == "squared error/step"


def overfit_rows():
    """Training falls to 0.015 while validation, best at step 100, climbs back above ln V."""
    out = []
    for s in range(0, 1550, 50):
        train = 0.015 + 4.3 * math.exp(-s / 120)
        val = 2.0 + 3.0 * (1 - math.exp(-max(s - 100, 0) / 300)) + (2.3 if s == 0 else 0.8 if s == 50 else 0.0)
        out.append({"step": s, "train_loss": train, "val_loss": val})
    return out


@pytest.mark.filterwarnings("error")
def test_a_log_axis_of_few_decades_has_plain_number_ticks():
    fig = loss_figure(overfit_rows(), baseline=math.log(78))
    ax = loss_axes(fig)
    fig.canvas.draw()
    assert ax.get_yscale() == "log"
    labels = {t.get_text() for t in ax.get_yticklabels() if t.get_text()}
    assert {"0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5"} <= labels


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("make", [overfit_rows, text_rows, rows_with_gaps])
def test_the_best_points_text_covers_no_line(make):
    fig = loss_figure(make())
    ax = loss_axes(fig)
    fig.canvas.draw()  # the final layout
    (note,) = [t for t in ax.texts if t.get_text().startswith("best ")]
    box = note.get_bbox_patch().get_window_extent()
    assert ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1
    for line in ax.lines:
        xy = line.get_transform().transform(line.get_xydata())
        if len(xy) > 1 and line.get_linestyle() == "-":  # sample the drawn segments densely
            t = np.linspace(0, 1, 50)[:, None]
            xy = np.vstack([a + t * (b - a) for a, b in zip(xy[:-1], xy[1:])])
        inside = (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
        assert not inside.any(), line.get_label()
