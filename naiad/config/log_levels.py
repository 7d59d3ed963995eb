"""`LogLevels`: what the log shows (the `--log-*` flags), changeable while serving through Triton's logging API."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from naiad.config.settings import ServerSettings
from naiad.domain.errors import ErrorCode, ServerError, invalid

_SWITCHES = {"log_info": "info", "log_warning": "warning", "log_error": "error"}
_FORMATS = ("default", "ISO8601")
SETTING_NAMES = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")


@dataclass(slots=True)
class LogLevels:
    """The levels and format in force; the log handler reads them on every record."""

    info: bool = True
    warning: bool = True
    error: bool = True
    verbose: int = 0
    iso8601: bool = False
    file: str = ""

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> LogLevels:
        """The levels the command line set."""
        return cls(
            info=settings.log_info,
            warning=settings.log_warning,
            error=settings.log_error,
            verbose=settings.log_verbose,
            iso8601=settings.log_format == "ISO8601",
            file=settings.log_file,
        )

    def as_triton(self) -> dict[str, Any]:
        """Triton's logging settings object (`GET /v2/logging`)."""
        return {
            "log_file": self.file,
            "log_info": self.info,
            "log_warning": self.warning,
            "log_error": self.error,
            "log_verbose_level": self.verbose,
            "log_format": "ISO8601" if self.iso8601 else "default",
        }

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a logging request's settings (a None value leaves one as it is, as in Triton). Every setting is
        checked first: a request with one bad setting changes nothing."""
        checked = {name: _checked(name, value) for name, value in changes.items() if value is not None}
        for name, value in checked.items():
            if name in _SWITCHES:
                setattr(self, _SWITCHES[name], value)
            elif name == "log_verbose_level":
                self.verbose = value
            else:
                self.iso8601 = value == "ISO8601"
        self.apply_verbosity()

    def apply_verbosity(self) -> None:
        """Let the `naiad` logger make verbose (DEBUG) records only while they would be shown."""
        logging.getLogger("naiad").setLevel(logging.DEBUG if self.verbose > 0 else logging.INFO)


def _checked(name: str, value: Any) -> Any:
    if name == "log_file":  # CVE-2024-0087: a log file named over the network is a file written anywhere
        raise ServerError(ErrorCode.UNSUPPORTED, "log file location can not be updated through network protocol")
    if name in _SWITCHES:
        if not isinstance(value, bool):
            raise invalid(f"expect boolean for '{name}'")
        return value
    if name == "log_verbose_level":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise invalid(f"expect unsigned integer for '{name}'")
        return value
    if name == "log_format":
        if not isinstance(value, str) or value not in _FORMATS:
            raise invalid(f"invalid argument for --log_format, got: {value}")
        return value
    raise invalid(f"unknown logging setting '{name}': the settings are {', '.join(SETTING_NAMES)}")
