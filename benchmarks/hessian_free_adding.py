"""Hessian-free optimisation (Martens & Sutskever 2011) against Adam on the adding problem, at a
length where Adam with the default initialisation stays at the trivial solution; the same
network, data and compute for both.

    python benchmarks/hessian_free_adding.py                      # the table in docs/experiments.md
    python benchmarks/hessian_free_adding.py --quick              # a smoke run, about 15 s
    python benchmarks/hessian_free_adding.py --budget 120 --seeds 0 --json out.json --plot out.png

Model: RNN(2, H, 1), tanh, identity output, MSE, PyTorch's default uniform initialisation,
float64. Each optimiser gets the same budget of CPU seconds of this process (``time.process_time``,
one BLAS thread, the test evaluations not counted): on a machine shared with other jobs that is
the wall-clock time the run would take on an idle core.

- Adam: mini-batches drawn from the fixed training set (reshuffled every epoch), gradient
  clipping at a global norm, one or more learning rates.
- HF (:class:`rnngrad.HessianFree`): each step draws a gradient mini-batch from the training set
  and takes the Gauss-Newton products on a subset of it (the curvature mini-batch, as Martens &
  Sutskever); CG truncated at ``--cg-iters`` products; Levenberg-Marquardt damping. No
  structural damping (rnngrad does not implement it).

The test MSE on held-out sequences is logged over the budget; predicting the constant 1 scores
1/6 ≈ 0.167. Not part of CI: the default run is 3 seeds x 3 optimisers x 75 CPU seconds, about
12 minutes on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass

import numpy as np

import rnngrad
from rnngrad._io import atomic_write
from rnngrad.clipping import clip_grad_norm
from rnngrad.curvature import curvature_at
from rnngrad.data import ADDING_BASELINE_MSE, adding_problem
from rnngrad.hessian_free import HessianFree
from rnngrad.optim import Adam

QUICK = dict(T=30, hidden_size=16, budget=6.0, seeds=[0], train_size=1000, test_size=500,
             adam_lr=[1e-3], grad_batch=500, curv_batch=100, cg_iters=30)


# --- the clock and the log -------------------------------------------------------------------

class Clock:
    """CPU and wall seconds spent inside ``with clock:`` blocks (the training, not the tests)."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    def __enter__(self):
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu += time.process_time() - self._cpu
        self.wall += time.perf_counter() - self._wall


