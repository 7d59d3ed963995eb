"""Model `parameters` values as Triton's backends read them: booleans (true/on/1, false/off/0) and integers, with
errors that name the parameter and the model."""

from __future__ import annotations

from collections.abc import Mapping

from naiad.domain.errors import invalid

_TRUE = ("true", "on", "1")
_FALSE = ("false", "off", "0")


def flag(parameters: Mapping[str, str], key: str, default: bool, model: str) -> bool:
    """`parameters[key]` as a boolean, `default` when absent."""
    text = parameters.get(key)
    if text is None:
        return default
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise invalid(f"failed to convert '{text}' to boolean for parameter {key} of model '{model}'")


def integer(parameters: Mapping[str, str], key: str, model: str) -> int:
    """`parameters[key]` as an integer, 0 when absent."""
    text = parameters.get(key)
    if text is None:
        return 0
    try:
        return int(text)
    except ValueError:
        raise invalid(f"failed to convert '{text}' to integral number for parameter {key} of model '{model}'") from None
