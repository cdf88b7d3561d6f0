"""What the transport serves, as the composition root (vault.app) hands it over.

The transport builds no use case, store or token itself: a worker process asks the
composition root for its services after fork (PKCS#11 must be initialised in the process that
uses it), and start-up work runs in a child through the root too. These protocols name only
what the servicers, interceptors and the supervisor use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from vault.config import Settings
from vault.domain.ports import DiskReserve, SharedCounters
from vault.service.audit import AuditLog
from vault.service.authentication import Authenticator
from vault.service.buckets import BucketManagement
from vault.service.crypto import CryptoOperations
from vault.service.identity import IdentityManagement
from vault.service.imports import KeyImports
from vault.service.keys import KeyManagement
from vault.service.reconcile import StartupReport
from vault.service.revocations import RevocationFeeds


class ServedSecurity(Protocol):
    """Who may call what, and the record of every call (present with auth.enabled)."""

    @property
    def identity(self) -> IdentityManagement: ...

    @property
    def authenticator(self) -> Authenticator | None: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def disk_reserve(self) -> DiskReserve | None: ...


class ServedServices(Protocol):
    """The use cases one server serves, and the checks its health probe runs."""

    @property
    def keys(self) -> KeyManagement: ...

    @property
    def crypto(self) -> CryptoOperations: ...

    @property
    def buckets(self) -> BucketManagement: ...

    @property
    def imports(self) -> KeyImports: ...

    @property
    def feeds(self) -> RevocationFeeds: ...

    @property
    def security(self) -> ServedSecurity | None: ...

    @property
    def health_checks(self) -> Mapping[str, Callable[[], bool]]:
        """name -> check; a check that returns False or raises means the vault cannot serve
        (vault.transport.health)."""
        ...

    def close(self) -> None: ...


# Builds one worker's services, in the worker after fork; the counters are shared by every
# worker of the server (None with auth.enabled false).
BuildServices = Callable[[Settings, SharedCounters | None], ServedServices]
# Start-up work done once, in one child process, before any worker starts.
PrepareStartup = Callable[[Settings], StartupReport]
