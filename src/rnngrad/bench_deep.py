"""The deep part of ``rnngrad bench``: stacked and bidirectional networks against PyTorch and JAX.

A deep shape is (T, B, D, H, O, layers, bidirectional). Each contender computes, for the
same weights and data, the loss L (reduction "sum") of a stacked (optionally bidirectional)
tanh RNN with a softmax output and cross-entropy on integer targets, and its gradients:

* **rnngrad** -- ``RNN(D, H, O, num_layers=K, bidirectional=...).gradients(x, y, h0=h0)``
  (every parameter gradient, dL/dh_t of every unit, dL/dy_hat, dL/dx, dL/dh_0), with the
  default engine, with a reused Workspace, and with the NumPy engine;
* **PyTorch** -- ``nn.RNN(D, H, num_layers=K, bidirectional=...)`` + ``nn.Linear`` +
  ``F.cross_entropy(reduction="sum")`` + ``backward()`` with x and h0 requiring grad, the
  weights loaded from ``RNN.torch_state_dict()``;
* **JAX** (when jax is importable) -- the same network written with ``jax.lax.scan`` (the
  reverse direction as a reversed scan), ``jax.jit(jax.value_and_grad(...))`` over the
  parameters, x and h0; compiled before it is timed.

Before timing, every contender runs once in float64 and must agree with PyTorch (without
torch: with rnngrad's NumPy engine) to a relative error of 1e-10 on the loss, every parameter
gradient (PyTorch's names mapped to rnngrad's keys, bias_ih's gradient for b_h), dL/dx and
dL/dh_0; RuntimeError otherwise. Timing, ratios and peak memory are those of
:mod:`rnngrad.bench`; the target is PyTorch / rnngrad >= :data:`rnngrad.bench.DEEP_TARGET` on each shape.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import bench
from .engines import numba_available
from .interop import torch_keys
from .model import RNN
from .network import layer_param_names
from .workspace import Workspace

__all__ = ["is_deep", "make_deep_problem", "deep_flops",
           "jax_version", "check_deep_agreement", "run_deep_shape", "format_deep_markdown"]

#: What every contender's float64 result is compared on (besides the parameter keys).
STATE_KEYS = ("x", "h0")


def is_deep(shape: Sequence) -> bool:
    return len(shape) == 7


def _describe(shape: Sequence) -> str:
    T, B, D, H, O, K, bi = shape
    return f"({T}, {B}, {D}, {H}, {O}), {K} layers, {'bidirectional' if bi else 'unidirectional'}"


def _model(shape: Sequence, dtype) -> RNN:
    T, B, D, H, O, K, bi = shape
    return RNN(D, H, O, num_layers=K, bidirectional=bool(bi), dtype=dtype)


def make_deep_problem(shape: Sequence, dtype=np.float32, seed: int = 0) -> dict:
    """Weights and data for one deep shape, identical for every contender: parameters under
    rnngrad's keys, U(-1/sqrt(H), 1/sqrt(H)); x (T, B, D) and h0 (U, B, H) standard normal
    (h0 scaled by 0.5), U = layers · directions; y (T, B) class indices."""
    T, B, D, H, O, K, bi = shape
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    params = {name: rng.uniform(-k, k, size=s).astype(dtype) for name, s in _model(shape, dtype).shapes.items()}
    U = K * (2 if bi else 1)
    return {"shape": (T, B, D, H, O, K, bool(bi)), "params": params,
            "x": rng.standard_normal((T, B, D)).astype(dtype), "y": rng.integers(0, O, size=(T, B)),
            "h0": (0.5 * rng.standard_normal((U, B, H))).astype(dtype)}


def deep_flops(shape: Sequence) -> int:
    """Matrix-product FLOPs of one forward + backward pass: 6 N H (D_k + H) per unit (D_k the
    layer's input width, D or H · directions; dL/dx of the first layer included) and 6 N C O
    for the head (C = H · directions), N = T·B (see :func:`rnngrad.bench.matmul_flops`)."""
    T, B, D, H, O, K, bi = shape
    dirs = 2 if bi else 1
    units = sum(6 * T * B * H * ((D if k == 0 else H * dirs) + H) for k in range(K)) * dirs
    return units + 6 * T * B * H * dirs * O


# --- contenders ----------------------------------------------------------------------


def _rnngrad(problem: dict, engine: str, workspace: bool = False) -> Callable[[], dict]:
    model = _model(problem["shape"], problem["x"].dtype)
    model.params = {k: v.copy() for k, v in problem["params"].items()}
    x, y, h0 = problem["x"], problem["y"], problem["h0"]
    ws = Workspace() if workspace else None

    def run():
        res = model.gradients(x, y, h0=h0, workspace=ws, engine=engine)
        return {"loss": res.loss, "grads": {**res.grads, "x": res.dx, "h0": res.dh0}}

    return run


def _torch(problem: dict, threads: int) -> Callable:
    import torch

    torch.set_num_threads(threads)
    T, B, D, H, O, K, bi = problem["shape"]
    dirs = 2 if bi else 1
    tdtype = torch.float64 if problem["x"].dtype == np.float64 else torch.float32
    model = _model(problem["shape"], problem["x"].dtype)
    model.params = {k: v.copy() for k, v in problem["params"].items()}
    rnn_state, lin_state = model.torch_state_dict()
    rnn = torch.nn.RNN(D, H, num_layers=K, nonlinearity="tanh", bidirectional=bool(bi)).to(tdtype)
    lin = torch.nn.Linear(H * dirs, O).to(tdtype)
    rnn.load_state_dict({k: torch.from_numpy(v) for k, v in rnn_state.items()})
    lin.load_state_dict({k: torch.from_numpy(v) for k, v in lin_state.items()})
    x = torch.from_numpy(problem["x"]).clone().requires_grad_(True)
    h0 = torch.from_numpy(problem["h0"]).clone().requires_grad_(True)
    y = torch.from_numpy(problem["y"].reshape(-1)).long()
    named = dict(rnn.named_parameters())
    run = bench.torch_gradients_call(rnn, lin, x, h0, y, problem["shape"])

    def collect(loss):
        grads = {"W_y": lin.weight.grad.numpy(), "b_y": lin.bias.grad.numpy(),
                 "x": x.grad.numpy(), "h0": h0.grad.numpy()}
        for k in range(K):
            for d in range(dirs):  # bias_ih and bias_hh have the same gradient, that of b_h
                for name, key in zip(layer_param_names(k, d), torch_keys(k, d)):
                    grads[name] = named[key].grad.numpy()
        return {"loss": float(loss.detach()), "grads": grads}

    run.collect = collect
    return run


def jax_version() -> str | None:
    try:
        import jax
    except ImportError:
        return None
    return jax.__version__


def _jax_loss_and_grad(num_layers: int, dirs: int):
    """jit(value_and_grad) of L(params, x, h0, y) for the stacked network, over params, x, h0."""
    import jax
    import jax.numpy as jnp

    def unit(inp, h0, W_x, W_h, b_h, reverse):
        T, B, D = inp.shape
        z = (inp.reshape(T * B, D) @ W_x.T + b_h).reshape(T, B, -1)

        def step(h, z_t):
            h = jnp.tanh(z_t + h @ W_h.T)
            return h, h

        return jax.lax.scan(step, h0, z, reverse=reverse)[1]

    def loss(params, x, h0, y):
        inp = x
        for k in range(num_layers):
            outs = [unit(inp, h0[k * dirs + d], *(params[n] for n in layer_param_names(k, d)), reverse=d == 1)
                    for d in range(dirs)]
            inp = outs[0] if dirs == 1 else jnp.concatenate(outs, axis=-1)
        a = inp @ params["W_y"].T + params["b_y"]
        logp = jax.nn.log_softmax(a, axis=-1)
        return -jnp.take_along_axis(logp, y[..., None], axis=-1).sum()

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _jax(problem: dict) -> Callable:
    import jax

    K, bi = problem["shape"][5:]
    fn = _jax_loss_and_grad(K, 2 if bi else 1)
    args = jax.device_put(({k: v for k, v in problem["params"].items()}, problem["x"], problem["h0"],
                           problem["y"].astype(np.int32)))

    def run():
        return jax.block_until_ready(fn(*args))

    def collect(out):
        value, (g_params, g_x, g_h0) = out
        grads = {k: np.asarray(v) for k, v in g_params.items()}
        grads.update(x=np.asarray(g_x), h0=np.asarray(g_h0))
        return {"loss": float(value), "grads": grads}

    run()  # compile now: compile time is never timed
    run.collect = collect
    return run


def _contenders(problem: dict, use_torch: bool, use_jax: bool, threads: int) -> dict:
    kernels = numba_available()
    out = {"rnngrad": _rnngrad(problem, "numba" if kernels else "numpy"),
           bench.WORKSPACE: _rnngrad(problem, "numba" if kernels else "numpy", workspace=True)}
    if kernels:
        out["rnngrad (pure NumPy)"] = _rnngrad(problem, "numpy")
    if use_torch:
        out["PyTorch"] = _torch(problem, threads)
    if use_jax:
        out["JAX"] = _jax(problem)
    return out


def check_deep_agreement(shape: Sequence, use_torch: bool = True, use_jax: bool = True,
                         threads: int | None = None, seed: int = 0) -> dict:
    """Every contender once in float64; its worst relative error against the reference.

    The reference is PyTorch, or without it rnngrad's NumPy engine (then the check proves the
    engines and JAX agree, not that they agree with PyTorch). Compared: the loss, every
    parameter gradient under rnngrad's keys, dL/dx and dL/dh_0. Returns {"reference": name,
    "max_rel_error": {name: float}, "compared": [keys], "passed": bool}.
    """
    problem = make_deep_problem(shape, np.float64, seed)
    if use_jax:
        import jax

        with jax.enable_x64(True):
            runs = _contenders(problem, use_torch, use_jax, threads or bench._cores())
            results = {name: bench._collect(run) for name, run in runs.items()}
    else:
        runs = _contenders(problem, use_torch, use_jax, threads or bench._cores())
        results = {name: bench._collect(run) for name, run in runs.items()}
    reference = "PyTorch" if "PyTorch" in results else ("rnngrad (pure NumPy)" if "rnngrad (pure NumPy)" in results
                                                        else bench.WORKSPACE)
    ref = results.pop(reference)
    keys = [*problem["params"], *STATE_KEYS]
    errors = {}
    for name, res in results.items():
        missing = [k for k in keys if k not in res["grads"] or res["grads"][k] is None]
        if missing:
            raise RuntimeError(f"{name} computed no {missing} on {_describe(shape)}")
        errs = [bench._relative_error(res["grads"][k], ref["grads"][k]) for k in keys]
        errors[name] = max([abs(res["loss"] - ref["loss"]) / abs(ref["loss"]), *errs])
    return {"reference": reference, "max_rel_error": errors, "compared": ["loss", *keys],
            "passed": all(e <= bench.AGREEMENT_RTOL for e in errors.values())}


def run_deep_shape(shape: Sequence, repeats: int | None, budget_s: float, use_torch: bool, use_jax: bool,
                   threads: int, check: bool, seed: int, peak_rate: float, note: Callable[[str], None]) -> dict:
    """Agreement check, timings, rate, memory and targets of one deep shape (a JSON-ready dict);
    :func:`rnngrad.bench.run_benchmark` calls it for every shape of seven values."""
    T, B, D, H, O, K, bi = (int(s) for s in shape)
    shape = (T, B, D, H, O, K, bool(bi))
    entry = {"shape": list(shape)}
    if check:
        note(f"{_describe(shape)}: float64 agreement check")
        entry["agreement"] = agreement = check_deep_agreement(shape, use_torch, use_jax, threads, seed)
        if not agreement["passed"]:
            raise RuntimeError(f"contenders disagree with {agreement['reference']} on {_describe(shape)} "
                               f"in float64: {agreement['max_rel_error']}")
    problem = make_deep_problem(shape, np.float32, seed)
    runs = _contenders(problem, use_torch, use_jax, threads)
    n = repeats or bench._auto_repeats(runs, budget_s)
    note(f"{_describe(shape)}: {n} repeats")
    times = bench._time_calls(runs, n, bench.rounds_for(n))
    flops = deep_flops(shape)
    entry.update(repeats=n, rounds=len(times["rnngrad"]), flops=flops,
                 contenders=bench.summarise_blocks(times, "rnngrad", "ratio_to_rnngrad"))
    for c in entry["contenders"].values():
        c["gflops"] = flops / c["median_s"] / 1e9
    entry["rnngrad_gflops"] = entry["contenders"]["rnngrad"]["gflops"]
    entry["fraction_of_matmul"] = entry["rnngrad_gflops"] / peak_rate
    entry["memory"] = bench.peak_memory(problem)
    entry["targets"] = _judge_deep(entry)
    return entry


def _judge_deep(entry: dict) -> dict:
    mem = entry["memory"]["ratio"]
    out = {"memory_ratio": {"target": bench.MEMORY_TARGET, "measured": mem, "met": mem <= bench.MEMORY_TARGET}}
    c = entry["contenders"]
    if "PyTorch" in c:
        for key, base in (("torch_ratio", "rnngrad"), ("torch_ratio_workspace", bench.WORKSPACE)):
            if base in c:
                ratio = bench._round_ratio(c["PyTorch"]["round_medians_s"], c[base]["round_medians_s"])
                out[key] = {"target": bench.DEEP_TARGET, "measured": ratio, "met": ratio >= bench.DEEP_TARGET}
    if "JAX" in c:  # reported, no target
        out["jax_ratio"] = {"target": None, "measured": c["JAX"]["ratio_to_rnngrad"], "met": None}
    return out


def format_deep_markdown(entries: Sequence[dict]) -> str:
    """The deep shapes as Markdown: one table per shape, then the targets table."""
    lines = []
    for e in entries:
        lines.append(f"### {_describe(e['shape'])}: {e['flops'] / 1e9:.3g} GFLOP per call, "
                     f"{e['repeats']} repeats in {e['rounds']} rounds")
        if "agreement" in e:
            a = e["agreement"]
            errs = ", ".join(f"{k} {v:.1e}" for k, v in a["max_rel_error"].items())
            lines.append(f"float64 agreement with {a['reference']} (loss, every parameter gradient, dL/dx, "
                         f"dL/dh0; max relative error): {errs}")
        lines += ["", "| contender | median ms | min ms | time / rnngrad (median over rounds) | GFLOP/s |",
                  "|---|---:|---:|---:|---:|"]
        for name, c in e["contenders"].items():
            lines.append(f"| {name} | {c['median_s'] * 1e3:.3f} | {c['min_s'] * 1e3:.3f} | "
                         f"{c['ratio_to_rnngrad']:.2f} | {c['gflops']:.1f} |")
        mem = e["memory"]
        lines += ["", f"rnngrad: {e['rnngrad_gflops']:.1f} GFLOP/s = {100 * e['fraction_of_matmul']:.0f}% of the "
                      f"matmul rate; peak memory {mem['peak_bytes'] / 2**20:.2f} MiB = {mem['ratio']:.2f} x inputs "
                      f"+ params + returned ({(mem['inputs_params_bytes'] + mem['returned_bytes']) / 2**20:.2f} MiB)",
                  ""]
    if entries:
        lines += ["### Targets (stacked and bidirectional shapes)", "",
                  "PyTorch / rnngrad as called by default, then with a reused Workspace (after the slash).", "",
                  "| shape | PyTorch / rnngrad | target | met | JAX / rnngrad | memory ratio | target | met |",
                  "|---|---:|---:|:---:|---:|---:|---:|:---:|"]
        for e in entries:
            t = e["targets"]
            tr, trw, jr, mr = (t.get(k) for k in ("torch_ratio", "torch_ratio_workspace", "jax_ratio", "memory_ratio"))
            torch_cell = (f"{tr['measured']:.2f} / {trw['measured']:.2f} | >= {bench.DEEP_TARGET:g} | "
                          f"{'met' if tr['met'] else 'not met'} / {'met' if trw['met'] else 'not met'}"
                          if tr and trw else "- | - | -")
            jax_cell = f"{jr['measured']:.2f}" if jr else "-"
            lines.append(f"| {_describe(e['shape'])} | {torch_cell} | {jax_cell} | "
                         f"{mr['measured']:.2f} | <= {mr['target']:g} | {'met' if mr['met'] else 'not met'} |")
    return "\n".join(lines) + "\n"
