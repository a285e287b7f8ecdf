"""``rnngrad sample``: text from a trained character model, printed as it is generated.

The prime is printed first, then each character as soon as :func:`rnngrad.sample.iter_sample`
draws it (written and flushed one at a time, so ``-n 100000`` shows text at once), then a
newline. On a terminal the prime is dim (ANSI ``ESC[2m ... ESC[0m``) to tell it from what the
model wrote; into a pipe or a file the output is plain text, prime and sample joined, with no
escape codes (``--mark-prime`` changes this; ``NO_COLOR`` set to anything but the empty string
turns the dimming off, as https://no-color.org asks). Ctrl-C keeps what was printed, ends the
line and exits 130 with one line on stderr; a reader that goes away (``| head -c 100``) ends
the command quietly with exit 0. Bad options are refused in one line naming the option.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Mapping

from .sample import DEFAULT_TEMPERATURE, default_prime, iter_sample, unknown_characters, vocabulary_preview

__all__ = ["register", "DEFAULT_LENGTH", "MARK_PRIME"]

DEFAULT_LENGTH = 500
#: --mark-prime: auto dims the prime on a colour terminal only; always dims it anywhere; never: plain.
MARK_PRIME = ("auto", "always", "never")
DIM, RESET = "\x1b[2m", "\x1b[0m"


def register(subparsers) -> None:
    """Add the ``sample`` command to the ``rnngrad`` parser's subcommands."""
    p = subparsers.add_parser(
        "sample", help="generate text from a trained character model",
        description="Generate text from a checkpoint written by rnngrad train, printed as it is generated: "
                    "the prime (dim on a terminal), then the model's characters. Ctrl-C stops and keeps "
                    "what was printed (exit 130).")
    _add_arguments(p)
    p.set_defaults(run=_cmd_sample)


def _add_arguments(p) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads (default: 1 up to H = 4096, where one step's products are too small to share; "
                        "see rnngrad.threads)")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="checkpoint.npz written by rnngrad train, or the run folder holding it")
    p.add_argument("--length", "-n", type=int, default=DEFAULT_LENGTH,
                   help="characters to generate (default: %(default)s)")
    p.add_argument("--temperature", "-t", type=float, default=DEFAULT_TEMPERATURE,
                   help="sampling temperature: lower is safer and more repetitive, 1.0 is the model's own "
                        "distribution (default: %(default)s)")
    p.add_argument("--prime", default=None,
                   help="text the sample continues, every character in the model's vocabulary (default: the "
                        "line of held-out text that training samples continue, when the checkpoint records "
                        "one, else the visible character the model most expects to begin a line)")
    p.add_argument("--escapes", action="store_true", help=r"interpret backslash escapes in --prime, e.g. \n, \t")
    p.add_argument("--seed", type=int, default=None, help="random seed, to repeat a sample (default: fresh randomness)")
    p.add_argument("--mark-prime", choices=MARK_PRIME, default="auto",
                   help="tell the prime from the generated text: auto dims it on a terminal (not with NO_COLOR "
                        "set or TERM=dumb), always dims it with ANSI codes even into a pipe (e.g. for less -R), "
                        "never prints it plain (default: %(default)s)")


def _cmd_sample(args) -> int:
    length, temperature, seed = _check_options(args)
    model, vocab, saved_prime = _load_for_sampling(Path(args.checkpoint))
    if args.prime is None:
        prime = saved_prime if saved_prime is not None else default_prime(model, vocab)
    else:
        prime = _expand_escapes(args.prime) if args.escapes else args.prime
        _check_prime_option(prime, vocab, args.escapes)
    chars = iter_sample(model, vocab, length, prime=prime, temperature=temperature, seed=seed)
    out = sys.stdout  # read now: the command's caller may have wrapped it
    start, end = _prime_marks(args.mark_prime, out, os.environ)
    from .threads import blas_threads, check_threads

    # Around the whole stream: the generator computes while it is consumed.
    with blas_threads(check_threads(args.threads), hidden_size=model.hidden_size, batch_size=1):
        return _stream(out, start + prime + end, chars, length, styled=bool(start))


# --- output --------------------------------------------------------------------------------

class _ReaderGone(Exception):
    """stdout's reader has closed it (``| head``): nothing more can be shown."""


def _stream(out, head: str, chars: Iterable[str], length: int, styled: bool) -> int:
    """Write ``head``, then each character as it comes, then a newline; the exit status.

    Ctrl-C (KeyboardInterrupt, wherever in the loop it lands) keeps what was written, resets
    the style, ends the line and returns 130 after one line on stderr.
    """
    written = [0]  # generated characters handed to the stream
    try:
        _emit(out, head)
        for c in chars:
            _emit(out, c, written)
        _emit(out, "\n")
    except _ReaderGone:
        return 0
    except KeyboardInterrupt:
        try:
            _emit(out, (RESET if styled else "") + "\n")
        except _ReaderGone:
            pass
        print(f"rnngrad sample: interrupted after {written[0]} of {length} characters", file=sys.stderr)
        return 130
    return 0


