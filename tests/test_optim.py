"""Optimizers and clipping: hand-worked steps, torch.optim as the oracle, state round trips;
weight decay and learning-rate schedules against torch.optim and torch.optim.lr_scheduler."""

import json
import math

import numpy as np

import pytest
import torch

from torch.optim import lr_scheduler as tls

from rnngrad import RNN
from rnngrad.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from rnngrad.optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    RMSprop,
    check_weight_decay,
    clip_grad_norm,
    clip_grad_value,
    make_optimizer,
)
from rnngrad.schedules import parse_schedule

from conftest import COMBOS, make_targets
from oracle import reference

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
    ("adagrad", {"weight_decay": 0.02}, lambda ps: torch.optim.Adagrad(ps, lr=0.05, weight_decay=0.02)),
    ("rmsprop", {"momentum": 0.5, "weight_decay": 0.02},
     lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5, weight_decay=0.02)),
    ("adamw", {}, lambda ps: torch.optim.AdamW(ps, lr=0.01)),  # both default to weight_decay=0.01
    ("adamw", {"weight_decay": 0.3, "betas": (0.8, 0.95), "eps": 1e-6},
     lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.3, betas=(0.8, 0.95), eps=1e-6)),
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
                 "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
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


# --- weight decay ---------------------------------------------------------------------------

def test_adamw_step_by_hand():
    # θ = 2, g = 1, lr = 0.1, λ = 0.5, eps = 0:  decay θ = 2 (1 - 0.05) = 1.9; Adam's first step
    # is lr sign(g) = 0.1, so θ = 1.8 (L2 decay would instead feed g + λθ = 2 to the moments: θ = 1.9).
    p = one_param(np.full(16, 2.0))
    AdamW(p, lr=0.1, eps=0.0, weight_decay=0.5).step(grads_with(np.ones(16)))
    np.testing.assert_allclose(p["W_h"], 1.8, rtol=1e-15, atol=0)


def test_adagrad_and_rmsprop_weight_decay_by_hand():
    # L2: d = g + λθ = 1 + 0.5·2 = 2.  Adagrad, eps 0: θ -= lr d / |d| = 0.1 -> 1.9.
    p = one_param(np.full(16, 2.0))
    Adagrad(p, lr=0.1, eps=0.0, weight_decay=0.5).step(grads_with(np.ones(16)))
    np.testing.assert_allclose(p["W_h"], 1.9, rtol=1e-15, atol=0)
    # RMSprop, eps 0: v = 0.01 d², θ -= lr d / (0.1 |d|) = 10 lr -> 2 - 0.1 = 1.9 with lr = 0.01.
    p = one_param(np.full(16, 2.0))
    RMSprop(p, lr=0.01, eps=0.0, weight_decay=0.5).step(grads_with(np.ones(16)))
    np.testing.assert_allclose(p["W_h"], 1.9, rtol=1e-14, atol=0)


@pytest.mark.parametrize("make", [lambda p: AdamW(p, lr=0.1, weight_decay=0.2),
                                  lambda p: SGD(p, lr=0.1, weight_decay=0.2)], ids=["adamw", "sgd"])
def test_every_parameter_biases_included_is_decayed(rng, make):
    """With a zero gradient the update is the decay alone: θ (1 - lr λ) for W_x, W_h, b_h, W_y, b_y
    alike (torch decays every parameter of its one group; so do we)."""
    params = random_params(rng)
    before = {k: v.copy() for k, v in params.items()}
    make(params).step({k: np.zeros(s) for k, s in SHAPES.items()})
    for k in PARAM_NAMES:
        np.testing.assert_allclose(params[k], before[k] * (1 - 0.1 * 0.2), rtol=1e-15, atol=0, err_msg=k)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop", "adamw"])
@pytest.mark.parametrize("value, error, given", [
    (-0.01, ValueError, "got -0.01"), (float("nan"), ValueError, "got nan"), (float("inf"), ValueError, "got inf"),
    ("0.1", TypeError, "got str '0.1'"), (True, TypeError, "got bool True"),
])
def test_bad_weight_decay_is_one_line_naming_weight_decay(rng, name, value, error, given):
    with pytest.raises(error) as info:
        make_optimizer(name, random_params(rng), lr=0.1, weight_decay=value)
    message = str(info.value)
    assert message.startswith("weight_decay must be a finite number >= 0 (e.g. 0.01; 0 for no decay)")
    assert message.endswith(given) and "\n" not in message


