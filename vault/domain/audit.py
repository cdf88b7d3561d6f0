"""Tamper-evident audit log: a hash chain over request records plus HSM-signed checkpoints.

Every record stores the hash of the record before it, so changing, removing, adding or moving
a row in the SQL store breaks a link or a hash. Anyone holding the database can still recompute
the whole chain after tampering (the hash is unkeyed), which is why a checkpoint over the chain
head is signed from time to time by an audit key that never leaves the token: a recomputed
chain no longer matches the last signed head. Rows appended after the last checkpoint are only
as trustworthy as the database until the next checkpoint covers them.

`vault.domain.audit_verification` checks a stored log against both.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from vault.domain.models import epoch_micros

GENESIS_HASH: Final = bytes(32)

_RECORD_TAG: Final = b"vault-audit-v1"
_CHECKPOINT_TAG: Final = b"vault-audit-checkpoint-v1"
_LENGTH: Final = struct.Struct(">I")


class AuditOutcome:
    """Outcome of an audited request: "OK" or the name of the gRPC status code returned.

    Kept as plain strings in `AuditEvent.outcome` so the domain layer needs no gRPC import.
    """

    OK: Final = "OK"
    NAMES: Final = frozenset(
        {
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        }
    )

    @classmethod
    def is_known(cls, value: str) -> bool:
        return value in cls.NAMES


@dataclass(frozen=True, slots=True)
class AuditEvent:
    occurred_at: datetime
    request_id: str
    credential_id: str
    account: str
    method: str
    resource: str
    outcome: str
    reason: str
    latency_us: int
    source: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    event: AuditEvent
    prev_hash: bytes
    hash: bytes


def _field(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


def _int(value: int) -> bytes:
    # Minimal two's complement: no range limit, and the length prefix keeps it unambiguous.
    return _field(value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


_RECORD_TAG_FIELD: Final = _field(_RECORD_TAG)


def _record_encoding(prev_hash: bytes, event: AuditEvent) -> bytes:
    """Every field of record_hash's encoding but seq, as one buffer: one join and one hash
    update instead of a dozen (every request hashes its record on append, and again when a
    checkpoint verifies it)."""
    pack = _LENGTH.pack
    parts = [
        _RECORD_TAG_FIELD,
        pack(len(prev_hash)),
        prev_hash,
        _int(epoch_micros(event.occurred_at)),
    ]
    for text in (
        event.request_id,
        event.credential_id,
        event.account,
        event.method,
        event.resource,
        event.outcome,
        event.reason,
    ):
        data = text.encode("utf-8")
        parts += (pack(len(data)), data)
    source = event.source.encode("utf-8")
    parts += (_int(event.latency_us), pack(len(source)), source)
    return b"".join(parts)


def seq_hasher(prev_hash: bytes, event: AuditEvent) -> Callable[[int], bytes]:
    """Hash of the record at any seq: seq is encoded last, so trying one record against several
    candidate seqs while diagnosing tampering rehashes only the last few bytes."""
    base = hashlib.sha256(_record_encoding(prev_hash, event))

    def at(seq: int) -> bytes:
        digest = base.copy()
        digest.update(_int(seq))
        return digest.digest()

    return at


def record_hash(seq: int, prev_hash: bytes, event: AuditEvent) -> bytes:
    """SHA-256 of the record's canonical encoding.

    The encoding is a sequence of fields, each a 4-byte big-endian length and its bytes: the
    tag b"vault-audit-v1", prev_hash, occurred_at as integer microseconds since the epoch, the
    event's text fields as UTF-8 in declaration order with latency_us between reason and
    source, then seq. Integers are minimal big-endian two's complement. The tag keeps a record
    hash from ever equalling another structure's hash, and the lengths keep ("ab", "c") and
    ("a", "bc") apart.

    Raises ValueError for a naive occurred_at: its instant would depend on the host's zone.
    """
    return hashlib.sha256(_record_encoding(prev_hash, event) + _int(seq)).digest()


def chain(prev_hash: bytes, first_seq: int, events: Sequence[AuditEvent]) -> list[AuditRecord]:
    """Records for events appended after a head with hash prev_hash, numbered from first_seq."""
    if first_seq < 1:
        raise ValueError("audit seq numbers start at 1")
    records: list[AuditRecord] = []
    for seq, event in enumerate(events, start=first_seq):
        digest = record_hash(seq, prev_hash, event)
        records.append(AuditRecord(seq, event, prev_hash, digest))
        prev_hash = digest
    return records


@dataclass(frozen=True, slots=True)
class Checkpoint:
    head_seq: int
    head_hash: bytes
    signed_at: datetime
    signature: bytes
    key_label: str


def checkpoint_payload(head_seq: int, head_hash: bytes, signed_at: datetime) -> bytes:
    """The exact bytes the audit key signs; its own tag so a record hash is never signable."""
    return b"".join(
        (_field(_CHECKPOINT_TAG), _int(head_seq), _field(head_hash), _int(epoch_micros(signed_at)))
    )


def chain_break(
    start_seq: int,
    start_hash: bytes,
    records: Iterable[AuditRecord],
    head_seq: int,
    head_hash: bytes,
) -> tuple[int, str] | None:
    """Where the chain stops leading from (start_seq, start_hash) to (head_seq, head_hash), or
    None when it does lead there.

    records: the stored records after start_seq in ascending seq order (further ones are
    ignored). Each must follow the one before it by seq and prev_hash and hash correctly at
    its seq; the last must be the head. Returns (seq, description) of the first record that
    does not fit; the description names no record contents.
    """
    seq, previous = start_seq, start_hash
    for record in records:
        if seq >= head_seq:
            break
        expected = seq + 1
        if record.seq != expected:
            return expected, f"record {expected} is missing"
        if record.prev_hash != previous:
            return expected, f"record {expected} does not link to record {seq}"
        try:
            digest = record_hash(expected, record.prev_hash, record.event)
        except (AttributeError, TypeError, ValueError):
            digest = b""
        if digest != record.hash:
            return expected, f"record {expected} does not match its hash"
        seq, previous = expected, record.hash
    if seq != head_seq:
        return seq + 1, f"the records from {seq + 1} to {head_seq} are missing"
    if previous != head_hash:
        return head_seq, f"record {head_seq} is not the head to be signed"
    return None


_ARCHIVE_TAG: Final = b"vault-audit-archive-v1"


@dataclass(frozen=True, slots=True)
class ArchiveMarker:
    """What stays in the store of records moved to an archive: the last archived record's seq
    and hash, signed by the audit key. The stored chain continues from it."""

    through_seq: int
    through_hash: bytes
    archived_at: datetime
    record_count: int
    signature: bytes
    key_label: str


def archive_marker_payload(through_seq: int, through_hash: bytes, archived_at: datetime) -> bytes:
    """The bytes the audit key signs for a marker; a tag of its own, so that a checkpoint's
    signature never passes for a marker's (which would let whoever holds the database delete
    every record up to any checkpoint)."""
    return b"".join(
        (
            _field(_ARCHIVE_TAG),
            _int(through_seq),
            _field(through_hash),
            _int(epoch_micros(archived_at)),
        )
    )
