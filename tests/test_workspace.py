"""A gradients call with a Workspace returns exactly what a call without one returns.

Oracle: the same call without a workspace (itself checked against PyTorch and finite
differences elsewhere); results must be bit-identical, since the workspace changes only
where the arrays live. Also pinned: the documented reuse (the next call with the same
workspace overwrites the previous results, h_last excepted) and that results of calls
without a workspace, or with another one, are never touched.
"""

import numpy as np
import pytest

from conftest import COMBOS, make_targets, all_grads
from rnngrad import RNN, Activation, Workspace
from rnngrad.engines import available_engines, set_default_engine
from rnngrad.optim import SGD, Adam, clip_grad_norm


def _paths():
    return [True, False] if "numba" in available_engines() else [False]


def _assert_same(fresh, reused):
    assert fresh.loss == reused.loss
    assert all_grads(fresh).keys() == all_grads(reused).keys()
    for key in all_grads(fresh):
        assert all_grads(fresh)[key].shape == all_grads(reused)[key].shape, key
        assert all_grads(fresh)[key].dtype == all_grads(reused)[key].dtype, key
        assert np.array_equal(all_grads(fresh)[key], all_grads(reused)[key]), key
    for name in ("h", "a", "y_hat"):
        assert np.array_equal(getattr(fresh.forward, name), getattr(reused.forward, name)), name
    assert np.array_equal(fresh.h_last, reused.h_last)


@pytest.mark.parametrize("kernels", _paths())
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("f, g, loss", COMBOS)
def test_workspace_equals_fresh_arrays(rng, kernels, dtype, f, g, loss):
    D, H, O = 5, 6, 4
    model = RNN(D, H, O, f, g, loss, dtype=dtype, seed=2)
    ws = Workspace()
    previous = set_default_engine("numba" if kernels else "numpy")
    try:
        # Longer, then shorter, then wider batches through one workspace: the buffers are
        # grown and served from their start.
        for T, B in ((7, 3), (4, 3), (5, 4), (7, 3)):
            x = rng.standard_normal((T, B, D))
            y = make_targets(rng, g, loss, T, B, O)
            h0 = rng.standard_normal((B, H)) * 0.5
            _assert_same(model.gradients(x, y, h0=h0), model.gradients(x, y, h0=h0, workspace=ws))
    finally:
        set_default_engine(previous)


@pytest.mark.parametrize("kernels", _paths())
@pytest.mark.parametrize("need", [None, (), ("dx",), ("dy_hat", "dh0")])
def test_workspace_tokens_mask_mean_need(rng, kernels, need):
    T, B, D, H, O = 6, 3, 7, 5, 4
    model = RNN(D, H, O, dtype=np.float32, seed=0)
    x = rng.integers(0, D, size=(T, B))
    y = rng.integers(0, O, size=(T, B))
    mask = np.ones((T, B), dtype=bool)
    mask[4:, 1] = False
    ws = Workspace()
    previous = set_default_engine("numba" if kernels else "numpy")
    try:
        for _ in range(2):
            fresh = model.gradients(x, y, mask=mask, reduction="mean", need=need)
            _assert_same(fresh, model.gradients(x, y, mask=mask, reduction="mean", need=need, workspace=ws))
    finally:
        set_default_engine(previous)


def test_next_call_overwrites_results_except_h_last(rng):
    T, B, D, H, O = 5, 2, 3, 4, 3
    model = RNN(D, H, O, seed=1)
    ws = Workspace()
    x1, x2 = rng.standard_normal((2, T, B, D))
    y = rng.integers(0, O, size=(T, B))
    first = model.gradients(x1, y, workspace=ws)
    kept = {k: v.copy() for k, v in all_grads(first).items()}
    h_last = first.h_last.copy()
    second = model.gradients(x2, y, workspace=ws)
    for key in all_grads(first):  # documented: the same memory, now holding the second call's values
        assert np.shares_memory(all_grads(first)[key], all_grads(second)[key]), key
        assert np.array_equal(all_grads(first)[key], all_grads(second)[key])
    assert not np.array_equal(all_grads(first)["W_h"], kept["W_h"])
    assert np.shares_memory(first.forward.h, second.forward.h)
    assert np.array_equal(first.h_last, h_last)  # a copy, safe to carry as the next h0
    assert not np.shares_memory(second.h_last, second.forward.h)


