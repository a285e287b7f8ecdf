"""Stacked and bidirectional networks against PyTorch float64 autograd.

Oracles (tests/oracle.py), neither of which calls rnngrad: ``deep_reference``, the network
written step by step in torch from nn.RNN state dicts (every f, every dL/dh_t of every layer),
and ``nn_rnn_reference``, torch.nn.RNN itself with pack_padded_sequence (tanh and relu; the two
oracles are also checked against each other).
"""

import numpy as np
import pytest
import torch

from conftest import COMBOS, assert_close, make_targets
from oracle import deep_reference, nn_rnn_reference
from rnngrad import RNN
from rnngrad.interop import torch_keys
from rnngrad.network import layer_param_names

SHAPES = [(1, False), (2, False), (3, False), (1, True), (2, True), (3, True)]
T, B, D, H, O = 5, 3, 4, 3, 4
LENGTHS = np.array([5, 2, 4])


def prefix_mask(lengths=LENGTHS, T=T):
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


def torch_named(model, grads):
    """rnngrad gradients under nn.RNN's keys (b_h's gradient is both biases' gradient)."""
    out = {}
    for k in range(model.num_layers):
        for d in range(model.directions):
            w_ih, w_hh, b_ih, b_hh = torch_keys(k, d)
            W_x, W_h, b_h = layer_param_names(k, d)
            out.update({w_ih: grads[W_x], w_hh: grads[W_h], b_ih: grads[b_h], b_hh: grads[b_h]})
    out["linear.weight"], out["linear.bias"] = grads["W_y"], grads["b_y"]
    return out


def compare(model, res, ref_loss, ref, rtol):
    assert res.loss == pytest.approx(ref_loss, rel=rtol)
    ours = torch_named(model, res.grads)
    for key, want in ref.items():
        if key in ours:
            assert_close(ours[key], want, rtol, key)
    if "dh" in ref:  # nn.RNN keeps its states inside: only the step-by-step oracle has them
        assert_close(res.dh.reshape(ref["dh"].shape), ref["dh"], rtol, "dh")
    assert_close(res.dy_hat, ref["dy_hat"], rtol, "dy_hat")
    if "x" in ref:
        assert_close(res.dx, ref["x"], rtol, "dx")
    assert_close(res.dh0.reshape(ref["h0"].shape), ref["h0"], rtol, "dh0")


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
@pytest.mark.parametrize("hidden, output, loss", COMBOS)
@pytest.mark.parametrize("masked", [False, True])
def test_every_gradient_matches_torch(rng, num_layers, bidirectional, hidden, output, loss, masked):
    model = RNN(D, H, O, hidden_activation=hidden, output_activation=output, loss=loss,
                num_layers=num_layers, bidirectional=bidirectional, seed=int(rng.integers(1 << 30)))
    x = rng.standard_normal((T, B, D))
    y = make_targets(rng, output, loss, T, B, O)
    U = num_layers * model.directions
    h0 = rng.standard_normal((U, B, H)) * 0.5
    mask = prefix_mask() if masked else None
    res = model.gradients(x, y, h0=h0, mask=mask)
    rnn_state, linear_state = model.torch_state_dict()
    ref_loss, ref = deep_reference(rnn_state, linear_state, x, y, num_layers=num_layers,
                                   bidirectional=bidirectional, hidden=hidden, output=output, loss=loss,
                                   h0=h0, mask=mask)
    compare(model, res, ref_loss, ref, 1e-10)


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
@pytest.mark.parametrize("hidden", ["tanh", "relu"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("inputs", ["floats", "tokens"])
def test_imported_torch_model_matches_nn_rnn(rng, num_layers, bidirectional, hidden, masked, inputs):
    """Weights made by torch (two biases) imported; loss and every gradient equal nn.RNN's, packed
    sequences for the mask; and the step-by-step oracle agrees with nn.RNN."""
    torch.manual_seed(int(rng.integers(1 << 30)))
    rnn = torch.nn.RNN(D, H, num_layers=num_layers, nonlinearity=hidden, bidirectional=bidirectional,
                       dtype=torch.float64)
    lin = torch.nn.Linear(H * (2 if bidirectional else 1), O, dtype=torch.float64)
    model = RNN(D, H, O, hidden_activation=hidden, num_layers=num_layers, bidirectional=bidirectional)
    model.load_torch_state_dict(rnn.state_dict(), lin.state_dict())
    x = rng.integers(0, D, size=(T, B)) if inputs == "tokens" else rng.standard_normal((T, B, D))
    y = rng.integers(0, O, size=(T, B))
    mask = prefix_mask() if masked else None
    h0 = rng.standard_normal((num_layers * model.directions, B, H))
    res = model.gradients(x, y, h0=h0, mask=mask, reduction="mean")
    state = {k: v.numpy() for k, v in rnn.state_dict().items()}
    linear = {k: v.numpy() for k, v in lin.state_dict().items()}
    ref_loss, ref, h_n = nn_rnn_reference(state, linear, x, y, num_layers=num_layers,
                                          bidirectional=bidirectional, hidden=hidden, h0=h0, mask=mask,
                                          reduction="mean")
    compare(model, res, ref_loss, ref, 1e-10)
    if bidirectional or not masked:  # a unidirectional network's state runs on through padding
        assert_close(res.h_last, h_n, 1e-12, "h_last")
    step_loss, step = deep_reference(state, linear, x, y, num_layers=num_layers, bidirectional=bidirectional,
                                     hidden=hidden, h0=h0, mask=mask, reduction="mean")
    assert step_loss == pytest.approx(ref_loss, rel=1e-12)
    for key in ref:
        if key in step:
            assert_close(step[key], ref[key], 1e-10, key)
    compare(model, res, step_loss, step, 1e-10)  # every layer's dh too
