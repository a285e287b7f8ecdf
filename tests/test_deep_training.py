"""Stacked and bidirectional networks everywhere the network goes: training (exact resume with
dropout), the lookahead task, sequence lengths, checkpoints (old format included) and the CLI."""

import json

import numpy as np
import pytest
import torch

import rnngrad
from oracle import nn_rnn_reference
from rnngrad.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from rnngrad.cli import main
from rnngrad.data import TASKS, lookahead_task
from rnngrad.train import TrainConfig, Trainer
from test_train import TEXT, comparable, small


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return str(p)


# --- the lookahead task ---------------------------------------------------------------------

def test_lookahead_targets_are_future_inputs():
    x, y, mask = lookahead_task(5, 12, 0, delay=3, n_symbols=6)
    assert x.shape == y.shape == mask.shape == (12, 5)
    np.testing.assert_array_equal(y[:9], x[3:])
    assert mask[:9].all() and not mask[9:].any()
    assert x.min() >= 0 and x.max() < 6
    with pytest.raises(ValueError, match="T must exceed delay = 3"):
        lookahead_task(2, 3, 0, delay=3)
    task = TASKS["lookahead"]
    assert (task.input_size, task.output_size, task.baseline) == (8, 8, pytest.approx(np.log(8)))


def test_bidirectional_network_learns_the_future_a_unidirectional_one_cannot(tmp_path):
    """Equal parameter counts (3144 vs 3128): the unidirectional model stays at the baseline
    ln 8, the bidirectional one goes far below it."""
    common = dict(task="lookahead", chunk_len=20, batch_size=32, steps=400, log_every=400,
                  checkpoint_every=400, task_train_size=2000, task_val_size=200, seed=0, lr=1e-2)
    bi = Trainer(TrainConfig(hidden_size=32, bidirectional=True, **common), tmp_path / "bi")
    uni = Trainer(TrainConfig(hidden_size=48, **common), tmp_path / "uni")
    assert sum(p.size for p in bi.model.params.values()) == 3144
    assert sum(p.size for p in uni.model.params.values()) == 3128
    bi.run(), uni.run()
    baseline = np.log(8)
    assert bi.progress.rows[-1]["val_loss"] < 0.25 * baseline
    assert uni.progress.rows[-1]["val_loss"] > 0.97 * baseline


# --- training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["text", "adding", "lookahead"])
def test_deep_run_with_dropout_resumes_exactly(tmp_path, text_file, kind):
    deep = dict(num_layers=2, dropout=0.25, bidirectional=kind != "text")
    cfg = (small(text_file, **deep) if kind == "text" else
           small(task=kind, chunk_len=12, task_train_size=24, task_val_size=8, **deep))
    whole = Trainer(cfg, tmp_path / "whole")
    assert whole.run() == "done"
    part = Trainer(cfg, tmp_path / "part")
    part.run(should_stop=lambda: part.progress.step == 17)
    resumed = Trainer.resume(tmp_path / "part")
    assert (resumed.model.num_layers, resumed.model.bidirectional, resumed.model.dropout) == (2, kind != "text", 0.25)
    resumed.run()
    rows = [[json.loads(s) for s in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("whole", "part")]
    assert comparable(rows[1]) == comparable(rows[0])
    for name in whole.model.params:
        np.testing.assert_array_equal(resumed.model.params[name], whole.model.params[name])


def test_dropout_changes_training_and_the_seed_fixes_it(tmp_path):
    cfg = dict(task="adding", chunk_len=10, task_train_size=16, task_val_size=8, batch_size=4, steps=5,
               log_every=5, checkpoint_every=5, num_layers=2, hidden_size=6, seed=1)
    runs = [Trainer(TrainConfig(dropout=p, **cfg), tmp_path / str(i)) for i, p in enumerate((0.0, 0.5, 0.5))]
    for r in runs:
        r.run()
    W = [r.model.params["W_x_l1"] for r in runs]
    assert not np.array_equal(W[0], W[1])
    np.testing.assert_array_equal(W[1], W[2])


@pytest.mark.parametrize("kwargs, match", [
    (dict(bidirectional=True), "a bidirectional network cannot be trained on text"),
    (dict(dropout=0.2), r"dropout \(--dropout\) acts between stacked layers"),
    (dict(dropout=1.0, num_layers=2), r"dropout \(--dropout\) must lie in \[0, 1\)"),
    (dict(num_layers=0), "num_layers \\(--num-layers\\) must be a positive integer"),
])
def test_bad_deep_config(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kwargs).validate()


# --- sequence lengths -------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_make_padding_enter_no_state_as_packed_sequences(rng, bidirectional):
    T, B, D, H, O = 6, 3, 4, 3, 5
    model = rnngrad.RNN(D, H, O, num_layers=2, bidirectional=bidirectional, seed=2)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, (T, B))
    lengths = np.array([6, 2, 4])
    res = model.gradients(x, y, lengths=lengths)
    mask = np.arange(T)[:, None] < lengths[None, :]
    rnn_state, linear_state = model.torch_state_dict()
    ref_loss, ref, h_n = nn_rnn_reference(rnn_state, linear_state, x, y, num_layers=2,
                                          bidirectional=bidirectional, mask=mask)
    assert res.loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(res.h_last, h_n, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.dx, ref["x"], rtol=1e-10, atol=1e-14)
    assert not res.forward.h[~mask].any()  # zero states at padding, as pad_packed_sequence gives


