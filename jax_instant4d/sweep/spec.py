"""Sweep files and run directories: a sweep file's grid of config overrides expanded into named runs,
validated against the base config, and the state of each run's work directory.

A sweep file is a Python file whose ``get_sweep()`` returns a dict (relative paths are relative to the
current directory, like every path on the command line):

    config     base config file of every run (required)
    name       the sweep's name (default: the sweep file's stem)
    workdir    the sweep root (default ``workdirs/sweeps/<name>``); run R lives in ``<workdir>/<R's name>``
    fixed      {key: value}: overrides of every run, not part of the run names (e.g. ``train.steps``)
    grid       {key: [values, ...]}: the cartesian product, first key varying slowest
    zip        [{key: [values], key2: [values]}, ...]: each group's lists (of equal length) are zipped and
               the group is one more axis of the product
    runs       [{key: value, ..., "name": optional}, ...]: explicit runs, after the grid's
    split      eval split (default ``heldout``)
    eval_args  extra arguments of the eval command (default none)
    baseline   a run's name: collect gives every run's paired difference to it
    seed_keys  override keys that only reseed a run: collect reports mean and spread over them

``seeded(seeds)``, ``seed_overrides(seed)`` and ``config_steps(path)`` are for sweep files: the zip axis and
``seed_keys`` of training seeds (``TRAINING_SEED_KEYS``), one explicit run's seed keys, a config's steps.

A run trains in its work directory (``config.json``, checkpoints) and is evaluated there
(``eval_<split>.json``); a launcher records ``sweep_run.json`` (status, commands, return codes) and
``sweep_run.log`` beside them. A run is *finished* when ``RUNDIR/eval_<split>.json`` exists, the run's
``config.json`` has the sweep's value for every override, and the evaluated step is ``train.steps``. A
run directory made with other values (other than ``train.steps``, which simply trains further) is
*stale*.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jax_instant4d.config import (
    ConfigDict,
    ConfigError,
    apply_overrides,
    load_config_file,
    load_python_file,
    parse_overrides,
)

Value = str | int | float | bool | tuple | list | None

RECORD = "sweep_run.json"  # per run: status, commands, return codes, times
LOG = "sweep_run.log"  # per run: train and eval output
SWEEP_KEYS = ("name", "config", "workdir", "fixed", "grid", "zip", "runs", "split", "eval_args", "baseline",
              "seed_keys")
# Keys whose change in a run directory is no reason to start afresh: train resumes and trains further.
RESUMABLE_KEYS = ("train.steps",)
# Statuses: finished | failed | interrupted | running | incomplete | stale | pending


class SweepError(ConfigError):
    """A sweep file or sweep command is wrong (names the file, run or key)."""


# --------------------------------------------------------------------------------------------------
# Sweep files: loading, expansion into runs, validation
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    index: int
    name: str
    overrides: dict[str, Value]  # this run's own overrides (the swept keys), in axis order
    workdir: Path


@dataclasses.dataclass
class Sweep:
    name: str
    path: Path  # the sweep file
    config: str  # base config file
    root: Path
    fixed: dict[str, Value]
    runs: list[Run]
    split: str = "heldout"
    eval_args: tuple[str, ...] = ()
    baseline: str | None = None  # a run's name: the table gives every run's paired difference to it
    # override keys that only reseed a run: runs equal in every other override form one group, reported as
    # the mean and spread over its seeds
    seed_keys: tuple[str, ...] = ()
    # per run index: the resolved value of every override key, JSON-normalised (tuples as lists)
    expected: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def overrides(self, run: Run) -> dict[str, str]:
        """Fixed then the run's own overrides, as command-line strings."""
        merged = {**self.fixed, **run.overrides}
        return {k: cli_value(v) for k, v in merged.items()}

    def eval_json(self, run: Run) -> Path:
        return run.workdir / f"eval_{self.split}.json"

    def select(self, only: str | None) -> list[Run]:
        """Runs named (or indexed) in a comma-separated list; all runs for ``None``."""
        if not only:
            return list(self.runs)
        by_name = {r.name: r for r in self.runs}
        chosen = []
        for item in (s.strip() for s in only.split(",")):
            if item.isdigit() and int(item) < len(self.runs):
                chosen.append(self.runs[int(item)])
            elif item in by_name:
                chosen.append(by_name[item])
            elif item:
                raise SweepError(f"--only: no run {item!r} in sweep {self.name!r} (runs: {', '.join(by_name)})")
        return sorted({r.index: r for r in chosen}.values(), key=lambda r: r.index)


