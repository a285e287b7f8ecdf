"""Checkpoints: one ``.npz`` file of arrays plus JSON metadata, written atomically, read without pickle.

Layout of the file (a NumPy ``.npz``, i.e. a zip of ``.npy`` arrays):

    meta                0-d unicode array: JSON with "format", "version", "model" (sizes,
                        layers, directions, dropout, activation and loss names, dtype), and
                        whatever the caller adds (training config, progress, optimizer
                        numbers, vocabulary)
    param/<name>        every key of model.params (W_x, W_h, b_h, ..., W_y, b_y)
    <group>/<name>      any other arrays the caller adds (optimizer slots, carried state)

Versions: 2 adds num_layers, bidirectional, dropout and batch_first to "model"; a version 1
file (single-layer, written before stacked networks existed) has the same parameter names
and loads as a one-layer unidirectional model.

Why this format: ``np.load(..., allow_pickle=False)`` can read it and cannot run code,
so a checkpoint received from someone else is safe to open; every array is plain
``.npy``, readable from any language with a zip and an ``.npy`` reader.

Why atomic: the file is written to a temporary name in the same folder, flushed and
fsynced, then renamed over the old one (``os.replace`` is atomic on POSIX and Windows).
A crash, Ctrl-C or full disk during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from ._io import atomic_write
from .activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
from .losses import LOSSES
from .model import RNN

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint",
           "model_meta", "model_from_checkpoint", "FORMAT", "VERSION", "READABLE_VERSIONS", "MAX_BYTES"]

FORMAT = "rnngrad-checkpoint"
VERSION = 2
#: Versions this code reads (1: single-layer checkpoints, before num_layers and bidirectional).
READABLE_VERSIONS = (1, 2)
RESERVED_META = ("format", "version", "model")  # written by save_checkpoint; a caller's value would break loading
_PLAIN_KINDS = frozenset("biufcU")  # bool, ints, floats, complex, unicode strings


class CheckpointError(ValueError):
    """A file that is not a readable rnngrad checkpoint (missing, truncated, corrupted or foreign)."""


def model_meta(model: RNN) -> dict:
    """What rebuilds ``model``'s structure: sizes, names of f, g and L_t, dtype, init."""
    for role, obj, table in (("hidden_activation", model.f, HIDDEN_ACTIVATIONS),
                             ("output_activation", model.g, OUTPUT_ACTIVATIONS),
                             ("loss", model.loss_fn, LOSSES)):
        if table.get(obj.name) is not type(obj):
            raise TypeError(
                f"cannot save a model whose {role} is a custom object ({obj!r}); checkpoints store "
                f"built-in names only, so that loading one never runs code from the file"
            )
    return {
        "input_size": model.input_size, "hidden_size": model.hidden_size,
        "output_size": model.output_size, "hidden_activation": model.f.name,
        "output_activation": model.g.name, "loss": model.loss_fn.name,
        "dtype": model.dtype.name, "recurrent_init": model.recurrent_init,
        "num_layers": model.num_layers, "bidirectional": model.bidirectional,
        "dropout": model.dropout, "batch_first": model.batch_first,
    }


def save_checkpoint(path, model: RNN, meta: Mapping | None = None,
                    arrays: Mapping[str, np.ndarray] | None = None) -> Path:
    """Atomically write ``model`` (and extra ``meta`` JSON and ``arrays``) to ``path``.

    Parameters
    ----------
    path : file to write (conventionally ``checkpoint.npz``)
    model : RNN with built-in activations and loss
    meta : JSON-serialisable dict stored beside the model's description; its keys may not be
        "format", "version" or "model" (ValueError)
    arrays : extra arrays, keys of the form "group/name" (not "param/..."), each numeric, bool or
        unicode-string (ValueError for object or other dtypes, which would need pickle to load)
    """
    meta = dict(meta or {})
    for key in RESERVED_META:
        if key in meta:
            raise ValueError(f"meta key {key!r} is reserved for the checkpoint itself (reserved: "
                             f"{', '.join(map(repr, RESERVED_META))}); store it under another name")
    content = {"format": FORMAT, "version": VERSION, "model": model_meta(model), **meta}
    payload = {"meta": np.array(json.dumps(content))}
    for name, value in model.params.items():
        payload[f"param/{name}"] = _plain_array(f"param/{name}", value)
    for key, value in (arrays or {}).items():
        if not isinstance(key, str) or key == "meta" or key.startswith("param/") or "/" not in key:
            raise ValueError(f"extra array names must look like 'group/name' and not use 'param/'; got {key!r}")
        payload[key] = _plain_array(key, value)
    # allow_pickle=False as a second guard: NumPy itself refuses anything that would need pickle.
    return atomic_write(path, lambda fh: np.savez(fh, allow_pickle=False, **payload))


def _plain_array(name: str, value) -> np.ndarray:
    """``value`` as an array that ``np.load(allow_pickle=False)`` reads back: numeric, bool or unicode."""
    arr = np.asarray(value)
    if arr.dtype.kind not in _PLAIN_KINDS or arr.dtype.fields is not None:
        raise ValueError(f"array {name!r} has dtype {arr.dtype}; checkpoints store only numeric, bool or "
                         f"unicode-string arrays (anything else would need pickle to load)")
    return arr


