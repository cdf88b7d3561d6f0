"""Objects encrypted under the real vault's bucket keys: ObjectCipher over a VaultClient, on the
session's server and SoftHSM token.

tests/test_object_cipher.py checks the format against a stand-in for the BucketService; here
the same refusals go through the real one, where a header's wrapped key is unwrapped (or
refused) by the vault itself: every tampering and every misplacement gives the one integrity
error. Then what the master key's state does to objects (disabled versions, the cache's
expiry, a deleted bucket), and crypto-shredding checked the way test_destruction_custody.py
checks it for keys: the data directory searched by someone holding it and the user PIN.

Every decryption below starts from a reader with nothing cached, so its bucket key comes from
the vault; tests make their own buckets and do not depend on each other.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, ObjectClass, exceptions

from tests.support.api_calls import new_account, new_id
from tests.test_buckets_api import files_containing, policy, wait_deleted
from tests.test_destruction_custody import store_blobs
from tests.test_object_cipher import (
    INTEGRITY_MESSAGE,
    SEGMENT,
    Clock,
    FixedBucketKey,
    decrypt_everywhere,
    header_size_of,
    segments_of,
)
from vault.client import (
    BucketKeyCache,
    ObjectCipher,
    ObjectIntegrityError,
    VaultClient,
    VaultClientError,
)
from vault.client.object_format import TAG_SIZE, ObjectHeader
from vault.domain.algorithms import Algorithm
from vault.domain.buckets import WrappedBucketKey, bucket_key_aad
from vault.domain.names import BucketName
from vault.hsm import templates

PURGE_TIMEOUT_SECONDS = 5.0


class Bucket:
    """A bucket of its own for one test, and a writer whose bucket key is cached."""

    def __init__(self, client: VaultClient, account: str, **options: Any) -> None:
        self.client = client
        self.name = str(client.create_bucket(account, new_id(), **options).name)
        self.writer = ObjectCipher(client, self.name, segment_size=SEGMENT)

    def reader(self, name: str | None = None) -> ObjectCipher:
        """A cipher with nothing cached, of this bucket or of name."""
        return ObjectCipher(self.client, name or self.name, segment_size=SEGMENT)

    def sealed(self, object_key: str, size: int) -> bytes:
        return bytes(self.writer.encrypt(object_key, os.urandom(size)))


@pytest.fixture(scope="module")
def account(client: VaultClient) -> str:
    return new_account()


def refused(bucket: Bucket, object_key: str, sealed: bytes, name: str | None = None) -> None:
    """Every decrypt entry point of a fresh reader refuses sealed with the one error."""
    decrypt_everywhere(bucket.reader(name), object_key, sealed)


# -- tampering, with the vault unwrapping ---------------------------------------------------


def test_each_header_field_changed_is_refused(client: VaultClient, account: str) -> None:
    """Well-formed headers with one field changed, the wrapped key replaced by genuine wrapped
    keys the vault does unwrap (another key of the bucket, one under another master-key
    version) as well as by ones it refuses (another bucket's, the same-named bucket's of
    another account, a version number changed, a truncated one); and every header byte
    flipped."""
    bucket = Bucket(client, account)
    other = Bucket(client, account)
    bucket_id = bucket.name.rsplit("/", 1)[1]
    twin = client.create_bucket(new_account(), bucket_id).name
    sealed = bucket.sealed("k", 2 * SEGMENT + 1)
    header_size = header_size_of(sealed)
    header = ObjectHeader.parse(sealed[:header_size])
    body = sealed[header_size:]
    fresh = ObjectHeader.parse(bytes(bucket.writer.encrypt("k", b"x"))[:header_size])
    same_bucket = client.generate_bucket_key(bucket.name)
    rotated = client.rotate_bucket_master_key(bucket.name).primary_master_key_version
    under_v2 = client.generate_bucket_key(bucket.name)
    assert under_v2.master_key_version == rotated
    wrapped = header.wrapped_key
    renumbered = wrapped[:1] + (2).to_bytes(4, "big") + wrapped[5:]
    changes: dict[str, dict[str, Any]] = {
        "segment size": {"segment_size": SEGMENT * 2},
        "salt": {"salt": fresh.salt},
        "nonce prefix": {"nonce_prefix": fresh.nonce_prefix},
        "master-key version": {"master_key_version": rotated},
        "another key of the bucket": {"wrapped_key": same_bucket.wrapped},
        "a key under version 2": {"wrapped_key": under_v2.wrapped, "master_key_version": rotated},
        "another bucket's key": {"wrapped_key": client.generate_bucket_key(other.name).wrapped},
        "the twin bucket's key": {"wrapped_key": client.generate_bucket_key(twin).wrapped},
        "version renumbered": {"wrapped_key": renumbered},
        "wrapped key truncated": {"wrapped_key": wrapped[:-1]},
    }
    for change in changes.values():
        fields = {
            "segment_size": header.segment_size,
            "salt": header.salt,
            "nonce_prefix": header.nonce_prefix,
            "master_key_version": header.master_key_version,
            "wrapped_key": header.wrapped_key,
            **change,
        }
        refused(bucket, "k", ObjectHeader(**fields).to_bytes() + body)
    for position in range(header_size):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        refused(bucket, "k", bytes(tampered))
    # The untouched object still opens, after all that.
    assert len(bucket.reader().decrypt("k", sealed)) == 2 * SEGMENT + 1


def test_a_flipped_bit_in_each_segment_is_refused(client: VaultClient, account: str) -> None:
    bucket = Bucket(client, account)
    sealed = bucket.sealed("k", 4 * SEGMENT + 9)
    start = header_size_of(sealed)
    segments = segments_of(sealed, start)
    assert len(segments) == 5
    for segment in segments:
        for offset in (0, len(segment) // 2, len(segment) - 1):
            tampered = bytearray(sealed)
            tampered[start + offset] ^= 0x04
            refused(bucket, "k", bytes(tampered))
        start += len(segment)


def test_truncation_at_every_segment_boundary_is_refused(client: VaultClient, account: str) -> None:
    bucket = Bucket(client, account)
    for size in (3 * SEGMENT, 3 * SEGMENT + 10):
        sealed = bucket.sealed("k", size)
        header_size = header_size_of(sealed)
        step = SEGMENT + TAG_SIZE
        boundaries = range(1, len(segments_of(sealed, header_size)))
        cuts = [header_size, *(header_size + n * step for n in boundaries)]
        cuts += [header_size - 1, len(sealed) - 1, len(sealed) - TAG_SIZE]
        for cut in cuts:
            refused(bucket, "k", sealed[:cut])


def test_reordered_dropped_and_repeated_segments_are_refused(
    client: VaultClient, account: str
) -> None:
    bucket = Bucket(client, account)
    sealed = bucket.sealed("k", 4 * SEGMENT)
    header_size = header_size_of(sealed)
    header, segments = sealed[:header_size], segments_of(sealed, header_size)
    orders = [[1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 3, 2], [3, 1, 2, 0], [0, 2, 3], [0, 0, 1, 2, 3]]
    for order in orders:
        refused(bucket, "k", header + b"".join(segments[i] for i in order))


def test_segments_swapped_between_two_objects_are_refused(
    client: VaultClient, account: str
) -> None:
    """Two objects under one bucket key, same object key, same length: only their salts and
    nonce prefixes differ."""
    bucket = Bucket(client, account)
    first, second = bucket.sealed("k", 3 * SEGMENT), bucket.sealed("k", 3 * SEGMENT)
    header_size = header_size_of(first)
    assert first[:header_size] != second[:header_size]
    a, b = segments_of(first, header_size), segments_of(second, header_size)
    for index in range(3):
        spliced = [*a[:index], b[index], *a[index + 1 :]]
        refused(bucket, "k", first[:header_size] + b"".join(spliced))
    refused(bucket, "k", second[:header_size] + b"".join(a))


def test_an_object_moved_to_another_object_key_or_bucket_is_refused(
    client: VaultClient, account: str
) -> None:
    bucket = Bucket(client, account)
    other = Bucket(client, account)
    twin = client.create_bucket(new_account(), bucket.name.rsplit("/", 1)[1]).name
    sealed = bucket.sealed("photos/cat.jpg", 2 * SEGMENT)
    for object_key in ("photos/dog.jpg", "photos/cat.jpg ", "photos/cat.jp"):
        refused(bucket, object_key, sealed)
    for name in (other.name, twin):
        refused(bucket, "photos/cat.jpg", sealed, name)
    assert len(bucket.reader().decrypt("photos/cat.jpg", sealed)) == 2 * SEGMENT


def test_every_refusal_is_one_error_naming_nothing(client: VaultClient, account: str) -> None:
    """The vault refusing the wrapped key, a tag failing and a truncation all look alike."""
    bucket = Bucket(client, account)
    other = Bucket(client, account)
    sealed = bucket.sealed("k", 2 * SEGMENT)
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    attempts: list[Callable[[], object]] = [
        lambda: bucket.reader(other.name).decrypt("k", sealed),  # the vault refuses
        lambda: bucket.reader().decrypt("k", bytes(flipped)),  # a tag fails
        lambda: bucket.reader().decrypt("k", sealed[: header_size_of(sealed)]),
        lambda: bucket.reader().decrypt("other", sealed),
    ]
    seen = set()
    for attempt in attempts:
        with pytest.raises(ObjectIntegrityError) as caught:
            attempt()
        error = caught.value
        seen.add((type(error), str(error), error.args, error.__cause__))
    assert seen == {(ObjectIntegrityError, INTEGRITY_MESSAGE, (INTEGRITY_MESSAGE,), None)}


# -- the master key's state -----------------------------------------------------------------


def wrong_state(call: Callable[[], object]) -> VaultClientError:
    """call fails as the vault's WRONG_KEY_STATE, not as an integrity error: the object is
    intact, its key is switched off."""
    with pytest.raises(VaultClientError) as caught:
        call()
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "WRONG_KEY_STATE",
    )
    return caught.value


def test_objects_under_a_disabled_master_key_version_do_not_open_until_enabled(
    client: VaultClient, account: str
) -> None:
    bucket = Bucket(client, account)
    old = bucket.sealed("old", SEGMENT + 1)
    client.rotate_bucket_master_key(bucket.name)
    new = bytes(bucket.reader().encrypt("new", b"under version 2"))
    first = f"{bucket.name}/masterKeyVersions/1"
    client.disable_bucket_master_key_version(first)
    error = wrong_state(lambda: bucket.reader().decrypt("old", old))
    assert error.metadata["name"] == first
    assert bucket.reader().decrypt("new", new) == b"under version 2"
    client.enable_bucket_master_key_version(first)
    assert len(bucket.reader().decrypt("old", old)) == SEGMENT + 1


def test_a_disabled_master_key_stops_new_objects_at_once_and_cached_keys_at_expiry(
    client: VaultClient, account: str
) -> None:
    """README, "Bucket-key cache": disabling the primary version makes GenerateBucketKey fail
    at once, so a cipher without a current key cannot encrypt; a cipher holding one goes on
    until the policy's lifetime ends (new objects) or decrypt_ttl_seconds (reads). The
    caches' clock is the test's: expiry without waiting for it."""
    bucket = Bucket(client, account, policy=policy(lifetime_seconds=60))
    clock = Clock()
    writer = ObjectCipher(client, bucket.name, cache=BucketKeyCache(client, clock=clock))
    reader = ObjectCipher(
        client,
        bucket.name,
        cache=BucketKeyCache(client, decrypt_ttl_seconds=30.0, clock=clock),
    )
    before = bytes(writer.encrypt("before", b"written before"))
    assert reader.decrypt("before", before) == b"written before"
    assert reader.cache.stats().decrypt_calls == 1

    client.disable_bucket_master_key_version(f"{bucket.name}/masterKeyVersions/1")
    # At once: no new bucket key, so nothing new without a cached key, nor any fresh read.
    wrong_state(lambda: client.generate_bucket_key(bucket.name))
    wrong_state(lambda: bucket.reader().encrypt("new", b"x"))
    wrong_state(lambda: bucket.reader().decrypt("before", before))
    # Cached keys go on until they expire.
    clock.now += 29.9
    during = bytes(writer.encrypt("during", b"still cached"))
    assert reader.decrypt("before", before) == b"written before"
    assert reader.decrypt("during", during) == b"still cached"  # the same bucket key
    clock.now += 0.1
    wrong_state(lambda: reader.decrypt("before", before))
    clock.now += 29.9
    writer.encrypt("last", b"x")
    clock.now += 0.1
    wrong_state(lambda: writer.encrypt("after", b"x"))
    assert writer.cache.stats().generate_calls == 2  # the first, and the refused one

    # clear() does not wait for expiry; enabling the version brings everything back.
    client.enable_bucket_master_key_version(f"{bucket.name}/masterKeyVersions/1")
    again = bytes(writer.encrypt("again", b"x"))
    client.disable_bucket_master_key_version(f"{bucket.name}/masterKeyVersions/1")
    writer.encrypt("cached", b"x")
    writer.cache.clear(bucket.name)
    wrong_state(lambda: writer.encrypt("cleared", b"x"))
    client.enable_bucket_master_key_version(f"{bucket.name}/masterKeyVersions/1")
    assert bucket.reader().decrypt("again", again) == b"x"


def test_a_bucket_scheduled_for_deletion_opens_nothing_until_cancelled(
    client: VaultClient, account: str
) -> None:
    bucket = Bucket(client, account)
    sealed = bucket.sealed("k", SEGMENT)
    client.delete_bucket(bucket.name, timedelta(hours=1))
    wrong_state(lambda: bucket.reader().decrypt("k", sealed))
    wrong_state(lambda: bucket.reader().encrypt("k", b"x"))
    client.cancel_bucket_deletion(bucket.name)
    assert len(bucket.reader().decrypt("k", sealed)) == SEGMENT


# -- crypto-shredding: the data directory after the waiting period ---------------------------


def master_key_blobs(data_dir: Path, bucket: str) -> list[bytes]:
    """The wrapped blobs of bucket's master-key versions, as the store holds them."""
    name = BucketName.parse(bucket)
    with closing(sqlite3.connect(f"file:{data_dir / 'vault.db'}?mode=ro", uri=True)) as db:
        return [
            bytes(row[0])
            for row in db.execute(
                "SELECT wrapped_blob FROM key_versions WHERE account = ? AND key_id = ?",
                (name.account, name.master_key.key),
            )
        ]


