"""The :class:`RNN` object: configuration, parameters and initialisation; it validates at the
boundary and calls the pure functions of :mod:`rnngrad.network`.

Time-major shapes: T time steps, B sequences, D inputs, H hidden units, O outputs;
U = num_layers · directions recurrent units (a layer in one direction), C = H · directions
the width of a layer's output. With ``batch_first=True`` every (T, B, ...) array at the
boundary is (B, T, ...) instead.

    z_t     = W_h h_{t-1} + W_x x_t + b_h     (T, B, H)   seed §2B, per layer and direction
    h_t     = f(z_t)                          (T, B, H)   seed §2B
    a_t     = W_y h_t + b_y                   (T, B, O)   seed §2A (h_t of the top layer)
    y_hat_t = g(a_t)                          (T, B, O)   seed §2A
    L       = sum_t sum_b m_tb L_t(y_hat_tb, y_tb)        seed §2C (m: mask, or 1/count for "mean")
"""

from __future__ import annotations

import os

import numpy as np

from . import network
from .activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS, Activation
from .engines import get_engine
from .head import loss_weights
from .interop import params_from_torch, params_to_torch
from .losses import LOSSES, TARGET_KINDS, Loss, resolve_loss
from .network import OPTIONAL_GRADS, Architecture, Forward, Gradients, layer_param_names
from .validation import (
    check_choice,
    check_dtype,
    check_h0,
    check_lengths,
    check_inputs,
    check_mask,
    check_need,
    check_params,
    check_positive_int,
    check_real,
    check_seed,
    check_targets,
    lengths_from_mask,
)
from .workspace import Workspace

__all__ = ["RNN", "REDUCTIONS", "RECURRENT_INITS"]

REDUCTIONS = ("sum", "mean")
RECURRENT_INITS = ("uniform", "identity", "orthogonal")


def _resolve_activation(name: str, value, table: dict) -> Activation:
    if isinstance(value, Activation):
        return value
    if isinstance(value, str):
        return table[check_choice(name, value, table)]()
    raise TypeError(
        f"{name} must be a name in {sorted(table)} or an rnngrad.Activation instance; "
        f"got {type(value).__name__}"
    )


def _resolve_loss(loss, g: Activation) -> Loss:
    if isinstance(loss, Loss):
        loss_fn = loss
    elif isinstance(loss, str):
        loss_fn = resolve_loss(check_choice("loss", loss, LOSSES), g)
    else:
        raise TypeError(f"loss must be a name in {sorted(LOSSES)} or an rnngrad.Loss; got {type(loss).__name__}")
    if loss_fn.needs_probabilities and not g.probabilities:
        raise ValueError(
            f"loss {loss_fn.name!r} needs probabilities, but output_activation "
            f"{g.name!r} does not produce them; use output_activation='softmax' "
            f"(or 'sigmoid' for independent binary outputs), or loss='mse'"
        )
    if loss_fn.needs_elementwise_output and not g.elementwise:
        raise ValueError(
            f"loss {loss_fn.name!r} treats each output as an independent quantity and "
            f"needs an element-wise output activation such as 'sigmoid'; {g.name!r} is not")
    if loss_fn.target not in TARGET_KINDS:
        raise ValueError(f"loss {loss_fn.name!r} has target {loss_fn.target!r}; "
                         f"expected one of {list(TARGET_KINDS)}")
    return loss_fn


def _check_dropout(dropout) -> float:
    p = check_real("dropout", dropout, positive=False)
    if p >= 1:
        raise ValueError(f"dropout must be a probability in [0, 1); got {p}")
    return p


#: The deepest stack a model may have.
MAX_LAYERS = 1024


