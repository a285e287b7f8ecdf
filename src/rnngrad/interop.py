"""PyTorch state dicts to and from rnngrad parameters, without importing torch.

``torch.nn.RNN`` computes h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh) with two biases;
the seed has one, so on import b_h = b_ih + b_hh, and on export bias_ih = b_h and
bias_hh = 0 (a round trip rnngrad -> torch -> rnngrad is exact). The keys, for layer k and
the reverse direction:

    weight_ih_l{k}[_reverse]  (H, D_k)   <->  W_x (layer_param_names: W_x, W_x_l1, W_x_reverse, ...)
    weight_hh_l{k}[_reverse]  (H, H)     <->  W_h
    bias_ih_l{k}[_reverse]    (H,)       \\
    bias_hh_l{k}[_reverse]    (H,)       /->  b_h
    nn.Linear weight (O, C), bias (O,)   <->  W_y, b_y

Values may be torch tensors (converted through ``.detach().cpu().numpy()``, so torch itself is
never imported here) or anything NumPy reads as an array.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .network import layer_param_names
from .validation import as_array, check_finite

__all__ = ["torch_keys", "params_from_torch", "params_to_torch"]


def torch_keys(layer: int, direction: int) -> tuple[str, str, str, str]:
    """PyTorch's names for layer ``layer``'s weight_ih, weight_hh, bias_ih, bias_hh in ``direction``."""
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    return tuple(name + suffix for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


def _numpy(name: str, value, dtype) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, duck-typed
        value = value.detach().cpu().numpy()
    arr = as_array(name, value, dtype)
    check_finite(name, arr)
    return arr


def _expect(name: str, arr: np.ndarray, shape: tuple, what: str) -> None:
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, but this model's {what} needs {tuple(shape)}; "
                         f"build the RNN with the sizes of the torch model")


def params_from_torch(rnn_state: Mapping, linear_state: Mapping, shapes: Mapping[str, tuple],
                      num_layers: int, directions: int, dtype) -> dict:
    """rnngrad parameters (keys and shapes of ``shapes``) from an nn.RNN and an nn.Linear state dict.

    Every key of the model must be present and no other (an nn.RNN built with ``bias=False``
    has no bias keys: b_h is then 0); shapes must match. ValueError otherwise, naming the key.
    """
    for name, state in (("rnn_state", rnn_state), ("linear_state", linear_state)):
        if not isinstance(state, Mapping):
            raise TypeError(f"{name} must be a state dict (a mapping such as module.state_dict()); "
                            f"got {type(state).__name__}")
    expected, params = set(), {}
    # Keys of another architecture first: a bidirectional state's deeper layers would otherwise
    # fail on their shape, with a message that does not say why.
    unknown = sorted(set(rnn_state) - {key for k in range(num_layers) for d in range(directions)
                                       for key in torch_keys(k, d)})
    if unknown:
        raise ValueError(f"rnn_state has keys this model does not have: {unknown}; check num_layers and "
                         f"bidirectional (proj_size and other nn.RNN variants are not supported)")
    for k in range(num_layers):
        for d in range(directions):
            keys = torch_keys(k, d)
            W_x, W_h, b_h = layer_param_names(k, d)
            expected.update(keys)
            missing = [key for key in keys[:2] if key not in rnn_state]
            if missing:
                raise ValueError(f"rnn_state has no {missing[0]!r}; a model with num_layers={num_layers}"
                                 f"{', bidirectional' if directions == 2 else ''} needs {sorted(expected)}...")
            params[W_x] = _numpy(f"rnn_state[{keys[0]!r}]", rnn_state[keys[0]], dtype)
            params[W_h] = _numpy(f"rnn_state[{keys[1]!r}]", rnn_state[keys[1]], dtype)
            _expect(f"rnn_state[{keys[0]!r}]", params[W_x], shapes[W_x], W_x)
            _expect(f"rnn_state[{keys[1]!r}]", params[W_h], shapes[W_h], W_h)
            present = [key in rnn_state for key in keys[2:]]
            if present[0] != present[1]:
                raise ValueError(f"rnn_state has {keys[2 if present[0] else 3]!r} but not "
                                 f"{keys[3 if present[0] else 2]!r}; nn.RNN has both biases or neither")
            b = np.zeros(shapes[b_h], dtype=dtype)
            for key in keys[2:] if present[0] else ():
                arr = _numpy(f"rnn_state[{key!r}]", rnn_state[key], dtype)
                _expect(f"rnn_state[{key!r}]", arr, shapes[b_h], b_h)
                b = b + arr
            params[b_h] = b
    if set(linear_state) != {"weight", "bias"}:
        raise ValueError(f"linear_state must have exactly the keys 'weight' and 'bias' (nn.Linear); "
                         f"got {sorted(linear_state)}")
    for key, name in (("weight", "W_y"), ("bias", "b_y")):
        params[name] = _numpy(f"linear_state[{key!r}]", linear_state[key], dtype)
        _expect(f"linear_state[{key!r}]", params[name], shapes[name], name)
    return {name: params[name] for name in shapes}


def params_to_torch(params: Mapping[str, np.ndarray], num_layers: int, directions: int) -> tuple[dict, dict]:
    """(nn.RNN state dict, nn.Linear state dict) of NumPy arrays (copies) under PyTorch's keys."""
    rnn_state = {}
    for k in range(num_layers):
        for d in range(directions):
            w_ih, w_hh, b_ih, b_hh = torch_keys(k, d)
            W_x, W_h, b_h = (np.array(params[n]) for n in layer_param_names(k, d))
            rnn_state.update({w_ih: W_x, w_hh: W_h, b_ih: b_h, b_hh: np.zeros_like(b_h)})
    return rnn_state, {"weight": np.array(params["W_y"]), "bias": np.array(params["b_y"])}
