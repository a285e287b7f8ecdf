"""Online training by RTRL: an update every k steps of an unbroken text stream, no truncation.

Truncated BPTT (the trainer's default) stops each chunk's gradient at the chunk's start: the
state crosses the cut, its gradient does not. RTRL (:mod:`rnngrad.rtrl`) carries the
sensitivities P_t = dh_t/dθ forward instead, so the gradient of every step's loss reaches
back to the start of the stream (the epoch's start, where the trainer resets the state):

    for each step t of the chunk:   P_t = diag(f'(z_t)) (W_h P_{t-1} + ∂z_t/∂θ)        (rtrl.rtrl_step)
                                    g += (1 / (k B)) (dL_t/dh_t) P_t                   (reduction "mean")
    after k steps:                  θ <- optimizer(θ, g);  P is kept                   (Trainer.step)

P computed under the parameters before an update is kept after it (Williams & Zipser's
real-time approximation); the first chunk of an epoch has the exact gradient of BPTT over it.
Cost per step: O(B H^2 (H + D)) time and O(B H^2 (H + D)) memory for P, against BPTT's O(B H
(H + D)) per step; docs/derivation.md ("What RTRL costs") has the measured figures.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .rtrl import rtrl_init, rtrl_step

__all__ = ["RTRLGradients"]


class RTRLGradients:
    """``Trainer.batch_gradients`` for ``gradient="rtrl"``: the chunk's loss and gradient by RTRL,
    continuing the sensitivities of the chunks before it in the epoch."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.state = None  # the RTRLState, made at the first chunk of each epoch

    def __call__(self, b, h0, dropout_seed):
        model = self.trainer.model
        k, B = b.x.shape[0], b.x.shape[1]
        if not b.carry or self.state is None:  # an epoch's start: h = 0, P = 0
            self.state = rtrl_init(model, B)
        weight = np.full(B, 1.0 / (k * B), dtype=model.dtype)  # reduction "mean" over the chunk
        loss, grads = 0.0, {name: np.zeros_like(p) for name, p in model.params.items()}
        for t in range(k):
            step = rtrl_step(model, self.state, b.x[t], b.y[t], weight=weight)
            loss += step.loss
            for name, g in step.grads.items():
                grads[name] += g
        return SimpleNamespace(loss=loss, grads=grads, h_last=self.state.h.copy())

    # --- checkpoints: P is part of the run's state ------------------------------------------
    def arrays(self) -> dict:
        """The sensitivities to save (``state/rtrl_P<k>``), or none before the first step."""
        if self.state is None:
            return {}
        return {f"state/rtrl_P{k}": P for k, P in enumerate(self.state.P)}

    def load(self, arrays: dict, h: np.ndarray | None) -> None:
        """Restore the state saved by :meth:`arrays` (h from the checkpoint's carried state)."""
        saved = sorted(k for k in arrays if k.startswith("state/rtrl_P"))
        if not saved or h is None:
            return
        model = self.trainer.model
        h = np.asarray(h)
        state = rtrl_init(model, h.shape[-2], h0=h)
        if len(saved) != len(state.P):
            raise ValueError(f"the checkpoint holds {len(saved)} RTRL sensitivity arrays; this model has "
                             f"{len(state.P)} layers")
        for k, P in enumerate(state.P):
            arr = arrays[f"state/rtrl_P{k}"]
            if arr.shape != P.shape or arr.dtype != P.dtype:
                raise ValueError(f"state/rtrl_P{k} has shape {arr.shape} {arr.dtype}; expected {P.shape} {P.dtype}")
            P[...] = arr
        self.state = state
