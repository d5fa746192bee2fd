#!/usr/bin/env bash
# Multi-host training on a Cloud TPU VM slice (e.g. v5p-32: 4 hosts x 4 chips): the same command runs
# on every host (gcloud --worker=all); JAX finds the other hosts through the TPU metadata
# (--distributed on), and every host feeds its own share of each batch.
#
#   launch/tpu_vm.sh create     # create the TPU VM slice
#   launch/tpu_vm.sh setup      # copy this checkout to every host and install it
#   launch/tpu_vm.sh run        # train on every host and supervise from here (as launch/local.sh): when a
#                               # host's process exits non-zero the others are stopped and this exits
#                               # with that status; Ctrl-C / SIGTERM here = `stop` (checkpoint, exit 0)
#   launch/tpu_vm.sh train      # start training on every host detached (logs in ~/instant4d.log); the
#                               # slice goes on when this machine disconnects
#   launch/tpu_vm.sh logs       # follow host 0's log
#   launch/tpu_vm.sh status     # per host: running, or the exit status of the last run
#   launch/tpu_vm.sh stop       # SIGTERM on every host: a checkpoint at an agreed step, then exit
#                               # (SIGKILL after GRACE seconds for a host that is still running)
#   launch/tpu_vm.sh delete     # delete the slice
#
# Variables (all but PROJECT have defaults):
#   PROJECT        Google Cloud project                       (required)
#   ZONE           zone with TPU capacity                     (default: us-east5-a)
#   TPU_NAME       name of the slice                          (default: instant4d)
#   ACCELERATOR    slice type                                 (default: v5p-32)
#   RUNTIME        TPU VM software version                    (default: v2-alpha-tpuv5)
#   SPOT           "1" for a Spot (preemptible) slice         (default: 0)
#   CONFIG         config file                                (default: configs/full.py)
#   WORKDIR        work directory every host sees: a gcsfuse-mounted bucket or a Filestore/NFS mount
#                  (checkpoints are written by all hosts)     (default: /mnt/instant4d/workdirs/full)
#   OVERRIDES      extra config overrides, e.g. "--config.train.mesh=(1,-1,1)"
#   REMOTE_DIR     where the code goes on each host           (default: ~/jax_instant4d)
#   PYTHON         interpreter on the hosts                   (default: python)
#   HOSTS          number of hosts of the slice               (default: asked from gcloud)
#   GRACE          seconds between SIGTERM and SIGKILL in `run` and `stop` (default: 120)
#
# Contract of `run` (the same as launch/local.sh; one ssh session per host, its exit status is the
# host's): when a host's process exits non-zero, the others get SIGTERM over ssh, then SIGKILL after
# GRACE seconds, and `run` exits with that first failure's status. SIGTERM or Ctrl-C to `run` is
# forwarded as SIGTERM to every host (each checkpoints at an agreed step and exits 0); `run` exits after
# them, and a second Ctrl-C kills them. A lost ssh connection counts as a failure (status 255): the
# others are stopped, the run resumes from its last checkpoint when started again.
# Detached (`train`): a host whose process dies makes the others exit within
# 0.35 x train.heartbeat_timeout_s (each survivor logs which process is gone and exits with status 75);
# `status` shows every host's exit status (~/instant4d.rc); `stop` forwards SIGTERM and kills what is
# left after GRACE seconds.
# data.data_dir must be a path every host sees (a gcsfuse bucket mount or NFS), like WORKDIR.
#
# Spot slices and maintenance events send SIGTERM; JAX's preemption notifier turns it into a
# checkpoint at a step all hosts agree on. Re-run `train` on the recreated slice to resume from the
# latest complete checkpoint in WORKDIR. For GKE, xpk runs the same command line per host:
#   xpk workload create --cluster CLUSTER --tpu-type v5p-32 --num-slices 1 \
#     --command "python -m jax_instant4d.cli train --config configs/full.py --workdir WORKDIR --distributed on"
set -euo pipefail

: "${PROJECT:?set PROJECT to your Google Cloud project}"
ZONE=${ZONE:-us-east5-a}
TPU_NAME=${TPU_NAME:-instant4d}
ACCELERATOR=${ACCELERATOR:-v5p-32}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}
SPOT=${SPOT:-0}
CONFIG=${CONFIG:-configs/full.py}
WORKDIR=${WORKDIR:-/mnt/instant4d/workdirs/full}
OVERRIDES=${OVERRIDES:-}
REMOTE_DIR=${REMOTE_DIR:-'~/jax_instant4d'}
PYTHON=${PYTHON:-python}
GRACE=${GRACE:-120}