@dataclass
class Data:
    """Adding-problem sequences, time-major: x (T, n, 2), y (T, n, 1), mask (T, n)."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray

    def batch(self, idx) -> tuple:
        return self.x[:, idx], self.y[:, idx], self.mask[:, idx]

    def __len__(self) -> int:
        return self.x.shape[1]


def held_out_mse(model, test: Data) -> float:
    """Mean squared error at the last step (the mask selects it) on the held-out sequences."""
    return model.loss(test.x, test.y, mask=test.mask, reduction="mean")


class Log:
    """Test MSE and the work counters every ``every`` CPU seconds of training."""

    def __init__(self, model, test: Data, every: float):
        self.model, self.test, self.every = model, test, every
        self.counts = dict(updates=0, gradient_sequences=0, gn_products=0, gn_sequences=0, loss_sequences=0)
        self.rows, self.next = [], 0.0

    def add(self, clock: Clock, force: bool = False) -> None:
        if force or clock.cpu >= self.next:
            self.rows.append(dict(cpu_s=clock.cpu, wall_s=clock.wall, test_mse=held_out_mse(self.model, self.test),
                                  **self.counts))
            self.next = (int(clock.cpu / self.every) + 1) * self.every


# --- the two optimisers, run for a budget of CPU seconds --------------------------------------

def train_adam(model, train: Data, log: Log, budget: float, lr: float, batch_size: int, clip_norm: float,
               rng: np.random.Generator) -> dict:
    """Adam on shuffled mini-batches of ``train`` until ``budget`` CPU seconds are spent."""
    opt, clock, order = Adam(model.params, lr), Clock(), np.empty(0, dtype=int)
    log.add(clock, force=True)
    while clock.cpu < budget:
        with clock:
            for _ in range(20):  # a few updates between looks at the clock and the log
                if len(order) < batch_size:
                    order = rng.permutation(len(train))
                idx, order = order[:batch_size], order[batch_size:]
                x, y, mask = train.batch(idx)
                res = model.gradients(x, y, mask=mask, reduction="mean", need=())
                clip_grad_norm(res.grads, clip_norm)
                opt.step(res.grads)
        log.counts["updates"] += 20
        log.counts["gradient_sequences"] += 20 * batch_size
        log.add(clock)
    log.add(clock, force=True)
    return {}


@dataclass
class _SubsampledCurvature:
    """Loss and gradient of the gradient mini-batch, Gauss-Newton products of the curvature one."""

    loss: float
    grads: dict
    curv: object
    counts: dict

    def gnvp(self, v: dict) -> dict:
        self.counts["gn_products"] += 1
        self.counts["gn_sequences"] += self.curv.call.cache.h.shape[1]
        return self.curv.gnvp(v)


@dataclass
class MiniBatchObjective:
    """The mean loss on the sequences ``grad_idx`` of ``train``, for :meth:`HessianFree.step`;
    its curvature on the subset ``curv_idx`` (Martens & Sutskever 2011: the Gauss-Newton matrix
    of a smaller mini-batch is a good enough estimate, and each product costs less)."""

    model: object
    train: Data
    grad_idx: np.ndarray
    curv_idx: np.ndarray
    counts: dict

    def curvature(self) -> _SubsampledCurvature:
        x, y, mask = self.train.batch(self.grad_idx)
        res = self.model.gradients(x, y, mask=mask, reduction="mean", need=())
        xc, yc, mc = self.train.batch(self.curv_idx)
        curv = curvature_at(self.model, xc, yc, mask=mc, reduction="mean")
        self.counts["gradient_sequences"] += len(self.grad_idx) + len(self.curv_idx)
        return _SubsampledCurvature(res.loss, res.grads, curv, self.counts)

    def loss(self) -> float:
        self.counts["loss_sequences"] += len(self.grad_idx)
        x, y, mask = self.train.batch(self.grad_idx)
        return self.model.loss(x, y, mask=mask, reduction="mean")


def train_hf(model, train: Data, log: Log, budget: float, grad_batch: int, curv_batch: int, cg_iters: int,
             damping: float, rng: np.random.Generator) -> dict:
    """HF steps on fresh mini-batches until ``budget`` CPU seconds are spent; returns the steps'
    damping, reduction ratio, CG products and stopping reason, and whether each was kept."""
    opt, clock = HessianFree(model.params, damping=damping, max_cg_iters=cg_iters), Clock()
    steps = []
    log.add(clock, force=True)
    while clock.cpu < budget:
        with clock:
            grad_idx = rng.choice(len(train), size=grad_batch, replace=False)
            s = opt.step(MiniBatchObjective(model, train, grad_idx, grad_idx[:curv_batch], log.counts))
        log.counts["updates"] += 1
        steps.append(dict(loss=s.loss, new_loss=s.new_loss, rho=s.rho, damping=s.damping,
                          cg_iterations=s.cg.iterations, cg_reason=s.cg.reason, accepted=s.accepted))
        log.add(clock)
    log.add(clock, force=True)
    return {"steps": steps}


# --- the experiment --------------------------------------------------------------------------

def run_one(name: str, args, seed: int, train: Data, test: Data) -> dict:
    model = rnngrad.RNN(2, args.hidden_size, 1, "tanh", "identity", "mse", seed=seed)  # the same start for all
    log = Log(model, test, args.budget / args.points)
    rng = np.random.default_rng([seed, 1])  # the same mini-batch stream for every optimiser of a seed
    if name == "hf":
        extra = train_hf(model, train, log, args.budget, args.grad_batch, args.curv_batch, args.cg_iters,
                         args.damping, rng)
    else:
        extra = train_adam(model, train, log, args.budget, float(name.split("=")[1]), args.batch_size,
                           args.clip_norm, rng)
    return dict(optimizer=name, seed=seed, curve=log.rows, **extra)


def at(curve: list, cpu: float) -> float:
    """The test MSE of the last log row at or before ``cpu`` seconds."""
    return [r["test_mse"] for r in curve if r["cpu_s"] <= cpu + 1e-9][-1]


def first_below(curve: list, level: float) -> str:
    """The CPU seconds of the first log row with test MSE below ``level``, or "-"."""
    return next((f"{r['cpu_s']:.0f}" for r in curve if r["test_mse"] < level), "-")


def table(results: list, budget: float) -> str:
    marks = [0, budget / 4, budget / 2, 3 * budget / 4]
    head = " / ".join(f"{m:g}" for m in marks) + f" / {budget:g} s (final)"
    lines = [f"| seed | optimiser | test MSE at {head} | best | CPU s to MSE < 0.1 / 0.01 | updates "
             f"| sequences through BPTT | GN products (sequences) | wall s |",
             "|---:|---|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        c, last = r["curve"], r["curve"][-1]
        mses = " / ".join(f"{at(c, m):.4g}" for m in marks) + f" / **{last['test_mse']:.4g}**"
        gn = f"{last['gn_products']} ({last['gn_sequences']:.3g})" if last["gn_products"] else "-"
        reach = f"{first_below(c, 0.1)} / {first_below(c, 0.01)}"
        lines.append(f"| {r['seed']} | {r['optimizer']} | {mses} | {min(x['test_mse'] for x in c):.4g} | {reach} | "
                     f"{last['updates']} | {last['gradient_sequences']:.3g} | {gn} | {last['wall_s']:.0f} |")
    return "\n".join(lines)


def hf_table(results: list) -> str:
    """What HF's steps did: how many were kept, CG's products and why it stopped, the damping."""
    lines = ["| seed | HF steps | kept | GN products per step (mean / max) | CG stopped by progress / residual "
             "/ max_iters | lambda min / final |", "|---:|---:|---:|---|---|---|"]
    for r in results:
        if "steps" not in r:
            continue
        s = r["steps"]
        cg = [x["cg_iterations"] for x in s]
        why = " / ".join(str(sum(x["cg_reason"] == k for x in s)) for k in ("progress", "residual", "max_iters"))
        lam = [x["damping"] for x in s]
        lines.append(f"| {r['seed']} | {len(s)} | {sum(x['accepted'] for x in s)} | {np.mean(cg):.1f} / {max(cg)} "
                     f"| {why} | {min(lam):.2g} / {lam[-1]:.2g} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(results: list, path: str, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {}
    for r in results:
        colour = colours.setdefault(r["optimizer"], f"C{len(colours)}")
        c = r["curve"]
        ax.plot([x["cpu_s"] for x in c], [x["test_mse"] for x in c], color=colour, alpha=0.8,
                ls="-" if r["optimizer"] == "hf" else ("--", ":", "-.")[list(colours).index(r["optimizer"]) % 3],
                label=r["optimizer"] if r["seed"] == args.seeds[0] else None)
    ax.axhline(ADDING_BASELINE_MSE, color="k", ls="--", lw=1, label="predict 1 (1/6)")
    ax.set(yscale="log", xlabel="training CPU seconds (one thread)", ylabel="test MSE",
           title=f"adding problem, T = {args.T}, tanh H = {args.hidden_size}, seeds {args.seeds}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=150, help="sequence length")
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--budget", type=float, default=75.0, help="CPU seconds of training per optimiser and seed")
    p.add_argument("--points", type=int, default=15, help="test evaluations over the budget")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--adam-lr", type=float, nargs="*", default=[1e-3, 3e-4], help="one Adam run per rate")
    p.add_argument("--batch-size", type=int, default=32, help="Adam's mini-batch")
    p.add_argument("--clip-norm", type=float, default=1.0, help="Adam's gradient clipping")
    p.add_argument("--grad-batch", type=int, default=1000, help="HF's gradient mini-batch")
    p.add_argument("--curv-batch", type=int, default=200, help="HF's curvature mini-batch (a subset)")
    p.add_argument("--cg-iters", type=int, default=60, help="HF's Gauss-Newton products per step at most")
    p.add_argument("--damping", type=float, default=1.0, help="HF's initial lambda")
    p.add_argument("--no-hf", action="store_true", help="Adam only (to find a length where it fails)")
    p.add_argument("--quick", action="store_true", help=f"a smoke run of about 15 s; overrides these settings: {QUICK}")
    p.add_argument("--json", help="write the curves (and HF's steps) here")
    p.add_argument("--plot", help="save a figure of test MSE over CPU time here")
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if args.curv_batch > args.grad_batch:
        p.error(f"--curv-batch ({args.curv_batch}) must not exceed --grad-batch ({args.grad_batch}): it is a subset")
    return args


def blas_one_thread():
    """One BLAS thread: the products here are small (B x H by H x H), so a second thread does not
    help, and with one the process's CPU time is the wall time it would take on an idle core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then the CPU clock may count a second BLAS thread's time too
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def main(argv=None) -> None:
    args = parse(argv)
    names = [f"adam lr={lr:g}" for lr in args.adam_lr] + ([] if args.no_hf else ["hf"])
    print(f"adding problem T={args.T}: tanh RNN H={args.hidden_size}, default init, float64; "
          f"{args.train_size} training / {args.test_size} test sequences; {args.budget:g} CPU s per run; "
          f"Adam batch {args.batch_size}, clip {args.clip_norm:g}; HF gradient batch {args.grad_batch}, "
          f"curvature batch {args.curv_batch}, <= {args.cg_iters} CG products, lambda0 {args.damping:g}; "
          f"baseline MSE {ADDING_BASELINE_MSE:.3f}\n", flush=True)
    results, t0 = [], time.perf_counter()
    with blas_one_thread():
        for seed in args.seeds:
            data = np.random.default_rng([seed, 0])
            train, test = Data(*adding_problem(args.train_size, args.T, data)), Data(*adding_problem(
                args.test_size, args.T, data))
            for name in names:
                results.append(run_one(name, args, seed, train, test))
                r = results[-1]["curve"][-1]
                print(f"  seed {seed} {name}: test MSE {r['test_mse']:.4g} after {r['updates']} updates, "
                      f"{r['cpu_s']:.0f} CPU s ({r['wall_s']:.0f} wall s)", flush=True)
    tables = [t for t in (table(results, args.budget), hf_table(results)) if t]
    print("\n" + "\n\n".join(tables) + f"\n\ntotal wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        text = json.dumps(dict(settings=vars(args), results=results), separators=(",", ":"))  # ~100 kB: compact
        atomic_write(args.json, lambda fh: fh.write(text), mode="w")
    if args.plot:
        plot(results, args.plot, args)


if __name__ == "__main__":
    main()
