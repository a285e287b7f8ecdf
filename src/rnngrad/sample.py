"""Generating text from a trained character model."""

from __future__ import annotations

import numbers

import numpy as np

from .data import Vocabulary
from . import network
from .engines import get_engine
from .model import RNN
from .validation import check_real, check_seed

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
    seed : None, a non-negative int, a non-empty sequence of them or a numpy.random.Generator

    Returns
    -------
    str, the ``length`` generated characters (without the prime).
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"length must be a non-negative integer; got {length!r}")
    temperature = check_real("temperature", temperature)
    if prime is None:
        prime = "\n" if "\n" in vocab.index else vocab.chars[0]
    if not isinstance(prime, str) or not prime:
        raise ValueError("prime must be a non-empty string (the text the sample continues)")
    if model.input_size != len(vocab) or model.output_size != len(vocab):
        raise ValueError(
            f"model has input_size={model.input_size}, output_size={model.output_size} but the vocabulary "
            f"has {len(vocab)} characters; they must match")
    if model.bidirectional:
        raise ValueError("a bidirectional model cannot generate text: its reverse direction reads the "
                         "characters after each position, which do not exist yet; train a unidirectional one")
    rng = _rng(seed)
    params, arch, engine = model.checked_params(), model.architecture, get_engine()
    tokens = vocab.encode(prime)[:, None]  # (T, 1)
    h = np.zeros((arch.units, 1, model.hidden_size), dtype=model.dtype)
    out = np.empty(length, dtype=np.intp)
    for i in range(length):
        fwd = network.forward(params, tokens, h, arch, engine)
        h = fwd.h_last
        logits = fwd.a[-1, 0].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        p /= p.sum()
        out[i] = rng.choice(p.size, p=p)
        tokens = out[i:i + 1, None]
    return vocab.decode(out)


def _rng(seed) -> np.random.Generator:
    """A Generator from ``seed`` (see :func:`sample`), refusing a negative seed with a message naming it."""
    if isinstance(seed, (list, tuple)):
        if not seed or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in seed):
            raise ValueError(f"seed must be None, a non-negative integer, a non-empty sequence of them or a "
                             f"numpy.random.Generator; got {seed!r}")
        return np.random.default_rng([int(s) for s in seed])
    return check_seed(seed)
