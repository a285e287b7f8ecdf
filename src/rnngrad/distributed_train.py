"""Data-parallel training: every update of a :class:`rnngrad.train.Trainer` computed by the
workers of a Dask cluster (``rnngrad train --workers N`` or ``--scheduler ADDRESS``).

    client = connect_for_training(workers=2)           # or scheduler="tcp://HOST:8786"
    trainer = Trainer(config, "runs/x")                # or Trainer.resume("runs/x")
    with attach_workers(trainer, client):
        trainer.run()
    client.close()

The Trainer is unchanged but for one seam: :meth:`Trainer.batch_gradients` (loss, gradients
and final state of the step's batch, reduction "mean") is replaced on the instance by a
:class:`DataParallel`, which computes the same quantity as the sum of row shards (the identity
of :mod:`rnngrad._distributed_shards`: rows are independent sequences, the gradient is a sum
over them, and "mean" divides by the whole batch's count). Clipping, the optimizer, validation,
metrics and checkpoints stay on the client, which alone writes files; the workers hold data and
compute pure functions of (parameters, rows, steps, h0, dropout masks).

What travels:

* **text** — the (L, B) token streams go to the workers once (a :class:`ShardedBatch`, rows =
  streams); batch i of an epoch is the window of steps [i·k, (i+1)·k), so an update sends the
  parameters, the window and each shard's rows of the carried state h0 (None at chunk 0 of an
  epoch, where the Trainer resets it).
* **tasks** — the training set is reshuffled every epoch, so a batch is any B of its n
  sequences: the whole set is held on every worker (a :class:`HeldSequences`: one task
  holding it, one replica task per worker) and an update sends the parameters and the batch's
  row numbers, cut into shards exactly as ShardedBatch cuts a batch (contiguous pieces of the
  batch in its own order, sizes within one). Each shard's result is therefore bit-identical to
  ``rnngrad.distributed.gradients`` on that batch with the same shards.
* anything else (a custom data object) — each update sends its batch
  (:func:`rnngrad.distributed.gradients`).

Dropout masks are drawn on the client, from the step's ``dropout_seed``, for the whole batch,
exactly as the single-process step draws them, and cut by rows.

Exactness: the result is the single-process update up to the order of the floating-point
additions of the shards' sums (float64: ~1e-16 relative per update, tests/test_distributed_train.py
holds 50 updates to 1e-12); the same number of shards gives the same bits on every run, after a
resume and after a killed worker's tasks are recomputed (see :mod:`rnngrad.distributed`, "Fault
tolerance": a step is a task whose specification the scheduler keeps, the carried state is the
client's, so a dead worker costs at most the step in flight).
"""

from __future__ import annotations

import copy
import numbers

import numpy as np

try:
    import dask
    from distributed import Client
except ImportError:  # the one line a command prints for --workers / --scheduler without Dask
    raise ImportError("data-parallel training (--workers, --scheduler) needs Dask: pip install 'rnngrad[dask]'") from None

from . import distributed as rd
from ._distributed_shards import combine, shard_bounds, shard_gradients
from .distributed import _NO_GRAPH_WARNING, ShardedBatch, _hold, connect, workers_of
from .engines import ENGINES, get_engine
from .model import RNN
from .network import Gradients
from .validation import check_params, check_positive_int

__all__ = ["connect_for_training", "attach_workers", "DataParallel", "HeldSequences"]

#: Seconds a new local cluster may take to start its workers.
LOCAL_START_TIMEOUT = 60.0


