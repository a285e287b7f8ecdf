"""How many BLAS threads training and sampling use: a rule from the problem size and the free
cores, and a context manager that applies it (and re-applies it while a run goes on).

Why: an update of a small model is a few hundred small matrix products. OpenBLAS (NumPy's and
scipy's) and MKL split every product above a small size among one worker per core. When the
other cores are free this pays, when they are busy it is a disaster: a worker that is not
scheduled holds up the whole product, and the caller spins waiting for it. Measured on a 2-core
machine (docs/performance.md, "BLAS threads"): one update of the main job's model (H = 256,
B = 32, k = 64) takes 9.6-11.1 ms with two threads and 14.0-14.5 ms with one when the machine is
idle, but with other processes keeping 1.2-1.7 cores busy two threads are 2.3-15 times slower
than one, for every size from (H, B) = (100, 16) to (1024, 64).

The rule (:func:`choose_threads`), for T steps of B sequences of H hidden units per call (T = k,
the chunk length, in training; T = B = 1 in sampling, one character at a time):

    size cap   = max(1, floor(T·B·H·H / MACS_PER_THREAD))  the recurrence's multiply-adds
                                                           per call (seed §2B, and again in §3B
                                                           and §3C.4), one thread per 2^24
    free cores = max(1, cores - round(others))            cores minus those other processes
                                                           keep busy, on average
    threads    = min(size cap, free cores)

``cores`` is what this process may run on (``os.sched_getaffinity``); ``others`` is measured
from /proc/stat (total busy time less this process's own, :class:`CpuMeter`). OpenMP's
``OMP_DYNAMIC`` follows the same idea: no more workers than there are idle cores. Rounding:
others at 0.43 cores still left two threads 1.4 times faster, at 0.67 one thread was faster.

:func:`blas_threads` sets the BLAS pools' size with threadpoolctl (every OpenBLAS/MKL/BLIS loaded
in the process: NumPy's, and scipy's, which the numba engine's compiled loops call) and restores it
on exit. An automatic choice is made from a short sample (0.2 s) of the machine's load when
:func:`blas_threads` is called, and :meth:`BlasThreads.poll` (call it after each training step; it
does nothing until ``every_s`` seconds have passed) makes it again from the load since the last
choice, so a run that starts on an idle machine drops to one thread when a neighbour starts, and
back. (A neighbour squeezed by our own threads shows as less than the core it wants: one that
gets under half a core next to them does not lower the count.) threadpoolctl is
optional (``pip install threadpoolctl``, or ``rnngrad[cli]``); without it nothing is changed and
the ``note`` says so. The numba kernels are not parallel (no ``parallel=True`` or ``prange`` in
:mod:`rnngrad.engines`), so numba's own thread count is left alone. Library code never prints: the
caller shows the ``note``.
"""

from __future__ import annotations

import numbers
import os
import time
from typing import Callable

__all__ = ["MACS_PER_THREAD", "BlasThreads", "CpuMeter", "available_cores", "check_threads", "choose_threads",
           "blas_threads", "threadpoolctl_available"]

#: Multiply-adds of the recurrence per call (T·B·H·H) per BLAS thread, :func:`choose_threads`.
#: 2^24 = 1.7e7, from the idle measurements: sampling (T = B = 1) gained nothing from a second
#: thread at H = 256 or 1024, nor did (T, B, H) = (64, 16, 100) at 1.0e7 in one of two runs
#: (1.24x in the other): both stay on one thread, sampling up to H = 4096. The main job's
#: (64, 32, 256) at 1.3e8 gained 1.25-1.50x in every idle run, larger models up to 1.75x.
MACS_PER_THREAD = 1 << 24
#: Seconds of /proc/stat sampled when an automatic :func:`blas_threads` is made.
SAMPLE_S = 0.2

_MISSING_NOTE = ("threadpoolctl is not installed, so the BLAS thread count is left at the library's default; "
                 "install it with pip install threadpoolctl (or 'rnngrad[cli]')")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity masks
        return os.cpu_count() or 1


