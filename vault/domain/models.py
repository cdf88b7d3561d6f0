"""Keys, versions, states and the rules that say which operation each state allows."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, Generic, NamedTuple, TypeVar

from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.errors import WrongPurpose, WrongState
from vault.domain.names import KeyName, KeyVersionName


class KeyState(StrEnum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    REVOKED = "REVOKED"
    DESTROY_SCHEDULED = "DESTROY_SCHEDULED"
    DESTROYED = "DESTROYED"


class VersionState(StrEnum):
    # A token-resident version is PENDING between its intent row and its token object, so a
    # crash in between leaves a row that start-up reconciliation can finish or remove.
    PENDING = "PENDING"
    ENABLED = "ENABLED"
    DESTROYED = "DESTROYED"
    # Bucket master-key versions only: holds material, but nothing may use it until enabled.
    DISABLED = "DISABLED"


class RevocationReason(StrEnum):
    """Why a key or version was revoked (RFC 5280's CRLReason names, the ones that apply to
    a key a vault holds). None stands for unspecified."""

    COMPROMISED = "COMPROMISED"
    SUPERSEDED = "SUPERSEDED"
    CESSATION_OF_OPERATION = "CESSATION_OF_OPERATION"


class Operation(StrEnum):
    ENCRYPT = "Encrypt"
    DECRYPT = "Decrypt"
    GENERATE_DATA_KEY = "GenerateDataKey"
    WRAP = "WrapKey"
    UNWRAP = "UnwrapKey"
    SIGN = "Sign"
    VERIFY = "Verify"
    GET_PUBLIC_KEY = "GetPublicKey"
    ASYMMETRIC_DECRYPT = "AsymmetricDecrypt"
    GENERATE_MAC = "GenerateMac"
    VERIFY_MAC = "VerifyMac"
    GENERATE_BUCKET_KEY = "GenerateBucketKey"
    DECRYPT_BUCKET_KEY = "DecryptBucketKey"


PURPOSE_OPERATIONS: dict[Purpose, frozenset[Operation]] = {
    Purpose.ENCRYPT_DECRYPT: frozenset(
        {Operation.ENCRYPT, Operation.DECRYPT, Operation.GENERATE_DATA_KEY}
    ),
    Purpose.BUCKET_MASTER: frozenset({Operation.GENERATE_BUCKET_KEY, Operation.DECRYPT_BUCKET_KEY}),
    Purpose.WRAP_UNWRAP: frozenset({Operation.WRAP, Operation.UNWRAP}),
    Purpose.SIGN_VERIFY: frozenset({Operation.SIGN, Operation.VERIFY, Operation.GET_PUBLIC_KEY}),
    Purpose.ASYMMETRIC_DECRYPT: frozenset({Operation.ASYMMETRIC_DECRYPT, Operation.GET_PUBLIC_KEY}),
    Purpose.MAC: frozenset({Operation.GENERATE_MAC, Operation.VERIFY_MAC}),
}

# Operations that only read or undo protection on existing data. A REVOKED key (compromised
# or superseded) still serves them, so data protected before revocation stays readable;
# it makes nothing new.
_PROCESSING_OPERATIONS = frozenset(
    {
        Operation.DECRYPT,
        Operation.UNWRAP,
        Operation.VERIFY,
        Operation.GET_PUBLIC_KEY,
        Operation.ASYMMETRIC_DECRYPT,
        Operation.VERIFY_MAC,
        Operation.DECRYPT_BUCKET_KEY,
    }
)

# Allowed state changes; DESTROYED is reached only by the destruction job. A key waiting
# for destruction changes only by cancellation (Key.cancel_destruction), so no other call
# (a disable, a revocation) can silently call the destruction off.
TRANSITIONS: dict[KeyState, frozenset[KeyState]] = {
    KeyState.ENABLED: frozenset({KeyState.DISABLED, KeyState.REVOKED, KeyState.DESTROY_SCHEDULED}),
    KeyState.DISABLED: frozenset({KeyState.ENABLED, KeyState.REVOKED, KeyState.DESTROY_SCHEDULED}),
    KeyState.REVOKED: frozenset({KeyState.DESTROY_SCHEDULED}),
    KeyState.DESTROY_SCHEDULED: frozenset({KeyState.DESTROYED}),
    KeyState.DESTROYED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class KeyVersion:
    name: KeyVersionName
    state: VersionState
    create_time: datetime
    # Exactly one of wrapped_blob (hierarchy) and token_label (token-resident) is set.
    root_generation: int | None
    wrapped_blob: bytes | None = field(repr=False)
    token_label: str | None
    public_key_der: bytes | None = field(default=None, repr=False)
    destroy_time: datetime | None = None
    # Set when the version was revoked, on its own or with its key: it makes nothing new.
    revoke_time: datetime | None = None
    revocation_reason_code: RevocationReason | None = None
    revocation_reason: str = ""

    @property
    def number(self) -> int:
        return self.name.version

    @property
    def token_resident(self) -> bool:
        return self.token_label is not None

    @property
    def revoked(self) -> bool:
        return self.revoke_time is not None

    def require(self, operation: Operation) -> None:
        """Raise unless this version may serve operation: a revoked version only reads and
        checks what it protected before, like a revoked key."""
        if self.revoked and operation not in _PROCESSING_OPERATIONS:
            raise WrongState(
                f"{operation} is not allowed with a revoked key version",
                metadata={
                    "state": "REVOKED",
                    "operation": str(operation),
                    "name": str(self.name),
                },
            )


@dataclass(frozen=True, slots=True)
class Key:
    name: KeyName
    purpose: Purpose
    algorithm: Algorithm
    state: KeyState
    primary_version: int
    create_time: datetime
    update_time: datetime
    token_resident: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    description: str = ""
    destroy_scheduled_time: datetime | None = None
    state_before_destroy_scheduled: KeyState | None = None
    revocation_reason: str = ""
    revocation_reason_code: RevocationReason | None = None
    revoke_time: datetime | None = None
    request_id: str = ""
    # Optimistic concurrency: every store update checks and bumps it.
    etag: int = 0

    def require(self, operation: Operation) -> None:
        """Raise unless this key's purpose and state allow the operation."""
        if operation not in PURPOSE_OPERATIONS[self.purpose]:
            raise WrongPurpose(
                f"{operation} is not allowed for a key of purpose {self.purpose}",
                metadata={"purpose": str(self.purpose), "operation": str(operation)},
            )
        if self.state is KeyState.ENABLED:
            return
        if self.state is KeyState.REVOKED and operation in _PROCESSING_OPERATIONS:
            return
        if operation is Operation.GET_PUBLIC_KEY and self.state is not KeyState.DESTROYED:
            return
        raise self.state_forbids(operation)

    def state_forbids(self, operation: str) -> WrongState:
        """The error for an operation this key's state does not allow."""
        return WrongState(
            f"{operation} is not allowed while the key is {self.state}",
            metadata={"state": str(self.state), "operation": str(operation)},
        )

    def transition(self, target: KeyState, now: datetime) -> Key:
        if target not in TRANSITIONS[self.state]:
            raise WrongState(
                f"a {self.state} key cannot become {target}",
                metadata={"state": str(self.state), "target": str(target)},
            )
        return replace(self, state=target, update_time=now)

    def cancel_destruction(self, now: datetime) -> Key:
        """Back from DESTROY_SCHEDULED: REVOKED if it was revoked, otherwise DISABLED, so that
        using the key again is a separate, deliberate EnableKey."""
        if self.state is not KeyState.DESTROY_SCHEDULED:
            raise self.state_forbids("CancelKeyDestruction")
        revoked = self.state_before_destroy_scheduled is KeyState.REVOKED
        return replace(
            self,
            state=KeyState.REVOKED if revoked else KeyState.DISABLED,
            update_time=now,
            destroy_scheduled_time=None,
            state_before_destroy_scheduled=None,
        )


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
NO_LABELS: Final = "{}"


