"""How segsweep's log lines reach a terminal: the command installs this handler, and so does
every worker process a sweep starts (a spawned process begins without its parent's handlers).
A library leaves handlers to its caller; these are the caller's."""
from __future__ import annotations

import logging
import sys


class StreamByLevel(logging.Handler):
    """What the library logs, as the command has always printed it: INFO and below on stdout,
    warnings and errors on stderr, the message alone."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a closed pipe must not turn a log line into a crash
            self.handleError(record)


def install_log_handler() -> None:
    """Show the library's `segsweep.*` INFO lines (once, however often it is called)."""
    logger = logging.getLogger("segsweep")
    if not any(isinstance(h, StreamByLevel) for h in logger.handlers):
        handler = StreamByLevel()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
