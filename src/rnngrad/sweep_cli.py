"""``rnngrad sweep``: a grid of training runs, one folder each, and a summary.

    rnngrad sweep --grid lr=1e-3,3e-4 hidden_activation=tanh,relu --task adding --steps 2000 \\
        --out sweeps/adding --workers 2

Every ``--grid NAME=V1,V2`` setting is swept (the cartesian product of all of them); the
other options are the training settings every run shares, spelled as ``rnngrad train`` spells
them (read from :class:`rnngrad.train.TrainConfig`, so each of its settings has one), with
train's defaults; ``--config FILE.toml`` gives a [grid] and a [train] table instead or as well
(the command line wins for a shared setting; a setting is swept or shared, not both). Runs go
one after another in this process, or on Dask workers (``--workers N`` local processes,
``--scheduler ADDRESS`` a running cluster). A progress bar counts finished runs on a terminal,
otherwise each finished run is a line; the summary table is printed at the end. Running the same
command again skips the finished runs and resumes the interrupted ones. Ctrl-C (in-process
runs) saves the current run's checkpoint and stops. Exit status 0, or 1 when a run failed
(a diverged run is a result, not a failure); errors are one line.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .cli_args import Formatter, StopFlag, positive_int

__all__ = ["register", "main"]


def _choices() -> dict:
    """(Imported here, not at the top: importing this module stays cheap.) The allowed values of the string settings that have a fixed set (as rnngrad train lists them)."""
    from .activations import HIDDEN_ACTIVATIONS
    from .data import TASKS
    from .model import RECURRENT_INITS
    from .optim import OPTIMIZERS
    from .validation import FLOAT_DTYPES

    return {"task": sorted(TASKS), "hidden_activation": sorted(HIDDEN_ACTIVATIONS), "recurrent_init": list(RECURRENT_INITS),
            "dtype": [dt.name for dt in FLOAT_DTYPES], "optimizer": sorted(OPTIMIZERS)}


def _option_type(name: str):
    """An argparse type for setting ``name``: the sweep's own conversion, one line on error."""
    from .sweep import parse_value

    def convert(text: str):
        try:
            return parse_value(name, text, option=f"--{name.replace('_', '-')}")
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).split(": ", 1)[-1]) from None
    convert.__name__ = name  # argparse names the type in its "invalid ... value" message
    return convert


def _train_options() -> dict:
    """{setting: (option strings, help)} of ``rnngrad train``'s options, read from its parser, so
    that a shared setting is spelled and explained as train does (short flags included)."""
    from . import cli

    sub = argparse.ArgumentParser(add_help=False).add_subparsers()
    cli._add_train_parser(sub)
    train = sub.choices["train"]
    return {a.dest: (a.option_strings, a.help) for a in train._actions if a.option_strings}


def _add_shared_options(p) -> None:
    """One option per TrainConfig setting, default unset (argparse.SUPPRESS): only those given
    reach the sweep, above the --config file's [train] table and TrainConfig's defaults. The
    value is converted as a --grid value is (0 or none for clip_norm: no clipping)."""
    from dataclasses import MISSING, fields

    from .sweep import FIELD_TYPES
    from .train import TrainConfig

    choices, train = _choices(), _train_options()
    group = p.add_argument_group("training settings shared by every run (as rnngrad train; default: train's)")
    for f in fields(TrainConfig):
        if f.name not in FIELD_TYPES:  # not of a type the command line can spell
            continue
        kind, optional = FIELD_TYPES[f.name]
        flags, text = train.get(f.name, (["--" + f.name.replace("_", "-")], f"TrainConfig.{f.name}"))
        default = f.default if f.default is not MISSING else None
        shown = default is not None and default is not False and "default" not in (text or "")
        text = (text or "") + (f" (default: {default})" if shown else "")
        if kind is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(*flags, dest=f.name, type=_option_type(f.name), default=argparse.SUPPRESS,
                               metavar=f.name.upper(), choices=choices.get(f.name),
                               help=text + ("; none: unset" if optional and f.name != "clip_norm" else ""))


def register(sub) -> None:
    """Add the ``sweep`` command to the ``rnngrad`` parser's subcommands."""
    p = sub.add_parser(
        "sweep", formatter_class=Formatter, help="train a grid of configurations, one run folder each",
        description="Train every combination of the --grid settings as its own run (DIR/NAME=VALUE,...), "
                    "with the other training settings shared; write DIR/summary.json, summary.md and "
                    "summary.png (best validation loss per configuration). Rerun the same command to "
                    "finish an interrupted sweep: finished runs are skipped, interrupted ones resumed.")
    s = p.add_argument_group("sweep")
    s.add_argument("--grid", nargs="+", action="extend", default=[], metavar="NAME=V1,V2",
                   help="a swept setting and its values, e.g. lr=1e-3,3e-4 (several settings: every "
                        "combination); names as TrainConfig or the options below spell them")
    s.add_argument("--config", metavar="TOML", help="a file with a [grid] table (setting = [values]) and an "
                   "optional [train] table (shared settings); values holding commas (--lr-schedule) go here")
    s.add_argument("--out", required=True, metavar="DIR", help="the sweep's folder (one run folder per configuration)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, metavar="N",
                       help="run on a local Dask cluster of N worker processes (default: one run after another here)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the Dask cluster of this scheduler, e.g. tcp://10.0.0.5:8786 (DIR must be on "
                            "a file system its workers share)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar; a line per finished run instead")
    _add_shared_options(p)
    p.set_defaults(run=_cmd_sweep)


