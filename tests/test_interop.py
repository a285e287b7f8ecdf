"""PyTorch state dicts in and out (rnngrad.interop through RNN.load_torch_state_dict and
RNN.torch_state_dict), against torch.nn.RNN and torch.nn.Linear themselves."""

import re

import numpy as np
import pytest
import torch

from conftest import assert_close
from rnngrad import RNN
from rnngrad.interop import torch_keys
from rnngrad.network import layer_param_names

SHAPES = [(1, False), (2, False), (3, False), (1, True), (2, True), (3, True)]
T, B, D, H, O = 5, 3, 4, 3, 2


def torch_pair(num_layers, bidirectional, seed, dtype=torch.float64, bias=True, hidden="tanh"):
    torch.manual_seed(seed)
    rnn = torch.nn.RNN(D, H, num_layers=num_layers, bidirectional=bidirectional, nonlinearity=hidden,
                       bias=bias, dtype=dtype)
    lin = torch.nn.Linear(H * (2 if bidirectional else 1), O, dtype=dtype)
    return rnn, lin


def torch_outputs(rnn, lin, x, h0):
    with torch.no_grad():
        out, h_n = rnn(torch.as_tensor(x, dtype=lin.weight.dtype), torch.as_tensor(h0, dtype=lin.weight.dtype))
        return torch.softmax(lin(out), -1).numpy(), h_n.numpy()


def load_into_torch(rnn_state, linear_state, num_layers, bidirectional, dtype=torch.float64, bias=True,
                    hidden="tanh"):
    rnn, lin = torch_pair(num_layers, bidirectional, 0, dtype, bias=bias, hidden=hidden)
    rnn.load_state_dict({k: torch.from_numpy(v) for k, v in rnn_state.items()})  # strict: the same keys
    lin.load_state_dict({k: torch.from_numpy(v) for k, v in linear_state.items()})
    return rnn, lin