def bucket_keys_recovered(
    data_dir: Path, keystore: Any, wrapped: bytes, bucket: str
) -> tuple[int, list[bytes]]:
    """(attempts, bucket keys recovered): every blob of the store unwrapped under every key
    of the token that unwraps, as a bucket master key, then used to open the wrapped bucket
    key; and every secret key of the token used on it directly. What someone holding the
    data directory and the user PIN can try."""
    parsed = WrappedBucketKey.parse(wrapped)
    aad = bucket_key_aad(parsed.header(), BucketName.parse(bucket))
    session = keystore._library.context().session
    secret_keys = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))
    unwrappers = [key for key in secret_keys if key[Attribute.UNWRAP]]
    assert unwrappers, "the token's root keys unwrap"
    tried, recovered = 0, []

    def open_with(key: Any) -> None:
        nonlocal tried
        tried += 1
        if not key[Attribute.DECRYPT]:
            return
        with suppress(exceptions.PKCS11Error):
            recovered.append(
                bytes(
                    key.decrypt(
                        parsed.sealed,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(parsed.nonce, aad, 128),
                    )
                )
            )

    for blob in store_blobs(data_dir):
        if len(blob) < 24 or len(blob) % 8:
            continue  # not an AES-KWP output
        for root in unwrappers:
            try:
                candidate = root.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    blob,
                    mechanism=templates.WRAP_MECHANISM,
                    capabilities=0,
                    template=templates.unwrapped_for_use(Algorithm.BUCKET_AES_256),
                )
            except exceptions.PKCS11Error:
                tried += 1
                continue
            try:
                open_with(candidate)
            finally:
                candidate.destroy()
    for key in secret_keys:
        open_with(key)
    return tried, recovered


