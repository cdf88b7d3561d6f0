"""The ports the use cases talk to: the key store (a PKCS#11 token) and the metadata, identity
and audit stores (a relational database). Implementations live in vault.hsm and vault.storage; the
service layer never imports either."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from vault.domain.algorithms import Algorithm
from vault.domain.audit import ArchiveMarker, AuditEvent, AuditRecord, Checkpoint
from vault.domain.backup import ExportRecord, Selection, Tombstone
from vault.domain.buckets import Bucket, BucketFilter, NewestVersions
from vault.domain.ceremony import RootInfo, TokenIdentity, TransportKey, WrappedRoot
from vault.domain.errors import VaultError
from vault.domain.identity import AccessKey, Account, ApiKey, UsageCount
from vault.domain.imports import ImportJob, ImportJobName, ImportMethod
from vault.domain.models import (
    Key,
    KeyFilter,
    KeyVersion,
    ListedKey,
    Page,
    Revocation,
    RootGeneration,
)
from vault.domain.names import BucketName, KeyName, KeyVersionName


@dataclass(frozen=True, slots=True)
class GeneratedMaterial:
    """A new key version as the token made it: wrapped under a root generation, or left in the
    token under a label. Private material is never here in plaintext."""

    root_generation: int | None
    wrapped_blob: bytes | None = field(repr=False)
    token_label: str | None
    public_key_der: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenSign:
    """One signature of a batch (KeyStore.sign_many): the arguments of KeyStore.sign."""

    version: KeyVersion
    algorithm: Algorithm
    data: bytes
    prehashed: bool


class TokenGcm(NamedTuple):
    """One AES-GCM operation of a batch (KeyStore.encrypt_gcm_many, decrypt_gcm_many): the
    arguments of encrypt_gcm or decrypt_gcm; data is the plaintext or the sealed bytes.

    A tuple, not a frozen dataclass: a batch makes one per item, and a tuple costs a third
    less to build."""

    version: KeyVersion
    algorithm: Algorithm
    nonce: bytes
    data: bytes
    aad: bytes

    def __repr__(self) -> str:
        return f"TokenGcm(version={self.version!r}, data=<{len(self.data)} bytes>)"


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

    def drop_handles_before(self, epoch: int) -> None:
        """The store's material epoch is now epoch: each thread drops its cached handles on
        its next token call if it cached them under an older epoch."""
        ...

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

    # Batches: each request's result or the VaultError it alone failed with, in order, from
    # one token call that looks each key version's handle up once; an error of the token
    # itself fails the whole call (raised).

    def sign_many(self, requests: Sequence[TokenSign]) -> list[bytes | VaultError]: ...

    def encrypt_gcm_many(self, requests: Sequence[TokenGcm]) -> list[bytes | VaultError]: ...

    def decrypt_gcm_many(self, requests: Sequence[TokenGcm]) -> list[bytes | VaultError]:
        """DecryptionFailed for each request that does not open."""
        ...

    def asymmetric_decrypt(
        self, version: KeyVersion, algorithm: Algorithm, ciphertext: bytes
    ) -> bytes: ...

    def generate_mac(self, version: KeyVersion, algorithm: Algorithm, data: bytes) -> bytes: ...

    def verify_mac(
        self, version: KeyVersion, algorithm: Algorithm, data: bytes, mac: bytes
    ) -> bool: ...

    def opens(self, version: KeyVersion, algorithm: Algorithm) -> bool:
        """Whether the token unwraps version's blob under the root generation it names (a
        restore's check that the token received that root), among the roots found by the
        last root_generations_present()."""
        ...

    def token_identity(self) -> TokenIdentity: ...

    def import_key_labels(self) -> set[str]:
        """Labels of the import jobs' private keys in the token."""
        ...

    def create_import_key(self, method: ImportMethod, token_label: str) -> bytes:
        """Make an import job's key pair: the private half a token object under token_label
        (UNWRAP only, not extractable), the public half returned as DER SubjectPublicKeyInfo
        and not kept."""
        ...

    def import_material(
        self,
        token_label: str,
        method: ImportMethod,
        algorithm: Algorithm,
        wrapped: bytes,
        public_key_der: bytes | None,
    ) -> GeneratedMaterial:
        """Unwrap material wrapped for the import job under token_label inside the token,
        check that it is a key of algorithm (for an EC key, that public_key_der is its public
        key), and wrap it under the current root like a generated version. ImportFailed for
        anything that does not unwrap as such a key."""
        ...


