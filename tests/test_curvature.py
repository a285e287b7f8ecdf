"""Curvature products (rnngrad.hvp, rnngrad.gnvp, rnngrad.curvature_at) against PyTorch.

Oracles: torch.func.jvp of torch.func.grad (forward over reverse) of the independent torch
network of tests/test_forward_mode.py for H v; torch's composition jvp -> Hessian of the loss at
the split -> vjp for G v; central differences of the gradient once; whole matrices of a tiny
model for symmetry and positive semi-definiteness.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import rnngrad
from rnngrad.curvature import curvature_at, gnvp, hvp, logit_hessian_vp, output_curvature_vp
from conftest import COMBOS, assert_close

torch = pytest.importorskip("torch")
from oracle import OUTPUT  # noqa: E402
from test_forward_mode import (  # noqa: E402
    SHAPE_VARIANTS, make_case, random_tree, torch_functions, torch_inputs)

CANONICAL = [("softmax", "cross_entropy"), ("sigmoid", "cross_entropy"), ("identity", "mse")]


def _tensors(tree):
    return {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in tree.items()}


def torch_hvp(case, V):
    """H V by torch.func: the jvp of the gradient of L(P)."""
    network, loss_of = torch_functions(case)
    P, X, H0 = torch_inputs(case)
    _, Hv = torch.func.jvp(torch.func.grad(lambda P: loss_of(network(P, X, H0)[1])), (P,), (_tensors(V),))
    return {k: v.numpy() for k, v in Hv.items()}


def torch_gnvp(case, V, split):
    """J^T M J V composed in torch: J V by jvp of the split's output (logits a, or y_hat), M (J V)
    by the jvp of the loss's gradient in that output, J^T by vjp."""
    network, loss_of = torch_functions(case)
    P, X, H0 = torch_inputs(case)
    g = OUTPUT[case.model.g.name]
    if split == "logits":
        def out(P): return network(P, X, H0)[0]
        def loss_at(a): return loss_of(g(a))
    else:
        def out(P): return network(P, X, H0)[1]
        loss_at = loss_of
    a, Ja = torch.func.jvp(out, (P,), (_tensors(V),))
    _, MJa = torch.func.jvp(torch.func.grad(loss_at), (a,), (Ja,))
    _, pullback = torch.func.vjp(out, P)
    return {k: v.numpy() for k, v in pullback(MJa)[0].items()}


def assert_tree_close(ours, ref, rtol):
    assert list(ours) == list(ref)
    for k in ref:
        assert ours[k].shape == ref[k].shape and ours[k].dtype == ref[k].dtype, k
        assert_close(ours[k], ref[k], rtol, k)


def dot(u, v):
    return sum(float(np.vdot(u[k], v[k])) for k in u)


# --- exact Hessian-vector products -------------------------------------------------------------

@pytest.mark.parametrize("hidden, output, loss", COMBOS)
@pytest.mark.parametrize("num_layers, bidirectional, variant", [(1, False, "plain"), (2, True, "mean")])
def test_hvp_matches_torch_over_the_grid(rng, hidden, output, loss, num_layers, bidirectional, variant):
    case = make_case(rng, hidden, output, loss, num_layers, bidirectional, variant)
    V = random_tree(rng, case.model)
    assert_tree_close(hvp(case.model, case.x, case.y, V, **case.kw), torch_hvp(case, V), 1e-10)


@pytest.mark.parametrize("num_layers, bidirectional, variant", SHAPE_VARIANTS)
def test_hvp_matches_torch_for_every_shape(rng, num_layers, bidirectional, variant):
    hidden, output, loss = [("tanh", "softmax", "cross_entropy"), ("sigmoid", "softmax", "mse"),
                            ("tanh", "sigmoid", "mse")][int(rng.integers(3))]
    case = make_case(rng, hidden, output, loss, num_layers, bidirectional, variant)
    V = random_tree(rng, case.model)
    assert_tree_close(hvp(case.model, case.x, case.y, V, **case.kw), torch_hvp(case, V), 1e-10)