def threadpoolctl_available() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def check_threads(threads) -> int | None:
    """``threads`` (the ``--threads`` option) as an int, or None (automatic); TypeError/ValueError otherwise."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads (--threads) must be a positive integer or None for the automatic choice; "
                        f"got {type(threads).__name__} {threads!r}")
    if threads < 1:
        raise ValueError(f"threads (--threads) must be a positive integer (1 for one BLAS thread); got {threads}; "
                         f"leave it out for the automatic choice")
    return int(threads)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def choose_threads(hidden_size: int, batch_size: int, *, chunk_len: int = 1, cores: int | None = None,
                   others: float = 0.0) -> int:
    """BLAS threads for calls of ``chunk_len`` T steps of ``batch_size`` B sequences of ``hidden_size`` H.

    ``min(max(1, T·B·H·H // MACS_PER_THREAD), max(1, cores - round(others)))`` (module docstring);
    ``cores`` defaults to :func:`available_cores`, ``others`` (cores kept busy by other processes)
    to 0, an idle machine. Layers and directions run one after the other with products of the
    same sizes, so they do not change the choice.
    """
    H, B, T = (_positive(n, v) for n, v in (("hidden_size", hidden_size), ("batch_size", batch_size),
                                             ("chunk_len", chunk_len)))
    limit = available_cores() if cores is None else _positive("cores", cores)
    if isinstance(others, bool) or not isinstance(others, numbers.Real) or not others >= 0:
        raise ValueError(f"others (cores busy with other processes) must be a number >= 0; got {others!r}")
    size_cap = max(1, T * B * H * H // MACS_PER_THREAD)
    free = max(1, limit - round(others))
    return min(size_cap, free)


class CpuMeter:
    """Cores kept busy by *other* processes, on average since the previous reading.

    Linux: (machine busy time - this process's CPU time) / wall time, from /proc/stat (user, nice,
    system, irq, softirq and steal; steal is time the hypervisor gave to another machine) and
    /proc/self/stat (utime + stime of every thread). Elsewhere: the 1-minute load average less
    this process's one thread where ``os.getloadavg`` exists, else 0 (assumed idle).
    """

    def __init__(self, read: Callable[[], tuple | None] | None = None):
        """``read``: returns (seconds the machine has been busy, seconds this process has run,
        a wall-clock time in seconds) or None; default :meth:`read_proc`."""
        self._read = read if read is not None else self.read_proc
        self._last = self._read()

    @staticmethod
    def read_proc() -> tuple | None:
        """The reading from /proc/stat and /proc/self/stat, or None where they cannot be read."""
        try:
            with open("/proc/stat") as fh:
                ticks = [int(v) for v in fh.readline().split()[1:9]]
            with open("/proc/self/stat") as fh:
                own = fh.read().rsplit(")", 1)[1].split()  # from field 3 on; utime, stime are fields 14, 15
        except (OSError, ValueError, IndexError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
        return busy / hz, (int(own[11]) + int(own[12])) / hz, time.perf_counter()

    def others(self) -> float:
        """Other processes' busy cores since the last call (or since the meter was made)."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None:
            try:
                return max(0.0, os.getloadavg()[0] - 1.0)
            except (AttributeError, OSError):
                return 0.0
        wall = now[2] - last[2]
        if wall <= 0:
            return 0.0
        return max(0.0, ((now[0] - last[0]) - (now[1] - last[1])) / wall)


class BlasThreads:
    """The thread setting made by :func:`blas_threads`: ``threads`` (the count now), ``automatic``,
    ``applied`` (False without threadpoolctl), ``note`` (why not applied, else None), ``others``
    (the other processes' busy cores behind the last automatic choice, else None) and
    :meth:`poll`."""

    def __init__(self, threads: int | None, hidden_size: int | None, batch_size: int | None, chunk_len: int,
                 every_s: float, meter: Callable[[], float] | None, sample_s: float):
        self.automatic = threads is None
        self._sizes = (hidden_size, batch_size, chunk_len)
        self.every_s, self.others, self.note = every_s, None, None
        self._controller = self._restore = None
        self._meter = meter
        self._last_choice = time.perf_counter()
        if threads is None:
            cap = choose_threads(hidden_size, batch_size, chunk_len=chunk_len)
            if cap > 1:  # the load can only lower the count: measured only when it could matter
                if self._meter is None:
                    cpu = CpuMeter()
                    time.sleep(sample_s)
                    self._meter = cpu.others
                self.others = self._meter()
            threads = choose_threads(hidden_size, batch_size, chunk_len=chunk_len, others=self.others or 0.0)
        self.threads = threads
        self.applied = threadpoolctl_available()
        if not self.applied:
            self.note = _MISSING_NOTE

    def _apply(self, n: int) -> None:
        if self.applied:
            limiter = self._controller.limit(limits=n, user_api="blas")
            if self._restore is None:
                self._restore = limiter  # the first limiter remembers the counts before it
        self.threads = n

    def poll(self) -> int:
        """Make the automatic choice again from the load since the last one, at most every ``every_s``
        seconds (a cheap clock read otherwise); a given count never changes. Returns the count."""
        if not self.automatic or self._meter is None:
            return self.threads
        now = time.perf_counter()
        if now - self._last_choice < self.every_s:
            return self.threads
        self._last_choice = now
        self.others = self._meter()
        H, B, T = self._sizes
        n = choose_threads(H, B, chunk_len=T, others=self.others)
        if n != self.threads:
            self._apply(n)
        return self.threads

    def __enter__(self) -> "BlasThreads":
        if self.applied:
            from threadpoolctl import ThreadpoolController

            self._controller = ThreadpoolController()
            self._apply(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        if self._restore is not None:
            self._restore.restore_original_limits()
            self._restore = None


def blas_threads(n: int | None = None, *, hidden_size: int | None = None, batch_size: int | None = None,
                 chunk_len: int = 1, every_s: float = 5.0, meter: Callable[[], float] | None = None,
                 sample_s: float = SAMPLE_S) -> BlasThreads:
    """A context manager running its block with ``n`` BLAS threads, restoring the previous counts
    on exit; yields a :class:`BlasThreads`.

    ``n`` None: the automatic choice of :func:`choose_threads` for calls of ``chunk_len`` steps of
    ``batch_size`` sequences of ``hidden_size`` units (training: the chunk length and batch size;
    sampling: 1 and 1), with the other processes' load sampled for ``sample_s`` seconds on entry
    (only when the size allows more than one thread) and again by :meth:`BlasThreads.poll` every
    ``every_s`` seconds. ``meter`` replaces that measurement: a callable returning the other
    processes' busy cores since its previous call. An explicit ``n``, even above the core count
    (to measure, say), is used as given. Without threadpoolctl nothing is changed (``applied``
    False, ``note`` says how to install it).

    >>> with blas_threads(1) as setting:
    ...     setting.threads
    1
    """
    n = check_threads(n)
    if n is None and (hidden_size is None or batch_size is None):
        raise ValueError("blas_threads needs hidden_size and batch_size for the automatic choice "
                         "(n=None); give them, or give n (--threads)")
    if isinstance(every_s, bool) or not isinstance(every_s, numbers.Real) or not every_s > 0:
        raise ValueError(f"every_s must be a positive number of seconds; got {every_s!r}")
    return BlasThreads(n, hidden_size, batch_size, chunk_len, float(every_s), meter, sample_s)
