"""Training loop: truncated BPTT, exact resume, checkpoints, time budget, learning."""

import json
import math

import numpy as np
import pytest

import rnngrad
from rnngrad.checkpoint import CheckpointError, load_checkpoint
from rnngrad.train import TrainConfig, Trainer

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40
        + "pack my box with five dozen liquor jugs! " * 40)


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return str(p)


def small(text_file=None, **kw):
    base = dict(text=text_file, hidden_size=12, chunk_len=8, batch_size=4, steps=30, log_every=5,
                checkpoint_every=7, sample_every=1000, seed=3, dtype="float64", val_fraction=0.1)
    base.update(kw)
    return TrainConfig(**base)


def comparable(rows):
    """Metrics that must repeat exactly (timings cannot)."""
    return [{k: r[k] for k in ("step", "epoch", "train_loss", "val_loss", "grad_norm")} for r in rows]


@pytest.mark.parametrize("kind", ["text", "adding", "copy"])
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, text_file, kind):
    cfg = small(text_file) if kind == "text" else small(task=kind, chunk_len=12, task_train_size=24,
                                                        task_val_size=8)
    # Three batches per epoch for tasks, so the run crosses several reshuffles.
    whole = Trainer(cfg, tmp_path / "whole")
    assert whole.run() == "done"
    part = Trainer(cfg, tmp_path / "part")
    assert part.run(should_stop=lambda: part.progress.step == 17) == "stopped"
    assert load_checkpoint(tmp_path / "part" / "checkpoint.npz")[0]["progress"]["step"] == 17
    resumed = Trainer.resume(tmp_path / "part")
    assert resumed.progress.step == 17
    assert resumed.run() == "done"
    rows_whole = [json.loads(s) for s in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    rows_part = [json.loads(s) for s in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert comparable(rows_part) == comparable(rows_whole)
    assert [r["step"] for r in rows_whole] == [0, 5, 10, 15, 20, 25, 30]
    for name in whole.model.params:
        np.testing.assert_array_equal(resumed.model.params[name], whole.model.params[name])
    for key, value in whole.optimizer.state_dict().items():
        np.testing.assert_array_equal(resumed.optimizer.state_dict()[key], value)


def test_resume_drops_metric_rows_written_after_the_last_checkpoint(tmp_path, text_file):
    cfg = small(text_file, checkpoint_every=10)
    t = Trainer(cfg, tmp_path)
    t.run(should_stop=lambda: t.progress.step == 10)
    # Simulate a crash after more rows were appended but before the next save, with a cut line.
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 15, "train_loss": 0.0}) + "\n" + '{"step": 20, "tra')
    r = Trainer.resume(tmp_path)
    assert [row["step"] for row in r.progress.rows] == [0, 5, 10]
    r.run()
    steps = [json.loads(s)["step"] for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 5, 10, 15, 20, 25, 30]


def test_truncated_bptt_carries_the_state_of_one_long_forward_pass(tmp_path, text_file):
    """With updates too small to change any parameter, the state carried over k-step chunks
    equals the state of a single forward pass over the whole stream."""
    cfg = small(text_file, optimizer="sgd", lr=1e-300, steps=5, clip_norm=None)
    t = Trainer(cfg, tmp_path)
    before = {k: v.copy() for k, v in t.model.params.items()}
    t.run()
    for k in before:
        np.testing.assert_array_equal(t.model.params[k], before[k])
    whole = t.model.forward(t.data.x[:5 * cfg.chunk_len])
    np.testing.assert_allclose(t.h, whole.h_last, rtol=1e-13, atol=1e-14)


def test_first_row_is_the_untrained_loss(tmp_path, text_file):
    t = Trainer(small(text_file, steps=5), tmp_path)
    t.run()
    first = t.progress.rows[0]
    assert first["step"] == 0 and first["grad_norm"] is None
    # An untrained model with small weights is close to the uniform guess ln V.
    assert abs(first["val_loss"] - math.log(len(t.data.vocab))) < 0.1


def test_training_learns_text_and_a_task(tmp_path, text_file):
    t = Trainer(small(text_file, hidden_size=32, steps=150, lr=1e-2), tmp_path / "text")
    t.run()
    assert t.progress.rows[-1]["val_loss"] < 0.6 * t.data.baseline
    s = Trainer(small(task="sine", chunk_len=20, steps=200, lr=1e-2, task_train_size=256, batch_size=16,
                      hidden_size=16), tmp_path / "sine")
    s.run()
    assert s.progress.rows[-1]["val_loss"] < 0.2 * s.data.baseline


