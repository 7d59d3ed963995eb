"""Three naiad replicas behind a real nginx: traffic spreads, a crash or drain loses nothing retryable, metrics add up.

Every request carries a unique id and says which client sent it (`http` or `grpc`, a request parameter); the model
answers `id * 3 + 1` and the number of the replica it ran on, and appends `start ID CLIENT` / `done ID` to its
replica's log as it executes, so the tests know, even of a killed process, which request executed where. A replica
can be frozen: while its `hold-N` file names a client, the model keeps that client's requests waiting, so that
requests are provably in flight on it when it is signalled.

What the nginx of `tests.nginx_server.load_balancer_conf` guarantees, as these tests show:
- SIGKILL, HTTP: a request refused by the dead replica (connection refused) and a request in flight on it when it
  died (the connection closes before any response header) are both sent again to another replica, POSTs included
  (`proxy_next_upstream error ... non_idempotent`, with the request body buffered): no client sees an error. The
  price is at-least-once execution: a request the dead replica had started runs a second time elsewhere.
- SIGKILL, gRPC: new calls go to the other replicas, but a call in flight on the dead replica is not retried:
  nginx's grpc module always streams the request body upstream unbuffered, and nginx never retries a request whose
  unbuffered body was sent. The client gets UNAVAILABLE (nginx's 502), the status gRPC clients retry on.
- SIGTERM: the draining replica stops accepting connections (nginx moves to the next replica), goes on serving what
  arrives on connections already open, answers every request in flight itself and exits 0. No HTTP request is
  lost and none runs twice. A gRPC call that nginx puts on a pooled connection to the replica just as its gRPC
  server shuts down is refused (UNAVAILABLE or CANCELLED) and, as above, not retried by nginx; it ran nowhere, so
  the client can retry it safely.
- Not covered: an answer cut after its header reached nginx (a large response streaming when the process dies);
  no balancer can retry that."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import RunningServer, ServerFactory
from tests.nginx_server import NginxServer, free_ports, load_balancer_conf, nginx_or_skip, running_nginx

MODEL = "replica"
REPLICAS = 3
REPLICA_MODEL = """
import json
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.replica = int(os.environ["NAIAD_TEST_REPLICA"])
        folder = os.environ["NAIAD_TEST_FOLDER"]
        self.hold = os.path.join(folder, f"hold-{self.replica}")
        self.log = os.open(os.path.join(folder, f"executed-{self.replica}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def held(self, client):
        try:
            with open(self.hold) as f:
                return client in f.read().split()
        except FileNotFoundError:
            return False

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "ID").as_numpy()
            client = json.loads(request.parameters()).get("client", "")
            os.write(self.log, f"start {int(ids[0])} {client}\\n".encode())
            while self.held(client):
                time.sleep(0.005)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("ANSWER", ids * 3 + 1),
                pb_utils.Tensor("REPLICA", np.array([self.replica], np.int32)),
            ]))
            os.write(self.log, f"done {int(ids[0])}\\n".encode())
        return responses
"""
# Four instances: two gRPC clients can hold at most two, so frozen HTTP requests always find one.
REPLICA_CONFIG = f"""
    name: "{MODEL}"
    backend: "python"
    max_batch_size: 0
    input [ {{ name: "ID" data_type: TYPE_INT64 dims: [ 1 ] }} ]
    output [ {{ name: "ANSWER" data_type: TYPE_INT64 dims: [ 1 ] }},
             {{ name: "REPLICA" data_type: TYPE_INT32 dims: [ 1 ] }} ]
    instance_group [ {{ count: 4 kind: KIND_CPU }} ]
"""


@dataclass
class Cluster:
    """The replicas (replica i runs as `servers[i]`), the nginx in front of them, and the model's logs."""

    servers: list[RunningServer]
    nginx: NginxServer
    http_url: str
    grpc_address: str
    folder: Path

    def hold(self, replica: int, *clients: str) -> None:
        """Freeze replica `replica`: its model keeps the requests of `clients` waiting until `release`."""
        path = self.folder / f"hold-{replica}"
        partial = path.with_suffix(".partial")
        partial.write_text(" ".join(clients))
        partial.rename(path)

    def release(self, replica: int) -> None:
        (self.folder / f"hold-{replica}").unlink(missing_ok=True)

    def executed(self, replica: int) -> tuple[dict[int, str], set[int]]:
        """The ids replica `replica`'s model started, in order, with the client that sent each; and those it
        finished."""
        path = self.folder / f"executed-{replica}.log"
        started: dict[int, str] = {}
        done: set[int] = set()
        for line in path.read_text().splitlines() if path.exists() else []:
            kind, request_id, *client = line.split()
            if kind == "start":
                started[int(request_id)] = client[0] if client else ""
            else:
                done.add(int(request_id))
        return started, done


