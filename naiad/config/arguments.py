"""The values of naiad's tritonserver-style flags as argparse types: booleans, ports, numbers, summary quantiles,
`--backend-config` and `--metrics-config` entries, each refused with a message that says what was expected."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from naiad.config.settings import check_backend_setting

_TRUE = frozenset({"true", "1", "on", "yes"})
_FALSE = frozenset({"false", "0", "off", "no"})


def boolean(text: str) -> bool:
    """tritonserver's booleans: true/false, 1/0, on/off, yes/no."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def port(text: str) -> int:
    """A port number, 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got '{text}'") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535")
    return port


def at_least(minimum: int) -> Callable[[str], int]:
    """An integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be greater than {minimum - 1}" if minimum else "must be 0 or more")
        return value

    return parse


positive = at_least(1)
non_negative = at_least(0)


def positive_float(text: str) -> float:
    """A number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def quantiles(text: str) -> tuple[tuple[float, float], ...]:
    """Triton's summary_quantiles: `<quantile>:<error>` pairs separated by commas, each number in [0, 1]."""
    pairs: list[tuple[float, float]] = []
    for item in text.split(","):
        quantile, colon, error = item.strip().partition(":")
        try:
            pair = (float(quantile), float(error))
        except ValueError:
            pair = (-1.0, -1.0)
        if not colon or not all(0.0 <= number <= 1.0 for number in pair):
            raise argparse.ArgumentTypeError(
                f"summary_quantiles: expected <quantile>:<error> pairs of numbers from 0 to 1 separated by commas "
                f"(e.g. 0.5:0.05,0.9:0.01), got '{item.strip()}'"
            )
        pairs.append(pair)
    return tuple(pairs)


def latency_flag(name: str) -> Callable[[str], bool]:
    """A boolean of --metrics-config, its name in the error."""

    def parse(text: str) -> bool:
        try:
            return boolean(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{name}: {exc}") from None

    return parse


# What --metrics-config accepts, as in tritonserver, and how each value is read.
METRICS_CONFIG: dict[str, Callable[[str], object]] = {
    "counter_latencies": latency_flag("counter_latencies"),
    "summary_latencies": latency_flag("summary_latencies"),
    "histogram_latencies": latency_flag("histogram_latencies"),
    "summary_quantiles": quantiles,
}


def backend_config(text: str) -> tuple[str, str, str]:
    """One `--backend-config [BACKEND,]SETTING=VALUE`, as (backend or "" for all, setting, value)."""
    scope, comma, assignment = text.partition(",")
    if not comma:
        scope, assignment = "", text
    setting, equals, value = assignment.partition("=")
    setting, value = setting.strip(), value.strip()
    if not equals or not setting:
        raise argparse.ArgumentTypeError(f"expected [BACKEND,]SETTING=VALUE, got '{text}'")
    refusal = check_backend_setting(scope.strip(), setting, value)
    if refusal:
        raise argparse.ArgumentTypeError(refusal)
    return scope.strip(), setting, value


def metrics_config(text: str) -> tuple[str, str]:
    """One `--metrics-config KEY=VALUE`, checked; the value is read again when the settings are built."""
    key, equals, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not equals:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    parse = METRICS_CONFIG.get(key)
    if parse is None:
        raise argparse.ArgumentTypeError(f"unknown setting '{key}'; naiad knows {', '.join(sorted(METRICS_CONFIG))}")
    parse(value)
    return key, value
