"""ServerService: the state of the serving vault, as the answering worker sees it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from vault.config import Settings
from vault.gen.vault.v1 import server_service_pb2, server_service_pb2_grpc
from vault.service.audit import AuditLog
from vault.transport.health import HealthProbe


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the supervisor tells a worker about the server it is part of."""

    started_at: float  # time.time() of the supervisor's start
    worker_index: int = 0


def vault_version() -> str:
    try:
        return metadata.version("vault")
    except metadata.PackageNotFoundError:
        return "unknown"


class StatusServicer(server_service_pb2_grpc.ServerServiceServicer):
    def __init__(
        self,
        settings: Settings,
        facts: ServerFacts,
        probe: HealthProbe,
        audit: AuditLog | None,
        *,
        tls: bool,
    ) -> None:
        self._settings = settings
        self._facts = facts
        self._probe = probe
        self._audit = audit
        self._tls = tls
        self._version = vault_version()

    def GetServerStatus(
        self, request: server_service_pb2.GetServerStatusRequest, context: grpc.ServicerContext
    ) -> server_service_pb2.ServerStatus:
        start = Timestamp()
        start.FromNanoseconds(int(self._facts.started_at * 1e9))
        # The probe's latest round (at most a second old): asking the token and the store
        # here would queue this call behind them when they hang.
        failing = self._probe.failing
        return server_service_pb2.ServerStatus(
            version=self._version,
            start_time=start,
            workers=self._settings.server.workers,
            worker_index=self._facts.worker_index,
            worker_pid=os.getpid(),
            token_available="token" not in failing,
            store_available="store" not in failing,
            audit_intact=self._audit is None or not self._audit.broken,
            auth_enabled=self._settings.auth.enabled,
            tls=self._tls,
            metrics_listen=self._settings.server.metrics_listen,
            drain_seconds=self._settings.server.drain_seconds,
        )
