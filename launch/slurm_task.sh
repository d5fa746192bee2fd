#!/usr/bin/env bash
# One task of launch/slurm.sbatch: runs COMMAND and records its exit status, so that the job can exit
# with the status of the task that failed first (srun itself reports the highest status of all tasks,
# which is usually that of a task it killed afterwards).
#
#   launch/slurm_task.sh STATUS_DIR COMMAND [ARGS...]
#
# STATUS_DIR (on a filesystem every node sees) gets task_<rank> with the task's status and, from the
# first task that exits non-zero, first_failure: "<rank> <status>" (mkdir is atomic, also on NFS, so
# exactly one task writes it). A task killed together with this wrapper (SIGKILL from SLURM) records
# nothing, which is right: it did not fail first.
set -u
dir=$1
shift
rank=${SLURM_PROCID:-0}
# SLURM signals every process of the task: this shell outlives COMMAND (which checkpoints and exits on
# SIGTERM) instead of dying first. A trap (not an ignored signal) leaves COMMAND's own handling intact,
# and bash runs it only once the foreground COMMAND has exited.
trap : TERM INT
"$@"
status=$?
echo "$status" > "$dir/task_$rank" 2>/dev/null
if [[ $status -ne 0 ]] && mkdir "$dir/first_failure.lock" 2>/dev/null; then
  echo "$rank $status" > "$dir/first_failure"
fi
exit "$status"
