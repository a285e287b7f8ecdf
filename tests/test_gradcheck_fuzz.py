"""check_gradients with its default settings over 2,000 random small correct models: no false
failure; and planted derivation errors still fail it.

A false failure is what a relative-only test gave on about 1.5% of such models, e.g. an h0 whose
gradient is 1e-10 in absolute terms and so is all rounding noise in relative terms. Each model is
drawn from its own seed, so a failure names the seed that reproduces it.
"""

import numpy as np
import pytest

import rnngrad
from conftest import COMBOS, make_targets

MODELS = 2000


def random_case(seed: int):
    """A small random model and problem: any (f, g, loss), 1-2 layers, either direction, float32
    or float64, float or token inputs, optional h0, mask, lengths and "mean"."""
    rng = np.random.default_rng(seed)
    f, g, l = COMBOS[rng.integers(len(COMBOS))]
    D, H = (int(v) for v in rng.integers(1, 5, 2))
    O = int(rng.integers(2, 5))
    layers, bi = int(rng.integers(1, 3)), bool(rng.integers(2))
    m = rnngrad.RNN(D, H, O, hidden_activation=f, output_activation=g, loss=l, num_layers=layers,
                    bidirectional=bi, dtype=[np.float64, np.float32][rng.integers(2)], seed=seed)
    T, B = (int(v) for v in rng.integers(1, 5, 2))
    x = rng.integers(0, D, (T, B)) if rng.uniform() < 0.2 else rng.standard_normal((T, B, D))
    y = make_targets(rng, g, l, T, B, O)
    kw = {"reduction": ["sum", "mean"][rng.integers(2)]}
    if rng.integers(2):
        kw["h0"] = rng.standard_normal((layers * (1 + bi), B, H))
    if rng.integers(2):
        kw["lengths"] = rng.integers(1, T + 1, B)
    elif rng.integers(2) and not bi:
        mask = rng.uniform(size=(T, B)) < 0.7
        mask[0, 0] = True
        kw["mask"] = mask
    return m, x, y, kw


def test_no_false_failures_over_2000_correct_models():
    failed = []
    for seed in range(MODELS):
        m, x, y, kw = random_case(seed)
        report = rnngrad.check_gradients(m, x, y, **kw)
        if not report.passed:
            failed.append((seed, report.table()))
    assert not failed, f"{len(failed)} of {MODELS} correct models failed, e.g. seed {failed[0][0]}:\n{failed[0][1]}"


def test_the_model_a_relative_test_failed_on_passes():
    m = rnngrad.RNN(4, 1, 4, seed=116)
    rng = np.random.default_rng(116)
    x, y = rng.standard_normal((6, 3, 4)), rng.integers(0, 4, (6, 3))
    report = rnngrad.check_gradients(m, x, y, h0=rng.standard_normal((3, 1)))
    assert report.passed, report.table()


# Planted errors of the kinds a derivation gets wrong; each must fail the check on every model
# where it changes the gradient by more than rounding.
def _scale_largest(res, factor):
    name = max(res.grads, key=lambda k: float(np.abs(res.grads[k]).max()))
    res.grads[name] = res.grads[name] * factor


def _transpose_W_h(res):
    res.grads["W_h"] = res.grads["W_h"].T.copy()  # dz h^T written as h dz^T


BUGS = {"1e-3 relative on the largest gradient": lambda res: _scale_largest(res, 1 + 1e-3),
        "sign of the largest gradient": lambda res: _scale_largest(res, -1.0),
        "W_h transposed": _transpose_W_h}


@pytest.mark.parametrize("bug", BUGS)
def test_planted_errors_still_fail(bug, monkeypatch):
    real = rnngrad.network.backward

    def broken(*args, **kwargs):
        res = real(*args, **kwargs)
        BUGS[bug](res)
        return res

    caught = changed = 0
    for seed in range(100):
        m, x, y, kw = random_case(seed)
        m = m.astype(np.float64)
        clean = m.gradients(x, y, **kw)
        with monkeypatch.context() as mp:
            mp.setattr("rnngrad.network.backward", broken)
            wrong = m.gradients(x, y, **kw)
            err = max(float(np.abs(wrong.grads[k] - clean.grads[k]).max()) for k in clean.grads)
            scale = max(float(np.abs(clean.grads[k]).max()) for k in clean.grads)
            if err <= 1e-6 * max(scale, 1e-3):  # the bug changes nothing measurable on this model
                continue
            changed += 1
            caught += not rnngrad.check_gradients(m, x, y, **kw).passed
    assert changed >= 50 and caught == changed, (caught, changed)
