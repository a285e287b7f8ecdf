"""Every engine equals the NumPy engine (the reference) on every configuration.

Oracle: the NumPy engine of the same library (:class:`rnngrad.engines.NumpyEngine`), itself
checked against PyTorch and finite differences elsewhere. The compiled engine's own parts
(float32 tanh, sigmoid and exp, the softmax and cross-entropy kernels, the token scatter-add)
are checked against float64 or extended-precision references. Skipped where numba (or scipy)
is not installed.
"""

import numpy as np
import pytest

from conftest import COMBOS, all_grads, make_targets
from rnngrad import RNN, network
from rnngrad.activations import Softmax, Tanh
from rnngrad.engines import NumbaEngine, NumpyEngine, available_engines, get_engine
from rnngrad.layer import input_weight_grad
from rnngrad.losses import softmax_cross_entropy_index

pytestmark = pytest.mark.skipif("numba" not in available_engines(),
                                reason="numba/scipy not installed (rnngrad[fast])")

HIDDEN = ["tanh", "relu", "sigmoid", "identity"]
#: Every engine but the reference.
COMPILED = [name for name in available_engines() if name != "numpy"]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def numba_engine():
    return get_engine("numba")


def _both_paths(model, *args, engine="numba", **kwargs):
    """The same call on ``engine`` and on the NumPy engine."""
    return model.gradients(*args, engine=engine, **kwargs), model.gradients(*args, engine="numpy", **kwargs)


def _forward_both_paths(params, x, h0, model):
    """The forward pass with the compiled loop, then with the NumPy loop."""
    B, H = h0.shape
    assert get_engine("numba").recurrence_code(model.f, B, H, model.dtype) is not None
    h0 = h0[None]
    arch = model.architecture
    fast = network.forward(params, x, h0, arch, get_engine("numba"))
    slow = network.forward(params, x, h0, arch, NumpyEngine())
    return fast, slow


def _ulp32(exact: np.ndarray) -> np.ndarray:
    """The float32 ulp at the exact (float64) value: 2^(e - 24) for |exact| in [2^(e-1), 2^e),
    2^-149 among the subnormals. (np.spacing of the rounded value would count in the larger
    unit wherever the exact value rounds up to a power of two, halving the error there.)"""
    _, e = np.frexp(np.abs(exact))
    return np.maximum(np.ldexp(1.0, e - 24), 2.0 ** -149)


def numba_kernels():
    from rnngrad.engines import _numba_kernels
    return _numba_kernels


def softmax_kernel(a, b_y):
    """The compiled softmax itself (the engine calls it for O <= MAX_SOFTMAX_OUTPUTS only)."""
    y_hat = np.empty_like(a)
    numba_kernels()._softmax_rows(a, b_y, y_hat)
    return y_hat


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
    assert get_engine("numba").recurrence_code(model.f, B, H, dtype) is not None
    fast, slow = _both_paths(model, x, y, h0=h0, mask=mask)
    assert all_grads(fast).keys() == all_grads(slow).keys()
    assert abs(fast.loss - slow.loss) <= tol * abs(slow.loss)
    for key in all_grads(slow):
        assert _max_rel(all_grads(fast)[key], all_grads(slow)[key]) <= tol, key
    assert _max_rel(fast.forward.h, slow.forward.h) <= tol
    assert _max_rel(fast.h_last, slow.h_last) <= tol


@pytest.mark.parametrize("hidden", HIDDEN)
def test_forward_equals_numpy_path(rng, hidden):
    model = RNN(4, 5, 3, hidden_activation=hidden, output_activation="identity", loss="mse", seed=0)
    x = rng.standard_normal((9, 2, 4))
    fast, slow = model.forward(x, engine="numba"), model.forward(x, engine="numpy")
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
    for key in all_grads(ref):
        err_fast = _max_rel(all_grads(fast)[key], all_grads(ref)[key])
        err_slow = _max_rel(all_grads(slow)[key], all_grads(ref)[key])
        assert err_fast <= 2 * err_slow + 1e-6, (key, err_fast, err_slow)