def test_calls_without_or_with_another_workspace_are_untouched(rng):
    T, B, D, H, O = 5, 2, 3, 4, 3
    model = RNN(D, H, O, seed=1)
    x1, x2 = rng.standard_normal((2, T, B, D))
    y = rng.integers(0, O, size=(T, B))
    ws_a, ws_b = Workspace(), Workspace()
    plain = model.gradients(x1, y)
    in_a = model.gradients(x1, y, workspace=ws_a)
    kept = {k: v.copy() for k, v in all_grads(plain).items()}
    model.gradients(x2, y)
    model.gradients(x2, y, workspace=ws_b)
    for key in kept:
        assert np.array_equal(all_grads(plain)[key], kept[key]), key
        assert np.array_equal(all_grads(in_a)[key], kept[key]), key


def test_carrying_h_last_through_a_workspace(rng):
    # Truncated BPTT as the Trainer runs it: h0 of each chunk is the previous h_last.
    T, B, D, H, O = 4, 2, 3, 5, 3
    model = RNN(D, H, O, seed=4)
    ws = Workspace()
    h_plain = h_ws = None
    for _ in range(3):
        x = rng.standard_normal((T, B, D))
        y = rng.integers(0, O, size=(T, B))
        plain = model.gradients(x, y, h0=h_plain)
        reused = model.gradients(x, y, h0=h_ws, workspace=ws)
        _assert_same(plain, reused)
        h_plain, h_ws = plain.h_last, reused.h_last


def test_workspace_array_reuse_and_growth():
    ws = Workspace()
    a = ws.array("h", (3, 4), np.float32)
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.flags.c_contiguous
    assert np.shares_memory(a, ws.array("h", (2, 4), np.float32))  # smaller: same memory
    assert not np.shares_memory(a, ws.array("dh", (3, 4), np.float32))  # names apart
    big = ws.array("h", (5, 4), np.float32)  # larger: grown
    assert big.shape == (5, 4) and np.shares_memory(big, ws.array("h", (3, 4), np.float32))
    other = ws.array("h", (3, 4), np.float64)  # another dtype: replaced
    assert other.dtype == np.float64 and not np.shares_memory(big, other)
    assert ws.nbytes == 3 * 4 * 8 + 3 * 4 * 4
    assert "Workspace(2 arrays" in repr(ws)
    ws.clear()
    assert ws.nbytes == 0


@pytest.mark.parametrize("make_opt", [lambda p: Adam(p, lr=1e-2), lambda p: SGD(p, lr=0.1, momentum=0.9)])
def test_training_steps_with_a_workspace_equal_fresh_arrays(rng, make_opt):
    # The Trainer's step: gradients, clip in place, optimizer step, carry h_last. Optimizer
    # state must not alias the workspace's gradient arrays (it is written in place, so
    # the next call would corrupt it if it did).
    T, B, D, H, O = 5, 3, 6, 7, 6
    plain = RNN(D, H, O, dtype=np.float32, seed=5)
    reused = plain.copy()
    opt_plain, opt_reused = make_opt(plain.params), make_opt(reused.params)
    ws = Workspace()
    h_plain = h_reused = None
    for _ in range(4):
        x = rng.integers(0, D, size=(T, B))
        y = rng.integers(0, O, size=(T, B))
        r1 = plain.gradients(x, y, h0=h_plain, reduction="mean", need=())
        r2 = reused.gradients(x, y, h0=h_reused, reduction="mean", need=(), workspace=ws)
        assert r1.loss == r2.loss
        n1, n2 = clip_grad_norm(r1.grads, 0.5), clip_grad_norm(r2.grads, 0.5)
        assert n1 == n2
        opt_plain.step(r1.grads)
        opt_reused.step(r2.grads)
        h_plain, h_reused = r1.h_last, r2.h_last
    for key in plain.params:
        assert np.array_equal(plain.params[key], reused.params[key]), key


