"""The real model (``Instant4D``, tiny sizes) and the real data pipeline across two processes, launched
the way users launch them: ``launch/local.sh 2 --config configs/small.py ...`` running
``python -m jax_instant4d.cli train``.

One uninterrupted run on an empty data directory is the reference (process 0 generates the dataset,
process 1 waits through the coordination service). Its processes run ``tests/slow_prepare_entry.py``, the same
command line with the dataset's generation held to at least 31 s, so that the wait outlasts gloo's 30 s limit on
a collective's set-up on any machine. A second run on the same data loses both processes
to kill -9 at the same moment, is started again and loses one process to kill -9 after its first
checkpoint, is resumed and finishes: its per-step losses, parameters and optimizer state equal the
reference's bit for bit. All runs share one persistent compilation cache (``train.compilation_cache``),
so only the first compiles.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import child_env
from real_checkpoint import TINY_OVERRIDES
from slow_prepare_entry import HELD

from jax_instant4d.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
GRACE = 5  # launcher: seconds between SIGTERM and SIGKILL of the survivors
TIMEOUT = 1800  # the first run: data generation and a cold compilation of the step, 15 min on a loaded 2-core box
# a bound on the launcher's exit after a process died: GRACE plus polling, far above what it needs
EXIT_BOUND = 60
HOLD = 31  # the first run's dataset generation lasts at least this long: over gloo's 30 s set-up limit

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                                   reason="finds the launcher's processes in /proc")]

# TINY_OVERRIDES (a trainable motion encoder initialised with the model, no teacher pretraining), one
# device per process with the batch split over both, a checkpoint every 2 steps, every step logged.
OVERRIDES = [o for o in TINY_OVERRIDES if not o.startswith(("train.mesh=", "train.eval_batches=",
                                                               "train.async_checkpoint="))] + [
    "train.mesh=(2,1,1)", "train.eval_batches=0", "train.async_checkpoint=true", f"train.steps={STEPS}",
    "train.checkpoint_every=2", "train.log_every=1", "train.image_every=0",
    "train.warmup_steps=0",  # small.py warms up over 20 steps: 6 steps at a few % of the rate barely move the loss
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The data directory (empty until the first run) and one compilation cache for every run here
    (INSTANT4D_TEST_XLA_CACHE names a folder to keep it between sessions, e.g. while working on these
    tests; the results do not depend on it)."""
    root = tmp_path_factory.mktemp("real_multihost")
    return root / "data", Path(os.environ.get("INSTANT4D_TEST_XLA_CACHE") or root / "xla_cache")


def _launch(tmp_path: Path, name: str, workdir: Path, shared: tuple[Path, Path],
            hold: float = 0.0) -> subprocess.Popen:
    """``launch/local.sh 2`` of ``instant4d train``; ``hold``: through ``tests/slow_prepare_entry.py``, the
    dataset's generation held to at least ``hold`` seconds."""
    data_dir, cache = shared
    env = child_env()
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PYTHON=sys.executable, DEVICES_PER_PROCESS="1",
               LOG_DIR=str(tmp_path / name), GRACE=str(GRACE))
    if hold:
        env["INSTANT4D_ENTRY"] = f"{sys.executable} {ROOT / 'tests' / 'slow_prepare_entry.py'} {hold:g} train"
    args = ["--config", "configs/small.py", "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
            f"--config.train.compilation_cache={cache}", *(f"--config.{o}" for o in OVERRIDES)]
    out = open(tmp_path / f"{name}.out", "w")  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen(["bash", str(ROOT / "launch" / "local.sh"), "2", *args], env=env, cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _text(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no output)"


def _finish(proc: subprocess.Popen, tmp_path: Path, name: str) -> None:
    try:
        rc = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{name}: not finished in {TIMEOUT} s:\n{_text(tmp_path / f'{name}.out')}")
    assert rc == 0, _text(tmp_path / f"{name}.out")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(stat.parent.name))
    return out


