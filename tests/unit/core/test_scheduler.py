"""The dynamic batcher on real instance threads, with a small echo backend standing in for a model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from naiad.backends.base import InstanceContext, ModelInstance
from naiad.config import model_config, pbtxt
from naiad.core.instances import InstanceRunner
from naiad.core.scheduler import Scheduler
from naiad.core.stats import ModelStats
from naiad.domain.errors import ServerError
from naiad.domain.tensors import InferenceRequest, InferenceResponse, InferenceResult, Tensor

DELAY_US = 50_000


class EchoInstance:
    """Answers each request with its own input; records the size of every execution."""

    def __init__(self, gate: threading.Event, executions: list[int]) -> None:
        self._gate = gate
        self._executions = executions

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult | ServerError]:
        self._gate.wait(10)
        self._executions.append(len(requests))
        return [InferenceResult(request.inputs) for request in requests]

    def unload(self) -> None:
        pass


class EchoBackend:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.executions: list[int] = []

    def auto_complete(self, raw: dict[str, Any], model_dir: Path, version_dir: Path) -> dict[str, Any]:
        return raw

    def load(self, context: InstanceContext) -> ModelInstance:
        return EchoInstance(self.gate, self.executions)


class NoCaller:
    def infer(self, model_name: str, model_version: str, request: InferenceRequest) -> InferenceResponse:
        raise AssertionError("no BLS here")

    def infer_async(self, model_name: str, model_version: str, request: InferenceRequest) -> Any:
        raise AssertionError("no BLS here")


def request(value: int) -> InferenceRequest:
    data = np.array([[value]], dtype=np.int32)
    return InferenceRequest((Tensor("INPUT0", "INT32", (1, 1), data),))


def submit(scheduler: Scheduler, value: int, key: tuple[str, ...]) -> asyncio.Future[InferenceResult]:
    """The scheduler's result for one request, as a future."""
    future: asyncio.Future[InferenceResult] = asyncio.get_running_loop().create_future()

    def done(result: InferenceResult | ServerError) -> None:
        if isinstance(result, ServerError):
            future.set_exception(result)
        else:
            future.set_result(result)

    scheduler.submit(request(value), 1, key, done)
    return future


async def make(batching: str, backend: EchoBackend) -> tuple[Scheduler, ModelStats, InstanceRunner]:
    raw = {
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [1]}],
        "output": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [1]}],
    }
    parsed = pbtxt.to_json(pbtxt.parse_text(batching, "test"))
    raw.update({key: value for key, value in parsed.items() if key == "dynamic_batching"})
    config = model_config.build(raw, "echo")
    loop = asyncio.get_running_loop()
    context = InstanceContext(config, 1, Path("."), Path("."), "echo_0_0", "CPU", 0, NoCaller())
    runner = InstanceRunner(context, loop)
    await runner.load(backend)
    stats = ModelStats()
    return Scheduler([runner], stats, 8, config.dynamic_batching, loop), stats, runner


def test_requests_queued_while_busy_form_one_batch() -> None:
    async def scenario() -> None:
        backend = EchoBackend()
        scheduler, stats, runner = await make("dynamic_batching { }", backend)
        backend.gate.clear()
        first = submit(scheduler, 0, ("k",))
        await asyncio.sleep(0.05)  # the first request is executing and held at the gate
        rest = [submit(scheduler, i, ("k",)) for i in range(1, 6)]
        backend.gate.set()
        results = await asyncio.gather(first, *rest)
        assert [int(r.outputs[0].data[0, 0]) for r in results] == list(range(6))
        assert backend.executions == [1, 5]
        assert stats.inference_count == 6 and stats.execution_count == 2
        assert sorted(stats.batches) == [1, 5]
        await runner.unload()

    asyncio.run(scenario())


