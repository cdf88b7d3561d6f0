"""The revocation feed's canonical serialisation (README.md, "Revocation feed").

A relying party checks the feed offline, possibly in another language, so the bytes are laid
out by hand, with fixed-width big-endian integers and length-prefixed strings, and nothing
whose encoding a library could choose (no protobuf, no JSON). The layout is versioned by its
magic line; a change of layout is a new magic.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from vault.domain.models import Revocation, RevocationReason

MAGIC: Final = b"vault-revocation-feed/1\n"
# The reason codes of the wire format: those of vault.v1.RevocationReason.
REASON_CODES: Final[dict[RevocationReason | None, int]] = {
    None: 0,
    RevocationReason.COMPROMISED: 1,
    RevocationReason.SUPERSEDED: 2,
    RevocationReason.CESSATION_OF_OPERATION: 3,
}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class FeedEntry:
    key_version: str
    reason_code: int
    revoke_time_micros: int
    public_key_der: bytes


@dataclass(frozen=True, slots=True)
class Feed:
    parent: str
    generated_at_micros: int
    entries: list[FeedEntry]


def micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return _U16.pack(len(data)) + data


def header(parent: str, generated_at: datetime, count: int) -> bytes:
    """The bytes before the first entry: MAGIC, parent, generation time, count."""
    return MAGIC + _text(parent) + _U64.pack(micros(generated_at)) + _U32.pack(count)


def entry(revocation: Revocation) -> bytes:
    """One entry's bytes."""
    public = revocation.public_key_der or b""
    return b"".join(
        (
            _text(str(revocation.version_name)),
            _U8.pack(REASON_CODES[revocation.reason_code]),
            _U64.pack(micros(revocation.revoke_time)),
            _U16.pack(len(public)),
            public,
        )
    )


def serialise(parent: str, generated_at: datetime, revocations: Sequence[Revocation]) -> bytes:
    """The feed's bytes: header, then one entry per revoked version in the order given (the
    store's: account, key id, version number). The streamed feed writes the same pieces."""
    return header(parent, generated_at, len(revocations)) + b"".join(
        entry(revocation) for revocation in revocations
    )


def parse(payload: bytes) -> Feed:
    """The feed serialise() made; ValueError on anything else (trailing bytes included)."""
    view = memoryview(payload)
    offset = 0

    def take(size: int) -> bytes:
        nonlocal offset
        if offset + size > len(view):
            raise ValueError("truncated revocation feed")
        chunk = bytes(view[offset : offset + size])
        offset += size
        return chunk

    def number(shape: struct.Struct) -> int:
        return int(shape.unpack(take(shape.size))[0])

    if take(len(MAGIC)) != MAGIC:
        raise ValueError("not a revocation feed of this version")
    parent = take(number(_U16)).decode("utf-8")
    generated = number(_U64)
    entries = []
    for _ in range(number(_U32)):
        name = take(number(_U16)).decode("utf-8")
        code = number(_U8)
        when = number(_U64)
        public = take(number(_U16))
        entries.append(FeedEntry(name, code, when, public))
    if offset != len(view):
        raise ValueError("trailing bytes after the revocation feed")
    return Feed(parent, generated, entries)
