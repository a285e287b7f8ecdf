"""Stacked and bidirectional networks against PyTorch float64 autograd.

Oracles (tests/oracle.py), neither of which calls rnngrad: ``deep_reference``, the network
written step by step in torch from nn.RNN state dicts (every f, every dL/dh_t of every layer),
and ``nn_rnn_reference``, torch.nn.RNN itself with pack_padded_sequence (tanh and relu; the two
oracles are also checked against each other).
"""

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import COMBOS, assert_close, make_targets
from oracle import deep_reference, nn_rnn_reference
import rnngrad
from rnngrad import RNN
from rnngrad.interop import torch_keys
from rnngrad.network import layer_param_names

SHAPES = [(1, False), (2, False), (3, False), (1, True), (2, True), (3, True)]
T, B, D, H, O = 5, 3, 4, 3, 4
LENGTHS = np.array([5, 2, 4])


def prefix_mask(lengths=LENGTHS, T=T):
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


def torch_named(model, grads):
    """rnngrad gradients under nn.RNN's keys (b_h's gradient is both biases' gradient)."""
    out = {}
    for k in range(model.num_layers):
        for d in range(model.directions):
            w_ih, w_hh, b_ih, b_hh = torch_keys(k, d)
            W_x, W_h, b_h = layer_param_names(k, d)
            out.update({w_ih: grads[W_x], w_hh: grads[W_h], b_ih: grads[b_h], b_hh: grads[b_h]})
    out["linear.weight"], out["linear.bias"] = grads["W_y"], grads["b_y"]
    return out