def test_lengths_let_a_bidirectional_network_weight_single_steps(rng):
    """The loss at each sequence's last valid step only: with lengths, any mask within them; the
    same mask without lengths is refused, naming the fix."""
    T, B, D, H, O = 5, 2, 3, 4, 2
    model = rnngrad.RNN(D, H, O, bidirectional=True, seed=0)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, (T, B))
    lengths = np.array([5, 3])
    last = np.zeros((T, B), bool)
    last[lengths - 1, np.arange(B)] = True
    res = model.gradients(x, y, mask=last, lengths=lengths)
    fd = rnngrad.check_gradients(model, x, y, mask=last, lengths=lengths, eps=1e-3, order=4, rtol=1e-8)
    assert fd.passed, fd.table()
    # Only the last steps count: L equals the sum of the two steps' own losses.
    full = model.forward(x, lengths=lengths)
    p = full.y_hat[lengths - 1, np.arange(B), y[lengths - 1, np.arange(B)]]
    assert res.loss == pytest.approx(-np.log(p).sum(), rel=1e-12)
    with pytest.raises(ValueError, match="pass the sequence lengths as lengths="):
        model.gradients(x, y, mask=last)
    with pytest.raises(ValueError, match=r"mask marks step 3 of sequence 1, which is padding \(lengths\[1\] = 3\)"):
        model.gradients(x, y, mask=np.ones((T, B)), lengths=lengths)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\]"):
        model.gradients(x, y, lengths=[0, 5])
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\)"):
        model.gradients(x, y, lengths=[5, 5, 5])
    with pytest.raises(TypeError, match="lengths must hold integers"):
        model.gradients(x, y, lengths=[5.0, 3.0])


# --- checkpoints ------------------------------------------------------------------------------

def test_deep_checkpoint_round_trip(tmp_path):
    model = rnngrad.RNN(3, 4, 2, num_layers=3, bidirectional=True, dropout=0.1, batch_first=True, seed=4)
    save_checkpoint(tmp_path / "c.npz", model)
    back = model_from_checkpoint(*load_checkpoint(tmp_path / "c.npz"))
    assert repr(back) == repr(model)
    assert list(back.params) == list(model.params)
    for k in model.params:
        np.testing.assert_array_equal(back.params[k], model.params[k])


