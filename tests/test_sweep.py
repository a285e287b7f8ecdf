"""Sweeps (rnngrad.sweep, rnngrad sweep): grid parsing, naming, and runs on a 2-worker LocalCluster.

The oracle for a run's numbers is its own folder, read here with json (metrics.jsonl) and numpy
(checkpoint.npz) rather than through the sweep, and a Trainer run of the same configuration made
by hand: training is deterministic, so a sweep's run (on a worker, resumed or not) must give
exactly its numbers.
"""

import itertools
import json
import os
import re
import signal
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from rnngrad._io import FolderBusy, FolderLock
from rnngrad.sweep import (RECORD_KEYS, SUMMARY, expand_grid, load_sweep_file, parse_grid_option, run_name,
                           run_sweep)
from rnngrad.sweep_cli import main as sweep_main
from rnngrad.train import TrainConfig, Trainer

BASE = TrainConfig(task="adding", hidden_size=4, chunk_len=10, steps=20, batch_size=8, task_train_size=64,
                   task_val_size=32, log_every=5, checkpoint_every=10, dtype="float64")
GRID = {"lr": [1e-2, 3e-3], "hidden_activation": ["tanh", "relu"]}
# Plain SGD at lr 1e6 without clipping on an identity-initialised ReLU network: overflow within 20 steps.
DIVERGING = {"lr": 1e6, "optimizer": "sgd", "clip_norm": None, "hidden_activation": "relu",
             "recurrent_init": "identity"}


# --- parsing ------------------------------------------------------------------------------------

def test_parse_grid_option_converts_to_each_settings_type():
    assert parse_grid_option("lr=1e-3,3e-4") == ("lr", [0.001, 0.0003])
    name, values = parse_grid_option("hidden-size=4,16")
    assert name == "hidden_size" and values == [4, 16] and all(type(v) is int for v in values)
    assert parse_grid_option("bidirectional=true,no") == ("bidirectional", [True, False])
    assert parse_grid_option("hidden_activation=tanh,relu") == ("hidden_activation", ["tanh", "relu"])
    assert parse_grid_option("early_stopping=none,3") == ("early_stopping", [None, 3])
    assert parse_grid_option("clip_norm=0,1") == ("clip_norm", [None, 1.0])  # 0: off, as train --clip-norm 0
    name, values = parse_grid_option("dropout=0,0.5")
    assert values == [0.0, 0.5] and all(type(v) is float for v in values)


