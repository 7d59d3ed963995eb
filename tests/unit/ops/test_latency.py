"""Sliding-window quantiles for the latency summaries, bucket counts for the first-response histogram."""

from __future__ import annotations

import math
import random

from naiad.ops.latency import CAPACITY, MAX_AGE_S, BucketCounts, WindowQuantiles


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quantiles_of_a_few_observations_are_exact() -> None:
    window = WindowQuantiles(Clock())
    for value in (50, 10, 40, 20, 30):
        window.observe(value)
    assert window.quantiles([0.0, 0.2, 0.5, 0.9, 0.99, 1.0]) == [10, 10, 30, 50, 50, 50]


def test_an_empty_window_answers_nan() -> None:
    values = WindowQuantiles(Clock()).quantiles([0.5, 0.9])
    assert len(values) == 2 and all(math.isnan(value) for value in values)


def test_a_batch_observation_counts_once_per_request() -> None:
    window = WindowQuantiles(Clock())
    window.observe(7, count=9)
    window.observe(1000)
    assert window.quantiles([0.5, 0.9, 0.95]) == [7, 7, 1000]


def test_observations_leave_the_window_after_max_age() -> None:
    clock = Clock()
    window = WindowQuantiles(clock)
    window.observe(1)
    clock.now += MAX_AGE_S / 2
    window.observe(2)
    assert window.quantiles([0.0, 1.0]) == [1, 2]
    clock.now += MAX_AGE_S / 2 + 1  # the first observation is now older than the window
    assert window.quantiles([0.0, 1.0]) == [2, 2]
    clock.now += MAX_AGE_S  # and so is the second
    assert math.isnan(window.quantiles([0.5])[0])


def test_memory_is_bounded_and_quantiles_stay_close() -> None:
    clock = Clock()
    window = WindowQuantiles(clock)
    shuffled = list(range(100_000))
    random.Random(7).shuffle(shuffled)
    for value in shuffled:
        window.observe(value)
    kept = sum(len(bucket.values) for bucket in window._buckets)
    assert kept < CAPACITY
    median, p99 = window.quantiles([0.5, 0.99])
    assert abs(median - 50_000) < 1_000
    assert abs(p99 - 99_000) < 1_000


def test_histogram_buckets_include_their_bound_and_are_cumulative() -> None:
    histogram = BucketCounts((100.0, 500.0, 2000.0))
    for value in (0.3, 100.0, 100.1, 499.0, 2000.0, 9000.0):
        histogram.observe(value)
    histogram.observe(50.0, count=4)
    assert histogram.cumulative() == [6, 8, 9]
