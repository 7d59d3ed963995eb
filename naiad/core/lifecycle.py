"""`ModelManager`: which models the repositories hold, loading, reloading and unloading them without dropping a
request, each version's state and reason, and the version a request is for.

A (re)load prepares and loads the new versions beside the serving ones; only when they are READY does the model
switch to them, and the versions it no longer serves finish the requests they already hold before they unload. A
reload that fails leaves the previous versions serving, with the failure as the model's reason."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naiad.config.devices import visible_gpus
from naiad.core.ensemble import EnsembleScheduler, Submit, check_steps, load_order
from naiad.core.instances import Placement
from naiad.core.model import ModelState, ModelVersion
from naiad.core.preparation import Prepared, Preparer
from naiad.core.reloads import change_instances, instances_only, unchanged_versions
from naiad.core.stats import ModelStats
from naiad.core.stores.base import Fingerprint, Store, StoreError
from naiad.core.stores.inline import InlineStore, UnsafePathError
from naiad.domain.errors import ServerError, invalid, not_found, unavailable
from naiad.domain.model_config import ModelConfig
from naiad.processes.instance import ServerCalls
from naiad.processes.launch import ProcessSettings
from naiad.processes.supervisor import Supervisor

logger = logging.getLogger("naiad.core")


@dataclass(slots=True)
class ModelRecord:
    """A model of the repositories and what became of it: its versions, or the reason it has none."""

    name: str
    stores: list[Store] = field(default_factory=list)  # more than one: the name is ambiguous
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    reason: str = ""
    latest: ModelVersion | None = None
    wanted: bool = False  # should be loaded: what strict readiness and polling look at
    loaded: Prepared | None = None  # what the serving versions were loaded from
    override: Mapping[str, Any] | None = None  # a load request's config, kept for later reloads (as Triton)
    tried: Fingerprint | None = None  # the files of the last load attempt: polling retries only on a change
    inline: Store | None = None  # the files of a load request, used instead of the repository's until a plain load
    loading: bool = False
    ambiguous: bool = False  # in several repositories at the last attempt, which was reported then

    def refresh_latest(self) -> None:
        """Remember the highest READY version, the one a request without a version goes to."""
        ready = [v for v in self.versions.values() if v.state is ModelState.READY]
        self.latest = max(ready, key=lambda v: v.version) if ready else None

    @property
    def serving(self) -> list[ModelVersion]:
        """The READY versions."""
        return [v for v in self.versions.values() if v.state is ModelState.READY]


class ModelManager:
    """Every model of the repositories, loaded on demand, with the state of each version."""

    def __init__(
        self,
        stores: list[Store],
        auto_complete: bool,
        default_max_batch_size: Callable[[str], int] = lambda backend: 4,
        load_threads: int = 4,
        cache: Path | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._stores = stores
        self._cache = cache  # where a load request's files are written
        self._records: dict[str, ModelRecord] = {}
        self._supervisor = supervisor if supervisor is not None else Supervisor(ProcessSettings())
        self._preparer = Preparer(auto_complete, default_max_batch_size, visible_gpus(), self._supervisor)
        self._loads = asyncio.Semaphore(max(1, load_threads))
        self._control = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()  # replaced versions finishing their requests
        self._folders: dict[Path, Store] = {}  # fetched folders not yet released, and the store that fetched each
        self._pending: set[Path] = set()  # folders fetched by the control operation running now
        self._closing = False
        self._placement: Placement | None = None
        self._submit: Submit | None = None

    def bind(self, caller: ServerCalls, submit: Submit) -> None:
        """What models call other models with (BLS) and what ensembles submit their steps to."""
        self._placement = Placement(caller, asyncio.get_running_loop(), self._supervisor)
        self._submit = submit

    # What the repositories hold

    async def scan(self) -> list[str]:
        """List the repositories again; returns the model names they hold now. A name that is gone keeps its
        record until it is unloaded."""
        found: dict[str, list[Store]] = {}
        for store in self._stores:
            for name in await asyncio.to_thread(store.models):
                found.setdefault(name, []).append(store)
        for record in self._records.values():
            if record.inline is None:
                record.stores = []
        for name, stores in found.items():
            record = self._records.setdefault(name, ModelRecord(name))
            if record.inline is None:
                record.stores = stores
        return sorted(found)

    def has(self, name: str) -> bool:
        """Whether the repositories hold a model of this name (as of the last scan) or it is loaded."""
        record = self._records.get(name)
        return record is not None and bool(record.stores or record.versions)

    # Loading and unloading: one control operation at a time; within one, models load in parallel

    async def load_all(self, names: list[str]) -> None:
        """Load these models at start-up (and the models the ensembles among them are made of); failures are
        recorded, not raised."""
        async with self._operation():
            await self._load_many(names, force=True)

    async def poll(self) -> None:
        """Poll mode: load new models, reload changed ones, unload those whose folder is gone."""
        async with self._operation():
            names = await self.scan()
            gone = [name for name, record in self._records.items() if not record.stores]
            for name in gone:
                self._begin_unload(name, unload_dependents=False, forget=True, seen=set())
            await self._load_many(names, force=False)

    async def load(
        self, name: str, override: Mapping[str, Any] | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Explicit mode: load or reload one model, and first the models an ensemble is made of when they are not
        loaded; raises `ServerError` when it does not end up serving the new load. `files` (a load request's
        `file:` parameters, by path in the model folder) replace the repository's folder until a load without them.
        An `override` is kept for later loads once a load with it succeeds."""
        async with self._operation():
            existing = self._records.get(name)
            if existing is not None:
                existing.inline = None
            if files is not None:
                await self._write_inline(name, override, files)
            try:
                await self.scan()
            except StoreError as exc:
                raise unavailable(f"failed to load '{name}': {exc}") from None
            record = self._records.get(name)
            if record is None or not record.stores:
                where = ", ".join(store.uri for store in self._stores)
                raise not_found(
                    f"failed to load '{name}', failed to poll from model repository: no model folder '{name}' in "
                    f"{where}"
                )
            kept = record.override
            if override is not None:
                record.override = override
            await self._load_many([name], force=True)
            failure = "" if record.serving else self._why(record)
            failure = failure or record.reason  # a reload failed: the previous versions serve on
            if failure:
                record.override = kept
                raise invalid(f"load failed for model '{name}': {failure}")

    async def _write_inline(self, name: str, override: Mapping[str, Any] | None, files: Mapping[str, bytes]) -> None:
        if override is None:
            raise invalid(
                f"failed to load '{name}': file: parameters need a 'config' parameter with the model's config"
            )
        assert self._cache is not None
        try:
            inline = await asyncio.to_thread(InlineStore, name, files, self._cache)
        except UnsafePathError as exc:
            raise invalid(
                f"failed to load '{name}': the file path '{exc}' must stay inside the model folder (a relative "
                "path without '..')"
            ) from None
        except OSError as exc:
            raise invalid(f"failed to load '{name}': its files could not be written: {exc}") from None
        folder = inline.fetch(name, {})
        self._folders[folder] = inline
        self._pending.add(folder)
        record = self._records.setdefault(name, ModelRecord(name))
        record.inline = inline
        record.stores = [inline]

    async def unload(self, name: str, unload_dependents: bool, wait: bool = True) -> None:
        """Explicit mode: unload every version of a model once the requests it holds are answered (and, if asked,
        every ensemble that uses it). With `wait`, returns when they are unloaded; the wait is outside the control
        lock, so a model still answering may load or unload others meanwhile. A model unloading another, or
        itself, must not wait: the unload waits for the request making it."""
        async with self._operation():
            unloading = self._begin_unload(name, unload_dependents, forget=False, seen=set())
        if wait:
            await asyncio.wait(unloading)

    def _begin_unload(
        self, name: str, unload_dependents: bool, forget: bool, seen: set[str]
    ) -> list[asyncio.Task[None]]:
        """Stop routing requests to the model at once; its versions unload in the background once settled."""
        record = self._records.get(name)
        if record is None:
            raise not_found(f"failed to unload '{name}': no model of that name in the repository")
        seen.add(name)
        record.wanted = False
        record.tried = None
        retiring = record.serving
        for version in retiring:
            version.state = ModelState.UNLOADING
        record.latest = None
        record.loaded = None
        record.reason = ""
        unloading = [self._retire_in_background(record, retiring)]
        if forget:
            del self._records[name]
        if unload_dependents:
            for dependent in self._dependents(name):
                if dependent not in seen:
                    unloading += self._begin_unload(dependent, True, forget=False, seen=seen)
        return unloading

    @contextlib.asynccontextmanager
    async def _operation(self) -> AsyncIterator[None]:
        """One control operation at a time; the folders it fetched and did not end up serving are released."""
        if self._closing:
            raise unavailable("Server exiting: models are no longer loaded or unloaded")
        async with self._control:
            try:
                yield
            finally:
                self._pending.clear()
                self._release_unused()

    async def _load_many(self, names: list[str], force: bool) -> None:
        """Prepare the models (`force`: even unchanged ones), then the models the ensembles among them are made of
        when those are not serving, and load them all."""
        prepared: dict[str, Prepared] = {}
        forced = force  # a load request reloads even unchanged versions; a poll keeps them
        wanted = [self._records[name] for name in names if name in self._records]
        while wanted:
            found = await asyncio.gather(*(self._prepare(record, force) for record in wanted))
            prepared.update({r.name: p for r, p in zip(wanted, found, strict=True) if p is not None})
            attempted = {record.name for record in wanted}
            missing = {
                step.model_name
                for ready in prepared.values()
                for step in ready.config.ensemble_steps
                if step.model_name in self._records and step.model_name not in prepared
            }
            wanted = [self._records[n] for n in sorted(missing - attempted) if not self._records[n].serving]
            force = False
        await self._install_all(prepared, force=forced)

    async def _prepare(self, record: ModelRecord, force: bool) -> Prepared | None:
        """Fetch and read a model's folder; None when nothing changed since the last try (unless `force`) or it
        cannot load (the reason is then recorded; a store's failure is tried again at the next poll)."""
        record.wanted = True
        if len(record.stores) > 1 and record.ambiguous and not force:
            return None  # failed and logged when it became ambiguous; each poll need not say it again
        if record.ambiguous and len(record.stores) <= 1:
            record.tried = None  # no longer ambiguous: try again even if its files did not change
        record.ambiguous = len(record.stores) > 1
        async with self._loads:
            try:
                store = self._only_store(record)
                fingerprint = await asyncio.to_thread(store.fingerprint, record.name)
                if not force and record.tried is not None and dict(record.tried) == dict(fingerprint):
                    return None
                record.tried = fingerprint
                if not fingerprint:
                    raise not_found(f"failed to poll from model repository: the folder of '{record.name}' is gone")
                record.loading = True
                folder = await asyncio.to_thread(store.fetch, record.name, fingerprint)
                self._folders.setdefault(folder, store)
                self._pending.add(folder)
                prepared = await asyncio.to_thread(
                    self._preparer.prepare, record.name, folder, fingerprint, record.override
                )
                return dataclasses.replace(prepared, store=store)
            except ServerError as exc:
                reason = exc.message
            except StoreError as exc:
                record.tried = None
                reason = str(exc)
            except Exception as exc:  # a folder changing under the scan, say: this model fails, not the operation
                logger.exception("preparing model '%s' failed", record.name)
                record.tried = None
                reason = f"{type(exc).__name__}: {exc}"
            record.loading = False
            self._failed(record, reason)
            return None

    async def _install_all(self, prepared: Mapping[str, Prepared], force: bool) -> None:
        """Load and serve the prepared models: plain ones in parallel, then ensembles over them in order; ensembles
        over a reloaded model check their steps again."""
        plain = [name for name, ready in prepared.items() if ready.backend is not None]
        await asyncio.gather(*(self._limited_swap(self._records[name], prepared[name], force) for name in plain))
        ensembles = [self._records[name] for name, ready in prepared.items() if ready.backend is None]
        for record in ensembles:
            record.config = prepared[record.name].config
        steps = {r.name: {step.model_name for step in prepared[r.name].config.ensemble_steps} for r in ensembles}
        ordered, cycles = load_order(steps)
        for name, cycle in cycles.items():
            self._failed(self._records[name], f"circular dependency between ensembles: {cycle}")
        for name in ordered:
            self._swap_ensemble(self._records[name], prepared[name])
        for record in ensembles:
            record.loading = False
        for name in plain:
            for dependent in self._dependents(name):
                ensemble = self._records[dependent]
                if dependent in prepared:
                    continue
                if ensemble.serving and ensemble.loaded is not None:
                    self._swap_ensemble(ensemble, ensemble.loaded)
                else:  # it may have failed for want of this model: the next poll tries it again
                    ensemble.tried = None

    async def _limited_swap(self, record: ModelRecord, prepared: Prepared, force: bool) -> None:
        async with self._loads:
            try:
                await self._swap(record, prepared, force)
            finally:
                record.loading = False

    async def _swap(self, record: ModelRecord, prepared: Prepared, force: bool) -> None:
        """Load the versions that are new or changed, then serve them in place of the old ones."""
        assert prepared.backend is not None and self._placement is not None
        if instances_only(record.loaded, record.serving, prepared):
            await self._change_instances(record, prepared)
            return
        keep = {} if force else unchanged_versions(record.loaded, record.serving, prepared)
        fresh = {
            number: ModelVersion(prepared.folder, prepared.config, number, ModelStats())
            for number in prepared.selected
            if number not in keep
        }
        for version in fresh.values():
            version.on_lost = self._version_lost
        await asyncio.gather(*(v.load(prepared.backend, self._placement) for v in fresh.values()))
        failed = [v for v in fresh.values() if v.state is not ModelState.READY]
        if failed and record.serving:  # a failed reload: the old versions serve on
            for version in fresh.values():
                if version.state is ModelState.READY:
                    await version.unload()
            reasons = "; ".join(f"version {v.version}: {v.reason}" for v in failed)
            self._failed(record, reasons)
            return
        self._install(record, prepared, {**keep, **fresh})

    async def _change_instances(self, record: ModelRecord, prepared: Prepared) -> None:
        """Only `instance_group` changed: add and remove instances in every serving version, which keep serving."""
        assert self._placement is not None and record.loaded is not None
        serving = record.serving
        try:
            changes = await change_instances(serving, prepared, self._placement)
        except Exception as exc:  # a model's initialize may raise anything: the old instances serve on
            self._failed(record, exc.message if isinstance(exc, ServerError) else f"{type(exc).__name__}: {exc}")
            return
        record.config = prepared.config
        record.loaded = dataclasses.replace(prepared, folder=record.loaded.folder)  # the versions' files
        record.reason = ""
        for version, (change, retiring) in zip(serving, changes, strict=True):
            logger.info(
                "successfully updated '%s' version %d: %d instance(s) added, %d removed",
                record.name, version.version, len(change.added), len(change.dropped),
            )  # fmt: skip
            self._keep_until_done(retiring)  # the dropped instances finish their requests, as replaced versions

    def _swap_ensemble(self, record: ModelRecord, prepared: Prepared) -> None:
        assert self._submit is not None
        config = prepared.config
        try:
            composing = {
                step.model_name: self._composing(config.name, step.model_name, step.model_version)
                for step in config.ensemble_steps
            }
            check_steps(config, composing)
        except ServerError as exc:
            self._failed(record, exc.message)
            return
        versions: dict[int, ModelVersion] = {}
        for number in prepared.selected:
            version = ModelVersion(prepared.folder, config, number, ModelStats())
            version.serve(EnsembleScheduler(config, version.stats, self._submit))
            versions[number] = version
        self._install(record, prepared, versions)

    def _install(self, record: ModelRecord, prepared: Prepared, versions: dict[int, ModelVersion]) -> None:
        """Serve `versions` from now on; the ones they replace finish their requests and unload in the background."""
        retiring = [v for v in record.serving if versions.get(v.version) is not v]
        for version in retiring:
            version.state = ModelState.UNLOADING
        unloaded = {v.version: v for v in record.versions.values() if v.state is not ModelState.READY}
        record.versions = {**unloaded, **versions}
        record.config = prepared.config
        record.loaded = prepared
        record.reason = ""
        record.refresh_latest()
        self._log_versions(record, versions)
        if retiring:
            self._retire_in_background(record, retiring)

    def _version_lost(self, version: ModelVersion) -> None:
        """Every instance of a serving version was given up: requests go to the other versions, if any."""
        record = self._records.get(version.name)
        if record is None or record.versions.get(version.version) is not version:
            return
        record.refresh_latest()
        logger.error("model '%s' version %d is unavailable: %s", version.name, version.version, version.reason)

    def _retire_in_background(self, record: ModelRecord, retiring: list[ModelVersion]) -> asyncio.Task[None]:
        """Unload `retiring` once each has answered the requests it holds, then release the folders nothing uses."""
        return self._keep_until_done(asyncio.get_running_loop().create_task(self._retire(record, retiring)))

    def _keep_until_done(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """Count `task` among the unloads that shutdown waits for, until it is done."""
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def _retire(self, record: ModelRecord, retiring: list[ModelVersion]) -> None:
        await asyncio.gather(*(version.unload() for version in retiring))
        for version in retiring:
            logger.info("successfully unloaded '%s' version %d", record.name, version.version)
        self._release_unused()

    def _release_unused(self) -> None:
        """Delete the local copies no version serves or finishes from, no model is loaded from, and the running
        operation did not fetch (copies of identical content share one folder, so a folder is counted, not owned)."""
        used = set(self._pending)
        for record in self._records.values():
            if record.loaded is not None:
                used.add(record.loaded.folder)
            used.update(v.folder for v in record.versions.values() if v.state is not ModelState.UNAVAILABLE)
        for folder in [folder for folder in self._folders if folder not in used]:
            self._folders.pop(folder).release(folder)

    def _failed(self, record: ModelRecord, reason: str) -> None:
        if record.serving:
            reason = f"reload failed, the previous version(s) serve on: {reason}"
        record.reason = reason
        logger.error("failed to load model '%s': %s", record.name, reason)

    def _only_store(self, record: ModelRecord) -> Store:
        if len(record.stores) > 1:
            raise invalid("model appears in two or more repositories")
        if not record.stores:
            raise not_found(f"failed to poll from model repository: no model folder '{record.name}'")
        return record.stores[0]

    def _dependents(self, name: str) -> list[str]:
        """The ensembles with a step on this model."""
        return sorted(
            other.name
            for other in self._records.values()
            if other.config is not None and any(step.model_name == name for step in other.config.ensemble_steps)
        )

    def _composing(self, ensemble: str, name: str, version: int) -> ModelConfig:
        record = self._records.get(name)
        if record is None:
            raise invalid(f"ensemble {ensemble} contains models that are not available or ambiguous: {name}")
        ready = record.serving
        if version > 0 and not any(v.version == version for v in ready):
            raise invalid(f"ensemble '{ensemble}' depends on '{name}' whose required version {version} is not loaded")
        if not ready:
            why = self._why(record)
            failed = f" Model '{name}' loading failed with error: {why}" if why else ""
            raise invalid(f"ensemble '{ensemble}' depends on '{name}' which has no loaded version.{failed}")
        return ready[-1].config

    def _why(self, record: ModelRecord) -> str:
        return record.reason or next((v.reason for v in record.versions.values() if v.reason), "")

    def _log_versions(self, record: ModelRecord, versions: Mapping[int, ModelVersion]) -> None:
        for version in versions.values():
            if version.state is ModelState.READY:
                logger.info("successfully loaded '%s' version %d", record.name, version.version)
            else:
                logger.error("failed to load '%s' version %d: %s", record.name, version.version, version.reason)

    # What the server asks

    def failures(self) -> list[tuple[str, str]]:
        """(what, reason) for every wanted model or version that is not serving: what is "'m'" or "'m' version 2"."""
        failed: list[tuple[str, str]] = []
        for name, record in sorted(self._records.items()):
            if not record.wanted:
                continue
            if record.reason:
                failed.append((f"'{name}'", record.reason))
            failed.extend(
                (f"'{name}' version {v.version}", v.reason)
                for v in record.versions.values()
                if v.state is ModelState.UNAVAILABLE and v.reason != "unloaded"
            )
        return failed

    def all_ready(self) -> bool:
        """True when every model that should be loaded has every selected version READY."""
        for record in self._records.values():
            if not record.wanted:
                continue
            loaded = record.loaded
            if loaded is None or any((v := record.versions.get(n)) is None or not v.live for n in loaded.selected):
                return False
        return True

    def get(self, name: str, version: str) -> ModelVersion:
        """The version a request names ("" for the highest ready one), or the `ServerError` Triton answers."""
        record = self._records.get(name)
        if record is None:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        if not version:
            latest = record.latest
            if latest is None:
                raise not_found(f"Request for unknown model: '{name}' has no available versions")
            return latest
        number = parse_version(version)
        found = record.versions.get(number)
        if found is None:
            raise not_found(f"Request for unknown model: '{name}' version {number} is not found")
        if found.state is not ModelState.READY:
            raise unavailable(f"Request for unknown model: '{name}' version {number} is not at ready state")
        return found

    def config(self, name: str, version: str) -> ModelConfig:
        """The config of a model's serving version (the named one, else the latest), as Triton: an unloaded or
        failed model has none to show."""
        return self.get(name, version).config

    def versions(self, name: str) -> list[ModelVersion]:
        """The READY versions of a model (of every model when `name` is empty), ordered by name and version."""
        if name and name not in self._records:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        names = [name] if name else sorted(self._records)
        return [
            self._records[n].versions[v]
            for n in names
            for v in sorted(self._records[n].versions)
            if self._records[n].versions[v].state is ModelState.READY
        ]

    def index(self, ready_only: bool) -> list[dict[str, Any]]:
        """Triton's repository index: one entry per model version, with state and reason."""
        entries: list[dict[str, Any]] = []
        for name, record in sorted(self._records.items()):
            if not record.versions:
                if not ready_only:
                    entry: dict[str, Any] = {"name": name}
                    if record.loading:
                        entry.update(state=ModelState.LOADING.value, reason="")
                    elif record.reason:
                        entry.update(state=ModelState.UNAVAILABLE.value, reason=record.reason)
                    entries.append(entry)
                continue
            for number, version in sorted(record.versions.items()):
                if ready_only and version.state is not ModelState.READY:
                    continue
                entry = {"name": name, "version": str(number), "state": version.state.value}
                reason = version.reason or (record.reason if version.state is ModelState.READY else "")
                if reason:
                    entry["reason"] = reason
                entries.append(entry)
        return entries

    async def unload_all(self, timeout: float) -> None:
        """At exit: refuse further control operations, wait for the running one, give versions being replaced up to
        `timeout` seconds to finish, then unload every loaded version (Triton's `finalize` on each instance)."""
        self._closing = True
        async with self._control:
            if self._retiring:
                await asyncio.wait(set(self._retiring), timeout=timeout)
            loaded = [v for r in self._records.values() for v in r.versions.values() if v.state is ModelState.READY]
            for record in self._records.values():
                record.latest = None
            await asyncio.gather(*(version.unload(settle_timeout=timeout) for version in loaded))
            for record in self._records.values():
                record.loaded = None
            self._release_unused()


def parse_version(text: str) -> int:
    """A version string from a URL or request as an integer > 0."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise invalid(
        f"failed to get model version from specified version string '{text}' (details: expected integral "
        "value greater than 0), version should be an integral value > 0"
    )


__all__ = ["ModelManager", "ModelRecord", "parse_version"]
