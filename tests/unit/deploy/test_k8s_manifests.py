"""deploy/k8s without a cluster: kustomize renders, Kubernetes and CRD schemas, what naiad needs of each manifest."""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from naiad import cli
from naiad.config.settings import ServerSettings
from naiad.core.stores.s3 import parse_s3_uri
from tests.unit.deploy.kube_schemas import KUBERNETES_VERSION, assert_valid, kinds, load_documents

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
EXAMPLES = REPO / "examples" / "models"
KUSTOMIZATIONS = sorted(path.parent for path in K8S.rglob("kustomization.yaml"))
# Components (kind: Component) only take effect inside an overlay; the others are what `kubectl apply -k` takes.
COMPONENTS = [path for path in KUSTOMIZATIONS if "kind: Component" in (path / "kustomization.yaml").read_text()]
APPLICABLE = [path for path in KUSTOMIZATIONS if path not in COMPONENTS]
# YAML files that no kustomization owns (Seldon, KServe): applied as they are, with `kubectl apply -n NS -f`.
PLAIN_FILES = sorted(path for path in K8S.rglob("*.yaml") if not (path.parent / "kustomization.yaml").exists())
MINIO_EXAMPLE = K8S / "minio"
NAIAD_IMAGES = {"naiad:cpu", "naiad:cuda"}  # deploy/docker's tags, loaded into kind under these names
NAIAD_UID = 1000  # the image's naiad user (deploy/docker/Dockerfile)
KUBERNETES_DEFAULT_GRACE = 30  # terminationGracePeriodSeconds when a pod spec leaves it out
# How the image starts `naiad serve`: its entry point runs arguments that start with `-` as flags of `naiad serve`,
# anything else as a command; `tritonserver` (on the PATH and at Triton's path) is a shim for `naiad serve`.
TRITONSERVER_SHIMS = {"tritonserver", "/usr/local/bin/tritonserver", "/opt/tritonserver/bin/tritonserver"}
IMAGE_CMD = ["--model-repository=/models"]
# What Seldon Core v1's operator gives the container of a TRITON_SERVER graph node that sets no args of its own
# (operator/controllers/seldondeployment_prepackaged_servers.go, addTritonServer), with the ports its defaulting
# webhook hands the first model (http 9000, grpc 9500).
SELDON_TRITON_ARGS = [
    "/opt/tritonserver/bin/tritonserver",
    "--grpc-port=9500",
    "--http-port=9000",
    "--model-repository=/mnt/models",
    "--strict-model-config=false",
]
# ... and the ports it always sets on that container, under the names the probes can use.
SELDON_TRITON_PORTS = [
    {"name": "grpc", "containerPort": 9500, "protocol": "TCP"},
    {"name": "http", "containerPort": 9000, "protocol": "TCP"},
]
SELDON_EXECUTOR_PORTS = {8000, 5001}  # the service orchestrator in the same pod: HTTP (and its metrics), gRPC
KSERVE_DEFAULT_PORT = 8080  # where KServe sends HTTP when a custom container declares no port
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
# Services outside the manifests that they are allowed to name in another namespace.
EXTERNAL_SERVICES = {("kube-prometheus-stack-prometheus", "monitoring")}  # kube-prometheus-stack's Prometheus
SVC_HOST = re.compile(r"\b([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?\b")
PROMQL_METRIC = re.compile(r"\b(nv_[a-z_]+)\b")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ---- rendering -----------------------------------------------------------------------------------------------------


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders the kustomizations)")
    return path


@cache
def _render(directory: Path) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory.relative_to(REPO)} failed:\n{result.stderr}"
    return result.stdout


