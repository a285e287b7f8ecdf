"""Data-parallel training (rnngrad.distributed_train) on a LocalCluster of two worker processes.

The oracle is the single-process Trainer (its step, model.gradients, is proved against PyTorch in
test_bptt.py / test_network.py; its resume against an unbroken run in test_train.py): 50 updates
with the gradients computed by the workers must give the single-process parameters to 1e-12
relative per parameter (float64), for a text run (2 layers, carried state across chunks and an
epoch boundary, where it resets) and a task run (the copy task: tokens, a loss mask, a reshuffle
every 5 updates, dropout between 2 layers). Repeat runs, a resumed run and a run whose worker is
SIGKILLed mid-step must give the undisturbed bits. One cluster serves the module; the kill runs last.
"""

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import fields, replace

import numpy as np
import rnngrad
import pytest

pytest.importorskip("distributed")

from conftest import assert_close  # noqa: E402
from rnngrad import distributed as rd  # noqa: E402
from rnngrad.distributed_train import (  # noqa: E402
    DataParallel, HeldSequences, attach_workers, connect_for_training)
from rnngrad.train import RunStatus, TrainConfig, Trainer  # noqa: E402

RTOL = 1e-12
STEPS = 50
SMALL = dict(dtype="float64", steps=STEPS, log_every=10, checkpoint_every=STEPS, sample_every=10_000, seed=3)
# 1,000 characters: ~237 steps per stream with B = 4, so 29 chunks of k = 8 an epoch; 50 updates cross one.
TEXT = TrainConfig(max_chars=1000, hidden_size=8, num_layers=2, batch_size=4, chunk_len=8, **SMALL)
# The copy task (T >= 2·length + 1 = 11): 40 sequences, batches of 8: a new shuffle every 5 updates.
TASK = TrainConfig(task="copy", chunk_len=12, hidden_size=8, num_layers=2, dropout=0.3, batch_size=8,
                   task_train_size=40, task_val_size=16, lr=1e-2, **SMALL)


@pytest.fixture(scope="module")
def client():
    c = connect_for_training(workers=2)
    yield c
    c.close()


def params_of(trainer) -> dict:
    return {k: v.copy() for k, v in trainer.model.params.items()}


def train(config, folder, client=None, should_stop=lambda: False, plot=False) -> tuple[Trainer, RunStatus]:
    trainer = Trainer(config, folder)
    if not plot:  # loss.png costs more than the 50 updates of these tiny models; nothing here reads it
        trainer.write_plot = lambda: None
    if client is None:
        return trainer, trainer.run(should_stop=should_stop)
    with attach_workers(trainer, client) as dp:
        status = trainer.run(should_stop=should_stop)
        assert dp.sent_batches == 0  # every batch was found in the data held on the workers
        return trainer, status


def assert_same_params(got: dict, want: dict, rtol=RTOL):
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert_close(got[k], v, rtol, k)


def assert_bit_identical(got: dict, want: dict):
    for k, v in want.items():
        assert np.array_equal(got[k], v), k


@pytest.fixture(scope="module")
def distributed_runs(client, tmp_path_factory):
    """The undisturbed 2-worker runs, text and task: final parameters and metric rows."""
    out = {}
    for name, cfg in (("text", TEXT), ("task", TASK)):
        trainer, status = train(cfg, tmp_path_factory.mktemp(name), client)
        assert status is RunStatus.DONE and trainer.progress.step == STEPS
        out[name] = (params_of(trainer), trainer.progress.rows)
    return out


# --- equal to the single-process run ---------------------------------------------------------

