"""The data of a training run: text as truncated-BPTT chunks, or a synthetic task's sequences.

Each kind gives the Trainer the same things: ``batch(step, config)`` (a :class:`Batch`),
``evaluate(model)`` (the validation metrics of a log row), the model's sizes, output
activation and loss, the baseline a model must beat, and a fingerprint that a resumed run
checks. Everything random is drawn from ``config.seed`` and a counter, so batch ``step`` is
the same in a resumed run as in an unbroken one.

Validation metrics (all means per counted step, as ``reduction="mean"``):

    val_loss        nats per character (text), or the task's loss
    val_bpc         text: bits per character, val_loss / ln 2
    val_perplexity  text: exp(val_loss), the effective number of equally likely next characters
    val_accuracy    classification tasks: the fraction of counted steps whose most probable
                    class is the target
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import network
from .checkpoint import CheckpointError
from .data import TASKS, Vocabulary, default_corpus, load_text, make_streams, train_val_split
from .engines import get_engine
from .model import RNN

if TYPE_CHECKING:  # the configuration's type only: train.py imports this module
    from .train import TrainConfig

__all__ = ["Batch", "TextData", "TaskData", "check_model_fits"]


@dataclass
class Batch:
    """x (T, B) tokens or (T, B, D) floats; y targets; mask (T, B) or None; carry: keep h0 from the
    last batch; lengths (B,) or None: every step of a task's sequence is input, whatever its mask
    (which then weights the loss only, for a bidirectional network too)."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray | None
    carry: bool
    lengths: np.ndarray | None = None


