"""TLS for the gRPC service: `--grpc-use-ssl*` and the certificate files, checked and read once for either stack."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from naiad.config.settings import GrpcSettings


class GrpcSetupError(Exception):
    """The gRPC service cannot start: a bad TLS file or an address in use."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM contents the flags name."""

    key: bytes
    cert: bytes
    root: bytes | None


def tls_files(settings: GrpcSettings) -> TlsFiles:
    if not settings.server_cert or not settings.server_key:
        raise GrpcSetupError("--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
    if settings.use_ssl_mutual and not settings.root_cert:
        raise GrpcSetupError("--grpc-use-ssl-mutual needs --grpc-root-cert")
    key = _read(settings.server_key, "--grpc-server-key")
    cert = _read(settings.server_cert, "--grpc-server-cert")
    root = _read(settings.root_cert, "--grpc-root-cert") if settings.root_cert else None
    return TlsFiles(key, cert, root)


def ssl_context(settings: GrpcSettings) -> ssl.SSLContext:
    """A server context that speaks only HTTP/2 (ALPN "h2"), asking for a client certificate under mutual TLS."""
    files = tls_files(settings)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(settings.server_cert, settings.server_key)
    except ssl.SSLError as exc:
        raise GrpcSetupError(
            f"cannot use --grpc-server-cert '{settings.server_cert}' with --grpc-server-key "
            f"'{settings.server_key}': {exc.reason or exc}"
        ) from None
    if files.root is not None:
        try:
            context.load_verify_locations(cadata=files.root.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise GrpcSetupError(f"cannot use --grpc-root-cert '{settings.root_cert}': {exc.reason or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED if settings.use_ssl_mutual else ssl.CERT_OPTIONAL
    return context


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise GrpcSetupError(f"cannot read {flag} file '{path}': {exc.strerror}") from None
