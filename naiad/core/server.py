"""`InferenceServer`: the one protocol-neutral facade both front ends call."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from naiad import __version__
from naiad.config.log_levels import LogLevels
from naiad.config.settings import ServerSettings
from naiad.core.lifecycle import ModelManager
from naiad.core.stats import ModelStats, Observer
from naiad.core.stores.base import StoreError
from naiad.core.stores.schemes import open_store
from naiad.domain.errors import ServerError, invalid, unavailable
from naiad.domain.model_config import ModelConfig
from naiad.domain.tensors import InferenceRequest, InferenceResponse, InferenceResult
from naiad.processes.launch import ProcessSettings
from naiad.processes.supervisor import Supervisor

ResponseDone = Callable[[InferenceResponse | ServerError], None]


class Inference(Protocol):
    """What the inference path of a front end calls: the `InferenceServer`, or a front-end process's way to it."""

    settings: ServerSettings

    def submit(self, name: str, version: str, request: InferenceRequest, done: ResponseDone) -> None:
        """Start one request; `done` gets the response or the `ServerError`. A request refused before it is queued
        raises, or (from another process) reaches `done` as a `RefusedError`."""


logger = logging.getLogger("naiad.core")

# Extensions that work end to end; server metadata lists only these.
EXTENSIONS = (
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "logging",
)


class ModelStatistics(NamedTuple):
    """One READY model version for metrics: its statistics, requests waiting in its queue and its load time."""

    name: str
    version: int
    stats: ModelStats
    pending: int
    load_seconds: float
    live_instances: int | None = None  # instances able to execute now; None for an ensemble


