"""Accounts, credentials and what each credential may do.

Two kinds of credential authenticate a request: an access key (a public id plus a secret the
caller signs each request with, vault.domain.signing) and an API key (a bearer token). Both
belong to one account. What a credential may do:

- an access key without grants has full access to every key of its account, and the admin
  role when its account is an admin account (manage accounts, credentials and the audit log;
  use the keys of every account);
- an access key with grants has exactly those: a level (READ < READWRITE < FULL) on named
  keys or buckets, or on every key ("keys/*") or bucket ("buckets/*") of its account, never
  the admin role;
- an API key has scopes: methods x resources of its account, never the admin role.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Final

from vault.domain.errors import InvalidArgument, MalformedName
from vault.domain.names import check_id

ACCESS_KEY_ID_PREFIX: Final = "VK"
API_TOKEN_PREFIX: Final = "vkapi_"  # noqa: S105 (a prefix scanners look for, not a secret)
_ACCESS_KEY_ID = r"VK[A-Z2-7]{18}"
_API_KEY_ID = r"[a-z2-7]{16}"
_ACCESS_KEY_ID_RE = re.compile(_ACCESS_KEY_ID)
_API_TOKEN_RE = re.compile(
    rf"vkapi_(?P<id>{_API_KEY_ID})_(?P<secret>[a-z2-7]{{52}})_(?P<check>[a-z2-7]{{7}})"
)
_ACCOUNT = r"accounts/(?P<account>[a-z][a-z0-9-]{0,62})"
_ACCESS_KEY_NAME_RE = re.compile(rf"{_ACCOUNT}/accessKeys/(?P<id>{_ACCESS_KEY_ID})")
_API_KEY_NAME_RE = re.compile(rf"{_ACCOUNT}/apiKeys/(?P<id>{_API_KEY_ID})")
_KEY_RESOURCE_RE = re.compile(r"(?:keys|buckets)/(?:\*|[a-z][a-z0-9-]{0,62})")
MAX_GRANTS: Final = 64
MAX_SCOPES: Final = 32
MAX_DESCRIPTION: Final = 1024
MAX_DISPLAY_NAME: Final = 256


class AccessLevel(IntEnum):
    READ = 1
    READWRITE = 2
    FULL = 3


class CredentialState(StrEnum):
    ACTIVE = "ACTIVE"
    REVOKED = "REVOKED"


class CredentialKind(StrEnum):
    ACCESS_KEY = "ACCESS_KEY"
    API_KEY = "API_KEY"
    CERTIFICATE = "CERTIFICATE"


# The level each key-using method needs on the key(s) it names. Methods not listed here and
# not in ADMIN_SERVICES are refused to everyone but admins: a new RPC is closed until someone
# decides who may call it.
REQUIRED_LEVEL: Final[dict[str, AccessLevel]] = {
    "GetKey": AccessLevel.READ,
    "ListKeys": AccessLevel.READ,
    "ListKeyVersions": AccessLevel.READ,
    "ListRevocations": AccessLevel.READ,
    "GetRevocationFeed": AccessLevel.READ,
    "StreamRevocationFeed": AccessLevel.READ,
    "GetPublicKey": AccessLevel.READ,
    "GetImportJob": AccessLevel.READ,
    "ListImportJobs": AccessLevel.READ,
    "Decrypt": AccessLevel.READ,
    "UnwrapKey": AccessLevel.READ,
    "AsymmetricDecrypt": AccessLevel.READ,
    "Verify": AccessLevel.READ,
    "VerifyMac": AccessLevel.READ,
    "GenerateRandom": AccessLevel.READ,
    "Encrypt": AccessLevel.READWRITE,
    "GenerateDataKey": AccessLevel.READWRITE,
    "ReEncrypt": AccessLevel.READWRITE,
    "WrapKey": AccessLevel.READWRITE,
    "Sign": AccessLevel.READWRITE,
    "GenerateMac": AccessLevel.READWRITE,
    "CreateKey": AccessLevel.FULL,
    "UpdateKey": AccessLevel.FULL,
    "RotateKey": AccessLevel.FULL,
    "EnableKey": AccessLevel.FULL,
    "DisableKey": AccessLevel.FULL,
    "RevokeKey": AccessLevel.FULL,
    "ScheduleKeyDestruction": AccessLevel.FULL,
    "CancelKeyDestruction": AccessLevel.FULL,
    # Import puts material of the caller's choosing under the key: as strong as creating it.
    "CreateImportJob": AccessLevel.FULL,
    "ImportKeyVersion": AccessLevel.FULL,
    # BucketService, on buckets/{bucket}.
    "GetBucket": AccessLevel.READ,
    "ListBuckets": AccessLevel.READ,
    "DecryptBucketKey": AccessLevel.READ,
    "GenerateBucketKey": AccessLevel.READWRITE,
    "CreateBucket": AccessLevel.FULL,
    "UpdateBucket": AccessLevel.FULL,
    "DeleteBucket": AccessLevel.FULL,
    "CancelBucketDeletion": AccessLevel.FULL,
    "RotateBucketMasterKey": AccessLevel.FULL,
    "DisableBucketMasterKeyVersion": AccessLevel.FULL,
    "EnableBucketMasterKeyVersion": AccessLevel.FULL,
    "ListBucketMasterKeyVersions": AccessLevel.READ,
}
# Methods a scope for the other also covers: one feed, fetched in one message or streamed, so
# an API key scoped to GetRevocationFeed before the stream existed keeps working with the
# clients that now stream it.
SAME_SCOPE: Final[dict[str, str]] = {
    "GetRevocationFeed": "StreamRevocationFeed",
    "StreamRevocationFeed": "GetRevocationFeed",
}
# Methods whose resources are buckets: a call naming only the account (ListBuckets) needs
# "buckets/*", where a key method's needs "keys/*".
BUCKET_METHODS: Final = frozenset(
    {
        "GetBucket",
        "ListBuckets",
        "DecryptBucketKey",
        "GenerateBucketKey",
        "CreateBucket",
        "UpdateBucket",
        "DeleteBucket",
        "CancelBucketDeletion",
        "RotateBucketMasterKey",
        "DisableBucketMasterKeyVersion",
        "EnableBucketMasterKeyVersion",
        "ListBucketMasterKeyVersions",
    }
)
# Services only the admin role may call.
ADMIN_SERVICES: Final = frozenset(
    {
        "vault.v1.IdentityService",
        "vault.v1.AuditService",
        "vault.v1.ServerService",
        "vault.v1.BackupService",
    }
)
# Methods that change state: their audit record is committed before they run (fail closed).
MUTATING_METHODS: Final = frozenset(
    {
        "CreateKey",
        "UpdateKey",
        "RotateKey",
        "EnableKey",
        "DisableKey",
        "RevokeKey",
        "ScheduleKeyDestruction",
        "CancelKeyDestruction",
        "CreateImportJob",
        "ImportKeyVersion",
        "CreateBucket",
        "UpdateBucket",
        "DeleteBucket",
        "CancelBucketDeletion",
        "RotateBucketMasterKey",
        "DisableBucketMasterKeyVersion",
        "EnableBucketMasterKeyVersion",
        "CreateAccount",
        "CreateAccessKey",
        "ResetSecretKey",
        "RevokeAccessKey",
        "DeleteAccessKey",
        "CreateApiKey",
        "RevokeApiKey",
        # An export hands out (wrapped) key material and is logged; a restore adds keys.
        "ExportBackup",
        "RestoreBackup",
        "StreamRestoreBackup",
    }
)


@dataclass(frozen=True, slots=True)
class Grant:
    # "keys/{key}", "keys/*", "buckets/{bucket}" or "buckets/*", relative to the credential's
    # account
    resource: str
    level: AccessLevel

    def __post_init__(self) -> None:
        if not _KEY_RESOURCE_RE.fullmatch(self.resource):
            raise InvalidArgument(
                "a grant's resource must be keys/{key}, keys/*, buckets/{bucket} or buckets/*",
                metadata={"field": "grants.resource"},
            )

    def covers(self, resource: str) -> bool:
        return self.resource == resource or _wildcard_covers(self.resource, resource)


def _wildcard_covers(allowed: str, resource: str) -> bool:
    """Whether allowed is "keys/*" or "buckets/*" and resource one of its kind."""
    kind, _, rest = allowed.partition("/")
    return rest == "*" and resource.startswith(f"{kind}/")


@dataclass(frozen=True, slots=True)
class ApiScope:
    methods: frozenset[str]  # short method names, or "*"
    resources: tuple[str, ...]  # "keys/{key}", "keys/*", "buckets/{bucket}", "buckets/*", "*"

    def __post_init__(self) -> None:
        if not self.methods or not self.resources:
            raise InvalidArgument(
                "an API key scope needs at least one method and one resource",
                metadata={"field": "scopes"},
            )
        for method in self.methods:
            if method != "*" and method not in REQUIRED_LEVEL:
                raise InvalidArgument(
                    f"unknown method in scope: {method[:64]!r}",
                    metadata={"field": "scopes.methods"},
                )
        for resource in self.resources:
            if resource != "*" and not _KEY_RESOURCE_RE.fullmatch(resource):
                raise InvalidArgument(
                    "a scope's resource must be keys/{key}, keys/*, buckets/{bucket}, "
                    "buckets/* or *",
                    metadata={"field": "scopes.resources"},
                )

    def allows(self, method: str, resources: Sequence[str]) -> bool:
        if "*" not in self.methods and method not in self.methods:
            return False
        return all(self._covers(resource) for resource in resources)

    def _covers(self, resource: str) -> bool:
        for allowed in self.resources:
            if allowed == "*" or allowed == resource:
                return True
            if _wildcard_covers(allowed, resource):
                return True
        return False


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (0 < self.requests_per_second <= 1_000_000) or not (1 <= self.burst <= 1_000_000):
            raise InvalidArgument(
                "rate_limit needs requests_per_second > 0 and burst >= 1",
                metadata={"field": "rate_limit"},
            )


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    display_name: str
    admin: bool
    create_time: datetime


@dataclass(frozen=True, slots=True)
class AccessKey:
    account_id: str
    access_key_id: str
    state: CredentialState
    grants: tuple[Grant, ...]
    description: str
    create_time: datetime
    # Input to the secret's derivation in the token; a reset replaces it. Not a secret itself:
    # without the token's credential key it yields nothing.
    secret_salt: bytes = field(repr=False)
    secret_reset_time: datetime | None = None
    last_used_time: datetime | None = None

    @property
    def name(self) -> str:
        return f"accounts/{self.account_id}/accessKeys/{self.access_key_id}"


@dataclass(frozen=True, slots=True)
class ApiKey:
    account_id: str
    api_key_id: str
    state: CredentialState
    scopes: tuple[ApiScope, ...]
    description: str
    create_time: datetime
    token_hash: bytes = field(repr=False)
    expire_time: datetime | None = None
    rate_limit: RateLimit | None = None
    daily_quota: int = 0
    last_used_time: datetime | None = None

    @property
    def name(self) -> str:
        return f"accounts/{self.account_id}/apiKeys/{self.api_key_id}"


@dataclass(frozen=True, slots=True)
class UsageCount:
    day: str  # YYYY-MM-DD, UTC
    method: str
    count: int


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from, once authenticated."""

    kind: CredentialKind
    credential_id: str
    account_id: str
    admin: bool = False
    # Access keys: None is full access to the account; API keys: their scopes.
    grants: tuple[Grant, ...] | None = None
    scopes: tuple[ApiScope, ...] | None = None
    api_key: ApiKey | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """A resource a request names, split leniently (authorisation runs before validation)."""

    account_id: str
    # "keys/{key}" for a key or key version, "buckets/{bucket}" for a bucket or its master-key
    # versions; "" for the account itself
    relative: str


