"""Forward mode (rnngrad.forward_tangents, rnngrad.jvp) against torch.func.jvp of an independent
PyTorch network, float64 to 1e-10, over the (f, g, L) grid and every network shape; against
finite differences once; float32 at a float32 tolerance.

The oracle below, :func:`torch_network`, is the model written as a plain function of
(parameters, x, h0) in torch, so that torch.func can differentiate it in any argument; it calls
nothing of rnngrad. :func:`test_the_functional_oracle_is_the_step_by_step_oracle` ties it to
tests/oracle.py's ``deep_reference`` (autograd, one sequence at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pytest

import rnngrad
from rnngrad.forward_mode import forward_tangents, jvp
from conftest import COMBOS, assert_close, make_targets

torch = pytest.importorskip("torch")
from oracle import HIDDEN, OUTPUT, _loss_from_outputs, deep_reference  # noqa: E402

SHAPES = [(1, False), (2, False), (3, False), (1, True), (2, True), (3, True)]
T, B, D, H, O = 4, 3, 3, 3, 3
LENGTHS = np.array([4, 2, 3])


# --- the oracle --------------------------------------------------------------------------------

def _reverse(seq, index):
    """Each sequence of seq (T, B, ...) reversed within its length (index (T, B)), or all of it."""
    if index is None:
        return seq.flip(0)
    return seq[index, torch.arange(seq.shape[1])[None, :]]


def torch_network(P, X, H0, *, num_layers, bidirectional, hidden, output, lengths=None, dropout_masks=None):
    """(a, y_hat, states (U, T, B, H), h_last (U, B, H)) of the network, in torch.

    P: rnngrad's parameter names -> tensors; X (T, B, D) floats (one-hot rows for tokens);
    H0 (U, B, H). With lengths (B,): padding states are zero, a reverse unit reads its sequence
    backwards from its last valid step, h_last is each unit's state after its last valid step.
    """
    T_, B_ = X.shape[:2]
    f = HIDDEN[hidden] if isinstance(hidden, str) else hidden
    dirs = 2 if bidirectional else 1
    index = valid = None
    if lengths is not None:
        L = torch.as_tensor(np.asarray(lengths))
        t = torch.arange(T_)[:, None]
        valid = t < L[None, :]
        index = torch.where(valid, L[None, :] - 1 - t, t)
    states, finals = [], []
    inp = X
    for k in range(num_layers):
        outs = []
        for d in range(dirs):
            sfx = (f"_l{k}" if k else "") + ("_reverse" if d else "")
            W_x, W_h, b_h = P["W_x" + sfx], P["W_h" + sfx], P["b_h" + sfx]
            seq = inp if d == 0 else _reverse(inp, index)
            h = H0[k * dirs + d]
            hs = []
            for t in range(T_):
                h = f(seq[t] @ W_x.T + h @ W_h.T + b_h)
                hs.append(h)
            hs = torch.stack(hs)
            finals.append(hs[-1] if lengths is None else hs[L - 1, torch.arange(B_)])
            if d:
                hs = _reverse(hs, index)
            if valid is not None:
                hs = torch.where(valid[..., None], hs, torch.zeros((), dtype=hs.dtype))
            states.append(hs)
            outs.append(hs)
        inp = torch.cat(outs, dim=-1)
        if dropout_masks is not None and k < num_layers - 1:
            inp = inp * torch.as_tensor(dropout_masks[k])
    a = inp @ P["W_y"].T + P["b_y"]
    return a, OUTPUT[output](a), torch.stack(states), torch.stack(finals)


# --- the cases ---------------------------------------------------------------------------------

@dataclass
class Case:
    """A model, its data as rnngrad takes them (``kw``), and what the oracle needs to know."""

    model: rnngrad.RNN
    x: np.ndarray
    y: np.ndarray
    kw: dict
    h0: np.ndarray  # (U, B, H), as the oracle takes it
    loss_mask: np.ndarray | None  # the (T, B) loss weights before "mean"
    lengths: np.ndarray | None  # the lengths the network runs with (given, or a bidirectional mask's)
    dropout_masks: list | None = None
    tokens: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def reduction(self):
        return self.kw.get("reduction", "sum")


VARIANTS = ["plain", "mask", "lengths", "lengths_mask", "mean", "tokens", "dropout"]


def make_case(rng, hidden="tanh", output="softmax", loss="cross_entropy", num_layers=1, bidirectional=False,
              variant="plain", dtype=np.float64, seed=None, targets="auto"):
    model = rnngrad.RNN(D, H, O, hidden_activation=hidden, output_activation=output, loss=loss,
                        num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
                        dropout=0.5 if variant == "dropout" else 0.0,
                        seed=int(rng.integers(1 << 30)) if seed is None else seed)
    U = num_layers * model.directions
    tokens = variant == "tokens"
    x = rng.integers(0, D, size=(T, B)) if tokens else rng.standard_normal((T, B, D))
    y = make_targets(rng, output, loss, T, B, O, targets)
    if targets == "distribution":
        # Rows summing to 1 + 8e-7, within what check_targets accepts: the loss is then
        # S·logsumexp(a) - <y, a> with S = sum_k y_k, and a factor S dropped would show at 1e-10.
        y = y * (1 + 8e-7)
    h0 = rng.standard_normal((U, B, H)) * 0.5
    kw = {"h0": h0 if U > 1 else h0[0]}
    prefix = np.arange(T)[:, None] < LENGTHS[None, :]
    loss_mask = lengths = masks = None
    if variant in ("mask", "mean"):
        loss_mask = prefix if bidirectional else rng.random((T, B)) < 0.7  # any pattern unidirectional
        loss_mask[0] = True
        kw["mask"] = loss_mask
        lengths = LENGTHS if bidirectional else None
        if variant == "mean":
            kw["reduction"] = "mean"
    elif variant in ("lengths", "lengths_mask"):
        kw["lengths"] = lengths = LENGTHS
        loss_mask = prefix.copy()
        if variant == "lengths_mask":
            loss_mask[0, :] = False  # not a prefix: the loss of later steps only
            kw["mask"] = loss_mask
    elif variant == "dropout":
        masks = model.forward(x, dropout_seed=int(rng.integers(1 << 30))).dropout_masks
        kw["dropout_masks"] = masks
    if dtype == np.float32:  # the oracle sees what the model computes with
        x = x if tokens else x.astype(np.float32)
        kw["h0"] = kw["h0"].astype(np.float32)
        h0 = h0.astype(np.float32)
        y = y if y.dtype.kind in "iu" else y.astype(np.float32)
    return Case(model, x, y, kw, h0, loss_mask, lengths, masks, tokens)


def random_tree(rng, model, scale=1.0):
    return {k: rng.standard_normal(s) * scale for k, s in model.shapes.items()}


def torch_inputs(case: Case):
    """(P, X, H0) float64 tensors of the case, X one-hot for tokens."""
    P = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in case.model.params.items()}
    if case.tokens:
        X = torch.nn.functional.one_hot(torch.tensor(case.x), D).to(torch.float64)
    else:
        X = torch.tensor(np.asarray(case.x, dtype=np.float64))
    return P, X, torch.tensor(np.asarray(case.h0, dtype=np.float64))


def torch_functions(case: Case):
    """(network(P, X, H0) -> (a, y_hat, states, h_last), loss_of_y_hat(y_hat) -> L) for torch.func."""
    m = case.model
    masks = None if case.dropout_masks is None else [np.asarray(k, dtype=np.float64) for k in case.dropout_masks]

    def network(P, X, H0):
        return torch_network(P, X, H0, num_layers=m.num_layers, bidirectional=m.bidirectional,
                             hidden=case.extra.get("hidden", m.f.name), output=m.g.name, lengths=case.lengths,
                             dropout_masks=masks)

    def loss_of(y_hat):
        return _loss_from_outputs(y_hat, case.y, case.loss_mask, m.loss_fn.name, m.g.name, case.reduction,
                                  torch.float64)

    return network, loss_of


def torch_jvp(case: Case, V, x_dot=None, h0_dot=None):
    """torch.func.jvp of (L, y_hat, a, states, h_last) in (P, X, H0) along (V, x_dot, h0_dot)."""
    network, loss_of = torch_functions(case)
    P, X, H0 = torch_inputs(case)

    def fn(P, X, H0):
        a, y_hat, states, h_last = network(P, X, H0)
        return loss_of(y_hat), y_hat, a, states, h_last

    tangents = ({k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in V.items()},
                torch.zeros_like(X) if x_dot is None else torch.tensor(x_dot),
                torch.zeros_like(H0) if h0_dot is None else torch.tensor(h0_dot))
    values, dots = torch.func.jvp(fn, (P, X, H0), tangents)
    return [v.detach().numpy() for v in values], [d.detach().numpy() for d in dots]


def loss_dot_scale(case: Case, a, a_dot) -> float:
    """sum |dL/da * a_dot| (dL/da by torch at the logits a): the scale of L_dot's rounding."""
    _, loss_of = torch_functions(case)
    g = OUTPUT[case.model.g.name]
    dL_da = torch.func.grad(lambda a: loss_of(g(a)))(torch.tensor(a)).numpy()
    return float(np.abs(dL_da * a_dot).sum())


