"""Resource names: accounts/{a}/keys/{k}[/versions/{n}] and
accounts/{a}/buckets/{b}[/masterKeyVersions/{n}].

Every pattern is applied with fullmatch: `$` would also accept a trailing newline.

IDs are short, lower-case and URL-safe, so names can be logged, compared and used as
PKCS#11 labels without escaping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vault.domain.errors import MalformedName

_ID = r"[a-z][a-z0-9-]{0,62}"
_ID_RE = re.compile(_ID)
_KEY_RE = re.compile(rf"accounts/(?P<account>{_ID})/keys/(?P<key>{_ID})")
_VERSION_RE = re.compile(
    rf"accounts/(?P<account>{_ID})/keys/(?P<key>{_ID})/versions/(?P<version>[1-9][0-9]{{0,8}})"
)
_ACCOUNT_RE = re.compile(rf"accounts/(?P<account>{_ID})")
_BUCKET_RE = re.compile(rf"accounts/(?P<account>{_ID})/buckets/(?P<bucket>{_ID})")
_MASTER_VERSION_RE = re.compile(
    rf"accounts/(?P<account>{_ID})/buckets/(?P<bucket>{_ID})"
    r"/masterKeyVersions/(?P<version>[1-9][0-9]{0,8})"
)
_MAX_NAME = 256
# Token objects of token-resident key versions are labelled this prefix plus a random UUID;
# the root generations have their own prefix (vault.hsm.templates).
TOKEN_KEY_LABEL_PREFIX = "vault:key:"  # noqa: S105 (a label, not a secret)
# A bucket's master key is the key "~{bucket}" of its account: a record like any key's (state,
# versions, wrapped blobs, destruction), under an id no caller can name through KeyService
# (ids start with a letter), so it never collides with the account's keys and is not listed
# among them.
MASTER_KEY_PREFIX = "~"


def check_id(kind: str, value: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise MalformedName(
            f"{kind} id must match {_ID} (lower-case letter first, then letters, digits, '-')",
            metadata={"field": kind},
        )
    return value


@dataclass(frozen=True, slots=True)
class AccountName:
    account: str

    @classmethod
    def parse(cls, name: str) -> AccountName:
        match = _ACCOUNT_RE.fullmatch(name) if len(name) <= _MAX_NAME else None
        if not match:
            raise MalformedName("expected accounts/{account}", metadata={"name": _clip(name)})
        return cls(match["account"])

    def __str__(self) -> str:
        return f"accounts/{self.account}"


@dataclass(frozen=True, slots=True)
class KeyName:
    account: str
    key: str

    @classmethod
    def parse(cls, name: str) -> KeyName:
        match = _KEY_RE.fullmatch(name) if len(name) <= _MAX_NAME else None
        if not match:
            raise MalformedName(
                "expected accounts/{account}/keys/{key}", metadata={"name": _clip(name)}
            )
        return cls(match["account"], match["key"])

    def version(self, number: int) -> KeyVersionName:
        return KeyVersionName(self.account, self.key, number)

    def __str__(self) -> str:
        return f"accounts/{self.account}/keys/{self.key}"


@dataclass(frozen=True, slots=True)
class KeyVersionName:
    account: str
    key: str
    version: int

    @classmethod
    def parse(cls, name: str) -> KeyVersionName:
        match = _VERSION_RE.fullmatch(name) if len(name) <= _MAX_NAME else None
        if not match:
            raise MalformedName(
                "expected accounts/{account}/keys/{key}/versions/{n}",
                metadata={"name": _clip(name)},
            )
        return cls(match["account"], match["key"], int(match["version"]))

    @property
    def key_name(self) -> KeyName:
        return KeyName(self.account, self.key)

    def __str__(self) -> str:
        return f"accounts/{self.account}/keys/{self.key}/versions/{self.version}"


@dataclass(frozen=True, slots=True)
class BucketName:
    account: str
    bucket: str

    @classmethod
    def parse(cls, name: str) -> BucketName:
        match = _BUCKET_RE.fullmatch(name) if len(name) <= _MAX_NAME else None
        if not match:
            raise MalformedName(
                "expected accounts/{account}/buckets/{bucket}", metadata={"name": _clip(name)}
            )
        return cls(match["account"], match["bucket"])

    @property
    def master_key(self) -> KeyName:
        """The bucket's master key record (see MASTER_KEY_PREFIX)."""
        return KeyName(self.account, MASTER_KEY_PREFIX + self.bucket)

    def master_version(self, number: int) -> MasterKeyVersionName:
        return MasterKeyVersionName(self.account, self.bucket, number)

    def __str__(self) -> str:
        return f"accounts/{self.account}/buckets/{self.bucket}"


@dataclass(frozen=True, slots=True)
class MasterKeyVersionName:
    account: str
    bucket: str
    version: int

    @classmethod
    def parse(cls, name: str) -> MasterKeyVersionName:
        match = _MASTER_VERSION_RE.fullmatch(name) if len(name) <= _MAX_NAME else None
        if not match:
            raise MalformedName(
                "expected accounts/{account}/buckets/{bucket}/masterKeyVersions/{n}",
                metadata={"name": _clip(name)},
            )
        return cls(match["account"], match["bucket"], int(match["version"]))

    @property
    def bucket_name(self) -> BucketName:
        return BucketName(self.account, self.bucket)

    def __str__(self) -> str:
        return f"accounts/{self.account}/buckets/{self.bucket}/masterKeyVersions/{self.version}"


def parse_key_or_version(name: str) -> tuple[KeyName, int | None]:
    """A key name (use the primary version) or a version name (use that version)."""
    if "/versions/" in name:
        version = KeyVersionName.parse(name)
        return version.key_name, version.version
    return KeyName.parse(name), None


def _clip(name: str) -> str:
    return name if len(name) <= 80 else name[:77] + "..."
