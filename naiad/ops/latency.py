"""What the opt-in latency metrics keep beyond the core's statistics: quantiles over a sliding window for the
summaries, and bucket counts for the first-response histogram."""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

# prometheus-cpp's summary defaults, which Triton uses: quantiles over the last 60 s, kept in 5 age buckets.
MAX_AGE_S = 60.0
AGE_BUCKETS = 5
# Observations an age bucket keeps exactly; past this it keeps every other one (sorted) and samples the rest.
CAPACITY = 2048


class _AgeBucket:
    """The observations of one stretch of the window; each kept value stands for `weight` observations."""

    __slots__ = ("skipped", "start", "values", "weight")

    def __init__(self, start: float) -> None:
        self.start = start
        self.values: list[int] = []
        self.weight = 1
        self.skipped = 0

    def add(self, value: int, count: int) -> None:
        if self.weight == 1:
            if count == 1:
                self.values.append(value)
            else:
                self.values.extend([value] * count)
        else:
            kept, self.skipped = divmod(self.skipped + count, self.weight)
            if kept:
                self.values.extend([value] * kept)
        if len(self.values) >= CAPACITY:
            self.values.sort()
            del self.values[::2]
            self.weight *= 2


class WindowQuantiles:
    """Quantiles of the observations of the last `MAX_AGE_S` seconds (between 48 and 60 s of them, as the window
    moves a fifth at a time). Exact up to `CAPACITY` observations per fifth, then thinned evenly."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._step = MAX_AGE_S / AGE_BUCKETS
        self._buckets: deque[_AgeBucket] = deque([_AgeBucket(clock())], maxlen=AGE_BUCKETS)

    def observe(self, value: int, count: int = 1) -> None:
        """Record `count` observations of `value`."""
        bucket = self._buckets[-1]
        now = self._clock()
        if now - bucket.start >= self._step:
            bucket = _AgeBucket(now)
            self._buckets.append(bucket)
        bucket.add(value, count)

    def quantiles(self, wanted: Sequence[float]) -> list[float]:
        """The value at each quantile in `wanted` (NaN for every one when the window is empty)."""
        oldest = self._clock() - MAX_AGE_S
        weighted = sorted(
            (value, bucket.weight) for bucket in self._buckets if bucket.start > oldest for value in bucket.values
        )
        if not weighted:
            return [math.nan] * len(wanted)
        ranks = list(itertools.accumulate(weight for _, weight in weighted))
        last = len(weighted) - 1
        # The first value whose cumulative count reaches quantile x total.
        return [weighted[min(bisect.bisect_left(ranks, q * ranks[-1]), last)][0] for q in wanted]


class BucketCounts:
    """Observations per histogram bucket; the last bucket is +Inf."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, count: int = 1) -> None:
        """Record `count` observations of `value`: each counts in the first bucket whose bound is >= `value`."""
        self._counts[bisect.bisect_left(self.bounds, value)] += count

    def cumulative(self) -> list[int]:
        """For each finite bound, how many observations were at most that bound."""
        totals: list[int] = []
        running = 0
        for count in self._counts[:-1]:
            running += count
            totals.append(running)
        return totals
