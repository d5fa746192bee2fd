"""Ablation sweeps: a grid of config overrides expanded into runs, launched, collected and compared.

    instant4d sweep SWEEPFILE list                       runs, their work directories and status
    instant4d sweep SWEEPFILE launch [--parallel N]      train + eval every run not finished yet, then collect
    instant4d sweep SWEEPFILE launch --dry-run           print the commands, run nothing
    instant4d sweep SWEEPFILE launch --slurm [--submit]  write (and submit) a SLURM array script, one task per run
    instant4d sweep SWEEPFILE run-one INDEX              one run (what each SLURM array task executes)
    instant4d sweep SWEEPFILE collect                    sweep.md, sweep.json and sweep.png in the sweep root

(``python -m jax_instant4d.sweep`` and ``launch/sweep.py`` take the same arguments; the action may also
come first: ``run-one SWEEPFILE INDEX``.) ``--config.KEY=VALUE`` arguments are added to the sweep's
fixed overrides (pass the same ones to every action of one sweep).

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

Each run is ``instant4d train --config BASE --workdir RUNDIR --config.KEY=VALUE ...`` and then
``instant4d eval --checkpoint RUNDIR --split SPLIT``, as subprocesses whose output goes to
``RUNDIR/sweep_run.log``; ``RUNDIR/sweep_run.json`` records the status. A run is *finished* when
``RUNDIR/eval_<split>.json`` exists, the run's ``config.json`` (written by train) has the sweep's value
for every override, and the evaluated step is ``train.steps``. Re-launching skips finished runs and
re-runs the others (train resumes from the run's latest checkpoint). A run directory made with other
values (other than ``train.steps``, which simply trains further) is *stale*: launch refuses to touch it
unless ``--restart-stale`` (the directory is moved aside).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from jax_instant4d.config import ConfigDict, ConfigError, apply_overrides, load_config_file

Value = str | int | float | bool | tuple | list | None

ACTIONS = ("launch", "collect", "run-one", "list")
RECORD = "sweep_run.json"  # per run: status, commands, return codes, times
LOG = "sweep_run.log"  # per run: train and eval output
SWEEP_KEYS = ("name", "config", "workdir", "fixed", "grid", "zip", "runs", "split", "eval_args", "baseline",
              "seed_keys")
# Keys whose change in a run directory is no reason to start afresh: train resumes and trains further.
RESUMABLE_KEYS = ("train.steps",)
# Statuses: finished | failed | interrupted | running | incomplete | stale | pending
EXIT_INTERRUPTED = 128 + signal.SIGTERM


class SweepError(ConfigError):
    """A sweep file or sweep command is wrong (names the file, run or key)."""


class PlotError(RuntimeError):
    """The plot could not be made (matplotlib is missing); the table was written."""


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


def _normalise(v: Any) -> Any:
    return json.loads(json.dumps(v.to_dict() if isinstance(v, ConfigDict) else v))


def _load_module(path: Path):
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_instant4d_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken sweep file: name it
        raise SweepError(f"error while executing sweep file {path}: {e}") from e
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"sweep file {path} has no get_sweep()")
    return module


def load_sweep(path: str | Path, extra_overrides: Sequence[str] = ()) -> Sweep:
    """Loads a sweep file, expands its runs and validates every run's overrides against the base config.

    ``extra_overrides``: ``key=value`` / ``--config.key=value`` strings added to the fixed overrides."""
    path = Path(path)
    spec = _load_module(path).get_sweep()
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
    for item in extra_overrides:
        item = item[len("--config."):] if item.startswith("--config.") else item
        if "=" not in item:
            raise SweepError(f"override {item!r} must look like key.sub=value")
        k, v = item.split("=", 1)
        fixed[k] = v
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
        expected = {k: _normalise(_get(cfg, k)) for k in ov}
        expected.setdefault("train.steps", int(cfg.train.steps))
        sweep.expected[run.index] = expected
    return sweep


# --------------------------------------------------------------------------------------------------
# Commands and the state of a run
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Commands:
    """Command prefixes of a run's two steps (tests and odd set-ups replace them)."""

    train: tuple[str, ...] = (sys.executable, "-m", "jax_instant4d.cli", "train")
    eval: tuple[str, ...] = (sys.executable, "-m", "jax_instant4d.cli", "eval")

    @property
    def is_default(self) -> bool:
        return self == Commands()


