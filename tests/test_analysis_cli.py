"""rnngrad flow --lyapunov and rnngrad contributions, end to end; figure files by suffix."""

import math

import numpy as np
import pytest

from rnngrad.cli import main
from rnngrad.diagnostics import fresh_models
from rnngrad.dynamics import lyapunov
from test_train import small, text_file  # noqa: F401  (the fixture)
from rnngrad.train import Trainer

pytest.importorskip("matplotlib")

PNG, JPEG, PDF = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"%PDF"


def table_rows(out: str, header: str) -> list[list[str]]:
    lines = out[out.index(header):].splitlines()[2:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln.startswith("|")]


def test_flow_lyapunov_prints_the_exponent_of_each_model_and_its_figure(tmp_path, capsys):
    out = tmp_path / "flow.png"
    assert main(["flow", "-T", "25", "-B", "4", "--activations", "tanh", "relu", "--scales", "0.5", "1.2",
                 "--lyapunov", "--lyapunov-k", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = table_rows(text, "| model | λ_1 per step")
    models, x, _ = fresh_models(["tanh", "relu"], [0.5, 1.2], 25, 4)
    assert [r[0] for r in rows] == [label for label, _ in models]
    for (label, model), row in zip(models, rows):
        lam = lyapunov(model, x, k=3, warmup=5)  # the same call, independently
        assert float(row[1]) == pytest.approx(lam[0], abs=1e-4)
        assert float(row[3]) == pytest.approx(math.log(np.max(np.abs(np.linalg.eigvals(model.params["W_h"])))), abs=1e-4)
    assert out.read_bytes()[:8] == PNG and (tmp_path / "flow_lyapunov.png").read_bytes()[:8] == PNG


def test_flow_and_lyapunov_of_a_trained_checkpoint(tmp_path, text_file, capsys):  # noqa: F811
    Trainer(small(text_file, steps=5), tmp_path / "run").run()
    assert main(["flow", "--checkpoint", str(tmp_path / "run"), "-T", "12", "-B", "2", "--lyapunov",
                 "--out", str(tmp_path / "f.jpg")]) == 0
    assert "| trained tanh |" in capsys.readouterr().out
    assert (tmp_path / "f.jpg").read_bytes()[:3] == JPEG  # the suffix's format, not PNG bytes
    assert (tmp_path / "f_lyapunov.jpg").read_bytes()[:3] == JPEG


def test_contributions_command_tables_and_figures(tmp_path, capsys):
    assert main(["contributions", "-T", "15", "-B", "3", "-f", "relu", "--scale", "0.9",
                 "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    rows = table_rows(text, "| parameter |")
    assert [r[0] for r in rows] == ["W_x", "W_h", "b_h", "W_y", "b_y"]
    assert all(float(r[3]) >= 1.0 - 1e-12 for r in rows)  # the triangle inequality: sum of norms >= norm of sum
    for name in ("influence.png", "contributions.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


@pytest.mark.parametrize("args,message", [
    (["flow", "--out", "{tmp}/missing/f.png"], "the folder '{tmp}/missing' does not exist"),
    (["flow", "--out", "{tmp}/f.gif"], "unknown file type '.gif'"),
    (["flow", "--out", "{tmp}"], "is a folder; give a file name"),
    (["contributions", "--out", "{tmp}/missing"], "the folder '{tmp}/missing' does not exist"),
    (["contributions", "--checkpoint", "{tmp}", "--scale", "2"], "--activation and --scale are for a fresh model"),
])
def test_analysis_commands_refuse_bad_output_in_one_line_before_computing(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err and err.count("\n") == 1


def test_flow_writes_pdf_by_suffix(tmp_path, capsys):
    assert main(["flow", "-T", "5", "-B", "2", "--activations", "tanh", "--scales", "1", "--out",
                 str(tmp_path / "f.pdf")]) == 0
    assert (tmp_path / "f.pdf").read_bytes()[:4] == PDF
