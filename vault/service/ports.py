"""The two ports the use cases talk to: the key store (a PKCS#11 token) and the metadata
store (a relational database). Implementations live in vault.hsm and vault.storage; the
service layer never imports either."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from vault.domain.algorithms import Algorithm
from vault.domain.models import Key, KeyFilter, KeyVersion, Page, RootGeneration
from vault.domain.names import KeyName, KeyVersionName


@dataclass(frozen=True, slots=True)
class GeneratedMaterial:
    """A new key version as the token made it: wrapped under a root generation, or left in the
    token under a label. Private material is never here in plaintext."""

    root_generation: int | None
    wrapped_blob: bytes | None = field(repr=False)
    token_label: str | None
    public_key_der: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """Differences between store and token found at start-up."""

    discarded_pending: list[str]
    missing_in_token: list[str]
    orphaned_in_token: list[str]
    missing_roots: list[int]

    @property
    def clean(self) -> bool:
        return not (self.missing_in_token or self.orphaned_in_token or self.missing_roots)


class KeyStore(Protocol):
    """The calls the vault makes on a token. Errors are domain errors (vault.domain.errors):
    DecryptionFailed for any failed decrypt/unwrap, TokenUnavailable when the token fails."""

    def supported_algorithms(self) -> frozenset[Algorithm]: ...

    def current_root_generation(self) -> int: ...

    def token_labels(self) -> set[str]:
        """Labels of the token-resident key objects the vault created."""
        ...

    def root_generations_present(self) -> set[int]: ...

    def generate(self, algorithm: Algorithm, token_label: str | None) -> GeneratedMaterial:
        """Create a key version; with a token_label, as a token object under that label."""
        ...

    def destroy(self, version: KeyVersion) -> None:
        """Forget cached handles; for a token-resident version, destroy its object (idempotent)."""
        ...

    def destroy_label(self, token_label: str) -> bool: ...

    def random(self, size: int) -> bytes: ...

    def encrypt_gcm(
        self, version: KeyVersion, algorithm: Algorithm, nonce: bytes, plaintext: bytes, aad: bytes
    ) -> bytes: ...

    def decrypt_gcm(
        self, version: KeyVersion, algorithm: Algorithm, nonce: bytes, sealed: bytes, aad: bytes
    ) -> bytes: ...

    def wrap_secret(self, version: KeyVersion, algorithm: Algorithm, material: bytes) -> bytes: ...

    def unwrap_secret(self, version: KeyVersion, algorithm: Algorithm, wrapped: bytes) -> bytes: ...

    def sign(
        self, version: KeyVersion, algorithm: Algorithm, data: bytes, prehashed: bool
    ) -> bytes:
        """Sign a message, or a digest when prehashed. ECDSA signatures are DER-encoded."""
        ...

    def asymmetric_decrypt(
        self, version: KeyVersion, algorithm: Algorithm, ciphertext: bytes
    ) -> bytes: ...

    def generate_mac(self, version: KeyVersion, algorithm: Algorithm, data: bytes) -> bytes: ...

    def verify_mac(
        self, version: KeyVersion, algorithm: Algorithm, data: bytes, mac: bytes
    ) -> bool: ...


class MetadataStore(Protocol):
    """Accounts' keys, versions and states. Updates are optimistic: they name the etag they
    read and raise Conflict if another writer got there first."""

    def create_key(self, key: Key, first_version: KeyVersion) -> Key:
        """Insert a key and its version 1 atomically; AlreadyExists if the name is taken."""
        ...

    def get_key(self, name: KeyName) -> Key | None: ...

    def find_key_by_request_id(self, account: str, request_id: str) -> Key | None: ...

    def list_keys(
        self, account: str, key_filter: KeyFilter, page_size: int, page_token: str
    ) -> Page[Key]: ...

    def update_key(self, key: Key) -> Key:
        """Write key (labels, description, state, times) if its etag is still current; return
        it with the new etag."""
        ...

    def add_version(self, key: Key, version: KeyVersion) -> Key:
        """Append a version and bump the key's etag, atomically; an ENABLED version becomes
        primary at once, a PENDING one when activate_version enables it."""
        ...

    def activate_version(self, version: KeyVersion) -> Key:
        """PENDING -> ENABLED (with its public key) and primary, atomically; Conflict if the
        version is no longer PENDING (destroyed or discarded meanwhile)."""
        ...

    def get_version(self, name: KeyVersionName) -> KeyVersion | None: ...

    def list_versions(self, key: KeyName) -> list[KeyVersion]: ...

    def update_version(self, version: KeyVersion) -> None: ...

    def keys_due_for_destruction(self, now: datetime) -> list[Key]: ...

    def mark_destroyed(self, key: Key, now: datetime) -> Key:
        """Key DESTROYED, every version DESTROYED with its wrapped blob erased; atomically."""
        ...

    def pending_versions(self) -> list[KeyVersion]: ...

    def discard_pending(self, version: KeyVersion) -> None:
        """Remove a PENDING version; remove its key too if that was the key's only version."""
        ...

    def token_labels_in_use(self) -> set[str]: ...

    def root_generations_in_use(self) -> set[int]: ...

    def add_root_generation(self, root: RootGeneration) -> None: ...

    def list_root_generations(self) -> list[RootGeneration]: ...
