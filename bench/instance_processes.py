"""The cost and the gain of Python instances in processes of their own: add_sub over HTTP JSON with process
instances (the default), with thread instances (NAIAD_INSTANCE_PROCESS false) and on NVIDIA Triton, and a
CPU-bound pure-Python model with `count: 1` against `count: 2`. Reports requests/s and server CPU µs per inference
(utime + stime of every process of the server's session, from /proc, over each timed run)."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from http_json import (
    BODY,
    MODEL,
    WRK_LUA,
    Peers,
    Server,
    add_server_arguments,
    add_sub_repos,
    check_answer,
    fmt,
    make_server,
    ratio,
    run_guarded,
    run_wrk,
    server_cpu_seconds,
    write_results,
)

# Targets from issue 12.
ADD_SUB_TARGETS = {1: 2.0, 16: 1.5}  # naiad (processes) / Triton, requests/s
SPIN_TARGET = 1.8  # count: 2 / count: 1 on two cores

SPIN_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            total = 0
            for i in range(n):  # pure Python: holds the GIL throughout
                total += i * i % 7
            out = pb_utils.Tensor("TOTAL", np.array([total], dtype=np.int64))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""
SPIN_CONFIG = """backend: "python"
max_batch_size: 0
input [ {{ name: "N" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "TOTAL" data_type: TYPE_INT64 dims: [ 1 ] }} ]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
"""
SPIN_BODY = '{"inputs":[{"name":"N","shape":[1],"datatype":"INT64","data":[%d]}]}'


def timed(server: Server, url: str, lua: Path, connections: int, args: argparse.Namespace) -> dict[str, float]:
    assert server.proc is not None
    before = server_cpu_seconds(server.proc.pid)
    result = run_wrk(url, lua, connections, args.duration, 1)
    used = server_cpu_seconds(server.proc.pid) - before
    result["cpu_us_per_inference"] = used * 1e6 / max(result.get("requests", 0.0), 1.0)
    return result


def spin_repos(work: Path) -> dict[int, Path]:
    repos = {}
    for count in (1, 2):
        folder = work / f"spin{count}" / "spin"
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.py").write_text(SPIN_MODEL)
        (folder / "config.pbtxt").write_text(SPIN_CONFIG.format(count=count))
        repos[count] = folder.parent
    return repos


def bench(args: argparse.Namespace) -> int:
    peers = Peers(Path(args.peers_dir), Path(args.peers_src))
    peers.check(["triton", "naiad"], False)
    work = Path(tempfile.mkdtemp(prefix="naiad-bench-processes-"))
    started = dt.datetime.now(dt.timezone.utc)
    logs = work / "logs"
    logs.mkdir()
    runs: list[dict[str, object]] = []
    current: Server | None = None
    try:
        add_sub = add_sub_repos(work)
        spins = spin_repos(work)
        lua = work / "add_sub.lua"
        lua.write_text(WRK_LUA.format(body=BODY))
        spin_lua = work / "spin.lua"
        spin_lua.write_text(WRK_LUA.format(body=SPIN_BODY % args.spin_iterations))
        # (label, server, repo, model, lua, connection counts)
        cases = [
            ("naiad processes", "naiad", add_sub["processes"], MODEL, lua, (1, 16)),
            ("naiad threads", "naiad", add_sub["threads"], MODEL, lua, (1, 16)),
            ("triton", "triton", add_sub["processes"], MODEL, lua, (1, 16)),
            ("naiad spin count 1", "naiad", spins[1], "spin", spin_lua, (2,)),
            ("naiad spin count 2", "naiad", spins[2], "spin", spin_lua, (2,)),
            ("triton spin count 1", "triton", spins[1], "spin", spin_lua, (2,)),
            ("triton spin count 2", "triton", spins[2], "spin", spin_lua, (2,)),
        ]
        for rnd in range(args.rounds):
            shift = rnd % len(cases)
            for label, name, repo, model, script, connections in cases[shift:] + cases[:shift]:
                current, _ = make_server(name, repo, peers, args, logs)
                print(f"[round {rnd + 1}/{args.rounds}] {label}: starting", flush=True)
                current.start()
                current.wait_ready(args.ready_timeout)
                if model == MODEL:
                    check_answer(current)
                url = f"{current.base}/v2/models/{model}/infer"
                run_wrk(url, script, max(connections), args.warmup, 1)
                for conns in connections:
                    r = timed(current, url, script, conns, args)
                    if r["non_2xx"] or r["socket_errors"]:
                        print(f"  WARNING: {r['non_2xx']:.0f} non-2xx, {r['socket_errors']:.0f} socket errors")
                    runs.append({"round": rnd, "case": label, "connections": conns, **r})
                    print(
                        f"  c={conns:<3} {r['requests_per_s']:>9,.0f} req/s  "
                        f"{r['cpu_us_per_inference']:>7,.0f} server CPU us/inference  "
                        f"(avg latency {fmt(r.get('latency_avg_ms'), '.3f')} ms)",
                        flush=True,
                    )
                current.stop()
                current = None
    finally:
        if current is not None:
            current.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report(args, started, runs)


def report(args: argparse.Namespace, started: dt.datetime, runs: list[dict[str, object]]) -> int:
    def median(case: str, conns: int, key: str) -> float | None:
        values = [float(str(r[key])) for r in runs if r["case"] == case and r["connections"] == conns and key in r]
        return statistics.median(values) if values else None

    missed = False
    print(f"\nadd_sub over HTTP JSON, wrk -t1 -d{args.duration}s, medians of {args.rounds} round(s)")
    print(f"{'':24}{'req/s c=1':>12}{'req/s c=16':>12}{'CPU us/inf c=1':>16}{'CPU us/inf c=16':>16}")
    for case in ("naiad processes", "naiad threads", "triton"):
        rps = [fmt(median(case, c, "requests_per_s")) for c in (1, 16)]
        cpu = [fmt(median(case, c, "cpu_us_per_inference")) for c in (1, 16)]
        print(f"{case:24}{rps[0]:>12}{rps[1]:>12}{cpu[0]:>16}{cpu[1]:>16}")
    for c, target in ADD_SUB_TARGETS.items():
        got = ratio(median("naiad processes", c, "requests_per_s"), median("triton", c, "requests_per_s"))
        threads = ratio(median("naiad threads", c, "requests_per_s"), median("triton", c, "requests_per_s"))
        verdict = "met" if got is not None and got >= target else "MISSED"
        missed = missed or verdict != "met"
        print(
            f"naiad processes / triton at c={c}: {fmt(got, '.2f')}x (target {target}x: {verdict}); "
            f"threads / triton {fmt(threads, '.2f')}x"
        )
    latency = [median(case, 1, "latency_avg_ms") for case in ("naiad processes", "naiad threads")]
    if latency[0] is not None and latency[1] is not None:
        print(f"process boundary at c=1 (one batch of one): {(latency[0] - latency[1]) * 1000:+.0f} us per batch")
    for c in (1, 16):
        cpu = [median(case, c, "cpu_us_per_inference") for case in ("naiad processes", "naiad threads")]
        if cpu[0] is not None and cpu[1] is not None:
            print(f"server CPU per inference at c={c}: processes {cpu[0]:.0f} us, threads {cpu[1]:.0f} us")

    print(f"\nCPU-bound pure-Python model ({args.spin_iterations} iterations a request), wrk -c2")
    for server in ("naiad", "triton"):
        one = median(f"{server} spin count 1", 2, "requests_per_s")
        two = median(f"{server} spin count 2", 2, "requests_per_s")
        gain = ratio(two, one)
        line = f"{server}: count 1 {fmt(one, ',.1f')} req/s, count 2 {fmt(two, ',.1f')} req/s: {fmt(gain, '.2f')}x"
        if server == "naiad":
            verdict = "met" if gain is not None and gain >= SPIN_TARGET else "MISSED"
            missed = missed or verdict != "met"
            line += f" (target {SPIN_TARGET}x: {verdict})"
        print(line)

    doc = {
        "settings": {k: getattr(args, k) for k in ("rounds", "duration", "warmup", "spin_iterations")},
        "runs": runs,
    }
    write_results(Path(args.out), "instance_processes", started, doc)
    return 1 if args.check_targets and missed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    add_server_arguments(p, "interpreter that runs `-m naiad serve`")
    p.add_argument("--duration", type=int, default=8, help="seconds of each timed wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of untimed wrk load after each start")
    p.add_argument("--spin-iterations", type=int, default=200_000, help="Python loop iterations a spin request")
    p.add_argument("--check-targets", action="store_true", help="exit 1 if naiad misses a target")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="directory for the JSON")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_guarded(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
