"""Synthetic sequence tasks with known baselines, generated time-major for :class:`rnngrad.RNN`.

Each task is a function ``(n, T, rng) -> (x, y, mask)``: n sequences of T steps, drawn
from ``rng`` (a ``numpy.random.Generator`` or an int seed), shaped for
``model.gradients(x, y, mask=mask, reduction="mean")``; ``mask`` is None when every
step counts. With ``reduction="mean"`` the model's loss is directly comparable with the
task's baseline (the loss of the best predictor that uses no memory).

    task      x                 y                 mask           model (D, O, g, loss)              baseline
    adding    (T, n, 2) floats  (T, n, 1) floats  last step      2, 1, identity, mse                1/6 (predict 1)
    copy      (T, n) tokens     (T, n) classes    recall steps   n_symbols+2, n_symbols+1, softmax  ln(n_symbols)
    sine      (T, n, 1) floats  (T, n, 1) floats  None           1, 1, identity, mse                1/2 (predict 0)
    lookahead (T, n) tokens     (T, n) classes    t < T - delay  n_symbols, n_symbols, softmax      ln(n_symbols)

The lookahead task's targets are future inputs: no unidirectional network can beat its
baseline, while a bidirectional one can reach zero loss (its reverse direction has read them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..validation import check_positive_int

__all__ = [
    "adding_problem",
    "copy_task",
    "sine_wave",
    "lookahead_task",
    "ADDING_BASELINE_MSE",
    "SINE_BASELINE_MSE",
    "copy_task_baseline",
    "persistence_mse",
    "Task",
    "TASKS",
]

# The sum s = a + b of two U(0, 1) numbers has mean 1 and variance 2/12, so the constant
# prediction 1 has expected squared error Var(s) = 1/6 ≈ 0.167 (Le, Jaitly & Hinton 2015).
ADDING_BASELINE_MSE = 1.0 / 6.0

# sin(ωt + φ) with φ ~ U(0, 2π) has E[sin²] = 1/2: the error of always predicting 0.
SINE_BASELINE_MSE = 0.5


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed; got {type(rng).__name__}")


def adding_problem(n: int, T: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    At each step the input is a value v_t ~ U(0, 1) and a marker m_t in {0, 1}; exactly
    two markers are 1, one in the first half (t < T // 2) and one in the second half.
    The target, read only at the last step, is the sum of the two marked values.

    Parameters
    ----------
    n : int, sequences (B)
    T : int >= 2, steps
    rng : numpy.random.Generator or int seed

    Returns
    -------
    x : (T, n, 2) float64, ``x[..., 0]`` values, ``x[..., 1]`` markers
    y : (T, n, 1) float64, the sum at t = T - 1 and 0 elsewhere (masked out)
    mask : (T, n) bool, True only at t = T - 1

    Baseline: predicting 1 gives MSE :data:`ADDING_BASELINE_MSE` = 1/6.
    """
    n = check_positive_int("n", n)
    T = check_positive_int("T", T)
    if T < 2:
        raise ValueError(f"T must be at least 2 for the adding problem (two marked steps); got {T}")
    rng = _rng(rng)
    half = T // 2
    values = rng.uniform(0.0, 1.0, size=(T, n))
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    cols = np.arange(n)
    markers = np.zeros((T, n))
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = np.zeros((T, n, 1))
    y[T - 1, :, 0] = values[first, cols] + values[second, cols]
    mask = np.zeros((T, n), dtype=bool)
    mask[T - 1] = True
    return x, y, mask


