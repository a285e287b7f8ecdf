"""Built-in data: character-level text, truncated-BPTT streams, and synthetic tasks.

Nothing is downloaded: text comes from a file you name or from the Python standard
library's own source (:func:`default_corpus`); tasks are generated from a seed.
"""

from . import streams, tasks, text
from .streams import batches, make_streams, num_chunks, train_val_split
from .tasks import (
    ADDING_BASELINE_MSE,
    SINE_BASELINE_MSE,
    TASKS,
    Task,
    adding_problem,
    copy_task,
    copy_task_baseline,
    lookahead_task,
    persistence_mse,
    sine_wave,
)
from .text import DEFAULT_CORPUS_FILES, Vocabulary, default_corpus, default_corpus_paths, load_text

__all__ = text.__all__ + streams.__all__ + tasks.__all__
