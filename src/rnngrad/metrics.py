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

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields

__all__ = ["LogRow", "parse_metrics", "ROW_KEYS", "REQUIRED_KEYS", "OPTIONAL_KEYS"]


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
