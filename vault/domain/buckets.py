"""Buckets, their bucket-key policy, and the byte format of a wrapped bucket key.

A bucket owns one master key (purpose BUCKET_MASTER; vault.domain.names.MASTER_KEY_PREFIX),
and its state is that key's: deleting a bucket schedules the key's destruction
(crypto-shredding), and once the key is destroyed no bucket key of the bucket opens again.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from vault.domain.envelope import NONCE_SIZE, TAG_SIZE
from vault.domain.errors import DecryptionFailed, InvalidArgument
from vault.domain.models import KeyState, KeyVersion
from vault.domain.names import BucketName

BUCKET_KEY_SIZE: Final = 32
DEFAULT_KEY_LIFETIME: Final = timedelta(minutes=15)
MIN_KEY_LIFETIME: Final = timedelta(seconds=1)
MAX_KEY_LIFETIME: Final = timedelta(days=1)
# Far beyond any real object count or size, and within a signed 64-bit integer.
MAX_POLICY_LIMIT: Final = 2**62
# The newest master-key versions a Bucket message carries (with the primary, should it be
# older): each takes up to about 200 bytes, so a bucket rotated for years would otherwise
# outgrow one gRPC message. ListBucketMasterKeyVersions pages through all of them.
BUCKET_VERSIONS_SHOWN: Final = 100


class BucketState(StrEnum):
    ACTIVE = "ACTIVE"
    DELETE_SCHEDULED = "DELETE_SCHEDULED"
    DELETED = "DELETED"


def bucket_state(master_key_state: KeyState) -> BucketState:
    """A bucket's state from its master key's. A master key is only ever ENABLED, waiting for
    destruction or destroyed: BucketService has no call that disables or revokes it."""
    if master_key_state is KeyState.DESTROY_SCHEDULED:
        return BucketState.DELETE_SCHEDULED
    if master_key_state is KeyState.DESTROYED:
        return BucketState.DELETED
    return BucketState.ACTIVE


MASTER_KEY_STATES: Final = {
    BucketState.ACTIVE: KeyState.ENABLED,
    BucketState.DELETE_SCHEDULED: KeyState.DESTROY_SCHEDULED,
    BucketState.DELETED: KeyState.DESTROYED,
}


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    """How long and for how much a client may use one bucket key for new objects. None: no
    limit on objects or bytes."""

    key_lifetime: timedelta = DEFAULT_KEY_LIFETIME
    max_objects: int | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if not MIN_KEY_LIFETIME <= self.key_lifetime <= MAX_KEY_LIFETIME:
            raise InvalidArgument(
                "policy.key_lifetime must be 1 second to 1 day",
                metadata={"field": "policy.key_lifetime"},
            )
        for name, limit in (
            ("max_objects_per_key", self.max_objects),
            ("max_bytes_per_key", self.max_bytes),
        ):
            if limit is not None and not 1 <= limit <= MAX_POLICY_LIMIT:
                raise InvalidArgument(
                    f"policy.{name} must be positive (0 for no limit)",
                    metadata={"field": f"policy.{name}"},
                )


@dataclass(frozen=True, slots=True)
class Bucket:
    name: BucketName
    policy: BucketPolicy
    create_time: datetime
    update_time: datetime
    labels: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    # Optimistic concurrency, as for keys.
    etag: int = 0


@dataclass(frozen=True, slots=True)
class NewestVersions:
    """A master key's newest versions, up to a bound, oldest first; and how many it has."""

    versions: list[KeyVersion]
    total: int


@dataclass(frozen=True, slots=True)
class BucketFilter:
    state: BucketState | None = None
    label_key: str | None = None
    label_value: str | None = None


# -- wrapped bucket keys ---------------------------------------------------------------------
#
# format byte, master-key version, nonce, AES-256-GCM ciphertext of the 32-byte key and tag.
# The GCM additional data is the header, then the account and the bucket, each with its length,
# so a wrapped key opens only in the bucket (and account) it was made for, and only under the
# version its header names.

BUCKET_KEY_FORMAT: Final = 0x03
_HEADER = struct.Struct(">BI")
WRAPPED_BUCKET_KEY_SIZE: Final = _HEADER.size + NONCE_SIZE + BUCKET_KEY_SIZE + TAG_SIZE


@dataclass(frozen=True, slots=True)
class WrappedBucketKey:
    master_key_version: int
    nonce: bytes
    sealed: bytes = field(repr=False)  # ciphertext followed by the 16-byte tag

    def header(self) -> bytes:
        return _HEADER.pack(BUCKET_KEY_FORMAT, self.master_key_version)

    def to_bytes(self) -> bytes:
        return self.header() + self.nonce + self.sealed

    @classmethod
    def parse(cls, data: bytes) -> WrappedBucketKey:
        if len(data) != WRAPPED_BUCKET_KEY_SIZE:
            raise DecryptionFailed()
        fmt, version = _HEADER.unpack_from(data)
        if fmt != BUCKET_KEY_FORMAT or version == 0:
            raise DecryptionFailed()
        start = _HEADER.size
        return cls(version, data[start : start + NONCE_SIZE], data[start + NONCE_SIZE :])


def bucket_key_aad(header: bytes, bucket: BucketName) -> bytes:
    """The additional data that binds a wrapped bucket key to its header, account and bucket;
    length prefixes keep ("ab", "c") and ("a", "bc") apart."""
    parts = [header]
    for value in (bucket.account, bucket.bucket):
        encoded = value.encode("utf-8")
        parts.append(struct.pack(">H", len(encoded)) + encoded)
    return b"".join(parts)
