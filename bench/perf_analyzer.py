"""perf_analyzer over gRPC and HTTP (binary tensors) on add_sub: naiad vs NVIDIA Triton vs a bare grpc.aio servicer."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from http_json import (
    INPUT0,
    INPUT1,
    MODEL,
    MODEL_DIR,
    REPO_ROOT,
    BenchError,
    Peers,
    Server,
    add_perf_analyzer_arguments,
    add_server_arguments,
    add_sub_repos,
    check_answer,
    fmt,
    free_port,
    make_server,
    perf_analyzer_argv,
    perf_analyzer_with_cpu,
    ratio,
    run_guarded,
    write_results,
)

ALL_SERVERS = ("triton", "naiad", "naiad-threads", "bare", "bare-uvloop", "floor", "h2-bare", "cygrpc-bare")
DEFAULT_SERVERS = ("triton", "naiad", "bare")
ALL_PROTOCOLS = ("grpc", "http")
# `bare` is ../shared/peers/grpc_bare.py on the peers' interpreter (plain asyncio): the grpcio ceiling for one Python
# process that the targets name. `bare-uvloop` is the same servicer on uvloop, naiad's loop, and `floor` adds
# naiad's gRPC codec and one wait on the loop to it (bench/grpc_floor.py): the least a Triton-compatible server adds.
# None of the three has HTTP.
PROTOCOLS_OF = {
    "triton": ALL_PROTOCOLS,
    "naiad": ALL_PROTOCOLS,
    "naiad-threads": ALL_PROTOCOLS,
    "bare": ("grpc",),
    "bare-uvloop": ("grpc",),
    "floor": ("grpc",),
    "h2-bare": ("grpc",),
    "cygrpc-bare": ("grpc",),
}
FLOOR = Path(__file__).resolve().parent / "grpc_floor.py"
# The two other stacks measured against the bare grpc.aio servicer (issue 13), each doing only add_sub's arithmetic:
# `h2-bare` on an HTTP/2 layer of its own (bench/grpc_h2_bare.py), `cygrpc-bare` on grpcio's core bindings with a
# lean call loop (bench/grpc_cygrpc_bare.py).
PROTOTYPES = {
    "h2-bare": Path(__file__).resolve().parent / "grpc_h2_bare.py",
    "cygrpc-bare": Path(__file__).resolve().parent / "grpc_cygrpc_bare.py",
}
# Targets from issue 13: (protocol, reference server, concurrency, naiad/reference infer/s at least), and server CPU
# per inference: (protocol, concurrency, naiad/Triton at most).
TARGETS = (
    ("grpc", "triton", 1, 1.0),
    ("grpc", "triton", 16, 1.2),
    ("http", "triton", 16, 1.6),
)
CPU_TARGETS = (
    ("grpc", 1, 0.6),
    ("grpc", 16, 0.6),
    ("http", 1, 0.5),
    ("http", 16, 0.5),
)

# One gRPC inference with tritonclient, checked with numpy; run by the interpreter that has them (naiad's .venv).
# argv: URL, seconds to wait for ServerReady, INPUT0 and INPUT1 as JSON. Prints the server metadata as JSON.
GRPC_CHECK = """
import json, sys, time
import numpy as np
import tritonclient.grpc as g

url, wait = sys.argv[1], float(sys.argv[2])
a = np.array([json.loads(sys.argv[3])], dtype=np.float32)
b = np.array([json.loads(sys.argv[4])], dtype=np.float32)
client = g.InferenceServerClient(url)
deadline = time.monotonic() + wait
while True:
    try:
        if client.is_server_ready():
            break
    except Exception as exc:
        if time.monotonic() > deadline:
            sys.exit(f"ServerReady failed: {exc}")
    if time.monotonic() > deadline:
        sys.exit("ServerReady did not answer ready=true")
    time.sleep(0.1)
inputs = [g.InferInput("INPUT0", [1, 16], "FP32"), g.InferInput("INPUT1", [1, 16], "FP32")]
inputs[0].set_data_from_numpy(a)
inputs[1].set_data_from_numpy(b)
outputs = [g.InferRequestedOutput("OUTPUT0"), g.InferRequestedOutput("OUTPUT1")]
reply = client.infer("add_sub", inputs, outputs=outputs)
for name, want in (("OUTPUT0", a + b), ("OUTPUT1", a - b)):
    got = reply.as_numpy(name)
    if got is None or got.dtype != np.float32 or got.shape != (1, 16) or not np.array_equal(got, want):
        sys.exit(f"wrong {name}: {got!r} (want {want!r})")
meta = client.get_server_metadata()
print(json.dumps({"name": meta.name, "version": meta.version}))
"""


@dataclass
class PAServer(Server):
    """A server measured over gRPC (and HTTP when it has it): ready when HTTP says so and the gRPC port accepts."""

    grpc_port: int = 0
    protocols: tuple[str, ...] = ALL_PROTOCOLS

    def is_ready(self) -> bool:
        if "http" in self.protocols and not super().is_ready():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1.0):
                return True
        except OSError:
            return False

    def port(self, protocol: str) -> int:
        return self.http_port if protocol == "http" else self.grpc_port

    def died(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"{self.name} exited with status {self.proc.returncode} during the run"
        return None


def start_server(name: str, repos: dict[str, Path], peers: Peers, args: argparse.Namespace, logs: Path) -> PAServer:
    """`repos` as `add_sub_repos` makes them: "naiad-threads" serves the thread-instance one, every other server the
    other."""
    label = name
    repo = repos["threads" if name == "naiad-threads" else "processes"]
    if name == "bare":
        g = free_port()
        argv = [str(peers.tri_python), str(peers.src / "grpc_bare.py"), str(g)]
        return PAServer(name, argv, 0, logs / f"{name}.log", cwd=peers.src, grpc_port=g, protocols=("grpc",))
    if name in ("bare-uvloop", "floor"):
        g = free_port()
        argv = [args.naiad_python, str(FLOOR), str(g), *(["--bare"] if name == "bare-uvloop" else [])]
        return PAServer(name, argv, 0, logs / f"{name}.log", cwd=REPO_ROOT, grpc_port=g, protocols=("grpc",))
    if name in PROTOTYPES:
        g = free_port()
        argv = [args.naiad_python, str(PROTOTYPES[name]), str(g)]
        return PAServer(name, argv, 0, logs / f"{name}.log", cwd=REPO_ROOT, grpc_port=g, protocols=("grpc",))
    if name == "naiad-threads":  # the same model as a thread instance in the server's process
        name = "naiad"
    # naiad binds gRPC and metrics to 0.0.0.0 by default: keep them on loopback like the others (still overridable).
    local = ["--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1"]
    server, g = make_server(
        name, repo, peers, argparse.Namespace(**{**vars(args), "naiad_arg": local + args.naiad_arg}), logs
    )
    base = {f.name: getattr(server, f.name) for f in fields(Server)}
    base["name"] = label
    return PAServer(**base, grpc_port=g, protocols=PROTOCOLS_OF[label])


def check_grpc(server: PAServer, args: argparse.Namespace) -> dict[str, object]:
    """Asserts the server computes add_sub over gRPC (one tritonclient infer); returns its server metadata."""
    argv = [
        args.naiad_python,
        *("-c", GRPC_CHECK, f"127.0.0.1:{server.grpc_port}", str(args.ready_timeout)),
        *(json.dumps(INPUT0), json.dumps(INPUT1)),
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=args.ready_timeout + 30, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{server.name}: the gRPC check did not finish in {exc.timeout:.0f}s") from exc
    if out.returncode != 0:
        raise BenchError(
            f"{server.name}: gRPC check failed (status {out.returncode}):\n{(out.stderr or out.stdout)[-1500:]}"
        )
    try:
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {}


def latencies(text: str) -> dict[str, float]:
    """Client-side latencies (usec) of perf_analyzer's last (stable) measurement."""
    found: dict[str, float] = {}
    for key, pattern in (
        ("latency_avg_us", r"Avg latency: (\d+) usec"),
        ("latency_p50_us", r"p50 latency: (\d+) usec"),
        ("latency_p99_us", r"p99 latency: (\d+) usec"),
    ):
        hits = re.findall(pattern, text)
        if hits:
            found[key] = float(hits[-1])
    return found


