"""Conversions between vault.v1 messages and domain objects.

Proto enums mirror the domain enums by name (PURPOSE_SIGN_VERIFY <-> Purpose.SIGN_VERIFY);
the tables below are built from the names and checked at import, so a value added on one
side only fails the server at start-up instead of on the first request that uses it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from cryptography.hazmat.primitives import serialization
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.buckets import BucketFilter, BucketPolicy, BucketState
from vault.domain.errors import InvalidArgument
from vault.domain.imports import ImportJob, ImportJobState, ImportMethod
from vault.domain.models import (
    NO_LABELS,
    Key,
    KeyFilter,
    KeyState,
    KeyVersion,
    ListedKey,
    Page,
    Revocation,
    RevocationReason,
    VersionState,
    parse_labels,
)
from vault.domain.names import AccountName, BucketName
from vault.gen.vault.v1 import bucket_service_pb2, key_service_pb2, resources_pb2
from vault.service.buckets import BucketView
from vault.service.keys import PublicKeyInfo
from vault.service.revocations import FeedChunk, SignedFeed
from vault.transport.integrity import checksum

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

_Domain = TypeVar("_Domain", bound=StrEnum)
_Proto = TypeVar("_Proto", bound=int)

# The protobuf Duration range; anything outside it is not a valid Duration.
_MAX_DURATION_SECONDS: Final = 315_576_000_000
# The protobuf Timestamp range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
_MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
UPDATABLE_KEY_FIELDS: Final = ("labels", "description")
UPDATABLE_BUCKET_FIELDS: Final = ("labels", "policy")


class _EnumMirror(Generic[_Domain, _Proto]):
    """Both directions between a domain enum and its proto enum."""

    def __init__(self, domain: type[_Domain], proto: _EnumTypeWrapper[_Proto], prefix: str) -> None:
        proto_names = {name for name, _ in proto.items() if name != f"{prefix}UNSPECIFIED"}
        domain_names = {f"{prefix}{member.name}" for member in domain}
        if proto_names != domain_names:
            raise RuntimeError(
                f"proto enum {proto.DESCRIPTOR.full_name} does not mirror {domain.__name__}: "
                f"only in proto {sorted(proto_names - domain_names)}, "
                f"only in domain {sorted(domain_names - proto_names)}"
            )
        self._to_proto: dict[_Domain, _Proto] = {
            member: proto.Value(f"{prefix}{member.name}") for member in domain
        }
        self._from_proto: dict[int, _Domain] = {v: m for m, v in self._to_proto.items()}

    def to_proto(self, value: _Domain) -> _Proto:
        return self._to_proto[value]

    def from_proto(self, value: int, field: str) -> _Domain | None:
        """The domain value, or None for UNSPECIFIED (0)."""
        if value == 0:
            return None
        member = self._from_proto.get(value)
        if member is None:
            # proto3 enums are open: an unknown number parses fine and must be refused here.
            raise InvalidArgument(
                f"{field} has an unknown value", metadata={"field": field, "value": str(value)}
            )
        return member


PURPOSES: Final = _EnumMirror(Purpose, resources_pb2.Purpose, "PURPOSE_")
ALGORITHMS: Final = _EnumMirror(Algorithm, resources_pb2.Algorithm, "ALGORITHM_")
KEY_STATES: Final = _EnumMirror(KeyState, resources_pb2.KeyState, "KEY_STATE_")
VERSION_STATES: Final = _EnumMirror(VersionState, resources_pb2.VersionState, "VERSION_STATE_")
BUCKET_STATES: Final = _EnumMirror(BucketState, resources_pb2.BucketState, "BUCKET_STATE_")
IMPORT_METHODS: Final = _EnumMirror(ImportMethod, resources_pb2.ImportMethod, "IMPORT_METHOD_")
IMPORT_JOB_STATES: Final = _EnumMirror(
    ImportJobState, resources_pb2.ImportJobState, "IMPORT_JOB_STATE_"
)
REVOCATION_REASONS: Final = _EnumMirror(
    RevocationReason, resources_pb2.RevocationReason, "REVOCATION_REASON_"
)


def _reason_code(code: RevocationReason | None) -> resources_pb2.RevocationReason.ValueType:
    if code is None:
        return resources_pb2.REVOCATION_REASON_UNSPECIFIED
    return REVOCATION_REASONS.to_proto(code)


# -- domain -> proto ---------------------------------------------------------------------


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def timestamp(value: datetime) -> Timestamp:
    # Integer arithmetic on an aware datetime: a third of Timestamp.FromDatetime's cost
    # (utctimetuple, calendar.timegm), which ListKeys pays twice per listed key.
    micros = (value - _EPOCH) // _MICROSECOND
    seconds, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1000)


def _optional_timestamp(value: datetime | None) -> Timestamp | None:
    return timestamp(value) if value is not None else None


def key_to_proto(key: Key) -> resources_pb2.Key:
    name = str(key.name)
    message = resources_pb2.Key(
        name=name,
        purpose=PURPOSES.to_proto(key.purpose),
        algorithm=ALGORITHMS.to_proto(key.algorithm),
        state=KEY_STATES.to_proto(key.state),
        primary_version=f"{name}/versions/{key.primary_version}",
        create_time=timestamp(key.create_time),
        update_time=timestamp(key.update_time),
        token_resident=key.token_resident,
        labels=key.labels,
        description=key.description,
    )
    # Fields most keys never set are left out: ListKeys converts every listed key, and each
    # keyword the message constructor gets costs even when it is a default.
    if key.destroy_scheduled_time is not None:
        message.destroy_scheduled_time.CopyFrom(timestamp(key.destroy_scheduled_time))
    if key.revocation_reason:
        message.revocation_reason = key.revocation_reason
    if key.revocation_reason_code is not None:
        message.revocation_reason_code = _reason_code(key.revocation_reason_code)
    if key.revoke_time is not None:
        message.revoke_time.CopyFrom(timestamp(key.revoke_time))
    return message


# Proto numbers by the stored values ListedKey holds.
_PURPOSE_NUMBERS: Final = {member.value: PURPOSES.to_proto(member) for member in Purpose}
_ALGORITHM_NUMBERS: Final = {member.value: ALGORITHMS.to_proto(member) for member in Algorithm}
_KEY_STATE_NUMBERS: Final = {member.value: KEY_STATES.to_proto(member) for member in KeyState}
_REASON_NUMBERS: Final = {
    member.value: REVOCATION_REASONS.to_proto(member) for member in RevocationReason
}


def key_page_to_proto(page: Page[ListedKey]) -> key_service_pb2.ListKeysResponse:
    """A ListKeys page: for each key the message key_to_proto makes of the same key.

    A page is up to 1,000 keys, so every object, call and keyword per key shows (measured:
    keyword arguments, a helper for the timestamps and attribute reads on ListedKey each
    cost a tenth or more of the loop): each key is added to the response in place, not copied
    in; it is unpacked once, gets each field by assignment, the optional ones only when set,
    and its timestamps from the stored integers with timestamp()'s arithmetic.
    """
    response = key_service_pb2.ListKeysResponse(next_page_token=page.next_page_token)
    add = response.keys.add
    for (
        account,
        key_id,
        purpose,
        algorithm,
        state,
        primary_version,
        create_time,
        update_time,
        token_resident,
        labels_json,
        description,
        destroy_scheduled_time,
        revocation_reason,
        revocation_reason_code,
        revoke_time,
        _etag,
    ) in page.items:
        message = add()
        name = f"accounts/{account}/keys/{key_id}"
        message.name = name
        message.purpose = _PURPOSE_NUMBERS[purpose]
        message.algorithm = _ALGORITHM_NUMBERS[algorithm]
        message.state = _KEY_STATE_NUMBERS[state]
        message.primary_version = f"{name}/versions/{primary_version}"
        stamp = message.create_time
        stamp.seconds, micros = divmod(create_time, 1_000_000)
        stamp.nanos = micros * 1000
        stamp = message.update_time
        stamp.seconds, micros = divmod(update_time, 1_000_000)
        stamp.nanos = micros * 1000
        if token_resident:
            message.token_resident = True
        if labels_json != NO_LABELS:
            message.labels.update(parse_labels(labels_json))
        if description:
            message.description = description
        if destroy_scheduled_time is not None:
            stamp = message.destroy_scheduled_time
            stamp.seconds, micros = divmod(destroy_scheduled_time, 1_000_000)
            stamp.nanos = micros * 1000
        if revocation_reason:
            message.revocation_reason = revocation_reason
        if revocation_reason_code is not None:
            message.revocation_reason_code = _REASON_NUMBERS[revocation_reason_code]
        if revoke_time is not None:
            stamp = message.revoke_time
            stamp.seconds, micros = divmod(revoke_time, 1_000_000)
            stamp.nanos = micros * 1000
    return response


def version_to_proto(version: KeyVersion) -> resources_pb2.KeyVersion:
    return resources_pb2.KeyVersion(
        name=str(version.name),
        state=VERSION_STATES.to_proto(version.state),
        create_time=timestamp(version.create_time),
        destroy_time=_optional_timestamp(version.destroy_time),
        token_resident=version.token_resident,
        revoke_time=_optional_timestamp(version.revoke_time),
        revocation_reason_code=_reason_code(version.revocation_reason_code),
        revocation_reason=version.revocation_reason,
    )


def revocation_to_proto(revocation: Revocation) -> resources_pb2.Revocation:
    public = revocation.public_key_der or b""
    return resources_pb2.Revocation(
        key_version=str(revocation.version_name),
        algorithm=ALGORITHMS.to_proto(revocation.algorithm),
        public_key_der=public,
        public_key_sha256=hashlib.sha256(public).digest() if public else b"",
        reason_code=_reason_code(revocation.reason_code),
        revoke_time=timestamp(revocation.revoke_time),
        reason=revocation.reason,
    )


def feed_to_proto(feed: SignedFeed) -> resources_pb2.RevocationFeed:
    return resources_pb2.RevocationFeed(
        payload=feed.payload,
        signature=feed.signature,
        public_key_der=feed.public_key_der,
        public_key_sha256=hashlib.sha256(feed.public_key_der).digest(),
    )


def feed_chunk_to_proto(chunk: FeedChunk) -> key_service_pb2.RevocationFeedChunk:
    if not chunk.signature:
        return key_service_pb2.RevocationFeedChunk(chunk=chunk.data)
    return key_service_pb2.RevocationFeedChunk(
        chunk=chunk.data,
        signature=chunk.signature,
        public_key_der=chunk.public_key_der,
        public_key_sha256=hashlib.sha256(chunk.public_key_der).digest(),
    )


def public_key_to_proto(info: PublicKeyInfo) -> resources_pb2.PublicKey:
    return resources_pb2.PublicKey(
        pem=info.pem,
        algorithm=ALGORITHMS.to_proto(info.algorithm),
        name=info.version_name,
        pem_crc32c=checksum(info.pem.encode("utf-8")),
    )


def import_job_to_proto(job: ImportJob, now: datetime) -> resources_pb2.ImportJob:
    public = serialization.load_der_public_key(job.public_key_der)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    return resources_pb2.ImportJob(
        name=str(job.name),
        import_method=IMPORT_METHODS.to_proto(job.method),
        state=IMPORT_JOB_STATES.to_proto(job.state(now)),
        create_time=timestamp(job.create_time),
        expire_time=timestamp(job.expire_time),
        public_key_der=job.public_key_der,
        public_key_pem=pem,
    )


def duration(value: timedelta) -> Duration:
    result = Duration()
    result.FromTimedelta(value)
    return result


def policy_to_proto(policy: BucketPolicy) -> resources_pb2.BucketKeyPolicy:
    return resources_pb2.BucketKeyPolicy(
        key_lifetime=duration(policy.key_lifetime),
        max_objects_per_key=policy.max_objects or 0,
        max_bytes_per_key=policy.max_bytes or 0,
    )


def master_key_version_to_proto(
    bucket: BucketName, version: KeyVersion
) -> resources_pb2.BucketMasterKeyVersion:
    return resources_pb2.BucketMasterKeyVersion(
        name=str(bucket.master_version(version.number)),
        state=VERSION_STATES.to_proto(version.state),
        create_time=timestamp(version.create_time),
        destroy_time=_optional_timestamp(version.destroy_time),
    )


def bucket_to_proto(view: BucketView) -> resources_pb2.Bucket:
    name = view.bucket.name
    key = view.master_key
    return resources_pb2.Bucket(
        name=str(name),
        state=BUCKET_STATES.to_proto(view.state),
        labels=view.bucket.labels,
        policy=policy_to_proto(view.bucket.policy),
        primary_master_key_version=str(name.master_version(key.primary_version)),
        master_key_versions=[master_key_version_to_proto(name, v) for v in view.versions],
        master_key_version_count=view.version_count,
        create_time=timestamp(view.bucket.create_time),
        update_time=timestamp(max(view.bucket.update_time, key.update_time)),
        delete_time=_optional_timestamp(key.destroy_scheduled_time),
    )


# -- proto -> domain ---------------------------------------------------------------------


def account_of(parent: str) -> str:
    """The account id of parent (accounts/{account}); MalformedName otherwise."""
    return AccountName.parse(parent).account


def required_purpose(value: int, field: str) -> Purpose:
    purpose = PURPOSES.from_proto(value, field)
    if purpose is None:
        raise InvalidArgument(f"{field} is required", metadata={"field": field})
    return purpose


def key_filter(request: key_service_pb2.ListKeysRequest) -> KeyFilter:
    return KeyFilter(
        purpose=PURPOSES.from_proto(request.purpose, "purpose"),
        state=KEY_STATES.from_proto(request.state, "state"),
        label_key=request.label_key or None,
        label_value=request.label_value if request.HasField("label_value") else None,
    )


def key_updates(
    request: key_service_pb2.UpdateKeyRequest,
) -> tuple[dict[str, str] | None, str | None]:
    """(labels, description) to set, None meaning unchanged, following AIP-134: an absent
    mask means every updatable field that is non-empty in the request's key."""
    key = request.key
    if request.HasField("update_mask"):
        paths = set(request.update_mask.paths)
        if "*" in paths:
            paths = (paths - {"*"}) | set(UPDATABLE_KEY_FIELDS)
        unknown = sorted(paths - set(UPDATABLE_KEY_FIELDS))
        if unknown:
            raise InvalidArgument(
                "update_mask may name only labels and description",
                metadata={"field": "update_mask", "paths": ",".join(unknown)[:200]},
            )
    else:
        paths = {"labels"} if key.labels else set()
        if key.description:
            paths.add("description")
    if not paths:
        raise InvalidArgument(
            "nothing to update: set update_mask or a label or the description",
            metadata={"field": "update_mask"},
        )
    labels = dict(key.labels) if "labels" in paths else None
    description = key.description if "description" in paths else None
    return labels, description


