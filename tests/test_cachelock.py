"""One builder per cache entry across processes (``jax_instant4d.cachelock``): a process that finds another
making the entry waits for it and then uses what it made, and a killed builder never blocks the next one.
(The teacher encoder's cache: ``tests/test_motion_teacher.py``.)"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import call_while_another_holds_the_lock, child_env

from jax_instant4d.cachelock import building, lock_path
from jax_instant4d.config import apply_overrides
from jax_instant4d.data import builders, pipeline

ROOT = Path(__file__).resolve().parents[1]

HOLDER = r"""
import sys, time
from jax_instant4d.cachelock import building
with building(sys.argv[1], "test"):
    print("held", flush=True)
    time.sleep(600)
"""


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _waiting_logged(caplog) -> bool:
    return any("another process is making" in r.getMessage() for r in caplog.records)


def test_a_killed_builder_releases_the_lock_to_the_process_waiting_for_it(tmp_path, caplog):
    entry = tmp_path / "cache" / "thing.bin"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(entry)], env=child_env(PYTHONPATH=str(ROOT)),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waited = {}

        def wait():
            with building(entry, "test") as seconds:
                waited["s"] = seconds

        with caplog.at_level(logging.INFO, logger="jax_instant4d"):
            t = threading.Thread(target=wait)
            t.start()
            _wait_for(lambda: _waiting_logged(caplog))
            time.sleep(0.3)
            assert t.is_alive() and not waited  # still blocked behind the holder
            holder.send_signal(signal.SIGKILL)
            t.join(timeout=60)
        assert not t.is_alive() and waited["s"] >= 0.3
        assert lock_path(entry) == entry.parent / ".thing.bin.lock" and lock_path(entry).is_file()
        assert not entry.exists()  # the lock makes nothing itself
    finally:
        holder.kill()
        holder.wait()


def test_a_second_dataset_build_waits_and_reads_the_first(real_run, tmp_path, caplog, monkeypatch):
    """The real ``ensure_dataset`` while another process holds the dataset's lock: it waits, generates
    nothing, and returns the dataset the holder put in place."""
    _, real_cfg = real_run
    made = pipeline.dataset_path(real_cfg)
    cfg = apply_overrides(real_cfg, [f"data.data_dir={tmp_path / 'data'}"])
    final = pipeline.dataset_path(cfg)
    assert final != made and not final.exists()
    builds = []
    real_prepare = builders.prepare_atomically
    monkeypatch.setattr(builders, "prepare_atomically", lambda *a, **k: builds.append(a) or real_prepare(*a, **k))
    got = call_while_another_holds_the_lock(final, lambda: pipeline.ensure_dataset(cfg, progress=False),
                                            lambda: shutil.copytree(made, final), caplog)
    assert got == final and builders.is_complete(final)
    assert builds == []  # it read the holder's dataset and generated none
