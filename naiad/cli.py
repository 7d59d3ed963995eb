"""The `naiad` command: `naiad serve` with tritonserver's flag names."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from naiad import __version__
from naiad.config.arguments import (
    backend_config,
    boolean,
    metrics_config,
    non_negative,
    port,
    positive,
    positive_float,
    quantiles,
)
from naiad.config.restrictions import CATEGORIES, RestrictionError, parse_restrictions
from naiad.config.settings import (
    DEFAULT_QUANTILES,
    GrpcSettings,
    MetricsSettings,
    ServerSettings,
    default_environment_cache,
)

# tritonserver flags naiad does not implement yet: refused by name, never silently ignored.
NOT_YET = frozenset((
    "model-config-name", "model-load-retry-count", "model-namespacing", "enable-peer-access", "reuse-http-port",
    "http-header-forward-pattern", "http-thread-count", "grpc-header-forward-pattern",
    "grpc-infer-thread-count", "grpc-infer-allocation-pool-size", "grpc-max-response-pool-size",
    "trace-config", "trace-file", "trace-level", "trace-rate", "trace-count",
    "trace-log-frequency", "cache-config", "cache-directory", "response-cache-byte-size", "rate-limit",
    "rate-limit-resource", "pinned-memory-pool-byte-size", "cuda-memory-pool-byte-size",
    "cuda-virtual-address-size", "min-supported-compute-capability", "buffer-manager-thread-count", "host-policy",
    "model-load-gpu-limit", "allow-client-shm", "backend-directory", "repoagent-directory", "allow-sagemaker",
    "sagemaker-port", "sagemaker-safe-port-range", "sagemaker-thread-count", "allow-vertex-ai", "vertex-ai-port",
    "vertex-ai-thread-count", "vertex-ai-default-model",
))  # fmt: skip


def _metrics_settings(args: argparse.Namespace) -> MetricsSettings:
    config: dict[str, str] = dict(args.metrics_config)  # a key given twice: the last one counts
    address = args.metrics_address
    if address is None:  # as tritonserver: the HTTP address, or every address without HTTP
        address = args.http_address if args.allow_http else "0.0.0.0"
    summary = quantiles(config["summary_quantiles"]) if "summary_quantiles" in config else DEFAULT_QUANTILES
    return MetricsSettings(
        address=address,
        interval_ms=args.metrics_interval_ms,
        gpu=args.allow_gpu_metrics,
        cpu=args.allow_cpu_metrics,
        counter_latencies=boolean(config.get("counter_latencies", "true")),
        summary_latencies=boolean(config.get("summary_latencies", "false")),
        histogram_latencies=boolean(config.get("histogram_latencies", "false")),
        summary_quantiles=summary,
    )


def _backend_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend-config",
        type=backend_config,
        action="append",
        default=[],
        metavar="[BACKEND,]SETTING=VALUE",
        help="a backend setting, for one backend or (without BACKEND,) for all; repeat for several: "
        "default-max-batch-size=N, the max_batch_size auto-complete gives a model that can batch (default 4); for "
        "python (Triton's names): shm-default-byte-size=N and shm-growth-byte-size=N, the shared memory of each "
        "instance process (first segment and each further one, default 1 MiB), stub-timeout-seconds=N, how long an "
        "instance process may take to start, and to run finalize() and exit (default 30), shm-region-prefix-name=NAME",
    )
    _flag(
        parser,
        "--allow-model-requirements",
        False,
        "build a Python model's environment from the requirements.txt beside its model.py when it loads (pip "
        "install into a cached venv; installing packages at load time never happens without this)",
    )
    parser.add_argument(
        "--model-environment-cache",
        default=default_environment_cache(),
        metavar="DIR",
        help="where models' Python environments (EXECUTION_ENV_PATH tarballs, requirements.txt builds) are unpacked "
        "and built, once per content (default $XDG_CACHE_HOME/naiad/environments or ~/.cache/naiad/environments)",
    )


def _auto_complete_flags(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--strict-model-config", False, "deprecated: true turns off config auto-completion")
    parser.add_argument(
        "--disable-auto-complete-config",
        action="store_true",
        help="do not let backends fill in the model config (model.py's auto_complete_config, ONNX models)",
    )


def _flag(parser: argparse.ArgumentParser, name: str, default: bool, text: str) -> None:
    parser.add_argument(
        name,
        type=boolean,
        nargs="?",
        const=True,
        default=default,
        metavar="BOOL",
        help=f"{text} (default {default})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: `serve`; `check`, `export` and `push` for the way from a trained model to a served one."""
    parser = argparse.ArgumentParser(
        prog="naiad",
        description="A Triton-compatible inference server (KServe V2 / Open Inference Protocol).",
    )
    parser.add_argument("--version", action="version", version=f"naiad {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a Triton model repository",
        description="Serve a Triton model repository over HTTP. Flags mirror tritonserver's.",
    )
    serve.add_argument(
        "--model-repository",
        "--model-store",
        dest="model_repository",
        action="append",
        required=True,
        metavar="PATH",
        help="a model repository folder; repeat for several",
    )
    serve.add_argument("--id", default="naiad", help="the server's name in server metadata (default naiad)")
    serve.add_argument("--http-address", default="0.0.0.0", help="address the HTTP service binds (default 0.0.0.0)")
    serve.add_argument("--http-port", type=port, default=8000, help="HTTP port (default 8000)")
    serve.add_argument("--grpc-port", type=port, default=8001, help="gRPC port (default 8001)")
    serve.add_argument("--grpc-address", default="0.0.0.0", help="address the gRPC service binds (default 0.0.0.0)")
    _flag(serve, "--reuse-grpc-port", False, "let several servers share the gRPC port (SO_REUSEPORT)")
    _flag(serve, "--grpc-use-ssl", False, "serve gRPC over TLS (needs --grpc-server-cert and --grpc-server-key)")
    _flag(serve, "--grpc-use-ssl-mutual", False, "serve gRPC over mutual TLS (also needs --grpc-root-cert)")
    serve.add_argument("--grpc-server-cert", default="", metavar="FILE", help="PEM certificate for gRPC TLS")
    serve.add_argument("--grpc-server-key", default="", metavar="FILE", help="PEM private key for gRPC TLS")
    serve.add_argument("--grpc-root-cert", default="", metavar="FILE", help="PEM root certificate for client certs")
    serve.add_argument(
        "--grpc-infer-response-compression-level",
        choices=("none", "low", "medium", "high"),
        default="none",
        help="compress gRPC responses to clients that accept it (default none)",
    )
    serve.add_argument(
        "--grpc-stack",
        choices=("naiad", "grpcio"),
        default="naiad",
        help="the gRPC service's HTTP/2: naiad's own, the default and the leanest per call, or grpcio's grpc.aio "
        "server (every --grpc-* flag works on both)",
    )
    serve.add_argument(
        "--grpc-keepalive-time", type=non_negative, default=7_200_000, metavar="MS", help="keep-alive ping period"
    )
    serve.add_argument(
        "--grpc-keepalive-timeout", type=non_negative, default=20_000, metavar="MS", help="wait for a ping's answer"
    )
    _flag(serve, "--grpc-keepalive-permit-without-calls", False, "allow keep-alive pings with no call open")
    serve.add_argument(
        "--grpc-http2-max-pings-without-data",
        type=non_negative,
        default=2,
        metavar="N",
        help="accepted as tritonserver takes it; grpc servers (Triton's too) do not limit their own keep-alive "
        "pings, so a value other than 2 is warned about",
    )
    serve.add_argument(
        "--grpc-http2-min-recv-ping-interval-without-data",
        type=non_negative,
        default=300_000,
        metavar="MS",
        help="shortest interval between a client's pings with no data before they count as strikes",
    )
    serve.add_argument(
        "--grpc-http2-max-ping-strikes",
        type=non_negative,
        default=2,
        metavar="N",
        help="bad pings before the connection is closed (0: no limit)",
    )
    serve.add_argument(
        "--grpc-max-connection-age",
        type=non_negative,
        default=0,
        metavar="MS",
        help="close older connections (0: no limit)",
    )
    serve.add_argument(
        "--grpc-max-connection-age-grace",
        type=non_negative,
        default=0,
        metavar="MS",
        help="time calls get to finish once a connection is too old (0: no limit)",
    )
    serve.add_argument("--metrics-port", type=port, default=8002, help="metrics port (default 8002)")
    serve.add_argument(
        "--metrics-address",
        default=None,
        help="address the metrics service binds (default: --http-address, or 0.0.0.0 without HTTP)",
    )
    serve.add_argument(
        "--metrics-interval-ms",
        type=positive,
        default=2000,
        metavar="MS",
        help="how often the CPU and GPU gauges are refreshed (default 2000)",
    )
    serve.add_argument(
        "--metrics-config",
        type=metrics_config,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="counter_latencies=BOOL (default true), summary_latencies=BOOL (default false), "
        "histogram_latencies=BOOL (default false), summary_quantiles=Q:E,... "
        "(default 0.5:0.05,0.9:0.01,0.95:0.001,0.99:0.001,0.999:0.001); repeat for several",
    )
    _flag(serve, "--allow-gpu-metrics", True, "report GPU gauges through NVML when a GPU is present")
    _flag(serve, "--allow-cpu-metrics", True, "report CPU utilization and memory gauges from /proc")
    _flag(serve, "--allow-http", True, "serve HTTP")
    _flag(serve, "--allow-grpc", True, "serve gRPC")
    _flag(serve, "--allow-metrics", True, "serve Prometheus metrics on --metrics-port")
    _flag(serve, "--exit-on-error", True, "exit when a model fails to load")
    _flag(serve, "--strict-readiness", True, "ready only when every model that should be loaded is ready")
    serve.add_argument(
        "--model-control-mode",
        choices=("none", "poll", "explicit"),
        default="none",
        help="none: load every model at start-up; poll: also load, reload and unload as the repository changes; "
        "explicit: load only --load-model models, then what the load and unload API asks (default none)",
    )
    serve.add_argument(
        "--repository-poll-secs",
        type=positive_float,
        default=15.0,
        metavar="SECONDS",
        help="poll mode: seconds between two looks at the repository (default 15)",
    )
    serve.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: a model to load at start-up; repeat for several, or '*' alone for all",
    )
    _flag(
        serve,
        "--allow-model-file-override",
        False,
        "explicit mode: accept load requests that carry the model's files (Triton's file: parameters); off by "
        "default, since it lets any client that reaches the server write files on it",
    )
    serve.add_argument(
        "--model-load-thread-count",
        type=positive,
        default=4,
        help="how many models load at the same time (default 4)",
    )
    serve.add_argument(
        "--frontend-process-count",
        type=positive,
        default=1,
        help="how many processes serve HTTP and gRPC, sharing their ports, each passing every request to the one "
        "process that holds the models, batchers and statistics (default 1: that process serves them itself)",
    )
    _auto_complete_flags(serve)
    _backend_config_flag(serve)
    serve.add_argument(
        "--exit-timeout-secs",
        type=non_negative,
        default=30,
        help="how long shutdown waits for requests in flight (default 30)",
    )
    serve.add_argument(
        "--http-max-input-size",
        type=positive,
        default=64 * 1024 * 1024,
        help="largest request body in bytes, after decompression (default 67108864)",
    )
    for flag, where in (("--http-restricted-api", "HTTP header"), ("--grpc-restricted-protocol", "gRPC metadata")):
        serve.add_argument(
            flag, action="append", default=[], metavar="API,...:KEY=VALUE",
            help=f"these APIs ({', '.join(CATEGORIES)}) answer only calls whose {where} KEY is VALUE (repeatable)",
        )  # fmt: skip
    serve.add_argument("--log-verbose", type=non_negative, default=0, help="verbose logging level (default 0)")
    _flag(serve, "--log-info", True, "log informational messages")
    _flag(serve, "--log-warning", True, "log warnings")
    _flag(serve, "--log-error", True, "log errors")
    check = commands.add_parser(
        "check",
        help="check a model repository without serving it",
        description="Read a Triton model repository as `naiad serve` would, load each model once, and report "
        "every problem with its fix: a model folder given instead of the repository, folders that are not "
        "versions, config names that differ from their folders, missing or misnamed model files, inputs and "
        "outputs that do not match the model, files saved by a newer PyTorch or with torch.save, ONNX opsets "
        "the installed onnxruntime cannot run. Exit status 0 only when every model would load.",
    )
    check.add_argument("repository", nargs="+", metavar="REPOSITORY", help="a model repository folder")
    _auto_complete_flags(check)
    _backend_config_flag(check)
    _export_parser(commands)
    from naiad.tools.push import add_parser as push_parser

    push_parser(commands)
    serve.add_argument("--log-format", choices=("default", "ISO8601"), default="default", help="log line format")
    serve.add_argument("--log-file", default="", help="write the log to this file instead of stderr")
    return parser


