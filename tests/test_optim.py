"""Optimizers and clipping: hand-worked steps, torch.optim as the oracle, state round trips."""

import json

import numpy as np

import pytest
import torch

from rnngrad import RNN
from rnngrad.optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    RMSprop,
    clip_grad_norm,
    clip_grad_value,
    make_optimizer,
)

PARAM_NAMES = ("W_x", "W_h", "b_h", "W_y", "b_y")
SHAPES = {"W_x": (4, 3), "W_h": (4, 4), "b_h": (4,), "W_y": (2, 4), "b_y": (2,)}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_params(rng, dtype=np.float64):
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def random_grads(rng, scale=1.0):
    return {k: scale * rng.standard_normal(s) for k, s in SHAPES.items()}


def one_param(value):
    """A params dict whose W_h is ``value`` (others zero), for hand-worked steps on W_h."""
    p = {k: np.zeros(s) for k, s in SHAPES.items()}
    p["W_h"] = np.array(value, dtype=np.float64).reshape(SHAPES["W_h"])
    return p


def grads_with(W_h_grad):
    # Other gradients are ones, not zeros: with eps = 0 a zero gradient would divide 0 by 0.
    g = {k: np.ones(s) for k, s in SHAPES.items()}
    g["W_h"] = np.array(W_h_grad, dtype=np.float64).reshape(SHAPES["W_h"])
    return g


# --- hand-computed steps ----------------------------------------------------------------

def test_sgd_step_by_hand():
    p = one_param(np.full(16, 1.0))
    opt = SGD(p, lr=0.1)
    opt.step(grads_with(np.full(16, 0.5)))
    np.testing.assert_allclose(p["W_h"], 1.0 - 0.1 * 0.5, rtol=0, atol=1e-15)


def test_sgd_momentum_two_steps_by_hand():
    # buf_1 = g_1 = 1;  θ_1 = 2 - 0.1·1 = 1.9
    # buf_2 = 0.9·1 + 3 = 3.9;  θ_2 = 1.9 - 0.1·3.9 = 1.51
    p = one_param(np.full(16, 2.0))
    opt = SGD(p, lr=0.1, momentum=0.9)
    opt.step(grads_with(np.full(16, 1.0)))
    np.testing.assert_allclose(p["W_h"], 1.9, rtol=0, atol=1e-15)
    opt.step(grads_with(np.full(16, 3.0)))
    np.testing.assert_allclose(p["W_h"], 1.51, rtol=0, atol=1e-14)


def test_sgd_nesterov_and_weight_decay_by_hand():
    # d = g + 0.5·θ = 1 + 0.5·2 = 2; buf = 2; Nesterov d = 2 + 0.9·2 = 3.8; θ = 2 - 0.1·3.8 = 1.62
    p = one_param(np.full(16, 2.0))
    SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5).step(grads_with(np.full(16, 1.0)))
    np.testing.assert_allclose(p["W_h"], 1.62, rtol=0, atol=1e-14)


def test_adagrad_rmsprop_adam_first_step_by_hand():
    g = np.linspace(-2, 2, 16)
    g[8] = 0.25  # avoid an exact zero so sign(g) is ±1 everywhere
    # Adagrad: G = g², θ -= lr g / (|g| + eps)
    p = one_param(np.zeros(16))
    Adagrad(p, lr=0.1, eps=0.0).step(grads_with(g))
    np.testing.assert_allclose(p["W_h"].ravel(), -0.1 * np.sign(g), rtol=0, atol=1e-15)
    # RMSprop: v = (1 - 0.99) g², θ -= lr g / (0.1 |g|) = -10 lr sign(g)
    p = one_param(np.zeros(16))
    RMSprop(p, lr=0.01, eps=0.0).step(grads_with(g))
    np.testing.assert_allclose(p["W_h"].ravel(), -0.1 * np.sign(g), rtol=1e-12, atol=0)
    # Adam: m̂ = g, v̂ = g², θ -= lr g / |g|
    p = one_param(np.zeros(16))
    Adam(p, lr=0.01, eps=0.0).step(grads_with(g))
    np.testing.assert_allclose(p["W_h"].ravel(), -0.01 * np.sign(g), rtol=1e-12, atol=0)


def test_adam_second_step_by_hand():
    # g = 1 then 2, lr 1, eps 0:  m = 0.1, 0.09 + 0.2 = 0.29; v = 0.001, 0.000999 + 0.004 = 0.004999
    # step 2: θ -= (1 / (1 - 0.81)) · 0.29 / (sqrt(0.004999) / sqrt(1 - 0.999²))
    p = one_param(np.zeros(16))
    opt = Adam(p, lr=1.0, eps=0.0)
    opt.step(grads_with(np.ones(16)))
    opt.step(grads_with(np.full(16, 2.0)))
    expected = -1.0 - (0.29 / 0.19) / (np.sqrt(0.004999) / np.sqrt(1 - 0.999**2))
    np.testing.assert_allclose(p["W_h"], expected, rtol=1e-12, atol=0)


