"""Generating text from a trained character model.

The model reads the prime, then each next character is drawn from

    p(x_{t+1} = k | x_1..x_t) = softmax(a_t / tau)_k,   a_t = W_y h_t + b_y

(seed §2A with the output activation g = softmax, its logits divided by the temperature tau)
and fed back as the next input, h_{t+1} = f(W_h h_t + W_x x_{t+1} + b_h) (seed §2B). The
derivation and the choice of defaults are in docs/derivation.md, "Sampling text".

* :func:`iter_sample` yields the characters one at a time, as they are drawn (the command
  prints them that way); :func:`sample` joins them, so both give the same text for one seed.
* :data:`DEFAULT_TEMPERATURE` is the one default of the library, the trainer and the command.
* :func:`default_prime` is the prime used when none is given: one visible character, so that
  a model that has learnt "after a newline comes indentation" does not spend the whole sample
  on whitespace.
"""

from __future__ import annotations

import numbers
from typing import Iterator

import numpy as np

from . import network
from .activations import Softmax
from .data import Vocabulary
from .engines import get_engine
from .model import RNN
from .validation import check_real, check_seed

__all__ = ["DEFAULT_TEMPERATURE", "default_prime", "iter_sample", "sample", "unknown_characters",
           "vocabulary_preview"]

#: The temperature of :func:`sample`, :func:`iter_sample`, ``Trainer.sample`` and ``rnngrad sample``.
#: 0.8 rather than 1.0: a small character model keeps some probability on characters that are
#: rarely right, and at tau = 1 a few hundred characters draw several of them (typos that derail
#: the next words). Dividing the logits by tau raises each ratio p_k / p_max to the power 1 / tau:
#: at 0.8 a character 20 times less likely than the best becomes 42 times less likely, while the
#: near-ties that give variety stay near-ties (lower temperatures lose that variety and fall into
#: loops: runs of spaces, repeated words). tau = 1.0 draws from the model's own distribution, the
#: one its loss measures: pass it when that is what you want.
DEFAULT_TEMPERATURE = 0.8

_SOFTMAX = Softmax()


def sample(model: RNN, vocab: Vocabulary, length: int, *, prime: str | None = None,
           temperature: float = DEFAULT_TEMPERATURE, seed=None) -> str:
    """Generate ``length`` characters after ``prime``: ``"".join(iter_sample(...))``.

    Parameters and errors as :func:`iter_sample`.

    Returns
    -------
    str, the ``length`` generated characters (without the prime).
    """
    return "".join(iter_sample(model, vocab, length, prime=prime, temperature=temperature, seed=seed))


def iter_sample(model: RNN, vocab: Vocabulary, length: int, *, prime: str | None = None,
                temperature: float = DEFAULT_TEMPERATURE, seed=None) -> Iterator[str]:
    """Yield ``length`` characters generated after ``prime``, each as soon as it is drawn.

    The model reads ``prime`` from a zero state (its state after the last character conditions
    what follows), then draws each next character from softmax(a_t / temperature) and feeds it
    back. Temperature < 1 sharpens the distribution (safer, more repetitive), > 1 flattens it.
    Every argument is checked when this is called, before the first character is asked for;
    the generator then runs one model step per character.

    Parameters
    ----------
    model : RNN with a softmax output, trained on token indices of ``vocab``
        (input_size = output_size = V = len(vocab)); unidirectional
    vocab : Vocabulary
    length : int >= 0, characters to generate
    prime : str, at least one character, every one in ``vocab``; default
        :func:`default_prime` (one visible character the model picks)
    temperature : float > 0 and finite; default :data:`DEFAULT_TEMPERATURE`
    seed : None, a non-negative int, a non-empty sequence of them or a numpy.random.Generator

    Yields
    ------
    str, one character of ``vocab`` at a time, ``length`` of them.
    """
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
        raise ValueError(f"length must be a non-negative integer; got {length!r}")
    temperature = check_real("temperature", temperature)
    _check_model(model, vocab)
    if prime is None:
        prime = default_prime(model, vocab)
    _check_prime(prime, vocab)
    rng = _rng(seed)
    return _generate(model, vocab, vocab.encode(prime), int(length), temperature, rng)


def default_prime(model: RNN, vocab: Vocabulary) -> str:
    """The prime used when none is given: the visible (non-whitespace) character the model
    thinks most likely to begin a line.

    It is the argmax over the visible characters k of p(k | "\\n") = softmax(a_1)_k, with
    a_1 the logits after the model reads a newline from a zero state (for a vocabulary without
    a newline, the mean of softmax(a_1) over every one-character input). Deterministic, so it
    consumes no random numbers: ``sample(..., prime=None)`` equals
    ``sample(..., prime=default_prime(model, vocab))`` for every seed. The sample then starts from
    a zero state reading that character: a newline prime would leave the model where it most
    expects indentation, and at low temperatures many samples never leave it. A vocabulary of
    whitespace only gets a newline (or its first character).

    Returns
    -------
    str of one character of ``vocab``.
    """
    _check_model(model, vocab)
    visible = np.array([not c.isspace() for c in vocab.chars])
    if not visible.any():
        return "\n" if "\n" in vocab.index else vocab.chars[0]
    if "\n" in vocab.index:
        x = np.array([[vocab.index["\n"]]])         # (1, 1): one sequence, a newline
    else:
        x = np.arange(len(vocab))[None, :]          # (1, V): every character, one sequence each
    params, arch, engine = model.checked_params(), model.architecture, get_engine()
    h0 = np.zeros((arch.units, x.shape[1], model.hidden_size), dtype=model.dtype)
    a = network.forward(params, x, h0, arch, engine).a[0].astype(np.float64)  # (B, V)
    p = _SOFTMAX.fn(a).mean(axis=0)                                           # (V,)
    return vocab.chars[int(np.argmax(np.where(visible, p, -1.0)))]