def test_check_weight_decay_names_the_caller_argument():
    assert check_weight_decay(0) == 0.0 and check_weight_decay(np.float32(0.5)) == 0.5
    with pytest.raises(ValueError, match=r"^weight_decay \(--weight-decay\) must be a finite number >= 0"):
        check_weight_decay(-1.0, name="weight_decay (--weight-decay)")


def test_adam_points_to_adamw_for_weight_decay(rng):
    with pytest.raises(TypeError, match=r"optimizer 'adam' does not take weight_decay; use 'adamw'"):
        make_optimizer("adam", random_params(rng), lr=0.1, weight_decay=0.01)


# --- a learning rate per update: schedules, with clipping, against torch ---------------------

# Optimizers with and without weight decay: (name, our kwargs, torch factory taking (params, lr)).
SCHEDULED_OPTIMIZERS = [
    ("adamw", {"weight_decay": 0.1}, lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.1)),
    ("adamw", {"weight_decay": 0.05, "betas": (0.8, 0.99), "eps": 1e-6},
     lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6)),
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01},
     lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=0.01)),
    ("sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05},
     lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("adagrad", {"weight_decay": 0.02}, lambda ps, lr: torch.optim.Adagrad(ps, lr=lr, weight_decay=0.02)),
    ("rmsprop", {"momentum": 0.5, "weight_decay": 0.02},
     lambda ps, lr: torch.optim.RMSprop(ps, lr=lr, momentum=0.5, weight_decay=0.02)),
    ("adam", {}, lambda ps, lr: torch.optim.Adam(ps, lr=lr)),
]
STEPS = 50
# --lr-schedule spellings over STEPS updates, each with its torch twin written from torch's API.
SCHEDULES = [
    ("warmup=10,cosine", lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=1 / 3, total_iters=10),
                                                        tls.CosineAnnealingLR(o, T_max=STEPS - 10)], [10])),
    ("warmup=5,start=0.1,step=10,gamma=0.5",
     lambda o: tls.SequentialLR(o, [tls.LinearLR(o, start_factor=0.1, total_iters=5),
                                    tls.StepLR(o, step_size=10, gamma=0.5)], [5])),
    ("cosine,eta_min=1e-4", lambda o: tls.CosineAnnealingLR(o, T_max=STEPS, eta_min=1e-4)),
    ("step=7,gamma=0.8", lambda o: tls.StepLR(o, step_size=7, gamma=0.8)),
]


def train_step(opt, schedule, step, grads, clip_norm, clip_value):
    """The order of Trainer.step: clip by norm, then by value, then one update at the schedule's lr."""
    clip_grad_norm(grads, clip_norm)
    clip_grad_value(grads, clip_value)
    opt.step(grads, lr=schedule.lr_at(step))


def torch_train_step(topt, tsched, tparams, grads, clip_norm, clip_value):
    ps = [tparams[k] for k in tparams]
    for k in tparams:
        tparams[k].grad = torch.tensor(grads[k], dtype=tparams[k].dtype)
    torch.nn.utils.clip_grad_norm_(ps, clip_norm)
    torch.nn.utils.clip_grad_value_(ps, clip_value)
    topt.step()
    tsched.step()


@pytest.mark.parametrize("spec, make_tsched", SCHEDULES, ids=[s[0] for s in SCHEDULES])
@pytest.mark.parametrize("name, kw, make_topt", SCHEDULED_OPTIMIZERS,
                         ids=[f"{n}-{'-'.join(k) or 'plain'}" for n, k, _ in SCHEDULED_OPTIMIZERS])
