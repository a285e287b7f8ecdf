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

import enum
import math
import numbers
import shlex
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from ._io import FolderLock, atomic_write, check_run_folder, remove_stray_temporaries
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .data import TASKS, Vocabulary
from .data.text import MAX_TEXT_BYTES
from .metrics import LogRow, read_metrics_file
from .model import RNN
from .optim import OPTIMIZERS, check_weight_decay, clip_grad_norm, clip_grad_value, make_optimizer
from .run_data import TaskData, TextData, check_model_fits
from .schedules import parse_schedule
from .validation import FLOAT_DTYPES, all_finite, check_choice, check_positive_int, check_real, check_seed
from .workspace import Workspace

__all__ = ["TrainConfig", "Trainer", "RunStatus", "format_row", "RunWriteError", "TextData", "TaskData", "LogRow", "load_training_checkpoint",
           "CHECKPOINT", "METRICS", "LOSS_PLOT"]

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"

# The optimizers that take a momentum (read from their hyperparameters, not listed by hand).
MOMENTUM_OPTIMIZERS = tuple(name for name, cls in OPTIMIZERS.items() if "momentum" in cls.hyper)
#: How a step's gradient is computed: truncated BPTT over the chunk, or RTRL over the whole stream.
GRADIENT_METHODS = ("bptt", "rtrl")
WEIGHT_DECAY_OPTIMIZERS = tuple(name for name, cls in OPTIMIZERS.items() if "weight_decay" in cls.hyper)


class RunStatus(str, enum.Enum):
    """How :meth:`Trainer.run` ended (a str: ``status == "done"`` reads as before)."""

    DONE = "done"                    #: config.steps reached
    TIME = "time"                    #: the time budget ran out first
    STOPPED = "stopped"              #: should_stop() turned true (Ctrl-C, SIGTERM in the CLI)
    EARLY_STOPPED = "early_stopped"  #: no better validation loss in early_stopping evaluations

    def __str__(self) -> str:
        return self.value


