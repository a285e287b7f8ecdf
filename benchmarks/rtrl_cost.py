"""What RTRL costs against BPTT: time and peak memory of one gradients call, per time step, for
rnngrad.rtrl_gradients (exact, forward in time), the online rnngrad.rtrl_step, rnngrad.uoro_gradients
(unbiased rank-one estimate) and model.gradients (BPTT), on the same model and data; and how far one
UORO draw, and the mean of many, is from the exact gradient.

    OPENBLAS_NUM_THREADS=1 python benchmarks/rtrl_cost.py --rounds 5 --repeats 1   # docs/derivation.md, "What RTRL costs"
    python benchmarks/rtrl_cost.py --hidden 8 16 --batch 1 --rounds 3 --json out.json

(H in 8 16 32 64, B in 1 2 4 8, T = 100 by default. One BLAS thread: on a shared machine a threaded
BLAS waiting for busy cores makes RTRL's small products tens of times slower, and noisy.)

Time: each round times every method on one shape (the median of ``--repeats`` calls each); a ratio
is the median over the rounds of (method / BPTT) within a round, so a change in the machine's speed
between rounds cancels. Memory: tracemalloc's peak over one call (NumPy reports its allocations to
it), a separate untimed call. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np

import rnngrad
from rnngrad.engines import default_engine
from rnngrad.rtrl import rtrl_gradients, rtrl_init, rtrl_step, uoro_gradients


def _problem(H: int, B: int, T: int, D: int, O: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    model = rnngrad.RNN(D, H, O, seed=seed)
    return model, rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))


def _online(model, x, y):
    state = rtrl_init(model, x.shape[1])
    for t in range(x.shape[0]):
        rtrl_step(model, state, x[t], y[t])


METHODS = {
    "bptt": lambda m, x, y: m.gradients(x, y),
    "rtrl": lambda m, x, y: rtrl_gradients(m, x, y),
    "rtrl_step": _online,
    "uoro": lambda m, x, y: uoro_gradients(m, x, y, seed=0),
}


def _seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(H: int, B: int, T: int, D: int, O: int, rounds: int, repeats: int) -> dict:
    model, x, y = _problem(H, B, T, D, O)
    calls = {name: (lambda f=f: f(model, x, y)) for name, f in METHODS.items()}
    for fn in calls.values():  # warm up (imports, first-call allocations)
        fn()
    per_round = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            per_round[name].append(_seconds(fn, repeats))
    base = np.array(per_round["bptt"])
    row = {"H": H, "B": B, "T": T}
    for name, times in per_round.items():
        row[f"{name}_us_per_step"] = 1e6 * float(np.median(times)) / T
        row[f"{name}_ratio"] = float(np.median(np.array(times) / base))
        row[f"{name}_peak_MiB"] = _peak_bytes(calls[name]) / 2**20
    return row


def uoro_error(H: int, T: int, D: int, O: int, draws: int) -> dict:
    """Relative error ||g - g_exact|| / ||g_exact|| over the recurrent parameters, of one UORO draw
    (median over the draws) and of the mean of all draws, against BPTT, for B = 1."""
    model, x, y = _problem(H, 1, T, D, O, seed=1)
    exact = model.gradients(x, y).grads
    keys = [k for k in exact if k not in ("W_y", "b_y")]
    flat = lambda g: np.concatenate([g[k].ravel() for k in keys])  # noqa: E731
    want = flat(exact)
    est = np.stack([flat(uoro_gradients(model, x, y, seed=s).grads) for s in range(draws)])
    one = np.linalg.norm(est - want, axis=1) / np.linalg.norm(want)
    mean = np.linalg.norm(est.mean(axis=0) - want) / np.linalg.norm(want)
    return {"H": H, "T": T, "draws": draws, "one_draw_rel_error_median": float(np.median(one)),
            "mean_rel_error": float(mean), "cosine_one_draw_median": float(np.median(
                est @ want / (np.linalg.norm(est, axis=1) * np.linalg.norm(want))))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, default=100, help="T")
    p.add_argument("--inputs", type=int, default=16, help="D")
    p.add_argument("--outputs", type=int, default=16, help="O")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--uoro-draws", type=int, default=200)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    print(f"T={args.steps}, D={args.inputs}, O={args.outputs}, tanh/softmax/cross-entropy, float64; "
          f"BPTT engine {default_engine().name}; median of {args.rounds} rounds x {args.repeats} calls")
    names = list(METHODS)
    print(f"{'H':>3} {'B':>2} | " + " | ".join(f"{n:>9} us/step  ratio  peak MiB" for n in names))
    rows = []
    for H in args.hidden:
        for B in args.batch:
            r = measure(H, B, args.steps, args.inputs, args.outputs, args.rounds, args.repeats)
            rows.append(r)
            print(f"{H:>3} {B:>2} | " + " | ".join(
                f"{r[n + '_us_per_step']:>17.1f} {r[n + '_ratio']:>6.1f} {r[n + '_peak_MiB']:>9.3f}" for n in names),
                flush=True)
    errors = [uoro_error(H, 20, args.inputs, args.outputs, args.uoro_draws) for H in (8, 16)]
    print("\nUORO against the exact gradient (recurrent parameters, B = 1, T = 20):")
    for e in errors:
        print(f"  H={e['H']:>2}: one draw rel. error {e['one_draw_rel_error_median']:.2f} (median), cosine "
              f"{e['cosine_one_draw_median']:.2f}; mean of {e['draws']} draws rel. error {e['mean_rel_error']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "engine": default_engine().name, "rows": rows, "uoro": errors}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