def test_scheduled_trajectory_with_clipping_matches_torch(rng, name, kw, make_topt, spec, make_tsched):
    """50 updates, float64: weight decay, a schedule and both clippings active, every step compared."""
    base_lr = 0.05 if name in ("sgd", "adagrad") else 0.01
    params = random_params(rng)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = make_topt(list(tparams.values()), base_lr)
    tsched = make_tsched(topt)
    schedule = parse_schedule(spec, total_steps=STEPS, base_lr=base_lr)
    opt = make_optimizer(name, params, lr=base_lr, **kw)
    worst = 0.0
    for s in range(STEPS):
        grads = random_grads(rng, scale=rng.uniform(0.05, 2.0))  # the norm clip acts on some steps only
        assert schedule.lr_at(s) == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=0)
        torch_train_step(topt, tsched, tparams, {k: v.copy() for k, v in grads.items()}, 3.0, 0.8)
        train_step(opt, schedule, s, grads, 3.0, 0.8)
        for k in PARAM_NAMES:
            expected = tparams[k].detach().numpy()
            err = np.max(np.abs(params[k] - expected)) / np.max(np.abs(expected))
            worst = max(worst, err)
            assert err <= 1e-12, f"step {s} {k}: relative error {err:.2e}"
    assert worst <= 1e-12


def test_scheduled_float32_stays_float32_and_close_to_torch(rng):
    params = random_params(rng, np.float32)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = torch.optim.AdamW(list(tparams.values()), lr=0.01, weight_decay=0.1)
    tsched = SCHEDULES[0][1](topt)
    schedule = parse_schedule(SCHEDULES[0][0], total_steps=STEPS, base_lr=0.01)
    opt = AdamW(params, lr=0.01, weight_decay=0.1)
    for s in range(20):
        grads = {k: v.astype(np.float32) for k, v in random_grads(rng).items()}
        torch_train_step(topt, tsched, tparams, {k: v.copy() for k, v in grads.items()}, 3.0, 0.8)
        train_step(opt, schedule, s, grads, 3.0, 0.8)
    for k in PARAM_NAMES:
        assert params[k].dtype == np.float32
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=k)
    assert all(v.dtype == np.float32 for v in opt.state_dict().values() if isinstance(v, np.ndarray))


@pytest.mark.parametrize("f, g, loss", COMBOS)
def test_rnn_training_matches_torch_autograd_end_to_end(rng, f, g, loss):
    """Both sides compute their own gradients (rnngrad's BPTT; torch autograd of the seed's model
    written in torch) at their own parameters, clip them and take AdamW steps on a warmup-then-cosine
    schedule, reduction="mean" with a mask."""
    T, B, D, H, O = 5, 3, 3, 4, 3
    model = RNN(D, H, O, hidden_activation=f, output_activation=g, loss=loss, seed=1)
    x = rng.integers(0, D, size=(T, B))
    y = make_targets(rng, g, loss, T, B, O)
    mask = np.ones((T, B))
    mask[3:, 0] = 0.0
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    topt = torch.optim.AdamW(list(tparams.values()), lr=0.05, weight_decay=0.1)
    tsched = tls.SequentialLR(topt, [tls.LinearLR(topt, start_factor=1 / 3, total_iters=2),
                                     tls.CosineAnnealingLR(topt, T_max=4)], [2])
    opt = make_optimizer("adamw", model.params, lr=0.05, weight_decay=0.1)
    schedule = parse_schedule("warmup=2,cosine", total_steps=6, base_lr=0.05)
    for s in range(6):
        _, tgrads = reference({k: v.detach().numpy() for k, v in tparams.items()}, x, y, hidden=f, output=g,
                              loss=loss, mask=mask, reduction="mean")
        torch_train_step(topt, tsched, tparams, {k: tgrads[k] for k in tparams}, 0.5, 0.3)
        res = model.gradients(x, y, mask=mask, reduction="mean")
        train_step(opt, schedule, s, res.grads, 0.5, 0.3)
    for k in model.params:
        expected = tparams[k].detach().numpy()
        err = np.max(np.abs(model.params[k] - expected)) / np.max(np.abs(expected))
        assert err <= 1e-10, f"{k}: relative error {err:.2e}"


@pytest.mark.parametrize("name, kw, make_topt", [SCHEDULED_OPTIMIZERS[0], SCHEDULED_OPTIMIZERS[2]],
                         ids=["adamw", "sgd"])