def test_time_budget_stops_and_logs_the_partial_window(tmp_path, text_file):
    t = Trainer(small(text_file, steps=10**6, time_budget=0.2, log_every=10**5, checkpoint_every=10**6), tmp_path)
    assert t.run() == "time"
    assert 0 < t.progress.step < 10**6
    assert t.progress.rows[-1]["step"] == t.progress.step
    assert load_checkpoint(tmp_path / "checkpoint.npz")[0]["progress"]["step"] == t.progress.step


def test_resume_refuses_changed_data(tmp_path, text_file):
    t = Trainer(small(text_file, steps=3), tmp_path / "run")
    t.run()
    with open(text_file, "a", encoding="utf-8") as fh:
        fh.write("more text")
    with pytest.raises(CheckpointError, match="training data changed"):
        Trainer.resume(tmp_path / "run")


@pytest.mark.parametrize("kwargs,match", [
    (dict(task="nope"), "unknown task \\(--task\\) 'nope'"),
    (dict(task="adding", text="x.txt"), "either task or text"),
    (dict(lr=-1.0), "lr \\(--lr\\) must be a finite positive number"),
    (dict(batch_size=0), "batch_size \\(--batch-size\\) must be a positive integer"),
    (dict(dtype="float16"), "unknown dtype \\(--dtype\\) 'float16'"),
    (dict(momentum=1.5), "momentum \\(--momentum\\) must lie in"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs).validate()


def test_text_too_short_for_one_chunk(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("abcdefghij" * 3)
    with pytest.raises(ValueError, match=r"too short for one training chunk.*batch_size=4.*chunk_len=8"):
        Trainer(small(str(p)), tmp_path / "run")


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_diverging_run_stops_with_a_clear_error(tmp_path, text_file):
    # float32 overflows at 3.4e38: an update of 1e38 times the gradient soon does.
    t = Trainer(small(text_file, optimizer="sgd", lr=1e38, clip_norm=None, steps=50, dtype="float32"), tmp_path)
    with pytest.raises(FloatingPointError, match="training diverged"):
        t.run()


def metric_steps(run_dir):
    return [json.loads(s)["step"] for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_new_run_starts_metrics_afresh_but_a_resumed_one_appends(tmp_path, text_file):
    run = tmp_path / "run"
    run.mkdir()
    # metrics.jsonl left over from another run (no checkpoint beside it).
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 9.0}) + "\n" for s in (0, 2, 4, 6)))
    t = Trainer(small(text_file, steps=10), run)
    t.run(should_stop=lambda: t.progress.step == 7)
    assert metric_steps(run) == [0, 5]
    assert Trainer.resume(run).run() == "done"
    assert metric_steps(run) == [0, 5, 10]


def test_loss_plot_without_metric_rows_is_skipped(tmp_path, text_file):
    Trainer(small(text_file, steps=5), tmp_path).run()
    (tmp_path / "metrics.jsonl").unlink()
    t = Trainer.resume(tmp_path)  # nothing left to train and no rows: nothing to plot
    assert t.run() == "done"
    assert t.progress.rows == [] and t.plot_note == "no metric rows to plot"
    assert load_checkpoint(tmp_path / "checkpoint.npz")[0]["progress"]["step"] == 5


@pytest.mark.parametrize("error", [OSError("disk full"), ValueError("nothing finite to plot")])
def test_loss_plot_failure_is_a_warning_not_a_failed_run(tmp_path, text_file, monkeypatch, error):
    import rnngrad.plots

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(rnngrad.plots, "plot_loss", broken)
    t = Trainer(small(text_file, steps=5), tmp_path)
    with pytest.warns(RuntimeWarning, match=f"loss.png not written: {error}"):
        assert t.run() == "done"
    assert t.plot_note == f"it could not be written: {error}"
    assert load_checkpoint(tmp_path / "checkpoint.npz")[0]["progress"]["step"] == 5
    seen = []
    t.warn = seen.append  # the CLI routes warnings to one stderr line
    assert t.write_plot() is None and seen == [f"loss.png not written: {error}"]


def saved_steps(monkeypatch):
    """The step of every Trainer.save (checkpoint and loss.png), in order."""
    steps = []
    original = Trainer.save

    def save(self):
        steps.append(self.progress.step)
        return original(self)

    monkeypatch.setattr(Trainer, "save", save)
    return steps


@pytest.mark.parametrize("steps,expected", [(14, [7, 14]), (10, [7, 10])])
def test_the_last_checkpoint_is_written_once(tmp_path, text_file, monkeypatch, steps, expected):
    saves = saved_steps(monkeypatch)
    t = Trainer(small(text_file, steps=steps), tmp_path)
    assert t.run() == "done"
    assert saves == expected
    assert load_checkpoint(tmp_path / "checkpoint.npz")[0]["progress"]["step"] == steps


