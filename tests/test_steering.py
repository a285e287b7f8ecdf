"""Training a person steers and reads: best.npz, early stopping, schedules, weight decay, the
validation extras (bits per character, perplexity, accuracy), RunStatus, progress output and
rnngrad.load."""

import math

import numpy as np
import pytest

import rnngrad
import rnngrad.sample
from rnngrad.checkpoint import CheckpointError, save_checkpoint
from rnngrad.cli import main
from rnngrad.sample import DEFAULT_TEMPERATURE
from rnngrad.schedules import parse_schedule
from rnngrad.train import RunStatus, TrainConfig, Trainer
from test_train import comparable, small, text_file  # noqa: F401  (the fixture)


def params_of(path):
    return {k: v for k, v in rnngrad.load(path).model.params.items()}


def test_best_npz_is_the_model_of_the_best_logged_step(tmp_path, text_file):  # noqa: F811
    cfg = small(text_file, steps=40, lr=0.05, checkpoint_every=100)
    t = Trainer(cfg, tmp_path / "long")
    assert t.run() is RunStatus.DONE
    vals = [r["val_loss"] for r in t.progress.rows]
    best = int(np.argmin(vals))
    best_step = t.progress.rows[best]["step"]
    assert (t.progress.best_step, t.progress.best_val_loss) == (best_step, vals[best])
    # The same run stopped at the best step ends with exactly the model best.npz holds.
    short = Trainer(small(text_file, steps=max(best_step, 1), lr=0.05, checkpoint_every=100), tmp_path / "short")
    short.run()
    kept, want = params_of(tmp_path / "long" / "best.npz"), params_of(tmp_path / "short")
    assert all(np.array_equal(kept[k], want[k]) for k in want)
    run = rnngrad.load(tmp_path / "long", best=True)
    assert run.step == best_step and run.best == {"step": best_step, "val_loss": vals[best]}


def stalled(text_file, **kw):  # noqa: F811
    """A run whose validation loss cannot improve: SGD at a learning rate of 1e-30."""
    return small(text_file, optimizer="sgd", lr=1e-30, steps=100, log_every=5, checkpoint_every=1000, **kw)


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path, text_file):  # noqa: F811
    t = Trainer(stalled(text_file, early_stopping=3), tmp_path / "run")
    assert t.run() is RunStatus.EARLY_STOPPED
    assert t.progress.step == 15 and [r["step"] for r in t.progress.rows] == [0, 5, 10, 15]
    assert t.progress.best_step == 0 and t.progress.evals_since_best == 3
    again = Trainer.resume(tmp_path / "run")  # its patience is spent: nothing more to train
    assert again.run() == "early_stopped" and again.progress.step == 15
    more = Trainer.resume(tmp_path / "run")
    more.config.early_stopping = 5
    assert more.run() is RunStatus.EARLY_STOPPED and more.progress.step == 25
    assert Trainer(stalled(text_file), tmp_path / "no-patience").run() is RunStatus.DONE


def test_cli_early_stopping_says_why_and_keeps_the_best(tmp_path, text_file, capsys):  # noqa: F811
    code = main(["train", "--text", text_file, "-H", "8", "-k", "8", "-B", "4", "--optimizer", "sgd", "--lr",
                 "1e-30", "--steps", "100", "--log-every", "5", "--early-stopping", "2", "--out",
                 str(tmp_path / "r"), "--no-progress", "--val-fraction", "0.1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "stopped early at step 10: no lower validation loss in 2 evaluations in a row" in out
    assert f"best validation loss" in out and "at step 0, kept in" in out
    assert main(["train", "--resume", str(tmp_path / "r"), "--early-stopping", "4"]) == 0
    assert "stopped early at step 20" in capsys.readouterr().out


def test_schedule_lr_in_rows_and_exact_resume(tmp_path, text_file):  # noqa: F811
    cfg = small(text_file, steps=30, lr=0.02, lr_schedule="warmup=5,cosine")
    whole = Trainer(cfg, tmp_path / "whole")
    whole.run()
    spec = parse_schedule("warmup=5,cosine", 30, 0.02)
    assert whole.config.lr_schedule == spec.spec  # the cosine's length pinned in the saved settings
    assert [r["lr"] for r in whole.progress.rows] == [spec.lr_at(max(r["step"] - 1, 0)) for r in whole.progress.rows]
    part = Trainer(small(text_file, steps=30, lr=0.02, lr_schedule="warmup=5,cosine"), tmp_path / "part")
    part.run(should_stop=lambda: part.progress.step == 12)
    rest = Trainer.resume(tmp_path / "part", steps=30)
    rest.run()
    assert comparable(rest.progress.rows) == comparable(whole.progress.rows)
    assert all(np.array_equal(rest.model.params[k], whole.model.params[k]) for k in whole.model.params)
    # A schedule changes the updates: the constant-rate run differs.
    flat = Trainer(small(text_file, steps=30, lr=0.02), tmp_path / "flat")
    flat.run()
    assert not np.array_equal(flat.model.params["W_h"], whole.model.params["W_h"])


def test_weight_decay_is_adamw_or_refused_for_adam(tmp_path, text_file):  # noqa: F811
    with pytest.raises(ValueError, match=r"weight_decay \(--weight-decay\) applies to .*adamw"):
        small(text_file, optimizer="adam", weight_decay=0.1).validate()
    with pytest.raises(ValueError, match="weight_decay"):
        small(text_file, optimizer="adamw", weight_decay=-1.0).validate()
    decayed = Trainer(small(text_file, optimizer="adamw", weight_decay=0.5, steps=10), tmp_path / "a")
    decayed.run()
    plain = Trainer(small(text_file, optimizer="adamw", weight_decay=0.0, steps=10), tmp_path / "b")
    plain.run()
    norm = lambda t: sum(float(np.square(v).sum()) for v in t.model.params.values())  # noqa: E731
    assert norm(decayed) < norm(plain)
    assert rnngrad.load(tmp_path / "a").config.weight_decay == 0.5


def test_text_rows_carry_bits_per_character_and_perplexity(tmp_path, text_file):  # noqa: F811
    t = Trainer(small(text_file, steps=10), tmp_path / "run")
    t.run()
    for r in t.progress.rows:
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-15)
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-12)
        assert r["val_accuracy"] is None


