"""rnngrad.threads: the rule for BLAS threads, its validation, the load meter, and the context
manager applying the rule (and re-applying it as the load changes).

The oracle for "applied" is threadpoolctl's own report of every BLAS library loaded in the process
(threadpool_info): NumPy's and scipy's OpenBLAS (the latter is what the numba kernels call). The
oracle for the load meter is a busy process started by the test.
"""

import builtins
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from rnngrad import threads
from rnngrad.threads import (MACS_PER_THREAD, CpuMeter, available_cores, blas_threads, check_threads,
                             choose_threads, threadpoolctl_available)

# The tests that read the pools need threadpoolctl (in the test extra, through [cli]); the rule, the
# validation and the no-op without it are tested whatever is installed.
needs_threadpoolctl = pytest.mark.skipif(not threadpoolctl_available(), reason="threadpoolctl is not installed")


def _blas_counts():
    """(library path, threads) of every BLAS pool in the process, or [] without threadpoolctl."""
    if not threadpoolctl_available():
        return []
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS, the one the numba engine calls)
    import threadpoolctl

    return [(i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


class FakeLoad:
    """A meter returning the given busy-core readings in turn (the last one repeated)."""

    def __init__(self, *readings):
        self.readings, self.calls = list(readings), 0

    def __call__(self):
        self.calls += 1
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


# --- the rule -------------------------------------------------------------------------


@pytest.mark.parametrize("H, B, T, cores, others, expected", [
    (256, 1, 1, 2, 0.0, 1),        # sampling the main job's model: 6.6e4 multiply-adds per call
    (4096, 1, 1, 16, 0.0, 1),      # sampling stays on one thread up to H = 4096 (exactly 2^24)
    (8192, 1, 1, 16, 0.0, 4),
    (32, 8, 32, 2, 0.0, 1),        # a tiny model: 2.6e5 per update
    (100, 16, 64, 2, 0.0, 1),      # 1.0e7: below 2^24, one thread even on an idle machine
    (256, 32, 64, 2, 0.0, 2),      # the main job's model (1.3e8), idle: two
    (256, 32, 64, 2, 0.43, 2),     # a neighbour on less than half a core: still two
    (256, 32, 64, 2, 0.67, 1),     # on two thirds of a core: one
    (1024, 64, 64, 2, 1.6, 1),     # a busy machine: one, whatever the size
    (1024, 64, 64, 2, 5.0, 1),     # never fewer than one
    (256, 32, 64, 64, 0.0, 8),     # 2^27 / 2^24 on a big machine: the size caps it
    (1024, 64, 64, 16, 3.4, 13),   # 16 cores less 3 busy ones
])
def test_choose_threads_follows_the_documented_rule(H, B, T, cores, others, expected):
    assert choose_threads(H, B, chunk_len=T, cores=cores, others=others) == expected
    # The formula of the module docstring, computed independently.
    assert expected == min(max(1, math.floor(T * B * H * H / MACS_PER_THREAD)), max(1, cores - round(others)))


def test_choose_threads_never_exceeds_this_process_s_cores():
    cores = available_cores()
    assert cores >= 1
    assert choose_threads(1 << 14, 1 << 10, chunk_len=64) == cores  # a huge problem: every core, no more
    assert choose_threads(100, 1) == 1  # sampling: one character of one sequence per call


def test_more_work_never_means_fewer_threads_and_more_load_never_more():
    sizes = sorted((T * B * H * H, H, B, T) for H in (64, 256, 1024) for B in (1, 16, 64) for T in (1, 64))
    chosen = [choose_threads(H, B, chunk_len=T, cores=16) for _, H, B, T in sizes]
    assert chosen == sorted(chosen)
    by_load = [choose_threads(1024, 64, chunk_len=64, cores=8, others=o) for o in np.linspace(0, 10, 41)]
    assert by_load == sorted(by_load, reverse=True) and by_load[0] == 8 and by_load[-1] == 1


@pytest.mark.parametrize("kwargs, word", [
    ({"hidden_size": 0, "batch_size": 4}, "hidden_size"),
    ({"hidden_size": 4, "batch_size": 2.5}, "batch_size"),
    ({"hidden_size": True, "batch_size": 4}, "hidden_size"),
    ({"hidden_size": 4, "batch_size": 4, "chunk_len": 0}, "chunk_len"),
    ({"hidden_size": 4, "batch_size": 4, "cores": 0}, "cores"),
    ({"hidden_size": 4, "batch_size": 4, "others": -1.0}, "others"),
    ({"hidden_size": 4, "batch_size": 4, "others": float("nan")}, "others"),
])
def test_choose_threads_refuses_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        choose_threads(**kwargs)


# --- validation -------------------------------------------------------------------------


def test_check_threads_accepts_positive_integers_and_none():
    assert check_threads(None) is None
    assert check_threads(3) == 3
    assert type(check_threads(np.int64(2))) is int


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError),
                                        (True, TypeError)])
