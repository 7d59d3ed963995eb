"""Logging set up from the `--log-*` flags, in Triton's `default` or `ISO8601` line format."""

from __future__ import annotations

import logging
import sys
import time

from naiad.config.settings import ServerSettings


class TritonFormatter(logging.Formatter):
    """`I1122 20:07:00.123456 4242 naiad.core] message` (default) or `2026-11-22T20:07:00Z I 4242 ...`."""

    def __init__(self, iso8601: bool) -> None:
        super().__init__()
        self._iso = iso8601

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname[0]
        if self._iso:
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
    def __init__(self, settings: ServerSettings) -> None:
        super().__init__()
        self._info = settings.log_info
        self._warning = settings.log_warning
        self._error = settings.log_error
        self._verbose = settings.log_verbose > 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return self._error
        if record.levelno >= logging.WARNING:
            return self._warning
        if record.levelno >= logging.INFO:
            return self._info
        return self._verbose


def configure(settings: ServerSettings) -> None:
    """Send naiad's and the models' log records to stderr (or --log-file) with the levels the flags allow."""
    handler: logging.Handler
    if settings.log_file:
        handler = logging.FileHandler(settings.log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TritonFormatter(settings.log_format == "ISO8601"))
    handler.addFilter(_LevelFilter(settings))
    logger = logging.getLogger("naiad")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if settings.log_verbose > 0 else logging.INFO)
    logger.propagate = False
