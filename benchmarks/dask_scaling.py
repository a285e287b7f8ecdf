"""Throughput of exact data-parallel gradients (rnngrad.distributed) on 1 and 2 local Dask
workers, with the per-step overhead broken out.

    python benchmarks/dask_scaling.py                       # the table in docs/scaling.md
    python benchmarks/dask_scaling.py --hidden 256 1024 --workers 1 2 --blocks 5 --steps 4 --json out.json

The model is the main job's (``rnngrad train`` defaults: a character model, vocabulary V = 100 of
the default corpus, H = 256, B = 32 streams, chunks of k = 64 steps, float32, reduction "mean")
and larger ones (``--hidden``). Each step is what ``train --workers N`` would do: a
:class:`rnngrad.distributed.ShardedBatch` holds the token streams on the workers, and each call
sends the parameters and the carried h0, computes chunk i on N shards and returns loss, gradients
and h_last (``states=False``). Every figure is the median over ``--blocks`` blocks of the mean
of ``--steps`` steps. Overheads, timed on the same cluster: a no-op task's round trip, sending
the parameters to a worker, fetching a gradient-sized result back, and a pickle round trip of
the parameters (the serialisation alone). "in-process" is model.gradients in this process on
one core (the worker's thread count), for the whole batch and for one shard's rows.

Not part of CI: it starts clusters and takes about a minute.
"""

from __future__ import annotations

import os

# One BLAS thread here, as in each Dask worker (Dask's nanny sets the same variables), so that
# the in-process baseline and a worker run the same single-core code. Before NumPy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import rnngrad  # noqa: E402
from rnngrad import distributed as rd  # noqa: E402


def _noop():
    return None


def _nbytes(params: dict) -> int:
    return sum(v.nbytes for v in params.values())


def _zeros_like(shapes: dict, dtype: str) -> dict:
    return {k: np.zeros(s, dtype=dtype) for k, s in shapes.items()}


def blocks(fn, n_blocks: int, n_steps: int, warmup: int = 1) -> float:
    """Median over blocks of the mean seconds per call of ``fn``."""
    for _ in range(warmup):
        fn()
    means = []
    for _ in range(n_blocks):
        start = time.perf_counter()
        for _ in range(n_steps):
            fn()
        means.append((time.perf_counter() - start) / n_steps)
    return statistics.median(means)


def in_process(model, x, y, k: int, rows: int, args) -> float:
    """Seconds per truncated-BPTT step of model.gradients here, on the first ``rows`` streams."""
    state = {"i": 0, "h": None}

    def step():
        i = state["i"] % args.chunks
        w = slice(i * k, (i + 1) * k)
        res = model.gradients(x[w, :rows], y[w, :rows], h0=state["h"], reduction="mean", need=())
        state["h"], state["i"] = (None if i == args.chunks - 1 else res.h_last), state["i"] + 1

    return blocks(step, args.blocks, args.steps)


def on_cluster(model, x, y, k: int, n_workers: int, args) -> dict:
    client = rd.connect(workers=n_workers)
    try:
        client.wait_for_workers(n_workers, timeout=120)
        batch = rd.ShardedBatch(client, model, x, y, shards=n_workers)
        state = {"i": 0, "h": None}

        def step():
            i = state["i"] % args.chunks
            res = batch.gradients(model, h0=state["h"], window=slice(i * k, (i + 1) * k), reduction="mean",
                                  need=(), states=False)
            state["h"], state["i"] = (None if i == args.chunks - 1 else res.h_last), state["i"] + 1

        out = {"step_s": blocks(step, args.blocks, args.steps, warmup=2)}
        out["noop_s"] = blocks(lambda: client.submit(_noop, pure=False).result(), args.blocks, 10)

        out["params_send_s"] = blocks(lambda: client.submit(_nbytes, model.params, pure=False).result(),
                                      args.blocks, args.steps)
        shapes, dtype = model.shapes, model.dtype.name
        out["grads_back_s"] = blocks(lambda: client.submit(_zeros_like, shapes, dtype, pure=False).result(),
                                     args.blocks, args.steps)
        batch.close()
        return out
    finally:
        client.close()


def flops_per_token(H: int, V: int) -> int:
    """Multiply-adds x 2 of one token's forward and backward pass (one layer, token inputs): forward
    W_h h and W_y h; backward dW_y, da W_y, dW_h and dz W_h (the W_x row lookup and every
    element-wise term are O(H + V))."""
    return 6 * H * H + 6 * H * V


