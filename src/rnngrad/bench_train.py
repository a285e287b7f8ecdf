"""``rnngrad bench-train``: training throughput of the main job's model, rnngrad against PyTorch.

Both contenders train the model of ``rnngrad train`` (the defaults of :class:`rnngrad.train.TrainConfig`:
a tanh RNN with H = 256 hidden units, softmax output and cross-entropy over the default corpus's
100 characters, float32) on the same batches of the same text, B = 32 streams read in chunks of
k = 64 characters, one update per chunk:

* **rnngrad** -- :meth:`rnngrad.train.Trainer.step`, the very step ``rnngrad train`` runs:
  ``RNN.gradients`` with a reused Workspace (token inputs, reduction "mean"), ``clip_grad_norm``,
  the finiteness checks, ``Adam.step``; the final state carried to the next chunk (truncated BPTT),
  reset at each epoch. Inside :func:`rnngrad.threads.blas_threads` with ``--threads``, or else the
  automatic choice of :func:`rnngrad.threads.choose_threads` made once before timing (from the
  model's size and the machine's load then) and held; and again at the BLAS library's default
  thread count;
* **PyTorch** -- the same step written the usual way: ``F.one_hot`` inputs (T, B, V), ``nn.RNN(tanh)``
  + ``nn.Linear`` + ``nn.CrossEntropyLoss()`` (mean), ``backward()``, ``clip_grad_norm_``,
  ``torch.optim.Adam``, ``h.detach()`` carried; ``bias_hh`` held at zero (``requires_grad`` off),
  so that its one bias is rnngrad's b_h (two trained biases would take two Adam steps where rnngrad
  takes one); ``loss.item()`` each step, as the Trainer returns the loss. With
  ``torch.set_num_threads`` equal to rnngrad's thread count, and at torch's own default.

Before timing, both loops run the first :data:`CHECK_STEPS` updates in float64 from the same
weights (rnngrad's, copied with ``RNN.torch_state_dict()``) and their losses must agree to a
relative :data:`AGREEMENT_RTOL` (RuntimeError otherwise): the loops compute the same training.
Timing rotates blocks of consecutive updates through the contenders (one untimed update after each
switch of thread count); a contender's time per update is the median over the rounds of its block
means, a ratio the median over the rounds of the ratio of two contenders' blocks in that round
(:func:`rnngrad.bench.summarise_blocks`), so that the shared machine's changes of speed cancel.
Timing single updates would not do: the BLAS and OpenMP pools keep spinning after a call and slow
whichever contender runs next.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from typing import Callable

import numpy as np

from . import bench
from .engines import get_engine
from .threads import CpuMeter, available_cores, blas_threads, check_threads, threadpoolctl_available
from .train import TextData, TrainConfig, Trainer

__all__ = ["CHECK_STEPS", "AGREEMENT_RTOL", "TARGET", "SWEEP_SIZES", "SWEEP_THREADS", "bench_config", "torch_step",
           "loss_trajectories", "run_benchmark", "format_markdown", "thread_sweep", "format_sweep", "register", "main"]

#: Updates compared in float64 before timing.
CHECK_STEPS = 3
#: Largest relative difference of the float64 losses of the two loops.
AGREEMENT_RTOL = 1e-10
#: Wanted: PyTorch's time per update / rnngrad's, at equal thread counts.
TARGET = 2.0

RNNGRAD, RNNGRAD_DEFAULT = "rnngrad", "rnngrad (BLAS default threads)"


def bench_config(hidden_size: int | None = None, batch_size: int | None = None, chunk_len: int | None = None,
                 dtype: str = "float32", max_chars: int | None = None, seed: int = 0) -> TrainConfig:
    """The main job's :class:`TrainConfig` (its defaults), with any size given here instead."""
    sizes = {k: v for k, v in (("hidden_size", hidden_size), ("batch_size", batch_size),
                               ("chunk_len", chunk_len)) if v is not None}
    return TrainConfig(dtype=dtype, max_chars=max_chars, seed=seed, **sizes).validate()


def _trainer(config: TrainConfig, data: TextData, folder: str) -> Trainer:
    # The folder is never written: only run() and save() write, and neither is called.
    return Trainer(config, folder, data=data)


