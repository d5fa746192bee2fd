"""Multi-process set-up (``jax.distributed``), waiting for process 0, lost peers, preemption notices and
the persistent compilation cache.

This is, with the launchers, the only place that reads the environment. Call :func:`initialize`
first thing in ``main()``, before anything touches a JAX device (never at import: grain worker
processes re-import modules).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """Another process failed, vanished, or did not answer in time."""


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
               process_id: int | None = None, mode: str = "auto", *, init_timeout_s: int = 300,
               heartbeat_timeout_s: int = 60, shutdown_timeout_s: int = 60) -> bool:
    """Starts ``jax.distributed`` when asked or when a cluster is detected; returns whether it did.

    ``mode``: ``"auto"`` (explicit arguments, else a detected cluster), ``"on"`` (always: JAX then
    detects the cluster itself, e.g. on TPU VMs, whose metadata server it queries) or ``"off"``.
    Timeouts (seconds; ``train.init_timeout_s`` / ``heartbeat_timeout_s`` / ``shutdown_timeout_s``):
    waiting for every process to connect; a process that sends no heartbeat for this long is declared
    dead and the others stop; the barrier at exit.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be auto, on or off, got {mode!r}")
    if mode == "off":
        return False
    if jax.distributed.is_initialized():
        return True
    timeouts = dict(initialization_timeout=int(init_timeout_s), heartbeat_timeout_seconds=int(heartbeat_timeout_s),
                    shutdown_timeout_seconds=int(shutdown_timeout_s))
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if explicit:
        if coordinator_address is None or num_processes is None or process_id is None:
            raise ValueError("--coordinator_address, --num_processes and --process_id go together")
        if int(num_processes) == 1:
            return False
        jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id), **timeouts)
        return True
    if mode == "on" or detect_cluster():
        jax.distributed.initialize(**timeouts)
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


# --------------------------------------------------------------------------------------------------
# Process 0 prepares, the others wait (through the coordination service, never a device collective)
# --------------------------------------------------------------------------------------------------


def _client():
    from jax._src import distributed as jd  # the coordination-service client JAX itself uses

    client = jd.global_state.client
    if client is None:
        raise DistributedError("jax.distributed is not initialised")
    return client


def lead_prepares(key: str, prepare: Callable[[], str], timeout_s: float, what: str | None = None) -> str:
    """Process 0 runs ``prepare()`` and publishes the string it returns under ``key`` in the
    coordination service's key-value store; every other process waits for it (at most ``timeout_s``
    seconds). Returns that string on every process (with one process: ``prepare()``).

    Waiting is a key-value lookup, not a collective, so it does not time out after gloo's 30 s while
    process 0 works for minutes. If ``prepare`` raises on process 0, the others raise
    :class:`DistributedError` with its message at once. ``what`` names the work in messages.
    """
    what = what or key
    if jax.process_count() == 1:
        return prepare()
    key = f"instant4d/{key}"
    client = _client()
    if jax.process_index() == 0:
        try:
            result = str(prepare())
        except BaseException as e:
            client.key_value_set(key, f"error: {type(e).__name__}: {e}".splitlines()[0], allow_overwrite=True)
            raise
        client.key_value_set(key, f"ok: {result}", allow_overwrite=True)
        return result
    log.info("process %d: waiting for process 0 to prepare %s (at most %.0f s)", jax.process_index(), what,
             timeout_s)
    try:
        value = client.blocking_key_value_get(key, int(timeout_s * 1000))
    except Exception as e:  # the coordination service raises its own error types
        if "DEADLINE_EXCEEDED" in str(e) or "timed out" in str(e).lower():
            raise DistributedError(f"process {jax.process_index()}: process 0 did not finish preparing {what} "
                                   f"within {timeout_s:.0f} s") from None
        raise DistributedError(f"process {jax.process_index()}: lost contact with process 0 while waiting "
                               f"for {what}: {str(e).splitlines()[0]}") from None
    if not value.startswith("ok: "):
        raise DistributedError(f"process {jax.process_index()}: process 0 failed to prepare {what}: "
                               f"{value.removeprefix('error: ')}")
    return value.removeprefix("ok: ")


