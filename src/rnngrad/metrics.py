"""metrics.jsonl: one JSON object per logged step, written line by line and read back strictly.

A row is ``{"step", "epoch", "train_loss", "val_loss", "grad_norm", "tokens_per_s",
"elapsed_s"}`` (:class:`LogRow`), plus, where they apply, ``lr`` (the learning rate of the
step's update), ``val_bpc`` and ``val_perplexity`` (text) and ``val_accuracy`` (classification
tasks); an optional key that does not apply is left out. The file is always valid JSON Lines:
a non-finite number is written as null. Reading (for ``--resume``) takes a row only if it is a
JSON object with every required key, no unknown key, numbers where numbers belong, and a step
above the previous row's; anything else in the middle of the
file (a blank line, junk, a duplicate, a row of the wrong types) is skipped and counted, never
costing a later valid row; a last line without its newline (cut by a crash) is dropped.
"""

from __future__ import annotations

import bisect
import json
import os
import stat
import math
import numbers
from dataclasses import asdict, dataclass, fields

__all__ = ["LogRow", "parse_metrics", "read_metrics_file", "ROW_KEYS", "REQUIRED_KEYS", "OPTIONAL_KEYS"]


@dataclass
class LogRow:
    """One line of metrics.jsonl."""

    step: int
    epoch: float
    train_loss: float
    val_loss: float
    grad_norm: float | None
    tokens_per_s: float | None
    elapsed_s: float
    lr: float | None = None
    val_bpc: float | None = None
    val_perplexity: float | None = None
    val_accuracy: float | None = None

    def to_json(self) -> str:
        """One JSON object, valid JSON Lines: a non-finite number is written as null (JSON has no
        NaN or Infinity; Python's json would write the non-standard tokens); an optional key whose
        value is None (it does not apply to this run) is left out."""
        return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in asdict(self).items() if not (k in OPTIONAL_KEYS and v is None)},
                          allow_nan=False)


#: Every key a row may have; the first ones are in every row, OPTIONAL_KEYS only where they apply.
ROW_KEYS = tuple(f.name for f in fields(LogRow))
OPTIONAL_KEYS = ("lr", "val_bpc", "val_perplexity", "val_accuracy")
REQUIRED_KEYS = tuple(k for k in ROW_KEYS if k not in OPTIONAL_KEYS)
# Keys whose value may be null: no gradient norm or throughput on the row before any update, and
# any number that was not finite when written.
_NULLABLE = frozenset(ROW_KEYS) - {"step"}


def _valid_row(row) -> bool:
    if not isinstance(row, dict) or not set(REQUIRED_KEYS) <= set(row) <= set(ROW_KEYS):
        return False
    step = row["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return False
    for key in ROW_KEYS[1:]:
        if key not in row:
            continue
        value = row[key]
        if value is None and key in _NULLABLE:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
    return True


#: A row is a few hundred characters; a line far longer is not one (and a torn one is reported).
MAX_ROW_CHARS = 1 << 16
#: The largest metrics.jsonl read back (about a million rows).
MAX_METRICS_BYTES = 256 << 20


def read_metrics_file(path) -> tuple[list[dict], list[int]]:
    """:func:`parse_metrics` of the file at ``path``: a regular file of at most MAX_METRICS_BYTES
    (a link to /dev/zero, a FIFO or a file of gigabytes is refused with one line, before it is read)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{os.fspath(path)!r} is not a regular file; a run's metrics.jsonl is one (move this "
                         f"away and resume: the rows after the checkpoint are logged again)")
    if st.st_size > MAX_METRICS_BYTES:
        raise ValueError(f"{os.fspath(path)!r} has {st.st_size} bytes, more than any run writes "
                         f"({MAX_METRICS_BYTES}); it is not a metrics file: move it away and resume")
    with open(path, "rb") as fh:
        text = fh.read(MAX_METRICS_BYTES + 1).decode("utf-8", errors="replace")
    return parse_metrics(text)


def parse_metrics(text: str) -> tuple[list[dict], list[int]]:
    """(valid rows in order, 1-based numbers of the lines skipped) of a metrics.jsonl text.

    Of the valid rows, the longest run with strictly increasing steps is kept (the earliest
    lines where two runs are as long): a stray row in the middle (a copy of a later row, a row of
    another run) then costs only itself, never the genuine rows after it. A torn last line (no
    newline: the write was cut) is dropped without being counted.
    """
    # What follows the last newline is "" when the file is whole, else a row cut short: dropped.
    # A "torn" line far longer than any row is not a cut row but something else: counted.
    lines = text.split("\n")
    complete = lines[:-1]
    valid, skipped = [], []
    if len(lines[-1]) > MAX_ROW_CHARS:
        skipped.append(len(lines))
    for number, line in enumerate(complete, start=1):
        try:
            row = json.loads(line, parse_constant=lambda token: None)  # NaN/Infinity of old files
        except (ValueError, RecursionError):
            row = None
        if _valid_row(row):
            valid.append((number, row))
        else:
            skipped.append(number)
    kept = _longest_increasing([row["step"] for _, row in valid])
    keep = set(kept)
    skipped.extend(number for i, (number, _) in enumerate(valid) if i not in keep)
    return [valid[i][1] for i in kept], sorted(skipped)


def _longest_increasing(steps: list[int]) -> list[int]:
    """Indices of a longest strictly increasing subsequence of ``steps`` (patience sorting,
    O(n log n)); a repeated step keeps its first row."""
    tails, tail_index, previous = [], [], [-1] * len(steps)
    for i, step in enumerate(steps):
        k = bisect.bisect_left(tails, step)
        if k == len(tails):
            tails.append(step)
            tail_index.append(i)
        elif step < tails[k]:
            tails[k], tail_index[k] = step, i
        else:  # equal to the tail: a duplicate step, which never extends the run
            continue
        previous[i] = tail_index[k - 1] if k else -1
    out, i = [], tail_index[-1] if tail_index else -1
    while i >= 0:
        out.append(i)
        i = previous[i]
    return out[::-1]
