"""The README's code runs as pasted, and CI runs the README's commands."""

import contextlib
import io
import re
import shlex
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
    assert printed.count("True") == 7 and "True True" in printed and "(3,) True" in printed
    assert "RNN 64 150" in printed and "def " in printed and "(20,) (20, 20)" in printed
    assert "['val_bpc', 'val_loss', 'val_perplexity']" in printed
    assert (tmp_path / "runs" / "adding-demo" / "checkpoint.npz").is_file()
    assert (tmp_path / "runs" / "text-demo" / "best.npz").is_file()
    assert ns["report"].passed and isinstance(ns["res"].loss, float)
    assert np.isfinite(ns["res"].loss)


def test_ci_runs_exactly_the_readme_commands():
    commands = [b.strip() for b in blocks("bash")]
    assert len(commands) >= 2 and commands[1].endswith("python -m pytest -q")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands[:2]:
        assert command in ci_lines


# Budgets for the console examples: the same commands, fewer updates (the adding run is the
# exception: it runs as printed, since the README says what it reaches).
SMALLER = {"--steps": lambda v: str(max(1, int(v) // 5)), "--time-budget": lambda v: "2", "-T": lambda v: "8"}


def console_commands():
    block = re.search(r"```console\n(.*?)```", README, flags=re.S).group(1)
    for line in block.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("$ rnngrad "):
            yield shlex.split(line[len("$ rnngrad "):])


def smaller(args):
    if "adding" in args:
        return args
    out = [a for a in args]
    for i, a in enumerate(out[:-1]):
        if a in SMALLER:
            out[i + 1] = SMALLER[a](out[i + 1])
    if out[0] == "train" and "--resume" not in out and "--text" not in out and "--task" not in out:
        out += ["--max-chars", "30000"]
    if out[0] == "train" and "--resume" not in out:
        out += ["--hidden-size", "32"] if "--hidden-size" not in out and "-H" not in out else []
        out += ["--steps", "20"] if "--steps" not in out else []
    if out[0] == "train":
        out += ["--no-progress"] + ([] if "--resume" in out else ["--log-every", "5"])
    return out


def test_console_examples_run_as_pasted_with_smaller_budgets(tmp_path, monkeypatch, capsys):
    from rnngrad.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_book.txt").write_text("It was the best of times, it was the worst of times. " * 300)
    commands = list(console_commands())
    assert len(commands) >= 10
    for args in commands:
        code = main(smaller(args))
        out = capsys.readouterr()
        assert code == 0, (args, out.err)
        if "adding" in args:  # what the README says this run reaches
            final = [ln for ln in out.out.splitlines() if ln.startswith("step 600:")][0]
            below = int(re.search(r"\((\d+)% below the baseline", final).group(1))
            assert below >= 85, final
    assert (tmp_path / "runs" / "demo" / "best.npz").is_file()
    assert (tmp_path / "flow_lyapunov.png").is_file() and (tmp_path / "influence.png").is_file()
