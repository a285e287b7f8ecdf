"""Data-parallel gradients on a Dask LocalCluster (rnngrad.distributed).

The oracle is the single-process :meth:`rnngrad.RNN.gradients` of the whole batch (itself
proved against PyTorch autograd in test_bptt.py and test_network.py), plus one case against
tests/oracle.py's PyTorch network directly: the shards' sum must equal it to 1e-12 relative
(float64) for every (f, g, loss), every network shape, masks, lengths, "mean" (whose count is
the whole batch's: a shard's own count would be off by a factor, never by rounding), token
inputs, dropout and carried truncated-BPTT state. One cluster of two worker processes serves the
module; the killed-worker test runs last, as it restarts one of them.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

from conftest import COMBOS, assert_close, make_targets  # noqa: E402
from rnngrad import RNN  # noqa: E402
from rnngrad import distributed as rd  # noqa: E402

RTOL = 1e-12
FIELDS = ("dh", "dy_hat", "dx", "dh0", "h_last")


@pytest.fixture(scope="module")
def client():
    c = rd.connect(workers=2)  # LocalCluster(n_workers=2, processes=True, threads_per_worker=1)
    c.wait_for_workers(2, timeout=60)
    yield c
    c.close()


def assert_same_result(res, ref, rtol=RTOL):
    """Every field of a distributed result against the single-process one."""
    assert isinstance(res.loss, float)
    assert res.loss == pytest.approx(ref.loss, rel=rtol, abs=0)
    assert list(res.grads) == list(ref.grads)
    for k, want in ref.grads.items():
        assert res.grads[k].dtype == want.dtype, k
        assert_close(res.grads[k], want, rtol, k)
    for name in FIELDS:
        want, got = getattr(ref, name), getattr(res, name)
        if want is None:
            assert got is None, name
        else:
            assert got.dtype == want.dtype, name
            assert_close(got, want, rtol, name)
    assert res.forward is None


def assert_bit_identical(a, b):
    assert a.loss == b.loss
    for k in a.grads:
        assert np.array_equal(a.grads[k], b.grads[k]), k
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or np.array_equal(x, y), name


def random_lengths(rng, T, B):
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T  # one full sequence; the rest uneven, so the shards' counts differ
    return lengths


# --- every (f, g, loss) ---------------------------------------------------------------------

@pytest.mark.parametrize("f, g, loss", COMBOS)
@pytest.mark.parametrize("masked, reduction", [(False, "sum"), (True, "mean")])
def test_shard_sum_equals_single_process(client, rng, f, g, loss, masked, reduction):
    T, B, D, H, O = 6, 5, 3, 4, 3
    model = RNN(D, H, O, hidden_activation=f, output_activation=g, loss=loss, seed=int(rng.integers(1 << 30)))
    x = rng.standard_normal((T, B, D))
    y = make_targets(rng, g, loss, T, B, O)
    h0 = rng.standard_normal((B, H)) * 0.5
    mask = np.arange(T)[:, None] < random_lengths(rng, T, B)[None, :] if masked else None
    res = rd.gradients(model, x, y, client=client, shards=2, h0=h0, mask=mask, reduction=reduction)
    assert_same_result(res, model.gradients(x, y, h0=h0, mask=mask, reduction=reduction))


# --- network shapes, inputs, layouts ---------------------------------------------------------

SHAPES = [(1, False), (2, False), (3, False), (1, True), (2, True), (3, True)]


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
@pytest.mark.parametrize("case", ["prefix-mask-mean", "lengths-weights-mean", "tokens-sum", "batch-first-mean"])
def test_network_shapes(client, rng, num_layers, bidirectional, case):
    T, B, D, H, O = 5, 7, 4, 3, 4
    model = RNN(D, H, O, num_layers=num_layers, bidirectional=bidirectional, batch_first=case == "batch-first-mean",
                seed=int(rng.integers(1 << 30)))
    U = num_layers * model.directions
    tokens = case == "tokens-sum"
    x = rng.integers(0, D, size=(T, B)) if tokens else rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    kw = {"h0": rng.standard_normal((U, B, H)) * 0.5, "reduction": "sum" if tokens else "mean"}
    lengths = random_lengths(rng, T, B)
    if case == "prefix-mask-mean":
        kw["mask"] = np.arange(T)[:, None] < lengths[None, :]
    elif case == "lengths-weights-mean":  # padding by lengths, loss at some valid steps only
        kw["lengths"] = lengths
        kw["mask"] = (np.arange(T)[:, None] < lengths[None, :]) & (rng.random((T, B)) < 0.6)
        kw["mask"][lengths - 1, np.arange(B)] = True
    elif case == "batch-first-mean":
        x, y = x.swapaxes(0, 1), y.swapaxes(0, 1)
        kw["mask"] = (np.arange(T)[:, None] < lengths[None, :]).T
    res = rd.gradients(model, x, y, client=client, shards=3, **kw)
    assert_same_result(res, model.gradients(x, y, **kw))


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_any_number_of_shards(client, rng, shards):
    """One shard, as many as workers, more than workers (uneven rows), one row each."""
    T, B, D, H, O = 4, 7, 3, 5, 3
    model = RNN(D, H, O, num_layers=2, seed=int(rng.integers(1 << 30)))
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    mask = rng.random((T, B)) < 0.7
    mask[0, 0] = True
    res = rd.gradients(model, x, y, client=client, shards=shards, mask=mask, reduction="mean")
    assert_same_result(res, model.gradients(x, y, mask=mask, reduction="mean"))


def test_need_and_default_shards(client, rng):
    T, B, D, H, O = 4, 6, 3, 5, 3
    model = RNN(D, H, O, seed=1)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    res = rd.gradients(model, x, y, client=client, need=("dx",))  # shards: one per worker
    ref = model.gradients(x, y, need=("dx",))
    assert res.dh0 is None and res.dy_hat is None
    assert_same_result(res, ref)


def test_float32(client, rng):
    T, B, D, H, O = 6, 6, 3, 5, 4
    model = RNN(D, H, O, num_layers=2, bidirectional=True, dtype=np.float32, seed=2)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    mask = np.arange(T)[:, None] < random_lengths(rng, T, B)[None, :]
    res = rd.gradients(model, x, y, client=client, shards=2, mask=mask, reduction="mean")
    assert res.grads["W_h"].dtype == np.float32 and res.dh.dtype == np.float32
    # float32 rounding of two differently ordered sums; the same network in float64 is the truth
    assert_same_result(res, model.gradients(x, y, mask=mask, reduction="mean"), rtol=2e-6)
    exact = model.astype(np.float64).gradients(x, y, mask=mask, reduction="mean")
    for k, want in exact.grads.items():
        assert_close(res.grads[k], want, 1e-5, k)


def test_dropout_seed_draws_the_single_process_masks(client, rng):
    T, B, D, H, O = 5, 6, 3, 4, 3
    model = RNN(D, H, O, num_layers=3, dropout=0.4, seed=4)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    res = rd.gradients(model, x, y, client=client, shards=2, dropout_seed=11, reduction="mean")
    ref = model.gradients(x, y, dropout_seed=11, reduction="mean")
    assert_same_result(res, ref)
    plain = model.gradients(x, y, reduction="mean")  # the test can fail: the masks matter
    assert not np.allclose(plain.grads["W_h"], ref.grads["W_h"])


def test_given_dropout_masks_batch_first(client, rng):
    """Masks given as (B, T, C) with batch_first (e.g. a training step's, replayed) are cut by rows too."""
    T, B, D, H, O = 5, 6, 3, 4, 3
    model = RNN(D, H, O, num_layers=2, bidirectional=True, dropout=0.5, batch_first=True, seed=12)
    x, y = rng.standard_normal((B, T, D)), rng.integers(0, O, size=(B, T))
    masks = model.forward(x, dropout_seed=3).dropout_masks
    assert masks[0].shape == (B, T, 2 * H)
    res = rd.gradients(model, x, y, client=client, shards=3, dropout_masks=masks)
    assert_same_result(res, model.gradients(x, y, dropout_masks=masks))


def test_against_torch_oracle(client, rng):
    """Independent of rnngrad: PyTorch autograd of the network written step by step."""
    pytest.importorskip("torch")
    from oracle import deep_reference
    T, B, D, H, O = 5, 4, 3, 4, 3
    model = RNN(D, H, O, hidden_activation="relu", num_layers=2, bidirectional=True, seed=5)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    mask = np.arange(T)[:, None] < np.array([5, 2, 4, 3])[None, :]
    h0 = rng.standard_normal((4, B, H)) * 0.5
    res = rd.gradients(model, x, y, client=client, shards=2, h0=h0, mask=mask, reduction="mean")
    ref_loss, ref = deep_reference(*model.torch_state_dict(), x, y, num_layers=2, bidirectional=True,
                                   hidden="relu", h0=h0, mask=mask, reduction="mean")
    assert res.loss == pytest.approx(ref_loss, rel=1e-10)
    assert_close(res.grads["W_h_l1_reverse"], ref["weight_hh_l1_reverse"], 1e-10, "W_h_l1_reverse")
    assert_close(res.grads["W_y"], ref["linear.weight"], 1e-10, "W_y")
    assert_close(res.dh, ref["dh"], 1e-10, "dh")
    assert_close(res.dh0, ref["h0"], 1e-10, "dh0")
    assert_close(res.dx, ref["x"], 1e-10, "dx")


# --- determinism and the persistent form ----------------------------------------------------

def test_repeated_calls_are_bit_identical(client, rng):
    T, B, D, H, O = 8, 9, 4, 6, 5
    model = RNN(D, H, O, num_layers=2, seed=6)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    mask = np.arange(T)[:, None] < random_lengths(rng, T, B)[None, :]
    first = rd.gradients(model, x, y, client=client, shards=3, mask=mask, reduction="mean")
    for _ in range(2):
        assert_bit_identical(rd.gradients(model, x, y, client=client, shards=3, mask=mask, reduction="mean"), first)
    with rd.ShardedBatch(client, model, x, y, shards=3, mask=mask) as batch:
        for _ in range(2):
            assert_bit_identical(batch.gradients(model, reduction="mean"), first)


def test_sharded_batch_truncated_bptt(client, rng):
    """Token streams sent once; each step sends parameters and the carried h0, takes chunk i, and
    equals the single-process step on that chunk with the same carried state."""
    V, H, B, k, steps = 11, 8, 6, 4, 3
    model = RNN(V, H, V, seed=7)
    stream = rng.integers(0, V, size=(k * steps + 1, B))
    x, y = stream[:-1], stream[1:]
    local = model.copy()
    with rd.ShardedBatch(client, model, x, y, shards=2) as batch:
        assert batch.bounds == [(0, 3), (3, 6)]
        h, h_local = None, None
        for i in range(steps):
            window = slice(i * k, (i + 1) * k)
            res = batch.gradients(model, h0=h, window=window, reduction="mean", need=(), states=False)
            ref = local.gradients(x[window], y[window], h0=h_local, reduction="mean", need=())
            assert res.dh is None and res.dy_hat is None and res.dx is None and res.dh0 is None
            assert res.loss == pytest.approx(ref.loss, rel=RTOL, abs=0)
            assert_close(res.h_last, ref.h_last, RTOL, "h_last")
            for name, g in ref.grads.items():
                assert_close(res.grads[name], g, RTOL, name)
            h, h_local = res.h_last, ref.h_last
            for name in model.params:  # the same SGD update on both: only parameters travel
                model.params[name] -= 0.5 * res.grads[name]
                local.params[name] -= 0.5 * ref.grads[name]
        who = client.who_has(batch._held)
        assert len({w for addrs in who.values() for w in addrs}) == 2  # the rows live on both workers


# --- bad input ------------------------------------------------------------------------------

def test_bad_input_one_clear_error(client, rng):
    T, B, D, H, O = 4, 3, 2, 3, 2
    model = RNN(D, H, O, seed=8)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    with pytest.raises(ValueError, match="workspace must be None"):
        rd.gradients(model, x, y, client=client, workspace=object())
    with pytest.raises(ValueError, match=r"shards must be at most the batch size B = 3"):
        rd.gradients(model, x, y, client=client, shards=4)
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        rd.gradients(model, x, y, client=client, shards=0)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        rd.gradients(model, x, y, client=3)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, D\)"):  # the model's own boundary
        rd.gradients(model, x[..., :1], y, client=client)
    with pytest.raises(ValueError, match="mask is all zeros"):
        rd.gradients(model, x, y, client=client, mask=np.zeros((T, B)), reduction="mean")
    with rd.ShardedBatch(client, model, x, y, shards=2, mask=np.arange(T)[:, None] > 1 + np.zeros(B)) as batch:
        with pytest.raises(ValueError, match=r"mask is all zeros in steps \[0, 2\)"):
            batch.gradients(model, window=slice(0, 2), reduction="mean")
        with pytest.raises(TypeError, match="window must be a slice"):
            batch.gradients(model, window=(0, 2))
        with pytest.raises(ValueError, match="selects no step"):
            batch.gradients(model, window=slice(3, 3))
        with pytest.raises(ValueError, match="unlike the one this batch was built for"):
            batch.gradients(RNN(D, H + 1, O))
        with pytest.raises(ValueError, match=r"params\['W_h'\]"):
            batch.gradients({**model.params, "W_h": np.zeros((2, 2))})
    with rd.ShardedBatch(client, model, x, y, lengths=[4, 2, 3]) as batch:
        with pytest.raises(ValueError, match="give a mask instead of lengths"):
            batch.gradients(model, window=slice(0, 2))
    with pytest.raises(ValueError, match="ShardedBatch is closed"):
        batch.gradients(model)


