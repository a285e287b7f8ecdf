"""Learning-rate schedules: the lr of update s (s = 0, 1, 2, ...) as a pure function of s.

Each schedule is defined exactly as its namesake in ``torch.optim.lr_scheduler`` (PyTorch 2.x),
in the closed form that torch itself uses when a scheduler is stepped to an epoch, which equals
torch's step-by-step (chainable) values up to rounding (tests/test_schedules.py checks 1e-12 of
the base lr over 1000 steps). With base learning rate lr_0 and s the number of updates done
before this one (torch: ``scheduler.last_epoch``, the lr that ``optimizer.step()`` uses after
s calls of ``scheduler.step()``):

    Constant            lr_s = lr_0
    LinearWarmup        lr_s = lr_0 (a + (1 - a) min(s, N) / N)          torch LinearLR(start_factor=a, total_iters=N)
    StepLR              lr_s = lr_0 gamma^floor(s / S)                    torch StepLR(step_size=S, gamma)
    CosineAnnealingLR   lr_s = eta_min + (lr_0 - eta_min)(1 + cos(pi s / T_max)) / 2
    SequentialLR        lr_s = schedule_i(s - m_i), i the segment with m_i <= s < m_(i+1), m_0 = 0

A schedule holds no counter: the training loop passes the step it is at (``Trainer``'s
``progress.step``, already saved in every checkpoint), so a resumed run gets the same lr as
an unbroken one without any schedule state. What must be saved is the schedule's definition,
whose canonical spelling :attr:`Schedule.spec` pins every number (the cosine's T_max
included), so it parses back to the same schedule whatever the run's step count.

The spelling, as ``--lr-schedule`` takes it (see :func:`parse_schedule`)::

    constant                        lr_0 throughout (the default)
    cosine[=T_MAX][,eta_min=E]      cosine from lr_0 to E over T_MAX steps (default: all the steps)
    step=S[,gamma=G]                lr times G (default 0.1) every S steps
    warmup=N[,start=A]              linear from A lr_0 (default A = 1/3, torch's) to lr_0 over N steps, then flat
    warmup=N[,start=A],cosine...    warmup, then the cosine over the remaining steps
    warmup=N[,start=A],step=S...    warmup, then the step decay counted from the end of the warmup
"""

from __future__ import annotations

import bisect
import math
import numbers
import re
from dataclasses import dataclass

from .validation import check_positive_int

__all__ = ["Schedule", "Constant", "LinearWarmup", "StepLR", "CosineAnnealingLR", "SequentialLR",
           "parse_schedule", "SCHEDULE_GRAMMAR"]

#: torch's default LinearLR start_factor, the first warmup step's fraction of lr_0.
DEFAULT_WARMUP_START = 1.0 / 3.0
#: torch's default StepLR gamma.
DEFAULT_GAMMA = 0.1

SCHEDULE_GRAMMAR = ("constant | cosine[=T_MAX][,eta_min=E] | step=S[,gamma=G] | "
                    "warmup=N[,start=A][,cosine...|,step=...]")
_EXAMPLE = "e.g. --lr-schedule warmup=100,cosine"


def _check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be a non-negative integer (updates done so far); got {type(step).__name__} {step!r}")
    if step < 0:
        raise ValueError(f"step must be a non-negative integer (updates done so far); got {step}")
    return int(step)


def _check_float(name: str, value, low: float, low_open: bool = False, high: float | None = None) -> float:
    """A finite real in [low, high] ((low, high] when ``low_open``; no upper bound when None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or (value <= low if low_open else value < low) or (high is not None and value > high):
        interval = ("(" if low_open else "[") + f"{low:g}, " + (f"{high:g}]" if high is not None else "inf)")
        raise ValueError(f"{name} must be a finite number in {interval}; got {value!r}")
    return value


class Schedule:
    """Base of the schedules: ``lr_at(step)`` and the canonical :attr:`spec`."""

    base_lr: float

    def lr_at(self, step: int) -> float:
        """The learning rate of the update that follows ``step`` (>= 0) updates."""
        return self._lr(_check_step(step))

    def _lr(self, s: int) -> float:
        raise NotImplementedError

    @property
    def spec(self) -> str:
        """The ``--lr-schedule`` spelling with every number explicit: ``parse_schedule(spec, any
        total_steps, base_lr)`` rebuilds this schedule exactly (floats are written by repr)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    """lr_s = base_lr for every s."""

    base_lr: float

    def __post_init__(self):
        object.__setattr__(self, "base_lr", _check_float("base_lr", self.base_lr, 0.0))

    def _lr(self, s):
        return self.base_lr

    @property
    def spec(self):
        return "constant"


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    """torch ``LinearLR(start_factor, end_factor=1, total_iters)``:
    lr_s = base_lr (start_factor + (1 - start_factor) min(s, total_iters) / total_iters).

    start_factor in (0, 1] (torch refuses 0: the first update would not move), total_iters >= 1;
    from s = total_iters on the lr is base_lr.
    """

    base_lr: float
    total_iters: int
    start_factor: float = DEFAULT_WARMUP_START

    def __post_init__(self):
        object.__setattr__(self, "base_lr", _check_float("base_lr", self.base_lr, 0.0))
        object.__setattr__(self, "total_iters", check_positive_int("total_iters", self.total_iters))
        object.__setattr__(self, "start_factor",
                           _check_float("start_factor", self.start_factor, 0.0, low_open=True, high=1.0))

    def _lr(self, s):
        # torch's closed form, term for term (end_factor = 1.0).
        a = self.start_factor
        return self.base_lr * (a + (1.0 - a) * min(self.total_iters, s) / self.total_iters)

    @property
    def spec(self):
        return f"warmup={self.total_iters},start={self.start_factor!r}"