def compare(model, res, ref_loss, ref, rtol):
    assert res.loss == pytest.approx(ref_loss, rel=rtol)
    ours = torch_named(model, res.grads)
    for key, want in ref.items():
        if key in ours:
            assert_close(ours[key], want, rtol, key)
    if "dh" in ref:  # nn.RNN keeps its states inside: only the step-by-step oracle has them
        assert_close(res.dh.reshape(ref["dh"].shape), ref["dh"], rtol, "dh")
    assert_close(res.dy_hat, ref["dy_hat"], rtol, "dy_hat")
    if "x" in ref:
        assert_close(res.dx, ref["x"], rtol, "dx")
    assert_close(res.dh0.reshape(ref["h0"].shape), ref["h0"], rtol, "dh0")


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
@pytest.mark.parametrize("hidden, output, loss", COMBOS)
@pytest.mark.parametrize("masked", [False, True])
def test_every_gradient_matches_torch(rng, num_layers, bidirectional, hidden, output, loss, masked):
    model = RNN(D, H, O, hidden_activation=hidden, output_activation=output, loss=loss,
                num_layers=num_layers, bidirectional=bidirectional, seed=int(rng.integers(1 << 30)))
    x = rng.standard_normal((T, B, D))
    y = make_targets(rng, output, loss, T, B, O)
    U = num_layers * model.directions
    h0 = rng.standard_normal((U, B, H)) * 0.5
    mask = prefix_mask() if masked else None
    res = model.gradients(x, y, h0=h0, mask=mask)
    rnn_state, linear_state = model.torch_state_dict()
    ref_loss, ref = deep_reference(rnn_state, linear_state, x, y, num_layers=num_layers,
                                   bidirectional=bidirectional, hidden=hidden, output=output, loss=loss,
                                   h0=h0, mask=mask)
    compare(model, res, ref_loss, ref, 1e-10)


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
@pytest.mark.parametrize("hidden", ["tanh", "relu"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_imported_torch_model_matches_nn_rnn(rng, num_layers, bidirectional, hidden, masked, inputs):
    """Weights made by torch (two biases) imported; loss and every gradient equal nn.RNN's, packed
    sequences for the mask; and the step-by-step oracle agrees with nn.RNN."""
    torch.manual_seed(int(rng.integers(1 << 30)))
    rnn = torch.nn.RNN(D, H, num_layers=num_layers, nonlinearity=hidden, bidirectional=bidirectional,
                       dtype=torch.float64)
    lin = torch.nn.Linear(H * (2 if bidirectional else 1), O, dtype=torch.float64)
    model = RNN(D, H, O, hidden_activation=hidden, num_layers=num_layers, bidirectional=bidirectional)
    model.load_torch_state_dict(rnn.state_dict(), lin.state_dict())
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    mask = prefix_mask() if masked else None
    h0 = rng.standard_normal((num_layers * model.directions, B, H))
    res = model.gradients(x, y, h0=h0, mask=mask, reduction="mean")
    state = {k: v.numpy() for k, v in rnn.state_dict().items()}
    linear = {k: v.numpy() for k, v in lin.state_dict().items()}
    ref_loss, ref, h_n = nn_rnn_reference(state, linear, x, y, num_layers=num_layers,
                                          bidirectional=bidirectional, hidden=hidden, h0=h0, mask=mask,
                                          reduction="mean")
    compare(model, res, ref_loss, ref, 1e-10)
    if bidirectional or not masked:  # a unidirectional network's state runs on through padding
        assert_close(res.h_last, h_n, 1e-12, "h_last")
    step_loss, step = deep_reference(state, linear, x, y, num_layers=num_layers, bidirectional=bidirectional,
                                     hidden=hidden, h0=h0, mask=mask, reduction="mean")
    assert step_loss == pytest.approx(ref_loss, rel=1e-12)
    for key in ref:
        if key in step:
            assert_close(step[key], ref[key], 1e-10, key)
    compare(model, res, step_loss, step, 1e-10)  # every layer's dh too


# --- helpers for the tests below -------------------------------------------------------------

ALL_SHAPES = SHAPES  # (num_layers, bidirectional), one to three layers, each direction count
DEEP_SHAPES = [(2, False), (3, False), (2, True), (3, True)]  # the shapes that have dropout levels


def units(num_layers, bidirectional):
    return num_layers * (2 if bidirectional else 1)


def build(num_layers, bidirectional, rng, **kwargs):
    return RNN(D, H, O, num_layers=num_layers, bidirectional=bidirectional,
               seed=int(rng.integers(1 << 30)), **kwargs)


def reference_of(model, x, y, **kwargs):
    """deep_reference (torch autograd, step by step) for this model's weights."""
    rnn_state, linear_state = model.torch_state_dict()
    return deep_reference(rnn_state, linear_state, x, y, num_layers=model.num_layers,
                          bidirectional=model.bidirectional, hidden=model.f.name, output=model.g.name,
                          loss=model.loss_fn.name, **kwargs)


def assert_same_result(a, b):
    """Two gradients results equal bit for bit (the same computation, replayed)."""
    assert a.loss == b.loss
    assert list(a.grads) == list(b.grads)
    for k in a.grads:
        np.testing.assert_array_equal(a.grads[k], b.grads[k], err_msg=k)
    for name in ("dh", "dy_hat", "dx", "dh0", "h_last"):
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None) == (vb is None), name
        if va is not None:
            np.testing.assert_array_equal(va, vb, err_msg=name)


# --- 1. dropout between layers -----------------------------------------------------------------

@pytest.mark.parametrize("num_layers, bidirectional", DEEP_SHAPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("p", [0.25, 0.6])
def test_dropout_gradients_match_torch_with_the_same_masks(rng, num_layers, bidirectional, masked, p):
    model = build(num_layers, bidirectional, rng, dropout=p)
    x = rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    h0 = rng.standard_normal((units(num_layers, bidirectional), B, H)) * 0.5
    mask = prefix_mask() if masked else None
    res = model.gradients(x, y, h0=h0, mask=mask, dropout_seed=int(rng.integers(1 << 30)))
    masks = res.forward.dropout_masks
    assert isinstance(masks, list) and len(masks) == num_layers - 1
    C = H * model.directions
    for m in masks:
        assert m.shape == (T, B, C) and m.dtype == np.float64
        assert (m == 0).any() and (m != 0).any()  # the masks are not trivial: this test can fail
    ref_loss, ref = reference_of(model, x, y, h0=h0, mask=mask, dropout_masks=masks)
    compare(model, res, ref_loss, ref, 1e-10)
    # ... and the masks do change the function: without them the reference is another number.
    plain_loss, _ = reference_of(model, x, y, h0=h0, mask=mask)
    assert abs(plain_loss - res.loss) > 1e-6 * abs(plain_loss)


@pytest.mark.parametrize("num_layers, bidirectional", DEEP_SHAPES)
def test_replaying_dropout_masks_reproduces_the_call(rng, num_layers, bidirectional):
    model = build(num_layers, bidirectional, rng, dropout=0.4)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    mask = prefix_mask() if bidirectional else None
    first = model.gradients(x, y, mask=mask, dropout_seed=7)
    replay = model.gradients(x, y, mask=mask, dropout_masks=first.forward.dropout_masks)
    assert_same_result(first, replay)
    again = model.gradients(x, y, mask=mask, dropout_seed=7)  # the same seed draws the same masks
    assert_same_result(first, again)
    for a, b in zip(first.forward.dropout_masks, again.forward.dropout_masks):
        np.testing.assert_array_equal(a, b)
    other = model.gradients(x, y, mask=mask, dropout_seed=8)
    assert any(not np.array_equal(a, b) for a, b in zip(first.forward.dropout_masks, other.forward.dropout_masks))
    assert model.loss(x, y, mask=mask, dropout_masks=first.forward.dropout_masks) == first.loss
    assert model.loss(x, y, mask=mask, dropout_seed=7) == first.loss
    assert model.forward(x, mask=mask, dropout_seed=7).y_hat.tolist() == first.forward.y_hat.tolist()


@pytest.mark.parametrize("num_layers, bidirectional", ALL_SHAPES)
def test_no_dropout_without_a_seed_or_with_p_zero(rng, num_layers, bidirectional):
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    model = build(num_layers, bidirectional, rng, dropout=0.5)
    evaluation = model.gradients(x, y)  # no seed, no masks: evaluation, no dropout
    assert evaluation.forward.dropout_masks is None
    ref_loss, ref = reference_of(model, x, y)
    compare(model, evaluation, ref_loss, ref, 1e-10)
    zero = RNN(D, H, O, num_layers=num_layers, bidirectional=bidirectional, dropout=0.0)
    zero.params = {k: v.copy() for k, v in model.params.items()}
    seeded = zero.gradients(x, y, dropout_seed=3)  # p = 0: a seed draws nothing
    assert seeded.forward.dropout_masks is None
    assert_same_result(seeded, zero.gradients(x, y))
    if num_layers == 1:  # one layer has no level below the top: a seed draws nothing either
        assert model.gradients(x, y, dropout_seed=3).forward.dropout_masks is None


@pytest.mark.parametrize("p", [0.1, 0.3, 0.75])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dropout_mask_values_and_rate(p, dtype):
    Tm, Bm, Hm = 50, 20, 8
    model = RNN(2, Hm, 3, num_layers=3, bidirectional=True, dropout=p, dtype=dtype, seed=0)
    x = np.random.default_rng(1).standard_normal((Tm, Bm, 2))
    masks = model.forward(x, dropout_seed=11).dropout_masks
    assert len(masks) == 2
    keep = dtype(1) / dtype(1 - p)
    for m in masks:
        assert m.shape == (Tm, Bm, 2 * Hm) and m.dtype == dtype
        assert set(np.unique(m).tolist()) == {0.0, float(keep)}
        assert float(keep) == pytest.approx(1 / (1 - p), rel=1e-6)
        # 16,000 Bernoulli(p) draws: the standard deviation of the fraction is below 0.004.
        assert np.mean(m == 0) == pytest.approx(p, abs=0.02)
    assert not np.array_equal(masks[0], masks[1])  # each level draws its own mask


@pytest.mark.parametrize("num_layers, bidirectional", DEEP_SHAPES)
def test_dropout_gradients_match_finite_differences(rng, num_layers, bidirectional):
    """The mask is a constant of the function: check_gradients with the same dropout_seed uses the
    masks of the analytic call in every loss evaluation."""
    model = RNN(2, 2, 3, num_layers=num_layers, bidirectional=bidirectional, dropout=0.5,
                seed=int(rng.integers(1 << 30)))
    Tf, Bf = 4, 2
    x, y = rng.standard_normal((Tf, Bf, 2)), rng.integers(0, 3, size=(Tf, Bf))
    h0 = rng.standard_normal((units(num_layers, bidirectional), Bf, 2)) * 0.5
    mask = np.arange(Tf)[:, None] < np.array([4, 2])[None, :]
    report = rnngrad.check_gradients(model, x, y, h0=h0, mask=mask, dropout_seed=5, eps=1e-3, order=4, rtol=1e-9)
    assert report.passed, report.table()
    # The check ran with dropout: its loss is the dropped-out loss, not the evaluation one.
    assert report.loss == model.loss(x, y, h0=h0, mask=mask, dropout_seed=5)
    assert report.loss != model.loss(x, y, h0=h0, mask=mask)


# --- 2. batch_first ---------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers, bidirectional", ALL_SHAPES)
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_batch_first_is_the_time_major_result_swapped(rng, num_layers, bidirectional, inputs):
    """Layout only: the same call made batch-first returns every sequence array with its T and B
    axes swapped (dh (U, B, T, H)), and h0-shaped arrays unchanged."""
    tm = build(num_layers, bidirectional, rng, dropout=0.3)
    bf = RNN(D, H, O, num_layers=num_layers, bidirectional=bidirectional, dropout=0.3, batch_first=True)
    bf.params = {k: v.copy() for k, v in tm.params.items()}
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    y, mask = rng.integers(0, O, size=(T, B)), prefix_mask()
    U = units(num_layers, bidirectional)
    h0 = rng.standard_normal((U, B, H))
    a = tm.gradients(x, y, h0=h0, mask=mask, dropout_seed=4)
    b = bf.gradients(x.swapaxes(0, 1), y.T, h0=h0, mask=mask.T, dropout_seed=4)
    assert b.loss == a.loss
    for k in a.grads:
        np.testing.assert_array_equal(b.grads[k], a.grads[k], err_msg=k)
    if U == 1:
        assert a.dh.shape == (T, B, H) and b.dh.shape == (B, T, H)
    else:
        assert a.dh.shape == (U, T, B, H) and b.dh.shape == (U, B, T, H)
    np.testing.assert_array_equal(b.dh, a.dh.swapaxes(-3, -2))
    np.testing.assert_array_equal(b.dy_hat, a.dy_hat.swapaxes(0, 1))
    assert b.dy_hat.shape == (B, T, O)
    if inputs == "floats":
        assert b.dx.shape == (B, T, D)
        np.testing.assert_array_equal(b.dx, a.dx.swapaxes(0, 1))
    else:
        assert a.dx is None and b.dx is None
    for name in ("dh0", "h_last"):  # (U, B, H) in both layouts, as in PyTorch
        assert getattr(b, name).shape == (U, B, H)
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    for name in ("h", "a", "y_hat"):
        np.testing.assert_array_equal(getattr(b.forward, name), getattr(a.forward, name).swapaxes(0, 1))
    assert b.forward.h.shape == (B, T, H * tm.directions)
    for ma, mb in zip(a.forward.dropout_masks or [], b.forward.dropout_masks or []):  # batch-first too
        assert mb.shape == (B, T, H * tm.directions)
        np.testing.assert_array_equal(ma, mb.swapaxes(0, 1))
    fwd = bf.forward(x.swapaxes(0, 1), h0=h0, mask=mask.T)
    np.testing.assert_array_equal(fwd.y_hat, tm.forward(x, h0=h0, mask=mask).y_hat.swapaxes(0, 1))
    assert bf.loss(x.swapaxes(0, 1), y.T, h0=h0, mask=mask.T) == tm.loss(x, y, h0=h0, mask=mask)


def test_batch_first_single_layer_keeps_the_seed_shapes(rng):
    tm = RNN(D, H, O, seed=3)
    bf = RNN(D, H, O, batch_first=True)
    bf.params = {k: v.copy() for k, v in tm.params.items()}
    x, y, h0 = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B)), rng.standard_normal((B, H))
    a, b = tm.gradients(x, y, h0=h0), bf.gradients(x.swapaxes(0, 1), y.T, h0=h0)
    assert b.dh.shape == (B, T, H) and b.dh0.shape == (B, H) and b.h_last.shape == (B, H)
    np.testing.assert_array_equal(b.dh, a.dh.swapaxes(0, 1))
    np.testing.assert_array_equal(b.dh0, a.dh0)


