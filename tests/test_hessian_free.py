"""The Hessian-free optimiser: conjugate gradient, the damping rule, warm starts, and an RNN.

Oracles: numpy.linalg.solve for CG; quadratics whose minimiser and reduction ratio are known in
closed form for the optimiser.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnngrad
from rnngrad.hessian_free import HessianFree, RNNObjective, conjugate_gradient


def spd(rng, n, cond=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q @ np.diag(np.geomspace(1, cond, n)) @ q.T


def as_tree(vec):
    return {"a": vec[:2].reshape(2, 1), "b": vec[2:].copy()}


def as_vec(tree):
    return np.concatenate([tree["a"].ravel(), tree["b"]])


def test_cg_solves_an_spd_system_in_n_products(rng):
    n = 6
    A, b = spd(rng, n), rng.standard_normal(n)
    res = conjugate_gradient(lambda v: as_tree(A @ as_vec(v)), as_tree(b), as_tree(np.zeros(n)), max_iters=n)
    x = np.linalg.solve(A, b)
    np.testing.assert_allclose(as_vec(res.x), x, rtol=1e-10)
    assert res.q == pytest.approx(0.5 * x @ A @ x - b @ x, rel=1e-12)  # the minimum of q
    assert res.iterations == n
    tight = conjugate_gradient(lambda v: as_tree(A @ as_vec(v)), as_tree(b), as_tree(np.zeros(n)), 50, tol=1e-12)
    assert tight.reason == "residual" and tight.iterations <= n + 2
    short = conjugate_gradient(lambda v: as_tree(A @ as_vec(v)), as_tree(b), as_tree(np.zeros(n)), 2)
    assert short.reason == "max_iters" and short.iterations == 2 and res.q < short.q < 0


def test_cg_stops_on_negative_curvature(rng):
    A = np.diag([1.0, -1.0, 2.0, 3.0])
    res = conjugate_gradient(lambda v: as_tree(A @ as_vec(v)), as_tree(np.ones(4)), as_tree(np.zeros(4)), 10)
    assert res.reason == "curvature"


class Quadratic:
    """L(P) = 1/2 P^T A P - c^T P over one parameter vector, curvature kappa · A (kappa = 1: exact)."""

    def __init__(self, params, A, c, kappa=1.0):
        self.params, self.A, self.c, self.kappa = params, A, c, kappa
        self.seen = []  # the vectors G was applied to

    def loss(self):
        p = self.params["p"]
        return float(0.5 * p @ self.A @ p - self.c @ p)

    def curvature(self):
        p = self.params["p"]
        outer = self

        class At:
            loss = self.loss()
            grads = {"p": self.A @ p - self.c}

            def gnvp(self, v):
                outer.seen.append(v["p"].copy())
                return {"p": outer.kappa * (outer.A @ v["p"])}

        return At()


def test_converges_on_a_quadratic_in_two_steps(rng):
    n = 8
    A, c = spd(rng, n, cond=100.0), rng.standard_normal(n)
    params = {"p": rng.standard_normal(n)}
    opt = HessianFree(params, damping=1e-8)
    objective = Quadratic(params, A, c)
    first = opt.step(objective)
    second = opt.step(objective)
    assert first.accepted and second.accepted and not first.warm
    np.testing.assert_allclose(params["p"], np.linalg.solve(A, c), rtol=1e-9)
    assert first.rho == pytest.approx(1.0, abs=1e-6)  # the model is the function itself


@pytest.mark.parametrize("kappa, factor", [(1.0, 2 / 3), (0.7, 1.0), (0.55, 1.5)])
def test_damping_follows_the_reduction_ratio(rng, kappa, factor):
    """With A = a I and curvature kappa a I, the step is d = -g / (kappa a + lambda) and
    rho = (L(P + d) - L(P)) / q(d) = 2 - a / (kappa a + lambda): 0.99 (drop), 0.58 (keep),
    0.20 (boost) for lambda = a / 100."""
    n, a, lam = 5, 3.0, 0.03
    params = {"p": rng.standard_normal(n)}
    opt = HessianFree(params, damping=lam)
    step = opt.step(Quadratic(params, a * np.eye(n), rng.standard_normal(n), kappa))
    assert step.rho == pytest.approx(2 - a / (kappa * a + lam), rel=1e-10)
    assert step.accepted and step.damping == lam
    assert step.next_damping == pytest.approx(lam * factor, rel=1e-15) and opt.damping == step.next_damping


def test_a_step_that_raises_the_loss_is_undone(rng):
    """kappa = 0.4: rho = 2 - 1 / (0.4 + 0.01) < 0, the step overshoots and is taken back exactly."""
    n = 5
    params = {"p": rng.standard_normal(n)}
    start = params["p"].copy()
    opt = HessianFree(params, damping=0.03)
    step = opt.step(Quadratic(params, 3.0 * np.eye(n), rng.standard_normal(n), kappa=0.4))
    assert not step.accepted and step.new_loss > step.loss and step.rho < 0
    np.testing.assert_array_equal(params["p"], start)
    assert step.next_damping == pytest.approx(0.03 * 1.5, rel=1e-15)


def test_cg_warm_starts_from_the_previous_solution(rng):
    """The second step's CG starts from 0.95 d_1: its first product is with that start."""
    n = 8
    A, c = spd(rng, n, cond=50.0), rng.standard_normal(n)
    p0 = rng.standard_normal(n)
    for warm in (0.95, 0.0):
        params = {"p": p0.copy()}
        opt = HessianFree(params, damping=1e-3, max_cg_iters=2, warm_start=warm)
        objective = Quadratic(params, A, c)
        first = opt.step(objective)
        objective.seen.clear()
        second = opt.step(objective)
        assert (first.warm, second.warm) == (False, warm > 0)
        np.testing.assert_array_equal(objective.seen[0], warm * first.cg.x["p"])


