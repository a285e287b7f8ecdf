"""Every gradient of seed §1, for every (f, g, L), against PyTorch autograd (tests/oracle.py)."""

import numpy as np
import pytest

import rnngrad
from rnngrad.activations import Softmax, Sigmoid, Identity
from conftest import COMBOS, assert_close, make_targets, all_grads

torch = pytest.importorskip("torch")
from oracle import reference  # noqa: E402

GRAD_NAMES = ["W_x", "W_h", "b_h", "W_y", "b_y", "h", "y_hat", "x", "h0"]


def run_both(rng, f, g, l, T, B, D, H, O, *, use_h0, use_mask, reduction, target_kind="auto"):
    model = rnngrad.RNN(D, H, O, hidden_activation=f, output_activation=g, loss=l,
                        seed=int(rng.integers(1 << 31)))
    x = rng.standard_normal((T, B, D))
    y = make_targets(rng, g, l, T, B, O, target_kind)
    h0 = rng.standard_normal((B, H)) if use_h0 else None
    mask = None
    if use_mask:
        lengths = rng.integers(1, T + 1, size=B)
        mask = np.arange(T)[:, None] < lengths[None, :]
    res = model.gradients(x, y, h0=h0, mask=mask, reduction=reduction)
    ref_loss, ref = reference(model.params, x, y, hidden=f, output=g, loss=l, h0=h0, mask=mask,
                              reduction=reduction)
    return res, ref_loss, ref


@pytest.mark.parametrize("f,g,l", COMBOS)
@pytest.mark.parametrize("use_h0,use_mask,reduction", [
    (False, False, "sum"), (True, False, "mean"), (False, True, "sum"), (True, True, "mean"),
])
def test_every_gradient_matches_autograd(rng, f, g, l, use_h0, use_mask, reduction):
    res, ref_loss, ref = run_both(rng, f, g, l, T=7, B=4, D=3, H=6, O=5,
                                  use_h0=use_h0, use_mask=use_mask, reduction=reduction)
    assert isinstance(res.loss, float)
    assert res.loss == pytest.approx(ref_loss, rel=1e-12)
    assert set(all_grads(res)) == set(GRAD_NAMES)
    for name in GRAD_NAMES:
        assert_close(all_grads(res)[name], ref[name], 1e-10, name)


@pytest.mark.parametrize("f,g,l", COMBOS)
@pytest.mark.parametrize("T,B", [(1, 1), (1, 5), (9, 1), (2, 3)])
def test_edge_shapes_match_autograd(rng, f, g, l, T, B):
    D, H, O = (int(v) for v in rng.integers(1, 7, size=3))
    O = max(O, 2)
    res, ref_loss, ref = run_both(rng, f, g, l, T, B, D, H, O, use_h0=True, use_mask=False, reduction="sum")
    assert res.loss == pytest.approx(ref_loss, rel=1e-12)
    for name in GRAD_NAMES:
        assert_close(all_grads(res)[name], ref[name], 1e-10, name)


@pytest.mark.parametrize("f", ["tanh", "relu"])
def test_probability_targets_for_softmax_cross_entropy(rng, f):
    res, ref_loss, ref = run_both(rng, f, "softmax", "cross_entropy", 5, 3, 4, 6, 4, use_h0=True,
                                  use_mask=True, reduction="sum", target_kind="distribution")
    assert res.loss == pytest.approx(ref_loss, rel=1e-12)
    for name in GRAD_NAMES:
        assert_close(all_grads(res)[name], ref[name], 1e-10, name)


def test_token_inputs_equal_one_hot_inputs(rng):
    T, B, V, H = 6, 3, 7, 5
    model = rnngrad.RNN(V, H, V, seed=3)
    tokens = rng.integers(0, V, size=(T, B))
    one_hot = np.eye(V)[tokens]
    y = rng.integers(0, V, size=(T, B))
    res_tok = model.gradients(tokens, y)
    res_dense = model.gradients(one_hot, y)
    _, ref = reference(model.params, tokens, y)
    assert "x" not in all_grads(res_tok)  # no gradient with respect to an index
    for name in ["W_x", "W_h", "b_h", "W_y", "b_y", "h", "y_hat", "h0"]:
        assert_close(all_grads(res_tok)[name], all_grads(res_dense)[name], 1e-12, name)
        assert_close(all_grads(res_tok)[name], ref[name], 1e-10, name)
    assert res_tok.loss == pytest.approx(res_dense.loss, rel=1e-13)


