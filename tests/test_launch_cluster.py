"""launch/slurm.sbatch and launch/tpu_vm.sh hold to launch/local.sh's contract. Neither SLURM nor a TPU
slice is here, so stand-ins take the place of ``srun`` and ``gcloud`` on PATH: they start real local
processes (``srun``: one per task with SLURM_PROCID, kills the step when a task fails, reports the
highest status as srun does; ``gcloud ... ssh --worker=W``: the command in a shell whose home folder is
host W's). The training command is a small shell script (PYTHON) that behaves as MODE says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SRUN = r"""#!/usr/bin/env bash
# srun: SLURM_NTASKS tasks, each in its own process group (SLURM signals every process of a task);
# --kill-on-bad-exit=1: a task exiting non-zero gets the others SIGTERM, then SIGKILL after 1 s;
# SIGTERM/SIGINT to srun go to every task; the exit status is the highest one (128 + signal for a task
# ended by a signal).
echo "$*" > "$OUT/srun_args"
kill_on_bad=0
while [[ $1 == --* ]]; do
  [[ $1 == --kill-on-bad-exit=1 ]] && kill_on_bad=1
  shift
done
pids=()
for ((r = 0; r < SLURM_NTASKS; r++)); do
  SLURM_PROCID=$r setsid "$@" &
  pids[r]=$!
done
signal_all() { for p in "${pids[@]}"; do kill -s "$1" -- "-$p" 2>/dev/null; done; }
trap 'signal_all TERM' TERM
trap 'signal_all INT' INT
declare -A done_=()
worst=0 killing=""
while [[ ${#done_[@]} -lt ${#pids[@]} ]]; do
  for r in "${!pids[@]}"; do
    [[ -n "${done_[$r]:-}" ]] && continue
    kill -0 "${pids[r]}" 2>/dev/null && continue
    wait "${pids[r]}"; code=$?
    done_[$r]=$code
    (( code > worst )) && worst=$code
    if [[ $code -ne 0 && $kill_on_bad == 1 && -z $killing ]]; then
      killing=$((SECONDS + 1)); signal_all TERM
    fi
  done
  [[ -n $killing && $SECONDS -gt $killing ]] && signal_all KILL
  sleep 0.1
done
exit "$worst"
"""

GCLOUD = r"""#!/usr/bin/env bash
# gcloud compute tpus tpu-vm {describe|ssh}: FAKE_HOSTS hosts; ssh runs --command with sh in host W's
# home folder ($OUT/host_W), as an ssh session would, and exits with its status.
echo "$*" >> "$OUT/gcloud_calls"
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || exit 64
verb=$4
shift 5  # compute tpus tpu-vm VERB NAME
worker="" cmd=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --worker=*) worker=${1#--worker=} ;;
    --command) cmd=$2; shift ;;
    --format=*|--quiet) ;;
    *) shift ;;  # --project P, --zone Z
  esac
  shift
done
case $verb in
  describe) for ((w = 0; w < FAKE_HOSTS; w++)); do printf '10.0.0.%d;' "$w"; done; echo ;;
  ssh)
    if [[ $worker == all ]]; then
      for ((w = 0; w < FAKE_HOSTS; w++)); do "$0" compute tpus tpu-vm ssh x --worker=$w --command "$cmd"; done
      exit
    fi
    export HOME=$OUT/host_$worker
    mkdir -p "$HOME" && cd "$HOME" && exec sh -c "$cmd" ;;
  *) exit 64 ;;
esac
"""

# The training process. Its id: SLURM_PROCID under srun, the host's number under the gcloud stand-in.
TRAIN = r"""#!/usr/bin/env bash
id=${SLURM_PROCID:-${HOME##*_}}
echo "pid $$" > "$OUT/started_$id"
echo "process $id training: $*"
case "$MODE" in
  one_fails)  # process 1 fails; process 0 records SIGTERM and goes on (stuck in a collective)
    if [[ $id == 1 ]]; then sleep 1; exit 3; fi
    trap 'echo TERM > "$OUT/term_$id"' TERM
    while true; do sleep 0.1; done ;;
  preempt)  # SIGTERM: "checkpoint" and exit 0
    trap 'sleep 0.5; echo saved > "$OUT/saved_$id"; exit 0' TERM
    while true; do sleep 0.1; done ;;
esac
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "srun", SRUN)
    _script(bin_dir / "gcloud", GCLOUD)
    train = _script(tmp_path / "train.sh", TRAIN)
    env = dict(os.environ, OUT=str(tmp_path), PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(train),
               GRACE="2")
    return tmp_path, env


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"still running after {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _pids(out: Path, n: int) -> list[int]:
    return [int((out / f"started_{i}").read_text().split()[1]) for i in range(n)]


def _wait_started(proc: subprocess.Popen, out: Path, n: int) -> None:
    deadline = time.monotonic() + 30
    while not all((out / f"started_{i}").exists() for i in range(n)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0] if proc.poll() else ""
        time.sleep(0.05)
    time.sleep(0.3)  # their traps are set


# --------------------------------------------------------------------------------------------------
# SLURM
# --------------------------------------------------------------------------------------------------