def _grid_and_base(args):
    """(grid, base TrainConfig) from --config, --grid and the shared options given."""
    from dataclasses import fields

    from .sweep import load_sweep_file, parse_grid_option
    from .train import TrainConfig

    grid, shared = load_sweep_file(args.config) if args.config else ({}, {})
    for item in args.grid:
        key, values = parse_grid_option(item)
        if key in grid:
            raise ValueError(f"--grid {key}: given twice" + (" (also in --config)" if args.config else ""))
        grid[key] = values
    if not grid:
        raise ValueError("give at least one --grid NAME=V1,V2 (e.g. --grid lr=1e-3,3e-4), or a [grid] table "
                         "in a --config file")
    shared.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    both = [k for k in grid if k in shared]
    if both:
        raise ValueError(f"{', '.join(both)}: swept (--grid) and shared (--{both[0].replace('_', '-')} or "
                         f"[train]) at once; give each setting one way")
    if shared.get("text") is not None:
        shared["text"] = str(Path(shared["text"]).resolve())
    return grid, TrainConfig(**shared)


def _line(record: dict, done: int, total: int) -> str:
    r = record
    best = ("" if r["best_val_loss"] is None else
            f", best val {r['best_val_loss']:.4g} at step {r['best_step']}")
    how = ("skipped: finished before" if r["from_step"] == r["steps"] > 0 else
           f"resumed at step {r['from_step']}" if r["from_step"] else "")
    extra = f" ({how})" if how else ""
    message = f": {r['message']}" if r["message"] else ""
    return f"[{done}/{total}] {r['name']}: {r['status']}{best}, {r['steps']} steps{extra}{message}"


def _cmd_sweep(args) -> int:
    from .sweep import SUMMARY, SUMMARY_FIGURE, SUMMARY_TABLE, expand_grid, run_sweep, summary_table

    grid, base = _grid_and_base(args)
    configs = expand_grid(grid)
    client = None
    if args.workers is not None or args.scheduler is not None:
        from .distributed_train import connect_for_training
        client = connect_for_training(workers=args.workers, scheduler=args.scheduler)
    where = (f"{args.workers} local worker{'s' * (args.workers > 1)}" if args.workers else
             f"the cluster at {args.scheduler}" if args.scheduler else "this process, one after another")
    print(f"sweep of {len(configs)} configurations ({' x '.join(f'{k}: {len(v)}' for k, v in grid.items())}) "
          f"into {args.out}, on {where}")
    bar = None
    if not args.no_progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(configs), unit="run", dynamic_ncols=True, disable=None)
            bar = None if bar.disable else bar
        except ImportError:
            pass
    say = bar.write if bar is not None else print

    def on_progress(record, done, total):
        if bar is not None:
            bar.update(1)
            if record["status"] in ("diverged", "failed"):
                say(_line(record, done, total))
        else:
            say(_line(record, done, total))

    stop = StopFlag()
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if client is None else {}
    try:
        records = run_sweep(base, configs, args.out, client=client, on_progress=on_progress, should_stop=stop)
    finally:
        if bar is not None:
            bar.close()
        for sig, h in previous.items():
            signal.signal(sig, h)
        if client is not None:
            client.close()
    out = Path(args.out)
    print()
    print(summary_table(records), end="")
    figure = out / SUMMARY_FIGURE
    print(f"wrote {out / SUMMARY}, {out / SUMMARY_TABLE}" + (f", {figure}" if figure.exists() else
                                                             " (no figure: matplotlib is not installed)"))
    if stop():
        print(f"stopped by {signal.Signals(stop.signal).name}; run the same command again to finish the sweep")
        return 128 + int(stop.signal)
    return 1 if any(r["status"] == "failed" for r in records) else 0


def main(argv=None) -> int:
    """``python -m rnngrad.sweep_cli ...``: the command on its own (the same as ``rnngrad sweep``)."""
    parser = argparse.ArgumentParser(prog="rnngrad", formatter_class=Formatter)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep"] + list(sys.argv[1:] if argv is None else argv))
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"rnngrad sweep: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