def test_a_version_1_checkpoint_still_loads(tmp_path):
    """Written as the previous release wrote it: format version 1, no layer or direction keys."""
    model = rnngrad.RNN(3, 4, 2, seed=5)
    payload = {"meta": np.array(json.dumps({"format": "rnngrad-checkpoint", "version": 1, "model": {
        "input_size": 3, "hidden_size": 4, "output_size": 2, "hidden_activation": "tanh",
        "output_activation": "softmax", "loss": "cross_entropy", "dtype": "float64",
        "recurrent_init": "uniform"}}))}
    payload.update({f"param/{k}": v for k, v in model.params.items()})
    np.savez(tmp_path / "old.npz", **payload)
    back = model_from_checkpoint(*load_checkpoint(tmp_path / "old.npz"))
    assert (back.num_layers, back.bidirectional) == (1, False)
    for k in model.params:
        np.testing.assert_array_equal(back.params[k], model.params[k])


def test_a_checkpoint_with_parameters_of_another_model_is_refused(tmp_path):
    from rnngrad.checkpoint import CheckpointError

    model = rnngrad.RNN(3, 4, 2, num_layers=2, seed=5)
    meta, arrays = None, None
    save_checkpoint(tmp_path / "c.npz", model)
    meta, arrays = load_checkpoint(tmp_path / "c.npz")
    meta["model"]["num_layers"] = 1  # the file says one layer but holds two
    with pytest.raises(CheckpointError, match=r"parameters \['param/W_h_l1'.*do not belong"):
        model_from_checkpoint(meta, arrays)


# --- the command line -------------------------------------------------------------------------

def test_cli_gradcheck_of_a_deep_bidirectional_model_with_dropout(capsys):
    assert main(["gradcheck", "-L", "2", "--bidirectional", "--mask", "--dropout", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "| W_h_l1_reverse | (5, 5) |" in out and "| h0 | (4, 3, 5) |" in out
    assert "all gradients match finite differences" in out


def test_cli_trains_a_deep_model_and_flows_through_every_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "lookahead", "-L", "2", "--bidirectional", "--dropout", "0.1", "-H", "6",
                 "-k", "10", "--steps", "6", "--log-every", "3", "--no-progress", "--out", "run"]) == 0
    assert main(["flow", "--checkpoint", "run", "-T", "10", "--out", "f.png"]) == 0
    out = capsys.readouterr().out
    for name in ("layer 0 reverse", "layer 1", "layer 1 reverse"):
        assert f"trained tanh, {name} |" in out
    assert "loss at every step (a bidirectional model)" in out
    assert (tmp_path / "f.png").is_file()


def test_cli_refuses_a_bidirectional_text_model_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--bidirectional", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --task, or drop --bidirectional" in err[0]


def test_a_trainer_refuses_a_model_its_configuration_does_not_describe(tmp_path, text_file):
    cfg = small(text_file)
    bi = rnngrad.RNN(29, cfg.hidden_size, 29, bidirectional=True)
    with pytest.raises(ValueError, match="a bidirectional model cannot be trained on text"):
        Trainer(cfg, tmp_path, model=bi)
    deep = rnngrad.RNN(29, cfg.hidden_size, 29, num_layers=2)
    with pytest.raises(ValueError, match="model has num_layers=2 but the configuration says 1"):
        Trainer(cfg, tmp_path, model=deep)


def test_a_reverse_units_flow_ratio_is_taken_in_its_own_time(rng):
    from rnngrad.diagnostics import flow_ratio, layer_flows

    model = rnngrad.RNN(3, 4, 2, bidirectional=True, output_activation="identity", loss="mse", seed=2)
    flows = layer_flows(model, rng.standard_normal((8, 2, 3)), rng.standard_normal((8, 2, 2)))
    assert flows[0].ratio == flow_ratio(flows[0].norms)
    assert flows[1].ratio == flow_ratio(flows[1].norms[::-1])
