"""RTRL and UORO (rnngrad.rtrl) against independent oracles.

Oracles: ``deep_reference`` (tests/oracle.py: the network written step by step in torch from nn.RNN
state dicts, differentiated by autograd, never calling rnngrad), torch.autograd.functional.jacobian
of a forward written here in torch (the sensitivities P_t = dh_t/dtheta themselves), a T = 2 case
worked by hand, and BPTT (model.gradients, itself proved against torch and nn.RNN in
tests/test_network.py) for what the torch oracle does not model (lengths, batch_first).
"""

import numpy as np
import pytest
import torch

from conftest import COMBOS, assert_close, make_targets
from oracle import deep_reference
import rnngrad
from rnngrad import RNN
from rnngrad.network import layer_param_names
from rnngrad.optim import SGD
from rnngrad.rtrl import (RTRLState, add_explicit_term, layout, rtrl_gradients, rtrl_init, rtrl_step,
                          uoro_gradients)
from test_network import torch_named

T, B, D, H, O = 5, 3, 4, 3, 4
LENGTHS = np.array([5, 2, 4])
ALL = ("dh", "dx", "dh0", "dy_hat")
LAYERS = [1, 2, 3]


def build(rng, num_layers, hidden="tanh", output="softmax", loss="cross_entropy", **kw):
    return RNN(D, H, O, hidden_activation=hidden, output_activation=output, loss=loss, num_layers=num_layers,
               seed=int(rng.integers(1 << 30)), **kw)


def compare_with_torch(model, res, ref_loss, ref, rtol):
    assert res.loss == pytest.approx(ref_loss, rel=rtol)
    ours = torch_named(model, res.grads)
    for key, want in ref.items():
        if key in ours:
            assert_close(ours[key], want, rtol, key)
    assert_close(res.dh.reshape(ref["dh"].shape), ref["dh"], rtol, "dh")
    assert_close(res.dy_hat, ref["dy_hat"], rtol, "dy_hat")
    if "x" in ref:
        assert_close(res.dx, ref["x"], rtol, "dx")
    assert_close(res.dh0.reshape(ref["h0"].shape), ref["h0"], rtol, "dh0")


def compare_results(res, want, rtol, fields=("dh", "dy_hat", "dx", "dh0", "h_last")):
    """Every field of two Gradients, grads under the same keys in the same order."""
    assert res.loss == pytest.approx(want.loss, rel=rtol)
    assert list(res.grads) == list(want.grads)
    for k in want.grads:
        assert_close(res.grads[k], want.grads[k], rtol, k)
    for name in fields:
        w = getattr(want, name)
        if w is None:
            assert getattr(res, name) is None, name
        else:
            assert_close(getattr(res, name), w, rtol, name)
    for name in ("h", "a", "y_hat"):
        assert_close(getattr(res.forward, name), getattr(want.forward, name), rtol, "forward." + name)


# --- 1. exact: RTRL equals torch autograd and BPTT ---------------------------------------------------

@pytest.mark.parametrize("num_layers", LAYERS)
@pytest.mark.parametrize("hidden, output, loss", COMBOS)
@pytest.mark.parametrize("variant", ["h0", "mask_mean"])
def test_rtrl_equals_torch_autograd(rng, num_layers, hidden, output, loss, variant):
    """Loss, every parameter's gradient, dL/dh_t of every layer, dL/dx, dL/dh0 and dL/dy_hat,
    computed forward in time, equal torch autograd's to 1e-10 over the whole (f, g, loss) grid."""
    model = build(rng, num_layers, hidden, output, loss)
    x = rng.standard_normal((T, B, D))
    y = make_targets(rng, output, loss, T, B, O)
    h0 = rng.standard_normal((num_layers, B, H)) * 0.5
    kw = dict(mask=rng.random((T, B)) < 0.6, reduction="mean") if variant == "mask_mean" else {}
    kw["mask"] = kw.get("mask", None)
    if kw["mask"] is not None:
        kw["mask"][0, 0] = True  # mean needs one unmasked (t, b)
    res = rtrl_gradients(model, x, y, h0=h0, need=ALL, **kw)
    rnn_state, linear_state = model.torch_state_dict()
    ref_loss, ref = deep_reference(rnn_state, linear_state, x, y, num_layers=num_layers, bidirectional=False,
                                   hidden=hidden, output=output, loss=loss, h0=h0, **kw)
    compare_with_torch(model, res, ref_loss, ref, 1e-10)