def msg(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


# --- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
@pytest.mark.parametrize("dtype, tdtype", [(np.float64, torch.float64), (np.float32, torch.float32)])
def test_rnngrad_to_torch_to_rnngrad_is_bit_identical(num_layers, bidirectional, dtype, tdtype):
    model = RNN(D, H, O, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype, seed=3)
    rnn_state, linear_state = model.torch_state_dict()
    assert all(isinstance(v, np.ndarray) for v in [*rnn_state.values(), *linear_state.values()])
    expected_keys = {key for k in range(num_layers) for d in range(model.directions) for key in torch_keys(k, d)}
    assert set(rnn_state) == expected_keys and set(linear_state) == {"weight", "bias"}
    rnn, lin = load_into_torch(rnn_state, linear_state, num_layers, bidirectional, tdtype)
    assert set(rnn.state_dict()) == set(rnn_state)
    back = RNN(D, H, O, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype)
    back.load_torch_state_dict(rnn.state_dict(), lin.state_dict())
    assert list(back.params) == list(model.params)
    for k, v in model.params.items():
        assert back.params[k].dtype == dtype
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)
    # the exported arrays are copies: writing into them leaves the model alone
    rnn_state["weight_hh_l0"][...] = 0
    linear_state["weight"][...] = 0
    assert np.any(model.params["W_h"] != 0) and np.any(model.params["W_y"] != 0)


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
@pytest.mark.parametrize("hidden", ["tanh", "relu"])
def test_torch_to_rnngrad_to_torch_merges_the_biases(rng, num_layers, bidirectional, hidden):
    rnn, lin = torch_pair(num_layers, bidirectional, int(rng.integers(1 << 30)), hidden=hidden)
    model = RNN(D, H, O, hidden_activation=hidden, num_layers=num_layers, bidirectional=bidirectional)
    model.load_torch_state_dict(rnn.state_dict(), lin.state_dict())
    rnn_state, linear_state = model.torch_state_dict()
    original = {k: v.numpy() for k, v in rnn.state_dict().items()}
    for k in range(num_layers):
        for d in range(model.directions):
            w_ih, w_hh, b_ih, b_hh = torch_keys(k, d)
            np.testing.assert_array_equal(rnn_state[w_ih], original[w_ih])
            np.testing.assert_array_equal(rnn_state[w_hh], original[w_hh])
            np.testing.assert_array_equal(rnn_state[b_ih], original[b_ih] + original[b_hh])
            assert np.all(rnn_state[b_hh] == 0)
    np.testing.assert_array_equal(linear_state["weight"], lin.weight.detach().numpy())
    np.testing.assert_array_equal(linear_state["bias"], lin.bias.detach().numpy())
    again, lin2 = load_into_torch(rnn_state, linear_state, num_layers, bidirectional, hidden=hidden)
    x = rng.standard_normal((T, B, D))
    h0 = rng.standard_normal((num_layers * model.directions, B, H))
    y_hat, h_n = torch_outputs(rnn, lin, x, h0)
    y_hat2, h_n2 = torch_outputs(again, lin2, x, h0)
    assert_close(y_hat2, y_hat, 1e-14, "y_hat")  # the same function: only b_ih + b_hh rounded once
    assert_close(h_n2, h_n, 1e-14, "h_n")
    fwd = model.forward(x, h0=h0)
    assert_close(fwd.y_hat, y_hat, 1e-13, "rnngrad y_hat")
    assert_close(fwd.h_last, h_n, 1e-13, "rnngrad h_last")


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
def test_tensors_and_numpy_arrays_load_alike(rng, num_layers, bidirectional):
    rnn, lin = torch_pair(num_layers, bidirectional, int(rng.integers(1 << 30)))
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional)
    from_tensors = RNN(D, H, O, **kwargs).load_torch_state_dict(rnn.state_dict(), lin.state_dict())
    from_arrays = RNN(D, H, O, **kwargs).load_torch_state_dict(
        {k: v.numpy() for k, v in rnn.state_dict().items()}, {k: v.numpy() for k, v in lin.state_dict().items()})
    # parameters that require grad (named_parameters, not state_dict) and float32 tensors too
    from_params = RNN(D, H, O, **kwargs).load_torch_state_dict(dict(rnn.named_parameters()),
                                                               dict(lin.named_parameters()))
    as_lists = RNN(D, H, O, **kwargs).load_torch_state_dict(
        {k: v.tolist() for k, v in rnn.state_dict().items()}, {k: v.tolist() for k, v in lin.state_dict().items()})
    for other in (from_arrays, from_params, as_lists):
        for k in from_tensors.params:
            np.testing.assert_array_equal(other.params[k], from_tensors.params[k], err_msg=k)
    single = RNN(D, H, O, dtype=np.float32, **kwargs).load_torch_state_dict(
        {k: v.float() for k, v in rnn.state_dict().items()}, {k: v.float() for k, v in lin.state_dict().items()})
    assert all(v.dtype == np.float32 for v in single.params.values())
    assert single.load_torch_state_dict(rnn.state_dict(), lin.state_dict()) is single  # returns the model


