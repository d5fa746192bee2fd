"""Runs a sweep's runs on this machine: each run is ``train`` then ``eval`` as subprocesses.

Each run is ``instant4d train --config BASE --workdir RUNDIR --config.KEY=VALUE ...`` and then
``instant4d eval --checkpoint RUNDIR --split SPLIT``, whose output goes to ``RUNDIR/sweep_run.log``;
``RUNDIR/sweep_run.json`` records the commands, the stage reached, the exit codes, times and host. Runs
already *finished* (see :func:`jax_instant4d.sweep.run_state`) are skipped, so launching again finishes
what is left (train resumes from the run's latest checkpoint). A *stale* run directory (made with other
settings) stops the launch before anything starts, unless ``restart_stale`` moves it aside.

The children run in their own sessions: a terminal's Ctrl-C reaches only the launcher, which forwards
SIGTERM (the runs checkpoint and stop); a second signal kills them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from jax_instant4d.sweep import (
    LOG,
    RECORD,
    Run,
    RunState,
    Sweep,
    SweepError,
    normalise,
    now,
    run_state,
    write_json,
)

EXIT_INTERRUPTED = 128 + signal.SIGTERM  # a run stopped by a signal (it checkpointed; launch again to resume)

logger = logging.getLogger(__name__)


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


class _Processes:
    """Child processes of this launcher: started in their own session (a Ctrl-C reaches only the launcher,
    which asks them to checkpoint and stop with SIGTERM), tracked so that signals can be forwarded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stop = threading.Event()
        self._signals = 0

    def call(self, cmd: Sequence[str], log: IO[str]) -> int:
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
            logger.info("[sweep] signal %s: %d running process(es) %s", signum, len(procs), how)
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


def execute_run(sweep: Sweep, run: Run, commands: Commands = Commands(),
                procs: _Processes | None = None) -> RunState:
    """Trains and evaluates one run in its work directory, recording the outcome (never raises for a
    failed step: the failure is recorded)."""
    procs = procs or _Processes()
    run.workdir.mkdir(parents=True, exist_ok=True)
    cmds = run_commands(sweep, run, commands)
    record: dict[str, Any] = {
        "sweep": sweep.name, "sweep_file": str(sweep.path), "index": run.index, "name": run.name,
        "overrides": normalise(sweep.overrides(run)), "commands": [shlex.join(c) for c in cmds],
        "status": "running", "stage": "train", "detail": "", "returncodes": {}, "started": now(),
        "host": socket.gethostname(),
        "slurm": {k: os.environ[k] for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID")
                  if k in os.environ},
    }
    write_json(run.workdir / RECORD, record)
    t0 = time.time()
    status, detail = "finished", ""
    with open(run.workdir / LOG, "a") as log:
        for stage, cmd in zip(("train", "eval"), cmds, strict=True):
            record["stage"] = stage
            write_json(run.workdir / RECORD, record)
            log.write(f"==== {now()} {run.name}: {stage}: {shlex.join(cmd)}\n")
            log.flush()
            logger.info("[sweep %s] %s: %s", sweep.name, run.name, stage)
            rc = procs.call(cmd, log)
            record["returncodes"][stage] = rc
            log.write(f"==== {now()} {stage} exited with status {rc}\n")
            log.flush()
            if procs.stop.is_set():
                status, detail = "interrupted", f"interrupted during {stage}"
                break
            if rc != 0:
                status, detail = "failed", f"{stage} exited with status {rc}"
                break
    record.update(ended=now(), seconds=round(time.time() - t0, 3))
    if status == "finished":
        state = run_state(sweep, run)
        if state.status != "finished":
            status = "failed"
            detail = (f"eval exited 0 but {sweep.eval_json(run).name} is missing or unreadable"
                      if state.eval is None else f"after eval: {state.status} ({state.detail})")
    record.update(status=status, detail=detail)
    write_json(run.workdir / RECORD, record)
    logger.info("[sweep %s] %s: %s%s in %.1f s", sweep.name, run.name, status,
                f" ({detail}; log {run.workdir / LOG})" if detail else "", record["seconds"])
    return run_state(sweep, run) if status == "finished" else RunState(status, detail, None, record)


def _move_aside(run: Run) -> Path:
    target = run.workdir.with_name(f"{run.workdir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{run.workdir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    run.workdir.rename(target)
    return target


def _prepare(sweep: Sweep, runs: Sequence[Run], restart_stale: bool) -> None:
    """Refuses (before anything starts) to run in stale directories, or moves them aside."""
    stale = [(r, s) for r in runs if (s := run_state(sweep, r)).status == "stale"]
    if stale and not restart_stale:
        lines = "\n".join(f"  {r.name} ({r.workdir}): {s.detail}" for r, s in stale)
        raise SweepError(f"sweep {sweep.name!r}: {len(stale)} run director{'y was' if len(stale) == 1 else 'ies were'}"
                         f" made with other settings:\n{lines}\nremove them, or pass --restart-stale to move them "
                         "aside")
    for r, _ in stale:
        logger.info("[sweep %s] %s: stale work directory moved to %s", sweep.name, r.name, _move_aside(r))


@dataclasses.dataclass
class LaunchResult:
    states: dict[str, RunState]  # run name -> state after the launch (skipped runs included)
    skipped: list[str]
    executed: list[str]

    @property
    def ok(self) -> bool:
        return all(s.status == "finished" for s in self.states.values())


def launch(sweep: Sweep, *, parallel: int = 1, commands: Commands = Commands(), only: str | None = None,
           dry_run: bool = False, restart_stale: bool = False) -> LaunchResult:
    """Runs every selected run that is not finished, ``parallel`` at a time; a failed run does not stop
    the others. ``dry_run`` prints the commands instead (stdout). Progress is logged (INFO)."""
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
                print(f"# {r.index} {r.name}: finished, skipped")
                continue
            print(f"# {r.index} {r.name}: {st.status}" + (f" ({st.detail})" if st.detail else ""))
            for cmd in run_commands(sweep, r, commands):
                print(shlex.join(cmd))
        return LaunchResult(states, skipped, [])
    _prepare(sweep, todo, restart_stale)
    logger.info("[sweep %s] %d run(s) to do, %d finished already, %d at a time; root %s", sweep.name, len(todo),
                len(skipped), parallel, sweep.root)
    procs = _Processes()

    def one(r: Run) -> tuple[str, RunState]:
        if procs.stop.is_set():
            return r.name, run_state(sweep, r)
        return r.name, execute_run(sweep, r, commands, procs)

    with _forward_signals(procs), ThreadPoolExecutor(max_workers=parallel) as pool:
        for name, st in pool.map(one, todo):
            states[name] = st
    return LaunchResult(states, skipped, [r.name for r in todo])


def run_one(sweep: Sweep, index: int, *, commands: Commands = Commands(), restart_stale: bool = False) -> RunState:
    """The run of ``index`` (a SLURM array task): skipped if finished."""
    if not 0 <= index < len(sweep.runs):
        raise SweepError(f"sweep {sweep.name!r} has {len(sweep.runs)} runs (0..{len(sweep.runs) - 1}), "
                         f"no run {index}")
    run = sweep.runs[index]
    state = run_state(sweep, run)
    if state.status == "finished":
        logger.info("[sweep %s] %s: finished already, skipped", sweep.name, run.name)
        return state
    _prepare(sweep, [run], restart_stale)
    procs = _Processes()
    with _forward_signals(procs):
        return execute_run(sweep, run, commands, procs)
