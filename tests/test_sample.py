"""Sampling from a character model."""

import numpy as np
import pytest

import rnngrad
from rnngrad.data import Vocabulary
from rnngrad.sample import sample


@pytest.fixture
def vocab():
    return Vocabulary("abcd")


def fixed_output_model(vocab, logits):
    """A model whose output ignores its state: y_hat = softmax(b_y)."""
    m = rnngrad.RNN(len(vocab), 3, len(vocab), seed=0)
    m.params["W_y"][...] = 0
    m.params["b_y"][...] = logits
    return m


def test_draws_follow_softmax_of_logits_over_temperature(vocab):
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    for temperature in (0.5, 1.0, 2.0):
        text = sample(fixed_output_model(vocab, logits), vocab, 20000, temperature=temperature, seed=1,
                      prime="a")
        freq = np.array([text.count(c) for c in "abcd"]) / len(text)
        p = np.exp(logits / temperature)
        p /= p.sum()
        # 20000 draws: the standard error of each frequency is below 0.0036.
        np.testing.assert_allclose(freq, p, atol=0.015)


def test_seeded_and_deterministic(vocab):
    m = rnngrad.RNN(4, 8, 4, seed=2)
    a = sample(m, vocab, 50, prime="ab", seed=7)
    assert len(a) == 50 and set(a) <= set("abcd")
    assert a == sample(m, vocab, 50, prime="ab", seed=7)
    assert a != sample(m, vocab, 50, prime="ab", seed=8)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prime="xyz"), "not in the vocabulary"),
    (dict(prime=""), "prime must be a non-empty string"),
    (dict(temperature=0.0), "temperature must be a finite positive number"),
    (dict(length=-1), "length must be a non-negative integer"),
])
def test_bad_arguments(vocab, kwargs, match):
    m = rnngrad.RNN(4, 8, 4, seed=2)
    args = dict(length=5, prime="a")
    args.update(kwargs)
    length = args.pop("length")
    with pytest.raises(ValueError, match=match):
        sample(m, vocab, length, **args)


def test_model_and_vocabulary_must_match(vocab):
    with pytest.raises(ValueError, match="vocabulary has 4 characters"):
        sample(rnngrad.RNN(5, 8, 5), vocab, 5)


@pytest.mark.parametrize("seed", [-1, [3, -1], [], 1.5])
def test_a_bad_seed_is_refused_naming_it(vocab, seed):
    m = rnngrad.RNN(4, 8, 4, seed=2)
    with pytest.raises((ValueError, TypeError), match="seed must be (None, )?a non-negative integer"):
        sample(m, vocab, 5, seed=seed)


def test_seed_sequences_and_generators_are_accepted(vocab):
    m = rnngrad.RNN(4, 8, 4, seed=2)
    a = sample(m, vocab, 20, seed=[3, 4])
    assert a == sample(m, vocab, 20, seed=np.random.default_rng([3, 4]))


def test_a_stacked_model_samples_from_its_full_state(vocab):
    """Greedy sampling (a tiny temperature) of a two-layer model equals the argmax chain computed
    from whole-sequence forward passes, so the state of every layer is carried between draws."""
    m = rnngrad.RNN(len(vocab), 5, len(vocab), num_layers=2, seed=3)
    m.params["W_y"] *= 20  # distinct logits: the argmax is well separated
    text = sample(m, vocab, 6, prime="ab", temperature=1e-6, seed=0)
    seq = "ab"
    for _ in range(6):
        logits = m.forward(vocab.encode(seq)[:, None]).a[-1, 0]
        seq += vocab.chars[int(np.argmax(logits))]
    assert text == seq[2:]


def test_a_bidirectional_model_cannot_sample(vocab):
    m = rnngrad.RNN(len(vocab), 3, len(vocab), bidirectional=True, seed=0)
    with pytest.raises(ValueError, match="a bidirectional model cannot generate text"):
        sample(m, vocab, 5, prime="a")