def _worker_pid(launcher: subprocess.Popen, process_id: int) -> int:
    for pid in _children(launcher.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--process_id" in cmd and cmd[cmd.index(b"--process_id") + 1] == str(process_id).encode():
            return pid
    raise AssertionError(f"no process {process_id} under the launcher")


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its parent counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _wait_for_checkpoint(proc: subprocess.Popen, workdir: Path, step: int, tmp_path: Path, name: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (workdir / "checkpoints" / str(step)).is_dir():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            pytest.fail(f"{name}: no checkpoint {step} (launcher status {proc.poll()}):\n"
                        f"{_text(tmp_path / f'{name}.out')}")
        time.sleep(0.05)


def _wait_bounded(proc: subprocess.Popen, tmp_path: Path, name: str) -> tuple[int, float, str]:
    """The launcher's status and how long it took to exit (it is killed and the test fails past EXIT_BOUND)."""
    t0 = time.monotonic()
    try:
        rc = proc.wait(timeout=EXIT_BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{name}: the launcher did not exit within {EXIT_BOUND} s:\n{_text(tmp_path / f'{name}.out')}")
    return rc, time.monotonic() - t0, (tmp_path / f"{name}.out").read_text(errors="replace")


def _state(workdir: Path, step: int) -> dict[str, np.ndarray]:
    """Every array of checkpoint ``step`` (parameters, optimizer and discriminator state) as NumPy."""
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    ckpt = ocp.PyTreeCheckpointer()
    meta = ckpt.metadata(path)
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = ckpt.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(restored)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared):
    """The uninterrupted run, which is also the first run on an empty data directory."""
    tmp_path = tmp_path_factory.mktemp("reference")
    data_dir, _ = shared
    assert not data_dir.exists()
    workdir = tmp_path / "run"
    _finish(_launch(tmp_path, "first", workdir, shared, hold=HOLD), tmp_path, "first")
    logs = [(tmp_path / "first" / f"process_{i}.log").read_text() for i in range(2)]
    losses = {s: r["loss"] for s, r in read_metrics(workdir).items()}
    return workdir, logs, losses


def test_first_run_on_an_empty_data_dir(reference, shared):
    """Process 0 generates the dataset (for over 30 s, gloo's limit for a collective's set-up) while process 1
    waits for it through the coordination service; both train every step and end at the same step with the
    same loss; the model learns."""
    workdir, logs, losses = reference
    data_dir, cache = shared
    assert "process 1: waiting for process 0 to prepare the dataset (train split)" in logs[1]
    assert f"{HELD} {HOLD} s" in logs[0] and HELD not in logs[1]
    assert "Traceback" not in logs[0] + logs[1]
    assert list((data_dir / "synthetic_heads").iterdir())  # generated there, once
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(np.isfinite(v) for v in losses.values())
    assert losses[STEPS] < losses[1], losses
    final = [re.search(rf"\[process {i}/2\] finished at step (\d+), loss (\S+)", log) for i, log in enumerate(logs)]
    assert all(final), logs
    assert final[0].groups() == final[1].groups() and int(final[0].group(1)) == STEPS
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6]
    assert any(cache.iterdir())  # the compiled step is cached for the runs below


def test_kill9_of_both_then_of_one_process_and_resume_bit_identical(tmp_path, reference, shared):
    """(1) Both processes killed with -9 at the same moment (once they are connected): the launcher
    exits at once with 137 and a few lines (it used to spin on the reaped PIDs). (2) The same command
    starts afresh; after checkpoint 2, process 1 is killed with -9: the launcher stops process 0 (SIGTERM,
    SIGKILL after GRACE) and exits with 137, naming process 1, within the bound. (3) The same command
    resumes and finishes: every step's loss is logged once and equals the uninterrupted run's, and the
    final state (parameters, optimizer and discriminator state) equals it bit for bit."""
    ref_workdir, _, ref_losses = reference
    workdir = tmp_path / "run"

    # (1) both processes die together
    proc = _launch(tmp_path, "both", workdir, shared)
    deadline = time.monotonic() + TIMEOUT
    while "2 process(es), 2 devices" not in _text(tmp_path / "both" / "process_0.log"):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"both: the processes did not connect:\n{_text(tmp_path / 'both.out')}")
        time.sleep(0.05)
    victims = [_worker_pid(proc, i) for i in range(2)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    rc, took, out = _wait_bounded(proc, tmp_path, "both")
    assert rc == 128 + signal.SIGKILL, out
    assert len(out.splitlines()) < 40, out[-3000:]  # no loop printing errors
    assert "no such job" not in out
    assert all(_gone(p) for p in victims)
    print(f"both killed: the launcher exited after {took:.1f} s")

    # (2) afresh; process 1 dies after checkpoint 2
    proc = _launch(tmp_path, "one", workdir, shared)
    _wait_for_checkpoint(proc, workdir, 2, tmp_path, "one")
    victim, survivor = _worker_pid(proc, 1), _worker_pid(proc, 0)
    os.kill(victim, signal.SIGKILL)
    rc, took, out = _wait_bounded(proc, tmp_path, "one")
    assert rc == 128 + signal.SIGKILL, out
    assert f"process 1 (pid {victim}) exited with 137; stopping the others" in out, out[-3000:]
    assert _gone(survivor)
    print(f"one killed: the launcher exited after {took:.1f} s")

    # (3) resume from 2 (or later, if the run got further before the kill) and finish
    proc = _launch(tmp_path, "last", workdir, shared)
    _finish(proc, tmp_path, "last")
    log0 = (tmp_path / "last" / "process_0.log").read_text()
    assert re.search(r"resumed from checkpoint step [246]\b", log0), log0[-3000:]
    got = {s: r["loss"] for s, r in read_metrics(workdir).items()}
    assert got == ref_losses  # bit-identical floats, every step
    lines = [ln for ln in (workdir / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in ln]
    assert len(lines) == STEPS  # each step once, also those replayed after the resume
    ref_state, state = _state(ref_workdir, STEPS), _state(workdir, STEPS)
    assert sorted(state) == sorted(ref_state) and any("params" in k for k in state)
    for k in ref_state:
        np.testing.assert_array_equal(state[k], ref_state[k], err_msg=k)
