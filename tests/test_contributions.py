"""Per-step gradient terms and the influence map against PyTorch float64 autograd.

The oracle (``unrolled`` below) writes the network out step by step in torch with a separate
copy of every parameter for each time step t (for a reverse unit: the step at which it reads
x_t), so that autograd's gradient of L with respect to copy t *is* step t's term; and it keeps
every state h^u_{t,b} as its own tensor, so autograd of each step's loss L_s with respect to
them is dL_s/dh_t, every path through the recurrence included. Nothing in it calls rnngrad's
maths. Tiny case by hand (T = 2, one unit, H = D = 1, identity f, identity g, MSE, h0 = 0):
z_1 = w_x x_1, h_1 = z_1; h_2 = w_h h_1 + w_x x_2; dL/dh_2 = 2 e_2 w_y (e_t = y_hat_t - y_t),
dL/dh_1 = 2 e_1 w_y + w_h dL/dh_2; the W_h terms are 0 · dL/dh_1 = 0 at t = 1 and h_1 dL/dh_2
at t = 2 (see test_hand_worked_case).
"""

import struct

import numpy as np
import pytest
import torch

from conftest import COMBOS, assert_close, make_targets
from oracle import HIDDEN, OUTPUT, per_step_loss
import rnngrad
from rnngrad import RNN
from rnngrad.contributions import TERMS_LIMIT, Factor, per_step_contributions, step_norms
from rnngrad.network import layer_param_names

T, B, D, H, O = 5, 3, 4, 3, 4
SHAPES = [(1, False), (2, False), (1, True), (2, True)]


def unrolled(model, x, y, h0=None, lengths=None, mask=None, reduction="sum"):
    """(loss, {name: (T, *shape) per-step terms}, (U, T, T) unit influence) by torch autograd."""
    dt = torch.float64
    x = np.asarray(x)
    Tn, Bn = x.shape[:2]
    L_, dirs = model.num_layers, model.directions
    U, Hn = L_ * dirs, model.hidden_size
    copies = {n: [torch.tensor(np.asarray(v, np.float64), requires_grad=True) for _ in range(Tn)]
              for n, v in model.params.items()}
    X = (torch.nn.functional.one_hot(torch.tensor(x), model.input_size).to(dt) if x.ndim == 2
         else torch.tensor(x, dtype=dt))
    H0 = torch.zeros(U, Bn, Hn, dtype=dt) if h0 is None else torch.tensor(np.asarray(h0).reshape(U, Bn, Hn))
    if lengths is None and model.bidirectional and mask is not None:
        lengths = np.asarray(mask, bool).sum(0)
    lens = [Tn] * Bn if lengths is None else [int(v) for v in lengths]
    f = HIDDEN[model.f.name]
    cells_all, inp = [], X
    for k in range(L_):
        outs = []
        for d in range(dirs):
            n_x, n_h, n_b = layer_param_names(k, d)
            cells = [[None] * Bn for _ in range(Tn)]
            for b in range(Bn):
                h = H0[k * dirs + d, b]
                for t in (range(lens[b]) if d == 0 else range(lens[b] - 1, -1, -1)):
                    h = f(copies[n_x][t] @ inp[t, b] + copies[n_h][t] @ h + copies[n_b][t])
                    cells[t][b] = h
            cells_all.append(cells)
            zero = torch.zeros(Hn, dtype=dt)
            outs.append(torch.stack([torch.stack([c if c is not None else zero for c in row]) for row in cells]))
        inp = torch.cat(outs, dim=-1)
    a = torch.stack([inp[t] @ copies["W_y"][t].T + copies["b_y"][t] for t in range(Tn)])
    y_hat = OUTPUT[model.g.name](a)
    y_np = np.asarray(y)
    Y = torch.tensor(y_np, dtype=torch.int64 if y_np.dtype.kind in "iu" else dt)
    rows = torch.stack([per_step_loss(model.loss_fn.name, model.g.name, y_hat[t], Y[t]) for t in range(Tn)])
    if mask is None and lengths is not None:
        mask = np.arange(Tn)[:, None] < np.asarray(lengths)[None, :]
    w = torch.ones(Tn, Bn, dtype=dt) if mask is None else torch.tensor(np.asarray(mask), dtype=dt)
    if reduction == "mean":
        w = w / w.sum()
    L_s = torch.where(w != 0, w * rows, torch.zeros((), dtype=dt)).sum(dim=1)  # (T,)
    L = L_s.sum()
    names = list(model.params)
    flat = [c for n in names for c in copies[n]]
    grads = torch.autograd.grad(L, flat, retain_graph=True, allow_unused=True)
    terms, i = {}, 0
    for n in names:
        terms[n] = np.stack([np.zeros(model.params[n].shape) if g is None else g.numpy() for g in grads[i:i + Tn]])
        i += Tn
    where = [(u, t) for u in range(U) for t in range(Tn) for b in range(Bn) if cells_all[u][t][b] is not None]
    states = [cells_all[u][t][b] for u in range(U) for t in range(Tn) for b in range(Bn)
              if cells_all[u][t][b] is not None]
    influence = np.zeros((U, Tn, Tn))
    for s in range(Tn):
        gs = torch.autograd.grad(L_s[s], states, retain_graph=True, allow_unused=True)
        for (u, t), g in zip(where, gs):
            if g is not None:
                influence[u, s, t] += float((g * g).sum())
    return L.item(), terms, np.sqrt(influence)


