"""f and g: values and derivatives/VJPs against PyTorch; stability at extreme inputs."""

import warnings

import numpy as np
import pytest

from rnngrad.activations import (HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS, Identity, ReLU, Sigmoid,
                                 Softmax, Tanh, log_sigmoid, log_softmax)
from conftest import assert_close

torch = pytest.importorskip("torch")

TORCH = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda z: z,
         "softmax": lambda z: torch.softmax(z, -1)}
ALL = {**HIDDEN_ACTIVATIONS, **OUTPUT_ACTIVATIONS}


@pytest.mark.parametrize("name", sorted(ALL))
def test_value_and_vjp_match_autograd(rng, name):
    act = ALL[name]()
    z = rng.standard_normal((4, 3, 6)) * 3
    dout = rng.standard_normal(z.shape)
    Z = torch.tensor(z, requires_grad=True)
    out = TORCH[name](Z)
    out.backward(torch.tensor(dout))
    value = act.fn(z)
    assert_close(value, out.detach().numpy(), 1e-15, "value")
    z_arg = z if act.derivative_needs_input else None
    assert_close(act.vjp(dout, z_arg, value), Z.grad.numpy(), 1e-14, "vjp")


@pytest.mark.parametrize("name", sorted(HIDDEN_ACTIVATIONS))
def test_derivative_is_elementwise_vjp(rng, name):
    act = HIDDEN_ACTIVATIONS[name]()
    z = rng.standard_normal((5, 7))
    out = act.fn(z)
    d = act.derivative(None, out)  # every built-in derivative comes from the output alone
    dout = rng.standard_normal(z.shape)
    np.testing.assert_array_equal(act.vjp(dout, None, out), dout * d)


def test_softmax_vjp_equals_full_jacobian(rng):
    """The VJP s * (g - <g, s>) equals g^T (diag(s) - s s^T) formed explicitly."""
    a = rng.standard_normal((3, 5))
    s = Softmax().fn(a)
    g = rng.standard_normal((3, 5))
    for i in range(3):
        J = np.diag(s[i]) - np.outer(s[i], s[i])
        np.testing.assert_allclose(Softmax().vjp(g, a, s)[i], g[i] @ J, rtol=1e-14, atol=1e-15)


def test_relu_derivative_at_zero_is_zero_like_torch():
    z = np.array([-1.0, 0.0, 2.0])
    assert ReLU().derivative(None, ReLU().fn(z)).tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("name", sorted(ALL))
def test_extreme_inputs_are_finite_without_warnings(name):
    act = ALL[name]()
    z = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = act.fn(z)
    assert np.all(np.isfinite(out))
    if name == "sigmoid":
        assert out[0, 0] == 0.0 or out[0, 0] < 1e-300
        assert out[0, -1] == 1.0
    if name == "softmax":
        assert out.sum() == pytest.approx(1.0) and out[0, -1] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_relative_error_over_its_whole_range(dtype):
    """Relative error against extended precision (np.longdouble) from where s rounds to 1 down
    to where it underflows, subnormal results included: a few ulp at most, and exactly 0, 1/2,
    1 and NaN where they belong."""
    lo = -745.0 if dtype == np.float64 else -104.0
    z = np.concatenate([np.linspace(lo, 40, 200_001), -np.geomspace(1e-30, -lo, 2001),
                        np.geomspace(1e-30, 40, 2001)]).astype(dtype)
    s = Sigmoid().fn(z)
    exact = 1 / (1 + np.exp(-z.astype(np.longdouble)))
    normal = exact >= np.finfo(dtype).tiny
    rel = np.abs(s[normal] - exact[normal]) / exact[normal]
    assert rel.max() <= 4 * np.finfo(dtype).eps, float(rel.max())
    # Subnormal results: within a few of the smallest steps there.
    step = np.finfo(dtype).smallest_subnormal
    assert np.max(np.abs(s[~normal] - exact[~normal])) <= 4 * step
    assert Sigmoid().fn(np.array([0.0, -np.inf, np.inf, np.nan], dtype=dtype))[:3].tolist() == [0.5, 0.0, 1.0]
    assert np.isnan(Sigmoid().fn(np.array([np.nan], dtype=dtype))[0])
    # Integers in, floats out, as from np.exp.
    np.testing.assert_allclose(Sigmoid().fn(np.array([1, -2])), 1 / (1 + np.exp(-np.array([1.0, -2.0]))), rtol=1e-15)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_output_matches_fresh_output(rng, name, dtype):
    """The forward pass writes h_t over z_t; fn(z, out=z) must equal fn(z)."""
    act = ALL[name]()
    z = (rng.standard_normal((4, 6)) * 5).astype(dtype)
    fresh = act.fn(z.copy())
    buf = z.copy()
    r = act.fn(buf, out=buf)
    assert r is buf and r.dtype == dtype
    np.testing.assert_array_equal(buf, fresh)


def test_log_softmax_and_log_sigmoid_are_exact_at_extremes():
    a = np.array([[1000.0, -1000.0, 0.0]])
    np.testing.assert_allclose(log_softmax(a), [[0.0, -2000.0, -1000.0]], rtol=1e-15)
    np.testing.assert_allclose(log_sigmoid(np.array([1000.0, -1000.0, 0.0])), [0.0, -1000.0, -np.log(2)],
                               rtol=1e-15)
    x = np.linspace(-30, 30, 61)
    np.testing.assert_allclose(log_sigmoid(x), torch.nn.functional.logsigmoid(torch.tensor(x)).numpy(),
                               rtol=1e-14)


def test_registries_and_flags():
    assert set(HIDDEN_ACTIVATIONS) == {"tanh", "relu", "sigmoid", "identity"}
    assert set(OUTPUT_ACTIVATIONS) == {"softmax", "sigmoid", "identity"}
    assert not Softmax.elementwise and Softmax.probabilities and Sigmoid.probabilities
    assert not Identity.probabilities and not Tanh.probabilities
    with pytest.raises(TypeError, match="not element-wise"):
        Softmax().derivative(None, np.ones(3))
