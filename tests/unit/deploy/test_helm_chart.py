"""deploy/helm/naiad, no cluster: Helm's lint and renderer, Kubernetes' schemas, naiad's own parser and server."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from naiad import __version__
from naiad.cli import build_parser, refuse_unsupported, settings_from
from tests.conftest import free_port
from tests.unit.deploy.kube_schemas import assert_valid, kinds, load_documents, problems

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK as a library) ships only for x86_64")

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "deploy" / "helm" / "naiad"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
MODELS = REPO / "examples" / "models"
RELEASE, NAMESPACE = "naiad", "models"
BASE_KINDS = {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
EXPECTED_KINDS: dict[str, set[str]] = {
    "default": BASE_KINDS,
    "minio.yaml": BASE_KINDS,  # its keys come from an existing Secret: the chart creates none
    "gpu.yaml": BASE_KINDS,
    "pvc.yaml": BASE_KINDS,
    "explicit.yaml": BASE_KINDS,
    "autoscaling-hpa.yaml": BASE_KINDS | {"HorizontalPodAutoscaler"},
    "autoscaling-keda.yaml": BASE_KINDS | {"ScaledObject", "ServiceMonitor"},
}
# Every optional resource at once (except the HPA, which excludes KEDA): what an uninstall would have to remove.
EVERYTHING: dict[str, Any] = {
    "s3": {"accessKeyId": "minio", "secretAccessKey": "minio-secret", "endpoint": "http://minio:9000"},
    "modelRepository": {"uri": "s3://models/triton-repo"},
    "serviceMonitor": {
        "enabled": True,
        "honorLabels": True,
        "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
        "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "nv_energy_.*"}],
    },
    "keda": {
        "enabled": True,
        "models": ["add_sub", "string_upper"],
        "activationThreshold": 0.5,
        "prometheus": {"authModes": "bearer", "authenticationRef": {"name": "prometheus"}, "ignoreNullValues": "false"},
        "fallback": {"failureThreshold": 3, "replicas": 2},
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        "extraTriggers": [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": "80"}}],
    },
}


# ---- helpers -----------------------------------------------------------------------------------------------------


def example_values(name: str) -> dict[str, Any]:
    """The values of an example file, or {} for the chart's defaults."""
    if name == "default":
        return {}
    values = yaml.safe_load((CHART / "examples" / name).read_text())
    assert isinstance(values, dict), name
    return values


