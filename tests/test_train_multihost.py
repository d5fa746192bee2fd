"""Training in separate processes: ``launch/local.sh 2`` (two jax.distributed processes with gloo),
preemption by SIGTERM, and a kill -9 in the middle of a run, each checked against an uninterrupted
reference run on the same data.

The processes run the real loop (``jax_instant4d.train.loop.train``) with the stand-in model and data
of ``tests/fakes.py`` (``tests/train_worker.py``), and share a persistent compilation cache. The real model and
pipeline across two processes, from a first run on an empty data directory (its generation outlasting gloo's 30 s
set-up limit) to kill -9 and a bit-identical resume, are ``tests/test_train_real_multihost.py``'s.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from conftest import child_env
from fakes import FakeInstant4D, tiny_config

from jax_instant4d.train.checkpoint import Checkpointer
from jax_instant4d.train.loop import restore_state
from jax_instant4d.train.metrics import read_metrics
from jax_instant4d.train.sharding import make_mesh

ROOT = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, str(ROOT / "tests" / "train_worker.py")]
STEPS = 8
COMMON = [f"--config.train.steps={STEPS}", "--config.train.mesh=(2,2,1)", "--config.train.eval_batches=0",
          "--config.train.checkpoint_every=2", "--config.train.async_checkpoint=true"]
TIMEOUT = 420

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = child_env()
    e.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return e


def _start(workdir: Path, env: dict, *extra: str) -> subprocess.Popen:
    log = open(workdir.parent / f"{workdir.name}.log", "a")  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen([*WORKER, "--workdir", str(workdir), "--devices", "4", *COMMON, *extra], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _log(workdir: Path) -> str:
    path = workdir.parent / f"{workdir.name}.log"
    return path.read_text() if path.exists() else ""


def _wait_for_step(proc: subprocess.Popen, workdir: Path, step: int) -> int:
    """Polls metrics.jsonl until ``step`` is logged; returns the newest logged step."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        steps = read_metrics(workdir)
        if steps and max(steps) >= step:
            return max(steps)
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode} before step {step}:\n{_log(workdir)[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"step {step} not reached in {TIMEOUT} s:\n{_log(workdir)[-3000:]}")


def _finish(proc: subprocess.Popen, workdir: Path) -> None:
    try:
        rc = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"worker did not finish:\n{_log(workdir)[-3000:]}")
    assert rc == 0, _log(workdir)[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """Losses of an uninterrupted single-process run on 4 devices (2x2 mesh)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    _finish(_start(workdir, env), workdir)
    losses = {s: r["loss"] for s, r in read_metrics(workdir).items()}
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1]  # it learns
    return losses


def test_sigterm_checkpoint_then_kill9_resume_the_same_trajectory(tmp_path, env, reference):
    workdir = tmp_path / "run"
    # 1. SIGTERM after the first step: a final checkpoint at the step reached, clean exit
    proc = _start(workdir, env)
    _wait_for_step(proc, workdir, 1)
    proc.send_signal(signal.SIGTERM)
    _finish(proc, workdir)
    assert "preemption notice" in _log(workdir)
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    preempted_at = ckpt.latest_step()
    ckpt.close()
    logged = max(read_metrics(workdir))
    assert preempted_at == logged and 1 <= preempted_at < STEPS
    cfg = tiny_config(workdir, mesh=(1, 1, 1))
    _, state = restore_state(cfg, model_factory=FakeInstant4D, mesh=make_mesh((1, 1, 1), jax.devices()[:1]))
    assert int(state.step) == preempted_at

    # 2. resume, then kill -9 as soon as a later checkpoint is complete (the run goes on meanwhile)
    proc = _start(workdir, env)
    later = preempted_at + 2 - preempted_at % 2  # the next multiple of checkpoint_every
    assert later < STEPS
    deadline = time.monotonic() + TIMEOUT
    while not (workdir / "checkpoints" / str(later)).is_dir() and proc.poll() is None:
        assert time.monotonic() < deadline, _log(workdir)[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert f"resumed from checkpoint step {preempted_at}" in _log(workdir)

    # 3. resume again and finish: every step's loss equals the uninterrupted run's
    proc = _start(workdir, env)
    _finish(proc, workdir)
    resumed = [int(s) for s in re.findall(r"resumed from checkpoint step (\d+)", _log(workdir))]
    assert len(resumed) == 2 and resumed[1] >= later
    got = {s: r["loss"] for s, r in read_metrics(workdir).items()}
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert got[s] == pytest.approx(reference[s], rel=1e-6, abs=1e-7), (s, got, reference)


def _launch(tmp_path: Path, env: dict, workdir: Path, steps: int) -> subprocess.Popen:
    launch_env = dict(env, DEVICES_PER_PROCESS="2", LOG_DIR=str(tmp_path / "logs"), PYTHON=sys.executable,
                      INSTANT4D_ENTRY=" ".join(WORKER))
    out = open(tmp_path / "launcher.out", "a")  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen(["bash", str(ROOT / "launch" / "local.sh"), "2", "--workdir", str(workdir), *COMMON,
                             f"--config.train.steps={steps}"], env=launch_env, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT)


def _process_logs(tmp_path: Path) -> list[str]:
    return [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]


def _final_lines(logs: list[str], status: str) -> list[tuple[int, float]]:
    out = []
    for i, text in enumerate(logs):
        m = re.search(rf"\[process {i}/2\] {status} at step (\d+), loss (\S+)", text)
        assert m, f"process {i}: no '{status}' line:\n{text[-3000:]}"
        out.append((int(m.group(1)), float(m.group(2))))
    return out


def test_local_launcher_two_processes_preempt_resume_and_agree(tmp_path, env, reference):
    """launch/local.sh 2: two jax.distributed processes with 2 devices each (a 2x2 mesh across them).
    SIGTERM to the launcher makes both checkpoint at one agreed step and exit 0; a second launch
    resumes there and finishes. Both processes report the same losses, and those equal the
    single-process reference (each process fed half of every global batch)."""
    workdir = tmp_path / "run"
    proc = _launch(tmp_path, env, workdir, steps=1000)
    _wait_for_step(proc, workdir, 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 0, (tmp_path / "launcher.out").read_text()[-3000:]
    logs = _process_logs(tmp_path)
    assert "2 process(es), 4 devices" in logs[0]
    (s0, l0), (s1, l1) = _final_lines(logs, "preempted")
    assert s0 == s1 and l0 == l1 and s0 >= 2
    assert (workdir / "checkpoints" / str(s0)).is_dir()

    proc = _launch(tmp_path, env, workdir, steps=s0 + 2)
    assert proc.wait(timeout=TIMEOUT) == 0, (tmp_path / "launcher.out").read_text()[-3000:]
    logs = _process_logs(tmp_path)
    assert f"resumed from checkpoint step {s0}" in logs[0]
    (f0, g0), (f1, g1) = _final_lines(logs, "finished")
    assert f0 == f1 == s0 + 2 and g0 == g1
    got = {s: r["loss"] for s, r in read_metrics(workdir).items()}
    assert sorted(got) == list(range(1, s0 + 3))
    for s in sorted(set(got) & set(reference)):
        assert got[s] == pytest.approx(reference[s], rel=1e-5), (s, got, reference)


# --------------------------------------------------------------------------------------------------
# a lost peer without the launcher
# --------------------------------------------------------------------------------------------------

def test_a_survivor_without_the_launcher_exits_within_the_heartbeat_bound(tmp_path, env):
    """No launcher: process 1 is killed with -9; process 0, blocked in a collective, is told by the peer
    watchdog (train.heartbeat_timeout_s=10) and exits with status 75 and one line naming process 1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "run"
    procs, logs = [], []
    for i in range(2):
        logs.append(tmp_path / f"p{i}.log")
        procs.append(subprocess.Popen(
            [*WORKER, "--workdir", str(workdir), "--config.train.steps=100000", "--config.train.eval_batches=0",
             "--config.train.mesh=(2,1,1)", "--config.train.heartbeat_timeout_s=10", "--coordinator_address",
             f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)],
            env=env, cwd=ROOT, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT))  # noqa: SIM115
    try:
        _wait_for_step(procs[0], workdir, 3)
        procs[1].send_signal(signal.SIGKILL)
        rc = procs[0].wait(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = logs[0].read_text()
    assert rc == 75, text[-3000:]
    assert "process 0: process 1 of 2 stopped responding (no heartbeat for" in text
    assert "Traceback" not in text and "Terminating process" not in text  # before JAX's own abort