def test_incompatible_shapes_are_not_merged() -> None:
    async def scenario() -> None:
        backend = EchoBackend()
        scheduler, _, runner = await make("dynamic_batching { }", backend)
        backend.gate.clear()
        first = submit(scheduler, 0, ("a",))
        await asyncio.sleep(0.05)
        others = [submit(scheduler, i, ("a",) if i % 2 else ("b",)) for i in range(1, 5)]
        backend.gate.set()
        await asyncio.gather(first, *others)
        assert backend.executions == [1, 1, 1, 1, 1]  # a, b, a, b alternate: no two neighbours agree
        await runner.unload()

    asyncio.run(scenario())


def test_preferred_size_sends_without_waiting_for_the_delay() -> None:
    async def scenario() -> None:
        backend = EchoBackend()
        scheduler, _, runner = await make(
            "dynamic_batching { preferred_batch_size: [3] max_queue_delay_microseconds: 5000000 }", backend
        )
        results = await asyncio.wait_for(asyncio.gather(*(submit(scheduler, i, ("k",)) for i in range(3))), timeout=2)
        assert len(results) == 3 and backend.executions == [3]
        await runner.unload()

    asyncio.run(scenario())


def test_queue_delay_is_dropped_while_waiting_gathers_nothing_and_restored_under_load() -> None:
    async def scenario() -> None:
        backend = EchoBackend()
        scheduler, stats, runner = await make(
            f"dynamic_batching {{ max_queue_delay_microseconds: {DELAY_US} }}", backend
        )
        waits = []
        for i in range(12):  # a sequential client: each wait for company is in vain
            before = stats.queue.ns
            await submit(scheduler, i, ("k",))
            waits.append(stats.queue.ns - before)
        assert all(wait >= DELAY_US * 1000 for wait in waits[:8])
        assert all(wait < DELAY_US * 1000 for wait in waits[8:])
        # concurrent requests: the batcher waits again and gathers them
        backend.gate.clear()
        blocker = submit(scheduler, 100, ("k",))
        await asyncio.sleep(0.05)
        burst = [submit(scheduler, i, ("k",)) for i in range(4)]
        backend.gate.set()
        await asyncio.gather(blocker, *burst)
        assert backend.executions[-1] == 4
        await runner.unload()

    asyncio.run(scenario())


def test_queue_length_and_a_timed_out_request_counted_as_rejected() -> None:
    async def scenario() -> None:
        backend = EchoBackend()
        scheduler, stats, runner = await make(
            "dynamic_batching { default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 100000 } }",
            backend,
        )
        backend.gate.clear()
        first = submit(scheduler, 0, ("k",))
        await asyncio.sleep(0.05)  # executing, held at the gate
        late = submit(scheduler, 1, ("k",))
        assert scheduler.queued == 1
        try:
            await late
        except ServerError as exc:
            assert exc.message == "Request timeout expired"
        else:
            raise AssertionError("the queued request should have timed out")
        assert scheduler.queued == 0 and stats.rejected == 1
        backend.gate.set()
        await first
        assert stats.failures()["REJECTED"] == 1
        await runner.unload()

    asyncio.run(scenario())


def test_observers_see_each_request_of_a_batch() -> None:
    async def scenario() -> None:
        backend = EchoBackend()
        scheduler, stats, runner = await make("dynamic_batching { }", backend)
        queue: list[tuple[int, int]] = []
        infer: list[tuple[int, int]] = []

        def ignore(ns: int, count: int) -> None:
            pass

        stats.observe(None, lambda ns, count: queue.append((ns, count)), (ignore, infer_seen(infer), ignore))
        backend.gate.clear()
        first = submit(scheduler, 0, ("k",))
        await asyncio.sleep(0.05)
        rest = [submit(scheduler, i, ("k",)) for i in range(1, 4)]
        backend.gate.set()
        await asyncio.gather(first, *rest)
        assert backend.executions == [1, 3]
        assert len(queue) == 4 and all(count == 1 for _, count in queue)
        assert [count for _, count in infer] == [1, 3]  # one observation per request of each batch
        assert stats.queue.count == 4 and stats.compute_infer.count == 4  # still recorded as before
        assert stats.compute_infer.ns == sum(ns * count for ns, count in infer)
        await runner.unload()

    asyncio.run(scenario())


def infer_seen(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    def observe(ns: int, count: int) -> None:
        seen.append((ns, count))

    return observe