def all_flags(name: str, flag: bool, timeout_s: float) -> list[bool]:
    """Every process's ``flag`` (index = process), exchanged through the key-value store under a
    ``name`` unique to this exchange. With one process: ``[flag]``."""
    if jax.process_count() == 1:
        return [bool(flag)]
    client = _client()
    client.key_value_set(f"instant4d/{name}/{jax.process_index()}", "1" if flag else "0", allow_overwrite=True)
    out = []
    for i in range(jax.process_count()):
        try:
            out.append(client.blocking_key_value_get(f"instant4d/{name}/{i}", int(timeout_s * 1000)) == "1")
        except Exception as e:  # the coordination service raises its own error types
            raise DistributedError(f"process {jax.process_index()}: no answer from process {i} for {name} within "
                                   f"{timeout_s:.0f} s ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                   ) from None
    return out


# --------------------------------------------------------------------------------------------------
# Lost peers
# --------------------------------------------------------------------------------------------------


class PeerWatchdog:
    """Ends this process with a one-line message when another process of the run is gone.

    A process killed with -9 (or by the OOM killer) leaves the others blocked in a collective until
    JAX's coordination service misses its heartbeats for ``heartbeat_timeout_s`` and aborts them with a
    C++ stack trace. This thread keeps a heartbeat of its own in the service's key-value store (a
    counter it advances every ``heartbeat_timeout_s / 20`` seconds, at most every 0.25 s) and watches
    the others' (``close`` marks this process as done, so it may exit first). A process whose counter
    stood still for ``0.35 * heartbeat_timeout_s`` (after it was first seen), or a coordinator (process
    0) that no longer answers, is reported in one line and this process exits with status
    ``exit_code`` (the blocked main thread cannot unwind), before JAX's own abort (which comes half a
    timeout or more after the last heartbeat). Without ``jax.distributed``: does nothing.
    """

    def __init__(self, distributed: bool, heartbeat_timeout_s: float = 60.0, exit_code: int = 75):
        self._stop = threading.Event()
        self._thread = None
        self.period = max(0.25, float(heartbeat_timeout_s) / 20)
        self.lost_after = 0.35 * float(heartbeat_timeout_s)
        self.exit_code = int(exit_code)
        if distributed and jax.process_count() > 1:
            self._thread = threading.Thread(target=self._run, name="instant4d-peer-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        n, me = jax.process_count(), jax.process_index()
        client = _client()
        beat, seen = 0, {}  # process -> (last counter, monotonic time it changed)
        while not self._stop.is_set():
            beat += 1
            now = time.monotonic()
            lost = None
            try:
                client.key_value_set(f"instant4d/alive/{me}", str(beat), allow_overwrite=True)
                for i in range(n):
                    if i == me:
                        continue
                    try:
                        value = client.key_value_try_get(f"instant4d/alive/{i}")
                    except Exception as e:  # NOT_FOUND until that process starts its watchdog
                        if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
                            continue
                        raise
                    last = seen.get(i)
                    if value == "closed":  # that process left the step loop normally
                        continue
                    if last is None or last[0] != value:
                        seen[i] = (value, now)
                    elif now - last[1] > self.lost_after:
                        lost = f"process {i} of {n} stopped responding (no heartbeat for {now - last[1]:.0f} s)"
                        break
            except Exception as e:  # the service itself (process 0) is gone
                if me != 0:
                    text = str(e).splitlines()[0] if str(e) else type(e).__name__
                    lost = f"process 0 (the coordinator) does not answer ({text[:120]})"
            if lost and not self._stop.is_set():
                log.error("process %d: %s; stopping (rerun the same command to resume from the last complete "
                          "checkpoint)", me, lost)
                logging.shutdown()
                os._exit(self.exit_code)
            self._stop.wait(self.period)

    def settle(self) -> None:
        """Call after an error that a lost peer can cause (a collective failing with "connection reset"):
        waits long enough for the watchdog to notice a lost process (it then ends this process with its
        one-line message); returns if every process is still there."""
        if self._thread is not None and not self._stop.is_set():
            self._stop.wait(self.lost_after + 4 * self.period)

    def close(self) -> None:
        """Stops watching; the others stop watching this process (it may now exit before them)."""
        if self._thread is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=5)
            try:
                _client().key_value_set(f"instant4d/alive/{jax.process_index()}", "closed", allow_overwrite=True)
            except Exception as e:  # the service is gone already: nobody is watching
                log.debug("peer watchdog: %s", e)
        self._stop.set()


# --------------------------------------------------------------------------------------------------
# Persistent compilation cache
# --------------------------------------------------------------------------------------------------


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jax_instant4d`` (default ``~/.cache/jax_instant4d``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jax_instant4d"


def enable_compilation_cache(setting: str, workdir: str | os.PathLike) -> Path | None:
    """Turns on JAX's persistent compilation cache per ``train.compilation_cache``.

    ``"user"`` (default): ``user_cache_dir()/xla``, shared by every run of this user, so a rerun, a
    resume or another work directory with the same shapes skips compilation; ``"workdir"``:
    ``WORKDIR/xla_cache``; ``""`` / ``"off"``: off; anything else: that folder. A cache folder JAX was
    already given (``JAX_COMPILATION_CACHE_DIR``) is kept unless the setting names a folder. Returns the
    folder in use (``None`` when off). Call before the first compilation.
    """
    setting = str(setting).strip()
    if setting.lower() in ("", "off", "none", "false"):
        return None
    current = jax.config.jax_compilation_cache_dir
    if setting == "user":
        if current:
            return Path(current)
        path = user_cache_dir() / "xla"
    elif setting == "workdir":
        path = Path(workdir) / "xla_cache"
    else:
        path = Path(setting).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    if str(path) != current:
        from jax._src import compilation_cache  # JAX opens its cache once: reopen it at the new folder

        jax.config.update("jax_compilation_cache_dir", str(path))
        if compilation_cache.is_initialized():
            compilation_cache.reset_cache()
    # cache every program the step loop compiles (JAX's default skips those under a second)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    _one_cache_key_for_every_cpu_process()
    return path


def _one_cache_key_for_every_cpu_process() -> None:
    """Gives a program that spans several CPU processes the same cache key in each of them.

    JAX hashes the client's topology fingerprint into the key, and on CPU that fingerprint differs
    from process to process; only process 0 writes the cache (JAX's rule), so the other processes
    never find their keys and compile every program again at each rerun or resume (minutes for the
    train step on CPU, with every process waiting for the slowest). For such programs the devices'
    kinds, ids and processes are hashed instead (the fallback JAX uses where there is no topology),
    which is the same everywhere; accelerators and single-process programs keep JAX's key. Measured
    with two processes: the second run finds every entry in both, and computes the same values.
    """
    from jax._src import cache_key

    original = getattr(cache_key, "_hash_accelerator_config", None)
    if original is None or getattr(original, "instant4d", False) or not hasattr(cache_key, "_hash_string"):
        return  # another JAX: leave its keys alone

    def hash_accelerator_config(hash_obj, accelerators) -> None:
        devices = list(accelerators.flat)
        if devices and all(d.platform == "cpu" for d in devices) and len({d.process_index for d in devices}) > 1:
            for d in devices:
                cache_key._hash_string(hash_obj, f"{d.device_kind}/{d.id}/{d.process_index}")
        else:
            original(hash_obj, accelerators)

    hash_accelerator_config.instant4d = True
    cache_key._hash_accelerator_config = hash_accelerator_config

