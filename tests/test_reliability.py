"""Failures around a run: overflowing states, a full disk, a bad --out, a closed stdout."""

import errno
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import rnngrad.train as train_module
from rnngrad import RNN
from rnngrad.cli import main
from rnngrad.train import RunWriteError, TrainConfig, Trainer


def exploding(num_layers=1, bidirectional=False):
    m = RNN(3, 8, 2, hidden_activation="relu", output_activation="identity", loss="mse", seed=0,
            dtype="float64", num_layers=num_layers, bidirectional=bidirectional)
    for name in m.params:
        if name.startswith("W_h"):
            m.params[name][:] = 40 * np.eye(8)
    rng = np.random.default_rng(0)
    return m, rng.normal(size=(300, 2, 3)), rng.normal(size=(300, 2, 2))


@pytest.mark.parametrize("engine", ["numpy", None])
@pytest.mark.parametrize("call", ["loss", "gradients", "forward"])
def test_check_finite_names_the_layer_and_step_of_overflowing_states(call, engine):
    m, x, y = exploding()
    args = (x,) if call == "forward" else (x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unchecked = getattr(m, call)(*args, engine=engine)
    if call == "loss":
        assert np.isnan(unchecked)  # what the check is for: without it, NaN and no word of where
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no NumPy RuntimeWarning either
        with pytest.raises(FloatingPointError, match=r"layer 0 at step t=\d+ overflowed to Inf/NaN \(f=relu\)"):
            getattr(m, call)(*args, engine=engine, check_finite=True)


def test_check_finite_finds_the_layer_in_a_deep_bidirectional_network():
    m, x, y = exploding(num_layers=2, bidirectional=True)
    with pytest.raises(FloatingPointError, match="layer 0 at step"):
        m.gradients(x, y, check_finite=True)
    for name in ("W_h", "W_h_reverse"):  # only the second level explodes now
        m.params[name][:] = 0.5 * np.eye(8)
    with pytest.raises(FloatingPointError, match="layer 1"):
        m.gradients(x, y, check_finite=True)


def test_check_finite_changes_nothing_when_states_are_finite():
    m, x, y = exploding()
    m.params["W_h"][:] = 0.3 * np.eye(8)
    a = m.gradients(x, y)
    b = m.gradients(x, y, check_finite=True)
    assert a.loss == b.loss and all(np.array_equal(a.grads[k], b.grads[k]) for k in a.grads)


def small_task(steps=30):
    return TrainConfig(task="adding", chunk_len=8, hidden_size=6, steps=steps, checkpoint_every=10,
                       log_every=5, batch_size=8, dtype="float64")


def test_a_full_disk_names_the_file_and_the_intact_checkpoint(tmp_path, monkeypatch):
    real, calls = train_module.save_checkpoint, []

    def second_save_fails(path, *args, **kw):
        calls.append(path.name)
        if calls.count("checkpoint.npz") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kw)

    monkeypatch.setattr(train_module, "save_checkpoint", second_save_fails)
    with pytest.raises(RunWriteError) as info:
        Trainer(small_task(), tmp_path / "run").run()
    message = str(info.value)
    assert message.startswith(f"could not write {tmp_path / 'run' / 'checkpoint.npz'} at step 20 "
                              f"(No space left on device); checkpoint.npz still holds step 10 intact")
    assert "--resume" in message and "Errno" not in message and info.value.errno == errno.ENOSPC
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    resumed = Trainer.resume(tmp_path / "run")  # the intact checkpoint is indeed step 10
    assert resumed.progress.step == 10


def test_an_unwritable_metrics_file_names_itself(tmp_path):
    run = tmp_path / "run"
    (run / "metrics.jsonl").mkdir(parents=True)  # a folder where the file should be
    t = Trainer(small_task(), run)
    for call in (t.run, lambda: t._log({"val_loss": 1.0}, first_loss=1.0)):
        with pytest.raises(RunWriteError, match=r"^could not write .*metrics.jsonl at step 0 \(Is a directory\); "
                                                r"no checkpoint.npz was written yet"):
            call()


def test_out_that_is_not_a_folder_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_book.txt").write_text("hello")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    cases = {"my_book.txt": "is a file, not a folder", "dangling": "is a symbolic link to",
             "my_book.txt/run": "lies under 'my_book.txt', which is not a folder"}
    for out, message in cases.items():
        assert main(["train", "--task", "adding", "--steps", "1", "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rnngrad train: error: --out '{out}' {message}") and err.count("\n") == 1
    assert (tmp_path / "my_book.txt").read_text() == "hello"
    with pytest.raises(ValueError, match="out_dir 'my_book.txt' is a file"):
        Trainer(small_task(), "my_book.txt")


def test_a_closed_stdout_keeps_training_to_the_end_and_saves(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "rnngrad", "train", "--task", "adding", "--chunk-len", "8",
                          "--hidden-size", "6", "--steps", "300", "--log-every", "1", "--checkpoint-every", "100",
                          "--out", str(run), "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.readline()
    p.stdout.close()  # as `| head -1` does
    assert p.wait(120) == 0
    assert p.stderr.read() == ""  # no "Broken pipe", no traceback
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 300 and len(rows) == 301
    assert json.loads(str(np.load(run / "checkpoint.npz")["meta"]))["progress"]["step"] == 300
