"""Per model-version statistics in Triton's shape: counts and nanoseconds for each phase and batch size."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Called with the nanoseconds of each event and how many events took that long.
Observer = Callable[[int, int], None]


class Duration:
    """A `{count, ns}` pair."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Record `count` events that took `ns` nanoseconds in all."""
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        """Triton's `$duration_stat`."""
        return {"count": self.count, "ns": self.ns}


class ObservedDuration(Duration):
    """A `Duration` that also hands each event to an observer (latency summaries and histograms)."""

    __slots__ = ("_observer",)

    def __init__(self, recorded: Duration, observer: Observer) -> None:
        super().__init__()
        self.count = recorded.count
        self.ns = recorded.ns
        self._observer = observer

    def add(self, ns: int, count: int = 1) -> None:
        """Record `count` events that took `ns` nanoseconds in all, each taking an equal share."""
        self.count += count
        self.ns += ns
        self._observer(ns // count, count)


class BatchStats:
    """Executions of one batch size."""

    __slots__ = ("compute_infer", "compute_input", "compute_output")

    def __init__(self) -> None:
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()


class ModelStats:
    """Statistics of one model version, updated on the event loop only."""

    __slots__ = (
        "batches",
        "compute_infer",
        "compute_input",
        "compute_output",
        "execution_count",
        "fail",
        "inference_count",
        "last_inference_ms",
        "queue",
        "rejected",
        "restarts",
        "success",
    )

    def __init__(self) -> None:
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.batches: dict[int, BatchStats] = {}
        self.rejected = 0  # requests the queue policy timed out (REJECT): counted in `fail` too
        self.restarts = 0  # instance processes that died and were started again (not in Triton's statistics)

    def record_execution(self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One execution of `requests` requests holding `batch_size` inferences in all."""
        self.inference_count += batch_size
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        batch = self.batches.get(batch_size)
        if batch is None:
            batch = self.batches[batch_size] = BatchStats()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def failures(self) -> dict[str, int]:
        """Failed requests by Triton's reason. As in Triton, a request refused before it was queued (a full
        queue, an invalid input) is no failure of the model; one the queue policy timed out is REJECTED, and
        every other failure of a request the model saw is the backend's: naiad cannot cancel a request."""
        return {"REJECTED": self.rejected, "CANCELED": 0, "BACKEND": self.fail.count - self.rejected, "OTHER": 0}

    def observe(
        self, request: Observer | None, queue: Observer | None, compute: tuple[Observer, Observer, Observer] | None
    ) -> None:
        """Also hand each successful request's duration, each queue wait and each request's compute input,
        infer and output time to observers. Only the opt-in latency summaries and histograms call this, so
        recording costs nothing more while they are off."""
        if request is not None:
            self.success = ObservedDuration(self.success, request)
        if queue is not None:
            self.queue = ObservedDuration(self.queue, queue)
        if compute is not None:
            self.compute_input = ObservedDuration(self.compute_input, compute[0])
            self.compute_infer = ObservedDuration(self.compute_infer, compute[1])
            self.compute_output = ObservedDuration(self.compute_output, compute[2])

    def to_json(self, name: str, version: int) -> dict[str, Any]:
        """Triton's JSON for one entry of `model_stats`."""
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": self.compute_input.to_json(),
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": self.compute_output.to_json(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": batch.compute_input.to_json(),
                    "compute_infer": batch.compute_infer.to_json(),
                    "compute_output": batch.compute_output.to_json(),
                }
                for size, batch in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