@pytest.mark.parametrize("name, config", [("text", TEXT), ("task", TASK)])
def test_fifty_updates_equal_single_process(distributed_runs, tmp_path, name, config):
    single, status = train(config, tmp_path / "single")
    assert status is RunStatus.DONE
    params, rows = distributed_runs[name]
    assert_same_params(params, params_of(single))
    # The test can fail: training moved the parameters far more than the tolerance.
    start = Trainer(config, tmp_path / "fresh").model.params
    assert max(np.max(np.abs(params[k] - start[k])) for k in start) > 1e-3
    assert [r["step"] for r in rows] == [r["step"] for r in single.progress.rows]
    for r, s in zip(rows, single.progress.rows):
        assert r["val_loss"] == pytest.approx(s["val_loss"], rel=1e-12, abs=0)
        if r["grad_norm"] is not None:
            assert r["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-12, abs=0)


def test_resume_on_workers_equals_unbroken_run(client, distributed_runs, tmp_path):
    """Stopped at step 20 (checkpoint with the carried text state), resumed with the workers attached:
    the bits of the unbroken run (so also a repeat of the text run gives the same bits)."""
    first = Trainer(TEXT, tmp_path)
    first.write_plot = lambda: None
    with attach_workers(first, client):
        assert first.run(should_stop=lambda: first.progress.step >= 20) is RunStatus.STOPPED
    assert first.progress.step == 20 and first.h is not None and first.h.shape == (2, 4, 8)
    resumed = Trainer.resume(tmp_path)
    resumed.write_plot = lambda: None
    with attach_workers(resumed, client) as dp:
        assert resumed.batch_gradients is dp
        assert resumed.run() is RunStatus.DONE
    assert "batch_gradients" not in resumed.__dict__  # close() gave the Trainer its own step back
    params, rows = distributed_runs["text"]
    assert_bit_identical(params_of(resumed), params)
    assert [r["val_loss"] for r in resumed.progress.rows] == [r["val_loss"] for r in rows]


# --- one step, directly ------------------------------------------------------------------------

def test_one_step_float32_writable_grads(client, tmp_path):
    """A step's gradients as the optimizer gets them: new, writable, of the model's dtype; equal to
    the Trainer's own step to float32 rounding."""
    for cfg in (replace(TEXT, dtype="float32"), replace(TASK, dtype="float32")):
        trainer = Trainer(cfg, tmp_path / (cfg.task or "text"))
        b = trainer.data.batch(0, cfg)
        seed = lambda: np.random.default_rng([cfg.seed, 5, 0]) if cfg.dropout else None  # noqa: E731
        ref = trainer.batch_gradients(b, None, seed())
        with attach_workers(trainer, client) as dp:
            res = trainer.batch_gradients(b, None, seed())
            assert dp.sent_batches == 0  # the batch was found in the held data, not sent
        for k, want in ref.grads.items():
            assert res.grads[k].dtype == np.float32 and res.grads[k].flags.writeable, k
            assert not np.shares_memory(res.grads[k], want)
            assert_close(res.grads[k], want, 2e-5, k)
        assert isinstance(res.loss, float) and res.loss == pytest.approx(ref.loss, rel=2e-6)
        assert res.h_last.dtype == np.float32 and res.h_last.shape == ref.h_last.shape


def test_a_batch_not_in_the_held_data_is_sent(client, tmp_path, rng):
    trainer = Trainer(TASK, tmp_path)
    b = trainer.data.batch(0, TASK)
    b.x = rng.integers(0, int(b.x.max()) + 1, size=b.x.shape)  # not rows of the training set
    ref = trainer.batch_gradients(b, None, np.random.default_rng(9))
    with attach_workers(trainer, client, shards=3) as dp:
        res = dp(b, None, np.random.default_rng(9))
        assert dp.sent_batches == 1 and dp.shards == 3
    assert res.loss == pytest.approx(ref.loss, rel=RTOL)
    for k, want in ref.grads.items():
        assert_close(res.grads[k], want, RTOL, k)


def test_held_sequences_equal_the_sharded_batch_bit_for_bit(client, rng, tmp_path):
    """Rows selected on the workers give the same bits as distributed.gradients of that batch
    with the same shards (the same cut, the same code), and the single-process result to 1e-12."""
    trainer = Trainer(replace(TASK, dropout=0.0), tmp_path)
    data, model = trainer.data, trainer.model
    rows = rng.permutation(data.x.shape[1])[:7]
    lengths = np.full(7, data.x.shape[0])
    with HeldSequences(client, model, data.x, data.y, data.mask, shards=3) as held:
        res = held.gradients(model, rows)
        with pytest.raises(ValueError, match=r"rows must lie in \[0, 40\)"):
            held.gradients(model, [0, 40])
        with pytest.raises(ValueError, match="cannot be cut into 3 shards"):
            held.gradients(model, [0, 1])
    batch = (data.x[:, rows], data.y[:, rows])
    kw = dict(mask=data.mask[:, rows], lengths=lengths, reduction="mean", need=())
    sharded = rd.gradients(model, *batch, client=client, shards=3, **kw)
    assert res.loss == sharded.loss
    for k in res.grads:
        assert np.array_equal(res.grads[k], sharded.grads[k]), k
    assert np.array_equal(res.h_last, sharded.h_last)
    single = model.gradients(*batch, **kw)
    assert res.loss == pytest.approx(single.loss, rel=RTOL, abs=0)
    for k, want in single.grads.items():
        assert_close(res.grads[k], want, RTOL, k)


def test_bad_input_one_line():
    with pytest.raises(ValueError, match="--workers must be a positive integer"):
        connect_for_training(workers=0)
    with pytest.raises(TypeError, match="--workers must be a positive integer"):
        connect_for_training(workers=True)
    with pytest.raises(ValueError, match="not both"):
        connect_for_training(workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="give --workers N"):
        connect_for_training()
    with pytest.raises(ValueError, match="--scheduler: address must be a scheduler address"):
        connect_for_training(scheduler="no-port-here", timeout=1)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ConnectionError) as info:
        connect_for_training(scheduler=address, timeout=1)
    assert "\n" not in str(info.value) and address in str(info.value)


