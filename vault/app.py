"""The composition root: the one place that builds the adapters (token, stores) and the use
cases from settings, and hands them to the transport (serve) or runs them for the command
line (provision_token, token_status, recover_admin, local_audit_log). A server builds its
services inside each worker process, after fork: PKCS#11 must be initialised in the process
that uses it."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from vault import metrics
from vault.config import Settings
from vault.coordination.disk import DiskReserve as FileDiskReserve
from vault.domain.audit import AuditEvent
from vault.domain.ceremony import TransportKey
from vault.domain.errors import InvalidArgument, NotFound, VaultError
from vault.domain.policy import KeyPolicy
from vault.domain.ports import (
    DiskReserve,
    KeyStore,
    MetadataStore,
    SharedCounters,
)
from vault.domain.token import TokenStatus
from vault.service.audit import AuditLog, CheckpointPolicy
from vault.service.authentication import AuthenticationPolicy, Authenticator
from vault.service.backup import BackupManagement, BundleFiles
from vault.service.buckets import BucketManagement
from vault.service.ceremonies import Ceremonies
from vault.service.crypto import CryptoOperations
from vault.service.identity import IdentityManagement
from vault.service.imports import KeyImports
from vault.service.keys import KeyManagement
from vault.service.provisioning import Provisioning
from vault.service.reconcile import StartupReport, reconcile
from vault.service.revocations import RevocationFeeds

if TYPE_CHECKING:
    from vault.data_lock import DataDirectoryLock
    from vault.so_pin import SoPin


@dataclass(frozen=True, slots=True)
class Security:
    """Who may call what, and the record of every call."""

    identity: IdentityManagement
    authenticator: Authenticator | None
    audit: AuditLog
    # Creates the token's credential and audit keys where missing; returns their labels.
    ensure_system_keys: Callable[[], list[str]]
    disk_reserve: DiskReserve | None = None


@dataclass(frozen=True, slots=True)
class Services:
    store: MetadataStore
    keystore: KeyStore
    keys: KeyManagement
    crypto: CryptoOperations
    buckets: BucketManagement
    feeds: RevocationFeeds
    imports: KeyImports
    # Creates the token's revocation feed key where missing; returns the labels created.
    ensure_feed_key: Callable[[], list[str]]
    security: Security | None = None
    # Admin-only, so built only with authentication on.
    backups: BackupManagement | None = None
    # Creates the token's backup signing key where missing; returns the labels created.
    ensure_backup_key: Callable[[], list[str]] = list
    # name -> check the health probe runs; a check that returns False or raises means the
    # vault cannot serve (vault.transport.health).
    health_checks: Mapping[str, Callable[[], bool]] = field(default_factory=dict)

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


def key_policy(settings: Settings) -> KeyPolicy:
    """The key limits of settings.keys, as the use cases take them."""
    keys = settings.keys
    return KeyPolicy(
        min_destroy_waiting_seconds=keys.min_destroy_waiting_seconds,
        default_destroy_waiting_seconds=keys.default_destroy_waiting_seconds,
        max_plaintext_bytes=keys.max_plaintext_bytes,
    )


def build_services(settings: Settings, counters: SharedCounters | None = None) -> Services:
    """The use cases; with settings.auth.enabled also identity and audit, whose limits and
    caches hold across worker processes through counters (authentication needs them). On a
    PostgreSQL store the store's own counters are used, which hold across hosts too."""
    from vault.hsm.keystore import open_keystore
    from vault.hsm.system_keys import BackupSigningKey, RevocationFeedKey, SystemKeys
    from vault.storage import open_stores

    assert settings.store.url is not None
    stores = open_stores(settings.store.url, settings.store.key_cache_size)
    store, identity_store, audit_store = stores.metadata, stores.identity, stores.audit
    if stores.counters is not None:
        # A PostgreSQL store keeps the limits for every host using it, whatever the caller
        # has: a limit or a credential change must hold across hosts, not only workers.
        counters = stores.counters
    keystore = open_keystore(settings)
    policy = key_policy(settings)
    keys = KeyManagement(
        store,
        keystore,
        policy,
        version_cache_seconds=settings.hsm.cache_ttl_seconds,
        version_cache_size=settings.hsm.version_cache_size,
        # Accounts are managed (IdentityService) only with authentication on.
        accounts=identity_store if settings.auth.enabled else None,
    )
    crypto = CryptoOperations(keys, keystore, policy)
    imports = KeyImports(keys, stores.imports, keystore, settings.keys.import_job_lifetime)
    buckets = BucketManagement(stores.buckets, store, keystore, keys)
    feed_key = RevocationFeedKey(keystore)
    feeds = RevocationFeeds(keys, feed_key)
    security = None
    backups = None
    backup_key = BackupSigningKey(keystore)
    if settings.auth.enabled:
        backups = BackupManagement(
            stores.backups,
            keystore,
            backup_key,
            BundleFiles(settings.backup_directory),
            identity_store,
        )
        system_keys = SystemKeys(keystore)
        identity = IdentityManagement(identity_store, system_keys, keystore.random, counters)
        authenticator = None
        if counters is not None:
            auth = settings.auth
            authenticator = Authenticator(
                identity,
                identity_store,
                counters,
                AuthenticationPolicy(
                    timestamp_window_seconds=auth.timestamp_window_seconds,
                    failure_window_seconds=auth.failure_window_seconds,
                    max_failures_per_address=auth.max_failures_per_address,
                    max_failures_per_key=auth.max_failures_per_key,
                ),
            )
        audit = AuditLog(
            audit_store,
            system_keys,
            CheckpointPolicy(
                settings.audit.checkpoint_every_records, settings.audit.checkpoint_every_seconds
            ),
            on_waiting=metrics.audit_waiting,
        )
        reserve = FileDiskReserve(settings.disk_reserve_file, settings.store.disk_reserve_bytes)
        security = Security(identity, authenticator, audit, system_keys.ensure, reserve)
    checks = {"token": keystore.available, "store": store.check_writable}
    return Services(
        store,
        keystore,
        keys,
        crypto,
        buckets,
        feeds,
        imports,
        feed_key.ensure,
        security,
        backups,
        backup_key.ensure,
        checks,
    )