def test_after_its_waiting_period_nothing_in_the_data_directory_opens_a_deleted_buckets_objects(
    client: VaultClient, account: str, data_dir: Path, keystore: Any
) -> None:
    bucket = Bucket(client, account)
    client.rotate_bucket_master_key(bucket.name)
    data = os.urandom(3 * SEGMENT)
    sealed = bytes(bucket.writer.encrypt("k", data))
    wrapped = ObjectHeader.parse(sealed[: header_size_of(sealed)]).wrapped_key
    bucket_key = bucket.writer.cache.unwrap(bucket.name, wrapped)
    # The vault keeps no bucket key: neither wrapped nor in plaintext is one in its files.
    assert files_containing(data_dir, [wrapped, bucket_key]) == []
    # The search works: before deletion it recovers the bucket key, which opens the object.
    tried, recovered = bucket_keys_recovered(data_dir, keystore, wrapped, bucket.name)
    # (Compared, not printed: a failure message must not show a key.)
    assert tried > 1 and len(recovered) == 1 and recovered[0] == bucket_key
    offline = FixedBucketKey(
        {"bucket_key": bucket_key.hex(), "wrapped_key": wrapped.hex(), "master_key_version": "2"}
    )
    assert ObjectCipher(offline, bucket.name, segment_size=SEGMENT).decrypt("k", sealed) == data
    blobs = master_key_blobs(data_dir, bucket.name)
    assert len(blobs) == 2 and files_containing(data_dir, blobs)

    client.delete_bucket(bucket.name, timedelta(0))
    wait_deleted(client, bucket.name)
    tried, recovered = bucket_keys_recovered(data_dir, keystore, wrapped, bucket.name)
    assert tried > 1 and not recovered, f"{len(recovered)} bucket key(s) recovered"
    wrong_state(lambda: bucket.reader().decrypt("k", sealed))
    # Nor are the master key's blobs anywhere in the files' raw bytes (free pages, the WAL);
    # the destruction job checkpoints right after erasing, and may retry once under load.
    deadline = time.monotonic() + PURGE_TIMEOUT_SECONDS
    while (holding := files_containing(data_dir, blobs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert holding == []
