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