def check_against_torch(case: Case, rng, rtol, with_x=True, with_h0=True):
    model = case.model
    V = random_tree(rng, model)
    U = model.num_layers * model.directions
    x_dot = rng.standard_normal(case.x.shape) if with_x and not case.tokens else None
    h0_dot = rng.standard_normal((U, B, H)) if with_h0 else None
    res = forward_tangents(model, case.x, case.y, V, x_tangent=x_dot,
                                   h0_tangent=None if h0_dot is None else (h0_dot if U > 1 else h0_dot[0]),
                                   **case.kw)
    (L, y_hat, a, states, h_last), (L_dot, y_hat_dot, a_dot, states_dot, h_last_dot) = torch_jvp(
        case, V, x_dot, h0_dot)
    assert res.loss == pytest.approx(float(L), rel=rtol)
    if model.dtype == np.float32:
        # L_dot = sum_n <dL/da_n, a_dot_n> may cancel: its rounding error is bounded on the scale
        # of sum |dL/da * a_dot|, not of |L_dot| (which may be far smaller).
        assert abs(res.loss_dot - float(L_dot)) <= rtol * loss_dot_scale(case, a, a_dot)
    else:
        assert_close(np.array(res.loss_dot), L_dot, rtol, "loss_dot")
    assert_close(res.y_hat, y_hat, rtol, "y_hat")
    assert_close(res.y_hat_dot, y_hat_dot, rtol, "y_hat_dot")
    assert_close(res.a_dot, a_dot, rtol, "a_dot")
    assert_close(res.states_dot.reshape(states_dot.shape), states_dot, rtol, "states_dot")
    C = H * model.directions
    top = np.concatenate(list(states_dot[-model.directions:]), axis=-1)  # the top level's, [fwd; rev]
    assert res.h_dot.shape == (T, B, C)
    assert_close(res.h_dot, top, rtol, "h_dot")
    assert res.h_last_dot.shape == np.shape(case.kw["h0"])
    assert_close(res.h_last_dot.reshape(h_last_dot.shape), h_last_dot, rtol, "h_last_dot")
    loss, loss_dot = jvp(model, case.x, case.y, V, x_tangent=x_dot,
                                 h0_tangent=None if h0_dot is None else (h0_dot if U > 1 else h0_dot[0]),
                                 **case.kw)
    assert (loss, loss_dot) == (res.loss, res.loss_dot)
    return res