def render(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifests of a release of `chart` with `values` (NOTES.txt left out)."""
    rendered: dict[str, str] = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml") for doc in load_documents(text)]


def notes(chart: Any, values: dict[str, Any]) -> str:
    rendered: dict[str, str] = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The only manifest of a kind."""
    found = [doc for doc in documents if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} in {list(kinds(documents))}"
    return found[0]


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["naiad"]
    result: dict[str, Any] = containers[0]
    return result


def flag(args: list[str], name: str) -> str:
    """The value of the last --name=value in args."""
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    assert values, f"no --{name} in {args}"
    return values[-1]


def expected_args(values: dict[str, Any]) -> list[str]:
    """The flags the values should become, written out here independently of the templates."""
    mode = values["modelControlMode"]
    args = [f"--model-repository={values['modelRepository']['uri']}", f"--model-control-mode={mode}"]
    if mode == "poll":
        args.append(f"--repository-poll-secs={values['repositoryPollSecs']}")
    args += [f"--load-model={model}" for model in values["loadModels"]]
    ports = values["containerPorts"]
    args += [
        f"--strict-readiness={str(values['strictReadiness']).lower()}",
        f"--exit-timeout-secs={values['exitTimeoutSecs']}",
        f"--model-load-thread-count={values['modelLoadThreadCount']}",
        f"--http-port={ports['http']}",
        f"--grpc-port={ports['grpc']}",
        f"--metrics-port={ports['metrics']}",
        f"--allow-metrics={str(values['metrics']['enabled']).lower()}",
        f"--log-verbose={values['log']['verbose']}",
        f"--log-format={values['log']['format']}",
    ]
    for index, restriction in enumerate(values["restrictedApis"]):
        spec = f"{','.join(restriction['apis'])}:{restriction['header']}=$(NAIAD_RESTRICTED_API_{index})"
        args += [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]
    return args + list(values["extraArgs"])


def accepted_by_naiad(args: list[str]) -> None:
    """`naiad serve` takes these flags: none refused as unimplemented, the parser and main()'s checks pass."""
    assert refuse_unsupported(args) is None
    parsed = build_parser().parse_args(["serve", *args])  # exits (SystemExit 2) on a bad flag or value
    if parsed.load_model:
        assert parsed.model_control_mode == "explicit"
        assert "*" not in parsed.load_model or len(parsed.load_model) == 1


def metric_families(exposition: str) -> dict[str, set[str]]:
    """Metric name -> label names, from a Prometheus text exposition."""
    families: dict[str, set[str]] = {}
    for line in exposition.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        if match:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
            families.setdefault(match.group(1), set()).update(labels)
    return families


def query_selectors(query: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) of each vector selector in a PromQL query."""
    return [
        (metric, dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', matchers)))
        for metric, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", query)
    ]


class ChartServer:
    """`naiad serve` run here with the container's command and args, the repository and ports swapped for local ones."""

    def __init__(self, command: list[str], args: list[str], log: Path) -> None:
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        local = {
            "model-repository": str(MODELS),
            "http-port": str(self.ports["http"]),
            "grpc-port": str(self.ports["grpc"]),
            "metrics-port": str(self.ports["metrics"]),
        }
        swapped = [f"--{name}={local[name]}" if (name := arg[2:].split("=", 1)[0]) in local else arg for arg in args]
        assert command[0] == "naiad", command
        argv = [sys.executable, "-m", "naiad", *command[1:], *swapped]
        argv += ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1"]
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def get(self, port: str, path: str) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.ports[port]}{path}", timeout=5)

    def wait(self, path: str) -> None:
        """Until the probe path answers 200, as the kubelet would wait."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"naiad exited:\n{self.log.read_text()}"
            try:
                if self.get("http", path).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{path} never answered 200:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


# ---- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """Start a ChartServer for a rendered container; every one started is stopped at the end."""
    started: list[ChartServer] = []

    def launch(naiad_container: dict[str, Any]) -> ChartServer:
        server = ChartServer(
            naiad_container["command"], naiad_container["args"], tmp_path / f"naiad-{len(started)}.log"
        )
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()


# ---- lint, schemas, kinds ----------------------------------------------------------------------------------------


def test_chart_metadata(chart: Any) -> None:
    metadata = chart.metadata
    assert metadata["apiVersion"] == "v2"
    assert metadata["name"] == "naiad"
    assert metadata["appVersion"] == __version__
    assert metadata["kubeVersion"] == ">=1.25.0-0"
    assert chart.schema is not None, "values.schema.json is missing"
    assert not chart.crds, "a chart's crds/ are never deleted by helm uninstall"


@pytest.mark.parametrize("example", ["default", *(path.name for path in EXAMPLES)])
def test_lint_has_no_errors_or_warnings(example: str) -> None:
    report = helm.lint(CHART, example_values(example), namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # 2 warning, 3 error; 1 is info ("icon")


def test_every_example_is_tested() -> None:
    assert {path.name for path in EXAMPLES} == set(EXPECTED_KINDS) - {"default"}


@pytest.mark.parametrize("example", list(EXPECTED_KINDS))
def test_renders_valid_manifests_of_the_expected_kinds(chart: Any, example: str) -> None:
    documents = render(chart, example_values(example))
    assert_valid(documents, f"{CHART.name} with {example}")
    assert {doc["kind"] for doc in documents} == EXPECTED_KINDS[example]
    assert len(set(kinds(documents))) == len(documents), "two resources of one kind share a name"


def test_every_optional_resource_renders_valid(chart: Any) -> None:
    documents = render(chart, EVERYTHING)
    assert_valid(documents, "every optional resource")
    assert {doc["kind"] for doc in documents} == BASE_KINDS | {"Secret", "ServiceMonitor", "ScaledObject"}
    hpa = render(chart, {"autoscaling": {"enabled": True}, "serviceAccount": {"create": False}})
    assert_valid(hpa, "HPA, no ServiceAccount")
    assert {doc["kind"] for doc in hpa} == BASE_KINDS - {"ServiceAccount"} | {"HorizontalPodAutoscaler"}


def test_custom_resource_schemas_refuse_misspelt_fields(chart: Any) -> None:
    documents = render(chart, EVERYTHING)
    monitor, scaled = one(documents, "ServiceMonitor"), one(documents, "ScaledObject")
    assert problems(monitor) == [] and problems(scaled) == []
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in problem for problem in problems(monitor))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 4  # KEDA's metadata holds strings only
    scaled["spec"]["pollingIntervall"] = 15
    found = problems(scaled)
    assert any("threshold" in problem for problem in found) and any("pollingIntervall" in p for p in found)


# ---- the Deployment ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", list(EXPECTED_KINDS))
def test_args_are_the_tritonserver_flags_of_the_values(chart: Any, example: str) -> None:
    values = example_values(example)
    naiad = container(render(chart, values))
    assert naiad["command"] == ["naiad", "serve"]
    assert naiad["args"] == expected_args(chart.merge_values(values))
    accepted_by_naiad(naiad["args"])


def test_args_follow_each_value(chart: Any) -> None:
    values = {
        "modelRepository": {"uri": "s3://minio.minio.svc:9000/models/triton-repo"},
        "modelControlMode": "poll",
        "repositoryPollSecs": 2.5,
        "exitTimeoutSecs": 90,
        "strictReadiness": False,
        "containerPorts": {"http": 9000, "grpc": 9001, "metrics": 9002},
        "log": {"verbose": 1, "format": "ISO8601"},
        "extraArgs": ["--exit-on-error=false"],
    }
    args = container(render(chart, values))["args"]
    assert args == expected_args(chart.merge_values(values))
    assert "--repository-poll-secs=2.5" in args and "--exit-timeout-secs=90" in args
    assert "--model-repository=s3://minio.minio.svc:9000/models/triton-repo" in args
    accepted_by_naiad(args)
    none_mode = container(render(chart, {"modelControlMode": "none"}))["args"]
    assert not any(arg.startswith("--repository-poll-secs") for arg in none_mode)


def test_restricted_apis_take_their_header_value_from_a_secret(chart: Any) -> None:
    values = {
        "modelControlMode": "explicit",
        "restrictedApis": [
            {"apis": ["model-repository", "logging"], "header": "admin-key", "secretName": "admin", "secretKey": "k"},
            {"apis": ["inference"], "header": "infer-key", "secretName": "clients", "secretKey": "token"},
        ],
    }
    documents = render(chart, values)
    assert_valid(documents, "restrictedApis")
    naiad = container(documents)
    assert naiad["args"] == expected_args(chart.merge_values(values))
    assert "--http-restricted-api=model-repository,logging:admin-key=$(NAIAD_RESTRICTED_API_0)" in naiad["args"]
    assert "--grpc-restricted-protocol=inference:infer-key=$(NAIAD_RESTRICTED_API_1)" in naiad["args"]
    env = {entry["name"]: entry for entry in naiad["env"]}
    assert env["NAIAD_RESTRICTED_API_0"]["valueFrom"] == {"secretKeyRef": {"name": "admin", "key": "k"}}
    assert env["NAIAD_RESTRICTED_API_1"]["valueFrom"] == {"secretKeyRef": {"name": "clients", "key": "token"}}
    # Kubernetes puts the variables' values in place of $(NAME) before naiad sees its arguments
    expanded = [re.sub(r"\$\((NAIAD_RESTRICTED_API_\d)\)", "value-of-secret", arg) for arg in naiad["args"]]
    accepted_by_naiad(expanded)
    settings = settings_from(build_parser().parse_args(["serve", *expanded]))
    assert set(settings.http_restricted) == {"model-repository", "logging", "inference"}
    assert settings.grpc.restricted["inference"].value == "value-of-secret"


@pytest.mark.parametrize("exit_timeout", [0, 30, 300])
def test_termination_grace_covers_the_prestop_sleep_and_the_drain(chart: Any, exit_timeout: int) -> None:
    values = {"exitTimeoutSecs": exit_timeout}
    documents = render(chart, values)
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    naiad = container(documents)
    merged = chart.merge_values(values)
    sleep = merged["shutdown"]["preStopSleepSeconds"]
    assert int(flag(naiad["args"], "exit-timeout-secs")) == exit_timeout
    assert naiad["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(sleep)]
    assert pod["terminationGracePeriodSeconds"] > sleep + exit_timeout
    assert pod["terminationGracePeriodSeconds"] == sleep + exit_timeout + merged["shutdown"]["extraGraceSeconds"]


def test_probes_hit_the_v2_health_endpoints_on_the_http_port(chart: Any) -> None:
    naiad = container(render(chart, {"containerPorts": {"http": 9000, "grpc": 9001, "metrics": 9002}}))
    ports = {port["name"]: port["containerPort"] for port in naiad["ports"]}
    assert ports == {"http": 9000, "grpc": 9001, "metrics": 9002}
    assert int(flag(naiad["args"], "http-port")) == ports["http"]
    assert int(flag(naiad["args"], "grpc-port")) == ports["grpc"]
    assert int(flag(naiad["args"], "metrics-port")) == ports["metrics"]
    paths = {probe: naiad[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/v2/health/live", "livenessProbe": "/v2/health/live",
                     "readinessProbe": "/v2/health/ready"}  # fmt: skip
    assert {naiad[probe]["httpGet"]["port"] for probe in paths} == {"http"}


def test_runs_as_uid_1000_with_a_read_only_root_and_a_writable_tmp(chart: Any) -> None:
    documents = render(chart, {})
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    naiad = container(documents)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 1000
    assert naiad["securityContext"]["readOnlyRootFilesystem"] is True
    assert naiad["securityContext"]["allowPrivilegeEscalation"] is False
    # naiad copies object-store models into tempfile.gettempdir() (naiad/core/server.py): /tmp must be writable.
    mounts = {mount["mountPath"]: mount["name"] for mount in naiad["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert pod["automountServiceAccountToken"] is False
    sized = render(chart, {"tmp": {"sizeLimit": "20Gi"}})
    tmp = one(sized, "Deployment")["spec"]["template"]["spec"]["volumes"][0]
    assert tmp == {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}}


def test_gpu_requests_the_device_and_the_cuda_image(chart: Any) -> None:
    assert container(render(chart, {}))["image"] == "naiad:cpu"
    assert "limits" not in container(render(chart, {}))["resources"]
    gpu = container(render(chart, example_values("gpu.yaml")))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["resources"]["limits"]["memory"] == "32Gi"
    assert gpu["image"] == "registry.example.com/naiad:cuda"
    assert container(render(chart, {"gpu": {"count": 2}}))["image"] == "naiad:cuda"
    pinned = container(render(chart, {"image": {"digest": "sha256:" + "ab" * 32}}))
    assert pinned["image"] == "naiad@sha256:" + "ab" * 32


def test_existing_claim_is_mounted_read_only_and_never_created(chart: Any) -> None:
    documents = render(chart, example_values("pvc.yaml"))
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    naiad = container(documents)
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in naiad["volumeMounts"]
    claim = next(volume for volume in pod["volumes"] if volume["name"] == "models")
    assert claim["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert flag(naiad["args"], "model-repository") == "/models"


def test_replicas_are_left_to_the_autoscaler(chart: Any) -> None:
    assert one(render(chart, {"replicaCount": 3}), "Deployment")["spec"]["replicas"] == 3
    for example in ("autoscaling-hpa.yaml", "autoscaling-keda.yaml"):
        assert "replicas" not in one(render(chart, example_values(example)), "Deployment")["spec"], example


# ---- S3 credentials ----------------------------------------------------------------------------------------------


def env_of(naiad: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in naiad.get("env", [])}


def test_chart_secret_keys_become_the_aws_variables(chart: Any) -> None:
    documents = render(chart, EVERYTHING)
    secret = one(documents, "Secret")
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "minio", "AWS_SECRET_ACCESS_KEY": "minio-secret"}
    env = env_of(container(documents))
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        reference = env[variable]["secretKeyRef"]
        assert reference["name"] == secret["metadata"]["name"]
        assert reference["key"] in secret["stringData"]
        assert reference["key"] == variable
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    # a new key rolls the pods: the checksum of the Secret is on the pod template
    annotations = one(documents, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    rotated = render(chart, {**EVERYTHING, "s3": {**EVERYTHING["s3"], "secretAccessKey": "rotated"}})
    assert (
        annotations["checksum/s3-secret"]
        != one(rotated, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/s3-secret"]
    )


def test_existing_secret_keys_become_the_aws_variables(chart: Any) -> None:
    minio = render(chart, example_values("minio.yaml"))
    env = env_of(container(minio))
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "naiad-minio-credentials", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["key"] == "AWS_SECRET_ACCESS_KEY"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    custom = {"existingSecret": "s3-keys", "existingSecretKeys": {"accessKeyId": "user", "secretAccessKey": "pass"}}
    env = env_of(container(render(chart, {"s3": custom})))
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-keys", "key": "user"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-keys", "key": "pass"}}
    assert "AWS_ACCESS_KEY_ID" not in env_of(container(render(chart, {})))  # IRSA or a node role: no keys at all


# ---- Service, ServiceMonitor, autoscaling ------------------------------------------------------------------------


def test_service_ports(chart: Any) -> None:
    documents = render(chart, {})
    service = one(documents, "Service")
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert {name: port["port"] for name, port in ports.items()} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert ports["grpc"]["appProtocol"] == "grpc"
    container_ports = {port["name"] for port in container(documents)["ports"]}
    assert {port["targetPort"] for port in ports.values()} <= container_ports
    pod_labels = one(documents, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    no_metrics = render(chart, {"metrics": {"enabled": False}})
    assert "metrics" not in {port["name"] for port in one(no_metrics, "Service")["spec"]["ports"]}
    assert flag(container(no_metrics)["args"], "allow-metrics") == "false"


def test_service_monitor_scrapes_the_metrics_port(chart: Any) -> None:
    documents = render(chart, example_values("autoscaling-keda.yaml"))
    monitor, service = one(documents, "ServiceMonitor"), one(documents, "Service")
    endpoint = monitor["spec"]["endpoints"][0]
    port = next(port for port in service["spec"]["ports"] if port["name"] == endpoint["port"])
    naiad = container(documents)
    target = next(p for p in naiad["ports"] if p["name"] == port["targetPort"])
    assert target["containerPort"] == int(flag(naiad["args"], "metrics-port"))
    assert endpoint["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_hpa_scales_the_deployment_on_cpu(chart: Any) -> None:
    documents = render(chart, example_values("autoscaling-hpa.yaml"))
    hpa = one(documents, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": one(documents, "Deployment")["metadata"]["name"]
    }  # fmt: skip
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert one(documents, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    deployment = one(documents, "Deployment")["spec"]
    spread = deployment["template"]["spec"]["topologySpreadConstraints"]
    assert spread[0]["labelSelector"] == deployment["selector"]  # filled in: the example names no release


def keda_queries(chart: Any, values: dict[str, Any]) -> list[str]:
    documents = render(chart, {**values, "keda": {**values.get("keda", {}), "enabled": True}})
    scaled = one(documents, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(documents, "Deployment")["metadata"]["name"]
    return [trigger["metadata"]["query"] for trigger in scaled["spec"]["triggers"]]


def test_keda_queries(chart: Any) -> None:
    documents = render(chart, example_values("autoscaling-keda.yaml"))
    trigger = one(documents, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "4"
    assert trigger["metadata"]["query"] == (
        f'sum(nv_inference_pending_request_count{{namespace="{NAMESPACE}",service="{RELEASE}"}})'
    )
    rate = keda_queries(chart, {"keda": {"metric": "requestRate", "models": ["add_sub"], "rateWindow": "2m"}})
    assert rate == [
        f'sum(rate(nv_inference_request_success{{namespace="{NAMESPACE}",service="{RELEASE}",model="add_sub"}}[2m]))'
    ]
    assert keda_queries(chart, {"keda": {"models": ["a", "b"]}})[1].endswith(',model="b"})')
    assert keda_queries(chart, {"keda": {"query": "sum(up)", "models": ["a", "b"]}}) == ["sum(up)"]
    triggers = one(render(chart, EVERYTHING), "ScaledObject")["spec"]["triggers"]
    assert [trigger["type"] for trigger in triggers] == ["prometheus", "prometheus", "cpu"]
    assert [trigger.get("name") for trigger in triggers[:2]] == [
        "pending-requests-add-sub",
        "pending-requests-string-upper",
    ]
    assert triggers[0]["authenticationRef"] == {"name": "prometheus"}
    assert triggers[0]["metadata"]["activationThreshold"] == "0.5"


def test_keda_queries_name_metrics_a_real_naiad_serves(chart: Any, start: Any) -> None:
    """The chart's own container, run here: ready through its probe, and its /metrics has what KEDA queries."""
    documents = render(chart, {})
    naiad = container(documents)
    server = start(naiad)
    server.wait(naiad["readinessProbe"]["httpGet"]["path"])
    requests.post(
        f"http://127.0.0.1:{server.ports['http']}/v2/models/add_sub/infer",
        json={
            "inputs": [
                {"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in ("INPUT0", "INPUT1")
            ]
        },
        timeout=10,
    ).raise_for_status()
    families = metric_families(server.get("metrics", "/metrics").text)
    service = one(documents, "Service")["metadata"]
    queries = [
        *keda_queries(chart, {"keda": {"metric": "pendingRequests", "models": ["add_sub"]}}),
        *keda_queries(chart, {"keda": {"metric": "requestRate"}}),
    ]
    for query in queries:
        selectors = query_selectors(query)
        assert selectors, query
        for metric, matchers in selectors:
            assert metric in families, f"{metric} (from {query}) is not among naiad's metrics: {sorted(families)}"
            # namespace and service come from prometheus-operator's target labels; the rest must be naiad's own
            assert (matchers["namespace"], matchers["service"]) == (service["namespace"], service["name"])
            assert set(matchers) - {"namespace", "service"} <= families[metric], (metric, families[metric])
    assert server.stop() == 0


def test_explicit_example_loads_its_models_and_drains_on_sigterm(chart: Any, start: Any) -> None:
    naiad = container(render(chart, example_values("explicit.yaml")))
    server = start(naiad)
    server.wait(naiad["readinessProbe"]["httpGet"]["path"])
    assert server.get("http", naiad["livenessProbe"]["httpGet"]["path"]).status_code == 200
    index = requests.post(f"http://127.0.0.1:{server.ports['http']}/v2/repository/index", timeout=5).json()
    ready = {entry["name"] for entry in index if entry.get("state") == "READY"}
    assert ready == {"add_sub", "string_upper"}
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < int(flag(naiad["args"], "exit-timeout-secs"))


def test_notes_tell_how_to_reach_it(chart: Any) -> None:
    text = notes(chart, {})
    assert f"kubectl -n {NAMESPACE} port-forward service/{RELEASE}" in text
    assert "curl -i localhost:8000/v2/health/ready" in text
    assert "/v2/models/add_sub/infer" in text
    keda = notes(chart, example_values("autoscaling-keda.yaml"))
    assert f"keda-hpa-{RELEASE}" in keda


# ---- refusals ----------------------------------------------------------------------------------------------------


def test_hpa_and_keda_together_fail_to_render(chart: Any) -> None:
    both = {**example_values("autoscaling-keda.yaml"), "autoscaling": {"enabled": True}}
    with pytest.raises(
        helm.HelmRenderError, match=re.escape("autoscaling.enabled and keda.enabled cannot both be true")
    ):
        render(chart, both)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"loadModels": ["add_sub"]}, 'loadModels needs modelControlMode: explicit (it is "none")'),
        ({"modelControlMode": "explicit", "loadModels": ["*", "add_sub"]}, "must be the only entry"),
        ({"s3": {"accessKeyId": "only-half"}}, "set both, or neither"),
        ({"s3": {"existingSecret": "keys", "accessKeyId": "a", "secretAccessKey": "b"}}, "Remove one"),
        ({"extraArgs": ["--model-control-mode=poll"]}, "--model-control-mode is set from the chart's values"),
        ({"extraArgs": ["--exit-timeout-secs", "5"]}, "--exit-timeout-secs is set from the chart's values"),
        (
            {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}},
            "set resources.requests.cpu",
        ),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas is larger"),
        ({"keda": {"enabled": True, "idleReplicaCount": 1}}, "idleReplicaCount must be less than"),
        ({"keda": {"enabled": True}, "metrics": {"enabled": False}}, "it needs metrics.enabled"),
        ({"serviceMonitor": {"enabled": True}, "metrics": {"enabled": False}}, "it needs metrics.enabled"),
        ({"modelRepository": {"existingClaim": "models", "uri": "s3://b/p"}}, "use one or the other"),
        ({"modelRepository": {"existingClaim": "models", "uri": "/elsewhere"}}, "outside the claim's mountPath"),
        (
            {
                "restrictedApis": [
                    {"apis": ["logging"], "header": "a", "secretName": "s", "secretKey": "k"},
                    {"apis": ["health", "logging"], "header": "b", "secretName": "s", "secretKey": "k"},
                ]
            },
            'API "logging" appears in two entries',
        ),
    ],
)
def test_contradictory_values_fail_to_render(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(chart, values)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"modelControlMode": "sometimes"}, "/modelControlMode"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"exitTimeoutSecs": "thirty"}, "/exitTimeoutSecs"),
        ({"exitTimeoutSecs": -5}, "/exitTimeoutSecs"),
        ({"repositoryPollSecs": 0}, "/repositoryPollSecs"),
        ({"modelRepository": {"uri": "models"}}, "/modelRepository/uri"),
        ({"modelRepository": {"uri": "http://bucket/models"}}, "/modelRepository/uri"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"gpu": {"count": -1}}, "/gpu/count"),
        ({"containerPorts": {"http": 70000}}, "/containerPorts/http"),
        ({"keda": {"metric": "cpu"}}, "/keda/metric"),
        ({"keda": {"threshold": 0}}, "/keda/threshold"),
        ({"keda": {"fallback": {"replicas": 2}}}, "/keda/fallback"),
        ({"service": {"type": "ExternalName"}}, "/service/type"),
        ({"probes": {"readiness": {"path": "/healthz"}}}, "/probes/readiness/path"),
        ({"modelControlMod": "poll"}, "modelControlMod"),  # a misspelt key is refused, not ignored
        (
            {"restrictedApis": [{"apis": ["logs"], "header": "k", "secretName": "s", "secretKey": "k"}]},
            "/restrictedApis/0/apis/0",
        ),
        ({"restrictedApis": [{"apis": ["logging"], "header": "k"}]}, "/restrictedApis/0"),
    ],
)
def test_schema_refuses_bad_values(chart: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


@pytest.mark.parametrize("example", ["default", *(path.name for path in EXAMPLES)])
def test_schema_accepts_the_defaults_and_examples(chart: Any, example: str) -> None:
    chart.validate_schema(chart.merge_values(example_values(example)))


# ---- helm uninstall leaves nothing behind ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values", [{}, EVERYTHING, example_values("autoscaling-hpa.yaml")], ids=["default", "everything", "hpa"]
)
def test_every_resource_belongs_to_the_release_and_uninstall_removes_it(chart: Any, values: dict[str, Any]) -> None:
    """Helm deletes what it rendered: no hooks (deleted only by policy), no `keep` policy, nothing cluster-scoped or
    stateful that would outlive the release (PersistentVolumeClaim, Namespace, CRD), and no crds/ folder."""
    documents = render(chart, values)
    assert not chart.crds
    for doc in documents:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        annotations = doc["metadata"].get("annotations") or {}
        assert not [key for key in annotations if key.startswith("helm.sh/")], f"{name}: {annotations}"
        assert doc["kind"] not in {"PersistentVolumeClaim", "PersistentVolume", "Namespace", "CustomResourceDefinition"}
        assert doc["metadata"]["namespace"] == NAMESPACE, name
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, name
        assert labels["app.kubernetes.io/managed-by"] == "Helm", name
        assert labels["app.kubernetes.io/name"] == "naiad", name
        assert labels["helm.sh/chart"] == f"naiad-{chart.version}", name
    template = one(documents, "Deployment")["spec"]["template"]
    assert not [key for key in (template["metadata"].get("annotations") or {}) if key.startswith("helm.sh/")]
    assert not [text for text in (t["data"] for t in chart.templates) if "helm.sh/hook" in text]
