"""Every HTTP route and gRPC method falls in one of Triton's API categories: a restriction has no way around it."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2 as pb

from naiad.config.restrictions import CATEGORIES
from naiad.frontends.grpc.restrictions import rpc_categories
from naiad.frontends.http.app import api_category


def test_every_grpc_method_has_a_category() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        categories = rpc_categories(f"/inference.GRPCInferenceService/{method.name}")
        assert len(categories) == 1 and categories[0] in CATEGORIES, method.name
    assert rpc_categories("/grpc.health.v1.Health/Check") == ("health",)
    assert rpc_categories("/grpc.health.v1.Health/Watch") == ("health",)
    assert rpc_categories("/grpc.health.v1.Health/List") == ("health", "model-repository")  # it names every model


@pytest.mark.parametrize(
    ("path", "category"),
    [
        ("/v2", "metadata"),
        ("/v2/", "metadata"),
        ("/v2/health/live", "health"),
        ("/v2/health/ready", "health"),
        ("/v2/models/m", "metadata"),
        ("/v2/models/m/versions/2", "metadata"),
        ("/v2/models/m/ready", "health"),
        ("/v2/models/m/versions/2/ready", "health"),
        ("/v2/models/m/config", "model-config"),
        ("/v2/models/m/infer", "inference"),
        ("/v2/models/m/versions/1/infer", "inference"),
        ("/v2/models/m/generate", "inference"),
        ("/v2/models/m/stats", "statistics"),
        ("/v2/models/stats", "statistics"),
        ("/v2/models/m/trace/setting", "trace"),
        ("/v2/trace/setting", "trace"),
        ("/v2/repository/index", "model-repository"),
        ("/v2/repository/models/m/load", "model-repository"),
        ("/v2/repository/models/m/unload", "model-repository"),
        ("/v2/logging", "logging"),
        ("/v2/systemsharedmemory/status", "shared-memory"),
        ("/v2/cudasharedmemory/region/r/register", "shared-memory"),
    ],
)
def test_http_routes_fall_in_their_category(path: str, category: str) -> None:
    assert api_category(path) == category
