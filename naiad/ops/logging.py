"""Logging set up from the `--log-*` flags, in Triton's `default` or `ISO8601` line format."""

from __future__ import annotations

import logging
import sys
import time

from naiad.config.log_levels import LogLevels
from naiad.config.settings import ServerSettings


class TritonFormatter(logging.Formatter):
    """`I1122 20:07:00.123456 4242 naiad.core] message` (default) or `2026-11-22T20:07:00Z I 4242 ...`."""

    def __init__(self, levels: LogLevels) -> None:
        super().__init__()
        self._levels = levels

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname[0]
        if self._levels.iso8601:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            head = f"{stamp} {level} {record.process} {record.name}]"
        else:
            local = time.localtime(record.created)
            micros = int((record.created % 1) * 1_000_000)
            head = f"{level}{time.strftime('%m%d %H:%M:%S', local)}.{micros:06d} {record.process} {record.name}]"
        text = f"{head} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _LevelFilter(logging.Filter):
    def __init__(self, levels: LogLevels) -> None:
        super().__init__()
        self._levels = levels

    def filter(self, record: logging.LogRecord) -> bool:
        levels = self._levels
        if record.levelno >= logging.ERROR:
            return levels.error
        if record.levelno >= logging.WARNING:
            return levels.warning
        if record.levelno >= logging.INFO:
            return levels.info
        return levels.verbose > 0


def configure(settings: ServerSettings) -> LogLevels:
    """Send naiad's and the models' log records to stderr (or --log-file) with the levels the flags allow; the
    levels returned can be changed while serving."""
    levels = LogLevels.from_settings(settings)
    handler: logging.Handler
    if settings.log_file:
        handler = logging.FileHandler(settings.log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TritonFormatter(levels))
    install(handler, levels)
    return levels


def install(handler: logging.Handler, levels: LogLevels) -> None:
    """Make `handler` the one that naiad's and the models' records go to, showing only what `levels` allow."""
    handler.addFilter(_LevelFilter(levels))
    logger = logging.getLogger("naiad")
    logger.handlers[:] = [handler]
    levels.apply_verbosity()
    logger.propagate = False
