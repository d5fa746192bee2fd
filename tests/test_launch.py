"""launch/local.sh's contract, with stand-in processes (small shell scripts) in place of training: a
failure stops the others (SIGTERM, SIGKILL after GRACE) and sets the exit status; processes dying at
the same moment end the launcher at once (it used to spin on a reaped PID); SIGTERM to the launcher
reaches every process and the launcher exits after them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The stand-in reads its process id (the last argument) and behaves as MODE says.
ENTRY = r"""#!/usr/bin/env bash
for a in "$@"; do id=$a; done
echo "pid $$" > "$OUT/started_$id"
case "$MODE" in
  one_fails)  # process 1 fails; process 0 ignores SIGTERM (stuck in a collective)
    if [[ $id == 1 ]]; then sleep 0.5; exit 3; fi
    trap 'echo TERM > "$OUT/term_$id"' TERM
    while true; do sleep 0.1; done ;;
  both_die)  # both fail at the same moment
    sleep 0.5; kill -9 $$ ;;
  preempt)  # SIGTERM: "checkpoint" and exit 0
    trap 'sleep 0.5; echo saved > "$OUT/saved_$id"; exit 0' TERM
    while true; do sleep 0.1; done ;;
esac
"""


def _launch(tmp_path: Path, mode: str, n: int = 2) -> subprocess.Popen:
    entry = tmp_path / "entry.sh"
    entry.write_text(ENTRY)
    entry.chmod(0o755)
    env = dict(os.environ, MODE=mode, OUT=str(tmp_path), GRACE="2", LOG_DIR=str(tmp_path / "logs"),
               INSTANT4D_ENTRY=str(entry), PORT="1")
    return subprocess.Popen(["bash", str(ROOT / "launch" / "local.sh"), str(n)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"launcher still running after {timeout} s:\n{out[-2000:]}")
    return proc.returncode, out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids(tmp_path: Path, n: int) -> list[int]:
    return [int((tmp_path / f"started_{i}").read_text().split()[1]) for i in range(n)]


def test_a_failure_stops_the_others_and_sets_the_status(tmp_path):
    rc, out = _wait(_launch(tmp_path, "one_fails"), timeout=30)
    assert rc == 3, out
    assert "process 1" in out and "exited with 3" in out and "SIGKILL" in out
    assert (tmp_path / "term_0").exists()  # it was asked first
    assert not any(_alive(p) for p in _pids(tmp_path, 2))


def test_processes_dying_together_end_the_launcher_at_once(tmp_path):
    rc, out = _wait(_launch(tmp_path, "both_die", n=3), timeout=20)
    assert rc == 128 + signal.SIGKILL, out
    assert len(out.splitlines()) < 20  # no loop printing errors


def test_sigterm_is_forwarded_and_the_launcher_waits_for_the_processes(tmp_path):
    proc = _launch(tmp_path, "preempt")
    deadline = time.monotonic() + 20
    while not all((tmp_path / f"started_{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    rc, out = _wait(proc, timeout=20)
    assert rc == 0, out
    assert all((tmp_path / f"saved_{i}").read_text().strip() == "saved" for i in range(2))
    assert not any(_alive(p) for p in _pids(tmp_path, 2))
