"""The ``rnngrad`` command: parses arguments, calls the library, prints.

argparse (standard library) is the parser: subcommands, typed options and
``--help`` with defaults need nothing more, and the core keeps NumPy as its only
dependency.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from . import __version__, analysis_cli, bench, bench_train, sample_cli, sweep_cli
from .cli_args import Formatter, StopFlag, positive_float, positive_int
from .activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
from .gradcheck import check_gradients
from .losses import LOSSES
from .model import RECURRENT_INITS, RNN
from ._io import check_run_folder, make_new_folder
from .validation import FLOAT_DTYPES

__all__ = ["main", "build_parser"]


_Formatter, _positive_int, _positive_float = Formatter, positive_int, positive_float


def random_problem(model: RNN, T: int, B: int, rng: np.random.Generator):
    """Random inputs and targets of the right kind for ``model``'s loss."""
    x = rng.standard_normal((T, B, model.input_size))
    O = model.output_size
    target = model.loss_fn.target
    if target == "index_or_distribution":
        y = rng.integers(0, O, size=(T, B))
    elif target == "unit_interval":
        y = rng.uniform(0, 1, size=(T, B, O))
    else:
        y = rng.standard_normal((T, B, O))
    return x, y


def _cmd_gradcheck(args) -> int:
    model = RNN(args.input_size, args.hidden_size, args.output_size,
                hidden_activation=args.hidden_activation, output_activation=args.output_activation,
                loss=args.loss, seed=args.seed, num_layers=args.num_layers, bidirectional=args.bidirectional,
                dropout=args.dropout)
    rng = np.random.default_rng(args.seed + 1)
    x, y = random_problem(model, args.T, args.B, rng)
    units = args.num_layers * model.directions
    h0 = rng.standard_normal((args.B, args.hidden_size) if units == 1 else (units, args.B, args.hidden_size)) * 0.5
    mask = None
    if args.mask:
        # Variable lengths, padded at the end; every sequence keeps at least one step.
        lengths = rng.integers(1, args.T + 1, size=args.B)
        mask = np.arange(args.T)[:, None] < lengths[None, :]
    if args.method != "bptt":
        from .calc_check import check_calculation

        if args.dropout:
            raise ValueError(f"--method {args.method} checks models without dropout; leave out --dropout")
        report = check_calculation(model, x, y, args.method, h0=h0, mask=mask, reduction=args.reduction,
                                   eps=args.eps, rtol=args.rtol, directions=args.directions or 4, seed=args.seed,
                                   atol=args.atol)
        return _print_check(args, model, report, f"{args.method} matches finite differences")
    # With dropout, masks drawn once from the seed: the check is of the gradient for that mask.
    report = check_gradients(model, x, y, h0=h0, mask=mask, reduction=args.reduction,
                             eps=args.eps, rtol=args.rtol, atol=args.atol, directions=args.directions,
                             dropout_seed=args.seed + 2 if args.dropout else None)
    return _print_check(args, model, report, "all gradients match finite differences")


def _print_check(args, model, report, ok: str) -> int:
    print(f"{model}")
    print(f"T={args.T} B={args.B} reduction={args.reduction} mask={'yes' if args.mask else 'no'} "
          + (f"dropout masks from seed {args.seed + 2} " if args.dropout and args.num_layers > 1 else "") +
          f"eps={args.eps:g} rtol={args.rtol:g} atol={report.atol:.2g} check={report.mode} loss={report.loss:.6g}")
    print()
    print(report.table())
    print()
    print(ok if report.passed else "GRADIENT CHECK FAILED")
    return 0 if report.passed else 1


# --- train ---------------------------------------------------------------------------------

def _new_run_dir(name: str) -> Path:
    """runs/<date>-<time>-<name> under the current directory, created now: never an existing
    folder, nor one that another run started in the same second also chose."""
    return make_new_folder(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}")


class _DiscardWhenClosed:
    """A text stream that goes on silently once its reader has gone (``rnngrad train | head``).

    Training goes on with its output discarded: the run ends by its step limit, time budget
    or Ctrl-C and saves as always, so a closed pipe never loses the steps trained so far.
    """

    def __init__(self, stream):
        self.stream, self.closed_by_reader = stream, False

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                self.stream.write(text)
            except (BrokenPipeError, ValueError):
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                self._reader_gone()

    def _reader_gone(self) -> None:
        self.closed_by_reader = True
        try:  # what is still buffered goes to os.devnull, so that the exit's own flush succeeds too
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
            pass

    def __getattr__(self, name):  # isatty, fileno, encoding...: the stream's own
        return getattr(self.stream, name)


