"""Opening a trained run from Python: ``run = rnngrad.load(path)``.

    run = rnngrad.load("runs/20261201-120000-my_book")    # a run folder, or a checkpoint file
    print(run.sample(prime="The ", length=200, seed=0))   # text runs
    run.model                                             # the rnngrad.RNN
    run.config                                            # its rnngrad.train.TrainConfig
    run.vocab.encode("abc")                               # text runs: characters <-> indices
    best = rnngrad.load(run.folder, best=True)            # the lowest validation loss seen

A checkpoint is read as ``rnngrad sample`` and ``--resume`` read it: only the members a
checkpoint has, each checked before it is trusted, never with pickle (see
:mod:`rnngrad.checkpoint`), so a run folder received from someone else is safe to open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .data import Vocabulary
from .model import RNN
from .train import BEST, CHECKPOINT, METRICS, TrainConfig, _checked_progress
from .metrics import read_metrics_file

__all__ = ["Run", "load"]


@dataclass
class Run:
    """A trained model with what it was trained on.

    Attributes
    ----------
    model : :class:`rnngrad.RNN`
    config : :class:`rnngrad.train.TrainConfig`, or None for a checkpoint of a bare model
        (written by :func:`rnngrad.checkpoint.save_checkpoint`, not by training)
    vocab : :class:`rnngrad.data.Vocabulary` of a text run (characters <-> indices), else None
    path : the checkpoint file read
    folder : the run folder (the checkpoint's folder)
    step : the updates the model has had (None for a bare model)
    best : {"step", "val_loss"} of the best validation loss logged, or None
    metrics : the rows of the folder's metrics.jsonl up to ``step`` (list of dicts; [] if none)
    task : the synthetic task's name, or None for text
    """

    model: RNN
    config: TrainConfig | None
    vocab: Vocabulary | None
    path: Path
    step: int | None = None
    best: dict | None = None
    metrics: list = field(default_factory=list)
    task: str | None = None
    sample_prime: str | None = None  #: the default prime: a line of the run's held-out text, if saved

    @property
    def folder(self) -> Path:
        return self.path.parent

    def sample(self, prime: str | None = None, length: int = 200, temperature: float | None = None,
               seed=None) -> str:
        """``prime`` followed by ``length`` characters drawn from the model (text runs).

        ``prime`` (default: the line of held-out text the run saved, as ``rnngrad sample``
        uses, else :func:`rnngrad.sample.default_prime`, one visible character) must use
        characters of :attr:`vocab`; ``temperature`` defaults to
        :data:`rnngrad.sample.DEFAULT_TEMPERATURE` (the CLI's default too); ``seed`` makes the
        draw repeatable. Returns the prime and the generated text as one string, as
        ``rnngrad sample`` prints them.
        """
        from .sample import DEFAULT_TEMPERATURE, default_prime, sample

        if self.vocab is None:
            what = f"the task {self.task!r}" if self.task else "no text (a bare model checkpoint)"
            raise ValueError(f"this run was trained on {what}; sampling needs a run trained on text")
        temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
        if prime is None:
            prime = self.sample_prime or default_prime(self.model, self.vocab)
        return prime + sample(self.model, self.vocab, length, prime=prime, temperature=temperature, seed=seed)

    def __repr__(self) -> str:
        what = f"task {self.task}" if self.task else ("text" if self.vocab is not None else "bare model")
        return f"Run({str(self.path)!r}, {what}, step={self.step}, model={self.model!r})"


def load(path, best: bool = False) -> Run:
    """Open a trained run: a run folder (its checkpoint.npz, or best.npz with ``best=True``) or a
    checkpoint file. Raises CheckpointError (a ValueError, one line) for anything that is not a
    readable checkpoint."""
    if not isinstance(best, bool):
        raise TypeError(f"best must be True or False; got {type(best).__name__} {best!r}")
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except (OSError, ValueError) as err:  # a name too long for the file system, a NUL byte
        raise CheckpointError(f"{str(path)[:200]!r} cannot be opened: {err}") from None
    if is_dir:
        path = path / (BEST if best else CHECKPOINT)
        if not path.is_file():
            raise CheckpointError(f"{str(path.parent)!r} holds no {path.name}"
                                  + (" (a run writes it at its first log row)" if best else
                                     "; is it a run folder written by rnngrad train?"))
    elif best:
        raise ValueError("best=True takes a run folder (it opens best.npz there); got a file: open it directly")
    meta, arrays = load_checkpoint(path, groups=())
    model = model_from_checkpoint(meta, arrays)
    if not isinstance(meta.get("config"), dict):  # a bare model, not a training run
        return Run(model, None, None, path)
    try:
        config = TrainConfig.from_dict(meta["config"])
        vocab = None if meta.get("vocab") is None else Vocabulary.from_json(meta["vocab"])
        progress = _checked_progress(meta["progress"])
        step = progress.step
        prime = meta["data"].get("sample_prime")
        if prime is not None and not (isinstance(prime, str) and prime and vocab is not None
                                      and all(ch in vocab.index for ch in prime)):
            raise ValueError("its data.sample_prime is not text of its own vocabulary")
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} is a damaged training checkpoint: {err}") from None
    best_info = None
    if progress.best_step is not None:
        best_info = {"step": progress.best_step, "val_loss": progress.best_val_loss}
    rows = []
    metrics = path.parent / METRICS
    if metrics.is_file():
        rows = [r for r in read_metrics_file(metrics)[0] if r["step"] <= step]
    return Run(model, config, vocab, path, step, best_info, rows, config.task, prime)
