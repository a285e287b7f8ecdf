"""rnngrad: a general recurrent network with exact, readable, fast BPTT gradients.

    h_t = f(W_h h_{t-1} + W_x x_t + b_h),   y_hat_t = g(W_y h_t + b_y),   L = sum_t L_t(y_hat_t, y_t)

Stacked (``num_layers``) and bidirectional networks compose the same layer. See README.md for
the map from each equation of the seed to the function computing it.
"""

from . import engines, network
from .activations import Activation, Identity, ReLU, Sigmoid, Softmax, Tanh
from .gradcheck import GradCheckReport, check_gradients
from .losses import MSE, BinaryCrossEntropy, CrossEntropy, Loss
from .model import RNN
from .network import Forward, Gradients
from .runs import Run, load
from .rtrl import RTRLState, RTRLStep, rtrl_gradients, rtrl_init, rtrl_step, uoro_gradients
from .workspace import Workspace
from .contributions import PerStepContributions, per_step_contributions
from .lyapunov import lyapunov, spectral_radii

from .forward_mode import ForwardTangents, forward_tangents, jvp
from .curvature import LossCurvature, curvature_at, gnvp, hvp
from .hessian_free import HessianFree, RNNObjective

__version__ = "0.2.0"

__all__ = [
    "RNN",
    "load",
    "Run",
    "jvp",
    "forward_tangents",
    "ForwardTangents",
    "hvp",
    "gnvp",
    "curvature_at",
    "LossCurvature",
    "HessianFree",
    "RNNObjective",
    "per_step_contributions",
    "PerStepContributions",
    "lyapunov",
    "spectral_radii",
    "rtrl_gradients",
    "rtrl_init",
    "rtrl_step",
    "RTRLState",
    "RTRLStep",
    "uoro_gradients",
    "Forward",
    "Gradients",
    "Workspace",
    "check_gradients",
    "GradCheckReport",
    "Activation",
    "Tanh",
    "ReLU",
    "Sigmoid",
    "Identity",
    "Softmax",
    "Loss",
    "CrossEntropy",
    "BinaryCrossEntropy",
    "MSE",
    "engines",
    "network",
    "__version__",
]
