"""Character-level text: a vocabulary, UTF-8 files checked on the way in, and a default corpus.

Nothing is downloaded and no text is copied into the repository: :func:`default_corpus`
reads source files of the Python standard library that is running this code.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
import sysconfig
from typing import Iterable

import numpy as np

from ..validation import check_positive_int

__all__ = [
    "Vocabulary",
    "load_text",
    "MAX_TEXT_BYTES",
    "default_corpus",
    "default_corpus_paths",
    "DEFAULT_CORPUS_FILES",
]

# Standard-library modules whose source is mostly English prose (docstrings, comments) around
# readable code, and which exist in every CPython from 3.11 on. Fixed and sorted so the corpus is
# the same on every run of one Python installation; its exact bytes differ between Python versions.
DEFAULT_CORPUS_FILES = (
    "abc.py",
    "argparse.py",
    "bisect.py",
    "calendar.py",
    "contextlib.py",
    "copy.py",
    "difflib.py",
    "fnmatch.py",
    "fractions.py",
    "functools.py",
    "glob.py",
    "heapq.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "sched.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
)


class Vocabulary:
    """A bijection between the distinct characters of a text and the integers 0..V-1.

    Characters are sorted by code point, so the same set of characters always gives the
    same indices. Token indices feed :class:`rnngrad.RNN` directly as x of shape (T, B)
    with ``input_size = output_size = len(vocab)``.

    Parameters
    ----------
    chars : iterable of single characters (duplicates are merged), or a string
    """

    def __init__(self, chars: Iterable[str]):
        if isinstance(chars, (bytes, bytearray)):
            raise TypeError("chars must be a str or an iterable of characters; got bytes (decode them first)")
        chars = sorted(set(chars))
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise TypeError(f"chars must be single characters; got {bad[0]!r}")
        if not chars:
            raise ValueError("chars is empty; a vocabulary needs at least one character")
        self.chars = tuple(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        # Sorted code points: encode is one vectorised binary search, index i <-> chars[i].
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        """The vocabulary of every distinct character in ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        return cls(text)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"

    def encode(self, text: str) -> np.ndarray:
        """(N,) int64 indices of the N characters of ``text``; ValueError for a character not in it."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        out = np.searchsorted(self._codes, codes)
        known = self._codes[np.minimum(out, len(self._codes) - 1)] == codes
        if not known.all():
            pos = int(np.argmin(known))
            raise ValueError(
                f"text has the character {text[pos]!r} (at index {pos}) that is not in the vocabulary "
                f"of {len(self)} characters"
            )
        return out

    def decode(self, ids) -> str:
        """The string for a sequence of indices (any shape is read in C order)."""
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"ids must be integer token indices; got dtype {arr.dtype}")
        arr = arr.ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= len(self)):
            raise ValueError(f"ids must lie in [0, {len(self)}); got values from {arr.min()} to {arr.max()}")
        return "".join(self.chars[i] for i in arr.tolist())

    def to_json(self) -> str:
        """A JSON string ``{"chars": "..."}`` that :meth:`from_json` reads back."""
        return json.dumps({"chars": "".join(self.chars)}, ensure_ascii=True)

    @classmethod
    def from_json(cls, data: str) -> "Vocabulary":
        """The vocabulary written by :meth:`to_json`; ValueError for anything else."""
        try:
            obj = json.loads(data)
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"vocabulary JSON could not be parsed: {err}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("chars"), str):
            raise ValueError('vocabulary JSON must be an object {"chars": "<the characters>"}')
        chars = obj["chars"]
        if len(set(chars)) != len(chars) or list(chars) != sorted(chars):
            raise ValueError("vocabulary JSON 'chars' must be distinct characters in sorted order")
        return cls(chars)


#: Default limit on the size of a text file (raise it with ``max_bytes``; the CLI's --max-text-bytes).
MAX_TEXT_BYTES = 256 << 20
_CHUNK = 1 << 20


def load_text(path, min_length: int = 1, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped).

    Parameters
    ----------
    path : str or os.PathLike, a regular file
    min_length : int, default 1
        Fewest characters accepted, e.g. ``B * k + 1`` for one chunk of k steps over
        B streams plus the shifted target.
    max_bytes : int, default :data:`MAX_TEXT_BYTES` (256 MiB)
        Largest file accepted.

    Raises
    ------
    ValueError
        The path is not a regular file (a directory, a device such as /dev/zero, a FIFO: refused
        before anything is read), the file is larger than ``max_bytes``, empty, binary (holds NUL
        bytes) or not valid UTF-8, or has fewer than ``min_length`` characters. The file is read
        in chunks and each condition is checked as it streams, so a bad file is refused at its
        first bad byte. A missing file raises FileNotFoundError.
    """
    min_length = check_positive_int("min_length", min_length)
    max_bytes = check_positive_int("max_bytes", max_bytes)
    path = os.fspath(path)
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        _check_regular(os.fstat(fd), path, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        text = _decode_streaming(fh, path, max_bytes)
    if not text:
        raise ValueError(f"text file {path!r} is empty")
    if len(text) < min_length:
        raise ValueError(
            f"text file {path!r} is too short: {len(text)} character{'' if len(text) == 1 else 's'}, need at least {min_length}"
        )
    return text


def _check_regular(st: os.stat_result, path: str, max_bytes: int) -> None:
    """Refuse, before any byte is read, what is not a regular file or is larger than ``max_bytes``."""
    mode = st.st_mode
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise ValueError(f"text file {path!r} is {kind}; expected a regular UTF-8 text file")
    if st.st_size > max_bytes:
        raise ValueError(f"text file {path!r} has {st.st_size} bytes, more than the limit of {max_bytes}; "
                         f"raise it with --max-text-bytes (load_text's max_bytes) if you mean it")


def _decode_streaming(fh, path: str, max_bytes: int) -> str:
    """UTF-8 text of ``fh`` read a chunk at a time, NUL bytes, invalid UTF-8 and the size limit
    checked in each chunk (the file may grow while it is read)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    parts, offset = [], 0
    while True:
        chunk = fh.read(_CHUNK)
        if not chunk:
            break
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise ValueError(f"text file {path!r} looks binary (a NUL byte at offset {offset + nul}); "
                             f"expected UTF-8 text")
        try:
            parts.append(decoder.decode(chunk))
        except UnicodeDecodeError as err:
            at = offset + err.start
            raise ValueError(f"text file {path!r} is not valid UTF-8 (byte {chunk[err.start]:#04x} at offset "
                             f"{at}); convert it to UTF-8 first") from None
        offset += len(chunk)
        if offset > max_bytes:
            raise ValueError(f"text file {path!r} has more than {max_bytes} bytes (the limit); raise it with "
                             f"--max-text-bytes (load_text's max_bytes) if you mean it")
    try:
        parts.append(decoder.decode(b"", final=True))
    except UnicodeDecodeError:
        raise ValueError(f"text file {path!r} is not valid UTF-8 (it ends inside a character); "
                         f"convert it to UTF-8 first") from None
    return "".join(parts)


def default_corpus_paths() -> list[str]:
    """The absolute paths :func:`default_corpus` reads, in order: each name of
    :data:`DEFAULT_CORPUS_FILES` under ``sysconfig.get_paths()["stdlib"]`` that exists."""
    stdlib = sysconfig.get_paths()["stdlib"]
    paths = [os.path.join(stdlib, name) for name in DEFAULT_CORPUS_FILES]
    return [p for p in paths if os.path.isfile(p)]


def default_corpus(max_chars: int | None = None) -> str:
    """A built-in training text: source files of the running Python's standard library.

    Reads, in this order, the files of :data:`DEFAULT_CORPUS_FILES` (``abc.py``,
    ``argparse.py``, ``bisect.py``, ``calendar.py``, ``contextlib.py``, ``copy.py``,
    ``difflib.py``, ``fnmatch.py``, ``fractions.py``, ``functools.py``, ``glob.py``,
    ``heapq.py``, ``pprint.py``, ``queue.py``, ``random.py``, ``sched.py``,
    ``statistics.py``, ``string.py``, ``textwrap.py``) from the directory
    ``sysconfig.get_paths()["stdlib"]``, skipping any that this installation lacks, and
    joins them with a blank line. About 512,000 characters (100 distinct) on CPython 3.11: Python
    code with English docstrings and comments. Nothing is downloaded or stored.

    The result is the same on every call for one Python installation (it may differ
    between Python versions).

    Parameters
    ----------
    max_chars : int, optional
        Keep only the first ``max_chars`` characters; default all.

    Raises
    ------
    ValueError
        None of the files exists (a Python installed without its library sources).
    """
    if max_chars is not None:
        max_chars = check_positive_int("max_chars", max_chars)
    paths = default_corpus_paths()
    if not paths:
        raise ValueError(
            f"no default corpus: none of {list(DEFAULT_CORPUS_FILES)} is in "
            f"{sysconfig.get_paths()['stdlib']!r}; pass a text file instead"
        )
    parts, total = [], 0
    for p in paths:
        parts.append(load_text(p))
        total += len(parts[-1]) + 2
        if max_chars is not None and total >= max_chars:
            break
    text = "\n\n".join(parts)
    return text if max_chars is None else text[:max_chars]