@pytest.mark.parametrize("num_layers", LAYERS)
@pytest.mark.parametrize("hidden, output, loss", COMBOS)
@pytest.mark.parametrize("variant", ["lengths", "tokens_lengths_mask", "single_h0_batch_first", "no_h0"])
def test_rtrl_equals_bptt(rng, num_layers, hidden, output, loss, variant):
    """Every field of the result equals model.gradients' to 1e-10: padding by lengths (states frozen
    after each sequence's end, h_last there), token inputs, a (B, H) h0, batch_first."""
    batch_first = variant == "single_h0_batch_first"
    model = build(rng, num_layers, hidden, output, loss, batch_first=batch_first)
    tokens = variant.startswith("tokens")
    x = rng.integers(0, D, size=(T, B)) if tokens else rng.standard_normal((T, B, D))
    y = make_targets(rng, output, loss, T, B, O)
    kw = {}
    if "lengths" in variant:
        kw["lengths"] = LENGTHS
    if "mask" in variant:  # loss weights within the lengths, not a prefix
        kw["mask"] = (rng.random((T, B)) < 0.7) & (np.arange(T)[:, None] < LENGTHS)
        kw["mask"][0] = True
        kw["reduction"] = "mean"
    if variant != "no_h0":
        kw["h0"] = rng.standard_normal((B, H) if num_layers == 1 and variant.startswith("single")
                                       else (num_layers, B, H))
    if batch_first:
        x, y = x.swapaxes(0, 1), y.swapaxes(0, 1)
    res = rtrl_gradients(model, x, y, need=ALL, **kw)
    want = model.gradients(x, y, **kw)
    compare_results(res, want, 1e-10)
    assert res.h_last.shape == want.h_last.shape and res.dh0.shape == want.dh0.shape
    for r, w in zip(res.forward.layers, want.forward.layers):
        assert_close(r.h, w.h, 1e-12, "layer h")


def test_default_need_and_need_checked(rng):
    """By default dh and dx (backward quantities, O(T^2) forward) are None, and the parameters'
    gradients are the same as with everything asked for."""
    model = build(rng, 2)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    cheap, full = rtrl_gradients(model, x, y), rtrl_gradients(model, x, y, need=ALL)
    assert cheap.dh is None and cheap.dx is None
    assert cheap.dh0.shape == (2, B, H) and cheap.dy_hat.shape == (T, B, O)
    for k in full.grads:
        assert_close(cheap.grads[k], full.grads[k], 1e-13, k)
    none = rtrl_gradients(model, x, y, need=())
    assert none.dh0 is None and none.dy_hat is None
    with pytest.raises(ValueError, match="need may name only"):
        rtrl_gradients(model, x, y, need=("dW",))


# float32: compared with the float64 computation of the same float32 parameters and inputs, so the
# difference is rounding alone (see FLOAT32_RTOL in tests/test_network.py; RTRL sums the same terms
# in another order, with products of at most T Jacobians per path).
FLOAT32_RTOL = 2e-5


@pytest.mark.parametrize("num_layers", LAYERS)
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_float32_within_float32_accuracy(rng, num_layers, inputs):
    m64 = build(rng, num_layers)
    m32 = m64.astype(np.float32)
    exact = m32.astype(np.float64)
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D)).astype(np.float32)
    y = rng.integers(0, O, size=(T, B))
    h0 = rng.standard_normal((num_layers, B, H)).astype(np.float32)
    r32 = rtrl_gradients(m32, x, y, h0=h0, lengths=LENGTHS, need=ALL)
    r64 = exact.gradients(x if inputs == "tokens" else x.astype(np.float64), y, h0=h0.astype(np.float64),
                          lengths=LENGTHS)
    compare_results(r32, r64, FLOAT32_RTOL)
    for v in list(r32.grads.values()) + [r32.dh, r32.dy_hat, r32.dh0, r32.h_last, r32.forward.y_hat]:
        assert v.dtype == np.float32