@dataclass(frozen=True)
class StepLR(Schedule):
    """torch ``StepLR(step_size, gamma)``: lr_s = base_lr gamma^floor(s / step_size); gamma > 0."""

    base_lr: float
    step_size: int
    gamma: float = DEFAULT_GAMMA

    def __post_init__(self):
        object.__setattr__(self, "base_lr", _check_float("base_lr", self.base_lr, 0.0))
        object.__setattr__(self, "step_size", check_positive_int("step_size", self.step_size))
        object.__setattr__(self, "gamma", _check_float("gamma", self.gamma, 0.0, low_open=True))

    def _lr(self, s):
        return self.base_lr * self.gamma ** (s // self.step_size)

    @property
    def spec(self):
        return f"step={self.step_size},gamma={self.gamma!r}"


@dataclass(frozen=True)
class CosineAnnealingLR(Schedule):
    """torch ``CosineAnnealingLR(T_max, eta_min)``:
    lr_s = eta_min + (base_lr - eta_min)(1 + cos(pi s / T_max)) / 2.

    As in torch the curve is periodic: past s = T_max (lr = eta_min) it rises again, reaching
    base_lr at 2 T_max. A run whose step limit is raised beyond T_max sees that rise; give
    ``cosine=T_MAX`` long enough for it.
    """

    base_lr: float
    T_max: int
    eta_min: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "base_lr", _check_float("base_lr", self.base_lr, 0.0))
        object.__setattr__(self, "T_max", check_positive_int("T_max", self.T_max))
        object.__setattr__(self, "eta_min", _check_float("eta_min", self.eta_min, 0.0))

    def _lr(self, s):
        # torch's closed form, in its order of operations.
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * s / self.T_max)) / 2

    @property
    def spec(self):
        return f"cosine={self.T_max},eta_min={self.eta_min!r}"


@dataclass(frozen=True)
class SequentialLR(Schedule):
    """torch ``SequentialLR(schedulers, milestones)``: schedule i runs from milestone m_i
    (m_0 = 0), restarted there at its own step 0: lr_s = schedules[i].lr_at(s - m_i).

    torch restarts each later scheduler by its closed form at epoch 0 and then steps it, which
    is this. Every schedule must have the same base_lr (torch's share the group's initial lr);
    milestones strictly increasing, positive, one fewer than the schedules.
    """

    schedules: tuple
    milestones: tuple

    def __post_init__(self):
        schedules, milestones = tuple(self.schedules), tuple(self.milestones)
        if not schedules or not all(isinstance(s, Schedule) for s in schedules):
            raise TypeError("schedules must be a non-empty sequence of Schedule objects")
        if len(milestones) != len(schedules) - 1:
            raise ValueError(f"SequentialLR needs one milestone fewer than schedules; got {len(schedules)} "
                             f"schedules and milestones {list(milestones)}")
        milestones = tuple(check_positive_int(f"milestones[{i}]", m) for i, m in enumerate(milestones))
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing; got {list(milestones)}")
        if len({s.base_lr for s in schedules}) != 1:
            raise ValueError(f"every schedule of a SequentialLR must have the same base_lr; got "
                             f"{[s.base_lr for s in schedules]}")
        object.__setattr__(self, "schedules", schedules)
        object.__setattr__(self, "milestones", milestones)

    @property
    def base_lr(self) -> float:
        return self.schedules[0].base_lr

    def _lr(self, s):
        i = bisect.bisect_right(self.milestones, s)  # torch's choice of segment, milestone itself included
        return self.schedules[i]._lr(s - (self.milestones[i - 1] if i else 0))

    @property
    def spec(self):
        first = self.schedules[0]
        if (len(self.schedules) != 2 or not isinstance(first, LinearWarmup)
                or self.milestones[0] != first.total_iters or isinstance(self.schedules[1], (LinearWarmup, SequentialLR))):
            raise ValueError("only a warmup followed by a cosine or step decay at the warmup's end has an "
                             f"--lr-schedule spelling ({SCHEDULE_GRAMMAR})")
        return f"{first.spec},{self.schedules[1].spec}"


# --- the --lr-schedule spelling -------------------------------------------------------------

_KEYS = ("constant", "warmup", "start", "cosine", "eta_min", "step", "gamma")
_NEEDS = {"start": "warmup", "eta_min": "cosine", "gamma": "step"}  # option -> the part it tunes
_INT = re.compile(r"[0-9]+")