@pytest.mark.parametrize("product", ["hvp", "gnvp"])
def test_probability_targets_for_softmax_cross_entropy(rng, product):
    """Target rows (summing to 1 + 8e-7, see make_case): H_a = S (diag(s) - s s^T), S = sum_k y_k."""
    case = make_case(rng, "tanh", "softmax", "cross_entropy", 2, False, "mean", targets="distribution")
    V = random_tree(rng, case.model)
    if product == "hvp":
        assert_tree_close(hvp(case.model, case.x, case.y, V, **case.kw), torch_hvp(case, V), 1e-10)
    else:
        assert_tree_close(gnvp(case.model, case.x, case.y, V, **case.kw), torch_gnvp(case, V, "logits"), 1e-10)


def test_hvp_equals_central_differences_of_the_gradient(rng):
    case = make_case(rng, "tanh", "softmax", "mse", 2, True, "lengths_mask")
    model = case.model
    V = random_tree(rng, model)
    Hv = hvp(model, case.x, case.y, V, **case.kw)
    base = {k: p.copy() for k, p in model.params.items()}

    def grad_at(e):
        model.params = {k: base[k] + e * V[k] for k in base}
        return model.gradients(case.x, case.y, **case.kw).grads

    eps = 1e-3
    g2, g1, m1, m2 = (grad_at(e) for e in (2 * eps, eps, -eps, -2 * eps))
    model.params = base
    for k in V:
        assert_close(Hv[k], (-g2[k] + 8 * g1[k] - 8 * m1[k] + m2[k]) / (12 * eps), 1e-8, k)


@pytest.mark.parametrize("hidden, output, loss", [("tanh", "softmax", "cross_entropy"), ("relu", "sigmoid", "mse"),
                                                  ("sigmoid", "identity", "mse")])
def test_hessian_is_symmetric(rng, hidden, output, loss):
    """u^T H v = v^T H u to rounding, for random u, v (two different products)."""
    case = make_case(rng, hidden, output, loss, 2, True, "mask")
    curv = curvature_at(case.model, case.x, case.y, **case.kw)
    u, v = random_tree(rng, case.model), random_tree(rng, case.model)
    uHv, vHu = dot(u, curv.hvp(v)), dot(v, curv.hvp(u))
    assert abs(uHv) > 1e-3
    assert uHv == pytest.approx(vHu, rel=1e-12)


def full_matrix(product, shapes):
    """The matrix of a linear map of trees, column by column on the unit vectors."""
    sizes = [int(np.prod(s)) for s in shapes.values()]
    n = sum(sizes)
    cols = []
    for i in range(n):
        e = np.zeros(n)
        e[i] = 1
        parts = np.split(e, np.cumsum(sizes)[:-1])
        tree = {k: p.reshape(s) for (k, s), p in zip(shapes.items(), parts)}
        cols.append(np.concatenate([a.ravel() for a in product(tree).values()]))
    return np.array(cols).T


