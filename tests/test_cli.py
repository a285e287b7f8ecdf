"""The rnngrad command end to end, in a subprocess as a user runs it."""

import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "rnngrad", *args], capture_output=True, text=True, timeout=300)


def test_gradcheck_prints_a_passing_table():
    p = run("gradcheck")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("RNN(input_size=4, hidden_size=5, output_size=3, hidden_activation='tanh'")
    rows = [ln for ln in lines if ln.startswith("| ") and "gradient" not in ln]
    assert [r.split("|")[1].strip() for r in rows] == ["W_x", "W_h", "b_h", "W_y", "b_y", "x", "h0"]
    assert all(r.rstrip().endswith("| yes |") for r in rows)
    assert lines[-1] == "all gradients match finite differences"


@pytest.mark.parametrize("args", [
    ["-f", "relu", "-g", "sigmoid", "-l", "cross_entropy", "--mask", "--reduction", "mean"],
    ["-f", "sigmoid", "-g", "softmax", "-l", "mse", "-T", "3", "-B", "1", "--directions", "2"],
])
def test_gradcheck_options(args):
    p = run("gradcheck", *args)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all gradients match finite differences" in p.stdout


def test_gradcheck_fails_loudly_when_tolerance_cannot_be_met():
    # Tolerances far below what a finite difference can resolve: the table must say NO and exit 1.
    p = run("gradcheck", "--rtol", "1e-16", "--atol", "0")
    assert p.returncode == 1
    assert "| NO |" in p.stdout and "GRADIENT CHECK FAILED" in p.stdout


@pytest.mark.parametrize("args,message", [
    (["gradcheck", "-f", "gelu"], "invalid choice: 'gelu'"),
    (["gradcheck", "-T", "0"], "expected a positive integer, got 0"),
    (["gradcheck", "--eps", "abc"], "expected a positive number, got 'abc'"),
    (["gradcheck", "-g", "identity", "-l", "cross_entropy"], "needs probabilities"),
    ([], "required: COMMAND"),
])
def test_bad_options_give_one_line_errors(args, message):
    p = run(*args)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr


def test_help_lists_defaults():
    p = run("gradcheck", "--help")
    assert p.returncode == 0
    assert "(default: tanh)" in p.stdout and "(default: 1e-06)" in p.stdout


@pytest.mark.parametrize("text,expected", [
    ("café\\n", "café\n"),
    ("a\\tb\\\\n€", "a\tb\\n€"),                  # \\ is one backslash; the n after it stays
    ("\\x41\\u00e9\\N{SNOWMAN}\\101\\'", "Aé☃A'"),
    ("日本\\r\\n", "日本\r\n"),
    ("\\q \\é end\\", "\\q \\é end\\"),           # not an escape: kept as typed
])
def test_prime_escapes_expand_and_keep_non_ascii(text, expected):
    from rnngrad.sample_cli import _expand_escapes
    assert _expand_escapes(text) == expected


@pytest.mark.parametrize("text", ["\\N{NO SUCH NAME}", "\\U00110000"])
def test_invalid_prime_escape_is_a_clear_error(text):
    from rnngrad.sample_cli import _expand_escapes
    with pytest.raises(ValueError, match=r"--prime has an invalid escape"):
        _expand_escapes(text)


def test_every_train_option_is_a_trainconfig_field():
    """rnngrad train builds its TrainConfig (and --resume its list of fixed options) from the
    fields its options share a name with: an option renamed away from its field would be lost."""
    from dataclasses import fields

    from rnngrad.cli import build_parser
    from rnngrad.train import TrainConfig

    args = vars(build_parser().parse_args(["train"]))
    names = {f.name for f in fields(TrainConfig)}
    assert names - set(args) == {"task_train_size", "task_val_size", "sample_length"}
    assert set(args) - names == {"out", "resume", "no_progress", "run", "command", "workers", "scheduler", "threads"}