def prepare_store_limits(settings: Settings) -> float | None:
    """None if each host's workers share the rate limits, quotas, nonces and credential epoch
    in a mapped file (SQLite); else the store keeps them for every host using it (PostgreSQL),
    and this is the replay horizon of its nonce table (moved to now if a crash of the database
    emptied it), read on connections of its own that are closed before returning, so none
    crosses a later fork."""
    from vault.storage import open_stores, shares_limits

    assert settings.store.url is not None
    if not shares_limits(settings.store.url):
        return None
    stores = open_stores(settings.store.url)
    try:
        assert stores.counters is not None
        return stores.counters.prepare()
    finally:
        stores.close()


@contextmanager
def local_audit_log(settings: Settings) -> Iterator[AuditLog]:
    """The audit log of the store and token on this machine, for the operator commands that
    work beside a running server (`vaultctl audit archive`, `audit verify --archive`): the
    store's locks and the token are shared with its workers."""
    from vault.hsm.keystore import open_keystore
    from vault.hsm.system_keys import SystemKeys
    from vault.storage import open_stores

    assert settings.store.url is not None
    stores = open_stores(settings.store.url)
    try:
        keystore = open_keystore(settings)
        yield AuditLog(
            stores.audit,
            SystemKeys(keystore),
            CheckpointPolicy(
                settings.audit.checkpoint_every_records, settings.audit.checkpoint_every_seconds
            ),
        )
    finally:
        stores.audit.close()


def prepare_and_reconcile(settings: Settings) -> StartupReport:
    """Start-up work done once, in one process, before workers start: reconcile store and
    token; with authentication on, create the token's system keys if missing and, on a store
    without an admin account, bootstrap one and store its access key for the CLI."""
    services = build_services(settings)
    try:
        report = reconcile(services.store, services.keystore)
        services.imports.remove_orphaned_import_keys()
        created: list[str] = []
        created += services.ensure_feed_key()
        created += services.ensure_backup_key()
        admin = None
        path = settings.auth.admin_credentials_file
        if services.security is not None:
            created += services.security.ensure_system_keys()
            admin = services.security.identity.bootstrap_admin()
        if admin is None:
            return StartupReport(report, created, None, None, None)
        key, secret = admin
        assert path is not None
        write_credentials_file(path, key.access_key_id, secret)
        return StartupReport(report, created, key.access_key_id, path, secret)
    finally:
        services.close()


# How the audit log names a change made on the vault's machine rather than through the API:
# the method it amounts to, and a source that is no network address.
RECOVER_METHOD: Final = "/vault.v1.IdentityService/CreateAccessKey"
LOCAL_SOURCE: Final = "local"