def test_import_rnngrad_does_not_import_dask():
    code = ("import sys, rnngrad, rnngrad.cli, rnngrad.train; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')); "
            "sys.exit(', '.join(bad) or None)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_unreachable_scheduler_is_one_line():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as info:
        rd.connect(address, timeout=1)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message and address in message and "dask scheduler" in message
    with pytest.raises(ValueError, match="address must be a scheduler address"):
        rd.connect("no-port-here", timeout=1)


# --- faults (last: it restarts a worker) ----------------------------------------------------

def test_killed_worker_recovers_the_same_result(client, rng):
    """SIGKILL the worker process computing a shard: Dask recomputes its shard (a task holding the
    data) and the parameters elsewhere, and the call returns the undisturbed bits."""
    T, B, D, H, O = 600, 16, 6, 256, 5  # about 0.3 s a shard: the kill lands while it computes
    model = RNN(D, H, O, num_layers=2, seed=9)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    with rd.ShardedBatch(client, model, x, y, shards=2) as batch:
        undisturbed = batch.gradients(model, reduction="mean")
        pids = client.run(os.getpid)

        def executing(dask_worker):  # runs on each worker: the keys its threads are computing
            return [str(ts.key) for ts in dask_worker.state.executing]

        box = {}

        def step():
            try:
                box["res"] = batch.gradients(model, reduction="mean")
            except BaseException as err:  # handed to the main thread, which fails the test with it
                box["err"] = err

        thread = threading.Thread(target=step)
        thread.start()
        victim, deadline = None, time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            busy = [w for w, keys in client.run(executing).items() if any("shard_gradients" in k for k in keys)]
            victim = busy[0] if busy else None
            time.sleep(0.01)
        assert victim is not None, "no worker started a shard"
        os.kill(pids[victim], signal.SIGKILL)
        thread.join(120)
        assert not thread.is_alive()
        if "err" in box:
            raise box["err"]
        def reruns(dask_scheduler):  # shard steps taken off a worker that died while computing them
            return [str(e[0]) for e in dask_scheduler.transition_log if "shard_gradients" in str(e[0])
                    and e[1:3] == ("processing", "released") and "worker-cleanup" in str(e[4])]

        assert client.run_on_scheduler(reruns), "the kill did not interrupt a computing shard"
        # Bit for bit the undisturbed call (which the tests above prove equal to model.gradients).
        assert_bit_identical(box["res"], undisturbed)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