def test_token_input_gradient_covers_repeated_and_absent_tokens():
    # Tokens 0 and 4 repeat, token 2 and 3 never occur: their W_x columns must get exactly zero.
    model = rnngrad.RNN(5, 3, 2, output_activation="identity", loss="mse", seed=0)
    tokens = np.array([[0, 4], [0, 1], [4, 0]])
    y = np.ones((3, 2, 2))
    res = model.gradients(tokens, y)
    _, ref = reference(model.params, tokens, y, output="identity", loss="mse")
    assert_close(all_grads(res)["W_x"], ref["W_x"], 1e-12, "W_x")
    assert np.all(all_grads(res)["W_x"][:, [2, 3]] == 0)


def test_hand_worked_two_step_case():
    """T = 2, B = 1, one unit everywhere, f = identity, g = identity, L = MSE: derived by hand.

    W_x = 0.5, W_h = 2, b_h = 0, W_y = 3, b_y = 1, h0 = 0; x = (1, -1); y = (0, 0).
      z1 = 0.5,        h1 = 0.5,      y1 = 3·0.5 + 1 = 2.5,   dL/dy1 = 2·2.5 = 5
      z2 = 2·0.5 − 0.5 = 0.5, h2 = 0.5, y2 = 2.5,             dL/dy2 = 5
      L = 2.5² + 2.5² = 12.5
      dh2 = 3·5 = 15                              (direct only: no step after T)
      dh1 = 3·5 + W_h·dh2 = 15 + 30 = 45          (seed §3B: direct + recursive)
      dW_y = 5·h1 + 5·h2 = 5,  db_y = 10
      dW_x = dh1·x1 + dh2·x2 = 45 − 15 = 30,  dW_h = dh1·h0 + dh2·h1 = 7.5,  db_h = 60
      dh0 = W_h·dh1 = 90,  dx1 = W_x·dh1 = 22.5,  dx2 = W_x·dh2 = 7.5
    """
    model = rnngrad.RNN(1, 1, 1, hidden_activation="identity", output_activation="identity", loss="mse")
    model.params.update(W_x=np.array([[0.5]]), W_h=np.array([[2.0]]), b_h=np.zeros(1),
                        W_y=np.array([[3.0]]), b_y=np.ones(1))
    res = model.gradients(np.array([1.0, -1.0]).reshape(2, 1, 1), np.zeros((2, 1, 1)))
    g = {k: v.ravel().tolist() for k, v in all_grads(res).items()}
    assert res.loss == 12.5
    assert g["y_hat"] == [5, 5]
    assert g["h"] == [45, 15]
    assert g["W_y"] == [5] and g["b_y"] == [10]
    assert g["W_x"] == [30] and g["W_h"] == [7.5] and g["b_h"] == [60]
    assert g["h0"] == [90] and g["x"] == [22.5, 7.5]


class SoftmaxGeneral(Softmax):
    """The same softmax, but a subclass: fused_path() matches exact types, so this takes the general VJP path."""


class SigmoidGeneral(Sigmoid):
    pass


class IdentityGeneral(Identity):
    pass


@pytest.mark.parametrize("f", ["tanh", "sigmoid"])
@pytest.mark.parametrize("general,l", [
    (SoftmaxGeneral, "cross_entropy"), (SigmoidGeneral, "binary_cross_entropy"), (IdentityGeneral, "mse"),
])
def test_fused_path_equals_general_chain_rule(rng, f, general, l):
    T, B, D, H, O = 6, 3, 4, 5, 4
    fused = rnngrad.RNN(D, H, O, hidden_activation=f, output_activation=general.name, loss=l, seed=5)
    slow = rnngrad.RNN(D, H, O, hidden_activation=f, output_activation=general(), loss=l, seed=5)
    x = rng.standard_normal((T, B, D))
    y = make_targets(rng, general.name, l, T, B, O)
    mask = rng.uniform(size=(T, B)) < 0.7
    a = fused.gradients(x, y, mask=mask, reduction="mean")
    b = slow.gradients(x, y, mask=mask, reduction="mean")
    assert a.loss == pytest.approx(b.loss, rel=1e-13)
    for name in GRAD_NAMES:
        assert_close(all_grads(a)[name], all_grads(b)[name], 1e-12, name)


