"""Per-step losses: values and dL/dy_hat against PyTorch; fused dL/da against the general chain rule."""

import numpy as np
import pytest

from rnngrad.activations import Identity, Sigmoid, Softmax
from rnngrad.losses import (BinaryCrossEntropy, CrossEntropy, MSE, fused_path, resolve_loss)
from conftest import assert_close
from rnngrad.engines import NumpyEngine

torch = pytest.importorskip("torch")


def torch_rows_and_grad(kind, y_hat, y):
    Y_hat = torch.tensor(y_hat, requires_grad=True)
    Y = torch.tensor(y)
    if kind == "ce_index":
        rows = -torch.log(Y_hat.gather(1, Y[:, None]))[:, 0]
    elif kind == "ce_dist":
        rows = -(Y * torch.log(Y_hat)).sum(1)
    elif kind == "bce":
        rows = torch.nn.functional.binary_cross_entropy(Y_hat, Y, reduction="none").sum(1)
    else:
        rows = ((Y_hat - Y) ** 2).sum(1)
    rows.sum().backward()
    return rows.detach().numpy(), Y_hat.grad.numpy()


def cases(rng):
    N, O = 7, 5
    probs = Softmax().fn(rng.standard_normal((N, O)))
    units = Sigmoid().fn(rng.standard_normal((N, O)))
    dist = rng.uniform(0.1, 1, (N, O))
    dist /= dist.sum(1, keepdims=True)
    return [
        ("ce_index", CrossEntropy(), probs, rng.integers(0, O, N)),
        ("ce_dist", CrossEntropy(), probs, dist),
        ("bce", BinaryCrossEntropy(), units, rng.uniform(0, 1, (N, O))),
        ("mse", MSE(), rng.standard_normal((N, O)), rng.standard_normal((N, O))),
    ]


def test_value_and_grad_match_torch(rng):
    for kind, loss, y_hat, y in cases(rng):
        rows, grad = torch_rows_and_grad(kind, y_hat, y)
        assert_close(loss.value(y_hat, y), rows, 1e-14, kind)
        assert_close(loss.grad(y_hat, y), grad, 1e-14, kind)


def test_bce_with_hard_targets_skips_the_zero_term():
    """y = 1 with y_hat = 1 costs 0 (not 0·log 0 = NaN); the gradient's other term vanishes likewise."""
    loss = BinaryCrossEntropy()
    y_hat = np.array([[1.0, 0.0, 0.5]])
    y = np.array([[1.0, 0.0, 1.0]])
    np.testing.assert_allclose(loss.value(y_hat, y), [np.log(2)])
    np.testing.assert_allclose(loss.grad(y_hat, y), [[-1.0, 1.0, -2.0]])


@pytest.mark.parametrize("g,loss,targets", [
    (Softmax(), CrossEntropy(), "index"),
    (Softmax(), CrossEntropy(), "distribution"),
    (Softmax(), CrossEntropy(), "unnormalised"),
    (Sigmoid(), BinaryCrossEntropy(), "unit"),
    (Identity(), MSE(), "real"),
])
def test_fused_equals_general(rng, g, loss, targets):
    """dL/da from the fused path equals J_g^T dL/dy_hat; loss from logits equals loss from y_hat."""
    N, O = 9, 4
    a = rng.standard_normal((N, O)) * 2
    y_hat = g.fn(a)
    y = {"index": lambda: rng.integers(0, O, N),
         "distribution": lambda: (lambda p: p / p.sum(1, keepdims=True))(rng.uniform(size=(N, O))),
         "unnormalised": lambda: rng.uniform(size=(N, O)),  # exact even when rows do not sum to one
         "unit": lambda: rng.uniform(size=(N, O)),
         "real": lambda: rng.standard_normal((N, O))}[targets]()
    fused = fused_path(g, loss)
    assert fused is not None
    rows, da, dy_hat = fused(a, y_hat, y, True, NumpyEngine())
    assert_close(rows, loss.value(y_hat, y), 1e-13, "rows")
    assert_close(dy_hat, loss.grad(y_hat, y), 1e-13, "dy_hat")
    assert_close(da, g.vjp(loss.grad(y_hat, y), a, y_hat), 1e-13, "da")


def test_fused_path_only_for_canonical_built_in_pairs():
    assert fused_path(Softmax(), MSE()) is None
    assert fused_path(Sigmoid(), MSE()) is None
    assert fused_path(Softmax(), BinaryCrossEntropy()) is None

    class MySoftmax(Softmax):
        pass

    assert fused_path(MySoftmax(), CrossEntropy()) is None


def test_cross_entropy_resolves_to_binary_on_sigmoid():
    assert type(resolve_loss("cross_entropy", Sigmoid())) is BinaryCrossEntropy
    assert type(resolve_loss("cross_entropy", Softmax())) is CrossEntropy
    assert type(resolve_loss("mse", Sigmoid())) is MSE


def test_fused_dy_hat_stays_exact_where_y_hat_underflows():
    """y_hat_y = e^-2000 underflows to 0, but -1/y_hat_y computed from the logits is -e^2000 = -inf only
    because it is not representable; for a moderate gap it is exact where 1/y_hat would also be fine."""
    a = np.array([[30.0, -30.0]])
    y_hat = Softmax().fn(a)
    _, _, dy = fused_path(Softmax(), CrossEntropy())(a, y_hat, np.array([1]), True, NumpyEngine())
    np.testing.assert_allclose(dy[0, 1], -(1 + np.exp(60.0)), rtol=1e-14)
    assert dy[0, 0] == 0