def recover_admin(settings: Settings, credentials_file: Path, account_id: str = "admin") -> str:
    """Make a new admin access key directly in the store and token, for an operator who has
    the data directory and the user PIN but no admin credential left; write it to
    credentials_file (0600) and return its id. The audit log records the attempt before the
    key is made and its outcome after, as it does for CreateAccessKey over the API; a
    running server is not needed, and one that runs accepts the key at once."""
    import getpass

    services = build_services(settings)
    try:
        security = services.security
        if security is None:
            raise InvalidArgument("auth.enabled is false: there are no credentials to recover")
        security.ensure_system_keys()
        started = time.perf_counter()

        def event(outcome: str, reason: str, resource: str) -> AuditEvent:
            return AuditEvent(
                occurred_at=datetime.now(UTC),
                request_id=request_id,
                credential_id="",
                account=account_id,
                method=RECOVER_METHOD,
                resource=resource,
                outcome=outcome,
                reason=reason,
                latency_us=int((time.perf_counter() - started) * 1_000_000),
                source=f"{LOCAL_SOURCE}:{getpass.getuser()}",
            )

        request_id = uuid.uuid4().hex
        parent = f"accounts/{account_id}"
        security.audit.record(event("STARTED", "", parent))
        try:
            key, secret = security.identity.recovery_admin_key(account_id)
        except VaultError as error:
            outcome = (
                "NOT_FOUND"
                if isinstance(error, NotFound)
                else "INVALID_ARGUMENT"
                if isinstance(error, InvalidArgument)
                else "INTERNAL"
            )
            security.audit.record(event(outcome, error.reason, parent))
            raise
        write_credentials_file(credentials_file, key.access_key_id, secret)
        security.audit.record(event("OK", "", key.name))
        return key.access_key_id
    finally:
        services.close()


def provision_token(
    settings: Settings, so_pin_source: Callable[[], SoPin] | None = None
) -> TokenStatus:
    """Make the token ready to serve (vault.hsm.provision.provision, whose so_pin_source this
    is) and record its root generations in the store. Runs in a process that will not serve
    afterwards: PKCS#11 stays initialised in it."""
    from vault.hsm.provision import provision
    from vault.storage import open_store

    assert settings.store.url is not None  # filled from data_dir by Settings
    store = open_store(settings.store.url)
    try:
        status = provision(settings, so_pin_source)
        Provisioning(store).record_root_generations(status.root_labels)
    finally:
        store.close()
    return status


def token_status(settings: Settings) -> TokenStatus:
    """The token's identity, root key generations and object counts (logs in as user)."""
    from vault.hsm.provision import token_status as read_token_status

    return read_token_status(settings)


def serve(settings: Settings, data_lock: DataDirectoryLock | None = None) -> None:
    """Serve the vault of settings until SIGTERM or SIGINT (vault.transport.supervisor.serve,
    which raises what it documents): start-up work and each worker's services are built here.
    """
    from vault.transport.supervisor import serve as serve_with_workers

    serve_with_workers(
        settings,
        data_lock,
        prepare=prepare_and_reconcile,
        build_services=build_services,
        prepare_store_limits=prepare_store_limits,
    )


def write_credentials_file(path: Path, access_key_id: str, secret_key: str) -> None:
    """Write an access key for the CLI, readable by its owner only; an existing file (a
    previous bootstrap's, on a store since wiped) is replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump({"access_key_id": access_key_id, "secret_key": secret_key}, file)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


@dataclass(frozen=True, slots=True)
class CeremonySite:
    """What a key ceremony works with on this machine: the token (logged in as user), the
    store, and, for `ceremony rewrap`, key management on that same token."""

    ceremonies: Ceremonies
    keys: KeyManagement
    keystore: KeyStore
    store: MetadataStore


def trust_transport_key(
    settings: Settings, so_pin: Callable[[], str], name: str, public_der: bytes
) -> TransportKey:
    """The SO's step of the trust ceremony (vault.hsm.ceremony.trust_transport_key); before
    any ceremony_site is opened in this process."""
    from vault.hsm.ceremony import trust_transport_key as trust

    return trust(settings, so_pin, name, public_der)


@contextmanager
def ceremony_site(settings: Settings) -> Iterator[CeremonySite]:
    """The ceremony use cases on this machine's token and store. One PKCS#11 module start
    serves both the ceremony steps and the key store (a second start would end the first's
    sessions)."""
    from vault.hsm.ceremony import open_ceremony_token
    from vault.hsm.keystore import Pkcs11KeyStore
    from vault.storage import open_store

    assert settings.store.url is not None
    store = open_store(settings.store.url)
    try:
        token = open_ceremony_token(settings)
        keystore = Pkcs11KeyStore(
            token.library, settings.hsm.cache_size, settings.hsm.cache_ttl_seconds
        )
        keys = KeyManagement(
            store,
            keystore,
            key_policy(settings),
            version_cache_seconds=settings.hsm.cache_ttl_seconds,
        )
        yield CeremonySite(Ceremonies(token, store), keys, keystore, store)
    finally:
        store.close()
