"""Independent oracle: the seed's model written directly in PyTorch, differentiated by autograd.

Nothing here calls rnngrad's maths; it shares only the conventions (time-major
arrays, row vectors, L = sum_t sum_b w_tb L_t).
"""

from __future__ import annotations

import numpy as np
import torch

HIDDEN = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "identity": lambda z: z,
}
OUTPUT = {
    "softmax": lambda a: torch.softmax(a, dim=-1),
    "sigmoid": torch.sigmoid,
    "identity": lambda a: a,
}


def per_step_loss(loss: str, output: str, y_hat, y):
    """Per-(t, b) loss from y_hat (so that autograd gives dL/dy_hat)."""
    if loss == "mse":
        return ((y_hat - y) ** 2).sum(-1)
    if output == "sigmoid":  # binary cross-entropy per unit
        return -(y * torch.log(y_hat) + (1 - y) * torch.log1p(-y_hat)).sum(-1)
    if y.dtype in (torch.int64, torch.int32):
        return -torch.log(torch.gather(y_hat, -1, y.unsqueeze(-1))).squeeze(-1)
    return -(y * torch.log(y_hat)).sum(-1)


def reference(params, x, y, *, hidden="tanh", output="softmax", loss="cross_entropy",
              h0=None, mask=None, reduction="sum", dtype=torch.float64):
    """Loss and gradients by torch autograd.

    Returns (loss: float, grads: dict of numpy arrays with keys W_x, W_h, b_h, W_y, b_y,
    h, y_hat, x (float inputs), h0).
    """
    P = {k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=True) for k, v in params.items()}
    H = P["W_h"].shape[0]
    x_np = np.asarray(x)
    tokens = x_np.ndim == 2
    if tokens:
        X = torch.nn.functional.one_hot(torch.tensor(x_np, dtype=torch.int64), P["W_x"].shape[1]).to(dtype)
    else:
        X = torch.tensor(x_np, dtype=dtype, requires_grad=True)
    T, B = X.shape[0], X.shape[1]
    h_prev = torch.zeros(B, H, dtype=dtype) if h0 is None else torch.tensor(np.asarray(h0), dtype=dtype)
    h_prev.requires_grad_(True)
    H0 = h_prev
    f, g = HIDDEN[hidden], OUTPUT[output]
    hs, y_hats = [], []
    for t in range(T):
        z = h_prev @ P["W_h"].T + X[t] @ P["W_x"].T + P["b_h"]
        h = f(z)
        h.retain_grad()
        hs.append(h)
        a = h @ P["W_y"].T + P["b_y"]
        y_hat = g(a)
        y_hat.retain_grad()
        y_hats.append(y_hat)
        h_prev = h
    y_np = np.asarray(y)
    Y = torch.tensor(y_np, dtype=torch.int64 if y_np.dtype.kind in "iu" else dtype)
    rows = torch.stack([per_step_loss(loss, output, y_hats[t], Y[t]) for t in range(T)])  # (T, B)
    w = torch.ones(T, B, dtype=dtype) if mask is None else torch.tensor(np.asarray(mask), dtype=dtype)
    if reduction == "mean":
        w = w / w.sum()
    # Masked rows may hold garbage targets; where() keeps their inf/nan out of the sum.
    L = torch.where(w != 0, w * rows, torch.zeros((), dtype=dtype)).sum()
    L.backward()
    grads = {k: v.grad.numpy() for k, v in P.items()}
    grads["h"] = torch.stack([h.grad for h in hs]).numpy()
    grads["y_hat"] = torch.stack([yh.grad for yh in y_hats]).numpy()
    if not tokens:
        grads["x"] = X.grad.numpy()
    grads["h0"] = H0.grad.numpy()
    return L.item(), grads


# --- stacked and bidirectional networks -------------------------------------------------------

def _torch(a, dtype):
    return torch.tensor(np.asarray(a), dtype=dtype)


def _inputs(x, D, dtype):
    x_np = np.asarray(x)
    if x_np.ndim == 2:  # token indices: one-hot rows, so nn.RNN can read them
        return torch.nn.functional.one_hot(torch.tensor(x_np, dtype=torch.int64), D).to(dtype), True
    return torch.tensor(x_np, dtype=dtype, requires_grad=True), False