def test_task_accuracy_is_the_fraction_of_counted_steps_predicted(tmp_path):
    t = Trainer(small(task="copy", chunk_len=14, task_train_size=16, task_val_size=12, steps=5), tmp_path / "run")
    t.run()
    d = t.data
    y_hat = t.model.forward(d.val_x).y_hat  # every step is input (lengths = T)
    hits = (y_hat.argmax(-1) == d.val_y)[d.val_mask.astype(bool)]
    assert t.progress.rows[-1]["val_accuracy"] == pytest.approx(hits.mean(), abs=0)
    assert t.progress.rows[-1]["val_bpc"] is None
    adding = Trainer(small(task="adding", chunk_len=6, task_train_size=8, task_val_size=8, steps=2), tmp_path / "a")
    adding.run()
    assert adding.progress.rows[-1]["val_accuracy"] is None  # a regression task has no accuracy


def test_run_status_is_an_enum_that_reads_as_its_string(tmp_path, text_file):  # noqa: F811
    status = Trainer(small(text_file, steps=3), tmp_path / "run").run()
    assert status is RunStatus.DONE and status == "done" and str(status) == "done"


def test_progress_prints_each_row(tmp_path, text_file, capsys):  # noqa: F811
    Trainer(small(text_file, steps=10), tmp_path / "quiet").run()
    assert capsys.readouterr().out == ""
    Trainer(small(text_file, steps=10), tmp_path / "loud").run(progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in lines] == ["0/10", "5/10", "10/10"] and "bpc" in lines[-1]


def test_load_a_run_folder_a_file_and_a_bare_model(tmp_path, text_file):  # noqa: F811
    t = Trainer(small(text_file, steps=10), tmp_path / "run")
    t.run()
    run = rnngrad.load(tmp_path / "run")
    assert isinstance(run.model, rnngrad.RNN) and isinstance(run.config, TrainConfig)
    assert run.step == 10 and run.config.hidden_size == 12 and run.folder == tmp_path / "run"
    assert [r["step"] for r in run.metrics] == [0, 5, 10]
    assert all(np.array_equal(run.model.params[k], t.model.params[k]) for k in t.model.params)
    assert rnngrad.load(tmp_path / "run" / "checkpoint.npz").step == 10
    text = run.sample(prime="the ", length=50, seed=3)
    assert text.startswith("the ") and len(text) == 54 and text == run.sample(prime="the ", length=50, seed=3)
    assert text == run.sample(prime="the ", length=50, seed=3, temperature=DEFAULT_TEMPERATURE)
    assert text != run.sample(prime="the ", length=50, seed=3, temperature=1.5)
    prime = run.sample_prime or rnngrad.sample.default_prime(run.model, run.vocab)
    assert run.sample(length=20, seed=0) == prime + rnngrad.sample.sample(run.model, run.vocab, 20, prime=prime, seed=0)
    assert run.vocab.decode(run.vocab.encode("the fox")) == "the fox"
    save_checkpoint(tmp_path / "bare.npz", rnngrad.RNN(3, 4, 2, seed=0))
    bare = rnngrad.load(tmp_path / "bare.npz")
    assert bare.config is None and bare.step is None and bare.model.hidden_size == 4
    with pytest.raises(ValueError, match="sampling needs a run trained on text"):
        bare.sample()


def test_load_refuses_what_it_cannot_open(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint.npz"):
        rnngrad.load(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        rnngrad.load(tmp_path / "nothing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable rnngrad checkpoint"):
        rnngrad.load(tmp_path / "junk.npz")
    task = Trainer(small(task="adding", chunk_len=6, task_train_size=8, task_val_size=8, steps=2), tmp_path / "t")
    task.run()
    with pytest.raises(ValueError, match="trained on the task 'adding'; sampling needs a run trained on text"):
        rnngrad.load(tmp_path / "t").sample()


def test_the_progress_bar_shows_bits_per_character_and_accuracy(tmp_path, text_file, monkeypatch):  # noqa: F811
    import tqdm

    posts = []

    class Bar:  # stands in for tqdm on a terminal
        disable = False

        def __init__(self, *args, **kw):
            pass

        def set_postfix(self, post, refresh=True):
            posts.append(dict(post))

        def update(self, n=1):
            pass

        def write(self, text):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    assert main(["train", "--text", text_file, "-H", "8", "-k", "8", "-B", "4", "--steps", "10", "--log-every", "5",
                 "--val-fraction", "0.1", "--out", str(tmp_path / "t")]) == 0
    assert posts and all("bpc" in p for p in posts)
    assert main(["train", "--task", "copy", "-H", "8", "-k", "14", "--steps", "5", "--log-every", "5",
                 "--out", str(tmp_path / "c")]) == 0
    assert "acc" in posts[-1] and posts[-1]["acc"].endswith("%")
