"""The NumPy engine: the reference implementation of every loop the other engines may replace.

Each method is a pure function of its arguments, defined beside the maths it belongs to
(the time loops in :mod:`rnngrad.layer`, the output activation in :mod:`rnngrad.head`, the
softmax + cross-entropy rows in :mod:`rnngrad.losses`); this class only gathers them under
the names a compiled engine overrides.
"""

from __future__ import annotations

from .. import head, layer, losses

__all__ = ["NumpyEngine"]


class NumpyEngine:
    """Runs everything in NumPy. Stateless: one instance serves every call."""

    name = "numpy"

    #: h_t = f(z_t + b_h + h_{t-1} W_h^T), t = 1..T (seed §2B); see :func:`rnngrad.layer.recurrence_forward`.
    recurrence_forward = staticmethod(layer.recurrence_forward)
    #: dh_t += dz_{t+1} W_h, dz_t = f'(z_t) dh_t, t = T..1 (seed §3B); see :func:`rnngrad.layer.recurrence_backward`.
    recurrence_backward = staticmethod(layer.recurrence_backward)
    #: a += b_y, y_hat = g(a); see :func:`rnngrad.head.output_activation`.
    output_activation = staticmethod(head.output_activation)
    #: softmax + cross-entropy rows on class indices; see :func:`rnngrad.losses.softmax_cross_entropy_index`.
    softmax_cross_entropy_index = staticmethod(losses.softmax_cross_entropy_index)
    #: dW_x^T for token inputs; see :func:`rnngrad.layer.token_weight_grad`.
    token_weight_grad = staticmethod(layer.token_weight_grad)

    def __repr__(self) -> str:
        return f"<rnngrad engine {self.name!r}>"