@pytest.mark.parametrize("num_layers, bidirectional", ALL_SHAPES)
@pytest.mark.parametrize("hidden", ["tanh", "relu"])
@pytest.mark.parametrize("masked", [False, True])
def test_batch_first_matches_torch_batch_first(rng, num_layers, bidirectional, hidden, masked):
    """Against torch.nn.RNN(batch_first=True), packed batch-first sequences for the mask."""
    torch.manual_seed(int(rng.integers(1 << 30)))
    rnn = torch.nn.RNN(D, H, num_layers=num_layers, nonlinearity=hidden, bidirectional=bidirectional,
                       batch_first=True, dtype=torch.float64)
    lin = torch.nn.Linear(H * (2 if bidirectional else 1), O, dtype=torch.float64)
    model = RNN(D, H, O, hidden_activation=hidden, num_layers=num_layers, bidirectional=bidirectional,
                batch_first=True)
    model.load_torch_state_dict(rnn.state_dict(), lin.state_dict())
    x, y = rng.standard_normal((B, T, D)), rng.integers(0, O, size=(B, T))
    mask = prefix_mask().T if masked else None  # (B, T)
    h0 = rng.standard_normal((units(num_layers, bidirectional), B, H))
    res = model.gradients(x, y, h0=h0, mask=mask)
    state = {k: v.numpy() for k, v in rnn.state_dict().items()}
    linear = {k: v.numpy() for k, v in lin.state_dict().items()}
    ref_loss, ref, h_n = nn_rnn_reference(state, linear, x, y, num_layers=num_layers, bidirectional=bidirectional,
                                          hidden=hidden, h0=h0, mask=mask, batch_first=True)
    compare(model, res, ref_loss, ref, 1e-10)  # dy_hat, dx: (B, T, ...) on both sides
    assert res.dy_hat.shape == (B, T, O) and res.dx.shape == (B, T, D)
    if bidirectional or not masked:
        assert_close(res.h_last.reshape(h_n.shape), h_n, 1e-12, "h_last")
    # dh is the total dL/dh_t (the recursion included), which nn.RNN does not expose: the
    # step-by-step oracle, time-major, gives it, and batch-first it is swapped.
    step_loss, step = deep_reference(state, linear, x.swapaxes(0, 1), y.T, num_layers=num_layers,
                                     bidirectional=bidirectional, hidden=hidden, h0=h0,
                                     mask=None if mask is None else mask.T)
    assert step_loss == pytest.approx(ref_loss, rel=1e-12)
    dh = res.dh.swapaxes(-3, -2).reshape(step["dh"].shape)
    assert_close(dh, step["dh"], 1e-10, "dh")