def run_commands(sweep: Sweep, run: Run, commands: Commands = Commands()) -> list[list[str]]:
    """The train and eval command lines of one run."""
    train = [*commands.train, "--config", sweep.config, "--workdir", str(run.workdir)]
    train += [f"--config.{k}={v}" for k, v in sweep.overrides(run).items()]
    ev = [*commands.eval, "--checkpoint", str(run.workdir), "--split", sweep.split, *sweep.eval_args]
    return [train, ev]


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (collect may read while a run writes)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


class _Processes:
    """Child processes of this launcher: started in their own session (a Ctrl-C reaches only the launcher,
    which asks them to checkpoint and stop with SIGTERM), tracked so that signals can be forwarded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stop = threading.Event()
        self._signals = 0

    def call(self, cmd: Sequence[str], log) -> int:
        with self._lock:
            if self.stop.is_set():
                return EXIT_INTERRUPTED
            try:
                proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError as e:
                log.write(f"cannot start {cmd[0]!r}: {e}\n")
                log.flush()
                return 127
            self._procs.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)

    def interrupt(self, signum: int, frame: Any = None) -> None:
        self._signals += 1
        self.stop.set()
        sig = signal.SIGTERM if self._signals == 1 else signal.SIGKILL
        with self._lock:
            procs = list(self._procs)
        if procs:
            how = "to checkpoint and stop (again to kill)" if sig == signal.SIGTERM else "killed"
            print(f"[sweep] signal {signum}: {len(procs)} running process(es) {how}", file=sys.stderr, flush=True)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)


@contextlib.contextmanager
def _forward_signals(procs: _Processes) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, procs.interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def execute_run(sweep: Sweep, run: Run, commands: Commands = Commands(), procs: _Processes | None = None,
                say: Callable[[str], None] = print) -> RunState:
    """Trains and evaluates one run in its work directory, recording the outcome (never raises for a
    failed step: the failure is recorded)."""
    procs = procs or _Processes()
    run.workdir.mkdir(parents=True, exist_ok=True)
    cmds = run_commands(sweep, run, commands)
    record: dict[str, Any] = {
        "sweep": sweep.name, "sweep_file": str(sweep.path), "index": run.index, "name": run.name,
        "overrides": _normalise(sweep.overrides(run)), "commands": [shlex.join(c) for c in cmds],
        "status": "running", "stage": "train", "detail": "", "returncodes": {}, "started": _now(),
        "host": socket.gethostname(),
        "slurm": {k: os.environ[k] for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID")
                  if k in os.environ},
    }
    _write_json(run.workdir / RECORD, record)
    t0 = time.time()
    status, detail = "finished", ""
    with open(run.workdir / LOG, "a") as log:
        for stage, cmd in zip(("train", "eval"), cmds, strict=True):
            record["stage"] = stage
            _write_json(run.workdir / RECORD, record)
            log.write(f"==== {_now()} {run.name}: {stage}: {shlex.join(cmd)}\n")
            log.flush()
            say(f"[sweep {sweep.name}] {run.name}: {stage}")
            rc = procs.call(cmd, log)
            record["returncodes"][stage] = rc
            log.write(f"==== {_now()} {stage} exited with status {rc}\n")
            log.flush()
            if procs.stop.is_set():
                status, detail = "interrupted", f"interrupted during {stage}"
                break
            if rc != 0:
                status, detail = "failed", f"{stage} exited with status {rc}"
                break
    record.update(ended=_now(), seconds=round(time.time() - t0, 3))
    if status == "finished":
        state = run_state(sweep, run)
        if state.status != "finished":
            status = "failed"
            detail = (f"eval exited 0 but {sweep.eval_json(run).name} is missing or unreadable"
                      if state.eval is None else f"after eval: {state.status} ({state.detail})")
    record.update(status=status, detail=detail)
    _write_json(run.workdir / RECORD, record)
    say(f"[sweep {sweep.name}] {run.name}: {status}" + (f" ({detail}; log {run.workdir / LOG})" if detail else "")
        + f" in {record['seconds']:.1f} s")
    return run_state(sweep, run) if status == "finished" else RunState(status, detail, None, record)


def _move_aside(run: Run) -> Path:
    target = run.workdir.with_name(f"{run.workdir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{run.workdir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    run.workdir.rename(target)
    return target


def _prepare(sweep: Sweep, runs: Sequence[Run], restart_stale: bool, say: Callable[[str], None]) -> None:
    """Refuses (before anything starts) to run in stale directories, or moves them aside."""
    stale = [(r, s) for r in runs if (s := run_state(sweep, r)).status == "stale"]
    if stale and not restart_stale:
        lines = "\n".join(f"  {r.name} ({r.workdir}): {s.detail}" for r, s in stale)
        raise SweepError(f"sweep {sweep.name!r}: {len(stale)} run director{'y was' if len(stale) == 1 else 'ies were'}"
                         f" made with other settings:\n{lines}\nremove them, or pass --restart-stale to move them "
                         "aside")
    for r, _ in stale:
        say(f"[sweep {sweep.name}] {r.name}: stale work directory moved to {_move_aside(r)}")


@dataclasses.dataclass
class LaunchResult:
    states: dict[str, RunState]  # run name -> state after the launch (skipped runs included)
    skipped: list[str]
    executed: list[str]

    @property
    def ok(self) -> bool:
        return all(s.status == "finished" for s in self.states.values())


def launch(sweep: Sweep, *, parallel: int = 1, commands: Commands = Commands(), only: str | None = None,
           dry_run: bool = False, restart_stale: bool = False, say: Callable[[str], None] = print) -> LaunchResult:
    """Runs every selected run that is not finished, ``parallel`` at a time; a failed run does not stop
    the others. ``dry_run`` prints the commands instead."""
    if parallel < 1:
        raise SweepError(f"--parallel must be at least 1, got {parallel}")
    runs = sweep.select(only)
    states = {r.name: run_state(sweep, r) for r in runs}
    todo = [r for r in runs if states[r.name].status != "finished"]
    skipped = [r.name for r in runs if states[r.name].status == "finished"]
    if dry_run:
        for r in runs:
            st = states[r.name]
            if st.status == "finished":
                say(f"# {r.index} {r.name}: finished, skipped")
                continue
            say(f"# {r.index} {r.name}: {st.status}" + (f" ({st.detail})" if st.detail else ""))
            for cmd in run_commands(sweep, r, commands):
                say(shlex.join(cmd))
        return LaunchResult(states, skipped, [])
    _prepare(sweep, todo, restart_stale, say)
    say(f"[sweep {sweep.name}] {len(todo)} run(s) to do, {len(skipped)} finished already, {parallel} at a time; "
        f"root {sweep.root}")
    procs = _Processes()
    lock = threading.Lock()

    def locked_say(msg: str) -> None:
        with lock:
            say(msg)

    def one(r: Run) -> tuple[str, RunState]:
        if procs.stop.is_set():
            return r.name, run_state(sweep, r)
        return r.name, execute_run(sweep, r, commands, procs, locked_say)

    with _forward_signals(procs), ThreadPoolExecutor(max_workers=parallel) as pool:
        for name, st in pool.map(one, todo):
            states[name] = st
    return LaunchResult(states, skipped, [r.name for r in todo])


def run_one(sweep: Sweep, index: int, *, commands: Commands = Commands(), restart_stale: bool = False,
            say: Callable[[str], None] = print) -> RunState:
    """The run of ``index`` (a SLURM array task): skipped if finished."""
    if not 0 <= index < len(sweep.runs):
        raise SweepError(f"sweep {sweep.name!r} has {len(sweep.runs)} runs (0..{len(sweep.runs) - 1}), "
                         f"no run {index}")
    run = sweep.runs[index]
    state = run_state(sweep, run)
    if state.status == "finished":
        say(f"[sweep {sweep.name}] {run.name}: finished already, skipped")
        return state
    _prepare(sweep, [run], restart_stale, say)
    procs = _Processes()
    with _forward_signals(procs):
        return execute_run(sweep, run, commands, procs, say)


# --------------------------------------------------------------------------------------------------
# SLURM
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None  # --partition; None = the cluster's default
    account: str | None = None  # --account; None = the user's default
    time: str = "04:00:00"  # --time per array task (one run: train + eval)
    gpus: int = 1  # --gres=gpu:N per array task; 0 = none
    cpus_per_task: int = 8  # --cpus-per-task
    mem: str | None = None  # --mem per task, e.g. "64G"; None = the partition's default
    max_concurrent: int | None = None  # the %MAX of --array; None = every run at once
    extra: tuple[str, ...] = ()  # further #SBATCH options, e.g. ("--qos=high", "--constraint=a100")


def slurm_script(sweep: Sweep, opts: SlurmOptions = SlurmOptions(), *, commands: Commands = Commands(),
                 extra_overrides: Sequence[str] = (), restart_stale: bool = False, cwd: Path | None = None) -> str:
    """An sbatch array script: task i runs ``python -m jax_instant4d.sweep run-one SWEEPFILE i``."""
    n = len(sweep.runs)
    cwd = (cwd or Path.cwd()).absolute()
    sweep_file = sweep.path.absolute()
    logs = (sweep.root if sweep.root.is_absolute() else cwd / sweep.root) / "slurm"
    limit = opts.max_concurrent or n
    if limit < 1:
        raise SweepError(f"--max-concurrent must be at least 1, got {limit}")
    task = ['"$PYTHON"', "-m", "jax_instant4d.sweep", "run-one", shlex.quote(str(sweep_file)), '"$SLURM_ARRAY_TASK_ID"']
    if not commands.is_default:
        task += ["--train-cmd", shlex.quote(shlex.join(commands.train)),
                 "--eval-cmd", shlex.quote(shlex.join(commands.eval))]
    if restart_stale:
        task.append("--restart-stale")
    task += [shlex.quote(o if o.startswith("--config.") else f"--config.{o}") for o in extra_overrides]
    sb = [f"#SBATCH --job-name=instant4d-sweep-{sweep.name}",
          f"#SBATCH --array=0-{n - 1}%{limit}",
          f"#SBATCH --time={opts.time}",
          f"#SBATCH --cpus-per-task={opts.cpus_per_task}",
          "#SBATCH --ntasks=1",
          f"#SBATCH --chdir={cwd}",
          f"#SBATCH --output={logs}/%x-%A_%a.out",
          "#SBATCH --open-mode=append",
          "#SBATCH --signal=B:TERM@300",
          "#SBATCH --requeue"]
    if opts.gpus:
        sb.append(f"#SBATCH --gres=gpu:{opts.gpus}")
    if opts.partition:
        sb.append(f"#SBATCH --partition={opts.partition}")
    if opts.account:
        sb.append(f"#SBATCH --account={opts.account}")
    if opts.mem:
        sb.append(f"#SBATCH --mem={opts.mem}")
    sb += [f"#SBATCH {e}" for e in opts.extra]
    table = "\n".join(f"#   {r.index:>3}  {r.name}" for r in sweep.runs)
    return f"""#!/bin/bash