def resource_ref(name: str) -> ResourceRef | None:
    """The account and key a name refers to, or None when it does not even start with
    accounts/{id}. A malformed rest is kept as is: no grant covers it, and a caller allowed on
    the whole account gets the precise validation error afterwards."""
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "accounts" or not parts[1]:
        return None
    if len(parts) == 2:
        return ResourceRef(parts[1], "")
    if parts[2] in ("keys", "buckets") and len(parts) >= 4:
        return ResourceRef(parts[1], f"{parts[2]}/{parts[3]}")
    return ResourceRef(parts[1], "/".join(parts[2:]))


def authorize(
    principal: Principal, service: str, method: str, resources: Iterable[ResourceRef]
) -> bool:
    """Whether principal may call service/method on resources (all of them)."""
    if principal.admin:
        return True
    if service in ADMIN_SERVICES:
        return False
    level = REQUIRED_LEVEL.get(method)
    if level is None:
        return False
    refs = list(resources)
    if any(ref.account_id != principal.account_id for ref in refs):
        return False
    relative = [ref.relative for ref in refs]
    if principal.scopes is not None:
        # An account-level call (ListKeys, GenerateRandom) names no key: only "*" covers it.
        named = [r if r else "*" for r in relative] or ["*"]
        methods = [method, SAME_SCOPE[method]] if method in SAME_SCOPE else [method]
        return any(scope.allows(each, named) for scope in principal.scopes for each in methods)
    if principal.grants is None:
        return True
    # An account-level call (ListKeys, GenerateRandom, ListBuckets) needs the wildcard grant:
    # listing would otherwise reveal the names of keys or buckets the credential was not given.
    wildcard = "buckets/*" if method in BUCKET_METHODS else "keys/*"
    needed = [r or wildcard for r in relative] or [wildcard]
    return all(any(g.covers(r) and g.level >= level for g in principal.grants) for r in needed)


