"""rnngrad: a general recurrent network with exact, readable, fast BPTT gradients.

    h_t = f(W_h h_{t-1} + W_x x_t + b_h),   y_hat_t = g(W_y h_t + b_y),   L = sum_t L_t(y_hat_t, y_t)

See README.md for the map from each equation of the seed to the function computing it.
"""

from .activations import Activation, Identity, ReLU, Sigmoid, Softmax, Tanh
from .bptt import Gradients, backward
from .gradcheck import GradCheckReport, check_gradients
from .losses import MSE, BinaryCrossEntropy, CrossEntropy, Loss
from .model import RNN, Forward, forward
from .workspace import Workspace

__version__ = "0.1.0"

__all__ = [
    "RNN",
    "Forward",
    "Gradients",
    "Workspace",
    "forward",
    "backward",
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
    "__version__",
]
