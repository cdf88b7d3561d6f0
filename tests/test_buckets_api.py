"""BucketService end to end: the real server on a real SoftHSM token, driven through the SDK.

Bucket keys are checked independently where they can be: a generated key's plaintext is
compared with what DecryptBucketKey returns for its wrapped form, and the wrapped form's
header is decoded by hand. Every bucket id is unique and the module works in its own
accounts, so the tests do not depend on each other or on their order.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.support.api_calls import every_page, expect_error, new_account, new_id
from vault.client import (
    BucketKeyRejected,
    ObjectCipher,
    ObjectIntegrityError,
    VaultClient,
    VaultClientError,
)
from vault.config import ServerSettings
from vault.gen.vault.v1 import bucket_service_pb2, bucket_service_pb2_grpc, resources_pb2

BucketState = resources_pb2.BucketState
VersionState = resources_pb2.VersionState

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DESTROY_TIMEOUT_SECONDS = 20.0
HOUR = timedelta(hours=1)


def policy(
    lifetime_seconds: int = 0, max_objects: int = 0, max_bytes: int = 0
) -> resources_pb2.BucketKeyPolicy:
    message = resources_pb2.BucketKeyPolicy(
        max_objects_per_key=max_objects, max_bytes_per_key=max_bytes
    )
    if lifetime_seconds:
        message.key_lifetime.CopyFrom(Duration(seconds=lifetime_seconds))
    return message


def version_of(wrapped: bytes) -> int:
    """The master-key version a wrapped bucket key names: format 0x03, then a big-endian u32."""
    fmt, number = struct.unpack_from(">BI", wrapped)
    assert fmt == 0x03
    return int(number)


def wait_deleted(client: VaultClient, name: str) -> resources_pb2.Bucket:
    deadline = time.monotonic() + DESTROY_TIMEOUT_SECONDS
    while True:
        bucket = client.get_bucket(name)
        if bucket.state == BucketState.BUCKET_STATE_DELETED:
            return bucket
        assert time.monotonic() < deadline, f"not deleted after {DESTROY_TIMEOUT_SECONDS}s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def account() -> str:
    return new_account()


@pytest.fixture(scope="module")
def stub(server: Any) -> Iterator[bucket_service_pb2_grpc.BucketServiceStub]:
    """The raw stub, for requests the SDK does not send (no CRC32C, explicit masks)."""
    channel = server.channel()
    yield bucket_service_pb2_grpc.BucketServiceStub(channel)
    channel.close()


def make(client: VaultClient, account: str, **options: Any) -> resources_pb2.Bucket:
    bucket: resources_pb2.Bucket = client.create_bucket(account, new_id(), **options)
    return bucket


# -- create, get, list, update -------------------------------------------------------------


def test_create_bucket_makes_an_active_bucket_with_one_master_key_version(
    client: VaultClient, account: str
) -> None:
    bucket_id = new_id()
    bucket = client.create_bucket(
        account, bucket_id, labels={"team": "media"}, policy=policy(600, 1000, 1 << 30)
    )
    assert bucket.name == f"{account}/buckets/{bucket_id}"
    assert bucket.state == BucketState.BUCKET_STATE_ACTIVE
    assert dict(bucket.labels) == {"team": "media"}
    assert bucket.policy.key_lifetime.seconds == 600
    assert (bucket.policy.max_objects_per_key, bucket.policy.max_bytes_per_key) == (1000, 1 << 30)
    assert bucket.primary_master_key_version == f"{bucket.name}/masterKeyVersions/1"
    assert [(v.name, v.state) for v in bucket.master_key_versions] == [
        (bucket.primary_master_key_version, VersionState.VERSION_STATE_ENABLED)
    ]
    assert client.get_bucket(bucket.name) == bucket


def test_default_policy_is_fifteen_minutes_without_limits(
    client: VaultClient, account: str
) -> None:
    bucket = make(client, account)
    assert bucket.policy.key_lifetime.seconds == 15 * 60
    assert (bucket.policy.max_objects_per_key, bucket.policy.max_bytes_per_key) == (0, 0)


def test_master_keys_are_not_listed_among_the_accounts_keys(
    client: VaultClient, account: str
) -> None:
    make(client, account)
    assert [key.name for key in client.iter_keys(account)] == []


def test_create_with_the_same_request_id_returns_the_first_bucket(
    client: VaultClient, account: str
) -> None:
    bucket_id, request_id = new_id(), uuid4().hex
    first = client.create_bucket(account, bucket_id, request_id=request_id)
    again = client.create_bucket(account, bucket_id, request_id=request_id)
    assert again == first
    assert len(again.master_key_versions) == 1
    error = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        lambda: client.create_bucket(account, new_id(), request_id=request_id),
    )
    assert error.metadata["name"] == first.name


def test_create_an_existing_bucket_without_request_id_fails(
    client: VaultClient, account: str
) -> None:
    bucket = make(client, account)
    bucket_id = bucket.name.rsplit("/", 1)[1]
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        lambda: client.create_bucket(account, bucket_id),
    )


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda c, a: c.create_bucket(a, "Bad_Id"), "MALFORMED_NAME"),
        (lambda c, a: c.create_bucket("accounts/", new_id()), "MALFORMED_NAME"),
        (lambda c, a: c.create_bucket(a, new_id(), labels={"A": "x"}), "MALFORMED_NAME"),
        (lambda c, a: c.create_bucket(a, new_id(), policy=policy(86_401)), "INVALID_ARGUMENT"),
        (lambda c, a: c.create_bucket(a, new_id(), policy=policy(0, -1)), "INVALID_ARGUMENT"),
        (lambda c, a: c.get_bucket(f"{a}/buckets/Bad_Id"), "MALFORMED_NAME"),
        (lambda c, a: c.get_bucket(f"{a}/keys/x"), "MALFORMED_NAME"),
    ],
    ids=["id", "parent", "label", "lifetime", "negative-limit", "get-id", "get-key-name"],
)
def test_malformed_requests_are_invalid_arguments(
    client: VaultClient, account: str, bad: Any, reason: str
) -> None:
    expect_error(INVALID, reason, lambda: bad(client, account))


def test_get_missing_bucket_is_not_found(client: VaultClient, account: str) -> None:
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        lambda: client.get_bucket(f"{account}/buckets/{new_id()}"),
    )


def test_list_buckets_pages_and_filters_by_label(client: VaultClient) -> None:
    account = new_account()
    names = sorted(
        client.create_bucket(account, new_id(), labels={"tier": tier}).name
        for tier in ("hot", "hot", "cold", "hot", "cold")
    )
    first = client.list_buckets(account, page_size=2)
    assert len(first.buckets) == 2 and first.next_page_token
    assert [b.name for b in client.iter_buckets(account, page_size=2)] == names
    hot = [b.name for b in client.iter_buckets(account, label_key="tier", label_value="hot")]
    assert len(hot) == 3
    assert all(client.get_bucket(n).labels["tier"] == "hot" for n in hot)
    assert len(list(client.iter_buckets(account, label_key="tier"))) == 5
    assert list(client.iter_buckets(account, label_key="missing")) == []
    # A listed bucket is what GetBucket shows, master-key versions included.
    client.rotate_bucket_master_key(names[1])
    assert list(client.iter_buckets(account, page_size=3)) == [
        client.get_bucket(name) for name in names
    ]
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.list_buckets(account, page_token="not-a-token!"),
    )


def test_list_buckets_pages_of_large_buckets_fit_the_largest_message(
    client: VaultClient,
) -> None:
    """A bucket with every label (64, keys and values of 63 characters) is about 8.5 KB:
    1,000 of them would be eight times server.max_message_bytes, so a page ends after the
    last bucket that fits, and its token resumes right after it."""
    max_bytes = ServerSettings().max_message_bytes
    account = new_account()
    labels = {f"l{i:02d}-{'x' * 59}": "v" * 63 for i in range(64)}
    with ThreadPoolExecutor(4) as pool:
        created = set(
            pool.map(
                lambda _: client.create_bucket(account, new_id(), labels=labels).name,
                range(150),
            )
        )
    pages: list[bucket_service_pb2.ListBucketsResponse] = every_page(
        lambda token: client.list_buckets(account, page_size=1000, page_token=token)
    )
    listed = [bucket.name for page in pages for bucket in page.buckets]
    assert len(listed) == len(set(listed)) == len(created)
    assert set(listed) == created
    assert len(pages) > 1 and all(page.buckets for page in pages)
    assert all(page.ByteSize() <= max_bytes for page in pages)


def test_list_buckets_filters_by_state(client: VaultClient) -> None:
    account = new_account()
    kept, deleted = make(client, account), make(client, account)
    client.delete_bucket(deleted.name, HOUR)
    active = [b.name for b in client.iter_buckets(account, state="ACTIVE")]
    scheduled = [b.name for b in client.iter_buckets(account, state="DELETE_SCHEDULED")]
    assert (active, scheduled) == ([kept.name], [deleted.name])


def test_update_bucket_labels_and_policy(
    client: VaultClient, account: str, stub: bucket_service_pb2_grpc.BucketServiceStub
) -> None:
    bucket = make(client, account, labels={"a": "1"})
    updated = client.update_bucket(bucket.name, policy=policy(60, 5, 0))
    assert dict(updated.labels) == {"a": "1"}
    assert (updated.policy.key_lifetime.seconds, updated.policy.max_objects_per_key) == (60, 5)
    relabelled = client.update_bucket(bucket.name, labels={"b": "2"})
    assert dict(relabelled.labels) == {"b": "2"}
    assert relabelled.policy == updated.policy
    generated = client.generate_bucket_key(bucket.name)
    assert (generated.lifetime_seconds, generated.max_objects, generated.max_bytes) == (60, 5, None)
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.update_bucket(bucket.name),  # nothing to update
    )


# -- bucket keys -----------------------------------------------------------------------------


def test_generate_bucket_key_returns_a_key_that_decrypt_gives_back(
    client: VaultClient, account: str
) -> None:
    bucket = make(client, account, policy=policy(120))
    generated = client.generate_bucket_key(bucket.name)
    assert len(generated.plaintext) == 32
    assert generated.master_key_version == f"{bucket.name}/masterKeyVersions/1"
    assert version_of(generated.wrapped) == 1
    assert generated.lifetime_seconds == 120
    assert generated.plaintext not in generated.wrapped
    assert generated.plaintext.hex() not in repr(generated)
    assert client.decrypt_bucket_key(bucket.name, generated.wrapped) == generated.plaintext
    other = client.generate_bucket_key(bucket.name)
    assert other.plaintext != generated.plaintext


def test_raw_responses_carry_checksums(
    client: VaultClient, account: str, stub: bucket_service_pb2_grpc.BucketServiceStub
) -> None:
    import google_crc32c

    bucket = make(client, account)
    generated = stub.GenerateBucketKey(
        bucket_service_pb2.GenerateBucketKeyRequest(name=bucket.name)
    )
    assert generated.plaintext_crc32c.value == google_crc32c.value(generated.plaintext)
    assert generated.wrapped_key_crc32c.value == google_crc32c.value(generated.wrapped_key)
    opened = stub.DecryptBucketKey(
        bucket_service_pb2.DecryptBucketKeyRequest(
            name=bucket.name, wrapped_key=generated.wrapped_key
        )
    )
    assert opened.plaintext == generated.plaintext
    assert not opened.verified_wrapped_key_crc32c
    with pytest.raises(grpc.RpcError) as caught:
        stub.DecryptBucketKey(
            bucket_service_pb2.DecryptBucketKeyRequest(
                name=bucket.name,
                wrapped_key=generated.wrapped_key,
                wrapped_key_crc32c={"value": 1},
            )
        )
    assert caught.value.code() == INVALID


def test_a_wrapped_key_opens_only_in_its_own_bucket(
    client: VaultClient, account: str, stub: bucket_service_pb2_grpc.BucketServiceStub
) -> None:
    """Another bucket of the account, the same-named bucket of another account, a modified
    wrapped key, and garbage: one uniform DECRYPTION_FAILED."""
    bucket_id = new_id()
    a = client.create_bucket(account, bucket_id)
    b = make(client, account)
    twin = client.create_bucket(new_account(), bucket_id)
    wrapped = client.generate_bucket_key(a.name).wrapped
    tampered = bytearray(wrapped)
    tampered[-1] ^= 1
    attempts = [
        (b.name, wrapped),
        (twin.name, wrapped),
        (a.name, bytes(tampered)),
        (a.name, wrapped[:-1]),
        (a.name, b"\x03" + b"\x00" * 64),
        (a.name, b"\x03\x00\x00\x00\x09" + wrapped[5:]),  # a version that does not exist
        (a.name, b""),
        (a.name, b"x" * 5000),
    ]
    answers = set()
    for name, data in attempts:
        with pytest.raises(BucketKeyRejected):
            client.decrypt_bucket_key(name, data)
        # The SDK turns DECRYPTION_FAILED into BucketKeyRejected; look at the status too.
        with pytest.raises(grpc.RpcError) as caught:
            stub.DecryptBucketKey(
                bucket_service_pb2.DecryptBucketKeyRequest(name=name, wrapped_key=data)
            )
        error = VaultClientError.from_rpc_error(caught.value)
        answers.add((error.code, error.reason, error.message, tuple(error.metadata.items())))
    assert answers == {
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "DECRYPTION_FAILED",
            "the ciphertext could not be decrypted with this key",
            (),
        )
    }
    assert client.decrypt_bucket_key(a.name, wrapped)  # still opens where it belongs


# -- rotation and master-key versions -------------------------------------------------------


def test_rotation_keeps_old_wrapped_keys_opening_until_their_version_is_disabled(
    client: VaultClient, account: str
) -> None:
    bucket = make(client, account)
    old = client.generate_bucket_key(bucket.name)
    rotated = client.rotate_bucket_master_key(bucket.name)
    assert rotated.primary_master_key_version == f"{bucket.name}/masterKeyVersions/2"
    new = client.generate_bucket_key(bucket.name)
    assert (version_of(old.wrapped), version_of(new.wrapped)) == (1, 2)
    assert new.master_key_version == rotated.primary_master_key_version
    assert client.decrypt_bucket_key(bucket.name, old.wrapped) == old.plaintext

    first = f"{bucket.name}/masterKeyVersions/1"
    disabled = client.disable_bucket_master_key_version(first)
    assert [v.state for v in disabled.master_key_versions] == [
        VersionState.VERSION_STATE_DISABLED,
        VersionState.VERSION_STATE_ENABLED,
    ]
    error = expect_error(
        PRECONDITION,
        "WRONG_KEY_STATE",
        lambda: client.decrypt_bucket_key(bucket.name, old.wrapped),
    )
    assert error.metadata["name"] == first
    assert client.decrypt_bucket_key(bucket.name, new.wrapped) == new.plaintext

    client.enable_bucket_master_key_version(first)
    assert client.decrypt_bucket_key(bucket.name, old.wrapped) == old.plaintext


def test_a_disabled_version_refuses_foreign_keys_as_always(
    client: VaultClient, account: str
) -> None:
    """WRONG_KEY_STATE only for a genuine key of this bucket: a wrapped key from elsewhere, or
    a modified one, naming a disabled version gets the uniform DECRYPTION_FAILED."""
    bucket, other = make(client, account), make(client, account)
    own = client.generate_bucket_key(bucket.name).wrapped
    foreign = client.generate_bucket_key(other.name).wrapped
    client.rotate_bucket_master_key(bucket.name)
    client.disable_bucket_master_key_version(f"{bucket.name}/masterKeyVersions/1")
    expect_error(
        PRECONDITION, "WRONG_KEY_STATE", lambda: client.decrypt_bucket_key(bucket.name, own)
    )
    tampered = own[:-1] + bytes([own[-1] ^ 1])
    for wrapped in (foreign, tampered):
        with pytest.raises(BucketKeyRejected):
            client.decrypt_bucket_key(bucket.name, wrapped)


def test_a_disabled_primary_version_stops_new_bucket_keys(
    client: VaultClient, account: str
) -> None:
    bucket = make(client, account)
    primary = bucket.primary_master_key_version
    client.disable_bucket_master_key_version(primary)
    expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.generate_bucket_key(bucket.name))
    client.rotate_bucket_master_key(bucket.name)
    assert version_of(client.generate_bucket_key(bucket.name).wrapped) == 2


def test_version_state_changes_are_checked(client: VaultClient, account: str) -> None:
    bucket = make(client, account)
    primary = bucket.primary_master_key_version
    # Enabling an enabled version changes nothing.
    assert client.enable_bucket_master_key_version(primary).master_key_versions[0].state == (
        VersionState.VERSION_STATE_ENABLED
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        lambda: client.disable_bucket_master_key_version(f"{bucket.name}/masterKeyVersions/7"),
    )
    expect_error(
        INVALID,
        "MALFORMED_NAME",
        lambda: client.disable_bucket_master_key_version(f"{bucket.name}/versions/1"),
    )


# -- deletion --------------------------------------------------------------------------------


def test_delete_schedules_destruction_and_cancel_brings_the_bucket_back(
    client: VaultClient, account: str
) -> None:
    bucket = make(client, account)
    generated = client.generate_bucket_key(bucket.name)
    scheduled = client.delete_bucket(bucket.name, HOUR)
    assert scheduled.state == BucketState.BUCKET_STATE_DELETE_SCHEDULED
    assert scheduled.HasField("delete_time")
    for call in (
        lambda: client.generate_bucket_key(bucket.name),
        lambda: client.decrypt_bucket_key(bucket.name, generated.wrapped),
        lambda: client.rotate_bucket_master_key(bucket.name),
        lambda: client.delete_bucket(bucket.name, HOUR),
    ):
        expect_error(PRECONDITION, "WRONG_KEY_STATE", call)
    restored = client.cancel_bucket_deletion(bucket.name)
    assert restored.state == BucketState.BUCKET_STATE_ACTIVE
    assert not restored.HasField("delete_time")
    assert client.decrypt_bucket_key(bucket.name, generated.wrapped) == generated.plaintext
    expect_error(
        PRECONDITION, "WRONG_KEY_STATE", lambda: client.cancel_bucket_deletion(bucket.name)
    )


def test_delete_refuses_a_waiting_period_longer_than_ten_years(
    client: VaultClient, account: str
) -> None:
    bucket = make(client, account)
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.delete_bucket(bucket.name, timedelta(days=3651)),
    )
    assert client.get_bucket(bucket.name).state == BucketState.BUCKET_STATE_ACTIVE


def test_after_destruction_no_object_of_the_bucket_opens(client: VaultClient, account: str) -> None:
    bucket = make(client, account)
    cipher = ObjectCipher(client, bucket.name)
    sealed = cipher.encrypt("a/b.txt", b"shredded")
    fresh = ObjectCipher(client, bucket.name)  # no cached bucket key
    assert fresh.decrypt("a/b.txt", sealed) == b"shredded"
    client.delete_bucket(bucket.name, timedelta(0))
    deleted = wait_deleted(client, bucket.name)
    assert all(v.state == VersionState.VERSION_STATE_DESTROYED for v in deleted.master_key_versions)
    with pytest.raises(VaultClientError) as caught:
        ObjectCipher(client, bucket.name).decrypt("a/b.txt", sealed)
    assert (caught.value.code, caught.value.reason) == (PRECONDITION, "WRONG_KEY_STATE")
    # The id stays taken by the tombstone.
    bucket_id = bucket.name.rsplit("/", 1)[1]
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        lambda: client.create_bucket(account, bucket_id),
    )
    expect_error(
        PRECONDITION, "WRONG_KEY_STATE", lambda: client.update_bucket(bucket.name, labels={})
    )


# -- ObjectCipher over VaultClient -----------------------------------------------------------


def test_object_cipher_round_trips_through_the_vault_and_refuses_other_buckets(
    client: VaultClient, account: str
) -> None:
    bucket, other = make(client, account), make(client, account)
    sealed = ObjectCipher(client, bucket.name).encrypt("k", b"payload" * 1000)
    assert ObjectCipher(client, bucket.name).decrypt("k", sealed) == b"payload" * 1000
    with pytest.raises(ObjectIntegrityError):
        ObjectCipher(client, other.name).decrypt("k", sealed)


def test_a_thousand_small_objects_cost_one_generate_bucket_key(
    client: VaultClient, account: str
) -> None:
    bucket = make(client, account)
    cipher = ObjectCipher(client, bucket.name)
    objects = {f"obj/{i}": f"object {i}".encode() for i in range(1000)}
    sealed = {key: cipher.encrypt(key, data) for key, data in objects.items()}
    assert all(cipher.decrypt(key, sealed[key]) == data for key, data in objects.items())
    stats = cipher.cache.stats()
    assert (stats.generate_calls, stats.decrypt_calls) == (1, 0)
    generated = [
        event
        for event in client.iter_audit_events(resource=bucket.name)
        if event.method.endswith("/GenerateBucketKey")
    ]
    assert [event.outcome for event in generated] == ["OK"]


def test_after_destruction_the_data_directory_holds_no_copy_of_the_master_key(
    client: VaultClient, account: str, data_dir: Path
) -> None:
    """Crypto-shredding: once a deleted bucket's master key is destroyed, its wrapped blobs are
    gone from every file of the data directory (database, its WAL, the token), so nobody
    holding the data directory and the PIN can unwrap it and open the bucket's keys again."""
    bucket = make(client, account)
    client.rotate_bucket_master_key(bucket.name)
    master_key_id = "~" + bucket.name.rsplit("/", 1)[1]
    with closing(sqlite3.connect(data_dir / "vault.db")) as db:
        blobs = [
            bytes(row[0])
            for row in db.execute(
                "SELECT wrapped_blob FROM key_versions WHERE account = ? AND key_id = ?",
                (account.removeprefix("accounts/"), master_key_id),
            )
        ]
    assert len(blobs) == 2 and all(len(blob) >= 32 for blob in blobs)
    assert files_containing(data_dir, blobs)  # the check below can see them
    client.delete_bucket(bucket.name, timedelta(0))
    wait_deleted(client, bucket.name)
    assert files_containing(data_dir, blobs) == []


def files_containing(directory: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                found.append(str(path.relative_to(directory)))
    return found


def test_concurrent_creates_with_one_request_id_make_one_bucket(
    client: VaultClient, account: str
) -> None:
    bucket_id, request_id = new_id(), uuid4().hex

    def create(_: int) -> str:
        return str(client.create_bucket(account, bucket_id, request_id=request_id).name)

    with ThreadPoolExecutor(max_workers=6) as pool:
        names = set(pool.map(create, range(6)))
    assert names == {f"{account}/buckets/{bucket_id}"}
    assert len(client.get_bucket(names.pop()).master_key_versions) == 1
