"""Finite differences: the second independent oracle, and check_gradients itself."""

import numpy as np
import pytest

import rnngrad
import rnngrad.network
from rnngrad.cli import random_problem
from conftest import COMBOS, all_grads


@pytest.mark.parametrize("f,g,l", COMBOS)
def test_every_combination_matches_finite_differences(rng, f, g, l):
    m = rnngrad.RNN(3, 4, 3, hidden_activation=f, output_activation=g, loss=l, seed=int(rng.integers(1000)))
    x, y = random_problem(m, 5, 2, rng)
    h0 = rng.standard_normal((2, 4)) * 0.5
    mask = np.array([[1, 1], [1, 1], [1, 0], [1, 0], [0, 0]])
    if f == "relu":
        # A large step may cross ReLU's kink; the three-point rule with a small step cannot resolve
        # better than its rounding error u·|L|/eps ~ 1e-9 relative.
        report = rnngrad.check_gradients(m, x, y, h0=h0, mask=mask, eps=1e-6, order=2, rtol=1e-7)
    else:
        # Five-point stencil: truncation O(eps^4), rounding ~1e-12/eps: about 1e-10 at eps = 1e-3.
        report = rnngrad.check_gradients(m, x, y, h0=h0, mask=mask, eps=1e-3, order=4, rtol=1e-9)
    assert report.passed, report.table()
    assert set(report.entries) == {"W_x", "W_h", "b_h", "W_y", "b_y", "x", "h0"}
    assert report["x"].checked == 5 * 2 * 3


def test_detects_a_wrong_gradient(rng, monkeypatch):
    """Break one gradient by 1e-4 relative: the check must fail on it and only on it."""
    m = rnngrad.RNN(3, 4, 3, seed=0)
    x, y = random_problem(m, 4, 2, rng)
    real = rnngrad.network.backward

    def broken(*args, **kwargs):
        res = real(*args, **kwargs)
        res.grads["W_h"] = res.grads["W_h"] * (1 + 1e-4)
        return res

    monkeypatch.setattr("rnngrad.network.backward", broken)
    report = rnngrad.check_gradients(m, x, y)
    assert not report.passed
    assert not report["W_h"].passed and report["W_h"].max_rel_error > 5e-5
    assert all(report[n].passed for n in ["W_x", "b_h", "W_y", "b_y", "x", "h0"])
    assert "| W_h |" in report.table() and "NO" in report.table()


def test_directional_mode(rng):
    m = rnngrad.RNN(6, 20, 5, seed=1)
    x, y = random_problem(m, 12, 3, rng)
    report = rnngrad.check_gradients(m, x, y, directions=3, eps=1e-3, order=4, rtol=1e-9)
    assert report.passed, report.table()
    assert report["W_h"].checked == 3 and "3 directions" in report.mode


def test_float32_model_is_checked_in_float64_and_left_unchanged(rng):
    m = rnngrad.RNN(3, 4, 3, dtype=np.float32, seed=0)
    before = {k: v.copy() for k, v in m.params.items()}
    x, y = random_problem(m, 4, 2, rng)
    report = rnngrad.check_gradients(m, x.astype(np.float32), y)
    assert report.passed, report.table()
    for k in before:
        np.testing.assert_array_equal(m.params[k], before[k])
        assert m.params[k].dtype == np.float32


def test_token_inputs_skip_x(rng):
    m = rnngrad.RNN(5, 4, 5, seed=0)
    x = rng.integers(0, 5, (4, 2))
    report = rnngrad.check_gradients(m, x, rng.integers(0, 5, (4, 2)))
    assert report.passed and "x" not in report.entries


def test_arguments_are_validated(rng):
    m = rnngrad.RNN(3, 4, 3, seed=0)
    x, y = random_problem(m, 4, 2, rng)
    with pytest.raises(ValueError, match="order must be 2 or 4"):
        rnngrad.check_gradients(m, x, y, order=3)
    with pytest.raises(ValueError, match="eps must be a finite positive number; got 0.0"):
        rnngrad.check_gradients(m, x, y, eps=0.0)
    with pytest.raises(TypeError, match="rtol must be a non-negative number; got str 'a'"):
        rnngrad.check_gradients(m, x, y, rtol="a")
    with pytest.raises(ValueError, match="rtol must be a finite non-negative number; got -1.0"):
        rnngrad.check_gradients(m, x, y, rtol=-1)
    # NumPy scalars and ints are numbers too.
    assert rnngrad.check_gradients(m, x, y, eps=np.float64(1e-6), rtol=1).passed
    with pytest.raises(TypeError, match="model must be an rnngrad.RNN"):
        rnngrad.check_gradients("model", x, y)
    with pytest.raises(ValueError, match="seed must be a non-negative integer; got -1"):
        rnngrad.check_gradients(m, x, y, directions=2, seed=-1)
    with pytest.raises(TypeError, match="seed must be None, a non-negative integer"):
        rnngrad.check_gradients(m, x, y, seed="a")
    with pytest.raises(ValueError, match=r"x must have shape"):
        rnngrad.check_gradients(m, x[0], y)


def test_an_entry_passes_on_the_relative_or_the_absolute_test(rng):
    """passed == (max_rel_error <= rtol or max_abs_error <= atol), per entry; the default atol is the
    rounding floor 8 u max(|L|, 1) / eps, far below the error of a wrong gradient (the planted bug
    above fails with it)."""
    model = rnngrad.RNN(3, 4, 2, num_layers=2, bidirectional=True, seed=0)
    x, y = rng.standard_normal((5, 2, 3)), rng.integers(0, 2, (5, 2))
    report = rnngrad.check_gradients(model, x, y)
    assert report.atol == pytest.approx(8 * np.finfo(np.float64).eps * max(abs(report.loss), 1) / 1e-6)
    assert report.atol < 1e-7
    for e in report.entries.values():
        assert e.passed == (e.max_rel_error <= report.rtol or e.max_abs_error <= report.atol)
    assert not rnngrad.check_gradients(model, x, y, rtol=0.0, atol=0.0).passed
    assert rnngrad.check_gradients(model, x, y, rtol=0.0, atol=1.0).passed


def test_a_gradient_that_is_exactly_zero_passes(rng):
    """The loss at each sequence's last valid step of a bidirectional stack with h0 = 0: the top
    reverse layer's W_h has an exactly zero gradient (its recursion never reaches a loss)."""
    model = rnngrad.RNN(3, 4, 2, num_layers=2, bidirectional=True, seed=0)
    x, y = rng.standard_normal((5, 2, 3)), rng.integers(0, 2, (5, 2))
    lengths = np.array([5, 3])
    last = np.zeros((5, 2), bool)
    last[lengths - 1, np.arange(2)] = True
    assert not model.gradients(x, y, mask=last, lengths=lengths).grads["W_h_l1_reverse"].any()
    report = rnngrad.check_gradients(model, x, y, mask=last, lengths=lengths)
    assert report.passed, report.table()
