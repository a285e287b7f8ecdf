"""``rnngrad bench``: time loss + every gradient against PyTorch and a textbook NumPy loop.

Each contender computes, for the same weights and data, the loss L (reduction "sum") of a
tanh RNN with a softmax output and cross-entropy on integer targets, and its gradients:

* **rnngrad** -- ``RNN.gradients(x, y, h0=h0)``: every parameter gradient and the state
  gradients (total dL/dh_t, dL/dy_hat, dL/dx, dL/dh_0); with the numba engine of
  :mod:`rnngrad.engines` when numba is installed, and again with the NumPy engine;
* **PyTorch** -- ``nn.RNN`` (same weights, ``bias_hh`` zero) + ``nn.Linear`` +
  ``F.cross_entropy(reduction="sum")`` + ``backward()``, with x and h0 requiring grad so that
  it computes what rnngrad returns (it cannot return the total dL/dh_t or dL/dy_hat, which
  rnngrad computes in addition); ``torch.set_num_threads`` to the machine's cores;
* **textbook** -- the per-time-step NumPy loop that transcribes the seed's formulas (as in
  most tutorials): :func:`textbook_gradients`.

Before timing, every contender is run in float64 on the same shape and must agree with the
textbook loop to a relative error of 1e-10 (max |a - b| / max |b| per array). Timing is in
float32, in blocks of calls that rotate through the contenders (:func:`_time_calls`); the
figures are medians over repeats, and a ratio is the median over the rounds of the ratio of
the two contenders' block medians in that round (:func:`_round_ratio`), so that a change of
the machine's speed between rounds cancels. FLOPs count the matrix products of forward and backward,
``6 T B H (D + H + O)`` (see :func:`matmul_flops`), and rnngrad's rate is also given as a
fraction of a large float32 matrix product timed in the same run. Peak memory of one
gradients call is measured with :mod:`tracemalloc` (NumPy reports its buffers to it).

Stacked and bidirectional networks (shapes of seven values, :data:`DEEP_SHAPES`; PyTorch and
JAX) are timed the same way by :mod:`rnngrad.bench_deep`. The library part
(:func:`run_benchmark`, :func:`format_markdown`) returns data and text; the command prints.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from datetime import datetime, timezone
from typing import Callable, Sequence

import numpy as np

from . import bench_deep
from .engines import numba_available, numba_version
from .model import RNN
from .workspace import Workspace

__all__ = ["SHAPES", "TINY_SHAPES", "TARGETS", "DEEP_SHAPES", "TINY_DEEP_SHAPES", "DEEP_TARGET", "make_problem",
           "matmul_flops", "textbook_gradients", "check_agreement", "run_benchmark", "format_markdown",
           "matmul_rate", "peak_memory", "summarise_blocks", "rounds_for", "register", "main"]

#: (T, B, D, H, O): the five benchmark shapes (one character sequence, long sequences, three BLAS-bound).
SHAPES = (
    (25, 1, 65, 100, 65),
    (100, 32, 64, 128, 64),
    (100, 32, 256, 512, 256),
    (1000, 8, 16, 64, 16),
    (50, 128, 128, 1024, 128),
)
TINY_SHAPES = ((6, 3, 5, 7, 4),)
#: shape -> (least torch/rnngrad time ratio, least fraction of the matmul rate or None).
TARGETS = {
    (25, 1, 65, 100, 65): (8.0, None),
    (100, 32, 64, 128, 64): (2.5, None),
    (100, 32, 256, 512, 256): (1.3, 0.8),
    (1000, 8, 16, 64, 16): (10.0, None),
    (50, 128, 128, 1024, 128): (1.3, 0.8),
}
#: (T, B, D, H, O, layers, bidirectional): stacked networks (rnngrad.bench_deep), target PyTorch / rnngrad.
DEEP_SHAPES = ((100, 32, 64, 128, 64, 2, False), (100, 32, 64, 128, 64, 2, True), (50, 64, 128, 512, 128, 3, True))
TINY_DEEP_SHAPES = ((5, 3, 4, 6, 3, 2, True),)
DEEP_TARGET = 1.5
MEMORY_TARGET = 1.5
AGREEMENT_RTOL = 1e-10


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_problem(shape: Sequence[int], dtype=np.float32, seed: int = 0) -> dict:
    """Weights and data for one shape (T, B, D, H, O), identical for every contender.

    Weights are drawn as rnngrad and PyTorch initialise them, U(-1/sqrt(H), 1/sqrt(H));
    x (T, B, D) and h0 (B, H) are standard normal (h0 scaled by 0.5), y (T, B) class indices.
    """
    T, B, D, H, O = shape
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    params = {name: rng.uniform(-k, k, size=s).astype(dtype)
              for name, s in (("W_x", (H, D)), ("W_h", (H, H)), ("b_h", (H,)),
                              ("W_y", (O, H)), ("b_y", (O,)))}
    return {
        "shape": tuple(shape),
        "params": params,
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "y": rng.integers(0, O, size=(T, B)),
        "h0": (0.5 * rng.standard_normal((B, H))).astype(dtype),
    }


def matmul_flops(shape: Sequence[int]) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of one forward + backward pass.

    Forward: W_x x_t, W_h h_{t-1}, W_y h_t for all N = T·B rows. Backward: dW_y, da W_y,
    dz W_h (T-1 steps and dh_0), dW_h, dW_x, dz W_x. Three (N, ·) products per weight matrix:
    6 N H (D + H + O).
    """
    T, B, D, H, O = shape
    return 6 * T * B * H * (D + H + O)