def test_a_stop_right_after_a_checkpoint_saves_once_and_a_later_log_row_saves_again(tmp_path, text_file, monkeypatch):
    saves = saved_steps(monkeypatch)
    t = Trainer(small(text_file), tmp_path / "stopped")
    assert t.run(should_stop=lambda: t.progress.step == 7) == "stopped"
    assert saves == [7]
    # A time budget that ends the run right after the save at step 1: its partial log window becomes
    # a row after that save, so the checkpoint is written again with it.
    saves.clear()
    t = Trainer(small(text_file, time_budget=1e-9, log_every=100, checkpoint_every=1), tmp_path / "timed")
    assert t.run() == "time"
    assert saves == [1, 1] and t.progress.rows[-1]["step"] == 1
    assert load_checkpoint(tmp_path / "timed" / "checkpoint.npz")[0]["progress"]["window_steps"] == 0


def test_resume_saves_at_the_end_even_with_nothing_to_train(tmp_path, text_file, monkeypatch):
    Trainer(small(text_file, steps=14), tmp_path).run()
    saves = saved_steps(monkeypatch)
    assert Trainer.resume(tmp_path).run() == "done"
    assert saves == [14]


def test_resume_refuses_fewer_steps_than_the_run_has_taken(tmp_path, text_file):
    Trainer(small(text_file, steps=10), tmp_path).run()
    with pytest.raises(ValueError, match=r"steps \(--steps\) 4 is below step 10, where the run in .* stopped; "
                                         r"give 10 or more"):
        Trainer.resume(tmp_path, steps=4)
    assert Trainer.resume(tmp_path, steps=10).progress.step == 10


@pytest.mark.parametrize("seed", [-1, -(2**40)])
def test_a_negative_seed_is_refused_naming_it(seed):
    with pytest.raises(ValueError, match=f"seed( \\(--seed\\))? must be a non-negative integer; got {seed}"):
        TrainConfig(seed=seed).validate()
    # TaskData (also built from a saved config, without a Trainer) checks before NumPy's own message.
    with pytest.raises(ValueError, match="seed( \\(--seed\\))? must be a non-negative integer"):
        rnngrad.train.TaskData(TrainConfig(task="adding", seed=seed, chunk_len=5, batch_size=2))


@pytest.mark.parametrize("seed", [None, 1.5, "3"])
def test_a_seed_that_is_not_an_integer_is_refused(seed):
    with pytest.raises(TypeError, match="seed( \\(--seed\\))? must be a non-negative integer"):
        TrainConfig(seed=seed).validate()


def test_parameters_that_overflow_stop_the_run(tmp_path, text_file, monkeypatch):
    t = Trainer(small(text_file), tmp_path)
    # The check after each update is validation.all_finite (one BLAS call per parameter).
    monkeypatch.setattr("rnngrad.train.all_finite", lambda arr: False)
    with pytest.raises(FloatingPointError, match="training diverged at step 0: the parameters overflowed"):
        t.step()


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_momentum_reaches_the_optimizer(tmp_path, text_file, optimizer):
    t = Trainer(small(text_file, optimizer=optimizer, momentum=0.7), tmp_path)
    assert t.optimizer.name == optimizer and t.optimizer.momentum == 0.7
    assert Trainer(small(text_file, optimizer=optimizer), tmp_path / "none").optimizer.momentum == 0.0


def test_clip_value_clamps_the_gradients_the_optimizer_gets(tmp_path, text_file, monkeypatch):
    seen = {}
    for clip_value in (None, 1e-3):
        t = Trainer(small(text_file, clip_norm=None, clip_value=clip_value), tmp_path / str(clip_value))
        monkeypatch.setattr(t.optimizer, "step", lambda grads, **kw: seen.__setitem__(
            clip_value, max(float(np.abs(grads[k]).max()) for k in t.model.params)))
        t.step()
    assert seen[None] > 1e-3 and seen[1e-3] == pytest.approx(1e-3)


def test_a_non_finite_validation_loss_stops_before_any_row_or_checkpoint(tmp_path):
    """The training loss of step 0 is finite, the update explodes the ReLU network, and the
    validation loss after it is NaN: the run stops as diverged; metrics.jsonl keeps only the
    step-0 row (valid JSON, no NaN token) and no checkpoint of the diverged model is written."""
    cfg = TrainConfig(task="adding", chunk_len=20, hidden_size=16, hidden_activation="relu",
                      recurrent_init="identity", lr=100.0, clip_norm=None, optimizer="sgd", steps=1,
                      task_train_size=64, task_val_size=32, batch_size=32, log_every=1, checkpoint_every=1)
    t = Trainer(cfg, tmp_path)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=(
            r"training diverged at step 1: the validation loss is nan; lower --lr or set --clip-norm")):
        t.run()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0]
    assert not (tmp_path / "checkpoint.npz").exists()


