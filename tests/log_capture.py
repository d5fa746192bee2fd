"""The package's log messages in a test: ``with captured() as messages: ...`` collects what the
``jax_instant4d`` loggers (or the one named) emit at INFO and above, whether or not the CLI's
``setup_logging`` has stopped them propagating to the root logger (where pytest's ``caplog`` listens)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _Messages(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@contextlib.contextmanager
def captured(name: str = "jax_instant4d") -> Iterator[list[str]]:
    messages: list[str] = []
    logger, handler = logging.getLogger(name), _Messages(messages)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
