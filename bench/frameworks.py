"""TorchScript and ONNX Runtime models served by naiad against the framework called directly, in one run.

perf_analyzer drives each model at one concurrency (16 by default) over gRPC; the server's statistics then give
the batch size the dynamic batcher formed. The baseline runs the same model file in this process, on batches of
that size, for as long, and counts rows per second. The ratio served/direct is the issue's figure (target 0.8).

    python bench/frameworks.py                 # both models, c=16, 3 rounds
    python bench/frameworks.py --rounds 1 --models mlp
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from http_json import (
    REPO_ROOT,
    BenchError,
    Peers,
    Server,
    add_server_arguments,
    free_port,
    http,
    perf_analyzer_attempts,
    run_guarded,
)

# Two sizes of each: the small ones cost the framework tens of microseconds a row, so the server's own cost per
# request decides their rate; the large ones cost about a millisecond a row, as image models and wide MLPs do.
MODELS = ("mlp", "cnn", "mlp_large", "cnn_large")
INPUT_SHAPES = {"mlp": (512,), "cnn": (3, 32, 32), "mlp_large": (1024,), "cnn_large": (3, 128, 128)}
SAMPLES = 8  # distinct rows perf_analyzer cycles through
MLP_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 32
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ WIDTH ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
"""
CNN_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ { name: "images" data_type: TYPE_FP32 dims: [ 3, SIDE, SIDE ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
"""


def build_repository(root: Path) -> dict[str, Path]:
    """TorchScript MLPs (512-1024-1024-10 and 1024-4096-4096-10) and ONNX CNNs (two convolutions on 32x32 images,
    three strided ones on 128x128), random weights."""
    import torch

    nn = torch.nn
    torch.manual_seed(0)
    files: dict[str, Path] = {}
    for name, width, hidden in (("mlp", 512, 1024), ("mlp_large", 1024, 4096)):
        mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        ).eval()
        files[name] = root / name / "1" / "model.pt"
        files[name].parent.mkdir(parents=True)
        torch.jit.save(torch.jit.trace(mlp, (torch.zeros(1, width),)), str(files[name]))
        (root / name / "config.pbtxt").write_text(MLP_CONFIG.replace("WIDTH", str(width)))
    small = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    large = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 128, 3, 2, 1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip
    for name, cnn, side in (("cnn", small, 32), ("cnn_large", large, 128)):
        files[name] = root / name / "1" / "model.onnx"
        files[name].parent.mkdir(parents=True)
        torch.onnx.export(
            cnn.eval(), (torch.zeros(1, 3, side, side),), str(files[name]), input_names=["images"],
            output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
        (root / name / "config.pbtxt").write_text(CNN_CONFIG.replace("SIDE", str(side)))
    return files


def sample_rows(model: str) -> np.ndarray:
    """The rows both sides compute on, drawn from a normal distribution. perf_analyzer's own `random` data is random
    bits: its denormals and NaNs make the same forward pass about 1.5x slower than on real inputs."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(SAMPLES, *INPUT_SHAPES[model])).astype(np.float32)


def write_input_data(model: str, path: Path) -> None:
    """`sample_rows` in perf_analyzer's `--input-data` JSON shape, one row a request."""
    name = "input__0" if model.startswith("mlp") else "images"
    entries = [{name: [float(f"{value:.4g}") for value in row.ravel()]} for row in sample_rows(model)]
    path.write_text(json.dumps({"data": entries}))


def direct_rate(model: str, path: Path, batch: int, seconds: float, threads: int = 0) -> float:
    """Rows per second of the framework called in this process on batches of `batch` (on `threads` intra-op threads
    when given, else the framework's default)."""
    rows = sample_rows(model)
    batch_rows = rows[np.arange(batch) % len(rows)]
    if model.startswith("mlp"):
        import torch

        default_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        module = torch.jit.load(str(path))
        data = torch.from_numpy(batch_rows)

        def call() -> Any:
            with torch.inference_mode():
                return module(data)
    else:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"images": batch_rows}

        def call() -> Any:
            return session.run(["logits"], feed)

    for _ in range(20):
        call()
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        calls += 1
    rate = calls * batch / (time.perf_counter() - start)
    if model.startswith("mlp") and threads:
        torch.set_num_threads(default_threads)
    return rate


def stats_of(server: Server, model: str) -> tuple[int, int]:
    status, body = http("GET", f"{server.base}/v2/models/{model}/stats")
    if status != 200:
        raise BenchError(f"statistics of {model}: HTTP {status}")
    entry = json.loads(body)["model_stats"][0]
    return int(entry["inference_count"]), int(entry["execution_count"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {','.join(MODELS)}")
    p.add_argument("--concurrency", type=int, default=16, help="perf_analyzer concurrency")
    p.add_argument("--measurement-ms", type=int, default=4000, help="perf_analyzer -p")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="perf_analyzer -i")
    p.add_argument(
        "--pin",
        action="store_true",
        help="perf_analyzer on CPU 0, the server on CPU 1 with one intra-op thread, and the direct baseline on CPU 1 "
        "with one thread too: the serving cost on equal CPU, without the client's share",
    )
    add_server_arguments(p, "interpreter that runs `-m naiad serve`")
    args = p.parse_args(argv)
    args.model_list = [m for m in args.models.split(",") if m]
    if not args.model_list or any(m not in MODELS for m in args.model_list):
        p.error(f"--models: choose from {','.join(MODELS)}")
    return args


def bench(args: argparse.Namespace) -> int:
    peers = Peers(Path(args.peers_dir), Path(args.peers_src))
    peers.check([], need_perf_analyzer=True, need_wrk=False)
    work = Path(tempfile.mkdtemp(prefix="naiad-bench-fw-"))
    files = build_repository(work / "models")
    for name in args.model_list:
        write_input_data(name, work / f"{name}.json")
    if args.pin:
        for name in args.model_list:
            key = "INTRA_OP_THREAD_COUNT" if name.startswith("mlp") else "intra_op_thread_count"
            config = work / "models" / name / "config.pbtxt"
            config.write_text(config.read_text() + f'parameters {{ key: "{key}" value: {{ string_value: "1" }} }}\n')
    server_cpu = ["taskset", "-c", "1"] if args.pin else []
    client_cpu = ["taskset", "-c", "0"] if args.pin else []
    http_port, grpc_port = free_port(), free_port()
    server = Server(
        "naiad",
        [
            *server_cpu, args.naiad_python, *("-m", "naiad", "serve", "--model-repository", str(work / "models")),
            *("--http-address", "127.0.0.1", "--http-port", str(http_port), "--grpc-address", "127.0.0.1"),
            *("--grpc-port", str(grpc_port), "--allow-metrics=false", "--log-info=false"),
            *args.naiad_arg,
        ],
        http_port,
        work / "naiad.log",
        cwd=REPO_ROOT,
    )  # fmt: skip
    rows: dict[str, list[tuple[float, float, float]]] = {m: [] for m in args.model_list}
    server.start()
    try:
        server.wait_ready(args.ready_timeout)
        for round_index in range(args.rounds):
            for model in args.model_list:
                before = stats_of(server, model)
                port = grpc_port if args.protocol == "grpc" else http_port
                argv = [
                    *client_cpu, str(peers.perf_analyzer),
                    *("-m", model, "-u", f"127.0.0.1:{port}", "-i", args.protocol),
                    *("--concurrency-range", str(args.concurrency), "-p", str(args.measurement_ms)),
                    *("--input-data", str(work / f"{model}.json")),
                ]  # fmt: skip
                result, _ = perf_analyzer_attempts(argv, 300, 3)
                after = stats_of(server, model)
                served = result.get("infer_per_s")
                if not isinstance(served, float):
                    raise BenchError(f"perf_analyzer failed on {model}: {result}")
                batch = (after[0] - before[0]) / max(1, after[1] - before[1])
                if args.pin:
                    os.sched_setaffinity(0, {1})
                direct = direct_rate(
                    model, files[model], max(1, round(batch)), args.measurement_ms / 1000, 1 if args.pin else 0
                )
                if args.pin:
                    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
                rows[model].append((served, batch, direct))
                print(
                    f"[round {round_index + 1}/{args.rounds}] {model}: served {served:,.0f} infer/s, average batch "
                    f"{batch:.1f}, direct {direct:,.0f} rows/s, ratio {served / direct:.2f}",
                    flush=True,
                )
    finally:
        server.stop()
    pinned = ", pinned (client CPU 0, server and direct CPU 1, one thread)" if args.pin else ""
    print(f"\nc={args.concurrency} over {args.protocol}{pinned}, median of {args.rounds} round(s)")
    print(f"{'model':8}{'served/s':>12}{'batch':>8}{'direct/s':>12}{'ratio':>8}   target 0.80")
    for model, values in rows.items():
        served = statistics.median(v[0] for v in values)
        batch = statistics.median(v[1] for v in values)
        direct = statistics.median(v[2] for v in values)
        verdict = "met" if served / direct >= 0.8 else "MISSED"
        print(f"{model:8}{served:>12,.0f}{batch:>8.1f}{direct:>12,.0f}{served / direct:>8.2f}   {verdict}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_guarded(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
