"""Online training by RTRL (TrainConfig(gradient="rtrl"), rnngrad train --gradient rtrl)."""

import numpy as np
import pytest

from rnngrad.train import Trainer
from test_train import comparable, small, text_file  # noqa: F401  (the fixture)


def rtrl(text_file, **kw):  # noqa: F811
    return small(text_file, gradient="rtrl", **kw)


def test_the_first_update_equals_bptt_over_the_first_chunk(tmp_path, text_file):  # noqa: F811
    """From h = 0 and P = 0 the RTRL gradient of a chunk is the exact gradient over it, as BPTT's."""
    a, b = Trainer(rtrl(text_file, steps=1), tmp_path / "rtrl"), Trainer(small(text_file, steps=1), tmp_path / "bptt")
    batch = a.data.batch(0, a.config)
    ra, rb = a.batch_gradients(batch, None, None), b.batch_gradients(batch, None, None)
    assert ra.loss == pytest.approx(rb.loss, rel=1e-13)
    for name in rb.grads:
        np.testing.assert_allclose(ra.grads[name], rb.grads[name], rtol=1e-10, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(ra.h_last.reshape(rb.h_last.shape), rb.h_last, rtol=1e-13)


def test_later_chunks_reach_back_past_the_cut(tmp_path, text_file):  # noqa: F811
    """The second chunk's RTRL gradient differs from truncated BPTT's: it includes the earlier steps."""
    a = Trainer(rtrl(text_file, steps=2), tmp_path / "rtrl")
    b0, b1 = a.data.batch(0, a.config), a.data.batch(1, a.config)
    first = a.batch_gradients(b0, None, None)
    second = a.batch_gradients(b1, first.h_last, None)
    bptt = a.model.gradients(b1.x, b1.y, h0=first.h_last, reduction="mean")
    assert second.loss == pytest.approx(bptt.loss, rel=1e-12)  # the same forward pass
    assert not np.allclose(second.grads["W_h"], bptt.grads["W_h"], rtol=1e-6)


def test_rtrl_training_learns_and_resumes_exactly(tmp_path, text_file):  # noqa: F811
    whole = Trainer(rtrl(text_file, steps=30, lr=0.02), tmp_path / "whole")
    whole.run()
    rows = whole.progress.rows
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.3
    part = Trainer(rtrl(text_file, steps=30, lr=0.02), tmp_path / "part")
    part.run(should_stop=lambda: part.progress.step == 11)  # mid-epoch: P is saved and restored
    rest = Trainer.resume(tmp_path / "part")
    rest.run()
    assert comparable(rest.progress.rows) == comparable(rows)
    for name in whole.model.params:
        assert np.array_equal(rest.model.params[name], whole.model.params[name]), name


@pytest.mark.parametrize("kw", [dict(task="adding"), dict(bidirectional=True, task="adding"),
                                dict(num_layers=2, dropout=0.1)])
def test_rtrl_refuses_what_it_cannot_train(text_file, kw):  # noqa: F811
    with pytest.raises(ValueError, match=r"gradient \(--gradient\) rtrl trains online"):
        rtrl(None if "task" in kw else text_file, **kw).validate()


def test_cli_trains_with_rtrl(tmp_path, text_file, capsys):  # noqa: F811
    from rnngrad.cli import main
    assert main(["train", "--text", text_file, "--gradient", "rtrl", "-H", "8", "-k", "8", "-B", "2", "--steps", "10",
                 "--log-every", "5", "--val-fraction", "0.1", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert "step 10: train loss" in capsys.readouterr().out
    assert sorted(k for k in np.load(tmp_path / "r" / "checkpoint.npz").files if "rtrl" in k) == ["state/rtrl_P0"]
