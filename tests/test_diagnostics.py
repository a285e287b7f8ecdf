"""Gradient-flow diagnostics against torch autograd, an exactly solvable linear case, and numpy."""

import numpy as np
import pytest
import torch

from rnngrad import RNN
from rnngrad.diagnostics import FlowResult, flow_ratio, flow_sweep, gradient_flow, spectral_radius


@pytest.fixture
def rng():
    return np.random.default_rng(99)


TORCH_F = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


def torch_dh(params, x, y, h0, f, out, mask):
    """dL/dh_t for every t by torch autograd, with L = sum over masked (t, b) of L_t."""
    P = {k: torch.tensor(v) for k, v in params.items()}
    h = torch.tensor(h0, requires_grad=True)  # so every h_t is in the autograd graph
    hs = []
    for t in range(x.shape[0]):
        h = TORCH_F[f](h @ P["W_h"].T + torch.tensor(x[t]) @ P["W_x"].T + P["b_h"])
        h.retain_grad()
        hs.append(h)
    m = torch.tensor(mask, dtype=torch.float64)
    L = 0
    for t, h_t in enumerate(hs):
        a = h_t @ P["W_y"].T + P["b_y"]
        if out == "softmax":
            rows = -torch.log_softmax(a, dim=1)[torch.arange(a.shape[0]), torch.tensor(y[t])]
        else:
            rows = ((a - torch.tensor(y[t])) ** 2).sum(dim=1)
        L = L + (m[t] * rows).sum()
    L.backward()
    return np.stack([h_t.grad.numpy() for h_t in hs])


@pytest.mark.parametrize("f", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("out", ["softmax", "identity"])
@pytest.mark.parametrize("every_step", [False, True])
def test_gradient_flow_matches_torch_autograd(rng, f, out, every_step):
    T, B, D, H, O = 7, 3, 4, 5, 3
    loss = "cross_entropy" if out == "softmax" else "mse"
    model = RNN(D, H, O, hidden_activation=f, output_activation=out, loss=loss, seed=4)
    x = rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B)) if out == "softmax" else rng.standard_normal((T, B, O))
    h0 = 0.3 * rng.standard_normal((B, H))
    mask = np.ones((T, B), bool) if every_step else None
    res = gradient_flow(model, x, y, h0=h0, mask=mask)
    used = mask if every_step else np.arange(T)[:, None] == T - 1 + np.zeros(B, dtype=int)
    dh = torch_dh(model.params, x, y, h0, f, out, used)
    np.testing.assert_allclose(res.abs_dh, np.abs(dh), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(res.norms, np.linalg.norm(dh, axis=2).mean(axis=1), rtol=1e-10, atol=1e-13)
    assert res.norms.shape == (T,) and res.abs_dh.shape == (T, B, H)
    assert res.ratio == pytest.approx(res.norms[0] / res.norms[-1], rel=1e-12)
    assert res.spectral_radius == pytest.approx(np.abs(np.linalg.eigvals(model.params["W_h"])).max())


def test_default_mask_is_last_step_only(rng):
    model = RNN(3, 4, 2, seed=0)
    x = rng.integers(0, 3, size=(6, 2))
    y = rng.integers(0, 2, size=(6, 2))
    last = np.zeros((6, 2), bool)
    last[-1] = True
    a, b = gradient_flow(model, x, y), gradient_flow(model, x, y, mask=last)
    np.testing.assert_array_equal(a.norms, b.norms)
    assert a.loss == b.loss == pytest.approx(model.loss(x, y, mask=last))


@pytest.mark.parametrize("rho", [0.6, 1.0, 1.3])
def test_linear_network_decays_exactly_as_rho_to_the_power(rng, rho):
    """f = identity and W_h = ρQ (Q orthogonal): dL/dh_t = (ρQ^T)^(T-t) dL/dh_T, so each
    sequence's norm is ρ^(T-t) times the last one, and the ratio is ρ^(T-1)."""
    T, B, H = 12, 4, 6
    model = RNN(3, H, 2, hidden_activation="identity", output_activation="identity", loss="mse",
                recurrent_init="orthogonal", seed=2)
    model.params["W_h"] *= rho
    x, y = rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 2))
    res = gradient_flow(model, x, y)
    per_seq = np.linalg.norm(res.abs_dh, axis=2)  # (T, B)
    expected = per_seq[-1] * rho ** (T - 1 - np.arange(T))[:, None]
    np.testing.assert_allclose(per_seq, expected, rtol=1e-10)
    assert res.ratio == pytest.approx(rho ** (T - 1), rel=1e-10)
    assert res.spectral_radius == pytest.approx(rho, rel=1e-12)