def torch_step(trainer: Trainer) -> Callable[[], float]:
    """A PyTorch training step equivalent to ``trainer.step`` (see the module docstring), from the
    trainer's model's current weights, reading the same batches; returns the batch loss before the update."""
    import torch
    import torch.nn.functional as F

    cfg, data, model = trainer.config, trainer.data, trainer.model
    if cfg.hidden_activation not in ("tanh", "relu") or cfg.num_layers != 1 or cfg.optimizer != "adam" \
            or cfg.clip_value is not None or getattr(cfg, "lr_schedule", "constant") != "constant" \
            or getattr(cfg, "weight_decay", None):
        raise ValueError("the PyTorch loop is written for one tanh or relu layer trained by Adam at a constant "
                         "lr without weight decay, clipped by norm only; use the main job's settings")
    tdtype = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]
    V, H = model.input_size, model.hidden_size
    rnn = torch.nn.RNN(V, H, nonlinearity=cfg.hidden_activation).to(tdtype)
    lin = torch.nn.Linear(H, model.output_size).to(tdtype)
    rnn_state, lin_state = model.torch_state_dict()
    rnn.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in rnn_state.items()})
    lin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in lin_state.items()})
    rnn.bias_hh_l0.requires_grad_(False)  # zero and untrained: b_h is bias_ih alone, as in rnngrad
    params = [p for p in (*rnn.parameters(), *lin.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    criterion = torch.nn.CrossEntropyLoss()
    state = {"step": 0, "h": None}

    def step() -> float:
        b = data.batch(state["step"], cfg)
        x = F.one_hot(torch.from_numpy(b.x), V).to(tdtype)  # (T, B, V)
        y = torch.from_numpy(b.y).reshape(-1)  # (T·B,)
        h0 = state["h"] if b.carry and state["h"] is not None else None
        opt.zero_grad(set_to_none=True)
        out, h_last = rnn(x, h0)
        loss = criterion(lin(out).reshape(y.shape[0], -1), y)
        loss.backward()
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()
        state["h"] = h_last.detach()  # the state crosses the cut, the gradient does not
        state["step"] += 1
        return loss.item()

    return step


def loss_trajectories(config: TrainConfig, steps: int = CHECK_STEPS, data: TextData | None = None) -> tuple:
    """(rnngrad losses, PyTorch losses): the first ``steps`` batch losses of the two loops from the
    same initial weights."""
    data = data if data is not None else TextData(config)
    with tempfile.TemporaryDirectory() as folder:
        trainer = _trainer(config, data, folder)
        torch_run = torch_step(trainer)  # copies the weights before rnngrad's first update
        ours = [trainer.step() for _ in range(steps)]
        theirs = [torch_run() for _ in range(steps)]
    return ours, theirs


def _relative_difference(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _check(config: TrainConfig, data: TextData) -> dict:
    ours, theirs = loss_trajectories(replace(config, dtype="float64"), CHECK_STEPS, data)
    err = _relative_difference(ours, theirs)
    if not err <= AGREEMENT_RTOL:
        raise RuntimeError(f"the rnngrad and PyTorch training loops disagree in float64: losses {ours} "
                           f"against {theirs} (relative difference {err:.2e})")
    return {"steps": CHECK_STEPS, "rnngrad_losses": ours, "torch_losses": theirs, "max_rel_difference": err}


def _torch_threads(n: int):
    """A context manager running its block with ``torch.set_num_threads(n)``."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def setting():
        torch.set_num_threads(n)
        yield

    return setting


def _contenders(config: TrainConfig, data: TextData, folder: str, threads: int, torch_default: int | None) -> dict:
    """name -> (thread setting: a context manager factory, step: one update)."""
    import contextlib

    out = {RNNGRAD: (lambda: blas_threads(threads), _trainer(config, data, folder).step),
           RNNGRAD_DEFAULT: (contextlib.nullcontext, _trainer(config, data, folder).step)}
    if torch_default is not None:
        out[f"PyTorch ({threads} thread{'s' if threads > 1 else ''})"] = (
            _torch_threads(threads), torch_step(_trainer(config, data, folder)))
        if torch_default != threads:
            out[f"PyTorch (default, {torch_default} threads)"] = (
                _torch_threads(torch_default), torch_step(_trainer(config, data, folder)))
    return out


def _time_blocks(contenders: dict, steps: int, rounds: int) -> dict:
    """name -> [[mean seconds per update of its block] for each round] (the layout of
    :func:`rnngrad.bench.summarise_blocks`)."""
    per_round = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]
    times = {name: [] for name in contenders}
    for n in per_round:
        for name, (setting, step) in contenders.items():
            with setting():
                step()  # untimed: the pools settle to the new thread count
                start = time.perf_counter()
                for _ in range(n):
                    step()
                times[name].append([(time.perf_counter() - start) / n])
    return times


def _torch_default_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def run_benchmark(steps: int = 140, rounds: int = 7, threads: int | None = None, *, hidden_size: int | None = None,
                  batch_size: int | None = None, chunk_len: int | None = None, max_chars: int | None = None,
                  use_torch: bool = True, check: bool = True, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Updates per second and tokens per second of each contender, in one run; returns a dict
    (see :func:`format_markdown`). ``steps`` timed updates per contender, in ``rounds`` blocks;
    ``threads`` None: :func:`rnngrad.threads.choose_threads` for the model."""
    from .validation import check_positive_int

    steps, rounds = check_positive_int("steps", steps), check_positive_int("rounds", rounds)
    rounds = min(rounds, steps)
    note = progress or (lambda message: None)
    config = bench_config(hidden_size, batch_size, chunk_len, "float32", max_chars, seed)
    threads = check_threads(threads)
    # The automatic choice, with the machine's load sampled now; then held for the whole timing
    # (the same count for every block, and for PyTorch).
    choice = blas_threads(None, hidden_size=config.hidden_size, batch_size=config.batch_size,
                          chunk_len=config.chunk_len)
    n = choice.threads if threads is None else threads
    torch_default = _torch_default_threads() if use_torch else None
    data = TextData(config)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"processor": bench._cpu_name(), "cores": available_cores(), "python": platform.python_version(),
                          "numpy": np.__version__, "torch": bench._torch_version(), "engine": get_engine().name,
                          "threadpoolctl": threadpoolctl_available(), "torch_default_threads": torch_default},
              "model": {"hidden_size": config.hidden_size, "batch_size": config.batch_size,
                        "chunk_len": config.chunk_len, "vocabulary": data.input_size, "dtype": config.dtype,
                        "optimizer": config.optimizer, "lr": config.lr, "clip_norm": config.clip_norm},
              "threads": {"used": n, "automatic": choice.threads, "given": threads,
                          "others_busy_cores_at_choice": choice.others},
              "steps": steps, "rounds": rounds, "tokens_per_update": data.tokens_per_batch,
              "load_average_before": list(os.getloadavg())}
    if check and torch_default is not None:
        note(f"float64 check: the first {CHECK_STEPS} losses of both loops")
        result["agreement"] = _check(config, data)
        torch_default = _torch_default_threads()  # unchanged by the check, read again for the record
    with tempfile.TemporaryDirectory() as folder:
        contenders = _contenders(config, data, folder, n, torch_default)
        note(f"timing {', '.join(contenders)}: {steps} updates each in {rounds} rounds")
        meter = CpuMeter()
        times = _time_blocks(contenders, steps, rounds)
        result["others_busy_cores"] = meter.others()
    if torch_default is not None:
        import torch
        torch.set_num_threads(torch_default)  # the process's setting as it was
    result["load_average_after"] = list(os.getloadavg())
    summary = bench.summarise_blocks(times, RNNGRAD, "ratio_to_rnngrad")
    for c in summary.values():
        c["updates_per_s"] = 1.0 / c["median_s"]
        c["tokens_per_s"] = data.tokens_per_batch / c["median_s"]
        del c["min_s"]  # a block mean's minimum says nothing more than the round medians
    result["contenders"] = summary
    equal = next((k for k in summary if k.startswith("PyTorch (") and "default" not in k), None)
    if equal is not None:
        ratio = summary[equal]["ratio_to_rnngrad"]
        result["target"] = {"target": TARGET, "measured": ratio, "met": ratio >= TARGET,
                            "compared": f"{equal} / {RNNGRAD}"}
    return result


def format_markdown(result: dict) -> str:
    """The result as a Markdown table with the machine, the model and the threads."""
    m, mod, th = result["machine"], result["model"], result["threads"]
    lines = [f"rnngrad bench-train, {result['date']}: {m['processor']}, {m['cores']} cores; Python {m['python']}, "
             f"NumPy {m['numpy']}, PyTorch {m['torch'] or 'absent'}, engine {m['engine']}; load average "
             f"{result['load_average_before'][0]:.2f} before, {result['load_average_after'][0]:.2f} after"
             + ("" if result.get("others_busy_cores") is None else
                f"; other processes kept {result['others_busy_cores']:.2f} cores busy while timing") + ".",
             f"Model: H = {mod['hidden_size']}, B = {mod['batch_size']}, chunk {mod['chunk_len']}, "
             f"V = {mod['vocabulary']}, {mod['dtype']}, {mod['optimizer']} lr {mod['lr']:g}, clip-norm "
             f"{mod['clip_norm']}; BLAS threads {th['used']} ({'given' if th['given'] else 'automatic'}"
             f"{'' if th.get('others_busy_cores_at_choice') is None else ', other processes busy on %.2f cores' % th['others_busy_cores_at_choice']}"
             f"{'' if m['threadpoolctl'] else '; threadpoolctl missing, not applied'}); {result['steps']} "
             f"updates per contender in {result['rounds']} rounds.", ""]
    if "agreement" in result:
        a = result["agreement"]
        lines += [f"float64 check: the first {a['steps']} losses agree to {a['max_rel_difference']:.1e} (relative).", ""]
    lines += ["| contender | ms per update | updates/s | tokens/s | time / rnngrad |", "|---|---:|---:|---:|---:|"]
    for name, c in result["contenders"].items():
        lines.append(f"| {name} | {1e3 * c['median_s']:.2f} | {c['updates_per_s']:.1f} | {c['tokens_per_s']:,.0f} | "
                     f"{c['ratio_to_rnngrad']:.2f} |")
    if "target" in result:
        t = result["target"]
        lines += ["", f"{t['compared']}: {t['measured']:.2f} (target >= {t['target']:g}: "
                      f"{'met' if t['met'] else 'NOT met'})"]
    return "\n".join(lines) + "\n"


# --- the thread sweep -----------------------------------------------------------------

#: (H, B) of ``--sweep``: a small model, the main job's, a large one.
SWEEP_SIZES = ((100, 16), (256, 32), (1024, 64))
#: BLAS thread counts of ``--sweep``; None: the library's default (no limit set).
SWEEP_THREADS = (1, 2, None)


def thread_sweep(sizes=SWEEP_SIZES, settings=SWEEP_THREADS, rounds: int = 7, block_s: float = 0.4,
                 max_chars: int | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """rnngrad's time per update (``Trainer.step``, the main job's settings but H and B) at each BLAS
    thread count of ``settings``, for each (H, B) of ``sizes``: blocks of about ``block_s`` seconds
    rotating through the settings for ``rounds`` rounds, and the other processes' busy cores
    during each size's rounds (:class:`rnngrad.threads.CpuMeter`). The figures behind
    :func:`rnngrad.threads.choose_threads`."""
    import contextlib

    note = progress or (lambda message: None)
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": available_cores(),
           "load_average_before": list(os.getloadavg()), "sizes": []}
    names = {s: "default" if s is None else str(s) for s in settings}
    for H, B in sizes:
        config = bench_config(H, B, max_chars=max_chars)
        with tempfile.TemporaryDirectory() as folder:
            step = _trainer(config, TextData(config), folder).step
            step()
            start = time.perf_counter()
            step()
            n = max(2, int(block_s / (time.perf_counter() - start)))
            note(f"(H, B) = ({H}, {B}): {rounds} rounds of {n} updates per setting")
            contenders = {names[s]: ((lambda s=s: contextlib.nullcontext() if s is None else blas_threads(s)), step)
                          for s in settings}
            meter = CpuMeter()
            times = _time_blocks(contenders, n * rounds, rounds)
            others = meter.others()
        summary = bench.summarise_blocks(times, names[settings[0]], f"ratio_to_{names[settings[0]]}")
        out["sizes"].append({"hidden_size": H, "batch_size": B, "updates_per_block": n, "others_busy_cores": others,
                             "settings": {k: {"median_ms": 1e3 * v["median_s"],
                                              "round_ms": [1e3 * r for r in v["round_medians_s"]],
                                              "ratio": v[f"ratio_to_{names[settings[0]]}"]}
                                          for k, v in summary.items()}})
    out["load_average_after"] = list(os.getloadavg())
    return out


def format_sweep(result: dict) -> str:
    """The sweep as a Markdown table: ms per update at each thread count, and each as a ratio to the first."""
    names = list(result["sizes"][0]["settings"]) if result["sizes"] else []
    lines = [f"rnngrad bench-train --sweep, {result['date']}, {result['cores']} cores; load average "
             f"{result['load_average_before'][0]:.2f} before, {result['load_average_after'][0]:.2f} after.", "",
             "| (H, B) | " + " | ".join(f"{k} thread(s) ms" for k in names) + " | "
             + " | ".join(f"time {k} / time {names[0]}" for k in names[1:]) + " | others (cores) |",
             "|---|" + "---:|" * (2 * len(names))]
    for e in result["sizes"]:
        st = e["settings"]
        others = "-" if e["others_busy_cores"] is None else f"{e['others_busy_cores']:.2f}"
        lines.append(f"| ({e['hidden_size']}, {e['batch_size']}) | " + " | ".join(f"{st[k]['median_ms']:.2f}" for k in names)
                     + " | " + " | ".join(f"{st[k]['ratio']:.2f}" for k in names[1:]) + f" | {others} |")
    return "\n".join(lines) + "\n"


# --- command line ----------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_positive_int, default=140, help="timed updates per contender (default 140)")
    p.add_argument("--rounds", type=_positive_int, default=7, help="blocks per contender, rotated (default 7)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="BLAS threads of rnngrad and torch.set_num_threads of PyTorch (default: the automatic "
                        "choice of rnngrad.threads.choose_threads)")
    p.add_argument("--hidden-size", "-H", type=_positive_int, default=None, help="default: the main job's, 256")
    p.add_argument("--batch-size", "-B", type=_positive_int, default=None, help="default: the main job's, 32")
    p.add_argument("--chunk-len", "-k", type=_positive_int, default=None, help="default: the main job's, 64")
    p.add_argument("--no-torch", action="store_true", help="rnngrad only")
    p.add_argument("--no-check", action="store_true", help="skip the float64 check of the two loops")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON to PATH")
    p.add_argument("--sweep", action="store_true",
                   help="instead: rnngrad's time per update with 1, 2 and the default BLAS threads, for (H, B) = "
                        f"{', '.join(map(str, SWEEP_SIZES))} or each --size")
    p.add_argument("--size", dest="sizes", action="append", type=_size, metavar="H,B",
                   help="a model size for --sweep (repeatable)")


def _size(text: str) -> tuple:
    try:
        H, B = (int(v) for v in text.split(","))
    except ValueError:
        H = B = 0
    if H < 1 or B < 1:
        raise argparse.ArgumentTypeError(f"expected H,B (two positive integers), got {text!r}")
    return H, B


def _run(args) -> int:
    from .cli_args import write_json

    note = lambda msg: print(f"[bench-train] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.sizes and not args.sweep:
        raise ValueError("--size is for --sweep; give the size of the comparison with -H and -B")
    if args.sweep:
        result = thread_sweep(tuple(args.sizes or SWEEP_SIZES), rounds=args.rounds, progress=note)
        print(format_sweep(result))
    else:
        result = run_benchmark(args.steps, args.rounds, args.threads, hidden_size=args.hidden_size,
                               batch_size=args.batch_size, chunk_len=args.chunk_len, use_torch=not args.no_torch,
                               check=not args.no_check, progress=note)
        print(format_markdown(result))
    if args.json:
        write_json(args.json, result)
    return 0


def register(subparsers) -> None:
    """Add the ``bench-train`` command to the ``rnngrad`` parser's subcommands."""
    p = subparsers.add_parser("bench-train", help="training throughput of the main job's model against PyTorch",
                              description=__doc__.split("\n\n")[0].replace("``", ""))
    _add_arguments(p)
    p.set_defaults(run=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m rnngrad.bench_train``: the same as ``rnngrad bench-train``."""
    p = argparse.ArgumentParser(prog="python -m rnngrad.bench_train", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    return _run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