def test_tanh32_within_half_ulp():
    # Dense grid plus tiny and large magnitudes, both signs.
    z = np.concatenate([np.linspace(-12, 12, 200_001), np.geomspace(1e-30, 20, 20_001)]).astype(np.float32)
    z = np.concatenate([z, -z, np.float32([0.0, -0.0])])
    h = z.copy()
    numba_kernels()._activate(0, h, np.float32(1))
    exact = np.tanh(z.astype(np.float64))
    assert np.max(np.abs(h.astype(np.float64) - exact) / _ulp32(exact)) <= 0.5 + 1e-6
    # From |x| = 9.0109 on, tanh rounds to ±1 in float32, and so must the kernel's.
    big = np.float32([9.011, 9.5, 20, 1e30, np.inf])
    h = np.concatenate([big, -big])
    numba_kernels()._activate(0, h, np.float32(1))
    assert h.tolist() == [1.0] * 5 + [-1.0] * 5


def test_user_activation_and_large_steps_use_numpy_loop(numba_engine):
    class MyTanh(Tanh):  # a subclass that changes the maths is never a kernel...
        name = "mytanh"

        def fn(self, z, out=None):
            return np.tanh(2 * z, out=out)

    class RenamedTanh(Tanh):  # ...one that only renames it keeps the kernel
        name = "renamed"

    assert MyTanh.kernel is None and RenamedTanh.kernel == "tanh"
    assert numba_engine.recurrence_code(MyTanh(), 2, 4, np.float64) is None
    assert numba_engine.recurrence_code(RenamedTanh(), 2, 4, np.float64) is not None
    assert numba_engine.recurrence_code(Tanh(), 2, 4, np.float64) is not None
    # B·H·H = 2^20 > MAX_STEP_MACS: a BLAS-sized step
    assert numba_engine.recurrence_code(Tanh(), 64, 128, np.float64) is None


def test_float32_exp_is_correctly_rounded_up_to_an_ulp():
    """The vectorisable exp of the softmax kernel against float64 exp rounded to float32."""
    _exp_nonpositive32 = numba_kernels()._exp_nonpositive32

    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.uniform(0, 110, 20000), -rng.uniform(0, 1, 5000), [0.0, -103.9, -104.5, -1e4]])
    x = x.astype(np.float32)
    ours = np.array([_exp_nonpositive32(v) for v in x]).astype(np.float32)
    ref = np.exp(x.astype(np.float64)).astype(np.float32)
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - ref.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1
    assert np.mean(ulps != 0) < 1e-3  # off by one only next to a rounding boundary
    assert np.isnan(_exp_nonpositive32(np.float32(np.nan)))


@pytest.mark.parametrize("O", [1, 3, 65, 300])
def test_softmax_kernel_matches_float64_reference(rng, O):
    N = 40
    a = (rng.standard_normal((N, O)) * 10).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    logits = a + b
    a_kernel = a.copy()
    y_hat = softmax_kernel(a_kernel, b)
    np.testing.assert_array_equal(a_kernel, logits)
    # The differences a - max(a) are rounded to float32 (as in NumPy's float32 softmax);
    # from there the kernel works in float64 and rounds once: within about an ulp.
    shifted = (logits - logits.max(1, keepdims=True)).astype(np.float64)
    ref = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    assert np.max(np.abs(y_hat - ref) / ref) < 2.5e-7
    # Against the exact softmax of the float32 logits, no worse than NumPy's float32 softmax.
    exact = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
    exact /= exact.sum(1, keepdims=True)
    numpy32 = Softmax().fn(logits)
    assert np.max(np.abs(y_hat - exact) / exact) <= 1.01 * np.max(np.abs(numpy32 - exact) / exact) + 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("want_dy_hat", [True, False])
