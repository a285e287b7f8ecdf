"""rnngrad train / sample / flow end to end, as a user runs them (subprocesses)."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TEXT = "It was the best of times, it was the worst of times; " * 60 + "it was the age of wisdom. " * 60
SMALL = ["--hidden-size", "16", "--chunk-len", "10", "--batch-size", "4", "--log-every", "10",
         "--checkpoint-every", "20", "--sample-every", "1000", "--dtype", "float64", "--no-progress"]


def rnngrad(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "rnngrad", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "dickens.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def rows(run_dir):
    return [json.loads(s) for s in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def comparable(rs):
    return [{k: r[k] for k in ("step", "train_loss", "val_loss", "grad_norm")} for r in rs]


def test_train_then_sample_then_flow(tmp_path, text_file):
    out = tmp_path / "run"
    p = rnngrad("train", "--text", text_file, "--steps", 60, "--out", out, *SMALL)
    assert p.returncode == 0, p.stderr
    assert "output folder" in p.stdout and "below the baseline" in p.stdout and "--- sample" in p.stdout
    # The lock file stays (deleting it would race with a process about to lock it); it holds no lock.
    assert {f.name for f in out.iterdir()} == {"checkpoint.npz", "best.npz", "metrics.jsonl", "loss.png",
                                               ".rnngrad.lock"}
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = rows(out)
    assert r[0]["step"] == 0 and r[-1]["step"] == 60
    assert set(r[1]) >= {"step", "train_loss", "val_loss", "val_bpc", "val_perplexity", "tokens_per_s", "grad_norm"}
    assert all(row["val_bpc"] == row["val_loss"] / math.log(2) for row in r)
    assert "val_accuracy" not in r[1] and "lr" not in r[1]  # a task's metric; a schedule's
    assert r[-1]["val_loss"] < r[0]["val_loss"]

    s = rnngrad("sample", "--checkpoint", out, "--length", 80, "--prime", "It was", "--seed", 1)
    assert s.returncode == 0, s.stderr
    assert s.stdout.startswith("It was") and len(s.stdout) == len("It was") + 80 + 1
    assert s.stdout == rnngrad("sample", "--checkpoint", out / "checkpoint.npz", "--length", 80,
                               "--prime", "It was", "--seed", 1).stdout

    f = rnngrad("flow", "--checkpoint", out, "-T", 20, "--out", tmp_path / "trained_flow.png")
    assert f.returncode == 0, f.stderr
    assert "| trained tanh |" in f.stdout and (tmp_path / "trained_flow.png").stat().st_size > 1000


def test_default_run_folder_is_new_and_named(tmp_path, text_file):
    p = rnngrad("train", "--text", text_file, "--steps", 5, *SMALL, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-dickens") and f"output folder: runs/{run.name}" in p.stdout
    again = rnngrad("train", "--text", text_file, "--steps", 5, "--out", f"runs/{run.name}", *SMALL, cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def interrupt_training(out, text_file, signum, min_rows):
    """Start a long training run, wait until it has logged ``min_rows`` rows, send ``signum``."""
    proc = subprocess.Popen([sys.executable, "-m", "rnngrad", "train", "--text", str(text_file), "--steps",
                             "1000000", "--out", str(out), *SMALL], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    # Count complete lines only: the file may be caught mid-append.
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= min_rows):
        time.sleep(0.02)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return proc, stdout, stderr


def test_sigint_saves_and_resume_matches_an_uninterrupted_run(tmp_path, text_file):
    out = tmp_path / "interrupted"
    proc, stdout, stderr = interrupt_training(out, text_file, signal.SIGINT, min_rows=4)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "stopped by SIGINT" in stdout and f"rnngrad train --resume {out}" in stdout
    assert "Traceback" not in stderr
    saved = json.loads(str(__import__("numpy").load(out / "checkpoint.npz")["meta"]))["progress"]["step"]
    total = saved + 25
    p = rnngrad("train", "--resume", out, "--steps", total)
    assert p.returncode == 0, p.stderr
    assert f"resuming {out} at step {saved}" in p.stdout
    ref = tmp_path / "uninterrupted"
    p = rnngrad("train", "--text", text_file, "--steps", total, "--out", ref, *SMALL)
    assert p.returncode == 0, p.stderr
    assert comparable(rows(out)) == comparable(rows(ref))


def test_sigterm_also_saves(tmp_path, text_file):
    out = tmp_path / "run"
    proc, stdout, _ = interrupt_training(out, text_file, signal.SIGTERM, min_rows=1)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stdout and (out / "checkpoint.npz").exists()


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"\x00\x01\x02binary\xff\xfe" * 50, ""),
    (b"caf\xe9 au lait " * 100, "UTF-8"),
    (b"too short", "too few to hold out --val-fraction"),
])
def test_bad_text_files_give_one_line_errors(tmp_path, content, message):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    r = rnngrad("train", "--text", p, "--steps", 5, "--out", tmp_path / "run", *SMALL)
    assert r.returncode == 2
    assert r.stderr.startswith("rnngrad train: error:") and message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_files_and_bad_checkpoints(tmp_path):
    r = rnngrad("train", "--text", tmp_path / "nope.txt", "--steps", 5, "--out", tmp_path / "run")
    assert r.returncode == 2 and "nope.txt" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really")
    for args in (["sample", "--checkpoint", bad], ["train", "--resume", tmp_path], ["flow", "--checkpoint", bad]):
        r = rnngrad(*args)
        assert r.returncode == 2, args
        assert "checkpoint" in r.stderr and "Traceback" not in r.stderr, args


def test_task_training_and_sampling_refusal(tmp_path):
    out = tmp_path / "adding"
    r = rnngrad("train", "--task", "adding", "--chunk-len", 20, "--steps", 30, "--hidden-size", 8, "--out", out,
                "--log-every", 10, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "baseline 0.1667 (MSE of always predicting 1)" in r.stdout
    s = rnngrad("sample", "--checkpoint", out)
    assert s.returncode == 2 and "not on text" in s.stderr


def test_flow_on_fresh_models(tmp_path):
    png = tmp_path / "flow.png"
    r = rnngrad("flow", "--activations", "tanh", "relu", "--scales", "0.5", "1.5", "-T", "30", "--out", png)
    assert r.returncode == 0, r.stderr
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and "model" not in ln]
    assert len(table) == 4
    ratios = {ln.split("|")[1].strip(): float(ln.split("|")[5]) for ln in table}
    # ρ(W_h) = 0.5 shrinks the gradient at every step back; 1.5 with ReLU makes it grow.
    assert ratios["tanh, ρ(W_h)=0.5"] < 1e-3 and ratios["relu, ρ(W_h)=1.5"] > 1
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_help_for_every_command():
    for cmd in ("train", "sample", "flow", "gradcheck"):
        r = rnngrad(cmd, "--help")
        assert r.returncode == 0 and "default" in r.stdout, cmd


def test_resume_refuses_options_it_would_ignore(tmp_path, text_file):
    out = tmp_path / "run"
    assert rnngrad("train", "--text", text_file, "--steps", 5, "--out", out, *SMALL).returncode == 0
    r = rnngrad("train", "--resume", out, "--hidden-size", 64, "--lr", 0.1)
    assert r.returncode == 2
    assert "only --steps, --time-budget, --early-stopping and --text (the same text at a new place) may change (got --hidden-size, --lr)" in r.stderr
    r = rnngrad("train", "--resume", out, "--steps", 8, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert rows(out)[-1]["step"] == 8


def test_time_budget_is_per_invocation_so_resume_continues(tmp_path, text_file):
    out = tmp_path / "run"
    r = rnngrad("train", "--text", text_file, "--steps", 10**6, "--time-budget", 0.3, "--out", out,
                "--checkpoint-every", 10**6, *[a for a in SMALL if a not in ("--checkpoint-every", "20")])
    assert r.returncode == 0 and "time budget" in r.stdout, r.stderr
    first = rows(out)[-1]["step"]
    # Resumed without --time-budget, the saved 0.3 s applies afresh: it trains again (at least one
    # step; with the compiled kernels a new process's first step includes loading them).
    r = rnngrad("train", "--resume", out, "--steps", first + 20, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert rows(out)[-1]["step"] > first
    r = rnngrad("train", "--resume", out, "--steps", first + 20, "--time-budget", 60, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert rows(out)[-1]["step"] == first + 20


def test_flow_without_matplotlib_prints_its_table_and_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from rnngrad.cli import main; "
            f"sys.exit(main(['flow', '-T', '5', '--out', r'{tmp_path / 'f.png'}']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| tanh, ρ(W_h)=0.5 |" in r.stdout  # the table needs NumPy only
    assert "f.png not written" in r.stdout and "pip install 'rnngrad[cli]'" in r.stdout and not r.stderr
    assert not (tmp_path / "f.png").exists()


def test_damaged_training_checkpoint_is_refused_clearly(tmp_path):
    from rnngrad import RNN
    from rnngrad.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "bad" / "checkpoint.npz", RNN(3, 4, 3), {"config": [1, 2]})
    r = rnngrad("train", "--resume", tmp_path / "bad")
    assert r.returncode == 2 and "not a training checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_momentum_for_adam_is_refused(tmp_path, text_file):
    r = rnngrad("train", "--text", text_file, "--momentum", 0.9, "--out", tmp_path / "r", *SMALL)
    assert r.returncode == 2 and "momentum (--momentum) applies to the sgd and rmsprop optimizers" in r.stderr


def test_a_new_run_does_not_append_to_an_old_metrics_file(tmp_path, text_file):
    old, out = tmp_path / "old", tmp_path / "new"
    assert rnngrad("train", "--text", text_file, "--steps", 6, "--out", old, *SMALL, "--log-every", 2).returncode == 0
    out.mkdir()
    (out / "metrics.jsonl").write_bytes((old / "metrics.jsonl").read_bytes())  # left over, no checkpoint
    r = rnngrad("train", "--text", text_file, "--steps", 2, "--out", out, *SMALL, "--log-every", 2)
    assert r.returncode == 0, r.stderr
    assert [row["step"] for row in rows(out)] == [0, 2]


def test_resume_with_the_metrics_file_removed_still_saves_and_exits_0(tmp_path, text_file):
    out = tmp_path / "run"
    assert rnngrad("train", "--text", text_file, "--steps", 5, "--out", out, *SMALL).returncode == 0
    (out / "metrics.jsonl").unlink()
    r = rnngrad("train", "--resume", out)
    assert r.returncode == 0, r.stderr
    assert "loss.png not updated: no metric rows to plot" in r.stdout and "Traceback" not in r.stderr
    r = rnngrad("train", "--resume", out, "--steps", 10)
    assert r.returncode == 0, r.stderr
    assert [row["step"] for row in rows(out)] == [10] and f"{out / 'loss.png'}" in r.stdout


@pytest.mark.parametrize("meta,missing", [(None, "config"), ({"config": [1, 2], "vocab": None}, "config"),
                                          ({"config": {"text": None}}, "optimizer")])
def test_sample_and_flow_refuse_a_checkpoint_not_written_by_training(tmp_path, meta, missing):
    from rnngrad import RNN
    from rnngrad.checkpoint import save_checkpoint
    plain = save_checkpoint(tmp_path / "plain.npz", RNN(3, 4, 3), meta)
    for args in (["flow", "--checkpoint", plain, "-T", 5, "--out", tmp_path / "f.png"], ["sample", "--checkpoint", plain]):
        r = rnngrad(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr == (f"rnngrad {args[0]}: error: {str(plain)!r} is not a training checkpoint (no "
                            f"{missing!r} section); train with rnngrad train to make one\n"), args


def test_sample_prime_escapes_keep_non_ascii_characters(tmp_path):
    text = tmp_path / "cafe.txt"
    text.write_text("un café\tnoir\\ s'il vous plaît\n" * 80, encoding="utf-8")
    out = tmp_path / "run"
    assert rnngrad("train", "--text", text, "--steps", 2, "--out", out, *SMALL).returncode == 0
    r = rnngrad("sample", "--checkpoint", out, "--prime", "café\\n\\t\\\\î", "--escapes", "--length", 5, "--seed", 0)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("café\n\t\\î") and len(r.stdout) == len("café\n\t\\î") + 5 + 1


def main_error(capsys, *args):
    """(exit status, stderr) of rnngrad run in this process, for errors raised before any training."""
    from rnngrad.cli import main
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return code, err


@pytest.mark.parametrize("args,message", [
    (["--text", "{text}", "--max-chars", 10], "--max-chars applies to the default corpus only, not to --text"),
    (["--task", "adding", "--max-chars", 10], "--max-chars applies to the default corpus only, not to --task"),
    (["--task", "adding", "--val-fraction", 0.2], "--val-fraction applies to text only"),
    (["--task", "adding", "--seed", -1], "seed must be a non-negative integer; got -1"),
    (["--text", "{text}", "--seed", -3], "seed must be a non-negative integer; got -3"),
])
def test_train_refuses_options_it_would_ignore_or_misread(tmp_path, text_file, capsys, args, message):
    args = [str(a).replace("{text}", str(text_file)) for a in args]
    code, err = main_error(capsys, "train", *args, "--out", tmp_path / "run", *SMALL)
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


@pytest.fixture
def text_run(tmp_path, text_file):
    from rnngrad.train import TrainConfig, Trainer
    out = tmp_path / "run"
    Trainer(TrainConfig(text=str(text_file), hidden_size=8, chunk_len=10, batch_size=4, steps=5, log_every=5,
                        dtype="float64"), out).run()
    return out


def test_resume_refuses_fewer_steps_than_taken(text_run, capsys):
    code, err = main_error(capsys, "train", "--resume", text_run, "--steps", 3)
    assert code == 2 and "--steps) 3 is below step 5, where the run in" in err and "give 5 or more" in err


@pytest.mark.parametrize("args,message", [
    (["--seed", 3], "--checkpoint takes the model, its seed and its data from the checkpoint; "
                    "--activations, --scales, --hidden-size and --seed are for fresh models only (got --seed)"),
    (["--activations", "relu", "--scales", 2, "-H", 4], "(got --activations, --scales, --hidden-size)"),
    (["-T", 100000], "-T 100000 is longer than the held-out text of this run allows ("),
])
def test_flow_from_a_checkpoint_refuses_what_it_cannot_use(tmp_path, text_run, capsys, args, message):
    code, err = main_error(capsys, "flow", "--checkpoint", text_run, *args, "--out", tmp_path / "f.png")
    assert code == 2 and message in err and "--chunk-len" not in err
    assert not (tmp_path / "f.png").exists()


def test_flow_refuses_an_out_in_a_missing_folder_instead_of_creating_it(tmp_path, text_run, capsys):
    from rnngrad.cli import main
    out = tmp_path / "new" / "flow.png"  # a typo in a folder name should not silently make folders
    assert main(["flow", "--checkpoint", str(text_run), "-T", "8", "-B", "2", "--out", str(out)]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err and not out.parent.exists()
    out.parent.mkdir()
    assert main(["flow", "--checkpoint", str(text_run), "-T", "8", "-B", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