# --- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden, output, loss", COMBOS)
@pytest.mark.parametrize("num_layers, bidirectional, variant", [(1, False, "plain"), (2, True, "mean")])
def test_every_tangent_matches_torch_over_the_grid(rng, hidden, output, loss, num_layers, bidirectional, variant):
    case = make_case(rng, hidden, output, loss, num_layers, bidirectional, variant)
    check_against_torch(case, rng, 1e-10)


# Every shape with every variant; one layer has no level below the top, so no dropout mask.
SHAPE_VARIANTS = [(n, b, v) for n, b in SHAPES for v in VARIANTS if not (v == "dropout" and n == 1)]


@pytest.mark.parametrize("num_layers, bidirectional, variant", SHAPE_VARIANTS)
def test_every_tangent_matches_torch_for_every_shape(rng, num_layers, bidirectional, variant):
    hidden, output, loss = [("tanh", "softmax", "cross_entropy"), ("sigmoid", "sigmoid", "cross_entropy"),
                            ("relu", "identity", "mse")][int(rng.integers(3))]
    case = make_case(rng, hidden, output, loss, num_layers, bidirectional, variant)
    if variant == "dropout":
        assert all((m == 0).any() for m in case.dropout_masks)  # the masks do drop something
    check_against_torch(case, rng, 1e-10)