# --- 3. token inputs, float32, mean, h0 (1, B, H) ---------------------------------------------

@pytest.mark.parametrize("num_layers, bidirectional", ALL_SHAPES)
@pytest.mark.parametrize("hidden, output, loss", [("tanh", "softmax", "cross_entropy"),
                                                  ("sigmoid", "sigmoid", "cross_entropy"),
                                                  ("relu", "identity", "mse"),
                                                  ("identity", "softmax", "mse")])
@pytest.mark.parametrize("masked", [False, True])
def test_token_inputs_match_torch_with_one_hot_rows(rng, num_layers, bidirectional, hidden, output, loss, masked):
    model = RNN(D, H, O, hidden_activation=hidden, output_activation=output, loss=loss, num_layers=num_layers,
                bidirectional=bidirectional, seed=int(rng.integers(1 << 30)))
    tokens = rng.integers(0, D, size=(T, B))
    y = make_targets(rng, output, loss, T, B, O)
    mask = prefix_mask() if masked else None
    h0 = rng.standard_normal((units(num_layers, bidirectional), B, H)) * 0.5
    res = model.gradients(tokens, y, h0=h0, mask=mask)
    assert res.dx is None  # no gradient for indices
    ref_loss, ref = reference_of(model, tokens, y, h0=h0, mask=mask)  # one_hot(tokens) @ W_x^T in torch
    assert "x" not in ref
    compare(model, res, ref_loss, ref, 1e-10)
    # The token call is the one-hot call: same loss and gradients (dx aside).
    one_hot = np.eye(D)[tokens]
    dense = model.gradients(one_hot, y, h0=h0, mask=mask)
    assert dense.loss == pytest.approx(res.loss, rel=1e-13)
    for k in res.grads:
        assert_close(res.grads[k], dense.grads[k], 1e-12, k)


# float32 tolerance: the float32 model is compared with the float64 computation of the *same*
# float32 parameters and inputs, so the difference is rounding alone. Each entry is a sum of a few
# dozen products along paths of length <= T per layer (T = 5, up to 3 layers): a bound of a few
# hundred float32 unit roundoffs (u = 6e-8), measured at 1e-7 to 3e-7 of each array's largest entry.
# 2e-5 leaves a factor of ~50 above that and stays far below any real error (a lost term, a wrong
# mask or bias, a float16 step: 1e-3 and more).
FLOAT32_RTOL = 2e-5


@pytest.mark.parametrize("num_layers, bidirectional", ALL_SHAPES)
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_float32_model_within_float32_accuracy_of_float64(rng, num_layers, bidirectional, inputs):
    m64 = build(num_layers, bidirectional, rng, dropout=0.3)
    m32 = m64.astype(np.float32)
    exact = m32.astype(np.float64)  # the float32 parameters, computed in float64
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D)).astype(np.float32)
    y, mask = rng.integers(0, O, size=(T, B)), prefix_mask()
    h0 = rng.standard_normal((units(num_layers, bidirectional), B, H)).astype(np.float32)
    masks = m64.forward(np.zeros((T, B, D)), dropout_seed=2).dropout_masks  # 0 and 1/(1-p), float64
    r32 = m32.gradients(x, y, h0=h0, mask=mask, dropout_masks=masks)
    r64 = exact.gradients(x if inputs == "tokens" else x.astype(np.float64), y, h0=h0.astype(np.float64),
                          mask=mask, dropout_masks=masks)
    assert r32.loss == pytest.approx(r64.loss, rel=FLOAT32_RTOL)
    for k in r64.grads:
        assert r32.grads[k].dtype == np.float32, k
        assert_close(r32.grads[k], r64.grads[k], FLOAT32_RTOL, k)
    for name in ("dh", "dy_hat", "dx", "dh0", "h_last"):
        want = getattr(r64, name)
        if want is None:
            assert getattr(r32, name) is None
            continue
        assert getattr(r32, name).dtype == np.float32, name
        assert_close(getattr(r32, name), want, FLOAT32_RTOL, name)
    assert r32.forward.y_hat.dtype == np.float32


