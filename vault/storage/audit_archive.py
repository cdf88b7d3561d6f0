"""Archived segments of the audit chain in the store: a signed marker per segment, whose
records and checkpoints leave the store in the same transaction (the segment itself is
written to a file first: vault.service.audit, vault.domain.audit_archive)."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from vault.domain.audit import ArchiveMarker
from vault.storage.engine import write_transaction
from vault.storage.tables import audit_archive_markers, audit_checkpoints, audit_events
from vault.storage.transactions import aware, guarded_transaction, serialised, unavailable


class AuditArchive:
    def __init__(self, engine: Engine, serial: threading.Lock | None) -> None:
        self._engine = engine
        self._serial = serial

    def audit_archive_markers(self) -> list[ArchiveMarker]:
        """Every archive marker, oldest first; the last is where the stored chain starts."""
        query = select(audit_archive_markers).order_by(audit_archive_markers.c.through_seq)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return [
            ArchiveMarker(
                through_seq=int(row["through_seq"]),
                through_hash=bytes(row["through_hash"]),
                archived_at=row["archived_at"],
                record_count=int(row["record_count"]),
                signature=bytes(row["signature"]),
                key_label=row["key_label"],
            )
            for row in rows
        ]

    def archive_audit(self, marker: ArchiveMarker) -> int:
        """In one transaction: add marker, and delete the records and checkpoints up to its
        seq. Returns the records deleted."""
        row = {
            "through_seq": marker.through_seq,
            "through_hash": marker.through_hash,
            "archived_at": aware(marker.archived_at),
            "record_count": marker.record_count,
            "signature": marker.signature,
            "key_label": marker.key_label,
        }
        try:
            with serialised(self._serial), write_transaction(self._engine) as c:
                c.execute(insert(audit_archive_markers).values(**row))
                deleted = c.execute(
                    delete(audit_events).where(audit_events.c.seq <= marker.through_seq)
                ).rowcount
                c.execute(
                    delete(audit_checkpoints).where(
                        audit_checkpoints.c.head_seq <= marker.through_seq
                    )
                )
        except SQLAlchemyError as exc:
            raise unavailable(exc) from exc
        return int(deleted)