def connect_for_training(workers: int | None = None, scheduler: str | None = None, *,
                         timeout: float = 10.0) -> Client:
    """The Dask client of a data-parallel run: a new local cluster of ``workers`` processes, or
    the running cluster whose scheduler is at ``scheduler`` (exactly one of the two).

    Errors are one line naming the option: ``--workers`` below 1 or not an integer
    (ValueError/TypeError), or a local cluster that does not start (ChildProcessError);
    ``--scheduler`` unreachable within ``timeout`` seconds, or with no worker after ``timeout``
    seconds (ConnectionError naming the address). Close the client when done (that also ends a
    local cluster).
    """
    if (workers is None) == (scheduler is None):
        raise ValueError("give either --workers N (a local cluster of N processes) or --scheduler ADDRESS "
                         "(a running Dask scheduler), not both" if workers is not None else
                         "give --workers N (a local cluster of N processes) or --scheduler ADDRESS (a running "
                         "Dask scheduler)")
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, numbers.Integral):
            raise TypeError(f"--workers must be a positive integer (worker processes); got "
                            f"{type(workers).__name__} {workers!r}")
        if workers < 1:
            raise ValueError(f"--workers must be a positive integer (worker processes); got {workers}; "
                             f"leave it out to train in this process")
        try:
            client = connect(workers=int(workers))
        except (RuntimeError, TimeoutError) as err:  # distributed's "Nanny failed to start." and the like
            raise ChildProcessError(
                f"--workers {workers}: the local Dask cluster did not start ({err}); its worker processes are "
                f"started with multiprocessing's spawn, so a script that starts one needs an "
                f"`if __name__ == \"__main__\":` guard (see the worker's traceback above)") from None
        try:
            client.wait_for_workers(int(workers), timeout=LOCAL_START_TIMEOUT)
        except BaseException:
            client.close()
            raise
        return client
    try:
        client = connect(scheduler, timeout=timeout)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--scheduler: {err}") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        client.close()
        raise ConnectionError(f"the Dask scheduler at {scheduler!r} has no workers after {timeout:g} s; start "
                              f"some with `dask worker {scheduler}`") from None
    return client


def _engine_for_workers(engine):
    """A built-in engine travels by name, so that each worker uses its own instance."""
    engine = get_engine(engine)
    return engine.name if type(engine) is ENGINES.get(engine.name) else engine


def _rows_gradients(held: dict, rows: np.ndarray, params: dict, dropout_masks, count, need, engine,
                    states: bool) -> tuple:
    """One shard's share (runs on a worker): rows ``rows`` of the held set, as
    :func:`rnngrad._distributed_shards.shard_gradients` computes a shard's share of a batch."""
    shard = {"model": held["model"], "x": held["x"][:, rows], "y": held["y"][:, rows],
             "mask": None if held["mask"] is None else held["mask"][:, rows], "lengths": held["lengths"][rows]}
    return shard_gradients(shard, params, None, None, dropout_masks, count, need, engine, states)


