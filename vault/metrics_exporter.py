"""The supervisor's /metrics endpoint: the workers' metrics added up, and its own.

The workers write their metrics to files in one directory (vault.metrics); this serves what
prometheus-client's MultiProcessCollector reads from them, plus the supervisor's view of the
workers, over plain HTTP on server.metrics_listen. Import it only after the supervisor has set
PROMETHEUS_MULTIPROC_DIR (prometheus-client chooses its storage when first imported).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vault.metrics import MULTIPROC_ENV


class MetricsListenError(ValueError):
    """server.metrics_listen is malformed or cannot be bound."""


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) of host:port or [v6]:port."""
    host, _, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise MetricsListenError(
            f"server.metrics_listen={listen!r}: expected host:port or [ipv6]:port"
        )
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise MetricsListenError(
                f"server.metrics_listen={listen!r}: the host must be an IP address or localhost"
            ) from None
    return host, int(port_text)


def prepare_directory(directory: Path) -> None:
    """Start from an empty directory (files of an earlier run would be added in) and point
    prometheus-client at it, for this process and the workers it forks."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)


@dataclass(frozen=True, slots=True)
class SupervisorView:
    """What the supervisor reports about its workers at each scrape."""

    workers_alive: Callable[[], int]
    worker_restarts: Callable[[], int]
    started_at: float  # time.time() of the start


class _SupervisorCollector:
    def __init__(self, view: SupervisorView) -> None:
        self._view = view

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "vault_workers", "Worker processes alive", value=self._view.workers_alive()
        )
        yield CounterMetricFamily(
            "vault_worker_restarts",
            "Workers restarted after dying unexpectedly",
            value=self._view.worker_restarts(),
        )
        yield GaugeMetricFamily(
            "vault_start_time_seconds",
            "When the server started, in seconds since the epoch",
            value=self._view.started_at,
        )


class MetricsExporter:
    """The HTTP endpoint, serving from a thread of the supervisor until close()."""

    def __init__(self, listen: str, directory: Path, view: SupervisorView) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        host, port = parse_listen(listen)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        registry.register(_SupervisorCollector(view))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as error:
            raise MetricsListenError(
                f"server.metrics_listen={listen}: cannot listen: {error.strerror}"
            ) from None
        self.port = int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