def test_metrics_rows_are_strict_json_with_null_for_non_finite_values():
    from rnngrad.train import LogRow

    row = LogRow(step=3, epoch=0.5, train_loss=float("inf"), val_loss=1.0, grad_norm=float("nan"),
                 tokens_per_s=None, elapsed_s=0.1)
    text = row.to_json()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"step": 3, "epoch": 0.5, "train_loss": None, "val_loss": 1.0,
                                "grad_norm": None, "tokens_per_s": None, "elapsed_s": 0.1}


@pytest.mark.parametrize("field, value", [("step", -3), ("step", 2.5), ("step", True), ("elapsed_s", float("nan"))])
def test_resume_refuses_damaged_progress_counters(tmp_path, text_file, field, value):
    from rnngrad.checkpoint import save_checkpoint
    from rnngrad.train import load_training_checkpoint

    Trainer(small(text_file, steps=5), tmp_path).run()
    path, meta, arrays = load_training_checkpoint(tmp_path)
    meta["progress"][field] = value
    model = rnngrad.checkpoint.model_from_checkpoint(meta, arrays)
    extra = {k: v for k, v in arrays.items() if not k.startswith("param/")}
    save_checkpoint(path, model, {k: v for k, v in meta.items() if k not in ("format", "version", "model")}, extra)
    with pytest.raises(CheckpointError, match=rf"progress\.{field} is"):
        Trainer.resume(tmp_path)


def test_resume_refuses_nan_optimizer_state(tmp_path, text_file):
    from rnngrad.checkpoint import save_checkpoint
    from rnngrad.train import load_training_checkpoint

    Trainer(small(text_file, steps=5), tmp_path).run()
    path, meta, arrays = load_training_checkpoint(tmp_path)
    arrays["optim/exp_avg.W_h"][0, 0] = np.nan
    model = rnngrad.checkpoint.model_from_checkpoint(meta, arrays)
    extra = {k: v for k, v in arrays.items() if not k.startswith("param/")}
    save_checkpoint(path, model, {k: v for k, v in meta.items() if k not in ("format", "version", "model")}, extra)
    with pytest.raises(ValueError, match=r"state\['exp_avg.W_h'\] contains NaN or Inf"):
        Trainer.resume(tmp_path)


def test_resume_finds_moved_text_only_by_its_content(tmp_path):
    """The path is stored absolute; a moved file is named in one line with the fix, --text at the new
    place is accepted when the content is the same, and another content is refused by its hash
    before any of it is used (nothing of it appears in the message)."""
    src = tmp_path / "a" / "corpus.txt"
    src.parent.mkdir()
    src.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    t = Trainer(small(str(src.resolve()), steps=10), run)
    t.run(should_stop=lambda: t.progress.step == 5)
    moved = tmp_path / "b.txt"
    src.rename(moved)
    with pytest.raises(ValueError, match=r"is missing or no longer a regular file; give the text's new place "
                                         r"with --text PATH"):
        Trainer.resume(run)
    other = tmp_path / "other.txt"
    other.write_text("zzzz qqqq " * 200, encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"the training data changed since the checkpoint was written") as err:
        Trainer.resume(run, text=other)
    assert "zzzz" not in str(err.value) and "'z'" not in str(err.value)
    r = Trainer.resume(run, text=moved)
    assert r.config.text == str(moved.resolve())
    assert r.run() == "done"


def test_cli_stores_the_text_path_absolute_and_resumes_with_a_new_one(tmp_path, text_file, monkeypatch):
    import shutil
    from rnngrad.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(text_file, tmp_path / "book.txt")
    args = ["-H", "8", "-k", "8", "-B", "4", "--log-every", "5", "--no-progress", "--val-fraction", "0.1"]
    assert main(["train", "--text", "book.txt", "--steps", "5", "--out", "r", *args[:6], *args[6:]]) == 0
    from rnngrad.train import load_training_checkpoint
    assert load_training_checkpoint(tmp_path / "r")[1]["config"]["text"] == str((tmp_path / "book.txt").resolve())
    (tmp_path / "book.txt").rename(tmp_path / "moved.txt")
    assert main(["train", "--resume", "r", "--steps", "10", "--text", "moved.txt"]) == 0
