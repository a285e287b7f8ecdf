"""The shortcuts of the hot path equal the plain computations they replace.

Oracles: NumPy's element-wise isfinite / min / max, the log-sum-exp form of softmax
cross-entropy, binary cross-entropy in extended precision, and the two-product form of dW_h.
"""

import warnings

import numpy as np

import pytest

from rnngrad import RNN
from rnngrad.activations import Sigmoid, Softmax
from rnngrad.engines import NumpyEngine
from rnngrad.layer import layer_backward, layer_forward
from rnngrad.losses import (
    _sigmoid_binary_cross_entropy,
    _softmax_cross_entropy,
    _softmax_cross_entropy_rows,
    softmax_cross_entropy_index,
)
from rnngrad.validation import _out_of_range, all_finite


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_every_non_finite_entry(rng, dtype, bad):
    a = rng.standard_normal((5, 7)).astype(dtype)
    assert all_finite(a) and all_finite(a.T) and all_finite(a[:, ::2])
    for idx in [(0, 0), (4, 6), (2, 3)]:
        b = a.copy()
        b[idx] = bad
        assert not all_finite(b) and not all_finite(b.T)
        assert all_finite(b[:, ::2]) == bool(np.isfinite(b[:, ::2]).all())


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e30), (np.float64, 1e200)])
def test_all_finite_accepts_huge_finite_values(dtype, big):
    """v·v overflows to inf here; the exact element-wise test decides, silently: no warning
    and no FloatingPointError even when the caller asks NumPy to raise on overflow."""
    a = np.full(4, big, dtype=dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        assert all_finite(a)
        assert all_finite(a.reshape(2, 2).T)
        a[1] = np.nan
        assert not all_finite(a)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64])
