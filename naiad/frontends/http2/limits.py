"""What a connection allows its peer: windows, frame and header sizes, open streams, floods, and the keep-alive,
ping and connection-age policy the `--grpc-*` flags set."""

from __future__ import annotations

from dataclasses import dataclass

# What we let a peer send before it must wait for a WINDOW_UPDATE: per stream, and for the whole connection.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME_SIZE = 4 * 1024 * 1024  # the largest frame we take (the peer's own limit bounds what we send)
MAX_HEADER_BLOCK = 1024 * 1024  # a header block beyond this ends the connection (metadata limits are the app's)
MAX_STREAMS = 65_536  # open streams per connection; more are refused
MAX_QUEUED_CONTROL = 1_000  # replies to SETTINGS and PING queued while the peer does not read (CVE-2019-9515)
LINGER_SECONDS = 5.0  # how long a closed connection waits for the peer's own close
RESETS_PER_SECOND = 1_000  # streams the peer resets, on average, before it is told to calm down (CVE-2023-44487)


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """Keep-alive, ping and connection-age limits, in the terms of grpc's channel arguments."""

    keepalive_time_ms: int = 7_200_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    min_recv_ping_interval_without_data_ms: int = 300_000
    max_ping_strikes: int = 2
    max_connection_age_ms: int = 0
    max_connection_age_grace_ms: int = 0
    max_header_list_size: int = 65_536
