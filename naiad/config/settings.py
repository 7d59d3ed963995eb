"""`ServerSettings`: everything the command line sets, as one object passed explicitly."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from naiad.config.restrictions import NO_RESTRICTIONS, Restrictions

# Triton's `--backend-config` settings that naiad applies, with their defaults (Triton's, but the segment prefix).
BACKEND_SETTINGS = {
    "default-max-batch-size": "4",
    "shm-default-byte-size": str(1024 * 1024),
    "shm-growth-byte-size": str(1024 * 1024),
    "stub-timeout-seconds": "30",
    "shm-region-prefix-name": "naiad_python_backend_shm_region_",
}
# Those of the Python backend alone: given for another backend they are refused.
PYTHON_BACKEND_SETTINGS = frozenset(
    ("shm-default-byte-size", "shm-growth-byte-size", "stub-timeout-seconds", "shm-region-prefix-name")
)
# Triton's Python-backend settings that mean nothing here, and why.
REFUSED_BACKEND_SETTINGS = {
    "thread-pool-size": "naiad has no such pool: an instance process's BLS calls and responses are handled on the "
    "server's event loop",
    "shm_message_queue_size": "naiad's messages to instance processes go over a socket, not a queue of fixed size",
}


def check_backend_setting(backend: str, setting: str, value: str) -> str:
    """Why `--backend-config=[backend,]setting=value` is refused, or "" when naiad takes it."""
    refused = REFUSED_BACKEND_SETTINGS.get(setting)
    if refused is not None:
        return f"backend setting '{setting}' is refused: {refused}"
    if setting not in BACKEND_SETTINGS:
        return (
            f"backend setting '{setting}' is not supported by naiad; supported: {', '.join(sorted(BACKEND_SETTINGS))}"
        )
    if setting in PYTHON_BACKEND_SETTINGS and backend not in ("", "python"):
        return f"backend setting '{setting}' is a setting of the python backend, not of '{backend}'"
    if setting == "shm-region-prefix-name":
        if not value or "/" in value:
            return "shm-region-prefix-name must at least contain one character, and no '/'"
        return ""
    if not value.isdigit():
        return f"{setting} must be a non-negative integer, got '{value}'"
    if setting == "shm-default-byte-size" and int(value) < 1024 * 1024:
        return "shm-default-byte-size can't be smaller than 1 MiB (1048576)"
    if setting in ("shm-growth-byte-size", "stub-timeout-seconds") and int(value) <= 0:
        return f"{setting} can't be smaller than or equal to zero."
    return ""


def default_environment_cache() -> str:
    """Where models' Python environments are unpacked and built unless --model-environment-cache says:
    `$XDG_CACHE_HOME/naiad/environments`, else `~/.cache/naiad/environments`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "naiad", "environments")


@dataclass(frozen=True, slots=True)
class GrpcSettings:
    """The gRPC service's address, TLS, compression and HTTP/2 keep-alive; the defaults are tritonserver's."""

    address: str = "0.0.0.0"
    reuse_port: bool = False
    use_ssl: bool = False
    use_ssl_mutual: bool = False
    server_cert: str = ""
    server_key: str = ""
    root_cert: str = ""
    compression_level: str = "none"
    stack: str = "naiad"  # --grpc-stack: naiad's own HTTP/2 or grpcio's grpc.aio
    keepalive_time_ms: int = 7_200_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    http2_max_pings_without_data: int = 2
    http2_min_recv_ping_interval_without_data_ms: int = 300_000
    http2_max_ping_strikes: int = 2
    max_connection_age_ms: int = 0
    max_connection_age_grace_ms: int = 0
    restricted: Restrictions = field(default_factory=lambda: NO_RESTRICTIONS)  # --grpc-restricted-protocol


# Triton's default summary quantiles, as (quantile, allowed error) pairs.
DEFAULT_QUANTILES = ((0.5, 0.05), (0.9, 0.01), (0.95, 0.001), (0.99, 0.001), (0.999, 0.001))


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The metrics service's address, polling interval, system gauges and --metrics-config; tritonserver's
    defaults."""

    address: str = "0.0.0.0"
    interval_ms: int = 2000
    gpu: bool = True
    cpu: bool = True
    counter_latencies: bool = True
    summary_latencies: bool = False
    histogram_latencies: bool = False
    summary_quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The server's settings; the defaults are tritonserver's."""

    model_repositories: tuple[str, ...]
    server_id: str = "naiad"
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    grpc: GrpcSettings = GrpcSettings()
    metrics_port: int = 8002
    metrics: MetricsSettings = MetricsSettings()
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    exit_on_error: bool = True
    strict_readiness: bool = True
    model_control_mode: str = "none"  # none | poll | explicit
    repository_poll_secs: float = 15.0
    load_models: tuple[str, ...] = ()  # explicit mode: loaded at start-up ("*" for all)
    model_load_thread_count: int = 4
    frontend_process_count: int = 1  # processes serving HTTP and gRPC; 1: the server process itself
    allow_model_file_override: bool = False  # accept Triton's `file:` load parameters (clients writing files)
    exit_timeout_secs: int = 30
    disable_auto_complete_config: bool = False
    # --backend-config: backend name ("" for every backend) -> setting -> value
    backend_config: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    allow_model_requirements: bool = False  # build a Python model's environment from its requirements.txt
    model_environment_cache: str = field(default_factory=default_environment_cache)
    http_max_input_size: int = 64 * 1024 * 1024
    http_restricted: Restrictions = field(default_factory=lambda: NO_RESTRICTIONS)  # --http-restricted-api
    log_verbose: int = 0
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_format: str = "default"
    log_file: str = ""

    def picklable(self) -> ServerSettings:
        """The same settings with plain dicts for the read-only mappings, to pass to another process."""
        return dataclasses.replace(
            self,
            backend_config={backend: dict(values) for backend, values in self.backend_config.items()},
            http_restricted=dict(self.http_restricted),
            grpc=dataclasses.replace(self.grpc, restricted=dict(self.grpc.restricted)),
        )

    def backend_setting(self, backend: str, setting: str) -> str:
        """A `--backend-config` setting for one backend: its own value, else the global one, else the default."""
        for scope in (backend, ""):
            value = self.backend_config.get(scope, {}).get(setting)
            if value is not None:
                return value
        return BACKEND_SETTINGS[setting]