# Settings that --resume takes from the checkpoint; every other TrainConfig field with an option.
_RESUME_MAY_CHANGE = ("steps", "time_budget", "text", "early_stopping")


def _warn(message: str) -> None:
    print(f"rnngrad train: warning: {message}", file=sys.stderr)


def _cmd_train(args) -> int:
    from .train import CHECKPOINT, TrainConfig, Trainer, format_row

    # The TrainConfig fields this command has an option for (its dest is the field's name).
    options = [f for f in fields(TrainConfig) if hasattr(args, f.name)]
    if args.resume is not None:
        # Everything but the step limit and time budget comes from the checkpoint; an option that
        # would silently be ignored is an error instead.
        fixed = [f.name for f in options if f.name not in _RESUME_MAY_CHANGE and getattr(args, f.name) != f.default]
        if args.out is not None:
            fixed.append("out")
        if fixed:
            raise ValueError(
                "--resume continues a run with its saved settings; only --steps, --time-budget, --early-stopping "
                "and --text (the same text at a new place) may change "
                f"(got {', '.join('--' + n.replace('_', '-') for n in fixed)})")
        trainer = Trainer.resume(args.resume, steps=args.steps, time_budget=args.time_budget, warn=_warn,
                                 text=args.text, early_stopping=args.early_stopping)
        out = Path(args.resume)
        print(f"resuming {out} at step {trainer.progress.step} of {trainer.config.steps}")
    else:
        # Options of one kind of data given with another would be silently ignored.
        if args.max_chars is not None and (args.text is not None or args.task is not None):
            raise ValueError(f"--max-chars applies to the default corpus only, not to "
                             f"{'--text' if args.text is not None else '--task'}; leave it out")
        if args.text is None and args.max_text_bytes != TrainConfig.max_text_bytes:
            raise ValueError("--max-text-bytes applies to --text only; leave it out")
        if args.task is not None and args.val_fraction != TrainConfig.val_fraction:
            raise ValueError("--val-fraction applies to text only; a task has its own validation set")
        values = {f.name: getattr(args, f.name) for f in options}
        values["clip_norm"] = values["clip_norm"] or None  # --clip-norm 0: off
        if values["steps"] is None:  # the option's default is None so that --resume can keep the saved value
            del values["steps"]
        if values.get("text") is not None:  # stored absolute: a resume from elsewhere finds it
            values["text"] = str(Path(values["text"]).resolve())
        config = TrainConfig(**values)
        name = args.task or (Path(args.text).stem if args.text else "default-corpus")
        out = check_run_folder(args.out, "--out") if args.out else _new_run_dir(name)
        if (out / CHECKPOINT).exists():
            raise ValueError(f"--out {str(out)!r} already holds a run; continue it with --resume {out}, "
                             f"or choose another folder")
        trainer = Trainer(config, out)
        print(f"training {trainer.model}")
        print(f"data: {trainer.data.source}; baseline {trainer.data.baseline:.4f} ({trainer.data.baseline_note})")
        print(f"output folder: {out}")
        if config.gradient == "rtrl":
            print(f"gradients by RTRL: exact online gradients over each epoch's unbroken stream, an update "
                  f"every {config.chunk_len} steps (--chunk-len), no truncation")
    cfg = trainer.config
    trainer.warn = _warn
    parallel = None
    if args.workers is not None or args.scheduler is not None:
        from .distributed_train import attach_workers, connect_for_training

        client = connect_for_training(workers=args.workers, scheduler=args.scheduler)
        try:
            parallel = attach_workers(trainer, client)
        except BaseException:
            client.close()
            raise
        print(f"gradients on {len(client.nthreads())} Dask worker(s), each batch cut into {parallel.shards} shards")

    stop = StopFlag()
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = None
    if not args.no_progress:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            # disable=None: a bar on a terminal, plain log lines when output goes to a file or pipe.
            bar = tqdm(total=cfg.steps, initial=trainer.progress.step, unit="step", dynamic_ncols=True,
                       disable=None, mininterval=0.5)
            if bar.disable:
                bar = None
    say = bar.write if bar is not None else print

    def on_log(row):
        if bar is not None:
            post = {"loss": f"{row.train_loss:.3f}", "val": f"{row.val_loss:.3f}"}
            if row.val_bpc is not None:
                post["bpc"] = f"{row.val_bpc:.3f}"
            if row.val_accuracy is not None:
                post["acc"] = f"{row.val_accuracy:.1%}"
            if row.tokens_per_s:
                post["tok/s"] = f"{row.tokens_per_s:,.0f}"
            bar.set_postfix(post, refresh=False)
        else:
            say(format_row(row, cfg.steps))

    def on_sample(step, text):
        say(f"--- sample at step {step} ---\n{text}\n---")

    from .threads import blas_threads

    threads = blas_threads(args.threads, hidden_size=cfg.hidden_size, batch_size=cfg.batch_size,
                           chunk_len=cfg.chunk_len)
    if threads.note:
        _warn(threads.note)

    def on_step(step):
        threads.poll()  # the automatic choice again from the load, every few seconds
        if bar is not None:
            bar.update(1)

    try:
        with threads:
            status = trainer.run(should_stop=stop, on_log=on_log, on_sample=on_sample, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
        for sig, h in previous.items():
            signal.signal(sig, h)
        if parallel is not None:
            parallel.close()
            parallel.client.close()
    return _report_run(trainer, status, stop, out)


def _report_run(trainer, status, stop, out: Path) -> int:
    """The closing lines of ``rnngrad train``: where the run ended, its best, a sample, its files."""
    from .sample import DEFAULT_TEMPERATURE
    from .train import BEST, CHECKPOINT, LOSS_PLOT, METRICS, RunStatus

    p, cfg, data = trainer.progress, trainer.config, trainer.data
    if p.rows:
        final = p.rows[-1]
        below = 1 - final["val_loss"] / data.baseline
        versus = f"{below:.0%} below" if below >= 0 else f"{-below:.0%} above"
        extra = (f", {final['val_bpc']:.3f} bits/char" if final.get("val_bpc") is not None else
                 f", accuracy {final['val_accuracy']:.1%}" if final.get("val_accuracy") is not None else "")
        at = f"step {p.step}" if final["step"] == p.step else f"step {p.step} (last logged at step {final['step']})"
        print(f"{at}: train loss {final['train_loss']:.4f}, validation loss {final['val_loss']:.4f}{extra} "
              f"({versus} the baseline {data.baseline:.4f}) in {p.elapsed_s:.1f} s of training")
        if p.best_step is not None:
            print(f"best validation loss {p.best_val_loss:.4f} at step {p.best_step}, kept in {out / BEST}")
    else:  # resumed with metrics.jsonl gone and nothing left to train: no row to report
        print(f"step {p.step}: no metrics logged in {out / METRICS}")
    if status is RunStatus.EARLY_STOPPED:
        print(f"stopped early at step {p.step}: no lower validation loss in {cfg.early_stopping} evaluations "
              f"in a row (--early-stopping {cfg.early_stopping}, one evaluation per {cfg.log_every} steps)")
    if data.vocab is not None and status is not RunStatus.STOPPED:
        print(f"--- sample (temperature {DEFAULT_TEMPERATURE:g}) ---\n{trainer.sample(400, seed=[cfg.seed, 5])}\n---")
    print(f"wrote {out / CHECKPOINT}, {out / METRICS}" + (
        f", {out / LOSS_PLOT}" if trainer.plot_note is None else f" ({LOSS_PLOT} not updated: {trainer.plot_note})"))
    if status is RunStatus.STOPPED:
        name = signal.Signals(stop.signal).name
        print(f"stopped by {name} at step {p.step}; checkpoint saved. Continue with: "
              f"rnngrad train --resume {shlex.quote(str(out))}")
        return 128 + int(stop.signal)
    if status is RunStatus.TIME:
        print(f"time budget of {cfg.time_budget:g} s reached at step {p.step}")
    return 0


def _add_train_parser(sub) -> None:
    from .data import TASKS
    from .optim import OPTIMIZERS
    from .train import CHECKPOINT, LOSS_PLOT, METRICS, TrainConfig  # its defaults are the command's defaults

    p = sub.add_parser(
        "train", formatter_class=_Formatter, help="train a model on text or a synthetic task",
        description="Train a recurrent model. With no arguments: a character model on the default "
                    "corpus (Python standard library sources already on this machine). Writes "
                    f"{CHECKPOINT}, {METRICS} and {LOSS_PLOT} into the output folder; Ctrl-C saves a "
                    "checkpoint and stops, and --resume continues exactly where it stopped.")
    data = p.add_argument_group("data")
    data.add_argument("--text", metavar="PATH", help="UTF-8 text file to model character by character "
                      "(default: the built-in corpus)")
    data.add_argument("--task", choices=sorted(TASKS), help="a synthetic task instead of text")
    data.add_argument("--max-chars", type=_positive_int, help="use only the first N characters of the default corpus")
    data.add_argument("--max-text-bytes", type=_positive_int, default=TrainConfig.max_text_bytes,
                      help="largest --text file accepted, in bytes")
    data.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction, help="held-out share of the text")
    model = p.add_argument_group("model")
    model.add_argument("--hidden-size", "-H", type=_positive_int, default=TrainConfig.hidden_size,
                       help="hidden units (of each layer and direction)")
    model.add_argument("--num-layers", "-L", type=_positive_int, default=TrainConfig.num_layers,
                       help="stacked recurrent layers")
    model.add_argument("--bidirectional", action="store_true",
                       help="a reverse-direction layer beside each layer (synthetic tasks only: text is read "
                            "in chunks with the state carried forward)")
    model.add_argument("--dropout", type=float, default=TrainConfig.dropout,
                       help="dropout between stacked layers during training (needs --num-layers 2 or more)")
    model.add_argument("--hidden-activation", "-f", default=TrainConfig.hidden_activation, choices=sorted(HIDDEN_ACTIVATIONS),
                       help="hidden activation f")
    model.add_argument("--recurrent-init", default=TrainConfig.recurrent_init, choices=RECURRENT_INITS,
                       help="initialisation of W_h")
    model.add_argument("--dtype", default=TrainConfig.dtype, choices=[dt.name for dt in FLOAT_DTYPES],
                       help="floating-point type")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--optimizer", default=TrainConfig.optimizer, choices=sorted(OPTIMIZERS), help="optimizer")
    opt.add_argument("--lr", type=_positive_float, default=TrainConfig.lr, help="learning rate (the base rate of a schedule)")
    opt.add_argument("--lr-schedule", default=TrainConfig.lr_schedule, metavar="SPEC",
                     help="constant | cosine[=T_MAX][,eta_min=E] | step=S[,gamma=G] | warmup=N[,start=A], a warmup "
                          "alone or before cosine or step (e.g. warmup=100,cosine), as torch.optim.lr_scheduler defines them")
    opt.add_argument("--weight-decay", type=float, default=None,
                     help="decoupled weight decay for adamw (default 0.01, as torch.optim.AdamW); L2 added to the "
                          "gradient for sgd, adagrad, rmsprop (default 0); adam takes none")
    opt.add_argument("--momentum", type=float, default=TrainConfig.momentum, help="momentum (sgd, rmsprop)")
    opt.add_argument("--clip-norm", type=float, default=TrainConfig.clip_norm, help="clip gradients to this global norm (0: off)")
    opt.add_argument("--clip-value", type=_positive_float, default=None, help="clip each gradient entry to ±this")
    opt.add_argument("--gradient", default=TrainConfig.gradient, choices=("bptt", "rtrl"),
                     help="bptt: truncated BPTT over each chunk; rtrl: exact online gradients by real-time recurrent "
                          "learning, an update every --chunk-len steps of an unbroken text stream, no truncation "
                          "(small models: memory B·H²·(H + D) per layer)")
    opt.add_argument("--chunk-len", "-k", type=_positive_int, default=TrainConfig.chunk_len,
                     help="truncated-BPTT length for text; sequence length for tasks")
    opt.add_argument("--batch-size", "-B", type=_positive_int, default=TrainConfig.batch_size, help="sequences per batch")
    opt.add_argument("--steps", type=_positive_int, default=None, help=f"optimizer updates (default {TrainConfig.steps}; "
                     "with --resume: the saved value, or a new total)")
    opt.add_argument("--time-budget", type=_positive_float, default=None, help="stop after this many seconds of training")
    opt.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed for initialisation, shuffling and samples")
    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="output folder (default: a new folder runs/<date>-<time>-<data>)")
    run.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (other settings come from it)")
    run.add_argument("--log-every", type=_positive_int, default=TrainConfig.log_every, help="steps between metrics rows")
    run.add_argument("--sample-every", type=_positive_int, default=TrainConfig.sample_every, help="steps between printed samples (text)")
    run.add_argument("--checkpoint-every", type=_positive_int, default=TrainConfig.checkpoint_every, help="steps between checkpoints")
    run.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE",
                     help="stop when PATIENCE evaluations in a row (one per --log-every steps) bring no lower "
                          "validation loss; the best model is always kept in best.npz")
    run.add_argument("--no-progress", action="store_true", help="no progress bar; print log lines instead")
    run.add_argument("--threads", type=_positive_int, default=None,
                     help="BLAS threads (default: chosen from the model's size and the machine's load, again every "
                          "5 s; see rnngrad.threads)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, metavar="N",
                       help="compute each update's gradients on a local Dask cluster of N worker processes "
                            "(the same updates as in one process, up to rounding; pip install 'rnngrad[dask]')")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="compute each update's gradients on the workers of the Dask cluster whose scheduler "
                            "is at ADDRESS, e.g. tcp://10.0.0.5:8786")
    p.set_defaults(run=_cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnngrad", formatter_class=_Formatter,
        description="A general RNN with exact backprop-through-time gradients.")
    parser.add_argument("--version", action="version", version=f"rnngrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "gradcheck", formatter_class=_Formatter,
        help="compare every gradient with central finite differences on random data",
        description="Build a random model and random data, compute every gradient by BPTT and "
                    "compare each with central finite differences in float64. Prints a table; "
                    "exits 1 if any gradient fails.")
    p.add_argument("--hidden-activation", "-f", default="tanh", choices=sorted(HIDDEN_ACTIVATIONS),
                   help="hidden activation f")
    p.add_argument("--output-activation", "-g", default="softmax", choices=sorted(OUTPUT_ACTIVATIONS),
                   help="output activation g")
    p.add_argument("--loss", "-l", default="cross_entropy", choices=sorted(LOSSES), help="per-step loss L_t")
    p.add_argument("-T", type=_positive_int, default=6, help="time steps")
    p.add_argument("-B", type=_positive_int, default=3, help="sequences in the batch")
    p.add_argument("--input-size", "-D", type=_positive_int, default=4, help="input features D")
    p.add_argument("--hidden-size", "-H", type=_positive_int, default=5, help="hidden units H")
    p.add_argument("--output-size", "-O", type=_positive_int, default=3, help="outputs O")
    p.add_argument("--num-layers", "-L", type=_positive_int, default=1, help="stacked layers")
    p.add_argument("--bidirectional", action="store_true", help="a reverse-direction layer beside each layer")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout between layers (masks drawn once from the seed; the check is for that mask)")
    p.add_argument("--reduction", choices=["sum", "mean"], default="sum", help="loss reduction")
    p.add_argument("--mask", action="store_true", help="random sequence lengths (mask padded steps)")
    p.add_argument("--eps", type=_positive_float, default=1e-6, help="finite-difference step")
    p.add_argument("--rtol", type=_positive_float, default=1e-6, help="largest relative error that passes")
    p.add_argument("--atol", type=float, default=None,
                   help="absolute error that passes whatever the relative one (default: the rounding floor of "
                        "the differences, 8 u max(|L|, 1) / eps)")
    p.add_argument("--directions", type=_positive_int, default=None,
                   help="check this many random directions per array instead of every entry")
    p.add_argument("--method", choices=("bptt", "rtrl", "jvp", "hvp"), default="bptt",
                   help="the calculation checked: bptt (every gradient, entry by entry), rtrl (its gradient), "
                        "jvp (forward-mode directional derivatives) or hvp (Hessian-vector products against "
                        "differences of the gradient); the last three along --directions random directions "
                        "(default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for the model and the data")
    p.set_defaults(run=_cmd_gradcheck)
    # Other commands live beside the code they drive; each module registers its own parser.
    # (one line per command below)
    bench.register(sub)
    bench_train.register(sub)
    sample_cli.register(sub)
    sweep_cli.register(sub)
    analysis_cli.register(sub)
    _add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    streams = sys.stdout, sys.stderr
    # A stream closed before the start (rnngrad train >&-) is None in Python: discard its output too.
    out, err = (open(os.devnull, "w") if s is None else s for s in streams)
    sys.stdout, sys.stderr = _DiscardWhenClosed(out), _DiscardWhenClosed(err)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # --help, --version, or a usage error: argparse has printed its lines
        _restore(streams)
        raise
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as err:
        # Bad input the library refused, a file it could not read, a missing optional dependency
        # (matplotlib for flow) or a diverged run (exit 1): one line, not a traceback.
        print(f"rnngrad {args.command}: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, FloatingPointError) else 2
    except KeyboardInterrupt:
        # A second Ctrl-C during training, or one outside it: files are written atomically,
        # so whatever was saved last is intact.
        print(f"rnngrad {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _restore(streams)


def _restore(streams) -> None:
    for wrapper in (sys.stdout, sys.stderr):
        if isinstance(wrapper, _DiscardWhenClosed):
            wrapper.flush()
    sys.stdout, sys.stderr = streams


if __name__ == "__main__":
    sys.exit(main())