@pytest.mark.parametrize("num_layers, bidirectional", ALL_SHAPES)
@pytest.mark.parametrize("hidden, output, loss", [("tanh", "softmax", "cross_entropy"),
                                                  ("sigmoid", "identity", "mse")])
@pytest.mark.parametrize("masked", [False, True])
def test_mean_reduction_matches_torch(rng, num_layers, bidirectional, hidden, output, loss, masked):
    model = RNN(D, H, O, hidden_activation=hidden, output_activation=output, loss=loss, num_layers=num_layers,
                bidirectional=bidirectional, seed=int(rng.integers(1 << 30)))
    x, y = rng.standard_normal((T, B, D)), make_targets(rng, output, loss, T, B, O)
    mask = prefix_mask() if masked else None
    res = model.gradients(x, y, mask=mask, reduction="mean")
    ref_loss, ref = reference_of(model, x, y, mask=mask, reduction="mean")
    compare(model, res, ref_loss, ref, 1e-10)
    total = model.gradients(x, y, mask=mask, reduction="sum")
    count = LENGTHS.sum() if masked else T * B
    assert res.loss == pytest.approx(total.loss / count, rel=1e-13)


def test_single_layer_takes_h0_as_one_unit(rng):
    """h0 (1, B, H) for one layer and one direction: dh0 and h_last then (1, B, H) too; the same
    numbers as h0 (B, H), and as torch."""
    model = RNN(D, H, O, seed=5)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    h0 = rng.standard_normal((1, B, H))
    res = model.gradients(x, y, h0=h0)
    assert res.dh0.shape == (1, B, H) and res.h_last.shape == (1, B, H) and res.dh.shape == (T, B, H)
    assert model.forward(x, h0=h0).h_last.shape == (1, B, H)
    ref_loss, ref = reference_of(model, x, y, h0=h0)
    compare(model, res, ref_loss, ref, 1e-10)
    flat = model.gradients(x, y, h0=h0[0])
    assert flat.dh0.shape == (B, H) and flat.h_last.shape == (B, H)
    np.testing.assert_array_equal(flat.dh0, res.dh0[0])
    np.testing.assert_array_equal(flat.h_last, res.h_last[0])
    rnn = torch.nn.RNN(D, H, dtype=torch.float64)
    rnn.load_state_dict({k: torch.from_numpy(v) for k, v in model.torch_state_dict()[0].items()})
    _, h_n = rnn(torch.from_numpy(x), torch.from_numpy(h0))
    assert_close(res.h_last, h_n.detach().numpy(), 1e-12, "h_last")


# --- 4. finite differences for deep and bidirectional models ----------------------------------

@pytest.mark.parametrize("num_layers, bidirectional", ALL_SHAPES)
@pytest.mark.parametrize("hidden, output, loss", [("tanh", "softmax", "cross_entropy"),
                                                  ("sigmoid", "sigmoid", "cross_entropy"),
                                                  ("tanh", "identity", "mse"),
                                                  ("relu", "softmax", "cross_entropy")])
@pytest.mark.parametrize("masked", [False, True])
def test_deep_and_bidirectional_gradients_match_finite_differences(rng, num_layers, bidirectional, hidden,
                                                                    output, loss, masked):
    Tf, Bf, Df, Hf, Of = 4, 3, 2, 2, 3
    model = RNN(Df, Hf, Of, hidden_activation=hidden, output_activation=output, loss=loss,
                num_layers=num_layers, bidirectional=bidirectional, seed=int(rng.integers(1 << 30)))
    x = rng.standard_normal((Tf, Bf, Df))
    y = make_targets(rng, output, loss, Tf, Bf, Of)
    h0 = rng.standard_normal((units(num_layers, bidirectional), Bf, Hf)) * 0.5
    mask = np.arange(Tf)[:, None] < np.array([4, 1, 3])[None, :] if masked else None
    # Each array to its own scale, and every array to the scale of the largest gradient. The lower
    # layers' gradients can be a thousand times smaller than the head's (sigmoid' <= 1/4 per layer),
    # while the rounding error of a difference quotient, ~u·|L|/eps, is the same for all arrays.
    if hidden == "relu":  # a wide stencil may cross the kink: three points, a small step, u·|L|/eps ~ 1e-9
        report = rnngrad.check_gradients(model, x, y, h0=h0, mask=mask, eps=1e-6, order=2, rtol=1e-5)
        global_tol = 1e-8
    else:  # five points: truncation O(eps^4) and rounding u·|L|/eps, both ~1e-12 at eps = 1e-3
        report = rnngrad.check_gradients(model, x, y, h0=h0, mask=mask, eps=1e-3, order=4, rtol=1e-7)
        global_tol = 1e-10
    assert report.passed, report.table()
    res = model.gradients(x, y, h0=h0, mask=mask)
    scale = max(np.abs(v).max() for v in [*res.grads.values(), res.dx, res.dh0])
    for entry in report.entries.values():
        assert entry.max_abs_error <= global_tol * scale, report.table()
    assert set(report.entries) == set(model.params) | {"x", "h0"}
    assert report["x"].checked == Tf * Bf * Df  # every entry
    assert report["h0"].shape == h0.shape
    for name, shape in model.shapes.items():
        assert report[name].checked == int(np.prod(shape))


@pytest.mark.parametrize("num_layers, bidirectional", [(2, True), (2, False)])
def test_finite_differences_batch_first_tokens_and_mean(rng, num_layers, bidirectional):
    model = RNN(3, 2, 3, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, dropout=0.3,
                seed=int(rng.integers(1 << 30)))
    Tf, Bf = 4, 2
    mask = (np.arange(Tf)[None, :] < np.array([4, 2])[:, None])  # (B, T)
    for x in (rng.standard_normal((Bf, Tf, 3)), rng.integers(0, 3, size=(Bf, Tf))):
        y = rng.integers(0, 3, size=(Bf, Tf))
        report = rnngrad.check_gradients(model, x, y, mask=mask, reduction="mean", dropout_seed=1,
                                         eps=1e-3, order=4, rtol=1e-9)
        assert report.passed, report.table()
        assert ("x" in report.entries) == (x.ndim == 3)


