"""The audit log: every request recorded before its answer leaves, in a hash chain whose head
the token's audit key signs at intervals.

Commits are grouped: a request thread that finds no commit in progress commits every record
waiting at that moment (its own included); threads arriving meanwhile wait for the next
group. Under load one store transaction carries many records; alone, a request pays for
exactly one. The committing thread also commits, a few times at most, the groups that
gathered while it committed (it is awake already: no wake-up to wait for); a waiting thread
is woken once, when its records are committed or to take over committing, so no thread wakes
only to wait again. A failed commit fails every request of its group (AuditUnavailable): the
vault does not answer what it could not record. A commit that failed because the disk is full
raises DiskFull rather than AuditUnavailable, so the caller can free the disk reserve.

A checkpoint is signed only over a chain that extends the token's anchor: the record at the
anchored seq still has the anchored hash and every record after it, up to the head to be
signed, links to and hashes from the one before. Otherwise the store was rewritten (someone
recomputed the chain and dropped the checkpoints that would have shown it), nothing is signed,
and from then on this process refuses every audited call but the admin's audit reads, which
remain so that the damage can be inspected. Each worker process finds out at its next due
checkpoint, which falls due at once because no checkpoint can be added any more.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from vault.domain.audit import (
    GENESIS_HASH,
    ArchiveMarker,
    AuditEvent,
    AuditRecord,
    Checkpoint,
    archive_marker_payload,
    chain_break,
    checkpoint_payload,
)
from vault.domain.audit_archive import ArchiveHeader
from vault.domain.audit_verification import AuditVerification, verify_audit_log
from vault.domain.errors import AuditUnavailable, DiskFull, VaultError
from vault.domain.models import Page
from vault.domain.ports import AuditFilter, AuditHead, AuditStore, SystemCrypto

log = logging.getLogger(__name__)

# Names the token's audit anchor among the checkpoints the verifier checks.
ANCHOR_KEY_LABEL: Final = "token-anchor"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
BROKEN_MESSAGE: Final = (
    "the audit chain no longer extends the token's anchor (the audit log was altered); "
    "audited calls are refused: run `vaultctl audit verify`"
)
# At most one error log line per this many seconds about refused calls: the operator needs to
# learn it, not a line per request.
_BROKEN_LOG_INTERVAL: Final = 60.0


class ChainBroken(Exception):
    """The stored chain does not lead from the token's anchor to the head to be signed."""

    def __init__(self, seq: int, detail: str) -> None:
        super().__init__(detail)
        self.seq = seq
        self.detail = detail