@pytest.mark.parametrize("num_layers, bidirectional", [(2, False), (3, True)])
def test_deep_rnn_scheduled_decay_like_torch(rng, name, kw, make_topt, num_layers, bidirectional):
    """Every parameter of a stacked (bidirectional) network, each with its own name, is decayed and
    scheduled as torch does (the model's gradients, with lengths, drive both)."""
    model = RNN(3, 4, 2, seed=0, num_layers=num_layers, bidirectional=bidirectional)
    x = rng.integers(0, 3, size=(6, 2))
    y = rng.integers(0, 2, size=(6, 2))
    lengths = np.array([6, 4])
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    topt = make_topt(list(tparams.values()), 0.02)
    tsched = SCHEDULES[1][1](topt)
    opt = make_optimizer(name, model.params, lr=0.02, **kw)
    schedule = parse_schedule(SCHEDULES[1][0], STEPS, 0.02)
    for s in range(12):
        res = model.gradients(x, y, lengths=lengths, reduction="mean")
        torch_train_step(topt, tsched, tparams, {k: v.copy() for k, v in res.grads.items()}, 1.0, 0.5)
        train_step(opt, schedule, s, res.grads, 1.0, 0.5)
    for k in model.params:
        np.testing.assert_allclose(model.params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=k)


def test_step_lr_is_checked_before_anything_changes_and_then_kept(rng):
    params = random_params(rng)
    before = {k: v.copy() for k, v in params.items()}
    opt = AdamW(params, lr=0.01)
    for bad, error in ((-1.0, ValueError), (float("nan"), ValueError), ("0.1", TypeError)):
        with pytest.raises(error, match="lr"):
            opt.step(random_grads(rng), lr=bad)
    assert opt.step_count == 0 and opt.lr == 0.01
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(params[k], before[k])
    opt.step(random_grads(rng), lr=0.003)
    assert opt.lr == 0.003 and opt.state_dict()["lr"] == 0.003
    opt.step(random_grads(rng))  # None keeps the last lr
    assert opt.lr == 0.003 and opt.step_count == 2


# --- resume mid-schedule, and states saved before weight decay existed -------------------------

def checkpoint_round_trip(tmp_path, model, opt, schedule):
    """Save as Trainer.save lays it out (numbers in the JSON metadata, slots as optim/ arrays, the
    schedule's spelling beside them), then load as Trainer.resume does."""
    state = opt.state_dict()
    meta = {"optimizer": {"name": opt.name, **{k: v for k, v in state.items() if not isinstance(v, np.ndarray)}},
            "lr_schedule": schedule.spec}
    arrays = {f"optim/{k}": v for k, v in state.items() if isinstance(v, np.ndarray)}
    path = save_checkpoint(tmp_path / "checkpoint.npz", model, meta, arrays)
    meta, arrays = load_checkpoint(path, groups=("optim",))
    model2 = model_from_checkpoint(meta, arrays)
    saved = {k: v for k, v in meta["optimizer"].items() if k != "name"}
    saved.update({k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
    opt2 = make_optimizer(meta["optimizer"]["name"], model2.params, lr=123.0)  # the lr comes from the state
    opt2.load_state_dict(saved)
    # The run's length may change on resume (--steps); the pinned spelling keeps the schedule.
    schedule2 = parse_schedule(meta["lr_schedule"], total_steps=10_000, base_lr=schedule.base_lr)
    assert schedule2 == schedule
    return model2, opt2, schedule2


@pytest.mark.parametrize("name, kw", [("adamw", {"weight_decay": 0.1}),
                                      ("sgd", {"momentum": 0.9, "weight_decay": 0.05}),
                                      ("rmsprop", {"weight_decay": 0.01})])
@pytest.mark.parametrize("stop", [4, 10, 23], ids=["in-warmup", "at-milestone", "in-cosine"])
def test_resume_mid_schedule_is_bit_identical(rng, tmp_path, name, kw, stop):
    x = rng.integers(0, 3, size=(5, 2))
    y = rng.integers(0, 3, size=(5, 2))
    base_lr, total = 0.02, 30

    def run(model, opt, schedule, steps):
        for s in steps:
            res = model.gradients(x, y, reduction="mean")
            train_step(opt, schedule, s, res.grads, 1.0, 10.0)

    straight = RNN(3, 4, 3, seed=2)
    opt = make_optimizer(name, straight.params, lr=base_lr, **kw)
    schedule = parse_schedule("warmup=10,cosine", total_steps=total, base_lr=base_lr)
    run(straight, opt, schedule, range(total))

    first = RNN(3, 4, 3, seed=2)
    opt1 = make_optimizer(name, first.params, lr=base_lr, **kw)
    run(first, opt1, schedule, range(stop))
    resumed, opt2, schedule2 = checkpoint_round_trip(tmp_path, first, opt1, schedule)
    assert opt2.step_count == stop and opt2.lr == schedule.lr_at(stop - 1)
    run(resumed, opt2, schedule2, range(stop, total))
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])
    for key, value in opt.state_dict().items():
        np.testing.assert_array_equal(opt2.state_dict()[key], value)


