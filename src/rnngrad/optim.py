"""Optimizers over the ``params`` / ``grads`` dicts of :class:`rnngrad.RNN` (gradient clipping:
:mod:`rnngrad.clipping`, re-exported here; learning-rate schedules: :mod:`rnngrad.schedules`).

Every optimizer updates the parameter arrays *in place* (the model's own arrays), so
``model.params`` changes after ``opt.step(grads)`` without any reassignment. Whatever keys
``params`` has are updated (``W_x, W_h, b_h, W_y, b_y`` for one layer; every layer's and
direction's for deeper networks), and ``grads`` must have exactly those keys, as
``model.gradients(...).grads`` does.

The update rules are those of ``torch.optim`` (PyTorch 2.x, default options not exposed
here held at their defaults: dampening 0, no lr decay, not centred, not amsgrad), so that
the tests can compare against it step by step. With g = dL/dθ, step count s = 1, 2, ...
and weight decay λ (0 by default; L2, i.e. added to the gradient, except in AdamW):

    SGD       d = g + λ θ;  buf = d (s = 1) or μ buf + d;  d = d + μ buf (Nesterov) or buf;  θ -= lr d
    Adagrad   d = g + λ θ;  G += d²;  θ -= lr d / (√G + ε)
    RMSprop   d = g + λ θ;  v = α v + (1 − α) d²;  buf = μ buf + d / (√v + ε);  θ -= lr buf
              (μ = 0: θ -= lr d / (√v + ε))
    Adam      m = β₁ m + (1 − β₁) g;  v = β₂ v + (1 − β₂) g²;
              θ -= (lr / (1 − β₁ˢ)) m / (√v / √(1 − β₂ˢ) + ε)
    AdamW     θ = θ (1 − lr λ) (decoupled decay), then the Adam step

Weight decay acts on every parameter, the biases b_h and b_y included: torch decays every
parameter of a group, and these optimizers have one group (``model.params``).

The learning rate may change from update to update (a schedule, :mod:`rnngrad.schedules`):
``opt.step(grads, lr=schedule.lr_at(updates_done))`` uses that lr for this update and everything
that depends on it (AdamW's decay too), as torch's schedulers set ``param_group["lr"]``.

State is a flat dict (see :meth:`Optimizer.state_dict`): numbers for the hyperparameters
and step count, arrays named ``"<slot>.<param>"`` (e.g. ``"exp_avg.W_h"``), so it can be
written as an ``.npz`` (arrays) plus JSON (numbers) without pickle.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, MutableMapping, Sequence

import numpy as np

# Clipping lives in its own module; importers of rnngrad.optim (train.py) keep finding it here.
from .clipping import clip_grad_norm, clip_grad_value

__all__ = [
    "Optimizer",
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adam",
    "AdamW",
    "OPTIMIZERS",
    "make_optimizer",
    "clip_grad_norm",
    "clip_grad_value",
    "check_weight_decay",
]


def _check_number(name: str, value, low: float = 0.0, high: float | None = None,
                  high_open: bool = False) -> float:
    """A finite real number in [low, high] (or [low, high) when ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or value < low or too_high:
        bound = "" if high is None else (f", {high})" if high_open else f", {high}]")
        interval = f"[{low}" + (bound or ", inf)")
        raise ValueError(f"{name} must lie in {interval}; got {value}")
    return value


def check_weight_decay(value, name: str = "weight_decay") -> float:
    """The weight decay λ as a float: a finite real number >= 0 (0 turns decay off)."""
    expected = f"{name} must be a finite number >= 0 (e.g. 0.01; 0 for no decay)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{expected}; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{expected}; got {value!r}")
    return value


def _check_param_dict(params) -> MutableMapping[str, np.ndarray]:
    if not isinstance(params, MutableMapping):
        raise TypeError(f"params must be a dict of arrays (e.g. model.params); got {type(params).__name__}")
    if not params:
        raise ValueError("params is empty; pass the model's parameters, model.params")
    for k in params:
        p = params[k]
        if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
            raise TypeError(
                f"params[{k!r}] must be a floating-point numpy array (it is updated in place); "
                f"got {type(p).__name__}" + (f" of dtype {p.dtype}" if isinstance(p, np.ndarray) else "")
            )
        if not p.flags.writeable:
            raise ValueError(f"params[{k!r}] is read-only; the optimizer updates it in place")
    return params