def _loss_from_outputs(y_hats, y, mask, loss, output, reduction, dtype):
    T, B = y_hats.shape[:2]
    y_np = np.asarray(y)
    Y = torch.tensor(y_np, dtype=torch.int64 if y_np.dtype.kind in "iu" else dtype)
    if mask is not None and Y.dtype == torch.int64:
        Y = torch.where(torch.tensor(np.asarray(mask, dtype=bool)), Y, 0)  # padding may be any integer
    rows = torch.stack([per_step_loss(loss, output, y_hats[t], Y[t]) for t in range(T)])
    w = torch.ones(T, B, dtype=dtype) if mask is None else torch.tensor(np.asarray(mask), dtype=dtype)
    if reduction == "mean":
        w = w / w.sum()
    return torch.where(w != 0, w * rows, torch.zeros((), dtype=dtype)).sum()


def deep_reference(rnn_state, linear_state, x, y, *, num_layers, bidirectional, hidden="tanh",
                   output="softmax", loss="cross_entropy", h0=None, mask=None, reduction="sum",
                   dropout_masks=None, dtype=torch.float64):
    """A stacked, optionally bidirectional RNN written out step by step in torch, from PyTorch
    state dicts (nn.RNN keys), differentiated by autograd.

    The reverse direction of sequence b reads x_{l_b - 1}, ..., x_0 (l_b its number of valid
    steps in ``mask``); its state at t is h_rev[t] for t < l_b and zero at padding, as
    pad_packed_sequence gives. Returns (loss, grads) with grads keyed by the state-dict keys
    (weight_ih_l0, ..., "linear.weight", "linear.bias") and "dh" (U, T, B, H) total dL/dh_t of
    every layer and direction, "dy_hat", "x" (float inputs), "h0" (U, B, H).
    """
    P = {k: _torch(v, dtype).requires_grad_(True) for k, v in rnn_state.items()}
    Wy, by = (_torch(linear_state[k], dtype).requires_grad_(True) for k in ("weight", "bias"))
    X, tokens = _inputs(x, P["weight_ih_l0"].shape[1], dtype)
    T, B = X.shape[:2]
    H = P["weight_hh_l0"].shape[0]
    dirs = 2 if bidirectional else 1
    U = num_layers * dirs
    H0 = (torch.zeros(U, B, H, dtype=dtype) if h0 is None else _torch(np.asarray(h0).reshape(U, B, H), dtype))
    H0.requires_grad_(True)
    lengths = [T] * B if mask is None else np.asarray(mask, dtype=bool).sum(0).tolist()
    f = HIDDEN[hidden]
    states = []  # every unit's states, each a list over t of (B, H), retained for their grads
    inp = X
    for k in range(num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            W_ih, W_hh = P["weight_ih" + sfx], P["weight_hh" + sfx]
            b = P.get("bias_ih" + sfx, 0) + P.get("bias_hh" + sfx, 0)
            cells = [[None] * B for _ in range(T)]  # cells[t][b]: the (H,) state, None at padding
            for bi in range(B):  # one sequence at a time: each reverse pass starts at its own end
                h = H0[k * dirs + d, bi]
                order = range(lengths[bi]) if d == 0 else range(lengths[bi] - 1, -1, -1)
                if d == 0 and not bidirectional:
                    order = range(T)  # a unidirectional network runs over every step
                for t in order:
                    h = f(inp[t, bi] @ W_ih.T + h @ W_hh.T + b)
                    h.retain_grad()  # its grad is the total dL/dh_t: every path, the recursion too
                    cells[t][bi] = h
            zero = torch.zeros(H, dtype=dtype)
            states.append(cells)
            outs.append(torch.stack([torch.stack([c if c is not None else zero for c in row]) for row in cells]))
        inp = torch.cat(outs, dim=-1) if dirs == 2 else outs[0]
        if dropout_masks is not None and k < num_layers - 1:
            inp = inp * _torch(dropout_masks[k], dtype)
    y_hats = OUTPUT[output](inp @ Wy.T + by)
    y_hats.retain_grad()
    L = _loss_from_outputs(y_hats, y, mask, loss, output, reduction, dtype)
    L.backward()
    grads = {k: v.grad.numpy() for k, v in P.items()}
    grads["linear.weight"], grads["linear.bias"] = Wy.grad.numpy(), by.grad.numpy()
    grads["dh"] = np.array([[[np.zeros(H) if c is None or c.grad is None else c.grad.numpy() for c in row]
                             for row in cells] for cells in states])
    grads["dy_hat"] = y_hats.grad.numpy()
    if not tokens:
        grads["x"] = X.grad.numpy()
    grads["h0"] = H0.grad.numpy()
    return L.item(), grads


def nn_rnn_reference(rnn_state, linear_state, x, y, *, num_layers, bidirectional, hidden="tanh",
                     output="softmax", loss="cross_entropy", h0=None, mask=None, reduction="sum",
                     dtype=torch.float64, batch_first=False):
    """The same through torch.nn.RNN itself (tanh or relu), with pack_padded_sequence for a mask.

    Returns (loss, grads, h_n) with grads keyed as nn.RNN's parameters plus "linear.weight",
    "linear.bias", "dh_top" (T, B, C) dL/d(the top layer's output), "dy_hat", "x", "h0".
    With ``batch_first``, x, y and mask are (B, T, ...) and nn.RNN runs with batch_first=True
    (pack_padded_sequence and pad_packed_sequence too); "dh_top", "dy_hat" and "x" are then
    (B, T, ...), h0 and h_n stay (U, B, H).
    """
    D = np.asarray(rnn_state["weight_ih_l0"]).shape[1]
    H = np.asarray(rnn_state["weight_hh_l0"]).shape[0]
    rnn = torch.nn.RNN(D, H, num_layers=num_layers, nonlinearity=hidden, bidirectional=bidirectional,
                       dtype=dtype, batch_first=batch_first)
    rnn.load_state_dict({k: _torch(v, dtype) for k, v in rnn_state.items()})
    lin = torch.nn.Linear(2 * H if bidirectional else H, np.asarray(linear_state["weight"]).shape[0], dtype=dtype)
    lin.load_state_dict({k: _torch(v, dtype) for k, v in linear_state.items()})
    X, tokens = _inputs(x, D, dtype)
    T, B = X.shape[:2][::-1] if batch_first else X.shape[:2]
    time_axis = 1 if batch_first else 0
    U = num_layers * (2 if bidirectional else 1)
    H0 = (torch.zeros(U, B, H, dtype=dtype) if h0 is None else _torch(np.asarray(h0).reshape(U, B, H), dtype))
    H0.requires_grad_(True)
    if mask is None:
        out, h_n = rnn(X, H0)
    else:
        lengths = torch.tensor(np.asarray(mask, dtype=bool).sum(time_axis))
        packed = torch.nn.utils.rnn.pack_padded_sequence(X, lengths, batch_first=batch_first, enforce_sorted=False)
        out, h_n = rnn(packed, H0)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    out.retain_grad()
    y_hats = OUTPUT[output](lin(out))
    y_hats.retain_grad()
    if batch_first:  # the loss reads time-major rows
        L = _loss_from_outputs(y_hats.transpose(0, 1), np.asarray(y).swapaxes(0, 1),
                               None if mask is None else np.asarray(mask).swapaxes(0, 1), loss, output,
                               reduction, dtype)
    else:
        L = _loss_from_outputs(y_hats, y, mask, loss, output, reduction, dtype)
    L.backward()
    grads = {k: p.grad.numpy() for k, p in rnn.named_parameters()}
    grads["linear.weight"], grads["linear.bias"] = lin.weight.grad.numpy(), lin.bias.grad.numpy()
    grads["dh_top"] = out.grad.numpy()
    grads["dy_hat"] = y_hats.grad.numpy()
    if not tokens:
        grads["x"] = X.grad.numpy()
    grads["h0"] = H0.grad.numpy()
    return L.item(), grads, h_n.detach().numpy()
