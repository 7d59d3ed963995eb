"""HTTP JSON throughput of naiad vs NVIDIA Triton (and a bare ASGI ceiling) on add_sub, measured with wrk."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO_ROOT / "examples" / "models" / "add_sub"
MODEL = "add_sub"
ALL_SERVERS = ("triton", "naiad", "bare")
# Targets from the project brief: naiad/Triton requests/s, HTTP JSON, dynamic batching on.
TARGETS = {1: 2.0, 16: 1.5}

# Exact in float32, so sums and differences can be compared with ==.
INPUT0 = [i * 0.5 for i in range(16)]
INPUT1 = [16.0 - i * 0.25 for i in range(16)]
BODY = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": INPUT0},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": INPUT1},
        ]
    },
    separators=(",", ":"),
)


class BenchError(Exception):
    """A failure that ends the run with a message (and a non-zero exit status)."""


@dataclass
class Peers:
    """Where ../shared/peers/setup.sh installed the peers, and the sources it ships."""

    root: Path
    src: Path

    @property
    def triton_dir(self) -> Path:
        return self.root / "tri" / "lib" / "python3.11" / "site-packages" / "pytriton" / "tritonserver"

    @property
    def triton_libs(self) -> Path:
        return self.root / "tri" / "lib" / "python3.11" / "site-packages" / "nvidia_pytriton.libs"

    @property
    def perf_analyzer(self) -> Path:
        return self.root / "perf_analyzer"

    @property
    def uvicorn(self) -> Path:
        return self.root / "asgi" / "bin" / "uvicorn"

    @property
    def tri_python(self) -> Path:
        return self.root / "tri" / "bin" / "python"

    def check(self, servers: list[str], need_perf_analyzer: bool, need_wrk: bool = True) -> None:
        needed: list[Path] = []
        if "triton" in servers:
            needed += [self.triton_dir / "bin" / "tritonserver", self.triton_dir / "backends" / "python"]
        if "bare" in servers:
            needed += [self.uvicorn, self.src / "asgi_bare.py"]
        if "grpc_bare" in servers:
            needed += [self.tri_python, self.src / "grpc_bare.py"]
        if need_perf_analyzer:
            needed.append(self.perf_analyzer)
        missing = [str(p) for p in needed if not p.exists()]
        if need_wrk and shutil.which("wrk") is None:
            missing.append("wrk (on PATH)")
        if missing:
            raise BenchError(
                "the peers are not installed (missing: " + ", ".join(missing) + ").\n"
                f"Install them with:  PEERS_DIR={self.root} {self.src / 'setup.sh'}\n"
                "(../shared/peers/setup.sh from the repository root; PEERS_DIR defaults to /tmp/peers)"
            )


@dataclass
class Server:
    """One server process, started in its own process group so that all of it can be stopped."""

    name: str
    argv: list[str]
    http_port: int
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) or "(empty log)"

    def is_ready(self) -> bool:
        with contextlib.suppress(OSError):
            status, _ = http("GET", self.base + "/v2/health/ready", timeout=1.0)
            return status == 200
        return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with status {self.proc.returncode} before it was ready.\n"
                    f"command: {' '.join(self.argv)}\n--- last lines of its log ---\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.1)
        raise BenchError(
            f"{self.name} was not ready within {timeout:.0f}s.\n"
            f"command: {' '.join(self.argv)}\n--- last lines of its log ---\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Children (Triton's Python-backend stubs) may outlive the leader: clear the whole group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def server_cpu_seconds(server: int) -> float:
    """utime + stime of the server's live processes: its session (it was started with start_new_session) and every
    descendant, such as instance processes that lead sessions of their own."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, int, int]] = {}  # pid -> parent, session, CPU ticks
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state, ppid, pgrp, session, ..., utime (11), stime (12)
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[11]) + int(fields[12]))

    def belongs(pid: int) -> bool:
        seen = 0
        while pid in table and seen < 64:
            parent, session, _ = table[pid]
            if pid == server or session == server:
                return True
            pid, seen = parent, seen + 1
        return False

    return sum(ticks for pid, (_, _, ticks) in table.items() if belongs(pid)) / tick


THREADS_PARAMETER = 'parameters { key: "NAIAD_INSTANCE_PROCESS" value: { string_value: "false" } }\n'