# --- 2. the sensitivities themselves ----------------------------------------------------------------

def torch_states(params, x, h0, num_layers):
    """Every layer's h_T from flat parameter tensors, in torch (tanh)."""
    inp = [x[t] for t in range(x.shape[0])]
    finals = []
    for k in range(num_layers):
        W_x, W_h, b_h = (params[n] for n in layer_param_names(k, 0))
        h, out = h0[k], []
        for u in inp:
            h = torch.tanh(u @ W_x.T + h @ W_h.T + b_h)
            out.append(h)
        finals.append(h)
        inp = out
    return finals


def test_sensitivities_are_the_jacobian_of_the_states(rng):
    """After T steps, P of each layer equals torch's Jacobian dh_T/dtheta for every sequence,
    including the columns of the layers below (the stacked chain) and of h_0."""
    num_layers = 2
    model = build(rng, num_layers)
    x, h0 = rng.standard_normal((T, B, D)), rng.standard_normal((num_layers, B, H))
    state = rtrl_init(model, B, h0=h0)
    for t in range(T):
        rtrl_step(model, state, x[t], np.zeros(B, dtype=int))
    names = [n for k in range(num_layers) for n in layer_param_names(k, 0)]
    tp = tuple(torch.tensor(model.params[n]) for n in names)

    def final(*flat):
        return torch.stack(torch_states(dict(zip(names, flat)), torch.tensor(x), torch.tensor(h0), num_layers))

    jac = torch.autograd.functional.jacobian(final, tp)  # per name: (L, B, H) + param shape
    for k in range(num_layers):
        cols = np.concatenate([jac[i][k].reshape(B, H, -1).numpy() for i in range(3 * (k + 1))], axis=-1)
        assert state.P[k].shape == cols.shape
        assert_close(state.P[k], cols, 1e-12, f"P of layer {k}")
    assert_close(state.h, torch.stack(final(*tp).unbind()).numpy(), 1e-13, "h")


def test_hand_worked_two_steps():
    """H = D = 1, tanh, T = 2, worked by hand: z_1 = w h_0 + v x_1 + b, h_1 = tanh z_1, and
    dh_1/dw = (1 - h_1^2) h_0, dh_2/dw = (1 - h_2^2)(w dh_1/dw + h_1); dh_2/dv = (1 - h_2^2)(w dh_1/dv + x_2)."""
    model = RNN(1, 1, 2, seed=0)
    w, v, b = 0.7, -0.4, 0.1
    model.params.update(W_h=np.array([[w]]), W_x=np.array([[v]]), b_h=np.array([b]))
    h0, x1, x2 = 0.5, 1.5, -2.0
    h1 = np.tanh(w * h0 + v * x1 + b)
    h2 = np.tanh(w * h1 + v * x2 + b)
    dw1, dv1 = (1 - h1 ** 2) * h0, (1 - h1 ** 2) * x1
    dw2, dv2 = (1 - h2 ** 2) * (w * dw1 + h1), (1 - h2 ** 2) * (w * dv1 + x2)
    state = rtrl_init(model, 1, h0=[[h0]])
    for x_t in (x1, x2):
        rtrl_step(model, state, [[x_t]], [0])
    c = state.blocks[0]
    assert state.P[0][0, 0, c.W_h][0] == pytest.approx(dw2, rel=1e-14)
    assert state.P[0][0, 0, c.W_x][0] == pytest.approx(dv2, rel=1e-14)
    assert state.h[0, 0, 0] == pytest.approx(h2, rel=1e-15)


@pytest.mark.parametrize("tokens", [False, True])
def test_explicit_term_equals_the_dense_kronecker_form(rng, tokens):
    """The in-place diagonal update equals E_t built densely: dz_i/dW_x[p, q] = [i = p] u_q (u one-hot
    for tokens), dz_i/dW_h[p, q] = [i = p] h_{t-1, q}, dz_i/db_h[p] = [i = p]."""
    Bn, Dn, Hn = 2, 4, 3
    (blk,) = layout([Dn], Hn, with_h0=True)
    h_prev = rng.standard_normal((Bn, Hn))
    u = rng.integers(0, Dn, size=Bn) if tokens else rng.standard_normal((Bn, Dn))
    dense_u = np.eye(Dn)[u] if tokens else u
    out = rng.standard_normal((Bn, Hn, blk.end))
    want = out.copy()
    eye = np.eye(Hn)
    want[..., blk.W_x] += np.einsum("ip,bq->bipq", eye, dense_u).reshape(Bn, Hn, -1)
    want[..., blk.W_h] += np.einsum("ip,bq->bipq", eye, h_prev).reshape(Bn, Hn, -1)
    want[..., blk.b_h] += eye
    add_explicit_term(out, blk, h_prev, u)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-15)


