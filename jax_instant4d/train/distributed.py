"""Multi-process set-up (``jax.distributed``) and preemption notices.

This is, with the launchers, the only place that reads the environment. Call :func:`initialize`
first thing in ``main()``, before anything touches a JAX device (never at import: grain worker
processes re-import modules).
"""

from __future__ import annotations

import os
import signal
import threading

import jax


def detect_cluster() -> str | None:
    """Name of the multi-process environment this process runs in (``None`` for a single process).

    Recognised: SLURM with more than one task, Open MPI with more than one rank, multi-host TPU VMs
    (``TPU_WORKER_HOSTNAMES`` listing several hosts, or multislice ``MEGASCALE_*``), and an explicit
    ``JAX_COORDINATOR_ADDRESS`` (JAX reads it itself).
    """
    env = os.environ
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "openmpi"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env:
        return "tpu"
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "jax-env"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, mode: str = "auto") -> bool:
    """Starts ``jax.distributed`` when asked or when a cluster is detected; returns whether it did.

    ``mode``: ``"auto"`` (explicit arguments, else a detected cluster), ``"on"`` (always: JAX then
    detects the cluster itself, e.g. on TPU VMs, whose metadata server it queries) or ``"off"``.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be auto, on or off, got {mode!r}")
    if mode == "off":
        return False
    if jax.distributed.is_initialized():
        return True
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if explicit:
        if coordinator_address is None or num_processes is None or process_id is None:
            raise ValueError("--coordinator_address, --num_processes and --process_id go together")
        if int(num_processes) == 1:
            return False
        jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
        return True
    if mode == "on" or detect_cluster():
        jax.distributed.initialize()
        return True
    return False


class PreemptionWatcher:
    """Tells the step loop when to save and stop because the job is being preempted.

    With ``jax.distributed`` running, JAX's own SIGTERM handler (its preemption notifier) and
    ``reached_preemption_sync_point`` make all processes agree on one step. A single process
    installs a SIGTERM handler of its own that sets a flag.
    """

    def __init__(self, distributed: bool):
        self.distributed = distributed
        self._flag = threading.Event()
        self._previous = None
        if not distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        self._flag.set()

    def reached(self, step: int) -> bool:
        """Whether to checkpoint and stop after ``step`` (every process must call this every step)."""
        if self.distributed:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(int(step)))
            except RuntimeError:  # the preemption service is disabled
                return False
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
