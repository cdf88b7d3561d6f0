"""The backup bundle's byte format (README.md, "Backup and restore").

A bundle is UTF-8 text, one canonical JSON object per line (keys sorted, no spaces, ASCII
only, each line ended by one line feed): a header, the entries, then a trailer. JSON so that
an operator can read what a bundle holds and another program can check it; canonical so that
the digests over the lines are reproducible. Key material is only ever wrapped blobs, base64.

- header: format "vault-backup", version 1, export id and time, the selection, the exporting
  token's identity and the signing key's public half (DER SubjectPublicKeyInfo, base64) and
  its SHA-256 fingerprint;
- entries, each with a "kind": "key" (metadata and versions with their blobs), "bucket" (its
  metadata and its master key, as a "key" entry), "tombstone" (a revoked or destroyed key,
  version or bucket: name, state, time, reason; no material) and "skipped" (a key that
  cannot leave the token, with the reason);
- trailer: a summary (export id, SHA-256 of the header line, SHA-256 over the entry lines in
  order, the number of entries of each kind) and an ECDSA P-256 signature over
  SIGNING_CONTEXT + the summary's canonical JSON, made by the exporting token's backup key.

Completeness (counts and digests) is checked here; the signature needs a verifier and is
checked by vault.service.backup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, BinaryIO, Final

from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.buckets import Bucket, BucketPolicy
from vault.domain.ceremony import TokenIdentity
from vault.domain.errors import BackupInvalid, InvalidArgument
from vault.domain.models import Key, KeyState, KeyVersion, RevocationReason, VersionState
from vault.domain.names import BucketName, KeyName

FORMAT: Final = "vault-backup"
VERSION: Final = 1
SIGNING_CONTEXT: Final = b"vault-backup/1\n"
KINDS: Final = ("key", "bucket", "tombstone", "skipped")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
# A line longer than this is refused before it is parsed: the largest entry (a key with many
# RSA-4096 versions) stays far below it.
MAX_LINE_BYTES: Final = 16 * 1024 * 1024


class SkipReason(StrEnum):
    """Why an export or a restore left something out."""

    TOKEN_RESIDENT = "TOKEN_RESIDENT"  # noqa: S105 (a reason, not a secret)
    EXISTS = "EXISTS"
    REVOKED_LATER = "REVOKED_LATER"
    DESTROYED_LATER = "DESTROYED_LATER"
    UNKNOWN_ROOT_GENERATION = "UNKNOWN_ROOT_GENERATION"
    UNSUPPORTED_ALGORITHM = "UNSUPPORTED_ALGORITHM"
    # The key's account does not exist here: accounts and credentials are not in bundles.
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    # A tombstone of the bundle: nothing to restore, it is recorded instead.
    TOMBSTONE = "TOMBSTONE"


@dataclass(frozen=True, slots=True)
class Selection:
    """What an export takes; all empty: everything. Keys are names or name prefixes
    (accounts/a/keys/web- takes every key of account a whose id starts with web-)."""

    accounts: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return not (self.accounts or self.keys or self.buckets)

    def as_json(self) -> dict[str, list[str]]:
        return {
            "accounts": list(self.accounts),
            "keys": list(self.keys),
            "buckets": list(self.buckets),
        }


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """One backup export, as the vault's export log keeps it."""

    export_id: str
    create_time: datetime
    selection: Mapping[str, list[str]]
    entry_count: int
    signer_fingerprint: str


@dataclass(frozen=True, slots=True)
class Skipped:
    name: str
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BundleSummary:
    """A bundle's header and trailer, checked against its lines (BundleReader): what a check
    needs, without the entries."""

    header: dict[str, Any]
    summary: dict[str, Any]
    signed_payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def export_id(self) -> str:
        return str(self.header["export_id"])

    @property
    def public_key_der(self) -> bytes:
        return b64decode(self.header["signing_key"]["public_key_der"])

    @property
    def counts(self) -> dict[str, int]:
        return {kind: int(self.summary["counts"][kind]) for kind in KINDS}

    @property
    def entry_count(self) -> int:
        return sum(self.counts.values())

    @property
    def create_time(self) -> datetime:
        return from_micros(int(self.header["create_time_us"]))


@dataclass(frozen=True, slots=True)
class ParsedBundle(BundleSummary):
    """A whole bundle in memory, entries too (read_bundle): for small bundles and tests."""

    entries: list[dict[str, Any]] = field(default_factory=list)


def canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def fingerprint(public_key_der: bytes) -> str:
    return hashlib.sha256(public_key_der).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Any) -> bytes:
    if not isinstance(text, str):
        raise BackupInvalid("the bundle holds a malformed binary field")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BackupInvalid("the bundle holds a malformed binary field") from None


def micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return _EPOCH + value * _MICROSECOND


def _micros_or_none(value: datetime | None) -> int | None:
    return None if value is None else micros(value)


def _time_or_none(value: Any) -> datetime | None:
    return None if value is None else from_micros(int(value))


# -- writing ------------------------------------------------------------------------------


class BundleWriter:
    """Builds a bundle line by line, keeping the digests and counts its trailer states."""

    def __init__(
        self,
        export_id: str,
        created: datetime,
        selection: Selection,
        token: TokenIdentity,
        public_key_der: bytes,
    ) -> None:
        self.export_id = export_id
        self._header = canonical(
            {
                "format": FORMAT,
                "version": VERSION,
                "export_id": export_id,
                "create_time_us": micros(created),
                "selection": selection.as_json(),
                "token": {
                    "label": token.label,
                    "serial": token.serial,
                    "manufacturer": token.manufacturer,
                    "model": token.model,
                },
                "signing_key": {
                    "algorithm": str(Algorithm.EC_SIGN_P256_SHA256),
                    "public_key_der": b64(public_key_der),
                    "fingerprint": fingerprint(public_key_der),
                },
            }
        )
        self._entries = hashlib.sha256()
        self.counts = dict.fromkeys(KINDS, 0)

    def header_line(self) -> bytes:
        return self._header + b"\n"

    def entry_line(self, entry: Mapping[str, Any]) -> bytes:
        kind = entry["kind"]
        if kind not in self.counts:
            raise ValueError(f"unknown entry kind {kind!r}")
        line = canonical(entry) + b"\n"
        self._entries.update(line)
        self.counts[kind] += 1
        return line

    def signed_payload(self) -> tuple[bytes, dict[str, Any]]:
        """The bytes the trailer's signature covers, and the summary they encode."""
        summary = {
            "export_id": self.export_id,
            "header_sha256": hashlib.sha256(self.header_line()).hexdigest(),
            "entries_sha256": self._entries.hexdigest(),
            "counts": dict(self.counts),
        }
        return SIGNING_CONTEXT + canonical(summary), summary

    def trailer_line(self, summary: Mapping[str, Any], signature: bytes) -> bytes:
        return canonical({"kind": "trailer", "summary": summary, "signature": b64(signature)}) + (
            b"\n"
        )


def key_entry(key: Key, versions: Iterable[KeyVersion]) -> dict[str, Any]:
    return {
        "kind": "key",
        "name": str(key.name),
        "purpose": str(key.purpose),
        "algorithm": str(key.algorithm),
        "state": str(key.state),
        "primary_version": key.primary_version,
        "labels": dict(key.labels),
        "description": key.description,
        "create_time_us": micros(key.create_time),
        "update_time_us": micros(key.update_time),
        "destroy_scheduled_time_us": _micros_or_none(key.destroy_scheduled_time),
        "state_before_destroy_scheduled": (
            None
            if key.state_before_destroy_scheduled is None
            else str(key.state_before_destroy_scheduled)
        ),
        "versions": [_version_entry(version) for version in versions],
    }


def _version_entry(version: KeyVersion) -> dict[str, Any]:
    return {
        "number": version.number,
        "state": str(version.state),
        "create_time_us": micros(version.create_time),
        "root_generation": version.root_generation,
        # A destroyed version has no blob left; nothing else leaves without one.
        "wrapped_blob": None if version.wrapped_blob is None else b64(version.wrapped_blob),
        "public_key_der": None if version.public_key_der is None else b64(version.public_key_der),
        "destroy_time_us": _micros_or_none(version.destroy_time),
    }


def bucket_entry(bucket: Bucket, master_key: Key, versions: Iterable[KeyVersion]) -> dict[str, Any]:
    return {
        "kind": "bucket",
        "name": str(bucket.name),
        "labels": dict(bucket.labels),
        "key_lifetime_us": bucket.policy.key_lifetime // _MICROSECOND,
        "max_objects_per_key": bucket.policy.max_objects,
        "max_bytes_per_key": bucket.policy.max_bytes,
        "create_time_us": micros(bucket.create_time),
        "update_time_us": micros(bucket.update_time),
        "master_key": key_entry(master_key, versions),
    }