class RunWriteError(OSError):
    """A file of the run folder could not be written; its message names the file and what is intact."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return str(self.strerror)


def _option_name(field_name: str) -> str:
    """``hidden_size (--hidden-size)``: a setting as Python and the command line spell it, so one
    message serves both."""
    return f"{field_name} (--{field_name.replace('_', '-')})"


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
    lr_schedule: str = "constant"
    weight_decay: float | None = None  # None: the optimizer's own default (adamw 0.01, the others 0)
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
    early_stopping: int | None = None  # patience: stop after this many evaluations without a better val_loss
    gradient: str = "bptt"  # "rtrl": exact online gradients over the whole stream (rnngrad.online), text only

    def validate(self) -> "TrainConfig":
        """Raise ValueError/TypeError for any bad setting, naming it and its command-line option."""
        opt = _option_name
        if self.task is not None:
            check_choice("task (--task)", self.task, TASKS)
            if self.text is not None:
                raise ValueError("give either task or text (--task or --text), not both")
        for name in ("hidden_size", "num_layers", "max_text_bytes", "chunk_len", "batch_size", "steps", "task_train_size",
                     "task_val_size", "log_every", "sample_every", "sample_length", "checkpoint_every"):
            check_positive_int(opt(name), getattr(self, name))
        if self.max_chars is not None:
            check_positive_int(opt("max_chars"), self.max_chars)
        check_choice(opt("dtype"), self.dtype, [dt.name for dt in FLOAT_DTYPES])
        check_choice(opt("optimizer"), self.optimizer, OPTIMIZERS)
        check_real(opt("lr"), self.lr)
        cn = self.clip_norm
        if cn is not None and (isinstance(cn, bool) or not isinstance(cn, numbers.Real) or not math.isfinite(cn)
                               or cn <= 0):
            raise ValueError(f"clip_norm (--clip-norm) must be a positive number, or 0 on the command line (None "
                             f"here) for no clipping; got {self.clip_norm!r}")
        for name in ("clip_value", "time_budget"):
            if getattr(self, name) is not None:
                check_real(opt(name), getattr(self, name))
        if not 0 <= check_real(opt("momentum"), self.momentum, positive=False) < 1:
            raise ValueError(f"momentum (--momentum) must lie in [0, 1); got {self.momentum!r}")
        if self.momentum and self.optimizer not in MOMENTUM_OPTIMIZERS:
            raise ValueError(f"momentum (--momentum) applies to the {' and '.join(MOMENTUM_OPTIMIZERS)} optimizers, "
                             f"not {self.optimizer!r}")
        if not isinstance(self.bidirectional, bool):
            raise TypeError(f"bidirectional must be True or False; got {self.bidirectional!r}")
        if self.bidirectional and self.task is None:
            raise ValueError("a bidirectional network cannot be trained on text here: text is read in chunks "
                             "with the state carried from one to the next (truncated BPTT), and the reverse "
                             "direction would need the text after the chunk; use --task, or drop --bidirectional")
        if not 0 <= check_real(opt("dropout"), self.dropout, positive=False) < 1:
            raise ValueError(f"dropout (--dropout) must lie in [0, 1); got {self.dropout!r}")
        if self.dropout and self.num_layers == 1:
            raise ValueError("dropout (--dropout) acts between stacked layers, so with num_layers=1 it would do "
                             "nothing; set --num-layers to 2 or more, or leave dropout at 0")
        if self.weight_decay is not None:
            check_weight_decay(self.weight_decay, name="weight_decay (--weight-decay)")
            if self.weight_decay and self.optimizer not in WEIGHT_DECAY_OPTIMIZERS:
                raise ValueError(f"weight_decay (--weight-decay) applies to the {', '.join(WEIGHT_DECAY_OPTIMIZERS)} "
                                 f"optimizers, not {self.optimizer!r}; for Adam with weight decay use "
                                 f"--optimizer adamw (decoupled, as torch.optim.AdamW)")
        parse_schedule(self.lr_schedule, self.steps, self.lr)  # raises the --lr-schedule message
        if self.early_stopping is not None:
            check_positive_int("early_stopping (--early-stopping)", self.early_stopping)
        check_choice(opt("gradient"), self.gradient, GRADIENT_METHODS)
        if self.gradient == "rtrl" and (self.task is not None or self.bidirectional or self.dropout):
            raise ValueError("gradient (--gradient) rtrl trains online on an unbroken text stream: it needs text "
                             "(not --task), a unidirectional model (not --bidirectional: its reverse direction "
                             "reads the future) and no --dropout")
        if not 0 < check_real(opt("val_fraction"), self.val_fraction) < 1:
            raise ValueError(f"val_fraction (--val-fraction) must lie in (0, 1), e.g. 0.05; got {self.val_fraction!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise TypeError(f"seed (--seed) must be a non-negative integer; got {type(self.seed).__name__} {self.seed!r}")
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
class Progress:
    """The counters of a run (saved in the checkpoint)."""

    step: int = 0
    elapsed_s: float = 0.0
    window_loss: float = 0.0      # sum of training losses since the last log row
    window_norm: float = 0.0      # sum of gradient norms since the last log row
    window_steps: int = 0
    window_tokens: int = 0
    window_time: float = 0.0
    best_val_loss: float | None = None  # the lowest val_loss logged so far, and its step
    best_step: int | None = None
    evals_since_best: int = 0           # log rows since that best (early stopping's count)
    rows: list = field(default_factory=list)


def format_row(row: LogRow, steps: int) -> str:
    """One log row as a line: step, losses, the validation extras, |grad|, throughput, lr."""
    parts = [f"step {row.step:>{len(str(steps))}}/{steps}", f"train {row.train_loss:.4f}", f"val {row.val_loss:.4f}"]
    if row.val_bpc is not None:
        parts.append(f"({row.val_bpc:.3f} bpc, perplexity {row.val_perplexity:.2f})")
    if row.val_accuracy is not None:
        parts.append(f"(accuracy {row.val_accuracy:.1%})")
    if row.grad_norm is not None:
        parts.append(f"|grad| {row.grad_norm:.3g}")
    if row.tokens_per_s is not None:
        parts.append(f"{row.tokens_per_s:,.0f} tok/s")
    if row.lr is not None:
        parts.append(f"lr {row.lr:.3g}")
    return "  ".join(parts)


# Counters added after the first checkpoints were written: absent in those, with these values.
_PROGRESS_ADDED = {"best_val_loss": None, "best_step": None, "evals_since_best": 0}


def _checked_progress(saved: dict) -> Progress:
    """The saved counters, each of its type and non-negative (a crafted or damaged checkpoint
    could hold a negative or fractional step, which would silently misplace the run)."""
    names = {f.name for f in fields(Progress)} - {"rows"}
    if not isinstance(saved, dict) or not names - set(_PROGRESS_ADDED) <= set(saved) <= names:
        raise CheckpointError(f"the checkpoint's progress section has keys {sorted(saved) if isinstance(saved, dict) else saved!r}; "
                              f"expected {sorted(names)}")
    saved = {**_PROGRESS_ADDED, **saved}
    for f in fields(Progress):
        if f.name == "rows" or (saved[f.name] is None and f.name in ("best_val_loss", "best_step")):
            continue
        v = saved[f.name]
        integer = "int" in str(f.type)
        ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)
        if isinstance(v, bool) or not ok or v < 0:
            raise CheckpointError(f"the checkpoint's progress.{f.name} is {v!r}; expected a non-negative "
                                  f"{'integer' if integer else 'number'}")
    return Progress(**saved)


class Trainer:
    """Runs (or resumes) a training run in ``out_dir``.

    Files written there: ``checkpoint.npz`` (every ``checkpoint_every`` steps, at the end,
    and when ``should_stop`` turns true), ``best.npz`` (the same kind of checkpoint, of the
    model with the lowest validation loss so far, written when a log row improves on it),
    ``metrics.jsonl`` (one :class:`LogRow` per ``log_every`` steps; the first row is logged
    before any update) and ``loss.png``. A new Trainer refuses a folder that already holds a
    run (continue that with :meth:`resume`).
    """

    def __init__(self, config: TrainConfig, out_dir, *, model: RNN | None = None, data=None):
        self.config = config.validate()
        self.out_dir = check_run_folder(out_dir, "out_dir")
        self.data = data if data is not None else (
            TaskData(config) if config.task is not None else TextData(config))
        d = self.data
        if model is not None:
            check_model_fits(model, config, d)
        self.model = model if model is not None else RNN(
            d.input_size, config.hidden_size, d.output_size, hidden_activation=config.hidden_activation,
            output_activation=d.output_activation, loss=d.loss, dtype=np.dtype(config.dtype),
            seed=config.seed, recurrent_init=config.recurrent_init, num_layers=config.num_layers,
            bidirectional=config.bidirectional, dropout=config.dropout)
        kw = {"momentum": config.momentum} if config.optimizer in MOMENTUM_OPTIMIZERS else {}
        if config.weight_decay is not None and config.optimizer in WEIGHT_DECAY_OPTIMIZERS:
            kw["weight_decay"] = config.weight_decay
        self.optimizer = make_optimizer(config.optimizer, self.model.params, config.lr, **kw)
        self.schedule = parse_schedule(config.lr_schedule, config.steps, config.lr)
        if config.gradient == "rtrl":
            from .online import RTRLGradients

            self.batch_gradients = RTRLGradients(self)
        # Every number spelled out (a bare "cosine" becomes cosine=T_MAX): the saved configuration
        # then gives the same schedule when a resumed run has another step limit.
        config.lr_schedule = self.schedule.spec
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
        self._plotted_rows = 0  # the rows loss.png shows
        self.plot_note: str | None = "not drawn yet"  # why the last write_plot wrote nothing (None: it wrote one)
        # Where a best-effort failure (loss.png) is reported; the CLI prints it as one line.
        self.warn: Callable[[str], None] = lambda message: warnings.warn(message, RuntimeWarning, stacklevel=3)

    # --- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def save(self) -> Path:
        """Write checkpoint.npz atomically (then loss.png, best effort).

        A model not validated at this step (a checkpoint between log rows) is evaluated first:
        one whose validation loss is no longer finite is a divergence, and the checkpoint on disk
        (from before) is kept rather than replaced by a model that cannot be resumed."""
        p = self.progress
        if not p.rows or p.rows[-1]["step"] != p.step:
            for name, value in self.evaluate().items():
                if not math.isfinite(value):
                    raise self._diverged(f"the validation {name.replace('val_', '')} is {value} (found "
                                         f"before saving the checkpoint)")
        path = self._write_checkpoint(self.checkpoint_path)
        self._saved_at = self.saved_step = self.progress.step
        self.write_plot()
        return path

    def _write_checkpoint(self, path: Path) -> Path:
        """The whole state of the run, to ``path`` (checkpoint.npz or best.npz), atomically."""
        opt_state = self.optimizer.state_dict()
        meta = {
            "config": asdict(self.config),
            "optimizer": {"name": self.optimizer.name,
                          **{k: v for k, v in opt_state.items() if not isinstance(v, np.ndarray)}},
            "progress": {k: v for k, v in asdict(self.progress).items() if k != "rows"},
            "data": {"kind": self.data.kind, "source": self.data.source, "fingerprint": self.data.fingerprint,
                     "sample_prime": self.data.sample_prime},
            "vocab": None if self.data.vocab is None else self.data.vocab.to_json(),
        }
        arrays = {f"optim/{k}": v for k, v in opt_state.items() if isinstance(v, np.ndarray)}
        if self.h is not None:
            arrays["state/h"] = self.h
        if self.config.gradient == "rtrl":
            arrays.update(self.batch_gradients.arrays())
        try:
            return save_checkpoint(path, self.model, meta, arrays)
        except OSError as err:
            raise self._write_failed(path, err) from None

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
               warn: Callable[[str], None] | None = None, text=None,
               early_stopping: int | None = None) -> "Trainer":
        """A Trainer continuing the run saved in ``out_dir``; optionally with a new step limit,
        time budget, place of the same text, or early-stopping patience. ``warn`` receives
        one-line warnings (skipped metric rows), from the start."""
        out_dir = Path(out_dir)
        # Before anything is read: a run still writing here, or a second resume, is refused (a run
        # finishing between a read and the lock would leave this resume on a stale checkpoint).
        lock = FolderLock(out_dir).acquire() if out_dir.is_dir() else FolderLock(out_dir)
        try:
            path, meta, arrays = load_training_checkpoint(out_dir)
            return cls._resumed(out_dir, path, meta, arrays, lock, steps, time_budget, warn, text, early_stopping)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _resumed(cls, out_dir, path, meta, arrays, lock, steps, time_budget, warn, text,
                 early_stopping) -> "Trainer":
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
        if early_stopping is not None:
            config.early_stopping = early_stopping
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
            if config.gradient == "rtrl":
                trainer.batch_gradients.load(arrays, trainer.h)
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
        rows, skipped = read_metrics_file(path)
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
        if self.plot_note is None and self._plotted_rows == len(self.progress.rows):
            return self.out_dir / LOSS_PLOT  # nothing new to draw since the last figure
        self._plotted_rows = len(self.progress.rows)
        try:
            from .plots import loss_unit, plot_loss, run_title
            path = plot_loss(self.progress.rows, self.out_dir / LOSS_PLOT, baseline=self.data.baseline,
                             baseline_label=f"baseline: {self.data.baseline_note}",
                             title=run_title(self.out_dir, asdict(self.config)),
                             unit=loss_unit(self.data.loss, "char" if self.data.kind == "text" else "step"))
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

    def _log(self, metrics: dict, first_loss: float | None = None) -> LogRow:
        """Append a row of the validation ``metrics`` (see :meth:`TextData.evaluate`) and of the
        log window to metrics.jsonl; write best.npz if val_loss is the best so far."""
        p = self.progress
        # A diverged model must not be logged or saved: the run stops here, before either.
        for name, value in metrics.items():
            if not math.isfinite(value):
                raise self._diverged(f"the validation {name.replace('val_', '')} is {value}")
        if first_loss is not None:  # the row before any update
            train_loss, grad_norm, tps = first_loss, None, None
        else:
            train_loss = p.window_loss / p.window_steps
            grad_norm = p.window_norm / p.window_steps
            tps = p.window_tokens / p.window_time if p.window_time > 0 else None
        row = LogRow(step=p.step, epoch=p.step / self.data.batches_per_epoch, train_loss=train_loss,
                     grad_norm=grad_norm, tokens_per_s=tps, elapsed_s=p.elapsed_s,
                     lr=None if self.config.lr_schedule == "constant" else self.schedule.lr_at(max(p.step - 1, 0)),
                     **metrics)
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
        if p.best_val_loss is None or row.val_loss < p.best_val_loss:
            p.best_val_loss, p.best_step, p.evals_since_best = row.val_loss, p.step, 0
            self._write_checkpoint(self.out_dir / BEST)
        else:
            p.evals_since_best += 1
        return row

    def step(self) -> float:
        """One optimizer update; returns the batch loss before it."""
        cfg, p = self.config, self.progress
        b = self.data.batch(p.step, cfg)
        h0 = self.h if (b.carry and self.h is not None) else None
        # Dropout masks from (seed, step) alone, so that a resumed run draws the same ones.
        dropout_seed = np.random.default_rng([cfg.seed, 5, p.step]) if cfg.dropout else None
        # Overflow is reported below as a divergence, in words, not as NumPy's RuntimeWarnings.
        with np.errstate(over="ignore", invalid="ignore"):
            res = self.batch_gradients(b, h0, dropout_seed)
            grads = res.grads
            norm = clip_grad_norm(grads, cfg.clip_norm) if cfg.clip_norm else clip_grad_norm(grads, math.inf)
        if cfg.clip_value:
            clip_grad_value(grads, cfg.clip_value)
        if not (math.isfinite(norm) and math.isfinite(res.loss)):
            raise self._diverged(f"loss {res.loss}, gradient norm {norm}")
        self.optimizer.step(grads, lr=self.schedule.lr_at(p.step))
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

    def batch_gradients(self, b, h0, dropout_seed):
        """Loss and gradients of batch ``b`` (reduction "mean"): the one computation a step makes,
        and the seam where another way of computing them (data-parallel workers) plugs in. Returns
        what :meth:`rnngrad.RNN.gradients` returns (``loss``, ``grads``, ``h_last`` are used)."""
        return self.model.gradients(b.x, b.y, h0=h0, mask=b.mask, reduction="mean", need=(),
                                    workspace=self.workspace, dropout_seed=dropout_seed, lengths=b.lengths)

    def evaluate(self) -> dict:
        """The validation metrics of the model now (val_loss, and val_bpc, val_perplexity or val_accuracy)."""
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite loss is reported as a divergence
            return self.data.evaluate(self.model)

    def run(self, should_stop: Callable[[], bool] = lambda: False,
            on_log: Callable[[LogRow], None] | None = None,
            on_sample: Callable[[int, str], None] | None = None,
            on_step: Callable[[int], None] | None = None, progress: bool = False) -> RunStatus:
        """Train until ``config.steps``, the time budget, early stopping or ``should_stop``.

        Callbacks, each optional:

        * ``should_stop()`` -> bool, polled after every update (the CLI sets it from SIGINT and
          SIGTERM); when it turns true the run saves its checkpoint and returns STOPPED.
        * ``on_log(row)``: after each row of metrics.jsonl is written, with the :class:`LogRow`
          (step, train_loss, val_loss, val_bpc/val_accuracy, lr, grad_norm, tokens_per_s, ...).
        * ``on_sample(step, text)``: text runs, every ``sample_every`` updates, a sample of
          ``sample_length`` characters.
        * ``on_step(step)``: after every update (a progress bar's tick).

        ``progress=True`` prints each log row (and samples) as the CLI does without a terminal.
        Returns a :class:`RunStatus`. The run folder is locked for the whole call: another
        process writing into it is refused (FolderBusy).
        """
        if progress:
            on_log = on_log or (lambda row: print(format_row(row, self.config.steps), flush=True))
            on_sample = on_sample or (lambda step, text: print(f"--- sample at step {step} ---\n{text}\n---"))
        self.lock.acquire()
        try:
            return self._run(should_stop, on_log, on_sample, on_step)
        finally:
            self.lock.release()

    def _start(self, on_log) -> None:
        """A new run's first row, before any update, in a fresh metrics.jsonl."""
        # Checked under the lock: a run that finished in this folder since this one was set up
        # (two commands started together, say) is never overwritten.
        if self.checkpoint_path.exists():
            raise ValueError(f"{str(self.out_dir)!r} already holds a run; continue it with "
                             f"Trainer.resume (rnngrad train --resume {self.out_dir}), or choose another folder")
        # metrics.jsonl starts afresh, replacing (atomically) any file an earlier run left in the
        # folder; a resumed run appends to the rows its checkpoint has seen.
        try:
            atomic_write(self.out_dir / METRICS, lambda fh: None, mode="w")
        except OSError as err:
            raise self._write_failed(self.out_dir / METRICS, err) from None
        first = self.data.batch(0, self.config)
        loss0 = self.model.loss(first.x, first.y, mask=first.mask, reduction="mean", lengths=first.lengths)
        row = self._log(self.evaluate(), first_loss=loss0)
        if on_log:
            on_log(row)

    def patience_spent(self) -> bool:
        """True once ``early_stopping`` evaluations in a row brought no better val_loss."""
        cfg = self.config
        return cfg.early_stopping is not None and self.progress.evals_since_best >= cfg.early_stopping

    def _run(self, should_stop, on_log, on_sample, on_step) -> RunStatus:
        cfg, p = self.config, self.progress
        remove_stray_temporaries(self.out_dir)  # under the lock: no other writer's files
        if p.step == 0 and not p.rows:
            self._start(on_log)
        status = RunStatus.EARLY_STOPPED if self.patience_spent() else RunStatus.DONE
        start = p.elapsed_s  # the budget is per invocation, so a resumed run gets a fresh one
        while p.step < cfg.steps and status is RunStatus.DONE:
            if cfg.time_budget is not None and p.elapsed_s - start >= cfg.time_budget:
                status = RunStatus.TIME
                break
            t0 = time.perf_counter()
            self.step()
            dt = time.perf_counter() - t0
            p.elapsed_s += dt
            p.window_time += dt
            if on_step:
                on_step(p.step)
            if p.step % cfg.log_every == 0 or p.step == cfg.steps:
                row = self._log(self.evaluate())
                if on_log:
                    on_log(row)
                if self.patience_spent() and p.step < cfg.steps:
                    status = RunStatus.EARLY_STOPPED
            if on_sample and self.data.vocab is not None and p.step % cfg.sample_every == 0:
                on_sample(p.step, self.sample(cfg.sample_length, seed=[cfg.seed, 4, p.step]))
            if p.step % cfg.checkpoint_every == 0:
                self.save()
            if status is RunStatus.DONE and should_stop() and p.step < cfg.steps:  # at the last step: done
                status = RunStatus.STOPPED
        # A run cut by its time budget logs its last partial window; a stopped run keeps the
        # window in the checkpoint instead, so the resumed run logs the same rows as an unbroken one.
        if status is RunStatus.TIME and p.window_steps:
            row = self._log(self.evaluate())
            if on_log:
                on_log(row)
        if self._saved_at != p.step:  # not saved already at this step by the loop
            self.save()
        return status

    def sample(self, length: int, seed=None, prime: str | None = None, temperature: float | None = None) -> str:
        """``prime`` followed by ``length`` generated characters (default prime: a line of held-out text)."""
        from .sample import DEFAULT_TEMPERATURE, default_prime, sample

        temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
        if prime is None:  # a line of held-out text, else one visible character the model picks
            prime = self.data.sample_prime or default_prime(self.model, self.data.vocab)
        return prime + sample(self.model, self.data.vocab, length, prime=prime, temperature=temperature, seed=seed)