def cli_value(v: Value) -> str:
    """A value as ``--config.key=VALUE`` text (converted back by the config's type of that key)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return repr(tuple(v))
    return str(v)


def _name_value(v: Value) -> str:
    if isinstance(v, bool):
        text = "true" if v else "false"
    elif isinstance(v, float):
        text = f"{v:g}"
    elif isinstance(v, (tuple, list)):
        text = "-".join(_name_value(x) for x in v)
    else:
        text = str(v)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "empty"


def run_name(overrides: dict[str, Value], short: dict[str, str]) -> str:
    """``fusion-local__gaussian_res-64``: each swept key (its short name) and value."""
    if not overrides:
        return "base"
    return "__".join(f"{short.get(k, k)}-{_name_value(v)}" for k, v in overrides.items())


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """The last component of each dotted key, or the whole key where two keys share a last component."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _check_value(where: str, key: str, v: Any) -> None:
    if not isinstance(v, (str, int, float, bool, tuple, list, type(None))):
        raise SweepError(f"{where}: value of {key!r} must be a str, number, bool, tuple or None, "
                         f"got {type(v).__name__}")


def _axes(spec: dict[str, Any], where: str) -> list[list[dict[str, Value]]]:
    """The product axes: each a list of {key: value} choices."""
    axes: list[list[dict[str, Value]]] = []
    seen: set[str] = set()

    def claim(key: str) -> None:
        if not isinstance(key, str) or not key:
            raise SweepError(f"{where}: override keys must be non-empty strings, got {key!r}")
        if key in seen:
            raise SweepError(f"{where}: key {key!r} appears in more than one axis")
        seen.add(key)

    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"{where}: 'grid' must be a dict of key -> list of values")
    for key, values in grid.items():
        claim(key)
        if not isinstance(values, (list, tuple)) or not values:
            raise SweepError(f"{where}: grid[{key!r}] must be a non-empty list of values")
        for v in values:
            _check_value(f"{where}: grid", key, v)
        axes.append([{key: v} for v in values])
    zips = spec.get("zip") or []
    if isinstance(zips, dict):
        zips = [zips]
    for group in zips:
        if not isinstance(group, dict) or not group:
            raise SweepError(f"{where}: each 'zip' group must be a non-empty dict of key -> list of values")
        lengths = {k: len(v) if isinstance(v, (list, tuple)) else -1 for k, v in group.items()}
        if len(set(lengths.values())) != 1 or -1 in lengths.values() or 0 in lengths.values():
            raise SweepError(f"{where}: zip group lists must be non-empty and of equal length, got {lengths}")
        for key, values in group.items():
            claim(key)
            for v in values:
                _check_value(f"{where}: zip", key, v)
        keys = list(group)
        axes.append([dict(zip(keys, vals, strict=True)) for vals in zip(*group.values(), strict=True)])
    return axes