def tombstone_entry(
    name: str,
    state: KeyState,
    time: datetime,
    reason_code: RevocationReason | None = None,
    reason: str = "",
) -> dict[str, Any]:
    return {
        "kind": "tombstone",
        "name": name,
        "state": str(state),
        "time_us": micros(time),
        "reason_code": None if reason_code is None else str(reason_code),
        "reason": reason,
    }


def skipped_entry(skipped: Skipped) -> dict[str, Any]:
    return {
        "kind": "skipped",
        "name": skipped.name,
        "reason": str(skipped.reason),
        "detail": skipped.detail,
    }


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A revoked or destroyed key (version None), key version or bucket."""

    name: str
    state: KeyState
    time: datetime
    reason_code: RevocationReason | None = None
    reason: str = ""


class BundleReader:
    """One pass over a bundle's lines that keeps none of them: entries() yields each entry as
    it is read (a canonical JSON object of a known kind), and once the lines end checks the
    trailer against the digests and counts of what it read; summary is then the checked header
    and trailer. So a bundle of any size is checked in the memory of its longest line.
    BackupInvalid if anything is off, raised at the first line found wrong."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._lines = lines
        self._summary: BundleSummary | None = None

    @property
    def summary(self) -> BundleSummary:
        if self._summary is None:
            raise RuntimeError("the bundle was not read to its end")
        return self._summary

    def entries(self) -> Iterator[dict[str, Any]]:
        iterator = iter(self._lines)
        header_line = next(iterator, b"")
        header = _parse_line(header_line)
        if header.get("format") != FORMAT:
            raise BackupInvalid("not a vault backup bundle")
        if header.get("version") != VERSION:
            raise BackupInvalid(
                f"unsupported bundle version {header.get('version')!r}",
                metadata={"version": str(header.get("version"))},
            )
        digest = hashlib.sha256()
        counts = dict.fromkeys(KINDS, 0)
        trailer: dict[str, Any] | None = None
        for line in iterator:
            if trailer is not None:
                raise BackupInvalid("the bundle continues after its trailer")
            parsed = _parse_line(line)
            kind = parsed.get("kind")
            if kind == "trailer":
                trailer = parsed
                continue
            if kind not in counts:
                raise BackupInvalid("the bundle holds an entry of unknown kind")
            digest.update(line)
            counts[kind] += 1
            yield parsed
        if trailer is None:
            raise BackupInvalid("the bundle is truncated: it has no trailer")
        summary = trailer.get("summary")
        if not isinstance(summary, dict):
            raise BackupInvalid("the bundle's trailer has no summary")
        expected = {
            "export_id": header.get("export_id"),
            "header_sha256": hashlib.sha256(header_line).hexdigest(),
            "entries_sha256": digest.hexdigest(),
            "counts": counts,
        }
        for name, value in expected.items():
            if summary.get(name) != value:
                raise BackupInvalid(
                    f"the bundle is incomplete or altered: its {name} does not match",
                    metadata={"field": name},
                )
        self._summary = BundleSummary(
            header=header,
            summary=summary,
            signed_payload=SIGNING_CONTEXT + canonical(summary),
            signature=b64decode(trailer.get("signature")),
        )


def check_bundle(lines: Iterable[bytes]) -> BundleSummary:
    """Check a bundle's completeness in one pass, keeping no entry: format, version, the
    header's digest, the entries' digest and counts against the trailer."""
    reader = BundleReader(lines)
    for _ in reader.entries():
        pass
    return reader.summary


def read_bundle(lines: Iterable[bytes]) -> ParsedBundle:
    """check_bundle, keeping every entry."""
    reader = BundleReader(lines)
    entries = list(reader.entries())
    summary = reader.summary
    return ParsedBundle(
        header=summary.header,
        summary=summary.summary,
        signed_payload=summary.signed_payload,
        signature=summary.signature,
        entries=entries,
    )


def read_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of a bundle file, each with its line feed, reading at most one line longer
    than MAX_LINE_BYTES at a time: such a line comes without its line feed, which the check
    refuses, so no line ever takes more memory than that."""
    while line := stream.readline(MAX_LINE_BYTES + 1):
        yield line


def split_lines(data: bytes) -> Iterator[bytes]:
    """The lines of a whole bundle in memory, each with its line feed."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            raise BackupInvalid("the bundle is truncated: its last line has no line feed")
        yield data[start : end + 1]
        start = end + 1


