"""The layout mistakes a local model repository can hold, found without loading anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from naiad.core.stores.local import model_folder_evidence


@dataclass(frozen=True, slots=True)
class Finding:
    """Something wrong with a repository's layout; `fatal` when no model of it could be served as meant."""

    where: str
    problem: str
    fix: str
    fatal: bool


def inspect_layout(repositories: tuple[str, ...]) -> list[Finding]:
    """The layout mistakes users make most: a model folder given as the repository, folders that are not versions,
    model folders with no version at all, an empty repository."""
    findings: list[Finding] = []
    for repository in repositories:
        root = Path(repository)
        if not root.is_dir():
            findings.append(Finding(repository, "not a directory", "give the repository folder's path", True))
            continue
        entries = [entry for entry in sorted(root.iterdir()) if not entry.name.startswith(".")]
        held = model_folder_evidence(root)
        if held is not None:
            findings.append(
                Finding(
                    repository,
                    f"this is a model folder (it holds {held}), not a model repository",
                    f"point --model-repository at the folder that holds it: {root.resolve().parent}",
                    True,
                )
            )
            continue
        folders = [entry for entry in entries if entry.is_dir()]
        if not folders:
            findings.append(
                Finding(repository, "holds no model folders", "put each model in <repository>/<model>/<version>/", True)
            )
        for folder in folders:
            findings.extend(_version_findings(folder))
    return findings


def _version_findings(folder: Path) -> list[Finding]:
    findings: list[Finding] = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if not entry.is_dir() or name.startswith("."):
            continue
        if not name.isdigit() or name.startswith("0"):
            findings.append(
                Finding(
                    f"{folder.name}/{name}",
                    "is not a version folder, so it is ignored",
                    "name version folders with positive integers: 1, 2, ...",
                    False,
                )
            )
    return findings
