"""CRC32C integrity fields, as Cloud KMS defines them.

A request byte field X may come with X_crc32c (google.protobuf.Int64Value); when present it
must match, so corruption between the caller's memory and ours is caught before a key is
used. Responses carry the CRC32C of each byte field they return.
"""

from __future__ import annotations

import google_crc32c
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value

from vault.transport.errors import ChecksumMismatch


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def checksum(data: bytes) -> Int64Value:
    return Int64Value(value=crc32c(data))


def set_checksum(out: Int64Value, data: bytes) -> None:
    """Set a response's CRC32C field of data in place: cheaper than building an Int64Value and
    copying it in, and the field is present even when the CRC32C is 0 (of b"", say)."""
    out.value = google_crc32c.value(data)


def verify_checksum(request: Message, field: str) -> bool:
    """Check request.<field> against request.<field>_crc32c if the caller sent one.

    Returns whether a check was made, for the response's verified_<field>_crc32c.
    """
    checksum_field = field + "_crc32c"
    if not request.HasField(checksum_field):
        return False
    return matches(field, getattr(request, field), getattr(request, checksum_field))


def matches(field: str, data: bytes, expected: Int64Value) -> bool:
    """True if data has the CRC32C expected (a checksum field the caller sent), else
    ChecksumMismatch: verify_checksum once the caller knows the field is present, for the
    per-item checks of a batch."""
    if google_crc32c.value(data) != expected.value:
        raise ChecksumMismatch(f"{field} does not match {field}_crc32c", metadata={"field": field})
    return True
