"""Generating text from a trained character model."""

from __future__ import annotations

import math

import numpy as np

from .data import Vocabulary
from .model import RNN, forward

__all__ = ["sample"]


def sample(model: RNN, vocab: Vocabulary, length: int, *, prime: str | None = None, temperature: float = 1.0,
           seed=None) -> str:
    """Generate ``length`` characters after ``prime``.

    The model reads ``prime`` (its state after the last character conditions what follows),
    then draws each next character from softmax(a_t / temperature) and feeds it back.
    Temperature < 1 sharpens the distribution (safer, more repetitive), > 1 flattens it.

    Parameters
    ----------
    model : RNN trained on token indices of ``vocab`` (input_size = output_size = len(vocab))
    vocab : Vocabulary
    length : int >= 0, characters to generate
    prime : str, at least one character, every one in ``vocab``; default a newline if the
        vocabulary has one, else its first character
    temperature : float > 0
    seed : int, sequence of ints or numpy.random.Generator

    Returns
    -------
    str, the ``length`` generated characters (without the prime).
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"length must be a non-negative integer; got {length!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number; got {temperature!r}")
    if prime is None:
        prime = "\n" if "\n" in vocab.index else vocab.chars[0]
    if not isinstance(prime, str) or not prime:
        raise ValueError("prime must be a non-empty string (the text the sample continues)")
    if model.input_size != len(vocab) or model.output_size != len(vocab):
        raise ValueError(
            f"model has input_size={model.input_size}, output_size={model.output_size} but the vocabulary "
            f"has {len(vocab)} characters; they must match")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    params = model.checked_params()
    tokens = vocab.encode(prime)[:, None]  # (T, 1)
    h = np.zeros((1, model.hidden_size), dtype=model.dtype)
    out = np.empty(length, dtype=np.intp)
    for i in range(length):
        fwd = forward(params, tokens, h, model.f, model.g)
        h = fwd.h_last
        logits = fwd.a[-1, 0].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        p /= p.sum()
        out[i] = rng.choice(p.size, p=p)
        tokens = out[i:i + 1, None]
    return vocab.decode(out)
