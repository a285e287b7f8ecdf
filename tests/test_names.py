"""Every name the issues' contracts list, called exactly as written there (the detailed proofs are
in the modules' own test files; these check the names, the shapes and one independent value)."""

import json

import numpy as np
import pytest

import rnngrad
from rnngrad.cli import main


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    model = rnngrad.RNN(3, 5, 4, seed=0, dtype=np.float64)
    x, y = rng.standard_normal((7, 2, 3)), rng.integers(0, 4, (7, 2))
    return model, x, y, rng


def test_calculation_names(problem):
    model, x, y, rng = problem
    T, g = x.shape[0], model.gradients(x, y)
    c = rnngrad.per_step_contributions(model, x, y)
    assert all(c.norms[n].shape == (T,) for n in model.params) and c.influence.shape == (T, T)
    assert np.allclose(c.terms("W_h").sum(axis=0), g.grads["W_h"], rtol=1e-12, atol=1e-14)
    tangents = {k: rng.standard_normal(v.shape) for k, v in model.params.items()}
    loss, dloss = rnngrad.jvp(model, x, y, tangents)
    assert loss == pytest.approx(g.loss) and dloss == pytest.approx(sum((g.grads[k] * tangents[k]).sum() for k in g.grads))
    r = rnngrad.rtrl_gradients(model, x, y)
    assert type(r) is type(g) and all(np.allclose(r.grads[k], g.grads[k], rtol=1e-10) for k in g.grads)
    Hv, Gv = rnngrad.hvp(model, x, y, tangents), rnngrad.gnvp(model, x, y, tangents)
    assert set(Hv) == set(Gv) == set(model.params)
    assert sum((tangents[k] * Gv[k]).sum() for k in Gv) >= 0  # Gauss-Newton: v'Gv >= 0 (softmax + cross-entropy)
    lam = rnngrad.lyapunov(model, x, h0=None, k=None)
    assert lam.shape == (model.hidden_size,) and np.all(np.diff(lam) <= 0)
    assert rnngrad.lyapunov(model, x, k=2).shape == (2,)


def test_cli_names_of_training(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--task", "copy", "-k", "12", "-H", "8", "--steps", "10", "--log-every", "5",
                 "--optimizer", "adamw", "--weight-decay", "0.05", "--lr-schedule", "warmup=2,cosine",
                 "--early-stopping", "4", "--threads", "1", "--out", str(run), "--no-progress"]) == 0
    loaded = rnngrad.load(run)
    assert loaded.config.weight_decay == 0.05 and loaded.config.early_stopping == 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("val_accuracy" in r and "lr" in r for r in rows)
    assert main(["train", "--task", "adding", "--optimizer", "adam", "--weight-decay", "0.1"]) == 2
    assert "--weight-decay" in capsys.readouterr().err