def _check_grads(grads, params: Mapping[str, np.ndarray], keys: Sequence[str]) -> dict:
    """The gradient arrays for ``keys``, each shaped like its parameter, in its dtype."""
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays (e.g. model.gradients(...).grads); "
                        f"got {type(grads).__name__}")
    unknown = [k for k in grads if k not in params]
    if unknown:
        raise ValueError(f"grads has keys that are not parameters of this optimizer: {unknown}; "
                         f"expected keys {list(keys)}")
    out = {}
    for k in keys:
        if k not in grads:
            raise ValueError(f"grads is missing {k!r}; expected keys {list(keys)}")
        g = np.asarray(grads[k])
        if g.dtype.kind not in "biuf":
            raise TypeError(f"grads[{k!r}] must hold real numbers; got dtype {g.dtype}")
        p = params[k]
        if g.shape != p.shape:
            raise ValueError(f"grads[{k!r}] must have the shape of params[{k!r}], {p.shape}; got {g.shape}")
        out[k] = g.astype(p.dtype, copy=False)
    return out


#: Slots that accumulate squared gradients (Adagrad's sum, RMSprop's square_avg, Adam's exp_avg_sq).
NON_NEGATIVE_SLOTS = frozenset({"sum", "square_avg", "exp_avg_sq"})