def test_cross_entropy_kernel_equals_numpy_path(rng, dtype, want_dy_hat, numba_engine):
    N, O = 30, 7
    y_hat = Softmax().fn((rng.standard_normal((N, O)) * 3).astype(dtype))
    y = rng.integers(0, O, N)
    fast = numba_engine.softmax_cross_entropy_index(y_hat, y, want_dy_hat)
    slow = softmax_cross_entropy_index(y_hat, y, want_dy_hat)
    # Underflowed y_hat[n, y_n]: both decline, for the log-sum-exp path.
    y_hat[3, y[3]] = 0
    assert softmax_cross_entropy_index(y_hat, y, want_dy_hat) is None
    assert numba_engine.softmax_cross_entropy_index(y_hat, y, want_dy_hat) is None
    tol = 1e-6 if dtype == np.float32 else 1e-15
    for f, s in zip(fast, slow):
        if s is None:
            assert f is None
        else:
            np.testing.assert_allclose(f, s, rtol=tol, atol=tol)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_nan_and_inf_pass_through_the_compiled_loop_as_through_numpy(activation):
    """A diverging run must stay visible: NaN in, NaN out, as np.tanh / np.maximum give."""
    m = RNN(2, 3, 2, hidden_activation=activation, dtype=np.float32, seed=0)
    x = np.zeros((3, 1, 2), dtype=np.float32)
    h0 = np.array([[np.nan, np.inf, -np.inf]], dtype=np.float32)
    m.params["W_h"][...] = np.eye(3, dtype=np.float32)
    params = m.checked_params()
    fast, slow = _forward_both_paths(params, x, h0, m)
    np.testing.assert_array_equal(np.isnan(fast.h), np.isnan(slow.h))
    assert np.isnan(fast.h).any()


