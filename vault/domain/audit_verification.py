"""Verifying a stored audit log against its hash chain and signed checkpoints.

How `verify_audit_log` classifies what it finds (records are walked in stored seq order):

* The genuine order is rebuilt by following prev_hash links from the last accepted record,
  looking a bounded window of rows ahead (rows further apart than the window are still
  reported, at the right seq, but possibly as another kind). Each accepted record must hash
  correctly at the seq the chain gives it.
* MODIFIED: the chain's next link does not hash to its stored hash (a column was updated); or
  it names the wrong predecessor (its prev_hash column was changed); or a record and the next
  row both hash correctly but do not link: the record was rewritten together with its own
  hash, and it is reported rather than its successor.
* DELETED: nothing links to the last accepted record and the next stored row starts after a
  gap in seq, or hashes correctly only at a later seq (rows removed and the rest renumbered).
  Reported at the first missing seq.
* INSERTED: a row that is not on the chain: it forks from a record that already has its
  successor (when two rows claim the same predecessor, the one the longer chain continues
  from is genuine), or it names a predecessor that does not exist while the chain continues
  around it, or its seq is not an integer.
* REORDERED: the next stored row is not the chain's next link and its prev_hash names a row
  that is still ahead in stored order: it is genuine content in the wrong place (swapped seq
  values or contents). Reported at the first stored seq out of place; the rows are still
  checked when the chain reaches them, so one swap gives one finding.
* Checkpoints: BAD_SIGNATURE when the signature does not verify (the checkpoint is then not
  used); CHECKPOINT_MISMATCH when no stored row at head_seq has the signed head hash;
  TRUNCATED (at the first missing seq) when a valid checkpoint names a seq beyond the last row.
* Archives: a log whose oldest records were archived starts at a signed marker instead of the
  genesis hash; the first stored record must link to it. A marker whose signature does not
  verify is BAD_SIGNATURE at its seq (the chain is still checked from it). Markers of later
  archives, when archive files are verified together with the store, are checked like
  checkpoints: the record at their seq must have their hash.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from vault.domain.audit import (
    GENESIS_HASH,
    ArchiveMarker,
    AuditRecord,
    Checkpoint,
    archive_marker_payload,
    checkpoint_payload,
    seq_hasher,
)

# Rows read ahead of the chain when looking for a record's successor: a swap or insertion
# further apart than this is still reported, but possibly as a different kind.
_WINDOW: Final = 256
# Rows kept in memory at most; the oldest row the chain has not reached is then given up on.
_MAX_SPAN: Final = 4 * _WINDOW
# Hashes of rows already settled, to tell a fork from a link to nowhere or to a record the
# chain left behind.
_LOOKBEHIND: Final = 4 * _WINDOW
# How many renumbered-away rows a resumed chain is tried against.
_MAX_RENUMBER: Final = 16
MAX_FINDINGS: Final = 100


class FindingKind(StrEnum):
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    INSERTED = "INSERTED"
    REORDERED = "REORDERED"
    CHECKPOINT_MISMATCH = "CHECKPOINT_MISMATCH"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    TRUNCATED = "TRUNCATED"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    seq: int
    detail: str


@dataclass(frozen=True, slots=True)
class AuditVerification:
    records_checked: int
    checkpoints_checked: int
    last_seq: int
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        return self.findings[0] if self.findings else None


# Findings at one stored position: a gap before the row, then the row, then a checkpoint on it.
_BEFORE: Final = 0
_AT: Final = 1
_CHECKPOINT: Final = 2


class _Findings:
    """Keeps the `limit` findings earliest in stored order; they may be detected out of order
    because the chain is followed ahead of the row being examined."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._heap: list[tuple[int, int, int, Finding]] = []
        self._counter = itertools.count()
        self._last: tuple[int, FindingKind, int] | None = None

    def add(self, position: int, phase: int, kind: FindingKind, seq: int, detail: str) -> None:
        # A rewritten record can be noticed from both of its links; say so once.
        if self._last == (position, kind, seq):
            return
        self._last = (position, kind, seq)
        # Negated keys: heapq is a min-heap and the latest finding is the one to give up.
        item = (-position, -phase, -next(self._counter), Finding(kind, seq, detail))
        if len(self._heap) < self._limit:
            heapq.heappush(self._heap, item)
        elif item[:3] > self._heap[0][:3]:
            heapq.heapreplace(self._heap, item)

    def ordered(self) -> tuple[Finding, ...]:
        return tuple(
            item[3] for item in sorted(self._heap, key=lambda item: item[:3], reverse=True)
        )