class _Softplus(Activation):
    """A user's hidden activation: f' from z (so the forward pass keeps z), and ``fn``
    ignores ``out`` and returns a new array, as a user's code may."""

    name = "softplus"
    derivative_needs_input = True

    def fn(self, z, out=None):
        return np.logaddexp(0, z)

    def derivative(self, z, out):
        return 1 / (1 + np.exp(-z))


class _Square(Activation):
    """A user's output activation (element-wise, new arrays, no ``out``)."""

    name = "square"

    def fn(self, z, out=None):
        return z * z

    def derivative(self, z, out):
        return 2 * z


@pytest.mark.parametrize("kernels", _paths())
def test_user_activations_with_a_workspace(rng, kernels):
    T, B, D, H, O = 5, 3, 4, 6, 3
    model = RNN(D, H, O, _Softplus(), _Square(), "mse", seed=3)
    ws = Workspace()
    previous = set_default_engine("numba" if kernels else "numpy")
    try:
        for _ in range(2):
            x = rng.standard_normal((T, B, D))
            y = rng.standard_normal((T, B, O))
            fresh = model.gradients(x, y)
            reused = model.gradients(x, y, workspace=ws)
            _assert_same(fresh, reused)
            assert np.array_equal(fresh.forward.layers[0].z, reused.forward.layers[0].z)
    finally:
        set_default_engine(previous)


class _Float64Derivative(Activation):
    """A user's output activation whose derivative comes back in float64 whatever the input."""

    name = "float64-derivative"

    def fn(self, z, out=None):
        return np.multiply(z, 1.0, out=out)

    def derivative(self, z, out):
        return np.ones(out.shape)  # float64


def test_user_activation_returning_float64_keeps_a_float32_model_float32(rng):
    T, B, D, H, O = 4, 2, 3, 5, 3
    model = RNN(D, H, O, "tanh", _Float64Derivative(), "mse", dtype=np.float32, seed=1)
    x = rng.standard_normal((T, B, D))
    y = rng.standard_normal((T, B, O))
    fresh = model.gradients(x, y)
    for key, grad in all_grads(fresh).items():
        assert grad.dtype == np.float32, key
    _assert_same(fresh, model.gradients(x, y, workspace=Workspace()))


@pytest.mark.parametrize("kernels", _paths())
@pytest.mark.parametrize("f, g, loss", COMBOS[:5])
def test_loss_with_a_workspace(rng, kernels, f, g, loss):
    T, B, D, H, O = 6, 2, 4, 5, 3
    model = RNN(D, H, O, f, g, loss, dtype=np.float32, seed=1)
    ws = Workspace()
    previous = set_default_engine("numba" if kernels else "numpy")
    try:
        for T in (6, 4):
            x = rng.standard_normal((T, B, D))
            y = make_targets(rng, g, loss, T, B, O)
            assert model.loss(x, y, reduction="mean") == model.loss(x, y, reduction="mean", workspace=ws)
            # gradients and loss may share a workspace
            assert model.gradients(x, y, workspace=ws).loss == model.loss(x, y, workspace=ws)
    finally:
        set_default_engine(previous)


def test_performance_doc_workspace_example_runs():
    # docs/performance.md shows a training loop with a Workspace; it must run as pasted.
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "performance.md").read_text(encoding="utf-8")
    section = text[text.index("### Third pass"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    code = code[:code.index("```")]
    scope = {}
    exec(compile(code.replace("print(ws)", "result = repr(ws)"), "performance.md", "exec"), scope)
    assert scope["result"].startswith("Workspace(")