class ImportJobStore(Protocol):
    """Import jobs of keys (vault.domain.imports)."""

    def create_import_job(self, job: ImportJob) -> ImportJob: ...

    def get_import_job(self, name: ImportJobName) -> ImportJob | None: ...

    def list_import_jobs(self, key: KeyName, page_size: int, page_token: str) -> Page[ImportJob]:
        """The key's jobs, newest first (ties by job id), after page_token's; page_size 0:
        up to 1,000."""
        ...

    def import_jobs_due(self, now: datetime) -> list[ImportJob]:
        """Jobs whose private key is still in the token though the job expired or its key
        was destroyed."""
        ...

    def mark_import_job_destroyed(self, name: ImportJobName, now: datetime) -> None: ...

    def import_job_labels(self) -> set[str]:
        """Token labels of the jobs whose private key has not been destroyed."""
        ...


class CeremonyToken(Protocol):
    """The token as a key ceremony uses it, logged in as user (vault.hsm.ceremony). The SO's
    one step, trusting a transport key, happens before and apart from this."""

    def identity(self) -> TokenIdentity: ...

    def ceremony_public_key(self, *, create: bool = True) -> bytes:
        """DER public key of the token's ceremony signing key (created at first use unless
        not create; NotFound then)."""
        ...

    def sign(self, payload: bytes) -> bytes:
        """DER ECDSA-P256-SHA256 signature by the ceremony signing key."""
        ...

    def create_transport_key(self, name: str, bits: int) -> TransportKey: ...

    def transport_key(self, name: str) -> TransportKey: ...

    def trusted_key(self, name: str) -> TransportKey: ...

    def roots(self) -> list[RootInfo]: ...

    def wrap_roots(self, trusted_name: str) -> list[WrappedRoot]:
        """Every root under the trusted key; KeyNotWrappable unless the SO trusted it."""
        ...

    def unwrap_root(self, transport_name: str, root: WrappedRoot) -> RootInfo: ...

    def destroy_root(self, label: str) -> None: ...

    def new_root_generation(self, above: int) -> int:
        """Create a generation of roots numbered above `above` and every one in the token
        (or complete the newest, if an interrupted run left it without some families)."""
        ...

    def current_generation(self) -> int | None:
        """The generation new key versions go under."""
        ...

    def destroy_transport_key(self, name: str) -> None: ...

    def root_generations(self) -> dict[int, frozenset[str | None]]: ...


