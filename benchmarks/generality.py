"""Generality without a speed tax: one gradients call for every hidden
activation, output/loss pair, masks, reduction, token inputs and ``need=``, timed against the
canonical tanh + softmax + cross-entropy call that ``rnngrad bench`` measures, on the same shape,
weights and data; plus the token-input dW_x scatter-add against np.add.at and a bincount.

    python benchmarks/generality.py                       # the tables in docs/performance.md
    python benchmarks/generality.py --shape 1000,8,16,64,16 --repeats 100 --json out.json

Calls run in blocks that rotate through the variants twelve times; a ratio is the median over
the twelve rounds of (variant block median) / (canonical block median), so a change in the
machine's speed between rounds cancels. Compare ratios, not times, between runs. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

import numpy as np

import rnngrad
from rnngrad import bench
from rnngrad.engines import available_engines, default_engine, get_engine
from rnngrad.layer import input_weight_grad

# name -> (RNN options, how the targets / inputs / call differ from the canonical one)
VARIANTS = {
    "tanh, softmax + cross-entropy, class indices (canonical)": ({}, {}),
    "relu hidden": (dict(hidden_activation="relu"), {}),
    "sigmoid hidden": (dict(hidden_activation="sigmoid"), {}),
    "identity hidden (linear RNN)": (dict(hidden_activation="identity"), {}),
    "softmax + cross-entropy, probability targets": ({}, dict(targets="distribution")),
    "sigmoid + binary cross-entropy (multi-label)": (
        dict(output_activation="sigmoid", loss="binary_cross_entropy"), dict(targets="binary")),
    "identity + MSE (regression)": (dict(output_activation="identity", loss="mse"), dict(targets="real")),
    "sigmoid + MSE (general VJP, element-wise)": (
        dict(output_activation="sigmoid", loss="mse"), dict(targets="unit")),
    "softmax + MSE (general VJP, softmax Jacobian)": (
        dict(output_activation="softmax", loss="mse"), dict(targets="unit")),
    "canonical + mask (20% of (t, b) masked)": ({}, dict(mask=0.2)),
    'canonical + reduction="mean"': ({}, dict(reduction="mean")),
    "canonical, no h0 (zeros)": ({}, dict(h0=False)),
    "canonical, token-index inputs x (T, B)": ({}, dict(tokens=True)),
    'canonical, need=() (no dL/dx, dL/dh0, dL/dy_hat)': ({}, dict(need=())),
}


def _targets(kind: str, problem: dict, rng: np.random.Generator) -> np.ndarray:
    T, B, D, H, O = problem["shape"]
    dtype = problem["x"].dtype
    if kind == "distribution":
        p = rng.random((T, B, O))
        return (p / p.sum(axis=-1, keepdims=True)).astype(dtype)
    if kind == "binary":
        return (rng.random((T, B, O)) < 0.3).astype(dtype)
    if kind == "real":
        return rng.standard_normal((T, B, O)).astype(dtype)
    if kind == "unit":
        return rng.random((T, B, O)).astype(dtype)
    return problem["y"]


def make_call(name: str, problem: dict, seed: int = 1):
    """A no-argument function making one gradients call of variant ``name`` (a fresh model
    with the problem's weights, so every variant multiplies the same numbers)."""
    options, how = VARIANTS[name]
    T, B, D, H, O = problem["shape"]
    rng = np.random.default_rng(seed)
    model = rnngrad.RNN(D, H, O, dtype=problem["x"].dtype, **options)
    model.params = {k: v.copy() for k, v in problem["params"].items()}
    x = rng.integers(0, D, size=(T, B)) if how.get("tokens") else problem["x"]
    y = _targets(how.get("targets", "index"), problem, rng)
    h0 = problem["h0"] if how.get("h0", True) else None
    mask = (rng.random((T, B)) >= how["mask"]) if "mask" in how else None
    kwargs = dict(h0=h0, mask=mask, reduction=how.get("reduction", "sum"))
    if "need" in how:
        kwargs["need"] = how["need"]
    return lambda: model.gradients(x, y, **kwargs)


def scatter_add_contenders(N: int, H: int, D: int, dtype, seed: int = 0) -> dict:
    """dW_x for token inputs, (H, D): rnngrad's sort + segmented sum, np.add.at, and a
    bincount per hidden unit; the three must agree before they are timed."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, D, size=N)
    dz = rng.standard_normal((N, H)).astype(dtype)

    def add_at():
        out = np.zeros((D, H), dtype=dtype)
        np.add.at(out, x, dz)
        return out.T

    def bincount():
        return np.stack([np.bincount(x, weights=dz[:, j], minlength=D) for j in range(H)]).astype(dtype)

    def rnngrad_path(kernels: bool):
        engine = get_engine("numba" if kernels else "numpy")
        return lambda: input_weight_grad(x, dz, D, engine)

    runs = {"np.add.at": add_at, "np.bincount per hidden unit": bincount,
            "rnngrad without numba: sort + np.add.reduceat": rnngrad_path(False)}
    if "numba" in available_engines():
        runs["rnngrad with rnngrad[fast]: compiled scatter-add"] = rnngrad_path(True)
    ref = runs["np.add.at"]()
    for name, run in runs.items():
        np.testing.assert_allclose(run(), ref, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-4 if dtype == np.float32 else 1e-12, err_msg=name)
    return runs


ROUNDS = 12  # more than rnngrad bench's: this machine's speed changes within seconds


def _summarise(runs: dict, repeats: int, base: str) -> dict:
    """Blocks of calls rotating through ``runs`` ROUNDS times (rnngrad bench's timing), each
    contender's median and its time relative to ``base``, round by round."""
    times = bench._time_calls(runs, repeats, min(ROUNDS, repeats))
    return bench.summarise_blocks(times, base, "relative_to_canonical")


def run(shapes, repeats: int | None, budget: float, use_torch: bool) -> dict:
    # As in rnngrad bench, and measured first for the same reason: the machine's rate in this
    # run, and its three 16 MiB arrays raise glibc's mmap threshold, so that no variant pays
    # page faults for its fresh arrays (docs/performance.md, third pass) that another does not.
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "engine": default_engine().name,
              "matmul_gflops": bench.matmul_rate(), "shapes": []}
    for shape in shapes:
        problem = bench.make_problem(shape)
        runs = {name: make_call(name, problem) for name in VARIANTS}
        if use_torch:
            torch_run = bench._torch_contender(problem, bench._cores())
            runs["PyTorch, canonical (as in rnngrad bench)"] = torch_run
        n = repeats or bench._auto_repeats(runs, budget)
        variants = _summarise(runs, n, base=next(iter(VARIANTS)))
        T, B, D, H, O = shape
        scatter_runs = scatter_add_contenders(T * B, H, D, problem["x"].dtype)
        scatter = _summarise(scatter_runs, max(n, 24), base="np.add.at")
        result["shapes"].append({"shape": list(shape), "repeats": n, "variants": variants,
                                 "token_dW_x": scatter})
        print(f"[generality] {shape}: {n} repeats", flush=True)
    return result


def format_markdown(result: dict) -> str:
    lines = [f"rnngrad generality benchmark, {result['date']}, engine "
             f"{result['engine']}; float32, median ms of one gradients call; "
             f"float32 matmul (2048^3) {result['matmul_gflops']:.1f} GFLOP/s", ""]
    for entry in result["shapes"]:
        lines += [f"### (T, B, D, H, O) = {tuple(entry['shape'])}, {entry['repeats']} repeats", "",
                  "| variant | median ms | time / canonical (median over rounds) |", "|---|---:|---:|"]
        for name, v in entry["variants"].items():
            lines.append(f"| {name} | {v['median_s'] * 1e3:.3f} | {v['relative_to_canonical']:.2f} |")
        T, B, D, H, O = entry["shape"]
        lines += ["", f"Token-input dW_x, N = T·B = {T * B} rows, H = {H}, D = {D} tokens:", "",
                  "| method | median ms |", "|---|---:|"]
        for name, v in entry["token_dW_x"].items():
            lines.append(f"| {name} | {v['median_s'] * 1e3:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=bench._shape, action="append",
                   help="T,B,D,H,O (repeatable); default (100, 32, 64, 128, 64) and (1000, 8, 16, 64, 16)")
    p.add_argument("--repeats", type=bench._positive(int), help="timed calls per variant (default: from --budget)")
    p.add_argument("--budget", type=bench._positive(float), default=20.0,
                   help="about this many seconds of timing per shape (at most 200 calls per variant)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch's canonical call out")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    shapes = args.shape or [(100, 32, 64, 128, 64), (1000, 8, 16, 64, 16)]
    use_torch = not args.no_torch and bench._torch_version() is not None
    result = run(shapes, args.repeats, args.budget, use_torch)
    print(format_markdown(result))
    if args.json:
        from rnngrad._io import atomic_write
        text = json.dumps(result, indent=2)
        atomic_write(args.json, lambda f: f.write(text), mode="w")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
