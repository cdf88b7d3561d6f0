"""In-memory implementations of the ports (vault.domain.ports), for the use cases' unit tests.

They keep the contracts the ports document (optimistic etags, atomic multi-row changes, the
material epoch, idempotent request ids, ordered pages) without a database or a token, so a
use case's logic is tested in milliseconds. FakeKeyStore does real cryptography with
`cryptography` in memory: what it encrypts, signs or wraps can be checked like the token's
output. Page tokens here are plain strings, opaque to the use cases as the stores' are.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from vault.domain.algorithms import DIGEST_SIZES, Algorithm, HashName, KeyFamily, Padding
from vault.domain.audit import (
    GENESIS_HASH,
    ArchiveMarker,
    AuditEvent,
    AuditRecord,
    Checkpoint,
    chain,
)
from vault.domain.buckets import MASTER_KEY_STATES, Bucket, BucketFilter, NewestVersions
from vault.domain.ceremony import (
    CeremonyRefused,
    DocumentInvalid,
    KeyNotWrappable,
    RootInfo,
    TokenIdentity,
    TransportKey,
    WrappedRoot,
)
from vault.domain.errors import (
    AlreadyExists,
    Conflict,
    DecryptionFailed,
    ImportFailed,
    InvalidArgument,
    NotFound,
    TokenOperationFailed,
    VaultError,
)
from vault.domain.identity import AccessKey, Account, ApiKey, UsageCount
from vault.domain.imports import ImportJob, ImportJobName, ImportMethod
from vault.domain.models import (
    Key,
    KeyFilter,
    KeyState,
    KeyVersion,
    ListedKey,
    Page,
    Revocation,
    RootGeneration,
    VersionState,
)
from vault.domain.names import MASTER_KEY_PREFIX, BucketName, KeyName, KeyVersionName
from vault.domain.ports import AuditFilter, AuditHead, GeneratedMaterial, TokenGcm, TokenSign

T = TypeVar("T")
_Request = TypeVar("_Request")
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000

_HASHES: Final[dict[HashName, Callable[[], hashes.HashAlgorithm]]] = {
    HashName.SHA1: hashes.SHA1,
    HashName.SHA256: hashes.SHA256,
    HashName.SHA384: hashes.SHA384,
    HashName.SHA512: hashes.SHA512,
}
_CURVES: Final[dict[str, Callable[[], ec.EllipticCurve]]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
}


def page_of(items: Sequence[T], sort_key: Callable[[T], str], size: int, token: str) -> Page[T]:
    """The page after token (the sort key of the previous page's last item) of items."""
    size = DEFAULT_PAGE_SIZE if size == 0 else max(1, min(MAX_PAGE_SIZE, size))
    ordered = sorted(items, key=sort_key)
    if token:
        ordered = [item for item in ordered if sort_key(item) > token]
    page = list(ordered[:size])
    return Page(page, sort_key(page[-1]) if len(ordered) > size else "")


def _version_order(name: KeyVersionName) -> str:
    # Zero-padded, so that string order is (account, key, version) order.
    return f"{name.account}\x00{name.key}\x00{name.version:010d}"


# -- the metadata and bucket stores ----------------------------------------------------------


class FakeMetadataStore:
    """MetadataStore in memory. Keys are kept with their etag; every write checks it."""

    def __init__(self) -> None:
        self.keys: dict[KeyName, Key] = {}
        self.versions: dict[KeyVersionName, KeyVersion] = {}
        self.roots: dict[int, RootGeneration] = {}
        self.epoch = 0
        self.purge_succeeds = True
        self.purges = 0

    # -- keys

    def create_key(self, key: Key, first_version: KeyVersion) -> Key:
        self._require_same_key(key, first_version)
        if key.name in self.keys:
            raise AlreadyExists("key already exists", metadata={"name": str(key.name)})
        if key.request_id and self.find_key_by_request_id(key.name.account, key.request_id):
            raise AlreadyExists("a key was already created for this request id")
        self._require_new_version(first_version)
        self.keys[key.name] = key
        self.versions[first_version.name] = first_version
        return key

    def get_key(self, name: KeyName) -> Key | None:
        return self.keys.get(name)

    def get_key_and_version(
        self,
        name: KeyName,
        number: int | None,
        cached_version: Callable[[KeyVersionName], KeyVersion | None],
        epoch_seen: Callable[[int], None] | None = None,
    ) -> tuple[Key | None, KeyVersion | None]:
        if epoch_seen is not None:
            epoch_seen(self.epoch)
        key = self.keys.get(name)
        if key is None:
            return None, None
        wanted = name.version(number if number is not None else key.primary_version)
        return key, self.versions.get(wanted)

    def find_key_by_request_id(self, account: str, request_id: str) -> Key | None:
        if not request_id:
            return None
        for key in self.keys.values():
            if key.name.account == account and key.request_id == request_id:
                return key
        return None

    def list_keys(
        self, account: str, key_filter: KeyFilter, page_size: int, page_token: str
    ) -> Page[ListedKey]:
        if key_filter.label_value is not None and key_filter.label_key is None:
            raise InvalidArgument("a label value filter needs a label key")
        matching = [
            ListedKey.of(key)
            for key in self.keys.values()
            if key.name.account == account
            and not key.name.key.startswith(MASTER_KEY_PREFIX)
            and (key_filter.purpose is None or key.purpose is key_filter.purpose)
            and (key_filter.state is None or key.state is key_filter.state)
            and _labels_match(key.labels, key_filter.label_key, key_filter.label_value)
        ]
        return page_of(matching, lambda key: key.key_id, page_size, page_token)

    def update_key(self, key: Key) -> Key:
        stored = self._current(key)
        # Name, purpose, algorithm, residency, creation time and request id are fixed.
        updated = replace(
            key,
            purpose=stored.purpose,
            algorithm=stored.algorithm,
            token_resident=stored.token_resident,
            create_time=stored.create_time,
            request_id=stored.request_id,
            etag=stored.etag + 1,
        )
        self.keys[key.name] = updated
        return updated

    def add_version(self, key: Key, version: KeyVersion, *, make_primary: bool = True) -> Key:
        self._require_same_key(key, version)
        stored = self._current(key)
        self._require_new_version(version)
        changes: dict[str, Any] = {
            "update_time": max(key.update_time, version.create_time),
            "etag": stored.etag + 1,
        }
        if version.state is VersionState.ENABLED and make_primary:
            changes["primary_version"] = version.number
        updated = replace(stored, **changes)
        self.keys[key.name] = updated
        self.versions[version.name] = version
        return updated

    def activate_version(self, version: KeyVersion) -> Key:
        stored = self.versions.get(version.name)
        if stored is None or stored.state is not VersionState.PENDING:
            raise Conflict("the key version was destroyed or discarded while it was created")
        self.versions[version.name] = replace(
            stored, state=VersionState.ENABLED, public_key_der=version.public_key_der
        )
        key = self.keys[version.name.key_name]
        updated = replace(
            key, primary_version=max(key.primary_version, version.number), etag=key.etag + 1
        )
        self.keys[key.name] = updated
        return updated

    # -- versions

    def get_version(self, name: KeyVersionName) -> KeyVersion | None:
        return self.versions.get(name)

    def list_versions(self, key: KeyName) -> list[KeyVersion]:
        return sorted(
            (v for v in self.versions.values() if v.name.key_name == key),
            key=lambda v: v.number,
        )

    def list_versions_page(self, key: KeyName, page_size: int, page_token: str) -> Page[KeyVersion]:
        versions = self.list_versions(key)
        after = int(page_token) if page_token else 0
        size = max(1, min(MAX_PAGE_SIZE, page_size or MAX_PAGE_SIZE))
        rest = [v for v in versions if v.number > after]
        items = rest[:size]
        token = str(items[-1].number) if len(rest) > size else ""
        return Page(items, token, lambda i: str(items[i].number))

    def update_version(self, version: KeyVersion) -> None:
        stored = self.versions.get(version.name)
        if stored is None:
            raise NotFound("key version not found", metadata={"name": str(version.name)})
        self.versions[version.name] = replace(
            stored,
            state=version.state,
            root_generation=version.root_generation,
            wrapped_blob=version.wrapped_blob,
            token_label=version.token_label,
            public_key_der=version.public_key_der,
            destroy_time=version.destroy_time,
        )

    # -- revocation and the material epoch

    def revoke_key(self, key: Key) -> Key:
        assert key.revoke_time is not None
        updated = self.update_key(key)
        for version in self.list_versions(key.name):
            if version.state is not VersionState.DESTROYED and not version.revoked:
                self.versions[version.name] = replace(
                    version,
                    revoke_time=key.revoke_time,
                    revocation_reason_code=key.revocation_reason_code,
                    revocation_reason=key.revocation_reason,
                )
        self.epoch += 1
        return updated

    def revoke_version(self, key: Key, version: KeyVersion) -> KeyVersion:
        assert version.revoke_time is not None
        stored = self.versions.get(version.name)
        if stored is None or stored.state is not VersionState.ENABLED or stored.revoked:
            raise Conflict("the key version changed while it was revoked; read it again")
        current = self._current(key)
        self.keys[key.name] = replace(
            current, update_time=version.revoke_time, etag=current.etag + 1
        )
        revoked = replace(
            stored,
            revoke_time=version.revoke_time,
            revocation_reason_code=version.revocation_reason_code,
            revocation_reason=version.revocation_reason,
        )
        self.versions[version.name] = revoked
        self.epoch += 1
        return revoked

    def list_revocations(
        self, account: str | None, page_size: int, page_token: str
    ) -> Page[Revocation]:
        revoked = self._revoked(account)
        return page_of(revoked, lambda r: _version_order(r.version_name), page_size, page_token)

    def _revoked(self, account: str | None) -> list[Revocation]:
        return [
            Revocation(
                version.name,
                self.keys[version.name.key_name].algorithm,
                version.revocation_reason_code,
                version.revoke_time,
                version.public_key_der,
                version.revocation_reason,
            )
            for version in self.versions.values()
            if version.revoke_time is not None
            and (account is None or version.name.account == account)
        ]

    def scan_revocations(self, account: str | None) -> Iterator[Revocation]:
        # A copy first: the real store reads one snapshot, whatever changes meanwhile.
        revoked = self._revoked(account)
        yield from sorted(revoked, key=lambda r: _version_order(r.version_name))

    def material_epoch(self) -> int:
        return self.epoch

    def bump_material_epoch(self) -> None:
        self.epoch += 1

    # -- destruction

    def keys_due_for_destruction(self, now: datetime) -> list[Key]:
        due = [
            key
            for key in self.keys.values()
            if key.state is KeyState.DESTROY_SCHEDULED
            and key.destroy_scheduled_time is not None
            and key.destroy_scheduled_time <= now
        ]
        return sorted(due, key=lambda key: (key.destroy_scheduled_time, str(key.name)))

    def mark_destroyed(self, key: Key, now: datetime) -> Key:
        current = self._current(key)
        updated = replace(current, state=KeyState.DESTROYED, update_time=now, etag=key.etag + 1)
        self.keys[key.name] = updated
        for version in self.list_versions(key.name):
            self.versions[version.name] = replace(
                version,
                state=VersionState.DESTROYED,
                wrapped_blob=None,
                destroy_time=version.destroy_time or now,
            )
        self.epoch += 1
        return updated

    def purge_erased(self) -> bool:
        self.purges += 1
        return self.purge_succeeds

    # -- start-up reconciliation

    def pending_versions(self) -> list[KeyVersion]:
        pending = [v for v in self.versions.values() if v.state is VersionState.PENDING]
        return sorted(pending, key=lambda v: _version_order(v.name))

    def discard_pending(self, version: KeyVersion) -> None:
        key = self.keys.get(version.name.key_name)
        stored = self.versions.get(version.name)
        if key is None or stored is None:
            return
        if stored.state is not VersionState.PENDING:
            raise Conflict("the key version is no longer pending")
        del self.versions[version.name]
        remaining = self.list_versions(key.name)
        if not remaining:
            del self.keys[key.name]
        elif key.primary_version == version.number:
            enabled = [v.number for v in remaining if v.state is VersionState.ENABLED]
            primary = max(enabled or [v.number for v in remaining])
            self.keys[key.name] = replace(key, primary_version=primary, etag=key.etag + 1)

    def token_labels_in_use(self) -> set[str]:
        return {
            v.token_label
            for v in self.versions.values()
            if v.token_label is not None and v.state is not VersionState.DESTROYED
        }

    def root_generations_in_use(self) -> set[int]:
        return {
            v.root_generation
            for v in self.versions.values()
            if v.root_generation is not None and v.state is not VersionState.DESTROYED
        }

    def add_root_generation(self, root: RootGeneration) -> None:
        if root.generation in self.roots:
            raise AlreadyExists("root generation already recorded")
        self.roots[root.generation] = root

    def list_root_generations(self) -> list[RootGeneration]:
        return [self.roots[generation] for generation in sorted(self.roots)]

    def versions_per_root_generation(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for version in self.versions.values():
            if version.root_generation is not None and version.state is not VersionState.DESTROYED:
                counts[version.root_generation] = counts.get(version.root_generation, 0) + 1
        return counts

    def versions_under_root_generation(self, generation: int) -> list[KeyVersion]:
        return sorted(
            (
                v
                for v in self.versions.values()
                if v.root_generation == generation and v.state is not VersionState.DESTROYED
            ),
            key=lambda v: _version_order(v.name),
        )

    def retire_root_generation(self, generation: int) -> None:
        if generation in self.roots:
            self.roots[generation] = replace(self.roots[generation], retired=True)

    # -- plumbing

    def _current(self, key: Key) -> Key:
        stored = self.keys.get(key.name)
        if stored is None or stored.etag != key.etag:
            raise Conflict("the key was changed by another request; read it again and retry")
        return stored

    def _require_new_version(self, version: KeyVersion) -> None:
        if version.name in self.versions or (
            version.token_label is not None
            and any(v.token_label == version.token_label for v in self.versions.values())
        ):
            raise AlreadyExists("the key version or its token label already exists")

    @staticmethod
    def _require_same_key(key: Key, version: KeyVersion) -> None:
        if version.name.key_name != key.name:
            raise ValueError("the version does not belong to the key")


def _labels_match(labels: Mapping[str, str], key: str | None, value: str | None) -> bool:
    if key is None:
        return True
    return key in labels and (value is None or labels[key] == value)


class FakeBucketStore:
    """BucketStore in memory, over the FakeMetadataStore that holds the master keys."""

    def __init__(self, metadata: FakeMetadataStore) -> None:
        self.metadata = metadata
        self.buckets: dict[BucketName, Bucket] = {}

    def create_bucket(self, bucket: Bucket, master_key: Key, first_version: KeyVersion) -> Bucket:
        if bucket.name in self.buckets:
            raise AlreadyExists("bucket already exists", metadata={"name": str(bucket.name)})
        if bucket.request_id and self.find_bucket_by_request_id(
            bucket.name.account, bucket.request_id
        ):
            raise AlreadyExists("a bucket was already created for this request id")
        self.metadata.create_key(master_key, first_version)
        self.buckets[bucket.name] = bucket
        return bucket

    def get_bucket(self, name: BucketName) -> tuple[Bucket, Key] | None:
        bucket = self.buckets.get(name)
        if bucket is None:
            return None
        return bucket, self.metadata.keys[name.master_key]

    def find_bucket_by_request_id(self, account: str, request_id: str) -> Bucket | None:
        for bucket in self.buckets.values():
            if bucket.name.account == account and bucket.request_id == request_id:
                return bucket
        return None

    def list_buckets(
        self, account: str, bucket_filter: BucketFilter, page_size: int, page_token: str
    ) -> Page[tuple[Bucket, Key]]:
        if bucket_filter.label_value is not None and bucket_filter.label_key is None:
            raise InvalidArgument("a label value filter needs a label key")
        wanted = None if bucket_filter.state is None else MASTER_KEY_STATES[bucket_filter.state]
        matching = [
            (bucket, self.metadata.keys[name.master_key])
            for name, bucket in self.buckets.items()
            if name.account == account
            and (wanted is None or self.metadata.keys[name.master_key].state is wanted)
            and _labels_match(bucket.labels, bucket_filter.label_key, bucket_filter.label_value)
        ]
        return page_of(matching, lambda pair: pair[0].name.bucket, page_size, page_token)

    def master_key_versions(
        self, account: str, key_ids: Sequence[str], newest: int
    ) -> dict[str, NewestVersions]:
        found = {}
        for key_id in key_ids:
            versions = self.metadata.list_versions(KeyName(account, key_id))
            found[key_id] = NewestVersions(versions[-newest:], len(versions))
        return found

    def list_master_key_versions(
        self, key: KeyName, page_size: int, page_token: str
    ) -> Page[KeyVersion]:
        newest_first = self.metadata.list_versions(key)[::-1]
        before = int(page_token) if page_token else None
        size = max(1, min(MAX_PAGE_SIZE, page_size or MAX_PAGE_SIZE))
        rest = [v for v in newest_first if before is None or v.number < before]
        items = rest[:size]
        token = str(items[-1].number) if len(rest) > size else ""
        return Page(items, token, lambda i: str(items[i].number))

    def update_bucket(self, bucket: Bucket) -> Bucket:
        stored = self.buckets.get(bucket.name)
        if stored is None or stored.etag != bucket.etag:
            raise Conflict("the bucket was changed by another request; read it again")
        updated = replace(
            stored,
            labels=dict(bucket.labels),
            policy=bucket.policy,
            update_time=bucket.update_time,
            etag=stored.etag + 1,
        )
        self.buckets[bucket.name] = updated
        return updated


# -- the key store ---------------------------------------------------------------------------


@dataclass
class FakeKeyStore:
    """KeyStore with real cryptography in memory. Key versions are wrapped (AES-KWP) under an
    in-memory root key, or kept under their token label when token-resident; every failed
    decrypt or unwrap is DecryptionFailed, as the token's is."""

    algorithms: frozenset[Algorithm] = frozenset(Algorithm)
    root_generation: int = 1
    root: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    resident: dict[str, bytes] = field(default_factory=dict, repr=False)
    destroyed: list[KeyVersionName] = field(default_factory=list)
    destroyed_labels: list[str] = field(default_factory=list)
    dropped_before: list[int] = field(default_factory=list)
    generated: int = 0
    import_keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict, repr=False)
    # Makes an import job's key pair (bits): a test may hand out keys made once, since
    # generating RSA-3072 takes far longer than the use case under test.
    import_key_source: Callable[[int], rsa.RSAPrivateKey] = field(
        default=lambda bits: rsa.generate_private_key(65537, bits), repr=False
    )

    def supported_algorithms(self) -> frozenset[Algorithm]:
        return self.algorithms

    def current_root_generation(self) -> int:
        return self.root_generation

    def token_labels(self) -> set[str]:
        return set(self.resident)

    def root_generations_present(self) -> set[int]:
        return {self.root_generation}

    def generate(self, algorithm: Algorithm, token_label: str | None) -> GeneratedMaterial:
        self.generated += 1
        material, public = _new_material(algorithm)
        if token_label is not None:
            self.resident[token_label] = material
            return GeneratedMaterial(None, None, token_label, public)
        return GeneratedMaterial(
            self.root_generation, aes_key_wrap_with_padding(self.root, material), None, public
        )

    def import_key_labels(self) -> set[str]:
        return set(self.import_keys)

    def create_import_key(self, method: ImportMethod, token_label: str) -> bytes:
        private = self.import_key_source(method.rsa_bits)
        self.import_keys[token_label] = private
        return private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def import_material(
        self,
        token_label: str,
        method: ImportMethod,
        algorithm: Algorithm,
        wrapped: bytes,
        public_key_der: bytes | None,
    ) -> GeneratedMaterial:
        """The documented format: RSA-OAEP(SHA-1) of an AES-256 key, then AES-KWP of the
        material (raw bytes, or PKCS#8 DER for private keys)."""
        private = self.import_keys.get(token_label)
        split = method.wrapped_ephemeral_bytes
        oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
        try:
            if private is None:
                raise ValueError("no import key under this label")
            if len(wrapped) <= split:
                raise ValueError("no material after the wrapped ephemeral key")
            ephemeral = private.decrypt(wrapped[:split], oaep)
            material = aes_key_unwrap_with_padding(ephemeral, wrapped[split:])
            public = _check_imported(material, algorithm, public_key_der)
        except (ValueError, TypeError, InvalidUnwrap, InvalidSignature):
            raise ImportFailed("the wrapped key material does not import") from None
        return GeneratedMaterial(
            self.root_generation, aes_key_wrap_with_padding(self.root, material), None, public
        )

    def destroy(self, version: KeyVersion) -> None:
        self.destroyed.append(version.name)
        if version.token_label is not None:
            self.resident.pop(version.token_label, None)

    def destroy_label(self, token_label: str) -> bool:
        self.destroyed_labels.append(token_label)
        resident = self.resident.pop(token_label, None) is not None
        return self.import_keys.pop(token_label, None) is not None or resident

    def drop_handles_before(self, epoch: int) -> None:
        self.dropped_before.append(epoch)

    def random(self, size: int) -> bytes:
        return secrets.token_bytes(size)

    def encrypt_gcm(
        self, version: KeyVersion, algorithm: Algorithm, nonce: bytes, plaintext: bytes, aad: bytes
    ) -> bytes:
        return AESGCM(self._material(version)).encrypt(nonce, plaintext, aad)

    def decrypt_gcm(
        self, version: KeyVersion, algorithm: Algorithm, nonce: bytes, sealed: bytes, aad: bytes
    ) -> bytes:
        try:
            return AESGCM(self._material(version)).decrypt(nonce, sealed, aad)
        except (InvalidTag, ValueError):
            raise DecryptionFailed() from None

    def wrap_secret(self, version: KeyVersion, algorithm: Algorithm, material: bytes) -> bytes:
        return aes_key_wrap_with_padding(self._material(version), material)

    def unwrap_secret(self, version: KeyVersion, algorithm: Algorithm, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap_with_padding(self._material(version), wrapped)
        except (InvalidUnwrap, ValueError):
            raise DecryptionFailed() from None

    def sign(
        self, version: KeyVersion, algorithm: Algorithm, data: bytes, prehashed: bool
    ) -> bytes:
        private = serialization.load_der_private_key(self._material(version), None)
        spec = algorithm.spec
        if isinstance(private, ed25519.Ed25519PrivateKey):
            return private.sign(data)
        chosen: hashes.HashAlgorithm | utils.Prehashed = _HASHES[spec.hash]()
        if prehashed:
            chosen = utils.Prehashed(_HASHES[spec.hash]())
        if isinstance(private, ec.EllipticCurvePrivateKey):
            return private.sign(data, ec.ECDSA(chosen))
        if isinstance(private, rsa.RSAPrivateKey):
            if spec.padding is Padding.PSS:
                pss = padding.PSS(
                    mgf=padding.MGF1(_HASHES[spec.hash]()),
                    salt_length=_HASHES[spec.hash]().digest_size,
                )
                return private.sign(data, pss, chosen)
            return private.sign(data, padding.PKCS1v15(), chosen)
        raise TokenOperationFailed("not a signing key")

    def sign_many(self, requests: Sequence[TokenSign]) -> list[bytes | VaultError]:
        return _each(requests, lambda r: self.sign(r.version, r.algorithm, r.data, r.prehashed))

    def encrypt_gcm_many(self, requests: Sequence[TokenGcm]) -> list[bytes | VaultError]:
        return _each(
            requests, lambda r: self.encrypt_gcm(r.version, r.algorithm, r.nonce, r.data, r.aad)
        )

    def decrypt_gcm_many(self, requests: Sequence[TokenGcm]) -> list[bytes | VaultError]:
        return _each(
            requests, lambda r: self.decrypt_gcm(r.version, r.algorithm, r.nonce, r.data, r.aad)
        )

    def asymmetric_decrypt(
        self, version: KeyVersion, algorithm: Algorithm, ciphertext: bytes
    ) -> bytes:
        private = serialization.load_der_private_key(self._material(version), None)
        assert isinstance(private, rsa.RSAPrivateKey)
        hash_algorithm = _HASHES[algorithm.spec.hash]
        oaep = padding.OAEP(padding.MGF1(hash_algorithm()), hash_algorithm(), None)
        try:
            return private.decrypt(ciphertext, oaep)
        except ValueError:
            raise DecryptionFailed() from None

    def generate_mac(self, version: KeyVersion, algorithm: Algorithm, data: bytes) -> bytes:
        name = algorithm.spec.hash.value.lower()
        return hmac.new(self._material(version), data, name).digest()

    def verify_mac(
        self, version: KeyVersion, algorithm: Algorithm, data: bytes, mac: bytes
    ) -> bool:
        return hmac.compare_digest(self.generate_mac(version, algorithm, data), mac)

    def public_key(self, version: KeyVersion) -> Any:
        """The public half of version's private key, for checking signatures in a test."""
        return serialization.load_der_private_key(self._material(version), None).public_key()

    def opens(self, version: KeyVersion, algorithm: Algorithm) -> bool:
        if version.wrapped_blob is None or version.root_generation != self.root_generation:
            return False
        try:
            aes_key_unwrap_with_padding(self.root, version.wrapped_blob)
        except InvalidUnwrap:
            return False
        return True

    def token_identity(self) -> TokenIdentity:
        return TokenIdentity("fake", "0", "tests", "in memory")

    def _material(self, version: KeyVersion) -> bytes:
        if version.token_label is not None:
            material = self.resident.get(version.token_label)
            if material is None:
                raise TokenOperationFailed("no token object under this label")
            return material
        if version.wrapped_blob is None:
            raise TokenOperationFailed("the version holds no material")
        try:
            return aes_key_unwrap_with_padding(self.root, version.wrapped_blob)
        except InvalidUnwrap:
            raise DecryptionFailed() from None


def _each(
    requests: Sequence[_Request], operation: Callable[[_Request], bytes]
) -> list[bytes | VaultError]:
    """Each request's answer, or the VaultError it raised (as the token's batch calls do)."""
    answers: list[bytes | VaultError] = []
    for request in requests:
        try:
            answers.append(operation(request))
        except VaultError as error:
            answers.append(error)
    return answers


_HMAC_BLOCK_SIZES: Final = {HashName.SHA256: 64, HashName.SHA384: 128, HashName.SHA512: 128}


def _check_imported(
    material: bytes, algorithm: Algorithm, public_key_der: bytes | None
) -> bytes | None:
    """The public key of unwrapped material once it is a key of algorithm (the checks
    vault.hsm.keystore makes in the token); ValueError, TypeError or InvalidSignature
    otherwise."""
    spec = algorithm.spec
    if spec.family is KeyFamily.AES:
        if len(material) != spec.bits // 8:
            raise ValueError("not an AES key of the algorithm's length")
        return None
    if spec.family is KeyFamily.HMAC:
        if not DIGEST_SIZES[spec.hash] <= len(material) <= _HMAC_BLOCK_SIZES[spec.hash]:
            raise ValueError("not an HMAC key of a usable length")
        return None
    private = serialization.load_der_private_key(material, None)
    derived = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if spec.family is KeyFamily.RSA:
        if not isinstance(private, rsa.RSAPrivateKey) or private.key_size != spec.bits:
            raise ValueError("not an RSA key of the algorithm's size")
        if public_key_der is not None and public_key_der != derived:
            raise ValueError("the public key is not the imported key's")
        return derived
    if spec.family is KeyFamily.EC:
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != spec.curve:
            raise ValueError("not an EC key on the algorithm's curve")
        if public_key_der is None:
            raise ValueError("an EC key is imported with its public key")
        # As the token does: a signature by the imported key proves the public key is its.
        given = serialization.load_der_public_key(public_key_der)
        if not isinstance(given, ec.EllipticCurvePublicKey):
            raise ValueError("the public key is not an EC key")
        challenge = secrets.token_bytes(32)
        given.verify(
            private.sign(challenge, ec.ECDSA(hashes.SHA256())), challenge, ec.ECDSA(hashes.SHA256())
        )
        return derived
    raise ValueError("keys of this algorithm cannot be imported")


def _new_material(algorithm: Algorithm) -> tuple[bytes, bytes | None]:
    """(secret or PKCS#8 DER private key, SubjectPublicKeyInfo DER or None)."""
    spec = algorithm.spec
    if spec.family in (KeyFamily.AES, KeyFamily.HMAC):
        return secrets.token_bytes(spec.bits // 8), None
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if spec.family is KeyFamily.RSA:
        private = rsa.generate_private_key(65537, spec.bits)
    elif spec.family is KeyFamily.EC:
        private = ec.generate_private_key(_CURVES[spec.curve]())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der, public


# -- identity, audit and the vault's own keys --------------------------------------------------


class FakeIdentityStore:
    """IdentityStore (and AccountDirectory) in memory."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.access_keys: dict[str, AccessKey] = {}
        self.api_keys: dict[str, ApiKey] = {}
        self.usage_counts: dict[tuple[str, str, str], int] = {}
        self.reads = 0

    def create_account(self, account: Account) -> Account:
        if account.account_id in self.accounts:
            raise AlreadyExists("account already exists")
        self.accounts[account.account_id] = account
        return account

    def get_account(self, account_id: str) -> Account | None:
        self.reads += 1
        return self.accounts.get(account_id)

    def list_accounts(self, page_size: int, page_token: str) -> Page[Account]:
        return page_of(list(self.accounts.values()), lambda a: a.account_id, page_size, page_token)

    def has_admin_account(self) -> bool:
        return any(account.admin for account in self.accounts.values())

    def create_access_key(self, key: AccessKey) -> AccessKey:
        if key.account_id not in self.accounts:
            raise NotFound("account not found")
        if key.access_key_id in self.access_keys:
            raise AlreadyExists("access key id taken")
        self.access_keys[key.access_key_id] = key
        return key

    def get_access_key(self, access_key_id: str) -> AccessKey | None:
        self.reads += 1
        return self.access_keys.get(access_key_id)

    def list_access_keys(self, account_id: str, page_size: int, page_token: str) -> Page[AccessKey]:
        keys = [k for k in self.access_keys.values() if k.account_id == account_id]
        return page_of(keys, lambda k: k.access_key_id, page_size, page_token)

    def update_access_key(self, key: AccessKey) -> AccessKey:
        if key.access_key_id not in self.access_keys:
            raise NotFound("access key not found")
        self.access_keys[key.access_key_id] = key
        return key

    def delete_access_key(self, access_key_id: str) -> bool:
        return self.access_keys.pop(access_key_id, None) is not None

    def create_api_key(self, key: ApiKey) -> ApiKey:
        if key.account_id not in self.accounts:
            raise NotFound("account not found")
        if key.api_key_id in self.api_keys:
            raise AlreadyExists("API key id taken")
        self.api_keys[key.api_key_id] = key
        return key

    def get_api_key(self, api_key_id: str) -> ApiKey | None:
        self.reads += 1
        return self.api_keys.get(api_key_id)

    def list_api_keys(self, account_id: str, page_size: int, page_token: str) -> Page[ApiKey]:
        keys = [k for k in self.api_keys.values() if k.account_id == account_id]
        return page_of(keys, lambda k: k.api_key_id, page_size, page_token)

    def update_api_key(self, key: ApiKey) -> ApiKey:
        if key.api_key_id not in self.api_keys:
            raise NotFound("API key not found")
        self.api_keys[key.api_key_id] = key
        return key

    def usage(
        self, credential_id: str, since_day: str, page_size: int, page_token: str
    ) -> Page[UsageCount]:
        # As the SQL store: the token is "day:method" of the last counter sent, 0 every
        # counter after it, and a token it did not make is refused.
        if page_token and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}:.+", page_token):
            raise InvalidArgument("malformed page token", metadata={"field": "page_token"})
        counters = [
            UsageCount(day, method, count)
            for (credential, day, method), count in self.usage_counts.items()
            if credential == credential_id and day >= since_day
        ]
        if not page_size:
            ordered = sorted(counters, key=lambda c: (c.day, c.method))
            rest = [c for c in ordered if f"{c.day}:{c.method}" > page_token]
            return Page(rest, "", lambda index: f"{rest[index].day}:{rest[index].method}")
        page = page_of(counters, lambda c: f"{c.day}:{c.method}", page_size, page_token)
        return Page(
            page.items,
            page.next_page_token,
            lambda index: f"{page.items[index].day}:{page.items[index].method}",
        )

    def usage_on(self, credential_id: str, day: str) -> int:
        return sum(
            count
            for (credential, counted_day, _), count in self.usage_counts.items()
            if credential == credential_id and counted_day == day
        )


class FakeAuditStore:
    """AuditStore in memory: the chain, its checkpoints and archive markers. failing makes
    every append raise it (nothing is written), as a store that cannot commit does."""

    def __init__(self, identity: FakeIdentityStore | None = None) -> None:
        self.records: list[AuditRecord] = []
        self.checkpoints: list[Checkpoint] = []
        self.markers: list[ArchiveMarker] = []
        self.identity = identity
        self.last_used: dict[str, datetime] = {}
        self.failing: Exception | None = None
        self.appends = 0
        self._locked = False

    def append_audit(
        self,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
    ) -> AuditHead:
        if self.failing is not None:
            raise self.failing
        self.appends += 1
        seq, head_hash = self.audit_head()
        self.records.extend(chain(head_hash, seq + 1, events))
        if self.identity is not None:
            for counted, count in usage.items():
                counts = self.identity.usage_counts
                counts[counted] = counts.get(counted, 0) + count
        for credential, used in last_used.items():
            self.last_used[credential] = max(used, self.last_used.get(credential, used))
        seq, head_hash = self.audit_head()
        newest = self.checkpoints[-1] if self.checkpoints else None
        return AuditHead(
            seq,
            head_hash,
            0 if newest is None else newest.head_seq,
            None if newest is None else newest.signed_at,
        )

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        if any(c.head_seq == checkpoint.head_seq for c in self.checkpoints):
            return
        self.checkpoints.append(checkpoint)
        self.checkpoints.sort(key=lambda c: c.head_seq)

    def audit_records(self, after: int = 0) -> Iterator[AuditRecord]:
        return iter([record for record in self.records if record.seq > after])

    @contextmanager
    def _lock(self, wait: bool) -> Iterator[bool]:
        if self._locked:
            assert not wait, "the fake's checkpoint lock would wait for itself"
            yield False
            return
        self._locked = True
        try:
            yield True
        finally:
            self._locked = False

    def checkpoint_lock(self, *, wait: bool = True) -> Any:
        return self._lock(wait)

    def audit_checkpoints(self) -> list[Checkpoint]:
        return list(self.checkpoints)

    def audit_head(self) -> tuple[int, bytes]:
        if self.records:
            return self.records[-1].seq, self.records[-1].hash
        if self.markers:
            return self.markers[-1].through_seq, self.markers[-1].through_hash
        return 0, GENESIS_HASH

    def audit_archive_markers(self) -> list[ArchiveMarker]:
        return list(self.markers)

    def archive_audit(self, marker: ArchiveMarker) -> int:
        self.markers.append(marker)
        before = len(self.records)
        self.records = [r for r in self.records if r.seq > marker.through_seq]
        self.checkpoints = [c for c in self.checkpoints if c.head_seq > marker.through_seq]
        return before - len(self.records)

    def list_audit_events(
        self, audit_filter: AuditFilter, page_size: int, page_token: str
    ) -> Page[AuditRecord]:
        matching = [
            r
            for r in self.records
            if (
                not audit_filter.credential_id
                or r.event.credential_id == audit_filter.credential_id
            )
            and (not audit_filter.outcome or r.event.outcome == audit_filter.outcome)
        ]
        return page_of(matching, lambda r: f"{r.seq:019d}", page_size, page_token)


class FakeSystemCrypto:
    """SystemCrypto and FeedSigner in memory: an HMAC credential key, an Ed25519 audit key and
    an EC P-256 feed key, and the audit anchor the token would keep."""

    AUDIT_KEY_LABEL: Final = "audit-key-1"

    def __init__(self) -> None:
        self._credential_key = secrets.token_bytes(32)
        self._audit_key = ed25519.Ed25519PrivateKey.generate()
        self._feed_key = ec.generate_private_key(ec.SECP256R1())
        self.anchor: tuple[int, bytes] | None = None
        self.macs = 0

    def credential_mac(self, data: bytes) -> bytes:
        self.macs += 1
        return hmac.new(self._credential_key, data, hashlib.sha256).digest()

    def audit_sign(self, payload: bytes) -> tuple[bytes, str]:
        return self._audit_key.sign(payload), self.AUDIT_KEY_LABEL

    def audit_verify(self, payload: bytes, signature: bytes, key_label: str) -> bool:
        if key_label != self.AUDIT_KEY_LABEL:
            return False
        try:
            self._audit_key.public_key().verify(signature, payload)
        except InvalidSignature:
            return False
        return True

    def record_audit_anchor(self, head_seq: int, head_hash: bytes, *, reset: bool = False) -> None:
        if reset or self.anchor is None or head_seq > self.anchor[0]:
            self.anchor = (head_seq, head_hash)

    def audit_anchor(self) -> tuple[int, bytes] | None:
        return self.anchor

    def sign_feed(self, payload: bytes) -> bytes:
        return self._feed_key.sign(payload, ec.ECDSA(hashes.SHA256()))

    def sign_feed_digest(self, digest: bytes) -> bytes:
        return self._feed_key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    def feed_public_key_der(self) -> bytes:
        return self._feed_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class FakeCounters:
    """SharedCounters of one process, with the semantics of vault.coordination.limits."""

    def __init__(self) -> None:
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self.nonces: dict[bytes, float] = {}
        self.failure_times: dict[str, list[float]] = {}
        self.quotas: dict[tuple[str, int], int] = {}
        self.epoch = 0
        self.horizon = 0.0

    def take_token(self, key: str, *, rate_per_second: float, burst: int, now: float) -> float:
        tokens, at = self.buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate_per_second)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate_per_second

    def remember_nonce(self, nonce: bytes, *, expires_at: float, now: float) -> bool:
        expires = self.nonces.get(nonce)
        if expires is not None and expires > now:
            return False
        self.nonces[nonce] = expires_at
        return True

    def replay_horizon(self) -> float:
        return self.horizon

    def record_failure(self, key: str, *, window_seconds: float, now: float) -> int:
        times = [t for t in self.failure_times.get(key, []) if t > now - window_seconds]
        times.append(now)
        self.failure_times[key] = times
        return len(times)

    def failures(self, key: str, *, window_seconds: float, now: float) -> int:
        return sum(1 for t in self.failure_times.get(key, []) if t > now - window_seconds)

    def consume_quota(self, key: str, *, day: int, limit: int, seed: Callable[[], int]) -> bool:
        used = self.quotas.get((key, day))
        if used is None:
            used = seed()
        if used >= limit:
            self.quotas[(key, day)] = used
            return False
        self.quotas[(key, day)] = used + 1
        return True

    def credential_epoch(self) -> int:
        return self.epoch

    def bump_credential_epoch(self) -> None:
        self.epoch += 1


# -- import jobs and ceremonies ----------------------------------------------------------------


class FakeImportJobStore:
    """ImportJobStore in memory, over the FakeMetadataStore whose keys the jobs belong to (a
    job of a destroyed key is due, as the store's join makes it). failing makes
    create_import_job raise it, as a store that cannot commit does."""

    def __init__(self, metadata: FakeMetadataStore) -> None:
        self.metadata = metadata
        self.jobs: dict[ImportJobName, ImportJob] = {}
        self.failing: Exception | None = None

    def create_import_job(self, job: ImportJob) -> ImportJob:
        if self.failing is not None:
            raise self.failing
        if job.name in self.jobs or job.token_label in self._labels():
            raise AlreadyExists("import job already exists", metadata={"name": str(job.name)})
        self.jobs[job.name] = job
        return job

    def get_import_job(self, name: ImportJobName) -> ImportJob | None:
        return self.jobs.get(name)

    def list_import_jobs(self, key: KeyName, page_size: int, page_token: str) -> Page[ImportJob]:
        def order(job: ImportJob) -> str:
            # Newest first, ties by job id, as a string that sorts that way.
            micros = (job.create_time - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
                microseconds=1
            )
            return f"{10**19 - micros:020d}:{job.name.job}"

        mine = [job for job in self.jobs.values() if job.name.key_name == key]
        return page_of(mine, order, page_size or MAX_PAGE_SIZE, page_token)

    def import_jobs_due(self, now: datetime) -> list[ImportJob]:
        due = []
        for job in self.jobs.values():
            key = self.metadata.keys.get(job.name.key_name)
            destroyed = key is not None and key.state is KeyState.DESTROYED
            if job.destroy_time is None and (job.expire_time <= now or destroyed):
                due.append(job)
        return due

    def mark_import_job_destroyed(self, name: ImportJobName, now: datetime) -> None:
        job = self.jobs.get(name)
        if job is None:
            raise NotFound("import job not found", metadata={"name": str(name)})
        if job.destroy_time is None:
            self.jobs[name] = replace(job, destroy_time=now)

    def import_job_labels(self) -> set[str]:
        return {job.token_label for job in self.jobs.values() if job.destroy_time is None}

    def _labels(self) -> set[str]:
        return {job.token_label for job in self.jobs.values()}


FAKE_ROOT_FAMILIES: Final = ("aes-encrypt", "aes-wrap", "ec-sign", "hmac-sha256", "rsa-decrypt")
_ROOT_PREFIX: Final = "vault:root:"
_TRANSPORT_BITS: Final = (3072, 4096)
_OAEP_SHA1: Final = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)


def fake_root_label(generation: int, family: str | None) -> str:
    """A root's label as vault.hsm.templates.root_label makes it."""
    return (
        f"{_ROOT_PREFIX}{generation}" if family is None else f"{_ROOT_PREFIX}{generation}:{family}"
    )


@dataclass(frozen=True)
class _FakeRoot:
    generation: int
    family: str | None
    value: bytes = field(repr=False)

    @property
    def check_value(self) -> str:
        # As vault.hsm.ceremony computes it: the root's AES-KWP of an all-zero AES-256 key,
        # hashed; equal on two tokens exactly when the roots are.
        wrapped = aes_key_wrap_with_padding(self.value, bytes(32))
        return hashlib.sha256(wrapped).hexdigest()[:16]


class FakeCeremonyToken:
    """CeremonyToken in memory with the token's rules (vault.hsm.ceremony): roots are random
    AES-256 values under root labels, moved with real RSA-OAEP (SHA-1) under transport keys;
    the roots wrap only under a key the SO trusted (KeyNotWrappable otherwise, even for a
    copy of a trusted key), unwrap only with the transport key they were made for, and keep
    their check value. The SO's trust step is trust() here (vault.hsm.ceremony
    .trust_transport_key on a token); import_untrusted() stores a public key as a user can.
    rsa_keys makes transport key pairs (bits), so a test can hand out keys made once."""

    def __init__(
        self,
        label: str = "fake-token",
        *,
        generations: int = 1,
        rsa_keys: Callable[[int], rsa.RSAPrivateKey] | None = None,
        families: Sequence[str] = FAKE_ROOT_FAMILIES,
    ) -> None:
        self.label = label
        self.serial = secrets.token_hex(8)
        self.families = tuple(families)
        self.rsa_keys = rsa_keys or (lambda bits: rsa.generate_private_key(65537, bits))
        self.root_values: dict[str, _FakeRoot] = {}
        self.transport: dict[str, rsa.RSAPrivateKey] = {}
        # name -> (DER public key, trusted by the SO)
        self.public_keys: dict[str, tuple[bytes, bool]] = {}
        self.ceremony_key: ec.EllipticCurvePrivateKey | None = None
        self.signatures = 0
        for generation in range(1, generations + 1):
            self.add_roots(generation, self.families)

    # -- test set-up: what other ceremonies or the SO did to the token

    def add_roots(self, generation: int, families: Sequence[str | None]) -> None:
        for family in families:
            label = fake_root_label(generation, family)
            self.root_values[label] = _FakeRoot(generation, family, secrets.token_bytes(32))

    def trust(self, name: str, public_der: bytes) -> TransportKey:
        """The SO's step: a transport public key marked TRUSTED, under trusted_name name."""
        return self._store_public(name, public_der, trusted=True)

    def import_untrusted(self, name: str, public_der: bytes) -> TransportKey:
        """The same public key as a user could store it: never TRUSTED."""
        return self._store_public(name, public_der, trusted=False)

    def _store_public(self, name: str, public_der: bytes, *, trusted: bool) -> TransportKey:
        key = serialization.load_der_public_key(public_der)
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size not in _TRANSPORT_BITS:
            raise CeremonyRefused("a transport public key must be RSA-3072 or RSA-4096")
        if name in self.public_keys:
            raise CeremonyRefused(f"the token already holds a key labelled vault:trusted:{name}")
        self.public_keys[name] = (public_der, trusted)
        return TransportKey(f"vault:trusted:{name}", public_der)

    # -- the port

    def identity(self) -> TokenIdentity:
        return TokenIdentity(self.label, self.serial, "Fake", "in-memory")

    def ceremony_public_key(self, *, create: bool = True) -> bytes:
        if self.ceremony_key is None:
            if not create:
                raise NotFound("this token has no ceremony key, so it signed no ceremony record")
            self.ceremony_key = ec.generate_private_key(ec.SECP256R1())
        return self.ceremony_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, payload: bytes) -> bytes:
        self.ceremony_public_key()
        assert self.ceremony_key is not None
        self.signatures += 1
        return self.ceremony_key.sign(payload, ec.ECDSA(hashes.SHA256()))

    def create_transport_key(self, name: str, bits: int) -> TransportKey:
        if bits not in _TRANSPORT_BITS:
            raise CeremonyRefused("a transport key is RSA-3072 or RSA-4096")
        if name in self.transport:
            raise CeremonyRefused(f"the token already holds a key labelled vault:transport:{name}")
        self.transport[name] = self.rsa_keys(bits)
        return self.transport_key(name)

    def transport_key(self, name: str) -> TransportKey:
        private = self.transport.get(name)
        if private is None:
            raise NotFound(f"the token holds no transport key labelled vault:transport:{name}")
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return TransportKey(f"vault:transport:{name}", der)

    def trusted_key(self, name: str) -> TransportKey:
        stored = self.public_keys.get(name)
        if stored is None:
            raise NotFound(f"the token holds no trusted key labelled vault:trusted:{name}")
        return TransportKey(f"vault:trusted:{name}", stored[0])

    def roots(self) -> list[RootInfo]:
        return [
            RootInfo(label, root.generation, root.family, root.check_value)
            for label, root in sorted(self.root_values.items())
        ]

    def wrap_roots(self, trusted_name: str) -> list[WrappedRoot]:
        roots = self.roots()
        if not roots:
            raise CeremonyRefused("the token holds no roots")
        legacy = [root.label for root in roots if root.family is None]
        if legacy:
            raise CeremonyRefused(f"root {legacy[0]} was made before roots were split by family")
        der, trusted = self.public_keys.get(trusted_name) or (b"", False)
        if not der:
            raise NotFound(f"the token holds no trusted key labelled vault:trusted:{trusted_name}")
        if not trusted:
            raise KeyNotWrappable(
                f"the token refuses to wrap its roots under vault:trusted:{trusted_name}: that "
                "key is not trusted by this token's SO"
            )
        public = serialization.load_der_public_key(der)
        assert isinstance(public, rsa.RSAPublicKey)
        return [
            WrappedRoot(
                root.label,
                root.generation,
                root.family or "",
                root.check_value,
                public.encrypt(self.root_values[root.label].value, _OAEP_SHA1),
            )
            for root in roots
        ]

    def unwrap_root(self, transport_name: str, root: WrappedRoot) -> RootInfo:
        if (
            root.family not in self.families
            or fake_root_label(root.generation, root.family) != root.label
        ):
            raise DocumentInvalid(f"the transfer names an unknown root {root.label!r}")
        private = self.transport.get(transport_name)
        if private is None:
            raise NotFound(
                f"the token holds no transport key labelled vault:transport:{transport_name}"
            )
        try:
            value = private.decrypt(root.wrapped, _OAEP_SHA1)
        except ValueError:
            raise CeremonyRefused(
                f"root {root.label} does not unwrap with vault:transport:{transport_name}"
            ) from None
        received = _FakeRoot(root.generation, root.family, value)
        if len(value) != 32 or received.check_value != root.check_value:
            raise CeremonyRefused(
                f"root {root.label} unwrapped to a key whose check value differs from the "
                "source's; it was removed"
            )
        self.root_values[root.label] = received
        return RootInfo(root.label, root.generation, root.family, received.check_value)

    def destroy_root(self, label: str) -> None:
        self.root_values.pop(label, None)

    def new_root_generation(self, above: int) -> int:
        existing = self.root_generations()
        newest = max(existing, default=0)
        families = existing.get(newest, frozenset())
        missing = set(self.families) - set(families)
        if newest and None not in families and missing and newest >= above:
            generation = newest
        else:
            generation = max(newest, above) + 1
            missing = set(self.families)
        self.add_roots(generation, sorted(missing))
        return generation

    def current_generation(self) -> int | None:
        complete = [
            generation
            for generation, families in self.root_generations().items()
            if None not in families and families >= set(self.families)
        ]
        return max(complete, default=None)

    def destroy_transport_key(self, name: str) -> None:
        self.transport.pop(name, None)

    def root_generations(self) -> dict[int, frozenset[str | None]]:
        found: dict[int, set[str | None]] = {}
        for root in self.root_values.values():
            found.setdefault(root.generation, set()).add(root.family)
        return {generation: frozenset(families) for generation, families in found.items()}


class StepClock:
    """A clock that stands still until moved: now() is the same until advance()."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


if TYPE_CHECKING:
    from vault.domain.ports import (
        AccountDirectory,
        AuditStore,
        BucketStore,
        CeremonyToken,
        FeedSigner,
        IdentityStore,
        ImportJobStore,
        KeyStore,
        MetadataStore,
        SharedCounters,
        SystemCrypto,
    )

    # Makes mypy prove that each fake satisfies the port it stands in for.
    _METADATA: type[MetadataStore] = FakeMetadataStore
    _BUCKETS: type[BucketStore] = FakeBucketStore
    _KEYSTORE: type[KeyStore] = FakeKeyStore
    _IDENTITY: type[IdentityStore] = FakeIdentityStore
    _ACCOUNTS: type[AccountDirectory] = FakeIdentityStore
    _AUDIT: type[AuditStore] = FakeAuditStore
    _SYSTEM: type[SystemCrypto] = FakeSystemCrypto
    _FEED: type[FeedSigner] = FakeSystemCrypto
    _COUNTERS: type[SharedCounters] = FakeCounters
    _IMPORT_JOBS: type[ImportJobStore] = FakeImportJobStore
    _CEREMONY_TOKEN: type[CeremonyToken] = FakeCeremonyToken