def test_warm_starts_help_on_an_rnn():
    """On a network's loss the previous directions stay useful: fifteen steps of three CG
    products each end lower with the warm start than from 0 (fixed data and seed)."""
    data = np.random.default_rng(0)
    x, y = data.standard_normal((10, 8, 3)), data.integers(0, 3, size=(10, 8))
    final = {}
    for warm in (0.95, 0.0):
        model = rnngrad.RNN(3, 8, 3, seed=3)
        opt = HessianFree(model.params, damping=1.0, max_cg_iters=3, warm_start=warm)
        objective = RNNObjective(model, x, y)
        for _ in range(15):
            opt.step(objective)
        final[warm] = objective.loss()
    assert final[0.95] < 0.95 * final[0.0]


def test_trains_an_rnn(rng):
    """End to end: ten steps on one batch fit it (the loss falls by half); after each step the
    model is at P + d if that lowered the loss, else back at P; the parameters are the model's
    own arrays, changed in place."""
    model = rnngrad.RNN(3, 6, 3, hidden_activation="tanh", output_activation="softmax", seed=3)
    x, y = rng.standard_normal((6, 4, 3)), rng.integers(0, 3, size=(6, 4))
    W_h = model.params["W_h"]
    opt = HessianFree(model.params, damping=1.0, max_cg_iters=20)
    objective = RNNObjective(model, x, y, mask=np.arange(6)[:, None] < np.array([6, 4, 5, 6]))
    start = objective.loss()
    for _ in range(10):
        s = opt.step(objective)
        assert (s.new_loss < s.loss) == s.accepted
        assert objective.loss() == (s.new_loss if s.accepted else s.loss)  # kept, or undone exactly
    assert objective.loss() < 0.5 * start
    assert model.params["W_h"] is W_h and not np.array_equal(W_h, rnngrad.RNN(3, 6, 3, seed=3).params["W_h"])


def test_bad_settings_are_refused():
    with pytest.raises(TypeError, match="params must be a non-empty dict"):
        HessianFree([np.zeros(2)])
    with pytest.raises(ValueError, match="damping must be a finite positive number"):
        HessianFree({"p": np.zeros(2)}, damping=0)
    with pytest.raises(ValueError, match="boost must be > 1 and drop < 1"):
        HessianFree({"p": np.zeros(2)}, boost=0.5)
    with pytest.raises(ValueError, match="warm_start must lie in"):
        HessianFree({"p": np.zeros(2)}, warm_start=2)
    with pytest.raises(ValueError, match="unknown split"):
        RNNObjective(None, None, None, split="exact")
