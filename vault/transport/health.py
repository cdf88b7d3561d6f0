"""grpc.health.v1 that tells the truth at once: a background probe per worker sets the status.

Check never touches the token or the store itself, and it runs on threads of its own: when
the store is locked every request thread may be waiting on it, and a health check queued
behind them would answer only when they give up (seen: 4 s), long after a load balancer
has stopped waiting.

The probe asks each check (a cheap token call, a store transaction that takes the write lock)
on a thread of its own with a timeout, so a check that hangs counts as a failure instead of
stopping the probe. All pass: SERVING for "" and every vault.v1 service; else NOT_SERVING.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from typing import Any, Final

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

PROBE_INTERVAL_SECONDS: Final = 1.0
# A check that has not answered within this long counts as failed. The store's check waits
# for the write lock, which a busy but healthy store grants within milliseconds.
PROBE_TIMEOUT_SECONDS: Final = 1.0
_HEALTH_THREADS: Final = 2

SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


class _OwnThreads:
    """The servicer as add_HealthServicer_to_server sees it, with Check and List on a pool
    of their own (gRPC runs a behaviour on the pool its experimental_thread_pool names)."""

    def __init__(self, servicer: Any, pool: futures.ThreadPoolExecutor) -> None:
        self._servicer = servicer
        for name in ("Check", "List"):
            behaviour: Any = functools.partial(getattr(servicer, name))
            behaviour.experimental_thread_pool = pool
            setattr(self, name, behaviour)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._servicer, name)


def health_servicer() -> tuple[Any, Any]:
    """(the HealthServicer, the object to register with add_HealthServicer_to_server)."""
    servicer = health.HealthServicer(experimental_non_blocking=True)
    pool = futures.ThreadPoolExecutor(
        max_workers=_HEALTH_THREADS, thread_name_prefix="vault-health"
    )
    return servicer, _OwnThreads(servicer, pool)


class HealthProbe:
    """Runs checks every interval and sets the status of "" and services on servicer."""

    def __init__(
        self,
        servicer: Any,
        services: Iterable[str],
        checks: Mapping[str, Callable[[], bool]],
        *,
        interval: float = PROBE_INTERVAL_SECONDS,
        timeout: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        self._servicer = servicer
        self._services = ("", *services)
        self._checks = dict(checks)
        self._interval = interval
        self._timeout = timeout
        # One thread per check: a store that hangs must not delay the token's answer.
        self._pools = {
            name: futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"vault-probe-{name}"
            )
            for name in self._checks
        }
        self._pending: dict[str, futures.Future[bool]] = {}
        self._failing: set[str] = set()
        self._stop = threading.Event()
        self._publish = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="vault-health-probe", daemon=True)

    @property
    def failing(self) -> frozenset[str]:
        """The checks that failed in the latest round (names as in checks)."""
        return frozenset(self._failing)

    def start(self) -> None:
        self.probe_once()
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing at once (a round in progress is not waited for), so that the
        status shutdown sets is the last word."""
        with self._publish:
            self._stop.set()
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.probe_once()

    def probe_once(self) -> bool:
        """Run every check once (in parallel) and publish the result; True if all passed."""
        with self._publish:
            if self._stop.is_set():
                return False
            for name, check in self._checks.items():
                pending = self._pending.get(name)
                if pending is None or pending.done():
                    self._pending[name] = self._pools[name].submit(_passes, check)
        futures.wait(self._pending.values(), timeout=self._timeout)
        # A check still running counts as failed; it is asked again once it has answered.
        # stop() cancels queued checks, and result() of a cancelled one would raise here.
        failing = {
            name
            for name, pending in self._pending.items()
            if not (pending.done() and not pending.cancelled() and pending.result())
        }
        if failing != self._failing:
            if failing:
                log.error("health: NOT_SERVING (%s unusable)", ", ".join(sorted(failing)))
            else:
                log.warning("health: SERVING again")
            self._failing = failing
        status = NOT_SERVING if failing else SERVING
        with self._publish:
            if self._stop.is_set():
                return False
            for service in self._services:
                self._servicer.set(service, status)
        return not failing


def _passes(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:  # a check that raises says the same as one that returns False
        return False
