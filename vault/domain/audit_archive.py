"""The archive file of `vaultctl audit archive`: JSON lines, a header then one record a line.

The header says where the archived segment starts (the marker of the archive before it, or
none: the genesis hash), where it ends (seq, hash and the signed marker the store keeps in its
place), and carries the signed checkpoints within it. Records keep every stored column, hashes
in hex and occurred_at in integer microseconds since the epoch, exactly as they were hashed,
so the archive verifies on its own terms and together with the store as one chain.

Decoding is strict about the shape (a line that is no record stops with ArchiveFormatError
naming the line) and lenient about values: a value changed in the file is passed on and
reported by the verifier, not refused here.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from vault.domain.audit import ArchiveMarker, AuditEvent, AuditRecord, Checkpoint

FORMAT: Final = "vault-audit-archive-v1"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_TEXT_FIELDS: Final = (
    "request_id",
    "credential_id",
    "account",
    "method",
    "resource",
    "outcome",
    "reason",
    "source",
)


class ArchiveFormatError(ValueError):
    """The file is not an audit archive, or a line of it is not a record."""


@dataclass(frozen=True, slots=True)
class ArchiveHeader:
    start: ArchiveMarker | None  # where the segment continues from; None: the genesis hash
    end: ArchiveMarker  # the marker the store keeps in place of the segment
    checkpoints: tuple[Checkpoint, ...]  # the signed checkpoints within the segment

    @property
    def first_seq(self) -> int:
        return 1 if self.start is None else self.start.through_seq + 1

    @property
    def last_seq(self) -> int:
        return self.end.through_seq


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _moment(micros: Any) -> datetime:
    if type(micros) is not int:
        raise ArchiveFormatError("a time is not an integer")
    return _EPOCH + timedelta(microseconds=micros)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ArchiveFormatError("a signature is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ArchiveFormatError("a signature is not base64 text") from None


def _unhex(text: Any) -> Any:
    # A value that is not hex is passed on as it is: the verifier reports the record.
    if isinstance(text, str):
        try:
            return bytes.fromhex(text)
        except ValueError:
            return text
    return text


def _marker(marker: ArchiveMarker) -> dict[str, Any]:
    return {
        "through_seq": marker.through_seq,
        "through_hash": marker.through_hash.hex(),
        "archived_at_us": _micros(marker.archived_at),
        "record_count": marker.record_count,
        "signature": _b64(marker.signature),
        "key_label": marker.key_label,
    }


def _unmarker(data: Any) -> ArchiveMarker:
    if not isinstance(data, dict):
        raise ArchiveFormatError("a marker is not an object")
    try:
        return ArchiveMarker(
            through_seq=int(data["through_seq"]),
            through_hash=bytes.fromhex(data["through_hash"]),
            archived_at=_moment(data["archived_at_us"]),
            record_count=int(data["record_count"]),
            signature=_unb64(data["signature"]),
            key_label=str(data["key_label"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ArchiveFormatError(f"a marker is malformed: {type(error).__name__}") from None


def _checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "head_seq": checkpoint.head_seq,
        "head_hash": checkpoint.head_hash.hex(),
        "signed_at_us": _micros(checkpoint.signed_at),
        "signature": _b64(checkpoint.signature),
        "key_label": checkpoint.key_label,
    }


def _uncheckpoint(data: Any) -> Checkpoint:
    if not isinstance(data, dict):
        raise ArchiveFormatError("a checkpoint is not an object")
    try:
        return Checkpoint(
            head_seq=int(data["head_seq"]),
            head_hash=bytes.fromhex(data["head_hash"]),
            signed_at=_moment(data["signed_at_us"]),
            signature=_unb64(data["signature"]),
            key_label=str(data["key_label"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ArchiveFormatError(f"a checkpoint is malformed: {type(error).__name__}") from None


def encode_header(header: ArchiveHeader) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "start": None if header.start is None else _marker(header.start),
            "end": _marker(header.end),
            "checkpoints": [_checkpoint(c) for c in header.checkpoints],
        },
        separators=(",", ":"),
    )


def decode_header(line: str) -> ArchiveHeader:
    try:
        data = json.loads(line)
    except ValueError:
        raise ArchiveFormatError("the first line is not JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArchiveFormatError(f"not an audit archive (format {FORMAT})")
    checkpoints = data.get("checkpoints")
    if not isinstance(checkpoints, list):
        raise ArchiveFormatError("the header has no checkpoint list")
    start = data.get("start")
    return ArchiveHeader(
        start=None if start is None else _unmarker(start),
        end=_unmarker(data.get("end")),
        checkpoints=tuple(_uncheckpoint(c) for c in checkpoints),
    )


def encode_record(record: AuditRecord) -> str:
    event = record.event
    data: dict[str, Any] = {"seq": record.seq, "occurred_at_us": _micros(event.occurred_at)}
    for name in _TEXT_FIELDS:
        data[name] = getattr(event, name)
    data["latency_us"] = event.latency_us
    data["prev_hash"] = record.prev_hash.hex()
    data["hash"] = record.hash.hex()
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def decode_record(line: str) -> AuditRecord:
    try:
        data = json.loads(line)
    except ValueError:
        raise ArchiveFormatError("a line is not JSON") from None
    if not isinstance(data, dict):
        raise ArchiveFormatError("a line is not a record")
    try:
        occurred = data["occurred_at_us"]
        event = AuditEvent(
            occurred_at=_EPOCH + timedelta(microseconds=occurred)
            if type(occurred) is int
            else occurred,
            latency_us=data["latency_us"],
            **{name: data[name] for name in _TEXT_FIELDS},
        )
        return AuditRecord(
            seq=data["seq"],
            event=event,
            prev_hash=_unhex(data["prev_hash"]),
            hash=_unhex(data["hash"]),
        )
    except KeyError as error:
        raise ArchiveFormatError(f"a record lacks the field {error.args[0]!r}") from None
    except OverflowError:
        raise ArchiveFormatError("a record's time is out of range") from None