def make_model(rng, hidden="tanh", output="softmax", loss="cross_entropy", num_layers=1, bidirectional=False,
               **kw):
    return RNN(D, H, O, hidden_activation=hidden, output_activation=output, loss=loss, num_layers=num_layers,
               bidirectional=bidirectional, seed=int(rng.integers(1 << 30)), **kw)


def check_against_oracle(model, c, ref, rtol=1e-10, influence=True):
    ref_loss, ref_terms, ref_infl = ref
    assert c.loss == pytest.approx(ref_loss, rel=rtol)
    assert list(c.norms) == list(model.params)
    for name in model.params:
        terms = c.terms(name)
        assert_close(terms, ref_terms[name], rtol, name)
        flat = ref_terms[name].reshape(ref_terms[name].shape[0], -1)
        assert_close(c.norms[name], np.linalg.norm(flat, axis=1), rtol, f"norms[{name}]")
    if influence:
        assert_close(c.unit_influence, ref_infl, rtol, "unit_influence")
        top = np.sqrt((ref_infl[-model.directions:] ** 2).sum(axis=0))
        assert_close(c.influence, top, rtol, "influence")


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
@pytest.mark.parametrize("hidden, output, loss", COMBOS)
def test_terms_norms_and_influence_match_torch(rng, num_layers, bidirectional, hidden, output, loss):
    model = make_model(rng, hidden, output, loss, num_layers, bidirectional)
    x = rng.standard_normal((T, B, D))
    y = make_targets(rng, output, loss, T, B, O)
    h0 = 0.5 * rng.standard_normal((num_layers * model.directions, B, H))
    c = per_step_contributions(model, x, y, h0=h0)
    check_against_oracle(model, c, unrolled(model, x, y, h0=h0))
    res = model.gradients(x, y, h0=h0)
    for name in model.params:  # the terms add up to the BPTT gradient
        assert_close(c.terms(name).sum(axis=0), res.grads[name], 1e-12, name)


