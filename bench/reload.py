"""Reloads under load: naiad and Triton in poll mode serve `add_sub` to a steady stream of HTTP clients while the
repository changes under them.

For each server, after a steady window: a new version folder appears (the version policy serves only the latest), then
config.pbtxt changes. For each change the benchmark reports how long it took from the write until the new model
answered, how many requests failed, and the throughput while reloading as a fraction of the steady one (target 0.9,
zero errors).

    python bench/reload.py                  # naiad and Triton, 2 rounds
    python bench/reload.py --servers naiad --rounds 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from http_json import REPO_ROOT, Peers, add_server_arguments, make_server, run_guarded, write_results

BODY = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [2.0] * 16},
        ]
    }
).encode()


@dataclass
class Answer:
    at: float
    ok: bool
    version: str


@dataclass
class Load:
    """Client threads sending `add_sub` requests back to back on keep-alive connections."""

    port: int
    clients: int
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    first_seen: dict[str, float] = field(default_factory=dict)  # model version -> its first answer
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            try:
                connection.request("POST", "/v2/models/add_sub/infer", BODY, {"Content-Type": "application/json"})
                reply = connection.getresponse()
                data = reply.read()
            except (OSError, http.client.HTTPException) as exc:
                self.answers.append(Answer(time.monotonic(), False, ""))
                self.errors.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            ok = reply.status == 200
            version = json.loads(data).get("model_version", "") if ok else ""
            if not ok:
                self.errors.append(f"{reply.status} {data[:200]!r}")
            now = time.monotonic()
            self.answers.append(Answer(now, ok, version))
            if ok and version not in self.first_seen:
                self.first_seen[version] = now
        connection.close()

    def rate(self, start: float, end: float) -> float:
        """Successful answers per second in [start, end)."""
        return sum(1 for a in self.answers if start <= a.at < end and a.ok) / max(end - start, 1e-9)

    def failures(self, start: float, end: float) -> int:
        return sum(1 for a in self.answers if start <= a.at < end and not a.ok)

    def first(self, version: str) -> float | None:
        """When the first answer from `version` came (looked up without scanning the answers, which would take the
        clients' CPU while they are measured)."""
        return self.first_seen.get(version)


def build_repository(root: Path) -> Path:
    model = root / "add_sub"
    shutil.copytree(REPO_ROOT / "examples" / "models" / "add_sub", model, ignore=shutil.ignore_patterns("__pycache__"))
    return model


def add_version(model: Path, version: int) -> None:
    """A new version folder, appearing at once (written aside, then renamed into place)."""
    staging = model.parent / f".staging-{version}"
    shutil.copytree(model / "1", staging, ignore=shutil.ignore_patterns("__pycache__"))
    staging.rename(model / str(version))


def change_config(model: Path, delay_us: int) -> None:
    config = model / "config.pbtxt"
    text = config.read_text()
    start = text.index("max_queue_delay_microseconds:")
    end = text.index("\n", start)
    staging = model.parent / ".config.pbtxt"
    staging.write_text(text[:start] + f"max_queue_delay_microseconds: {delay_us}" + text[end:])
    staging.rename(config)


def config_delay(port: int) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/v2/models/add_sub/config")
        reply = connection.getresponse()
        body = reply.read()
    except OSError:
        return None
    finally:
        connection.close()
    if reply.status != 200:
        return None
    value = json.loads(body).get("dynamic_batching", {}).get("max_queue_delay_microseconds")
    return int(value) if value is not None else None


def wait(condition: object, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return time.monotonic()
        time.sleep(0.05)
    return None


def run_server(name: str, peers: Peers, args: argparse.Namespace, work: Path) -> dict[str, object]:
    repo = work / name / "models"
    repo.mkdir(parents=True)
    model = build_repository(repo)
    args.naiad_arg = [*args.naiad_arg_base, "--model-control-mode=poll", f"--repository-poll-secs={args.poll_secs}"]
    server, _ = make_server(name, repo, peers, args, work / name)
    if name == "triton":
        server.argv += ["--model-control-mode=poll", f"--repository-poll-secs={args.poll_secs}"]
    server.start()
    load = Load(server.http_port, args.clients)
    try:
        server.wait_ready(args.ready_timeout)
        load.start()
        time.sleep(2)  # warm-up
        steady_start = time.monotonic()
        time.sleep(args.steady)
        steady_end = time.monotonic()
        steady = load.rate(steady_start, steady_end)
        changes: list[dict[str, object]] = []

        written = time.monotonic()
        add_version(model, 2)
        serving = wait(lambda: load.first("2") is not None, args.change_timeout)
        serving = load.first("2") if serving else None
        changes.append(summary("new version", load, steady, written, serving, args.window))

        time.sleep(args.window)
        written = time.monotonic()
        change_config(model, 250)
        serving = wait(lambda: config_delay(server.http_port) == 250, args.change_timeout)
        changes.append(summary("config change", load, steady, written, serving, args.window))
        time.sleep(args.window)
    finally:
        load.stop()
        server.stop()
    for change in changes:
        print(
            f"  {name:7} {change['change']:14} serving after {_seconds(change['serving_after_s'])}, "
            f"{change['failed']} failed, {change['rate']:,.0f} req/s against {steady:,.0f} steady "
            f"({change['ratio']:.2f})",
            flush=True,
        )
    if load.errors:
        print(f"  {name} first errors: {load.errors[:3]}", flush=True)
    return {"steady": steady, "changes": changes, "errors": load.errors[:20]}


def summary(
    change: str, load: Load, steady: float, written: float, serving: float | None, window: float
) -> dict[str, object]:
    """The figures of one change: the window runs from the write until `window` seconds after the new model
    answered (or the timeout)."""
    end = (serving if serving is not None else time.monotonic()) + window
    while time.monotonic() < end:
        time.sleep(0.05)
    rate = load.rate(written, end)
    return {
        "change": change,
        "serving_after_s": None if serving is None else serving - written,
        "failed": load.failures(written, end),
        "rate": rate,
        "ratio": rate / steady if steady else 0.0,
    }


def _seconds(value: object) -> str:
    return f"{value:.2f} s" if isinstance(value, float) else "never"


def bench(args: argparse.Namespace) -> int:
    servers = [s for s in args.servers.split(",") if s]
    peers = Peers(Path(args.peers_dir), Path(args.peers_src))
    peers.check(servers, need_perf_analyzer=False, need_wrk=False)
    args.naiad_arg_base = list(args.naiad_arg)
    started = dt.datetime.now(dt.timezone.utc)
    results: dict[str, list[dict[str, object]]] = {name: [] for name in servers}
    for round_index in range(args.rounds):
        print(f"[round {round_index + 1}/{args.rounds}]", flush=True)
        for name in servers:
            work = Path(tempfile.mkdtemp(prefix=f"naiad-bench-reload-{name}-"))
            try:
                results[name].append(run_server(name, peers, args, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.clients} HTTP clients, poll every {args.poll_secs} s, median of {args.rounds} round(s)")
    header = f"{'server':8}{'change':16}{'serving after':>15}{'failed':>8}{'reloading/steady':>18}"
    print(f"{header}   target 0.90, 0 failed")
    for name, runs in results.items():
        for index, change in enumerate(("new version", "config change")):
            rows = [run["changes"][index] for run in runs]  # type: ignore[index]
            ratio = statistics.median(float(row["ratio"]) for row in rows)
            failed = sum(int(row["failed"]) for row in rows)
            after = [float(row["serving_after_s"]) for row in rows if row["serving_after_s"] is not None]
            shown = f"{statistics.median(after):.2f} s" if after else "never"
            print(f"{name:8}{change:16}{shown:>15}{failed:>8}{ratio:>18.2f}")
    write_results(Path(args.out), "reload", started, {"clients": args.clients, "results": results})
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default="triton,naiad", help="comma list of triton,naiad")
    add_server_arguments(p, "interpreter that runs `-m naiad serve`")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    p.add_argument("--poll-secs", type=int, default=1, help="--repository-poll-secs of both servers")
    p.add_argument("--steady", type=float, default=5.0, help="seconds of steady load measured first")
    p.add_argument("--window", type=float, default=1.0, help="seconds after the new model answers still counted")
    p.add_argument("--change-timeout", type=float, default=60.0, help="seconds to wait for a change to serve")
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "out"), help="directory for the JSON results")
    args = p.parse_args(argv)
    args.rounds = max(1, args.rounds)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_guarded(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