def _physical_memory() -> int | None:
    """Bytes of physical memory, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


class RNN:
    """A general recurrent network with exact backprop-through-time gradients.

    ``h_t = f(W_h h_{t-1} + W_x x_t + b_h)``, ``y_hat_t = g(W_y h_t + b_y)``,
    ``L = sum_t L_t(y_hat_t, y_t)``; optionally stacked and bidirectional.

    Parameters
    ----------
    input_size : int
        D, features per step (or vocabulary size for token-index inputs).
    hidden_size : int
        H, hidden units of each layer and direction.
    output_size : int
        O, outputs per step.
    hidden_activation : str or Activation, default "tanh"
        f: "tanh", "relu", "sigmoid", "identity", or an element-wise
        :class:`rnngrad.Activation`.
    output_activation : str or Activation, default "softmax"
        g: "softmax", "sigmoid", "identity", or an :class:`rnngrad.Activation`.
    loss : str or Loss, default "cross_entropy"
        L_t: "cross_entropy" (categorical for softmax, binary per unit for sigmoid),
        "binary_cross_entropy", "mse", or an :class:`rnngrad.Loss`.
    dtype : numpy.float32 or numpy.float64, default float64
        Parameters and all computation; inputs are converted to it.
    seed : int or numpy.random.Generator, optional
        Initialisation randomness; the same seed gives the same parameters.
    recurrent_init : {"uniform", "identity", "orthogonal"}, default "uniform"
        W_h initialisation. Every parameter is first drawn from
        U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's nn.RNN convention); "identity" then sets
        each W_h = I (Le, Jaitly & Hinton 2015, for ReLU networks), "orthogonal" a random
        orthogonal matrix.
    num_layers : int, default 1
        Stacked layers; layer k > 0 reads the states of layer k - 1.
    bidirectional : bool, default False
        A reverse-direction layer beside each layer; their states are concatenated
        [forward; reverse], so the next layer and the head read 2H units.
    dropout : float in [0, 1), default 0
        Dropout on the output of every layer but the last (as PyTorch's nn.RNN), applied
        only in calls given a ``dropout_seed`` (training) or ``dropout_masks``.
    batch_first : bool, default False
        x, y, mask and the returned sequences are (B, T, ...) instead of (T, B, ...).

    Attributes
    ----------
    params : dict of arrays
        For each layer k and direction, "W_x" (H, D_k), "W_h" (H, H), "b_h" (H,) under the
        names of :func:`rnngrad.network.layer_param_names` (the first layer's forward
        direction keeps the seed's names W_x, W_h, b_h; then W_x_l1, ..., W_x_reverse, ...),
        D_0 = D and D_k = H · directions; then "W_y" (O, H · directions) and "b_y" (O,).
        Writing into these arrays, or assigning same-shaped arrays, changes the model.
    f, g, loss_fn : the hidden activation, output activation and loss objects.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int,
                 hidden_activation="tanh", output_activation="softmax", loss="cross_entropy",
                 dtype=np.float64, seed=None, recurrent_init: str = "uniform", num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, batch_first: bool = False):
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.output_size = check_positive_int("output_size", output_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        for name, value in (("bidirectional", bidirectional), ("batch_first", batch_first)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
        self.bidirectional, self.batch_first = bool(bidirectional), bool(batch_first)
        self.dropout = _check_dropout(dropout)
        self.dtype = check_dtype(dtype)
        self.f = _resolve_activation("hidden_activation", hidden_activation, HIDDEN_ACTIVATIONS)
        if not self.f.elementwise:
            raise ValueError(
                f"hidden_activation must be element-wise (seed §4: f'(z_t) multiplies element-wise); "
                f"{self.f.name!r} is not"
            )
        self.g = _resolve_activation("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        self.loss_fn = _resolve_loss(loss, self.g)
        check_choice("recurrent_init", recurrent_init, RECURRENT_INITS)
        self.recurrent_init = recurrent_init
        self._check_size()
        self._shapes = self._parameter_shapes()  # the sizes are fixed: checked on every call
        rng = check_seed(seed)
        try:
            self.params = self._init_params(rng)
        except (MemoryError, ValueError) as err:  # ValueError: a size NumPy cannot even express
            n = sum(int(np.prod(s, dtype=object)) for s in self._shapes.values())
            raise ValueError(
                f"these sizes need {n:,} parameters ({n * self.dtype.itemsize / 2**30:,.1f} GiB of "
                f"{self.dtype}), more than this machine could allocate ({type(err).__name__}); choose a "
                f"smaller hidden_size (W_h is hidden_size x hidden_size), input_size or output_size") from None

    # --- structure -----------------------------------------------------------------------
    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def architecture(self) -> Architecture:
        """What the pure functions of :mod:`rnngrad.network` need besides the parameters."""
        return Architecture(self.num_layers, self.bidirectional, self.f, self.g, self.loss_fn)

    @property
    def shapes(self) -> dict:
        """The shape of each parameter, keyed and ordered as in :attr:`params`."""
        return dict(self._shapes)

    def _check_size(self) -> None:
        """Refuse, before anything is built, a model whose parameters could not fit in this machine's
        memory (counted arithmetically: a huge num_layers would otherwise first build millions of
        entries) or a stack deeper than MAX_LAYERS."""
        D, H, O, dirs, L = self.input_size, self.hidden_size, self.output_size, self.directions, self.num_layers
        if L > MAX_LAYERS:
            raise ValueError(f"num_layers={L} is more than {MAX_LAYERS} stacked layers, which rnngrad refuses "
                             f"(each is a separate set of arrays and a separate loop); stack fewer")
        n = dirs * (H * (D + H + 1) + (L - 1) * H * (H * dirs + H + 1)) + O * (H * dirs + 1)
        total = _physical_memory()
        if total is not None and n * self.dtype.itemsize > total:
            raise ValueError(
                f"these sizes need {n:,} parameters ({n * self.dtype.itemsize / 2**30:,.1f} GiB of {self.dtype}), "
                f"more than this machine's {total / 2**30:,.1f} GiB of memory; choose a smaller hidden_size "
                f"(W_h is hidden_size x hidden_size), num_layers, input_size or output_size")

    def _parameter_shapes(self) -> dict:
        D, H, O, dirs = self.input_size, self.hidden_size, self.output_size, self.directions
        shapes = {}
        for k in range(self.num_layers):
            for d in range(dirs):
                W_x, W_h, b_h = layer_param_names(k, d)
                shapes.update({W_x: (H, D if k == 0 else H * dirs), W_h: (H, H), b_h: (H,)})
        shapes.update({"W_y": (O, H * dirs), "b_y": (O,)})
        return shapes

    def _init_params(self, rng: np.random.Generator) -> dict:
        H = self.hidden_size
        k = 1.0 / np.sqrt(H)
        params = {name: rng.uniform(-k, k, size=shape).astype(self.dtype) for name, shape in self.shapes.items()}
        for name in params:
            if not name.startswith("W_h"):
                continue
            if self.recurrent_init == "identity":
                params[name] = np.eye(H, dtype=self.dtype)
            elif self.recurrent_init == "orthogonal":
                q, r = np.linalg.qr(rng.standard_normal((H, H)))
                params[name] = (q * np.sign(np.diag(r))).astype(self.dtype)
        return params

    def checked_params(self) -> dict:
        """:attr:`params` validated (present, shaped, finite) and in the model's dtype."""
        return check_params(self.params, self._shapes, self.dtype)

    # --- the boundary --------------------------------------------------------------------
    def _time_major(self, name: str, arr):
        """A batch-first argument as a time-major view (the boundary's only transpose)."""
        if arr is None:
            return arr
        arr = np.asarray(arr)
        if arr.ndim < 2:
            raise ValueError(f"{name} must have at least two dimensions (B, T, ...) with batch_first=True; "
                             f"got shape {arr.shape}")
        return arr.swapaxes(0, 1)

    def _prepare(self, x, h0, mask=None, dropout_seed=None, dropout_masks=None, lengths=None):
        """Validated (params, x, h0 (U, B, H), mask, lengths, dropout masks)."""
        params = self.checked_params()
        if self.batch_first:
            x, mask = self._time_major("x", x), self._time_major("mask", mask)
        x = check_inputs(x, self.input_size, self.dtype)
        T, B = x.shape[:2]
        h0 = check_h0(h0, B, self.hidden_size, self.dtype, units=self.num_layers * self.directions)
        mask = check_mask(mask, T, B)
        if lengths is not None:
            lengths = check_lengths(lengths, T, B)
            valid = np.arange(T)[:, None] < lengths[None, :]
            if mask is None:
                mask = valid
            elif (mask & ~valid).any():
                t, b = (int(i) for i in np.argwhere(mask & ~valid)[0])
                raise ValueError(f"mask marks step {t} of sequence {b}, which is padding (lengths[{b}] = "
                                 f"{lengths[b]}); padding adds no loss: clear the mask there")
        elif self.bidirectional and mask is not None:
            lengths = lengths_from_mask(mask)
        masks = None if dropout_seed is None and dropout_masks is None else \
            self._dropout_masks(T, B, dropout_seed, dropout_masks)
        return params, x, h0, mask, lengths, masks

    def _dropout_masks(self, T: int, B: int, dropout_seed, dropout_masks):
        """The masks of the levels below the top: given, drawn from ``dropout_seed``, or None."""
        levels, C = self.num_layers - 1, self.hidden_size * self.directions
        if dropout_masks is not None:
            if dropout_seed is not None:
                raise ValueError("give dropout_seed or dropout_masks, not both")
            if (isinstance(dropout_masks, np.ndarray) or not hasattr(dropout_masks, "__len__")
                    or len(dropout_masks) != levels):
                raise ValueError(f"dropout_masks must be a list of num_layers - 1 = {levels} arrays of shape "
                                 f"(T, B, C) = ({T}, {B}, {C}), such as res.forward.dropout_masks")
            out = []
            for k, m in enumerate(dropout_masks):
                arr = np.asarray(m, dtype=self.dtype)
                if self.batch_first:  # given (B, T, C) like every sequence at the boundary
                    arr = arr.swapaxes(0, 1) if arr.ndim == 3 else arr
                if arr.shape != (T, B, C):
                    labels, want, got = (("(B, T, C)", (B, T, C), arr.shape[1::-1] + arr.shape[2:])
                                         if self.batch_first else ("(T, B, C)", (T, B, C), arr.shape))
                    raise ValueError(f"dropout_masks[{k}] must have shape {labels} = {want}; got {got}")
                if not np.isfinite(arr).all():
                    raise ValueError(f"dropout_masks[{k}] contains NaN or Inf")
                out.append(arr)
            return out or None
        if dropout_seed is None or self.dropout == 0 or levels == 0:
            if dropout_seed is not None:
                check_seed(dropout_seed)
            return None
        rng = check_seed(dropout_seed)
        keep = 1.0 - self.dropout
        return [(rng.random((T, B, C)) < keep).astype(self.dtype) / self.dtype.type(keep) for _ in range(levels)]

    def _prepare_loss(self, x, y, h0, mask, reduction, workspace=None, dropout_seed=None, dropout_masks=None,
                      lengths=None):
        if workspace is not None and not isinstance(workspace, Workspace):
            raise TypeError(f"workspace must be an rnngrad.Workspace or None; got {type(workspace).__name__}")
        check_choice("reduction", reduction, REDUCTIONS)
        params, x, h0, mask, lengths, masks = self._prepare(x, h0, mask, dropout_seed, dropout_masks, lengths)
        T, B = x.shape[:2]
        if self.batch_first:
            y = self._time_major("y", y)
        y = check_targets(y, self.loss_fn, T, B, self.output_size, self.dtype, mask)
        return params, x, h0, y, loss_weights(mask, reduction, T, B, self.dtype), lengths, masks

    def _public(self, fwd: Forward, single: bool) -> Forward:
        """The cache as the caller sees it: h_last shaped as h0 (``single``: (B, H)), sequences
        batch-first if asked."""
        # In place: the cache is this call's own, and its backward pass (if any) is done.
        if single:
            fwd.h0, fwd.h_last = fwd.h0[0], fwd.h_last[0]
        if self.batch_first:
            fwd.x, fwd.h, fwd.a, fwd.y_hat = (v.swapaxes(0, 1) for v in (fwd.x, fwd.h, fwd.a, fwd.y_hat))
            if fwd.dropout_masks is not None:
                fwd.dropout_masks = [m.swapaxes(0, 1) for m in fwd.dropout_masks]
        return fwd

    def _single_state(self, h0_given) -> bool:
        """True when states are (B, H): one unit, and h0 not given as (1, B, H)."""
        return (self.num_layers == 1 and not self.bidirectional
                and (h0_given is None or getattr(h0_given, "ndim", None) == 2 or np.ndim(h0_given) == 2))

    # --- the calls -----------------------------------------------------------------------
    def _run_forward(self, check_finite, params, xs, h0s, engine, lengths, masks, workspace=None) -> Forward:
        if not check_finite:
            return network.forward(params, xs, h0s, self.architecture, engine, lengths, masks, workspace)
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, in words
            cache = network.forward(params, xs, h0s, self.architecture, engine, lengths, masks, workspace)
        network.check_finite_states(cache, self.architecture)
        return cache

    def forward(self, x, h0=None, mask=None, dropout_seed=None, dropout_masks=None, engine=None,
                lengths=None, check_finite: bool = False) -> Forward:
        """Hidden states and outputs for x.

        Parameters
        ----------
        x : (T, B, D) array of floats, or (T, B) integer token indices in [0, D)
        h0 : (U, B, H), or (B, H) for one layer and one direction; optional (zeros)
        mask : (T, B), optional; for a bidirectional network its valid-steps prefix gives each
            sequence's length (see :meth:`gradients`)
        dropout_seed, dropout_masks, engine, lengths, check_finite : see :meth:`gradients`

        Returns
        -------
        :class:`rnngrad.network.Forward` with ``h`` (T, B, C) the top layer's states,
        ``y_hat`` (T, B, O), ``a`` (T, B, O), ``h_last`` shaped as h0.
        """
        engine = get_engine(engine)
        params, xs, h0s, _, lengths, masks = self._prepare(x, h0, mask, dropout_seed, dropout_masks, lengths)
        fwd = self._run_forward(check_finite, params, xs, h0s, engine, lengths, masks)
        return self._public(fwd, self._single_state(h0))

    def gradients(self, x, y, h0=None, mask=None, reduction: str = "sum", need=None,
                  workspace: Workspace | None = None, dropout_seed=None, dropout_masks=None,
                  engine=None, lengths=None, check_finite: bool = False) -> Gradients:
        """Loss and every gradient of seed §1 by backpropagation through time.

        Parameters
        ----------
        x : (T, B, D) floats, or (T, B) integer token indices
        y : targets: (T, B, O) floats, or (T, B) integer class indices for
            cross_entropy with a softmax output
        h0 : (U, B, H) with U = num_layers · directions (PyTorch's layout), or (B, H) for
            one layer and one direction; optional (zeros)
        mask : (T, B) of 0/1 or bool, optional; a masked (t, b) adds no loss. For a
            bidirectional network it must mark each sequence's valid steps followed by
            padding, and padding then enters no state (the reverse direction starts at each
            sequence's last valid step, as PyTorch's packed sequences). For a unidirectional
            network any pattern weights the loss, and the states run over all T steps.
        reduction : "sum" (the seed's L) or "mean" (L divided by the number of unmasked (t, b))
        need : collection of names from "dx", "dh0", "dy_hat", optional
            Compute only these state gradients (the parameters' and ``dh`` always); default all.
        workspace : :class:`rnngrad.Workspace`, optional
            Keep the large arrays of the call in it and reuse them on the next call that
            passes it. The returned arrays, except ``h_last``, are then the workspace's and
            are overwritten by that next call; see :mod:`rnngrad.workspace`.
        dropout_seed : int or numpy.random.Generator, optional
            Draw dropout masks from it (training); without it, and without ``dropout_masks``,
            no dropout (evaluation). The masks used are ``res.forward.dropout_masks``.
        dropout_masks : list of num_layers - 1 arrays (T, B, C) ((B, T, C) with batch_first), optional
            Use these masks (e.g. ``res.forward.dropout_masks``, to replay a training step exactly).
        engine : None (the default engine), "numpy", "numba" or an engine object; see
            :mod:`rnngrad.engines`
        lengths : (B,) integers in [1, T], optional
            Each sequence's valid steps; the rest is padding, which then enters no state (zero
            states there, ``h_last`` after the last valid step, the reverse direction starting
            there), for any network. With lengths, ``mask`` weights the loss in any pattern
            within them (default: every valid step); a bidirectional network needs them to
            take a mask that is not a prefix (e.g. the loss at the last step only).
        check_finite : bool, default False
            Raise FloatingPointError naming the layer and step where the hidden states first
            overflow to Inf/NaN (an unbounded f with large weights), instead of returning a NaN
            loss; NumPy's overflow warnings are then silenced. Costs one pass over the states.

        Returns
        -------
        :class:`Gradients` with ``loss`` (float), ``grads`` (the keys of ``params``), ``dh``
        ((T, B, H), or (U, T, B, H)), ``dy_hat`` (T, B, O), ``dx`` (T, B, D; float inputs),
        ``dh0`` and ``h_last`` (shaped as h0) and ``forward`` (the cache).
        """
        engine = get_engine(engine)
        need = check_need(need, OPTIONAL_GRADS)  # before the forward pass: fail fast
        params, xs, h0s, ys, w, lengths, masks = self._prepare_loss(x, y, h0, mask, reduction, workspace,
                                                                   dropout_seed, dropout_masks, lengths)
        arch = self.architecture
        cache = self._run_forward(check_finite, params, xs, h0s, engine, lengths, masks, workspace)
        res = network.backward(params, cache, ys, w, arch, engine, need=need, workspace=workspace)
        # The result is this call's own: shaped for the caller in place. dh is (T, B, H) for one
        # unit (whatever h0's shape), else (U, T, B, H); dh0 and h_last are shaped as h0.
        single = self._single_state(h0)
        self._public(cache, single)
        res.h_last = cache.h_last  # the same array (one view, not two, for a single unit)
        if arch.units == 1:
            res.dh = res.dh[0]
        if single and res.dh0 is not None:
            res.dh0 = res.dh0[0]
        if self.batch_first:  # views: time and batch swapped back at the boundary
            res.dh = res.dh.swapaxes(-3, -2)
            res.dy_hat, res.dx = (None if a is None else a.swapaxes(0, 1) for a in (res.dy_hat, res.dx))
        return res

    def loss(self, x, y, h0=None, mask=None, reduction: str = "sum", workspace: Workspace | None = None,
             dropout_seed=None, dropout_masks=None, engine=None, lengths=None,
             check_finite: bool = False) -> float:
        """The loss L alone (no backward pass); arguments as :meth:`gradients` (a workspace
        passed here overwrites the results of an earlier call with it, too)."""
        engine = get_engine(engine)
        params, xs, h0s, ys, w, lengths, masks = self._prepare_loss(x, y, h0, mask, reduction, workspace,
                                                                   dropout_seed, dropout_masks, lengths)
        cache = self._run_forward(check_finite, params, xs, h0s, engine, lengths, masks, workspace)
        return network.loss(params, cache, ys, w, self.architecture, engine, workspace)

    # --- PyTorch -------------------------------------------------------------------------
    def load_torch_state_dict(self, rnn_state, linear_state) -> "RNN":
        """Take the weights of a ``torch.nn.RNN`` and its ``torch.nn.Linear`` head.

        ``rnn_state``, ``linear_state``: their ``state_dict()`` (torch tensors or NumPy arrays),
        for an nn.RNN with this model's input_size, hidden_size, num_layers and bidirectional,
        and an nn.Linear(H · directions, O). b_h = bias_ih + bias_hh. The nonlinearity is not in
        a state dict: build this model with the same hidden_activation. Returns self.
        """
        new = params_from_torch(rnn_state, linear_state, self.shapes, self.num_layers, self.directions, self.dtype)
        # Into the existing arrays where they fit, so that an optimizer holding them (it updates
        # them in place) keeps training this model.
        old = self.params
        if isinstance(old, dict) and old.keys() == new.keys() and all(
                isinstance(old[k], np.ndarray) and old[k].shape == v.shape and old[k].dtype == v.dtype
                and old[k].flags.writeable for k, v in new.items()):
            for k, v in new.items():
                old[k][...] = v
        else:
            self.params = new
        return self

    def torch_state_dict(self) -> tuple[dict, dict]:
        """(nn.RNN state dict, nn.Linear state dict) of NumPy arrays under PyTorch's keys:
        ``weight_ih_l{k}[_reverse]`` = W_x, ``weight_hh_l{k}`` = W_h, ``bias_ih_l{k}`` = b_h,
        ``bias_hh_l{k}`` = 0; ``weight`` = W_y, ``bias`` = b_y. Load them with
        ``rnn.load_state_dict({k: torch.from_numpy(v) for k, v in rnn_state.items()})``."""
        return params_to_torch(self.checked_params(), self.num_layers, self.directions)

    # --- copies --------------------------------------------------------------------------
    def astype(self, dtype) -> "RNN":
        """A copy of this model with parameters (and computation) in ``dtype``."""
        new = object.__new__(RNN)
        new.__dict__.update(self.__dict__)
        new.dtype = check_dtype(dtype)
        new.params = {k: np.array(v, dtype=new.dtype) for k, v in self.params.items()}
        return new

    def copy(self) -> "RNN":
        """An independent copy (parameters copied)."""
        return self.astype(self.dtype)

    def __repr__(self) -> str:
        extra = "".join(f", {name}={value!r}" for name, value, default in (
            ("num_layers", self.num_layers, 1), ("bidirectional", self.bidirectional, False),
            ("dropout", self.dropout, 0.0), ("batch_first", self.batch_first, False)) if value != default)
        return (
            f"RNN(input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"output_size={self.output_size}, hidden_activation={self.f.name!r}, "
            f"output_activation={self.g.name!r}, loss={self.loss_fn.name!r}, "
            f"dtype={self.dtype.name}{extra})"
        )

