#!/usr/bin/env bash
# Runs N training processes on this machine, connected through jax.distributed (gloo collectives on
# CPU): the real multi-host code path on one box. Each process gets its own host CPU devices and
# feeds its own share of every batch; process 0 writes the logs.
#
#   launch/local.sh N [instant4d train arguments...]
#   launch/local.sh 2 --config configs/small.py --config.train.steps=20
#
# Variables (all optional):
#   DEVICES_PER_PROCESS  host CPU devices per process (default 1); the mesh spans N x this many devices
#   PORT                 coordinator port on 127.0.0.1 (default: a free port)
#   LOG_DIR              where process_<i>.log go (default: ./workdirs/local_logs)
#   PYTHON               interpreter (default: python3)
#   INSTANT4D_ENTRY      command each process runs (default: "$PYTHON -m jax_instant4d.cli train");
#                        it receives the arguments above plus --coordinator_address, --num_processes
#                        and --process_id
#   JAX_PLATFORMS        default "cpu" (set it to "" to let each process pick accelerators)
#   GRACE                seconds between SIGTERM and SIGKILL when stopping the others (default 10)
#
# Process 0's output is shown and also written to LOG_DIR/process_0.log.
#
# Contract: when any process exits non-zero, the others get SIGTERM, then SIGKILL after GRACE seconds
# (default 10), and the launcher exits with that first failure's status. SIGTERM or Ctrl-C to the
# launcher is forwarded as SIGTERM to the live processes (each writes a checkpoint at a step they agree
# on, then exits); the launcher waits for them and exits with the first non-zero status, else 0. A
# second Ctrl-C / SIGTERM kills them at once. The processes run in their own sessions (setsid), so a
# terminal's Ctrl-C reaches them only through the launcher.
set -uo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
N=$1
shift

PYTHON=${PYTHON:-python3}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
LOG_DIR=${LOG_DIR:-workdirs/local_logs}
GRACE=${GRACE:-10}
ENTRY=${INSTANT4D_ENTRY:-"$PYTHON -m jax_instant4d.cli train"}
if [[ -z "${PORT:-}" ]]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || exit 1
fi
export JAX_PLATFORMS=${JAX_PLATFORMS-cpu}
mkdir -p "$LOG_DIR" || exit 1
SETSID=()
command -v setsid > /dev/null && SETSID=(setsid)

# shellcheck source=launch/supervise.sh
source "$(dirname "${BASH_SOURCE[0]}")/supervise.sh" || exit 1
SUP_NAME=launch/local.sh
SUP_GRACE=$GRACE
sup_deliver() { kill -s "$2" "${SUP_PIDS[$1]}" 2>/dev/null; }
sup_trap_signals

for ((i = 0; i < N; i++)); do
  log="$LOG_DIR/process_$i.log"
  # shellcheck disable=SC2086  # ENTRY is a command line
  if [[ $i -eq 0 ]]; then
    XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS ${XLA_FLAGS:-}" \
      ${SETSID[@]+"${SETSID[@]}"} $ENTRY "$@" --coordinator_address "127.0.0.1:$PORT" --num_processes "$N" --process_id "$i" \
      > >(tee "$log") 2>&1 &
  else
    XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS ${XLA_FLAGS:-}" \
      ${SETSID[@]+"${SETSID[@]}"} $ENTRY "$@" --coordinator_address "127.0.0.1:$PORT" --num_processes "$N" --process_id "$i" \
      > "$log" 2>&1 &
  fi
  sup_add "$i" $!
done
sup_say "$N processes (${DEVICES_PER_PROCESS} device(s) each), coordinator 127.0.0.1:$PORT, logs in $LOG_DIR"

sup_wait
status=$?
wait 2>/dev/null  # the tee of process 0
exit "$status"
