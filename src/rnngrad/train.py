"""Training: mini-batches, truncated BPTT, validation, metrics, checkpoints and exact resume.

Two kinds of data, one loop:

* **Text** (a UTF-8 file, or :func:`rnngrad.data.default_corpus`): the token stream is cut
  into B parallel streams read in chunks of k steps (:func:`rnngrad.data.make_streams`).
  The final hidden state of a chunk is the h0 of the next (truncated BPTT: the state
  flows across the cut, the gradient does not); it is reset to zeros at each epoch.
* **Synthetic tasks** (:data:`rnngrad.data.TASKS`): a fixed training set of independent
  sequences, shuffled per epoch, each batch starting from h0 = 0.

Everything random is derived from ``config.seed`` and a counter (the epoch for the
shuffle, the step for text samples), so the whole state of a run is the model, the
optimizer, the step count, the carried hidden state and the running log window. A
checkpoint saves exactly that, and a resumed run repeats the numbers of an
uninterrupted one.

The loss is the mean per counted step (``reduction="mean"``): nats per character for
text, comparable with the uniform baseline ln V.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import shlex
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from ._io import FolderLock, atomic_write, check_run_folder, remove_stray_temporaries
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .data import TASKS, Vocabulary, default_corpus, load_text, make_streams, train_val_split
from .data.text import MAX_TEXT_BYTES
from . import network
from .engines import get_engine
from .metrics import LogRow, parse_metrics
from .model import RNN
from .optim import OPTIMIZERS, clip_grad_norm, clip_grad_value, make_optimizer
from .validation import FLOAT_DTYPES, all_finite, check_choice, check_positive_int, check_real, check_seed
from .workspace import Workspace

__all__ = ["TrainConfig", "Trainer", "RunWriteError", "TextData", "TaskData", "LogRow", "load_training_checkpoint",
           "CHECKPOINT", "METRICS", "LOSS_PLOT"]

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"

# The optimizers that take a momentum (read from their hyperparameters, not listed by hand).
MOMENTUM_OPTIMIZERS = tuple(name for name, cls in OPTIMIZERS.items() if "momentum" in cls.hyper)


class RunWriteError(OSError):
    """A file of the run folder could not be written; its message names the file and what is intact."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return str(self.strerror)