def test_check_threads_refuses_with_one_line_naming_the_option(bad, error):
    with pytest.raises(error) as info:
        check_threads(bad)
    message = str(info.value)
    assert "--threads" in message and "\n" not in message


def test_blas_threads_validates_before_touching_the_pools():
    before = _blas_counts()
    with pytest.raises(ValueError, match="--threads"):
        blas_threads(0)
    with pytest.raises(ValueError, match="hidden_size and batch_size"):
        blas_threads()
    with pytest.raises(ValueError, match="every_s"):
        blas_threads(1, every_s=0)
    assert _blas_counts() == before


# --- the load meter -----------------------------------------------------------------------


def test_the_meter_subtracts_this_process_from_the_machine_s_busy_time():
    readings = iter([(10.0, 2.0, 100.0), (13.0, 3.5, 102.0), (13.0, 3.5, 103.0), (14.0, 4.5, 104.0)])
    meter = CpuMeter(read=lambda: next(readings))
    assert meter.others() == pytest.approx(((13.0 - 10.0) - (3.5 - 2.0)) / 2.0)  # 0.75 cores
    assert meter.others() == 0.0  # an idle second
    assert meter.others() == 0.0  # this process alone was busy: not "others"


def test_without_proc_the_meter_falls_back_to_the_load_average(monkeypatch):
    meter = CpuMeter(read=lambda: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.5, 1.0, 1.0))
    assert meter.others() == pytest.approx(1.5)  # less this process's own thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_meter_sees_a_busy_neighbour():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the child starts
        meter = CpuMeter()
        time.sleep(0.6)
        busy = meter.others()
    finally:
        child.kill()
        child.wait()
    # The child's core, or on a crowded machine the cores it shares with other processes: at least
    # half a core, whatever else runs (other processes only add to it).
    assert busy >= 0.5


# --- applying it -------------------------------------------------------------------------


@needs_threadpoolctl
def test_blas_threads_sets_every_blas_pool_and_restores_it():
    before = _blas_counts()
    assert len(before) >= 1
    assert any("scipy" in path for path, _ in before), "scipy's BLAS (the numba engine's) must be covered"
    with blas_threads(1) as setting:
        assert setting.threads == 1 and setting.applied and setting.note is None and not setting.automatic
        assert all(n == 1 for _, n in _blas_counts())
        assert setting.poll() == 1  # a given count never changes
    assert _blas_counts() == before


@needs_threadpoolctl
def test_an_explicit_count_overrides_the_rule_even_above_the_cores():
    n = available_cores() + 1
    with blas_threads(n, hidden_size=8, batch_size=1) as setting:
        assert setting.threads == n
        assert all(c == n for _, c in _blas_counts())


