"""Exact data-parallel gradients on Dask distributed (``pip install 'rnngrad[dask]'``).

The batch's rows are cut into shards S_1, ..., S_N; each worker computes its shard's loss and
gradients with :meth:`rnngrad.RNN.gradients` and the client adds them up, in shard order:

    L = sum_i L_{S_i}          dL/dtheta = sum_i dL_{S_i}/dtheta

(rows are independent sequences, see :mod:`rnngrad._distributed_shards`). "mean" divides by the
unmasked count of the whole batch, counted on the client. The result is the single-process
result up to the order of floating-point additions, and bit-identical on every run with the
same shards.

Two forms:

* :func:`gradients` — one call, the signature of :meth:`rnngrad.RNN.gradients` plus ``client``
  and ``shards``: sends the batch, computes, forgets it.
* :class:`ShardedBatch` — for training: the data (e.g. the token streams of truncated BPTT)
  go to the workers once; each :meth:`ShardedBatch.gradients` call sends only the parameters,
  the shard's carried state h0 and the steps to use.

Fault tolerance. Every input of a step is in a Dask task whose specification the scheduler
keeps: a shard is a task returning its arrays, and a shard's step is a task carrying the
parameters, the window and its rows of h0. When a worker dies, Dask recomputes the shards it
held from their specifications and reruns its steps elsewhere; a step is a pure function of
(parameters, shard, window, h0), so the rerun gives the same bits. The carried state of
truncated BPTT is held by the client (passed as ``h0``, returned as ``h_last``), never only by a
worker: a killed worker costs at most the step in flight. (A worker-side state keyed by step
would die with the worker, and rebuilding it would need every earlier step again.) The price:
the scheduler holds a copy of the data shards for as long as the ShardedBatch lives, and one
copy of the parameters per shard for the duration of a step.

Why Dask: pure Python, a LocalCluster of processes on a laptop or in CI, a scheduler address for
a cluster of machines, dask-jobqueue for SLURM/PBS; see docs/scaling.md for what it
costs per step and when data parallelism pays.

Dask is imported here only: ``import rnngrad`` never imports it.
"""

from __future__ import annotations

import copy

import dask
from distributed import Client

import numpy as np

from ._distributed_shards import combine, shard_bounds, shard_gradients, take_rows
from .engines import ENGINES, get_engine
from .model import REDUCTIONS, RNN
from .network import OPTIONAL_GRADS, Gradients
from .validation import check_choice, check_h0, check_need, check_params, check_positive_int, check_real

__all__ = ["connect", "gradients", "ShardedBatch", "workers_of"]

# Inputs are embedded in tasks on purpose (that is what makes them recomputable, see the module
# docstring), so Dask's warning about data in a task graph does not apply to them.
_NO_GRAPH_WARNING = {"distributed.admin.large-graph-warning-threshold": "1TiB"}


