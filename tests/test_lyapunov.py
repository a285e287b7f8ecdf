"""Lyapunov exponents: exactly solvable linear maps, and a brute-force reference for the rest.

The reference (``brute_force``) runs the network in torch one sequence at a time, takes each
step's Jacobian dh_t/dh_{t-1} (or of the whole stacked state) by torch.func.jacrev, multiplies
them out explicitly, and reads the exponents off one NumPy QR factorisation of M Q_0:
(1/T) log |diag R|. Benettin's per-step re-orthonormalisation gives the same numbers in exact
arithmetic (J_T ... J_1 Q_0 = Q_T R_T ... R_1, and the diagonal of a product of triangular
matrices is the product of the diagonals), so the two must agree to rounding at small T. The
product and its QR are taken in 60-digit mpmath arithmetic (see ``brute_force``).
"""

import mpmath
import numpy as np
import pytest
import torch

from oracle import HIDDEN
import rnngrad
from rnngrad import RNN
from rnngrad.contributions import per_step_contributions
from rnngrad.dynamics import initial_tangents, lyapunov, spectral_radii
from rnngrad.network import layer_param_names


def linear_model(W_h, D=3):
    H = W_h.shape[0]
    model = RNN(D, H, 2, hidden_activation="identity", output_activation="identity", loss="mse", seed=0)
    model.params["W_h"][...] = W_h
    return model


def random_orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


# --- exactly solvable cases -------------------------------------------------------------------

@pytest.mark.parametrize("s", [0.5, 1.0, 1.7])
@pytest.mark.parametrize("interval", [1, 3])
@pytest.mark.parametrize("k", [None, 2])
def test_scaled_orthogonal_map_has_every_exponent_log_s(rng, s, interval, k):
    H = 6
    model = linear_model(s * random_orthogonal(rng, H))
    lam = lyapunov(model, rng.standard_normal((40, 2, 3)), k=k, interval=interval)
    assert lam.shape == ((H,) if k is None else (k,))
    np.testing.assert_allclose(lam, np.log(s), rtol=0, atol=1e-12)


DIAG = np.array([1.2, -0.9, 0.6, 0.4, -0.25, 0.1])


def test_diagonal_map_gives_log_abs_diagonal_sorted():
    model = linear_model(np.diag(DIAG))
    x = np.random.default_rng(0).standard_normal((300, 2, 3))
    want = np.sort(np.log(np.abs(DIAG)))[::-1]
    # Q_0 = I stays aligned with the axes: exact from the first step.
    np.testing.assert_allclose(lyapunov(model, x, q0=np.eye(6)), want, rtol=0, atol=1e-13)
    # A random Q_0 aligns within the warm-up (the slowest ratio |0.9/1.2|^150 ~ 1e-19).
    np.testing.assert_allclose(lyapunov(model, x, warmup=150), want, rtol=0, atol=1e-12)
    # The top k alone, from a random start (the first k axes of I would miss 1.2 and 0.9 here).
    np.testing.assert_allclose(lyapunov(model, x, k=2, warmup=150), want[:2], rtol=0, atol=1e-12)


def test_constant_non_normal_map_gives_log_moduli_of_eigenvalues(rng):
    mu = np.array([1.1, -0.8, 0.5, 0.3])
    P = np.eye(4) + 0.6 * rng.standard_normal((4, 4))  # far from orthogonal
    model = linear_model(P @ np.diag(mu) @ np.linalg.inv(P))
    lam = lyapunov(model, rng.standard_normal((400, 1, 3)), warmup=200)
    np.testing.assert_allclose(lam, np.sort(np.log(np.abs(mu)))[::-1], rtol=0, atol=1e-9)
    assert spectral_radii(model)["W_h"] == pytest.approx(1.1, rel=1e-10)
    assert lam[0] == pytest.approx(np.log(spectral_radii(model)["W_h"]), abs=1e-9)