# --- 3. the online API --------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers", LAYERS)
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_online_steps_sum_to_the_batch_gradient(rng, num_layers, inputs):
    """rtrl_step over a sequence, its contributions summed, with mean-reduction weights: the loss
    and every gradient equal the batch call's (and BPTT's), the state ends at h_last."""
    model = build(rng, num_layers, "sigmoid", "softmax", "mse")
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    y = rng.uniform(0, 1, size=(T, B, O))
    mask = rng.random((T, B)) < 0.7
    mask[0] = True
    weights = mask / mask.sum()
    h0 = rng.standard_normal((num_layers, B, H))
    state = rtrl_init(model, B, h0=h0)
    assert isinstance(state, RTRLState)
    total, grads = 0.0, {k: np.zeros_like(v) for k, v in model.params.items()}
    for t in range(T):
        step = rtrl_step(model, state, x[t], y[t], weight=weights[t])
        assert list(step.grads) == list(model.params) and step.y_hat.shape == (B, O)
        total += step.loss
        for k, g in step.grads.items():
            grads[k] += g
    batch = rtrl_gradients(model, x, y, h0=h0, mask=mask, reduction="mean")
    bptt = model.gradients(x, y, h0=h0, mask=mask, reduction="mean")
    assert total == pytest.approx(bptt.loss, rel=1e-12)
    for k in grads:
        assert_close(grads[k], bptt.grads[k], 1e-10, k)
        assert_close(grads[k], batch.grads[k], 1e-12, k)
    assert_close(state.h, bptt.h_last.reshape(num_layers, B, H), 1e-13, "h")


def test_online_training_on_a_stream_with_updates_every_k_steps(rng):
    """The trainer's loop end to end: one unbroken stream, SGD every k steps, P kept across
    updates. The first k steps' summed gradient is BPTT's over them (nothing updated yet), and the
    loss falls on a task that needs memory (predict the previous step's token)."""
    V, Bs, k = 3, 8, 10
    model = RNN(V, 16, V, seed=3)
    stream = rng.integers(0, V, size=(600, Bs))
    targets = np.roll(stream, 1, axis=0)
    targets[0] = 0
    first = model.gradients(stream[:k], targets[:k], reduction="mean")
    opt = SGD(model.params, lr=0.3)
    state = rtrl_init(model, Bs)
    acc = {key: np.zeros_like(v) for key, v in model.params.items()}
    losses = []
    for t in range(stream.shape[0]):
        step = rtrl_step(model, state, stream[t], targets[t], weight=np.full(Bs, 1 / (k * Bs)))
        losses.append(step.loss * k)
        for key, g in step.grads.items():
            acc[key] += g
        if (t + 1) % k == 0:
            if t + 1 == k:
                for key in acc:
                    assert_close(acc[key], first.grads[key], 1e-10, key)
            opt.step(acc)
            for g in acc.values():
                g.fill(0)
    assert np.mean(losses[-100:]) < 0.5 * np.mean(losses[:50])


# --- 4. refusals and bad input ----------------------------------------------------------------------

def test_public_names():
    for name in ("rtrl_gradients", "rtrl_init", "rtrl_step", "RTRLState", "RTRLStep", "uoro_gradients"):
        assert name in rnngrad.__all__ and getattr(rnngrad, name) is getattr(rnngrad.rtrl, name)


def test_bidirectional_refused(rng):
    model = RNN(D, H, O, bidirectional=True, seed=0)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    for call in (lambda: rtrl_gradients(model, x, y), lambda: uoro_gradients(model, x, y, seed=0),
                 lambda: rtrl_init(model, B)):
        with pytest.raises(ValueError, match="unidirectional model: the reverse direction .* future"):
            call()