def connect(address: str | None = None, *, workers: int | None = None, timeout: float = 10.0) -> Client:
    """A ``distributed.Client``: to the scheduler at ``address``, or on a new local cluster.

    Parameters
    ----------
    address : "tcp://HOST:PORT" of a running scheduler (``dask scheduler`` prints it; on SLURM
        or PBS, dask-jobqueue starts one), or None for a ``LocalCluster`` on this machine
    workers : the local cluster's worker processes (one thread each: the gradient of a shard
        is one NumPy/numba computation); default 1. Only without ``address``.
    timeout : seconds to wait for the scheduler

    Raises ConnectionError (one line naming the address and what to do) when the scheduler
    cannot be reached within ``timeout``. ``client.close()`` also ends a local cluster.

    The client fetches results straight from the workers (``direct_to_workers``: the scheduler
    would otherwise relay every shard's gradients, 2 to 3 times slower for 5 MB here); where
    this machine cannot reach the workers' addresses, make the Client yourself without it. It is
    not made the default client: rnngrad always passes it explicitly.
    """
    timeout = check_real("timeout", timeout)
    if address is None:
        n = 1 if workers is None else check_positive_int("workers", workers)
        return Client(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      set_as_default=False, direct_to_workers=True)
    if workers is not None:
        raise ValueError("give either address (a running scheduler) or workers (a local cluster), not both")
    if not isinstance(address, str):
        raise TypeError(f"address must be a scheduler address such as 'tcp://10.0.0.5:8786'; "
                        f"got {type(address).__name__}")
    try:  # checked before a Client exists: a half-made one would time out again when collected
        from distributed.comm.addressing import parse_address, parse_host_port

        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as err:
        raise ValueError(f"address must be a scheduler address such as 'tcp://10.0.0.5:8786'; got {address!r} "
                         f"({err})") from None
    try:
        # Not the default client: rnngrad always passes its client, and a failed connection must not
        # leave a dead client behind as everyone's default (distributed.wait would hang on it).
        return Client(address, timeout=timeout, set_as_default=False, direct_to_workers=True)
    except ValueError as err:  # Dask's parser: "missing port number in address ..."
        raise ValueError(f"address must be a scheduler address such as 'tcp://10.0.0.5:8786'; got {address!r} "
                         f"({err})") from None
    except (OSError, TimeoutError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ConnectionError(
            f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s ({reason}); start one "
            f"there with `dask scheduler` and workers with `dask worker {address}`, or check the address "
            f"(the scheduler prints it as 'Scheduler at: tcp://HOST:PORT')") from None


def workers_of(client: Client) -> list[str]:
    """The addresses of the client's workers, sorted (shard i is first placed on worker i mod W)."""
    addresses = sorted(client.nthreads())
    if not addresses:
        raise ValueError(f"the Dask cluster at {client.scheduler.address!r} has no workers; start some "
                         f"with `dask worker {client.scheduler.address}` (or client.wait_for_workers(n))")
    return addresses


def _client(client) -> tuple[Client, bool]:
    """(the Client, whether this call opened it): a Client, or an address to connect to."""
    if isinstance(client, Client):
        return client, False
    if isinstance(client, str):
        return connect(client), True
    raise TypeError(f"client must be a distributed.Client or a scheduler address 'tcp://HOST:PORT'; "
                    f"got {type(client).__name__} (make one with rnngrad.distributed.connect())")


def _hold(value):
    """A task that returns its argument: data placed on a worker that Dask can recompute."""
    return value


class ShardedBatch:
    """A batch cut by rows into shards held on a Dask cluster between gradient calls.

    Parameters
    ----------
    client : ``distributed.Client``
    model : :class:`rnngrad.RNN`, the configuration (sizes, f, g, loss, batch_first, dtype);
        parameters are given to each :meth:`gradients` call
    x : (T, B, D) floats or (T, B) tokens; ((B, T, ...) with ``model.batch_first``)
    y : targets as for :meth:`rnngrad.RNN.gradients`
    shards : int, default the number of workers; at most B
    mask : (T, B) (or (B, T)), optional;  lengths : (B,), optional (not with a window)

    The data are validated here, as :meth:`rnngrad.RNN.gradients` would, and sent once. Use it
    as a context manager, or call :meth:`close`, to free the workers' (and the scheduler's) copy.

    Attributes
    ----------
    model : the configuration the batch was built for (an RNN without parameters)
    steps, batch_size : T and B of the held data;  shards : their number
    bounds : each shard's rows [lo, hi), in shard order (the order of the sum)
    """

    def __init__(self, client: Client, model: RNN, x, y, *, shards: int | None = None, mask=None, lengths=None):
        if not isinstance(model, RNN):
            raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client; got {type(client).__name__} "
                            f"(make one with rnngrad.distributed.connect())")
        self.client = client
        # The model's own boundary: the same errors as model.gradients, raised here, once; w is the
        # effective mask (lengths included) as (T·B,) weights, or None when every (t, b) counts.
        _, xs, _, _, w, _, _ = model._prepare_loss(x, y, None, mask, "sum", lengths=lengths)
        self.steps, self.batch_size = T, B = xs.shape[:2]
        addresses = workers_of(client)
        self.shards = check_positive_int("shards", len(addresses) if shards is None else shards)
        if self.shards > B:
            raise ValueError(f"shards must be at most the batch size B = {B} (each shard needs a sequence); "
                             f"got {self.shards}")
        # Unmasked (t, b) per step, cumulated: the "mean" count of any window in O(1).
        per_step = np.full(T, B) if w is None else np.count_nonzero(w.reshape(T, B), axis=1)
        self._cumulative = np.concatenate([[0], np.cumsum(per_step)])
        self._has_lengths = lengths is not None
        self.bounds = shard_bounds(B, self.shards)
        # The configuration alone (a shallow copy without parameters): it travels once, with the
        # shards; the parameters come with each step.
        self.model = template = copy.copy(model)
        template.params = {}
        b_axis = 0 if model.batch_first else 1
        arrays = {"x": np.asarray(x), "y": np.asarray(y), "mask": None if mask is None else np.asarray(mask)}
        self._held = []
        with dask.config.set(_NO_GRAPH_WARNING):
            for i, (lo, hi) in enumerate(self.bounds):
                shard = {k: take_rows(v, lo, hi, b_axis) for k, v in arrays.items()}
                shard["lengths"] = take_rows(None if lengths is None else np.asarray(lengths), lo, hi, 0)
                shard["model"] = template
                # Placed on worker i mod W; allow_other_workers so that Dask can recompute it
                # elsewhere when that worker dies.
                self._held.append(client.submit(_hold, shard, pure=False, workers=[addresses[i % len(addresses)]],
                                                allow_other_workers=True))

    # --- per call ------------------------------------------------------------------------
    def _params(self, params) -> dict:
        if isinstance(params, RNN):
            if repr(params) != repr(self.model):
                raise ValueError(f"params is a model unlike the one this batch was built for: {params!r}, not "
                                 f"{self.model!r}; pass that model (or its params dict), or build a new ShardedBatch")
            params = params.params
        if not isinstance(params, dict):
            raise TypeError(f"params must be an rnngrad.RNN or a dict like model.params; got {type(params).__name__}")
        return check_params(params, self.model.shapes, self.model.dtype)

    def _window(self, window) -> tuple[int, int] | None:
        if window is None:
            return None
        if not isinstance(window, slice) or window.step not in (None, 1):
            raise TypeError(f"window must be a slice of steps such as slice(i * k, (i + 1) * k); got {window!r}")
        start, stop, _ = window.indices(self.steps)
        if stop <= start:
            raise ValueError(f"window {window!r} selects no step of the T = {self.steps} held")
        if self._has_lengths:
            raise ValueError("lengths describe whole sequences, not a window of them; give a mask instead "
                             "of lengths to use windows")
        return start, stop

    def _count(self, window) -> int:
        start, stop = (0, self.steps) if window is None else window
        count = int(self._cumulative[stop] - self._cumulative[start])
        if count == 0:
            raise ValueError("reduction='mean' needs at least one unmasked (t, b); mask is all zeros"
                             + (f" in steps [{start}, {stop})" if window is not None else ""))
        return count

    def _h0_shards(self, h0) -> list:
        if h0 is None:
            return [None] * self.shards
        m = self.model
        arr = check_h0(h0, self.batch_size, m.hidden_size, m.dtype, units=m.num_layers * m.directions)
        single = m._single_state(h0)  # the shape h0 was given in is the shape of dh0 and h_last
        return [arr[0, lo:hi] if single else arr[:, lo:hi] for lo, hi in self.bounds]

    def _dropout_shards(self, window, dropout_seed, dropout_masks) -> list:
        T = self.steps if window is None else window[1] - window[0]
        # Drawn on the client for the whole batch, exactly as model.gradients draws them.
        masks = self.model._dropout_masks(T, self.batch_size, dropout_seed, dropout_masks)
        if masks is None:
            return [None] * self.shards
        layout = (lambda m: m.swapaxes(0, 1)) if self.model.batch_first else (lambda m: m)
        return [[np.ascontiguousarray(layout(m[:, lo:hi])) for m in masks] for lo, hi in self.bounds]

    def gradients(self, params, *, h0=None, window: slice | None = None, reduction: str = "sum", need=None,
                  dropout_seed=None, dropout_masks=None, engine=None, states: bool = True) -> Gradients:
        """Loss and gradients of the held batch (or of steps ``window`` of it) at ``params``.

        Parameters
        ----------
        params : :class:`rnngrad.RNN` (this batch's configuration) or a dict like ``model.params``;
            sent to the workers once per call
        h0 : (U, B, H), or (B, H) for one unit; optional (zeros). Carry ``res.h_last`` here
            for truncated BPTT: each shard gets its own rows back.
        window : slice of steps, e.g. ``slice(i * k, (i + 1) * k)`` for chunk i; default all T
        reduction, need, dropout_seed, dropout_masks, engine : as :meth:`rnngrad.RNN.gradients`
            (dropout masks are drawn here, for the whole batch, and sent with the step)
        states : bool, default True
            Also return dh, dy_hat, dx, dh0 (as large as the states); False returns loss,
            grads and h_last only (None in their place), all that a training step needs.

        Returns
        -------
        :class:`rnngrad.Gradients` with the shards' parameter gradients summed in shard order
        and the per-sequence fields concatenated along the batch axis; ``forward`` is None.
        """
        if not self._held:
            raise ValueError("this ShardedBatch is closed (its shards were freed); build a new one")
        params = self._params(params)
        check_choice("reduction", reduction, REDUCTIONS)
        need = tuple(sorted(check_need(need, OPTIONAL_GRADS)))
        if not isinstance(states, (bool, np.bool_)):
            raise TypeError(f"states must be True or False; got {type(states).__name__} {states!r}")
        engine = get_engine(engine)
        # A built-in engine travels by name, so each worker uses its own instance.
        engine = engine.name if type(engine) is ENGINES.get(engine.name) else engine
        window = self._window(window)
        count = self._count(window) if reduction == "mean" else None
        h0s, masks = self._h0_shards(h0), self._dropout_shards(window, dropout_seed, dropout_masks)
        client = self.client
        # Each shard's task carries the parameters itself: one hop client -> scheduler -> worker and
        # nothing else to fetch first (a shared parameters task would add a task and a transfer to
        # every step's latency), and the scheduler keeps the task to rerun it if its worker dies.
        with dask.config.set(_NO_GRAPH_WARNING):
            futures = [client.submit(shard_gradients, held, params, window, h0s[i], masks[i], count, need,
                                     engine, bool(states), pure=False) for i, held in enumerate(self._held)]
        try:
            parts = client.gather(futures)  # a list in shard order, however they finished
        finally:
            client.cancel(futures)
        return combine(parts, self.model.batch_first)

    # --- life ----------------------------------------------------------------------------
    def close(self) -> None:
        """Free the shards on the workers and in the scheduler."""
        if self._held:
            self.client.cancel(self._held)
            self._held = []

    def __enter__(self) -> "ShardedBatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ShardedBatch(T={self.steps}, B={self.batch_size}, shards={self.shards}, "
                f"rows={[hi - lo for lo, hi in self.bounds]}, model={self.model!r})")