def projection(row: dict, B: int, k: int, args) -> list[dict]:
    """Projected seconds per update on N machines, a star around the client (what Dask's
    client-side sum is): each update moves the parameters to and the gradients from every
    machine through the client's link, plus each shard's h0 and h_last.

        t(N) = compute + t_rt + N * t_task + (2 N P + 2 U B_total H 4) / bandwidth

    strong: the main job's B rows split over N machines (compute = t_c / N; needs N <= B);
    weak: B rows on every machine (compute = t_c; a batch of N B rows per update)."""
    H, bw = row["H"], args.bandwidth_gbit * 1e9 / 8
    t_c, P = row["in_process_s"], row["params_MB"] * 1e6
    t_rt = row["clusters"][min(row["clusters"])]["noop_s"]
    out = []
    for N in args.machines:
        for kind in ("strong", "weak"):
            if kind == "strong" and N > B:
                continue
            rows = B if kind == "strong" else N * B
            moved = 2 * N * P + 2 * rows * H * 4
            compute = t_c / N if kind == "strong" else t_c
            t = compute + t_rt + N * args.task_ms / 1e3 + moved / bw
            speedup = (t_c if kind == "strong" else N * t_c) / t
            out.append({"H": H, "N": N, "scaling": kind, "MB_moved": moved / 1e6, "comm_s": moved / bw,
                        "compute_s": compute, "step_s": t, "speedup": speedup, "efficiency": speedup / N})
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 1024], help="hidden sizes H")
    p.add_argument("--vocab", type=int, default=100, help="V, inputs and outputs (the default corpus has 100)")
    p.add_argument("--batch-size", type=int, default=32, help="B streams")
    p.add_argument("--chunk-len", type=int, default=64, help="k steps per chunk")
    p.add_argument("--chunks", type=int, default=8, help="chunks of the held streams (then they restart)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="steps per block")
    p.add_argument("--machines", type=int, nargs="+", default=[8, 64], help="N of the projection")
    p.add_argument("--bandwidth-gbit", type=float, default=10.0, help="the client's link in the projection")
    p.add_argument("--task-ms", type=float, default=0.5,
                   help="scheduler time per task in the projection (Dask documents 200 us to 1 ms)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    V, B, k = args.vocab, args.batch_size, args.chunk_len
    rng = np.random.default_rng(0)
    streams = rng.integers(0, V, size=(k * args.chunks + 1, B))
    x, y = streams[:-1], streams[1:]
    results = []
    print(f"V={V}, B={B}, k={k}, float32, reduction mean, {os.cpu_count()} CPUs; median of {args.blocks} "
          f"blocks of {args.steps} steps\n")
    print("| H | params (MB) | setup | s/step | tokens/s | speedup | no-op RT (ms) | params send (ms) "
          "| grads back (ms) | pickle RT (ms) | compute/shard (ms) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for H in args.hidden:
        model = rnngrad.RNN(V, H, V, dtype=np.float32, seed=0)
        mb = sum(v.nbytes for v in model.params.values()) / 1e6
        start = time.perf_counter()
        for _ in range(args.steps):
            pickle.loads(pickle.dumps(model.params, protocol=5))
        pickle_s = (time.perf_counter() - start) / args.steps
        base = in_process(model, x, y, k, B, args)
        row = {"H": H, "params_MB": mb, "pickle_s": pickle_s, "in_process_s": base, "clusters": {},
               "gflop_per_update": flops_per_token(H, V) * B * k / 1e9}
        print(f"| {H} | {mb:.2f} | in-process | {base:.4f} | {B * k / base:,.0f} | 1.00 | | | | "
              f"{1e3 * pickle_s:.2f} | {1e3 * base:.1f} |")
        for n in args.workers:
            shard_s = in_process(model, x, y, k, -(-B // n), args)
            r = on_cluster(model, x, y, k, n, args)
            r["compute_per_shard_s"] = shard_s
            row["clusters"][n] = r
            print(f"| {H} | {mb:.2f} | {n} worker{'s' if n > 1 else ''} | {r['step_s']:.4f} | "
                  f"{B * k / r['step_s']:,.0f} | {base / r['step_s']:.2f} | {1e3 * r['noop_s']:.2f} | "
                  f"{1e3 * r['params_send_s']:.2f} | {1e3 * r['grads_back_s']:.2f} | {1e3 * pickle_s:.2f} | "
                  f"{1e3 * shard_s:.1f} |", flush=True)
        results.append(row)
    print()
    for row in results:
        print(f"H={row['H']}: {row['gflop_per_update']:.2f} GFLOP per update (6H^2 + 6HV per token), "
              f"{row['gflop_per_update'] / row['in_process_s']:.0f} GFLOP/s in-process; "
              f"{row['params_MB']:.2f} MB of parameters (float32) each way per machine")
    print(f"\nProjection: {args.bandwidth_gbit:g} Gbit/s at the client, {args.task_ms:g} ms per task, the "
          f"no-op round trip measured above, compute per machine as measured in-process\n")
    print("| H | N | scaling | MB moved/update | comm (ms) | compute (ms) | s/update | speedup | efficiency |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in results:
        row["projection"] = projection(row, B, k, args)
        for q in row["projection"]:
            print(f"| {q['H']} | {q['N']} | {q['scaling']} | {q['MB_moved']:.1f} | {1e3 * q['comm_s']:.1f} | "
                  f"{1e3 * q['compute_s']:.1f} | {q['step_s']:.4f} | {q['speedup']:.2f} | {q['efficiency']:.0%} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
