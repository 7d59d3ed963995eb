"""Load test for a naiad (or Triton) deployment: Locust users posting KServe V2 inference requests.

Each user reads the model's metadata once and sends requests of its inputs' shapes and datatypes, with random
values (variable dimensions become 1, a batch dimension becomes --batch). Or give a request body of your own.

    pip install locust
    locust -f deploy/loadtest/locustfile.py --host http://localhost:8000 --model add_sub
    locust -f deploy/loadtest/locustfile.py --host http://naiad.example --model resnet50 --batch 4 \\
        --headless --users 32 --spawn-rate 8 --run-time 2m --csv results
    locust -f deploy/loadtest/locustfile.py --host http://localhost:8000 --model add_sub --body request.json

Failures are counted by Locust: any status other than 200, and any 200 without outputs.
"""

from __future__ import annotations

import json
import random
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser

_RANDOM = {
    "BOOL": lambda: random.random() < 0.5,
    "BYTES": lambda: "naiad",
    "FP16": random.random,
    "FP32": random.random,
    "FP64": random.random,
    "BF16": random.random,
}


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    parser.add_argument("--model", default="add_sub", help="the model to send requests to")
    parser.add_argument("--model-version", default="", help="a version of it (default: the server's choice)")
    parser.add_argument("--batch", type=int, default=1, help="rows per request for a model with a batch dimension")
    parser.add_argument("--body", default="", help="a JSON request body to send instead of random inputs")
    parser.add_argument("--think-time", type=float, default=0.0, help="seconds each user waits between requests")


def request_body(metadata: dict[str, Any], batch: int) -> dict[str, Any]:
    """A V2 request with random values for every input the metadata lists."""
    inputs = []
    for spec in metadata.get("inputs", []):
        shape = [int(d) if int(d) >= 0 else 1 for d in spec["shape"]]
        if spec["shape"] and int(spec["shape"][0]) == -1:
            shape[0] = batch
        count = 1
        for dim in shape:
            count *= dim
        datatype = spec["datatype"]
        make = _RANDOM.get(datatype, lambda: random.randint(0, 100))
        inputs.append(
            {"name": spec["name"], "shape": shape, "datatype": datatype, "data": [make() for _ in range(count)]}
        )
    return {"inputs": inputs}


class InferenceUser(FastHttpUser):
    """One client sending inference requests back to back (or with --think-time between them)."""

    def wait_time(self) -> float:
        think = float(self.environment.parsed_options.think_time)
        return between(think, think)(self) if think else 0.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        version = f"/versions/{options.model_version}" if options.model_version else ""
        self.path = f"/v2/models/{options.model}{version}/infer"
        if options.body:
            with open(options.body, "rb") as file:
                self.body = file.read()
            return
        with self.client.get(f"/v2/models/{options.model}{version}", name="metadata", catch_response=True) as reply:
            if reply.status_code != 200:
                reply.failure(f"model metadata: HTTP {reply.status_code} {reply.text[:200]}")
                self.stop()
                return
            self.body = json.dumps(request_body(reply.json(), options.batch)).encode()

    @task
    def infer(self) -> None:
        headers = {"Content-Type": "application/json"}
        with self.client.post(self.path, data=self.body, headers=headers, name="infer", catch_response=True) as reply:
            if reply.status_code != 200:
                reply.failure(f"HTTP {reply.status_code}: {reply.text[:200]}")
            elif not reply.json().get("outputs"):
                reply.failure("an answer without outputs")