@dataclass(slots=True)
class _Row:
    position: int
    seq: int
    prev_hash: bytes
    hash: bytes
    hasher: Callable[[int], bytes | None]
    reported: bool = False


def _make_row(position: int, record: AuditRecord) -> _Row:
    prev_hash = _as_hash(record.prev_hash, position, b"prev")
    stored = _as_hash(record.hash, position, b"hash")
    hasher: Callable[[int], bytes | None]
    try:
        hasher = seq_hasher(prev_hash, record.event)
    except (AttributeError, TypeError, ValueError):
        # A column an attacker set to NULL or to the wrong type: the row cannot hash correctly.
        hasher = _unhashable
    return _Row(position, record.seq, prev_hash, stored, hasher)


def _unhashable(seq: int) -> bytes | None:
    return None


def _as_hash(value: object, position: int, which: bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    # Unique per row and not 32 bytes long, so it never links to anything.
    return b"invalid:" + which + b":" + str(position).encode()


@dataclass(frozen=True, slots=True)
class _Anchor:
    """The last record accepted onto the chain: its stored hash, chain seq and stored seq."""

    hash: bytes
    chain_seq: int
    seq: int
    position: int


_START: Final = _Anchor(GENESIS_HASH, 0, 0, -1)


class _PrevState(StrEnum):
    AHEAD = "ahead"  # a row not yet reached by the chain
    SETTLED = "settled"  # a row already on the chain or already rejected
    UNKNOWN = "unknown"


class _ChainWalker:
    def __init__(
        self,
        records: Iterator[AuditRecord],
        findings: _Findings,
        checkpoints: _CheckpointTracker,
        start: _Anchor = _START,
    ) -> None:
        self._records = records
        self._findings = findings
        self._checkpoints = checkpoints
        self._exhausted = False
        self._next_position = 0
        self._head_position = 0
        self._pending: dict[int, _Row] = {}
        self._by_prev: dict[bytes, list[int]] = {}
        self._by_hash: dict[bytes, list[int]] = {}
        # Hash of each settled row -> its chain seq while no accepted row follows it yet, else
        # None (it has its successor, or it was rejected).
        self._settled: OrderedDict[bytes, int | None] = OrderedDict({start.hash: start.chain_seq})
        self._start = start
        self._anchor = start
        # Stored seq minus chain seq: nonzero once rows were renumbered around an insertion or
        # deletion, which is reported once there and then expected for the rows after it.
        self._offset = 0
        self._shift_explained = False
        self.records_checked = 0
        self.last_seq = start.seq

    def run(self) -> None:
        while True:
            self._fill()
            if not self._pending:
                return
            head = self._pending[self._head_position]
            successors = self._by_prev.get(self._anchor.hash, [])
            if len(successors) > 1:
                self._resolve_fork(successors)
            elif successors:
                successor = self._pending[successors[0]]
                if successor is head:
                    self._accept(head, in_order=not head.reported)
                elif head.reported:
                    self._accept(successor, in_order=False)
                else:
                    self._misplaced(head, successor)
            else:
                self._broken(head)

    # Reading rows

    def _fill(self) -> None:
        horizon = max(self._head_position, self._anchor.position) + _WINDOW
        while not self._exhausted and self._next_position <= horizon:
            record = next(self._records, None)
            if record is None:
                self._exhausted = True
                break
            self._read(record)
        while self._pending and self._next_position - self._head_position > _MAX_SPAN:
            head = self._pending[self._head_position]
            if not head.reported:
                self._report(
                    head.position,
                    _AT,
                    FindingKind.INSERTED,
                    head.seq,
                    f"record {head.seq} is not linked from any record near it",
                )
            self._drop(head)

    def _read(self, record: AuditRecord) -> None:
        position = self._next_position
        self._next_position += 1
        self.records_checked += 1
        if not isinstance(record.seq, int):
            self._report(
                position,
                _AT,
                FindingKind.INSERTED,
                _int_or_zero(record.seq),
                f"a record was stored with the non-integer seq {record.seq!r}",
            )
            self._advance_head()
            return
        self.last_seq = max(self.last_seq, record.seq)
        row = _make_row(position, record)
        self._checkpoints.observe(position, row.seq, row.hash)
        self._pending[position] = row
        self._by_prev.setdefault(row.prev_hash, []).append(position)
        self._by_hash.setdefault(row.hash, []).append(position)

    # Settling rows

    def _remove(self, row: _Row, chain_seq: int | None = None) -> None:
        del self._pending[row.position]
        _discard(self._by_prev, row.prev_hash, row.position)
        _discard(self._by_hash, row.hash, row.position)
        if chain_seq is not None and row.prev_hash in self._settled:
            self._settled[row.prev_hash] = None
        self._settled[row.hash] = chain_seq
        self._settled.move_to_end(row.hash)
        if len(self._settled) > _LOOKBEHIND:
            self._settled.popitem(last=False)
        self._advance_head()

    def _advance_head(self) -> None:
        while self._head_position < self._next_position and (
            self._head_position not in self._pending
        ):
            self._head_position += 1

    def _drop(self, row: _Row) -> None:
        self._remove(row)
        self._shift_explained = True

    def _accept(self, row: _Row, *, in_order: bool, chain_seq: int | None = None) -> None:
        """Put row on the chain after the anchor, checking it hashes at its place."""
        expected = self._anchor.chain_seq + 1 if chain_seq is None else chain_seq
        if row.hasher(expected) == row.hash:
            if in_order and row.seq - expected != self._offset and not self._shift_explained:
                self._report(
                    row.position,
                    _AT,
                    FindingKind.MODIFIED,
                    row.seq,
                    f"record stored as seq {row.seq} holds the contents of seq "
                    f"{expected + self._offset}",
                )
        elif row.seq != expected and row.hasher(row.seq) == row.hash:
            # Self-consistent at its stored seq: an earlier resynchronisation guessed the chain
            # seq wrong; trust the row rather than report it.
            expected = row.seq
        else:
            self._report(
                row.position,
                _AT,
                FindingKind.MODIFIED,
                row.seq,
                f"record {row.seq} does not match its stored hash",
            )
        if in_order:
            self._offset = row.seq - expected
            self._shift_explained = False
        self._remove(row, expected)
        self._anchor = _Anchor(row.hash, expected, row.seq, row.position)

    # Classifying deviations

    def _prev_state(self, prev_hash: bytes) -> _PrevState:
        if prev_hash in self._by_hash:
            return _PrevState.AHEAD
        if prev_hash == self._start.hash or prev_hash in self._settled:
            return _PrevState.SETTLED
        return _PrevState.UNKNOWN

    def _resolve_fork(self, successors: list[int]) -> None:
        """Several rows claim the anchor as predecessor: keep the one that hashes at the next
        chain seq and that the longest chain continues from."""
        rows = [self._pending[position] for position in successors]
        expected = self._anchor.chain_seq + 1
        fits = {row.position: row.hasher(expected) == row.hash for row in rows}
        genuine = max(rows, key=lambda row: (fits[row.position], self._depth(row), -row.position))
        for row in rows:
            if row is genuine:
                continue
            if fits[row.position] or not self._by_prev.get(row.hash):
                if not row.reported:
                    self._report(
                        row.position,
                        _AT,
                        FindingKind.INSERTED,
                        row.seq,
                        f"record {row.seq} forks the chain: record {genuine.seq} "
                        "links to the same predecessor",
                    )
                self._drop(row)
            # Otherwise a row from further on whose prev_hash column now names the anchor: it
            # is reported when the walk reaches it.
        in_order = genuine.position == self._head_position and not genuine.reported
        self._accept(genuine, in_order=in_order)

    def _depth(self, row: _Row) -> int:
        depth = 0
        current = row.hash
        while depth < _WINDOW and (children := self._by_prev.get(current)):
            current = self._pending[children[0]].hash
            depth += 1
        return depth

    def _misplaced(self, head: _Row, successor: _Row) -> None:
        """The chain goes on at a later row than head."""
        if self._prev_state(head.prev_hash) is _PrevState.AHEAD:
            head.reported = True
            self._report(
                head.position,
                _AT,
                FindingKind.REORDERED,
                head.seq,
                f"record {head.seq} is out of order: it follows a record stored after it",
            )
            self._accept(successor, in_order=False)
        else:
            self._report(
                head.position,
                _AT,
                FindingKind.INSERTED,
                head.seq,
                f"record {head.seq} is not on the chain, which continues at record {successor.seq}",
            )
            self._drop(head)

    def _broken(self, head: _Row) -> None:
        """No row links to the anchor: rows were removed, or a link was rewritten."""
        anchor = self._anchor
        missing = anchor.chain_seq + 1 + self._offset
        state = self._prev_state(head.prev_hash)
        expected = anchor.chain_seq + 1
        left_behind = self._settled.get(head.prev_hash)
        if state is _PrevState.SETTLED and left_behind is not None:
            self._continue_from(head, left_behind)
            return
        if state is _PrevState.SETTLED and head.seq == missing and self._by_prev.get(head.hash):
            # In place and continued by later rows: the anchor's successor with its prev_hash
            # column rewritten, not an extra row.
            self._report(
                head.position,
                _AT,
                FindingKind.MODIFIED,
                head.seq,
                f"record {head.seq} does not chain to the record before it",
            )
            if head.hasher(expected) == head.hash or head.hasher(head.seq) == head.hash:
                self._accept(head, in_order=True)
            else:
                self._accept_unverified(head, expected)
            return
        if state is _PrevState.SETTLED:
            if not head.reported:
                self._report(
                    head.position,
                    _AT,
                    FindingKind.INSERTED,
                    head.seq,
                    f"record {head.seq} forks from a record that already has its successor",
                )
            self._drop(head)
            return
        if state is _PrevState.AHEAD:
            # The chain resumes among rows that are also out of order: resume at the earliest
            # ancestor of head still ahead of the chain.
            root = self._root(head)
            self._deleted(head.position, missing, root.seq)
            if root is not head and not head.reported:
                head.reported = True
                self._report(
                    head.position,
                    _AT,
                    FindingKind.REORDERED,
                    head.seq,
                    f"record {head.seq} is out of order: it follows a record stored after it",
                )
            self._resume(root, in_order=False)
            return
        if head.seq > missing:
            self._deleted(head.position, missing, head.seq)
            self._resume(head, in_order=True)
            return
        if head.seq == missing and head.hasher(expected) == head.hash:
            if anchor is self._start:
                self._report(
                    head.position,
                    _AT,
                    FindingKind.MODIFIED,
                    head.seq,
                    f"record {head.seq} does not start the chain",
                )
            else:
                self._report(
                    anchor.position,
                    _AT,
                    FindingKind.MODIFIED,
                    anchor.seq,
                    f"record {anchor.seq} was rewritten: its hash is not the one "
                    f"record {head.seq} chains to",
                )
            self._accept(head, in_order=True)
            return
        if head.seq == missing:
            for skipped in range(1, _MAX_RENUMBER + 1):
                if head.hasher(expected + skipped) == head.hash:
                    self._deleted(head.position, missing, None)
                    self._shift_explained = True
                    self._accept(head, in_order=True, chain_seq=expected + skipped)
                    return
            self._report(
                head.position,
                _AT,
                FindingKind.MODIFIED,
                head.seq,
                f"record {head.seq} does not chain to the record before it",
            )
            self._accept_unverified(head, expected)
            return
        # A seq at or below the last accepted one, linked to nothing.
        if head.hasher(expected) == head.hash:
            self._report(
                head.position,
                _AT,
                FindingKind.MODIFIED,
                head.seq,
                f"record stored as seq {head.seq} belongs at seq {missing}",
            )
            self._shift_explained = True
            self._accept(head, in_order=True)
        else:
            self._report(
                head.position,
                _AT,
                FindingKind.INSERTED,
                head.seq,
                f"record {head.seq} repeats a seq and is linked to no record",
            )
            self._drop(head)

    def _continue_from(self, head: _Row, left_behind: int) -> None:
        """Head follows a record the chain accepted out of step and then moved on from (after
        a row moved from beyond the look-ahead window): pick the chain up again there. The
        step that left that record behind was reported when it happened."""
        self._shift_explained = True
        for chain_seq in (head.seq - self._offset, head.seq):
            if head.hasher(chain_seq) == head.hash:
                self._accept(head, in_order=True, chain_seq=chain_seq)
                return
        if head.hasher(left_behind + 1) == head.hash:
            self._report(
                head.position,
                _AT,
                FindingKind.REORDERED,
                head.seq,
                f"record stored as seq {head.seq} holds the contents of seq {left_behind + 1}",
            )
            self._accept(head, in_order=False, chain_seq=left_behind + 1)
            return
        self._report(
            head.position,
            _AT,
            FindingKind.MODIFIED,
            head.seq,
            f"record {head.seq} does not match its stored hash",
        )
        self._accept_unverified(head, head.seq - self._offset)

    def _root(self, row: _Row) -> _Row:
        current = row
        for _ in range(_MAX_SPAN):
            ahead = self._by_hash.get(current.prev_hash)
            if not ahead:
                break
            current = self._pending[ahead[0]]
            if current is row:
                break
        return current

    def _deleted(self, position: int, missing: int, resumes_at: int | None) -> None:
        if resumes_at is not None and resumes_at > missing + 1:
            detail = f"records {missing} to {resumes_at - 1} are missing"
        elif resumes_at is not None and resumes_at == missing + 1:
            detail = f"record {missing} is missing"
        else:
            detail = f"records from seq {missing} are missing and later records renumbered"
        self._report(position, _BEFORE, FindingKind.DELETED, missing, detail)

    def _resume(self, row: _Row, *, in_order: bool) -> None:
        """Restart the chain at row after a gap, at the seq it hashes correctly with."""
        self._shift_explained = True
        base = self._anchor.chain_seq + 1
        candidates = [row.seq - self._offset, row.seq]
        candidates += [base + skipped for skipped in range(_MAX_RENUMBER + 1)]
        for candidate in candidates:
            if row.hasher(candidate) == row.hash:
                self._accept(row, in_order=in_order, chain_seq=candidate)
                return
        self._report(
            row.position,
            _AT,
            FindingKind.MODIFIED,
            row.seq,
            f"record {row.seq} does not match its stored hash",
        )
        self._accept_unverified(row, row.seq - self._offset)

    def _accept_unverified(self, row: _Row, chain_seq: int) -> None:
        self._remove(row, chain_seq)
        self._anchor = _Anchor(row.hash, chain_seq, row.seq, row.position)

    def _report(self, position: int, phase: int, kind: FindingKind, seq: int, detail: str) -> None:
        self._findings.add(position, phase, kind, seq, detail)


def _int_or_zero(value: object) -> int:
    if isinstance(value, float | str):
        try:
            return int(float(value))
        except (ValueError, OverflowError):
            return 0
    return 0


def _discard(index: dict[bytes, list[int]], key: bytes, position: int) -> None:
    positions = index[key]
    positions.remove(position)
    if not positions:
        del index[key]


def marker_checkpoint(marker: ArchiveMarker) -> Checkpoint:
    """A marker as a checkpoint over its seq and hash (its signature is over another payload:
    see _marker_signed)."""
    return Checkpoint(
        marker.through_seq,
        marker.through_hash,
        marker.archived_at,
        marker.signature,
        marker.key_label,
    )


def _marker_signed(
    marker: ArchiveMarker, verify_signature: Callable[[bytes, bytes, str], bool]
) -> bool:
    try:
        payload = archive_marker_payload(
            marker.through_seq, marker.through_hash, marker.archived_at
        )
    except (AttributeError, TypeError, ValueError):
        return False
    return bool(verify_signature(payload, marker.signature, marker.key_label))


@dataclass(slots=True)
class _OpenCheckpoint:
    checkpoint: Checkpoint
    signed: bool
    position: int | None = None
    matched: bool = False


class _CheckpointTracker:
    """Compares each checkpoint with the stored rows at its head_seq as they stream past."""

    def __init__(self, checkpoints: Iterable[tuple[Checkpoint, bool]], findings: _Findings) -> None:
        """checkpoints: each with whether its signature is valid."""
        self._findings = findings
        self._queue: deque[_OpenCheckpoint] = deque()
        for checkpoint, signed in sorted(checkpoints, key=lambda item: item[0].head_seq):
            self._queue.append(_OpenCheckpoint(checkpoint, signed))
        self.count = len(self._queue)

    def observe(self, position: int, seq: int, stored_hash: bytes) -> None:
        while self._queue and self._queue[0].checkpoint.head_seq < seq:
            self._close(self._queue.popleft(), position)
        # Several checkpoints can name one seq (a checkpoint, the marker of an archive ending
        # there, the token's anchor), all at the front of the queue.
        for current in self._queue:
            if current.checkpoint.head_seq != seq:
                break
            if current.position is None:
                current.position = position
            # Several rows can share a seq after an insertion; the genuine one must match.
            current.matched = current.matched or stored_hash == current.checkpoint.head_hash

    def finish(self, end_position: int, last_seq: int) -> None:
        truncated_to = 0
        while self._queue:
            current = self._queue.popleft()
            head_seq = current.checkpoint.head_seq
            if head_seq <= last_seq or current.position is not None or not current.signed:
                self._close(current, end_position)
            else:
                truncated_to = head_seq
        if truncated_to:
            self._findings.add(
                end_position,
                _CHECKPOINT,
                FindingKind.TRUNCATED,
                last_seq + 1,
                f"records from seq {last_seq + 1} are missing: a signed "
                f"checkpoint covers seq {truncated_to}",
            )

    def _close(self, current: _OpenCheckpoint, position: int) -> None:
        checkpoint = current.checkpoint
        at = position if current.position is None else current.position
        if not current.signed:
            self._findings.add(
                at,
                _CHECKPOINT,
                FindingKind.BAD_SIGNATURE,
                checkpoint.head_seq,
                f"checkpoint at seq {checkpoint.head_seq} has no valid signature "
                f"from audit key {checkpoint.key_label!r}",
            )
        elif current.position is None:
            self._findings.add(
                at,
                _CHECKPOINT,
                FindingKind.CHECKPOINT_MISMATCH,
                checkpoint.head_seq,
                f"no stored record has seq {checkpoint.head_seq}, which a signed checkpoint covers",
            )
        elif not current.matched:
            self._findings.add(
                at,
                _CHECKPOINT,
                FindingKind.CHECKPOINT_MISMATCH,
                checkpoint.head_seq,
                f"record {checkpoint.head_seq} differs from the signed checkpoint; "
                "the chain up to it was rewritten",
            )


def _signature_valid(
    checkpoint: Checkpoint, verify_signature: Callable[[bytes, bytes, str], bool]
) -> bool:
    try:
        payload = checkpoint_payload(
            checkpoint.head_seq, checkpoint.head_hash, checkpoint.signed_at
        )
    except (AttributeError, TypeError, ValueError):
        return False
    return bool(verify_signature(payload, checkpoint.signature, checkpoint.key_label))


def verify_audit_log(
    records: Iterable[AuditRecord],
    checkpoints: Iterable[Checkpoint],
    verify_signature: Callable[[bytes, bytes, str], bool],
    *,
    start: ArchiveMarker | None = None,
    markers: Iterable[ArchiveMarker] = (),
) -> AuditVerification:
    """Check the stored log against its chain and signed checkpoints.

    records: as stored, in ascending seq order; consumed as a stream with a bounded window.
    checkpoints: held in memory (there are few). verify_signature(payload, signature,
    key_label) says whether the token's audit key named key_label signed payload; an exception
    it raises propagates, since a verifier that cannot reach its key proves nothing either way.
    start: the marker of the newest archive, when the oldest records were archived: the chain
    starts there instead of at the genesis hash, and checkpoints before it are not checked.
    markers: markers of archives whose records are among records, checked like checkpoints.
    """
    findings = _Findings(MAX_FINDINGS)
    begin = _START
    signed: list[tuple[Checkpoint, bool]] = []
    if start is not None:
        begin = _Anchor(start.through_hash, start.through_seq, start.through_seq, -1)
        if not _marker_signed(start, verify_signature):
            findings.add(
                -1,
                _CHECKPOINT,
                FindingKind.BAD_SIGNATURE,
                start.through_seq,
                f"the archive marker at seq {start.through_seq} has no valid signature "
                f"from audit key {start.key_label!r}",
            )
    for checkpoint in checkpoints:
        if checkpoint.head_seq < begin.seq:
            continue  # its records were archived; verified with the archive file
        if checkpoint.head_seq == begin.seq and begin is not _START:
            if checkpoint.head_hash != begin.hash:
                findings.add(
                    -1,
                    _CHECKPOINT,
                    FindingKind.CHECKPOINT_MISMATCH,
                    begin.seq,
                    f"the archive marker at seq {begin.seq} differs from the signed "
                    "checkpoint there",
                )
            continue
        signed.append((checkpoint, _signature_valid(checkpoint, verify_signature)))
    for marker in markers:
        if marker.through_seq > begin.seq:
            signed.append((marker_checkpoint(marker), _marker_signed(marker, verify_signature)))
    tracker = _CheckpointTracker(signed, findings)
    walker = _ChainWalker(iter(records), findings, tracker, begin)
    walker.run()
    tracker.finish(walker.records_checked, walker.last_seq)
    return AuditVerification(
        records_checked=walker.records_checked,
        checkpoints_checked=tracker.count,
        last_seq=walker.last_seq,
        findings=findings.ordered(),
    )