class MetadataStore(Protocol):
    """Accounts' keys, versions and states. Updates are optimistic: they name the etag they
    read and raise Conflict if another writer got there first."""

    def create_key(self, key: Key, first_version: KeyVersion) -> Key:
        """Insert a key and its version 1 atomically; AlreadyExists if the name is taken."""
        ...

    def get_key(self, name: KeyName) -> Key | None: ...

    def get_key_and_version(
        self,
        name: KeyName,
        number: int | None,
        cached_version: Callable[[KeyVersionName], KeyVersion | None],
        epoch_seen: Callable[[int], None] | None = None,
    ) -> tuple[Key | None, KeyVersion | None]:
        """name's key (None if there is none) and its version number, or its primary when
        number is None (None if there is no such version), as a request needs them: a key
        the store serves from its cache comes with cached_version(the version's name) when
        that gives one; otherwise both are read together, in one statement where it can.
        With epoch_seen, the store first calls it with material_epoch(), before it calls
        cached_version (read together with its cache's freshness where it can)."""
        ...

    def find_key_by_request_id(self, account: str, request_id: str) -> Key | None: ...

    def list_keys(
        self, account: str, key_filter: KeyFilter, page_size: int, page_token: str
    ) -> Page[ListedKey]: ...

    def update_key(self, key: Key) -> Key:
        """Write key (labels, description, state, times) if its etag is still current; return
        it with the new etag."""
        ...

    def add_version(self, key: Key, version: KeyVersion, *, make_primary: bool = True) -> Key:
        """Append a version and bump the key's etag, atomically; an ENABLED version becomes
        primary at once (unless make_primary is False), a PENDING one when activate_version
        enables it."""
        ...

    def activate_version(self, version: KeyVersion) -> Key:
        """PENDING -> ENABLED (with its public key) and primary, atomically; Conflict if the
        version is no longer PENDING (destroyed or discarded meanwhile)."""
        ...

    def get_version(self, name: KeyVersionName) -> KeyVersion | None: ...

    def list_versions(self, key: KeyName) -> list[KeyVersion]: ...

    def list_versions_page(self, key: KeyName, page_size: int, page_token: str) -> Page[KeyVersion]:
        """key's versions in number order, after page_token's; page_size 0: up to 1,000."""
        ...

    def update_version(self, version: KeyVersion) -> None: ...

    def revoke_key(self, key: Key) -> Key:
        """Write the REVOKED key (etag-checked) and revoke every version holding material
        with its reason and time; atomically; moves the material epoch."""
        ...

    def revoke_version(self, key: Key, version: KeyVersion) -> KeyVersion:
        """Revoke one version (its revoke_time and reason set), checking key's etag;
        atomically; moves the material epoch."""
        ...

    def list_revocations(
        self, account: str | None, page_size: int, page_token: str
    ) -> Page[Revocation]:
        """Revoked versions of account (or of every account, None), ordered by name."""
        ...

    def scan_revocations(self, account: str | None) -> Iterator[Revocation]:
        """Every revoked version of account (None: of all), ordered by name, read from one
        snapshot of the store and yielded as read, in bounded memory. The read stays open
        until the iterator ends or is closed: consume it at once, calling nothing else on
        the store meanwhile."""
        ...

    def material_epoch(self) -> int:
        """A number that moves whenever a version's material stops being usable."""
        ...

    def bump_material_epoch(self) -> None: ...

    def keys_due_for_destruction(self, now: datetime) -> list[Key]: ...

    def mark_destroyed(self, key: Key, now: datetime) -> Key:
        """Key DESTROYED, every version DESTROYED with its wrapped blob erased; atomically."""
        ...

    def purge_erased(self) -> bool:
        """Make values erased so far (a destroyed version's blob) unrecoverable from the
        store's files; False when that could not finish now (retry later)."""
        ...

    def pending_versions(self) -> list[KeyVersion]: ...

    def discard_pending(self, version: KeyVersion) -> None:
        """Remove a PENDING version; remove its key too if that was the key's only version."""
        ...

    def token_labels_in_use(self) -> set[str]: ...

    def root_generations_in_use(self) -> set[int]: ...

    def add_root_generation(self, root: RootGeneration) -> None: ...

    def list_root_generations(self) -> list[RootGeneration]: ...

    def versions_per_root_generation(self) -> dict[int, int]:
        """Versions holding material (not DESTROYED) per root generation that wraps them."""
        ...

    def versions_under_root_generation(self, generation: int) -> list[KeyVersion]: ...

    def retire_root_generation(self, generation: int) -> None:
        """Mark a generation retired (its roots are gone from the token)."""
        ...


