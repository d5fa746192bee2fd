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
#
# Process 0's output is shown and also written to LOG_DIR/process_0.log. If any process fails, the
# others are stopped. Ctrl-C or SIGTERM is forwarded to every process as SIGTERM, which makes them
# write a checkpoint at a step they agree on and exit (preemption). Exit status: the first failure's,
# else 0.
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
N=$1
shift

PYTHON=${PYTHON:-python3}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
LOG_DIR=${LOG_DIR:-workdirs/local_logs}
ENTRY=${INSTANT4D_ENTRY:-"$PYTHON -m jax_instant4d.cli train"}
if [[ -z "${PORT:-}" ]]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
export JAX_PLATFORMS=${JAX_PLATFORMS-cpu}
mkdir -p "$LOG_DIR"

declare -a PIDS=()
stop_all() {  # $1: signal
  for pid in "${PIDS[@]}"; do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}
trap 'stop_all TERM' INT TERM

for ((i = 0; i < N; i++)); do
  log="$LOG_DIR/process_$i.log"
  # shellcheck disable=SC2086  # ENTRY is a command line
  if [[ $i -eq 0 ]]; then
    XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS ${XLA_FLAGS:-}" \
      $ENTRY "$@" --coordinator_address "127.0.0.1:$PORT" --num_processes "$N" --process_id "$i" \
      > >(tee "$log") 2>&1 &
  else
    XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS ${XLA_FLAGS:-}" \
      $ENTRY "$@" --coordinator_address "127.0.0.1:$PORT" --num_processes "$N" --process_id "$i" \
      > "$log" 2>&1 &
  fi
  PIDS+=($!)
done
echo "launch/local.sh: $N processes (${DEVICES_PER_PROCESS} device(s) each), coordinator 127.0.0.1:$PORT," \
  "logs in $LOG_DIR" >&2

status=0
remaining=$N
while [[ $remaining -gt 0 ]]; do
  finished=""
  set +e
  wait -n -p finished "${PIDS[@]}"
  code=$?
  set -e
  if [[ -z "${finished:-}" ]]; then  # interrupted by a trapped signal: keep waiting for the processes
    continue
  fi
  remaining=$((remaining - 1))
  declare -a LEFT=()
  for pid in "${PIDS[@]}"; do
    [[ "$pid" != "$finished" ]] && LEFT+=("$pid")
  done
  PIDS=("${LEFT[@]+"${LEFT[@]}"}")
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code
    echo "launch/local.sh: process $finished exited with $code; stopping the others" >&2
    stop_all TERM
    sleep 5
    stop_all KILL
  fi
done
wait || true
exit "$status"
