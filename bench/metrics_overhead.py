"""What the metrics cost per call: `python -m bench.metrics_overhead`.

Times, in this process, the metric updates one audited Encrypt makes (vault.metrics: the
request counter and latency histogram, one token operation, one key cache lookup, the audit
log's waiting gauge up and down and one commit), with prometheus-client's multiprocess mode
on, as the workers run it, against the same calls with metrics off (each then returns at
once); and the whole instrumented path of the outermost interceptor (request id, log context,
status code, metrics) around a call that does nothing. Prints microseconds per call, the
median of several rounds.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROUNDS = 7
CALLS = 20_000


def _one_call() -> None:
    from vault import metrics

    metrics.token_operation("encrypt")
    metrics.cache_lookup(True)
    metrics.audit_waiting(1)
    metrics.audit_committed(0.0004, 1, 12)
    metrics.audit_waiting(-1)
    metrics.request_done("vault.v1.CryptoService", "Encrypt", "OK", 0.0009)


class _Context:
    """The two things the interceptor asks of a grpc.ServicerContext."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "x" * 200), ("x-request-id", "bench-request"))

    def code(self) -> None:
        return None


def _per_call_us(call: Callable[[], object] = _one_call) -> float:
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(CALLS):
            call()
        samples.append((time.perf_counter() - started) / CALLS * 1e6)
    return statistics.median(samples)


def _intercepted() -> Callable[[], object]:
    from vault.transport.observe import _observed

    observed = _observed(lambda request, context: request, "/vault.v1.CryptoService/Encrypt")
    context: Any = _Context()
    return lambda: observed(b"", context)


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        # Before prometheus-client is imported, as the supervisor does for its workers.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        from vault import metrics

        off = _per_call_us()
        path_off = _per_call_us(_intercepted())
        metrics.enable()
        on = _per_call_us()
        path_on = _per_call_us(_intercepted())
    print(f"metric updates of one call, metrics off: {off:.2f} us")
    print(f"metric updates of one call, metrics on:  {on:.2f} us (multiprocess mode)")
    print(f"interceptor around a no-op call, metrics off: {path_off:.2f} us")
    print(f"interceptor around a no-op call, metrics on:  {path_on:.2f} us")


if __name__ == "__main__":
    main()