def git_state() -> dict[str, object]:
    def git(*a: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *a], capture_output=True, text=True, check=False)
        return out.stdout.strip()

    with contextlib.suppress(OSError):
        return {
            "commit": git("log", "--oneline", "-1"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    return {}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma list of {','.join(ALL_SERVERS)} (all but triton and naiad: gRPC only)",
    )
    add_server_arguments(
        p, "interpreter that runs `-m naiad serve` and the gRPC answer check (needs tritonclient[grpc], numpy)"
    )
    p.add_argument("--protocols", default=",".join(ALL_PROTOCOLS), help="comma list of grpc,http")
    p.add_argument("--concurrency", default="1,16", help="perf_analyzer concurrencies, comma list")
    add_perf_analyzer_arguments(
        p,
        3000,
        180,
        "extra perf_analyzer argument (repeat), e.g. --pa-arg=--streaming (gRPC only; the bare servicer has "
        "no stream, so leave it out of --servers)",
    )
    p.add_argument("--check-targets", action="store_true", help="exit 1 if naiad misses a target")
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "out"), help="directory for the JSON results")
    args = p.parse_args(argv)
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    bad = [s for s in args.server_list if s not in ALL_SERVERS]
    if bad or not args.server_list:
        p.error(f"--servers: unknown {bad}; choose from {','.join(ALL_SERVERS)}")
    args.protocol_list = [s.strip() for s in args.protocols.split(",") if s.strip()]
    bad = [s for s in args.protocol_list if s not in ALL_PROTOCOLS]
    if bad or not args.protocol_list:
        p.error(f"--protocols: unknown {bad}; choose from {','.join(ALL_PROTOCOLS)}")
    try:
        args.conc_list = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency: a comma list of integers")
    if not args.conc_list or min(args.conc_list) < 1:
        p.error("--concurrency: a comma list of integers >= 1")
    if args.rounds < 1 or args.measurement_ms < 1 or args.pa_attempts < 1:
        p.error("--rounds, --measurement-ms and --pa-attempts must be >= 1")
    if not any(p_ in PROTOCOLS_OF[s] for s in args.server_list for p_ in args.protocol_list):
        p.error("nothing to run: the bare servicers and the floor have no HTTP")
    return args


def bench(args: argparse.Namespace) -> int:
    peers = Peers(Path(args.peers_dir), Path(args.peers_src))
    peers.check(["grpc_bare" if s == "bare" else s for s in args.server_list], True, need_wrk=False)
    args.git_start = git_state()  # naiad runs from the working tree: say what it was
    if not MODEL_DIR.is_dir():
        raise BenchError(f"missing model {MODEL_DIR}")

    work = Path(tempfile.mkdtemp(prefix="naiad-bench-pa-"))
    started = dt.datetime.now(dt.timezone.utc)
    runs: list[dict[str, object]] = []
    versions: dict[str, object] = {}
    current: PAServer | None = None
    try:
        repos = add_sub_repos(work)
        logs = work / "logs"
        logs.mkdir()
        n = len(args.server_list)
        for rnd in range(args.rounds):
            order = args.server_list[rnd % n :] + args.server_list[: rnd % n]
            for name in order:
                protocols = [p for p in args.protocol_list if p in PROTOCOLS_OF[name]]
                if not protocols:
                    continue
                current = start_server(name, repos, peers, args, logs)
                print(f"[round {rnd + 1}/{args.rounds}] {name}: starting", flush=True)
                current.start()
                current.wait_ready(args.ready_timeout)
                versions[name] = check_grpc(current, args) or versions.get(name, {})
                if "http" in current.protocols:
                    versions[name] = check_answer(current) or versions[name]
                if measure(current, rnd, protocols, peers, args, runs):
                    # Still right after the load.
                    check_grpc(current, args)
                    if "http" in current.protocols:
                        check_answer(current)
                current.stop()
                current = None
    except BenchError as exc:
        if current is not None:
            current.stop()
        if runs:  # keep what was measured
            with contextlib.suppress(Exception):
                report(args, started, runs, versions, str(exc))
        raise
    finally:
        if current is not None:
            current.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report(args, started, runs, versions, None)