# --- 6. validation ----------------------------------------------------------------------------

def test_bidirectional_refuses_a_mask_that_is_not_a_prefix(rng):
    model = build(2, True, rng)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    bad = prefix_mask().astype(int)
    bad[1, 2] = 0  # column 2: valid, padding, valid, ...
    with pytest.raises(ValueError, match=r"mask must mark each sequence's valid steps.*column 2") as err:
        model.gradients(x, y, mask=bad)
    assert "\n" not in str(err.value)
    leading = prefix_mask()[::-1]  # padding first, then the valid steps: refused too
    with pytest.raises(ValueError, match="column 1"):
        model.forward(x, mask=leading)
    with pytest.raises(ValueError, match="column 1"):
        model.loss(x, y, mask=leading)
    with pytest.raises(ValueError, match="column 2"):  # batch-first: the column is the sequence
        bf = RNN(D, H, O, num_layers=2, bidirectional=True, batch_first=True)
        bf.gradients(x.swapaxes(0, 1), y.T, mask=bad.T)
    # a unidirectional network takes any pattern
    assert np.isfinite(build(2, False, rng).gradients(x, y, mask=bad).loss)


def test_bidirectional_refuses_a_sequence_without_valid_steps(rng):
    model = build(1, True, rng)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    mask = prefix_mask([5, 0, 4])
    with pytest.raises(ValueError, match="sequence 1 without any valid step"):
        model.gradients(x, y, mask=mask)
    with pytest.raises(ValueError, match="sequence 1"):
        model.forward(x, mask=mask)


@pytest.mark.parametrize("num_layers, bidirectional", ALL_SHAPES)
def test_h0_of_the_wrong_shape_is_refused(rng, num_layers, bidirectional):
    model = build(num_layers, bidirectional, rng)
    U = units(num_layers, bidirectional)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    bad = [(U + 1, B, H), (U, B + 1, H), (U, B, H + 1), (B, H + 1), (1, U, B, H), (H,)]
    if U > 1:
        bad.append((B, H))  # (B, H) only for one layer and one direction
    for shape in bad:
        with pytest.raises(ValueError, match=r"h0 must have shape") as err:
            model.gradients(x, y, h0=np.zeros(shape))
        msg = str(err.value)
        assert f"got shape {shape}" in msg, msg
        assert "\n" not in msg
    expected = "(B, H) = (3, 3)" if U == 1 else f"(num_layers * directions, B, H) = ({U}, {B}, {H})"
    with pytest.raises(ValueError, match=re.escape(expected)):
        model.gradients(x, y, h0=np.zeros((B, H + 1)) if U == 1 else np.zeros((U + 1, B, H)))
    with pytest.raises(ValueError, match="h0 contains NaN"):
        model.gradients(x, y, h0=np.full((U, B, H), np.nan))


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(num_layers=-2), ValueError, "num_layers"),
    (dict(num_layers=1.5), TypeError, "num_layers"),
    (dict(num_layers="2"), TypeError, "num_layers"),
    (dict(num_layers=True), TypeError, "num_layers"),
    (dict(num_layers=None), TypeError, "num_layers"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(dropout=1.5), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout=float("nan")), ValueError, "dropout"),
    (dict(dropout="0.1"), TypeError, "dropout"),
    (dict(dropout=True), TypeError, "dropout"),
    (dict(dropout=None), TypeError, "dropout"),
    (dict(bidirectional=1), TypeError, "bidirectional"),
    (dict(bidirectional="True"), TypeError, "bidirectional"),
    (dict(bidirectional=None), TypeError, "bidirectional"),
    (dict(batch_first=0), TypeError, "batch_first"),
    (dict(batch_first="yes"), TypeError, "batch_first"),
    (dict(batch_first=None), TypeError, "batch_first"),
])
def test_bad_architecture_arguments(kwargs, error, name):
    with pytest.raises(error, match=name) as err:
        RNN(D, H, O, **kwargs)
    assert type(err.value) is error and "\n" not in str(err.value)


def test_good_architecture_arguments_of_numpy_types():
    model = RNN(D, H, O, num_layers=np.int64(2), bidirectional=np.bool_(True), dropout=np.float32(0.5),
                batch_first=np.bool_(False))
    assert model.num_layers == 2 and model.bidirectional is True and model.batch_first is False
    assert model.dropout == 0.5 and type(model.num_layers) is int
    assert RNN(D, H, O, dropout=0).dropout == 0.0


