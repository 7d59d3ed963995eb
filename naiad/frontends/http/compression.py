"""gzip and deflate for request and response bodies, with the decompressed size bounded."""

from __future__ import annotations

import gzip
import zlib

from naiad.domain.errors import invalid

# Bodies smaller than this go back uncompressed even when the client accepts gzip: it would cost more than it saves.
MIN_COMPRESSED_SIZE = 1024


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body decoded from `Content-Encoding: encoding`; larger than `limit` once decoded is refused."""
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    else:
        raise invalid(f"Unsupported content-encoding '{encoding}', only 'identity', 'gzip' and 'deflate' are supported")
    try:
        data = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise invalid(f"failed to decompress the request body ({encoding}): {exc}") from None
    if len(data) > limit:
        raise invalid(
            f"decompressed request size exceeds the maximum allowed input size of {limit} bytes. Use "
            "--http-max-input-size to increase the limit."
        )
    return data


def choose_encoding(accept: str) -> str:
    """gzip or deflate if the client's `Accept-Encoding` takes one (gzip first), else ""."""
    offered = {part.split(";", 1)[0].strip(): part for part in accept.lower().split(",")}
    for name in ("gzip", "deflate"):
        part = offered.get(name)
        if part is not None and "q=0" not in part.replace(" ", "").replace("q=0.", ""):
            return name
    return ""


def compress(body: bytes, encoding: str) -> bytes:
    """The body encoded with gzip or deflate."""
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    return zlib.compress(body, 6)