# The state keys written before weight decay existed for Adagrad and RMSprop (format, not values).
OLD_KEYS = {
    "adagrad": {"lr", "eps", "step"} | {f"sum.{k}" for k in PARAM_NAMES},
    "rmsprop": {"lr", "alpha", "eps", "momentum", "step"}
               | {f"{s}.{k}" for s in ("square_avg", "momentum_buffer") for k in PARAM_NAMES},
}


def test_state_keys_only_grow_by_weight_decay(rng):
    """SGD and Adam save exactly what they did; Adagrad and RMSprop add weight_decay; AdamW is Adam's plus it."""
    params = random_params(rng)
    keys = {name: set(make_optimizer(name, params, lr=0.1).state_dict()) for name in OPTIMIZERS}
    assert keys["sgd"] == {"lr", "momentum", "nesterov", "weight_decay", "step"} | {
        f"momentum_buffer.{k}" for k in PARAM_NAMES}
    assert keys["adam"] == {"lr", "beta1", "beta2", "eps", "step"} | {
        f"{s}.{k}" for s in ("exp_avg", "exp_avg_sq") for k in PARAM_NAMES}
    assert keys["adagrad"] == OLD_KEYS["adagrad"] | {"weight_decay"}
    assert keys["rmsprop"] == OLD_KEYS["rmsprop"] | {"weight_decay"}
    assert keys["adamw"] == keys["adam"] | {"weight_decay"}


@pytest.mark.parametrize("name, make_torch, slots", [
    ("adagrad", lambda ps: torch.optim.Adagrad(ps, lr=0.05), {"sum": "sum"}),
    ("rmsprop", lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5),
     {"square_avg": "square_avg", "momentum_buffer": "momentum_buffer"}),
])
def test_state_saved_before_weight_decay_loads_and_continues_like_torch(rng, tmp_path, name, make_torch, slots):
    """A state in the old key set (no weight_decay), built from torch's own optimizer state after
    three steps, loads with weight_decay = 0 and continues as torch does."""
    params = random_params(rng)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = make_torch([tparams[k] for k in PARAM_NAMES])
    grads = [random_grads(rng) for _ in range(6)]
    for g in grads[:3]:
        for k in PARAM_NAMES:
            tparams[k].grad = torch.tensor(g[k])
        topt.step()
    group = topt.param_groups[0]
    old = {h: group[h] for h in OLD_KEYS[name] if h in group}
    old["step"] = 3
    for ours_slot, torch_slot in slots.items():
        for k in PARAM_NAMES:
            old[f"{ours_slot}.{k}"] = topt.state[tparams[k]][torch_slot].numpy().copy()
    assert set(old) == OLD_KEYS[name]
    resumed = {k: tparams[k].detach().numpy().copy() for k in PARAM_NAMES}
    opt = make_optimizer(name, resumed, lr=1.0)
    opt.load_state_dict(save_state(old, tmp_path))
    assert opt.weight_decay == 0.0 and opt.step_count == 3
    for g in grads[3:]:
        for k in PARAM_NAMES:
            tparams[k].grad = torch.tensor(g[k])
        topt.step()
        opt.step(g)
    for k in PARAM_NAMES:
        np.testing.assert_allclose(resumed[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=k)


def test_adam_and_adamw_states_are_not_interchangeable(rng):
    params = random_params(rng)
    with pytest.raises(ValueError, match=r"does not belong to a AdamW optimizer: missing keys \['weight_decay'\]"):
        AdamW(params, lr=0.01).load_state_dict(Adam(params, lr=0.01).state_dict())
    with pytest.raises(ValueError, match=r"does not belong to a Adam optimizer: missing keys \[\], unexpected keys \['weight_decay'\]"):
        Adam(params, lr=0.01).load_state_dict(AdamW(params, lr=0.01).state_dict())
    bad = dict(AdamW(params, lr=0.01).state_dict(), weight_decay=-0.5)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        AdamW(params, lr=0.01).load_state_dict(bad)
    assert math.isclose(AdamW(params, lr=0.01).weight_decay, 0.01)