@pytest.mark.parametrize("num_layers, bidirectional", DEEP_SHAPES)
def test_dropout_masks_of_the_wrong_length_or_shape_are_refused(rng, num_layers, bidirectional):
    model = build(num_layers, bidirectional, rng, dropout=0.5)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    C = H * model.directions
    good = [np.ones((T, B, C))] * (num_layers - 1)
    model.gradients(x, y, dropout_masks=good)  # accepted
    for masks in (good[:-1], good + [np.ones((T, B, C))], []):
        with pytest.raises(ValueError, match=rf"dropout_masks must be a list of num_layers - 1 = {num_layers - 1}"):
            model.gradients(x, y, dropout_masks=masks)
    with pytest.raises(ValueError, match="dropout_masks must be a list"):  # one array, not a list of them
        model.gradients(x, y, dropout_masks=np.ones((num_layers - 1, T, B, C)))
    for not_a_list in (5, (m for m in good)):  # named, not Python's "object of type ... has no len()"
        with pytest.raises((TypeError, ValueError), match="dropout_masks must be a list"):
            model.gradients(x, y, dropout_masks=not_a_list)
    for shape in [(T, B, H * 3), (B, T, C), (T + 1, B, C), (T, B)]:
        bad = good[:-1] + [np.ones(shape)]
        with pytest.raises(ValueError, match=re.escape(f"dropout_masks[{num_layers - 2}] must have shape "
                                                       f"(T, B, C) = ({T}, {B}, {C})")):
            model.gradients(x, y, dropout_masks=bad)
    with pytest.raises(ValueError, match=r"dropout_masks\[0\] contains NaN"):
        model.gradients(x, y, dropout_masks=[np.full((T, B, C), np.inf)] + good[1:])
    with pytest.raises(ValueError, match="not both"):
        model.gradients(x, y, dropout_masks=good, dropout_seed=1)
    with pytest.raises(ValueError, match="seed"):
        model.gradients(x, y, dropout_seed=-1)
    with pytest.raises(TypeError, match="seed"):
        model.gradients(x, y, dropout_seed=0.5)


@pytest.mark.parametrize("num_layers, bidirectional", ALL_SHAPES)
def test_unknown_missing_or_misshapen_params_are_refused(rng, num_layers, bidirectional):
    model = build(num_layers, bidirectional, rng)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    good = dict(model.params)
    wrong = "W_x_l9" if num_layers > 1 or bidirectional else "W_x_reverse"  # a name of another architecture
    model.params = {**good, wrong: np.zeros((H, D))}
    with pytest.raises(ValueError, match=rf"params has keys this model does not have: \['{wrong}'\]"):
        model.gradients(x, y)
    with pytest.raises(ValueError, match="params has keys"):
        model.torch_state_dict()
    last = list(good)[-3]
    model.params = {k: v for k, v in good.items() if k != last}
    with pytest.raises(ValueError, match=rf"params is missing \['{last}'\]"):
        model.gradients(x, y)
    model.params = {**good, last: np.zeros(np.asarray(good[last]).shape + (1,))}
    with pytest.raises(ValueError, match=re.escape(f"params['{last}'] must have shape")):
        model.forward(x)
    model.params = good
    assert np.isfinite(model.loss(x, y))


# --- 7. outputs at padding --------------------------------------------------------------------

@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("hidden", ["tanh", "relu"])
def test_bidirectional_states_at_padding_are_zero_and_h_last_is_torchs_h_n(rng, num_layers, hidden):
    lengths = np.array([5, 1, 3])
    mask = prefix_mask(lengths)
    model = RNN(D, H, O, hidden_activation=hidden, num_layers=num_layers, bidirectional=True,
                seed=int(rng.integers(1 << 30)))
    x, y = rng.standard_normal((T, B, D)) * 3, rng.integers(0, O, size=(T, B))
    h0 = rng.standard_normal((2 * num_layers, B, H))
    fwd = model.forward(x, h0=h0, mask=mask)
    assert fwd.h.shape == (T, B, 2 * H)
    assert np.all(fwd.h[~mask] == 0)  # both halves of every padded (t, b)
    if hidden == "tanh":  # and nowhere else (relu may give zeros of its own)
        assert np.all(fwd.h[mask] != 0)
    res = model.gradients(x, y, h0=h0, mask=mask)
    np.testing.assert_array_equal(res.forward.h, fwd.h)
    # every layer's dh is zero at padding: no state lives there
    assert np.all(res.dh[:, ~mask] == 0)
    rnn = torch.nn.RNN(D, H, num_layers=num_layers, nonlinearity=hidden, bidirectional=True, dtype=torch.float64)
    rnn.load_state_dict({k: torch.from_numpy(v) for k, v in model.torch_state_dict()[0].items()})
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                                     enforce_sorted=False)
    out, h_n = rnn(packed, torch.from_numpy(h0))
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    assert_close(fwd.h, out.detach().numpy(), 1e-12, "h")
    assert_close(fwd.h_last, h_n.detach().numpy(), 1e-12, "h_last")
    assert_close(res.h_last, h_n.detach().numpy(), 1e-12, "h_last")


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_the_reverse_direction_never_reads_padding(rng, num_layers, dropout, inputs):
    """x and y at padded positions may be anything: the loss, every gradient and h_last are unchanged,
    and dL/dx there is zero."""
    model = build(num_layers, True, rng, dropout=dropout)
    mask = prefix_mask([5, 2, 1])
    pad = ~mask
    if inputs == "tokens":
        x = rng.integers(0, D, size=(T, B))
        x2 = x.copy()
        x2[pad] = (x[pad] + 1 + rng.integers(0, D - 1, size=pad.sum())) % D  # other tokens
    else:
        x = rng.standard_normal((T, B, D))
        x2 = x.copy()
        x2[pad] = rng.standard_normal((pad.sum(), D)) * 10
    y = rng.integers(0, O, size=(T, B))
    y2 = y.copy()
    y2[pad] = -100  # padding targets are never read
    h0 = rng.standard_normal((2 * num_layers, B, H))
    a = model.gradients(x, y, h0=h0, mask=mask, dropout_seed=3)
    b = model.gradients(x2, y2, h0=h0, mask=mask, dropout_seed=3)
    assert_same_result(a, b)
    if inputs == "floats":
        assert np.all(a.dx[pad] == 0) and np.any(a.dx[mask] != 0)
    ref_loss, ref = reference_of(model, x2, y2, h0=h0, mask=mask, dropout_masks=a.forward.dropout_masks)
    compare(model, b, ref_loss, ref, 1e-10)


# --- 8. properties over random architectures and shapes ---------------------------------------