def test_spectral_radius_against_eigvals_and_known_cases(rng):
    W = rng.standard_normal((7, 7))
    ev = np.linalg.eigvals(W)
    assert np.iscomplexobj(ev)  # the non-symmetric case with complex pairs
    assert spectral_radius(W) == pytest.approx(np.abs(ev).max(), rel=1e-12)
    c, s = np.cos(0.3), np.sin(0.3)
    assert spectral_radius(0.7 * np.array([[c, -s], [s, c]])) == pytest.approx(0.7, rel=1e-12)
    assert spectral_radius(np.array([[0.0, 5.0], [0.0, 0.0]])) == 0.0  # nilpotent: large norm, ρ = 0
    assert spectral_radius(np.eye(3, dtype=np.float32) * 2) == pytest.approx(2.0)


def test_flow_ratio_by_hand():
    assert flow_ratio([1e-6, 1e-3, 1.0]) == pytest.approx(1e-6)
    assert flow_ratio(np.array([4.0, 2.0])) == 2.0
    assert flow_ratio([3.0, 0.0]) == np.inf
    assert np.isnan(flow_ratio([0.0, 0.0]))
    with pytest.raises(ValueError, match="norms must be a non-empty"):
        flow_ratio([])


def test_flow_sweep_covers_the_grid_and_shows_vanishing(rng):
    results = flow_sweep(("tanh", "sigmoid"), (0.5, 1.5), T=30, batch_size=4, hidden_size=8)
    assert [r.label for r in results] == ["tanh, ρ(W_h)=0.5", "tanh, ρ(W_h)=1.5",
                                          "sigmoid, ρ(W_h)=0.5", "sigmoid, ρ(W_h)=1.5"]
    assert all(isinstance(r, FlowResult) and r.norms.shape == (30,) for r in results)
    for r, s in zip(results, (0.5, 1.5, 0.5, 1.5)):
        assert r.spectral_radius == pytest.approx(s, rel=1e-12)
    by = {r.label: r for r in results}
    # sigmoid's f' <= 1/4 with ρ = 0.5: at most 8^-29 of the gradient survives 29 steps.
    assert by["sigmoid, ρ(W_h)=0.5"].ratio < 0.125 ** 29 * 10
    assert by["tanh, ρ(W_h)=0.5"].ratio < by["tanh, ρ(W_h)=1.5"].ratio
    again = flow_sweep(("tanh", "sigmoid"), (0.5, 1.5), T=30, batch_size=4, hidden_size=8)
    np.testing.assert_array_equal(results[1].norms, again[1].norms)


def test_diagnostics_bad_inputs(rng):
    with pytest.raises(TypeError, match="model must be an rnngrad.RNN"):
        gradient_flow("model", np.zeros((2, 1, 1)), np.zeros((2, 1, 1)))
    with pytest.raises(ValueError, match=r"W_h must be a square \(H, H\)"):
        spectral_radius(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="W_h contains NaN"):
        spectral_radius(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="scales must be positive"):
        flow_sweep(scales=(0.0,))
    with pytest.raises(TypeError, match="hidden_activations must be a sequence"):
        flow_sweep(hidden_activations="tanh")
    with pytest.raises(ValueError, match="unknown hidden_activation"):
        flow_sweep(hidden_activations=("swish",), T=3)


def test_layer_flows_give_a_result_per_layer_and_direction(rng):
    """Each unit's norms are those of its own dL/dh_t (res.dh[u]) and its own W_h's spectral radius;
    gradient_flow's first result is the first layer's."""
    from rnngrad.diagnostics import gradient_flow, layer_flows, spectral_radius

    model = RNN(3, 4, 2, num_layers=2, bidirectional=True, output_activation="identity", loss="mse", seed=1)
    x, y = rng.standard_normal((6, 2, 3)), rng.standard_normal((6, 2, 2))
    flows = layer_flows(model, x, y, label="m")
    assert [r.label for r in flows] == ["m, layer 0", "m, layer 0 reverse", "m, layer 1", "m, layer 1 reverse"]
    dh = model.gradients(x, y, reduction="sum").dh  # every step (bidirectional default)
    for u, r in enumerate(flows):
        np.testing.assert_allclose(r.norms, np.linalg.norm(dh[u], axis=2).mean(axis=1), rtol=1e-12)
    assert flows[3].spectral_radius == spectral_radius(model.params["W_h_l1_reverse"])
    first = gradient_flow(model, x, y)
    np.testing.assert_array_equal(first.norms, flows[0].norms)
    assert first.layer_norms.shape == (4, 6) and first.layer_names[3] == "layer 1 reverse"