def render(directory: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize DIR` prints (a fresh copy each time)."""
    return load_documents(_render(directory))


def plain(path: Path) -> list[dict[str, Any]]:
    return load_documents(path.read_text())


def kustomization(directory: Path) -> dict[str, Any]:
    document = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(document, dict)
    return document


def namespace_of(directory: Path) -> str | None:
    """The namespace a kustomization sets, directly or through the kustomizations it builds on."""
    own = kustomization(directory)
    if own.get("namespace"):
        return str(own["namespace"])
    for resource in own.get("resources", []):
        if (directory / resource / "kustomization.yaml").exists():
            found = namespace_of((directory / resource).resolve())
            if found:
                return found
    return None


def builds() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(where, documents) of every kustomization and plain file."""
    for directory in KUSTOMIZATIONS:
        yield str(directory.relative_to(REPO)), render(directory)
    for path in PLAIN_FILES:
        yield str(path.relative_to(REPO)), plain(path)


def rel(path: Path) -> str:
    return str(path.relative_to(K8S))


# ---- pods, containers and naiad's command line ----------------------------------------------------------------------

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


@cache
def pod_spec_fields() -> frozenset[str]:
    """The fields of a core/v1 PodSpec, from the Kubernetes schema kube_schemas validates with."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    schema = json.loads((folder / f"v{KUBERNETES_VERSION}.0-local-strict" / "podspec-v1.json").read_text())
    return frozenset(schema["properties"])


def pod_specs(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """(where, pod spec, pod labels) of every pod a manifest describes, the custom resources' embedded ones included."""
    kind, name = document["kind"], document["metadata"]["name"]
    spec = document.get("spec", {})
    if kind in WORKLOADS:
        template = spec["template"]
        yield f"{kind}/{name}", template["spec"], template.get("metadata", {}).get("labels", {})
    elif kind == "SeldonDeployment":
        for predictor in spec["predictors"]:
            for index, component in enumerate(predictor.get("componentSpecs", [])):
                labels = component.get("metadata", {}).get("labels", {})
                yield f"{kind}/{name} {predictor['name']} componentSpecs[{index}]", component["spec"], labels
    elif kind == "InferenceService":
        predictor = spec["predictor"]
        pod = {key: value for key, value in predictor.items() if key in pod_spec_fields()}
        if pod.get("containers"):
            yield f"{kind}/{name} predictor", pod, predictor.get("labels", {})
    elif kind in ("ClusterServingRuntime", "ServingRuntime"):
        pod = {key: value for key, value in spec.items() if key in pod_spec_fields()}
        yield f"{kind}/{name}", pod, spec.get("labels", {})


def as_pod(where: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An embedded pod spec as a Pod of its own, for Kubernetes' schema."""
    name = re.sub(r"[^a-z0-9-]+", "-", where.lower()).strip("-")[:63].strip("-")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def image_name(image: str) -> str:
    """'registry.example.com/naiad:cuda' -> 'naiad'."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def naiad_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for container in spec.get("containers", []):
        if image_name(container.get("image", "")) == "naiad":
            yield container


def serve_argv(container: dict[str, Any]) -> list[str]:
    """The arguments `naiad serve` gets when the image starts with this container's command and args."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if command:
        if command[0] in TRITONSERVER_SHIMS:
            return command[1:] + args
        assert command[:2] == ["naiad", "serve"], f"{container['name']}: command {command} does not run naiad serve"
        return command[2:] + args
    if not args:
        return list(IMAGE_CMD)
    if args[0].startswith("-"):
        return args
    if args[0] in TRITONSERVER_SHIMS:
        return args[1:]
    assert args[:2] == ["naiad", "serve"], f"{container['name']}: args {args} do not run naiad serve"
    return args[2:]


def parse_serve(argv: list[str], where: str) -> tuple[argparse.Namespace, ServerSettings]:
    """argv through naiad's own command line (the parser `naiad serve` uses, and the checks main() adds)."""
    refused = cli.refuse_unsupported(argv)
    assert refused is None, f"{where}: {refused}"
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = cli.build_parser().parse_args(["serve", *argv])
    except SystemExit:
        pytest.fail(f"{where}: naiad serve refuses {argv}:\n{errors.getvalue()}")
    assert not args.load_model or args.model_control_mode == "explicit", f"{where}: --load-model needs explicit mode"
    return args, cli.settings_from(args)


@dataclass(frozen=True)
class NaiadPod:
    """A pod that runs naiad: where it is described, its spec, the container, naiad's argv and settings."""

    where: str
    spec: dict[str, Any]
    container: dict[str, Any]
    argv: list[str]
    settings: ServerSettings
    document: dict[str, Any]

    def built_by(self, directory: Path) -> bool:
        return self.where.startswith(f"{directory.relative_to(REPO)}:")


@cache
def naiad_pods() -> tuple[NaiadPod, ...]:
    """Every pod that runs naiad, in every build, its argv parsed by naiad's own command line."""
    found: list[NaiadPod] = []
    for where, documents in builds():
        for document in documents:
            for pod_where, spec, _ in pod_specs(document):
                for container in naiad_containers(spec):
                    seldon_args = seldon_triton_args(document, container)
                    if seldon_args:  # the container as Seldon's operator completes it
                        container = {**container, "args": seldon_args, "ports": SELDON_TRITON_PORTS}
                    argv = serve_argv(container)
                    label = f"{where}: {pod_where} container {container['name']}"
                    found.append(NaiadPod(label, spec, container, argv, parse_serve(argv, label)[1], document))
    return tuple(found)


def seldon_triton_args(document: dict[str, Any], container: dict[str, Any]) -> list[str] | None:
    """Seldon's arguments when this container is the image override of a TRITON_SERVER graph node."""
    if document["kind"] != "SeldonDeployment" or container.get("args"):
        return None
    for predictor in document["spec"]["predictors"]:
        for node in graph_nodes(predictor["graph"]):
            if node["name"] == container["name"] and node.get("implementation") == "TRITON_SERVER":
                return SELDON_TRITON_ARGS
    return None


def graph_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children", []):
        yield from graph_nodes(child)


def seldon_nodes(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every graph node of every predictor of a SeldonDeployment (nothing for other kinds)."""
    if document["kind"] == "SeldonDeployment":
        for predictor in document["spec"]["predictors"]:
            yield from graph_nodes(predictor["graph"])


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number, or the name of one of the container's ports) as a number."""
    if isinstance(port, int):
        return port
    named = [item["containerPort"] for item in container.get("ports", []) if item.get("name") == port]
    assert named, f"{container['name']} has no port named {port}"
    return int(named[0])


def prestop_sleep(container: dict[str, Any]) -> int:
    """Seconds the preStop hook sleeps (0 without one)."""
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    match = re.search(r"\bsleep\s+(\d+)", " ".join(command))
    return int(match.group(1)) if match else 0


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


# ---- schemas --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=rel)
def test_every_kustomization_renders_and_validates(directory: Path) -> None:
    documents = render(directory)
    if directory not in COMPONENTS:  # a component of patches alone renders nothing
        assert documents, f"{rel(directory)} renders nothing"
    assert_valid(documents, f"kubectl kustomize {rel(directory)}")


@pytest.mark.parametrize("path", PLAIN_FILES, ids=rel)
def test_plain_manifests_validate(path: Path) -> None:
    documents = plain(path)
    assert documents, f"{rel(path)} holds no manifest"
    assert_valid(documents, rel(path))


def test_embedded_pod_specs_validate_as_pods() -> None:
    """Seldon's componentSpecs[].spec, KServe's predictor and serving runtime: Kubernetes' PodSpec, strictly."""
    pods = [
        as_pod(f"{where} {pod_where}", spec)
        for where, documents in builds()
        for document in documents
        if document["kind"] not in WORKLOADS
        for pod_where, spec, _ in pod_specs(document)
    ]
    assert len(pods) >= 4, "expected the two Seldon, the KServe predictor and the runtime pod specs"
    assert_valid(pods, "embedded pod specs")


def test_every_component_is_built_by_an_overlay() -> None:
    """Components only show their effect in a build: each one is part of some rendered overlay."""
    used = {
        (directory / component).resolve()
        for directory in KUSTOMIZATIONS
        for component in kustomization(directory).get("components") or []
    }
    components = set(COMPONENTS)
    assert components, "no components found"
    assert components <= used, f"components no overlay uses: {sorted(map(rel, components - used))}"


# ---- naiad's command line, ports, probes, shutdown ------------------------------------------------------------------


def test_naiad_runs_in_every_variant() -> None:
    found = {pod.where.split(":", 1)[0] for pod in naiad_pods()}
    expected = {f"deploy/k8s/{rel(directory)}" for directory in APPLICABLE}
    expected |= {
        f"deploy/k8s/{rel(path)}"
        for path in PLAIN_FILES
        if any(spec.get("containers") for document in plain(path) for _, spec, _ in pod_specs(document))
    }
    assert expected <= found, f"no naiad container parsed in {sorted(expected - found)}"


def test_args_are_flags_naiad_serve_accepts() -> None:
    """Every container running naiad: its argv goes through naiad's own parser (done by naiad_pods), and the
    repository is given explicitly."""
    pods = naiad_pods()
    assert len(pods) >= len(KUSTOMIZATIONS), "naiad containers found"
    for pod in pods:
        assert any(arg.startswith("--model-repository=") for arg in pod.argv), f"{pod.where}: no --model-repository"
        assert pod.settings.model_repositories, pod.where


def test_probes_use_v2_health_on_the_http_port() -> None:
    for pod in naiad_pods():
        where, container, settings = pod.where, pod.container, pod.settings
        declared = {int(port["containerPort"]) for port in container.get("ports", [])}
        assert settings.http_port in declared, f"{where}: --http-port {settings.http_port} is not a declared port"
        expected = {"livenessProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready"}
        if "startupProbe" in container:
            expected["startupProbe"] = "/v2/health/live"
        for probe, path in expected.items():
            action = container.get(probe, {}).get("httpGet")
            assert action, f"{where}: no httpGet {probe}"
            assert action["path"] == path, f"{where}: {probe} asks {action['path']}, not {path}"
            port = port_number(container, action["port"])
            assert port == settings.http_port, f"{where}: {probe} on port {port}, naiad's HTTP is {settings.http_port}"
        for name, port in (
            ("grpc", settings.grpc_port),
            ("metrics", settings.metrics_port),
            ("http", settings.http_port),
        ):
            for item in container.get("ports", []):
                if item.get("name") == name:
                    assert item["containerPort"] == port, (
                        f"{where}: port {name} is {item['containerPort']}, naiad {port}"
                    )


def test_grace_period_outlasts_prestop_and_drain() -> None:
    """SIGKILL must not come before naiad has drained: grace > preStop sleep + --exit-timeout-secs."""
    for pod in naiad_pods():
        where, spec, container, settings, document = pod.where, pod.spec, pod.container, pod.settings, pod.document
        needed = prestop_sleep(container) + settings.exit_timeout_secs
        if document["kind"] in ("InferenceService", "ClusterServingRuntime"):
            # Knative sets the grace period from the predictor's timeout; RawDeployment leaves Kubernetes' default.
            timeout = document["spec"].get("predictor", {}).get("timeout", KUBERNETES_DEFAULT_GRACE)
            grace = min(timeout, KUBERNETES_DEFAULT_GRACE)
            assert "terminationGracePeriodSeconds" not in spec, (
                f"{where}: Knative refuses terminationGracePeriodSeconds"
            )
        else:
            grace = spec.get("terminationGracePeriodSeconds", KUBERNETES_DEFAULT_GRACE)
        assert grace > needed, f"{where}: grace period {grace}s, preStop + drain need {needed}s"


def test_naiad_runs_as_uid_1000_with_a_writable_tmp() -> None:
    """The image's user; with a read-only root file system naiad still needs /tmp (copies of remote models)."""
    for pod in naiad_pods():
        where, spec, container = pod.where, pod.spec, pod.container
        context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
        assert context.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert context.get("runAsUser") == NAIAD_UID, f"{where}: runAsUser {context.get('runAsUser')}"
        assert context.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        if context.get("readOnlyRootFilesystem"):
            mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: read-only root file system without a /tmp volume"
            volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp is not an emptyDir"
        assert container["image"] in NAIAD_IMAGES, f"{where}: image {container['image']}"
        assert container.get("imagePullPolicy") == "IfNotPresent", f"{where}: `kind load` images need IfNotPresent"


# ---- Services, monitoring, autoscaling ------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", APPLICABLE, ids=rel)
def test_service_ports_match_container_ports(directory: Path) -> None:
    documents = render(directory)
    pods = [(spec, labels) for document in documents for _, spec, labels in pod_specs(document)]
    for service in by_kind(documents, "Service"):
        name, selector = service["metadata"]["name"], service["spec"].get("selector", {})
        targets = [spec for spec, labels in pods if selects(selector, labels)]
        assert targets, f"{rel(directory)}: Service {name} selects no pod"
        for port in service["spec"]["ports"]:
            for spec in targets:
                matches = [
                    item
                    for container in spec["containers"]
                    for item in container.get("ports", [])
                    if item.get("name") == port["targetPort"] or item["containerPort"] == port["targetPort"]
                ]
                assert matches, f"{rel(directory)}: Service {name} port {port['name']} targets nothing"
                assert matches[0].get("name") == port["name"], f"{rel(directory)}: {name} port names differ"


def test_service_monitors_scrape_naiads_metrics_port() -> None:
    """The ServiceMonitor selects the Service by its labels, names its port, and that port leads to --metrics-port."""
    checked = 0
    for directory in APPLICABLE:
        documents = render(directory)
        for monitor in by_kind(documents, "ServiceMonitor"):
            where = f"{rel(directory)}: ServiceMonitor {monitor['metadata']['name']}"
            selector = monitor["spec"]["selector"]["matchLabels"]
            services = [s for s in by_kind(documents, "Service") if selects(selector, s["metadata"].get("labels", {}))]
            assert len(services) == 1, f"{where} selects {len(services)} Services"
            ports = {port["name"]: port for port in services[0]["spec"]["ports"]}
            pods = [pod for pod in naiad_pods() if pod.built_by(directory)]
            assert pods, f"{where}: no naiad in this build"
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] in ports, f"{where}: the Service has no port named {endpoint['port']}"
                assert endpoint.get("path", "/metrics") == "/metrics", where
                for pod in pods:
                    target = port_number(pod.container, ports[endpoint["port"]]["targetPort"])
                    assert target == pod.settings.metrics_port, f"{where}: scrapes {target}, not --metrics-port"
            checked += 1
    assert checked >= 2, "the monitoring and keda overlays carry a ServiceMonitor"


@pytest.mark.parametrize("directory", APPLICABLE, ids=rel)
def test_autoscalers_own_the_replica_count(directory: Path) -> None:
    documents = render(directory)
    deployments = {document["metadata"]["name"]: document for document in by_kind(documents, "Deployment")}
    hpas, scaled = by_kind(documents, "HorizontalPodAutoscaler"), by_kind(documents, "ScaledObject")
    assert not (hpas and scaled), "KEDA creates its own HPA: an HPA next to a ScaledObject fights it"
    for autoscaler in hpas + scaled:
        target = autoscaler["spec"]["scaleTargetRef"]
        if deployments:
            assert target["name"] in deployments, f"{kinds([autoscaler])}: no Deployment {target['name']}"
            assert "replicas" not in deployments[target["name"]]["spec"], "the autoscaler owns replicas"
            assert by_kind(documents, "PodDisruptionBudget"), "a PodDisruptionBudget"
    for hpa in hpas:
        assert any(metric.get("resource", {}).get("name") == "cpu" for metric in hpa["spec"]["metrics"])
        for deployment in deployments.values():
            for container in naiad_containers(deployment["spec"]["template"]["spec"]):
                assert "cpu" in container.get("resources", {}).get("requests", {}), "CPU utilization needs a request"
    if scaled and deployments:
        assert by_kind(documents, "ServiceMonitor"), "KEDA's Prometheus queries need Prometheus to scrape naiad"


def test_keda_queries_name_metrics_naiad_exposes(naiad: Any) -> None:
    """Each query's metric against a real server's /metrics: a gauge as it is, a counter only inside rate()."""
    queries = [
        trigger["metadata"]["query"]
        for _, documents in builds()
        for scaled in by_kind(documents, "ScaledObject")
        for trigger in scaled["spec"]["triggers"]
        if trigger["type"] == "prometheus"
    ]
    assert queries, "no prometheus trigger found"
    server = naiad.start(EXAMPLES, metrics=True)
    text = requests.get(server.metrics_url, timeout=10).text
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for query in queries:
        metrics = PROMQL_METRIC.findall(query)
        assert metrics, f"no nv_ metric in {query}"
        for metric in metrics:
            assert metric in types, f"naiad exposes no {metric} (it has {sorted(types)})"
            wanted = "counter" if re.search(rf"rate\(\s*{metric}\b", query) else "gauge"
            assert types[metric] == wanted, f"{metric} is a {types[metric]}, the query uses it as a {wanted}"


# ---- repositories, namespaces, credentials --------------------------------------------------------------------------


def minio_repository() -> tuple[str, tuple[str, ...]]:
    """(bucket, folders) of the repository the MinIO example's naiad serves."""
    (uri,) = [pod.settings.model_repositories[0] for pod in naiad_pods() if pod.built_by(MINIO_EXAMPLE)]
    location = parse_s3_uri(uri)
    return location.bucket, location.folders


@pytest.mark.parametrize("directory", APPLICABLE, ids=rel)
def test_repository_endpoints_are_services_of_the_build(directory: Path) -> None:
    """s3://host:port/...: host is a Service of the same build (or its namespace) with that port."""
    documents = render(directory)
    services = {service["metadata"]["name"]: service for service in by_kind(documents, "Service")}
    namespace = namespace_of(directory)
    for pod in naiad_pods():
        if not pod.built_by(directory):
            continue
        where = pod.where
        for uri in pod.settings.model_repositories:
            if not uri.startswith("s3://"):
                continue
            location = parse_s3_uri(uri)
            if location.endpoint is None:
                continue  # an AWS bucket: boto3's own endpoint
            host, _, port = location.endpoint.split("://", 1)[1].partition(":")
            name, _, rest = host.partition(".")
            assert not rest or rest.split(".")[0] == namespace, f"{where}: {uri} names another namespace"
            assert name in services, f"{where}: {uri} names no Service of this build"
            assert int(port) in {item["port"] for item in services[name]["spec"]["ports"]}, f"{where}: port {port}"


def test_minio_example_creates_and_waits_for_the_served_bucket() -> None:
    bucket, folders = minio_repository()
    scripts = " ".join(
        " ".join(container.get("args", []))
        for document in render(MINIO_EXAMPLE)
        for _, spec, _ in pod_specs(document)
        for container in spec.get("containers", []) + spec.get("initContainers", [])
        if image_name(container["image"]) == "mc"
    )
    assert f"mc mb --ignore-existing local/{bucket}" in scripts, "the Job creates another bucket"
    assert f"local/{bucket}/{'/'.join(folders)}/" in scripts, "the init container waits for another path"


def test_seldon_and_kserve_read_the_minio_example_repository() -> None:
    """The Seldon and KServe manifests use the MinIO of deploy/k8s/minio: same Service, namespace, bucket and path."""
    bucket, folders = minio_repository()
    minio = render(MINIO_EXAMPLE)
    namespace = namespace_of(MINIO_EXAMPLE)
    services = {(service["metadata"]["name"], namespace): service for service in by_kind(minio, "Service")}
    uris: list[str] = []
    for path in PLAIN_FILES:
        for document in plain(path):
            for value in strings(document):
                for match in SVC_HOST.finditer(value):
                    key = (match.group(1), match.group(3))
                    assert key in services or key in EXTERNAL_SERVICES, f"{rel(path)}: {match.group(0)} is unknown"
                if value.startswith("s3://"):
                    uris.append(value)
            uris.extend(node["modelUri"] for node in seldon_nodes(document) if "modelUri" in node)
    assert len(uris) >= 4, uris
    for uri in uris:
        location = parse_s3_uri(uri)
        assert (location.bucket, location.folders) == (bucket, folders), f"{uri}: not the MinIO example's repository"


@pytest.mark.parametrize("directory", APPLICABLE, ids=rel)
def test_nothing_names_a_namespace_the_kustomization_does_not_set(directory: Path) -> None:
    """Components are checked inside the overlays that use them: a component takes the overlay's namespace."""
    documents = render(directory)
    namespace = namespace_of(directory)
    services = {service["metadata"]["name"] for service in by_kind(documents, "Service")}
    for document in documents:
        where = f"{rel(directory)}: {next(kinds([document]))}"
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == namespace, (
                f"{where}: namespace {document['metadata'].get('namespace')}"
            )
        for value in strings(document):
            for match in SVC_HOST.finditer(value):
                name, other = match.group(1), match.group(3)
                if (name, other) in EXTERNAL_SERVICES:
                    continue
                assert name in services and other == namespace, f"{where}: {match.group(0)}"
            for other in re.findall(r'\bnamespace\s*=~?\s*"([^"]*)"', value):
                assert other == namespace, f"{where}: a query names namespace {other!r}"
            for service in re.findall(r'\bservice\s*=~?\s*"([^"]*)"', value):
                assert service in services, f"{where}: a query names Service {service!r}"
    if namespace is not None:
        assert [document["metadata"]["name"] for document in by_kind(documents, "Namespace")] in ([], [namespace])


@pytest.mark.parametrize("path", PLAIN_FILES, ids=rel)
def test_plain_manifests_leave_the_namespace_to_kubectl(path: Path) -> None:
    for document in plain(path):
        assert "namespace" not in document["metadata"], f"{rel(path)}: apply with kubectl -n instead"


def boto3_variables() -> tuple[str, str, str]:
    """The environment variables boto3 reads the keys and the region from, as botocore itself names them."""
    botocore_credentials = pytest.importorskip("botocore.credentials", reason="boto3 (the s3 extra)")
    botocore_session = pytest.importorskip("botocore.session")
    region = botocore_session.Session().session_var_map["region"][1]
    return botocore_credentials.EnvProvider.ACCESS_KEY, botocore_credentials.EnvProvider.SECRET_KEY, region


def secret_keys(secret: dict[str, Any]) -> set[str]:
    return set(secret.get("data", {})) | set(secret.get("stringData", {}))


def test_minio_example_credentials_are_what_boto3_and_minio_read() -> None:
    access, secret_key, region = boto3_variables()
    documents = render(MINIO_EXAMPLE)
    secrets = {secret["metadata"]["name"]: secret for secret in by_kind(documents, "Secret")}
    (deployment,) = [
        d for d in by_kind(documents, "Deployment") if any(naiad_containers(d["spec"]["template"]["spec"]))
    ]
    (naiad_container,) = naiad_containers(deployment["spec"]["template"]["spec"])
    (source,) = [item["secretRef"]["name"] for item in naiad_container["envFrom"]]
    assert source in secrets, f"naiad reads Secret {source}, which the example does not make"
    keys = secret_keys(secrets[source])
    assert {access, secret_key, region} <= keys, f"Secret {source} lacks boto3's variables: {sorted(keys)}"
    assert keys <= {access, secret_key, region, "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"}, f"unknown keys: {keys}"
    (minio,) = [d for d in by_kind(documents, "Deployment") if d["metadata"]["name"] == "minio"]
    env = {
        item["name"]: item.get("valueFrom", {}).get("secretKeyRef")
        for item in minio["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MINIO_ROOT_USER"] == {"name": source, "key": access}, "MinIO's user is not naiad's access key"
    assert env["MINIO_ROOT_PASSWORD"] == {"name": source, "key": secret_key}, (
        "MinIO's password is not naiad's secret key"
    )


def test_seldon_and_kserve_secrets_hold_what_their_readers_read() -> None:
    access, secret_key, _ = boto3_variables()
    seldon = {
        s["metadata"]["name"]: s
        for path in PLAIN_FILES
        if path.parent.name == "seldon"
        for s in by_kind(plain(path), "Secret")
    }
    kserve = [d for path in PLAIN_FILES if path.parent.name == "kserve" for d in plain(path)]
    for document in [d for path in PLAIN_FILES if path.parent.name == "seldon" for d in plain(path)]:
        if document["kind"] != "SeldonDeployment":
            continue
        for where, spec, _ in pod_specs(document):
            for container in naiad_containers(spec):
                for item in container.get("envFrom", []):
                    assert {access, secret_key} <= secret_keys(seldon[item["secretRef"]["name"]]), where
        for node in seldon_nodes(document):
            if "envSecretRefName" in node:
                remote = node["modelUri"].split("://", 1)[0].upper()  # rclone remote named after the scheme
                keys = secret_keys(seldon[node["envSecretRefName"]])
                wanted = {f"RCLONE_CONFIG_{remote}_{key}" for key in ("TYPE", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY")}
                assert wanted <= keys, f"{node['envSecretRefName']} lacks {sorted(wanted - keys)} for rclone"
                strays = {key for key in keys if not key.startswith(f"RCLONE_CONFIG_{remote}_")}
                assert not strays, f"{node['envSecretRefName']}: {sorted(strays)} configure no remote {remote}"
    accounts = {a["metadata"]["name"]: a for a in by_kind(kserve, "ServiceAccount")}
    secrets = {s["metadata"]["name"]: s for s in by_kind(kserve, "Secret")}
    for isvc in by_kind(kserve, "InferenceService"):
        account = accounts[isvc["spec"]["predictor"]["serviceAccountName"]]
        (secret,) = [secrets[item["name"]] for item in account["secrets"]]
        assert {access, secret_key} <= secret_keys(secret), "KServe's storage initializer reads AWS_* keys"
        assert "serving.kserve.io/s3-endpoint" in secret["metadata"]["annotations"]


# ---- Seldon and KServe specifics ------------------------------------------------------------------------------------


def test_seldon_graph_names_match_containers_and_ports_avoid_the_executor() -> None:
    deployments = [d for path in PLAIN_FILES for d in plain(path) if d["kind"] == "SeldonDeployment"]
    assert len(deployments) == 2
    for document in deployments:
        assert document["spec"]["protocol"] == "v2", "V2 (Open Inference) protocol"
        for predictor in document["spec"]["predictors"]:
            containers = {c["name"]: c for spec in predictor["componentSpecs"] for c in spec["spec"]["containers"]}
            for node in graph_nodes(predictor["graph"]):
                assert DNS_LABEL.match(node["name"]), f"graph name {node['name']} cannot name a container"
                assert node["name"] in containers, f"graph node {node['name']} has no container of that name"
                if node.get("implementation") in (None, "UNKNOWN_IMPLEMENTATION"):
                    assert node.get("type") == "MODEL"
                else:
                    assert node["implementation"] == "TRITON_SERVER" and node.get("modelUri"), node
                    assert image_name(containers[node["name"]]["image"]) == "naiad", "the override is naiad's image"
    for pod in naiad_pods():
        where, container, settings = pod.where, pod.container, pod.settings
        if pod.document["kind"] != "SeldonDeployment":
            continue
        ports = {settings.http_port, settings.grpc_port, settings.metrics_port}
        assert not ports & SELDON_EXECUTOR_PORTS, f"{where}: {ports & SELDON_EXECUTOR_PORTS} clash with the executor"
        named = {item["name"]: item["containerPort"] for item in container.get("ports", [])}
        # Seldon's executor sends HTTP and gRPC to the container's ports named http and grpc.
        assert named.get("http") == settings.http_port and named.get("grpc") == settings.grpc_port, where


def test_kserve_container_listens_where_kserve_sends_traffic() -> None:
    kserve = [d for path in PLAIN_FILES if path.parent.name == "kserve" for d in plain(path)]
    runtimes = {r["metadata"]["name"]: r for r in by_kind(kserve, "ClusterServingRuntime")}
    checked = 0
    for pod in naiad_pods():
        where, spec, container, settings, document = pod.where, pod.spec, pod.container, pod.settings, pod.document
        if document["kind"] not in ("InferenceService", "ClusterServingRuntime"):
            continue
        checked += 1
        assert spec["containers"][0] is container and container["name"] == "kserve-container", where
        ports = [int(item["containerPort"]) for item in container.get("ports", [])]
        assert len(ports) <= 1, f"{where}: Knative routes to a single declared port"
        assert settings.http_port == (ports[0] if ports else KSERVE_DEFAULT_PORT), (
            f"{where}: naiad not on KServe's port"
        )
        assert settings.model_repositories == (KSERVE_MODEL_DIR,), f"{where}: the storage initializer fills /mnt/models"
        assert "securityContext" not in spec, f"{where}: Knative refuses a pod-level securityContext by default"
        if document["kind"] == "InferenceService":
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            assert env.get("PROTOCOL") == "v2", f"{where}: PROTOCOL=v2"
            assert env.get("STORAGE_URI", "").startswith("s3://"), f"{where}: STORAGE_URI"
    assert checked == 2, "the custom predictor and the runtime"
    for isvc in by_kind(kserve, "InferenceService"):
        metric = isvc["spec"]["predictor"].get("scaleMetric")
        assert metric in (None, "cpu", "memory"), f"RawDeployment's HPA refuses scaleMetric {metric}"
    for isvc in by_kind(kserve, "InferenceService"):
        model = isvc["spec"]["predictor"].get("model")
        if model is None:
            continue
        runtime = runtimes[model["runtime"]]["spec"]
        assert model["modelFormat"]["name"] in {item["name"] for item in runtime["supportedModelFormats"]}
        assert model["protocolVersion"] in runtime["protocolVersions"]
        assert model["storageUri"].startswith("s3://")


def test_gpu_overlay_runs_the_cuda_image_on_a_gpu() -> None:
    documents = render(K8S / "overlays" / "gpu")
    (deployment,) = [
        d for d in by_kind(documents, "Deployment") if any(naiad_containers(d["spec"]["template"]["spec"]))
    ]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = naiad_containers(spec)
    assert container["image"] == "naiad:cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(item["key"] == "nvidia.com/gpu" for item in spec.get("tolerations", []))
    base = copy.deepcopy(render(K8S / "minio"))
    (cpu,) = [c for d in by_kind(base, "Deployment") for c in naiad_containers(d["spec"]["template"]["spec"])]
    assert cpu["image"] == "naiad:cpu" and "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
