"""The metrics service's HTTP application: `GET /metrics` answers the Prometheus text a renderer gives."""

from __future__ import annotations

from collections.abc import Callable

from naiad.frontends.http.protocol import HttpReply, HttpRequest, Respond

_TEXT = b"text/plain; charset=utf-8"


class MetricsApp:
    """Answers `GET /metrics` (and HEAD) with `render()` as `content_type`; 404 for other paths, 405 for other
    methods."""

    def __init__(self, render: Callable[[], bytes], content_type: bytes) -> None:
        self._render = render
        self._content_type = content_type

    def handle(self, request: HttpRequest, respond: Respond) -> None:
        """Answer one request at once."""
        if request.path.rstrip("/") != "/metrics":
            respond(HttpReply(404, b"Not Found: the metrics are at /metrics\n", _TEXT))
        elif request.method not in ("GET", "HEAD"):
            respond(HttpReply(405, b"Method Not Allowed\n", _TEXT, [(b"allow", b"GET, HEAD")]))
        else:
            respond(HttpReply(200, self._render(), self._content_type))