# --- against torch.optim -----------------------------------------------------------------

TORCH_CASES = [
    ("sgd", {}, lambda ps: torch.optim.SGD(ps, lr=0.05)),
    ("sgd", {"momentum": 0.9}, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    ("sgd", {"momentum": 0.8, "nesterov": True},
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True)),
    ("sgd", {"momentum": 0.5, "weight_decay": 0.01},
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5, weight_decay=0.01)),
    ("adagrad", {}, lambda ps: torch.optim.Adagrad(ps, lr=0.05)),
    ("adagrad", {"eps": 1e-3}, lambda ps: torch.optim.Adagrad(ps, lr=0.05, eps=1e-3)),
    ("rmsprop", {}, lambda ps: torch.optim.RMSprop(ps, lr=0.01)),
    ("rmsprop", {"alpha": 0.9, "momentum": 0.7},
     lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, momentum=0.7)),
    ("adam", {}, lambda ps: torch.optim.Adam(ps, lr=0.01)),
    ("adam", {"betas": (0.5, 0.9), "eps": 1e-6},
     lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.5, 0.9), eps=1e-6)),
]


@pytest.mark.parametrize("name,kw,make_torch", TORCH_CASES,
                         ids=[f"{n}-{'-'.join(k) or 'default'}" for n, k, _ in TORCH_CASES])
def test_matches_torch_optim_over_several_steps(rng, name, kw, make_torch):
    params = random_params(rng)
    tparams = {k: torch.tensor(v.copy(), dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = make_optimizer(name, params, lr=0.05 if name in ("sgd", "adagrad") else 0.01, **kw)
    topt = make_torch([tparams[k] for k in PARAM_NAMES])
    for _ in range(6):
        grads = random_grads(rng)
        for k in PARAM_NAMES:
            tparams[k].grad = torch.tensor(grads[k], dtype=torch.float64)
        opt.step(grads)
        topt.step()
        for k in PARAM_NAMES:
            np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=f"{name} {kw} {k}")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_trains_an_rnn_like_torch_optim(rng, name, num_layers, bidirectional):
    """End to end: the model's own BPTT gradients drive both optimizers from the same start, for
    whatever parameters the model has."""
    model = RNN(3, 5, 4, seed=0, num_layers=num_layers, bidirectional=bidirectional)
    PARAM_NAMES = list(model.params)
    assert len(PARAM_NAMES) == 3 * num_layers * (2 if bidirectional else 1) + 2
    x = rng.integers(0, 3, size=(7, 2))
    y = rng.integers(0, 4, size=(7, 2))
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    torch_cls = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
                 "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}[name]
    opt = make_optimizer(name, model.params, lr=0.01)
    topt = torch_cls([tparams[k] for k in PARAM_NAMES], lr=0.01)
    before = {k: id(v) for k, v in model.params.items()}
    losses = []
    for _ in range(5):
        res = model.gradients(x, y)
        losses.append(res.loss)
        for k in PARAM_NAMES:
            tparams[k].grad = torch.tensor(res.grads[k])
        opt.step(res.grads)
        topt.step()
    for k in PARAM_NAMES:
        assert id(model.params[k]) == before[k], "updates must be in place"
        np.testing.assert_allclose(model.params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-12)
    assert losses[-1] < losses[0]


def test_float32_params_stay_float32(rng):
    params = random_params(rng, np.float32)
    opt = Adam(params, lr=0.01)
    opt.step(random_grads(rng))
    assert all(params[k].dtype == np.float32 for k in PARAM_NAMES)
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if isinstance(v, np.ndarray))


def test_grads_untouched_and_non_parameter_grads_refused(rng):
    params = random_params(rng)
    grads = random_grads(rng)
    saved = {k: v.copy() for k, v in grads.items()}
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step(grads)
    for k in grads:
        np.testing.assert_array_equal(grads[k], saved[k])
    grads["h"] = rng.standard_normal((3, 2, 4))  # a state gradient, not a parameter's
    with pytest.raises(ValueError, match=r"grads has keys that are not parameters of this optimizer: \['h'\]"):
        opt.step(grads)


# --- state round trip -------------------------------------------------------------------