class InferenceServer:
    """Health, metadata, inference, statistics and the repository index, for any front end."""

    def __init__(self, settings: ServerSettings, log_levels: LogLevels | None = None) -> None:
        """Open the repositories (raises `StoreError` naming the one that cannot be read). `log_levels` are the
        ones the log handler reads (by default the flags', shown but applied to no handler)."""
        self.settings = settings
        self._log_levels = log_levels if log_levels is not None else LogLevels.from_settings(settings)
        self._cache = Path(tempfile.mkdtemp(prefix="naiad-models-"))  # local copies of remote models
        try:
            stores = [open_store(uri, self._cache) for uri in settings.model_repositories]
        except BaseException:
            shutil.rmtree(self._cache, ignore_errors=True)
            raise
        self._supervisor = Supervisor(_process_settings(settings))
        self._manager = ModelManager(
            stores,
            auto_complete=not settings.disable_auto_complete_config,
            default_max_batch_size=lambda backend: int(settings.backend_setting(backend, "default-max-batch-size")),
            load_threads=settings.model_load_thread_count,
            cache=self._cache,
            supervisor=self._supervisor,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_polling: asyncio.Event | None = None
        self._started = False
        self._exiting = False
        self._unloading = False
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        self._operations: set[asyncio.Task[None]] = set()  # loads and unloads being carried out

    def bind(self) -> None:
        """Attach to the running loop, before any listener can hand over a request or a control call."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._manager.bind(_Caller(self, self._loop), self.submit)
            self._stop_polling = asyncio.Event()

    async def start(self) -> list[tuple[str, str]]:
        """Load the models the control mode says to; returns the (model, reason) of each failure."""
        self.bind()
        manager = self._manager
        names = await manager.scan()
        if not names:
            logger.warning("no model folders in %s", ", ".join(self.settings.model_repositories))
        if self.settings.model_control_mode == "explicit" and "*" not in self.settings.load_models:
            missing = [name for name in self.settings.load_models if name not in names]
            names = [name for name in self.settings.load_models if name in names]
            failures = [(f"'{name}'", "no model folder of that name in the repository") for name in missing]
        else:
            failures = []
        await manager.load_all(names)
        self._started = True
        return failures + manager.failures()

    async def poll_repository(self) -> None:
        """Poll mode: every --repository-poll-secs, load what was added, reload what changed, unload what is gone.
        Runs until `stop_polling`, which lets a poll under way finish its loads (a load cut short would leave an
        instance half initialized)."""
        self.bind()
        stop = self._stop_polling
        assert stop is not None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError itself from 3.11 on
                await asyncio.wait_for(stop.wait(), self.settings.repository_poll_secs)
            if stop.is_set():
                return
            try:
                await self._manager.poll()
            except StoreError as exc:  # a store that cannot be listed now may be back at the next poll
                logger.error("polling the model repository failed: %s", exc)
            except Exception:
                logger.exception("polling the model repository failed")

    def stop_polling(self) -> None:
        """End `poll_repository` once the poll under way, if any, is done."""
        if self._stop_polling is not None:
            self._stop_polling.set()

    # Health and metadata

    @property
    def live(self) -> bool:
        """Triton's liveness: true from start-up until the models are unloaded at exit."""
        return not self._unloading

    @property
    def ready(self) -> bool:
        """Ready once the models are loaded (all of them, with strict readiness) and until shutdown begins."""
        if not self._started or self._exiting:
            return False
        return self._manager.all_ready() if self.settings.strict_readiness else True

    @property
    def exiting(self) -> bool:
        """Whether shutdown has begun."""
        return self._exiting

    def metadata(self) -> dict[str, Any]:
        """Server metadata: name, version and the extensions that work."""
        return {"name": self.settings.server_id, "version": __version__, "extensions": list(EXTENSIONS)}

    def log_settings(self) -> dict[str, Any]:
        """Triton's logging settings: levels, verbosity, format and the log file."""
        return self._log_levels.as_triton()

    def update_log_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change the log's levels, verbosity or format (not its file); all or nothing. The settings now."""
        self._log_levels.update(changes)
        return self._log_levels.as_triton()

    def has_model(self, name: str) -> bool:
        """Whether the repository has a model of this name, ready or not."""
        return self._manager.has(name)

    def model_ready(self, name: str, version: str) -> bool:
        """Whether the model (version) can serve requests now: loaded, with an instance that is not being started
        again."""
        try:
            model = self._manager.get(name, version)
        except ServerError:
            return False
        return model.live and not self._unloading

    def model_metadata(self, name: str, version: str) -> dict[str, Any]:
        """Model metadata: versions, platform, and each input and output with its datatype and shape."""
        config = self._manager.get(name, version).config
        batch = [-1] if config.max_batch_size > 0 else []
        return {
            "name": name,
            "versions": [str(v.version) for v in self._manager.versions(name)],
            "platform": config.platform or config.backend,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": [*batch, *s.dims]} for s in config.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": [*batch, *s.dims]} for s in config.outputs],
        }

    def model_config(self, name: str, version: str) -> dict[str, Any]:
        """The model's whole config in Triton's JSON form."""
        return dict(self._manager.config(name, version).raw)

    def model_settings(self, name: str, version: str) -> ModelConfig:
        """The parsed config, for front ends that must know input shapes (raw binary requests)."""
        return self._manager.get(name, version).config

    # Inference

    def submit(self, name: str, version: str, request: InferenceRequest, done: ResponseDone) -> None:
        """Start one request; `done` is called on the loop with the response or the `ServerError`.

        Errors found before the request is queued (unknown model, invalid input, full queue) are raised."""
        if self._unloading:
            raise unavailable("Server exiting")
        model = self._manager.get(name, version)
        serving = model.serving
        checked, batch, key = serving.checker.check(request)
        stats = model.stats
        start = time.monotonic_ns()

        def finished(result: InferenceResult | ServerError) -> None:
            self._in_flight -= 1
            if self._drained is not None and self._in_flight == 0:
                self._drained.set()
            if not isinstance(result, ServerError):
                try:
                    outputs = serving.shaper.shape(request, result)
                except ServerError as exc:
                    result = exc
                else:
                    stats.success.add(time.monotonic_ns() - start)
                    done(InferenceResponse(name, model.label, request.id, outputs, result.parameters))
                    return
            stats.fail.add(time.monotonic_ns() - start)  # as Triton: only requests the model saw count
            done(result)

        self._in_flight += 1
        try:
            serving.scheduler.submit(checked, batch, key, finished)
        except ServerError:
            self._in_flight -= 1
            raise

    async def infer(self, name: str, version: str, request: InferenceRequest) -> InferenceResponse:
        """Run one request and wait for its response; raises `ServerError` on any failure."""
        loop = self._loop or asyncio.get_running_loop()  # asyncio.get_running_loop costs a getpid() each call
        future: asyncio.Future[InferenceResponse] = loop.create_future()

        def done(outcome: InferenceResponse | ServerError) -> None:
            if future.done():
                return
            if isinstance(outcome, ServerError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.submit(name, version, request, done)
        return await future

    # Statistics and repository

    def statistics(self, name: str, version: str) -> dict[str, Any]:
        """Triton's statistics JSON for one model (version), or for every model when `name` is empty."""
        versions = [self._manager.get(name, version)] if version else self._manager.versions(name)
        return {"model_stats": [v.stats.to_json(v.name, v.version) for v in versions]}

    def model_statistics(self) -> list[ModelStatistics]:
        """Every READY model version, ordered by name and version, with its live statistics objects."""
        return [
            ModelStatistics(v.name, v.version, v.stats, v.serving.scheduler.queued, v.load_seconds, v.live_instances)
            for v in self._manager.versions("")
        ]

    def repository_index(self, ready_only: bool) -> list[dict[str, Any]]:
        """Every model version with its state (and the reason when it is not ready)."""
        return self._manager.index(ready_only)

    async def load_model(self, name: str, parameters: Mapping[str, Any]) -> None:
        """Explicit mode: load or reload a model; `parameters` may hold `config`, a JSON model config that replaces
        config.pbtxt. Raises `ServerError`."""
        self._check_control(name)
        _check_name(name)
        override: dict[str, Any] | None = None
        files: dict[str, bytes] = {}
        for key, value in parameters.items():
            if key == "config":
                override = _config_override(name, value)
            elif key.startswith("file:"):
                if not self.settings.allow_model_file_override:
                    raise invalid(
                        f"failed to load '{name}': file override parameters ('{key}') are refused, since they let a "
                        "client write files on the server; put the model's files in the repository, or start the "
                        "server with --allow-model-file-override=true"
                    )
                files[key.removeprefix("file:")] = _file_content(name, key, value)
        await self._carry_out(self._manager.load(name, override, files or None))

    async def unload_model(self, name: str, parameters: Mapping[str, Any], wait: bool = True) -> None:
        """Explicit mode: unload a model (and with `unload_dependents`, the ensembles over it); with `wait`, return
        once it is unloaded. Raises `ServerError`."""
        self._check_control(name)
        dependents = parameters.get("unload_dependents", False)
        if not isinstance(dependents, bool):
            raise invalid("Unable to parse 'unload_dependents', expecting a boolean")
        await self._carry_out(self._manager.unload(name, dependents, wait))

    async def _carry_out(self, operation: Coroutine[Any, Any, None]) -> None:
        """Run a load or unload to its end even when the caller stops waiting (a gRPC deadline or cancel): half a
        load would leave instances nobody unloads."""
        task = asyncio.get_running_loop().create_task(operation)
        self._operations.add(task)
        task.add_done_callback(self._operations.discard)
        await asyncio.shield(task)

    def _check_control(self, name: str) -> None:
        mode = self.settings.model_control_mode
        if mode != "explicit":
            raise unavailable(
                f"explicit model load / unload is not allowed in model control mode '{mode}' (model '{name}'); "
                "start the server with --model-control-mode=explicit"
            )

    # Shutdown

    def begin_exit(self) -> None:
        """Stop being ready; requests still arriving on open connections are served until `unload`."""
        self._exiting = True

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the requests in flight; returns how many are still running."""
        if self._in_flight:
            self._drained = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError itself from 3.11 on
                await asyncio.wait_for(self._drained.wait(), timeout)
        return self._in_flight

    async def unload(self) -> None:
        """Unload every model (Triton's `finalize` on each instance); later requests get 503."""
        self._exiting = True
        self._unloading = True
        try:
            await self._manager.unload_all(timeout=self.settings.exit_timeout_secs)
        finally:
            self._supervisor.kill_all()  # what finalize() left running, or a cut-short unload left behind
            shutil.rmtree(self._cache, ignore_errors=True)

    @property
    def in_flight(self) -> int:
        """Requests being served now."""
        return self._in_flight


def _process_settings(settings: ServerSettings) -> ProcessSettings:
    """The Python backend's `--backend-config` settings and naiad's environment flags, for instance processes."""
    python = "python"
    return ProcessSettings(
        shm_default_byte_size=int(settings.backend_setting(python, "shm-default-byte-size")),
        shm_growth_byte_size=int(settings.backend_setting(python, "shm-growth-byte-size")),
        stub_timeout_seconds=int(settings.backend_setting(python, "stub-timeout-seconds")),
        shm_region_prefix_name=settings.backend_setting(python, "shm-region-prefix-name"),
        environment_cache=Path(settings.model_environment_cache),
        allow_requirements=settings.allow_model_requirements,
    )


def _check_name(name: str) -> None:
    """Triton's checks of a name to load: not empty, and nothing that could reach outside the repository."""
    if not name.strip():
        raise invalid("Model name cannot be empty. Please enter a valid name to deploy.")
    if "/" in name or "\\" in name or "\0" in name or name.strip() in (".", ".."):
        raise invalid(f"invalid model name '{name}', model name must not contain path traversal characters")


def _file_content(name: str, key: str, value: Any) -> bytes:
    """A `file:` parameter's bytes: raw over gRPC, base64 text over HTTP."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            pass
    raise invalid(f"failed to load '{name}': the '{key}' parameter must hold the file's bytes, base64-encoded in JSON")


def _config_override(name: str, value: Any) -> dict[str, Any]:
    """A load request's `config` parameter: a model config in Triton's JSON form."""
    if not isinstance(value, str):
        raise invalid(f"failed to load '{name}': the 'config' parameter must be a string holding a JSON model config")
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise invalid(f"failed to load '{name}': the 'config' parameter is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise invalid(f"failed to load '{name}': the 'config' parameter must be a JSON object")
    return parsed


class _Caller:
    """Lets a model call another model of this server (BLS) and control models: blocking, from an instance's thread,
    or on the loop, for an instance process."""

    def __init__(self, server: InferenceServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop

    def infer(self, model_name: str, model_version: str, request: InferenceRequest) -> InferenceResponse:
        coroutine = self._server.infer(model_name, model_version, request)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def infer_async(
        self, model_name: str, model_version: str, request: InferenceRequest
    ) -> Awaitable[InferenceResponse]:
        coroutine = self._server.infer(model_name, model_version, request)
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def load(self, model_name: str, config: str, files: Mapping[str, bytes]) -> None:
        asyncio.run_coroutine_threadsafe(self.load_async(model_name, config, files), self._loop).result()

    def unload(self, model_name: str, unload_dependents: bool) -> None:
        asyncio.run_coroutine_threadsafe(self.unload_async(model_name, unload_dependents), self._loop).result()

    def is_ready(self, model_name: str, model_version: str) -> bool:
        return asyncio.run_coroutine_threadsafe(self._ready(model_name, model_version), self._loop).result()

    # The same on the loop, for instance processes (naiad.processes.instance.ServerCalls)

    async def load_async(self, model_name: str, config: str, files: Mapping[str, bytes]) -> None:
        parameters: dict[str, Any] = {f"file:{path}": content for path, content in files.items()}
        if config:
            parameters["config"] = config
        await self._server.load_model(model_name, parameters)

    async def unload_async(self, model_name: str, unload_dependents: bool) -> None:
        # no waiting: the unload waits for the requests of the model, and the request calling here is one of them
        await self._server.unload_model(model_name, {"unload_dependents": unload_dependents}, wait=False)

    def is_ready_now(self, model_name: str, model_version: str) -> bool:
        return self._server.model_ready(model_name, model_version)

    async def _ready(self, model_name: str, model_version: str) -> bool:
        return self.is_ready_now(model_name, model_version)


__all__ = ["EXTENSIONS", "InferenceServer", "ModelStatistics", "Observer", "StoreError"]
