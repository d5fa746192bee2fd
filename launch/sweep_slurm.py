"""A sweep as a SLURM array job: one array task per run, written as a script you can read, keep and resubmit.

Task *i* runs ``python -m jax_instant4d.cli sweep run-one SWEEPFILE i`` (the same train + eval as a local
launch, see :mod:`sweep_local`); a run already finished is skipped, so resubmitting the script finishes
what is left, and a task preempted or stopped at its time limit resumes from its latest checkpoint.

Why our own script and not submitit (which pip-installs here): the sweep's state lives in the run
directories, not in a job handle, so polling jobs from Python adds nothing; the written ``sweep.sbatch``
is self-contained (``sbatch`` it again next week, with no launcher process and no pickled callable);
``--dry-run`` prints it for review; and the tests run it with ``bash`` as SLURM would, with no cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from jax_instant4d.sweep import Sweep, SweepError

from .sweep_local import Commands

logger = logging.getLogger(__name__)


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
    """An sbatch array script: task i runs ``python -m jax_instant4d.cli sweep run-one SWEEPFILE i``."""
    n = len(sweep.runs)
    cwd = (cwd or Path.cwd()).absolute()
    sweep_file = sweep.path.absolute()
    logs = (sweep.root if sweep.root.is_absolute() else cwd / sweep.root) / "slurm"
    limit = opts.max_concurrent or n
    if limit < 1:
        raise SweepError(f"--max-concurrent must be at least 1, got {limit}")
    task = ['"$PYTHON"', "-m", "jax_instant4d.cli", "sweep", "run-one", shlex.quote(str(sweep_file)),
            '"$SLURM_ARRAY_TASK_ID"']
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
                commands: Commands = Commands(), extra_overrides: Sequence[str] = (),
                restart_stale: bool = False) -> Path:
    """Writes ``<root>/sweep.sbatch`` (and ``<root>/slurm/`` for the task logs); submits it if asked. What
    it did (and sbatch's answer) is logged (INFO)."""
    text = slurm_script(sweep, opts, commands=commands, extra_overrides=extra_overrides,
                        restart_stale=restart_stale)
    sweep.root.mkdir(parents=True, exist_ok=True)
    (sweep.root / "slurm").mkdir(exist_ok=True)
    path = sweep.root / "sweep.sbatch"
    path.write_text(text)
    path.chmod(0o755)
    logger.info("[sweep %s] wrote %s (%d array tasks)", sweep.name, path, len(sweep.runs))
    if not submit:
        logger.info("submit with: sbatch %s", path)
        return path
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SweepError(f"--submit: sbatch is not on PATH (the script is at {path})")
    out = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SweepError(f"sbatch {path} failed with status {out.returncode}: {out.stderr.strip()}")
    logger.info("%s", out.stdout.strip())
    return path