@needs_threadpoolctl
def test_the_automatic_choice_follows_the_load_and_is_made_again_by_poll():
    load = FakeLoad(1.6, 0.0, 0.0, 1.2)
    with blas_threads(None, hidden_size=256, batch_size=32, chunk_len=64, every_s=0.05, meter=load) as setting:
        expected = choose_threads(256, 32, chunk_len=64, others=1.6)
        assert setting.automatic and setting.others == 1.6 and setting.threads == expected
        assert all(n == expected for _, n in _blas_counts())
        assert setting.poll() == expected and load.calls == 1  # too early: no new reading
        time.sleep(0.06)
        idle = choose_threads(256, 32, chunk_len=64, others=0.0)
        assert setting.poll() == idle and setting.others == 0.0
        assert all(n == idle for _, n in _blas_counts())
        time.sleep(0.06)
        setting.poll()
        time.sleep(0.06)
        assert setting.poll() == expected  # the neighbour is back
        assert all(n == expected for _, n in _blas_counts())
    assert load.calls == 4


@needs_threadpoolctl
def test_a_small_problem_is_not_measured_and_gets_one_thread():
    load = FakeLoad(0.0)
    with blas_threads(None, hidden_size=100, batch_size=1, meter=load) as setting:  # sampling
        assert setting.threads == 1 and setting.others is None
        assert all(n == 1 for _, n in _blas_counts())
        time.sleep(0.01)
        assert setting.poll() == 1
    assert load.calls == 0


@needs_threadpoolctl
def test_the_real_meter_is_used_by_default():
    with blas_threads(None, hidden_size=1024, batch_size=64, chunk_len=64, sample_s=0.05) as setting:
        assert setting.others is not None and setting.others >= 0
        assert setting.threads == choose_threads(1024, 64, chunk_len=64, others=setting.others)


@needs_threadpoolctl
def test_nested_settings_restore_in_order():
    before = _blas_counts()
    with blas_threads(1):
        with blas_threads(2):
            inner = [n for _, n in _blas_counts()]
        assert all(n == 1 for _, n in _blas_counts())
    assert _blas_counts() == before
    assert inner == [2] * len(before)


def test_without_threadpoolctl_nothing_changes_and_the_note_says_why(monkeypatch):
    real_import = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError("No module named 'threadpoolctl'")
        return real_import(name, *args, **kwargs)

    before = _blas_counts()
    monkeypatch.delitem(sys.modules, "threadpoolctl", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_threadpoolctl)
    assert not threads.threadpoolctl_available()
    with blas_threads(1) as setting:
        assert setting.threads == 1 and not setting.applied
        assert "pip install threadpoolctl" in setting.note
    with blas_threads(None, hidden_size=256, batch_size=32, chunk_len=64, meter=FakeLoad(1.5)) as auto:
        assert auto.threads == choose_threads(256, 32, chunk_len=64, others=1.5) and not auto.applied
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert _blas_counts() == before  # left at the library's default


def test_results_do_not_depend_on_the_thread_count(rng):
    """A float64 gradients call of a model large enough for BLAS to split its products gives the
    same loss and gradients with one thread as with the default."""
    import rnngrad

    model = rnngrad.RNN(20, 96, 20, dtype=np.float64, seed=1)
    x = rng.integers(0, 20, size=(12, 40))
    y = rng.integers(0, 20, size=(12, 40))
    ref = model.gradients(x, y)
    with blas_threads(1):
        one = model.gradients(x, y)
    assert one.loss == pytest.approx(ref.loss, rel=1e-13)
    for key in ref.grads:
        np.testing.assert_allclose(one.grads[key], ref.grads[key], rtol=1e-12, atol=1e-14, err_msg=key)


def test_the_docstring_examples_run():
    import doctest

    assert doctest.testmod(threads, raise_on_error=True).attempted >= 1


def test_threads_option_of_train_and_sample(tmp_path, capsys):
    from rnngrad.cli import main
    run = tmp_path / "run"
    assert main(["train", "--max-chars", "20000", "-H", "8", "-B", "2", "-k", "8", "--steps", "4", "--log-every", "2",
                 "--threads", "1", "--out", str(run), "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(run), "-n", "10", "--seed", "0", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(run), "-n", "10", "--threads", "0"]) == 2
    assert "threads (--threads) must be a positive integer" in capsys.readouterr().err
