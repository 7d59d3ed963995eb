"""A sweep for machines with many cores: perf_analyzer over HTTP and gRPC at high concurrency against naiad (each
variant its flags name) and Triton, the client and the servers pinned to separate cores.

Each measurement prints one fixed line, for scripts to grep:

    SWEEP server=<name> protocol=<http|grpc> concurrency=<n> infer_per_s=<x> cpu_us_per_inference=<y> p50_us=<z>

then a table per protocol of the medians, and ratios to Triton. `--naiad-variant NAME=FLAGS` adds a naiad run with
those flags (repeat it). `--frontend-processes 1,2,4,8` (the default) adds a variant `feN` per count above 1
(`--frontend-process-count=N`), and `--frontend-threads` a `feN-threads` of each with the model as a thread
instance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from http_json import (
    BenchError,
    Peers,
    add_perf_analyzer_arguments,
    add_server_arguments,
    add_sub_repos,
    fmt,
    perf_analyzer_argv,
    perf_analyzer_with_cpu,
    ratio,
    run_guarded,
    write_results,
)
from perf_analyzer import PAServer, check_grpc, git_state, latencies, start_server

PROTOCOLS = ("http", "grpc")


def cpu_split(count: int, client: str | None, server: str | None) -> tuple[str, str]:
    """taskset CPU lists: a quarter of the cores (one at least) for the client, the rest for the servers."""
    if client and server:
        return client, server
    if count < 2:
        raise BenchError("the sweep pins the client and the servers to separate cores: it needs 2 cores at least")
    k = max(1, count // 4)
    return client or f"0-{k - 1}", server or f"{k}-{count - 1}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(p, "interpreter that runs `-m naiad serve` and the gRPC answer check")
    p.add_argument("--concurrency", default="16,64,256", help="perf_analyzer concurrencies, comma list")
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma list of http,grpc")
    p.add_argument(
        "--naiad-variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help='a naiad run with these flags, e.g. "fe4=--some-flag=4" (repeat); "default" (no flags) and "threads" '
        "(the model as a thread instance) always run",
    )
    p.add_argument(
        "--frontend-processes",
        default="1,2,4,8",
        help="front-end process counts, comma list; 1 is the default variant, each other N a variant feN",
    )
    p.add_argument(
        "--frontend-threads", action="store_true", help="also run each feN with the model as a thread instance"
    )
    p.add_argument("--no-triton", action="store_true", help="leave Triton out (ratios need it)")
    p.add_argument("--client-cpus", help="taskset list for perf_analyzer (default: the first quarter of the cores)")
    p.add_argument("--server-cpus", help="taskset list for the servers (default: the other cores)")
    add_perf_analyzer_arguments(
        p,
        5000,
        240,
        "extra perf_analyzer argument (repeat), e.g. --pa-arg=--stability-percentage=25 where a saturated "
        "server never gives perf_analyzer three windows within 10%%",
    )
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="directory of the JSON results")
    args = p.parse_args(argv)
    args.conc_list = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.protocol_list = [x for x in args.protocols.split(",") if x]
    if not args.conc_list or min(args.conc_list) < 1 or any(x not in PROTOCOLS for x in args.protocol_list):
        p.error("--concurrency: integers >= 1; --protocols: http and/or grpc")
    variants = {"default": [], "threads": []}
    for count in (int(c) for c in args.frontend_processes.split(",") if c.strip()):
        if count > 1:
            variants[f"fe{count}"] = [f"--frontend-process-count={count}"]
            if args.frontend_threads:
                variants[f"fe{count}-threads"] = [f"--frontend-process-count={count}"]
    for item in args.naiad_variant:
        name, _, flags = item.partition("=")
        if not name or name in variants or name == "triton":
            p.error(f"--naiad-variant {item!r}: NAME=FLAGS with a new name")
        variants[name] = flags.split()
    args.variants = variants
    args.servers = ([] if args.no_triton else ["triton"]) + [f"naiad-{name}" for name in variants]
    return args


def start(name: str, repos: dict[str, Path], peers: Peers, args: argparse.Namespace, logs: Path) -> PAServer:
    if name == "triton":
        server = start_server("triton", repos, peers, args, logs)
    else:
        variant = name.removeprefix("naiad-")
        run_args = argparse.Namespace(**{**vars(args), "naiad_arg": args.naiad_arg + args.variants[variant]})
        threads = variant == "threads" or variant.endswith("-threads")
        server = start_server("naiad-threads" if threads else "naiad", repos, peers, run_args, logs)
        server.name = name
    server.argv = ["taskset", "-c", args.server_cpus, *server.argv]
    return server


def sweep(args: argparse.Namespace) -> int:
    peers = Peers(Path(args.peers_dir), Path(args.peers_src))
    peers.check(args.servers, True, need_wrk=False)
    if shutil.which("taskset") is None:
        raise BenchError("taskset (util-linux) is needed to pin the client and the servers")
    args.client_cpus, args.server_cpus = cpu_split(os.cpu_count() or 1, args.client_cpus, args.server_cpus)
    print(f"client on CPUs {args.client_cpus}, servers on CPUs {args.server_cpus}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="naiad-sweep-"))
    started = dt.datetime.now(dt.timezone.utc)
    runs: list[dict[str, object]] = []
    current: PAServer | None = None
    try:
        repos, logs = add_sub_repos(work), work / "logs"
        logs.mkdir()
        for rnd in range(args.rounds):
            order = args.servers[rnd % len(args.servers) :] + args.servers[: rnd % len(args.servers)]
            for name in order:
                current = start(name, repos, peers, args, logs)
                print(f"[round {rnd + 1}/{args.rounds}] {name}: starting", flush=True)
                current.start()
                current.wait_ready(args.ready_timeout)
                check_grpc(current, args)
                for protocol in args.protocol_list:
                    for conc in args.conc_list:
                        runs.append(measure(current, protocol, conc, rnd, peers, args))
                current.stop()
                current = None
    finally:
        if current is not None:
            current.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report(args, started, runs)


def measure(
    server: PAServer, protocol: str, conc: int, rnd: int, peers: Peers, args: argparse.Namespace
) -> dict[str, object]:
    assert server.proc is not None
    argv = ["taskset", "-c", args.client_cpus]
    argv += perf_analyzer_argv(peers, server.port(protocol), protocol, conc, args.measurement_ms) + args.pa_arg
    result, text = perf_analyzer_with_cpu(server.proc.pid, argv, args.pa_timeout, args.pa_attempts)
    rate, cpu = result["infer_per_s"], result["cpu_us_per_inference"]
    p50 = latencies(text).get("latency_p50_us")
    run = {"round": rnd, "server": server.name, "protocol": protocol, "concurrency": conc, **result, "p50_us": p50}
    print(
        f"SWEEP server={server.name} protocol={protocol} concurrency={conc} infer_per_s={fmt(rate, '.0f')} "
        f"cpu_us_per_inference={fmt(cpu, '.0f')} p50_us={fmt(p50, '.0f')}",
        flush=True,
    )
    return run


def report(args: argparse.Namespace, started: dt.datetime, runs: list[dict[str, object]]) -> int:
    def median(server: str, protocol: str, conc: int, key: str) -> float | None:
        values = [
            float(r[key])  # type: ignore[arg-type]
            for r in runs
            if r["server"] == server and r["protocol"] == protocol and r["concurrency"] == conc and r.get(key)
        ]
        return statistics.median(values) if values else None

    table: dict[str, object] = {}
    for protocol in args.protocol_list:
        print(f"\n{protocol}: infer/s (server CPU us per inference), median of {args.rounds} round(s)")
        print("server".ljust(18) + "".join(f"{'c=' + str(c):>22}" for c in args.conc_list))
        for server in args.servers:
            cells = []
            for conc in args.conc_list:
                rate, cpu = (
                    median(server, protocol, conc, "infer_per_s"),
                    median(server, protocol, conc, "cpu_us_per_inference"),
                )
                table[f"{server} {protocol} c={conc}"] = {"infer_per_s": rate, "cpu_us_per_inference": cpu}
                cells.append(f"{fmt(rate)} ({fmt(cpu)})")
            print(server.ljust(18) + "".join(f"{cell:>22}" for cell in cells))
        if "triton" in args.servers:
            for server in args.servers[1:]:
                cells = []
                for conc in args.conc_list:
                    speed = ratio(
                        median(server, protocol, conc, "infer_per_s"), median("triton", protocol, conc, "infer_per_s")
                    )
                    cost = ratio(
                        median(server, protocol, conc, "cpu_us_per_inference"),
                        median("triton", protocol, conc, "cpu_us_per_inference"),
                    )
                    cells.append(f"{fmt(speed, '.2f')}x ({fmt(cost, '.2f')}x)")
                print(f"{server}/triton".ljust(18) + "".join(f"{cell:>22}" for cell in cells))
    doc = {
        "git": git_state(),
        "cpus": {"client": args.client_cpus, "servers": args.server_cpus},
        "variants": args.variants,
        "runs": runs,
        "medians": table,
    }
    write_results(Path(args.out), "sweep", started, doc)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_guarded(sweep, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
