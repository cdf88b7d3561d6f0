"""Bucket use cases: the bucket's lifecycle, its master key's versions, and bucket keys.

A bucket's master key is a key record of purpose BUCKET_MASTER named "~{bucket}" in the
bucket's account (vault.domain.names.MASTER_KEY_PREFIX): its versions are wrapped blobs under
the root key like every other key's, its state is the bucket's state, and the key destruction
job destroys it when a deleted bucket's waiting period ends.

Bucket keys are the one thing here that leaves the vault in plaintext (like data keys): they
are never logged and never part of a repr.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.buckets import (
    BUCKET_KEY_SIZE,
    BUCKET_VERSIONS_SHOWN,
    Bucket,
    BucketFilter,
    BucketPolicy,
    BucketState,
    WrappedBucketKey,
    bucket_key_aad,
    bucket_state,
)
from vault.domain.envelope import NONCE_SIZE
from vault.domain.errors import (
    AlreadyExists,
    DecryptionFailed,
    InvalidArgument,
    NotFound,
    UnsupportedAlgorithm,
    VaultError,
    WrongState,
)
from vault.domain.models import Key, KeyState, KeyVersion, Page, VersionState
from vault.domain.names import BucketName, KeyVersionName, MasterKeyVersionName, check_id
from vault.domain.ports import BucketStore, KeyStore, MetadataStore, TokenGcm
from vault.service.crypto import through_token
from vault.service.keys import (
    MAX_LABEL_VALUE,
    MAX_REQUEST_ID,
    Clock,
    KeyManagement,
    check_labels,
    utc_now,
)

MASTER_ALGORITHM = Algorithm.BUCKET_AES_256
# A wrapped bucket key is 65 bytes; anything much larger is refused before it is parsed.
MAX_WRAPPED_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class BucketView:
    """A bucket with its master key, as the API shows it: the key's newest versions (and its
    primary, should it be older), oldest first, and how many versions it has in all."""

    bucket: Bucket
    master_key: Key
    versions: list[KeyVersion]
    version_count: int

    @property
    def state(self) -> BucketState:
        return bucket_state(self.master_key.state)


@dataclass(frozen=True, slots=True)
class BucketKey:
    """A bucket key: plaintext (GenerateBucketKey, DecryptBucketKey) and wrapped form."""

    plaintext: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)
    master_key_version: str
    policy: BucketPolicy


class BucketManagement:
    def __init__(
        self,
        buckets: BucketStore,
        store: MetadataStore,
        keystore: KeyStore,
        keys: KeyManagement,
        clock: Clock = utc_now,
    ) -> None:
        self._buckets = buckets
        self._store = store
        self._keystore = keystore
        self._keys = keys
        self._clock = clock

    # -- reads ---------------------------------------------------------------------------

    def get_bucket(self, name: str) -> BucketView:
        return self._view(*self._load(BucketName.parse(name)))

    def list_buckets(
        self, account: str, bucket_filter: BucketFilter, page_size: int, page_token: str
    ) -> Page[BucketView]:
        check_id("account", account)
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", metadata={"field": "page_size"})
        if bucket_filter.label_key is not None:
            check_id("label", bucket_filter.label_key)
        value = bucket_filter.label_value
        if value is not None and len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(f"label values are limited to {MAX_LABEL_VALUE} characters")
        page = self._buckets.list_buckets(account, bucket_filter, page_size, page_token)
        return Page(self._views(account, page.items), page.next_page_token, page.token_after)

    def list_master_key_versions(
        self, name: str, page_size: int, page_token: str
    ) -> tuple[BucketName, Page[KeyVersion]]:
        """The bucket and a page of its master-key versions, newest first; page_size 0: up
        to 1,000."""
        bucket_name = BucketName.parse(name)
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", metadata={"field": "page_size"})
        _, key = self._load(bucket_name)
        return bucket_name, self._buckets.list_master_key_versions(key.name, page_size, page_token)

    def _load(self, name: BucketName) -> tuple[Bucket, Key]:
        found = self._buckets.get_bucket(name)
        if found is None:
            raise NotFound("bucket not found", metadata={"name": str(name)})
        return found

    def _view(self, bucket: Bucket, key: Key) -> BucketView:
        (view,) = self._views(bucket.name.account, [(bucket, key)])
        return view

    def _views(self, account: str, pairs: Sequence[tuple[Bucket, Key]]) -> list[BucketView]:
        """Views of these buckets of account, the versions of all of them read together."""
        newest = self._buckets.master_key_versions(
            account, [key.name.key for _, key in pairs], BUCKET_VERSIONS_SHOWN
        )
        views = []
        for bucket, key in pairs:
            found = newest[key.name.key]
            versions = found.versions
            # Rotation makes the newest version primary; should the primary ever be older
            # than the newest shown, it is read on its own: a Bucket always shows it.
            if all(version.number != key.primary_version for version in versions):
                primary = self._store.get_version(key.name.version(key.primary_version))
                if primary is not None:
                    versions = sorted([primary, *versions], key=lambda version: version.number)
            views.append(BucketView(bucket, key, versions, found.total))
        return views

    # -- create and update -----------------------------------------------------------------

    def create_bucket(
        self,
        account: str,
        bucket_id: str,
        *,
        labels: dict[str, str] | None = None,
        policy: BucketPolicy | None = None,
        request_id: str = "",
    ) -> BucketView:
        name = BucketName(check_id("account", account), check_id("bucket", bucket_id))
        labels = check_labels(labels or {})
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(f"request_id is limited to {MAX_REQUEST_ID} characters")
        if MASTER_ALGORITHM not in self._keystore.supported_algorithms():
            raise UnsupportedAlgorithm(
                f"the token does not support {MASTER_ALGORITHM}",
                metadata={"algorithm": str(MASTER_ALGORITHM)},
            )
        if request_id:
            earlier = self._find_created(account, request_id, name)
            if earlier is not None:
                return earlier
        if self._buckets.get_bucket(name) is not None:
            return self._made_by_request(
                account,
                request_id,
                name,
                AlreadyExists("bucket already exists", metadata={"name": str(name)}),
            )
        now = self._clock()
        master = Key(
            name=name.master_key,
            purpose=Purpose.BUCKET_MASTER,
            algorithm=MASTER_ALGORITHM,
            state=KeyState.ENABLED,
            primary_version=1,
            create_time=now,
            update_time=now,
        )
        # Wrapped under the root like any key version: no token object per bucket.
        material = self._keystore.generate(MASTER_ALGORITHM, None)
        version = KeyVersion(
            name=master.name.version(1),
            state=VersionState.ENABLED,
            create_time=now,
            root_generation=material.root_generation,
            wrapped_blob=material.wrapped_blob,
            token_label=None,
        )
        bucket = Bucket(
            name=name,
            policy=policy or BucketPolicy(),
            create_time=now,
            update_time=now,
            labels=labels,
            request_id=request_id,
        )
        try:
            self._buckets.create_bucket(bucket, master, version)
        except AlreadyExists as exists:
            return self._made_by_request(account, request_id, name, exists)
        return self.get_bucket(str(name))

    def _made_by_request(
        self, account: str, request_id: str, name: BucketName, exists: AlreadyExists
    ) -> BucketView:
        """The bucket an overlapping call with the same request_id made (it committed after
        this call first looked, before this one's check or insert), or exists."""
        if request_id:
            earlier = self._find_created(account, request_id, name)
            if earlier is not None:
                return earlier
        raise exists

    def _find_created(self, account: str, request_id: str, name: BucketName) -> BucketView | None:
        earlier = self._buckets.find_bucket_by_request_id(account, request_id)
        if earlier is None:
            return None
        if earlier.name != name:
            raise AlreadyExists(
                "request_id was already used for another bucket",
                metadata={"name": str(earlier.name)},
            )
        return self.get_bucket(str(name))

    def update_bucket(
        self, name: str, *, labels: dict[str, str] | None, policy: BucketPolicy | None
    ) -> BucketView:
        bucket, key = self._load(BucketName.parse(name))
        if key.state is KeyState.DESTROYED:
            raise _state_forbids(key, "UpdateBucket")
        changes: dict[str, object] = {"update_time": self._clock()}
        if labels is not None:
            changes["labels"] = check_labels(labels)
        if policy is not None:
            changes["policy"] = policy
        updated = self._buckets.update_bucket(replace(bucket, **changes))  # type: ignore[arg-type]
        return self._view(updated, key)

    # -- deletion (crypto-shredding) --------------------------------------------------------

    def delete_bucket(self, name: str, waiting_period: timedelta | None) -> BucketView:
        bucket, key = self._load(BucketName.parse(name))
        if key.state is not KeyState.ENABLED:
            raise _state_forbids(key, "DeleteBucket")
        # The same waiting-period rules (default, minimum, maximum) as any key's destruction.
        scheduled = self._keys.schedule_destruction(key.name, waiting_period)
        return self._view(bucket, scheduled)

    def cancel_deletion(self, name: str) -> BucketView:
        bucket, key = self._load(BucketName.parse(name))
        if key.state is not KeyState.DESTROY_SCHEDULED:
            raise _state_forbids(key, "CancelBucketDeletion")
        # Straight back to ENABLED in one write: a bucket has no disabled state to pass through
        # (an ordinary key comes back DISABLED, so that using it again is a separate call).
        restored = replace(key.cancel_destruction(self._clock()), state=KeyState.ENABLED)
        return self._view(bucket, self._store.update_key(restored))

    # -- master-key versions ---------------------------------------------------------------

    def rotate_master_key(self, name: str) -> BucketView:
        bucket, key = self._load(BucketName.parse(name))
        if key.state is not KeyState.ENABLED:
            raise _state_forbids(key, "RotateBucketMasterKey")
        return self._view(bucket, self._keys.rotate_key(key.name))

    def disable_version(self, name: str) -> BucketView:
        return self._set_version_state(name, VersionState.ENABLED, VersionState.DISABLED)

    def enable_version(self, name: str) -> BucketView:
        return self._set_version_state(name, VersionState.DISABLED, VersionState.ENABLED)

    def _set_version_state(
        self, name: str, source: VersionState, target: VersionState
    ) -> BucketView:
        version_name = MasterKeyVersionName.parse(name)
        bucket, key = self._load(version_name.bucket_name)
        if key.state is not KeyState.ENABLED:
            raise _state_forbids(key, f"change a master-key version to {target}")
        version = self._store.get_version(key.name.version(version_name.version))
        if version is None:
            raise NotFound("master-key version not found", metadata={"name": name})
        if version.state is not target:
            if version.state is not source:
                raise WrongState(
                    f"a {version.state} master-key version cannot become {target}",
                    metadata={"state": str(version.state), "target": str(target)},
                )
            version = replace(version, state=target)
            self._store.update_version(version)
            # The key's own record changes too, so every process's key cache sees a change.
            key = self._store.update_key(replace(key, update_time=self._clock()))
        view = self._view(bucket, key)
        # The answer shows the version it changed, also one older than the newest shown.
        if all(shown.number != version.number for shown in view.versions):
            shown = sorted([version, *view.versions], key=lambda one: one.number)
            view = replace(view, versions=shown)
        return view

    # -- bucket keys -----------------------------------------------------------------------

    def generate_bucket_key(self, name: str) -> BucketKey:
        bucket_name = BucketName.parse(name)
        bucket, key = self._load(bucket_name)
        if key.state is not KeyState.ENABLED:
            raise _state_forbids(key, "GenerateBucketKey")
        # From the store on every call, not a per-process cache: a version disabled in any
        # process stops new bucket keys at once.
        version = self._store.get_version(key.name.version(key.primary_version))
        if version is None or version.state is not VersionState.ENABLED:
            raise WrongState(
                "the bucket's primary master-key version is disabled: rotate the master key or "
                "enable the version",
                metadata={"name": str(bucket_name.master_version(key.primary_version))},
            )
        plaintext = self._keystore.random(BUCKET_KEY_SIZE)
        envelope = WrappedBucketKey(version.number, secrets.token_bytes(NONCE_SIZE), b"")
        sealed = self._keystore.encrypt_gcm(
            version,
            key.algorithm,
            envelope.nonce,
            plaintext,
            bucket_key_aad(envelope.header(), bucket_name),
        )
        wrapped = replace(envelope, sealed=sealed).to_bytes()
        return BucketKey(
            plaintext,
            wrapped,
            str(bucket_name.master_version(version.number)),
            bucket.policy,
        )

    def decrypt_bucket_key_batch(
        self, items: Sequence[tuple[str, bytes]]
    ) -> list[BucketKey | VaultError]:
        """decrypt_bucket_key(name, wrapped) for each item; its result or its error, in
        order. Each bucket and master-key version is read from the store once per call, and
        the token opens every key in one call."""
        reads = _BatchReads(self)

        def prepare(item: tuple[str, bytes]) -> tuple[TokenGcm, tuple[BucketName, Bucket, bytes]]:
            name, wrapped = item
            bucket_name, bucket, key, version, envelope = self._opening(name, wrapped, reads)
            aad = bucket_key_aad(envelope.header(), bucket_name)
            request = TokenGcm(version, key.algorithm, envelope.nonce, envelope.sealed, aad)
            return request, (bucket_name, bucket, wrapped)

        def finish(
            plaintext: bytes, request: TokenGcm, found: tuple[BucketName, Bucket, bytes]
        ) -> BucketKey:
            bucket_name, bucket, wrapped = found
            return self._opened(plaintext, request.version, bucket_name, bucket, wrapped)

        return through_token(items, prepare, self._keystore.decrypt_gcm_many, finish)

    def _opening(
        self, name: str, wrapped: bytes, reads: _BatchReads | None
    ) -> tuple[BucketName, Bucket, Key, KeyVersion, WrappedBucketKey]:
        """What decrypting wrapped needs: the bucket, its master-key version named in the
        envelope, and the envelope; the uniform DECRYPTION_FAILED for anything else."""
        bucket_name = BucketName.parse(name)
        if len(wrapped) > MAX_WRAPPED_KEY_BYTES:
            raise DecryptionFailed()
        bucket, key = reads.bucket(bucket_name) if reads is not None else self._load(bucket_name)
        if key.state is not KeyState.ENABLED:
            raise _state_forbids(key, "DecryptBucketKey")
        envelope = WrappedBucketKey.parse(wrapped)
        wanted = key.name.version(envelope.master_key_version)
        version = reads.version(wanted) if reads is not None else self._store.get_version(wanted)
        usable = (VersionState.ENABLED, VersionState.DISABLED)
        if version is None or version.state not in usable:
            raise DecryptionFailed()
        return bucket_name, bucket, key, version, envelope

    def decrypt_bucket_key(self, name: str, wrapped: bytes) -> BucketKey:
        bucket_name, bucket, key, version, envelope = self._opening(name, wrapped, None)
        # A disabled version still tells a genuine wrapped key from any other (whose answer
        # stays the uniform DECRYPTION_FAILED, wherever it came from), but never opens it.
        plaintext = self._keystore.decrypt_gcm(
            version,
            key.algorithm,
            envelope.nonce,
            envelope.sealed,
            bucket_key_aad(envelope.header(), bucket_name),
        )
        return self._opened(plaintext, version, bucket_name, bucket, wrapped)

    def _opened(
        self,
        plaintext: bytes,
        version: KeyVersion,
        bucket_name: BucketName,
        bucket: Bucket,
        wrapped: bytes,
    ) -> BucketKey:
        if len(plaintext) != BUCKET_KEY_SIZE:
            raise DecryptionFailed()
        if version.state is VersionState.DISABLED:
            del plaintext
            # Said as such, not as DECRYPTION_FAILED: the object is intact, the key is off.
            raise WrongState(
                "the master-key version that wrapped this bucket key is disabled",
                metadata={"name": str(bucket_name.master_version(version.number))},
            )
        return BucketKey(
            plaintext, wrapped, str(bucket_name.master_version(version.number)), bucket.policy
        )


def _state_forbids(key: Key, operation: str) -> WrongState:
    state = bucket_state(key.state)
    return WrongState(
        f"{operation} is not allowed while the bucket is {state}",
        metadata={"state": str(state), "operation": operation},
    )


class _BatchReads:
    """What a batch call reads from the store, read once per call: its buckets (with their
    master keys) and their master-key versions."""

    def __init__(self, buckets: BucketManagement) -> None:
        self._owner = buckets
        self._buckets: dict[BucketName, tuple[Bucket, Key] | VaultError] = {}
        self._versions: dict[KeyVersionName, KeyVersion | None] = {}

    def bucket(self, name: BucketName) -> tuple[Bucket, Key]:
        found = self._buckets.get(name)
        if found is None:
            try:
                found = self._owner._load(name)
            except VaultError as error:
                found = error
            self._buckets[name] = found
        if isinstance(found, VaultError):
            raise found.with_traceback(None)
        return found

    def version(self, name: KeyVersionName) -> KeyVersion | None:
        if name not in self._versions:
            self._versions[name] = self._owner._store.get_version(name)
        return self._versions[name]