@pytest.mark.parametrize("output, loss", CANONICAL)
def test_gauss_newton_is_psd_and_the_hessian_is_symmetric(rng, output, loss):
    """Whole matrices of a tiny two-layer bidirectional network (58 parameters): H is symmetric,
    G = J^T H_a J is symmetric and positive semi-definite (the smallest eigenvalue is rounding
    on the largest's scale), and the Hessian is not (so the PSD test could fail)."""
    model = rnngrad.RNN(2, 2, 2, hidden_activation="tanh", output_activation=output, loss=loss,
                        num_layers=2, bidirectional=True, seed=int(rng.integers(1 << 30)))
    for p in model.params.values():
        p *= 3  # away from the linear regime, where H and G differ
    x = rng.standard_normal((3, 2, 2))
    y = (rng.integers(0, 2, size=(3, 2)) if output == "softmax" else
         rng.uniform(0, 1, (3, 2, 2)) if output == "sigmoid" else rng.standard_normal((3, 2, 2)))
    curv = curvature_at(model, x, y, mask=np.array([[1, 1], [1, 1], [1, 0]]))
    Hm, Gm = full_matrix(curv.hvp, model.shapes), full_matrix(curv.gnvp, model.shapes)
    for name, M in (("H", Hm), ("G", Gm)):
        assert np.abs(M - M.T).max() <= 1e-13 * np.abs(M).max(), name
    g_eigs, h_eigs = np.linalg.eigvalsh(Gm), np.linalg.eigvalsh(Hm)
    assert g_eigs.min() >= -1e-13 * g_eigs.max()
    assert h_eigs.min() < -1e-6 * h_eigs.max()  # the Hessian itself is indefinite here
    v = random_tree(rng, model)
    assert dot(v, curv.gnvp(v)) >= 0


# --- Gauss-Newton-vector products --------------------------------------------------------------

@pytest.mark.parametrize("hidden, output, loss", COMBOS)
@pytest.mark.parametrize("num_layers, bidirectional, variant", [(1, False, "plain"), (2, True, "lengths_mask")])
def test_gnvp_matches_torch_composition(rng, hidden, output, loss, num_layers, bidirectional, variant):
    """split "auto": the Hessian of L∘g in the logits for a canonical pair, else the Hessian of L
    in y_hat; every case also checked for the other split."""
    case = make_case(rng, hidden, output, loss, num_layers, bidirectional, variant)
    V = random_tree(rng, case.model)
    auto = "logits" if (output, loss) in CANONICAL else "outputs"
    ours = gnvp(case.model, case.x, case.y, V, **case.kw)
    assert_tree_close(ours, torch_gnvp(case, V, auto), 1e-10)
    assert dot(V, ours) >= 0  # PSD on every pair with its default split
    other = {"logits": "outputs", "outputs": "logits"}[auto]
    assert_tree_close(gnvp(case.model, case.x, case.y, V, split=other, **case.kw), torch_gnvp(case, V, other), 1e-10)


@pytest.mark.parametrize("num_layers, bidirectional, variant",
                         [(3, True, "dropout"), (2, False, "tokens"), (3, False, "mask"), (1, True, "mean")])
def test_gnvp_for_every_shape(rng, num_layers, bidirectional, variant):
    case = make_case(rng, "tanh", "softmax", "cross_entropy", num_layers, bidirectional, variant)
    V = random_tree(rng, case.model)
    assert_tree_close(gnvp(case.model, case.x, case.y, V, **case.kw), torch_gnvp(case, V, "logits"), 1e-10)


def test_identity_network_gauss_newton_is_the_hessian(rng):
    """Worked by hand: identity f and g with MSE make a the output of a network that is linear in
    (W_y, b_y) for fixed hidden weights; along a direction in W_y and b_y only, J is exact and the
    loss is quadratic, so H v = G v = J^T 2 J v there."""
    case = make_case(rng, "identity", "identity", "mse", 1, False, "plain")
    V = {k: (v if k in ("W_y", "b_y") else np.zeros_like(v)) for k, v in random_tree(rng, case.model).items()}
    curv = curvature_at(case.model, case.x, case.y, **case.kw)
    Hv, Gv = curv.hvp(V), curv.gnvp(V)
    for k in ("W_y", "b_y"):
        assert_close(Hv[k], Gv[k], 1e-13, k)
    h = case.model.forward(case.x, h0=case.kw["h0"]).h.reshape(-1, 3)
    a_dot = h @ V["W_y"].T + V["b_y"]  # J v
    assert_close(Gv["W_y"], 2 * a_dot.T @ h, 1e-13, "W_y by hand")


# --- the object, float32, and refusals ---------------------------------------------------------

