"""HPACK header blocks (RFC 7541): decoding with hpack's decoder, remembering blocks that leave its table alone, and
encoding as literals that need no table."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import cast

import hpack
from hpack.exceptions import HPACKError

from naiad.frontends.http2.frames import ErrorCode, ProtocolError

Fields = list[tuple[bytes, bytes]]

# A block that neither adds to nor resizes the decoder's dynamic table decodes the same way for as long as the table
# stays as it is. gRPC clients send nearly the same block on every call, indexed entries only once the first few
# calls have filled the table, so most blocks are answered from this cache. Seeing whether a block changed the table
# reads hpack's `header_table`, which is not public: the versions below were tested, any other decodes every block.
TESTED_HPACK = ("4.0.0", "4.1.0", "4.2.0")
CACHED_BLOCKS = 256
CACHED_BLOCK_SIZE = 2048  # larger blocks (big metadata) are decoded each time: the cache stays small
log = logging.getLogger("naiad.grpc")
_warned = False


class HeaderDecoder:
    """One connection's decoding context."""

    def __init__(self, max_list_size: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_list_size)
        self._cache: dict[bytes, Fields] | None = {} if _table_readable(self._decoder) else None

    def decode(self, block: bytes) -> Fields:
        cache = self._cache
        if cache is not None:
            hit = cache.get(block)
            if hit is not None:
                return hit
            table = self._decoder.header_table
            before = (table.maxsize, tuple(table.dynamic_entries))
        try:
            fields = cast(Fields, self._decoder.decode(block, raw=True))
        except HPACKError as exc:
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"bad header block: {exc}") from None
        if cache is not None:
            if (table.maxsize, tuple(table.dynamic_entries)) != before:
                cache.clear()  # the table changed: what was cached may now decode otherwise
            elif len(cache) < CACHED_BLOCKS and len(block) <= CACHED_BLOCK_SIZE:
                cache[block] = fields
        return fields


def _table_readable(decoder: hpack.Decoder) -> bool:
    global _warned
    table = getattr(decoder, "header_table", None)
    readable = hasattr(table, "maxsize") and hasattr(table, "dynamic_entries")
    if readable and hpack.__version__ in TESTED_HPACK:
        return True
    if not _warned:
        _warned = True
        log.warning(
            "hpack %s is not a version naiad was tested with (%s): every gRPC header block is decoded in full",
            hpack.__version__,
            ", ".join(TESTED_HPACK),
        )
    return False


def encode(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A block of literal fields without indexing (no dynamic table on either side, no Huffman coding)."""
    block = bytearray()
    for name, value in fields:
        block.append(0)
        block += _integer(len(name), 7)
        block += name
        block += _integer(len(value), 7)
        block += value
    return bytes(block)


def _integer(value: int, prefix_bits: int) -> bytes:
    """An HPACK integer in a first byte with `prefix_bits` free bits (its high bits zero: no Huffman flag)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