# --- contenders ----------------------------------------------------------------------


def textbook_gradients(params: dict, x: np.ndarray, y: np.ndarray, h0: np.ndarray) -> dict:
    """The seed's formulas transcribed step by step (tanh, softmax, cross-entropy, sum).

    Forward: for t = 1..T, h_t = tanh(W_x x_t + W_h h_{t-1} + b_h), y_hat_t = softmax(W_y h_t + b_y).
    Backward: for t = T..1, dy = y_hat_t - y_t (seed §3A), dW_y += dy^T h_t, db_y += dy,
    dh_t = dy W_y + dh_next (§3B), dz = (1 - h_t^2) * dh_t, dW_x += dz^T x_t, dW_h += dz^T h_{t-1},
    db_h += dz (§3C), dx_t = dz W_x, dh_next = dz W_h. Rows are sequences (B, ·).
    """
    W_x, W_h, b_h, W_y, b_y = (params[k] for k in ("W_x", "W_h", "b_h", "W_y", "b_y"))
    T, B = y.shape
    rows = np.arange(B)
    hs, ps = [h0], []
    loss = 0.0
    for t in range(T):
        h = np.tanh(x[t] @ W_x.T + hs[-1] @ W_h.T + b_h)
        a = h @ W_y.T + b_y
        e = np.exp(a - a.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        loss += -np.log(p[rows, y[t]]).sum()
        hs.append(h)
        ps.append(p)
    g = {k: np.zeros_like(v) for k, v in params.items()}
    dx = np.zeros_like(x)
    dh_all = np.zeros((T,) + h0.shape, dtype=h0.dtype)
    dy_hat = np.zeros((T, B, W_y.shape[0]), dtype=h0.dtype)
    dh_next = np.zeros_like(h0)
    for t in reversed(range(T)):
        dy = ps[t].copy()
        dy[rows, y[t]] -= 1
        dy_hat[t, rows, y[t]] = -1 / ps[t][rows, y[t]]
        g["W_y"] += dy.T @ hs[t + 1]
        g["b_y"] += dy.sum(axis=0)
        dh = dy @ W_y + dh_next
        dh_all[t] = dh
        dz = (1 - hs[t + 1] ** 2) * dh
        g["W_x"] += dz.T @ x[t]
        g["W_h"] += dz.T @ hs[t]
        g["b_h"] += dz.sum(axis=0)
        dx[t] = dz @ W_x
        dh_next = dz @ W_h
    g.update(x=dx, h0=dh_next, h=dh_all, y_hat=dy_hat)
    return {"loss": float(loss), "grads": g}


def _rnngrad_contender(problem: dict, kernels: bool, workspace: bool = False) -> Callable[[], dict]:
    T, B, D, H, O = problem["shape"]
    dtype = problem["x"].dtype
    model = RNN(D, H, O, "tanh", "softmax", "cross_entropy", dtype=dtype)
    model.params = {k: v.copy() for k, v in problem["params"].items()}
    x, y, h0 = problem["x"], problem["y"], problem["h0"]
    # With a workspace, as a training loop would call it: the arrays of one call are reused
    # by the next (results are read before the next call, as by the agreement check).
    ws = Workspace() if workspace else None

    engine = "numba" if kernels else "numpy"

    def run():
        res = model.gradients(x, y, h0=h0, workspace=ws, engine=engine)
        return {"loss": res.loss, "grads": {**res.grads, "x": res.dx, "h0": res.dh0, "h": res.dh,
                                            "y_hat": res.dy_hat}}

    return run


def torch_gradients_call(rnn, lin, x, h0, y, shape) -> Callable:
    """One PyTorch call of loss + every gradient: ``nn.RNN`` (x, h0 requiring grad), ``nn.Linear``,
    ``F.cross_entropy(reduction="sum")`` over the (T·B,) targets y, ``backward()``; returns the loss."""
    import torch.nn.functional as F

    T, B, O = shape[0], shape[1], shape[4]
    leaves = [x, h0, *rnn.parameters(), *lin.parameters()]

    def run():
        for leaf in leaves:
            leaf.grad = None  # as optimizer.zero_grad(set_to_none=True)
        out, _ = rnn(x, h0)
        loss = F.cross_entropy(lin(out).reshape(T * B, O), y, reduction="sum")
        loss.backward()
        return loss

    return run


def _torch_contender(problem: dict, threads: int) -> Callable[[], dict]:
    import torch

    torch.set_num_threads(threads)
    T, B, D, H, O = problem["shape"]
    p = problem["params"]
    tdtype = torch.float64 if problem["x"].dtype == np.float64 else torch.float32
    rnn = torch.nn.RNN(D, H, nonlinearity="tanh", bias=True).to(tdtype)
    lin = torch.nn.Linear(H, O).to(tdtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(p["W_x"]))
        rnn.weight_hh_l0.copy_(torch.from_numpy(p["W_h"]))
        rnn.bias_ih_l0.copy_(torch.from_numpy(p["b_h"]))
        rnn.bias_hh_l0.zero_()
        lin.weight.copy_(torch.from_numpy(p["W_y"]))
        lin.bias.copy_(torch.from_numpy(p["b_y"]))
    x = torch.from_numpy(problem["x"]).requires_grad_(True)
    h0 = torch.from_numpy(problem["h0"]).unsqueeze(0).clone().requires_grad_(True)
    y = torch.from_numpy(problem["y"].reshape(-1)).long()
    run = torch_gradients_call(rnn, lin, x, h0, y, problem["shape"])

    def collect(loss):
        return {"loss": float(loss.detach()), "grads": {
            "W_x": rnn.weight_ih_l0.grad.numpy(), "W_h": rnn.weight_hh_l0.grad.numpy(),
            "b_h": rnn.bias_ih_l0.grad.numpy(), "W_y": lin.weight.grad.numpy(),
            "b_y": lin.bias.grad.numpy(), "x": x.grad.numpy(), "h0": h0.grad[0].numpy()}}

    run.collect = collect
    return run


def _textbook_contender(problem: dict) -> Callable[[], dict]:
    return lambda: textbook_gradients(problem["params"], problem["x"], problem["y"], problem["h0"])


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


WORKSPACE = "rnngrad (workspace)"


def _contenders(problem: dict, use_torch: bool, threads: int) -> dict:
    """name -> run(); the first is rnngrad as the library runs by default, the second the
    same with a reused :class:`~rnngrad.Workspace`."""
    out = {}
    kernels = numba_available()
    out["rnngrad"] = _rnngrad_contender(problem, kernels=kernels)
    out[WORKSPACE] = _rnngrad_contender(problem, kernels=kernels, workspace=True)
    if kernels:
        out["rnngrad (pure NumPy)"] = _rnngrad_contender(problem, kernels=False)
    if use_torch:
        out["PyTorch"] = _torch_contender(problem, threads)
    out["textbook loop"] = _textbook_contender(problem)
    return out


def _collect(run) -> dict:
    """One call of a contender, as {"loss": float, "grads": {name: array}}."""
    out = run()
    collect = getattr(run, "collect", None)
    return collect(out) if collect else out


def _relative_error(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def check_agreement(shape: Sequence[int], use_torch: bool = True, threads: int | None = None,
                    seed: int = 0) -> dict:
    """Run every contender once in float64; worst relative error of each against the textbook loop.

    Returns {"max_rel_error": {name: float}, "compared": {name: [keys]}, "passed": bool}.
    Arrays a contender does not compute (PyTorch: dL/dh_t, dL/dy_hat) are not compared.
    """
    problem = make_problem(shape, np.float64, seed)
    results = {name: _collect(run) for name, run in _contenders(problem, use_torch, threads or _cores()).items()}
    ref = results.pop("textbook loop")
    errors, compared = {}, {}
    for name, res in results.items():
        keys = [k for k in ref["grads"] if k in res["grads"]]
        errs = [_relative_error(res["grads"][k], ref["grads"][k]) for k in keys]
        errs.append(abs(res["loss"] - ref["loss"]) / abs(ref["loss"]))
        errors[name] = max(errs)
        compared[name] = ["loss"] + keys
    return {"max_rel_error": errors, "compared": compared,
            "passed": all(e <= AGREEMENT_RTOL for e in errors.values())}


def _time_calls(runs: dict, repeats: int, rounds: int) -> dict:
    """name -> one list of seconds per call for each round.

    Each contender runs in blocks of consecutive calls (one untimed call first), and the
    blocks rotate through the contenders ``rounds`` times so that slow drift of a shared
    machine hits all alike. Blocks rather than alternating single calls: PyTorch's
    thread pool keeps spinning for a while after a call and would slow whichever
    contender ran right after it.
    """
    rounds = max(1, min(rounds, repeats))
    times = {name: [[] for _ in range(rounds)] for name in runs}
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    for r, n in enumerate(per_round):
        for name, run in runs.items():
            run()
            for _ in range(n):
                start = time.perf_counter()
                run()
                times[name][r].append(time.perf_counter() - start)
    return times


def summarise_blocks(times: dict, base: str, ratio_key: str) -> dict:
    """From :func:`_time_calls`'s blocks: per contender the median and minimum seconds, the
    median of each round's block, and under ``ratio_key`` its time relative to ``base``
    (:func:`_round_ratio` of the block medians)."""
    block = {name: [float(np.median(b)) for b in blocks] for name, blocks in times.items()}
    out = {}
    for name, blocks in times.items():
        every = np.concatenate([np.asarray(b, dtype=float) for b in blocks])
        out[name] = {"median_s": float(np.median(every)), "min_s": float(np.min(every)),
                     "round_medians_s": block[name],
                     ratio_key: _round_ratio(block[name], block[base])}
    return out


def rounds_for(repeats: int) -> int:
    """Three to nine rounds: blocks of at least four calls once there are twelve repeats."""
    return min(9, max(3, repeats // 4))


def _round_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of numerator_r / denominator_r (the block medians of two contenders).

    This machine moves between two speeds within seconds (docs/performance.md, fifth pass);
    blocks of one round run close together, so the speed cancels in each round's ratio, where
    a ratio of the overall medians could put one contender's median in one state and the
    other's in the other."""
    return float(np.median(np.asarray(numerator) / np.asarray(denominator)))


def _auto_repeats(runs: dict, budget_s: float) -> int:
    for run in runs.values():
        run()  # the first call may compile kernels
    start = time.perf_counter()
    for run in runs.values():
        run()
    once = time.perf_counter() - start
    return int(min(200, max(5, budget_s / max(once, 1e-9))))


def matmul_rate(n: int = 2048, repeats: int = 7) -> float:
    """GFLOP/s of a large (n, n) @ (n, n) float32 product through NumPy's BLAS (median of repeats)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty_like(a)
    np.dot(a, b, out=c)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.dot(a, b, out=c)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e9


def _nbytes_unique(arrays) -> int:
    """Total bytes of distinct buffers (views count once, via their base)."""
    seen, total = set(), 0
    for arr in arrays:
        if not isinstance(arr, np.ndarray):
            continue
        base = arr
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) not in seen:
            seen.add(id(base))
            total += base.nbytes
    return total


def peak_memory(problem: dict) -> dict:
    """Peak memory of one ``RNN.gradients`` call against inputs + parameters + returned arrays.

    peak = bytes of inputs and parameters (alive throughout) + tracemalloc's peak of what the
    call allocates (returned arrays and temporaries). ``ratio = peak / (inputs + params +
    returned)``: 1.0 would mean no temporaries at all. Returned: every array the result holds
    (grads, dh, dy_hat, dx, dh0, h_last, the forward cache's h, a, y_hat and each layer
    cache's x, h, z), each buffer once and none that is an input's. A deep shape
    (T, B, D, H, O, layers, bidirectional) measures that network.
    """
    T, B, D, H, O, *deep = problem["shape"]
    K, bi = deep or (1, False)
    model = RNN(D, H, O, num_layers=K, bidirectional=bool(bi), dtype=problem["x"].dtype)
    model.params = {k: v.copy() for k, v in problem["params"].items()}
    x, y, h0 = problem["x"], problem["y"], problem["h0"]
    model.gradients(x, y, h0=h0)  # compile kernels, warm caches outside the measurement
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        res = model.gradients(x, y, h0=h0)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    given = [x, y, h0, *model.params.values()]
    inputs = _nbytes_unique(given)
    fwd = res.forward
    returned = _nbytes_unique([*given, *res.grads.values(), res.dh, res.dy_hat, res.dx, res.dh0, res.h_last,
                               fwd.h, fwd.a, fwd.y_hat, *(a for c in fwd.layers for a in (c.x, c.h0, c.h, c.z,
                                                                                        c.h_prev))]) - inputs
    peak = inputs + traced_peak
    return {"inputs_params_bytes": inputs, "returned_bytes": returned, "call_alloc_peak_bytes": traced_peak,
            "peak_bytes": peak, "ratio": peak / (inputs + returned)}


def run_benchmark(shapes: Sequence[Sequence[int]] = SHAPES + DEEP_SHAPES, repeats: int | None = None,
                  budget_s: float = 3.0, use_torch: bool = True, threads: int | None = None,
                  check: bool = True, seed: int = 0,
                  progress: Callable[[str], None] | None = None, use_jax: bool = True) -> dict:
    """Agreement check, timings, rates and memory for each shape; a JSON-ready dict.

    Parameters
    ----------
    shapes : sequence of (T, B, D, H, O), or of (T, B, D, H, O, layers, bidirectional) for
        stacked/bidirectional networks (:mod:`rnngrad.bench_deep`; results under "deep_shapes")
    repeats : timed calls per contender, or None to fit about ``budget_s`` seconds per shape
    use_torch : include PyTorch when it is importable;  use_jax : JAX (deep shapes) when importable
    threads : threads for PyTorch (NumPy's BLAS uses its own default), default the cores
    check : run the float64 agreement check first (raises RuntimeError on disagreement)
    """
    threads = threads or _cores()
    torch_version = _torch_version() if use_torch else None
    note = progress or (lambda msg: None)
    if use_torch and torch_version is None:
        note("PyTorch is not installed: timing without it (pip install torch==2.13.0 for the ratios)")
    use_torch = torch_version is not None
    jax_version = bench_deep.jax_version() if use_jax else None
    note("timing a 2048 x 2048 float32 matrix product")
    peak_rate = matmul_rate()
    result = {
        "machine": {"platform": platform.platform(), "processor": _cpu_name(), "cores": _cores(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "torch": torch_version, "numba": numba_version(), "jax": jax_version,
                    "kernels": numba_available(), "torch_threads": threads if use_torch else None},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float32",
        "matmul_gflops": peak_rate,
        "shapes": [],
    }
    for shape in (s for s in shapes if not bench_deep.is_deep(s)):
        shape = tuple(int(s) for s in shape)
        entry = {"shape": list(shape)}
        if check:
            note(f"{shape}: float64 agreement check")
            agreement = check_agreement(shape, use_torch, threads, seed)
            entry["agreement"] = agreement
            if not agreement["passed"]:
                raise RuntimeError(f"contenders disagree on {shape} in float64: {agreement['max_rel_error']}")
        problem = make_problem(shape, np.float32, seed)
        runs = _contenders(problem, use_torch, threads)
        n = repeats or _auto_repeats(runs, budget_s)
        note(f"{shape}: {n} repeats")
        times = _time_calls(runs, n, rounds_for(n))
        flops = matmul_flops(shape)
        entry["repeats"] = n
        entry["rounds"] = len(times["rnngrad"])
        entry["flops"] = flops
        entry["contenders"] = summarise_blocks(times, "rnngrad", "ratio_to_rnngrad")
        for c in entry["contenders"].values():
            c["gflops"] = flops / c["median_s"] / 1e9
        entry["rnngrad_gflops"] = entry["contenders"]["rnngrad"]["gflops"]
        entry["fraction_of_matmul"] = entry["rnngrad_gflops"] / peak_rate
        entry["memory"] = peak_memory(problem)
        target = TARGETS.get(shape)
        if target is not None:
            entry["targets"] = _judge(entry, target)
        result["shapes"].append(entry)
    deep = [s for s in shapes if bench_deep.is_deep(s)]
    if deep:
        result["deep_shapes"] = [bench_deep.run_deep_shape(s, repeats, budget_s, use_torch, jax_version is not None,
                                                           threads, check, seed, peak_rate, note) for s in deep]
    return result


def _judge(entry: dict, target) -> dict:
    least_ratio, least_fraction = target
    out = {"memory_ratio": {"target": MEMORY_TARGET, "measured": entry["memory"]["ratio"],
                            "met": entry["memory"]["ratio"] <= MEMORY_TARGET}}
    torch = entry["contenders"].get("PyTorch")
    reused = entry["contenders"].get(WORKSPACE)
    if torch is not None:
        out["torch_ratio"] = {"target": least_ratio, "measured": torch["ratio_to_rnngrad"],
                              "met": torch["ratio_to_rnngrad"] >= least_ratio}
    if torch is not None and reused is not None:
        ratio = _round_ratio(torch["round_medians_s"], reused["round_medians_s"])
        out["torch_ratio_workspace"] = {"target": least_ratio, "measured": ratio, "met": ratio >= least_ratio}
    if least_fraction is not None:
        out["fraction_of_matmul"] = {"target": least_fraction, "measured": entry["fraction_of_matmul"],
                                     "met": entry["fraction_of_matmul"] >= least_fraction}
    if least_fraction is not None and reused is not None:
        fraction = reused["gflops"] / entry["rnngrad_gflops"] * entry["fraction_of_matmul"]
        out["fraction_of_matmul_workspace"] = {"target": least_fraction, "measured": fraction,
                                               "met": fraction >= least_fraction}
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_markdown(result: dict) -> str:
    """The benchmark as Markdown: one table per shape, then a summary against the targets."""
    m = result["machine"]
    lines = [
        f"rnngrad bench, {result['date']}: {m['processor']}, {m['cores']} cores; Python {m['python']}, "
        f"NumPy {m['numpy']}, PyTorch {m['torch'] or 'absent'}, numba {m['numba'] or 'absent'} "
        f"(kernels {'on' if m['kernels'] else 'off'}); {result['dtype']}; "
        f"float32 matmul (2048^3) {result['matmul_gflops']:.1f} GFLOP/s.",
        "",
    ]
    for entry in result["shapes"]:
        T, B, D, H, O = entry["shape"]
        lines.append(f"### (T, B, D, H, O) = ({T}, {B}, {D}, {H}, {O}): "
                     f"{entry['flops'] / 1e9:.3g} GFLOP per call, {entry['repeats']} repeats"
                     + (f" in {entry['rounds']} rounds" if "rounds" in entry else ""))
        if "agreement" in entry:
            errs = ", ".join(f"{k} {v:.1e}" for k, v in entry["agreement"]["max_rel_error"].items())
            lines.append(f"float64 agreement with the textbook loop (max relative error): {errs}")
        lines += ["", "| contender | median ms | min ms | time / rnngrad (median over rounds) | GFLOP/s |",
                  "|---|---:|---:|---:|---:|"]
        for name, c in entry["contenders"].items():
            lines.append(f"| {name} | {c['median_s'] * 1e3:.3f} | {c['min_s'] * 1e3:.3f} | "
                         f"{c['ratio_to_rnngrad']:.2f} | {c['gflops']:.1f} |")
        mem = entry["memory"]
        lines += ["", f"rnngrad: {entry['rnngrad_gflops']:.1f} GFLOP/s = "
                      f"{100 * entry['fraction_of_matmul']:.0f}% of the matmul rate; peak memory "
                      f"{mem['peak_bytes'] / 2**20:.2f} MiB = {mem['ratio']:.2f} x inputs + params + returned "
                      f"({(mem['inputs_params_bytes'] + mem['returned_bytes']) / 2**20:.2f} MiB)", ""]
    judged = [e for e in result["shapes"] if "targets" in e]
    if judged:
        lines += ["### Targets", "",
                  "Each figure as called by default, then with a reused Workspace (after the slash).", "",
                  "| shape | PyTorch / rnngrad | target | % of matmul | target | memory ratio | target | all met |",
                  "|---|---:|---:|---:|---:|---:|---:|:---:|"]
        for e in judged:
            t = e["targets"]
            tr, trw = t.get("torch_ratio"), t.get("torch_ratio_workspace")
            fr, frw = t.get("fraction_of_matmul"), t.get("fraction_of_matmul_workspace")
            mr = t["memory_ratio"]
            met = ("yes" if all(v["met"] for k, v in t.items() if not k.endswith("_workspace")) else "NO") + " / " + (
                "yes" if all(v["met"] for k, v in t.items() if k not in ("torch_ratio", "fraction_of_matmul")) else "NO")
            lines.append(
                f"| {tuple(e['shape'])} | {tr['measured']:.2f} / {trw['measured']:.2f} | >= {tr['target']:g} |"
                if tr else f"| {tuple(e['shape'])} | - | - |")
            rate = 100 * e["fraction_of_matmul"]
            rate_ws = rate * e["contenders"][WORKSPACE]["gflops"] / e["rnngrad_gflops"]
            lines[-1] += (f" {rate:.0f}% / {rate_ws:.0f}% | "
                          f"{'>= %d%%' % round(100 * fr['target']) if fr else '-'} | "
                          f"{mr['measured']:.2f} | <= {mr['target']:g} | {met} |")
    if result.get("deep_shapes"):
        lines += ["", bench_deep.format_deep_markdown(result["deep_shapes"])]
    return "\n".join(lines) + "\n"


# --- command line ----------------------------------------------------------------------


def _shape(text: str) -> tuple:
    error = (f"expected T,B,D,H,O (five positive integers) or T,B,D,H,O,LAYERS,BIDIRECTIONAL "
             f"(seven: the last 0 or 1), got {text!r}")
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(error) from None
    if len(shape) not in (5, 7) or min(shape[:6]) < 1 or (len(shape) == 7 and shape[6] not in (0, 1)):
        raise argparse.ArgumentTypeError(error)
    return shape if len(shape) == 5 else (*shape[:6], bool(shape[6]))


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {'integer' if kind is int else 'number'}, got {text!r}")
        return value
    return parse


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", dest="shapes", type=_shape, action="append", metavar="T,B,D,H,O[,LAYERS,BIDIR]",
                   help="benchmark this shape (repeatable; seven values: a stacked network, BIDIR 0 or 1); "
                        "default the five single-layer benchmark shapes and the three deep shapes")
    p.add_argument("--deep", action="store_true", help="only the stacked/bidirectional shapes "
                   f"{', '.join(map(str, DEEP_SHAPES))}")
    p.add_argument("--tiny", action="store_true",
                   help=f"tiny shapes {TINY_SHAPES[0]} and {TINY_DEEP_SHAPES[0]} (only the latter with --deep) "
                        "with 3 repeats: a smoke test, not a measurement")
    p.add_argument("--repeats", type=_positive(int), default=None,
                   help="timed calls per contender (default: about --budget seconds per shape)")
    p.add_argument("--budget", type=_positive(float), default=3.0, help="seconds of timing per shape when --repeats is not given")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is installed")
    p.add_argument("--no-jax", action="store_true", help="leave JAX out of the deep shapes even if it is installed")
    p.add_argument("--threads", type=_positive(int), default=None, help="PyTorch threads (default: the machine's cores)")
    p.add_argument("--no-check", action="store_true", help="skip the float64 agreement check")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON to PATH")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data")


def _run(args) -> int:
    from .cli_args import write_json

    from .cli_args import output_file

    if args.tiny and args.shapes:
        raise ValueError("--tiny runs its own tiny shapes; give either --tiny or --shape, not both")
    if args.json:  # checked before minutes of timing, not after
        output_file(args.json, "--json")
    shapes = ((() if args.deep else TINY_SHAPES) + TINY_DEEP_SHAPES if args.tiny
              else args.shapes or (() if args.deep else SHAPES) + DEEP_SHAPES)
    repeats = 3 if args.tiny and args.repeats is None else args.repeats
    result = run_benchmark(shapes, repeats=repeats, budget_s=args.budget, use_torch=not args.no_torch,
                           threads=args.threads, check=not args.no_check, seed=args.seed, use_jax=not args.no_jax,
                           progress=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    print(format_markdown(result))
    if args.json:
        write_json(args.json, result)
    return 0


def register(subparsers) -> None:
    """Add the ``bench`` command to the ``rnngrad`` parser's subcommands."""
    p = subparsers.add_parser(
        "bench", help="time loss + all gradients against PyTorch and a textbook NumPy loop",
        description=__doc__.split("\n\n")[0].replace("``", "") + " Prints Markdown tables; see docs/performance.md.")
    _add_arguments(p)
    p.set_defaults(run=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m rnngrad.bench``: the same as ``rnngrad bench``."""
    p = argparse.ArgumentParser(prog="python -m rnngrad.bench", description=__doc__.split("\n\n")[0].replace("``", ""))
    _add_arguments(p)
    return _run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