def test_size_limit_refused_with_the_fix(rng):
    model = build(rng, 2)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    with pytest.raises(ValueError, match=r"O\(B H\^3\).*max_bytes=1000; use model.gradients.*uoro_gradients"):
        rtrl_gradients(model, x, y, max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes"):
        rtrl_init(model, B, max_bytes=1000)
    rtrl_gradients(model, x, y, max_bytes=1 << 20)  # enough for this size


def test_step_bad_input(rng):
    model = build(rng, 1)
    state = rtrl_init(model, B)
    y = rng.integers(0, O, size=B)
    with pytest.raises(TypeError, match="state must be an rnngrad.RTRLState"):
        rtrl_step(model, {"h": 0}, np.zeros((B, D)), y)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, D\) = \(3, 4\)"):
        rtrl_step(model, state, np.zeros((T, B, D)), y)
    with pytest.raises(ValueError, match="x_t must have shape"):
        rtrl_step(model, state, np.zeros(B), y)  # floats without a feature axis
    with pytest.raises(ValueError, match="weight must be 3 finite non-negative"):
        rtrl_step(model, state, np.zeros((B, D)), y, weight=-np.ones(B))
    with pytest.raises(ValueError, match="state was made for a model"):
        rtrl_step(build(rng, 2), state, np.zeros((B, D)), y)
    with pytest.raises(ValueError, match="batch_size"):
        rtrl_init(model, 0)
    with pytest.raises(ValueError, match="h0"):
        rtrl_init(model, B, h0=np.zeros((2, B, H)))


# --- 5. UORO -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers, inputs", [(1, "floats"), (2, "tokens")])
def test_uoro_is_unbiased(rng, num_layers, inputs):
    """The mean of 40 000 UORO draws lies within 4 standard errors of the exact gradient in every
    entry; the loss and the head's gradients are exact; a seed repeats, another seed differs.

    Each of two sequences is repeated R times in one batch: every copy draws its own signs nu, so
    one call sums R independent estimates (the exact value of the sum is R times the gradient of the
    pair), and 40 calls give 40 independent means whose spread is the standard error. Here that error
    is ~1% of each gradient, so an estimator biased by 5% of the gradient (e.g. one whose theta gains
    1.05 nu^T dF/dtheta) fails.
    """
    R, calls = 1000, 40
    model = build(rng, num_layers)
    tokens = inputs == "tokens"
    x = rng.integers(0, D, size=(T, 2)) if tokens else rng.standard_normal((T, 2, D))
    y = rng.integers(0, O, size=(T, 2))
    kw = dict(lengths=np.array([5, 3])) if tokens else dict(h0=rng.standard_normal((num_layers, 2, H)))
    exact = model.gradients(x, y, **kw)
    copies = np.repeat(np.arange(2), R)
    kw_r = dict(lengths=kw["lengths"][copies]) if tokens else dict(h0=kw["h0"][:, copies])
    draws = [uoro_gradients(model, x[:, copies], y[:, copies], seed=s, **kw_r) for s in range(calls)]
    first = draws[0]
    assert first.loss == pytest.approx(R * exact.loss, rel=1e-12)
    for key in ("W_y", "b_y"):
        assert_close(first.grads[key], R * exact.grads[key], 1e-12, key)
    assert first.dh is None and first.dx is None and first.dh0 is None
    assert_close(first.h_last, exact.h_last[..., copies, :], 1e-13, "h_last")
    for key in exact.grads:
        if key in ("W_y", "b_y"):
            continue
        means = np.stack([d.grads[key] for d in draws]) / R
        se = means.std(axis=0, ddof=1) / np.sqrt(calls)
        err = np.abs(means.mean(axis=0) - exact.grads[key])
        assert (err <= 4 * se).all(), f"{key}: worst z {np.max(err / se):.2f}"
    single = uoro_gradients(model, x, y, seed=0, **kw)
    np.testing.assert_array_equal(uoro_gradients(model, x, y, seed=0, **kw).grads["W_h"], single.grads["W_h"])
    assert not np.allclose(uoro_gradients(model, x, y, seed=1, **kw).grads["W_h"], single.grads["W_h"])
