"""Plots: valid PNG files written atomically, no temporary files left, clear errors."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from rnngrad.diagnostics import flow_sweep
from rnngrad.plots import plot_flow, plot_loss, save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = open(path, "rb").read()
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