def unknown_characters(text: str, vocab: Vocabulary) -> list[str]:
    """The distinct characters of ``text`` that ``vocab`` lacks, in order of first appearance."""
    return list(dict.fromkeys(c for c in text if c not in vocab.index))


def vocabulary_preview(vocab: Vocabulary, limit: int = 40) -> str:
    """A few of ``vocab``'s characters for a message: its visible ones first, as a quoted string
    (escapes for whitespace), ending in "..." when there are more than ``limit``."""
    chars = sorted(vocab.chars, key=str.isspace)  # stable: visible ones keep code-point order
    shown = "".join(chars[:limit])
    return repr(shown) + ("..." if len(chars) > limit else "")


# --- the loop ------------------------------------------------------------------------------

def _generate(model: RNN, vocab: Vocabulary, tokens: np.ndarray, length: int, temperature: float,
              rng: np.random.Generator) -> Iterator[str]:
    """The generator behind :func:`iter_sample`; ``tokens``: (T,) the prime's indices."""
    arch, engine = model.architecture, get_engine()
    params = _one_step_layout(model.checked_params(), arch)
    x = tokens[:, None]                                                   # (T, 1)
    h = np.zeros((arch.units, 1, model.hidden_size), dtype=model.dtype)   # (U, 1, H)
    for _ in range(length):
        a, h = _step(params, x, h, arch, engine)
        k = _draw(a, temperature, rng)
        yield vocab.chars[k]
        x = np.array([[k]])                                               # (1, 1): fed back


def _one_step_layout(params: dict, arch) -> dict:
    """``params`` with each W_h stored column-major (the same values).

    Each forward call makes W_h^T C-contiguous for its time loop, an (H, H) transposing copy
    that a whole sequence amortises; sampling calls forward once per character (T = 1), where
    that copy costs several times the step itself. With W_h in Fortran order W_h^T already is
    C-contiguous: the copy is skipped (numba engine) or a plain memcpy (NumPy engine).
    """
    out = dict(params)
    for k in range(arch.num_layers):
        name = network.layer_param_names(k, 0)[1]
        out[name] = np.asfortranarray(params[name])
    return out


def _step(params: dict, x: np.ndarray, h0: np.ndarray, arch, engine) -> tuple[np.ndarray, np.ndarray]:
    """(a, h_last): the logits a_T = W_y h_T + b_y (V,) in float64 after reading tokens ``x`` (T, 1)
    from state ``h0`` (U, 1, H), and the state after them (U, 1, H)."""
    fwd = network.forward(params, x, h0, arch, engine)
    return fwd.a[-1, 0].astype(np.float64), fwd.h_last


def _draw(a: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """An index k drawn with probability softmax(a / temperature)_k; ``a``: (V,) float64."""
    p = _SOFTMAX.fn(a / temperature)
    return int(rng.choice(p.size, p=p))


# --- checks at the boundary ----------------------------------------------------------------

def _check_model(model: RNN, vocab: Vocabulary) -> None:
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be an rnngrad.data.Vocabulary; got {type(vocab).__name__}")
    if model.input_size != len(vocab) or model.output_size != len(vocab):
        raise ValueError(
            f"model has input_size={model.input_size}, output_size={model.output_size} but the vocabulary "
            f"has {len(vocab)} characters; they must match")
    if model.bidirectional:
        raise ValueError("a bidirectional model cannot generate text: its reverse direction reads the "
                         "characters after each position, which do not exist yet; train a unidirectional one")
    if not isinstance(model.g, Softmax):
        raise ValueError(f"the model's output activation is {model.g.name!r}; sampling draws each character "
                         f"from softmax(a_t / temperature), so it needs a model with output_activation='softmax' "
                         f"(a character model trained with cross-entropy)")


def _check_prime(prime, vocab: Vocabulary) -> None:
    if not isinstance(prime, str) or not prime:
        raise ValueError(f"prime must be a non-empty string (the text the sample continues); got {prime!r}")
    unknown = unknown_characters(prime, vocab)
    if unknown:
        raise ValueError(f"prime has {len(unknown)} character{'s' if len(unknown) > 1 else ''} not in the "
                         f"vocabulary: {', '.join(map(repr, unknown[:10]))}{', ...' if len(unknown) > 10 else ''}; "
                         f"its {len(vocab)} characters include {vocabulary_preview(vocab)}")


def _rng(seed) -> np.random.Generator:
    """A Generator from ``seed`` (see :func:`iter_sample`), refusing a negative seed with a message naming it."""
    if isinstance(seed, (list, tuple)):
        if not seed or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in seed):
            raise ValueError(f"seed must be None, a non-negative integer, a non-empty sequence of them or a "
                             f"numpy.random.Generator; got {seed!r}")
        return np.random.default_rng([int(s) for s in seed])
    return check_seed(seed)