@st.composite
def network_cases(draw):
    num_layers = draw(st.integers(1, 3))
    bidirectional = draw(st.booleans())
    Tp, Bp = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(1, Tp), min_size=Bp, max_size=Bp))
    return dict(num_layers=num_layers, bidirectional=bidirectional, T=Tp, B=Bp, lengths=lengths,
                use_mask=draw(st.booleans()), use_h0=draw(st.booleans()), tokens=draw(st.booleans()),
                batch_first=draw(st.booleans()), dropout=draw(st.sampled_from([0.0, 0.5])),
                dtype=draw(st.sampled_from([np.float32, np.float64])), H=draw(st.integers(1, 4)),
                reduction=draw(st.sampled_from(["sum", "mean"])), seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=network_cases())
def test_loss_and_gradients_are_finite_and_shaped_as_documented(case):
    L, bi, Tp, Bp, Hp = case["num_layers"], case["bidirectional"], case["T"], case["B"], case["H"]
    Dp, Op = 3, 2
    dtype = case["dtype"]
    rng = np.random.default_rng(case["seed"])
    model = RNN(Dp, Hp, Op, num_layers=L, bidirectional=bi, dropout=case["dropout"], dtype=dtype,
                batch_first=case["batch_first"], seed=case["seed"])
    U, C = units(L, bi), Hp * (2 if bi else 1)
    x = rng.integers(0, Dp, size=(Tp, Bp)) if case["tokens"] else rng.standard_normal((Tp, Bp, Dp))
    y = rng.integers(0, Op, size=(Tp, Bp))
    mask = prefix_mask(case["lengths"], Tp) if case["use_mask"] else None
    h0 = rng.standard_normal((U, Bp, Hp)) if case["use_h0"] else None
    if h0 is not None and U == 1 and case["seed"] % 2:
        h0 = h0[0]  # one layer, one direction: (B, H) or (1, B, H), and dh0, h_last shaped alike

    def seq(a):  # the caller's layout of a time-major array
        return None if a is None else (a.swapaxes(0, 1) if case["batch_first"] else a)

    res = model.gradients(seq(x), seq(y), h0=h0, mask=seq(mask), reduction=case["reduction"], dropout_seed=1)
    assert isinstance(res.loss, float) and np.isfinite(res.loss)
    assert list(res.grads) == list(model.params)  # exactly the keys of params, in their order
    assert {k: v.shape for k, v in res.grads.items()} == model.shapes
    assert all(v.dtype == dtype and np.isfinite(v).all() for v in res.grads.values())

    def layout(*time_major):  # (T, B, ...) -> the caller's layout
        return (time_major[1], time_major[0], *time_major[2:]) if case["batch_first"] else time_major

    state = h0.shape if h0 is not None else ((Bp, Hp) if U == 1 else (U, Bp, Hp))
    dh = layout(Tp, Bp, Hp) if U == 1 else (U, *layout(Tp, Bp, Hp))
    shapes = {"dh": dh, "dy_hat": layout(Tp, Bp, Op), "dh0": state, "h_last": state,
              "dx": None if case["tokens"] else layout(Tp, Bp, Dp)}
    for name, shape in shapes.items():
        value = getattr(res, name)
        if shape is None:
            assert value is None, name
            continue
        assert value.shape == shape, (name, value.shape, shape)
        assert value.dtype == dtype and np.isfinite(value).all(), name
    fwd = res.forward
    assert fwd.h.shape == layout(Tp, Bp, C) and fwd.y_hat.shape == layout(Tp, Bp, Op)
    if case["dropout"] and L > 1:
        assert len(fwd.dropout_masks) == L - 1 and all(m.shape == layout(Tp, Bp, C) for m in fwd.dropout_masks)
    else:
        assert fwd.dropout_masks is None
    if bi and mask is not None:  # no state lives at padding
        pad = ~mask
        assert np.all(seq(fwd.h)[pad] == 0)
        dh_tm = res.dh if U > 1 else res.dh[None]
        dh_tm = dh_tm.swapaxes(-3, -2) if case["batch_first"] else dh_tm
        assert np.all(dh_tm[:, pad] == 0)
        if not case["tokens"]:
            assert np.all(seq(res.dx)[pad] == 0)


def test_batch_first_dropout_masks_are_batch_first_in_and_out(rng):
    """With B == T a time-major mask would pass the shape check: the layout is the boundary's,
    (B, T, C), both in res.forward.dropout_masks and in dropout_masks=."""
    T = B = 4
    model = RNN(3, 5, 2, num_layers=2, dropout=0.5, batch_first=True, seed=1)
    x, y = rng.standard_normal((B, T, 3)), rng.integers(0, 2, (B, T))
    first = model.gradients(x, y, dropout_seed=7)
    (mask,) = first.forward.dropout_masks
    time_major = RNN(3, 5, 2, num_layers=2, dropout=0.5, seed=1)
    ref = time_major.gradients(x.swapaxes(0, 1), y.T, dropout_masks=[mask.swapaxes(0, 1)])
    assert ref.loss == first.loss
    assert model.gradients(x, y, dropout_masks=[mask]).loss == first.loss
    assert model.gradients(x, y, dropout_masks=[mask.swapaxes(0, 1)]).loss != first.loss
    assert rnngrad.check_gradients(model, x, y, dropout_seed=7, eps=1e-3, order=4, rtol=1e-7).passed


def test_an_optimizer_keeps_training_a_model_after_a_torch_import(rng):
    from rnngrad.optim import SGD

    model = RNN(3, 4, 2, num_layers=2, seed=0)
    opt = SGD(model.params, lr=0.1)
    other = RNN(3, 4, 2, num_layers=2, seed=5)
    model.load_torch_state_dict(*other.torch_state_dict())
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], other.params[k])
    x, y = rng.standard_normal((5, 2, 3)), rng.integers(0, 2, (5, 2))
    before = model.loss(x, y)
    opt.step(model.gradients(x, y).grads)
    assert model.loss(x, y) < before  # the optimizer's arrays are the model's