def _parse_line(line: bytes) -> dict[str, Any]:
    if not line.endswith(b"\n") or len(line) > MAX_LINE_BYTES:
        raise BackupInvalid("the bundle is truncated or malformed")
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise BackupInvalid("the bundle holds a line that is not JSON") from None
    if not isinstance(value, dict):
        raise BackupInvalid("the bundle holds a line that is not a JSON object")
    if canonical(value) + b"\n" != line:
        raise BackupInvalid("the bundle holds a line that is not in canonical form")
    return value


def key_from_entry(
    entry: Mapping[str, Any], master_of: BucketName | None = None
) -> tuple[Key, list[KeyVersion]]:
    """The key and versions a "key" entry (or the master key of bucket master_of: no caller
    can name it, so its name comes from the bucket's) describes."""
    try:
        name = KeyName.parse(entry["name"]) if master_of is None else master_of.master_key
        before = entry["state_before_destroy_scheduled"]
        key = Key(
            name=name,
            purpose=Purpose(entry["purpose"]),
            algorithm=Algorithm(entry["algorithm"]),
            state=KeyState(entry["state"]),
            primary_version=int(entry["primary_version"]),
            create_time=from_micros(int(entry["create_time_us"])),
            update_time=from_micros(int(entry["update_time_us"])),
            labels={str(k): str(v) for k, v in dict(entry["labels"]).items()},
            description=str(entry["description"]),
            destroy_scheduled_time=_time_or_none(entry["destroy_scheduled_time_us"]),
            state_before_destroy_scheduled=None if before is None else KeyState(before),
        )
        versions = [
            KeyVersion(
                name=name.version(int(item["number"])),
                state=VersionState(item["state"]),
                create_time=from_micros(int(item["create_time_us"])),
                root_generation=(
                    None if item["root_generation"] is None else int(item["root_generation"])
                ),
                wrapped_blob=(
                    None if item["wrapped_blob"] is None else b64decode(item["wrapped_blob"])
                ),
                token_label=None,
                public_key_der=(
                    None if item["public_key_der"] is None else b64decode(item["public_key_der"])
                ),
                destroy_time=_time_or_none(item["destroy_time_us"]),
            )
            for item in entry["versions"]
        ]
    except (KeyError, TypeError, ValueError, AttributeError, InvalidArgument) as error:
        if isinstance(error, BackupInvalid):
            raise
        raise BackupInvalid("the bundle holds a malformed key entry") from None
    for version in versions:
        holds_material = version.state is not VersionState.DESTROYED
        if holds_material != (version.wrapped_blob is not None and version.root_generation):
            raise BackupInvalid(
                "the bundle holds a key version without its blob",
                metadata={"name": str(version.name)},
            )
    return key, versions


def bucket_from_entry(entry: Mapping[str, Any]) -> tuple[Bucket, Key, list[KeyVersion]]:
    try:
        name = BucketName.parse(entry["name"])
        key, versions = key_from_entry(entry["master_key"], master_of=name)
        max_objects = entry["max_objects_per_key"]
        max_bytes = entry["max_bytes_per_key"]
        bucket = Bucket(
            name=name,
            labels={str(k): str(v) for k, v in dict(entry["labels"]).items()},
            policy=BucketPolicy(
                key_lifetime=int(entry["key_lifetime_us"]) * _MICROSECOND,
                max_objects=None if max_objects is None else int(max_objects),
                max_bytes=None if max_bytes is None else int(max_bytes),
            ),
            create_time=from_micros(int(entry["create_time_us"])),
            update_time=from_micros(int(entry["update_time_us"])),
        )
    except (KeyError, TypeError, ValueError, AttributeError, InvalidArgument) as error:
        if isinstance(error, BackupInvalid):
            raise
        raise BackupInvalid("the bundle holds a malformed bucket entry") from None
    if str(key.name) != entry["master_key"].get("name"):
        raise BackupInvalid("a bucket's master key belongs to another bucket")
    return bucket, key, versions


def tombstone_from_entry(entry: Mapping[str, Any]) -> Tombstone:
    try:
        code = entry["reason_code"]
        return Tombstone(
            name=str(entry["name"]),
            state=KeyState(entry["state"]),
            time=from_micros(int(entry["time_us"])),
            reason_code=None if code is None else RevocationReason(code),
            reason=str(entry["reason"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BackupInvalid("the bundle holds a malformed tombstone") from None
