"""The ``rnngrad`` command: parses arguments, calls the library, prints.

argparse (standard library) is the parser: subcommands, typed options and
``--help`` with defaults need nothing more, and the core keeps NumPy as its only
dependency.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import __version__
from .activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
from .gradcheck import check_gradients
from .losses import LOSSES
from .model import RNN

__all__ = ["main", "build_parser"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


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
                loss=args.loss, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    x, y = random_problem(model, args.T, args.B, rng)
    h0 = rng.standard_normal((args.B, args.hidden_size)) * 0.5
    mask = None
    if args.mask:
        # Variable lengths, padded at the end; every sequence keeps at least one step.
        lengths = rng.integers(1, args.T + 1, size=args.B)
        mask = np.arange(args.T)[:, None] < lengths[None, :]
    report = check_gradients(model, x, y, h0=h0, mask=mask, reduction=args.reduction,
                             eps=args.eps, rtol=args.rtol, directions=args.directions)
    print(f"{model}")
    print(f"T={args.T} B={args.B} reduction={args.reduction} mask={'yes' if args.mask else 'no'} "
          f"eps={args.eps:g} rtol={args.rtol:g} check={report.mode} loss={report.loss:.6g}")
    print()
    print(report.table())
    print()
    print("all gradients match finite differences" if report.passed else "GRADIENT CHECK FAILED")
    return 0 if report.passed else 1


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
    p.add_argument("--reduction", choices=["sum", "mean"], default="sum", help="loss reduction")
    p.add_argument("--mask", action="store_true", help="random sequence lengths (mask padded steps)")
    p.add_argument("--eps", type=_positive_float, default=1e-6, help="finite-difference step")
    p.add_argument("--rtol", type=_positive_float, default=1e-6, help="largest relative error that passes")
    p.add_argument("--directions", type=_positive_int, default=None,
                   help="check this many random directions per array instead of every entry")
    p.add_argument("--seed", type=int, default=0, help="seed for the model and the data")
    p.set_defaults(run=_cmd_gradcheck)
    # Other commands live beside the code they drive; each module registers its own parser.
    # (one line per command below)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as err:
        # Bad input the library refused: one line, not a traceback.
        print(f"rnngrad {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
