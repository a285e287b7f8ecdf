import zlib

import numpy as np
import pytest

# Every valid (hidden f, output g, loss) combination; cross_entropy on an identity output is refused.
HIDDEN = ["tanh", "relu", "sigmoid", "identity"]
PAIRS = [
    ("softmax", "cross_entropy"),
    ("sigmoid", "cross_entropy"),
    ("identity", "mse"),
    ("softmax", "mse"),
    ("sigmoid", "mse"),
]
COMBOS = [(f, g, l) for f in HIDDEN for g, l in PAIRS]


@pytest.fixture
def rng(request):
    """A Generator seeded per test, so each test is reproducible on its own."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def make_targets(rng, output, loss, T, B, O, kind="auto"):
    """Targets of the kind each loss takes: class indices, distributions, [0, 1] or reals."""
    if loss == "mse":
        return rng.standard_normal((T, B, O))
    if output == "sigmoid":
        return rng.uniform(0, 1, size=(T, B, O))
    if kind == "distribution":
        p = rng.uniform(0.1, 1, size=(T, B, O))
        return p / p.sum(-1, keepdims=True)
    return rng.integers(0, O, size=(T, B))


def assert_close(actual, expected, rtol, name=""):
    """max |a - e| <= rtol * max |e| (a relative error on the array's scale)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = np.max(np.abs(expected), initial=0.0)
    err = np.max(np.abs(actual - expected), initial=0.0)
    assert err <= rtol * max(scale, 1e-300), f"{name}: max abs error {err:.3e}, scale {scale:.3e}, rel {err / max(scale, 1e-300):.3e} > {rtol:g}"


def all_grads(res):
    """res.grads with the state gradients under the oracle's names: "h" (res.dh), "y_hat"
    (res.dy_hat), "x" (res.dx) and "h0" (res.dh0), each where it was computed."""
    out = dict(res.grads)
    for name, value in (("h", res.dh), ("y_hat", res.dy_hat), ("x", res.dx), ("h0", res.dh0)):
        if value is not None:
            out[name] = value
    return out