@pytest.mark.parametrize("text, match", [
    ("lr", r"--grid expects NAME=V1,V2"),
    ("learning_rate=1", r"--grid 'learning_rate': unknown setting; valid settings: .*hidden_size.*lr"),
    ("hidden_size=4.5", r"--grid hidden_size: '4.5' is not an integer$"),
    ("lr=fast", r"--grid lr: 'fast' is not a number$"),
    ("lr=none", r"--grid lr: 'none' is not a number$"),  # lr takes no None
    ("bidirectional=maybe", r"--grid bidirectional: 'maybe' is not true or false"),
    ("lr=1e-3,,1e-4", r"--grid lr: empty value"),
    ("lr=1e-3,0.001", r"--grid lr: the value 0.001 is given twice"),
])
def test_parse_grid_option_errors_are_one_line(text, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_grid_option(text)
    assert "\n" not in str(info.value)


def test_expand_grid_is_the_cartesian_product_in_a_stable_order():
    grid = {"a": [1, 2], "b": ["x", "y", "z"]}
    assert expand_grid(grid) == [{"a": a, "b": b} for a in (1, 2) for b in "xyz"]  # the first varies slowest
    assert expand_grid(grid) == expand_grid(dict(grid))
    assert expand_grid({}) == [{}]
    with pytest.raises(ValueError, match=r"grid\['a'\] must be a non-empty list"):
        expand_grid({"a": []})
    with pytest.raises(TypeError, match="grid must be a dict"):
        expand_grid([("a", [1])])


def test_run_name_is_readable_safe_and_unique():
    assert run_name({"lr": 0.001, "hidden_activation": "relu"}) == "lr=0.001,hidden_activation=relu"
    assert run_name({"lr": 1e-5, "clip_norm": None, "bidirectional": True}) == "lr=1e-05,clip_norm=none,bidirectional=True"
    assert run_name({}) == "base"
    assert run_name({"text": "/data/books/moby dick.txt"}) == "text=moby_dick"
    assert run_name({"lr_schedule": "warmup=10,cosine/2"}) == "lr_schedule=warmup=10,cosine_2"
    long = [run_name({"lr_schedule": "warmup=1," + "x" * 200 + str(i)}) for i in range(2)]
    assert all(len(n) <= 120 for n in long) and long[0] != long[1]
    for name in long + [run_name({"text": "../../etc/x"})]:
        assert "/" not in name and not name.startswith(".")


def test_toml_file_grid_and_shared_settings(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('[grid]\nlr = [1e-3, 3e-3]\nlr_schedule = ["constant", "warmup=5,cosine"]\nhidden_size = 8\n'
                    '[train]\ntask = "adding"\nsteps = 100\nmomentum = 0\nclip_norm = "none"\n')
    grid, train = load_sweep_file(path)
    assert grid == {"lr": [1e-3, 3e-3], "lr_schedule": ["constant", "warmup=5,cosine"], "hidden_size": [8]}
    assert train == {"task": "adding", "steps": 100, "momentum": 0.0, "clip_norm": None}
    assert type(train["momentum"]) is float
    for text, match in [("[grid]\nlr = [1e-3\n", "is not valid TOML"),
                        ("[grids]\nlr = [1]\n", r"expected a \[grid\] table .*; got grids"),
                        ('[grid]\nhidden_size = ["big"]\n', r"\[grid\] hidden_size: 'big' is not an integer"),
                        ("[train]\nsteps = 1.5\n", r"\[train\] steps: 1.5 is not an integer"),
                        ("[grid]\nlr = []\n", "the list of values is empty")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_sweep_file(path)
    with pytest.raises(ValueError, match="--config .*cannot read it"):
        load_sweep_file(tmp_path / "missing.toml")


# --- a sweep on two workers -----------------------------------------------------------------------

def read_metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def learning(rows) -> list:
    """The rows without their timings: what a deterministic run repeats exactly."""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]


def checkpoint_meta(folder) -> dict:
    with np.load(folder / "checkpoint.npz") as z:  # the JSON metadata member, read without rnngrad
        return json.loads(str(z["meta"]))


def checkpoint_step(folder) -> int:
    return checkpoint_meta(folder)["progress"]["step"]


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from rnngrad.distributed_train import connect_for_training

    c = connect_for_training(workers=2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def cluster_sweep(client, tmp_path_factory):
    """Four configurations and a diverging one, run as tasks on a LocalCluster of 2 processes."""
    out = tmp_path_factory.mktemp("sweep")
    configs = expand_grid(GRID) + [DIVERGING]
    seen = []
    records = run_sweep(BASE, configs, out, client=client, on_progress=lambda r, i, n: seen.append((r["name"], i, n)))
    return out, configs, records, seen


def test_sweep_on_workers_writes_a_folder_and_a_record_per_configuration(cluster_sweep):
    out, configs, records, seen = cluster_sweep
    names = [run_name(c) for c in configs]
    assert [r["name"] for r in records] == names  # grid order, whatever order they finished in
    assert sorted(n for n, _, _ in seen) == sorted(names) and [i for _, i, _ in seen] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    summary = json.loads((out / SUMMARY).read_text())
    assert summary == json.loads(json.dumps(records))  # the file is what run_sweep returned
    for record, changes in zip(summary, configs):
        assert list(record) == list(RECORD_KEYS)
        assert record["config"] == changes
        folder = out / record["name"]
        assert record["folder"] == str(folder)
        rows = read_metrics(folder)
        assert record["final_val_loss"] == rows[-1]["val_loss"]
        assert record["best_val_loss"] == min(r["val_loss"] for r in rows)
        assert record["best_step"] == min(rows, key=lambda r: r["val_loss"])["step"]
        if changes is DIVERGING:
            assert record["status"] == "diverged" and "diverged at step" in record["message"]
            assert 0 < record["steps"] < BASE.steps
        else:
            assert record["status"] == "done" and record["message"] == "" and record["from_step"] == 0
            assert record["steps"] == checkpoint_step(folder) == BASE.steps
            assert [r["step"] for r in rows] == list(range(0, BASE.steps + 1, BASE.log_every))
    assert (out / "summary.md").read_text().count("| done |") == 4
    assert (out / "summary.png").stat().st_size > 0


def test_a_run_on_a_worker_equals_the_same_run_by_hand(cluster_sweep, tmp_path):
    out, configs, records, _ = cluster_sweep
    trainer = Trainer(replace(BASE, **configs[1]), tmp_path)
    trainer.run()
    rows = read_metrics(tmp_path)
    assert learning(rows) == learning(read_metrics(out / records[1]["name"]))
    assert records[1]["final_val_loss"] == rows[-1]["val_loss"]


def test_rerun_skips_finished_runs(cluster_sweep):
    out, configs, records, _ = cluster_sweep
    finished = [out / r["name"] / "checkpoint.npz" for r in records if r["status"] == "done"]
    before = [p.stat().st_mtime_ns for p in finished]
    again = run_sweep(BASE, configs, out)  # in this process, the same folder
    assert [p.stat().st_mtime_ns for p in finished] == before  # not one checkpoint rewritten
    for new, old in zip(again, records):
        keep = ("final_val_loss", "best_val_loss", "best_step", "steps", "status")
        assert {k: new[k] for k in keep} == {k: old[k] for k in keep}
        if old["status"] == "done":
            assert new["from_step"] == BASE.steps  # skipped
    assert again[-1]["status"] == "diverged"  # retried, and diverges again


def test_interrupted_run_resumes_and_missing_ones_start(cluster_sweep, tmp_path):
    """Stopped after 10 updates of the first run (the rest never started); the rerun resumes it at
    step 10 and starts the others; every number equals the unbroken runs on the workers."""
    out, configs, records, _ = cluster_sweep
    calls = itertools.count()
    first = run_sweep(BASE, configs[:2], tmp_path, should_stop=lambda: next(calls) >= 10)
    assert [r["status"] for r in first] == ["stopped", "pending"]
    assert first[0]["steps"] == checkpoint_step(tmp_path / first[0]["name"]) == 10
    assert not (tmp_path / first[1]["name"]).exists()
    second = run_sweep(BASE, configs[:2], tmp_path)
    assert [(r["status"], r["from_step"]) for r in second] == [("done", 10), ("done", 0)]
    for new, old in zip(second, records[:2]):
        assert learning(read_metrics(tmp_path / new["name"])) == learning(read_metrics(out / old["name"]))
        assert (new["final_val_loss"], new["best_val_loss"]) == (old["final_val_loss"], old["best_val_loss"])


def test_two_sweeps_into_one_folder_are_refused(tmp_path):
    lock = FolderLock(tmp_path).acquire()  # another sweep holding the folder
    try:
        with pytest.raises(FolderBusy, match=f"in use by process {os.getpid()}, another sweep"):
            run_sweep(BASE, [{}], tmp_path)
    finally:
        lock.release()
    assert list(tmp_path.iterdir()) == [tmp_path / ".rnngrad.lock"]  # nothing ran


def test_every_configuration_is_checked_before_any_run(tmp_path):
    with pytest.raises(ValueError, match=r"configuration lr=-1.0: lr \(--lr\)"):
        run_sweep(BASE, [{"lr": 1e-2}, {"lr": -1.0}], tmp_path)
    with pytest.raises(ValueError, match="same folder name"):
        run_sweep(BASE, [{"text": "a/x.txt"}, {"text": "b/x.txt"}], tmp_path)
    assert not tmp_path.joinpath("lr=0.01").exists()


def test_a_folder_with_other_settings_is_that_runs_failure(tmp_path):
    run_sweep(replace(BASE, steps=5, log_every=5), [{"lr": 1e-2}], tmp_path)
    records = run_sweep(replace(BASE, steps=5, log_every=5, hidden_size=5), [{"lr": 1e-2}, {"lr": 3e-3}], tmp_path)
    assert records[0]["status"] == "failed" and "other settings: hidden_size=4 (sweep: 5)" in records[0]["message"]
    assert records[1]["status"] == "done"


# --- the command ----------------------------------------------------------------------------------

def test_command_runs_a_grid_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["--grid", "lr=1e-2,3e-3", "--task", "adding", "-H", "4", "-k", "10", "--steps", "10", "-B", "8",
            "--task-train-size", "64", "--task-val-size", "32", "--log-every", "5", "--dtype", "float64",
            "--clip-norm", "0", "--out", str(out), "--no-progress"]
    assert sweep_main(args) == 0
    text = capsys.readouterr().out
    assert "[2/2] lr=0.003: done" in text and "| lr=0.01 | 0.01 | done |" in text
    summary = json.loads((out / SUMMARY).read_text())
    assert [r["config"] for r in summary] == [{"lr": 0.01}, {"lr": 0.003}]
    for r in summary:  # the shared options reached every run, --clip-norm 0 as no clipping
        saved = checkpoint_meta(out / r["name"])["config"]
        assert (saved["clip_norm"], saved["hidden_size"], saved["dtype"], saved["lr"]) == (None, 4, "float64",
                                                                                          r["config"]["lr"])


@pytest.mark.parametrize("argv, match", [
    (["--grid", "speed=1,2"], "--grid 'speed': unknown setting"),
    (["--grid", "lr=1e-3", "--lr", "1e-2"], "lr: swept .* and shared"),
    ([], "give at least one --grid"),
])
def test_command_errors_are_one_line(tmp_path, capsys, argv, match):
    assert sweep_main(argv + ["--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnngrad sweep: error: ")
    assert re.search(match, err)


# --- faults (last: it restarts a worker) ----------------------------------------------------------

def test_a_killed_worker_s_run_resumes_from_its_checkpoint(client, tmp_path):
    """SIGKILL the worker training a run once its first checkpoint is written: the scheduler gives
    the task to a worker again, the run resumes from that checkpoint, and ends as an unbroken run."""
    base = replace(BASE, steps=300, log_every=50, checkpoint_every=50)
    folder = tmp_path / "sweep" / "lr=0.01"
    box = {}
    sweep = threading.Thread(target=lambda: box.update(records=run_sweep(base, [{"lr": 1e-2}], tmp_path / "sweep",
                                                                       client=client)))
    pids = client.run(os.getpid)
    sweep.start()
    deadline = time.monotonic() + 60
    while not (folder / "checkpoint.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    busy = [w for w, keys in client.processing().items() if any("run_one" in str(k) for k in keys)]
    assert busy, "no worker was training the run"
    os.kill(pids[busy[0]], signal.SIGKILL)
    sweep.join(120)
    record, = box["records"]
    assert record["status"] == "done" and record["steps"] == 300
    assert 50 <= record["from_step"] < 300  # the rerun resumed from the checkpoint, not from step 0
    unbroken, = run_sweep(base, [{"lr": 1e-2}], tmp_path / "unbroken")
    assert learning(read_metrics(folder)) == learning(read_metrics(tmp_path / "unbroken" / "lr=0.01"))
    assert (record["final_val_loss"], record["best_val_loss"]) == (unbroken["final_val_loss"], unbroken["best_val_loss"])
    client.wait_for_workers(2, timeout=60)


def test_command_takes_a_toml_file(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text('[grid]\nhidden_size = [3, 4]\n[train]\ntask = "adding"\nchunk_len = 10\nsteps = 5\n'
                      'log_every = 5\nbatch_size = 8\ntask_train_size = 16\ntask_val_size = 8\nlr = 1e-2\n')
    out = tmp_path / "sw"
    assert sweep_main(["--config", str(config), "--lr", "3e-3", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / SUMMARY).read_text())
    assert [r["name"] for r in summary] == ["hidden_size=3", "hidden_size=4"]
    saved = checkpoint_meta(out / "hidden_size=3")["config"]
    assert (saved["task"], saved["steps"], saved["lr"]) == ("adding", 5, 3e-3)  # the command line wins
    assert sweep_main(["--config", str(config), "--grid", "hidden_size=5", "--out", str(out)]) == 2
    assert "--grid hidden_size: given twice (also in --config)" in capsys.readouterr().err
