"""What a reload of a serving model can spare: the versions nothing changed, or, when only its instance groups
changed, every version (instances are then added and removed in place, as Triton updates them)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from naiad.core.instances import Placement
from naiad.core.model import InstanceChange, ModelVersion
from naiad.core.preparation import Prepared
from naiad.core.stores.base import model_stamps, version_stamps


def unchanged_versions(
    loaded: Prepared | None, serving: Sequence[ModelVersion], prepared: Prepared
) -> dict[int, ModelVersion]:
    """The serving versions a reload can keep: same config, same other files outside the version folders, same files
    in the version's own folder, still selected."""
    if loaded is None or loaded.config.raw != prepared.config.raw:
        return {}
    if _beside_config(loaded) != _beside_config(prepared):  # config.pbtxt rewritten as it was changes nothing
        return {}
    before, after = version_stamps(loaded.fingerprint), version_stamps(prepared.fingerprint)
    return {
        v.version: v
        for v in serving
        if v.version in prepared.selected and before.get(v.version) == after.get(v.version)
    }


def instances_only(loaded: Prepared | None, serving: Sequence[ModelVersion], prepared: Prepared) -> bool:
    """Whether the change is to `instance_group` alone: the same versions serve the same files, and the configs
    differ in that field only (config.pbtxt, or a load request's config, being what changed)."""
    if loaded is None or not serving or prepared.backend is None or loaded.backend is not prepared.backend:
        return False
    before, after = dict(loaded.config.raw), dict(prepared.config.raw)
    if before.pop("instance_group", None) == after.pop("instance_group", None) or before != after:
        return False
    if {v.version for v in serving} != set(prepared.selected):
        return False
    if _beside_config(loaded) != _beside_config(prepared):
        return False
    return version_stamps(loaded.fingerprint) == version_stamps(prepared.fingerprint)


def _beside_config(prepared: Prepared) -> frozenset[tuple[str, str]]:
    """The files outside the version folders but config.pbtxt, whose content the parsed config already shows."""
    return frozenset(stamp for stamp in model_stamps(prepared.fingerprint) if stamp[0] != "config.pbtxt")


async def change_instances(
    serving: Sequence[ModelVersion], prepared: Prepared, placement: Placement
) -> list[tuple[InstanceChange, asyncio.Task[None]]]:
    """Give each serving version the instances of `prepared.config`: the new ones are loaded for every version
    first, and only when all load does any version switch; raises `ServerError` (nothing changed) otherwise. Each
    version's change comes with the task that unloads its dropped instances once they finish what they execute."""
    assert prepared.backend is not None
    backend = prepared.backend
    started = await asyncio.gather(
        *(v.start_instances(prepared.config, backend, placement) for v in serving), return_exceptions=True
    )
    failure = next((outcome for outcome in started if isinstance(outcome, BaseException)), None)
    changes = [outcome for outcome in started if isinstance(outcome, InstanceChange)]
    if failure is not None:
        await asyncio.gather(*(runner.unload() for change in changes for runner in change.added))
        raise failure
    return [(change, v.change_instances(change)) for v, change in zip(serving, changes, strict=True)]
