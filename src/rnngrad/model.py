"""The forward pass of seed §2 as a pure function, and the :class:`RNN` object around it.

Time-major shapes: T time steps, B sequences, D inputs, H hidden units, O outputs.

    z_t     = W_h h_{t-1} + W_x x_t + b_h     (T, B, H)   seed §2B
    h_t     = f(z_t)                          (T, B, H)   seed §2B
    a_t     = W_y h_t + b_y                   (T, B, O)   seed §2A
    y_hat_t = g(a_t)                          (T, B, O)   seed §2A
    L       = sum_t sum_b m_tb L_t(y_hat_tb, y_tb)        seed §2C (m: mask, or 1/count for "mean")

The input projection W_x x_t + b_h for all T·B rows is one matrix product (or, for
token indices, one row lookup) before the time loop; the output layer a = W_y h + b_y
is one product after it. Only the recurrence h_{t-1} -> z_t is inside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from . import _kernels
from .activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS, Activation
from .bptt import OPTIONAL_GRADS, Gradients, backward, loss_weights, output_loss
from .losses import LOSSES, TARGET_KINDS, Loss, resolve_loss
from .validation import (
    check_choice,
    check_dtype,
    check_h0,
    check_inputs,
    check_mask,
    check_need,
    check_params,
    check_positive_int,
    check_seed,
    check_targets,
)
from .workspace import Workspace, buffer, empty

__all__ = ["RNN", "Forward", "forward", "input_projection", "PARAM_NAMES"]

PARAM_NAMES = ("W_x", "W_h", "b_h", "W_y", "b_y")
REDUCTIONS = ("sum", "mean")
RECURRENT_INITS = ("uniform", "identity", "orthogonal")


@dataclass
class Forward:
    """What the forward pass computed; :func:`rnngrad.bptt.backward` takes it as its cache.

    Attributes
    ----------
    x : (T, B, D) floats or (T, B) token indices
    h0 : (B, H) initial hidden state
    h : (T, B, H) hidden states h_1..h_T
    a : (T, B, O) output pre-activations (logits)
    y_hat : (T, B, O) outputs g(a)
    z : (T, B, H) hidden pre-activations, or None when f' is computed from h alone
    h_prev : (T, B, H) h_0..h_{T-1}, the state each step starts from, or None. The forward
        pass keeps h_0 in the slot before h_1 of one (T+1, B, H) array, so this is a view
        of it (no copy), and dW_h = sum_t dz_t^T h_{t-1} is one product over all T·B rows.
    """

    x: np.ndarray
    h0: np.ndarray
    h: np.ndarray
    a: np.ndarray
    y_hat: np.ndarray
    z: np.ndarray | None = None
    h_prev: np.ndarray | None = None

    @property
    def h_last(self) -> np.ndarray:
        """(B, H) the final hidden state h_T, to carry into the next chunk."""
        return self.h[-1]


def input_projection(x: np.ndarray, W_x: np.ndarray, b_h: np.ndarray | None,
                     out: np.ndarray | None = None) -> np.ndarray:
    """W_x x_t + b_h for every t at once: (T, B, H), a new array or ``out``; W_x x_t alone
    if ``b_h`` is None.

    x (T, B, D) floats: one (T·B, D) @ (D, H) product. x (T, B) token indices: the
    one-hot product W_x e_k is column k of W_x, so this is a row lookup in W_x^T.
    ``out``, if given, is a C-contiguous (T, B, H) array of the parameters' dtype.
    """
    if out is None:
        out = np.empty(x.shape[:2] + (W_x.shape[0],), dtype=W_x.dtype)
    if x.ndim == 2:
        np.take(np.ascontiguousarray(W_x.T), x, axis=0, out=out)
    else:
        T, B, D = x.shape
        np.dot(x.reshape(T * B, D), W_x.T, out=out.reshape(T * B, -1))
    if b_h is not None:
        out += b_h
    return out


def forward(params: Mapping[str, np.ndarray], x: np.ndarray, h0: np.ndarray,
            f: Activation, g: Activation, workspace: Workspace | None = None) -> Forward:
    """Run seed §2 over a whole batch of sequences.

    Parameters
    ----------
    params : dict with W_x (H, D), W_h (H, H), b_h (H,), W_y (O, H), b_y (O,)
    x : (T, B, D) floats, or (T, B) integer token indices in [0, D)
    h0 : (B, H)
    f, g : hidden and output activations (f element-wise)
    workspace : optional; h, z, a and y_hat are written into its arrays (see
        :mod:`rnngrad.workspace`)

    Inputs are trusted (see :mod:`rnngrad.validation`); arrays share one float dtype.
    """
    W_h, W_y, b_y = params["W_h"], params["W_y"], params["b_y"]
    T, B = x.shape[:2]
    H = W_h.shape[0]
    # h_0..h_T in one array, h_0 first: h_prev = states[:-1] needs no copy (see Forward).
    dtype = W_h.dtype
    states = empty(workspace, "h", (T + 1, B, H), dtype)
    states[0] = h0
    h = states[1:]
    keep_z = f.derivative_needs_input
    # When f' comes from h alone, h_t overwrites z_t in place: one (T, B, H) array.
    kind = None if keep_z else _kernels.recurrence_kind(f, h)
    # The compiled loop adds b_h in its step (one pass over z fewer); the NumPy loop needs it here.
    z = input_projection(x, params["W_x"], params["b_h"] if kind is None else None,
                         out=buffer(workspace, "z", (T, B, H), dtype) if keep_z else h)
    if kind is not None:  # the same loop compiled (rnngrad[fast]; see _kernels.py)
        _kernels.forward_recurrence(z, h0, W_h, params["b_h"], kind)
    else:
        # A contiguous W_h^T makes each step a plain row-major GEMM (h_{t-1} W_h^T = (W_h h_{t-1})^T).
        if workspace is None:
            W_hT = np.ascontiguousarray(W_h.T)
        else:
            W_hT = workspace.array("W_hT", (H, H), dtype)
            np.copyto(W_hT, W_h.T)
        rec = np.empty((B, H), dtype=z.dtype)
        h_prev = h0
        for t in range(T):
            z_t = z[t]
            np.dot(h_prev, W_hT, out=rec)
            z_t += rec
            h_t = h[t]
            r = f.fn(z_t, out=h_t)
            if r is not h_t:  # a user's activation may return a new array instead
                h_t[...] = r
            h_prev = h_t
    O = W_y.shape[0]
    a = np.dot(h.reshape(T * B, H), W_y.T, out=buffer(workspace, "a", (T * B, O), dtype))
    y_hat = buffer(workspace, "y_hat", (T * B, O), dtype)
    if _kernels.softmax_applies(g, a):  # the same softmax compiled (rnngrad[fast])
        y_hat = _kernels.softmax_with_bias(a, b_y, out=y_hat).reshape(T, B, -1)
        a = a.reshape(T, B, -1)
    elif _kernels.sigmoid_applies(g, a):  # the same sigmoid compiled (rnngrad[fast])
        y_hat = _kernels.sigmoid_with_bias(a, b_y, out=y_hat).reshape(T, B, -1)
        a = a.reshape(T, B, -1)
    else:
        a += b_y
        a = a.reshape(T, B, -1)
        y_hat = g.fn(a) if y_hat is None else g.fn(a, out=y_hat.reshape(T, B, O))
    return Forward(x=x, h0=h0, h=h, a=a, y_hat=y_hat, z=z if keep_z else None, h_prev=states[:-1])


def _resolve_activation(name: str, value, table: dict) -> Activation:
    if isinstance(value, Activation):
        return value
    if isinstance(value, str):
        return table[check_choice(name, value, table)]()
    raise TypeError(
        f"{name} must be a name in {sorted(table)} or an rnngrad.Activation instance; "
        f"got {type(value).__name__}"
    )


class RNN:
    """A general recurrent network with exact backprop-through-time gradients.

    ``h_t = f(W_h h_{t-1} + W_x x_t + b_h)``, ``y_hat_t = g(W_y h_t + b_y)``,
    ``L = sum_t L_t(y_hat_t, y_t)``.

    Parameters
    ----------
    input_size : int
        D, features per step (or vocabulary size for token-index inputs).
    hidden_size : int
        H, hidden units.
    output_size : int
        O, outputs per step.
    hidden_activation : str or Activation, default "tanh"
        f: "tanh", "relu", "sigmoid", "identity", or an element-wise
        :class:`rnngrad.Activation`.
    output_activation : str or Activation, default "softmax"
        g: "softmax", "sigmoid", "identity", or an :class:`rnngrad.Activation`.
    loss : str or Loss, default "cross_entropy"
        L_t: "cross_entropy" (categorical for softmax, binary per unit for sigmoid),
        "binary_cross_entropy", "mse", or an :class:`rnngrad.Loss`.
    dtype : numpy.float32 or numpy.float64, default float64
        Parameters and all computation; inputs are converted to it.
    seed : int or numpy.random.Generator, optional
        Initialisation randomness; the same seed gives the same parameters.
    recurrent_init : {"uniform", "identity", "orthogonal"}, default "uniform"
        W_h initialisation. Every parameter is first drawn from
        U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's nn.RNN convention); "identity" then sets
        W_h = I (Le, Jaitly & Hinton 2015, for ReLU networks), "orthogonal" a random
        orthogonal matrix.

    Attributes
    ----------
    params : dict
        "W_x" (H, D), "W_h" (H, H), "b_h" (H,), "W_y" (O, H), "b_y" (O,). Writing
        into these arrays, or assigning same-shaped arrays, changes the model.
    f, g, loss_fn : the hidden activation, output activation and loss objects.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int,
                 hidden_activation="tanh", output_activation="softmax", loss="cross_entropy",
                 dtype=np.float64, seed=None, recurrent_init: str = "uniform"):
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.output_size = check_positive_int("output_size", output_size)
        self.dtype = check_dtype(dtype)
        self.f = _resolve_activation("hidden_activation", hidden_activation, HIDDEN_ACTIVATIONS)
        if not self.f.elementwise:
            raise ValueError(
                f"hidden_activation must be element-wise (seed §4: f'(z_t) multiplies element-wise); "
                f"{self.f.name!r} is not"
            )
        self.g = _resolve_activation("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        if isinstance(loss, Loss):
            self.loss_fn = loss
        elif isinstance(loss, str):
            self.loss_fn = resolve_loss(check_choice("loss", loss, LOSSES), self.g)
        else:
            raise TypeError(f"loss must be a name in {sorted(LOSSES)} or an rnngrad.Loss; got {type(loss).__name__}")
        if self.loss_fn.needs_probabilities and not self.g.probabilities:
            raise ValueError(
                f"loss {self.loss_fn.name!r} needs probabilities, but output_activation "
                f"{self.g.name!r} does not produce them; use output_activation='softmax' "
                f"(or 'sigmoid' for independent binary outputs), or loss='mse'"
            )
        if self.loss_fn.needs_elementwise_output and not self.g.elementwise:
            raise ValueError(
                f"loss {self.loss_fn.name!r} treats each output as an independent quantity and "
                f"needs an element-wise output activation such as 'sigmoid'; {self.g.name!r} is not")
        if self.loss_fn.target not in TARGET_KINDS:
            raise ValueError(f"loss {self.loss_fn.name!r} has target {self.loss_fn.target!r}; "
                             f"expected one of {list(TARGET_KINDS)}")
        check_choice("recurrent_init", recurrent_init, RECURRENT_INITS)
        self.recurrent_init = recurrent_init
        self.params = self._init_params(check_seed(seed))

    def _init_params(self, rng: np.random.Generator) -> dict:
        H = self.hidden_size
        k = 1.0 / np.sqrt(H)
        params = {
            name: rng.uniform(-k, k, size=shape).astype(self.dtype)
            for name, shape in self.shapes.items()
        }
        if self.recurrent_init == "identity":
            params["W_h"] = np.eye(H, dtype=self.dtype)
        elif self.recurrent_init == "orthogonal":
            q, r = np.linalg.qr(rng.standard_normal((H, H)))
            params["W_h"] = (q * np.sign(np.diag(r))).astype(self.dtype)
        return params

    @property
    def shapes(self) -> dict:
        """The shape of each parameter, keyed as in :attr:`params`."""
        D, H, O = self.input_size, self.hidden_size, self.output_size
        return {"W_x": (H, D), "W_h": (H, H), "b_h": (H,), "W_y": (O, H), "b_y": (O,)}

    def checked_params(self) -> dict:
        """:attr:`params` validated (present, shaped, finite) and in the model's dtype."""
        return check_params(self.params, self.shapes, self.dtype)

    def _prepare(self, x, h0):
        params = self.checked_params()
        x = check_inputs(x, self.input_size, self.dtype)
        h0 = check_h0(h0, x.shape[1], self.hidden_size, self.dtype)
        return params, x, h0

    def _prepare_loss(self, x, y, h0, mask, reduction, workspace=None):
        if workspace is not None and not isinstance(workspace, Workspace):
            raise TypeError(f"workspace must be an rnngrad.Workspace or None; got {type(workspace).__name__}")
        params, x, h0 = self._prepare(x, h0)
        T, B = x.shape[:2]
        check_choice("reduction", reduction, REDUCTIONS)
        mask = check_mask(mask, T, B)
        y = check_targets(y, self.loss_fn, T, B, self.output_size, self.dtype, mask)
        return params, x, h0, y, loss_weights(mask, reduction, T, B, self.dtype)

    def forward(self, x, h0=None) -> Forward:
        """Hidden states and outputs for x.

        Parameters
        ----------
        x : (T, B, D) array of floats, or (T, B) integer token indices in [0, D)
        h0 : (B, H) array, optional (zeros)

        Returns
        -------
        Forward with ``h`` (T, B, H), ``y_hat`` (T, B, O), ``a`` (T, B, O), ``h_last`` (B, H).
        """
        params, x, h0 = self._prepare(x, h0)
        return forward(params, x, h0, self.f, self.g)

    def gradients(self, x, y, h0=None, mask=None, reduction: str = "sum", need=None,
                  workspace: Workspace | None = None) -> Gradients:
        """Loss and every gradient of seed §1 by backpropagation through time.

        Parameters
        ----------
        x : (T, B, D) floats, or (T, B) integer token indices
        y : targets: (T, B, O) floats, or (T, B) integer class indices for
            cross_entropy with a softmax output
        h0 : (B, H), optional (zeros)
        mask : (T, B) of 0/1 or bool, optional; a masked (t, b) adds no loss
        reduction : "sum" (the seed's L) or "mean" (L divided by the number of unmasked (t, b))
        need : collection of gradient names, optional
            Compute only these of "x", "h0", "y_hat" (the parameters and "h" are
            always computed); default all.
        workspace : :class:`rnngrad.Workspace`, optional
            Keep the large arrays of the call in it and reuse them on the next call that
            passes it (no fresh memory to fault in each call). The returned arrays, except
            ``h_last``, are then the workspace's and are overwritten by that next call;
            see :mod:`rnngrad.workspace`.

        Returns
        -------
        :class:`Gradients` with ``loss`` (float), ``grads`` (dict:
        "W_x", "W_h", "b_h", "W_y", "b_y" shaped as params; "h" (T, B, H) total dL/dh_t;
        "y_hat" (T, B, O); "x" (T, B, D) for float inputs; "h0" (B, H)), ``h_last`` (B, H)
        and ``forward`` (the :class:`Forward` cache).
        """
        need = check_need(need, OPTIONAL_GRADS)  # before the forward pass: fail fast
        params, x, h0, y, weights = self._prepare_loss(x, y, h0, mask, reduction, workspace)
        cache = forward(params, x, h0, self.f, self.g, workspace)
        return backward(params, cache, y, weights, self.f, self.g, self.loss_fn, need=need,
                        workspace=workspace)

    def loss(self, x, y, h0=None, mask=None, reduction: str = "sum",
             workspace: Workspace | None = None) -> float:
        """The loss L alone (no backward pass); arguments as :meth:`gradients` (a workspace
        passed here overwrites the results of an earlier call with it, too)."""
        params, x, h0, y, weights = self._prepare_loss(x, y, h0, mask, reduction, workspace)
        cache = forward(params, x, h0, self.f, self.g, workspace)
        return output_loss(cache, y, weights, self.g, self.loss_fn, workspace)

    def astype(self, dtype) -> "RNN":
        """A copy of this model with parameters (and computation) in ``dtype``."""
        new = object.__new__(RNN)
        new.__dict__.update(self.__dict__)
        new.dtype = check_dtype(dtype)
        new.params = {k: np.array(v, dtype=new.dtype) for k, v in self.params.items()}
        return new

    def copy(self) -> "RNN":
        """An independent copy (parameters copied)."""
        return self.astype(self.dtype)

    def __repr__(self) -> str:
        return (
            f"RNN(input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"output_size={self.output_size}, hidden_activation={self.f.name!r}, "
            f"output_activation={self.g.name!r}, loss={self.loss_fn.name!r}, "
            f"dtype={self.dtype.name})"
        )
