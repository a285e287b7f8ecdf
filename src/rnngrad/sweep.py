"""Sweeps: one independent training run per configuration of a grid (``rnngrad sweep``).

    grid = dict([parse_grid_option("lr=1e-3,3e-4"), parse_grid_option("hidden_activation=tanh,relu")])
    records = run_sweep(TrainConfig(task="adding", steps=2000), expand_grid(grid), "sweeps/lr-f")

Each configuration is the shared settings (``base``) with a few changed, and trains as its own
:class:`rnngrad.train.Trainer` run in ``DIR/<run_name(changes)>`` (e.g. ``DIR/lr=0.001,
hidden_activation=relu``): checkpoint.npz, best.npz, metrics.jsonl, loss.png as ``rnngrad train``
writes them. Runs go one after another in this process, or as tasks on a Dask cluster, one run
per task (no per-step traffic: the efficient use of many machines for models of the main job's
size, see docs/scaling.md). On a cluster of several machines, DIR must be on a file system every
worker sees (the workers write the run folders; the client writes the summary).

Resumable, run by run, from what the folders hold: a rerun skips a finished run (its checkpoint
is at the step limit, or early stopping ended it), resumes an interrupted one (a checkpoint below
the step limit: stopped, out of time, its worker killed) and starts a missing one. On Dask a
worker that dies takes its run's task with it; the scheduler gives the task to another worker,
where the run resumes from its last checkpoint. A run's error (a divergence, FloatingPointError,
or any other) is that run's status and message; the sweep goes on.

The sweep writes ``DIR/summary.json`` (atomically, after every finished run): a list, in grid
order, of ``{"name", "config" (the changed settings), "status", "final_val_loss",
"best_val_loss", "best_step", "steps", "folder", "message", "from_step", "seconds"}``;
status is "done", "early_stopped", "time", "stopped", "diverged", "failed" or "pending" (not run
yet); ``from_step`` is the step this invocation found the run at (0: started, ``steps``: skipped).
Also ``summary.md`` (the table) and ``summary.png`` (best validation loss per configuration: a
heat map for a full two-setting grid, bars otherwise; needs matplotlib). A lock on DIR refuses a
second sweep into it while one runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import time
import tomllib
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Callable

from ._io import FolderBusy, FolderLock, LOCK_FILE, atomic_write, check_run_folder
from .metrics import parse_metrics
from .schedules import parse_schedule
from .threads import blas_threads
from .train import CHECKPOINT, METRICS, TrainConfig, Trainer, load_training_checkpoint

__all__ = ["FIELD_TYPES", "expand_grid", "parse_grid_option", "parse_value", "load_sweep_file", "run_name",
           "run_sweep", "run_one", "summary_table", "write_summary", "SUMMARY", "SUMMARY_TABLE", "SUMMARY_FIGURE", "RECORD_KEYS"]

SUMMARY, SUMMARY_TABLE, SUMMARY_FIGURE = "summary.json", "summary.md", "summary.png"
RECORD_KEYS = ("name", "config", "status", "final_val_loss", "best_val_loss", "best_step", "steps", "folder",
               "message", "from_step", "seconds")
# Settings a resumed run may change (as Trainer.resume allows); any other difference between a
# run folder's saved settings and the sweep's is refused for that run.
_MAY_CHANGE = ("steps", "time_budget", "early_stopping")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _field_types() -> dict[str, tuple[type, bool]]:
    """{field: (type, accepts None)} of every TrainConfig setting of a plain type (int, float, str,
    bool, or one of them or None), read from its annotation; a setting of another type is not
    sweepable (none is, today)."""
    out = {}
    for f in fields(TrainConfig):
        parts = [p.strip() for p in str(f.type).split("|")]
        kinds = [_TYPES.get(p) for p in parts if p != "None"]
        if len(kinds) == 1 and kinds[0] is not None:
            out[f.name] = (kinds[0], "None" in parts)
    return out


#: Every setting a grid may vary, with its type and whether it accepts None.
FIELD_TYPES = _field_types()


def _check_name(name: str, option: str) -> str:
    key = name.strip().replace("-", "_")
    if key not in FIELD_TYPES:
        raise ValueError(f"{option} {name!r}: unknown setting; valid settings: {', '.join(FIELD_TYPES)}")
    return key


def parse_value(name: str, value, option: str = "--grid"):
    """``value`` (text from the command line, or a TOML value) as setting ``name`` takes it:
    int, float, str, bool (true/false/yes/no/1/0) or None ("none", for the settings that take
    it). ``clip_norm`` 0 means no clipping (None), as ``rnngrad train --clip-norm 0``.
    ValueError, one line naming ``option`` and the setting, for a value of the wrong kind."""
    kind, optional = FIELD_TYPES[name]
    what = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]
    bad = ValueError(f"{option} {name}: {value!r} is not {what}" + (" (or none)" if optional else ""))
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if optional and text in ("none", "null"):
            return None
        try:
            value = ({"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[text]
                     if kind is bool else kind(text))
        except (KeyError, ValueError):
            raise bad from None
    elif isinstance(value, str) and optional and value.strip().lower() in ("none", "null"):
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise bad
    if name == "clip_norm" and value == 0:
        return None
    return value


def parse_grid_option(text: str, option: str = "--grid") -> tuple[str, list]:
    """``"lr=1e-3,3e-4"`` -> ``("lr", [0.001, 0.0003])``: a setting (as TrainConfig or the
    command line spells it, ``hidden-size`` or ``hidden_size``) and its values, converted to
    the setting's type. (Values holding commas, such as ``--lr-schedule`` specs, go in a
    ``--config`` file's [grid] table.)"""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"{option} expects NAME=V1,V2,... (e.g. lr=1e-3,3e-4); got {text!r}")
    name, _, values = text.partition("=")
    key = _check_name(name, option)
    items = values.split(",")
    if any(not v.strip() for v in items):
        raise ValueError(f"{option} {key}: empty value in {values!r}; separate values by single commas")
    return key, _distinct(key, [parse_value(key, v, option) for v in items], option)