class HeldSequences:
    """A fixed set of n sequences held whole on every worker; each :meth:`gradients` call takes
    a batch of B of its rows (any B, in any order), cut into shards as :class:`ShardedBatch` cuts
    a batch.

    Parameters
    ----------
    client : ``distributed.Client``
    model : :class:`rnngrad.RNN` (time-major: ``batch_first`` False), the configuration
    x : (T, n, D) floats or (T, n) tokens;  y : targets, (T, n, ...) as for ``model.gradients``
    mask : (T, n), optional; every sequence has all T steps as input (lengths T), as a
        Trainer's task batches do, and the mask weights the loss
    shards : int, default the number of workers (at most each call's B)

    Memory: one copy of the set per worker and one in the scheduler (the task that holds it);
    the training sets of the synthetic tasks are megabytes.
    """

    def __init__(self, client: Client, model: RNN, x, y, mask=None, *, shards: int | None = None):
        if not isinstance(model, RNN):
            raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
        if model.batch_first:
            raise ValueError("HeldSequences takes time-major data, (T, n, ...): build the model with "
                             "batch_first=False")
        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client; got {type(client).__name__} "
                            f"(make one with rnngrad.distributed.connect())")
        x, y = np.asarray(x), np.asarray(y)
        self.steps, self.size = T, n = x.shape[:2]
        lengths = np.full(n, T, dtype=np.intp)
        # The model's own boundary, once for the whole set; w: the effective mask as (T·n,) weights.
        _, _, _, _, w, _, _ = model._prepare_loss(x, y, None, mask, "sum", lengths=lengths)
        # Counted steps per sequence: the "mean" count of any batch of rows is a sum of these.
        self._counts = np.full(n, T, dtype=np.int64) if w is None else np.count_nonzero(w.reshape(T, n), axis=0)
        self.client, self._addresses = client, workers_of(client)
        self.shards = check_positive_int("shards", len(self._addresses) if shards is None else shards)
        # The configuration alone (a shallow copy without parameters); each call sends them.
        self.model = template = copy.copy(model)
        template.params = {}
        held = {"model": template, "x": x, "y": y, "mask": None if mask is None else np.asarray(mask),
                "lengths": lengths}
        with dask.config.set(_NO_GRAPH_WARNING):
            root = client.submit(_hold, held, pure=False, workers=[self._addresses[0]], allow_other_workers=True)
            # One replica per worker, each computed from the root (the scheduler keeps one copy of
            # the data, in the root's task); allow_other_workers: recomputable elsewhere.
            self._held = [root] + [client.submit(_hold, root, pure=False, workers=[a], allow_other_workers=True)
                                   for a in self._addresses[1:]]

    def _rows(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.ndim != 1 or rows.size == 0 or rows.dtype.kind not in "iu":
            raise ValueError(f"rows must be a non-empty 1-D array of row numbers; got {rows.dtype} shape {rows.shape}")
        if rows.min() < 0 or rows.max() >= self.size:
            raise ValueError(f"rows must lie in [0, {self.size}) (the held set has n = {self.size} sequences); "
                             f"got {rows.min()}..{rows.max()}")
        if rows.size < self.shards:
            raise ValueError(f"a batch of {rows.size} rows cannot be cut into {self.shards} shards (each needs a "
                             f"sequence); give at least {self.shards} rows or fewer shards")
        return rows.astype(np.intp, copy=False)

    def gradients(self, params, rows, *, reduction: str = "mean", dropout_seed=None, engine=None) -> Gradients:
        """Loss, gradients and h_last of the batch of held rows ``rows`` (B,), at ``params``.

        Equal to ``model.gradients(x[:, rows], y[:, rows], mask=mask[:, rows], lengths=T,
        reduction=..., need=(), dropout_seed=...)`` up to the order of the shard sums; dh, dx,
        ... are not computed (None), ``forward`` is None.
        """
        if not self._held:
            raise ValueError("this HeldSequences is closed (its data were freed); build a new one")
        if isinstance(params, RNN):
            params = params.params
        params = check_params(params, self.model.shapes, self.model.dtype)
        rows = self._rows(rows)
        B = rows.size
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean'; got {reduction!r}")
        count = None
        if reduction == "mean":
            count = int(self._counts[rows].sum())
            if count == 0:
                raise ValueError("reduction='mean' needs at least one unmasked (t, b); the mask is all zeros "
                                 "in these rows")
        bounds = shard_bounds(B, self.shards)
        # Drawn on the client for the whole batch, exactly as model.gradients draws them.
        masks = self.model._dropout_masks(self.steps, B, dropout_seed, None)
        engine, W = _engine_for_workers(engine), len(self._held)
        with dask.config.set(_NO_GRAPH_WARNING):
            futures = [self.client.submit(
                _rows_gradients, self._held[i % W], rows[lo:hi], params,
                None if masks is None else [np.ascontiguousarray(m[:, lo:hi]) for m in masks],
                count, (), engine, False, pure=False) for i, (lo, hi) in enumerate(bounds)]
        try:
            parts = self.client.gather(futures)  # in shard order: the sum's order is fixed
        finally:
            self.client.cancel(futures)
        return combine(parts, False)

    def close(self) -> None:
        """Free the held data on the workers and in the scheduler."""
        if self._held:
            self.client.cancel(self._held)
            self._held = []

    def __enter__(self) -> "HeldSequences":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HeldSequences(T={self.steps}, n={self.size}, shards={self.shards}, model={self.model!r})"


class DataParallel:
    """The callable that replaces ``trainer.batch_gradients``: the step's loss, gradients (writable
    arrays of the model's dtype) and h_last, computed by the workers. Made by
    :func:`attach_workers`; :meth:`close` gives the Trainer back its own method.

    Attributes
    ----------
    trainer, client : as given;  shards : rows of every batch are cut into this many pieces
    held : the :class:`ShardedBatch` (text) or :class:`HeldSequences` (tasks) on the workers, or
        None where each step sends its batch
    sent_batches : updates that sent their batch (0 but for a custom data object)
    """

    def __init__(self, trainer, client: Client, shards: int | None = None):
        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client; got {type(client).__name__} "
                            f"(make one with rnngrad.distributed_train.connect_for_training())")
        model, data, B = trainer.model, trainer.data, trainer.config.batch_size
        if getattr(trainer.config, "gradient", "bptt") != "bptt":
            raise ValueError(f"the workers compute BPTT gradients of each batch; --gradient "
                             f"{trainer.config.gradient} trains in one process: leave out --workers/--scheduler")
        if "batch_gradients" in vars(trainer):
            raise ValueError(f"this Trainer's batch_gradients is already replaced (by {vars(trainer)['batch_gradients']!r}); "
                             f"close that first")
        if model.batch_first:
            raise ValueError("the Trainer's batches are time-major (T, B): its model must have batch_first=False")
        self.trainer, self.client = trainer, client
        # Default: a shard per worker, but never more shards than sequences in a batch.
        self.shards = (min(len(workers_of(client)), B) if shards is None
                       else check_positive_int("shards", shards))
        if self.shards > B:
            raise ValueError(f"shards must be at most the batch size {B} (each shard needs a sequence); "
                             f"got {self.shards}")
        self.sent_batches = 0
        kind = getattr(data, "kind", None)
        if kind == "text":
            self.held = ShardedBatch(client, model, data.x, data.y, shards=self.shards)
        elif kind == "task":
            self.held = HeldSequences(client, model, data.x, data.y, data.mask, shards=self.shards)
        else:
            self.held = None

    # --- where the step's batch lies in the held data --------------------------------------
    def _window(self, b) -> slice | None:
        """Text: the window of steps of the held streams that batch ``b`` is (batch i of an epoch
        is steps [i·k, (i+1)·k), see TextData.batch), checked against the batch itself."""
        data, step = self.trainer.data, self.trainer.progress.step
        i = step % data.batches_per_epoch
        window = slice(i * data.k, (i + 1) * data.k)
        same = np.array_equal(data.x[window], b.x) and np.array_equal(data.y[window], b.y) and b.mask is None
        return window if same else None

    def _rows(self, b) -> np.ndarray | None:
        """Tasks: the training-set rows of batch ``b`` (the epoch's shuffle, sliced as
        TaskData.batch slices it), checked against the batch itself."""
        data, cfg, step = self.trainer.data, self.trainer.config, self.trainer.progress.step
        rows = getattr(b, "rows", None)
        if rows is None:
            perm = getattr(data, "_perm", None)  # the shuffle of the epoch data.batch just served
            if perm is None:
                return None
            i = step % data.batches_per_epoch
            rows = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        rows = np.asarray(rows)
        same = (np.array_equal(data.x[:, rows], b.x) and np.array_equal(data.y[:, rows], b.y)
                and (b.mask is None if data.mask is None else np.array_equal(data.mask[:, rows], b.mask))
                and (b.lengths is None or np.all(b.lengths == data.x.shape[0])))
        return rows if same else None

    # --- the seam ---------------------------------------------------------------------------
    def __call__(self, b, h0, dropout_seed) -> Gradients:
        """``Trainer.batch_gradients(b, h0, dropout_seed)``, on the workers."""
        model = self.trainer.model
        if isinstance(self.held, ShardedBatch):
            window = self._window(b)
            if window is not None:
                return self.held.gradients(model, h0=h0, window=window, reduction="mean", need=(),
                                           dropout_seed=dropout_seed, states=False)
        elif isinstance(self.held, HeldSequences):
            rows = self._rows(b)
            if rows is not None:
                return self.held.gradients(model.params, rows, reduction="mean", dropout_seed=dropout_seed)
        # A batch that is not a piece of the held data: send it (exact too, only slower).
        self.sent_batches += 1
        return rd.gradients(model, b.x, b.y, h0=h0, mask=b.mask, reduction="mean", need=(),
                            dropout_seed=dropout_seed, lengths=b.lengths, client=self.client, shards=self.shards)

    def close(self) -> None:
        """Free the workers' data and restore the Trainer's own batch_gradients."""
        if self.held is not None:
            self.held.close()
        if self.trainer.__dict__.get("batch_gradients") is self:
            del self.trainer.batch_gradients

    def __enter__(self) -> "DataParallel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DataParallel(shards={self.shards}, held={self.held!r})"


def attach_workers(trainer, client: Client, shards: int | None = None) -> DataParallel:
    """Make every update of ``trainer`` compute its gradients on the workers of ``client``.

    ``trainer`` is a :class:`rnngrad.train.Trainer`, new or resumed; its data go to the
    workers now (once). ``shards``: pieces each batch is cut into, default one per worker
    (at most the batch size). Returns the :class:`DataParallel` now in ``trainer.batch_gradients``;
    use it as a context manager, or call its ``close()``, to free the workers' data and give the
    Trainer back its single-process step.
    """
    dp = DataParallel(trainer, client, shards)
    trainer.batch_gradients = dp  # an instance attribute: it shadows the method, for this Trainer only
    return dp