def optional_time(message: Message, field: str) -> datetime | None:
    """The Timestamp field of message as an aware UTC datetime, None if unset; a value
    timestamp.proto does not allow (seconds out of range, nanos negative or a second or more)
    is INVALID_ARGUMENT naming the field, never a ValueError that would surface as INTERNAL."""
    if not message.HasField(field):
        return None
    value: Timestamp = getattr(message, field)
    if not (
        _MIN_TIMESTAMP_SECONDS <= value.seconds <= _MAX_TIMESTAMP_SECONDS
        and 0 <= value.nanos < 1_000_000_000
    ):
        raise InvalidArgument(f"{field} is not a valid timestamp", metadata={"field": field})
    return value.ToDatetime(tzinfo=UTC)


def waiting_period(
    request: key_service_pb2.ScheduleKeyDestructionRequest,
) -> timedelta | None:
    if not request.HasField("waiting_period"):
        return None
    return _duration(request.waiting_period, "waiting_period")


def _duration(duration: Duration, field: str) -> timedelta:
    # timedelta overflows (OverflowError) long before int64 seconds do.
    mixed_signs = duration.seconds * duration.nanos < 0  # duration.proto forbids it
    if (
        abs(duration.seconds) > _MAX_DURATION_SECONDS
        or abs(duration.nanos) >= 1_000_000_000
        or mixed_signs
    ):
        raise InvalidArgument(f"{field} is not a valid duration", metadata={"field": field})
    return duration.ToTimedelta()


