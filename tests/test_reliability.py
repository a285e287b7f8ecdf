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


# --- hostile files and settings, found by an adversarial run -------------------------------------

def _rewrite_member(path, name, transform):
    """Rewrite member ``name`` of the .npz at ``path`` through ``transform(bytes) -> bytes``."""
    import zipfile
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    members[name] = transform(members[name])
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)


def test_deeply_nested_metadata_and_a_broken_npy_header_are_checkpoint_errors(tmp_path):
    import io as _io
    import rnngrad
    from rnngrad.checkpoint import CheckpointError, save_checkpoint

    path = tmp_path / "c.npz"
    save_checkpoint(path, RNN(3, 4, 2, seed=0))

    def nested(_):
        buf = _io.BytesIO()
        np.lib.format.write_array(buf, np.array("[" * 100000 + "]" * 100000))
        return buf.getvalue()

    _rewrite_member(path, "meta.npy", nested)
    with pytest.raises(CheckpointError, match="corrupted metadata: RecursionError"):
        rnngrad.load(path)
    save_checkpoint(path, RNN(3, 4, 2, seed=0))
    # the ")" closing the shape tuple replaced by a space: numpy's header parser raises TokenError
    _rewrite_member(path, "param/W_h.npy", lambda b: b.replace(b"(4, 4)", b"(4, 4 ", 1))
    with pytest.raises(CheckpointError, match="not a readable rnngrad checkpoint"):
        rnngrad.load(path)


def test_a_name_too_long_for_the_file_system_is_a_checkpoint_error():
    import rnngrad
    from rnngrad.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="cannot be opened"):
        rnngrad.load("a" * 300)


def test_absurd_depth_and_unallocatable_sizes_are_refused_at_once():
    import time
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="num_layers=10000000 is more than 1024 stacked layers"):
        RNN(2, 8, 1, num_layers=10**7)
    with pytest.raises(ValueError, match="more than this machine's .* GiB of memory"):
        RNN(2, 3000, 1, num_layers=1000)
    assert time.perf_counter() - t0 < 5  # counted, not built


def test_a_closed_stdout_from_the_start_neither_crashes_nor_stops_the_run(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run(f"{sys.executable} -m rnngrad train --task adding -k 5 -H 4 --steps 20 --out {run} "
                       f"--no-progress >&-", shell=True, capture_output=False, stderr=subprocess.PIPE, text=True,
                       timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr
    assert json.loads(str(np.load(run / "checkpoint.npz")["meta"]))["progress"]["step"] == 20


def test_a_diverged_model_between_log_rows_is_not_checkpointed(tmp_path):
    cfg = TrainConfig(task="adding", chunk_len=20, hidden_size=16, hidden_activation="relu",
                      recurrent_init="identity", lr=100.0, clip_norm=None, optimizer="sgd", steps=6,
                      log_every=100, checkpoint_every=1, dtype="float32")
    with pytest.raises(FloatingPointError, match="found before saving the checkpoint"):
        Trainer(cfg, tmp_path / "run").run()
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_metrics_that_are_not_a_regular_file_are_refused_in_one_line(tmp_path):
    t = Trainer(small_task(steps=10), tmp_path / "run")
    t.run()
    (tmp_path / "run" / "metrics.jsonl").unlink()
    (tmp_path / "run" / "metrics.jsonl").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="is not a regular file; a run's metrics.jsonl is one"):
        Trainer.resume(tmp_path / "run")


def test_damaged_optimizer_moments_and_progress_are_refused(tmp_path):
    import rnngrad
    from rnngrad.checkpoint import CheckpointError
    from rnngrad.optim import Adam

    m = RNN(3, 4, 2, seed=0)
    opt = Adam(m.params, lr=1e-3)
    state = opt.state_dict()
    state["exp_avg_sq.W_h"] = -np.ones_like(state["exp_avg_sq.W_h"])
    with pytest.raises(ValueError, match="negative entries, which a sum of squared gradients cannot have"):
        Adam(m.params, lr=1e-3).load_state_dict(state)
    Trainer(small_task(steps=5), tmp_path / "run").run()
    path = tmp_path / "run" / "checkpoint.npz"

    def negative_step(b):
        import io as _io
        meta = json.loads(str(np.lib.format.read_array(_io.BytesIO(b))))
        meta["progress"]["step"] = -5
        buf = _io.BytesIO()
        np.lib.format.write_array(buf, np.array(json.dumps(meta)))
        return buf.getvalue()

    _rewrite_member(path, "meta.npy", negative_step)
    with pytest.raises(CheckpointError, match="progress.step is -5"):
        rnngrad.load(tmp_path / "run")