@pytest.mark.parametrize("hidden", ["tanh", "relu"])
def test_probability_targets_for_softmax_cross_entropy(rng, hidden):
    case = make_case(rng, hidden, "softmax", "cross_entropy", 2, True, "lengths_mask", targets="distribution")
    check_against_torch(case, rng, 1e-10)


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_parameter_and_input_directions_separately(rng, num_layers, bidirectional):
    """Each direction on its own (the other two zero), so that no part hides behind another."""
    case = make_case(rng, "tanh", "softmax", "cross_entropy", num_layers, bidirectional, "mask")
    model = case.model
    zero = {k: np.zeros(s) for k, s in model.shapes.items()}
    U = num_layers * model.directions
    x_dot, h0_dot = rng.standard_normal(case.x.shape), rng.standard_normal((U, B, H))
    for V, xd, hd in ((random_tree(rng, model), None, None), (zero, x_dot, None), (zero, None, h0_dot)):
        res = forward_tangents(model, case.x, case.y, V, x_tangent=xd,
                                       h0_tangent=None if hd is None else (hd if U > 1 else hd[0]), **case.kw)
        _, (L_dot, y_hat_dot, *_) = torch_jvp(case, V, xd, hd)
        assert abs(float(L_dot)) > 1e-6  # a direction that moves the loss
        assert_close(np.array(res.loss_dot), L_dot, 1e-10, "loss_dot")
        assert_close(res.y_hat_dot, y_hat_dot, 1e-10, "y_hat_dot")


def test_directional_derivative_equals_finite_differences(rng):
    """L_dot and y_hat_dot against a fourth-order central difference of model.loss / model.forward."""
    case = make_case(rng, "tanh", "softmax", "cross_entropy", 2, True, "mask")
    model = case.model
    V = random_tree(rng, model)
    x_dot = rng.standard_normal(case.x.shape)
    h0_dot = rng.standard_normal(case.h0.shape)
    res = forward_tangents(model, case.x, case.y, V, x_tangent=x_dot, h0_tangent=h0_dot, **case.kw)
    base = {k: v.copy() for k, v in model.params.items()}

    def at(e):
        model.params = {k: base[k] + e * V[k] for k in base}
        kw = dict(case.kw, h0=case.kw["h0"] + e * h0_dot)
        x = case.x + e * x_dot
        return (model.loss(x, case.y, **kw),
                model.forward(x, h0=kw["h0"], mask=kw.get("mask")).y_hat)

    eps = 1e-3
    (l2, y2), (l1, y1), (m1, z1), (m2, z2) = (at(e) for e in (2 * eps, eps, -eps, -2 * eps))
    model.params = base
    fd_loss = (-l2 + 8 * l1 - 8 * m1 + m2) / (12 * eps)
    fd_y_hat = (-y2 + 8 * y1 - 8 * z1 + z2) / (12 * eps)
    assert res.loss_dot == pytest.approx(fd_loss, rel=1e-8)
    assert_close(res.y_hat_dot, fd_y_hat, 1e-8, "y_hat_dot")


@pytest.mark.parametrize("hidden, output, loss", [("tanh", "softmax", "cross_entropy"),
                                                  ("sigmoid", "softmax", "mse"),
                                                  ("relu", "sigmoid", "cross_entropy")])
