"""Le, Jaitly & Hinton (2015), "A simple way to initialize recurrent networks of rectified linear
units", on the adding problem: a ReLU network with W_h = I (IRNN) against a tanh network with
the default initialisation, same sizes, optimizer, data and number of updates.

    python benchmarks/irnn_adding.py                 # the table in docs/experiments.md
    python benchmarks/irnn_adding.py --T 100 --steps 2000 --json out.json

Each model trains with rnngrad.train.Trainer on a fixed training set of adding-problem
sequences (loss only at the last step) and reports the MSE on held-out sequences; predicting
the constant 1 scores 1/6 ≈ 0.167. Not part of CI: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from rnngrad._io import atomic_write
from rnngrad.data import ADDING_BASELINE_MSE
from rnngrad.train import TrainConfig, Trainer

MODELS = {
    "IRNN (relu, W_h = I)": dict(hidden_activation="relu", recurrent_init="identity"),
    "tanh (default init)": dict(hidden_activation="tanh", recurrent_init="uniform"),
    "relu (default init)": dict(hidden_activation="relu", recurrent_init="uniform"),
}


def main(argv=None) -> None:
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
    args = p.parse_args(argv)

    results = []
    print(f"adding problem: H={args.hidden_size}, {args.steps} updates of batch {args.batch_size}, "
          f"{args.optimizer} lr={args.lr}, clip-norm {args.clip_norm}, {args.train_size} training sequences, "
          f"float32, seed {args.seed}; baseline (predict 1) MSE = {ADDING_BASELINE_MSE:.3f}\n")
    print("| T | model | test MSE | best test MSE | training time (s) |")
    print("|---:|---|---:|---:|---:|")
    for T in args.T:
        for name in args.models:
            cfg = TrainConfig(task="adding", chunk_len=T, hidden_size=args.hidden_size, steps=args.steps,
                              batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                              clip_norm=args.clip_norm, task_train_size=args.train_size,
                              task_val_size=args.test_size, seed=args.seed, log_every=max(1, args.steps // 20),
                              checkpoint_every=args.steps, dtype="float32", **MODELS[name])
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                trainer = Trainer(cfg, out)
                trainer.run()
                seconds = time.perf_counter() - t0
            curve = [r["val_loss"] for r in trainer.progress.rows]
            results.append({**vars(args), "T": T, "model": name, "test_mse": curve[-1],
                            "best_test_mse": min(curve), "curve": curve, "seconds": seconds})
            print(f"| {T} | {name} | {curve[-1]:.4f} | {min(curve):.4f} | {seconds:.0f} |", flush=True)
    if args.json:
        text = json.dumps(results, indent=1)
        atomic_write(args.json, lambda fh: fh.write(text), mode="w")


if __name__ == "__main__":
    main()
