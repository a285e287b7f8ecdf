"""Engines: who runs the time loops and the output passes. One seam for every fast path.

An engine is an object with the methods of :class:`NumpyEngine` (the reference, pure NumPy).
:class:`NumbaEngine` (``pip install rnngrad[fast]``) overrides them with compiled kernels
where they apply and falls back to the reference elsewhere. The engine is chosen once per
call, at the public boundary (``RNN.gradients(..., engine=...)``), and passed down to the pure
functions of :mod:`rnngrad.layer`, :mod:`rnngrad.head` and :mod:`rnngrad.losses` as an
argument; none of them reads a global switch, so a test can run every engine on the same
inputs.

The default is "numba" when numba and scipy are installed, else "numpy". The environment
variable ``RNNGRAD_DISABLE_KERNELS=1`` (read at import) or :func:`set_default_engine` changes
it; an activation says whether the compiled engine knows its formula through its ``kernel``
attribute (:class:`rnngrad.Activation`).
"""

from __future__ import annotations

import os

from .numba_engine import NumbaEngine, available as numba_available, numba_version
from .numpy_engine import NumpyEngine

__all__ = ["NumpyEngine", "NumbaEngine", "ENGINES", "available_engines", "get_engine", "default_engine",
           "set_default_engine", "numba_available", "numba_version"]

#: Every engine by name.
ENGINES = {"numpy": NumpyEngine, "numba": NumbaEngine}
_INSTANCES: dict = {}


def available_engines() -> list[str]:
    """The names of the engines that can run here ("numpy" always; "numba" with rnngrad[fast])."""
    return ["numpy"] + (["numba"] if numba_available() else [])


def _instance(name: str):
    if name not in _INSTANCES:
        _INSTANCES[name] = ENGINES[name]()
    return _INSTANCES[name]


_default = "numba" if numba_available() and os.environ.get("RNNGRAD_DISABLE_KERNELS", "") in ("", "0") \
    else "numpy"


def default_engine():
    """The engine a call uses when it names none."""
    return _instance(_default)


def set_default_engine(name: str) -> str:
    """Make ``name`` ("numpy" or "numba") the default engine; returns the previous default's name."""
    global _default
    get_engine(name)  # validates
    previous, _default = _default, name
    return previous


def get_engine(engine=None):
    """The engine for ``engine``: None (the default), a name, or an engine object (a NumpyEngine or a
    subclass of it, returned as is)."""
    if engine is None:
        return _instance(_default)
    if isinstance(engine, NumpyEngine):
        return engine
    if not isinstance(engine, str):
        raise TypeError(f"engine must be None, a name in {sorted(ENGINES)} or an engine object; "
                        f"got {type(engine).__name__}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {sorted(ENGINES)}")
    if engine == "numba" and not numba_available():
        raise ValueError("engine 'numba' needs numba and scipy; install them with pip install 'rnngrad[fast]'")
    return _instance(engine)
