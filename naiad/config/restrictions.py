"""API restrictions by header (`--http-restricted-api`, `--grpc-restricted-protocol`): which calls need which header
and value, by Triton's API categories."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

CATEGORIES = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
# gRPC clients send the header under this prefix (`triton-grpc-protocol-<key>`), as tritonserver expects.
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


@dataclass(frozen=True, slots=True)
class Restriction:
    """The header a restricted call must carry, and its value."""

    key: str
    value: str


Restrictions = Mapping[str, Restriction]  # category -> the header it needs
NO_RESTRICTIONS: Restrictions = MappingProxyType({})


class RestrictionError(ValueError):
    """A restriction flag that cannot be used: the message says why."""


def parse_restrictions(specs: Sequence[str], flag: str) -> Restrictions:
    """`<category>,<category>,...:<key>=<value>` per flag, as tritonserver takes them; a category may appear in one
    flag only."""
    found: dict[str, Restriction] = {}
    for spec in specs:
        categories, colon, header = spec.partition(":")
        key, equals, value = header.partition("=")
        if not colon or not equals or not categories.strip() or not key.strip():
            raise RestrictionError(
                f"{flag} '{spec}': expected <api>,<api>,...:<key>=<value>, "
                "e.g. model-repository,logging:admin-key=s3cret"
            )
        for category in (name.strip() for name in categories.split(",")):
            if category not in CATEGORIES:
                raise RestrictionError(
                    f"{flag} '{spec}': unknown API '{category}'; the APIs are {', '.join(CATEGORIES)}"
                )
            if category in found:
                raise RestrictionError(f"{flag}: API '{category}' is restricted twice; name each API in one flag only")
            found[category] = Restriction(key.strip().lower(), value)
    return MappingProxyType(found)
