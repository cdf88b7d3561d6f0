"""The timed loop both sides share, what a measuring process reports, and percentiles."""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Sample:
    """One process's measurement of one operation."""

    ops: int = 0
    rate: float = 0.0  # ops/s: the sum of each loop's count / its own elapsed time
    latencies_ns: bytes = b""  # array('q').tobytes() of every measured call
    errors: int = 0
    first_error: str = ""

    def latencies(self) -> array[int]:
        values = array("q")
        values.frombytes(self.latencies_ns)
        return values


@dataclass(slots=True)
class Loop:
    """The result of timed_loop in one thread."""

    ops: int = 0
    seconds: float = 0.0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    errors: int = 0
    first_error: str = ""


def wait_until(moment: float) -> None:
    """Sleep until time.monotonic() reaches moment (a clock all processes share on Linux)."""
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def timed_loop(
    call: Callable[[], Any],
    warm_until: float,
    seconds: float,
    errors: type[BaseException] | tuple[type[BaseException], ...] = (),
    max_errors: int = 100,
) -> Loop:
    """Call call() until warm_until (monotonic), then for seconds more, timing each call.

    A call's latency is the time between consecutive completions in this loop, so one clock
    read per call; the loop's own cost (well under a microsecond) is included. Measuring
    starts right after warming up, with no pause, so the load on the system does not dip.
    """
    result = Loop()
    while time.monotonic() < warm_until:
        try:
            call()
        except errors as error:
            _count_error(result, error)
            if result.errors >= max_errors:
                return result
    clock = time.perf_counter_ns
    latencies = result.latencies
    append = latencies.append
    start = previous = clock()
    end = start + int(seconds * 1e9)
    while True:
        try:
            call()
        except errors as error:
            _count_error(result, error)
            if result.errors >= max_errors:
                break
        now = clock()
        append(now - previous)
        previous = now
        if now >= end:
            break
    result.ops = len(latencies)
    result.seconds = (previous - start) / 1e9
    return result


def _count_error(result: Loop, error: BaseException) -> None:
    result.errors += 1
    if not result.first_error:
        result.first_error = f"{type(error).__name__}: {error}"[:500]


def combine(loops: Iterable[Loop]) -> Sample:
    sample = Sample()
    latencies = array("q")
    for loop in loops:
        sample.ops += loop.ops
        if loop.seconds > 0:
            sample.rate += loop.ops / loop.seconds
        latencies.extend(loop.latencies)
        sample.errors += loop.errors
        sample.first_error = sample.first_error or loop.first_error
    sample.latencies_ns = latencies.tobytes()
    return sample


def percentile_ms(values: array[int], fraction: float) -> float:
    """The nearest-rank percentile of nanosecond values, in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[rank] / 1e6


def merged(samples: Iterable[Sample]) -> array[int]:
    values = array("q")
    for sample in samples:
        values.extend(sample.latencies())
    return values


def in_threads(threads: int, objects: int, work: Callable[[range], None]) -> float:
    """work(indices) in threads threads, each taking every threads-th object (its range starts
    at its own slot); the wall time from the moment all are ready until the last is done. A
    failure in any is raised."""
    errors: list[BaseException] = []
    ready = threading.Barrier(threads + 1)

    def run(first: int) -> None:
        ready.wait()
        try:
            work(range(first, objects, threads))
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=run, args=(first,)) for first in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed
