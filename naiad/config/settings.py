"""`ServerSettings`: everything the command line sets, as one object passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The server's settings; the defaults are tritonserver's."""

    model_repositories: tuple[str, ...]
    server_id: str = "naiad"
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    exit_on_error: bool = True
    strict_readiness: bool = True
    exit_timeout_secs: int = 30
    disable_auto_complete_config: bool = False
    http_max_input_size: int = 64 * 1024 * 1024
    log_verbose: int = 0
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_format: str = "default"
    log_file: str = ""
