#!/usr/bin/env bash
# Multi-host training on a Cloud TPU VM slice (e.g. v5p-32: 4 hosts x 4 chips): the same command runs
# on every host (gcloud --worker=all); JAX finds the other hosts through the TPU metadata
# (--distributed on), and every host feeds its own share of each batch.
#
#   launch/tpu_vm.sh create     # create the TPU VM slice
#   launch/tpu_vm.sh setup      # copy this checkout to every host and install it
#   launch/tpu_vm.sh train      # start training on every host (in the background, logs in ~/instant4d.log)
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
#   GRACE          seconds between SIGTERM and SIGKILL in `stop` (default: 120)
#
# Contract (as far as separate hosts allow; see launch/local.sh): a host whose process dies makes the
# others exit within train.heartbeat_timeout_s (JAX's coordination service declares it dead; each
# survivor logs which process is gone and exits with status 75); `status` shows every host's exit
# status (~/instant4d.rc); `stop` forwards SIGTERM and kills what is left after GRACE seconds.
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

tpu() { gcloud compute tpus tpu-vm "$@" --project "$PROJECT" --zone "$ZONE"; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command "$1"; }

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
  train)
    on_all "cd $REMOTE_DIR && rm -f ~/instant4d.rc && nohup sh -c 'python -m jax_instant4d.cli train \
      --config $CONFIG --workdir $WORKDIR --distributed on $OVERRIDES; echo \$? > ~/instant4d.rc' \
      > ~/instant4d.log 2>&1 & echo \$! > ~/instant4d.pid"
    ;;
  logs)
    tpu ssh "$TPU_NAME" --worker=0 --command "tail -f ~/instant4d.log"
    ;;
  status)
    on_all "if [ -f ~/instant4d.rc ]; then echo \"\$(hostname): exited with \$(cat ~/instant4d.rc)\"; \
      else echo \"\$(hostname): running\"; fi"
    ;;
  stop)
    # SIGTERM to the training process (the child of the sh wrapper), then SIGKILL after GRACE seconds
    on_all "pkill -TERM -P \$(cat ~/instant4d.pid) 2>/dev/null; for i in \$(seq ${GRACE:-120}); do \
      pgrep -P \$(cat ~/instant4d.pid) > /dev/null || exit 0; sleep 1; done; pkill -KILL -P \$(cat ~/instant4d.pid)"
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
