"""Key lifecycle use cases: create, read, list, update, rotate, state changes, destruction."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from cachetools import TTLCache
from cryptography.hazmat.primitives import serialization

from vault.domain.algorithms import DEFAULT_ALGORITHM, Algorithm, Purpose
from vault.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    UnsupportedAlgorithm,
    VaultError,
    WrongState,
)
from vault.domain.models import (
    Key,
    KeyFilter,
    KeyState,
    KeyVersion,
    ListedKey,
    Operation,
    Page,
    Revocation,
    RevocationReason,
    VersionState,
)
from vault.domain.names import (
    TOKEN_KEY_LABEL_PREFIX,
    AccountName,
    KeyName,
    KeyVersionName,
    check_id,
    parse_key_or_version,
)
from vault.domain.policy import KeyPolicy
from vault.domain.ports import AccountDirectory, GeneratedMaterial, KeyStore, MetadataStore

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAX_LABELS = 64
MAX_DESCRIPTION = 1024
MAX_REQUEST_ID = 128
MAX_LABEL_VALUE = 63
# Longer than any retention policy; beyond it the destruction time is not representable.
MAX_DESTROY_WAITING = timedelta(days=3650)
VERSION_CACHE_SECONDS = 300
VERSION_CACHE_SIZE = 16_384
# ListRevocations' parent for every account's revocations (admins only, by authorisation).
ALL_ACCOUNTS = "accounts/-"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    version_name: str
    algorithm: Algorithm
    pem: str


class KeyManagement:
    def __init__(
        self,
        store: MetadataStore,
        keystore: KeyStore,
        policy: KeyPolicy,
        clock: Clock = utc_now,
        version_cache_seconds: float = VERSION_CACHE_SECONDS,
        version_cache_size: int = VERSION_CACHE_SIZE,
        accounts: AccountDirectory | None = None,
    ) -> None:
        self._store = store
        # None: accounts are not managed (auth.enabled = false), so any account id goes.
        self._accounts = accounts
        self._keystore = keystore
        self._policy = policy
        self._clock = clock
        # An ENABLED version's material never changes, and whether it may be used is decided
        # by its key's state, read from the store on every request. So enabled versions can
        # be cached per process; this saves a store read (and its blob) on the hot path.
        # The TTL bounds how long a destroyed key's wrapped blob stays in another process.
        self._versions: TTLCache[KeyVersionName, KeyVersion] = TTLCache(
            maxsize=version_cache_size, ttl=version_cache_seconds
        )
        self._versions_lock = threading.Lock()
        self._material_epoch = -1
        self._purge_pending = False

    # -- reads ---------------------------------------------------------------------------

    def get_key(self, name: str | KeyName) -> Key:
        """name as a caller gives it (parsed), or a KeyName the vault made (a bucket's
        master key, whose id no caller can name)."""
        return self.load(name if isinstance(name, KeyName) else KeyName.parse(name))

    def load(self, name: KeyName) -> Key:
        key = self._store.get_key(name)
        if key is None:
            raise NotFound("key not found", metadata={"name": str(name)})
        return key

    def list_keys(
        self, account: str, key_filter: KeyFilter, page_size: int, page_token: str
    ) -> Page[ListedKey]:
        check_id("account", account)
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        if key_filter.label_key is not None:
            check_id("label", key_filter.label_key)
        if key_filter.label_value is not None and len(key_filter.label_value) > MAX_LABEL_VALUE:
            raise InvalidArgument(f"label values are limited to {MAX_LABEL_VALUE} characters")
        return self._store.list_keys(account, key_filter, page_size, page_token)

    def list_versions(self, name: str) -> list[KeyVersion]:
        key = self.get_key(name)
        return self._store.list_versions(key.name)

    def list_versions_page(self, name: str, page_size: int, page_token: str) -> Page[KeyVersion]:
        """A page of name's versions in number order; page_size 0: up to 1,000."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", metadata={"field": "page_size"})
        key = self.get_key(name)
        return self._store.list_versions_page(key.name, page_size, page_token)

    def list_enabled_versions(self, key: Key) -> list[KeyVersion]:
        """key's versions that hold material (those version() would return)."""
        return [
            version
            for version in self._store.list_versions(key.name)
            if version.state is VersionState.ENABLED
        ]

    def get_public_key(self, name: str) -> PublicKeyInfo:
        key_name, number = parse_key_or_version(name)
        key = self.load(key_name)
        key.require(Operation.GET_PUBLIC_KEY)
        version = self.version(key, number)
        if version.public_key_der is None:
            raise NotFound("version has no public key", metadata={"name": str(version.name)})
        public = serialization.load_der_public_key(version.public_key_der)
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        return PublicKeyInfo(str(version.name), key.algorithm, pem)

    def _sync_material_epoch(self) -> None:
        """Drop what this process caches of key versions once the store says some version's
        material stopped being usable (destroyed, revoked, disabled) since it was cached:
        every worker, on its next request, instead of when the caches' TTLs end."""
        self._material_epoch_seen(self._store.material_epoch())

    def _material_epoch_seen(self, epoch: int) -> None:
        if epoch != self._material_epoch:
            with self._versions_lock:
                self._versions.clear()
                self._material_epoch = epoch
        self._keystore.drop_handles_before(epoch)

    def version(self, key: Key, number: int | None) -> KeyVersion:
        """The given version of key, or its primary; NotFound unless it holds material."""
        self._sync_material_epoch()
        wanted = key.name.version(number if number is not None else key.primary_version)
        if key.state is not KeyState.DESTROYED:
            with self._versions_lock:
                cached = self._versions.get(wanted)
            if cached is not None:
                return cached
        found = self._remember(wanted, self._store.get_version(wanted))
        if isinstance(found, NotFound):
            raise found
        return found

    def _remember(
        self, wanted: KeyVersionName, version: KeyVersion | None
    ) -> KeyVersion | NotFound:
        """version, cached for the next request, if it holds material; else NotFound."""
        if version is None or version.state is not VersionState.ENABLED:
            return NotFound("key version not found", metadata={"name": str(wanted)})
        with self._versions_lock:
            self._versions[wanted] = version
        return version

    def load_with_version(
        self, name: KeyName, number: int | None
    ) -> tuple[Key, KeyVersion | NotFound]:
        """load(name) and version(key, number) as one step: when neither is cached, one
        store read instead of two. The version's NotFound is returned, not raised, so the
        caller checks the key (its state, its purpose) first, as with load() then version().
        The material epoch is synced first, as version() does, but read by the store together
        with its own freshness check: one read on the hot path instead of two."""

        def cached(wanted: KeyVersionName) -> KeyVersion | None:
            with self._versions_lock:
                return self._versions.get(wanted)

        key, version = self._store.get_key_and_version(
            name, number, cached, self._material_epoch_seen
        )
        if key is None:
            raise NotFound("key not found", metadata={"name": str(name)})
        wanted = name.version(number if number is not None else key.primary_version)
        if key.state is KeyState.DESTROYED:
            # A destroyed key's versions are read afresh, never served from the cache.
            version = self._store.get_version(wanted)
        return key, self._remember(wanted, version)

    # -- create, update, rotate ----------------------------------------------------------

    def create_key(
        self,
        account: str,
        key_id: str,
        purpose: Purpose,
        algorithm: Algorithm | None = None,
        *,
        labels: dict[str, str] | None = None,
        description: str = "",
        token_resident: bool = False,
        request_id: str = "",
    ) -> Key:
        name = KeyName(check_id("account", account), check_id("key", key_id))
        self._require_account(account)
        algorithm = algorithm or DEFAULT_ALGORITHM[purpose]
        if algorithm.purpose is not purpose:
            raise UnsupportedAlgorithm(
                f"{algorithm} is not an algorithm of purpose {purpose}",
                metadata={"algorithm": str(algorithm), "purpose": str(purpose)},
            )
        if algorithm not in self._keystore.supported_algorithms():
            raise UnsupportedAlgorithm(
                f"the token does not support {algorithm}",
                metadata={"algorithm": str(algorithm)},
            )
        labels = check_labels(labels or {})
        _check_description(description)
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(f"request_id is limited to {MAX_REQUEST_ID} characters")
        if request_id:
            earlier = self._find_created(account, request_id, name)
            if earlier is not None:
                return earlier
        if self._store.get_key(name) is not None:
            return self._made_by_request(
                account,
                request_id,
                name,
                AlreadyExists("key already exists", metadata={"name": str(name)}),
            )

        resident = token_resident or algorithm.spec.requires_token_resident
        now = self._clock()
        key = Key(
            name=name,
            purpose=purpose,
            algorithm=algorithm,
            state=KeyState.ENABLED,
            primary_version=1,
            create_time=now,
            update_time=now,
            token_resident=resident,
            labels=labels,
            description=description,
            request_id=request_id,
        )
        try:
            return self._add_first_or_next_version(key, 1, first=True)
        except AlreadyExists as exists:
            return self._made_by_request(account, request_id, name, exists)

    def _made_by_request(
        self, account: str, request_id: str, name: KeyName, exists: AlreadyExists
    ) -> Key:
        """The key an overlapping CreateKey with the same request_id made (it committed after
        this call first looked, before this one's check or insert), or exists."""
        if request_id:
            earlier = self._find_created(account, request_id, name)
            if earlier is not None:
                return earlier
        raise exists

    def _require_account(self, account: str) -> None:
        """NotFound unless the account exists. Asked only of a caller already authorised on
        the account (the admin role, or a credential of that very account), so the answer
        tells nobody about another account."""
        if self._accounts is not None and self._accounts.get_account(account) is None:
            raise NotFound(
                f"account accounts/{account} not found", metadata={"name": f"accounts/{account}"}
            )

    def _find_created(self, account: str, request_id: str, name: KeyName) -> Key | None:
        """The key an earlier CreateKey with this request_id made, once it is complete."""
        earlier = self._store.find_key_by_request_id(account, request_id)
        if earlier is None:
            return None
        if earlier.name != name:
            raise AlreadyExists(
                "request_id was already used for another key",
                metadata={"name": str(earlier.name)},
            )
        first = self._store.get_version(earlier.name.version(1))
        if first is not None and first.state is VersionState.PENDING:
            # Still being made (or left half-made by a crash, which start-up removes):
            # answering success now could name a key that never comes to exist.
            raise Conflict(
                "the key is still being created; retry with the same request_id",
                metadata={"name": str(earlier.name)},
            )
        return earlier

    def update_key(
        self, name: str, *, labels: dict[str, str] | None, description: str | None
    ) -> Key:
        key = self.get_key(name)
        if key.state is KeyState.DESTROYED:
            raise key.state_forbids("UpdateKey")
        changes: dict[str, object] = {"update_time": self._clock()}
        if labels is not None:
            changes["labels"] = check_labels(labels)
        if description is not None:
            _check_description(description)
            changes["description"] = description
        return self._store.update_key(replace(key, **changes))  # type: ignore[arg-type]

    def rotate_key(self, name: str | KeyName) -> Key:
        key = self.get_key(name)
        if key.state is not KeyState.ENABLED:
            raise key.state_forbids("RotateKey")
        # Numbered after every version, pending ones included: the primary lags behind a
        # token-resident version that is still being made.
        latest = max(version.number for version in self._store.list_versions(key.name))
        return self._add_first_or_next_version(key, latest + 1, first=False)

    def _add_first_or_next_version(self, key: Key, number: int, *, first: bool) -> Key:
        version_name = key.name.version(number)
        label = f"{TOKEN_KEY_LABEL_PREFIX}{uuid.uuid4().hex}" if key.token_resident else None
        now = self._clock()
        if label is not None:
            # Token objects outlive a crash: record the intent first, so start-up
            # reconciliation can remove an object whose key never got committed. The version
            # becomes primary only once its object exists.
            pending = KeyVersion(
                name=version_name,
                state=VersionState.PENDING,
                create_time=now,
                root_generation=None,
                wrapped_blob=None,
                token_label=label,
            )
            if first:
                self._store.create_key(key, pending)
            else:
                self._store.add_version(key, pending)
            try:
                material = self._keystore.generate(key.algorithm, label)
            except BaseException:
                # No object to wait for: the version must not stay PENDING (and hold back the
                # primary) until the next start-up's reconciliation discards it.
                self._abandon_pending(pending, label)
                raise
            try:
                return self._store.activate_version(
                    replace(pending, public_key_der=material.public_key_der)
                )
            except Conflict:
                # The key was destroyed while the object was made: it must not outlive it.
                self._keystore.destroy_label(label)
                raise
        material = self._keystore.generate(key.algorithm, None)
        version = KeyVersion(
            name=version_name,
            state=VersionState.ENABLED,
            create_time=now,
            root_generation=material.root_generation,
            wrapped_blob=material.wrapped_blob,
            token_label=None,
            public_key_der=material.public_key_der,
        )
        return (
            self._store.create_key(key, version) if first else self._store.add_version(key, version)
        )

    def _abandon_pending(self, pending: KeyVersion, label: str) -> None:
        """Discard a PENDING version whose token object could not be made, and the object
        itself should it exist after all; what fails here is left to start-up reconciliation."""
        try:
            self._keystore.destroy_label(label)
            self._store.discard_pending(pending)
        except VaultError:
            log.warning("pending key version %s is left to start-up reconciliation", pending.name)

    def add_imported_version(
        self, key: Key, material: GeneratedMaterial, *, make_primary: bool
    ) -> KeyVersion:
        """A version of key holding material that came from outside (ImportKeyVersion),
        numbered after every existing version."""
        if key.state is not KeyState.ENABLED:
            raise key.state_forbids("ImportKeyVersion")
        latest = max(version.number for version in self._store.list_versions(key.name))
        version = KeyVersion(
            name=key.name.version(latest + 1),
            state=VersionState.ENABLED,
            create_time=self._clock(),
            root_generation=material.root_generation,
            wrapped_blob=material.wrapped_blob,
            token_label=None,
            public_key_der=material.public_key_der,
        )
        self._store.add_version(key, version, make_primary=make_primary)
        return version

    # -- state changes -------------------------------------------------------------------

    def enable_key(self, name: str) -> Key:
        return self._move(name, KeyState.ENABLED)

    def disable_key(self, name: str) -> Key:
        return self._move(name, KeyState.DISABLED)

    def revoke_key(
        self, name: str, reason: str, code: RevocationReason | None = None
    ) -> tuple[Key, KeyVersion | None]:
        """Revoke a key (every version with material), or one version of it when name names
        a version: that version makes nothing new, the key and its other versions are
        unchanged (a compromised version, replaced by a rotation). Returns the key and, for a
        version, the version as revoked."""
        if code is None and not reason.strip():
            raise InvalidArgument("a revocation needs a reason code or a reason")
        if len(reason) > MAX_DESCRIPTION:
            raise InvalidArgument(f"reason is limited to {MAX_DESCRIPTION} characters")
        key_name, number = parse_key_or_version(name)
        key = self.load(key_name)
        now = self._clock()
        if number is None:
            revoked = replace(
                key.transition(KeyState.REVOKED, now),
                revocation_reason=reason,
                revocation_reason_code=code,
                revoke_time=now,
            )
            return self._store.revoke_key(revoked), None
        if key.state not in (KeyState.ENABLED, KeyState.DISABLED):
            raise key.state_forbids("RevokeKey")
        version = self._store.get_version(key_name.version(number))
        if version is None or version.state is not VersionState.ENABLED:
            raise NotFound("key version not found", metadata={"name": name})
        if version.revoked:
            raise WrongState(
                "the key version is revoked already",
                metadata={"state": "REVOKED", "name": str(version.name)},
            )
        stored = self._store.revoke_version(
            key,
            replace(
                version,
                revoke_time=now,
                revocation_reason_code=code,
                revocation_reason=reason,
            ),
        )
        log.info("revoked key version %s (%s)", stored.name, code or "UNSPECIFIED")
        return self.load(key_name), stored

    def list_revocations(self, parent: str, page_size: int, page_token: str) -> Page[Revocation]:
        """Revoked versions of accounts/{account}, or of every account for accounts/-."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        account = _revocation_scope(parent)
        return self._store.list_revocations(account, page_size, page_token)

    def scan_revocations(self, parent: str) -> Iterator[Revocation]:
        """Every revoked version under parent from one snapshot of the store, as read (both
        feeds: the count they carry is that of the entries they list). parent is checked now,
        before the first item is asked for."""
        return self._store.scan_revocations(_revocation_scope(parent))

    def schedule_destruction(self, name: str | KeyName, waiting_period: timedelta | None) -> Key:
        waiting = (
            waiting_period if waiting_period is not None else (self._policy.default_destroy_waiting)
        )
        if waiting > MAX_DESTROY_WAITING:
            raise InvalidArgument(
                "waiting period is longer than ten years",
                metadata={
                    "field": "waiting_period",
                    "maximum_seconds": str(int(MAX_DESTROY_WAITING.total_seconds())),
                },
            )
        if waiting < self._policy.min_destroy_waiting:
            raise InvalidArgument(
                "waiting period is shorter than the configured minimum",
                metadata={
                    "field": "waiting_period",
                    "minimum_seconds": str(self._policy.min_destroy_waiting_seconds),
                },
            )
        key = self.get_key(name)
        now = self._clock()
        scheduled = replace(
            key.transition(KeyState.DESTROY_SCHEDULED, now),
            destroy_scheduled_time=now + waiting,
            state_before_destroy_scheduled=key.state,
        )
        updated = self._store.update_key(scheduled)
        self._store.bump_material_epoch()
        return updated

    def cancel_destruction(self, name: str | KeyName) -> Key:
        key = self.get_key(name)
        return self._store.update_key(key.cancel_destruction(self._clock()))

    def _move(self, name: str, target: KeyState) -> Key:
        key = self.get_key(name)
        if key.state is target:
            return key
        moved = self._store.update_key(key.transition(target, self._clock()))
        if target is KeyState.DISABLED:
            # Workers drop cached handles of a key that may not be used now.
            self._store.bump_material_epoch()
        return moved

    # -- destruction job -----------------------------------------------------------------

    def destroy_due_keys(self) -> list[Key]:
        """Destroy every key whose waiting period has ended: token objects, then the store."""
        destroyed: list[Key] = []
        now = self._clock()
        for key in self._store.keys_due_for_destruction(now):
            # The store decides first: if a cancellation won the race, nothing is touched.
            # A crash after this line leaves token objects no live version names, and
            # start-up reconciliation removes those.
            try:
                destroyed.append(self._store.mark_destroyed(key, now))
            except Conflict:
                continue
            for version in self._store.list_versions(key.name):
                self._keystore.destroy(version)
            log.info("destroyed key %s", key.name)
        if destroyed or self._purge_pending:
            # The blobs are erased in the store's rows; this takes them out of its files too.
            self._purge_pending = not self._store.purge_erased()
            if self._purge_pending:
                log.warning(
                    "the store's write-ahead log is in use; destroyed keys' erased blobs "
                    "leave its files at the next try"
                )
        return destroyed


def _revocation_scope(parent: str) -> str | None:
    """The account of parent (accounts/{account}), or None for every account (accounts/-)."""
    if parent == ALL_ACCOUNTS:
        return None
    return AccountName.parse(parent).account


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"a key has at most {MAX_LABELS} labels")
    for label_key, value in labels.items():
        check_id("label", label_key)
        if len(value) > 63:
            raise InvalidArgument(
                "label values are limited to 63 characters", metadata={"label": label_key}
            )
    return dict(labels)


def _check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description is limited to {MAX_DESCRIPTION} characters")
