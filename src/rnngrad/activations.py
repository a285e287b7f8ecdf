"""Activations f (hidden) and g (output): each value beside its derivative.

Seed §2 uses two activations: ``h_t = f(z_t)`` with ``z_t = W_h h_{t-1} + W_x x_t + b_h``
and ``y_hat_t = g(a_t)`` with ``a_t = W_y h_t + b_y``. Seed §4 notes that f'(z_t)
multiplies element-wise. Backprop needs, for each activation, the vector-Jacobian
product (VJP) ``dz = J_f(z)^T dout``:

* for an element-wise activation the Jacobian is diagonal, so the VJP is
  ``dout * f'(z)`` (:meth:`Activation.derivative` gives f'(z));
* softmax is not element-wise: its Jacobian is ``diag(s) - s s^T`` and its VJP is
  ``s * (dout - <dout, s>)`` (:meth:`Softmax.vjp`). The (O, O) Jacobian is never formed.

Derivatives are computed from the stored *output* where that is possible
(tanh' = 1 - h^2, sigmoid' = s(1 - s), relu' = [h > 0]), as in HIPS/autograd, so the
backward pass needs no recomputation and the forward pass need not keep z.

Writing your own
----------------
Subclass :class:`Activation` and implement ``fn`` and ``derivative`` (element-wise
activations; usable as f or g), or ``fn`` and ``vjp`` with ``elementwise = False``
(usable as g only). Set ``probabilities = True`` if the outputs are probabilities
that a cross-entropy loss may take, and ``derivative_needs_input = False`` only if
``derivative(z, out)`` never reads ``z`` (it then receives ``z=None``)::

    class Softsign(rnngrad.Activation):
        name = "softsign"
        def fn(self, z, out=None):
            return np.divide(z, 1 + np.abs(z), out=out)
        def derivative(self, z, out):
            return 1 / (1 + np.abs(z)) ** 2
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "Activation",
    "Tanh",
    "ReLU",
    "Sigmoid",
    "Identity",
    "Softmax",
    "HIDDEN_ACTIVATIONS",
    "OUTPUT_ACTIVATIONS",
    "log_sigmoid",
    "log_softmax",
]


class Activation:
    """Base class of f and g. Arrays have any leading shape; the last axis is units.

    Attributes
    ----------
    name : str
        Name used in reprs, errors and checkpoints.
    elementwise : bool
        True if out[..., k] depends on z[..., k] only. Hidden activations must be.
    probabilities : bool
        True if outputs lie in [0, 1] and may be fed to a cross-entropy loss.
    derivative_needs_input : bool
        False if :meth:`derivative` is computed from the output alone; the forward
        pass then does not keep the pre-activations z.
    kernel : str or None
        The name of the same formula in a compiled engine (see :mod:`rnngrad.engines`), or
        None: the engine then runs this object's own ``fn`` and ``derivative``. A subclass
        that redefines ``fn``, ``derivative`` or ``vjp`` has ``kernel = None`` unless it sets
        one itself, since the compiled formula would no longer be its maths.
    """

    name: str = "activation"
    elementwise: bool = True
    probabilities: bool = False
    derivative_needs_input: bool = True
    kernel: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kernel" not in cls.__dict__ and any(m in cls.__dict__ for m in ("fn", "derivative", "vjp")):
            cls.kernel = None

    def fn(self, z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Value f(z), same shape as z; written into ``out`` when given."""
        raise NotImplementedError

    def derivative(self, z: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """Element-wise derivative f'(z), given z and the stored output f(z)."""
        raise NotImplementedError

    def vjp(self, dout: np.ndarray, z: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """Vector-Jacobian product dL/dz = J(z)^T dL/dout, shape of z."""
        return dout * self.derivative(z, out)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self.fn(z)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Tanh(Activation):
    """f(z) = tanh(z); f'(z) = 1 - tanh(z)^2, from the output."""

    name = "tanh"
    kernel = "tanh"
    derivative_needs_input = False

    def fn(self, z, out=None):
        return np.tanh(z, out=out)

    def derivative(self, z, out):
        return 1 - out * out


class ReLU(Activation):
    """f(z) = max(z, 0); f'(z) = 1 if z > 0 else 0 (0 at z = 0, as PyTorch), from the output."""

    name = "relu"
    kernel = "relu"
    derivative_needs_input = False

    def fn(self, z, out=None):
        return np.maximum(z, 0, out=out)

    def derivative(self, z, out):
        # out > 0 exactly when z > 0, so the output suffices.
        return (out > 0).astype(out.dtype)


class Sigmoid(Activation):
    """f(z) = 1 / (1 + e^{-z}); f'(z) = s (1 - s), from the output s."""

    name = "sigmoid"
    kernel = "sigmoid"
    probabilities = True
    derivative_needs_input = False

    def fn(self, z, out=None):
        # 1 / (1 + exp(-z)) overflows exp for z < -709 (float64); with e = exp(-|z|), which
        # never overflows, s = 1 / (1 + e) for z >= 0 and e / (1 + e) for z < 0, each a
        # division by a number in [1, 2]. The branch is taken by arithmetic, numerator
        # e·[z < 0] + (1 - [z < 0]) (exact: one of the two terms is 0), not by np.where or a
        # where= mask, which run about ten times slower than a plain pass.
        # out may be z itself (the forward pass works in place), so read z first.
        z = np.asarray(z)
        if z.dtype.kind in "biu":  # integers in, floats out (as np.exp gives)
            z = z.astype(np.float64)
        negative = (z < 0).astype(z.dtype)
        e = np.abs(z)
        np.negative(e, out=e)
        np.exp(e, out=e)
        numerator = e * negative
        numerator += 1 - negative
        e += 1
        return np.divide(numerator, e, out=out)

    def derivative(self, z, out):
        return out * (1 - out)


class Identity(Activation):
    """f(z) = z; f'(z) = 1."""

    name = "identity"
    kernel = "identity"
    derivative_needs_input = False

    def fn(self, z, out=None):
        if out is None:
            return z.copy()
        np.copyto(out, z)
        return out

    def derivative(self, z, out):
        return np.ones_like(out)

    def vjp(self, dout, z, out):
        return dout


class Softmax(Activation):
    """g(a)_k = exp(a_k) / sum_j exp(a_j) over the last axis.

    Jacobian ``J = diag(s) - s s^T`` (symmetric), so the VJP is
    ``J^T g = s * g - s <s, g> = s * (g - <g, s>)``: O(O) per row instead of O(O^2).
    """

    name = "softmax"
    kernel = "softmax"
    elementwise = False
    probabilities = True
    derivative_needs_input = False

    def fn(self, z, out=None):
        # Subtracting the row maximum leaves the value unchanged and keeps exp <= 1.
        r = np.subtract(z, z.max(axis=-1, keepdims=True), out=out)
        np.exp(r, out=r)
        r /= r.sum(axis=-1, keepdims=True)
        return r

    def derivative(self, z, out):
        raise TypeError("softmax is not element-wise; use Softmax.vjp")

    def vjp(self, dout, z, out):
        inner = np.einsum("...k,...k->...", dout, out)[..., None]
        return out * (dout - inner)


def log_softmax(a: np.ndarray) -> np.ndarray:
    """log softmax(a) over the last axis, exact for logits of any size (no log(0))."""
    shifted = a - a.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def log_sigmoid(a: np.ndarray) -> np.ndarray:
    """log sigmoid(a) = -log(1 + e^{-a}) = min(a, 0) - log1p(e^{-|a|}), never overflowing."""
    return np.minimum(a, 0) - np.log1p(np.exp(-np.abs(a)))


HIDDEN_ACTIVATIONS = {cls.name: cls for cls in (Tanh, ReLU, Sigmoid, Identity)}
OUTPUT_ACTIVATIONS = {cls.name: cls for cls in (Softmax, Sigmoid, Identity)}