class TextData:
    """Character-level text as truncated-BPTT chunks; batch i of an epoch is chunk i of every stream."""

    kind = "text"

    def __init__(self, config: TrainConfig, vocab: Vocabulary | None = None, fingerprint: str | None = None):
        """``fingerprint``: the SHA-256 the text must have (a resumed run's); checked before the text
        is used in any way, so a checkpoint naming another file never makes its content show."""
        config.validate()
        k, B = config.chunk_len, config.batch_size
        if config.text is not None:
            if fingerprint is not None and not os.path.isfile(config.text):
                raise ValueError(f"the text file this run was trained on, {config.text!r}, is missing or no "
                                 f"longer a regular file; give the text's new place with --text PATH "
                                 f"(Trainer.resume(text=...)): it must have the same content")
            text = load_text(config.text, min_length=2, max_bytes=config.max_text_bytes)
            self.source = str(config.text)
        else:
            text = default_corpus(config.max_chars)
            self.source = "default corpus (Python standard library sources)"
        self.fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if fingerprint is not None and self.fingerprint != fingerprint:
            raise CheckpointError(f"the training data changed since the checkpoint was written ({self.source} "
                                  f"has SHA-256 {self.fingerprint[:12]}..., the run's had {fingerprint[:12]}...); "
                                  f"resume needs the same text")
        self.vocab = vocab if vocab is not None else Vocabulary.from_text(text)
        if len(self.vocab) < 2:
            raise ValueError(f"{self.source} holds only one distinct character ({text[:1]!r}): there is nothing "
                             f"to predict (every next character is certain); train on a text with at least two")
        tokens = self.vocab.encode(text)
        n_val = int(round(config.val_fraction * tokens.size))
        if n_val < 2 or tokens.size - n_val < 2:
            raise ValueError(f"{self.source} has {tokens.size} characters, too few to hold out --val-fraction "
                             f"{config.val_fraction:g} of them for validation ({n_val}; at least 2 are needed); "
                             f"use a longer text or a larger --val-fraction")
        train, val = train_val_split(tokens, config.val_fraction)
        if train.size < B * k + 1 or val.size < 2:
            raise ValueError(
                f"text is too short for one training chunk: {tokens.size} characters leave {train.size} for "
                f"training, but batch_size={B} streams of chunk_len={k} steps need {B * k + 1} "
                f"(and validation needs at least 2); use a longer text or smaller --batch-size/--chunk-len")
        self.x, self.y = make_streams(train, B)  # (L, B) each
        self.batches_per_epoch = self.x.shape[0] // k
        self.k = k
        # Validation: the held-out tail as streams too (fewer if it is short), read in chunks.
        vB = max(1, min(B, (val.size - 1) // k))
        self.val_x, self.val_y = make_streams(val, vB)
        # Samples continue a line of held-out text: a prime the model has not trained on, and a
        # continuation a reader can judge (a lone newline in source code mostly primes indentation).
        lines = self.vocab.decode(val[: min(val.size, 5000)]).split("\n")[1:-1]  # whole lines only
        self.sample_prime = next((ln.strip()[:40] for ln in lines if len(ln.strip()) >= 20), None)
        self.input_size = self.output_size = len(self.vocab)
        self.output_activation, self.loss = "softmax", "cross_entropy"
        self.baseline = math.log(len(self.vocab))
        self.baseline_note = f"uniform guess over {len(self.vocab)} characters, ln V"
        self.tokens_per_batch = k * B

    def batch(self, step: int, config: TrainConfig) -> Batch:
        i = step % self.batches_per_epoch
        sl = slice(i * self.k, (i + 1) * self.k)
        return Batch(self.x[sl], self.y[sl], None, carry=i != 0)

    def evaluate(self, model: RNN) -> dict:
        """val_loss (nats per character over the held-out text, state carried across chunks),
        val_bpc and val_perplexity."""
        params, arch, engine = model.checked_params(), model.architecture, get_engine()
        h = np.zeros((arch.units, self.val_x.shape[1], model.hidden_size), dtype=model.dtype)  # (U, B, H)
        total, count = 0.0, 0
        for t0 in range(0, self.val_x.shape[0], self.k):
            x, y = self.val_x[t0:t0 + self.k], self.val_y[t0:t0 + self.k]
            fwd = network.forward(params, x, h, arch, engine)
            total += network.loss(params, fwd, y.reshape(-1), None, arch, engine)
            count += y.size
            h = fwd.h_last
        nats = total / count
        with np.errstate(over="ignore"):  # a diverged run's loss: inf, reported as a divergence
            perplexity = float(np.exp(nats)) if math.isfinite(nats) else nats
        return {"val_loss": nats, "val_bpc": nats / math.log(2), "val_perplexity": perplexity}

    def val_loss(self, model: RNN) -> float:
        return self.evaluate(model)["val_loss"]


class TaskData:
    """A synthetic task: fixed training and validation sets, training shuffled per epoch."""

    kind = "task"

    def __init__(self, config: TrainConfig):
        config.validate()  # the seed above all: NumPy's own message would not name it
        task = TASKS[config.task]
        T, B = config.chunk_len, config.batch_size
        if config.task_train_size < B:
            raise ValueError(f"task_train_size={config.task_train_size} is smaller than batch_size={B}")
        self.source = f"task {task.name}"
        self.fingerprint = task.name
        self.vocab = self.sample_prime = None
        self.x, self.y, self.mask = task.make(config.task_train_size, T, np.random.default_rng([config.seed, 1]))
        self.val_x, self.val_y, self.val_mask = task.make(config.task_val_size, T,
                                                          np.random.default_rng([config.seed, 2]))
        self.batches_per_epoch = config.task_train_size // B
        self.input_size, self.output_size = task.input_size, task.output_size
        self.output_activation, self.loss = task.output_activation, task.loss
        self.baseline, self.baseline_note = task.baseline, task.baseline_note
        self.tokens_per_batch = T * B
        self._perm_epoch, self._perm = -1, None

    def batch(self, step: int, config: TrainConfig) -> Batch:
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._perm_epoch:
            # The shuffle of epoch e depends on (seed, e) only: resuming mid-epoch redraws the same order.
            self._perm = np.random.default_rng([config.seed, 3, epoch]).permutation(self.x.shape[1])
            self._perm_epoch = epoch
        idx = self._perm[i * config.batch_size:(i + 1) * config.batch_size]
        mask = None if self.mask is None else self.mask[:, idx]
        return Batch(self.x[:, idx], self.y[:, idx], mask, carry=False, lengths=self._full(idx.size))

    def _full(self, n: int) -> np.ndarray:
        return np.full(n, self.x.shape[0], dtype=np.intp)

    def evaluate(self, model: RNN) -> dict:
        """val_loss (the task's loss per counted step), and val_accuracy for a classification task
        (softmax outputs): the fraction of counted steps whose most probable class is the target."""
        lengths = self._full(self.val_x.shape[1])
        params, x, h0, y, w, lengths, _ = model._prepare_loss(self.val_x, self.val_y, None, self.val_mask, "mean",
                                                              lengths=lengths)
        arch, engine = model.architecture, get_engine()
        cache = network.forward(params, x, h0, arch, engine, lengths)
        metrics = {"val_loss": network.loss(params, cache, y, w, arch, engine)}
        if self.loss == "cross_entropy":
            hit = cache.y_hat.argmax(axis=-1) == self.val_y  # (T, B)
            counted = np.ones(hit.shape, bool) if self.val_mask is None else self.val_mask.astype(bool)
            metrics["val_accuracy"] = float(hit[counted].mean())
        return metrics

    def val_loss(self, model: RNN) -> float:
        return self.evaluate(model)["val_loss"]


def check_model_fits(model: RNN, config: TrainConfig, data) -> None:
    """A model handed to a Trainer must be the one its configuration describes (the loop draws
    dropout masks and carries state by the configuration), and a bidirectional one cannot carry
    its state across text chunks."""
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
    if model.bidirectional and data.kind == "text":
        raise ValueError("a bidirectional model cannot be trained on text: the state carried from one chunk "
                         "to the next (truncated BPTT) would feed the reverse direction a state from the past")
    for name in ("num_layers", "bidirectional", "dropout", "hidden_size"):
        if getattr(model, name) != getattr(config, name):
            raise ValueError(f"model has {name}={getattr(model, name)!r} but the configuration says "
                             f"{getattr(config, name)!r}; build the model from the same settings")
    if (model.input_size, model.output_size) != (data.input_size, data.output_size):
        raise ValueError(f"model has input_size={model.input_size}, output_size={model.output_size} but the data "
                         f"needs {data.input_size} and {data.output_size}")