def _distinct(key: str, values: list, option: str) -> list:
    for i, v in enumerate(values):
        if v in values[:i]:
            raise ValueError(f"{option} {key}: the value {v!r} is given twice")
    return values


def expand_grid(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, as ``{setting: value}`` dicts: the cartesian
    product in a stable order (the first setting varies slowest, values in their given order).
    An empty grid is one configuration, the shared settings alone: ``[{}]``."""
    if not isinstance(grid, dict):
        raise TypeError(f"grid must be a dict of setting -> list of values; got {type(grid).__name__}")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid[{key!r}] must be a non-empty list of values; got {values!r}")
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def load_sweep_file(path) -> tuple[dict[str, list], dict]:
    """(grid, shared settings) from a TOML file with a ``[grid]`` table (setting = [values] or
    one value) and an optional ``[train]`` table (setting = value)::

        [grid]
        lr = [1e-3, 3e-4]
        lr_schedule = ["constant", "warmup=100,cosine"]
        [train]
        task = "adding"
        steps = 2000
        clip_norm = "none"       # TOML has no null
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"--config {str(path)!r}: cannot read it ({err.strerror or err})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {str(path)!r} is not valid TOML: {err}") from None
    unknown = sorted(set(doc) - {"grid", "train"})
    if unknown or not isinstance(doc.get("grid", {}), dict) or not isinstance(doc.get("train", {}), dict):
        raise ValueError(f"--config {str(path)!r}: expected a [grid] table and an optional [train] table"
                         + (f"; got {', '.join(unknown)}" if unknown else ""))
    option = f"--config {path.name} [grid]"
    grid = {}
    for name, values in doc.get("grid", {}).items():
        key = _check_name(name, option)
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ValueError(f"{option} {key}: the list of values is empty")
        grid[key] = _distinct(key, [parse_value(key, v, option) for v in values], option)
    option = f"--config {path.name} [train]"
    train = {}
    for name, value in doc.get("train", {}).items():
        key = _check_name(name, option)
        train[key] = parse_value(key, value, option)
    return grid, train