class BucketStore(Protocol):
    """Buckets. A bucket and its master key (a key record of the MetadataStore) are created
    together; the key's state is the bucket's."""

    def create_bucket(self, bucket: Bucket, master_key: Key, first_version: KeyVersion) -> Bucket:
        """Insert the bucket, its master key and the key's version 1 atomically;
        AlreadyExists if the bucket id (or the request id) is taken."""
        ...

    def get_bucket(self, name: BucketName) -> tuple[Bucket, Key] | None:
        """The bucket and its master key."""
        ...

    def find_bucket_by_request_id(self, account: str, request_id: str) -> Bucket | None: ...

    def list_buckets(
        self, account: str, bucket_filter: BucketFilter, page_size: int, page_token: str
    ) -> Page[tuple[Bucket, Key]]: ...

    def master_key_versions(
        self, account: str, key_ids: Sequence[str], newest: int
    ) -> dict[str, NewestVersions]:
        """The newest versions (at most newest, oldest first) and the number of versions of
        each of these keys of account (read together for a page of buckets)."""
        ...

    def list_master_key_versions(
        self, key: KeyName, page_size: int, page_token: str
    ) -> Page[KeyVersion]:
        """key's versions newest first, after page_token's; page_size 0: up to 1,000."""
        ...

    def update_bucket(self, bucket: Bucket) -> Bucket:
        """Write labels, policy and update time if the etag is still current (Conflict
        otherwise); return the bucket with its new etag."""
        ...


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The end of the audit chain after an append, and the newest signed checkpoint."""

    seq: int
    hash: bytes
    checkpoint_seq: int
    checkpoint_time: datetime | None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    start_time: datetime | None = None
    end_time: datetime | None = None
    credential_id: str = ""
    resource: str = ""  # a key name; matches the key and its versions
    method: str = ""  # full method name or its last part
    outcome: str = ""


class AccountDirectory(Protocol):
    """Which accounts exist: keys are made only in one that does."""

    def get_account(self, account_id: str) -> Account | None: ...


class IdentityStore(Protocol):
    """Accounts, access keys, API keys and usage counters. Secrets are never here: access keys
    keep the salt their secret is derived from, API keys a keyed hash of their token."""

    def create_account(self, account: Account) -> Account:
        """AlreadyExists if the id is taken."""
        ...

    def get_account(self, account_id: str) -> Account | None: ...

    def list_accounts(self, page_size: int, page_token: str) -> Page[Account]: ...

    def has_admin_account(self) -> bool: ...

    def create_access_key(self, key: AccessKey) -> AccessKey:
        """NotFound if the account does not exist."""
        ...

    def get_access_key(self, access_key_id: str) -> AccessKey | None: ...

    def list_access_keys(
        self, account_id: str, page_size: int, page_token: str
    ) -> Page[AccessKey]: ...

    def update_access_key(self, key: AccessKey) -> AccessKey:
        """Write state, secret_salt and secret_reset_time; NotFound if it is gone."""
        ...

    def delete_access_key(self, access_key_id: str) -> bool: ...

    def create_api_key(self, key: ApiKey) -> ApiKey:
        """NotFound if the account does not exist."""
        ...

    def get_api_key(self, api_key_id: str) -> ApiKey | None: ...

    def list_api_keys(self, account_id: str, page_size: int, page_token: str) -> Page[ApiKey]: ...

    def update_api_key(self, key: ApiKey) -> ApiKey:
        """Write state; NotFound if it is gone."""
        ...

    def usage(
        self, credential_id: str, since_day: str, page_size: int, page_token: str
    ) -> Page[UsageCount]:
        """One page of the counters of credential_id from since_day (YYYY-MM-DD) on, by day
        then method; page_size 0 selects every counter of the window. The token resumes
        after the page's last (day, method); InvalidArgument if it is not one this store
        made."""
        ...

    def usage_on(self, credential_id: str, day: str) -> int:
        """All requests counted for credential_id on day."""
        ...


class AuditStore(Protocol):
    """The audit chain. Appends are serialised across every process using the store."""

    def append_audit(
        self,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
    ) -> AuditHead:
        """In one transaction: chain events after the current head and insert them, add usage
        counts ((credential id, day, method) -> n) and set the last-used time of those access
        or API keys. Raises AuditUnavailable if it cannot commit."""
        ...

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Record a signed checkpoint (a second one for the same head is ignored)."""
        ...

    def audit_records(self, after: int = 0) -> Iterator[AuditRecord]:
        """Every record with a seq above after as stored, in ascending seq order, read in
        batches."""
        ...

    def checkpoint_lock(self, *, wait: bool = True) -> AbstractContextManager[bool]:
        """Held while a checkpoint is checked, signed and anchored, or an archive made:
        excludes every other thread and process doing so on the same store. Yields whether it
        is held: without wait, False when someone else holds it."""
        ...

    def audit_checkpoints(self) -> list[Checkpoint]: ...

    def audit_head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last record, else of the newest archive marker, else (0, the
        genesis hash)."""
        ...

    def audit_archive_markers(self) -> list[ArchiveMarker]:
        """Markers of archived segments, oldest first; the stored chain starts at the last."""
        ...

    def archive_audit(self, marker: ArchiveMarker) -> int:
        """In one transaction: add marker, delete the records and checkpoints up to its seq;
        returns the number of records deleted."""
        ...

    def list_audit_events(
        self, audit_filter: AuditFilter, page_size: int, page_token: str
    ) -> Page[AuditRecord]: ...


class SystemCrypto(Protocol):
    """The vault's own token keys (vault.hsm.system_keys)."""

    def credential_mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of data under the token's credential key."""
        ...

    def audit_sign(self, payload: bytes) -> tuple[bytes, str]:
        """(signature, key label) of payload under the token's audit key."""
        ...

    def audit_verify(self, payload: bytes, signature: bytes, key_label: str) -> bool: ...

    def record_audit_anchor(self, head_seq: int, head_hash: bytes, *, reset: bool = False) -> None:
        """Keep the newest checkpointed chain head outside the store (in the token); an older
        head is ignored unless reset."""
        ...

    def audit_anchor(self) -> tuple[int, bytes] | None: ...