def add_sub_repos(work: Path) -> dict[str, Path]:
    """add_sub twice under `work`: "processes" as it is (a process instance), "threads" as a thread instance."""
    repos = {"processes": work / "processes", "threads": work / "threads"}
    for repo in repos.values():
        shutil.copytree(MODEL_DIR, repo / MODEL, ignore=shutil.ignore_patterns("__pycache__"))
    config = repos["threads"] / MODEL / "config.pbtxt"
    config.write_text(config.read_text() + THREADS_PARAMETER)
    return repos


def perf_analyzer_with_cpu(
    server_pid: int, argv: list[str], timeout: float, attempts: int
) -> tuple[dict[str, object], str]:
    """`perf_analyzer_attempts`, with the server's CPU (every process of it) per inference over the whole run, its
    warm-up included, at the measured rate (None when there was no rate)."""
    cpu_before, wall_before = server_cpu_seconds(server_pid), time.monotonic()
    result, text = perf_analyzer_attempts(argv, timeout, attempts)
    cpu_share = (server_cpu_seconds(server_pid) - cpu_before) / (time.monotonic() - wall_before)
    rate = result["infer_per_s"]
    result["cpu_us_per_inference"] = cpu_share * 1e6 / rate if isinstance(rate, float) and rate > 0 else None
    return result, text


