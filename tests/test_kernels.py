"""The compiled recurrences (rnngrad[fast]) equal the NumPy loops they replace.

Oracle: the pure-NumPy path of the same library, switched on with _kernels.set_enabled(False),
which is itself checked against PyTorch and finite differences elsewhere. Skipped when numba
(or scipy) is not installed.
"""

import numpy as np
import pytest

from rnngrad import RNN, _kernels
from rnngrad.activations import Tanh

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba/scipy not installed (rnngrad[fast])")

HIDDEN = ["tanh", "relu", "sigmoid", "identity"]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _both_paths(model, *args, **kwargs):
    previous = _kernels.set_enabled(True)
    try:
        fast = model.gradients(*args, **kwargs)
        _kernels.set_enabled(False)
        slow = model.gradients(*args, **kwargs)
    finally:
        _kernels.set_enabled(previous)
    return fast, slow


def _max_rel(a, b):
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_kernel_equals_numpy_path(rng, hidden, dtype, tol, inputs):
    T, B, D, H, O = 7, 3, 5, 6, 4
    model = RNN(D, H, O, hidden_activation=hidden, dtype=dtype, seed=3)
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    h0 = rng.standard_normal((B, H)) * 0.5
    mask = np.ones((T, B), dtype=bool)
    mask[5:, 0] = False
    mask[2:, 2] = False
    # The kernel is chosen for this model (built-in activation, small step).
    assert _kernels.recurrence_kind(model.f, np.empty((T, B, H), dtype)) is not None
    fast, slow = _both_paths(model, x, y, h0=h0, mask=mask)
    assert fast.grads.keys() == slow.grads.keys()
    assert abs(fast.loss - slow.loss) <= tol * abs(slow.loss)
    for key in slow.grads:
        assert _max_rel(fast.grads[key], slow.grads[key]) <= tol, key
    assert _max_rel(fast.forward.h, slow.forward.h) <= tol
    assert _max_rel(fast.h_last, slow.h_last) <= tol


@pytest.mark.parametrize("hidden", HIDDEN)
def test_forward_equals_numpy_path(rng, hidden):
    model = RNN(4, 5, 3, hidden_activation=hidden, output_activation="identity", loss="mse", seed=0)
    x = rng.standard_normal((9, 2, 4))
    previous = _kernels.set_enabled(True)
    try:
        fast = model.forward(x)
        _kernels.set_enabled(False)
        slow = model.forward(x)
    finally:
        _kernels.set_enabled(previous)
    np.testing.assert_allclose(fast.h, slow.h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fast.y_hat, slow.y_hat, rtol=1e-12, atol=1e-14)


def test_float32_tanh_kernel_as_accurate_as_numpy(rng):
    """The kernel's float32 tanh (a float64 expm1 series, rounded once) keeps the float32
    gradients as close to the float64 ones as NumPy's float32 path keeps them."""
    T, B, D, H, O = 30, 4, 8, 16, 5
    m64 = RNN(D, H, O, seed=5)
    m32 = m64.astype(np.float32)
    x = rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    ref = m64.gradients(x, y)
    fast, slow = _both_paths(m32, x, y)
    for key in ref.grads:
        err_fast = _max_rel(fast.grads[key], ref.grads[key])
        err_slow = _max_rel(slow.grads[key], ref.grads[key])
        assert err_fast <= 2 * err_slow + 1e-6, (key, err_fast, err_slow)


def test_tanh32_within_half_ulp():
    # Dense grid plus tiny and large magnitudes, both signs.
    z = np.concatenate([np.linspace(-12, 12, 200_001), np.geomspace(1e-30, 20, 20_001)]).astype(np.float32)
    z = np.concatenate([z, -z, np.float32([0.0, -0.0])])
    h = z.copy()
    _kernels._jit_module()._activate(0, h, np.float32(1))
    exact = np.tanh(z.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(h.astype(np.float64) - exact) / ulp) <= 0.5 + 1e-6


def test_user_activation_and_large_steps_use_numpy_loop():
    class MyTanh(Tanh):  # a subclass may change the maths: never a kernel
        name = "mytanh"

    h = np.empty((3, 2, 4))
    assert _kernels.recurrence_kind(MyTanh(), h) is None
    assert _kernels.recurrence_kind(Tanh(), h) is not None
    big = np.empty((2, 64, 128))  # B·H·H = 2^20 > MAX_STEP_MACS: a BLAS-sized step
    assert _kernels.recurrence_kind(Tanh(), big) is None
    previous = _kernels.set_enabled(False)
    try:
        assert _kernels.recurrence_kind(Tanh(), h) is None
    finally:
        _kernels.set_enabled(previous)
