"""Le, Jaitly & Hinton (2015), "A simple way to initialize recurrent networks of rectified linear
units", on the adding problem: a ReLU network with W_h = I (IRNN) against a tanh network with
the default initialisation, same sizes, optimizer, data and number of updates.

    python benchmarks/irnn_adding.py                 # the table in docs/experiments.md
    python benchmarks/irnn_adding.py --T 100 --steps 2000 --json out.json
    python benchmarks/irnn_adding.py --workers 2 --out sweeps/irnn   # runs side by side; resumable

The grid (models x T) is a sweep (rnngrad.sweep.run_sweep): each model trains as its own
rnngrad.train.Trainer run on a fixed training set of adding-problem sequences (loss only at the
last step) and reports the MSE on held-out sequences; predicting the constant 1 scores
1/6 ≈ 0.167. With --out the run folders, summary.json/.md/.png stay there and running the same
command again skips finished runs (resumes interrupted ones); without it they go to a temporary
folder. --workers N runs them on a local Dask cluster of N processes. The --json output is a
list with one object per (T, model): the options (``vars(args)``, now with ``workers`` and
``out``), "T", "model", "test_mse" (the last validation MSE), "best_test_mse", "curve" (every
logged validation MSE) and "seconds" (the wall time this invocation spent on that run). Not part
of CI: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rnngrad._io import atomic_write
from rnngrad.data import ADDING_BASELINE_MSE
from rnngrad.sweep import run_sweep
from rnngrad.train import TrainConfig

MODELS = {
    "IRNN (relu, W_h = I)": dict(hidden_activation="relu", recurrent_init="identity"),
    "tanh (default init)": dict(hidden_activation="tanh", recurrent_init="uniform"),
    "relu (default init)": dict(hidden_activation="relu", recurrent_init="uniform"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[100, 200], help="sequence lengths")
    p.add_argument("--hidden-size", type=int, default=100)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--workers", type=int, default=None, help="run on a local Dask cluster of this many processes")
    p.add_argument("--out", help="keep the sweep (run folders, summary) here; a rerun skips finished runs")
    return p.parse_args(argv)


def grid(args) -> tuple[TrainConfig, list[dict], list[tuple[int, str]]]:
    """The shared settings, one configuration per (T, model), and their (T, model) labels."""
    base = TrainConfig(task="adding", hidden_size=args.hidden_size, steps=args.steps, batch_size=args.batch_size,
                       optimizer=args.optimizer, lr=args.lr, clip_norm=args.clip_norm or None,
                       task_train_size=args.train_size, task_val_size=args.test_size, seed=args.seed,
                       log_every=max(1, args.steps // 20), checkpoint_every=args.steps, dtype="float32")
    labels = [(T, name) for T in args.T for name in args.models]
    return base, [{"chunk_len": T, **MODELS[name]} for T, name in labels], labels


def curve_of(folder) -> list[float]:
    rows = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines() if line]
    return [r["val_loss"] for r in rows]


def main(argv=None) -> None:
    args = parse_args(argv)
    base, configs, labels = grid(args)
    print(f"adding problem: H={args.hidden_size}, {args.steps} updates of batch {args.batch_size}, "
          f"{args.optimizer} lr={args.lr}, clip-norm {args.clip_norm}, {args.train_size} training sequences, "
          f"float32, seed {args.seed}; baseline (predict 1) MSE = {ADDING_BASELINE_MSE:.3f}\n")
    client = None
    if args.workers:
        from rnngrad.distributed_train import connect_for_training
        client = connect_for_training(workers=args.workers)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            records = run_sweep(base, configs, args.out or scratch, client=client)
        finally:
            if client is not None:
                client.close()
        results = []
        print("| T | model | test MSE | best test MSE | training time (s) |")
        print("|---:|---|---:|---:|---:|")
        for (T, name), record in zip(labels, records):
            if record["status"] not in ("done", "early_stopped"):
                print(f"| {T} | {name} | {record['status']}: {record['message']} | | |")
                continue
            curve = curve_of(record["folder"])
            results.append({**vars(args), "T": T, "model": name, "test_mse": curve[-1],
                            "best_test_mse": min(curve), "curve": curve, "seconds": record["seconds"]})
            print(f"| {T} | {name} | {curve[-1]:.4f} | {min(curve):.4f} | {record['seconds']:.0f} |", flush=True)
    if args.json:
        text = json.dumps(results, indent=1)
        atomic_write(args.json, lambda fh: fh.write(text), mode="w")


if __name__ == "__main__":
    main()
