"""What the commands' parsers share: the help formatter, argument types, output-file checks."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

__all__ = ["Formatter", "StopFlag", "positive_int", "positive_float", "output_file", "write_json", "FIGURE_FORMATS"]

from ._io import atomic_write
from .plots import FIGURE_FORMATS


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none (the help text says what happens)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def output_file(path, option: str, suffixes=None) -> Path:
    """``path`` checked before any work is done: its folder must exist (a typo in it should not
    silently create folders, nor fail after minutes of computing) and, if ``suffixes`` is given,
    its suffix, if it has one, must be one of them (a name without one is written as PNG).
    ValueError naming ``option`` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; give a file name, e.g. {str(path / 'out')!r}")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {str(path)!r}: the folder {str(parent)!r} does not exist; create it first "
                         f"(mkdir -p {parent}) or write elsewhere")
    if suffixes is not None and path.suffix and path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {str(path)!r}: unknown file type {path.suffix or '(none)'!r}; use one of "
                         f"{', '.join(sorted(suffixes))}")
    return path


class StopFlag:
    """Set by SIGINT/SIGTERM (install :meth:`handler`): the work in hand finishes its step, saves and
    returns. A second Ctrl-C forces out (KeyboardInterrupt)."""

    def __init__(self):
        self.signal = None

    def __call__(self) -> bool:
        return self.signal is not None

    def handler(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum


def write_json(path, result) -> None:
    """``result`` as indented JSON at ``path``, atomically, and a line on stderr saying so."""
    text = json.dumps(result, indent=2)
    atomic_write(path, lambda fh: fh.write(text), mode="w")
    print(f"wrote {path}", file=sys.stderr)
