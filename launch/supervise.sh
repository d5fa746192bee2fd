# shellcheck shell=bash
# The supervision shared by launch/local.sh and launch/tpu_vm.sh (sourced, not run): N members (training
# processes, or ssh sessions that each run one) held to one contract.
#
#   * When a member exits non-zero, the live ones get SIGTERM, then SIGKILL after SUP_GRACE seconds, and
#     sup_wait returns that first failure's status (else 0).
#   * SIGTERM or SIGINT to the launcher sends SIGTERM to the live members (each checkpoints at a step they
#     agree on and exits); sup_wait returns after them. A second one sends SIGKILL.
#   * A member that has already exited (and been reaped) is never waited on again: no spinning.
#
# The caller sets SUP_NAME (prefix of the messages) and SUP_GRACE, defines
#   sup_deliver I SIGNAL   deliver SIGNAL (TERM or KILL) to member I (a local kill, or one over ssh)
# starts each member in the background and registers it with `sup_add I PID` (PID: the local process
# whose exit status is the member's), calls sup_trap_signals, then `sup_wait; status=$?`.

declare -a SUP_PIDS=()  # index = member; emptied once that member has been reaped
SUP_SIGNALS=0

sup_say() { echo "${SUP_NAME:-launcher}: $*" >&2; }

sup_add() { SUP_PIDS[$1]=$2; }

sup_signal_live() {  # $1: TERM | KILL
  local i
  [[ ${#SUP_PIDS[@]} -eq 0 ]] && return 0  # (old bash: "${!a[@]}" of an empty array fails under set -u)
  for i in "${!SUP_PIDS[@]}"; do
    [[ -n "${SUP_PIDS[i]}" ]] && sup_deliver "$i" "$1"
  done
}

sup_on_signal() {
  SUP_SIGNALS=$((SUP_SIGNALS + 1))
  if [[ $SUP_SIGNALS -eq 1 ]]; then
    sup_say "stopping: SIGTERM to the live processes (they checkpoint and exit; again to kill them)"
    sup_signal_live TERM
  else
    sup_signal_live KILL
  fi
}

sup_trap_signals() { trap sup_on_signal INT TERM; }

# Polls instead of `wait -n`: a child that bash has already reaped makes `wait -n PID...` fail at once,
# and looping on that spins forever. `kill -0` tells whether a process is still there; `wait PID` then
# returns its saved exit status, also when it was reaped long ago.
sup_wait() {
  local status=0 live=0 deadline="" i pid code
  [[ ${#SUP_PIDS[@]} -eq 0 ]] && return 0
  for i in "${!SUP_PIDS[@]}"; do
    [[ -n "${SUP_PIDS[i]}" ]] && live=$((live + 1))
  done
  while [[ $live -gt 0 ]]; do
    for i in "${!SUP_PIDS[@]}"; do
      pid=${SUP_PIDS[i]}
      [[ -z "$pid" ]] && continue
      kill -0 "$pid" 2>/dev/null && continue
      wait "$pid" 2>/dev/null
      code=$?
      SUP_PIDS[i]=""
      live=$((live - 1))
      if [[ $code -ne 0 && $status -eq 0 ]]; then
        status=$code
        if [[ $live -gt 0 ]]; then
          sup_say "process $i (pid $pid) exited with $code; stopping the others (SIGKILL after ${SUP_GRACE} s)"
          sup_signal_live TERM
          deadline=$((SECONDS + SUP_GRACE))
        fi
      fi
    done
    if [[ -n "$deadline" && $SECONDS -ge $deadline && $live -gt 0 ]]; then
      sup_say "still running after ${SUP_GRACE} s: SIGKILL"
      sup_signal_live KILL
      deadline=""
    fi
    [[ $live -gt 0 ]] && sleep 0.2
  done
  return "$status"
}