#: Default limit on the bytes a checkpoint's arrays may take once read (raise it with
#: ``load_checkpoint(..., max_bytes=...)`` for a model that needs more).
MAX_BYTES = 1 << 30
_META_MAX_BYTES = 16 << 20  # the JSON metadata: vocabulary, configuration, numbers


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, path) -> tuple:
    """(shape, dtype) that the .npy member declares, read from its first bytes only, after
    checking that the declaration matches the member's size (so nothing is allocated for a
    header that promises more than the file holds) and needs no pickle."""
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
        header = fh.tell() if fh.seekable() else None
    if dtype.hasobject or dtype.kind not in _PLAIN_KINDS or dtype.fields is not None:
        raise CheckpointError(f"{str(path)!r}: array {name!r} has dtype {dtype}, which a checkpoint never holds")
    declared = math.prod(shape) * dtype.itemsize
    if header is None or info.file_size != header + declared:
        raise CheckpointError(f"{str(path)!r}: array {name!r} declares shape {shape} of {dtype} "
                              f"({declared} bytes) but its member holds {info.file_size} bytes; the file is "
                              f"corrupted or crafted")
    return shape, dtype


def load_checkpoint(path, groups=None, max_bytes: int = MAX_BYTES) -> tuple[dict, dict]:
    """Read a checkpoint: returns (meta dict, arrays dict keyed as saved).

    Only the metadata, the parameters and the arrays of ``groups`` (a collection of group
    names such as ``("optim", "state")``; None: every group) are read; other members are never
    decompressed. Each array's header is checked against its member's size before anything is
    allocated, and the arrays read may take at most ``max_bytes`` in all. Raises CheckpointError
    (one line) for a missing, truncated, corrupted, oversized or foreign file, and never
    unpickles anything.
    """
    path = Path(path)
    try:
        is_file = path.is_file()
    except (OSError, ValueError) as err:  # a name too long for the file system, a NUL byte
        raise CheckpointError(f"checkpoint {str(path)[:200]!r} cannot be opened: {err}") from None
    if not is_file:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        arrays = _read_members(path, groups, max_bytes)
    except CheckpointError:
        raise
    # Anything else the readers raise on damaged bytes is the file's fault, not a bug to show as a
    # traceback: zipfile's RuntimeError (a member flagged encrypted) and NotImplementedError (an
    # unknown compression method), zlib.error, numpy's header parser (ValueError, SyntaxError,
    # tokenize.TokenError), MemoryError, RecursionError. KeyboardInterrupt is not an Exception.
    except Exception as err:  # noqa: BLE001 - see above
        raise CheckpointError(
            f"{str(path)!r} is not a readable rnngrad checkpoint (truncated, corrupted or another "
            f"kind of file): {type(err).__name__}: {err}") from None
    if "meta" not in arrays or arrays["meta"].dtype.kind != "U" or arrays["meta"].shape != ():
        raise CheckpointError(f"{str(path)!r} is an .npz file but not an rnngrad checkpoint (no metadata)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: JSON nested beyond reason
        raise CheckpointError(f"{str(path)!r} has corrupted metadata: {type(err).__name__}: "
                              f"{str(err)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an rnngrad checkpoint (format {meta.get('format')!r})"
                              if isinstance(meta, dict) else f"{str(path)!r} has corrupted metadata")
    if meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{str(path)!r} is checkpoint format version {meta.get('version')!r}; this rnngrad reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))} (a newer rnngrad wrote it: upgrade rnngrad)")
    return meta, arrays


def _read_members(path: Path, groups, max_bytes: int) -> dict:
    wanted = None if groups is None else {"param", *groups}
    arrays, total = {}, 0
    with zipfile.ZipFile(path) as zf:
        members = []
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-len(".npy")]
            group = name.split("/", 1)[0] if "/" in name else None
            if name != "meta" and (group is None or (wanted is not None and group not in wanted)):
                continue  # not a member this reader knows: never decompressed
            shape, dtype = _member_header(zf, info, name, path)
            total += info.file_size
            limit = _META_MAX_BYTES if name == "meta" else max_bytes
            if (info.file_size if name == "meta" else total) > limit:
                raise CheckpointError(
                    f"{str(path)!r} holds more than {limit} bytes of arrays (at {name!r}); a checkpoint of "
                    f"this size is refused unless you raise the limit: load_checkpoint(path, max_bytes=...)")
            members.append((name, info))
        for name, info in members:
            with zf.open(info) as fh:
                arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
    return arrays


def model_from_checkpoint(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> RNN:
    """Rebuild the RNN saved by :func:`save_checkpoint` (parameters checked for shape and finiteness)."""
    try:
        m = dict(meta["model"])
        model = RNN(m["input_size"], m["hidden_size"], m["output_size"],
                    hidden_activation=m["hidden_activation"], output_activation=m["output_activation"],
                    loss=m["loss"],
                    dtype=np.dtype(m["dtype"]), recurrent_init=m.get("recurrent_init", "uniform"),
                    num_layers=m.get("num_layers", 1), bidirectional=m.get("bidirectional", False),
                    dropout=m.get("dropout", 0.0), batch_first=m.get("batch_first", False))
        params = {name: arrays[f"param/{name}"] for name in model.params}
        wrong = [f"param/{name} is {a.dtype}" for name, a in params.items() if a.dtype != model.dtype]
        if wrong:
            raise ValueError(f"parameters must be {model.dtype} as the metadata says ({'; '.join(wrong)})")
        extra = sorted(k for k in arrays if k.startswith("param/") and k[len("param/"):] not in model.params)
        if extra:
            raise ValueError(f"parameters {extra} do not belong to the model the metadata describes")
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint metadata or parameters are incomplete or invalid: {err}") from None
    model.params = params
    try:
        model.params = model.checked_params()
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint parameters are invalid: {err}") from None
    return model