def copy_task(n: int, T: int, rng, length: int = 5, n_symbols: int = 8
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memorise ``length`` symbols, wait, then reproduce them (after Arjovsky et al. 2016).

    Tokens: symbols 0..n_symbols-1, ``blank = n_symbols``, ``go = n_symbols + 1``.
    Input: the symbols at t = 0..length-1, blanks, the go marker at t = T-length-1, then
    blanks while the model must output the symbols in order at t = T-length..T-1.
    The last symbol is shown at t = length-1 and the first recalled at t = T-length: a delay
    of T - 2·length + 1 steps.

    Parameters
    ----------
    n : int, sequences (B)
    T : int >= 2·length + 1, total steps
    rng : numpy.random.Generator or int seed
    length : int, default 5, symbols to remember
    n_symbols : int, default 8

    Returns
    -------
    x : (T, n) intp token indices in [0, n_symbols + 2)  -> ``input_size = n_symbols + 2``
    y : (T, n) intp classes in [0, n_symbols + 1): the symbols at the recall steps,
        blank elsewhere  -> ``output_size = n_symbols + 1``, softmax, cross_entropy
    mask : (T, n) bool, True at the ``length`` recall steps

    Baseline: :func:`copy_task_baseline` = ln(n_symbols), the mean cross-entropy per
    recall step of guessing uniformly among the symbols.
    """
    n = check_positive_int("n", n)
    T = check_positive_int("T", T)
    length = check_positive_int("length", length)
    n_symbols = check_positive_int("n_symbols", n_symbols)
    if T < 2 * length + 1:
        raise ValueError(
            f"T must be at least 2 * length + 1 = {2 * length + 1} (symbols, go marker, recall); got {T}"
        )
    rng = _rng(rng)
    blank, go = n_symbols, n_symbols + 1
    symbols = rng.integers(0, n_symbols, size=(length, n))
    x = np.full((T, n), blank, dtype=np.intp)
    x[:length] = symbols
    x[T - length - 1] = go
    y = np.full((T, n), blank, dtype=np.intp)
    y[T - length :] = symbols
    mask = np.zeros((T, n), dtype=bool)
    mask[T - length :] = True
    return x, y, mask


def lookahead_task(n: int, T: int, rng, delay: int = 4, n_symbols: int = 8
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Name, at each step, the symbol that comes ``delay`` steps later: y_t = x_{t + delay}.

    The inputs are independent uniform symbols, so the target is independent of everything up
    to step t: a unidirectional network cannot do better than guessing (the baseline ln
    n_symbols, whatever its size or memory), while a bidirectional network's reverse direction
    has read x_{t + delay} when it reaches t and can reach zero loss (it must carry a symbol
    back ``delay`` steps).

    Parameters
    ----------
    n : int, sequences (B)
    T : int > delay, total steps
    rng : numpy.random.Generator or int seed
    delay : int, default 4
    n_symbols : int, default 8

    Returns
    -------
    x : (T, n) intp token indices in [0, n_symbols)  -> ``input_size = n_symbols``
    y : (T, n) intp classes: x_{t + delay}, and 0 for the last ``delay`` steps (masked)
        -> ``output_size = n_symbols``, softmax, cross_entropy
    mask : (T, n) bool, True for t < T - delay (the steps that have a target). All T steps
        are real input: a bidirectional network must read them all, so pass
        ``lengths=np.full(n, T)`` with this mask (otherwise it would be taken as lengths).
    """
    n = check_positive_int("n", n)
    T = check_positive_int("T", T)
    delay = check_positive_int("delay", delay)
    n_symbols = check_positive_int("n_symbols", n_symbols)
    if T <= delay:
        raise ValueError(f"T must exceed delay = {delay} (some step needs a target {delay} steps later); got {T}")
    rng = _rng(rng)
    x = rng.integers(0, n_symbols, size=(T, n)).astype(np.intp)
    y = np.zeros((T, n), dtype=np.intp)
    y[: T - delay] = x[delay:]
    mask = np.zeros((T, n), dtype=bool)
    mask[: T - delay] = True
    return x, y, mask


def copy_task_baseline(n_symbols: int = 8) -> float:
    """ln(n_symbols): mean cross-entropy per recall step of the memoryless uniform guess."""
    return math.log(check_positive_int("n_symbols", n_symbols))


def sine_wave(n: int, T: int, rng, omega: tuple[float, float] = (0.1, 0.5)
              ) -> tuple[np.ndarray, np.ndarray, None]:
    """Next-step regression on sine waves of random frequency and phase.

    ``x_t = sin(ω t + φ)``, ``y_t = x_{t+1} = sin(ω (t + 1) + φ)``, with ω ~ U(omega)
    (radians per step) and φ ~ U(0, 2π) per sequence. Use an identity output and MSE.

    Parameters
    ----------
    n : int, sequences (B)
    T : int, steps
    rng : numpy.random.Generator or int seed
    omega : (low, high), default (0.1, 0.5), range of angular frequencies, 0 < low <= high

    Returns
    -------
    x, y : (T, n, 1) float64;  mask : None (every step counts)

    Baselines: predicting 0 gives MSE :data:`SINE_BASELINE_MSE` = 1/2; repeating the last
    input gives :func:`persistence_mse`, whose expectation is 1 − E[cos ω] (about 0.05 for
    the default range).
    """
    n = check_positive_int("n", n)
    T = check_positive_int("T", T)
    lo, hi = omega
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"omega must be (low, high) with 0 < low <= high; got {omega!r}")
    rng = _rng(rng)
    w = rng.uniform(lo, hi, size=n)
    phi = rng.uniform(0.0, 2 * np.pi, size=n)
    t = np.arange(T + 1)[:, None]
    wave = np.sin(w * t + phi)
    return wave[:-1, :, None], wave[1:, :, None], None


def persistence_mse(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean over (t, b) of ``sum_k (y - x)²``: the error of predicting that the next value
    equals the current input, for next-step regression tasks with D = O (e.g. :func:`sine_wave`).

    x, y : (T, B, O);  mask : (T, B) or None
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"x and y must both have shape (T, B, O); got {x.shape} and {y.shape}")
    err = ((y - x) ** 2).sum(axis=-1)
    if mask is None:
        return float(err.mean())
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != err.shape:
        raise ValueError(f"mask must have shape (T, B) = {err.shape}; got {mask.shape}")
    return float(err[mask].mean())


@dataclass(frozen=True)
class Task:
    """A synthetic task and the model settings that fit it.

    Attributes
    ----------
    name : str
    make : callable (n, T, rng) -> (x, y, mask)
    input_size, output_size : int, D and O for :class:`rnngrad.RNN`
    output_activation, loss : str, g and L_t for :class:`rnngrad.RNN`
    baseline : float, mean loss per counted step (``reduction="mean"``) of the memoryless predictor
    baseline_note : str, what the baseline predicts
    """

    name: str
    make: Callable
    input_size: int
    output_size: int
    output_activation: str
    loss: str
    baseline: float
    baseline_note: str


TASKS = {
    "adding": Task("adding", adding_problem, 2, 1, "identity", "mse", ADDING_BASELINE_MSE,
                   "MSE of always predicting 1"),
    "copy": Task("copy", copy_task, 10, 9, "softmax", "cross_entropy", copy_task_baseline(8),
                 "cross-entropy of guessing uniformly among the 8 symbols"),
    "sine": Task("sine", sine_wave, 1, 1, "identity", "mse", SINE_BASELINE_MSE,
                 "MSE of always predicting 0"),
    "lookahead": Task("lookahead", lookahead_task, 8, 8, "softmax", "cross_entropy", math.log(8),
                      "cross-entropy of guessing uniformly among the 8 symbols, the best a "
                      "unidirectional network can do"),
}
