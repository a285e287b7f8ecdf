"""The README's code runs as pasted, and CI runs the README's commands."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_examples_run_as_pasted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the training example writes runs/ into the current directory
    ns = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in blocks("python"):
            exec(compile(code, "README.md", "exec"), ns)
    printed = out.getvalue().splitlines()
    # The comments in the quick start say what these lines print.
    assert "['W_h', 'W_x', 'W_y', 'b_h', 'b_y']" in printed
    assert "(20, 4, 16)" in printed and "(4, 16) (4, 16)" in printed and "float32" in printed
    assert "(20, 4, 5) (20, 4, 3)" in printed
    assert "['W_x', 'W_h', 'b_h', 'W_x_reverse', 'W_h_reverse', 'b_h_reverse']" in printed
    assert "(4, 4, 20, 16) (4, 4, 16)" in printed and "(4, 20, 32)" in printed
    assert "['bias_hh_l0', 'bias_hh_l0_reverse', 'bias_hh_l1']" in printed
    assert printed.count("True") == 5
    assert (tmp_path / "runs" / "adding-demo" / "checkpoint.npz").is_file()
    assert ns["report"].passed and isinstance(ns["res"].loss, float)
    assert np.isfinite(ns["res"].loss)


def test_ci_runs_exactly_the_readme_commands():
    commands = [b.strip() for b in blocks("bash")]
    assert len(commands) >= 2 and commands[1].endswith("python -m pytest -q")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands[:2]:
        assert command in ci_lines
