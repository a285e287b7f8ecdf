"""The ``rnngrad`` command's entry point.

Python turns a Ctrl-C into a KeyboardInterrupt wherever it lands; during the first fraction of a
second the command is still importing NumPy (and numba), and the exception would print an import
traceback. Here a handler is installed before anything heavy is imported: a Ctrl-C then ends the
command with one line and exit status 130. The CLI's own handling (one line; during training, a
saved checkpoint) takes over once it is loaded. ``rnngrad`` (the package) is import-free until a
name is used, so nothing but this module runs before the handler.
"""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame):  # pragma: no cover - timing-dependent
    os.write(2, b"rnngrad: interrupted\n")
    os._exit(130)  # nothing has been written yet: no clean-up to run


def main() -> int:
    # Only where Ctrl-C would raise KeyboardInterrupt: a parent that set SIGINT to be ignored (a
    # background job of a script, nohup) keeps it ignored.
    quiet = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if quiet:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    from .cli import main as cli_main

    if quiet:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return cli_main()
    except KeyboardInterrupt:  # while the parser is built, before the command's own handling
        print("rnngrad: interrupted", file=sys.stderr)
        return 130