def test_nn_rnn_without_bias_loads_with_zero_b_h(rng):
    for num_layers, bidirectional in [(1, False), (2, True)]:
        rnn, lin = torch_pair(num_layers, bidirectional, int(rng.integers(1 << 30)), bias=False)
        state = rnn.state_dict()
        assert not any(k.startswith("bias") for k in state)
        model = RNN(D, H, O, num_layers=num_layers, bidirectional=bidirectional, seed=1)
        model.load_torch_state_dict(state, lin.state_dict())
        for name, value in model.params.items():
            if name.startswith("b_h"):
                assert value.shape == (H,) and np.all(value == 0), name
        x = rng.standard_normal((T, B, D))
        h0 = rng.standard_normal((num_layers * model.directions, B, H))
        y_hat, h_n = torch_outputs(rnn, lin, x, h0)
        fwd = model.forward(x, h0=h0)
        assert_close(fwd.y_hat, y_hat, 1e-13, "y_hat")
        assert_close(fwd.h_last, h_n, 1e-13, "h_last")
        # exported with (zero) biases, which a biased nn.RNN takes (strict loading: the same keys)
        biased, _ = torch_pair(num_layers, bidirectional, 0)
        biased.load_state_dict({k: torch.from_numpy(v) for k, v in model.torch_state_dict()[0].items()})
        assert all(torch.all(v == 0) for k, v in biased.state_dict().items() if k.startswith("bias"))


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
def test_replaced_params_are_exported_as_given(rng, num_layers, bidirectional):
    model = RNN(D, H, O, num_layers=num_layers, bidirectional=bidirectional, seed=0)
    shapes = model.shapes
    new = {k: rng.standard_normal(shape) for k, shape in reversed(list(shapes.items()))}  # any order
    model.params = new
    rnn_state, linear_state = model.torch_state_dict()
    for k in range(num_layers):
        for d in range(model.directions):
            w_ih, w_hh, b_ih, b_hh = torch_keys(k, d)
            W_x, W_h, b_h = layer_param_names(k, d)
            np.testing.assert_array_equal(rnn_state[w_ih], new[W_x])
            np.testing.assert_array_equal(rnn_state[w_hh], new[W_h])
            np.testing.assert_array_equal(rnn_state[b_ih], new[b_h])
            np.testing.assert_array_equal(rnn_state[b_hh], np.zeros(H))
    np.testing.assert_array_equal(linear_state["weight"], new["W_y"])
    np.testing.assert_array_equal(linear_state["bias"], new["b_y"])
    # and torch computes with them what rnngrad computes
    rnn, lin = load_into_torch(rnn_state, linear_state, num_layers, bidirectional)
    x, h0 = rng.standard_normal((T, B, D)), rng.standard_normal((num_layers * model.directions, B, H))
    y_hat, h_n = torch_outputs(rnn, lin, x, h0)
    assert_close(model.forward(x, h0=h0).y_hat, y_hat, 1e-12, "y_hat")
    # float32 arrays in a float64 model are exported in the model's dtype, with the same values
    model.params = {k: v.astype(np.float32) for k, v in new.items()}
    exported = model.torch_state_dict()[0]["weight_hh_l0"]
    assert exported.dtype == np.float64
    np.testing.assert_array_equal(exported, new["W_h"].astype(np.float32).astype(np.float64))


# --- errors -----------------------------------------------------------------------------------

@pytest.fixture
def torch_model():
    return torch_pair(2, True, 0)


def states(torch_model):
    rnn, lin = torch_model
    return dict(rnn.state_dict()), dict(lin.state_dict())


def deep_bi():
    return RNN(D, H, O, num_layers=2, bidirectional=True, seed=0)


def test_a_failed_load_leaves_the_model_unchanged(torch_model):
    model = deep_bi()
    before = {k: v.copy() for k, v in model.params.items()}
    rnn_state, linear_state = states(torch_model)
    del rnn_state["weight_hh_l1_reverse"]
    with pytest.raises(ValueError):
        model.load_torch_state_dict(rnn_state, linear_state)
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)


@pytest.mark.parametrize("key", ["weight_ih_l0", "weight_hh_l1", "weight_ih_l1_reverse", "weight_hh_l0_reverse"])
def test_a_missing_weight_is_named(torch_model, key):
    rnn_state, linear_state = states(torch_model)
    del rnn_state[key]
    with pytest.raises(ValueError, match=f"rnn_state has no '{key}'") as err:
        deep_bi().load_torch_state_dict(rnn_state, linear_state)
    msg(err)