def save_state(state, tmp_path):
    """Split a state dict into .npz (arrays, no pickle) + JSON (numbers), as a checkpoint would."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    numbers = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    np.savez(tmp_path / "opt.npz", **arrays)
    (tmp_path / "opt.json").write_text(json.dumps(numbers))
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    loaded.update(json.loads((tmp_path / "opt.json").read_text()))
    return loaded


@pytest.mark.parametrize("name,kw", [("sgd", {"momentum": 0.9, "nesterov": True}), ("adagrad", {}),
                                     ("rmsprop", {"momentum": 0.5}), ("adam", {"betas": (0.8, 0.99)})])
def test_state_dict_round_trip_continues_exactly(rng, tmp_path, name, kw):
    start = random_params(rng)
    grads = [random_grads(rng) for _ in range(6)]

    straight = {k: v.copy() for k, v in start.items()}
    opt = make_optimizer(name, straight, lr=0.02, **kw)
    for g in grads:
        opt.step(g)

    first = {k: v.copy() for k, v in start.items()}
    opt1 = make_optimizer(name, first, lr=0.02, **kw)
    for g in grads[:3]:
        opt1.step(g)
    state = save_state(opt1.state_dict(), tmp_path)
    assert state["step"] == 3

    resumed = {k: v.copy() for k, v in first.items()}
    opt2 = make_optimizer(name, resumed, lr=0.5)  # hyperparameters come back from the state
    opt2.load_state_dict(state)
    assert opt2.state_dict()["lr"] == 0.02
    for g in grads[3:]:
        opt2.step(g)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(resumed[k], straight[k])


def test_state_dict_is_flat_copies_and_scalars(rng):
    params = random_params(rng)
    opt = Adam(params, lr=0.01)
    opt.step(random_grads(rng))
    state = opt.state_dict()
    assert set(state) == {"lr", "beta1", "beta2", "eps", "step"} | {
        f"{s}.{k}" for s in ("exp_avg", "exp_avg_sq") for k in PARAM_NAMES}
    assert json.loads(json.dumps({k: v for k, v in state.items() if not isinstance(v, np.ndarray)}))["step"] == 1
    state["exp_avg.W_h"][...] = 99.0
    assert not np.any(opt.state_dict()["exp_avg.W_h"] == 99.0)


def test_load_state_dict_rejects_foreign_or_misshapen_state(rng):
    params = random_params(rng)
    adam_state = Adam(params, lr=0.01).state_dict()
    with pytest.raises(ValueError, match="does not belong to a SGD"):
        SGD(params, lr=0.1, momentum=0.9).load_state_dict(adam_state)
    bad = dict(adam_state)
    bad["exp_avg.W_h"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"exp_avg\.W_h"):
        Adam(params, lr=0.01).load_state_dict(bad)
    bad = dict(adam_state, beta1=1.5)
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        Adam(params, lr=0.01).load_state_dict(bad)
    with pytest.raises(TypeError, match="state"):
        Adam(params, lr=0.01).load_state_dict([1, 2])


# --- factory and bad inputs ---------------------------------------------------------------

def test_make_optimizer_names_and_errors(rng):
    params = random_params(rng)
    for name, cls in OPTIMIZERS.items():
        assert type(make_optimizer(name, params, lr=0.1)) is cls
    assert type(make_optimizer("Adam", params, lr=0.1)) is Adam
    with pytest.raises(ValueError, match=r"unknown optimizer 'lbfgs'.*adagrad.*adam.*rmsprop.*sgd"):
        make_optimizer("lbfgs", params, lr=0.1)
    with pytest.raises(TypeError, match="'adagrad' does not take"):
        make_optimizer("adagrad", params, lr=0.1, momentum=0.9)


@pytest.mark.parametrize("call,match", [
    (lambda p: SGD(p, lr=-1.0), "lr"),
    (lambda p: SGD(p, lr="fast"), "lr must be a real number"),
    (lambda p: SGD(p, lr=0.1, nesterov=True), "nesterov=True needs momentum"),
    (lambda p: SGD(p, lr=0.1, momentum=-0.5), "momentum"),
    (lambda p: RMSprop(p, lr=0.1, alpha=1.5), "alpha"),
    (lambda p: Adam(p, lr=0.1, betas=(0.9, 1.0)), r"betas\[1\]"),
    (lambda p: Adagrad(p, lr=0.1, eps=float("nan")), "eps"),
])
def test_bad_hyperparameters_name_the_argument(rng, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(random_params(rng))


def test_bad_params_and_grads(rng):
    with pytest.raises(TypeError, match="params must be a dict"):
        SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match=r"params is empty"):
        SGD({}, lr=0.1)
    params = random_params(rng)
    params["W_h"] = params["W_h"].astype(int)
    with pytest.raises(TypeError, match=r"params\['W_h'\] must be a floating-point"):
        SGD(params, lr=0.1)
    params = random_params(rng)
    opt = SGD(params, lr=0.1)
    grads = random_grads(rng)
    grads["W_y"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"grads\['W_y'\] must have the shape"):
        opt.step(grads)
    grads = random_grads(rng)
    del grads["b_h"]
    with pytest.raises(ValueError, match="grads is missing 'b_h'"):
        opt.step(grads)


# --- clipping -----------------------------------------------------------------------------

@pytest.mark.parametrize("scale,max_norm", [(10.0, 1.0), (0.01, 1.0), (1.0, 2.5)])
def test_clip_grad_norm_matches_torch(rng, scale, max_norm):
    grads = random_grads(rng, scale)
    grads["h"] = rng.standard_normal((3, 2, 4))  # not among the keys clipped: left as it is
    h_before = grads["h"].copy()
    tgrads = [torch.tensor(grads[k].copy()) for k in PARAM_NAMES]
    tparams = [torch.zeros_like(g, requires_grad=True) for g in tgrads]
    for p, g in zip(tparams, tgrads):
        p.grad = g
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
    total = clip_grad_norm(grads, max_norm, keys=PARAM_NAMES)
    assert isinstance(total, float)
    np.testing.assert_allclose(total, float(ttotal), rtol=1e-12)
    for k, p in zip(PARAM_NAMES, tparams):
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(grads["h"], h_before)
    clipped = np.sqrt(sum(np.sum(grads[k] ** 2) for k in PARAM_NAMES))
    assert clipped <= max_norm + 1e-9


def test_clip_grad_norm_by_hand_and_nonfinite():
    grads = {"W_h": np.array([[3.0, 0.0], [0.0, 4.0]]), "b_h": np.zeros(2)}
    total = clip_grad_norm(grads, 1.0, keys=("W_h", "b_h"))
    assert total == 5.0
    np.testing.assert_allclose(grads["W_h"], np.diag([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-15)
    grads = {"W_h": np.array([[np.inf, 1.0]])}
    assert clip_grad_norm(grads, 1.0, keys=("W_h",)) == np.inf
    np.testing.assert_array_equal(grads["W_h"], [[np.inf, 1.0]])


def test_infinite_limits_only_measure(rng):
    grads = random_grads(rng, 100.0)
    saved = {k: v.copy() for k, v in grads.items()}
    total = clip_grad_norm(grads, float("inf"))
    assert total == pytest.approx(np.sqrt(sum(np.sum(saved[k] ** 2) for k in PARAM_NAMES)), rel=1e-12)
    clip_grad_value(grads, float("inf"))
    for k in grads:
        np.testing.assert_array_equal(grads[k], saved[k])


def test_clip_grad_value_matches_torch(rng):
    grads = random_grads(rng, 3.0)
    grads["h"] = 3 * rng.standard_normal((3, 2, 4))  # not among the keys clipped: left as it is
    h_before = grads["h"].copy()
    tparams = [torch.zeros(SHAPES[k], dtype=torch.float64, requires_grad=True) for k in PARAM_NAMES]
    for k, p in zip(PARAM_NAMES, tparams):
        p.grad = torch.tensor(grads[k].copy())
    torch.nn.utils.clip_grad_value_(tparams, 0.7)
    assert clip_grad_value(grads, 0.7, keys=PARAM_NAMES) is None
    for k, p in zip(PARAM_NAMES, tparams):
        np.testing.assert_array_equal(grads[k], p.grad.numpy())
        assert np.abs(grads[k]).max() <= 0.7
    np.testing.assert_array_equal(grads["h"], h_before)


def test_clip_bad_inputs(rng):
    grads = random_grads(rng)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, -1.0)
    with pytest.raises(ValueError, match="clip_value"):
        clip_grad_value(grads, float("nan"))
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, float("nan"))
    with pytest.raises(ValueError, match="grads is missing 'nope'"):
        clip_grad_norm(grads, 1.0, keys=("nope",))
    with pytest.raises(TypeError, match="keys must be a sequence"):
        clip_grad_norm(grads, 1.0, keys="W_h")


def test_clip_grad_norm_of_float32_gradients_does_not_overflow():
    """A float32 gradient of norm ~4e20 has squares beyond float32's range; the norm is still finite
    and clipping still applies."""
    g = {k: np.zeros(s, dtype=np.float32) for k, s in
         {"W_x": (2, 2), "W_h": (2, 2), "b_h": (2,), "W_y": (2, 2), "b_y": (2,)}.items()}
    g["W_h"][...] = 2e20
    total = clip_grad_norm(g, 1.0)
    assert total == pytest.approx(4e20, rel=1e-6)
    assert np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.values())) == pytest.approx(1.0, rel=1e-5)
