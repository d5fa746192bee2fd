"""One builder per cache entry across processes: an exclusive ``flock`` held while an entry is made.

The caches beside a dataset (the dataset itself, the teacher's motion encoder, the expression regressor)
are each written atomically, so processes that build the same entry at once never corrupt it; but every
one of them pays for the whole build (minutes of the same work, each at half speed on a shared machine:
``instant4d sweep ... launch --parallel 2`` on a fresh data directory, or two engineers starting runs
on one ``data_cache``). With the lock the first process builds; the others wait, then find the entry
made and load it (:func:`load_or_make`; :func:`building` is the lock alone)::

    if not done():
        with building(path, "motion teacher"):
            if not done():          # made by another process while this one waited
                make()

The lock is advisory and lives in a hidden file beside the entry (``.<name>.lock``; the operating system
releases it when its holder exits or is killed, so a killed builder never blocks the next one). Where the
file system refuses locks, a warning says so and the build goes on unlocked (as before: correct, but
possibly repeated).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger("jax_instant4d")

T = TypeVar("T")


def lock_path(entry: str | os.PathLike) -> Path:
    """The lock file of a cache entry (a file or a folder): ``.<name>.lock`` in the same folder."""
    entry = Path(entry)
    return entry.with_name(f".{entry.name}.lock")


@contextlib.contextmanager
def building(entry: str | os.PathLike, what: str) -> Iterator[float]:
    """Holds the exclusive lock of ``entry`` for the ``with`` block; yields the seconds spent waiting for
    another process that held it (0.0 when it was free). ``what`` names the entry in the waiting message."""
    path = lock_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        t0 = time.monotonic()
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("%s: another process is making %s; waiting for it", what, entry)
                fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:  # e.g. ENOLCK on a file system without locks
            logger.warning("%s: cannot lock %s (%s); making %s without a lock", what, path, e.strerror or e, entry)
            yield 0.0
            return
        try:
            yield time.monotonic() - t0
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_or_make(entry: str | os.PathLike, what: str, load: Callable[[], T], make: Callable[[], T],
                 done: Callable[[], bool] | None = None) -> T:
    """``load()`` when the entry is made (``done()``; default: ``entry`` is a file), else ``make()`` under the
    entry's lock, or ``load()`` after all when another process made it while this one waited."""
    done = done or Path(entry).is_file
    if done():
        return load()
    with building(entry, what):
        if done():
            return load()
        return make()
