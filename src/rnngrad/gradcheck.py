"""Finite-difference checks of every gradient the model returns.

Central differences, (L(θ + ε e_i) − L(θ − ε e_i)) / 2ε, have error O(ε²) from
truncation and O(u·|L|/ε) from rounding (u the unit roundoff), so they are run in
float64 whatever the model's dtype: with ε = 1e-6 an exact gradient agrees to about
1e-8 relative, and an error in the derivation shows up as O(1). The five-point
stencil (``order=4``) has truncation error O(ε⁴), so ε = 1e-3 balances the two
terms near 1e-11 relative for smooth activations.

The full check perturbs every entry of every parameter, x and h0 (two loss
evaluations each): right for small models. For large ones pass ``directions=k`` to
compare k directional derivatives per array, <∇L, d> against
(L(θ + εd) − L(θ − εd)) / 2ε for random unit d (the check of HIPS/autograd).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import network
from .engines import get_engine
from .model import RNN
from .validation import check_positive_int, check_real, check_seed

__all__ = ["check_gradients", "GradCheckReport", "GradCheckEntry"]


@dataclass
class GradCheckEntry:
    """One array's comparison.

    max_abs_error : max_i |analytic_i − numeric_i| (or of the directional derivatives)
    max_rel_error : max_abs_error / max(max_i |analytic_i|, max_i |numeric_i|) (0 if both are 0)
    """

    name: str
    shape: tuple
    checked: int
    max_abs_error: float
    max_rel_error: float
    passed: bool


@dataclass
class GradCheckReport:
    """Per-name results of :func:`check_gradients`; ``passed`` if every entry passed."""

    entries: dict
    loss: float
    eps: float
    rtol: float
    mode: str
    atol: float = 0.0  #: the absolute floor an entry may pass on instead (see check_gradients)

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.entries.values())

    def __getitem__(self, name: str) -> GradCheckEntry:
        return self.entries[name]

    def table(self) -> str:
        """A Markdown table of the entries."""
        lines = [
            "| gradient | shape | checked | max abs error | max rel error | passed |",
            "|---|---|---:|---:|---:|:---:|",
        ]
        for e in self.entries.values():
            lines.append(
                f"| {e.name} | {e.shape} | {e.checked} | {e.max_abs_error:.2e} | "
                f"{e.max_rel_error:.2e} | {'yes' if e.passed else 'NO'} |"
            )
        return "\n".join(lines)


# (step in units of eps, weight): L'(θ) ≈ sum weight · L(θ + step·eps) / eps.
_STENCILS = {
    2: ((1, 0.5), (-1, -0.5)),
    4: ((2, -1 / 12), (1, 8 / 12), (-1, -8 / 12), (-2, 1 / 12)),
}


def _relative(analytic: np.ndarray, numeric: np.ndarray) -> tuple[float, float]:
    abs_err = float(np.max(np.abs(analytic - numeric), initial=0.0))
    scale = float(max(np.max(np.abs(analytic), initial=0.0), np.max(np.abs(numeric), initial=0.0)))
    if scale == 0.0:
        return abs_err, 0.0 if abs_err == 0.0 else float("inf")
    return abs_err, abs_err / scale


def check_gradients(model: RNN, x, y, h0=None, mask=None, reduction: str = "sum",
                    eps: float = 1e-6, rtol: float = 1e-6, directions: int | None = None,
                    order: int = 2, seed=0, dropout_seed=None, engine=None, lengths=None,
                    atol: float | None = None) -> GradCheckReport:
    """Compare ``model.gradients(...)`` with central finite differences, in float64.

    Parameters
    ----------
    model : RNN (left unchanged; a float64 copy is checked)
    x, y, h0, mask, reduction, lengths : as :meth:`RNN.gradients`
    eps : finite-difference step
    rtol : an array passes when max_rel_error <= rtol, or
    atol : when max_abs_error <= atol: the rounding noise of the differences themselves. Default
        ``8 u max(|L|, 1) / eps`` (u the float64 unit roundoff): a difference of two losses near L
        is uncertain by about u |L|, divided by the step. It keeps an exactly zero or a tiny
        gradient from failing on noise (its relative error would be O(1)), while an error in a
        derivation, O(1) of the array's scale, stays far above it
    directions : None for every entry; an int k for k random directions per array
    order : 2 (three-point central difference, the default) or 4 (five-point
        stencil, truncation error O(eps^4): with eps=1e-3 it resolves about 1e-11
        relative for smooth activations; keep order 2 with a small eps for ReLU,
        whose kink a large step may cross)
    seed : seeds the random directions
    dropout_seed : draws dropout masks once (a model with dropout); every loss evaluation then
        uses those masks, so the check is of the exact gradient for the mask used
    engine : as :meth:`RNN.gradients`

    Returns
    -------
    GradCheckReport with an entry for each parameter (the keys of ``model.params``), "x"
    (float inputs only, time-major) and "h0" (shaped as ``res.dh0``).
    """
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
    if directions is not None:
        directions = check_positive_int("directions", directions)
    if order not in _STENCILS:
        raise ValueError(f"order must be 2 or 4; got {order!r}")
    eps = check_real("eps", eps)
    rtol = check_real("rtol", rtol, positive=False)
    if atol is not None:
        atol = check_real("atol", atol, positive=False)
    rng = check_seed(seed)
    engine = get_engine(engine)
    m = model.astype(np.float64)
    # The analytic gradients first: this also validates every argument.
    res = m.gradients(x, y, h0=h0, mask=mask, reduction=reduction, dropout_seed=dropout_seed, engine=engine,
                      lengths=lengths)
    if atol is None:
        atol = float(8 * np.finfo(np.float64).eps * max(abs(res.loss), 1.0) / eps)
    masks = res.forward.dropout_masks
    # The validated arrays once, for the hundreds of loss evaluations below (each would
    # otherwise check every array again); x and h0 copied, as they are perturbed in place.
    params, x, h0, y_rows, weights, lengths, masks = m._prepare_loss(x, y, h0, mask, reduction, dropout_masks=masks,
                                                                 lengths=lengths)
    tokens = x.ndim == 2
    x, h0 = (x if tokens else x.copy()), h0.copy()
    arch = m.architecture

    arrays = dict(params)
    analytic = dict(res.grads)
    if not tokens:
        arrays["x"] = x
        analytic["x"] = res.dx.swapaxes(0, 1) if m.batch_first else res.dx
    # h0 as the caller shaped it: (B, H) for one layer and direction, else (U, B, H) (a view
    # of the validated array, so perturbing it perturbs what the loss reads).
    arrays["h0"] = h0[0] if res.dh0.ndim == 2 else h0
    analytic["h0"] = res.dh0

    def loss_at() -> float:
        cache = network.forward(params, x, h0, arch, engine, lengths, masks)
        return network.loss(params, cache, y_rows, weights, arch, engine)

    stencil = _STENCILS[order]

    def derivative(arr: np.ndarray, direction: np.ndarray) -> float:
        """Central difference of L as ``arr`` moves along ``direction`` (same shape)."""
        original = arr.copy()
        total = 0.0
        for step, weight in stencil:
            arr[...] = original + (step * eps) * direction
            total += weight * loss_at()
        arr[...] = original
        return total / eps

    entries = {}
    for name, arr in arrays.items():
        if directions is None:
            numeric = np.empty_like(arr)
            basis = np.zeros_like(arr)
            for i in np.ndindex(arr.shape):
                basis[i] = 1.0
                numeric[i] = derivative(arr, basis)
                basis[i] = 0.0
            got, want, checked = analytic[name], numeric, arr.size
        else:
            got, want = np.empty(directions), np.empty(directions)
            for k in range(directions):
                d = rng.standard_normal(arr.shape)
                d /= np.linalg.norm(d)
                got[k] = np.sum(analytic[name] * d)
                want[k] = derivative(arr, d)
            checked = directions
        abs_err, rel_err = _relative(got, want)
        entries[name] = GradCheckEntry(name, tuple(arr.shape), checked, abs_err, rel_err,
                                       rel_err <= rtol or abs_err <= atol)
    return GradCheckReport(entries=entries, loss=res.loss, eps=eps, rtol=rtol, atol=atol,
                           mode=("every entry" if directions is None else f"{directions} directions")
                           + f", order {order}")
