"""The Prometheus text exposition format as Triton writes it: HELP and TYPE lines, samples with escaped labels, and
numbers with 16 significant digits, `Nan`, `+Inf` and `-Inf`."""

from __future__ import annotations

import math

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def number(value: float) -> str:
    """A sample value or a `le`/`quantile` bound: integers exactly, other numbers to 16 significant digits."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "Nan"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.16g}"


def labels(*pairs: tuple[str, str]) -> str:
    """Label pairs as they go between the braces: `model="m",version="1"`, values escaped."""
    return ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs)


def _escape_label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Family:
    """One metric family: its name, type, help text and samples."""

    __slots__ = ("help", "kind", "lines", "name")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.lines: list[str] = []

    def add(self, value: float, label_text: str = "", suffix: str = "") -> None:
        """One sample: `name<suffix>{labels} value`; `suffix` is a summary's or histogram's `_count`, `_sum`..."""
        if label_text:
            self.lines.append(f"{self.name}{suffix}{{{label_text}}} {number(value)}")
        else:
            self.lines.append(f"{self.name}{suffix} {number(value)}")


class Exposition:
    """Families in the order they are added; a family without samples is left out, as prometheus-cpp does."""

    def __init__(self) -> None:
        self._families: list[Family] = []

    def family(self, name: str, kind: str, help_text: str) -> Family:
        """A new family to add samples to."""
        family = Family(name, kind, help_text)
        self._families.append(family)
        return family

    def render(self) -> bytes:
        """The whole exposition, each line ending with a newline."""
        out: list[str] = []
        for family in self._families:
            if not family.lines:
                continue
            out.append(f"# HELP {family.name} {_escape_help(family.help)}")
            out.append(f"# TYPE {family.name} {family.kind}")
            out.extend(family.lines)
        out.append("")
        return "\n".join(out).encode()