def _sbatch(tmp_path: Path, env: dict, mode: str) -> subprocess.Popen:
    env = dict(env, MODE=mode, SLURM_NTASKS="2", SLURM_JOB_ID="77", SLURM_SUBMIT_DIR=str(ROOT),
               WORKDIR=str(tmp_path / "work"), VENV=str(tmp_path / "no_venv"), CONFIG="configs/small.py")
    return subprocess.Popen(["bash", str(ROOT / "launch" / "slurm.sbatch")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_slurm_a_failing_task_stops_the_others_and_is_the_jobs_status(stubs):
    """Task 1 exits 3; srun (--kill-on-bad-exit=1) kills task 0 and reports 137, the highest status;
    the job exits with 3, the status of the task that failed first, and names it."""
    tmp_path, env = stubs
    rc, out = _wait(_sbatch(tmp_path, env, "one_fails"), timeout=60)
    assert rc == 3, out
    assert "task 1 failed first, with status 3 (srun: 137)" in out
    args = (tmp_path / "srun_args").read_text()
    assert "--kill-on-bad-exit=1" in args and "--wait=2" in args
    assert "-m jax_instant4d.cli train --config configs/small.py" in args and "--distributed on" in args
    assert (tmp_path / "term_0").exists()  # SIGTERM first
    assert not any(_alive(p) for p in _pids(tmp_path, 2))
    status = tmp_path / "work" / ".slurm" / "77"
    assert (status / "task_1").read_text().strip() == "3" and not (status / "task_0").exists()


def test_slurm_sigterm_to_the_script_reaches_every_task_and_the_job_ends_after_them(stubs):
    tmp_path, env = stubs
    proc = _sbatch(tmp_path, env, "preempt")
    _wait_started(proc, tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    rc, out = _wait(proc, timeout=60)
    assert rc == 0, out
    assert all((tmp_path / f"saved_{i}").read_text().strip() == "saved" for i in range(2))
    assert not any(_alive(p) for p in _pids(tmp_path, 2))


# --------------------------------------------------------------------------------------------------
# TPU VM
# --------------------------------------------------------------------------------------------------


def _tpu(tmp_path: Path, env: dict, mode: str, *command: str) -> subprocess.Popen:
    (tmp_path / "code").mkdir(exist_ok=True)
    env = dict(env, MODE=mode, PROJECT="p", FAKE_HOSTS="2", REMOTE_DIR=str(tmp_path / "code"))
    return subprocess.Popen(["bash", str(ROOT / "launch" / "tpu_vm.sh"), *command], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_tpu_vm_run_a_failing_host_stops_the_others_and_sets_the_status(stubs):
    """`run`: host 1's process exits 3; host 0's gets SIGTERM over ssh, then SIGKILL after GRACE; `run`
    exits with 3 and shows host 0's output; `status` bookkeeping (~/instant4d.rc) holds each host's status."""
    tmp_path, env = stubs
    t0 = time.monotonic()
    rc, out = _wait(_tpu(tmp_path, env, "one_fails", "run"), timeout=60)
    took = time.monotonic() - t0
    assert rc == 3, out
    assert "process 1" in out and "exited with 3" in out and "SIGKILL" in out
    assert "process 0 training: -m jax_instant4d.cli train --config configs/full.py" in out  # host 0's log, shown
    assert (tmp_path / "term_0").exists()
    assert not any(_alive(p) for p in _pids(tmp_path, 2))
    assert (tmp_path / "host_1" / "instant4d.rc").read_text().strip() == "3"
    assert took < 45  # GRACE=2: seconds, not a heartbeat timeout
    calls = (tmp_path / "gcloud_calls").read_text()
    assert "describe" in calls and "--worker=0" in calls and "--worker=1" in calls


def test_tpu_vm_run_forwards_sigterm_to_every_host_and_exits_after_them(stubs):
    tmp_path, env = stubs
    proc = _tpu(tmp_path, env, "preempt", "run")
    _wait_started(proc, tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    rc, out = _wait(proc, timeout=60)
    assert rc == 0, out
    assert all((tmp_path / f"saved_{i}").read_text().strip() == "saved" for i in range(2))
    assert all((tmp_path / f"host_{i}" / "instant4d.rc").read_text().strip() == "0" for i in range(2))
    assert not any(_alive(p) for p in _pids(tmp_path, 2))


def test_tpu_vm_detached_train_then_stop(stubs):
    """`train` starts every host detached and returns; `status` says running; `stop` makes each
    checkpoint and exit 0, then `status` shows it."""
    tmp_path, env = stubs
    rc, out = _wait(_tpu(tmp_path, env, "preempt", "train"), timeout=30)
    assert rc == 0, out
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"started_{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    rc, out = _wait(_tpu(tmp_path, env, "preempt", "status"), timeout=30)
    assert out.count(": running") == 2, out
    rc, out = _wait(_tpu(tmp_path, env, "preempt", "stop"), timeout=30)
    assert rc == 0, out
    assert all((tmp_path / f"saved_{i}").read_text().strip() == "saved" for i in range(2))
    deadline = time.monotonic() + 10
    while not all((tmp_path / f"host_{i}" / "instant4d.rc").exists() for i in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rc, out = _wait(_tpu(tmp_path, env, "preempt", "status"), timeout=30)
    assert out.count(": exited with 0") == 2, out