def _emit(out, text: str, count: list | None = None) -> None:
    """Write and flush ``text`` now, adding its length to ``count[0]``; _ReaderGone once the
    reader has closed the stream."""
    if count is not None:
        # Counted just before the write: a Ctrl-C is raised where the interpreter checks for
        # signals, on entering this function (before the count: not written, not counted) or
        # on return from a call (after the write: written and counted), never in between.
        count[0] += len(text)
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        _discard_rest(out)
        raise _ReaderGone from None
    # rnngrad.cli's wrapper of stdout swallows the broken pipe and says so here.
    if getattr(out, "closed_by_reader", False):
        raise _ReaderGone


def _discard_rest(out) -> None:
    """Point the stream's file at os.devnull, so that what is still buffered goes nowhere and the
    interpreter's flush at exit does not report the broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        pass


def _prime_marks(mode: str, out, environ: Mapping[str, str]) -> tuple[str, str]:
    """(before, after) the prime: the dim codes, or empty strings for plain text."""
    if mode == "always" or (mode == "auto" and _colour_terminal(out, environ)):
        return DIM, RESET
    return "", ""


def _colour_terminal(out, environ: Mapping[str, str]) -> bool:
    if environ.get("NO_COLOR", "") != "" or environ.get("TERM") == "dumb":
        return False
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (OSError, ValueError):  # a closed stream
        return False


# --- input ---------------------------------------------------------------------------------

def _check_options(args) -> tuple[int, float, int | None]:
    """(length, temperature, seed), each refused in one line naming its option."""
    if args.length < 1:
        raise ValueError(f"--length/-n must be a positive number of characters; got {args.length} "
                         f"(e.g. -n {DEFAULT_LENGTH})")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ValueError(f"--temperature/-t must be a finite number above 0; got {args.temperature:g} "
                         f"(0.5 is safer, 1.0 the model's own distribution; default {DEFAULT_TEMPERATURE})")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer; got {args.seed} "
                         f"(or leave it out for fresh randomness)")
    return args.length, args.temperature, args.seed


def _load_for_sampling(path: Path):
    """(model, vocab, saved prime or None) of a training checkpoint of a text model."""
    from .checkpoint import CheckpointError, model_from_checkpoint
    from .data import Vocabulary
    from .train import load_training_checkpoint

    path, meta, arrays = load_training_checkpoint(path)
    if not meta["vocab"]:
        task = meta["config"].get("task")
        raise CheckpointError(f"--checkpoint {str(path)!r} holds a model trained on a task"
                              f"{f' ({task})' if isinstance(task, str) else ''}, not on text; nothing to sample: "
                              f"give a run of rnngrad train on text (the default corpus or --text PATH)")
    model, vocab = model_from_checkpoint(meta, arrays), Vocabulary.from_json(meta["vocab"])
    if model.bidirectional:
        raise CheckpointError(f"--checkpoint {str(path)!r} holds a bidirectional model, which cannot generate "
                              f"text (its reverse direction reads characters not yet written); train a "
                              f"unidirectional one")
    saved = meta["data"].get("sample_prime")
    if saved is not None and (not isinstance(saved, str) or not saved or unknown_characters(saved, vocab)):
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: its data.sample_prime is not text of its "
                              f"own vocabulary")
    return model, vocab, saved


def _check_prime_option(prime: str, vocab, escapes: bool) -> None:
    if not prime:
        raise ValueError("--prime is empty; give the text the sample continues, or leave --prime out "
                         "for a prime the model picks")
    unknown = unknown_characters(prime, vocab)
    if unknown:
        shown = ", ".join(map(repr, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
        hint = (r"; for a newline or a tab write \n or \t and add --escapes"
                if not escapes and "\\" in unknown and _ESCAPE.search(prime) else "")
        raise ValueError(f"--prime has {len(unknown)} character{'s' if len(unknown) > 1 else ''} not in the "
                         f"model's vocabulary: {shown}; use only its {len(vocab)} characters, which include "
                         f"{vocabulary_preview(vocab)}{hint}")


# Python's string-literal escapes; a backslash before anything else is kept as it is.
_ESCAPE = re.compile(r"\\(?:[\\'\"abfnrtv]|[0-7]{1,3}|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[^}]*\})")


def _expand_escapes(text: str) -> str:
    r"""``text`` with backslash escapes (\n, \t, \\, \x41, \u00e9, \N{name}, ...) expanded, every
    other character kept as it is, non-ASCII ones included.

    (``text.encode().decode("unicode_escape")`` would read the UTF-8 bytes of a non-ASCII
    character as Latin-1: "café" -> "cafÃ©".)
    """
    def expand(match: re.Match) -> str:
        try:
            return codecs.decode(match.group(0), "unicode_escape")
        except UnicodeDecodeError as err:
            raise ValueError(f"--prime has an invalid escape {match.group(0)!r} ({err.reason})") from None

    return _ESCAPE.sub(expand, text)
