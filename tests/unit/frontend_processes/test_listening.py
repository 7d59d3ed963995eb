"""The sockets the server process binds for its front ends, and how a front end tells inference from the rest."""

from __future__ import annotations

import socket

import pytest

from naiad.frontend_processes.host import listening_sockets
from naiad.frontends.http.app import infer_target


def test_every_address_of_a_name_listens_on_one_port_even_when_it_is_chosen() -> None:
    sockets = listening_sockets("localhost", 0, reuse_port=False)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1 and 0 not in ports
        port = ports.pop()
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the backlog takes it: listening, before any front end accepts
    finally:
        for sock in sockets:
            sock.close()


def test_a_port_in_use_is_an_error() -> None:
    (taken,) = listening_sockets("127.0.0.1", 0, reuse_port=False)
    try:
        with pytest.raises(OSError):
            listening_sockets("127.0.0.1", taken.getsockname()[1], reuse_port=False)
    finally:
        taken.close()


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v2/models/add_sub/infer", ("add_sub", "")),
        ("/v2/models/add_sub/infer/", ("add_sub", "")),
        ("/v2/models/add_sub/versions/3/infer", ("add_sub", "3")),
        ("/v2/models/stats/infer", ("stats", "")),
        ("/v2/models/add_sub", None),
        ("/v2/models/add_sub/ready", None),
        ("/v2/models//infer", None),
        ("/v2/models/add_sub/versions/infer", None),
        ("/v2/models/add_sub/other/3/infer", None),
        ("/v3/models/add_sub/infer", None),
    ],
)
def test_inference_paths_are_told_from_the_others(path: str, target: tuple[str, str] | None) -> None:
    assert infer_target(path) == target