tpu() { gcloud compute tpus tpu-vm "$@" --project "$PROJECT" --zone "$ZONE"; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command "$1"; }
on_host() { tpu ssh "$TPU_NAME" --worker="$1" --command "$2"; }
# The training command on one host: its pid in ~/instant4d.pid, its exit status in ~/instant4d.rc and as
# the exit status of the shell (i.e. of the ssh session that runs it); output in ~/instant4d.log ($1 = 1:
# also shown; the log is created before the training starts, so the tail never looks for a file that is not
# there yet).
host_train() {
  local show=""
  [[ "$1" == 1 ]] && show="tail -n +1 -f --pid=\$pid ~/instant4d.log & "
  echo "cd $REMOTE_DIR && rm -f ~/instant4d.rc && : > ~/instant4d.log && { $PYTHON -m jax_instant4d.cli train --config $CONFIG \
    --workdir $WORKDIR --distributed on $OVERRIDES > ~/instant4d.log 2>&1 & pid=\$!; echo \$pid > ~/instant4d.pid; \
    $show wait \$pid; rc=\$?; echo \$rc > ~/instant4d.rc; exit \$rc; }"
}
host_count() {
  if [[ -n "${HOSTS:-}" ]]; then echo "$HOSTS"; return; fi
  local ips
  ips=$(tpu describe "$TPU_NAME" --format='value(networkEndpoints[].ipAddress)') || return 1
  echo "$ips" | tr ';,' '\n\n' | grep -c .
}

case "${1:-}" in
  create)
    extra=()
    [[ "$SPOT" == "1" ]] && extra+=(--spot)
    tpu create "$TPU_NAME" --accelerator-type "$ACCELERATOR" --version "$RUNTIME" "${extra[@]}"
    ;;
  setup)
    here=$(cd "$(dirname "$0")/.." && pwd)
    tar -C "$here" --exclude=.git --exclude=workdirs --exclude=build --exclude=data_cache -czf /tmp/instant4d.tgz .
    tpu scp /tmp/instant4d.tgz "$TPU_NAME":/tmp/instant4d.tgz --worker=all
    on_all "mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf /tmp/instant4d.tgz && cd $REMOTE_DIR && \
      pip install -U 'jax[tpu]>=0.10,<0.11' && INSTANT4D_CUDA=0 pip install -e ."
    ;;
  run)
    set +e  # the supervision reads exit statuses itself
    n=$(host_count) || exit 1
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "launch/tpu_vm.sh: cannot tell the number of hosts (got '$n'); set HOSTS" >&2; exit 1; }
    SETSID=()
    command -v setsid > /dev/null && SETSID=(setsid)
    # shellcheck source=launch/supervise.sh
    source "$(dirname "${BASH_SOURCE[0]}")/supervise.sh"
    SUP_NAME=launch/tpu_vm.sh
    SUP_GRACE=$GRACE
    # over ssh, in the background (the loop goes on); KILL also ends the local ssh session
    sup_deliver() {
      on_host "$1" "kill -$2 \$(cat ~/instant4d.pid) 2>/dev/null" < /dev/null > /dev/null 2>&1 &
      [[ "$2" == KILL ]] && { sleep 2; kill -KILL "${SUP_PIDS[$1]}" 2>/dev/null; } &
    }
    sup_trap_signals
    for ((i = 0; i < n; i++)); do
      show=0
      [[ $i -eq 0 ]] && show=1
      # own sessions: a terminal's Ctrl-C reaches the hosts only through the trap (as SIGTERM)
      ${SETSID[@]+"${SETSID[@]}"} gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker="$i" --project "$PROJECT" \
        --zone "$ZONE" --command "$(host_train $show)" < /dev/null &
      sup_add "$i" $!
    done
    sup_say "$n hosts of $TPU_NAME; host 0's output follows (every host: ~/instant4d.log)"
    sup_wait
    exit $?
    ;;
  train)
    on_all "cd $REMOTE_DIR && rm -f ~/instant4d.rc && nohup sh -c '$PYTHON -m jax_instant4d.cli train \
      --config $CONFIG --workdir $WORKDIR --distributed on $OVERRIDES & echo \$! > ~/instant4d.pid; wait \$!; \
      echo \$? > ~/instant4d.rc' > ~/instant4d.log 2>&1 &"
    ;;
  logs)
    tpu ssh "$TPU_NAME" --worker=0 --command "tail -f ~/instant4d.log"
    ;;
  status)
    on_all "if [ -f ~/instant4d.rc ]; then echo \"\$(hostname): exited with \$(cat ~/instant4d.rc)\"; \
      else echo \"\$(hostname): running\"; fi"
    ;;
  stop)
    # SIGTERM to the training process (~/instant4d.pid), then SIGKILL after GRACE seconds
    on_all "pid=\$(cat ~/instant4d.pid); kill -TERM \$pid 2>/dev/null; for i in \$(seq $GRACE); do \
      kill -0 \$pid 2>/dev/null || exit 0; sleep 1; done; kill -KILL \$pid"
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    sed -n '2,53p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