def measure(
    server: PAServer,
    rnd: int,
    protocols: list[str],
    peers: Peers,
    args: argparse.Namespace,
    runs: list[dict[str, object]],
) -> bool:
    """The timed perf_analyzer runs on one server; False if the server died (its remaining runs recorded as failed)."""
    for protocol in protocols:
        for conc in args.conc_list:
            key = {"round": rnd, "server": server.name, "protocol": protocol, "concurrency": conc}
            died = server.died()
            if died:
                runs.append({**key, "rc": None, "attempts": 0, "infer_per_s": None, "tail": died})
                print(f"  {protocol:<4} c={conc:<3} skipped: {died}", flush=True)
                continue
            pa_argv = perf_analyzer_argv(peers, server.port(protocol), protocol, conc, args.measurement_ms)
            pa_argv += args.pa_arg
            assert server.proc is not None
            result, text = perf_analyzer_with_cpu(server.proc.pid, pa_argv, args.pa_timeout, args.pa_attempts)
            if result["infer_per_s"] is None:
                runs.append({**key, **result})
                print(f"  {protocol:<4} c={conc:<3} FAILED (status {result['rc']}):", flush=True)
                print("    " + "\n    ".join(str(result.get("tail", "")).splitlines()[-8:]), flush=True)
                died = server.died()
                if died:
                    print(f"  WARNING {died}\n--- last lines of its log ---\n{server.log_tail()}", flush=True)
                continue
            lat = latencies(text)
            runs.append({**key, **result, **lat})
            avg = fmt(lat.get("latency_avg_us"))
            cpu = fmt(result.get("cpu_us_per_inference"))  # type: ignore[arg-type]
            print(
                f"  {protocol:<4} c={conc:<3} {fmt(result['infer_per_s']):>8} infer/s  (avg latency {avg} us, "
                f"server CPU {cpu} us/inference)",
                flush=True,
            )
    return server.died() is None


def median_table(
    args: argparse.Namespace, runs: list[dict[str, object]], key: str
) -> dict[str, dict[str, float | None]]:
    table: dict[str, dict[str, float | None]] = {}
    for name in args.server_list:
        table[name] = {}
        for protocol in args.protocol_list:
            for conc in args.conc_list:
                vals = [
                    float(r[key])
                    for r in runs
                    if r["server"] == name
                    and r["protocol"] == protocol
                    and r["concurrency"] == conc
                    and r.get(key) is not None
                ]
                table[name][f"{protocol} c={conc}"] = statistics.median(vals) if vals else None
    return table