def _backend_settings(entries: list[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    settings: dict[str, dict[str, str]] = {}
    for scope, setting, value in entries:
        settings.setdefault(scope, {})[setting] = value
    return settings


def refuse_unsupported(argv: Sequence[str]) -> str | None:
    """The message for the first tritonserver flag naiad does not implement, if any."""
    for arg in argv:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if name in NOT_YET:
                return (
                    f"naiad: the tritonserver flag --{name} is not supported by naiad yet; "
                    "remove it (see `naiad serve --help` for what naiad supports)"
                )
    return None


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """`ServerSettings` from parsed `serve` arguments."""
    return ServerSettings(
        model_repositories=tuple(args.model_repository),
        server_id=args.id,
        http_address=args.http_address,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        grpc=GrpcSettings(
            address=args.grpc_address,
            reuse_port=args.reuse_grpc_port,
            use_ssl=args.grpc_use_ssl or args.grpc_use_ssl_mutual,
            use_ssl_mutual=args.grpc_use_ssl_mutual,
            server_cert=args.grpc_server_cert,
            server_key=args.grpc_server_key,
            root_cert=args.grpc_root_cert,
            compression_level=args.grpc_infer_response_compression_level,
            stack=args.grpc_stack,
            keepalive_time_ms=args.grpc_keepalive_time,
            keepalive_timeout_ms=args.grpc_keepalive_timeout,
            keepalive_permit_without_calls=args.grpc_keepalive_permit_without_calls,
            http2_max_pings_without_data=args.grpc_http2_max_pings_without_data,
            http2_min_recv_ping_interval_without_data_ms=args.grpc_http2_min_recv_ping_interval_without_data,
            http2_max_ping_strikes=args.grpc_http2_max_ping_strikes,
            max_connection_age_ms=args.grpc_max_connection_age,
            max_connection_age_grace_ms=args.grpc_max_connection_age_grace,
            restricted=parse_restrictions(args.grpc_restricted_protocol, "--grpc-restricted-protocol"),
        ),
        metrics_port=args.metrics_port,
        metrics=_metrics_settings(args),
        allow_http=args.allow_http,
        allow_grpc=args.allow_grpc,
        allow_metrics=args.allow_metrics,
        exit_on_error=args.exit_on_error,
        strict_readiness=args.strict_readiness,
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        load_models=tuple(args.load_model),
        model_load_thread_count=args.model_load_thread_count,
        frontend_process_count=args.frontend_process_count,
        allow_model_file_override=args.allow_model_file_override,
        exit_timeout_secs=args.exit_timeout_secs,
        disable_auto_complete_config=args.disable_auto_complete_config or args.strict_model_config,
        backend_config=_backend_settings(args.backend_config),
        allow_model_requirements=args.allow_model_requirements,
        model_environment_cache=args.model_environment_cache,
        http_max_input_size=args.http_max_input_size,
        http_restricted=parse_restrictions(args.http_restricted_api, "--http-restricted-api"),
        log_verbose=args.log_verbose,
        log_info=args.log_info,
        log_warning=args.log_warning,
        log_error=args.log_error,
        log_format=args.log_format,
        log_file=args.log_file,
    )


def _export_parser(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="turn a PyTorch module and its weights into a model repository entry",
        description="Build a PyTorch module, load its weights, save it as TorchScript (traced, or scripted with "
        "--script) or ONNX, and write config.pbtxt with the names, datatypes and dims read from the model run on "
        "example inputs. The saved file is loaded again and compared with the module, then the entry is loaded "
        "as `naiad check` would. Example: naiad export --module iris.py:IrisNet --weights iris_weights.pt "
        "--input input__0:FP32:4 --max-batch-size 8 --repository models --name iris",
    )
    export.add_argument(
        "--module", required=True, metavar="FILE.py:NAME", help="the nn.Module class (or a factory) to build"
    )
    export.add_argument("--weights", type=Path, help="a state_dict saved with torch.save(model.state_dict(), path)")
    export.add_argument(
        "--input",
        dest="inputs",
        action="append",
        required=True,
        metavar="NAME:DATATYPE:DIMS",
        help="one forward() argument, in order: its config name, datatype and dims without the batch dimension "
        "(-1: any size), e.g. input__0:FP32:4 or image__0:UINT8:3,-1,-1; repeat for each",
    )
    export.add_argument(
        "--output",
        dest="outputs",
        action="append",
        default=[],
        metavar="NAME",
        help="the config name of each output, in order (default output__0, output__1, ...)",
    )
    export.add_argument("--repository", type=Path, required=True, help="the model repository to write into")
    export.add_argument("--name", required=True, help="the model's name (its folder)")
    export.add_argument("--version", type=positive, default=1, help="the version folder (default 1)")
    export.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript", help="default torchscript")
    export.add_argument("--script", action="store_true", help="torch.jit.script instead of torch.jit.trace")
    export.add_argument(
        "--max-batch-size",
        type=non_negative,
        default=8,
        help="the model's max_batch_size; 0 when the first dimension is not a batch (default 8)",
    )
    export.add_argument("--no-dynamic-batching", action="store_true", help="leave dynamic_batching out of config.pbtxt")
    export.add_argument("--opset", type=positive, help="the ONNX opset (default: torch's)")
    export.add_argument(
        "--filename", default="", help="the model file's name, if not model.pt / model.onnx (default_model_filename)"
    )


def _run_export(args: argparse.Namespace) -> int:
    from naiad.tools.export import ExportError, ExportRequest, check_entry, export, parse_input

    try:
        inputs = tuple(parse_input(text) for text in args.inputs)
    except ValueError as exc:
        print(f"naiad export: {exc}", file=sys.stderr)
        return 2
    request = ExportRequest(
        module=args.module,
        weights=args.weights,
        inputs=inputs,
        outputs=tuple(args.outputs),
        repository=args.repository,
        name=args.name,
        version=args.version,
        format=args.format,
        script=args.script,
        max_batch_size=args.max_batch_size,
        dynamic_batching=not args.no_dynamic_batching,
        opset=args.opset,
        filename=args.filename,
    )
    try:
        folder = export(request, print)
    except ExportError as exc:
        print(f"naiad export: {exc}", file=sys.stderr)
        return 1
    return 0 if check_entry(folder, print) else 1


def check_settings_from(args: argparse.Namespace) -> ServerSettings:
    """The settings `naiad check` loads the repository with."""
    return ServerSettings(
        model_repositories=tuple(args.repository),
        exit_on_error=False,
        disable_auto_complete_config=args.disable_auto_complete_config or args.strict_model_config,
        backend_config=_backend_settings(args.backend_config),
        allow_model_requirements=args.allow_model_requirements,
        model_environment_cache=args.model_environment_cache,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the process exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0].startswith("--") and args_list[0] not in ("--help", "--version"):
        args_list.insert(0, "serve")  # `naiad --model-repository=...` works as `tritonserver` does
    message = refuse_unsupported(args_list)
    if message:
        print(message, file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "export":
        return _run_export(args)
    if args.command == "push":
        from naiad.tools.push import run_push

        return run_push(args, print)
    if args.command == "check":
        from naiad.tools.check import run_check

        return run_check(check_settings_from(args), print)
    if args.command != "serve":
        parser.print_help()
        return 2
    if args.load_model and args.model_control_mode != "explicit":
        parser.error("--load-model needs --model-control-mode=explicit")
    if args.allow_model_file_override and args.model_control_mode != "explicit":
        parser.error("--allow-model-file-override needs --model-control-mode=explicit")
    if "*" in args.load_model and len(args.load_model) > 1:
        parser.error("--load-model=* loads every model and must be the only --load-model")
    if args.frontend_process_count > 1 and args.allow_grpc and args.grpc_stack == "grpcio":
        parser.error(
            "--grpc-stack=grpcio serves from the server process only: use the naiad stack with "
            f"--frontend-process-count={args.frontend_process_count}, or one front end"
        )
    try:
        settings = settings_from(args)
    except RestrictionError as exc:
        parser.error(str(exc))
    from naiad.ops.logging import configure
    from naiad.runner import run

    return run(settings, configure(settings))