def test_softmax_kernel_keeps_nan_and_inf_rows_like_numpy():
    """NaN or +inf anywhere in a row (first position included), or a row of -inf, gives a NaN
    row as NumPy's softmax does; a single -inf is an exact 0."""
    a = np.zeros((6, 16), dtype=np.float32)
    a[0, 0] = np.nan
    a[1, 5] = np.nan
    a[2, 3] = np.inf
    a[3, 0] = -np.inf
    a[4, :] = -np.inf
    a[5, 15] = np.inf
    b = np.zeros(16, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        ref = Softmax().fn(a.copy())
    y_hat = softmax_kernel(a.copy(), b)
    np.testing.assert_array_equal(np.isnan(y_hat), np.isnan(ref))
    assert y_hat[3, 0] == 0


@pytest.mark.parametrize("hidden", HIDDEN)
def test_forward_kernel_adds_the_bias_in_numpys_order(rng, hidden):
    """The compiled step adds b_h inside the loop, as (W_x x_t + b_h) + h_{t-1} W_h^T: with an
    identity W_h (an exact product) the float32 states of relu and identity equal the NumPy
    loop's bit for bit."""
    m = RNN(5, 8, 3, hidden_activation=hidden, dtype=np.float32, seed=3)
    m.params["W_h"][...] = np.eye(8, dtype=np.float32)
    m.params["b_h"][...] = rng.standard_normal(8).astype(np.float32)
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    params = m.checked_params()
    h0 = np.zeros((2, 8), dtype=np.float32)
    fast, slow = _forward_both_paths(params, x, h0, m)
    if hidden in ("relu", "identity"):
        np.testing.assert_array_equal(fast.h, slow.h)
    else:  # the kernel's tanh and sigmoid round differently from NumPy's (within an ulp or two)
        np.testing.assert_allclose(fast.h, slow.h, rtol=4e-7, atol=0)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("output, loss", [("sigmoid", "binary_cross_entropy"), ("sigmoid", "mse")])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_sigmoid_output_kernel_equals_numpy_path(rng, hidden, output, loss, dtype, tol, inputs):
    """The compiled output sigmoid (float32) and token scatter-add give what NumPy gives."""
    T, B, D, H, O = 6, 3, 5, 4, 3
    model = RNN(D, H, O, hidden_activation=hidden, output_activation=output, loss=loss, dtype=dtype, seed=4)
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    y = rng.uniform(size=(T, B, O))
    fast, slow = _both_paths(model, x, y, h0=rng.standard_normal((B, H)))
    assert fast.loss == pytest.approx(slow.loss, rel=tol)
    np.testing.assert_allclose(fast.forward.y_hat, slow.forward.y_hat, rtol=tol, atol=tol)
    for key in all_grads(slow):
        assert _max_rel(all_grads(fast)[key], all_grads(slow)[key]) <= tol, key


def test_sigmoid32_within_half_ulp():
    """The kernels' float32 sigmoid, rounded once from float64, against float64's sigmoid,
    from where it is 1 to where it underflows (subnormal results included)."""
    z = np.concatenate([np.linspace(-120, 30, 300_001), -np.geomspace(1e-30, 110, 20_001),
                        np.geomspace(1e-30, 20, 20_001)]).astype(np.float32)
    z = np.concatenate([z, np.float32([0.0, -0.0])])
    h = z.copy()
    numba_kernels()._activate(2, h, np.float32(1))
    z64 = z.astype(np.float64)
    exact = np.where(z64 >= 0, 1 / (1 + np.exp(-z64)), np.exp(z64) / (1 + np.exp(z64)))
    ulp = _ulp32(exact)
    # Rounded once from a float64 value whose error is that of the exp, ~1e-10 relative (its
    # series error grows through ten squarings): 0.5 ulp plus about a thousandth (0.50116 over
    # every float32 input: benchmarks/ulp_exhaustive.py).
    # NumPy's float32 path (np.exp, then a float32 division) is off by up to 3.2 ulp here.
    assert np.max(np.abs(h.astype(np.float64) - exact) / ulp) <= 0.5 + 1e-3
    nan = np.float32([np.nan, np.inf, -np.inf])
    numba_kernels()._activate(2, nan, np.float32(1))
    assert np.isnan(nan[0]) and nan[1] == 1 and nan[2] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_token_scatter_add_kernel_equals_sorted_segment_sums(rng, dtype, numba_engine):
    N, H, D = 500, 7, 11
    x = rng.integers(0, D - 1, size=N)  # token D - 1 never occurs: its column stays zero
    dz = rng.standard_normal((N, H)).astype(dtype)
    fast = input_weight_grad(x, dz, D, numba_engine)
    slow = input_weight_grad(x, dz, D, NumpyEngine())
    np.testing.assert_allclose(fast, slow, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)
    assert not fast[:, D - 1].any()
    with pytest.raises(ValueError, match=r"token indices.*\[0, 11\)"):
        numba_engine.token_weight_grad(np.array([0, 11]), dz[:2], D)
    with pytest.raises(ValueError, match="token indices"):
        numba_engine.token_weight_grad(np.array([-1, 0]), dz[:2], D)


@pytest.mark.parametrize("engine", COMPILED)
@pytest.mark.parametrize("hidden, output, loss", COMBOS)
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, False), (1, True), (3, True)])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_every_engine_equals_numpy_on_every_configuration(rng, engine, hidden, output, loss, num_layers,
                                                          bidirectional, dtype, tol, inputs):
    """Loss, every parameter and state gradient, the forward states and h_last: each engine
    against the NumPy engine, for the whole (f, g, loss) grid, stacked and bidirectional, with a
    mask (of sequence lengths), h0, dropout masks and float or token inputs."""
    T, B, D, H, O = 6, 3, 5, 4, 3
    model = RNN(D, H, O, hidden_activation=hidden, output_activation=output, loss=loss, dtype=dtype,
                num_layers=num_layers, bidirectional=bidirectional, dropout=0.3, seed=5)
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    y = make_targets(rng, output, loss, T, B, O)
    h0 = rng.standard_normal((num_layers * model.directions, B, H)) * 0.5
    mask = np.arange(T)[:, None] < np.array([6, 2, 4])[None, :]
    fast, slow = _both_paths(model, x, y, engine=engine, h0=h0, mask=mask, dropout_seed=11)
    assert fast.loss == pytest.approx(slow.loss, rel=tol)
    assert all_grads(fast).keys() == all_grads(slow).keys()
    for key in all_grads(slow):
        assert _max_rel(all_grads(fast)[key], all_grads(slow)[key]) <= tol, key
    for a, b in zip(fast.forward.dropout_masks or [], slow.forward.dropout_masks or []):
        np.testing.assert_array_equal(a, b)  # drawn from the same seed, whatever the engine
    assert _max_rel(fast.forward.y_hat, slow.forward.y_hat) <= tol
    assert _max_rel(fast.h_last, slow.h_last) <= tol