def test_lambda_1_is_the_exact_decay_rate_of_the_influence_map_for_a_scaled_orthogonal_map(rng):
    s, H, T = 0.8, 5, 12
    model = linear_model(s * random_orthogonal(rng, H))
    x, y = rng.standard_normal((T, 2, 3)), rng.standard_normal((T, 2, 2))
    lam = lyapunov(model, x)
    infl = per_step_contributions(model, x, y).influence
    lag = np.arange(T)[:, None] - np.arange(T)[None, :]
    low = lag >= 0
    predicted = np.diag(infl)[:, None] * np.exp(lam[0] * lag)
    np.testing.assert_allclose(infl[low], predicted[low], rtol=1e-12)


# --- against the brute-force reference -------------------------------------------------------

def cell(P, f, k, d):
    W_x, W_h, b_h = (P[n] for n in layer_param_names(k, d))
    return lambda inp, h: f(W_x @ inp + W_h @ h + b_h)


def sequence_states(P, model, xb, h0b, l):
    """Every unit's states of one sequence (valid steps 0..l-1, input time), and each layer's inputs."""
    f, dirs = HIDDEN[model.f.name], model.directions
    inp, states, inputs = [xb[t] for t in range(l)], [], []
    for k in range(model.num_layers):
        inputs.append(inp)
        level = []
        for d in range(dirs):
            step, h, st = cell(P, f, k, d), h0b[k * dirs + d], [None] * l
            for t in (range(l) if d == 0 else range(l - 1, -1, -1)):
                h = step(inp[t], h)
                st[t] = h
            level.append(st)
        states += level
        inp = [torch.cat([level[d][t] for d in range(dirs)]) for t in range(l)]
    return states, inputs


def brute_force(model, x, q0, h0=None, unit=None, lengths=None):
    P = {n: torch.tensor(np.asarray(v, np.float64)) for n, v in model.params.items()}
    f, dirs, H = HIDDEN[model.f.name], model.directions, model.hidden_size
    x = np.asarray(x)
    T, B = x.shape[:2]
    X = (torch.nn.functional.one_hot(torch.tensor(x), model.input_size).double() if x.ndim == 2
         else torch.tensor(x, dtype=torch.float64))
    U = model.num_layers * dirs
    H0 = torch.zeros(U, B, H, dtype=torch.float64) if h0 is None else torch.tensor(np.asarray(h0).reshape(U, B, H))
    spectra = []
    for b in range(B):
        l = T if lengths is None else int(lengths[b])
        jacobians = []
        if unit is None:  # the stacked state of every layer
            def stacked(S, x_t):
                below, new = x_t, []
                for k in range(model.num_layers):
                    below = cell(P, f, k, 0)(below, S[k * H:(k + 1) * H])
                    new.append(below)
                return torch.cat(new)
            S = H0[:, b].reshape(-1)
            for t in range(l):
                jacobians.append(torch.func.jacrev(lambda S_: stacked(S_, X[t, b]))(S))
                S = stacked(S, X[t, b])
        else:
            k, d = unit
            states, inputs = sequence_states(P, model, X[:, b], H0[:, b], l)
            u, step = k * dirs + d, cell(P, f, k, d)
            for t in (range(l) if d == 0 else range(l - 1, -1, -1)):
                before = t - 1 if d == 0 else t + 1
                h_prev = H0[u, b] if before in (-1, l) else states[u][before]
                jacobians.append(torch.func.jacrev(lambda h: step(inputs[k][t], h))(h_prev))
        # The explicit product is ill-conditioned (its columns grow apart like exp((lambda_1 -
        # lambda_n) T)): in float64 it would lose the small exponents, so it is formed and
        # factorised in 60-digit arithmetic from the float64 Jacobians.
        with mpmath.workdps(60):
            A = mpmath.matrix(q0.tolist())
            for J in jacobians:
                A = mpmath.matrix(J.numpy().tolist()) * A
            R = mpmath.qr(A, mode="skinny")[1]
            diag = np.array([float(mpmath.log(abs(R[i, i]))) for i in range(R.cols)])
        spectra.append(np.sort(diag / l)[::-1])
    return np.mean(spectra, axis=0)


