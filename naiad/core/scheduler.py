"""The scheduler of one model version: a queue in front of its instances, and Triton's dynamic batcher.

Without `dynamic_batching` each execution gets one request. With it, a free instance gets the queued requests
whose non-batch shapes agree with the oldest one, up to `max_batch_size`: at once when a preferred batch size
can be formed or the batch cannot grow, otherwise when the oldest request has waited
`max_queue_delay_microseconds`. Everything is driven by events: a submit, an instance coming free, a timer."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence

from naiad.core.instances import Outcome, Runner
from naiad.core.stats import ModelStats
from naiad.core.validation import tag
from naiad.domain.errors import ServerError, unavailable
from naiad.domain.model_config import DynamicBatching, TimeoutAction
from naiad.domain.tensors import InferenceRequest, InferenceResult

# Below this, a libuv timer (millisecond resolution) would overshoot the delay: the batcher re-checks on each
# loop iteration instead, which also lets requests already read from other connections join the batch.
_TIMER_MIN_NS = 1_500_000
# After this many waits in a row that gathered no request, the batcher stops waiting (the clients are sequential,
# so the delay would only add latency); it waits again as soon as requests are seen queuing together, and
# once every _PROBE_EVERY dispatches to notice a change in load.
_USELESS_WAITS = 8
_PROBE_EVERY = 64


Done = Callable[[InferenceResult | ServerError], None]


class Pending:
    """A queued request and the callback that takes its result."""

    __slots__ = ("arrival", "batch_size", "done", "key", "request", "timer")

    def __init__(self, request: InferenceRequest, batch_size: int, key: Hashable, done: Done, arrival: int) -> None:
        self.request = request
        self.batch_size = batch_size
        self.key = key
        self.done: Done | None = done
        self.arrival = arrival
        self.timer: asyncio.TimerHandle | None = None

    def finish(self, result: InferenceResult | ServerError) -> None:
        """Hand the result to the caller, once."""
        done = self.done
        if done is not None:
            self.done = None
            done(result)


class Scheduler:
    """Queues requests for one model version and hands them to free instances, batching them if configured."""

    def __init__(
        self,
        runners: list[Runner],
        stats: ModelStats,
        max_batch_size: int,
        batching: DynamicBatching | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._loop = loop
        self._stats = stats
        self._instances = len(runners)
        self._idle: deque[Runner] = deque(runners)
        self._down: set[Runner] = set()  # instances whose process is being started again
        self._settled: list[asyncio.Future[None]] = []
        self._queue: deque[Pending] = deque()
        self._delayed: deque[Pending] = deque()
        self._batching = batching
        self._max_batch = max_batch_size if batching is not None else 0
        self._delay_ns = batching.max_queue_delay_us * 1000 if batching else 0
        self._preferred = frozenset(batching.preferred_batch_sizes) if batching else frozenset()
        self._max_preferred = (
            max(batching.preferred_batch_sizes) if batching and batching.preferred_batch_sizes else max_batch_size
        )
        policy = batching.queue_policy if batching else None
        self._max_queue = policy.max_queue_size if policy else 0
        self._timeout_ns = policy.default_timeout_us * 1000 if policy else 0
        self._allow_override = policy.allow_timeout_override if policy else False
        self._delay_action = policy is not None and policy.timeout_action is TimeoutAction.DELAY
        self._preserve = batching.preserve_ordering if batching else False
        self._wakeup: asyncio.Handle | None = None
        self._waiting_with = 0  # requests in the batch when the current wait began; 0 when not waiting
        self._useless_waits = 0
        self._skip_waits = False
        self._dispatches = 0
        self._next_batch = 0
        self._next_delivery = 0
        self._finished: dict[int, list[tuple[Pending, InferenceResult | ServerError]]] = {}
        self._leaving: dict[Runner, asyncio.Future[None]] = {}  # busy instances to retire when done

    @property
    def queued(self) -> int:
        """Requests waiting for an instance."""
        return len(self._queue) + len(self._delayed)

    @property
    def busy(self) -> bool:
        """Whether a request is queued or executing."""
        return bool(self._queue or self._delayed) or len(self._idle) + len(self._down) < self._instances

    def add_instances(self, runners: Sequence[Runner]) -> None:
        """Serve with these loaded instances too, from now on."""
        self._instances += len(runners)
        self._idle.extend(runners)
        if self._queue or self._delayed:
            self._dispatch()

    def remove_instances(self, runners: Sequence[Runner]) -> asyncio.Future[list[None]]:
        """Give these instances no more work from now on; the future is done once none of them is executing (they
        stay loaded)."""
        leaving: list[asyncio.Future[None]] = []
        for runner in runners:
            if runner in self._idle:
                self._idle.remove(runner)
                self._instances -= 1
            elif runner in self._down:
                self._down.discard(runner)
                self._instances -= 1
            else:
                leaving.append(self._leaving.setdefault(runner, self._loop.create_future()))
        return asyncio.gather(*leaving)

    def instance_down(self, runner: Runner) -> None:
        """No work for this instance until `instance_up` (a batch it held comes back failed meanwhile)."""
        if runner in self._idle:
            self._idle.remove(runner)
            self._down.add(runner)

    def instance_up(self, runner: Runner) -> None:
        """The instance serves again."""
        if runner not in self._down:
            return
        self._down.discard(runner)
        left = self._leaving.pop(runner, None)
        if left is not None:  # removed while it was down
            self._instances -= 1
            left.set_result(None)
            return
        self._idle.append(runner)
        if self._queue or self._delayed:
            self._dispatch()

    def instance_gone(self, runner: Runner) -> None:
        """The instance is lost for good."""
        if runner in self._idle:
            self._idle.remove(runner)
        elif runner in self._down:
            self._down.discard(runner)
        else:
            return  # not among this scheduler's instances
        self._instances -= 1
        left = self._leaving.pop(runner, None)
        if left is not None:
            left.set_result(None)
        if self._settled:
            self._wake_settled()

    def fail_queued(self, error: ServerError) -> None:
        """Answer every queued request with `error` (no instance is left to run them)."""
        for queue in (self._queue, self._delayed):
            while queue:
                pending = queue.popleft()
                if pending.timer is not None:
                    pending.timer.cancel()
                    pending.timer = None
                pending.finish(error)
        if self._settled:
            self._wake_settled()

    async def settle(self) -> None:
        """Wait until every request queued so far has been executed and answered."""
        if self.busy:
            settled = self._loop.create_future()
            self._settled.append(settled)
            await settled

    def submit(self, request: InferenceRequest, batch_size: int, key: Hashable, done: Done) -> None:
        """Queue a checked request; `done` is later called on the loop with its result or `ServerError`."""
        if self._max_queue and len(self._queue) + len(self._delayed) >= self._max_queue:
            raise unavailable(f"{tag(request)}Exceeds maximum queue size")
        pending = Pending(request, batch_size, key, done, time.monotonic_ns())
        timeout = self._timeout_ns
        if self._allow_override:
            requested = request.parameters.get("timeout")
            if isinstance(requested, int) and requested > 0:
                timeout = min(timeout, requested * 1000) if timeout else requested * 1000
        if timeout:
            pending.timer = self._loop.call_later(timeout / 1e9, self._expire, pending)
        self._queue.append(pending)
        if self._idle:
            self._dispatch()

    def _expire(self, pending: Pending) -> None:
        pending.timer = None
        try:
            self._queue.remove(pending)
        except ValueError:
            return
        if self._delay_action:
            self._delayed.append(pending)
        else:
            self._stats.rejected += 1
            pending.finish(unavailable("Request timeout expired"))
            if self._settled:
                self._wake_settled()

    def _wake_settled(self) -> None:
        if self.busy:
            return
        for settled in self._settled:
            if not settled.done():
                settled.set_result(None)
        self._settled.clear()

    def _dispatch(self) -> None:
        self._wakeup = None
        while self._idle and (self._queue or self._delayed):
            batch = self._form_batch(self._queue if self._queue else self._delayed)
            if batch is None:
                return
            self._start(self._idle.popleft(), batch)

    def _form_batch(self, queue: deque[Pending]) -> list[Pending] | None:
        """The requests for the next execution, or None to wait for more (a wake-up is then scheduled)."""
        if not self._max_batch:
            return [queue.popleft()]
        first = queue[0]
        key = first.key
        total = 0
        taken = 0
        preferred_taken = 0
        can_grow = True
        for pending in queue:
            if pending.key != key or total + pending.batch_size > self._max_batch:
                can_grow = False
                break
            total += pending.batch_size
            taken += 1
            if total in self._preferred:
                preferred_taken = taken
        if total >= self._max_preferred:
            can_grow = False
        waited = time.monotonic_ns() - first.arrival
        if can_grow and not preferred_taken and waited < self._delay_ns and self._should_wait(taken):
            self._schedule_wakeup(self._delay_ns - waited)
            return None
        count = preferred_taken if preferred_taken and waited < self._delay_ns else taken
        self._judge_wait(count)
        return [queue.popleft() for _ in range(count)]

    def _should_wait(self, taken: int) -> bool:
        """Whether to hold a batch that can still grow for `max_queue_delay_microseconds`."""
        if self._waiting_with:
            return True
        self._dispatches += 1
        if taken > 1:  # requests are arriving together: waiting can gather more
            self._skip_waits = False
            self._useless_waits = 0
        elif self._skip_waits and self._dispatches % _PROBE_EVERY:
            return False
        self._waiting_with = taken
        return True

    def _judge_wait(self, count: int) -> None:
        """After a wait: remember whether it gathered anything."""
        if not self._waiting_with:
            return
        if count > self._waiting_with:
            self._useless_waits = 0
            self._skip_waits = False
        else:
            self._useless_waits += 1
            if self._useless_waits >= _USELESS_WAITS:
                self._skip_waits = True
        self._waiting_with = 0

    def _schedule_wakeup(self, remaining_ns: int) -> None:
        if self._wakeup is not None:
            return
        if remaining_ns >= _TIMER_MIN_NS:
            self._wakeup = self._loop.call_later(remaining_ns / 1e9, self._dispatch)
        else:
            self._wakeup = self._loop.call_soon(self._dispatch)

    def _start(self, runner: Runner, batch: list[Pending]) -> None:
        for pending in batch:
            if pending.timer is not None:
                pending.timer.cancel()
                pending.timer = None
        sequence = self._next_batch
        self._next_batch += 1
        dispatched = time.monotonic_ns()

        def done(outcome: Outcome, start: int, end: int) -> None:
            left = self._leaving.pop(runner, None)
            if left is not None:
                self._instances -= 1
                left.set_result(None)
            elif runner.available:
                self._idle.append(runner)
            else:  # its process died with this batch: back in `instance_up`
                self._down.add(runner)
            try:
                self._finish(sequence, batch, outcome, dispatched, start, end)
            finally:  # whatever a result callback raised, the queue moves on
                if self._queue or self._delayed:
                    self._dispatch()
                elif self._settled:
                    self._wake_settled()

        runner.execute([pending.request for pending in batch], done)

    def _finish(
        self, sequence: int, batch: list[Pending], outcome: Outcome, dispatched: int, start: int, end: int
    ) -> None:
        stats = self._stats
        for pending in batch:
            stats.queue.add(dispatched - pending.arrival)
        batch_size = sum(pending.batch_size for pending in batch) if self._max_batch else len(batch)
        stats.record_execution(batch_size, len(batch), start - dispatched, end - start, 0)
        pairs = list(zip(batch, outcome, strict=True))
        if not self._preserve:
            _deliver(pairs)
            return
        self._finished[sequence] = pairs
        while self._next_delivery in self._finished:
            _deliver(self._finished.pop(self._next_delivery))
            self._next_delivery += 1


def _deliver(pairs: list[tuple[Pending, InferenceResult | ServerError]]) -> None:
    for pending, result in pairs:
        pending.finish(result)
