"""Prometheus metrics of the worker processes, for the adapters and the transport to count in.

The workers share one set of metrics through prometheus-client's multiprocess mode: each
process writes its values to memory-mapped files in a directory the supervisor names
(<data_dir>/run/metrics), and the supervisor's /metrics endpoint adds them up
(vault.transport.metrics_http). prometheus-client picks its storage when it is first imported,
so it is imported only in enable(), after the supervisor has set PROMETHEUS_MULTIPROC_DIR;
until enable() runs (metrics off, tools, tests in process) every function here does nothing.

vault/domain and vault/service never import this module: the adapters (hsm/, storage/) and
the transport count where the work happens, and app.py hands the audit log a plain callable.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Final

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# Request latency: a cached AES call takes well under a millisecond, an RSA-4096 key creation
# seconds; the default buckets (5 ms up) would put every cheap call in one bucket.
REQUEST_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
AUDIT_COMMIT_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
)  # fmt: skip


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "vault_grpc_requests",
            "vault.v1 calls answered, by service, method and gRPC status code",
            ["service", "method", "code"],
        )
        self.latency = Histogram(
            "vault_grpc_request_duration_seconds",
            "Time from a vault.v1 call's arrival to its answer, by service and method",
            ["service", "method"],
            buckets=REQUEST_BUCKETS,
        )
        self.token_operations = Counter(
            "vault_token_operations",
            "PKCS#11 operations the keystore ran, by operation",
            ["operation"],
        )
        self.token_errors = Counter(
            "vault_token_operation_errors",
            "PKCS#11 operations that failed, by operation and error reason",
            ["operation", "reason"],
        )
        self.cache = Counter(
            "vault_key_cache_lookups",
            "Lookups of unwrapped key handles in the per-thread cache, by result (hit, miss)",
            ["result"],
        )
        self.rejections = Counter(
            "vault_limit_rejections",
            "Calls refused by a limit, by reason (RATE_LIMITED, QUOTA_EXCEEDED, "
            "AUTHENTICATION_THROTTLED)",
            ["reason"],
        )
        self.audit_waiting = Gauge(
            "vault_audit_records_waiting",
            "Audit records waiting for their group commit, summed over live workers",
            multiprocess_mode="livesum",
        )
        self.audit_commit = Histogram(
            "vault_audit_commit_duration_seconds",
            "Time one group commit of audit records took",
            buckets=AUDIT_COMMIT_BUCKETS,
        )
        # A counter, not a histogram: one write per commit; with the commit histogram's
        # _count it gives the records per commit.
        self.audit_records = Counter(
            "vault_audit_records_committed",
            "Audit records committed (in group commits: see vault_audit_commit_duration_seconds "
            "for how many commits)",
        )
        self.audit_since_checkpoint = Gauge(
            "vault_audit_records_since_checkpoint",
            "Records appended after the newest signed checkpoint, as of each worker's last "
            "commit (the largest over live workers)",
            multiprocess_mode="livemax",
        )
        # labels() takes a lock and builds a key each call: the children are kept here.
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (str(id(metric)), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


_lock = threading.Lock()
_metrics: _Metrics | None = None


def enable() -> None:
    """Start counting in this process (a worker, after fork). Needs PROMETHEUS_MULTIPROC_DIR
    set (by the supervisor) before prometheus-client is first imported in the process."""
    global _metrics
    if os.environ.get(MULTIPROC_ENV) is None:
        raise RuntimeError(f"{MULTIPROC_ENV} is not set: the supervisor sets it")
    with _lock:
        if _metrics is None:
            from prometheus_client import values

            if not getattr(values.ValueClass, "_multiprocess", False):
                # Imported before the variable was set: each worker would count in memory
                # only, and /metrics would never see it.
                raise RuntimeError(f"prometheus-client was imported before {MULTIPROC_ENV}")
            _metrics = _Metrics()


def enabled() -> bool:
    return _metrics is not None


def request_done(service: str, method: str, code: str, seconds: float) -> None:
    m = _metrics
    if m is None:
        return
    m.child(m.requests, service, method, code).inc()
    m.child(m.latency, service, method).observe(seconds)


def token_operation(operation: str, count: int = 1) -> None:
    m = _metrics
    if m is not None:
        m.child(m.token_operations, operation).inc(count)


def token_error(operation: str, reason: str) -> None:
    m = _metrics
    if m is not None:
        m.child(m.token_errors, operation, reason).inc()


def cache_lookup(hit: bool) -> None:
    m = _metrics
    if m is not None:
        m.child(m.cache, "hit" if hit else "miss").inc()


def limit_rejection(reason: str) -> None:
    m = _metrics
    if m is not None:
        m.child(m.rejections, reason).inc()


def audit_waiting(change: int) -> None:
    """change records started (positive) or finished (negative) waiting for a commit."""
    m = _metrics
    if m is not None:
        m.audit_waiting.inc(change)


def audit_committed(seconds: float, records: int, since_checkpoint: int) -> None:
    m = _metrics
    if m is None:
        return
    m.audit_commit.observe(seconds)
    m.audit_records.inc(records)
    m.audit_since_checkpoint.set(since_checkpoint)
