"""An explicit, caller-owned store for the large arrays of a gradients call.

A gradients call on (T, B, H) = (100, 32, 512) fills about 40 MB of fresh arrays (h, the
logits, y_hat, dL/dh, dL/dz, dL/da, ...). Freed after the call, that memory goes back to
the operating system, and the next call faults every page of it in again: about 3,000
page faults and several milliseconds of system time per call, measured. A
:class:`Workspace` the caller passes to :meth:`rnngrad.RNN.gradients` keeps those arrays
between calls, so a training loop writes into memory that is already mapped.

It is explicit on purpose: nothing is cached in the model or in the library, so a call
without a workspace behaves exactly as before, and only the caller who passes one ties
calls together. What that caller agrees to: **every array a call with a workspace
returns, except ``h_last`` and the inputs it was given, is the workspace's and is
overwritten by the next call that uses the same workspace** (``res.grads`` and
``res.forward``'s h, a, y_hat, z). Copy what must outlive the next call, and do not pass
those arrays back in as inputs (``h_last`` is a copy, so ``h0=res.h_last`` is safe).
Arrays that a user's own activation or loss returns are its own, not the workspace's.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Workspace", "buffer", "empty"]


class Workspace:
    """Named arrays reused across calls; pass one to :meth:`rnngrad.RNN.gradients`.

    One buffer per name grows to the largest size asked for, and a smaller request (a
    shorter last chunk) is served from its start, so changing T or B does not reallocate. Not thread-safe: one workspace per concurrent caller.
    """

    def __init__(self):
        self._buffers: dict = {}  # name -> 1-D array
        self._views: dict = {}  # name -> the array last handed out, a view of the buffer

    def array(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``, the same memory
        each time the same name is asked for (a new dtype, or a larger size, replaces it)."""
        last = self._views.get(name)
        # The common case, the same shape as last time, costs one lookup (small models
        # ask for a dozen arrays per call, each a microsecond of Python otherwise).
        if last is not None and last.shape == shape and last.dtype == dtype:
            return last
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self._buffers[name] = np.empty(size, dtype=dtype)
        view = self._views[name] = buf[:size].reshape(shape)
        return view

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.nbytes for b in self._buffers.values())

    def clear(self) -> None:
        """Drop every array (the memory is freed once no result refers to it)."""
        self._buffers.clear()
        self._views.clear()

    def __repr__(self) -> str:
        return f"Workspace({len(self._buffers)} arrays, {self.nbytes / 2**20:.1f} MiB)"


def empty(workspace: Workspace | None, name: str, shape: tuple, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, or the workspace's array ``name`` when one is given."""
    if workspace is None:
        return np.empty(shape, dtype=dtype)
    return workspace.array(name, shape, dtype)


def buffer(workspace: Workspace | None, name: str, shape: tuple, dtype) -> np.ndarray | None:
    """The workspace's array ``name`` to pass as ``out=``, or None (NumPy allocates) without one."""
    if workspace is None:
        return None
    return workspace.array(name, shape, dtype)
