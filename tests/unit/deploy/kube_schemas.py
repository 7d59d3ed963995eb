"""Offline validation of Kubernetes manifests: Kubernetes' own schemas for built-in kinds, ours for custom resources.

Built-in kinds (Deployment, Service, HorizontalPodAutoscaler, ...) are checked strictly, unknown fields included,
against the OpenAPI schemas that `kubernetes-validate` ships for KUBERNETES_VERSION. Custom resources
(ServiceMonitor, ScaledObject, SeldonDeployment, InferenceService) have no schema there: each has a JSON Schema in
`crd_schemas/<group>_<version>_<Kind>.json`, written from the project's published CRD reference (its `$comment` names
the source), covering the fields naiad's manifests use with `additionalProperties: false` so a misspelt field fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

KUBERNETES_VERSION = "1.30"  # the oldest minor still in the main clouds' standard support; schemas only grow
CRD_SCHEMAS = Path(__file__).parent / "crd_schemas"


def load_documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a multi-document stream; a `List` kind is flattened into its items."""
    documents: list[dict[str, Any]] = []
    for document in yaml.safe_load_all(text):
        if not document:
            continue
        assert isinstance(document, dict), f"a manifest must be a mapping, not {type(document).__name__}"
        if document.get("kind") == "List":
            documents.extend(document.get("items") or [])
        else:
            documents.append(document)
    return documents


def crd_schema_path(api_version: str, kind: str) -> Path:
    """Where the schema of a custom resource lives: `monitoring.coreos.com/v1` + ServiceMonitor ->
    crd_schemas/monitoring.coreos.com_v1_ServiceMonitor.json."""
    group, _, version = api_version.rpartition("/")
    return CRD_SCHEMAS / f"{group or 'core'}_{version}_{kind}.json"


@cache
def _crd_validator(path: Path) -> Any:
    import jsonschema

    schema = json.loads(path.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def problems(document: dict[str, Any]) -> list[str]:
    """Why a manifest is not valid (empty when it is): schema errors, or no schema at all for its kind."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [f"no apiVersion/kind: {str(document)[:200]}"]
    name = f"{kind} {document.get('metadata', {}).get('name', '?')}"
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        return []
    except kubernetes_validate.SchemaNotFoundError:
        pass
    except kubernetes_validate.ValidationError as error:
        return [f"{name}: {_first_lines(str(error))}"]
    path = crd_schema_path(api_version, kind)
    if not path.exists():
        return [f"{name}: neither Kubernetes {KUBERNETES_VERSION} nor {path.name} has a schema for {api_version}"]
    return [
        f"{name}: {'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in _crd_validator(path).iter_errors(document)
    ]


def assert_valid(documents: Iterable[dict[str, Any]], where: str) -> None:
    """Every manifest validates; the failure lists each problem with the file or render it came from."""
    found = [problem for document in documents for problem in problems(document)]
    assert not found, f"{where}:\n" + "\n".join(found)


def kinds(documents: Iterable[dict[str, Any]]) -> Iterator[str]:
    """`Kind/name` of each manifest, for assertions on what a render or kustomization contains."""
    for document in documents:
        yield f"{document['kind']}/{document['metadata']['name']}"


def _first_lines(message: str, count: int = 3) -> str:
    return " ".join(line.strip() for line in message.splitlines()[:count] if line.strip())
