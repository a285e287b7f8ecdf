"""A training run SIGKILLed at random moments, resumed each time, ends where an unbroken run ends.

Bounded for CI: a small task model, the NumPy engine (no compilation in each new process),
about 15 processes in all. The kills land at random steps, in the first fraction of a
second (start-up), and twice inside a checkpoint write (after the temporary file is
written and synced, before the rename), which leaves a stray temporary file behind that the
next start must remove.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

STEPS, LOG_EVERY, CHECKPOINT_EVERY = 400, 5, 20
OPTIONS = ["--task", "adding", "--chunk-len", "8", "--hidden-size", "6", "--batch-size", "4",
           "--steps", str(STEPS), "--dtype", "float64",
           "--log-every", str(LOG_EVERY), "--checkpoint-every", str(CHECKPOINT_EVERY), "--lr", "0.01",
           "--no-progress"]

# The child: rnngrad's CLI, optionally killing itself inside the n-th checkpoint write (at the
# fsync of its temporary file, the last moment before the rename makes it the checkpoint).
CHILD = textwrap.dedent("""
    import os, signal, sys
    import rnngrad._io as io
    kill_at = int(os.environ.get("KILL_IN_CHECKPOINT_WRITE", "0"))
    if kill_at:
        real_fsync, calls = os.fsync, [0]
        def fsync(fd):
            real_fsync(fd)
            if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and "checkpoint" in os.readlink(f"/proc/self/fd/{fd}"):
                calls[0] += 1
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        io.os.fsync = fsync
    from rnngrad.cli import main
    sys.exit(main(sys.argv[1:]))
""")

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")


def start(args, kill_in_write=0):
    env = {**os.environ, "RNNGRAD_DISABLE_KERNELS": "1", "KILL_IN_CHECKPOINT_WRITE": str(kill_in_write)}
    return subprocess.Popen([sys.executable, "-c", CHILD, "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def logged_rows(folder) -> int:
    try:
        with open(folder / "metrics.jsonl", encoding="utf-8") as fh:
            return sum(1 for line in fh if line.endswith("\n"))
    except FileNotFoundError:
        return 0


def kill_when(p, folder, rows: int, extra_s: float, timeout=60):
    """SIGKILL p once metrics.jsonl has ``rows`` rows and ``extra_s`` more seconds passed."""
    deadline = time.monotonic() + timeout
    while logged_rows(folder) < rows and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(extra_s)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait(timeout)


def final_state(folder):
    with np.load(folder / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # wall-clock figures differ between any two runs
        r.pop("elapsed_s"), r.pop("tokens_per_s")
    progress = {k: v for k, v in meta["progress"].items() if k not in ("elapsed_s", "window_time")}
    return arrays, meta["optimizer"], progress, rows


def test_random_sigkills_then_resume_match_an_unbroken_run(tmp_path):
    ref = tmp_path / "unbroken"
    p = start([*OPTIONS, "--out", str(ref)])
    assert p.wait(120) == 0, p.stderr.read()
    expected = final_state(ref)

    run = tmp_path / "killed"
    rng = np.random.default_rng(20261201)
    kills = in_write = 0
    plan = ["start-up", "write"] + ["random"] * 8 + ["write"] + ["random"] * 2
    started = False
    for what in plan + ["finish"] * 5:
        args = ["--resume", str(run)] if started and (run / "checkpoint.npz").exists() else [*OPTIONS, "--out", str(run)]
        if not started and run.exists() and not (run / "checkpoint.npz").exists():
            args = [*OPTIONS, "--out", str(run)]  # killed before the first checkpoint: a new run again
        if what == "write":
            p = start(args, kill_in_write=1)
            p.wait(120)
            killed = p.returncode == -signal.SIGKILL
            in_write += killed
        else:
            p = start(args)
            if what == "start-up":
                time.sleep(rng.uniform(0.0, 0.3))
                p.send_signal(signal.SIGKILL)
                p.wait(60)
            elif what == "random":
                done = logged_rows(run)
                target = int(rng.integers(done + 1, done + 6))  # 5 to 25 steps on
                kill_when(p, run, target, rng.uniform(0, 0.05))
            else:
                assert p.wait(120) == 0, p.stderr.read()
            killed = p.returncode == -signal.SIGKILL
        kills += killed
        started = started or (run / "checkpoint.npz").exists()
        if not killed:
            assert p.returncode == 0, p.stderr.read()
            if json.loads(str(np.load(run / "checkpoint.npz")["meta"]))["progress"]["step"] == STEPS:
                break
        else:  # each kill leaves the last checkpoint readable, or none yet
            if (run / "checkpoint.npz").exists():
                with np.load(run / "checkpoint.npz") as z:
                    assert "meta" in z.files
    assert kills >= 10 and in_write >= 2, (kills, in_write)

    arrays, optimizer, progress, rows = final_state(run)
    exp_arrays, exp_optimizer, exp_progress, exp_rows = expected
    assert arrays.keys() == exp_arrays.keys()
    for k in arrays:  # bit for bit: parameters, optimizer moments, carried state
        assert np.array_equal(arrays[k], exp_arrays[k]), k
    assert optimizer == exp_optimizer and progress == exp_progress
    assert rows == exp_rows
    assert [r["step"] for r in rows] == [0, *range(LOG_EVERY, STEPS + 1, LOG_EVERY)]
    left = sorted(p.name for p in run.iterdir())
    assert left == sorted(p.name for p in ref.iterdir()), left  # no stray temporary files