CASES = {  # num_layers, bidirectional, unit, inputs, lengths
    "one layer": (1, False, None, "floats", None),
    "one layer tokens lengths": (1, False, None, "tokens", [8, 5]),
    "stacked state": (2, False, None, "floats", None),
    "stacked state lengths": (3, False, None, "floats", [6, 8]),
    "upper layer alone": (2, False, (1, 0), "floats", None),
    "bidirectional reverse unit": (1, True, (0, 1), "floats", [8, 6]),
    "bidirectional upper reverse unit": (2, True, (1, 1), "tokens", None),
    "bidirectional upper forward unit": (2, True, (1, 0), "floats", [7, 8]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("hidden", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("k", [None, 3])
def test_matches_brute_force_jacobian_product(rng, case, hidden, k):
    num_layers, bidirectional, unit, inputs, lengths = CASES[case]
    T, B, D, H = 8, 2, 3, 4
    model = RNN(D, H, 2, hidden_activation=hidden, num_layers=num_layers, bidirectional=bidirectional,
                seed=int(rng.integers(1 << 30)))
    for name in model.params:  # a livelier trajectory than the default initialisation
        if hidden != "relu":
            if name.startswith("W_h"):
                model.params[name] *= 2.5
        elif name.startswith(("W_h", "W_x_l", "b_h")):
            # Every unit active (non-negative weights on non-negative states, a positive bias):
            # a unit with f' = 0 makes the product rank-deficient, and the exponents of the lost
            # directions (-inf) are then rounding noise in both methods.
            model.params[name] = np.abs(model.params[name]) + (4.0 if name.startswith("b_h") else 0.0)
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    h0 = 0.5 * rng.standard_normal((num_layers * model.directions, B, H))
    n = H * (num_layers if unit is None else 1)
    q0 = initial_tangents(n, n if k is None else k, seed=int(rng.integers(1 << 30)))
    lens = None if lengths is None else np.array(lengths)
    if hidden == "relu":
        h0 = np.abs(h0)
        valid = np.arange(T)[:, None] < (np.full(B, T) if lens is None else lens)[None, :]  # own time
        assert all((lc.h[valid] > 0).all() for lc in model.forward(x, h0=h0, lengths=lens).layers)
    lam = lyapunov(model, x, h0=h0, k=k, unit=unit, q0=q0, lengths=lens)
    want = brute_force(model, x, q0, h0=h0, unit=unit, lengths=lens)
    np.testing.assert_allclose(lam, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_independent_of_the_reorthonormalisation_interval(rng, num_layers):
    # In exact arithmetic every interval gives the same numbers; in floating point an interval of
    # m steps costs about eps · exp((lambda_1 - lambda_n) m) relative to the smallest exponents.
    model = RNN(3, 6, 2, num_layers=num_layers, seed=3)
    x = rng.standard_normal((60, 3, 3))
    base = lyapunov(model, x)
    for interval in (2, 3, 5, 10):
        np.testing.assert_allclose(lyapunov(model, x, interval=interval), base, rtol=1e-9, atol=0)


def test_float32_model_follows_the_float64_one(rng):
    model = RNN(3, 6, 2, seed=5)
    x = rng.standard_normal((50, 2, 3))
    lam64 = lyapunov(model, x)
    lam32 = lyapunov(model.astype(np.float32), x.astype(np.float32))
    assert lam32.dtype == np.float64
    np.testing.assert_allclose(lam32, lam64, rtol=0, atol=1e-5)


def test_per_sequence_default_start_and_batch_first(rng):
    model = RNN(3, 5, 2, num_layers=2, seed=1)
    x = rng.standard_normal((20, 4, 3))
    per = lyapunov(model, x, per_sequence=True, seed=7)
    assert per.shape == (4, 10) and np.all(np.diff(per, axis=1) <= 0)
    np.testing.assert_array_equal(lyapunov(model, x, seed=7), per.mean(axis=0))
    recipe = np.linalg.qr(np.random.default_rng(7).standard_normal((10, 10)))[0]
    np.testing.assert_array_equal(lyapunov(model, x, q0=recipe), per.mean(axis=0))
    bf = model.copy()
    bf.batch_first = True
    np.testing.assert_array_equal(lyapunov(bf, x.swapaxes(0, 1), seed=7), per.mean(axis=0))


def test_dead_relu_units_give_minus_infinity():
    model = RNN(3, 4, 2, hidden_activation="relu", seed=0)
    model.params["b_h"][...] = -100.0  # every unit dead: f' = 0, J_t = 0
    with np.errstate(all="raise"):
        lam = lyapunov(model, np.ones((5, 2, 3)))
    assert np.all(lam == -np.inf)


def test_spectral_radii_of_every_unit(rng):
    model = RNN(3, 4, 2, num_layers=2, bidirectional=True, seed=2)
    radii = spectral_radii(model)
    assert list(radii) == ["W_h", "W_h_reverse", "W_h_l1", "W_h_l1_reverse"]
    for name, rho in radii.items():
        assert rho == pytest.approx(np.abs(np.linalg.eigvals(model.params[name])).max(), rel=1e-12)


def test_bad_arguments_are_named(rng):
    assert rnngrad.lyapunov is lyapunov and rnngrad.spectral_radii is spectral_radii  # the public names
    x = rng.standard_normal((6, 2, 3))
    bi = RNN(3, 4, 2, bidirectional=True)
    with pytest.raises(ValueError, match=r"pass unit=\(layer, direction\)"):
        lyapunov(bi, x)
    with pytest.raises(ValueError, match=r"unit must be None or a \(layer, direction\)"):
        lyapunov(bi, x, unit=(1, 0))
    model = RNN(3, 4, 2)
    with pytest.raises(ValueError, match="k must be at most the state size n = 4"):
        lyapunov(model, x, k=5)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        lyapunov(model, x, k=0)
    with pytest.raises(ValueError, match="warmup must be below the shortest sequence's length"):
        lyapunov(model, x, warmup=3, lengths=np.array([6, 3]))
    with pytest.raises(ValueError, match=r"q0 must have shape \(n, k\) = \(4, 2\)"):
        lyapunov(model, x, k=2, q0=np.eye(4))
    with pytest.raises(ValueError, match="orthonormal columns"):
        lyapunov(model, x, q0=2 * np.eye(4))
    with pytest.raises(ValueError, match="interval must be a positive integer"):
        lyapunov(model, x, interval=0)
    with pytest.raises(TypeError, match="model must be an rnngrad.RNN"):
        lyapunov(None, x)


def test_plot_lyapunov_writes_a_png(rng, tmp_path):
    pytest.importorskip("matplotlib")
    from rnngrad.diagnostics import gradient_flow
    from rnngrad.dynamics_plots import _decay_curve, plot_lyapunov

    model = RNN(3, 5, 2, hidden_activation="tanh", output_activation="identity", loss="mse", seed=0)
    x, y = rng.standard_normal((15, 2, 3)), rng.standard_normal((15, 2, 2))
    lam = lyapunov(model, x)
    flow = gradient_flow(model, x, y)
    c = per_step_contributions(model, x, y)
    path = tmp_path / "lyapunov.png"
    assert plot_lyapunov(lam, flow, path, spectral_radius=spectral_radii(model)["W_h"]) == str(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["lyapunov.png"]
    # Every accepted form of the decay curve: a FlowResult, its norms, a contributions result, a map.
    np.testing.assert_array_equal(_decay_curve(flow.norms), flow.norms)
    np.testing.assert_array_equal(_decay_curve(flow), flow.norms)
    np.testing.assert_array_equal(_decay_curve(c), c.influence[-1])
    np.testing.assert_array_equal(_decay_curve(c.influence), c.influence[-1])
    with pytest.raises(ValueError, match="flow_norms_or_dh must be"):
        plot_lyapunov(lam, np.ones((3, 4)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="lam must be a non-empty"):
        plot_lyapunov([], flow, tmp_path / "bad.png")