def test_out_of_range_equals_min_max(dtype):
    info = np.iinfo(dtype)
    values = [v for v in (info.min, -100, -1, 0, 1, 2, 99, 100, 127, info.max) if info.min <= v <= info.max]
    for n in (1, 3, 100, 200):
        for v in values:
            idx = np.array([0, v, 0], dtype=dtype)
            assert _out_of_range(idx, n) == bool(idx.min() < 0 or idx.max() >= n), (v, n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("targets", ["indices", "rows"])
def test_softmax_cross_entropy_from_y_hat_equals_log_sum_exp(rng, dtype, targets):
    """The y_hat forms (class indices; probability rows, on the simplex or not, with a zero
    target whose 0 log y_hat counts as 0) equal the log-sum-exp form, and a row whose y_hat
    underflows (a logit 1e4 below the rest) sends the call to the log-sum-exp form, which stays
    finite there."""
    N, O = 40, 9
    a = (rng.standard_normal((N, O)) * 4).astype(dtype)
    if targets == "indices":
        fast_form = softmax_cross_entropy_index
        y = rng.integers(0, O, N)
        y2 = np.append(y, O - 1)  # the underflowing class is the target
    else:
        fast_form = _softmax_cross_entropy_rows
        y = rng.uniform(size=(N, O)).astype(dtype)
        y[::3] /= y[::3].sum(axis=1, keepdims=True)
        y[1, 2] = 0
        y2 = np.vstack([y, np.full((1, O), 1 / O, dtype=dtype)])
    y_hat = Softmax().fn(a)
    fast = fast_form(y_hat, y, True)
    assert fast is not None
    a2 = np.vstack([a, np.array([[0] * (O - 1) + [-1e4]], dtype=dtype)])
    y_hat2 = Softmax().fn(a2)
    assert fast_form(y_hat2, y2, True) is None
    slow = _softmax_cross_entropy(a2, y_hat2, y2, True, NumpyEngine())
    tol = 2e-5 if dtype == np.float32 else 1e-13
    for f, s in zip(fast, slow):
        np.testing.assert_allclose(f, s[:N], rtol=tol, atol=tol)
    assert np.isfinite(slow[0][N]) and np.isfinite(slow[1][N]).all()
    if targets == "indices":
        assert slow[0][N] == pytest.approx(1e4 + np.log(O - 1), rel=1e-6)
    # The loss alone (want_dy_hat False, the path of RNN.loss) equals the log-sum-exp form too.
    np.testing.assert_allclose(_softmax_cross_entropy(a, y_hat, y, False, NumpyEngine())[0], slow[0][:N], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy_rows_accurate_for_extreme_logits_and_soft_targets(dtype):
    """The one-exp form of -[y log s(a) + (1-y) log s(-a)] against the same in extended
    precision (np.longdouble), for logits up to ±1000 and targets next to 0 and 1, where
    softplus(a) - y a would cancel."""
    a = np.array([-1000, -100, -60, -20, -1, -1e-3, 0, 1e-3, 1, 20, 60, 100, 1000], dtype=dtype)
    y = np.array([0, 1e-7, 0.3, 0.5, 1 - 1e-7, 1], dtype=dtype)
    A, Y = (m.reshape(-1, 1) for m in np.meshgrid(a, y))
    with np.errstate(over="ignore"):
        rows, da, dy_hat = _sigmoid_binary_cross_entropy(A, Sigmoid().fn(A), Y, True, NumpyEngine())
    L = np.longdouble
    ai, yi = A.astype(L), Y.astype(L)
    log_s = lambda v: np.minimum(v, 0) - np.log1p(np.exp(-np.abs(v)))  # noqa: E731
    exact = -(yi * log_s(ai) + (L(1) - yi) * log_s(-ai))[:, 0]
    rel = np.abs(rows.astype(L) - exact) / np.maximum(np.abs(exact), np.finfo(dtype).tiny)
    assert rel.max() <= 8 * np.finfo(dtype).eps, float(rel.max())
    # dL/dy_hat = -y (1 + e^-a) + (1 - y)(1 + e^a): a term with factor 0 is 0 even where its
    # exp overflows (y = 0 at a = -1000: 0 · inf must not give NaN). Where the exact value is
    # beyond the largest float of the dtype, ±inf.
    with np.errstate(over="ignore"):
        pos = np.where(yi != 0, yi * (1 + np.exp(-ai)), 0)
        neg = np.where(yi != 1, (L(1) - yi) * (1 + np.exp(ai)), 0)
        expected = (neg - pos).astype(dtype)
    assert not np.isnan(dy_hat).any()
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(dy_hat[~finite], expected[~finite])
    # The two terms cancel where y_hat is near y (y = 1/2, a = ±1e-3): the error is relative
    # to the terms, as for any evaluation of -y/y_hat + (1-y)/(1-y_hat) in floating point.
    scale = (np.abs(pos) + np.abs(neg))[finite]
    err = np.abs(dy_hat[finite].astype(L) - expected[finite].astype(L))
    assert np.all(err <= 8 * np.finfo(dtype).eps * scale)
    # Logits at the largest float: no overflow inside (|a| + a would), the loss exact.
    big = np.finfo(dtype).max
    edge = np.array([[big], [-big], [big]], dtype=dtype)
    with np.errstate(over="ignore"):
        edge_rows = _sigmoid_binary_cross_entropy(edge, Sigmoid().fn(edge), np.array([[1], [0], [0]], dtype=dtype),
                                                  False, NumpyEngine())[0]
    assert edge_rows.tolist() == [0.0, 0.0, float(big)]
    # dL/da = y_hat - y against y_hat from extended precision.
    s_exact = (1 / (1 + np.exp(-ai))).astype(dtype)
    np.testing.assert_allclose(da, s_exact - Y, rtol=0, atol=2 * np.finfo(dtype).eps)


@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_weight_gradient_over_h_prev_equals_two_products(rng, inputs):
    T, B, D, H, O = 6, 3, 5, 4, 3
    model = RNN(D, H, O, seed=2)
    p = model.params
    x = rng.integers(0, D, (T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    h0 = rng.standard_normal((B, H))
    engine = NumpyEngine()
    cache = layer_forward(x, h0, p["W_x"], p["W_h"], p["b_h"], model.f, engine)
    np.testing.assert_array_equal(cache.h_prev[0], h0)
    np.testing.assert_array_equal(cache.h_prev[1:], cache.h[:-1])
    assert np.shares_memory(cache.h_prev, cache.h)  # a view, not a copy
    dh_out = rng.standard_normal((T, B, H))
    dh = dh_out.copy()
    grads, _, _ = layer_backward(cache, dh, p["W_x"], p["W_h"], model.f, engine)
    # The seed's sum written as two products, the t = 1 term (h_0) apart.
    dz = dh * model.f.derivative(None, cache.h)
    two_products = np.dot(dz[1:].reshape(-1, H).T, cache.h[:-1].reshape(-1, H)) + np.dot(dz[0].T, h0)
    np.testing.assert_allclose(grads["W_h"], two_products, rtol=1e-13, atol=1e-15)
    # dh became the total: the arriving part plus dz_{t+1} W_h (seed §3B).
    np.testing.assert_allclose(dh[:-1], dh_out[:-1] + dz[1:] @ p["W_h"], rtol=1e-13, atol=1e-15)