def _value_text(name: str, value) -> str:
    if name == "text" and isinstance(value, str):
        return Path(value).stem or "text"  # a file's name, not its whole path
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float: 0.001, 1e-05
    return "none" if value is None else str(value)


def run_name(config_changes: dict) -> str:
    """The folder name of a configuration: its changed settings as ``name=value`` joined by
    commas, in their order (``"lr=0.001,hidden_activation=relu"``; ``"base"`` for none).
    Safe on every file system: characters other than letters, digits and ``._=,+-`` become
    ``_``; a name over 120 characters is cut and ends in a hash of the whole, so it stays unique."""
    if not config_changes:
        return "base"
    name = ",".join(f"{k}={_value_text(k, v)}" for k, v in config_changes.items())
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name) > 120:
        name = name[:103] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return name


# --- one run ----------------------------------------------------------------------------------

def _check_same_run(saved: TrainConfig, wanted: TrainConfig, folder: Path) -> None:
    """A run folder resumed by a sweep must hold the sweep's configuration (steps, time budget
    and early stopping may differ, as with ``rnngrad train --resume``)."""
    a, b = asdict(saved), asdict(wanted)
    # The saved schedule is spelled out for the saved step limit (Trainer does so).
    b["lr_schedule"] = parse_schedule(wanted.lr_schedule, saved.steps, wanted.lr).spec
    differ = [k for k in a if k not in _MAY_CHANGE and a[k] != b.get(k)]
    if differ:
        shown = ", ".join(f"{k}={a[k]!r} (sweep: {b.get(k)!r})" for k in differ)
        raise ValueError(f"{folder} holds a run with other settings: {shown}; remove that folder or "
                         f"sweep into another DIR")


def _saved_state(folder: Path, config: TrainConfig) -> tuple[int, str | None] | None:
    """None (no checkpoint), or (step of the checkpoint, "done"/"early_stopped" if that run is
    finished for ``config``, else None: to resume)."""
    if not (folder / CHECKPOINT).exists():
        return None
    _, meta, _ = load_training_checkpoint(folder)
    _check_same_run(TrainConfig.from_dict(meta["config"]), config, folder)
    progress = meta["progress"]
    step = int(progress["step"])
    if step >= config.steps:
        return step, "done"
    if config.early_stopping is not None and int(progress.get("evals_since_best", 0)) >= config.early_stopping:
        return step, "early_stopped"
    return step, None


def _folder_results(folder: Path) -> dict:
    """final and best validation loss (and the best's step) from the folder's metrics.jsonl."""
    path = folder / METRICS
    rows = parse_metrics(path.read_text(encoding="utf-8", errors="replace"))[0] if path.is_file() else []
    rows = [r for r in rows if isinstance(r.get("val_loss"), (int, float))]
    if not rows:
        return {"final_val_loss": None, "best_val_loss": None, "best_step": None}
    best = min(rows, key=lambda r: r["val_loss"])  # the first of equal ones, as the Trainer keeps it
    return {"final_val_loss": rows[-1]["val_loss"], "best_val_loss": best["val_loss"], "best_step": best["step"]}