@pytest.mark.parametrize("drop", ["weight", "bias"])
def test_linear_state_needs_weight_and_bias(torch_model, drop):
    rnn_state, linear_state = states(torch_model)
    del linear_state[drop]
    with pytest.raises(ValueError, match="linear_state must have exactly the keys 'weight' and 'bias'") as err:
        deep_bi().load_torch_state_dict(rnn_state, linear_state)
    msg(err)
    rnn_state, linear_state = states(torch_model)
    linear_state["extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="linear_state must have exactly the keys.*'extra'"):
        deep_bi().load_torch_state_dict(rnn_state, linear_state)


def test_an_extra_key_is_named(torch_model):
    rnn_state, linear_state = states(torch_model)
    rnn_state["weight_ih_l7"] = torch.zeros(H, D)
    with pytest.raises(ValueError, match=r"rnn_state has keys this model does not have: \['weight_ih_l7'\]") as err:
        deep_bi().load_torch_state_dict(rnn_state, linear_state)
    msg(err)


@pytest.mark.parametrize("where, key, shape", [
    ("rnn", "weight_ih_l0", (H, D + 1)),
    ("rnn", "weight_hh_l1_reverse", (H, H + 1)),
    ("rnn", "weight_ih_l1", (H, H)),  # a unidirectional layer below
    ("rnn", "bias_ih_l0", (H + 1,)),
    ("rnn", "bias_hh_l1_reverse", (1, H)),
    ("linear", "weight", (O, H)),
    ("linear", "bias", (O + 1,)),
])
def test_a_wrong_shape_names_the_key(torch_model, where, key, shape):
    rnn_state, linear_state = states(torch_model)
    (rnn_state if where == "rnn" else linear_state)[key] = torch.zeros(shape)
    name = f"{where}_state['{key}']"
    with pytest.raises(ValueError, match=re.escape(name) + " has shape") as err:
        deep_bi().load_torch_state_dict(rnn_state, linear_state)
    assert str(shape) in msg(err)


@pytest.mark.parametrize("keep, drop", [("bias_ih_l1", "bias_hh_l1"), ("bias_hh_l0_reverse", "bias_ih_l0_reverse")])
def test_one_bias_without_the_other_is_refused(torch_model, keep, drop):
    rnn_state, linear_state = states(torch_model)
    del rnn_state[drop]
    with pytest.raises(ValueError, match=f"rnn_state has '{keep}' but not '{drop}'") as err:
        deep_bi().load_torch_state_dict(rnn_state, linear_state)
    msg(err)


@pytest.mark.parametrize("torch_shape, model_shape", [
    ((2, True), (2, False)), ((2, False), (2, True)), ((1, True), (1, False)), ((1, False), (1, True)),
    ((3, False), (2, False)), ((1, False), (2, False)), ((3, True), (2, True)), ((1, True), (3, True)),
])
def test_another_architecture_is_refused_naming_it(torch_shape, model_shape):
    rnn, lin = torch_pair(*torch_shape, 0)
    model = RNN(D, H, O, num_layers=model_shape[0], bidirectional=model_shape[1])
    with pytest.raises(ValueError) as err:
        model.load_torch_state_dict(rnn.state_dict(), lin.state_dict())
    text = msg(err)
    if torch_shape[0] != model_shape[0]:
        assert "num_layers" in text, text
    if torch_shape[1] != model_shape[1]:
        assert "bidirectional" in text or "reverse" in text, text


@pytest.mark.parametrize("where, key", [("rnn", "weight_hh_l1"), ("rnn", "bias_hh_l0_reverse"),
                                        ("linear", "weight"), ("linear", "bias")])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(torch_model, where, key, bad):
    rnn_state, linear_state = states(torch_model)
    state = rnn_state if where == "rnn" else linear_state
    value = state[key].clone()
    value.view(-1)[-1] = bad
    state[key] = value
    with pytest.raises(ValueError, match=rf"{where}_state\['{key}'\] contains NaN or Inf") as err:
        deep_bi().load_torch_state_dict(rnn_state, linear_state)
    msg(err)


def test_state_dicts_must_be_mappings(torch_model):
    rnn_state, linear_state = states(torch_model)
    with pytest.raises(TypeError, match="rnn_state must be a state dict"):
        deep_bi().load_torch_state_dict(list(rnn_state.values()), linear_state)
    with pytest.raises(TypeError, match="linear_state must be a state dict"):
        deep_bi().load_torch_state_dict(rnn_state, None)
    rnn_state["weight_ih_l0"] = "weights"
    with pytest.raises(TypeError, match=r"rnn_state\['weight_ih_l0'\] must hold real numbers"):
        deep_bi().load_torch_state_dict(rnn_state, linear_state)