def test_curvature_at_is_one_point(rng):
    case = make_case(rng, "tanh", "softmax", "cross_entropy", 2, True, "mask")
    model = case.model
    curv = curvature_at(model, case.x, case.y, **case.kw)
    res = model.gradients(case.x, case.y, **case.kw)
    assert curv.loss == res.loss
    for k in res.grads:
        np.testing.assert_array_equal(curv.grads[k], res.grads[k])
    V = random_tree(rng, model)
    before_h, before_g = curv.hvp(V), curv.gnvp(V)
    assert_tree_close(before_h, hvp(model, case.x, case.y, V, **case.kw), 1e-15)
    for p in model.params.values():  # the point holds its own copy of the parameters
        p += 1.0
    after_h = curv.hvp(V)
    for k in V:
        np.testing.assert_array_equal(after_h[k], before_h[k])
    assert_tree_close(curv.gnvp(V), before_g, 0)


@pytest.mark.parametrize("output, loss", [("softmax", "cross_entropy"), ("sigmoid", "mse")])
def test_float32_products_match_the_float64_oracle(rng, output, loss):
    """float32 rounds to 2^-24 per operation; two passes through a few steps and two layers keep
    H v and G v within 1e-5 of the exact products at the same (rounded) parameters."""
    case = make_case(rng, "tanh", output, loss, 2, True, "lengths_mask", dtype=np.float32)
    V = {k: v.astype(np.float32) for k, v in random_tree(rng, case.model).items()}
    ours_h = hvp(case.model, case.x, case.y, V, **case.kw)
    ours_g = gnvp(case.model, case.x, case.y, V, **case.kw)
    ref_h, ref_g = torch_hvp(case, V), torch_gnvp(case, V, "logits" if output == "softmax" else "outputs")
    for k in V:
        assert ours_h[k].dtype == np.float32 and ours_g[k].dtype == np.float32
        assert_close(ours_h[k], ref_h[k], 1e-5, k)
        assert_close(ours_g[k], ref_g[k], 1e-5, k)


def test_masked_rows_add_exactly_nothing():
    """A masked row may hold inf (a user's loss at a padded position): weight 0 gives 0, not NaN."""
    class Wild(rnngrad.MSE):
        name = "wild"

        def grad(self, y_hat, y):
            return np.where(np.arange(len(y))[:, None] == 1, np.inf, 2 * (y_hat - y))

        def hessian_vp(self, y_hat, y, v):
            return np.where(np.arange(len(y))[:, None] == 1, np.inf, 2 * v)

    a = np.array([[0.5, -1.0], [2.0, 0.1], [0.0, 0.3]])
    s = rnngrad.Softmax().fn(a)
    w = np.array([1.0, 0.0, 0.5])
    y, v = np.zeros((3, 2)), np.array([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]])  # J v = 0 for constant rows
    rows = logit_hessian_vp(rnngrad.Softmax(), Wild(), a, s, y, w, v)
    assert np.isfinite(rows).all() and not rows[1].any() and rows[0].any()
    rows = output_curvature_vp("outputs", rnngrad.Softmax(), Wild(), a, s, y, w, v)
    assert np.isfinite(rows).all() and not rows[1].any() and rows[0].any()


class Softsign(rnngrad.Activation):
    """f(z) = z / (1 + |z|); f' = 1 / (1 + |z|)^2, f'' = -2 sign(z) / (1 + |z|)^3."""

    name = "softsign"

    def fn(self, z, out=None):
        return np.divide(z, 1 + np.abs(z), out=out)

    def derivative(self, z, out):
        return 1 / (1 + np.abs(z)) ** 2

    def second_derivative(self, z, out):
        return -2 * np.sign(z) / (1 + np.abs(z)) ** 3