@dataclass
class TrainConfig:
    """Every setting of a run; saved in the checkpoint so that ``--resume`` needs nothing else.

    Data: ``task`` (one of :data:`rnngrad.data.TASKS`) or ``text`` (a file path); neither
    means the default corpus (its first ``max_chars`` characters when set).
    For text, ``chunk_len`` is the truncation length k; for tasks, the sequence length T.
    ``steps`` counts optimizer updates; ``time_budget`` (seconds) stops earlier if set.
    """

    text: str | None = None
    task: str | None = None
    max_chars: int | None = None
    max_text_bytes: int = MAX_TEXT_BYTES
    hidden_size: int = 256
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    hidden_activation: str = "tanh"
    recurrent_init: str = "uniform"
    dtype: str = "float32"
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.0
    clip_norm: float | None = 5.0
    clip_value: float | None = None
    chunk_len: int = 64
    batch_size: int = 32
    steps: int = 2000
    time_budget: float | None = None
    seed: int = 0
    val_fraction: float = 0.05
    task_train_size: int = 10_000
    task_val_size: int = 1_000
    log_every: int = 100
    sample_every: int = 500
    sample_length: int = 300
    checkpoint_every: int = 500

    def validate(self) -> "TrainConfig":
        """Raise ValueError/TypeError for any bad setting, naming it."""
        if self.task is not None:
            check_choice("task", self.task, TASKS)
            if self.text is not None:
                raise ValueError("give either task or text, not both")
        for name in ("hidden_size", "num_layers", "max_text_bytes", "chunk_len", "batch_size", "steps", "task_train_size",
                     "task_val_size", "log_every", "sample_every", "sample_length", "checkpoint_every"):
            check_positive_int(name, getattr(self, name))
        if self.max_chars is not None:
            check_positive_int("max_chars", self.max_chars)
        check_choice("dtype", self.dtype, [dt.name for dt in FLOAT_DTYPES])
        check_real("lr", self.lr)
        for name in ("clip_norm", "clip_value", "time_budget"):
            if getattr(self, name) is not None:
                check_real(name, getattr(self, name))
        if not 0 <= check_real("momentum", self.momentum, positive=False) < 1:
            raise ValueError(f"momentum must lie in [0, 1); got {self.momentum!r}")
        if self.momentum and self.optimizer not in MOMENTUM_OPTIMIZERS:
            raise ValueError(f"momentum applies to the {' and '.join(MOMENTUM_OPTIMIZERS)} optimizers, "
                             f"not {self.optimizer!r}")
        if not isinstance(self.bidirectional, bool):
            raise TypeError(f"bidirectional must be True or False; got {self.bidirectional!r}")
        if self.bidirectional and self.task is None:
            raise ValueError("a bidirectional network cannot be trained on text here: text is read in chunks "
                             "with the state carried from one to the next (truncated BPTT), and the reverse "
                             "direction would need the text after the chunk; use --task, or drop --bidirectional")
        if not 0 <= check_real("dropout", self.dropout, positive=False) < 1:
            raise ValueError(f"dropout (--dropout) must lie in [0, 1); got {self.dropout!r}")
        if self.dropout and self.num_layers == 1:
            raise ValueError("dropout (--dropout) acts between stacked layers, so with num_layers=1 it would do "
                             "nothing; set --num-layers to 2 or more, or leave dropout at 0")
        if not 0 < check_real("val_fraction", self.val_fraction) < 1:
            raise ValueError(f"val_fraction must lie in (0, 1); got {self.val_fraction!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise TypeError(f"seed must be a non-negative integer; got {type(self.seed).__name__} {self.seed!r}")
        check_seed(self.seed)  # TypeError/ValueError naming the seed, before NumPy's own message
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def load_training_checkpoint(path) -> tuple[Path, dict, dict]:
    """(path, meta, arrays) of a checkpoint written by :class:`Trainer` (a run folder or its checkpoint.npz).

    One rule for resume, ``rnngrad sample`` and ``rnngrad flow``: a checkpoint without the
    sections a Trainer writes (a bare model saved with save_checkpoint, say) is refused with
    a CheckpointError rather than failing later on a missing entry.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    # Only the members a training checkpoint has: parameters, optimizer slots, carried state.
    meta, arrays = load_checkpoint(path, groups=("optim", "state"))
    for key in ("config", "optimizer", "progress", "data"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{str(path)!r} is not a training checkpoint (no {key!r} section); "
                                  f"train with rnngrad train to make one")
    if "vocab" not in meta:
        raise CheckpointError(f"{str(path)!r} is not a training checkpoint (no 'vocab' entry); "
                              f"train with rnngrad train to make one")
    return path, meta, arrays


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
        tokens = self.vocab.encode(text)
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

    def val_loss(self, model: RNN) -> float:
        """Mean loss per character over the held-out text, state carried across chunks."""
        params, arch, engine = model.checked_params(), model.architecture, get_engine()
        h = np.zeros((arch.units, self.val_x.shape[1], model.hidden_size), dtype=model.dtype)  # (U, B, H)
        total, count = 0.0, 0
        for t0 in range(0, self.val_x.shape[0], self.k):
            x, y = self.val_x[t0:t0 + self.k], self.val_y[t0:t0 + self.k]
            fwd = network.forward(params, x, h, arch, engine)
            total += network.loss(params, fwd, y.reshape(-1), None, arch, engine)
            count += y.size
            h = fwd.h_last
        return total / count


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

    def val_loss(self, model: RNN) -> float:
        return model.loss(self.val_x, self.val_y, mask=self.val_mask, reduction="mean",
                          lengths=self._full(self.val_x.shape[1]))


@dataclass
class Progress:
    """The counters of a run (saved in the checkpoint)."""

    step: int = 0
    elapsed_s: float = 0.0
    window_loss: float = 0.0      # sum of training losses since the last log row
    window_norm: float = 0.0      # sum of gradient norms since the last log row
    window_steps: int = 0
    window_tokens: int = 0
    window_time: float = 0.0
    rows: list = field(default_factory=list)


def _check_model_fits(model: RNN, config: TrainConfig, data) -> None:
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


def _checked_progress(saved: dict) -> Progress:
    """The saved counters, each of its type and non-negative (a crafted or damaged checkpoint
    could hold a negative or fractional step, which would silently misplace the run)."""
    if not isinstance(saved, dict) or set(saved) != {f.name for f in fields(Progress)} - {"rows"}:
        raise CheckpointError(f"the checkpoint's progress section has keys {sorted(saved) if isinstance(saved, dict) else saved!r}; "
                              f"expected {sorted(f.name for f in fields(Progress) if f.name != 'rows')}")
    for f in fields(Progress):
        if f.name == "rows":
            continue
        v = saved[f.name]
        ok = (isinstance(v, int) if f.type in ("int", int) else isinstance(v, (int, float)) and math.isfinite(v))
        if isinstance(v, bool) or not ok or v < 0:
            raise CheckpointError(f"the checkpoint's progress.{f.name} is {v!r}; expected a non-negative "
                                  f"{'integer' if f.type in ('int', int) else 'number'}")
    return Progress(**saved)


class Trainer:
    """Runs (or resumes) a training run in ``out_dir``.

    Files written there: ``checkpoint.npz`` (every ``checkpoint_every`` steps, at the end,
    and when ``should_stop`` turns true), ``metrics.jsonl`` (one :class:`LogRow` per
    ``log_every`` steps; the first row is logged before any update) and ``loss.png``.
    """

    def __init__(self, config: TrainConfig, out_dir, *, model: RNN | None = None, data=None):
        self.config = config.validate()
        self.out_dir = check_run_folder(out_dir, "out_dir")
        self.data = data if data is not None else (
            TaskData(config) if config.task is not None else TextData(config))
        d = self.data
        if model is not None:
            _check_model_fits(model, config, d)
        self.model = model if model is not None else RNN(
            d.input_size, config.hidden_size, d.output_size, hidden_activation=config.hidden_activation,
            output_activation=d.output_activation, loss=d.loss, dtype=np.dtype(config.dtype),
            seed=config.seed, recurrent_init=config.recurrent_init, num_layers=config.num_layers,
            bidirectional=config.bidirectional, dropout=config.dropout)
        kw = {"momentum": config.momentum} if config.optimizer in MOMENTUM_OPTIMIZERS else {}
        self.optimizer = make_optimizer(config.optimizer, self.model.params, config.lr, **kw)
        self.progress = Progress()
        self.h = None  # carried hidden state (text), shaped as h0: (B, H), or (U, B, H) when stacked
        # The large arrays of each gradients call are reused step after step (no page faults from
        # fresh allocations). Safe because a step's gradients are used up before the next step;
        # h_last, which is carried, is a copy.
        self.workspace = Workspace()
        # Held from the first write into out_dir (resume, or run) until run() returns.
        self.lock = FolderLock(self.out_dir)
        # The step of the last save, while nothing changed since (so run() need not save it again).
        self._saved_at: int | None = None
        # The step that checkpoint.npz holds on disk (None: none written yet), named when a write fails.
        self.saved_step: int | None = None
        self.plot_note: str | None = "not drawn yet"  # why the last write_plot wrote nothing (None: it wrote one)
        # Where a best-effort failure (loss.png) is reported; the CLI prints it as one line.
        self.warn: Callable[[str], None] = lambda message: warnings.warn(message, RuntimeWarning, stacklevel=3)

    # --- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def save(self) -> Path:
        """Write checkpoint.npz atomically (then loss.png, best effort)."""
        opt_state = self.optimizer.state_dict()
        p = self.progress
        meta = {
            "config": asdict(self.config),
            "optimizer": {"name": self.optimizer.name,
                          **{k: v for k, v in opt_state.items() if not isinstance(v, np.ndarray)}},
            "progress": {k: v for k, v in asdict(p).items() if k != "rows"},
            "data": {"kind": self.data.kind, "source": self.data.source, "fingerprint": self.data.fingerprint},
            "vocab": None if self.data.vocab is None else self.data.vocab.to_json(),
        }
        arrays = {f"optim/{k}": v for k, v in opt_state.items() if isinstance(v, np.ndarray)}
        if self.h is not None:
            arrays["state/h"] = self.h
        try:
            path = save_checkpoint(self.checkpoint_path, self.model, meta, arrays)
        except OSError as err:
            raise self._write_failed(self.checkpoint_path, err) from None
        self._saved_at = self.saved_step = p.step
        self.write_plot()
        return path

    def _write_failed(self, path: Path, err: OSError) -> OSError:
        """One line for a failed write (a full disk, a folder made read-only): the file, the
        reason, and what is still intact, so nothing is guessed before resuming."""
        intact = (f"{CHECKPOINT} still holds step {self.saved_step} intact" if self.saved_step is not None
                  else f"no {CHECKPOINT} was written yet")
        return RunWriteError(err.errno, f"could not write {path} at step {self.progress.step} "
                                 f"({err.strerror or err}); {intact}; free space or fix the folder, "
                                 f"then continue with rnngrad train --resume {shlex.quote(str(self.out_dir))}")

    @classmethod
    def resume(cls, out_dir, steps: int | None = None, time_budget: float | None = None,
               warn: Callable[[str], None] | None = None, text=None) -> "Trainer":
        """A Trainer continuing the run saved in ``out_dir`` (optionally with a new step limit);
        ``warn`` receives one-line warnings (skipped metric rows), from the start."""
        out_dir = Path(out_dir)
        # Before anything is read: a run still writing here, or a second resume, is refused (a run
        # finishing between a read and the lock would leave this resume on a stale checkpoint).
        lock = FolderLock(out_dir).acquire() if out_dir.is_dir() else FolderLock(out_dir)
        try:
            path, meta, arrays = load_training_checkpoint(out_dir)
            return cls._resumed(out_dir, path, meta, arrays, lock, steps, time_budget, warn, text)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _resumed(cls, out_dir, path, meta, arrays, lock, steps, time_budget, warn, text) -> "Trainer":
        try:
            config = TrainConfig.from_dict(meta["config"])
            saved_step = int(meta["progress"]["step"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r} is incomplete or damaged: {err}") from None
        if steps is not None:
            if check_positive_int("steps", steps) < saved_step:
                raise ValueError(f"steps (--steps) {steps} is below step {saved_step}, where the run in "
                                 f"{str(out_dir)!r} stopped; give {saved_step} or more")
            config.steps = steps
        if time_budget is not None:
            config.time_budget = time_budget
        if text is not None:  # the same text at a new place (moved, or another working folder)
            if config.text is None:
                raise ValueError("this run was not trained on a --text file; resume it without --text")
            config.text = str(Path(text).resolve())
        config.validate()
        try:
            vocab = None if meta.get("vocab") is None else Vocabulary.from_json(meta["vocab"])
            data = (TaskData(config) if config.task is not None else
                    TextData(config, vocab=vocab, fingerprint=meta["data"]["fingerprint"]))
            if data.fingerprint != meta["data"]["fingerprint"]:
                raise CheckpointError(
                    f"the training data changed since the checkpoint was written ({data.source}); "
                    f"resume needs the same data")
            model = model_from_checkpoint(meta, arrays)
            trainer = cls(config, out_dir, model=model, data=data)
            trainer.lock = lock
            if warn is not None:
                trainer.warn = warn
            opt = {k: v for k, v in meta["optimizer"].items() if k != "name"}
            opt.update({k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
            if meta["optimizer"]["name"] != trainer.optimizer.name:
                raise CheckpointError(f"checkpoint optimizer {meta['optimizer']['name']!r} does not match")
            trainer.optimizer.load_state_dict(opt)
            trainer.progress = _checked_progress(meta["progress"])
            trainer.h = arrays.get("state/h")
            trainer.saved_step = trainer.progress.step
        except (KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r} is incomplete or damaged: {err}") from None
        # Keep exactly the metric rows the checkpoint has seen; later ones (written after
        # the last save, before the interruption) are recomputed by the resumed run.
        trainer.progress.rows = [r for r in trainer.read_metrics() if r["step"] <= trainer.progress.step]
        atomic_write(out_dir / METRICS, lambda fh: fh.write("".join(LogRow(**r).to_json() + "\n"
                                                                for r in trainer.progress.rows)), mode="w")
        return trainer

    def read_metrics(self) -> list[dict]:
        """The valid rows of metrics.jsonl (see :mod:`rnngrad.metrics`); skipped lines are reported
        through :attr:`warn` in one line."""
        path = self.out_dir / METRICS
        if not path.exists():
            return []
        rows, skipped = parse_metrics(path.read_text(encoding="utf-8", errors="replace"))
        if skipped:
            shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
            self.warn(f"{path}: skipped {len(skipped)} unreadable, invalid or out-of-order "
                      f"row{'s' if len(skipped) > 1 else ''} (line{'s' if len(skipped) > 1 else ''} {shown})")
        return rows

    def write_plot(self) -> Path | None:
        """loss.png from the rows so far, best effort: None if it was not written, with the reason in
        ``plot_note`` (no matplotlib, no metric rows yet, or a failure, which is also passed to ``warn``)."""
        if not self.progress.rows:
            self.plot_note = "no metric rows to plot"
            return None
        try:
            from .plots import plot_loss
            path = plot_loss(self.progress.rows, self.out_dir / LOSS_PLOT, baseline=self.data.baseline,
                             baseline_label=f"baseline: {self.data.baseline_note}")
        except ImportError:
            self.plot_note = "install matplotlib, e.g. pip install 'rnngrad[cli]'"
            return None
        except (ValueError, OSError) as err:
            # The checkpoint is already saved; a figure that cannot be drawn must not end the run.
            self.plot_note = f"it could not be written: {err}"
            self.warn(f"{LOSS_PLOT} not written: {err}")
            return None
        self.plot_note = None
        return Path(path)

    # --- the loop ------------------------------------------------------------------------
    def _diverged(self, what: str) -> FloatingPointError:
        fix = "lower --lr" if self.config.clip_norm else "lower --lr or set --clip-norm"
        return FloatingPointError(f"training diverged at step {self.progress.step}: {what}; {fix} "
                                  f"(the last checkpoint, if any, is from before)")

    def _log(self, val_loss: float, first_loss: float | None = None) -> LogRow:
        p = self.progress
        # A diverged model must not be logged or saved: the run stops here, before either.
        if not math.isfinite(val_loss):
            raise self._diverged(f"the validation loss is {val_loss}")
        if first_loss is not None:  # the row before any update
            train_loss, grad_norm, tps = first_loss, None, None
        else:
            train_loss = p.window_loss / p.window_steps
            grad_norm = p.window_norm / p.window_steps
            tps = p.window_tokens / p.window_time if p.window_time > 0 else None
        row = LogRow(step=p.step, epoch=p.step / self.data.batches_per_epoch, train_loss=train_loss,
                     val_loss=val_loss, grad_norm=grad_norm, tokens_per_s=tps, elapsed_s=p.elapsed_s)
        p.rows.append(asdict(row))
        p.window_loss = p.window_norm = p.window_time = 0.0
        p.window_steps = p.window_tokens = 0
        self._saved_at = None  # the rows and the log window changed since the last save
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / METRICS, "a", encoding="utf-8") as fh:
                fh.write(row.to_json() + "\n")
        except OSError as err:  # a torn last line is cut when the run is resumed
            raise self._write_failed(self.out_dir / METRICS, err) from None
        return row

    def step(self) -> float:
        """One optimizer update; returns the batch loss before it."""
        cfg, p = self.config, self.progress
        b = self.data.batch(p.step, cfg)
        h0 = self.h if (b.carry and self.h is not None) else None
        # Dropout masks from (seed, step) alone, so that a resumed run draws the same ones.
        dropout_seed = np.random.default_rng([cfg.seed, 5, p.step]) if cfg.dropout else None
        res = self.model.gradients(b.x, b.y, h0=h0, mask=b.mask, reduction="mean", need=(),
                                   workspace=self.workspace, dropout_seed=dropout_seed, lengths=b.lengths)
        grads = res.grads
        norm = clip_grad_norm(grads, cfg.clip_norm) if cfg.clip_norm else clip_grad_norm(grads, math.inf)
        if cfg.clip_value:
            clip_grad_value(grads, cfg.clip_value)
        if not (math.isfinite(norm) and math.isfinite(res.loss)):
            raise self._diverged(f"loss {res.loss}, gradient norm {norm}")
        self.optimizer.step(grads)
        if not all(all_finite(v) for v in self.model.params.values()):
            raise self._diverged("the parameters overflowed to Inf/NaN")
        if self.data.kind == "text":
            self.h = res.h_last
        p.step += 1
        p.window_loss += res.loss
        p.window_norm += norm
        p.window_steps += 1
        p.window_tokens += self.data.tokens_per_batch
        return res.loss

    def run(self, should_stop: Callable[[], bool] = lambda: False,
            on_log: Callable[[LogRow], None] | None = None,
            on_sample: Callable[[int, str], None] | None = None,
            on_step: Callable[[int], None] | None = None) -> str:
        """Train until ``config.steps`` (or the time budget); returns "done", "time" or "stopped".

        ``should_stop`` is polled after every step (the CLI sets it from SIGINT/SIGTERM);
        when it turns true the run saves its checkpoint and returns "stopped". The run folder is
        locked for the whole call: another process writing into it is refused (FolderBusy).
        """
        self.lock.acquire()
        try:
            return self._run(should_stop, on_log, on_sample, on_step)
        finally:
            self.lock.release()

    def _run(self, should_stop, on_log, on_sample, on_step) -> str:
        cfg, p = self.config, self.progress
        remove_stray_temporaries(self.out_dir)  # under the lock: no other writer's files
        if p.step == 0 and not p.rows:
            # Checked under the lock: a run that finished in this folder since this one was set up
            # (two commands started together, say) is never overwritten.
            if self.checkpoint_path.exists():
                raise ValueError(f"{str(self.out_dir)!r} already holds a run; continue it with "
                                 f"Trainer.resume (rnngrad train --resume {self.out_dir}), or choose another folder")
            # A new run: metrics.jsonl starts afresh, replacing (atomically) any file an earlier run
            # left in the folder; a resumed run appends to the rows its checkpoint has seen.
            try:
                atomic_write(self.out_dir / METRICS, lambda fh: None, mode="w")
            except OSError as err:
                raise self._write_failed(self.out_dir / METRICS, err) from None
            first = self.data.batch(0, cfg)
            loss0 = self.model.loss(first.x, first.y, mask=first.mask, reduction="mean", lengths=first.lengths)
            row = self._log(self.data.val_loss(self.model), first_loss=loss0)
            if on_log:
                on_log(row)
        status = "done"
        start = p.elapsed_s  # the budget is per invocation, so a resumed run gets a fresh one
        while p.step < cfg.steps:
            if cfg.time_budget is not None and p.elapsed_s - start >= cfg.time_budget:
                status = "time"
                break
            t0 = time.perf_counter()
            self.step()
            dt = time.perf_counter() - t0
            p.elapsed_s += dt
            p.window_time += dt
            if on_step:
                on_step(p.step)
            if p.step % cfg.log_every == 0 or p.step == cfg.steps:
                row = self._log(self.data.val_loss(self.model))
                if on_log:
                    on_log(row)
            if on_sample and self.data.vocab is not None and p.step % cfg.sample_every == 0:
                on_sample(p.step, self.sample(cfg.sample_length, seed=[cfg.seed, 4, p.step]))
            if p.step % cfg.checkpoint_every == 0:
                self.save()
            if should_stop() and p.step < cfg.steps:  # at the last step the run is simply done
                status = "stopped"
                break
        # A run cut by its time budget logs its last partial window; a stopped run keeps the
        # window in the checkpoint instead, so the resumed run logs the same rows as an unbroken one.
        if status == "time" and p.window_steps:
            row = self._log(self.data.val_loss(self.model))
            if on_log:
                on_log(row)
        if self._saved_at != p.step:  # not saved already at this step by the loop
            self.save()
        return status

    def sample(self, length: int, seed=None, prime: str | None = None, temperature: float = 0.8) -> str:
        """``prime`` followed by ``length`` generated characters (default prime: a line of held-out text)."""
        from .sample import sample

        prime = prime if prime is not None else self.data.sample_prime  # None: sample() picks one
        text = sample(self.model, self.data.vocab, length, prime=prime, temperature=temperature, seed=seed)
        return (prime or "") + text