def gradients(model: RNN, x, y, h0=None, mask=None, reduction: str = "sum", need=None, workspace=None,
              dropout_seed=None, dropout_masks=None, engine=None, lengths=None, *, client,
              shards: int | None = None) -> Gradients:
    """:meth:`rnngrad.RNN.gradients` computed by the workers of a Dask cluster, shard by shard.

    Parameters
    ----------
    model, x, y, h0, mask, reduction, need, dropout_seed, dropout_masks, engine, lengths :
        as :meth:`rnngrad.RNN.gradients`
    workspace : must be None (each worker process allocates its own arrays)
    client : a ``distributed.Client``, or a scheduler address to connect to for this call
    shards : the number of row shards, default the number of workers (at most B)

    Returns
    -------
    :class:`rnngrad.Gradients`: ``loss`` and ``grads`` summed over the shards in shard order,
    ``dh``, ``dy_hat``, ``dx``, ``dh0``, ``h_last`` concatenated along the batch axis, shaped as
    ``model.gradients`` shapes them; ``forward`` is None (the caches stay on the workers).
    """
    if workspace is not None:
        raise ValueError("workspace must be None for distributed gradients: each worker process allocates "
                         "its own arrays; drop the workspace argument")
    if not isinstance(model, RNN):
        raise TypeError(f"model must be an rnngrad.RNN; got {type(model).__name__}")
    client, opened = _client(client)
    try:
        with ShardedBatch(client, model, x, y, shards=shards, mask=mask, lengths=lengths) as batch:
            return batch.gradients(model, h0=h0, reduction=reduction, need=need, dropout_seed=dropout_seed,
                                   dropout_masks=dropout_masks, engine=engine)
    finally:
        if opened:
            client.close()