def run_one(config: dict, changes: dict, name: str, folder: str,
            should_stop: Callable[[], bool] | None = None) -> dict:
    """Train (start, resume or skip) one configuration in ``folder``; returns its record.

    A top-level function of plain arguments, so that a Dask worker can run it (and run it
    again after a worker died: it then resumes from the folder's checkpoint). Never raises for
    the run's own errors: a FloatingPointError (divergence) is status "diverged", any other
    Exception "failed", with the message; KeyboardInterrupt and SystemExit pass through.
    """
    t0, folder = time.perf_counter(), Path(folder)
    cfg, trainer, notes = TrainConfig(**config), None, []
    status, message, from_step, steps = "failed", "", 0, 0
    stop = should_stop or (lambda: False)
    try:
        state = _saved_state(folder, cfg)
        if state is not None and state[1] is not None:  # finished: nothing to do
            from_step = steps = state[0]
            status = state[1]
        else:
            if state is None:
                trainer = Trainer(cfg, folder)
            else:
                trainer = Trainer.resume(folder, steps=cfg.steps, warn=notes.append)
                # The sweep's budget and patience, None included (resume keeps a saved one otherwise).
                trainer.config.time_budget, trainer.config.early_stopping = cfg.time_budget, cfg.early_stopping
            trainer.warn = notes.append
            from_step = trainer.progress.step
            status = str(trainer.run(should_stop=stop))
    except FloatingPointError as err:
        status, message = "diverged", str(err)
    except Exception as err:  # noqa: BLE001 - the run's outcome, recorded; the sweep goes on
        status, message = "failed", f"{type(err).__name__}: {err}"
    if trainer is not None:
        steps = trainer.progress.step
    message = "; ".join([message] + notes if message else notes)
    return {"name": name, "config": dict(changes), "status": status, **_folder_results(folder),
            "steps": steps, "folder": str(folder), "message": message, "from_step": from_step,
            "seconds": time.perf_counter() - t0}


# --- the sweep --------------------------------------------------------------------------------

def _configurations(base: TrainConfig, grid_configs: list) -> list[tuple[str, dict, TrainConfig]]:
    """(name, changes, full configuration) of each, every one validated before any run starts."""
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base must be a rnngrad.train.TrainConfig; got {type(base).__name__}")
    if not isinstance(grid_configs, (list, tuple)) or not grid_configs:
        raise ValueError("grid_configs must be a non-empty list of {setting: value} dicts (see expand_grid)")
    names: dict[str, dict] = {}
    for changes in grid_configs:  # the folder names first: a clash is a mistake in the grid itself
        if not isinstance(changes, dict):
            raise TypeError(f"each configuration must be a dict of setting -> value; got {type(changes).__name__}")
        for key in changes:
            if _check_name(key, "grid setting") != key:
                raise ValueError(f"grid setting {key!r}: spell it as TrainConfig does, {_check_name(key, '')!r}")
        name = run_name(changes)
        if name in names:
            raise ValueError(f"configurations {names[name]} and {changes} have the same folder name {name!r}; "
                             f"make their values differ in letters, digits or ._=,+-")
        names[name] = changes
    out = []
    for name, changes in names.items():
        try:
            cfg = replace(base, **changes).validate()
        except (TypeError, ValueError) as err:
            raise type(err)(f"configuration {name}: {err}") from None
        if cfg.text is not None:  # absolute: a worker (or a later rerun) elsewhere finds the file
            cfg.text = str(Path(cfg.text).resolve())
        out.append((name, changes, cfg))
    return out


def _pending(name: str, changes: dict, folder: Path) -> dict:
    return {"name": name, "config": dict(changes), "status": "pending", "final_val_loss": None,
            "best_val_loss": None, "best_step": None, "steps": 0, "folder": str(folder), "message": "",
            "from_step": 0, "seconds": 0.0}


def _lock(out: Path) -> FolderLock:
    if (out / CHECKPOINT).exists():
        raise ValueError(f"{str(out)!r} holds a training run, not a sweep; choose another folder")
    try:
        return FolderLock(out).acquire()
    except FolderBusy:
        holder = (out / LOCK_FILE).read_text(encoding="utf-8").strip() or "another process"
        raise FolderBusy(f"sweep folder {str(out)!r} is in use by process {holder}, another sweep still "
                         f"running there; wait for it to finish (a rerun then skips its finished runs), or "
                         f"choose another folder") from None