def test_mask_equals_truncated_sequences(rng):
    """A sequence masked after step n has the same loss and parameter gradients as the same sequence cut at n."""
    T, B, D, H, O = 8, 2, 3, 4, 3
    model = rnngrad.RNN(D, H, O, seed=1)
    x = rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    lengths = [5, 8]
    mask = np.arange(T)[:, None] < np.array(lengths)[None, :]
    y_padded = np.where(mask, y, -1)  # padding that is not a valid class must be ignored
    full = model.gradients(x, y_padded, mask=mask)
    parts = [model.gradients(x[:n, [b]], y[:n, [b]]) for b, n in enumerate(lengths)]
    assert full.loss == pytest.approx(sum(p.loss for p in parts), rel=1e-13)
    for name in ["W_x", "W_h", "b_h", "W_y", "b_y"]:
        assert_close(all_grads(full)[name], sum(all_grads(p)[name] for p in parts), 1e-12, name)
    assert np.all(all_grads(full)["y_hat"][5:, 0] == 0) and np.all(all_grads(full)["h"][5:, 0] == 0)


def test_mean_is_sum_over_unmasked_count(rng):
    T, B = 5, 4
    model = rnngrad.RNN(3, 4, 3, seed=2)
    x = rng.standard_normal((T, B, 3))
    y = rng.integers(0, 3, size=(T, B))
    mask = rng.uniform(size=(T, B)) < 0.6
    mask[0, 0] = True
    s = model.gradients(x, y, mask=mask, reduction="sum")
    m = model.gradients(x, y, mask=mask, reduction="mean")
    n = mask.sum()
    assert m.loss == pytest.approx(s.loss / n, rel=1e-14)
    for name in GRAD_NAMES:
        assert_close(all_grads(m)[name], all_grads(s)[name] / n, 1e-13, name)


def test_need_skips_only_what_is_asked(rng):
    model = rnngrad.RNN(3, 4, 3, seed=2)
    x, y = rng.standard_normal((4, 2, 3)), rng.integers(0, 3, size=(4, 2))
    full = model.gradients(x, y)
    part = model.gradients(x, y, need=())
    assert set(all_grads(part)) == {"W_x", "W_h", "b_h", "W_y", "b_y", "h"}
    for name in all_grads(part):
        np.testing.assert_array_equal(all_grads(part)[name], all_grads(full)[name])
    assert set(all_grads(model.gradients(x, y, need=["dh0"]))) == set(all_grads(part)) | {"h0"}
    with pytest.raises(ValueError, match="need"):
        model.gradients(x, y, need=["W_q"])