def _start_replica(naiad: ServerFactory, repository: Path, environment: dict[str, str]) -> RunningServer:
    for attempt in range(3):
        try:
            return naiad.start(repository, grpc=True, metrics=True, env=environment)
        except AssertionError as exc:  # a free port taken by another process before naiad bound it
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, naiad: ServerFactory
) -> Iterator[Cluster]:
    """Three replicas of one repository (HTTP, gRPC and metrics on), nginx in front of their HTTP and gRPC ports."""
    with nginx_or_skip(request, tmp_path_factory) as binary:
        repository = tmp_path / "models"
        models.write_model(repository, MODEL, REPLICA_CONFIG, REPLICA_MODEL)
        folder = tmp_path / "executed"
        folder.mkdir()
        environments = [
            {**os.environ, "NAIAD_TEST_REPLICA": str(replica), "NAIAD_TEST_FOLDER": str(folder)}
            for replica in range(REPLICAS)
        ]
        with concurrent.futures.ThreadPoolExecutor(REPLICAS) as pool:
            servers = list(pool.map(lambda env: _start_replica(naiad, repository, env), environments))
        with contextlib.ExitStack() as stack:
            nginx, http_port, grpc_port = _start_nginx(stack, binary, tmp_path, servers)
            cluster = Cluster(servers, nginx, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", folder)
            try:
                yield cluster
            finally:
                for replica in range(REPLICAS):
                    cluster.release(replica)  # never leave a model waiting at teardown


def _start_nginx(
    stack: contextlib.ExitStack, binary: Path, tmp_path: Path, servers: list[RunningServer]
) -> tuple[NginxServer, int, int]:
    """nginx in front of `servers`, on two free ports (chosen again if another process takes one first)."""
    for attempt in range(3):
        http_port, grpc_port = free_ports(2)
        conf = load_balancer_conf(
            http_port=http_port,
            http_replicas=[server.address for server in servers],
            grpc_port=grpc_port,
            grpc_replicas=[server.grpc_address for server in servers],
        )
        try:
            nginx = stack.enter_context(
                running_nginx(binary, tmp_path / f"nginx-{attempt}", conf, [http_port, grpc_port])
            )
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
            continue
        return nginx, http_port, grpc_port
    raise AssertionError("unreachable")


# Clients


@dataclass(frozen=True)
class Outcome:
    """What a client got for one request id: the replica that answered and its answer, or the error."""

    client: str  # "http" or "grpc"
    replica: int | None
    answer: int | None = None
    error: str = ""


def http_infer(session: requests.Session, url: str, request_id: int) -> Outcome:
    """One inference through the balancer over HTTP/JSON."""
    body = {
        "parameters": {"client": "http"},
        "inputs": [{"name": "ID", "shape": [1], "datatype": "INT64", "data": [request_id]}],
    }
    try:
        reply = session.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    except requests.RequestException as exc:
        return Outcome("http", None, error=f"{type(exc).__name__}: {exc}")
    if reply.status_code != 200:
        return Outcome("http", None, error=f"HTTP {reply.status_code}: {reply.text[:300]}")
    outputs = {output["name"]: output["data"] for output in reply.json()["outputs"]}
    return Outcome("http", int(outputs["REPLICA"][0]), int(outputs["ANSWER"][0]))


def grpc_infer(client: grpcclient.InferenceServerClient, request_id: int) -> Outcome:
    """One inference through the balancer over gRPC."""
    tensor = grpcclient.InferInput("ID", [1], "INT64")
    tensor.set_data_from_numpy(np.array([request_id], dtype=np.int64))
    try:
        result = client.infer(MODEL, [tensor], client_timeout=60, parameters={"client": "grpc"})
    except InferenceServerException as exc:
        return Outcome("grpc", None, error=f"{exc.status()}: {exc.message()}")
    return Outcome("grpc", int(result.as_numpy("REPLICA")[0]), int(result.as_numpy("ANSWER")[0]))


@dataclass
class Traffic:
    """Client threads, each with its own keep-alive connection to the balancer (`http_threads` with `requests`,
    `grpc_threads` with tritonclient.grpc), sending requests with ids 0, 1, ... one at a time each, until stopped,
    `limit` ids are taken or `deadline_s` passes."""

    cluster: Cluster
    http_threads: int = 6
    grpc_threads: int = 2
    limit: int = 3000
    deadline_s: float = 90.0
    _outcomes: dict[int, Outcome] = field(default_factory=dict)
    _taken: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        end = time.monotonic() + self.deadline_s
        for run in [self._run_http] * self.http_threads + [self._run_grpc] * self.grpc_threads:
            worker = threading.Thread(target=run, args=(end,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.stop()
            return
        for replica in range(REPLICAS):  # a failure while a replica is frozen: let its clients finish
            self.cluster.release(replica)
        self._stop.set()
        for worker in self._workers:
            worker.join(120)

    def _take(self, end: float) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._taken >= self.limit or time.monotonic() > end:
                return None
            self._taken += 1
            return self._taken - 1

    def _record(self, request_id: int, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes[request_id] = outcome

    def _run_http(self, end: float) -> None:
        with requests.Session() as session:
            while (request_id := self._take(end)) is not None:
                self._record(request_id, http_infer(session, self.cluster.http_url, request_id))

    def _run_grpc(self, end: float) -> None:
        with grpcclient.InferenceServerClient(self.cluster.grpc_address) as client:
            while (request_id := self._take(end)) is not None:
                self._record(request_id, grpc_infer(client, request_id))

    def taken(self) -> int:
        """How many ids have been handed to the client threads so far: later ids are sent from now on."""
        with self._lock:
            return self._taken

    def answered(self) -> int:
        with self._lock:
            return len(self._outcomes)

    def wait_answered(self, count: int, timeout: float = 60, required: bool = True) -> None:
        """Wait until `count` requests have an outcome in all (at most `timeout` seconds, then fail if `required`)."""
        deadline = time.monotonic() + timeout
        while self.answered() < count:
            if time.monotonic() > deadline:
                assert not required, f"only {self.answered()} of {count} requests answered in {timeout}s"
                return
            assert any(worker.is_alive() for worker in self._workers), "the client threads stopped early"
            time.sleep(0.01)

    def stop(self) -> dict[int, Outcome]:
        """Stop taking new ids and wait for the requests in flight; every outcome by id."""
        self._stop.set()
        for worker in self._workers:
            worker.join(120)
            assert not worker.is_alive(), "a client thread is still waiting on its request"
        with self._lock:
            assert sorted(self._outcomes) == list(range(self._taken)), "a request has no outcome"
            return dict(self._outcomes)


def failures_of(outcomes: dict[int, Outcome]) -> dict[int, Outcome]:
    return {request_id: outcome for request_id, outcome in outcomes.items() if outcome.replica is None}


def assert_answers_right(outcomes: dict[int, Outcome]) -> None:
    """Every answer is the model's answer for its id."""
    wrong = {i: o for i, o in outcomes.items() if o.replica is not None and o.answer != i * 3 + 1}
    assert not wrong, f"wrong answers: {dict(list(wrong.items())[:5])}"


def assert_no_failures(outcomes: dict[int, Outcome]) -> None:
    failures = failures_of(outcomes)
    assert not failures, f"{len(failures)} of {len(outcomes)} failed: {dict(list(failures.items())[:5])}"


def answered_by(outcomes: dict[int, Outcome], client: str | None = None) -> dict[int, set[int]]:
    """For each replica, the ids it answered (of `client`'s requests only, when given)."""
    by: dict[int, set[int]] = {replica: set() for replica in range(REPLICAS)}
    for request_id, outcome in outcomes.items():
        if outcome.replica is not None and client in (None, outcome.client):
            by[outcome.replica].add(request_id)
    return by


def freeze(cluster: Cluster, replica: int, timeout: float = 30) -> dict[int, str]:
    """Freeze replica `replica` until it holds a gRPC request, then an HTTP one, that it started after it was frozen
    (gRPC first: HTTP requests could take all four model instances, while the two gRPC clients take two at most):
    the ids provably in flight there, with their clients."""
    held_from = len(cluster.executed(replica)[0])
    held: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    for clients in (["grpc"], ["grpc", "http"]):
        cluster.hold(replica, *clients)
        while clients[-1] not in held.values():
            assert time.monotonic() < deadline, f"replica {replica} held no {clients[-1]} request within {timeout}s"
            time.sleep(0.005)
            started, done = cluster.executed(replica)
            held = {i: client for i, client in list(started.items())[held_from:] if i not in done and client in clients}
    return held


# Metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(server: RunningServer) -> list[tuple[str, dict[str, str], float]]:
    """The samples of one replica's /metrics: (name, labels, value) per line."""
    reply = requests.get(server.metrics_url, timeout=10)
    assert reply.status_code == 200, reply.text
    samples = []
    for line in reply.text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples.append((match.group(1), dict(_LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return samples


def model_metric(samples: list[tuple[str, dict[str, str], float]], name: str) -> float:
    """`name` for the model, summed over its other labels (the failure counter has one per reason)."""
    found = [(labels, value) for sample, labels, value in samples if sample == name and labels.get("model") == MODEL]
    assert found, f"{name} for model {MODEL} is missing"
    assert all(labels.get("version") == "1" for labels, _ in found)
    return sum(value for _, value in found)


def success_count(server: RunningServer) -> int:
    return int(model_metric(scrape(server), "nv_inference_request_success"))


def assert_counters(server: RunningServer, answered: int) -> None:
    """The replica's counters say it answered exactly `answered` requests, failed none and has none pending."""
    samples = scrape(server)
    assert model_metric(samples, "nv_inference_request_success") == answered
    assert model_metric(samples, "nv_inference_count") == answered
    assert model_metric(samples, "nv_inference_exec_count") == answered
    assert model_metric(samples, "nv_inference_request_failure") == 0
    assert model_metric(samples, "nv_inference_pending_request_count") == 0


def assert_survivor_accounts(cluster: Cluster, replica: int, answered: set[int]) -> None:
    """A replica that kept running executed exactly the requests it answered, once each, and counted them."""
    started, done = cluster.executed(replica)
    assert set(started) == done == answered
    assert_counters(cluster.servers[replica], len(answered))


# Tests


def test_traffic_spreads_and_counters_add_up(cluster: Cluster) -> None:
    """400 requests through nginx from 6 HTTP and 2 gRPC clients: each replica serves a real share of each, every
    answer is right, and each replica's success, inference and execution counts equal exactly the number of requests
    it answered (so the three add up to 400), with no failure and nothing pending."""
    with Traffic(cluster, limit=400) as traffic:
        traffic.wait_answered(400)
        outcomes = traffic.stop()
    assert_no_failures(outcomes)
    assert_answers_right(outcomes)
    for client in ("http", "grpc"):
        by = answered_by(outcomes, client)
        total = sum(len(ids) for ids in by.values())
        shares = {replica: round(len(ids) / total, 2) for replica, ids in by.items()}
        assert min(shares.values()) >= 0.15, f"round robin left a replica short of {client} requests: {shares}"
    by = answered_by(outcomes)
    for replica in range(REPLICAS):
        assert_survivor_accounts(cluster, replica, by[replica])
    assert sum(success_count(server) for server in cluster.servers) == 400


def test_sigkill_of_a_replica_mid_stream_loses_no_retryable_request(cluster: Cluster) -> None:
    """A replica crashes (SIGKILL) holding an HTTP and a gRPC request while 6 HTTP and 2 gRPC clients stream through
    nginx. Every HTTP request is answered, right, the held one by another replica after nginx retried it (so it ran
    twice); the held gRPC call fails UNAVAILABLE (nginx cannot retry it), and so may only the calls in flight on the
    crashed replica, never one sent after the crash. The survivors' counters equal what they answered; the crashed
    replica's last scrape is at most what it answered; the two add up to every answer."""
    victim = 0
    with Traffic(cluster) as traffic:
        traffic.wait_answered(150)
        held = freeze(cluster, victim)
        last_scraped = success_count(cluster.servers[victim])
        cluster.servers[victim].process.kill()
        cluster.servers[victim].process.wait(30)
        sent_after_kill = traffic.taken()
        traffic.wait_answered(traffic.answered() + 200)
        outcomes = traffic.stop()
    assert_answers_right(outcomes)
    failures = failures_of(outcomes)
    held_grpc = {i for i, client in held.items() if client == "grpc"}
    assert held_grpc <= set(failures), "a gRPC call in flight on the crashed replica was answered"
    for request_id, failure in failures.items():
        assert failure.client == "grpc" and request_id < sent_after_kill, f"{request_id}: {failure}"
        assert failure.error.startswith("StatusCode.UNAVAILABLE") and "502" in failure.error, failure.error
    assert len(failures) <= traffic.grpc_threads

    by = answered_by(outcomes)
    started, done = cluster.executed(victim)
    assert by[victim] <= done  # it answered only what it finished
    assert set(held) <= set(started) - done  # cut by the crash
    survivors = [replica for replica in range(REPLICAS) if replica != victim]
    answered_by_survivors = set().union(*(by[replica] for replica in survivors))
    ran_twice = set(started) & answered_by_survivors
    assert {i for i, client in held.items() if client == "http"} <= ran_twice
    for replica in survivors:
        assert_survivor_accounts(cluster, replica, by[replica])
    survivors_total = sum(success_count(cluster.servers[replica]) for replica in survivors)
    assert survivors_total + len(by[victim]) == len(outcomes) - len(failures)
    assert last_scraped <= len(by[victim])


@pytest.mark.parametrize("frozen", [True, False], ids=["requests-held-in-flight", "steady-stream"])
def test_sigterm_of_a_replica_mid_stream_drains_it(cluster: Cluster, frozen: bool) -> None:
    """A replica is told to stop (SIGTERM) while 6 HTTP and 2 gRPC clients stream through nginx (frozen: holding an
    HTTP and a gRPC request, released after the signal). It answers what it holds itself and exits 0; no HTTP request
    fails; every answer is right and nothing runs twice; every replica executed exactly what it answered, and the
    survivors' counters (and the drained one's, scraped while it drains) match.

    A gRPC call that nginx puts on its pooled connection to the replica just as the replica's gRPC server shuts
    down is refused (UNAVAILABLE from nginx's 502, or CANCELLED) and nginx cannot send it elsewhere (see the module
    docstring). The test allows that, and checks that such a call ran nowhere, so that a client may safely retry
    it, and that no call sent after the replica exited failed."""
    victim = 1
    server = cluster.servers[victim]
    held: dict[int, str] = {}
    with Traffic(cluster) as traffic:
        traffic.wait_answered(150)
        if frozen:
            held = freeze(cluster, victim)
        server.process.send_signal(signal.SIGTERM)
        # The others serve meanwhile. A client whose request nginx put on a connection to the victim opened before
        # the signal waits for the release: wait for progress without requiring it.
        traffic.wait_answered(traffic.answered() + 100, timeout=5, required=False)
        scraped_draining: int | None = None
        if frozen:
            assert server.process.poll() is None, "naiad exited with requests in flight"
            scraped_draining = success_count(server)  # metrics are served until the end of the drain
            cluster.release(victim)
        # Only one signal: a second SIGTERM late in shutdown ends naiad with -15 instead of 0.
        assert server.process.wait(30) == 0, server.log()
        sent_after_exit = traffic.taken()
        traffic.wait_answered(traffic.answered() + 100)
        outcomes = traffic.stop()
    assert_answers_right(outcomes)
    failures = failures_of(outcomes)
    ran = set().union(*(cluster.executed(replica)[0] for replica in range(REPLICAS)))
    for request_id, failure in failures.items():
        assert failure.client == "grpc" and request_id < sent_after_exit, f"{request_id}: {failure}"
        refused = failure.error.startswith("StatusCode.UNAVAILABLE") and "502" in failure.error
        assert refused or failure.error.startswith("StatusCode.CANCELLED"), failure.error
        assert request_id not in ran, f"call {request_id} failed after running on a replica"
    assert len(failures) <= traffic.grpc_threads

    by = answered_by(outcomes)
    assert set(held) <= by[victim], "requests in flight on the draining replica were not answered by it"
    started, done = cluster.executed(victim)
    assert set(started) == done == by[victim]  # drained: everything it started, it finished and answered
    assert scraped_draining is None or scraped_draining <= len(by[victim])
    survivors = [replica for replica in range(REPLICAS) if replica != victim]
    for replica in survivors:
        assert_survivor_accounts(cluster, replica, by[replica])
    survivors_total = sum(success_count(cluster.servers[replica]) for replica in survivors)
    assert survivors_total + len(by[victim]) == len(outcomes) - len(failures)


def test_docs_show_the_tested_configuration() -> None:
    """docs/load-balancing.md shows, as its template, exactly the configuration these tests run."""
    rendered = load_balancer_conf(
        http_port=8000,
        http_replicas=["naiad-1:8000", "naiad-2:8000", "naiad-3:8000"],
        grpc_port=8001,
        grpc_replicas=["naiad-1:8001", "naiad-2:8001", "naiad-3:8001"],
        listen_host="0.0.0.0",
    )
    page = (Path(__file__).parents[2] / "docs" / "load-balancing.md").read_text()
    assert f"```nginx\nevents {{}}\n\nhttp {{{rendered}}}\n```\n" in page