class TanhFromZ(rnngrad.Activation):
    """tanh whose f' reads only the output (so the forward pass keeps no z) and whose f'' reads
    only z: curvature products must then rebuild z."""

    name = "tanh_from_z"
    derivative_needs_input = False

    def fn(self, z, out=None):
        return np.tanh(z, out=out)

    def derivative(self, z, out):
        return 1 - out * out

    def second_derivative(self, z, out):
        t = np.tanh(z)
        return -2 * t * (1 - t * t)


@pytest.mark.parametrize("f, torch_f", [(Softsign(), torch.nn.functional.softsign), (TanhFromZ(), torch.tanh)])
def test_a_user_activation_with_a_second_derivative(rng, f, torch_f):
    case = make_case(rng, f, "softmax", "cross_entropy", 2, True, "lengths")
    case.extra["hidden"] = torch_f
    V = random_tree(rng, case.model)
    assert_tree_close(hvp(case.model, case.x, case.y, V, **case.kw), torch_hvp(case, V), 1e-10)


def test_what_cannot_be_differentiated_twice_is_refused(rng):
    class Plain(rnngrad.Activation):  # no second derivative
        name = "plain_softsign"
        fn, derivative = Softsign.fn, Softsign.derivative

    case = make_case(rng, Plain(), "softmax", "cross_entropy")
    V = random_tree(rng, case.model)
    with pytest.raises(TypeError, match=r"'plain_softsign' has no second derivative; define second_derivative"):
        hvp(case.model, case.x, case.y, V, **case.kw)
    gnvp(case.model, case.x, case.y, V, **case.kw)  # Gauss-Newton needs only f'

    class Huber(rnngrad.MSE):
        name = "huber"

    model = rnngrad.RNN(3, 3, 3, output_activation="identity", loss=Huber(), seed=0)
    x, y = rng.standard_normal((2, 1, 3)), rng.standard_normal((2, 1, 3))
    for fn in (hvp, gnvp):
        with pytest.raises(TypeError, match=r"loss 'huber' has no Hessian; define hessian_vp"):
            fn(model, x, y, random_tree(rng, model))
    good = make_case(rng)
    with pytest.raises(ValueError, match=r"unknown split 'exact'"):
        gnvp(good.model, good.x, good.y, V, split="exact", **good.kw)
    with pytest.raises(ValueError, match=r"v must have exactly the keys of model.params"):
        hvp(good.model, good.x, good.y, {"W_x": V["W_x"]}, **good.kw)


def test_the_public_contract(rng):
    """rnngrad.hvp(model, x, y, v) and rnngrad.gnvp(model, x, y, v) with the data keywords of
    model.gradients."""
    case = make_case(rng, "tanh", "sigmoid", "cross_entropy", 2, True, "lengths_mask")
    V = random_tree(rng, case.model)
    kw = {k: case.kw[k] for k in ("h0", "mask", "lengths")}
    mean = replace(case, kw=dict(kw, reduction="mean"))
    Hv = rnngrad.hvp(case.model, case.x, case.y, V, reduction="mean", **kw)
    Gv = rnngrad.gnvp(case.model, case.x, case.y, V, reduction="mean", **kw)
    assert list(Hv) == list(case.model.params) == list(Gv)
    assert_tree_close(Hv, torch_hvp(mean, V), 1e-10)
    assert_tree_close(Gv, torch_gnvp(mean, V, "logits"), 1e-10)


@pytest.mark.parametrize("engine", rnngrad.engines.available_engines())
def test_every_engine_gives_the_same_products(rng, engine):
    """The engine runs the primal forward and backward passes; the products match torch on each."""
    case = make_case(rng, "tanh", "softmax", "cross_entropy", 2, True, "lengths_mask")
    V = random_tree(rng, case.model)
    assert_tree_close(hvp(case.model, case.x, case.y, V, engine=engine, **case.kw), torch_hvp(case, V), 1e-10)
    assert_tree_close(gnvp(case.model, case.x, case.y, V, engine=engine, **case.kw),
                      torch_gnvp(case, V, "logits"), 1e-10)