class BackupStore(Protocol):
    """What backup and restore read and write in the store (vault.storage.backup_store)."""

    def selected_accounts(self, selection: Selection) -> list[str]: ...

    def count_keys(self, accounts: Sequence[str]) -> int: ...

    def keys_of(self, account: str) -> Iterator[tuple[Key, list[KeyVersion]]]:
        """Every key of account but buckets' master keys, with its versions, in name order."""
        ...

    def buckets_of(self, account: str) -> Iterator[tuple[Bucket, Key, list[KeyVersion]]]: ...

    def record_export(self, record: ExportRecord, versions: Sequence[KeyVersionName]) -> None: ...

    def exports_holding(
        self, version: KeyVersionName, page_size: int, page_token: str
    ) -> Page[ExportRecord]:
        """The exports holding version's blob, oldest first (time, then export id)."""
        ...

    def tombstones(self, name: KeyName) -> list[Tombstone]:
        """Tombstones of key name and its versions; a key's own has the key's name."""
        ...

    def tombstones_of(self, names: Sequence[KeyName]) -> dict[KeyName, list[Tombstone]]:
        """tombstones() of each of names (every one a key of the result), in one read."""
        ...

    def add_tombstone(self, name: KeyName, version: int, tombstone: Tombstone) -> bool: ...

    def restore_key(
        self, key: Key, versions: Sequence[KeyVersion], bucket: Bucket | None = None
    ) -> None:
        """Insert key, its versions and its bucket as given, atomically; AlreadyExists if
        taken."""
        ...

    def restore_keys(
        self, items: Sequence[tuple[Key, Sequence[KeyVersion], Bucket | None]]
    ) -> set[KeyName]:
        """restore_key for several keys in one transaction: the keys whose names are taken
        are left out and returned; AlreadyExists, with nothing inserted, if a row is taken
        all the same."""
        ...


class BackupSigner(Protocol):
    """The token key that signs backup bundles (vault.hsm.system_keys)."""

    def sign_backup(self, payload: bytes) -> bytes:
        """A DER ECDSA P-256 signature over SHA-256(payload)."""
        ...

    def backup_public_key_der(self) -> bytes: ...


class FeedSigner(Protocol):
    """The token key that signs the revocation feed (vault.hsm.system_keys)."""

    def sign_feed(self, payload: bytes) -> bytes:
        """A DER ECDSA P-256 signature over SHA-256(payload)."""
        ...

    def sign_feed_digest(self, digest: bytes) -> bytes:
        """A DER ECDSA P-256 signature over a SHA-256 digest computed by the caller (of a
        payload hashed as it was streamed): the signature sign_feed gives for the payload."""
        ...

    def feed_public_key_der(self) -> bytes:
        """The signing key's SubjectPublicKeyInfo, DER."""
        ...


class SharedCounters(Protocol):
    """State every worker process of one server shares (vault.coordination.limits)."""

    def take_token(self, key: str, *, rate_per_second: float, burst: int, now: float) -> float:
        """0.0 when a request may go ahead, else the seconds until one may."""
        ...

    def remember_nonce(self, nonce: bytes, *, expires_at: float, now: float) -> bool:
        """False when nonce was seen and has not expired."""
        ...

    def replay_horizon(self) -> float:
        """A time.time(): requests stamped before it may have been accepted by a server whose
        nonces these counters do not hold (they were made after it stopped)."""
        ...

    def record_failure(self, key: str, *, window_seconds: float, now: float) -> int: ...

    def failures(self, key: str, *, window_seconds: float, now: float) -> int: ...

    def consume_quota(self, key: str, *, day: int, limit: int, seed: Callable[[], int]) -> bool: ...

    def credential_epoch(self) -> int:
        """A number that changes whenever any credential changes, in any worker."""
        ...

    def bump_credential_epoch(self) -> None: ...


class DiskReserve(Protocol):
    """Space set aside on the data directory's disk (vault.coordination.disk), spent when the
    disk fills up so that reads and their audit records still commit."""

    def refusing_changes(self) -> bool:
        """True while the reserve is spent: state-changing calls must be refused."""
        ...

    def release(self) -> bool:
        """Free the reserve's space after a write failed for lack of it."""
        ...