def test_attach_refuses_more_shards_than_sequences(client, tmp_path):
    trainer = Trainer(TEXT, tmp_path)
    with pytest.raises(ValueError, match="shards must be at most the batch size 4"):
        attach_workers(trainer, client, shards=5)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        DataParallel(trainer, "tcp://somewhere:1")
    assert "batch_gradients" not in trainer.__dict__
    with attach_workers(trainer, client):
        with pytest.raises(ValueError, match="already replaced"):
            attach_workers(trainer, client)
    if "gradient" in {f.name for f in fields(TrainConfig)}:  # online RTRL replaces the step itself
        rtrl = Trainer(replace(TEXT, num_layers=1, gradient="rtrl"), tmp_path / "rtrl")
        with pytest.raises(ValueError, match="--gradient rtrl trains in one process"):
            attach_workers(rtrl, client)


def test_repeat_run_is_bit_identical_and_only_the_client_writes_files(client, distributed_runs, tmp_path):
    """The task run again: the same bits. An audit hook in each worker records every file it opens
    for writing, renames or creates under the run folder: none may appear; the folder holds what
    the client's Trainer writes."""
    marker = str(tmp_path)

    def install(dask_worker):  # runs on each worker (sent by value: nested)
        import sys as worker_sys
        worker_sys._rnngrad_writes = writes = []

        def hook(event, args):
            if event == "open" and args and marker in str(args[0]):
                mode, flags = str(args[1] or ""), args[2] if len(args) > 2 else 0
                if any(c in mode for c in "wax+") or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR)):
                    writes.append(str(args[0]))
            elif event in ("os.rename", "os.remove", "os.mkdir") and any(marker in str(a) for a in args):
                writes.append(f"{event} {args}")
        worker_sys.addaudithook(hook)
        return True

    assert all(client.run(install).values())
    trainer, _ = train(TASK, tmp_path / "run", client, plot=True)
    assert_bit_identical(params_of(trainer), distributed_runs["task"][0])
    writes = client.run(lambda: list(getattr(sys, "_rnngrad_writes", ["no hook"])))
    assert writes and all(w == [] for w in writes.values()), writes
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"checkpoint.npz", "best.npz", "metrics.jsonl", "loss.png", ".rnngrad.lock"}
    assert (tmp_path / "run" / ".rnngrad.lock").read_text() == str(os.getpid())


# --- faults (last: it restarts a worker) -------------------------------------------------------

def test_worker_killed_mid_step_changes_nothing(client, distributed_runs, tmp_path):
    """SIGKILL a worker while step 20's gradients are in flight: Dask recomputes what it held (the
    replica of the training set, its shard of the step) and the run ends with the undisturbed bits."""
    pids = client.run(os.getpid)
    trainer = Trainer(TASK, tmp_path)
    trainer.write_plot = lambda: None
    dp = attach_workers(trainer, client)
    in_flight, box = threading.Event(), {}

    def kill_soon():
        time.sleep(0.005)  # the main thread is inside the step's gather by now
        os.kill(pids[sorted(pids)[1]], signal.SIGKILL)
        box["during_step"] = in_flight.is_set()

    def step_with_kill(b, h0, dropout_seed):
        in_flight.set()
        try:
            if trainer.progress.step == 20:
                box["killer"] = threading.Thread(target=kill_soon)
                box["killer"].start()
            return dp(b, h0, dropout_seed)
        finally:
            in_flight.clear()

    trainer.batch_gradients = step_with_kill
    try:
        assert trainer.run() is RunStatus.DONE
    finally:
        dp.close()
    box["killer"].join(10)
    assert box["during_step"], "the kill did not land while the step was in flight"
    assert trainer.progress.step == STEPS
    assert pids[sorted(pids)[1]] not in client.run(os.getpid).values()  # that process is gone
    assert_bit_identical(params_of(trainer), distributed_runs["task"][0])
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker


def test_cli_trains_on_workers_and_on_a_scheduler(client, tmp_path, capsys):
    """rnngrad train --workers N (its own local cluster) and --scheduler ADDRESS (this module's
    cluster) give the single-process run's parameters."""
    from rnngrad.cli import main

    base = ["train", "--task", "adding", "-k", "6", "-H", "4", "--steps", "6", "--log-every", "3",
            "--dtype", "float64", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--workers", "2", "--out", str(tmp_path / "w")]) == 0
    assert main([*base, "--scheduler", client.scheduler.address, "--out", str(tmp_path / "s")]) == 0
    assert "Dask worker(s)" in capsys.readouterr().out
    one = rnngrad.load(tmp_path / "one").model.params
    for folder in ("w", "s"):
        other = rnngrad.load(tmp_path / folder).model.params
        for k in one:
            np.testing.assert_allclose(other[k], one[k], rtol=1e-12, atol=1e-15, err_msg=f"{folder} {k}")