def add_perf_analyzer_arguments(
    p: argparse.ArgumentParser, measurement_ms: int, timeout: int, pa_arg_help: str
) -> None:
    """perf_analyzer's options, as the benchmarks that run it share them."""
    p.add_argument(
        "--measurement-ms", type=int, default=measurement_ms, help="perf_analyzer -p (measurement window, ms)"
    )
    p.add_argument("--pa-timeout", type=int, default=timeout, help="seconds before a perf_analyzer run is killed")
    p.add_argument("--pa-attempts", type=int, default=3, help="tries when perf_analyzer finds no stable figure")
    p.add_argument("--pa-arg", action="append", default=[], help=pa_arg_help)


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body) for 2xx and error statuses alike."""
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def flat(data: object) -> list[object]:
    """The V2 protocol allows nested JSON arrays for tensor data: flattens them (row-major)."""
    if isinstance(data, list):
        return [x for item in data for x in flat(item)] if any(isinstance(i, list) for i in data) else data
    return [data]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_answer(server: Server) -> dict[str, object]:
    """Asserts the server computes add_sub on BODY; returns its /v2 metadata (name, version) if any."""
    status, raw = http("POST", f"{server.base}/v2/models/{MODEL}/infer", BODY.encode(), timeout=10.0)
    if status != 200:
        raise BenchError(f"{server.name}: POST /v2/models/{MODEL}/infer -> HTTP {status}: {raw[:500]!r}")
    try:
        reply = json.loads(raw)
        outputs = {o["name"]: o for o in reply["outputs"]}
        expected = {
            "OUTPUT0": [a + b for a, b in zip(INPUT0, INPUT1, strict=True)],
            "OUTPUT1": [a - b for a, b in zip(INPUT0, INPUT1, strict=True)],
        }
        for name, want in expected.items():
            out = outputs[name]
            if out["datatype"] != "FP32" or list(out["shape"]) != [1, 16] or flat(out["data"]) != want:
                raise BenchError(f"{server.name}: wrong {name}: {json.dumps(out)[:300]} (want {want})")
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{server.name}: malformed infer response ({exc!r}): {raw[:500]!r}") from exc
    meta: dict[str, object] = {}
    with contextlib.suppress(OSError, ValueError):
        status, raw = http("GET", server.base + "/v2")
        if status == 200 and raw:
            meta = {k: v for k, v in json.loads(raw).items() if k in ("name", "version")}
    return meta


WRK_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def run_wrk(url: str, lua: Path, connections: int, duration: int, threads: int) -> dict[str, float]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", str(lua), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    text = out.stdout + out.stderr
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if out.returncode != 0 or rps is None:
        raise BenchError(f"wrk failed (status {out.returncode}):\n{text}")
    result = {"requests_per_s": float(rps.group(1)), "non_2xx": 0.0, "socket_errors": 0.0}
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s|m)\b", text)
    if lat:
        result["latency_avg_ms"] = float(lat.group(1)) * _UNITS[lat.group(2)]
    total = re.search(r"(\d+) requests in", text)
    if total:
        result["requests"] = float(total.group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if bad:
        result["non_2xx"] = float(bad.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        result["socket_errors"] = float(sum(int(x) for x in sock.groups()))
    return result


def run_perf_analyzer(peers: Peers, server: Server, args: argparse.Namespace, grpc_port: int) -> dict[str, object]:
    """perf_analyzer at one concurrency; retried when it finds no stable measurement (noisy machines)."""
    port = server.http_port if args.pa_protocol == "http" else grpc_port
    argv = perf_analyzer_argv(peers, port, args.pa_protocol, args.pa_concurrency, 3000)
    return perf_analyzer_attempts(argv, args.pa_timeout, args.pa_attempts)[0]


def perf_analyzer_argv(peers: Peers, port: int, protocol: str, concurrency: int, measurement_ms: int) -> list[str]:
    return [
        str(peers.perf_analyzer),
        *("-m", MODEL, "-u", f"127.0.0.1:{port}", "-i", protocol),
        *("--concurrency-range", str(concurrency), "-p", str(measurement_ms), "--input-data", "random"),
    ]


def perf_analyzer_attempts(argv: list[str], timeout: float, attempts: int) -> tuple[dict[str, object], str]:
    """Runs perf_analyzer up to `attempts` times while it finds no stable measurement; (result, its output)."""
    result: dict[str, object] = {}
    text = ""
    for attempt in range(1, attempts + 1):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
            text, rc = out.stdout + out.stderr, out.returncode
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout or ""
            text, rc = partial.decode(errors="replace") if isinstance(partial, bytes) else partial, 124
        found = re.findall(r"throughput: ([\d.]+) infer/sec", text)
        result = {"rc": rc, "attempts": attempt, "infer_per_s": float(found[-1]) if found else None}
        if rc == 0 and found:
            return result, text
        result["tail"] = text[-2000:]
        if "stable measurement" not in text:
            break
        print(f"  perf_analyzer found no stable measurement (attempt {attempt}/{attempts})", flush=True)
    return result, text


def make_server(name: str, repo: Path, peers: Peers, args: argparse.Namespace, logs: Path) -> tuple[Server, int]:
    h, g, m = free_port(), free_port(), free_port()
    log = logs / f"{name}.log"
    if name == "triton":
        t = peers.triton_dir
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(peers.triton_libs)
        env["PATH"] = f"{peers.root / 'tri' / 'bin'}:{env.get('PATH', '')}"
        argv = [
            str(t / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={t / 'backends'}",
            f"--cache-directory={t / 'caches'}",
            *(f"--http-port={h}", f"--grpc-port={g}", f"--metrics-port={m}"),
            *("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"),
            "--log-info=false",
            "--log-warning=false",
        ]
        return Server(name, argv, h, log, env=env), g
    if name == "naiad":
        argv = [
            args.naiad_python,
            *("-m", "naiad", "serve", "--model-repository", str(repo)),
            *("--http-address", "127.0.0.1", "--http-port", str(h)),
            *("--grpc-port", str(g), "--metrics-port", str(m)),
            "--log-info=false",
            *args.naiad_arg,
        ]
        return Server(name, argv, h, log, cwd=REPO_ROOT), g
    if name == "bare":
        argv = [
            str(peers.uvicorn),
            "asgi_bare:app",
            *("--host", "127.0.0.1", "--port", str(h)),
            *("--loop", "uvloop", "--http", "httptools", "--no-access-log"),
        ]
        return Server(name, argv, h, log, cwd=peers.src), g
    raise BenchError(f"unknown server {name!r}")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def add_server_arguments(p: argparse.ArgumentParser, naiad_python_help: str) -> None:
    """The options both benchmarks share: rounds, readiness, where the peers are, how naiad runs."""
    default_python = REPO_ROOT / ".venv" / "bin" / "python"
    p.add_argument("--rounds", type=int, default=3, help="rounds; servers alternate within each round")
    p.add_argument("--ready-timeout", type=float, default=90.0, help="seconds to wait for a server to be ready")
    p.add_argument("--peers-dir", default=os.environ.get("PEERS_DIR", "/tmp/peers"), help="peers install dir")
    p.add_argument("--peers-src", default=str(REPO_ROOT.parent / "shared" / "peers"), help="setup.sh's dir")
    p.add_argument(
        "--naiad-python",
        default=str(default_python if default_python.exists() else sys.executable),
        help=naiad_python_help,
    )
    p.add_argument("--naiad-arg", action="append", default=[], help="extra argument for naiad serve (repeat)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--servers", default="triton,naiad,bare", help="comma list of triton,naiad,bare")
    add_server_arguments(p, "interpreter that runs `-m naiad serve`")
    p.add_argument("--connections", default="1,16", help="wrk connection counts, comma list")
    p.add_argument("--duration", type=int, default=8, help="seconds of each timed wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of untimed wrk load after each start")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--perf-analyzer", action="store_true", help="also run perf_analyzer on triton and naiad")
    p.add_argument("--no-wrk", action="store_true", help="skip wrk (with --perf-analyzer: perf_analyzer only)")
    p.add_argument("--pa-protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--pa-concurrency", type=int, default=16)
    p.add_argument("--pa-timeout", type=int, default=180, help="seconds before a perf_analyzer run is killed")
    p.add_argument("--pa-attempts", type=int, default=3, help="tries when perf_analyzer finds no stable figure")
    p.add_argument("--check-targets", action="store_true", help="exit 1 if naiad misses the targets")
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "out"), help="directory for the JSON results")
    args = p.parse_args(argv)
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    bad = [s for s in args.server_list if s not in ALL_SERVERS]
    if bad or not args.server_list:
        p.error(f"--servers: unknown {bad}; choose from {','.join(ALL_SERVERS)}")
    args.conn_list = [int(c) for c in args.connections.split(",") if c.strip()] if not args.no_wrk else []
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be >= 1")
    if args.no_wrk and not args.perf_analyzer:
        p.error("--no-wrk leaves nothing to run without --perf-analyzer")
    return args


def bench(args: argparse.Namespace) -> int:
    peers = Peers(Path(args.peers_dir), Path(args.peers_src))
    pa_servers = [s for s in args.server_list if s != "bare"] if args.perf_analyzer else []
    peers.check(args.server_list, bool(pa_servers))
    if not MODEL_DIR.is_dir():
        raise BenchError(f"missing model {MODEL_DIR}")

    work = Path(tempfile.mkdtemp(prefix="naiad-bench-"))
    started = dt.datetime.now(dt.timezone.utc)
    runs: list[dict[str, object]] = []
    pa_runs: list[dict[str, object]] = []
    versions: dict[str, object] = {}
    current: Server | None = None
    try:
        repo = work / "models"
        shutil.copytree(MODEL_DIR, repo / MODEL, ignore=shutil.ignore_patterns("__pycache__"))
        lua = work / "post.lua"
        lua.write_text(WRK_LUA.format(body=BODY))
        logs = work / "logs"
        logs.mkdir()
        n = len(args.server_list)
        for rnd in range(args.rounds):
            order = args.server_list[rnd % n :] + args.server_list[: rnd % n]
            for name in order:
                current, grpc_port = make_server(name, repo, peers, args, logs)
                print(f"[round {rnd + 1}/{args.rounds}] {name}: starting", flush=True)
                current.start()
                current.wait_ready(args.ready_timeout)
                versions[name] = check_answer(current) or versions.get(name, {})
                url = f"{current.base}/v2/models/{MODEL}/infer"
                if args.conn_list and args.warmup > 0:
                    run_wrk(url, lua, max(args.conn_list), args.warmup, args.threads)
                for conns in args.conn_list:
                    r = run_wrk(url, lua, conns, args.duration, args.threads)
                    if r["non_2xx"] or r["socket_errors"]:
                        bad = f"{r['non_2xx']:.0f} non-2xx, {r['socket_errors']:.0f} socket errors"
                        print(f"  WARNING {name}: {bad}")
                    runs.append({"round": rnd, "server": name, "connections": conns, **r})
                    lat = fmt(r.get("latency_avg_ms"), ".3f")
                    print(
                        f"  c={conns:<3} {r['requests_per_s']:>10,.0f} req/s  (avg latency {lat} ms)",
                        flush=True,
                    )
                if name in pa_servers:
                    pa = run_perf_analyzer(peers, current, args, grpc_port)
                    pa_runs.append({"round": rnd, "server": name, **pa})
                    print(
                        f"  perf_analyzer c={args.pa_concurrency}: {fmt(pa['infer_per_s'])} infer/s",
                        flush=True,
                    )
                    if pa["infer_per_s"] is None:
                        print(f"  perf_analyzer failed (status {pa['rc']}):\n{pa.get('tail', '')}", flush=True)
                check_answer(current)  # still right after the load
                current.stop()
                current = None
    finally:
        if current is not None:
            current.stop()
        shutil.rmtree(work, ignore_errors=True)

    return report(args, started, runs, pa_runs, versions, pa_servers)


def report(
    args: argparse.Namespace,
    started: dt.datetime,
    runs: list[dict[str, object]],
    pa_runs: list[dict[str, object]],
    versions: dict[str, object],
    pa_servers: list[str],
) -> int:
    median: dict[str, dict[int, float | None]] = {}
    for name in args.server_list:
        median[name] = {}
        for conns in args.conn_list:
            vals = [float(r["requests_per_s"]) for r in runs if r["server"] == name and r["connections"] == conns]
            median[name][conns] = statistics.median(vals) if vals else None
    pa_median: dict[str, float | None] = {}
    for name in pa_servers:
        vals = [float(r["infer_per_s"]) for r in pa_runs if r["server"] == name and r["infer_per_s"] is not None]
        pa_median[name] = statistics.median(vals) if vals else None

    pairs = [
        (a, b) for a, b in (("naiad", "triton"), ("naiad", "bare"), ("triton", "bare")) if a in median and b in median
    ]
    ratios = {f"{a}/{b}": {c: ratio(median[a][c], median[b][c]) for c in args.conn_list} for a, b in pairs}

    print()
    print(f"HTTP JSON, model {MODEL}, wrk -t{args.threads} -d{args.duration}s, median of {args.rounds} round(s)")
    head = "server".ljust(10) + "".join(f"{f'req/s c={c}':>16}" for c in args.conn_list)
    if args.conn_list:
        print(head)
        for name in args.server_list:
            print(name.ljust(10) + "".join(f"{fmt(median[name][c]):>16}" for c in args.conn_list))
        for key, by_c in ratios.items():
            print(key.ljust(10) + "".join(f"{fmt(by_c[c], '.2f') + 'x':>16}" for c in args.conn_list))
    missed = []
    if "naiad/triton" in ratios:
        for c, target in TARGETS.items():
            got = ratios["naiad/triton"].get(c)
            if c in args.conn_list:
                ok = got is not None and got >= target
                missed += [] if ok else [c]
                verdict = "met" if ok else "MISSED"
                print(f"target naiad/triton >= {target:.1f}x at c={c}: {verdict} ({fmt(got, '.2f')}x)")
    if pa_median:
        print(f"perf_analyzer ({args.pa_protocol}, concurrency {args.pa_concurrency}), median infer/s:")
        for name, v in pa_median.items():
            print(f"  {name.ljust(8)}{fmt(v):>12}")
        pr = ratio(pa_median.get("naiad"), pa_median.get("triton"))
        if pr is not None:
            print(f"  naiad/triton {pr:.2f}x")

    doc = {
        "settings": {
            k: getattr(args, k)
            for k in ("server_list", "rounds", "conn_list", "duration", "warmup", "threads", "perf_analyzer")
        },
        "body": json.loads(BODY),
        "versions": versions,
        "runs": runs,
        "median_requests_per_s": {s: {str(c): v for c, v in d.items()} for s, d in median.items()},
        "ratios": {k: {str(c): v for c, v in d.items()} for k, d in ratios.items()},
        "targets_naiad_over_triton": {str(c): t for c, t in TARGETS.items()},
        "perf_analyzer": {"runs": pa_runs, "median_infer_per_s": pa_median},
    }
    write_results(Path(args.out), "http_json", started, doc)
    return 1 if args.check_targets and missed else 0


def write_results(out_dir: Path, benchmark: str, started: dt.datetime, doc: dict[str, object]) -> Path:
    """`doc` with the benchmark's name, start time and host, as `<out_dir>/<benchmark>-<UTC time>.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{benchmark}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    host = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    whole = {"benchmark": benchmark, "started": started.isoformat(), "host": host, **doc}
    path.write_text(json.dumps(whole, indent=2) + "\n")
    print(f"results: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    return run_guarded(bench, parse_args(argv))


def run_guarded(bench: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs a benchmark so that errors, Ctrl-C and SIGTERM end it with a status (the finally blocks stop servers)."""
    # Turn SIGTERM into an exception as well, so the finally blocks stop every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return bench(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except SystemExit:
        print("terminated; servers stopped", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