def expand(spec: dict[str, Any], where: str = "sweep") -> list[tuple[str | None, dict[str, Value]]]:
    """(explicit name or None, overrides) of every run: the grid's product, then the explicit runs."""
    out: list[tuple[str | None, dict[str, Value]]] = []
    axes = _axes(spec, where)
    if axes:
        for combo in itertools.product(*axes):
            merged: dict[str, Value] = {}
            for choice in combo:
                merged.update(choice)
            out.append((None, merged))
    for i, run in enumerate(spec.get("runs") or []):
        if not isinstance(run, dict):
            raise SweepError(f"{where}: runs[{i}] must be a dict of overrides (and optionally 'name')")
        run = dict(run)
        name = run.pop("name", None)
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*",
                                                                                  name)):
            raise SweepError(f"{where}: runs[{i}]: name {name!r} must be a plain file name (letters, digits, ._+=-)")
        for k, v in run.items():
            _check_value(f"{where}: runs[{i}]", k, v)
        out.append((name, run))
    if not out:
        out.append((None, {}))  # no grid and no runs: the base config alone
    return out


def _get(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def normalise(v: Any) -> Any:
    return json.loads(json.dumps(v.to_dict() if isinstance(v, ConfigDict) else v))


# Keys that reseed a training run: the model's initialisation, the per-step randomness and the data order.
# The dataset, the teacher's motion encoder and the evaluation frames do not depend on them.
TRAINING_SEED_KEYS = ("seed", "train.seed", "data.shuffle_seed")


def seeded(seeds: Sequence[int]) -> dict[str, Any]:
    """Sweep-file fields that train every grid point once per seed: a ``zip`` group giving each of
    ``TRAINING_SEED_KEYS`` the same seed, and those keys as ``seed_keys`` (collect reports mean and spread
    over them). Merge them into the sweep's dict, ``{..., **seeded((0, 1, 2))}``."""
    seeds = [int(s) for s in seeds]
    return {"zip": [{k: list(seeds) for k in TRAINING_SEED_KEYS}], "seed_keys": list(TRAINING_SEED_KEYS)}


def seed_overrides(seed: int) -> dict[str, int]:
    """An explicit run's overrides for one training seed (each of ``TRAINING_SEED_KEYS``)."""
    return {k: int(seed) for k in TRAINING_SEED_KEYS}


def config_steps(path: str | Path) -> int:
    """``train.steps`` of a config file: a sweep's runs train as long as the config they vary."""
    return int(load_config_file(path).train.steps)


def load_sweep(path: str | Path, extra_overrides: Sequence[str] = ()) -> Sweep:
    """Loads a sweep file, expands its runs and validates every run's overrides against the base config.

    ``extra_overrides``: ``key=value`` / ``--config.key=value`` strings added to the fixed overrides."""
    path = Path(path)
    spec = load_python_file(path, "get_sweep", "sweep", SweepError).get_sweep()
    if isinstance(spec, ConfigDict):
        spec = spec.to_dict()
    where = f"sweep file {path}"
    if not isinstance(spec, dict):
        raise SweepError(f"{where}: get_sweep() must return a dict")
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"{where}: unknown sweep field(s) {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(SWEEP_KEYS)})")
    if not spec.get("config"):
        raise SweepError(f"{where}: 'config' (the base config file) is required")
    name = str(spec.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", name):
        raise SweepError(f"{where}: sweep name {name!r} must be a plain file name")
    root = Path(spec.get("workdir") or Path("workdirs") / "sweeps" / name)
    fixed = dict(spec.get("fixed") or {})
    for k, v in fixed.items():
        _check_value(f"{where}: fixed", k, v)
    fixed.update(parse_overrides(extra_overrides, SweepError))
    split = str(spec.get("split") or "heldout")
    eval_args = tuple(str(a) for a in (spec.get("eval_args") or ()))

    expanded = expand(spec, where)
    swept = list(dict.fromkeys(k for _, ov in expanded for k in ov))
    short = _short_names(swept)
    runs: list[Run] = []
    names: dict[str, int] = {}
    for i, (explicit, ov) in enumerate(expanded):
        rname = explicit or run_name(ov, short)
        if rname in names:
            raise SweepError(f"{where}: runs {names[rname]} and {i} are both named {rname!r} (give explicit runs a "
                             "'name')")
        names[rname] = i
        runs.append(Run(i, rname, ov, root / rname))

    baseline = spec.get("baseline")
    if baseline is not None and str(baseline) not in names:
        raise SweepError(f"{where}: baseline {baseline!r} is not one of the runs ({', '.join(names)})")
    seed_keys = tuple(str(k) for k in (spec.get("seed_keys") or ()))
    for k in seed_keys:
        if k not in swept:
            raise SweepError(f"{where}: seed key {k!r} is not swept by any run (swept: {', '.join(swept)})")
    sweep = Sweep(name, path, str(spec["config"]), root, fixed, runs, split, eval_args,
                  None if baseline is None else str(baseline), seed_keys)
    try:
        base = load_config_file(sweep.config)
    except ConfigError as e:
        raise SweepError(f"{where}: base config: {e}") from e
    for run in runs:
        ov = sweep.overrides(run)
        for k in ov:
            if k == "workdir" or k.startswith("workdir."):
                raise SweepError(f"{where}: run {run.name!r}: 'workdir' is set by the sweep (use the sweep's "
                                 "'workdir' for the root)")
        try:
            cfg = apply_overrides(base, ov)
        except ConfigError as e:
            raise SweepError(f"{where}: run {run.name!r}: {e}") from e
        expected = {k: normalise(_get(cfg, k)) for k in ov}
        expected.setdefault("train.steps", int(cfg.train.steps))
        sweep.expected[run.index] = expected
    return sweep


# --------------------------------------------------------------------------------------------------
# The state of a run
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunState:
    status: str  # finished | failed | interrupted | running | incomplete | stale | pending
    detail: str = ""
    eval: dict[str, Any] | None = None
    record: dict[str, Any] | None = None
    differs: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)  # key -> (in the run, in the sweep)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (collect may read while a run writes)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_state(sweep: Sweep, run: Run) -> RunState:
    """What a run's work directory holds: see the module docstring for the statuses."""
    record = _read_json(run.workdir / RECORD)
    cfg = _read_json(run.workdir / "config.json")
    ev = _read_json(sweep.eval_json(run))
    expected = sweep.expected.get(run.index, {})
    differs: dict[str, tuple[Any, Any]] = {}
    if cfg is not None:
        for key, want in expected.items():
            try:
                have = _get(cfg, key)
            except (KeyError, TypeError):
                have = "<missing>"
            if have != want:
                differs[key] = (have, want)
    diff_text = ", ".join(f"{k}: {h!r} in the run, {w!r} in the sweep" for k, (h, w) in differs.items())
    if any(k not in RESUMABLE_KEYS for k in differs):
        return RunState("stale", f"made with other settings ({diff_text})", ev, record, differs)
    if ev is not None and cfg is not None and not differs:
        step, steps = ev.get("step"), expected.get("train.steps")
        split_ok = ev.get("split", sweep.split) == sweep.split
        if split_ok and (step is None or steps is None or int(step) >= int(steps)):
            return RunState("finished", "", ev, record)
        detail = f"evaluated at step {step} of {steps}" if split_ok else f"eval JSON is of split {ev.get('split')!r}"
        return RunState("incomplete", detail, ev, record)
    if differs:
        return RunState("incomplete", diff_text, ev, record, differs)
    if record is not None and record.get("status") in ("failed", "interrupted", "running"):
        st = record["status"]
        detail = record.get("detail", "")
        if st == "running":
            detail = f"started {record.get('started', '?')} on {record.get('host', '?')} (or killed)"
        return RunState(st, detail, ev, record)
    if cfg is not None or ev is not None or record is not None:
        return RunState("incomplete", "work directory exists, run not finished", ev, record)
    return RunState("pending", "", ev, record)


def status_text(state: RunState) -> str:
    return state.status if not state.detail or state.status == "finished" else f"{state.status}: {state.detail}"