def bucket_filter(request: bucket_service_pb2.ListBucketsRequest) -> BucketFilter:
    return BucketFilter(
        state=BUCKET_STATES.from_proto(request.state, "state"),
        label_key=request.label_key or None,
        label_value=request.label_value if request.HasField("label_value") else None,
    )


def bucket_policy(message: resources_pb2.BucketKeyPolicy, field: str) -> BucketPolicy:
    """The policy a request gives; unset fields take the defaults (0 limits: none)."""
    for name in ("max_objects_per_key", "max_bytes_per_key"):
        if getattr(message, name) < 0:
            raise InvalidArgument(
                f"{field}.{name} must not be negative", metadata={"field": f"{field}.{name}"}
            )
    lifetime = None
    if message.HasField("key_lifetime"):
        lifetime = _duration(message.key_lifetime, f"{field}.key_lifetime")
    return BucketPolicy(
        **({"key_lifetime": lifetime} if lifetime is not None else {}),
        max_objects=message.max_objects_per_key or None,
        max_bytes=message.max_bytes_per_key or None,
    )


def bucket_updates(
    request: bucket_service_pb2.UpdateBucketRequest,
) -> tuple[dict[str, str] | None, BucketPolicy | None]:
    """(labels, policy) to set, None meaning unchanged (AIP-134, as key_updates)."""
    bucket = request.bucket
    if request.HasField("update_mask"):
        paths = set(request.update_mask.paths)
        if "*" in paths:
            paths = (paths - {"*"}) | set(UPDATABLE_BUCKET_FIELDS)
        unknown = sorted(paths - set(UPDATABLE_BUCKET_FIELDS))
        if unknown:
            raise InvalidArgument(
                "update_mask may name only labels and policy",
                metadata={"field": "update_mask", "paths": ",".join(unknown)[:200]},
            )
    else:
        paths = {"labels"} if bucket.labels else set()
        if bucket.HasField("policy"):
            paths.add("policy")
    if not paths:
        raise InvalidArgument(
            "nothing to update: set update_mask, a label or the policy",
            metadata={"field": "update_mask"},
        )
    labels = dict(bucket.labels) if "labels" in paths else None
    policy = bucket_policy(bucket.policy, "bucket.policy") if "policy" in paths else None
    return labels, policy


def bucket_waiting_period(request: bucket_service_pb2.DeleteBucketRequest) -> timedelta | None:
    if not request.HasField("waiting_period"):
        return None
    return _duration(request.waiting_period, "waiting_period")