def epoch_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch; ValueError for a
    naive one, whose instant would depend on the host's zone."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    # Integer arithmetic on the timedelta: a float timestamp would round some microseconds.
    return (moment - _EPOCH) // _MICROSECOND


def _labels_json(labels: dict[str, str]) -> str:
    """Labels as the JSON text ListedKey holds (NO_LABELS for none)."""
    return json.dumps(labels) if labels else NO_LABELS


class ListedKey(NamedTuple):
    """A key as ListKeys shows it: the fields of Key a listing returns, as the plain values
    the store keeps them in (enumerations as their values, times as integer microseconds since
    the Unix epoch, UTC; labels as the JSON text of an object, NO_LABELS for none).

    A page holds up to 1,000 keys. Made into a Key, each cost more than reading its row
    (enums, datetimes, a dict of labels, a KeyName); a ListedKey is one tuple, made from the
    driver's row in one call. ListedKey.of gives the same for a Key, so that a listing can
    be checked against GetKey field by field.
    """

    account: str
    key_id: str
    purpose: str
    algorithm: str
    state: str
    primary_version: int
    create_time: int
    update_time: int
    token_resident: int  # nonzero if token-resident (a bool, or 0/1 as SQLite keeps it)
    labels_json: str
    description: str
    destroy_scheduled_time: int | None
    revocation_reason: str
    revocation_reason_code: str | None
    revoke_time: int | None
    etag: int

    @classmethod
    def of(cls, key: Key) -> ListedKey:
        code = key.revocation_reason_code
        return cls(
            account=key.name.account,
            key_id=key.name.key,
            purpose=key.purpose.value,
            algorithm=key.algorithm.value,
            state=key.state.value,
            primary_version=key.primary_version,
            create_time=epoch_micros(key.create_time),
            update_time=epoch_micros(key.update_time),
            token_resident=key.token_resident,
            labels_json=_labels_json(key.labels),
            description=key.description,
            destroy_scheduled_time=_micros_or_none(key.destroy_scheduled_time),
            revocation_reason=key.revocation_reason,
            revocation_reason_code=None if code is None else code.value,
            revoke_time=_micros_or_none(key.revoke_time),
            etag=key.etag,
        )

    @property
    def name(self) -> KeyName:
        return KeyName(self.account, self.key_id)

    @property
    def labels(self) -> dict[str, str]:
        return parse_labels(self.labels_json)