def test_h_last_is_the_final_hidden_state_and_carries_like_one_long_pass(rng):
    """Truncated BPTT's carried state: running two chunks with h_last carried equals one forward pass."""
    model = rnngrad.RNN(3, 5, 3, seed=4)
    x = rng.standard_normal((10, 2, 3))
    y = rng.integers(0, 3, size=(10, 2))
    whole = model.forward(x)
    first = model.gradients(x[:6], y[:6])
    second = model.forward(x[6:], h0=first.h_last)
    np.testing.assert_allclose(first.h_last, whole.h[5], rtol=0, atol=0)
    np.testing.assert_allclose(second.h, whole.h[6:], rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("f,g,l", COMBOS)
def test_float32_in_float32_out_and_accurate(rng, f, g, l):
    T, B, D, H, O = 12, 4, 5, 8, 6
    m64 = rnngrad.RNN(D, H, O, hidden_activation=f, output_activation=g, loss=l, seed=9)
    m32 = m64.astype(np.float32)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    y = make_targets(rng, g, l, T, B, O)
    if y.dtype.kind == "f":
        y = y.astype(np.float32)
    r32 = m32.gradients(x, y)
    r64 = m64.gradients(x.astype(np.float64), y)
    assert r32.forward.y_hat.dtype == np.float32 and r32.forward.h.dtype == np.float32
    for name, v in all_grads(r32).items():
        assert v.dtype == np.float32, name
        # float32 carries ~7 digits; through T steps of products errors grow mildly.
        assert_close(v, all_grads(r64)[name], 1e-4, name)
    assert r32.loss == pytest.approx(r64.loss, rel=1e-5)


def test_float32_as_accurate_as_torch_float32(rng):
    """rnngrad's float32 error against a float64 reference is no worse than PyTorch's own float32 error."""
    T, B, D, H, O = 50, 8, 16, 32, 10
    m64 = rnngrad.RNN(D, H, O, seed=1)
    x = rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    exact = m64.gradients(x, y)
    ours = m64.astype(np.float32).gradients(x.astype(np.float32), y)
    p32 = {k: v.astype(np.float32) for k, v in m64.params.items()}
    _, theirs = reference(p32, x.astype(np.float32), y, dtype=torch.float32)
    for name in ["W_x", "W_h", "b_h", "W_y", "b_y", "h", "x", "h0"]:
        ref = all_grads(exact)[name]
        err_ours = np.max(np.abs(all_grads(ours)[name] - ref))
        err_torch = np.max(np.abs(theirs[name] - ref))
        assert err_ours <= 4 * err_torch + 1e-7 * np.max(np.abs(ref)), (name, err_ours, err_torch)


@pytest.mark.parametrize("g,l", [("softmax", "cross_entropy"), ("sigmoid", "cross_entropy")])
def test_huge_logits_give_finite_loss_and_gradients(g, l):
    """Logits near ±1000: exp overflows and log(y_hat) would be log(0); the fused paths stay finite."""
    T, B, H, O = 3, 2, 4, 3
    model = rnngrad.RNN(2, H, O, output_activation=g, loss=l, seed=0)
    model.params["W_y"][...] = 0
    model.params["b_y"][...] = np.array([1000.0, -1000.0, 0.0])
    x = np.zeros((T, B, 2))
    y = np.full((T, B), 1) if g == "softmax" else np.tile([0.0, 1.0, 0.5], (T, B, 1))
    res = model.gradients(x, y)
    # Expected by hand: softmax picks class 1 with logit -1000 against 1000: L_t = 2000 per row.
    # Sigmoid: units 0,1 are wrong by ±1000 (L = 1000 each), unit 2 at logit 0 costs ln 2.
    per_row = 2000.0 if g == "softmax" else 2000.0 + np.log(2)
    assert res.loss == pytest.approx(T * B * per_row, rel=1e-12)
    for name in ["W_x", "W_h", "b_h", "W_y", "b_y", "h", "x", "h0"]:
        assert np.all(np.isfinite(all_grads(res)[name])), name
    # dL/db_y = sum over rows of (y_hat - y): exactly representable here.
    expected = T * B * (np.array([1.0, -1.0, 0.0]) if g == "softmax" else np.array([1.0, -1.0, 0.0]))
    np.testing.assert_allclose(all_grads(res)["b_y"], expected, atol=1e-12)


@pytest.mark.parametrize("f", ["tanh", "relu", "sigmoid"])
def test_long_sequences(rng, f):
    """T in the thousands: finite, and equal to autograd."""
    T, B, D, H, O = 2000, 2, 3, 8, 4
    model = rnngrad.RNN(D, H, O, hidden_activation=f, seed=0)
    x = rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    res = model.gradients(x, y)
    assert np.isfinite(res.loss)
    ref_loss, ref = reference(model.params, x, y, hidden=f)
    assert res.loss == pytest.approx(ref_loss, rel=1e-12)
    for name in ["W_x", "W_h", "b_h", "W_y", "b_y", "h"]:
        assert_close(all_grads(res)[name], ref[name], 1e-10, name)


def test_agrees_with_torch_nn_rnn(rng):
    """A second, structurally different oracle: torch.nn.RNN + Linear + cross_entropy."""
    T, B, D, H, O = 9, 4, 5, 7, 6
    model = rnngrad.RNN(D, H, O, seed=11)
    x = rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    h0 = rng.standard_normal((B, H))
    res = model.gradients(x, y, h0=h0)
    rnn = torch.nn.RNN(D, H, nonlinearity="tanh", dtype=torch.float64)
    lin = torch.nn.Linear(H, O, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.tensor(model.params["W_x"]))
        rnn.weight_hh_l0.copy_(torch.tensor(model.params["W_h"]))
        rnn.bias_ih_l0.copy_(torch.tensor(model.params["b_h"]))
        rnn.bias_hh_l0.zero_()
        lin.weight.copy_(torch.tensor(model.params["W_y"]))
        lin.bias.copy_(torch.tensor(model.params["b_y"]))
    X = torch.tensor(x, requires_grad=True)
    H0 = torch.tensor(h0[None], requires_grad=True)
    out, _ = rnn(X, H0)
    loss = torch.nn.functional.cross_entropy(lin(out).reshape(T * B, O), torch.tensor(y).reshape(-1), reduction="sum")
    loss.backward()
    assert res.loss == pytest.approx(loss.item(), rel=1e-12)
    pairs = {"W_x": rnn.weight_ih_l0, "W_h": rnn.weight_hh_l0, "b_h": rnn.bias_ih_l0,
             "W_y": lin.weight, "b_y": lin.bias}
    for name, p in pairs.items():
        assert_close(all_grads(res)[name], p.grad.numpy(), 1e-10, name)
    assert_close(all_grads(res)["x"], X.grad.numpy(), 1e-10, "x")
    assert_close(all_grads(res)["h0"], H0.grad.numpy()[0], 1e-10, "h0")
