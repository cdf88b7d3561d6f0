"""Signed checkpoints of the audit chain in the store, and the lock checkpointers (and
archivers) take turns on. The newest checkpointed head is also anchored outside the store, in
the token (vault.hsm.system_keys); vault.service.audit does both."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from vault.domain.audit import Checkpoint
from vault.storage.audit_locks import CHECKPOINT_LOCK_SUFFIX, AppendLock, lock_path
from vault.storage.engine import write_transaction
from vault.storage.tables import audit_checkpoints
from vault.storage.transactions import aware, guarded_transaction, serialised, unavailable


class AuditCheckpoints:
    def __init__(self, engine: Engine, serial: threading.Lock | None) -> None:
        self._engine = engine
        self._serial = serial
        self._checkpoint_lock = AppendLock(lock_path(engine, CHECKPOINT_LOCK_SUFFIX))

    def close(self) -> None:
        self._checkpoint_lock.close()

    @contextmanager
    def checkpoint_lock(self, *, wait: bool = True) -> Iterator[bool]:
        """Threads of this process, then processes sharing a SQLite file, take turns; yields
        whether the lock is held (always, if wait). A server database shared by several hosts
        has no file to lock: there the turns are per host, and the token's anchor only ever
        moves forward."""
        with self._checkpoint_lock.attempt(wait=wait) as held:
            yield held

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Record a signed checkpoint; a second one for the same head is ignored."""
        row = {
            "head_seq": checkpoint.head_seq,
            "head_hash": checkpoint.head_hash,
            "signed_at": aware(checkpoint.signed_at),
            "signature": checkpoint.signature,
            "key_label": checkpoint.key_label,
        }
        exists = select(audit_checkpoints.c.head_seq).where(
            audit_checkpoints.c.head_seq == checkpoint.head_seq
        )
        try:
            with serialised(self._serial), write_transaction(self._engine) as c:
                if c.execute(exists).first() is None:
                    c.execute(insert(audit_checkpoints).values(**row))
        except IntegrityError:
            # Another writer of a server database recorded the same head meanwhile.
            return
        except SQLAlchemyError as exc:
            raise unavailable(exc) from exc

    def audit_checkpoints(self) -> list[Checkpoint]:
        query = select(audit_checkpoints).order_by(audit_checkpoints.c.head_seq)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return [
            Checkpoint(
                head_seq=int(row["head_seq"]),
                head_hash=bytes(row["head_hash"]),
                signed_at=row["signed_at"],
                signature=bytes(row["signature"]),
                key_label=row["key_label"],
            )
            for row in rows
        ]