def run_sweep(base: TrainConfig, grid_configs: list[dict], out_dir, client=None,
              on_progress: Callable[[dict, int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Train every configuration ``base`` with ``changes`` for each of ``grid_configs``, each in
    ``out_dir/<run_name(changes)>``; returns the records (module docstring), in grid order.

    Parameters
    ----------
    base : the settings all runs share;  grid_configs : [{setting: value}, ...] (expand_grid)
    out_dir : the sweep's folder (created; locked while the sweep runs)
    client : a ``distributed.Client``: one task per run on its workers; None: one after
        another in this process
    on_progress : called as ``on_progress(record, finished, total)`` after each run, in the order
        they finish
    should_stop : polled after every update of the in-process runs (Ctrl-C): the current run
        saves its checkpoint (status "stopped") and no further run starts (they stay "pending")

    Every configuration is validated before any run starts (ValueError naming it).
    """
    jobs = _configurations(base, grid_configs)
    out = check_run_folder(out_dir, "out_dir")
    lock = _lock(out)
    try:
        records = {name: _pending(name, changes, out / name) for name, changes, _ in jobs}

        def finished(record: dict) -> None:
            record["folder"] = str(out / record["name"])
            records[record["name"]] = record
            write_summary(list(records.values()), out, figure=False)  # the figure once, at the end
            if on_progress is not None:
                on_progress(record, sum(r["status"] != "pending" for r in records.values()), len(jobs))

        if client is None:
            stop = should_stop or (lambda: False)
            for name, changes, cfg in jobs:
                if stop():
                    break
                # The BLAS thread count of the model's size (rnngrad.threads): two threads on a
                # small model of a busy 2-core machine made a sweep 6 to 15 times slower here.
                # (Dask's workers run one thread each already.)
                with blas_threads(hidden_size=cfg.hidden_size, batch_size=cfg.batch_size, chunk_len=cfg.chunk_len):
                    record = run_one(asdict(cfg), changes, name, str(out / name), stop)
                finished(record)
        else:
            _run_on_cluster(client, jobs, out, finished)
        result = list(records.values())
        write_summary(result, out)
        return result
    finally:
        lock.release()


def _run_on_cluster(client, jobs, out: Path, finished: Callable[[dict], None]) -> None:
    """One task per run (pure=False: each is a run with side effects, never deduplicated)."""
    from distributed import as_completed  # only here: rnngrad and its CLI never import Dask otherwise

    futures = {client.submit(run_one, asdict(cfg), changes, name, str((out / name).resolve()), pure=False): name
               for name, changes, cfg in jobs}
    try:
        for future in as_completed(futures, loop=client.loop):  # not the default client: the given one
            name = futures[future]
            try:
                record = future.result()
            except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: the task killed its workers
                changes = next(c for n, c, _ in jobs if n == name)
                record = {**_pending(name, changes, out / name), "status": "failed",
                          "message": f"{type(err).__name__}: {err}"}
            finished(record)
    finally:
        client.cancel(list(futures))


# --- the summary --------------------------------------------------------------------------------

def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def summary_table(records: list[dict]) -> str:
    """The records as a Markdown table: the run, each changed setting, status, losses, steps."""
    keys = list(dict.fromkeys(k for r in records for k in r["config"]))
    number = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
    lines = ["| run | " + " | ".join(keys + ["status", "final val loss", "best val loss", "best step", "steps"]) + " |",
             "|---|" + "---|" * len(keys) + "---|---:|---:|---:|---:|"]
    for r in records:
        cells = [r["name"]] + [_value_text(k, r["config"][k]) if k in r["config"] else "" for k in keys]
        cells += [r["status"], number(r["final_val_loss"]), number(r["best_val_loss"]),
                  "" if r["best_step"] is None else str(r["best_step"]), str(r["steps"])]
        lines.append("| " + " | ".join(cells) + " |")
    done = [r for r in records if r["best_val_loss"] is not None and r["status"] not in ("diverged", "failed")]
    if done:
        best = min(done, key=lambda r: r["best_val_loss"])
        lines += ["", f"best: {best['name']} (validation loss {best['best_val_loss']:.4g} at step {best['best_step']})"]
    failed = [r for r in records if r["status"] in ("diverged", "failed")]
    lines += [""] * bool(failed) + [f"- {r['name']}: {r['status']}: {r['message']}" for r in failed]
    return "\n".join(lines) + "\n"


def write_summary(records: list[dict], out: Path, figure: bool = True) -> Path | None:
    """summary.json and summary.md (atomically), then summary.png if ``figure``, best effort:
    returns its path, or None if not drawn (no matplotlib)."""
    clean = [{k: _finite_or_none(r.get(k)) for k in RECORD_KEYS} for r in records]
    text = json.dumps(clean, indent=1, allow_nan=False)
    atomic_write(out / SUMMARY, lambda fh: fh.write(text + "\n"), mode="w")
    table = summary_table(clean)
    atomic_write(out / SUMMARY_TABLE, lambda fh: fh.write(table), mode="w")
    if not figure:
        return None
    try:
        return _plot_summary(clean, out / SUMMARY_FIGURE)
    except ImportError:
        return None


def _grid_axes(records: list[dict]):
    """The two settings' values if the records are a full two-setting grid, else None."""
    keys = [list(r["config"]) for r in records]
    if not keys or any(k != keys[0] for k in keys) or len(keys[0]) != 2:
        return None
    a = list(dict.fromkeys(repr(r["config"][keys[0][0]]) for r in records))
    b = list(dict.fromkeys(repr(r["config"][keys[0][1]]) for r in records))
    pairs = {(repr(r["config"][keys[0][0]]), repr(r["config"][keys[0][1]])) for r in records}
    return (keys[0], a, b) if len(a) * len(b) == len(records) == len(pairs) else None


def _plot_summary(records: list[dict], path: Path) -> Path | None:
    from .plots import _figure, save_figure

    if not records:
        return None
    best = [r["best_val_loss"] for r in records]
    grid = _grid_axes(records)
    if grid is not None:
        import numpy as np

        (ka, kb), a, b = grid
        cell = {(repr(r["config"][ka]), repr(r["config"][kb])): r for r in records}
        values = np.array([[np.nan if cell[i, j]["best_val_loss"] is None else cell[i, j]["best_val_loss"]
                            for j in b] for i in a])
        fig = _figure((1.6 + 1.3 * len(b), 1.2 + 0.7 * len(a)))
        ax = fig.add_subplot()
        image = ax.imshow(values, cmap="viridis", aspect="auto")  # dark: low loss
        fig.colorbar(image, ax=ax, label="best validation loss")
        label = lambda key, r: _value_text(key, r["config"][key])  # noqa: E731
        ax.set_xticks(range(len(b)), [label(kb, cell[a[0], j]) for j in b])
        ax.set_yticks(range(len(a)), [label(ka, cell[i, b[0]]) for i in a])
        ax.set_xlabel(kb)
        ax.set_ylabel(ka)
        for (y, i), (x, j) in itertools.product(enumerate(a), enumerate(b)):
            v = cell[i, j]["best_val_loss"]
            dark = v is not None and image.norm(v) < 0.5  # white text on the dark cells
            ax.text(x, y, cell[i, j]["status"] if v is None else f"{v:.3g}", ha="center", va="center",
                    fontsize=8, color="white" if dark else "black")
    else:
        fig = _figure((7, 1.0 + 0.35 * len(records)))
        ax = fig.add_subplot()
        ys = range(len(records))
        ax.barh(ys, [0 if v is None else v for v in best], color=["C0" if v is not None else "0.8" for v in best])
        ax.set_yticks(ys, [r["name"] for r in records], fontsize=8)
        ax.invert_yaxis()
        for y, r in zip(ys, records):
            if r["best_val_loss"] is None:
                ax.text(0, y, f" {r['status']}", va="center", fontsize=8)
        ax.set_xlabel("best validation loss")
    ax.set_title("sweep: best validation loss per configuration")
    save_figure(fig, path)
    return path
