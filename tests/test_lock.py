"""One writer per run folder: a second training process, or a second resume, is refused."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from rnngrad._io import FolderBusy, FolderLock, make_new_folder
from rnngrad.train import Trainer
from test_train import small, text_file  # noqa: F401  (the fixture)

HOLD = textwrap.dedent("""
    import sys, time
    from rnngrad._io import FolderLock
    lock = FolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on tmp_path / "run"."""
    folder = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    yield folder, p
    p.kill()
    p.wait()


def test_a_second_process_cannot_train_into_a_locked_folder(holder, text_file):  # noqa: F811
    folder, p = holder
    t = Trainer(small(text_file), folder)
    with pytest.raises(FolderBusy, match=rf"run folder '{folder}' is in use by process {p.pid}"):
        t.run()
    assert not (folder / "metrics.jsonl").exists() and not (folder / "checkpoint.npz").exists()


def test_the_lock_dies_with_a_killed_process(holder, text_file):  # noqa: F811
    folder, p = holder
    p.kill()  # SIGKILL: no clean-up runs
    p.wait()
    assert Trainer(small(text_file, steps=5), folder).run() == "done"


def test_resume_while_the_run_is_still_writing_is_refused(tmp_path, text_file):  # noqa: F811
    t = Trainer(small(text_file, steps=10), tmp_path)
    t.run()
    t.lock.acquire()  # as if this run were still writing
    try:
        with pytest.raises(FolderBusy, match=f"in use by process {os.getpid()}"):
            Trainer.resume(tmp_path, steps=20)
    finally:
        t.lock.release()
    r = Trainer.resume(tmp_path, steps=20)
    with pytest.raises(FolderBusy):  # a second resume of the same folder
        Trainer.resume(tmp_path, steps=30)
    assert r.run() == "done"  # the run() releases the lock the resume took
    assert Trainer.resume(tmp_path, steps=30).run() == "done"


def test_a_new_run_never_overwrites_a_finished_one(tmp_path, text_file):  # noqa: F811
    """Two runs set up together in one folder: the one that gets there second is refused."""
    first, second = Trainer(small(text_file, steps=5), tmp_path), Trainer(small(text_file, steps=5), tmp_path)
    first.run()
    with pytest.raises(ValueError, match="already holds a run; continue it with Trainer.resume"):
        second.run()


def test_new_folders_are_unique_even_when_made_in_the_same_second(tmp_path):
    made = [make_new_folder(tmp_path / "runs" / "20261201-120000-x") for _ in range(3)]
    assert [m.name for m in made] == ["20261201-120000-x", "20261201-120000-x-2", "20261201-120000-x-3"]


def test_two_cli_runs_into_one_folder_one_is_refused(tmp_path, text_file):  # noqa: F811
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "rnngrad", "train", "--text", text_file, "--out", str(out), "-H", "8", "-k", "8",
           "-B", "4", "--steps", "400", "--log-every", "100", "--no-progress", "--val-fraction", "0.1"]
    a = subprocess.Popen(cmd + ["--seed", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.1)
    b = subprocess.run(cmd + ["--seed", "1"], capture_output=True, text=True)
    a_out, a_err = a.communicate(timeout=120)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 2], (a_err, b.stderr)
    refused = b.stderr if b.returncode == 2 else a_err
    assert refused.count("\n") == 1 and ("is in use by process" in refused or "already holds a run" in refused)


def test_stray_temporaries_of_killed_writers_are_removed_on_start(tmp_path, text_file):  # noqa: F811
    stray = [tmp_path / ".checkpoint.npz.4242.0123456789abcdef0123456789abcdef.tmp",
             tmp_path / ".loss.png.77.ffffffffffffffffffffffffffffffff.tmp"]
    keep = tmp_path / ".notes.tmp"  # not of our pattern: a user's file, left alone
    for p in stray + [keep]:
        p.write_bytes(b"partial")
    Trainer(small(text_file, steps=5), tmp_path).run()
    assert not any(p.exists() for p in stray) and keep.exists()


def test_a_stop_at_the_last_step_is_a_finished_run(tmp_path, text_file):  # noqa: F811
    t = Trainer(small(text_file, steps=5), tmp_path)
    assert t.run(should_stop=lambda: t.progress.step == 5) == "done"


def test_a_holder_that_has_not_written_its_pid_yet_is_named_sensibly(tmp_path):
    """The lock is taken before the PID is written: a second writer in between sees no PID."""
    folder = tmp_path / "run"
    folder.mkdir()
    code = textwrap.dedent("""
        import fcntl, sys, time
        fh = open(sys.argv[1], "a+")
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code, str(folder / ".rnngrad.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusy, match=r"in use by another process \(which has only just started\)"):
            FolderLock(folder).acquire()
    finally:
        p.kill()
        p.wait()