def required_access(service: str, method: str, resource: ResourceRef | None) -> str:
    """What a call needs on one resource, in words for a refusal: an access level on a key
    of the account (what an access key's grants or an API key's scopes must cover), or the
    admin role. It depends on the method and the name only, never on what exists."""
    if resource is None or service in ADMIN_SERVICES or method not in REQUIRED_LEVEL:
        return "the admin role"
    return f"{REQUIRED_LEVEL[method].name} on {resource.relative or 'keys/*'}"


# -- names and formats ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessKeyName:
    account_id: str
    access_key_id: str

    @classmethod
    def parse(cls, name: str) -> AccessKeyName:
        return cls(*_credential_name(_ACCESS_KEY_NAME_RE, name, "accessKeys/{access_key_id}"))

    def __str__(self) -> str:
        return f"accounts/{self.account_id}/accessKeys/{self.access_key_id}"


@dataclass(frozen=True, slots=True)
class ApiKeyName:
    account_id: str
    api_key_id: str

    @classmethod
    def parse(cls, name: str) -> ApiKeyName:
        return cls(*_credential_name(_API_KEY_NAME_RE, name, "apiKeys/{api_key_id}"))

    def __str__(self) -> str:
        return f"accounts/{self.account_id}/apiKeys/{self.api_key_id}"


