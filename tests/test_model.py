"""RNN construction, initialisation, parameters, forward pass and custom activations/losses."""

import numpy as np
import pytest

import rnngrad
from conftest import assert_close, all_grads

torch = pytest.importorskip("torch")
from oracle import reference  # noqa: E402


def test_parameter_shapes_dtype_and_default_init():
    m = rnngrad.RNN(input_size=3, hidden_size=50, output_size=4, seed=0)
    assert {k: v.shape for k, v in m.params.items()} == {
        "W_x": (50, 3), "W_h": (50, 50), "b_h": (50,), "W_y": (4, 50), "b_y": (4,)}
    k = 1 / np.sqrt(50)
    for name, p in m.params.items():
        assert p.dtype == np.float64
        assert np.all(np.abs(p) <= k), name
    # A uniform draw on [-k, k] fills the interval: the extremes come close to ±k.
    assert m.params["W_h"].max() > 0.95 * k and m.params["W_h"].min() < -0.95 * k


def test_seed_reproduces_and_differs():
    a, b, c = (rnngrad.RNN(3, 4, 2, seed=s) for s in (7, 7, 8))
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert not np.array_equal(a.params["W_h"], c.params["W_h"])
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(rnngrad.RNN(3, 4, 2, seed=rng).params["W_x"], a.params["W_x"])


def test_float32_model():
    m = rnngrad.RNN(3, 4, 2, dtype=np.float32, seed=0)
    assert all(p.dtype == np.float32 for p in m.params.values())
    out = m.forward(np.zeros((2, 1, 3), dtype=np.float32))
    assert out.h.dtype == np.float32 and out.y_hat.dtype == np.float32


@pytest.mark.parametrize("init", ["identity", "orthogonal"])
def test_recurrent_init(init):
    m = rnngrad.RNN(3, 6, 2, hidden_activation="relu", seed=1, recurrent_init=init)
    W = m.params["W_h"]
    np.testing.assert_allclose(W @ W.T, np.eye(6), atol=1e-12)
    if init == "identity":
        np.testing.assert_array_equal(W, np.eye(6))


def test_params_are_live():
    """Writing into params, or assigning a same-shaped array, changes the model."""
    m = rnngrad.RNN(2, 3, 2, output_activation="identity", loss="mse", seed=0)
    x = np.ones((1, 1, 2))
    m.params["b_y"][...] = 5.0
    m.params["W_y"][...] = 0.0
    np.testing.assert_array_equal(m.forward(x).y_hat, np.full((1, 1, 2), 5.0))
    m.params["b_y"] = np.array([1.0, 2.0])
    np.testing.assert_array_equal(m.forward(x).y_hat, [[[1.0, 2.0]]])


@pytest.mark.parametrize("f", ["tanh", "relu", "sigmoid", "identity"])
@pytest.mark.parametrize("g", ["softmax", "sigmoid", "identity"])
def test_forward_matches_torch(rng, f, g):
    m = rnngrad.RNN(4, 5, 3, hidden_activation=f, output_activation=g, loss="mse", seed=2)
    x = rng.standard_normal((6, 2, 4))
    h0 = rng.standard_normal((2, 5))
    out = m.forward(x, h0=h0)
    P = {k: torch.tensor(v) for k, v in m.params.items()}
    hf = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda z: z}[f]
    gf = {"softmax": lambda a: torch.softmax(a, -1), "sigmoid": torch.sigmoid, "identity": lambda a: a}[g]
    h = torch.tensor(h0)
    for t in range(6):
        h = hf(h @ P["W_h"].T + torch.tensor(x[t]) @ P["W_x"].T + P["b_h"])
        assert_close(out.h[t], h.numpy(), 1e-14, f"h[{t}]")
        assert_close(out.y_hat[t], gf(h @ P["W_y"].T + P["b_y"]).numpy(), 1e-14, f"y_hat[{t}]")
    np.testing.assert_array_equal(out.h_last, out.h[-1])


def test_loss_equals_gradients_loss(rng):
    m = rnngrad.RNN(3, 4, 3, seed=0)
    x, y = rng.standard_normal((5, 2, 3)), rng.integers(0, 3, (5, 2))
    mask = np.array([[1, 1], [1, 1], [1, 0], [0, 0], [0, 0]])
    assert m.loss(x, y, mask=mask, reduction="mean") == m.gradients(x, y, mask=mask, reduction="mean").loss


def test_repr_and_copy():
    m = rnngrad.RNN(3, 4, 2, hidden_activation="relu", output_activation="sigmoid", loss="cross_entropy")
    assert repr(m) == ("RNN(input_size=3, hidden_size=4, output_size=2, hidden_activation='relu', "
                       "output_activation='sigmoid', loss='binary_cross_entropy', dtype=float64)")
    c = m.copy()
    c.params["W_h"][...] = 0
    assert np.any(m.params["W_h"] != 0)


class Softsign(rnngrad.Activation):
    """A user's activation: f(z) = z / (1 + |z|), f'(z) = 1 / (1 + |z|)^2 (needs z)."""

    name = "softsign"

    def fn(self, z, out=None):
        return z / (1 + np.abs(z))  # ignores out: the model must copy it in

    def derivative(self, z, out):
        return 1 / (1 + np.abs(z)) ** 2


class Huber(rnngrad.Loss):
    """A user's loss: Huber with delta 1, summed over units."""

    name = "huber"

    def value(self, y_hat, y):
        d = np.abs(y_hat - y)
        return np.where(d < 1, 0.5 * d**2, d - 0.5).sum(axis=1)

    def grad(self, y_hat, y):
        d = y_hat - y
        return np.clip(d, -1, 1)


def test_custom_activation_and_loss_match_autograd(rng):
    T, B, D, H, O = 5, 3, 2, 4, 3
    m = rnngrad.RNN(D, H, O, hidden_activation=Softsign(), output_activation="identity", loss=Huber(), seed=0)
    x = rng.standard_normal((T, B, D)) * 2
    y = rng.standard_normal((T, B, O)) * 2
    res = m.gradients(x, y)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in m.params.items()}
    h = torch.zeros(B, H, dtype=torch.float64)
    X = torch.tensor(x, requires_grad=True)
    L = 0
    for t in range(T):
        z = h @ P["W_h"].T + X[t] @ P["W_x"].T + P["b_h"]
        h = z / (1 + z.abs())
        L = L + torch.nn.functional.huber_loss(h @ P["W_y"].T + P["b_y"], torch.tensor(y[t]), reduction="sum")
    L.backward()
    assert res.loss == pytest.approx(L.item(), rel=1e-12)
    for name in P:
        assert_close(all_grads(res)[name], P[name].grad.numpy(), 1e-10, name)
    assert_close(all_grads(res)["x"], X.grad.numpy(), 1e-10, "x")
    assert m.forward(x).layers[0].z is not None  # softsign' needs z, so the forward pass kept it


def test_custom_probability_output_with_cross_entropy(rng):
    """A user's output activation that declares probabilities can take cross_entropy (general path)."""

    class Sparsemaxish(rnngrad.Softmax):  # a subclass: same maths, general VJP path
        name = "my_softmax"

    m = rnngrad.RNN(3, 4, 3, output_activation=Sparsemaxish(), loss="cross_entropy", seed=0)
    x, y = rng.standard_normal((4, 2, 3)), rng.integers(0, 3, (4, 2))
    res = m.gradients(x, y)
    _, ref = reference(m.params, x, y)
    for name in ["W_x", "W_h", "W_y", "y_hat", "h"]:
        assert_close(all_grads(res)[name], ref[name], 1e-10, name)