@pytest.mark.parametrize("num_layers, bidirectional, variant", [(1, False, "plain"), (2, True, "lengths_mask")])
def test_float32_matches_the_float64_oracle(rng, hidden, output, loss, num_layers, bidirectional, variant):
    """In float32 every operation rounds to 2^-24 relative; through a few steps and layers the
    results stay within 1e-5 of the exact (float64) tangents of the same rounded parameters."""
    case = make_case(rng, hidden, output, loss, num_layers, bidirectional, variant, dtype=np.float32)
    res = check_against_torch(case, rng, 1e-5)
    assert res.y_hat_dot.dtype == np.float32 and res.states_dot.dtype == np.float32
    assert isinstance(res.loss_dot, float)


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_batch_first_is_the_time_major_result_swapped(rng, num_layers, bidirectional):
    case = make_case(rng, "tanh", "softmax", "cross_entropy", num_layers, bidirectional, "dropout"
                     if num_layers > 1 else "mask")
    tm = case.model
    bf = rnngrad.RNN(D, H, O, num_layers=num_layers, bidirectional=bidirectional, dropout=tm.dropout,
                     batch_first=True)
    bf.params = {k: v.copy() for k, v in tm.params.items()}
    V, x_dot = random_tree(rng, tm), rng.standard_normal(case.x.shape)
    a = forward_tangents(tm, case.x, case.y, V, x_tangent=x_dot, **case.kw)
    kw = dict(case.kw)
    for name in ("mask",):
        if name in kw:
            kw[name] = kw[name].T
    if "dropout_masks" in kw:
        kw["dropout_masks"] = [m.swapaxes(0, 1) for m in kw["dropout_masks"]]
    b = forward_tangents(bf, case.x.swapaxes(0, 1), case.y.T, V, x_tangent=x_dot.swapaxes(0, 1), **kw)
    assert b.loss == a.loss and b.loss_dot == pytest.approx(a.loss_dot, rel=1e-14)
    for name in ("y_hat", "y_hat_dot", "a_dot", "h_dot"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name).swapaxes(0, 1), rtol=1e-13, err_msg=name)
    np.testing.assert_allclose(b.states_dot, a.states_dot.swapaxes(-3, -2), rtol=1e-13)
    np.testing.assert_allclose(b.h_last_dot, a.h_last_dot, rtol=1e-13)


def test_outputs_without_targets_and_zero_directions(rng):
    case = make_case(rng, "tanh", "softmax", "cross_entropy", 2, False, "plain")
    res = forward_tangents(case.model, case.x, tangents=None, h0=case.kw["h0"])
    assert res.loss is None and res.loss_dot is None
    assert not res.y_hat_dot.any() and not res.states_dot.any() and not res.h_last_dot.any()
    assert res.y_hat.tolist() == case.model.forward(case.x, h0=case.kw["h0"]).y_hat.tolist()


def test_a_linear_network_is_its_own_tangent(rng):
    """Worked by hand: with identity f and g, b = 0, h0 = 0 and W_x, W_y held fixed, the outputs
    are linear in x: y_hat_1 = W_y W_x x_1, y_hat_2 = W_y (W_h W_x x_1 + W_x x_2). So along
    x_dot = x the tangent is y_hat itself."""
    model = rnngrad.RNN(2, 2, 2, hidden_activation="identity", output_activation="identity", loss="mse", seed=1)
    model.params["b_h"][:] = 0
    model.params["b_y"][:] = 0
    x = rng.standard_normal((2, 1, 2))
    zero = {k: np.zeros(s) for k, s in model.shapes.items()}
    res = forward_tangents(model, x, tangents=zero, x_tangent=x)
    P = model.params
    y1 = P["W_y"] @ P["W_x"] @ x[0, 0]
    y2 = P["W_y"] @ (P["W_h"] @ P["W_x"] @ x[0, 0] + P["W_x"] @ x[1, 0])
    np.testing.assert_allclose(res.y_hat_dot[:, 0], np.stack([y1, y2]), rtol=1e-14)
    np.testing.assert_allclose(res.y_hat_dot, res.y_hat, rtol=1e-14)


def test_the_functional_oracle_is_the_step_by_step_oracle(rng):
    """The torch oracle above gives the loss and gradients of tests/oracle.py's deep_reference
    (autograd, each sequence stepped on its own), for stacked bidirectional masked networks."""
    for num_layers, bidirectional, variant in ((3, True, "mask"), (2, False, "mean"), (2, True, "dropout")):
        case = make_case(rng, "sigmoid", "softmax", "cross_entropy", num_layers, bidirectional, variant)
        network, loss_of = torch_functions(case)
        P, X, H0 = torch_inputs(case)
        for v in P.values():
            v.requires_grad_(True)
        L = loss_of(network(P, X, H0)[1])
        L.backward()
        rnn_state, linear_state = case.model.torch_state_dict()
        ref_loss, ref = deep_reference(rnn_state, linear_state, case.x, case.y, num_layers=num_layers,
                                       bidirectional=bidirectional, hidden="sigmoid", output="softmax",
                                       loss="cross_entropy", h0=case.h0, mask=case.kw.get("mask"),
                                       reduction=case.reduction, dropout_masks=case.dropout_masks)
        assert L.item() == pytest.approx(ref_loss, rel=1e-13)
        assert_close(P["W_h_l1"].grad.numpy(), ref["weight_hh_l1"], 1e-12, "W_h_l1")
        assert_close(P["W_x"].grad.numpy(), ref["weight_ih_l0"], 1e-12, "W_x")
        assert_close(P["W_y"].grad.numpy(), ref["linear.weight"], 1e-12, "W_y")
    # lengths= on a unidirectional network (zero padding states): the oracle's loss is the model's
    case = make_case(rng, "tanh", "softmax", "cross_entropy", 2, False, "lengths_mask")
    network, loss_of = torch_functions(case)
    assert loss_of(network(*torch_inputs(case))[1]).item() == pytest.approx(
        case.model.loss(case.x, case.y, **case.kw), rel=1e-13)


