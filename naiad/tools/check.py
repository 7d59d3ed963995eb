"""`naiad check`: reads a repository as the server would, loads each model once (and unloads it), and reports
every problem with its fix; the exit status is 0 only when every model would load."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from naiad.config.settings import ServerSettings
from naiad.core.repository import Finding, inspect_layout
from naiad.core.server import InferenceServer, StoreError

# Fixes for load failures whose message says what is wrong but not what to do.
_FIXES = (
    ("does not match the model directory name", "make the config's `name` and the folder's name the same"),
    ("failed to parse", "correct config.pbtxt at the line and column shown (Triton's protobuf text format)"),
    ("Python model file not found", "put model.py in the version folder, or set default_model_filename"),
    ("at least one version must be available", "add a version folder such as 1/ holding the model file"),
    ("is not supported by naiad yet", "serve this model with Triton, or use a backend naiad has"),
    ("names no backend", 'set backend: "python" (or a platform such as "pytorch_libtorch") in config.pbtxt'),
    ("appears in two or more repositories", "keep one folder of that name across the repositories"),
    (
        "inputs, model provides",
        "list in config.pbtxt exactly the inputs the model takes (forward()'s arguments, or the ONNX graph's inputs)",
    ),
)


@dataclass(frozen=True, slots=True)
class ModelVerdict:
    """Whether one model (or one of its versions) would load, and why not."""

    what: str
    loaded: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Report:
    """What `naiad check` found."""

    layout: list[Finding]
    models: list[ModelVerdict]

    @property
    def passed(self) -> bool:
        """True when the repository would load: no fatal layout problem and every model loads."""
        return not any(f.fatal for f in self.layout) and all(m.loaded for m in self.models)


async def inspect(settings: ServerSettings) -> Report:
    """Check the repositories of `settings` by loading every model with the server's own code."""
    layout = inspect_layout(settings.model_repositories)
    if any(finding.fatal for finding in layout):
        return Report(layout, [])
    try:
        server = InferenceServer(settings)
    except StoreError as exc:
        return Report([*layout, Finding(", ".join(settings.model_repositories), str(exc), "", True)], [])
    failures = await server.start()
    verdicts = [ModelVerdict(what.replace("'", ""), False, reason) for what, reason in failures]
    for entry in server.repository_index(ready_only=True):
        platform = server.model_metadata(entry["name"], entry["version"])["platform"]
        detail = f"version {entry['version']} ({platform})"
        verdicts.append(ModelVerdict(entry["name"], True, detail))
    await server.unload()
    return Report(layout, sorted(verdicts, key=lambda v: (v.what, v.loaded)))


def render(report: Report, write: Callable[[str], None]) -> None:
    """The report as lines of text, each problem followed by its fix."""
    for finding in report.layout:
        mark = "FAIL" if finding.fatal else "warn"
        write(f"  {mark}  {finding.where}: {finding.problem}")
        if finding.fix:
            write(f"        fix: {finding.fix}")
    for verdict in report.models:
        if verdict.loaded:
            write(f"  ok    {verdict.what}: {verdict.detail}")
            continue
        write(f"  FAIL  {verdict.what}: {verdict.detail}")
        fix = next((fix for pattern, fix in _FIXES if pattern in verdict.detail), "")
        if fix:
            write(f"        fix: {fix}")
    names = {v.what.split(" version ")[0] for v in report.models}
    failed = {v.what.split(" version ")[0] for v in report.models if not v.loaded}
    if report.passed:
        write(f"{len(names)} model(s): all would load.")
    elif report.models:
        write(f"{len(names)} model(s): {len(failed)} would not load.")
    else:
        write("the repository cannot be read as a model repository.")


def run_check(settings: ServerSettings, write: Callable[[str], None]) -> int:
    """`naiad check`'s exit status: 0 when every model would load, 1 otherwise."""
    logging.getLogger("naiad").setLevel(logging.CRITICAL)  # the report says what the load log would
    write(f"naiad check: {', '.join(settings.model_repositories)}")
    report = asyncio.run(inspect(settings))
    render(report, write)
    return 0 if report.passed else 1
