"""The analysis commands: ``rnngrad flow`` (gradient flow, and with --lyapunov the Lyapunov
spectrum that explains it) and ``rnngrad contributions`` (each step's share of every weight
gradient, and the influence map ‖dL_s/dh_t‖).

Both run on fresh models (the flow sweep's activations × W_h scales) or, with --checkpoint,
on a trained model and its own validation data. The tables need only NumPy; the figures need
matplotlib, and without it the tables are still printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .activations import HIDDEN_ACTIVATIONS
from .cli_args import FIGURE_FORMATS, Formatter, output_file, positive_float, positive_int

__all__ = ["register"]

# Options of the fresh models, which --checkpoint replaces by the trained model and its data.
FRESH = {"activations": ["tanh", "relu", "sigmoid"], "scales": [0.5, 1.0, 1.5], "hidden_size": 32, "seed": 0}


def _trained_problem(args):
    """(model, x, y, mask) of a checkpoint: the trained model on the first T steps and B sequences of
    its own validation data (a task's sequences are made T long)."""
    from .checkpoint import model_from_checkpoint
    from .data import Vocabulary
    from .train import TaskData, TextData, TrainConfig, load_training_checkpoint

    ignored = [name for name, default in FRESH.items() if getattr(args, name, default) != default]
    if ignored:
        raise ValueError("--checkpoint takes the model, its seed and its data from the checkpoint; "
                         "--activations, --scales, --hidden-size and --seed are for fresh models only "
                         f"(got {', '.join('--' + n.replace('_', '-') for n in ignored)})")
    path, meta, arrays = load_training_checkpoint(Path(args.checkpoint))
    model = model_from_checkpoint(meta, arrays)
    config = TrainConfig.from_dict(meta["config"])
    if config.task is not None:
        config.chunk_len = args.T  # a task makes sequences of any length
        data = TaskData(config)
    else:
        # The held-out text as the run read it; its streams are long enough for some T, not any.
        data = TextData(config, vocab=Vocabulary.from_json(meta["vocab"]), fingerprint=meta["data"]["fingerprint"])
        if data.val_x.shape[0] < args.T:
            raise ValueError(f"-T {args.T} is longer than the held-out text of this run allows "
                             f"({data.val_x.shape[0]} steps); use a smaller -T")
    mask = getattr(data, "val_mask", None)
    x, y = data.val_x[:args.T, :args.batch_size], data.val_y[:args.T, :args.batch_size]
    return model, x, y, None if mask is None else mask[:args.T, :args.batch_size]


def _figure_or_note(draw, path: Path) -> str:
    """Draw a figure (best effort: without matplotlib the command's table still stands)."""
    try:
        draw()
    except ImportError as err:
        return f"{path} not written: {err}"
    return f"wrote {path}"


def _lyapunov_rows(models, x, k):
    """(label, lambda (k,), log ρ(W_h)) of each (label, model): the exponents of its first unit."""
    from .dynamics import lyapunov, spectral_radii

    rows = []
    for label, model in models:
        unit = (0, 0) if model.bidirectional else None
        lam = lyapunov(model, x, k=k, unit=unit, warmup=min(10, x.shape[0] // 5))
        rows.append((label, lam, float(np.log(spectral_radii(model)["W_h"]))))
    return rows


def _cmd_flow(args) -> int:
    from .diagnostics import fresh_models, gradient_flow, layer_flows
    from .plots import plot_flow

    out = output_file(args.out, "--out", FIGURE_FORMATS)
    if args.checkpoint is not None:
        model, x, y, _ = _trained_problem(args)
        results = layer_flows(model, x, y, label=f"trained {model.f.name}")  # a line per layer and direction
        models = [(results[0].label, model)]
    else:
        models, x, y = fresh_models(args.activations, args.scales, args.T, args.batch_size,
                                    hidden_size=args.hidden_size, seed=args.seed)
        results = [gradient_flow(m, x, y, label=label) for label, m in models]
    wrote = _figure_or_note(lambda: plot_flow(results, out), out)
    print("| model | spectral radius of W_h | ‖dL/dh_1‖ | ‖dL/dh_T‖ | ‖dL/dh_1‖ / ‖dL/dh_T‖ |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.label} | {r.spectral_radius:.3f} | {r.norms[0]:.3e} | {r.norms[-1]:.3e} | {r.ratio:.3e} |")
    bidirectional = args.checkpoint is not None and model.bidirectional
    where = "every step (a bidirectional model)" if bidirectional else "the last step only"
    print(f"\nloss at {where}, T = {len(results[0].norms)}; ratio < 1: vanishing, > 1: exploding")
    print(wrote)
    if args.lyapunov:
        _print_lyapunov(args, models, x, results, out)
    return 0


def _print_lyapunov(args, models, x, results, out: Path) -> None:
    from .dynamics_plots import plot_lyapunov

    rows = _lyapunov_rows(models, x, args.lyapunov_k)
    print("\n| model | λ_1 per step | exp(λ_1) | log ρ(W_h) | predicted ‖dL/dh_1‖ / ‖dL/dh_T‖ = exp(λ_1 (T-1)) |")
    print("|---|---:|---:|---:|---:|")
    T = x.shape[0]
    for label, lam, log_rho in rows:
        print(f"| {label} | {lam[0]:.4f} | {np.exp(lam[0]):.4f} | {log_rho:.4f} | {np.exp(lam[0] * (T - 1)):.3e} |")
    print("λ_1 < 0: perturbations of the state, and gradients sent back through it, shrink by about exp(λ_1) "
          "per step; with f' <= 1 (tanh, ReLU) λ_1 <= log ‖W_h‖₂, which is log ρ(W_h) for a scaled orthogonal W_h")
    first, label = rows[0][1], rows[0][0]
    fig = out.with_name(out.stem + "_lyapunov" + out.suffix)
    rho = float(np.exp(rows[0][2]))
    print(_figure_or_note(lambda: plot_lyapunov(first, results[0], fig, spectral_radius=rho,
                                                title=f"Lyapunov spectrum: {label}"), fig))


def _cmd_contributions(args) -> int:
    from .contributions import per_step_contributions
    from .dynamics_plots import plot_contributions, plot_influence

    folder = Path(args.out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {str(folder)!r} is a file; give a folder for the two figures")
    output_file(folder / "influence.png", "--out")  # its parent must exist: no silent mkdir -p
    if args.checkpoint is not None:
        if (args.activation, args.scale) != ("tanh", 1.0):
            raise ValueError("--activation and --scale are for a fresh model; --checkpoint brings its own")
        model, x, y, mask = _trained_problem(args)
        label = f"trained {model.f.name}"
    else:
        from .diagnostics import fresh_models

        models, x, y = fresh_models([args.activation], [args.scale], args.T, args.batch_size,
                                    hidden_size=args.hidden_size, seed=args.seed)
        (label, model), mask = models[0], None
    c = per_step_contributions(model, x, y, mask=mask)
    print(f"{label}: T = {x.shape[0]}, B = {x.shape[1]}, loss {c.loss:.4f}")
    print("| parameter | ‖dL/dθ‖ | largest step term (at t) | Σ_t ‖term_t‖ / ‖Σ_t term_t‖ |")
    print("|---|---:|---:|---:|")
    for name in model.params:
        n, total = c.norms[name], float(np.linalg.norm(c.grads[name]))
        print(f"| {name} | {total:.3e} | {n.max():.3e} (t={int(n.argmax())}) | {n.sum() / max(total, 1e-300):.2f} |")
    print("the last column is 1 when every step pushes the same way, and large when the steps cancel")
    for name, draw in (("influence.png", plot_influence), ("contributions.png", plot_contributions)):
        print(_figure_or_note(lambda: draw(c, folder / name, title=label), folder / name))
    return 0


def _add_model_options(p, fresh_help: str) -> None:
    from .train import CHECKPOINT

    p.add_argument("--checkpoint", metavar="PATH", help=f"a trained model ({CHECKPOINT} or run folder) instead of {fresh_help}")
    p.add_argument("-T", type=positive_int, default=50, help="time steps")
    p.add_argument("--batch-size", "-B", type=positive_int, default=16, help="sequences")
    p.add_argument("--hidden-size", "-H", type=positive_int, default=FRESH["hidden_size"], help="hidden units (fresh models)")
    p.add_argument("--seed", type=int, default=FRESH["seed"], help="seed for the models and data (fresh models)")


def register(sub) -> None:
    """Add ``flow`` and ``contributions`` to the ``rnngrad`` parser's subcommands."""
    p = sub.add_parser(
        "flow", formatter_class=Formatter, help="plot how ‖dL/dh_t‖ vanishes or explodes back through time",
        description="Gradient flow: with the loss at the last step only, plot ‖dL/dh_t‖ against t (log scale) for "
                    "several hidden activations and W_h scales (W_h = scale × a random orthogonal matrix, so its "
                    "spectral radius is the scale), plus a heatmap of |dL/dh_t| per unit, and print the ratio "
                    "‖dL/dh_1‖ / ‖dL/dh_T‖ beside the spectral radius. With --checkpoint: the trained model on "
                    "its own validation data. With --lyapunov: the Lyapunov exponents of the state dynamics "
                    "too, whose largest predicts that ratio.")
    _add_model_options(p, "fresh ones")
    p.add_argument("--activations", nargs="+", default=FRESH["activations"], choices=sorted(HIDDEN_ACTIVATIONS),
                   metavar="F", help="hidden activations to compare (fresh models)")
    p.add_argument("--scales", nargs="+", type=positive_float, default=FRESH["scales"], metavar="S",
                   help="spectral radii of W_h to compare (fresh models)")
    p.add_argument("--lyapunov", action="store_true",
                   help="also the Lyapunov spectrum (QR method), its λ_1 beside log ρ(W_h), and a figure "
                        "<out>_lyapunov beside the flow figure")
    p.add_argument("--lyapunov-k", type=positive_int, default=None, metavar="K",
                   help="only the K largest exponents (default: all H)")
    p.add_argument("--out", default="flow.png", help=f"figure to write ({', '.join(sorted(FIGURE_FORMATS))})")
    p.set_defaults(run=_cmd_flow)

    p = sub.add_parser(
        "contributions", formatter_class=Formatter,
        help="each time step's share of every weight gradient, and the influence map ‖dL_s/dh_t‖",
        description="The seed's weight gradients are sums over time steps. Print, per parameter, the norm of "
                    "the gradient, its largest step term and how much the steps cancel; write influence.png "
                    "(‖dL_s/dh_t‖ for every loss step s and state step t) and contributions.png (‖term_t‖ "
                    "per parameter) into --out. Fresh model: one activation and W_h scale; or --checkpoint.")
    _add_model_options(p, "a fresh one")
    p.add_argument("--activation", "-f", default="tanh", choices=sorted(HIDDEN_ACTIVATIONS), help="f (fresh model)")
    p.add_argument("--scale", type=positive_float, default=1.0, help="spectral radius of W_h (fresh model)")
    p.add_argument("--out", default=".", metavar="DIR", help="folder for influence.png and contributions.png")
    p.set_defaults(run=_cmd_contributions)