def _credential_name(pattern: re.Pattern[str], name: str, expected: str) -> tuple[str, str]:
    """(account id, credential id) of name, or MalformedName."""
    match = pattern.fullmatch(name) if len(name) <= 256 else None
    if not match:
        raise MalformedName(f"expected accounts/{{account}}/{expected}")
    return match["account"], match["id"]


def is_access_key_id(value: str) -> bool:
    return _ACCESS_KEY_ID_RE.fullmatch(value) is not None


def new_access_key_id(random_bytes: bytes) -> str:
    """VK plus 18 base32 characters (90 bits) from random_bytes (at least 12 bytes)."""
    return ACCESS_KEY_ID_PREFIX + _b32(random_bytes)[:18].upper()


def new_api_key_id(random_bytes: bytes) -> str:
    """16 lower-case base32 characters (80 bits) from random_bytes (at least 10 bytes)."""
    return _b32(random_bytes)[:16]


def encode_secret_key(derived: bytes) -> str:
    """An access key's secret as the caller receives it: 32 bytes as unpadded base64url."""
    return base64.urlsafe_b64encode(derived).rstrip(b"=").decode("ascii")


def make_api_token(api_key_id: str, secret: bytes) -> str:
    """vkapi_<id>_<52 base32 chars of a 32-byte secret>_<7 base32 chars of CRC32>. The
    checksum lets secret scanners tell a real token from a look-alike without asking us."""
    body = f"{API_TOKEN_PREFIX}{api_key_id}_{_b32(secret)[:52]}"
    return f"{body}_{_checksum(body)}"


def parse_api_token(token: str) -> str | None:
    """The key id of a well-formed token with a valid checksum, else None. Says nothing about
    whether the token is genuine: only its keyed hash can."""
    match = _API_TOKEN_RE.fullmatch(token) if len(token) < 128 else None
    if match is None:
        return None
    body = token[: -len(match["check"]) - 1]
    if _checksum(body) != match["check"]:
        return None
    return match["id"]


def _checksum(body: str) -> str:
    return _b32(zlib.crc32(body.encode("ascii")).to_bytes(4, "big"))[:7]


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def check_description(text: str, limit: int = MAX_DESCRIPTION) -> str:
    if len(text) > limit:
        raise InvalidArgument(
            f"description is longer than {limit} characters", metadata={"field": "description"}
        )
    return text


def check_account_id(account_id: str) -> str:
    return check_id("account", account_id)