def _fail(spec: str, what: str, grammar: bool = False) -> ValueError:
    hint = f"{_EXAMPLE}; grammar: {SCHEDULE_GRAMMAR}" if grammar else _EXAMPLE
    return ValueError(f"--lr-schedule {spec!r}: {what} ({hint})")


def _items(spec: str) -> dict:
    """The spec's ``key[=value]`` items as {key: value or None}; each key once, every key known."""
    items = {}
    for raw in spec.split(","):
        key, eq, value = (part.strip() for part in raw.partition("="))
        if key not in _KEYS:
            raise _fail(spec, f"unknown part {raw.strip()!r}; expected one of {', '.join(_KEYS)}", grammar=True)
        if key in items:
            raise _fail(spec, f"{key!r} is given twice")
        if eq and not value:
            raise _fail(spec, f"{key}= has no value")
        items[key] = value if eq else None
    return items


def _int_value(spec: str, items: dict, key: str, required: bool) -> int | None:
    v = items.get(key)
    if v is None:
        if required and key in items:
            raise _fail(spec, f"{key} needs a number of steps, as {key}=100")
        return None
    if not _INT.fullmatch(v) or int(v) < 1:
        raise _fail(spec, f"{key} must be a whole number of steps >= 1; got {v!r}")
    return int(v)


def _float_value(spec: str, items: dict, key: str, default: float, low_open: bool = False,
                 high: float | None = None) -> float:
    """items[key] as a finite float >= 0 (> 0 when ``low_open``, <= ``high``), or ``default`` if absent."""
    if key not in items:
        return default
    if items[key] is None:
        raise _fail(spec, f"{key} needs a value, as {key}=0.5")
    try:
        value = float(items[key])
    except ValueError:
        raise _fail(spec, f"{key} must be a number; got {items[key]!r}") from None
    try:
        return _check_float(key, value, 0.0, low_open=low_open, high=high)
    except ValueError as err:
        raise _fail(spec, str(err)) from None


def parse_schedule(spec: str, total_steps: int, base_lr: float) -> Schedule:
    """The schedule that ``spec`` spells (grammar: :data:`SCHEDULE_GRAMMAR`, module docstring),
    for a run of ``total_steps`` updates at base learning rate ``base_lr``.

    ``total_steps`` matters only for a bare ``cosine``, whose T_max is then the steps after the
    warmup; the :attr:`Schedule.spec` of the result spells that T_max out. Parts may come in any
    order, separated by commas; spaces and case are ignored.

    >>> parse_schedule("warmup=100,cosine", total_steps=1000, base_lr=0.01).spec
    'warmup=100,start=0.3333333333333333,cosine=900,eta_min=0.0'
    >>> parse_schedule("step=1000,gamma=0.5", 5000, 0.01).lr_at(2500)
    0.0025

    Raises ValueError (one line naming --lr-schedule, with an example) for a bad spec, and
    TypeError/ValueError naming total_steps or base_lr for those.
    """
    if not isinstance(spec, str):
        raise TypeError(f"--lr-schedule must be a string such as 'warmup=100,cosine'; got {type(spec).__name__} {spec!r}")
    total_steps = check_positive_int("total_steps", total_steps)
    base_lr = _check_float("base_lr", base_lr, 0.0)
    text = spec.strip().lower()
    if not text:
        raise _fail(spec, "the schedule is empty", grammar=True)
    items = _items(text)
    if "constant" in items:
        if len(items) > 1 or items["constant"] is not None:
            raise _fail(spec, "'constant' stands alone (a warmup then a flat lr is 'warmup=N' by itself)")
        return Constant(base_lr)
    for option, part in _NEEDS.items():
        if option in items and part not in items:
            raise _fail(spec, f"{option}= tunes {part}, which is not given")
    if "cosine" in items and "step" in items:
        raise _fail(spec, "give one decay, cosine or step, not both")
    warmup = _int_value(spec, items, "warmup", required=True)
    start = _float_value(spec, items, "start", DEFAULT_WARMUP_START, low_open=True, high=1.0)
    main = _decay(spec, items, total_steps, warmup or 0, base_lr)
    if warmup is None:
        return main
    ramp = LinearWarmup(base_lr, warmup, start)
    return ramp if main is None else SequentialLR((ramp, main), (warmup,))


def _decay(spec: str, items: dict, total_steps: int, warmup: int, base_lr: float) -> Schedule | None:
    """The cosine or step part of ``items`` (None if neither), counted from the end of the warmup."""
    if "step" in items:
        gamma = _float_value(spec, items, "gamma", DEFAULT_GAMMA, low_open=True)
        return StepLR(base_lr, _int_value(spec, items, "step", required=True), gamma)
    if "cosine" in items:
        T_max = _int_value(spec, items, "cosine", required=False)
        if T_max is None:
            if total_steps - warmup < 1:
                raise _fail(spec, f"warmup={warmup} leaves no steps for the cosine in a run of {total_steps} "
                                  f"steps; shorten the warmup, or give the cosine's length as cosine=T_MAX")
            T_max = total_steps - warmup
        eta_min = _float_value(spec, items, "eta_min", 0.0)
        return CosineAnnealingLR(base_lr, T_max, eta_min)
    return None
