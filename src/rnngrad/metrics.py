"""metrics.jsonl: one JSON object per logged step, written line by line and read back strictly.

A row is ``{"step", "epoch", "train_loss", "val_loss", "grad_norm", "tokens_per_s",
"elapsed_s"}`` (:class:`LogRow`). The file is always valid JSON Lines: a non-finite number is
written as null. Reading (for ``--resume``) takes a row only if it is a JSON object with exactly
these keys and types and a step above the previous row's; anything else in the middle of the
file (a blank line, junk, a duplicate, a row of the wrong types) is skipped and counted, never
costing a later valid row; a last line without its newline (cut by a crash) is dropped.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields

__all__ = ["LogRow", "parse_metrics", "ROW_KEYS"]


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

    def to_json(self) -> str:
        """One JSON object, valid JSON Lines: a non-finite number is written as null (JSON has no
        NaN or Infinity; Python's json would write the non-standard tokens)."""
        return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in asdict(self).items()}, allow_nan=False)


ROW_KEYS = tuple(f.name for f in fields(LogRow))
# Keys whose value may be null: no gradient norm or throughput on the row before any update, and
# any number that was not finite when written.
_NULLABLE = frozenset(ROW_KEYS) - {"step"}


def _valid_row(row) -> bool:
    if not isinstance(row, dict) or set(row) != set(ROW_KEYS):
        return False
    step = row["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return False
    for key in ROW_KEYS[1:]:
        value = row[key]
        if value is None and key in _NULLABLE:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
    return True


def parse_metrics(text: str) -> tuple[list[dict], list[int]]:
    """(valid rows in order, 1-based numbers of the lines skipped) of a metrics.jsonl text.

    A torn last line (no newline: the write was cut) is dropped without being counted.
    """
    # What follows the last newline is "" when the file is whole, else a row cut short: dropped.
    complete = text.split("\n")[:-1]
    rows, skipped = [], []
    for number, line in enumerate(complete, start=1):
        try:
            row = json.loads(line, parse_constant=lambda token: None)  # NaN/Infinity of old files
        except ValueError:
            row = None
        if _valid_row(row) and (not rows or row["step"] > rows[-1]["step"]):
            rows.append(row)
        else:
            skipped.append(number)
    return rows, skipped
