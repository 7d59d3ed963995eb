"""nginx for the tests: found on PATH or unpacked, without root, from Debian's package; run in the foreground."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.emulators import install_once

NGINX_PACKAGE = "nginx"
_UNAVAILABLE: dict[Path, str] = {}  # why nginx could not be had, by cache folder


class NginxUnavailableError(Exception):
    """nginx is not installed and cannot be fetched here: the reason, for a skip."""


@dataclass(frozen=True)
class NginxServer:
    """One running nginx: its process, the folder it keeps everything in, and the ports it listens on."""

    process: subprocess.Popen[bytes]
    prefix: Path
    ports: tuple[int, ...]

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.log"

    def log(self) -> str:
        """Its error log so far (retries show there as `upstream ... while ...` lines)."""
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""


@contextmanager
def nginx_or_skip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The nginx binary for a fixture; the first run on a machine without nginx unpacks Debian's package (about 2s)
    into pytest's cache folder. The test is skipped, saying why, where it cannot be had."""
    cache = getattr(request.config, "cache", None)
    cache_root = cache.mkdir("naiad-nginx") if cache is not None else tmp_path_factory.getbasetemp() / "naiad-nginx"
    if cache_root in _UNAVAILABLE:  # tried once in this session already
        pytest.skip(_UNAVAILABLE[cache_root])
    try:
        binary = nginx_binary(cache_root)
    except NginxUnavailableError as exc:
        _UNAVAILABLE[cache_root] = str(exc)
        pytest.skip(str(exc))
    yield binary


def nginx_binary(cache_root: Path) -> Path:
    """`nginx` from PATH, else `usr/sbin/nginx` of Debian's package, downloaded with `apt-get download` (no root
    needed) and unpacked with `dpkg-deb -x` once into `cache_root`; raises `NginxUnavailableError` when neither
    works (no apt-get, no network)."""
    found = shutil.which("nginx")
    if found:
        return Path(found)
    folder = cache_root / NGINX_PACKAGE
    binary = folder / "usr" / "sbin" / "nginx"
    if binary.exists():
        return binary
    apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if not apt_get or not dpkg_deb:
        raise NginxUnavailableError("nginx is not installed and apt-get/dpkg-deb are missing to fetch Debian's package")

    def unpack(scratch: Path) -> Path:
        package = _download(apt_get, scratch)
        _run([dpkg_deb, "-x", str(package), str(scratch / "root")], scratch, "dpkg-deb -x")
        if not (scratch / "root" / "usr" / "sbin" / "nginx").exists():
            raise NginxUnavailableError(f"{package.name} holds no usr/sbin/nginx")
        return scratch / "root"

    install_once(folder, binary, unpack)
    return binary


def _download(apt_get: str, folder: Path) -> Path:
    """Debian's nginx package, fetched into `folder`. The system's package lists come first; where they do not
    know nginx (a machine on which `apt-get update` never ran), private lists are fetched under `folder`, which
    needs no root either."""
    failures: list[str] = []
    try:
        return _fetch(apt_get, folder, [])
    except NginxUnavailableError as exc:
        failures.append(str(exc))
    lists, archives = folder / "lists", folder / "cache"
    (lists / "partial").mkdir(parents=True)
    (archives / "archives" / "partial").mkdir(parents=True)
    private = [f"-o=Dir::State::Lists={lists}", f"-o=Dir::Cache={archives}"]
    try:
        _run([apt_get, "-q", *private, "update"], folder, "apt-get update (private lists)")
        return _fetch(apt_get, folder, private)
    except NginxUnavailableError as exc:
        failures.append(str(exc))
    raise NginxUnavailableError("nginx is not installed and Debian's package could not be had: " + "; ".join(failures))


def _fetch(apt_get: str, folder: Path, options: list[str]) -> Path:
    _run([apt_get, "-q", *options, "download", NGINX_PACKAGE], folder, "apt-get download nginx")
    packages = sorted(folder.glob(f"{NGINX_PACKAGE}_*.deb"))
    if not packages:
        raise NginxUnavailableError("apt-get download nginx left no .deb")
    return packages[-1]


def _run(command: list[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NginxUnavailableError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise NginxUnavailableError(f"{what} failed ({done.returncode}): {' | '.join(tail)}")


def load_balancer_conf(
    *,
    http_port: int,
    http_replicas: Sequence[str],
    grpc_port: int | None = None,
    grpc_replicas: Sequence[str] = (),
    listen_host: str = "127.0.0.1",
) -> str:
    """The `http { }` content that puts naiad replicas (`host:port` each) behind nginx: HTTP/1.1 with keep-alive on
    `http_port`, gRPC (h2c) on `grpc_port`, and retries on the next replica where one refuses, breaks the connection
    or answers 503. docs/load-balancing.md shows it, rendered, as the template to copy."""
    http_servers = "".join(f"        server {address} max_fails=1 fail_timeout=2s;\n" for address in http_replicas)
    text = f"""
    # naiad's HTTP ports. A replica that fails a request (refused or broken connection, 502, 503) gets no new
    # requests for fail_timeout; nginx tries it again after that.
    upstream naiad_http {{
{http_servers}        keepalive 32;  # idle connections kept open to the replicas, per nginx worker
    }}

    server {{
        listen {listen_host}:{http_port};
        client_max_body_size 0;  # naiad bounds request bodies itself (--http-max-input-size)
        location / {{
            proxy_pass http://naiad_http;
            proxy_http_version 1.1;  # keep-alive to the replicas needs HTTP/1.1
            proxy_set_header Connection "";
            # Send the request to the next replica when one refuses the connection, breaks it before answering,
            # or answers 502/503 (naiad's 503: exiting, model not ready, queue full). non_idempotent: inference is
            # a POST, which nginx otherwise never retries once sent; a request that was executing on a replica that
            # died so runs again on another.
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries {len(http_replicas)};
            proxy_request_buffering on;  # a retry resends the body: nginx must have all of it
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;  # longer than the slowest inference
        }}
    }}
"""
    if grpc_port is not None and grpc_replicas:
        grpc_servers = "".join(f"        server {address} max_fails=1 fail_timeout=2s;\n" for address in grpc_replicas)
        text += f"""
    # naiad's gRPC ports (plaintext HTTP/2).
    upstream naiad_grpc {{
{grpc_servers}        keepalive 32;
    }}

    server {{
        listen {listen_host}:{grpc_port} http2;
        client_max_body_size 0;
        location / {{
            grpc_pass grpc://naiad_grpc;
            # New calls go to the next replica when one refuses the connection. nginx streams a call's body to the
            # replica unbuffered, so a call whose replica fails after it was sent is not retried: the client gets
            # UNAVAILABLE and should retry (gRPC's retry policy, on UNAVAILABLE).
            grpc_next_upstream error timeout http_502 http_503 non_idempotent;
            grpc_next_upstream_tries {len(grpc_replicas)};
            grpc_connect_timeout 2s;
            grpc_read_timeout 120s;
        }}
    }}
"""
    return text


def _main_conf(prefix: Path, http_block: str) -> str:
    """A whole nginx.conf around `http_block` that keeps every file it writes under `prefix`."""
    # As root, nginx would run its worker as `nobody`, which cannot enter pytest's 0700 folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix / 'temp' / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"lock_file {prefix / 'nginx.lock'};\n"
        f"error_log {prefix / 'logs' / 'error.log'} info;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {prefix / 'logs' / 'access.log'};\n"
        f"{temp_paths}"
        f"{http_block}"
        "}\n"
    )


@contextmanager
def running_nginx(binary: Path, prefix: Path, http_block: str, ports: Sequence[int]) -> Iterator[NginxServer]:
    """Run `binary` in the foreground with `http_block` as its `http { }` content, everything it writes under
    `prefix`; wait until each of `ports` accepts connections; stop it (gracefully, then by force) after."""
    for folder in (prefix / "logs", prefix / "temp"):
        folder.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_main_conf(prefix, http_block))
    # -e: the compiled-in error log (/var/log/nginx) is never opened, not even before the conf is read
    command = [str(binary.absolute()), "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "logs" / "error.log")]
    stderr_path = prefix / "logs" / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen([*command, "-g", "daemon off;"], stdout=stderr, stderr=subprocess.STDOUT, cwd=prefix)
    server = NginxServer(process, prefix, tuple(ports))
    try:
        _wait_listening(server, stderr_path)
        yield server
    finally:
        stop_nginx(process)


def _wait_listening(server: NginxServer, stderr_path: Path) -> None:
    """Wait until nginx has bound its ports (its master logs `start worker process` only after that: a port that
    answers could be another process's) and each accepts connections."""
    deadline = time.monotonic() + 30
    waiting = list(server.ports)
    while waiting and time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"nginx exited with {server.process.returncode}:\n{stderr_path.read_text(errors='replace')}"
                f"\n{server.log()}"
            )
        if "start worker process" not in server.log():
            time.sleep(0.02)
            continue
        try:
            with socket.create_connection(("127.0.0.1", waiting[0]), timeout=1):
                waiting.pop(0)
        except OSError:
            time.sleep(0.05)
    if waiting:
        raise RuntimeError(f"nginx did not listen on {waiting} within 30s:\n{server.log()}")


def stop_nginx(process: subprocess.Popen[bytes]) -> None:
    """SIGQUIT (finish what is in flight, then exit), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGTERM, 5.0)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    process.wait()


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