class ArchiveRefused(Exception):
    """Nothing was archived; the message says why. damaged: because the stored log does not
    verify (run `vaultctl audit verify`)."""

    def __init__(self, message: str, *, damaged: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.damaged = damaged


@dataclass(frozen=True, slots=True)
class ArchivedSegment:
    """One archive file's header and its records (a fresh stream on every call)."""

    header: ArchiveHeader
    records: Callable[[], Iterator[AuditRecord]]


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    header: ArchiveHeader
    deleted: int


@dataclass(frozen=True, slots=True)
class Reanchored:
    previous: tuple[int, bytes] | None  # the anchor the stored chain no longer extended
    broken_at: int  # where it stopped extending it
    checkpoint: Checkpoint  # signed over the new head, the record of the reset included


# The method name of the record `vaultctl audit reanchor` appends; no RPC has this name.
REANCHOR_METHOD: Final = "vaultctl/audit/reanchor"


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    every_records: int = 1000
    every_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A record to append, and what it counts against its credential: usage_count uses of
    usage_method (none when None). A batch call's record may stand for several items."""

    event: AuditEvent
    usage_method: str | None = None
    usage_count: int = 1


@dataclass(slots=True)
class _Pending:
    event: AuditEvent
    usage_method: str | None  # the method to count against the credential, if any
    usage_count: int = 1
    done: bool = False
    error: BaseException | None = field(default=None, repr=False)


# Groups a committing thread commits for others after its own, before it hands over.
_MAX_EXTRA_GROUPS: Final = 2


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(slots=True)
class _Waiter:
    """A thread waiting in record_all, by its last record; blocked on wake until the
    committer releases it: its records are done, or (lead) it is to commit the next group."""

    last: _Pending
    wake: threading.Lock = field(default_factory=_held_lock)
    lead: bool = False


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        crypto: SystemCrypto,
        policy: CheckpointPolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_waiting: Callable[[int], None] | None = None,
    ) -> None:
        """on_waiting(n) is told when n records start (n > 0) or stop (n < 0) waiting for
        their commit, for a gauge of the audit log's lag."""
        self._store = store
        self._on_waiting = on_waiting
        self._crypto = crypto
        self._policy = policy
        self._clock = clock
        self._mutex = threading.Lock()
        self._pending: list[_Pending] = []
        self._waiters: list[_Waiter] = []
        self._committing = False
        self._checkpointing = threading.Lock()
        self._broken: ChainBroken | None = None
        self._broken_logged = -_BROKEN_LOG_INTERVAL

    def __repr__(self) -> str:
        return "AuditLog()"

    @property
    def broken(self) -> bool:
        """True once the chain was found not to extend the token's anchor."""
        return self._broken is not None

    def record(
        self, event: AuditEvent, *, usage_method: str | None = None, inspection: bool = False
    ) -> None:
        """Append event and return once it is committed; AuditUnavailable if it cannot be, or
        if the chain no longer extends the token's anchor. inspection: an admin's read of the
        audit log itself, still served (and recorded) then, so the damage can be looked at."""
        self.record_all([AuditEntry(event, usage_method)], inspection=inspection)

    def record_all(self, entries: Sequence[AuditEntry], *, inspection: bool = False) -> None:
        """record() for several entries that commit together, in this order, in one
        transaction: a batch call's records."""
        if self._broken is not None and not inspection:
            self._refuse()
        if not entries:
            return
        items = [_Pending(e.event, e.usage_method, e.usage_count) for e in entries]
        item = items[-1]  # all of them join the same group: one is done when all are
        if self._on_waiting is not None:
            self._on_waiting(len(items))
        waiter: _Waiter | None = None
        with self._mutex:
            self._pending.extend(items)
            if self._committing:
                waiter = _Waiter(item)
                self._waiters.append(waiter)
            else:
                self._committing = True
                batch, self._pending = self._pending, []
        if waiter is not None:
            waiter.wake.acquire()
            if not waiter.lead:
                self._raise_for(item)
                return
            with self._mutex:
                batch, self._pending = self._pending, []
        head: AuditHead | None = None
        for extra in range(_MAX_EXTRA_GROUPS + 1):
            error: BaseException | None = None
            try:
                head = self._append(batch)
            except BaseException as exc:  # every waiter must learn the outcome, whatever it was
                error = exc
            if self._on_waiting is not None:
                self._on_waiting(-len(batch))
            with self._mutex:
                for pending in batch:
                    pending.done, pending.error = True, error
                waiting = []
                for other in self._waiters:
                    if other.last.done:
                        other.wake.release()
                    else:
                        waiting.append(other)
                self._waiters = waiting
                if not waiting:
                    self._committing = False
                    break
                # Whoever still waits has its records in self._pending, arrived during this
                # commit. This thread, awake already, commits them too, a few times at most
                # (its own answer waits meanwhile); then the first of them takes over.
                if extra < _MAX_EXTRA_GROUPS:
                    batch, self._pending = self._pending, []
                    continue
                leader = waiting.pop(0)
                leader.lead = True
                leader.wake.release()
        self._raise_for(item)
        if head is not None:
            self._checkpoint_if_due(head)
            if self._broken is not None and not inspection:
                self._refuse()

    def _refuse(self) -> None:
        broken = self._broken
        assert broken is not None
        now = time.monotonic()
        if now - self._broken_logged >= _BROKEN_LOG_INTERVAL:
            self._broken_logged = now
            # The seq only: record contents stay out of the server's log.
            log.error(
                "audit chain does not extend the token's anchor at seq %d; refusing audited "
                "calls until an operator recovers it (see `vaultctl audit verify`)",
                broken.seq,
            )
        raise AuditUnavailable(BROKEN_MESSAGE, metadata={"sequence": str(broken.seq)})

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
                usage[(event.credential_id, day, pending.usage_method)] += pending.usage_count
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
        if self._broken is not None:
            return
        now = self._clock()
        # A checkpoint beyond the head, or signed in the future, is none this vault made: a
        # row put there to put the next checkpoint (and its anchor check) off.
        impossible = head.checkpoint_seq > head.seq or (
            head.checkpoint_time is not None and head.checkpoint_time > now
        )
        if head.seq == head.checkpoint_seq and not impossible:
            return
        by_count = head.seq - head.checkpoint_seq >= self._policy.every_records
        by_time = (
            head.checkpoint_time is None
            or (now - head.checkpoint_time).total_seconds() >= self._policy.every_seconds
        )
        if not (by_count or by_time or impossible):
            return
        if not self._checkpointing.acquire(blocking=False):
            return  # another thread of this process is signing one already
        try:
            self.checkpoint(head.seq, head.hash, now)
        except ChainBroken as broken:
            self._broken = broken
        except Exception as error:
            # The records are committed; a missed checkpoint is retried with the next append.
            log.error("audit checkpoint failed: %s", type(error).__name__)
        finally:
            self._checkpointing.release()

    def checkpoint(self, head_seq: int, head_hash: bytes, now: datetime) -> Checkpoint | None:
        """Sign (head_seq, head_hash) and move the token's anchor to it, if the stored chain
        leads there from the anchor; None when the anchor is at or past head_seq already
        (another worker signed a later head) or another process is checkpointing or
        archiving. ChainBroken when the chain does not lead there:
        then nothing is signed or anchored.

        Reading the anchor, checking the chain, signing and moving the anchor happen under the
        store's checkpoint lock, so workers checkpointing at once cannot interleave them."""
        # Without waiting: an archive can hold the lock for minutes, and this runs on a
        # request's thread. The next append retries.
        with self._store.checkpoint_lock(wait=False) as held:
            if not held:
                return None
            anchor = self._crypto.audit_anchor()
            if anchor is not None and anchor[0] >= head_seq:
                # Usually another worker signed a later head. Unless the store ends before
                # the anchor: then records the token vouched for are gone (a truncated log,
                # or a database rolled back to an older copy).
                stored_seq, _ = self._store.audit_head()
                if stored_seq < anchor[0]:
                    raise ChainBroken(
                        stored_seq + 1, f"the records from {stored_seq + 1} on are missing"
                    )
                return None
            self._check_extends(anchor, head_seq, head_hash)
            payload = checkpoint_payload(head_seq, head_hash, now)
            signature, key_label = self._crypto.audit_sign(payload)
            checkpoint = Checkpoint(head_seq, head_hash, now, signature, key_label)
            self._store.add_checkpoint(checkpoint)
            self._crypto.record_audit_anchor(head_seq, head_hash)
            return checkpoint

    def _check_extends(self, anchor: tuple[int, bytes] | None, head_seq: int, head: bytes) -> None:
        start_seq, start_hash = (0, GENESIS_HASH) if anchor is None else anchor
        base = self._archive_base()
        if base is not None and base.through_seq >= start_seq:
            # The anchored record itself was archived: the signed marker stands in for it.
            if (base.through_seq, base.through_hash) != (start_seq, start_hash) or (
                not self._marker_signed(base)
            ):
                raise ChainBroken(
                    start_seq, f"the archive marker at {base.through_seq} is not the anchor"
                )
            records = self._store.audit_records(after=start_seq)
        else:
            records = self._store.audit_records(after=max(start_seq - 1, 0))
            if start_seq > 0:
                anchored = next(records, None)
                if anchored is None or anchored.seq != start_seq or anchored.hash != start_hash:
                    raise ChainBroken(
                        start_seq, f"record {start_seq} is not the record the token anchored"
                    )
        broken = chain_break(start_seq, start_hash, records, head_seq, head)
        if broken is not None:
            raise ChainBroken(*broken)

    def _archive_base(self) -> ArchiveMarker | None:
        markers = self._store.audit_archive_markers()
        return markers[-1] if markers else None

    def _marker_signed(self, marker: ArchiveMarker) -> bool:
        payload = archive_marker_payload(
            marker.through_seq, marker.through_hash, marker.archived_at
        )
        return self._crypto.audit_verify(payload, marker.signature, marker.key_label)

    # -- recovery ----------------------------------------------------------------------------

    def reanchor(self, source: str, now: datetime | None = None) -> Reanchored | None:
        """Accept the stored chain as it is now: append a record of the reset (naming the old
        anchor), sign a checkpoint over the new head and move the token's anchor there, even
        backwards. None, and nothing done, when the chain extends the anchor already.

        For the operator, once the damage is recorded elsewhere: checkpoints the store still
        holds over rewritten records keep being reported by verify, and the reset record
        says when the log was accepted again. Workers refusing calls resume after a restart."""
        moment = self._clock() if now is None else now
        with self._store.checkpoint_lock():
            anchor = self._crypto.audit_anchor()
            head_seq, head_hash = self._store.audit_head()
            try:
                if anchor is not None and anchor[0] > head_seq:
                    raise ChainBroken(head_seq + 1, "records after the stored head are missing")
                self._check_extends(anchor, head_seq, head_hash)
                return None
            except ChainBroken as error:
                broken = error
            old_seq, old_hash = (0, GENESIS_HASH) if anchor is None else anchor
            event = AuditEvent(
                occurred_at=moment,
                request_id=f"reanchor-{int(moment.timestamp() * 1_000_000)}",
                credential_id="",
                account="",
                method=REANCHOR_METHOD,
                resource=f"audit-anchor/{old_seq}/{old_hash.hex()}",
                outcome="OK",
                reason="ANCHOR_RESET",
                latency_us=0,
                source=source,
            )
            head = self._store.append_audit([event], {}, {})
            payload = checkpoint_payload(head.seq, head.hash, moment)
            signature, key_label = self._crypto.audit_sign(payload)
            checkpoint = Checkpoint(head.seq, head.hash, moment, signature, key_label)
            self._store.add_checkpoint(checkpoint)
            self._crypto.record_audit_anchor(head.seq, head.hash, reset=True)
        log.warning(
            "audit anchor reset from seq %d to seq %d by the operator (chain broken at %d)",
            old_seq,
            head.seq,
            broken.seq,
        )
        return Reanchored(anchor, broken.seq, checkpoint)

    # -- archiving ---------------------------------------------------------------------------

    def archive(
        self,
        before: datetime,
        write: Callable[[ArchiveHeader, Iterator[AuditRecord], int], None],
        now: datetime | None = None,
    ) -> ArchiveResult | None:
        """Move the records up to the newest signed checkpoint whose record is older than
        before into an archive: write(header, records, count) must store them durably (and
        return only then); the records and checkpoints are deleted from the store afterwards,
        leaving a signed marker of the segment's end. None when no such checkpoint follows the
        last archive. ArchiveRefused when the stored chain does not verify from the last
        archive to the token's anchor: a damaged log is not archived.

        Under the checkpoint lock: no checkpoint can move the anchor meanwhile."""
        moment = self._clock() if now is None else now
        with self._store.checkpoint_lock():
            anchor = self._crypto.audit_anchor()
            if anchor is None:
                return None
            base = self._archive_base()
            if base is not None and not self._marker_signed(base):
                raise ArchiveRefused(
                    f"the archive marker at seq {base.through_seq} has no valid signature",
                    damaged=True,
                )
            start_seq, start_hash = (
                (0, GENESIS_HASH) if base is None else (base.through_seq, base.through_hash)
            )
            anchor_seq, anchor_hash = anchor
            candidates = {
                c.head_seq: c
                for c in self._store.audit_checkpoints()
                if start_seq < c.head_seq <= anchor_seq
            }
            times: dict[int, datetime] = {}

            def noting_times(records: Iterator[AuditRecord]) -> Iterator[AuditRecord]:
                for record in records:
                    candidate = candidates.get(record.seq)
                    # A checkpoint over a record since rewritten is no boundary.
                    if candidate is not None and candidate.head_hash == record.hash:
                        times[record.seq] = record.event.occurred_at
                    yield record

            # The whole segment up to the anchor is checked first: what is archived must be
            # the chain the anchor vouches for.
            broken = chain_break(
                start_seq,
                start_hash,
                noting_times(self._store.audit_records(after=start_seq)),
                anchor_seq,
                anchor_hash,
            )
            if broken is not None:
                raise ArchiveRefused(
                    f"the audit log does not verify at seq {broken[0]}: {broken[1]}",
                    damaged=True,
                )
            boundary = self._boundary(candidates, times, before)
            if boundary is None:
                return None
            count = boundary.head_seq - start_seq
            payload = archive_marker_payload(boundary.head_seq, boundary.head_hash, moment)
            signature, key_label = self._crypto.audit_sign(payload)
            end = ArchiveMarker(
                boundary.head_seq, boundary.head_hash, moment, count, signature, key_label
            )
            header = ArchiveHeader(
                start=base,
                end=end,
                checkpoints=tuple(
                    c for seq, c in sorted(candidates.items()) if seq <= boundary.head_seq
                ),
            )
            write(header, self._segment(start_seq, boundary.head_seq), count)
            deleted = self._store.archive_audit(end)
        log.info(
            "archived audit records %d to %d (%d deleted from the store)",
            header.first_seq,
            header.last_seq,
            deleted,
        )
        return ArchiveResult(header, deleted)

    def _boundary(
        self, candidates: dict[int, Checkpoint], times: dict[int, datetime], before: datetime
    ) -> Checkpoint | None:
        for seq in sorted(candidates, reverse=True):
            checkpoint = candidates[seq]
            occurred = times.get(seq)
            if occurred is None or occurred >= before:
                continue
            signed = self._crypto.audit_verify(
                checkpoint_payload(checkpoint.head_seq, checkpoint.head_hash, checkpoint.signed_at),
                checkpoint.signature,
                checkpoint.key_label,
            )
            if signed:
                return checkpoint
        return None

    def _segment(self, start_seq: int, end_seq: int) -> Iterator[AuditRecord]:
        for record in self._store.audit_records(after=start_seq):
            if record.seq > end_seq:
                return
            yield record

    # -- reading -----------------------------------------------------------------------------

    def list_events(
        self, audit_filter: AuditFilter, page_size: int, page_token: str
    ) -> Page[AuditRecord]:
        return self._store.list_audit_events(audit_filter, page_size, page_token)

    def verify(self, archived: Sequence[ArchivedSegment] = ()) -> AuditVerification:
        """Verify the stored log; with archived segments (oldest first), those and the store
        as one chain, from the first segment's start."""
        started = time.monotonic()
        checkpoints = self._store.audit_checkpoints()
        markers = self._store.audit_archive_markers()
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

        records: Iterable[AuditRecord] = self._store.audit_records()
        start = markers[-1] if markers else None
        checked_markers: list[ArchiveMarker] = []
        if archived:
            start = archived[0].header.start
            for segment in archived:
                checkpoints.extend(segment.header.checkpoints)
                checked_markers.append(segment.header.end)
            # The store's markers of archives not given are checked like the given ones: a
            # store whose marker no archive leads to shows as records missing before it.
            given = {m.through_seq for m in checked_markers}
            checked_markers += [m for m in markers if m.through_seq not in given]
            records = itertools.chain(
                *(segment.records() for segment in archived), self._store.audit_records()
            )
        result = verify_audit_log(
            records, checkpoints, verify_signature, start=start, markers=checked_markers
        )
        log.info(
            "audit log verified: %d records, %d checkpoints, %d findings in %.1f s",
            result.records_checked,
            result.checkpoints_checked,
            len(result.findings),
            time.monotonic() - started,
        )
        return result
