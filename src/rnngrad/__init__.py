"""rnngrad: a general recurrent network with exact, readable, fast BPTT gradients.

    h_t = f(W_h h_{t-1} + W_x x_t + b_h),   y_hat_t = g(W_y h_t + b_y),   L = sum_t L_t(y_hat_t, y_t)

Stacked (``num_layers``) and bidirectional networks compose the same layer. See README.md for
the map from each equation of the seed to the function computing it.

The names below are imported on first use (PEP 562), so ``import rnngrad`` costs nothing until
one is used: the ``rnngrad`` command installs its Ctrl-C handling before NumPy is imported (see
:mod:`rnngrad._launch`), and ``rnngrad.distributed`` imports Dask only when it is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.3.0"

# name -> the module that defines it
_EXPORTS = {
    "RNN": "model", "Forward": "network", "Gradients": "network", "Workspace": "workspace",
    "load": "runs", "Run": "runs",
    "check_gradients": "gradcheck", "GradCheckReport": "gradcheck",
    "Activation": "activations", "Tanh": "activations", "ReLU": "activations", "Sigmoid": "activations",
    "Identity": "activations", "Softmax": "activations",
    "Loss": "losses", "CrossEntropy": "losses", "BinaryCrossEntropy": "losses", "MSE": "losses",
    "per_step_contributions": "contributions", "PerStepContributions": "contributions",
    "lyapunov": "dynamics", "spectral_radii": "dynamics",
    "jvp": "forward_mode", "forward_tangents": "forward_mode", "ForwardTangents": "forward_mode",
    "hvp": "curvature", "gnvp": "curvature", "curvature_at": "curvature", "LossCurvature": "curvature",
    "HessianFree": "hessian_free", "RNNObjective": "hessian_free",
    "rtrl_gradients": "rtrl", "rtrl_init": "rtrl", "rtrl_step": "rtrl", "RTRLState": "rtrl",
    "RTRLStep": "rtrl", "uoro_gradients": "rtrl",
}
# Submodules reachable as attributes without their own import statement (rnngrad.network, ...).
_SUBMODULES = ("engines", "network", "layer", "head", "train", "checkpoint", "data", "optim", "schedules",
               "sample", "diagnostics", "plots", "distributed", "interop", "dynamics", "contributions",
               "threads")

__all__ = [*_EXPORTS, "engines", "network", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'rnngrad' has no attribute {name!r}")
    globals()[name] = value  # later uses are plain attribute lookups
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