def parse_labels(text: str) -> dict[str, str]:
    """Labels from ListedKey.labels_json."""
    if text == NO_LABELS:
        return {}
    return {str(k): str(v) for k, v in json.loads(text).items()}


def _micros_or_none(value: datetime | None) -> int | None:
    return None if value is None else epoch_micros(value)


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked key version, as ListRevocations and the revocation feed give it."""

    version_name: KeyVersionName
    algorithm: Algorithm
    reason_code: RevocationReason | None
    revoke_time: datetime
    public_key_der: bytes | None = field(repr=False)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RootGeneration:
    generation: int
    token_label: str
    create_time: datetime
    retired: bool = False


@dataclass(frozen=True, slots=True)
class KeyFilter:
    purpose: Purpose | None = None
    state: KeyState | None = None
    label_key: str | None = None
    label_value: str | None = None


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a List. token_after(i), set by the store that read the page, is the token
    that resumes right after items[i]: the transport ends a page early when the whole would
    not fit in one gRPC message, and only it knows the sizes."""

    items: list[T]
    next_page_token: str
    token_after: Callable[[int], str] | None = field(default=None, compare=False, repr=False)

    def first(self, count: int) -> Page[T]:
        """The page of the first count items (at least one), resuming after the last of them;
        this page itself if it holds no more, or if its store cannot resume mid-page."""
        count = max(1, count)
        if count >= len(self.items) or self.token_after is None:
            return self
        return Page(self.items[:count], self.token_after(count - 1), self.token_after)