def report(
    args: argparse.Namespace,
    started: dt.datetime,
    runs: list[dict[str, object]],
    versions: dict[str, object],
    error: str | None,
) -> int:
    cols = [f"{p} c={c}" for p in args.protocol_list for c in args.conc_list]
    median = median_table(args, runs, "infer_per_s")
    lat = median_table(args, runs, "latency_avg_us")
    cpu = median_table(args, runs, "cpu_us_per_inference")
    pairs = [
        ("naiad", "triton"),
        ("naiad-threads", "triton"),
        ("naiad", "bare"),
        ("floor", "bare"),
        ("floor", "bare-uvloop"),
        ("naiad", "floor"),
    ]
    pairs += [(p, ref) for p in PROTOTYPES for ref in ("triton", "bare")]
    ratios = {
        f"{a}/{b}": {c: ratio(median[a][c], median[b][c]) for c in cols}
        for a, b in pairs
        if a in median and b in median
    }
    git = {"start": args.git_start, "end": git_state()}

    print()
    print(
        f"perf_analyzer, model {MODEL}, --input-data random, -p {args.measurement_ms}, "
        f"median of {args.rounds} round(s); infer/s"
    )
    for when, state in git.items():
        dirty = " (working tree dirty)" if state.get("dirty") else ""
        print(f"naiad at {when}: {state.get('commit', '?')}{dirty}")
    print("server".ljust(18) + "".join(f"{c:>13}" for c in cols))
    for name in args.server_list:
        print(name.ljust(18) + "".join(f"{fmt(median[name][c]):>13}" for c in cols))
    for key, by_c in ratios.items():
        print(key.ljust(18) + "".join(f"{fmt(by_c[c], '.2f') + ('x' if by_c[c] else ''):>13}" for c in cols))
    print("avg latency us")
    for name in args.server_list:
        print(("  " + name).ljust(18) + "".join(f"{fmt(lat[name][c]):>13}" for c in cols))
    print("server CPU us per inference (every server process)")
    for name in args.server_list:
        print(("  " + name).ljust(18) + "".join(f"{fmt(cpu[name][c]):>13}" for c in cols))
    failed = [r for r in runs if r["infer_per_s"] is None]
    for r in failed:
        why = "server had died" if r["attempts"] == 0 else f"perf_analyzer status {r['rc']}"
        print(f"failed: round {r['round'] + 1} {r['server']} {r['protocol']} c={r['concurrency']} ({why})")

    verdicts = []
    for protocol, ref, conc, target in TARGETS:
        col = f"{protocol} c={conc}"
        if "naiad" not in median or ref not in median or col not in cols:
            continue
        got = ratios[f"naiad/{ref}"][col]
        ok = got is not None and got >= target
        verdicts.append(
            {"protocol": protocol, "ref": ref, "concurrency": conc, "target": target, "ratio": got, "met": ok}
        )
        verdict = "met" if ok else "MISSED"
        print(f"target {protocol} naiad/{ref} >= {target:.1f}x at c={conc}: {verdict} ({fmt(got, '.2f')}x)")
    for protocol, conc, most in CPU_TARGETS:
        col = f"{protocol} c={conc}"
        if "naiad" not in cpu or "triton" not in cpu or col not in cols:
            continue
        got = ratio(cpu["naiad"][col], cpu["triton"][col])
        ok = got is not None and got <= most
        verdicts.append(
            {"protocol": protocol, "cpu": True, "concurrency": conc, "target": most, "ratio": got, "met": ok}
        )
        verdict = "met" if ok else "MISSED"
        print(
            f"target {protocol} server CPU/inference naiad/triton <= {most:.1f}x at c={conc}: {verdict} "
            f"({fmt(got, '.2f')}x)"
        )

    doc: dict[str, object] = {
        "git": git,
        "settings": {
            k: getattr(args, k)
            for k in (
                "server_list",
                "rounds",
                "protocol_list",
                "conc_list",
                "measurement_ms",
                "pa_attempts",
                "naiad_arg",
            )
        },
        "versions": versions,
        "runs": runs,
        "median_infer_per_s": median,
        "median_latency_avg_us": lat,
        "median_cpu_us_per_inference": cpu,
        "ratios": ratios,
        "targets": verdicts,
        "error": error,
    }
    write_results(Path(args.out), "perf_analyzer", started, doc)
    return 1 if args.check_targets and not all(v["met"] for v in verdicts) else 0


def main(argv: list[str] | None = None) -> int:
    return run_guarded(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
