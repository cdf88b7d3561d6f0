"""The audit log: every request recorded before its answer leaves, in a hash chain whose head
the token's audit key signs at intervals.

Commits are grouped: a request thread that finds no commit in progress commits every record
waiting at that moment (its own included); threads arriving meanwhile wait for the next
group. Under load one store transaction carries many records; alone, a request pays for
exactly one. A failed commit fails every request of its group (AuditUnavailable): the vault
does not answer what it could not record. A commit that failed because the disk is full
raises DiskFull rather than AuditUnavailable, so the caller can free the disk reserve.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from vault.domain.audit import AuditEvent, AuditRecord, Checkpoint, checkpoint_payload
from vault.domain.audit_verification import AuditVerification, verify_audit_log
from vault.domain.errors import AuditUnavailable, DiskFull, VaultError
from vault.domain.models import Page
from vault.service.ports import AuditFilter, AuditHead, AuditStore, SystemCrypto

log = logging.getLogger(__name__)

# Names the token's audit anchor among the checkpoints the verifier checks.
ANCHOR_KEY_LABEL: Final = "token-anchor"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    every_records: int = 1000
    every_seconds: float = 60.0


@dataclass(slots=True)
class _Pending:
    event: AuditEvent
    usage_method: str | None  # the method to count against the credential, if any
    done: bool = False
    error: BaseException | None = field(default=None, repr=False)


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        crypto: SystemCrypto,
        policy: CheckpointPolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._policy = policy
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._committing = False
        self._checkpointing = threading.Lock()

    def __repr__(self) -> str:
        return "AuditLog()"

    def record(self, event: AuditEvent, *, usage_method: str | None = None) -> None:
        """Append event and return once it is committed; AuditUnavailable if it cannot be."""
        item = _Pending(event, usage_method)
        with self._cond:
            self._pending.append(item)
            while self._committing and not item.done:
                self._cond.wait()
            if item.done:
                self._raise_for(item)
                return
            self._committing = True
            batch, self._pending = self._pending, []
        head: AuditHead | None = None
        error: BaseException | None = None
        try:
            head = self._append(batch)
        except BaseException as exc:  # every waiter must learn the outcome, whatever it was
            error = exc
        with self._cond:
            for pending in batch:
                pending.done, pending.error = True, error
            self._committing = False
            self._cond.notify_all()
        self._raise_for(item)
        if head is not None:
            self._checkpoint_if_due(head)

    @staticmethod
    def _raise_for(item: _Pending) -> None:
        if item.error is None:
            return
        if isinstance(item.error, DiskFull):
            raise DiskFull()  # callers free the disk reserve and may try again
        if isinstance(item.error, AuditUnavailable):
            raise AuditUnavailable(item.error.message)
        log.error("audit append failed: %s", type(item.error).__name__)
        raise AuditUnavailable("the audit log cannot be written")

    def _append(self, batch: list[_Pending]) -> AuditHead:
        usage: Counter[tuple[str, str, str]] = Counter()
        last_used: dict[str, datetime] = {}
        for pending in batch:
            event = pending.event
            if pending.usage_method is not None and event.credential_id:
                day = event.occurred_at.date().isoformat()
                usage[(event.credential_id, day, pending.usage_method)] += 1
                last_used[event.credential_id] = max(
                    event.occurred_at, last_used.get(event.credential_id, event.occurred_at)
                )
        try:
            return self._store.append_audit([p.event for p in batch], usage, last_used)
        except DiskFull:
            raise
        except VaultError as error:
            raise AuditUnavailable(error.message) from None

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint_if_due(self, head: AuditHead) -> None:
        if head.seq <= head.checkpoint_seq:
            return
        now = self._clock()
        by_count = head.seq - head.checkpoint_seq >= self._policy.every_records
        by_time = (
            head.checkpoint_time is None
            or (now - head.checkpoint_time).total_seconds() >= self._policy.every_seconds
        )
        if not (by_count or by_time):
            return
        if not self._checkpointing.acquire(blocking=False):
            return  # another thread of this process is signing one already
        try:
            self.checkpoint(head.seq, head.hash, now)
        except Exception as error:
            # The records are committed; a missed checkpoint is retried with the next append.
            log.error("audit checkpoint failed: %s", type(error).__name__)
        finally:
            self._checkpointing.release()

    def checkpoint(self, head_seq: int, head_hash: bytes, now: datetime) -> Checkpoint:
        signature, key_label = self._crypto.audit_sign(checkpoint_payload(head_seq, head_hash, now))
        checkpoint = Checkpoint(head_seq, head_hash, now, signature, key_label)
        self._store.add_checkpoint(checkpoint)
        self._crypto.record_audit_anchor(head_seq, head_hash)
        return checkpoint

    # -- reading -----------------------------------------------------------------------------

    def list_events(
        self, audit_filter: AuditFilter, page_size: int, page_token: str
    ) -> Page[AuditRecord]:
        return self._store.list_audit_events(audit_filter, page_size, page_token)

    def verify(self) -> AuditVerification:
        started = time.monotonic()
        checkpoints = self._store.audit_checkpoints()
        anchor = self._crypto.audit_anchor()
        if anchor is not None and not any((c.head_seq, c.head_hash) == anchor for c in checkpoints):
            # The store lost (or altered) the newest checkpoint; the token's copy of its head
            # stands in, checked like a checkpoint whose signature is the token's own access
            # control.
            head_seq, head_hash = anchor
            checkpoints.append(Checkpoint(head_seq, head_hash, _EPOCH, b"", ANCHOR_KEY_LABEL))
            checkpoints.sort(key=lambda checkpoint: checkpoint.head_seq)

        def verify_signature(payload: bytes, signature: bytes, key_label: str) -> bool:
            if key_label == ANCHOR_KEY_LABEL:
                return True
            return self._crypto.audit_verify(payload, signature, key_label)

        result = verify_audit_log(self._store.audit_records(), checkpoints, verify_signature)
        log.info(
            "audit log verified: %d records, %d checkpoints, %d findings in %.1f s",
            result.records_checked,
            result.checkpoints_checked,
            len(result.findings),
            time.monotonic() - started,
        )
        return result
