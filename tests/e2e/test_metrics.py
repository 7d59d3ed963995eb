"""Triton's Prometheus metrics from a real server process: names, types, help texts, labels and exact values after
known traffic, the CPU gauges, the opt-in summaries and histogram, and the flags."""

from __future__ import annotations

import concurrent.futures
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests import models
from tests.conftest import RunningServer, ServerFactory

NOT_CACHED = "(does not include cached requests)"
# Every per-model family Triton 2.51 writes by default (and the load time of later versions): type and help text.
MODEL_FAMILIES = {
    "nv_inference_request_success": ("counter", "Number of successful inference requests, all batch sizes"),
    "nv_inference_request_failure": ("counter", "Number of failed inference requests, all batch sizes"),
    "nv_inference_count": ("counter", f"Number of inferences performed {NOT_CACHED}"),
    "nv_inference_exec_count": ("counter", f"Number of model executions performed {NOT_CACHED}"),
    "nv_inference_request_duration_us": (
        "counter",
        "Cumulative inference request duration in microseconds (includes cached requests)",
    ),
    "nv_inference_queue_duration_us": (
        "counter",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
    ),
    "nv_inference_compute_input_duration_us": (
        "counter",
        f"Cumulative compute input duration in microseconds {NOT_CACHED}",
    ),
    "nv_inference_compute_infer_duration_us": (
        "counter",
        f"Cumulative compute inference duration in microseconds {NOT_CACHED}",
    ),
    "nv_inference_compute_output_duration_us": (
        "counter",
        f"Cumulative inference compute output duration in microseconds {NOT_CACHED}",
    ),
    "nv_inference_pending_request_count": (
        "gauge",
        "Instantaneous number of pending requests awaiting execution per-model.",
    ),
    "nv_model_load_duration_secs": ("gauge", "Model load time in seconds"),
}
CPU_FAMILIES = {
    "nv_cpu_utilization": ("gauge", "CPU utilization rate [0.0 - 1.0]"),
    "nv_cpu_memory_total_bytes": ("gauge", "CPU total memory (RAM), in bytes"),
    "nv_cpu_memory_used_bytes": ("gauge", "CPU used memory (RAM), in bytes"),
}
DURATION_COUNTERS = [name for name in MODEL_FAMILIES if name.endswith("_duration_us")]
REASONS = {"REJECTED", "CANCELED", "BACKEND", "OTHER"}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Scrape:
    """One /metrics answer, parsed line by line."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.help: dict[str, str] = {}
        self.type: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        assert text.endswith("\n")
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name, _, help_text = line[7:].partition(" ")
                self.help[name] = help_text
            elif line.startswith("# TYPE "):
                name, _, kind = line[7:].partition(" ")
                self.type[name] = kind
            else:
                match = _SAMPLE.match(line)
                assert match, f"not a sample line: {line!r}"
                name, label_text, value = match.groups()
                pairs = dict(_LABEL.findall(label_text or ""))
                self.samples.append((name, pairs, float(value.replace("Nan", "nan"))))

    def find(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """Samples of `name` whose labels include `labels`."""
        return [(pairs, value) for n, pairs, value in self.samples if n == name and labels.items() <= pairs.items()]

    def value(self, name: str, **labels: str) -> float:
        """The one sample of `name` with exactly these labels."""
        found = [value for n, pairs, value in self.samples if n == name and pairs == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def failures(self, model: str) -> dict[str, float]:
        """`nv_inference_request_failure` of version 1 of `model`, by reason."""
        return {
            r: self.value("nv_inference_request_failure", model=model, reason=r, version="1") for r in sorted(REASONS)
        }


def scrape(server: RunningServer) -> Scrape:
    reply = requests.get(server.metrics_url, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(reply.text)


def slow_body(value: int) -> dict[str, object]:
    return {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "INT32", "data": [value]}]}


def add_sub_body(batch: int) -> dict[str, object]:
    data = [[float(i) for i in range(16)]] * batch
    return {
        "inputs": [
            {"name": "INPUT0", "shape": [batch, 16], "datatype": "FP32", "data": data},
            {"name": "INPUT1", "shape": [batch, 16], "datatype": "FP32", "data": data},
        ]
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("metrics")
    repo = root / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    models.write_model(repo, "failing", models.identity_config("failing", "TYPE_INT32"), models.FAILING)
    models.write_queue_limited(repo)
    models.write_model(
        repo,
        "queue_timeout",
        models.slow_batched_config(
            name="queue_timeout",
            delay=1.5,
            extra="dynamic_batching { default_queue_policy { timeout_action: REJECT "
            "default_timeout_microseconds: 300000 } }",
        ),
        models.SLOW,
    )
    factory = ServerFactory(root)
    yield factory.start(repo, "--metrics-interval-ms=200", metrics=True)
    factory.close()


def test_every_model_family_has_tritons_type_help_and_labels(server: RunningServer) -> None:
    metrics = scrape(server)
    for name, (kind, help_text) in {**MODEL_FAMILIES, **CPU_FAMILIES}.items():
        assert metrics.type[name] == kind, name
        assert metrics.help[name] == help_text, name
    names = {"add_sub", "failing", "queue_limited", "queue_timeout"}
    for name in MODEL_FAMILIES:
        found = metrics.find(name)
        if name == "nv_inference_request_failure":
            assert {(pairs["model"], pairs["reason"]) for pairs, _ in found} == {(m, r) for m in names for r in REASONS}
            assert all(set(pairs) == {"model", "reason", "version"} for pairs, _ in found)
        else:
            assert sorted(pairs["model"] for pairs, _ in found) == sorted(names), name
            assert all(pairs == {"model": pairs["model"], "version": "1"} for pairs, _ in found), name
    # Triton's counters carry no _total suffix, and without a GPU there are no GPU families.
    assert not any(name.endswith("_total") for name, _, _ in metrics.samples)
    assert "# TYPE nv_gpu_utilization" not in metrics.text
    assert "summary" not in metrics.type.values() and "histogram" not in metrics.type.values()


def test_counts_after_known_traffic(server: RunningServer) -> None:
    assert scrape(server).value("nv_inference_request_success", model="add_sub", version="1") == 0
    url = server.url + "/v2/models/add_sub/infer"
    for _ in range(5):
        assert requests.post(url, json=add_sub_body(1)).status_code == 200
    assert requests.post(url, json=add_sub_body(3)).status_code == 200
    metrics = scrape(server)
    add_sub = {"model": "add_sub", "version": "1"}
    assert metrics.value("nv_inference_request_success", **add_sub) == 6
    assert metrics.value("nv_inference_count", **add_sub) == 8  # a batch of 3 counts 3 inferences
    assert metrics.value("nv_inference_exec_count", **add_sub) == 6
    assert metrics.failures("add_sub") == dict.fromkeys(REASONS, 0)
    assert metrics.value("nv_inference_pending_request_count", **add_sub) == 0
    # The latency counters are the statistics endpoint's nanoseconds in microseconds: one source for both.
    stats = requests.get(server.url + "/v2/models/add_sub/stats").json()["model_stats"][0]["inference_stats"]
    for metric, key in (
        ("nv_inference_request_duration_us", "success"),
        ("nv_inference_queue_duration_us", "queue"),
        ("nv_inference_compute_input_duration_us", "compute_input"),
        ("nv_inference_compute_infer_duration_us", "compute_infer"),
        ("nv_inference_compute_output_duration_us", "compute_output"),
    ):
        assert metrics.value(metric, **add_sub) == stats[key]["ns"] // 1000, metric
    assert metrics.value("nv_inference_request_duration_us", **add_sub) > 0
    assert metrics.value("nv_inference_compute_infer_duration_us", **add_sub) > 0


def test_a_model_that_raises_is_a_backend_failure(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [1]}]}
    assert requests.post(server.url + "/v2/models/failing/infer", json=body).status_code == 500
    metrics = scrape(server)
    assert metrics.failures("failing") == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}
    assert metrics.value("nv_inference_request_success", model="failing", version="1") == 0


def test_a_queue_timeout_is_rejected(server: RunningServer) -> None:
    url = server.url + "/v2/models/queue_timeout/infer"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(requests.post, url, json=slow_body(1))
        time.sleep(0.3)  # executing for 1.5 s
        second = requests.post(url, json=slow_body(2))  # waits 300 ms in the queue, then is refused
        assert second.status_code == 503 and second.json() == {"error": "Request timeout expired"}
        assert first.result().status_code == 200
    metrics = scrape(server)
    assert metrics.failures("queue_timeout") == {"REJECTED": 1, "CANCELED": 0, "BACKEND": 0, "OTHER": 0}
    assert metrics.value("nv_inference_request_success", model="queue_timeout", version="1") == 1


def test_pending_requests_and_a_full_queue(server: RunningServer) -> None:
    url = server.url + "/v2/models/queue_limited/infer"
    labels = {"model": "queue_limited", "version": "1"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(requests.post, url, json=slow_body(1))
        time.sleep(0.3)  # executing for 1 s
        second = pool.submit(requests.post, url, json=slow_body(2))
        time.sleep(0.3)  # queued
        assert scrape(server).value("nv_inference_pending_request_count", **labels) == 1
        third = requests.post(url, json=slow_body(3))
        assert third.status_code == 503 and third.json() == {
            "error": "[request id: <id_unknown>] Exceeds maximum queue size"
        }
        assert first.result().status_code == 200 and second.result().status_code == 200
    metrics = scrape(server)
    assert metrics.value("nv_inference_pending_request_count", **labels) == 0
    assert metrics.value("nv_inference_request_success", **labels) == 2
    # As in Triton, a request refused before it is queued is no failure of the model.
    assert metrics.failures("queue_limited") == dict.fromkeys(REASONS, 0)


def test_model_load_times(server: RunningServer) -> None:
    loads = scrape(server).find("nv_model_load_duration_secs")
    assert len(loads) == 4
    assert all(0 < seconds < 60 for _, seconds in loads)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU metrics come from Linux's /proc")
def test_cpu_gauges(server: RunningServer) -> None:
    time.sleep(0.5)  # a few --metrics-interval-ms=200 samples
    metrics = scrape(server)
    assert 0.0 <= metrics.value("nv_cpu_utilization") <= 1.0
    total = metrics.value("nv_cpu_memory_total_bytes")
    assert 0 < metrics.value("nv_cpu_memory_used_bytes") < total
    meminfo = Path("/proc/meminfo").read_text().split()
    assert total == int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    assert "Collecting CPU metrics" in server.log()
    assert "GPU metrics are off" in server.log() or "Collecting metrics for GPU" in server.log()


def test_only_get_metrics_is_served(server: RunningServer) -> None:
    base = server.metrics_url.removesuffix("/metrics")
    assert requests.get(base + "/").status_code == 404
    assert requests.get(base + "/v2/health/ready").status_code == 404
    posted = requests.post(server.metrics_url, data=b"x")
    assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
    head = requests.head(server.metrics_url)
    assert head.status_code == 200 and head.content == b""


def test_metrics_off_means_nothing_listens(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    server = naiad.start(repo)  # --allow-metrics=false
    with pytest.raises(requests.ConnectionError):
        requests.get(server.metrics_url, timeout=5)
    assert "Metrics Service" not in server.log()


def test_metrics_address_defaults_to_the_http_address(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    server = naiad.start(repo, "--allow-metrics=true")  # no --metrics-address: --http-address=127.0.0.1
    assert f"Started Metrics Service at 127.0.0.1:{server.metrics_port}" in server.log()
    assert scrape(server).value("nv_inference_request_success", model="add_sub", version="1") == 0


def test_summaries_and_histogram_without_latency_counters(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "slow", models.slow_batched_config(name="slow", delay=0.2, extra=""), models.SLOW)
    server = naiad.start(
        repo,
        "--metrics-config=summary_latencies=true",
        "--metrics-config",
        "histogram_latencies=true",
        "--metrics-config=counter_latencies=false",
        "--metrics-config=summary_quantiles=0.5:0.05,0.9:0.01",
        metrics=True,
    )
    before = scrape(server)
    assert before.value("nv_inference_request_summary_us_count", model="slow", version="1") == 0
    assert all(value != value for _, value in before.find("nv_inference_request_summary_us"))  # Nan
    for value in range(4):
        assert requests.post(server.url + "/v2/models/slow/infer", json=slow_body(value)).status_code == 200
    metrics = scrape(server)
    slow = {"model": "slow", "version": "1"}
    assert metrics.value("nv_inference_request_success", **slow) == 4
    for name in DURATION_COUNTERS:
        assert name not in metrics.type and not metrics.find(name)

    summaries = {
        "nv_inference_request_summary_us": "Summary of inference request duration in microseconds "
        "(includes cached requests)",
        "nv_inference_queue_summary_us": "Summary of inference queuing duration in microseconds "
        "(includes cached requests)",
        "nv_inference_compute_input_summary_us": MODEL_FAMILIES["nv_inference_compute_input_duration_us"][1],
        "nv_inference_compute_infer_summary_us": MODEL_FAMILIES["nv_inference_compute_infer_duration_us"][1],
        "nv_inference_compute_output_summary_us": MODEL_FAMILIES["nv_inference_compute_output_duration_us"][1],
    }
    for name, help_text in summaries.items():
        assert metrics.type[name] == "summary" and metrics.help[name] == help_text
        assert metrics.value(name + "_count", **slow) == 4
        quantiles = metrics.find(name)
        assert [pairs for pairs, _ in quantiles] == [{**slow, "quantile": "0.5"}, {**slow, "quantile": "0.9"}]
    request_sum = metrics.value("nv_inference_request_summary_us_sum", **slow)
    assert 4 * 200_000 <= request_sum < 4 * 1_000_000
    for _, value in metrics.find("nv_inference_request_summary_us"):
        assert 200_000 <= value < 1_000_000  # each request slept 0.2 s
    for _, value in metrics.find("nv_inference_compute_infer_summary_us"):
        assert 200_000 <= value < 1_000_000

    histogram = "nv_inference_first_response_histogram_ms"
    assert metrics.type[histogram] == "histogram"
    assert metrics.help[histogram] == "Duration from request to first response in milliseconds"
    buckets = {pairs["le"]: value for pairs, value in metrics.find(histogram + "_bucket", **slow)}
    assert buckets == {"100": 0, "500": 4, "2000": 4, "5000": 4, "+Inf": 4}
    assert metrics.value(histogram + "_count", **slow) == 4
    assert 800 <= metrics.value(histogram + "_sum", **slow) < 4000


def run_naiad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "naiad", "serve", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--metrics-config=latencies=true", "unknown setting 'latencies'; naiad knows counter_latencies, "),
        ("--metrics-config=summary_latencies=maybe", "summary_latencies: expected true or false, got 'maybe'"),
        ("--metrics-config=summary_latencies", "expected KEY=VALUE, got 'summary_latencies'"),
        ("--metrics-config=summary_quantiles=0.5", "summary_quantiles: expected <quantile>:<error> pairs"),
        ("--metrics-config=summary_quantiles=0.5:0.05,1.5:0.01", "got '1.5:0.01'"),
        ("--metrics-interval-ms=0", "must be greater than 0"),
        ("--allow-cpu-metrics=sometimes", "expected true or false"),
    ],
)
def test_bad_metrics_flags_are_refused(flag: str, message: str) -> None:
    result = run_naiad("--model-repository=/tmp", flag)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_naiad(
            f"--model-repository={repo}",
            "--http-port=0",
            "--allow-grpc=false",
            f"--metrics-port={port}",
            "--metrics-address=127.0.0.1",
        )
    assert result.returncode == 1
    assert f"error: failed to start the metrics service on 127.0.0.1:{port}" in result.stderr
