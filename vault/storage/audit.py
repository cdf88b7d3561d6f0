"""AuditStore over SQLAlchemy Core, in three parts that share one engine: the chain of records
(vault.storage.audit_chain), its signed checkpoints (audit_checkpoints) and the markers of
archived segments (audit_archive)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from vault.domain.audit import ArchiveMarker, AuditEvent, AuditRecord, Checkpoint
from vault.domain.models import Page
from vault.domain.ports import AuditFilter, AuditHead
from vault.storage.audit_archive import AuditArchive
from vault.storage.audit_chain import AuditChain
from vault.storage.audit_checkpoints import AuditCheckpoints
from vault.storage.transactions import new_serial_lock


class SqlAuditStore:
    """The vault's AuditStore. One instance per process, shared by all request threads."""

    def __init__(self, engine: Engine, *, serial: threading.Lock | None = None) -> None:
        self._engine = engine
        # See SqlMetadataStore: stores sharing an in-memory engine must share this lock.
        serial = serial if serial is not None else new_serial_lock(engine)
        self._chain = AuditChain(engine, serial)
        self._checkpoints = AuditCheckpoints(engine, serial)
        self._archive = AuditArchive(engine, serial)

    def __repr__(self) -> str:
        return f"SqlAuditStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Close the lock files and every pooled connection of the engine (shared with the
        other stores). The store must not be used afterwards."""
        self._chain.close()
        self._checkpoints.close()
        self._engine.dispose()

    # --- the chain --------------------------------------------------------------------------

    def append_audit(
        self,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
    ) -> AuditHead:
        return self._chain.append_audit(events, usage, last_used)

    def audit_head(self) -> tuple[int, bytes]:
        return self._chain.audit_head()

    def audit_records(self, after: int = 0) -> Iterator[AuditRecord]:
        return self._chain.audit_records(after)

    def list_audit_events(
        self, audit_filter: AuditFilter, page_size: int, page_token: str
    ) -> Page[AuditRecord]:
        return self._chain.list_audit_events(audit_filter, page_size, page_token)

    # --- checkpoints ------------------------------------------------------------------------

    def checkpoint_lock(self, *, wait: bool = True) -> AbstractContextManager[bool]:
        return self._checkpoints.checkpoint_lock(wait=wait)

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._checkpoints.add_checkpoint(checkpoint)

    def audit_checkpoints(self) -> list[Checkpoint]:
        return self._checkpoints.audit_checkpoints()

    # --- archives ---------------------------------------------------------------------------

    def audit_archive_markers(self) -> list[ArchiveMarker]:
        return self._archive.audit_archive_markers()

    def archive_audit(self, marker: ArchiveMarker) -> int:
        return self._archive.archive_audit(marker)


if TYPE_CHECKING:
    from vault.domain.ports import AuditStore

    # Makes mypy prove that the class satisfies the port it implements.
    _PORT_CHECK: type[AuditStore] = SqlAuditStore
