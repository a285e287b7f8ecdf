"""Ctrl-C at any moment of the rnngrad command's start-up: one line, never a traceback."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def command():
    exe = shutil.which("rnngrad")
    return [exe] if exe else [sys.executable, "-m", "rnngrad"]


def interpreter_start_s() -> float:
    """A time by which Python has surely reached the first line of rnngrad's entry point (its own
    start-up and site imports, which no code of ours can reach): the slowest of three starts, with
    half again as margin, since one start can be slower than another (a signal inside that window
    is Python's, not ours)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import rnngrad._launch"], check=True)
        times.append(time.perf_counter() - t0)
    return 1.5 * max(times)


def test_ctrl_c_while_starting_prints_one_line_and_no_traceback(tmp_path):
    rng = np.random.default_rng(0)
    start = interpreter_start_s()
    outcomes = []
    for i, delay in enumerate(rng.uniform(start, start + 0.4, 12)):
        p = subprocess.Popen([*command(), "train", "--task", "adding", "-k", "5", "-H", "4", "--steps", "50",
                              "--out", str(tmp_path / f"run{i}"), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        assert p.returncode in (0, 130), (delay, p.returncode, err)
        if p.returncode == 130 and not out:  # stopped before training began
            assert err.strip() in ("rnngrad: interrupted", "rnngrad train: interrupted"), err
        outcomes.append(p.returncode)
    assert 130 in outcomes