class Optimizer:
    """Base class: holds the params dict, hyperparameters, step count and per-parameter slots.

    The optimizer keeps the ``params`` dict itself (not copies) and, at each step, updates
    whatever arrays it holds under its parameter names (:attr:`keys`) in place: to change the values
    (e.g. when loading a checkpoint) write into the arrays, ``params[k][...] = v``.

    Subclasses set ``name``, ``hyper`` (hyperparameter names, each an attribute) and
    ``slots`` (names of per-parameter state arrays), and implement :meth:`_update`.
    """

    name = "optimizer"
    hyper: tuple = ()
    slots: tuple = ()
    #: Hyperparameters added after states of this optimizer were first saved, each with the value
    #: that reproduces the earlier updates: a state saved without them loads with these.
    hyper_defaults: dict = {}

    def __init__(self, params):
        self.params = _check_param_dict(params)
        #: The parameter names updated, fixed at construction (the keys of ``params`` then).
        self.keys = tuple(self.params)
        self.step_count = 0
        # Zeros are the torch initial values of every slot except SGD's momentum buffer,
        # which torch creates from the first gradient; SGD handles that by the step count.
        self.state = {
            slot: {k: np.zeros_like(self.params[k]) for k in self.keys} for slot in self.slots
        }

    def step(self, grads: Mapping[str, np.ndarray], lr: float | None = None) -> None:
        """Apply one update to ``params`` in place.

        Parameters
        ----------
        grads : dict with "W_x" (H, D), "W_h" (H, H), "b_h" (H,), "W_y" (O, H), "b_y" (O,)
            shaped as the parameters; other keys are ignored. ``grads`` is not modified,
            and is not checked for NaN/Inf here: test the norm that :func:`clip_grad_norm`
            returns before stepping if a run may diverge.
        lr : float >= 0, optional
            The learning rate of this update, e.g. ``schedule.lr_at(s)`` after s updates; it
            becomes the optimizer's ``lr`` (the one :meth:`state_dict` saves). None: keep ``lr``.
        """
        lr = None if lr is None else _check_number("lr", lr)
        g = _check_grads(grads, self.params, self.keys)
        for k in self.keys:
            if self.params[k].shape != self._state_shape(k):
                raise ValueError(
                    f"params[{k!r}] changed shape from {self._state_shape(k)} to {self.params[k].shape} "
                    f"since the optimizer was created; make a new optimizer"
                )
        if lr is not None:  # set only once the call can no longer fail
            self.lr = lr
        self.step_count += 1
        for k in self.keys:
            self._update(k, self.params[k], g[k], {slot: self.state[slot][k] for slot in self.slots})

    def _state_shape(self, k: str) -> tuple:
        return self.state[self.slots[0]][k].shape if self.slots else self.params[k].shape

    def _update(self, key: str, p: np.ndarray, g: np.ndarray, s: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """A flat copy of the state: {name: float | int | bool | np.ndarray}.

        Keys: each hyperparameter (e.g. "lr"), "step" (int, updates done), and
        "<slot>.<param>" arrays shaped like the parameter (e.g. "exp_avg.W_h" (H, H)).
        The arrays are copies; numbers are plain Python scalars, so the dict splits
        into an ``.npz`` of the arrays and JSON of the rest.
        """
        d = {h: getattr(self, h) for h in self.hyper}
        d["step"] = int(self.step_count)
        for slot in self.slots:
            for k in self.keys:
                d[f"{slot}.{k}"] = self.state[slot][k].copy()
        return d

    def load_state_dict(self, d: Mapping) -> None:
        """Restore a :meth:`state_dict` (numbers may come back as 0-d arrays from an ``.npz``).

        Hyperparameters are restored too, as torch does, so that a resumed run continues
        exactly; one in :attr:`hyper_defaults` may be absent (a state saved before it existed).
        Raises ValueError for missing or extra keys or wrongly shaped arrays.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"state must be a dict from state_dict(); got {type(d).__name__}")
        d = {**self.hyper_defaults, **d}
        expected = set(self.hyper) | {"step"} | {f"{s}.{k}" for s in self.slots for k in self.keys}
        missing, extra = sorted(expected - set(d)), sorted(set(d) - expected)
        if missing or extra:
            raise ValueError(
                f"state does not belong to a {type(self).__name__} optimizer: "
                f"missing keys {missing}, unexpected keys {extra}"
            )
        arrays = {}
        for slot in self.slots:
            for k in self.keys:
                key = f"{slot}.{k}"
                a = np.asarray(d[key])
                if a.shape != self.params[k].shape or a.dtype.kind not in "biuf":
                    raise ValueError(
                        f"state[{key!r}] must be a real array of shape {self.params[k].shape}; "
                        f"got {a.dtype} of shape {a.shape}"
                    )
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    raise ValueError(f"state[{key!r}] contains NaN or Inf; the optimizer state is damaged")
                if slot in NON_NEGATIVE_SLOTS and (a < 0).any():  # sums of squares: the update takes their root
                    raise ValueError(f"state[{key!r}] has negative entries, which a sum of squared gradients "
                                     f"cannot have; the optimizer state is damaged")
                arrays[key] = a
        step = np.asarray(d["step"])
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            raise ValueError(f"state['step'] must be a non-negative integer; got {d['step']!r}")
        # Re-check the numbers through the constructor's rules before changing anything.
        hyper = {}
        for h in self.hyper:
            v = np.asarray(d[h])
            if v.shape != () or v.dtype.kind not in "biuf":
                raise ValueError(f"state[{h!r}] must be a number; got {d[h]!r}")
            hyper[h] = v.item()
        checked = type(self)(self.params, **self._ctor_kwargs(hyper))
        for h in self.hyper:
            setattr(self, h, getattr(checked, h))
        self.step_count = int(step)
        for key, a in arrays.items():
            slot, k = key.split(".", 1)
            self.state[slot][k] = np.array(a, dtype=self.params[k].dtype)

    def _ctor_kwargs(self, hyper: dict) -> dict:
        return dict(hyper)

    def __repr__(self) -> str:
        args = ", ".join(f"{h}={getattr(self, h)!r}" for h in self.hyper)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    ``d = g + weight_decay·θ``; with momentum μ > 0, ``buf = d`` at the first step and
    ``buf = μ·buf + d`` after, then ``d = d + μ·buf`` (Nesterov) or ``d = buf``;
    finally ``θ -= lr·d``. As ``torch.optim.SGD`` with dampening 0.

    Parameters
    ----------
    params : dict of arrays (``model.params``), updated in place
    lr : float >= 0
    momentum : float >= 0, default 0
    nesterov : bool, default False (needs momentum > 0)
    weight_decay : float >= 0, default 0
    """

    name = "sgd"
    hyper = ("lr", "momentum", "nesterov", "weight_decay")
    slots = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        self.lr = _check_number("lr", lr)
        self.momentum = _check_number("momentum", momentum)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False; got {type(nesterov).__name__}")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.weight_decay = check_weight_decay(weight_decay)
        super().__init__(params)

    def _ctor_kwargs(self, hyper):
        return {**hyper, "nesterov": bool(hyper["nesterov"])}

    def _update(self, key, p, g, s):
        d = g + self.weight_decay * p if self.weight_decay else g
        if self.momentum:
            buf = s["momentum_buffer"]
            if self.step_count == 1:
                buf[...] = d
            else:
                buf *= self.momentum
                buf += d
            d = d + self.momentum * buf if self.nesterov else buf
        p -= self.lr * d


class Adagrad(Optimizer):
    """Adagrad: ``d = g + weight_decay·θ``, ``G += d²``, ``θ -= lr·d / (√G + eps)``; as
    ``torch.optim.Adagrad`` with no lr decay or initial accumulator.

    Parameters
    ----------
    params : dict of arrays, updated in place
    lr : float >= 0
    eps : float >= 0, default 1e-10
    weight_decay : float >= 0, default 0 (L2: added to the gradient, as torch)
    """

    name = "adagrad"
    hyper = ("lr", "eps", "weight_decay")
    slots = ("sum",)
    hyper_defaults = {"weight_decay": 0.0}

    def __init__(self, params, lr: float, eps: float = 1e-10, weight_decay: float = 0.0):
        self.lr = _check_number("lr", lr)
        self.eps = _check_number("eps", eps)
        self.weight_decay = check_weight_decay(weight_decay)
        super().__init__(params)

    def _update(self, key, p, g, s):
        if self.weight_decay:
            g = g + self.weight_decay * p
        G = s["sum"]
        G += g * g
        p -= self.lr * (g / (np.sqrt(G) + self.eps))


class RMSprop(Optimizer):
    """RMSprop: ``d = g + weight_decay·θ``, ``v = α·v + (1 − α)·d²``; ``θ -= lr·d / (√v + eps)``,
    or with momentum μ > 0 ``buf = μ·buf + d / (√v + eps)``, ``θ -= lr·buf``. As
    ``torch.optim.RMSprop`` (not centred).

    Parameters
    ----------
    params : dict of arrays, updated in place
    lr : float >= 0
    alpha : float in [0, 1], default 0.99 (smoothing of the squared gradient)
    eps : float >= 0, default 1e-8
    momentum : float >= 0, default 0
    weight_decay : float >= 0, default 0 (L2: added to the gradient, as torch)
    """

    name = "rmsprop"
    hyper = ("lr", "alpha", "eps", "momentum", "weight_decay")
    slots = ("square_avg", "momentum_buffer")
    hyper_defaults = {"weight_decay": 0.0}

    def __init__(self, params, lr: float, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        self.lr = _check_number("lr", lr)
        self.alpha = _check_number("alpha", alpha, 0.0, 1.0)
        self.eps = _check_number("eps", eps)
        self.momentum = _check_number("momentum", momentum)
        self.weight_decay = check_weight_decay(weight_decay)
        super().__init__(params)

    def _update(self, key, p, g, s):
        if self.weight_decay:
            g = g + self.weight_decay * p
        v = s["square_avg"]
        v *= self.alpha
        v += (1 - self.alpha) * (g * g)
        step = g / (np.sqrt(v) + self.eps)
        if self.momentum:
            buf = s["momentum_buffer"]
            buf *= self.momentum
            buf += step
            step = buf
        p -= self.lr * step


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, as ``torch.optim.Adam`` (not amsgrad).

    ``m = β₁·m + (1 − β₁)·g``, ``v = β₂·v + (1 − β₂)·g²``,
    ``θ -= (lr / (1 − β₁ˢ))·m / (√v / √(1 − β₂ˢ) + eps)`` at step s = 1, 2, ...

    Parameters
    ----------
    params : dict of arrays, updated in place
    lr : float >= 0
    betas : (β₁, β₂), each in [0, 1), default (0.9, 0.999)
    eps : float >= 0, default 1e-8

    ``state_dict`` stores the betas as "beta1" and "beta2".
    """

    name = "adam"
    hyper = ("lr", "beta1", "beta2", "eps")
    slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        self.lr = _check_number("lr", lr)
        self.beta1 = _check_number("betas[0]", betas[0], 0.0, 1.0, high_open=True)
        self.beta2 = _check_number("betas[1]", betas[1], 0.0, 1.0, high_open=True)
        self.eps = _check_number("eps", eps)
        super().__init__(params)

    @property
    def betas(self) -> tuple:
        return (self.beta1, self.beta2)

    def _ctor_kwargs(self, hyper):
        return {"lr": hyper["lr"], "betas": (hyper["beta1"], hyper["beta2"]), "eps": hyper["eps"]}

    def _update(self, key, p, g, s):
        m, v = s["exp_avg"], s["exp_avg_sq"]
        m += (1 - self.beta1) * (g - m)  # torch's lerp form of β₁ m + (1 − β₁) g
        v *= self.beta2
        v += (1 - self.beta2) * (g * g)
        t = self.step_count
        step_size = self.lr / (1 - self.beta1 ** t)
        denom = np.sqrt(v) / math.sqrt(1 - self.beta2 ** t) + self.eps
        p -= step_size * (m / denom)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``: decoupled weight decay
    ``θ = θ·(1 − lr·weight_decay)`` first, then the :class:`Adam` step, both with this update's lr.

    Unlike L2 decay (``weight_decay·θ`` added to g, as SGD, Adagrad and RMSprop do), the decay
    bypasses the moments m and v, so it is not rescaled by 1/√v̂: every weight shrinks by the
    same fraction lr·weight_decay per update. Every parameter is decayed, biases included (torch's
    default for a single parameter group).

    Parameters
    ----------
    params : dict of arrays, updated in place
    lr, betas, eps : as :class:`Adam`
    weight_decay : float >= 0, default 0.01 (torch's)
    """

    name = "adamw"
    hyper = Adam.hyper + ("weight_decay",)

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        self.weight_decay = check_weight_decay(weight_decay)
        super().__init__(params, lr, betas=betas, eps=eps)

    def _ctor_kwargs(self, hyper):
        return {**super()._ctor_kwargs(hyper), "weight_decay": hyper["weight_decay"]}

    def _update(self, key, p, g, s):
        if self.weight_decay:
            # torch's param.mul_(1 - lr * weight_decay): one factor, before the moments are updated.
            p *= 1 - self.lr * self.weight_decay
        super()._update(key, p, g, s)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adagrad, RMSprop, Adam, AdamW)}


def make_optimizer(name: str, params, lr: float, **kw) -> Optimizer:
    """The optimizer called ``name`` ("sgd", "adagrad", "rmsprop", "adam", "adamw") over ``params``.

    Extra keyword arguments go to its constructor (e.g. ``momentum=0.9`` for "sgd").
    """
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a string, one of {sorted(OPTIMIZERS)}; got {type(name).__name__}")
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[key]
    if "weight_decay" in kw and "weight_decay" not in cls.hyper:
        # Adam's L2 form (torch.optim.Adam(weight_decay=...)) is not offered: its decay is rescaled
        # by 1/sqrt(v), which is what the decoupled form exists to avoid.
        raise TypeError(f"optimizer {key!r} does not take weight_decay; use 'adamw' for Adam with (decoupled) "
                        f"weight decay, or one of {[n for n, c in OPTIMIZERS.items() if 'weight_decay' in c.hyper]}")
    try:
        return cls(params, lr, **kw)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise TypeError(f"optimizer {key!r} does not take that option: {err}") from None
        raise