def test_bad_directions_are_refused_with_the_fix(rng):
    case = make_case(rng, variant="tokens")
    model = case.model
    V = random_tree(rng, model)
    with pytest.raises(ValueError, match=r"tangents must have exactly the keys.*missing \['b_y'\]"):
        jvp(model, case.x, case.y, {k: v for k, v in V.items() if k != "b_y"})
    with pytest.raises(ValueError, match=r"tangents\['W_h'\] must have shape"):
        jvp(model, case.x, case.y, dict(V, W_h=np.zeros((2, 2))))
    with pytest.raises(ValueError, match=r"tangents\['W_x'\] contains NaN"):
        jvp(model, case.x, case.y, dict(V, W_x=np.full((H, D), np.nan)))
    with pytest.raises(TypeError, match="tangents must be a dict"):
        jvp(model, case.x, case.y, [1, 2])
    with pytest.raises(TypeError, match="x_tangent is only for float inputs"):
        jvp(model, case.x, case.y, V, x_tangent=np.zeros((T, B, D)))
    floats = make_case(rng)
    with pytest.raises(ValueError, match=r"x_tangent must have shape \(T, B, D\) as x"):
        jvp(floats.model, floats.x, floats.y, V, x_tangent=np.zeros((T, B, D + 1)))
    with pytest.raises(ValueError, match=r"h0_tangent must have shape \(B, H\)"):
        jvp(floats.model, floats.x, floats.y, V, h0_tangent=np.zeros((B, H + 1)))
    with pytest.raises(TypeError, match="jvp needs the targets y"):
        jvp(floats.model, floats.x, None, V)


def test_a_user_activation_without_jvp_is_refused():
    class Sparsemax(rnngrad.Activation):  # not element-wise, and no jvp
        name = "sparsemax"
        elementwise = False
        probabilities = True

        def fn(self, z, out=None):
            return rnngrad.Softmax().fn(z, out)

        def vjp(self, dout, z, out):
            return rnngrad.Softmax().vjp(dout, z, out)

    model = rnngrad.RNN(2, 2, 3, output_activation=Sparsemax(), loss="mse", seed=0)
    x, y = np.zeros((2, 1, 2)), np.zeros((2, 1, 3))
    with pytest.raises(TypeError, match="'sparsemax' is not element-wise and defines no jvp"):
        jvp(model, x, y, {k: np.zeros(s) for k, s in model.shapes.items()})


def test_the_public_contract(rng):
    """rnngrad.jvp(model, x, y, tangents) with the data keywords of model.gradients."""
    case = make_case(rng, "tanh", "softmax", "cross_entropy", 2, True, "lengths_mask")
    V = random_tree(rng, case.model)
    kw = {k: case.kw[k] for k in ("h0", "mask", "lengths")}
    loss, dloss = rnngrad.jvp(case.model, case.x, case.y, V, reduction="mean", **kw)
    L_dot = torch_jvp(replace(case, kw=dict(kw, reduction="mean")), V)[1][0]
    assert isinstance(loss, float) and isinstance(dloss, float)
    assert loss == pytest.approx(case.model.loss(case.x, case.y, reduction="mean", **kw), rel=1e-15)
    assert_close(np.array(dloss), L_dot, 1e-10, "dloss")
    assert rnngrad.forward_tangents is forward_tangents and "ForwardTangents" in rnngrad.__all__
