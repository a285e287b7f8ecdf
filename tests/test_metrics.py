"""metrics.jsonl read back strictly: bad rows in the middle are skipped, never later valid ones."""

import json

import pytest

from rnngrad.metrics import LogRow, parse_metrics
from rnngrad.train import Trainer
from test_train import small, text_file  # noqa: F401  (the fixture)


def row(step, **kw):
    r = {"step": step, "epoch": step / 10, "train_loss": 1.0, "val_loss": 2.0, "grad_norm": 0.5,
         "tokens_per_s": 100.0, "elapsed_s": 0.1 * step}
    r.update(kw)
    return json.dumps(r)


def test_junk_in_the_middle_costs_no_later_row():
    lines = [row(0), row(10), "", "junk {", row(20), json.dumps({"train_loss": 1.0}),  # no step
             row(30, val_loss="x"), row(30, grad_norm=True), row(20),  # wrong types; a step not above 20
             row(30), '[1, 2]', row(40, extra=1), row(40)]
    rows, skipped = parse_metrics("\n".join(lines) + "\n" + row(50)[:20])  # a torn last line
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40]
    assert skipped == [3, 4, 6, 7, 8, 9, 11, 12]


def test_nulls_and_old_nan_tokens_are_read_as_missing_values():
    rows, skipped = parse_metrics(row(0, grad_norm=None, tokens_per_s=None) + "\n"
                                  + '{"step": 5, "epoch": 0.5, "train_loss": NaN, "val_loss": 1.0, '
                                    '"grad_norm": Infinity, "tokens_per_s": 3.0, "elapsed_s": 1.0}\n')
    assert skipped == [] and rows[1]["train_loss"] is None and rows[1]["grad_norm"] is None


def test_a_row_round_trips():
    r = LogRow(step=7, epoch=0.7, train_loss=1.5, val_loss=1.25, grad_norm=None, tokens_per_s=None, elapsed_s=2.0)
    rows, skipped = parse_metrics(r.to_json() + "\n")
    assert rows == [json.loads(r.to_json())] and skipped == []


def test_resume_skips_bad_rows_with_one_warning_and_keeps_every_later_row(tmp_path, text_file):  # noqa: F811
    cfg = small(text_file, checkpoint_every=30)
    t = Trainer(cfg, tmp_path)
    t.run()
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[2:2] = ["", "junk", json.dumps({"epoch": 1})]
    path.write_text("\n".join(lines) + "\n")
    warnings = []
    r = Trainer.resume(tmp_path, warn=warnings.append)
    assert [row["step"] for row in r.progress.rows] == [0, 5, 10, 15, 20, 25, 30]
    assert len(warnings) == 1 and "skipped 3 unreadable, invalid or out-of-order rows (lines 3, 4, 5)" in warnings[0]
    # The file is rewritten with the valid rows only.
    assert [json.loads(s)["step"] for s in path.read_text().splitlines()] == [0, 5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize("bad", ['{"step": 3}', '{"step": -1, "epoch": 0}'])
def test_invalid_rows_never_raise(bad):
    rows, skipped = parse_metrics(bad + "\n")
    assert rows == [] and skipped == [1]


def test_a_stray_later_row_in_the_middle_costs_only_itself():
    """A copy of the step-95 row placed after step 45: strictly increasing steps alone would keep it
    and drop the genuine rows 50..90 after it; the longest increasing run keeps them."""
    from rnngrad.metrics import LogRow, parse_metrics

    rows = [LogRow(step=s, epoch=0.0, train_loss=1.0, val_loss=float(s), grad_norm=None, tokens_per_s=None,
                   elapsed_s=0.0).to_json() for s in range(0, 101, 5)]
    lines = rows[:10] + [rows[19]] + rows[10:]
    kept, skipped = parse_metrics("\n".join(lines) + "\n")
    assert [r["step"] for r in kept] == list(range(0, 101, 5)) and skipped == [11]
    kept, skipped = parse_metrics("\n".join(rows[:5] + [rows[4]] + rows[5:]) + "\n")  # a duplicate
    assert len(kept) == 21 and skipped == [6]
    kept, skipped = parse_metrics("\n".join(rows) + "\n" + "x" * 100000)  # no row is that long
    assert len(kept) == 21 and skipped == [22]
