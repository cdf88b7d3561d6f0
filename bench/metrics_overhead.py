"""What the metrics cost per call: `python -m bench.metrics_overhead`.

Times, in this process, the metric updates one audited Encrypt makes (vault.metrics: the
request counter and latency histogram, one token operation, one key cache lookup, the audit
log's waiting gauge up and down and one commit), with prometheus-client's multiprocess mode
on, as the workers run it, against the same calls with metrics off (each then returns at
once). Prints microseconds per call, the median of several rounds.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

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


def _per_call_us() -> float:
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(CALLS):
            _one_call()
        samples.append((time.perf_counter() - started) / CALLS * 1e6)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        # Before prometheus-client is imported, as the supervisor does for its workers.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        from vault import metrics

        off = _per_call_us()
        metrics.enable()
        on = _per_call_us()
    print(f"metrics off: {off:.2f} us per call")
    print(f"metrics on:  {on:.2f} us per call (multiprocess mode)")
    print(f"overhead:    {on - off:.2f} us per call")


if __name__ == "__main__":
    main()