# SLURM array job of sweep {sweep.name!r} ({sweep_file}), written by `instant4d sweep ... launch --slurm`.
# One array task per run: task i runs run i of the sweep file (train, then eval, in the run's work
# directory under {sweep.root}); a run already finished is skipped, so resubmitting this script
# finishes what is left (an interrupted run resumes from its latest checkpoint). Then:
#   instant4d sweep {sweep.path} collect
#
# Options baked in by `launch --slurm` (change them there, or here):
#   --partition       partition (queue); absent = the cluster's default        (--partition)
#   --account         account charged; absent = your default                     (--account)
#   --time            wall-clock limit of ONE task (train + eval of one run)     (--time, default 04:00:00)
#   --gres=gpu:N      GPUs per task (one process uses all of them); absent = 0   (--gpus, default 1)
#   --cpus-per-task   CPU cores per task (data decoding)                         (--cpus-per-task, default 8)
#   --mem             memory per task; absent = the partition's default          (--mem)
#   --array=0-N%MAX   all runs, at most MAX at a time                            (--max-concurrent, default all)
#   --signal=B:TERM@300  SIGTERM 5 minutes before the time limit: the run checkpoints and stops; resubmit
#   --requeue         a preempted task comes back and resumes
#   further #SBATCH lines                                                        (--sbatch-arg, repeatable)
# Environment variables read when a task starts (all optional):
#   PYTHON   interpreter (default: python, after activating VENV)
#   VENV     virtual environment to activate (default: {cwd}/.venv, if it exists)
#
# Runs (array index, name):
{table}
{chr(10).join(sb)}

set -euo pipefail
cd {shlex.quote(str(cwd))}
VENV=${{VENV:-{shlex.quote(str(cwd / '.venv'))}}}
if [[ -f "$VENV/bin/activate" ]]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
PYTHON=${{PYTHON:-python}}
SLURM_ARRAY_TASK_ID=${{SLURM_ARRAY_TASK_ID:?run this script with sbatch (or set SLURM_ARRAY_TASK_ID)}}
echo "instant4d sweep {sweep.name}: task $SLURM_ARRAY_TASK_ID of job ${{SLURM_ARRAY_JOB_ID:-?}} on $(hostname)"
exec {" ".join(task)}
"""


def write_slurm(sweep: Sweep, opts: SlurmOptions = SlurmOptions(), *, submit: bool = False,
                commands: Commands = Commands(), extra_overrides: Sequence[str] = (), restart_stale: bool = False,
                say: Callable[[str], None] = print) -> Path:
    """Writes ``<root>/sweep.sbatch`` (and ``<root>/slurm/`` for the task logs); submits it if asked."""
    text = slurm_script(sweep, opts, commands=commands, extra_overrides=extra_overrides,
                        restart_stale=restart_stale)
    sweep.root.mkdir(parents=True, exist_ok=True)
    (sweep.root / "slurm").mkdir(exist_ok=True)
    path = sweep.root / "sweep.sbatch"
    path.write_text(text)
    path.chmod(0o755)
    say(f"[sweep {sweep.name}] wrote {path} ({len(sweep.runs)} array tasks)")
    if not submit:
        say(f"submit with: sbatch {path}")
        return path
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SweepError(f"--submit: sbatch is not on PATH (the script is at {path})")
    out = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SweepError(f"sbatch {path} failed with status {out.returncode}: {out.stderr.strip()}")
    say(out.stdout.strip())
    return path


# --------------------------------------------------------------------------------------------------
# Collect: table, JSON, plot
# --------------------------------------------------------------------------------------------------


def _metric(ev: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    node: Any = ev
    for p in path:
        if not isinstance(node, dict) or node.get(p) is None:
            return None
        node = node[p]
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def _fps(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


# (header, path in the eval JSON, format); change here to show other metrics.
COLUMNS: tuple[tuple[str, tuple[str, ...], Callable[[Any], str]], ...] = (
    ("self PSNR (dB)", ("self", "psnr"), "{:.2f}".format),
    ("cross PSNR (dB)", ("cross", "psnr"), "{:.2f}".format),
    ("self eyes+mouth PSNR (dB)", ("self", "region_psnr"), "{:.2f}".format),
    ("self SSIM", ("self", "ssim"), "{:.4f}".format),
    ("self expr. err", ("self", "expression_error"), "{:.4f}".format),
    ("cross expr. err", ("cross", "expression_error"), "{:.4f}".format),
    ("cross consistency", ("cross", "consistency"), "{:.4f}".format),
    ("animate FPS", ("animate_fps",), _fps),
    ("#Gaussians", ("num_gaussians",), lambda v: str(int(v))),
)
MISSING = "–"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _status_text(state: RunState) -> str:
    return state.status if not state.detail or state.status == "finished" else f"{state.status}: {state.detail}"


def collect(sweep: Sweep, *, plot: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Writes ``sweep.json`` and ``sweep.md`` in the sweep root, then ``sweep.png`` (which needs matplotlib;
    :class:`PlotError` after the other two are written if it is missing). Returns the JSON's content."""
    rows = []
    for run in sweep.runs:
        st = run_state(sweep, run)
        rows.append({"index": run.index, "name": run.name, "overrides": _normalise(run.overrides),
                     "workdir": str(run.workdir), "status": st.status, "detail": st.detail,
                     "log": str(run.workdir / LOG) if (run.workdir / LOG).exists() else None, "eval": st.eval})
    base = next((r for r in rows if r["name"] == sweep.baseline), None)
    for r in rows:
        r["vs_baseline"] = versus_baseline(r["eval"], base["eval"] if base else None) if sweep.baseline else None
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    groups = seed_groups(sweep, rows)
    summary = {"sweep": sweep.name, "sweep_file": str(sweep.path), "config": sweep.config, "root": str(sweep.root),
               "split": sweep.split, "baseline": sweep.baseline, "seed_keys": list(sweep.seed_keys), "groups": groups,
               "fixed": {k: cli_value(v) for k, v in sweep.fixed.items()},
               "collected": _now(), "counts": counts, "runs": rows}
    sweep.root.mkdir(parents=True, exist_ok=True)
    _write_json(sweep.root / "sweep.json", summary)
    (sweep.root / "sweep.md").write_text(markdown_table(sweep, rows, counts) + seeds_table(sweep, groups))
    say(f"[sweep {sweep.name}] wrote {sweep.root / 'sweep.md'} and sweep.json: "
        + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if plot:
        plot_quality_speed(sweep, rows, sweep.root / "sweep.png")
        say(f"[sweep {sweep.name}] wrote {sweep.root / 'sweep.png'}")
    return summary


# Over seeds: (header, path in the eval JSON or "gap" for the expression gap closed, digits)
SEED_COLUMNS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("self PSNR (dB)", ("self", "psnr"), 2),
    ("self eyes+mouth PSNR (dB)", ("self", "region_psnr"), 2),
    ("eyes+mouth − undriven (dB)", ("self", "region_psnr", "-", "self", "region_psnr_undriven"), 2),
    ("self expr. err", ("self", "expression_error"), 4),
    ("self gap closed", ("gap", "self"), 2),
    ("cross expr. err", ("cross", "expression_error"), 4),
    ("cross gap closed", ("gap", "cross"), 2),
)


