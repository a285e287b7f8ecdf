"""A task whose targets need the future: bidirectional against unidirectional networks of the
same size, on the lookahead task (name at each step the symbol ``delay`` steps later).

    python benchmarks/bidirectional_lookahead.py                 # the table in docs/experiments.md
    python benchmarks/bidirectional_lookahead.py --steps 1000 --json out.json

The inputs are independent uniform symbols, so no unidirectional network can beat the baseline
ln(8) nats (guessing), whatever its size; a bidirectional one has read the future when its
reverse direction reaches step t. Each pair of models has (almost) the same number of
parameters: a bidirectional layer of H units per direction against a unidirectional one of
about 1.5 H units. Not part of CI: it takes a minute or two.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

from rnngrad._io import atomic_write
from rnngrad.train import TrainConfig, Trainer

# name -> TrainConfig settings; pairs of equal parameter counts (printed beside each result).
MODELS = {
    "bidirectional, 1 layer, H = 32": dict(hidden_size=32, bidirectional=True),
    "unidirectional, 1 layer, H = 48": dict(hidden_size=48),
    "bidirectional, 2 layers, H = 24": dict(hidden_size=24, bidirectional=True, num_layers=2),
    "unidirectional, 2 layers, H = 40": dict(hidden_size=40, num_layers=2),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=30, help="sequence length")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    baseline = math.log(8)
    print(f"lookahead task (delay 4, 8 symbols): T={args.T}, {args.steps} Adam updates of batch {args.batch_size}, "
          f"lr={args.lr}, clip-norm 5, {args.train_size} training sequences, float32; "
          f"baseline (guessing) {baseline:.4f} nats\n")
    print("| model | parameters | seed | test loss (nats) | % of baseline | training time (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    results = []
    for name, settings in MODELS.items():
        for seed in args.seeds:
            cfg = TrainConfig(task="lookahead", chunk_len=args.T, steps=args.steps, batch_size=args.batch_size,
                              lr=args.lr, task_train_size=args.train_size, task_val_size=args.test_size,
                              seed=seed, log_every=max(1, args.steps // 10), checkpoint_every=args.steps,
                              dtype="float32", **settings)
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                trainer = Trainer(cfg, out)
                trainer.run()
                seconds = time.perf_counter() - t0
            n_params = sum(v.size for v in trainer.model.params.values())
            loss = trainer.progress.rows[-1]["val_loss"]
            results.append({"model": name, "parameters": n_params, "seed": seed, "test_loss": loss,
                            "curve": [r["val_loss"] for r in trainer.progress.rows], "seconds": seconds,
                            **{k: v for k, v in vars(args).items() if k != "json"}})
            print(f"| {name} | {n_params} | {seed} | {loss:.4f} | {100 * loss / baseline:.1f}% | {seconds:.1f} |",
                  flush=True)
    if args.json:
        text = json.dumps(results, indent=1)
        atomic_write(args.json, lambda fh: fh.write(text), mode="w")


if __name__ == "__main__":
    main()
