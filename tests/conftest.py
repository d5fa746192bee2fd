"""Shared test set-up: four host CPU devices (for shard_map / mesh tests), XLA's backend optimisations off,
one persistent compilation cache for the session, and small helpers."""

import atexit
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

# Must run before any JAX backend is initialised: every test process sees 4 CPU devices.
jax.config.update("jax_num_cpu_devices", 4)

# The tests check our code, not XLA's optimiser: with its backend optimisations off, compiling the tests' real
# train step takes 30% less time and running it 1.4x more, and the suite runs few steps of many programs (the
# trade is measured in the README, "How long the tests take"). Read by XLA when the backend starts, so set before
# any test runs; processes the tests launch get it through ``child_env``.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

# One persistent compilation cache for the whole session, its pytest-xdist workers and the processes it launches,
# in a fresh folder: a program several tests compile (the tiny real train step, a relaunched worker's step)
# compiles once; the time the suite takes does not depend on what earlier sessions left in the user's cache
# (``train.compilation_cache`` "user", training's default, keeps a folder JAX was given); and the tests write
# nothing there. INSTANT4D_TEST_XLA_CACHE names a folder to keep between sessions instead (results do not
# depend on it). The process that makes the folder (pytest's main process) removes it at exit.
TEST_XLA_CACHE = os.environ.get("INSTANT4D_TEST_XLA_CACHE") or os.environ.get("_INSTANT4D_SESSION_XLA_CACHE")
if not TEST_XLA_CACHE:
    TEST_XLA_CACHE = os.environ["_INSTANT4D_SESSION_XLA_CACHE"] = tempfile.mkdtemp(prefix="instant4d-tests-xla-")
    atexit.register(shutil.rmtree, TEST_XLA_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = TEST_XLA_CACHE
jax.config.update("jax_compilation_cache_dir", TEST_XLA_CACHE)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a process a test launches: this one's, with ``XLA_FLAGS`` only
    :data:`TEST_XLA_FLAGS` (no device count forced on it; the launcher or ``extra`` sets what it needs)."""
    return {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS, **extra}


def call_while_another_holds_the_lock(entry, call, make_entry, caplog, timeout: float = 60.0):
    """Runs ``call()`` in a thread while this process holds the cache lock of ``entry`` (``cachelock``) on a
    file of its own, as another process would (``flock`` locks belong to an open file). Once ``call`` has
    logged that it waits, runs ``make_entry()`` (what the other process made) and releases the lock.
    Returns what ``call()`` returned; fails if it did not wait or did not return."""
    import fcntl
    import logging
    import threading
    import time

    from jax_instant4d.cachelock import lock_path

    path = lock_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    got = {}
    t = threading.Thread(target=lambda: got.update(value=call()), daemon=True)
    with open(path, "a") as other, caplog.at_level(logging.INFO, logger="jax_instant4d"):
        fcntl.flock(other, fcntl.LOCK_EX)
        try:
            t.start()
            end = time.monotonic() + timeout
            while not any("another process is making" in r.getMessage() for r in caplog.records):
                assert t.is_alive() and time.monotonic() < end, "the call did not wait for the lock"
                time.sleep(0.05)
            make_entry()
            assert t.is_alive(), "the call went on while the lock was held"
        finally:
            fcntl.flock(other, fcntl.LOCK_UN)
    t.join(timeout)
    assert "value" in got, "the call did not return after the lock was released"
    return got["value"]


def has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """A real Instant4D work directory (checkpoint 0, initial parameters) and its tiny dataset.

    Returns ``(workdir, cfg)``; see ``tests/real_checkpoint.py``. Shared by the animate, eval and export
    tests (about 20 s to create)."""
    from real_checkpoint import ensure_data, tiny_real_config, write_checkpoint

    root = tmp_path_factory.mktemp("real_run")
    cfg = tiny_real_config(root / "run", root / "data")
    ensure_data(cfg)
    return write_checkpoint(cfg), cfg