def _seed_value(ev: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    if path[0] == "gap":
        from jax_instant4d.eval.paper import gap_closed

        return gap_closed((ev or {}).get(path[1]) or {})
    if "-" in path:
        i = path.index("-")
        a, b = _metric(ev, path[:i]), _metric(ev, path[i + 1:])
        return None if a is None or b is None else a - b
    return _metric(ev, path)


def seed_groups(sweep: Sweep, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs equal in every override but ``sweep.seed_keys``, with the mean and the spread (sample standard
    deviation; the range too) over their finished seeds of each :data:`SEED_COLUMNS` metric."""
    if not sweep.seed_keys:
        return []
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        rest = {k: v for k, v in r["overrides"].items() if k not in sweep.seed_keys}
        key = json.dumps(rest, sort_keys=True)
        g = groups.setdefault(key, {"overrides": rest, "runs": [], "finished": 0, "metrics": {}})
        g["runs"].append(r["name"])
        if r["status"] == "finished" and r["eval"]:
            g["finished"] += 1
            for h, path, _d in SEED_COLUMNS:
                v = _seed_value(r["eval"], path)
                if v is not None:
                    g["metrics"].setdefault(h, []).append(float(v))
    out = []
    for g in groups.values():
        stats = {}
        for h, vals in g["metrics"].items():
            a = np.asarray(vals, np.float64)
            stats[h] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None,
                        "min": float(a.min()), "max": float(a.max()), "n": int(a.size), "values": vals}
        out.append({"overrides": g["overrides"], "runs": g["runs"], "finished": g["finished"], "stats": stats})
    return out


def seeds_table(sweep: Sweep, groups: list[dict[str, Any]]) -> str:
    if not groups:
        return ""
    head = ["group", "seeds finished", *(h for h, _p, _d in SEED_COLUMNS)]
    lines = ["", f"## Over seeds ({', '.join(f'`{k}`' for k in sweep.seed_keys)})", "",
             "| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(SEED_COLUMNS)]
    for g in groups:
        name = ", ".join(f"`{k}={cli_value(v)}`" for k, v in g["overrides"].items()) or "(base)"
        cells = [name, f"{g['finished']} of {len(g['runs'])}"]
        for h, _p, d in SEED_COLUMNS:
            st = g["stats"].get(h)
            if st is None:
                cells.append(MISSING)
            elif st["std"] is None:
                cells.append(f"{st['mean']:.{d}f} (1 seed)")
            else:
                cells.append(f"{st['mean']:.{d}f} ± {st['std']:.{d}f}")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Mean ± sample standard deviation over the seeds (each seed a separately trained run); per-seed "
                  "values in sweep.json. Gap closed: (undriven − ours) / (undriven − reference) of the expression "
                  "error.", ""]
    return "\n".join(lines)


# Paired differences to the baseline run: (header, key of the eval's self.per_frame)
PAIRED: tuple[tuple[str, str], ...] = (("self PSNR", "psnr"), ("eyes+mouth", "region_psnr"))


def versus_baseline(ev: dict[str, Any] | None, base: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per metric of :data:`PAIRED`: [mean difference run - baseline, 95% half-width, frames], from the
    per-frame values of both evaluations; None where either lacks them or they are not the same frames."""
    from jax_instant4d.eval.metrics import paired_difference

    a = ((ev or {}).get("self") or {})
    b = ((base or {}).get("self") or {})
    if not a.get("per_frame") or not b.get("per_frame") or a.get("frames") != b.get("frames"):
        return None
    out = {}
    for _h, key in PAIRED:
        if key in a["per_frame"] and key in b["per_frame"]:
            d = paired_difference(a["per_frame"][key], b["per_frame"][key])
            out[key] = None if d is None else list(d)
    return out


def markdown_table(sweep: Sweep, rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    fixed = ", ".join(f"`{k}={cli_value(v)}`" for k, v in sweep.fixed.items()) or "none"
    paired = [(f"Δ {h} vs {sweep.baseline} (dB)", k) for h, k in PAIRED] if sweep.baseline else []
    head = ["run", "overrides", "status", *(c[0] for c in COLUMNS), *(p[0] for p in paired)]
    lines = [f"# Sweep `{sweep.name}`", "",
             f"Base config `{sweep.config}`; fixed overrides: {fixed}; eval split `{sweep.split}`; "
             f"{len(rows)} runs (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"); collected {_now()}.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(COLUMNS) + len(paired))]
    for r in rows:
        ov = ", ".join(f"`{k}={cli_value(v)}`" for k, v in r["overrides"].items()) or "(base)"
        cells = [r["name"], ov, r["status"]]
        for _h, path, fmt in COLUMNS:
            v = _metric(r["eval"], path)
            cells.append(MISSING if v is None else fmt(v))
        for _h, key in paired:
            d = (r.get("vs_baseline") or {}).get(key)
            cells.append(MISSING if d is None else ("0 (baseline)" if r["name"] == sweep.baseline
                                                    else f"{d[0]:+.2f} ± {d[1]:.2f}"))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    problems = [r for r in rows if r["status"] not in ("finished", "pending")]
    if problems:
        lines += ["", "Not finished:", ""]
        lines += [f"- `{r['name']}`: {r['status']}" + (f" ({r['detail']})" if r["detail"] else "")
                  + (f"; log `{r['log']}`" if r["log"] else "") for r in problems]
    if paired:
        lines += ["", f"Δ: the mean over the same held-out frames of each frame's difference to run "
                      f"`{sweep.baseline}`, ± the half-width of its 95% interval (1.96 standard errors)."]
    lines += ["", "![self-reenactment PSNR vs animation frames/s](sweep.png)", ""]
    return "\n".join(lines)


def plot_quality_speed(sweep: Sweep, rows: list[dict[str, Any]], path: Path) -> Path:
    """Self-reenactment PSNR (y) against animation frames/s (x, log scale), one labelled point per finished run;
    beside it the eyes + mouth PSNR where the evaluations have it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotError(f"plotting {path} needs matplotlib, which is not installed (pip install matplotlib); "
                        f"{sweep.root / 'sweep.md'} and sweep.json were written") from e
    panels = [(("self", "psnr"), f"self-reenactment PSNR (dB), split {sweep.split}")]
    if any(_metric(r["eval"], ("self", "region_psnr")) is not None for r in rows):
        panels.append((("self", "region_psnr"), "eyes + mouth PSNR (dB), self-reenactment"))
    fig = Figure(figsize=(7.0 * len(panels), 4.8), dpi=120)
    FigureCanvasAgg(fig)
    for j, (metric, ylabel) in enumerate(panels):
        points = []
        for r in rows:
            q, fps = _metric(r["eval"], metric), _metric(r["eval"], ("animate_fps",))
            if (r["status"] == "finished" and q is not None and fps is not None and fps > 0
                    and math.isfinite(fps) and math.isfinite(q)):
                points.append((r["name"], float(fps), float(q)))
        ax = fig.add_subplot(1, len(panels), j + 1)
        if points:
            ax.set_xscale("log")
            ax.scatter([p[1] for p in points], [p[2] for p in points], s=36, zorder=3)
            for name, x, y in points:
                ax.annotate(name, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
            ax.margins(x=0.25, y=0.15)
        else:
            ax.text(0.5, 0.5, "no finished run with PSNR and FPS yet", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel("animation frames/s (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"sweep {sweep.name}: quality vs animation speed ({len(points)} of {len(rows)} runs)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Expand a sweep file's grid of config overrides into runs; launch them locally or as a "
                          "SLURM array; collect their eval JSON into a table and a plot.")
    parser.add_argument("sweep", help="sweep file (configs/sweeps/*.py)")
    parser.add_argument("action", nargs="?", default="launch", help=f"one of {', '.join(ACTIONS)} (default launch)")
    parser.add_argument("index", nargs="?", type=int, default=None, help="run-one: the run's index (see list)")
    g = parser.add_argument_group("launch")
    g.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1: one after another)")
    g.add_argument("--dry-run", action="store_true", help="print the commands of the runs to do (with --slurm: the "
                                                          "script), run and write nothing")
    g.add_argument("--only", default=None, help="comma-separated run names or indices (launch, list)")
    g.add_argument("--restart-stale", action="store_true",
                   help="move aside run directories made with other settings, instead of stopping")
    g.add_argument("--no-collect", action="store_true", help="do not collect at the end of launch")
    g.add_argument("--train-cmd", default=None,
                   help="command prefix of the training step (default: '<this python> -m jax_instant4d.cli train'); "
                        "gets --config BASE --workdir RUNDIR --config.KEY=VALUE...")
    g.add_argument("--eval-cmd", default=None,
                   help="command prefix of the eval step (default: '<this python> -m jax_instant4d.cli eval'); "
                        "gets --checkpoint RUNDIR --split SPLIT")
    s = parser.add_argument_group("SLURM (launch --slurm)")
    s.add_argument("--slurm", action="store_true", help="write <root>/sweep.sbatch (one array task per run) "
                                                        "instead of running")
    s.add_argument("--submit", action="store_true", help="with --slurm: submit it with sbatch")
    s.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    s.add_argument("--account", default=None, help="SLURM account (default: yours)")
    s.add_argument("--time", default=SlurmOptions.time, help="time limit of one task = one run (default %(default)s)")
    s.add_argument("--gpus", type=int, default=SlurmOptions.gpus, help="GPUs per task (default %(default)s)")
    s.add_argument("--cpus-per-task", type=int, default=SlurmOptions.cpus_per_task,
                   help="CPU cores per task (default %(default)s)")
    s.add_argument("--mem", default=None, help="memory per task, e.g. 64G (default: the partition's)")
    s.add_argument("--max-concurrent", type=int, default=None, help="array tasks at a time (default: all)")
    s.add_argument("--sbatch-arg", action="append", default=[], help="extra #SBATCH option, e.g. --qos=high "
                                                                     "(repeatable)")


def _commands(args: argparse.Namespace) -> Commands:
    base = Commands()
    train = tuple(shlex.split(args.train_cmd)) if args.train_cmd else base.train
    ev = tuple(shlex.split(args.eval_cmd)) if args.eval_cmd else base.eval
    if not train or not ev:
        raise SweepError("--train-cmd / --eval-cmd must not be empty")
    return Commands(train, ev)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    sweep_file, action = args.sweep, args.action
    if sweep_file in ACTIONS and action not in ACTIONS:  # `run-one SWEEPFILE INDEX`
        sweep_file, action = action, sweep_file
    if action not in ACTIONS:
        raise SweepError(f"unknown sweep action {action!r} (one of {', '.join(ACTIONS)})")
    if action == "run-one" and args.index is None:
        raise SweepError("run-one needs the run's INDEX")
    if action != "run-one" and args.index is not None:
        raise SweepError(f"{action} takes no INDEX")
    sweep = load_sweep(sweep_file, overrides)  # validates every run before anything starts
    commands = _commands(args)

    if action == "list":
        for r in sweep.select(args.only):
            st = run_state(sweep, r)
            ov = " ".join(f"{k}={v}" for k, v in sweep.overrides(r).items())
            print(f"{r.index:>3}  {r.name:<32} {_status_text(st):<12}  {r.workdir}  [{ov}]")
        return 0
    if action == "collect":
        return _collect_cli(sweep)
    if action == "run-one":
        state = run_one(sweep, args.index, commands=commands, restart_stale=args.restart_stale)
        return {"finished": 0, "interrupted": EXIT_INTERRUPTED}.get(state.status, 1)
    # launch
    if args.slurm:
        if args.only:
            raise SweepError("--only does not apply to --slurm (every run is an array task; finished ones skip)")
        opts = SlurmOptions(args.partition, args.account, args.time, args.gpus, args.cpus_per_task, args.mem,
                            args.max_concurrent, tuple(args.sbatch_arg))
        if args.dry_run:  # print the script, write nothing
            print(slurm_script(sweep, opts, commands=commands, extra_overrides=overrides,
                               restart_stale=args.restart_stale), end="")
            return 0
        write_slurm(sweep, opts, submit=args.submit, commands=commands, extra_overrides=overrides,
                    restart_stale=args.restart_stale)
        return 0
    if args.submit:
        raise SweepError("--submit needs --slurm")
    result = launch(sweep, parallel=args.parallel, commands=commands, only=args.only, dry_run=args.dry_run,
                    restart_stale=args.restart_stale)
    if args.dry_run:
        return 0
    failed = {n: s for n, s in result.states.items() if s.status != "finished"}
    print(f"[sweep {sweep.name}] {len(result.states) - len(failed)} of {len(result.states)} run(s) finished"
          + ("" if not failed else "; not finished: " + ", ".join(f"{n} ({s.status})" for n, s in failed.items())),
          flush=True)
    rc = 0 if result.ok else 1
    if any(s.status == "interrupted" for s in failed.values()):
        return EXIT_INTERRUPTED
    if not args.no_collect:
        rc = max(rc, _collect_cli(sweep))
    return rc


def _collect_cli(sweep: Sweep) -> int:
    try:
        collect(sweep)
    except PlotError as e:
        print(f"instant4d sweep: error: {e}", file=sys.stderr)
        return 1
    return 0


COMMAND = ("ablation sweeps: expand a grid of overrides into runs, launch (local or SLURM), collect a table and "
           "plot", add_arguments, run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jax_instant4d.sweep ...`` and ``launch/sweep.py ...``: the same as ``instant4d sweep ...``."""
    from jax_instant4d.cli import main as cli_main

    return cli_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