CASES = {  # (num_layers, bidirectional, inputs, mask kind, reduction)
    "uni mask any pattern": (1, False, "floats", "random", "sum"),
    "uni 2 layers lengths": (2, False, "floats", "lengths", "sum"),
    "uni lengths + mask within": (1, False, "floats", "lengths+random", "mean"),
    "uni tokens": (1, False, "tokens", None, "sum"),
    "uni 2 layers tokens mean": (2, False, "tokens", "random", "mean"),
    "bi prefix mask": (1, True, "floats", "prefix", "sum"),
    "bi 2 layers lengths mean": (2, True, "floats", "lengths", "mean"),
    "bi tokens lengths + last step": (2, True, "tokens", "lengths+last", "sum"),
    "3 layers": (3, False, "floats", None, "mean"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("hidden, output, loss", [("tanh", "softmax", "cross_entropy"), ("relu", "identity", "mse"),
                                                  ("sigmoid", "sigmoid", "cross_entropy")])
def test_masks_lengths_tokens_and_mean(rng, case, hidden, output, loss):
    num_layers, bidirectional, inputs, masking, reduction = CASES[case]
    model = make_model(rng, hidden, output, loss, num_layers, bidirectional)
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    y = make_targets(rng, output, loss, T, B, O)
    lengths = np.array([5, 2, 4]) if masking and masking.startswith("lengths") else None
    valid = np.arange(T)[:, None] < np.array([5, 2, 4])[None, :]
    last = np.arange(T)[:, None] == np.array([4, 1, 3])[None, :]  # each sequence's last valid step
    mask = {None: None, "lengths": None, "random": rng.random((T, B)) < 0.6, "prefix": valid,
            "lengths+random": valid & (rng.random((T, B)) < 0.7), "lengths+last": valid & last}[masking]
    if mask is not None:
        mask[0, 0] = True  # at least one loss term
    c = per_step_contributions(model, x, y, mask=mask, lengths=lengths, reduction=reduction)
    check_against_oracle(model, c, unrolled(model, x, y, lengths=lengths, mask=mask, reduction=reduction))
    res = model.gradients(x, y, mask=mask, lengths=lengths, reduction=reduction)
    for name in model.params:
        assert_close(c.terms(name).sum(axis=0), res.grads[name], 1e-12, name)


def test_float32_model_against_the_float64_oracle(rng):
    model = make_model(rng, "tanh", "softmax", "cross_entropy", 2, True).astype(np.float32)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    y = rng.integers(0, O, size=(T, B))
    c = per_step_contributions(model, x, y)
    assert c.terms("W_h").dtype == np.float32 and c.norms["W_h"].dtype == np.float64
    check_against_oracle(model, c, unrolled(model, x, y), rtol=2e-5)


def test_batch_first_gives_the_time_major_results(rng):
    model = make_model(rng, num_layers=2, bidirectional=True)
    bf = model.copy()
    bf.batch_first = True
    x = rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    c = per_step_contributions(model, x, y, lengths=np.array([5, 3, 4]))
    cb = per_step_contributions(bf, x.swapaxes(0, 1), y.T, lengths=np.array([5, 3, 4]))
    for name in model.params:
        np.testing.assert_array_equal(cb.norms[name], c.norms[name])
    np.testing.assert_array_equal(cb.influence, c.influence)
    cn = per_step_contributions(model, x, y, lengths=np.array([5, 3, 4]), engine="numpy")  # the reference engine
    for name in model.params:
        assert_close(cn.norms[name], c.norms[name], 1e-12, name)
    assert_close(cn.influence, c.influence, 1e-12, "influence")


@pytest.mark.parametrize("B_, H_, D_", [(2, 4, 5), (6, 3, 2), (1, 3, 3)])
def test_gram_and_direct_norms_agree_with_the_formed_terms(rng, B_, H_, D_):
    left, right = rng.standard_normal((7, B_, H_)), rng.standard_normal((7, B_, D_))
    formed = np.einsum("tbh,tbd->thd", left, right)
    want = np.linalg.norm(formed.reshape(7, -1), axis=1)
    for method in ("gram", "direct", None):
        assert_close(step_norms(Factor(left, right, D_), method), want, 1e-12, str(method))


def test_token_norms_sum_rows_that_share_a_column(rng):
    left = rng.standard_normal((6, 5, 3))
    tokens = rng.integers(0, 3, size=(6, 5))  # few tokens: several sequences share a column
    onehot = np.eye(4)[tokens]  # D = 4, one column never read
    formed = np.einsum("tbh,tbd->thd", left, onehot)
    assert_close(step_norms(Factor(left, tokens, 4)), np.linalg.norm(formed.reshape(6, -1), axis=1), 1e-12)


def test_influence_is_zero_above_the_diagonal_only_for_a_unidirectional_net(rng):
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    uni = per_step_contributions(make_model(rng, num_layers=2), x, y)
    above = np.triu_indices(T, 1)  # t > s
    assert np.all(uni.influence[above] == 0) and np.all(np.tril(uni.influence)[np.tril_indices(T)] > 0)
    bi = per_step_contributions(make_model(rng, bidirectional=True), x, y)
    assert np.all(bi.influence[above] > 0)


def test_influence_in_chunks_of_loss_steps_is_the_same(rng, monkeypatch):
    import rnngrad.contributions as contributions

    model = make_model(rng, num_layers=2, bidirectional=True)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    lengths = np.array([5, 4, 5])
    mask = np.arange(T)[:, None] < lengths[None, :]
    mask[2] = False  # a step without loss: skipped, its row zero
    whole = per_step_contributions(model, x, y, mask=mask, lengths=lengths)
    assert np.all(whole.unit_influence[:, 2] == 0)
    monkeypatch.setattr(contributions, "_INFLUENCE_ELEMENTS", 1)  # one loss step per backward pass
    one = per_step_contributions(model, x, y, mask=mask, lengths=lengths)
    assert_close(one.unit_influence, whole.unit_influence, 1e-13, "one step at a time")


def test_hand_worked_case():
    model = RNN(1, 1, 1, hidden_activation="identity", output_activation="identity", loss="mse")
    w_x, w_h, w_y = 0.5, 0.8, 1.5
    model.params.update(W_x=np.array([[w_x]]), W_h=np.array([[w_h]]), b_h=np.zeros(1), W_y=np.array([[w_y]]),
                        b_y=np.zeros(1))
    x = np.array([1.0, 2.0]).reshape(2, 1, 1)
    y = np.array([0.2, -0.1]).reshape(2, 1, 1)
    h1 = w_x * 1.0
    h2 = w_h * h1 + w_x * 2.0
    e1, e2 = w_y * h1 - 0.2, w_y * h2 + 0.1
    dh2 = 2 * e2 * w_y
    dh1 = 2 * e1 * w_y + w_h * dh2
    c = per_step_contributions(model, x, y)
    np.testing.assert_allclose(c.terms("W_h")[:, 0, 0], [0.0, h1 * dh2], rtol=1e-14)
    np.testing.assert_allclose(c.terms("W_x")[:, 0, 0], [dh1 * 1.0, dh2 * 2.0], rtol=1e-14)
    np.testing.assert_allclose(c.terms("W_y")[:, 0, 0], [2 * e1 * h1, 2 * e2 * h2], rtol=1e-14)
    np.testing.assert_allclose(c.influence, [[2 * abs(e1) * w_y, 0], [abs(w_h * dh2), abs(dh2)]], rtol=1e-14)


def test_terms_refused_above_the_limit_and_single_steps(rng):
    model = make_model(rng)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    assert rnngrad.per_step_contributions is per_step_contributions  # the public name
    c = per_step_contributions(model, x, y, influence=False)
    assert c.influence is None and c.unit_influence is None
    with pytest.raises(ValueError, match=r"max_elements=10.*norms\['W_h'\].*term\('W_h', t\)"):
        c.terms("W_h", max_elements=10)
    assert TERMS_LIMIT == 50_000_000
    full = c.terms("W_h")
    for t in (0, 3, -1):
        np.testing.assert_array_equal(c.term("W_h", t), full[t])
    with pytest.raises(KeyError, match="the names are"):
        c.terms("W_z")
    with pytest.raises(ValueError, match=r"t must be a step index in \[0, 5\)"):
        c.term("W_h", 5)
    with pytest.raises(TypeError, match="model must be an rnngrad.RNN"):
        per_step_contributions("model", x, y)
    with pytest.raises(ValueError, match="unknown reduction"):
        per_step_contributions(model, x, y, reduction="avg")


def png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_figures_are_valid_pngs(rng, tmp_path):
    pytest.importorskip("matplotlib")
    from rnngrad.dynamics_plots import plot_contributions, plot_influence

    model = make_model(rng, num_layers=2)
    x, y = rng.standard_normal((T, B, D)), rng.integers(0, O, size=(T, B))
    c = per_step_contributions(model, x, y)
    assert plot_influence(c, tmp_path / "influence.png") == str(tmp_path / "influence.png")
    assert plot_contributions(c, tmp_path / "contributions.png", names=["W_h", "W_h_l1", "W_y"])
    for name in ("influence.png", "contributions.png"):
        w, h = png_size(tmp_path / name)
        assert w > 300 and h > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contributions.png", "influence.png"]
    with pytest.raises(ValueError, match="names must be parameter names"):
        plot_contributions(c, tmp_path / "x.png", names=["W_q"])
    with pytest.raises(ValueError, match="influence=True"):
        plot_influence(per_step_contributions(model, x, y, influence=False), tmp_path / "x.png")
