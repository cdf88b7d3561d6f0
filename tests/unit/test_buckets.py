"""BucketManagement against in-memory ports: creation and its request ids, bucket keys bound
to their bucket, master-key versions, deletion and listing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.unit.world import ACCOUNT, World
from vault.domain.algorithms import Algorithm
from vault.domain.buckets import (
    BUCKET_VERSIONS_SHOWN,
    BucketFilter,
    BucketPolicy,
    BucketState,
    WrappedBucketKey,
    bucket_key_aad,
)
from vault.domain.errors import (
    AlreadyExists,
    DecryptionFailed,
    InvalidArgument,
    MalformedName,
    NotFound,
    UnsupportedAlgorithm,
    WrongState,
)
from vault.domain.models import VersionState
from vault.domain.names import BucketName

BUCKET = f"accounts/{ACCOUNT}/buckets/photos"


def test_a_new_bucket_is_active_with_master_key_version_one(world: World) -> None:
    view = world.buckets.create_bucket(ACCOUNT, "photos", labels={"team": "x"})
    assert view.state is BucketState.ACTIVE
    assert str(view.bucket.name) == BUCKET and view.bucket.labels == {"team": "x"}
    assert [(v.number, v.state) for v in view.versions] == [(1, VersionState.ENABLED)]
    assert view.master_key.algorithm is Algorithm.BUCKET_AES_256


def test_a_bucket_request_id_returns_the_first_bucket(world: World) -> None:
    first = world.buckets.create_bucket(ACCOUNT, "photos", request_id="r-1")
    again = world.buckets.create_bucket(ACCOUNT, "photos", request_id="r-1")
    assert again == first and world.keystore.generated == 1
    with pytest.raises(AlreadyExists):
        world.buckets.create_bucket(ACCOUNT, "videos", request_id="r-1")
    with pytest.raises(AlreadyExists):
        world.buckets.create_bucket(ACCOUNT, "photos")


def test_a_retry_that_looked_before_the_first_call_committed_gets_the_first_bucket(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two CreateBucket calls with one request_id overlap: the second looks the request_id
    up before the first commits, then finds the bucket name taken. It answers with that
    bucket (tests/test_buckets_api.py races six real calls for this)."""
    first = world.buckets.create_bucket(ACCOUNT, "photos", request_id="r-1")
    lookups = iter([None])  # the first lookup runs before the first call committed
    found = world.bucket_store.find_bucket_by_request_id
    monkeypatch.setattr(
        world.bucket_store,
        "find_bucket_by_request_id",
        lambda account, request_id: next(lookups, found(account, request_id)),
    )
    assert world.buckets.create_bucket(ACCOUNT, "photos", request_id="r-1") == first
    assert world.keystore.generated == 1


def test_a_token_without_the_master_algorithm_makes_no_bucket(world: World) -> None:
    world.keystore.algorithms = frozenset({Algorithm.AES_256_GCM})
    with pytest.raises(UnsupportedAlgorithm):
        world.buckets.create_bucket(ACCOUNT, "photos")
    assert world.bucket_store.buckets == {}


def test_a_bucket_key_opens_again_with_its_policy(world: World) -> None:
    policy = BucketPolicy(key_lifetime=timedelta(minutes=5), max_objects=10)
    world.buckets.create_bucket(ACCOUNT, "photos", policy=policy)
    made = world.buckets.generate_bucket_key(BUCKET)
    opened = world.buckets.decrypt_bucket_key(BUCKET, made.wrapped)
    assert len(made.plaintext) == 32 and opened.plaintext == made.plaintext
    assert made.master_key_version == f"{BUCKET}/masterKeyVersions/1"
    assert opened.policy == policy


def test_a_wrapped_bucket_key_is_bound_to_its_bucket_by_the_aad(world: World) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    made = world.buckets.generate_bucket_key(BUCKET)
    envelope = WrappedBucketKey.parse(made.wrapped)
    name = BucketName(ACCOUNT, "photos")
    version = world.store.get_version(name.master_key.version(1))
    assert version is not None
    own = bucket_key_aad(envelope.header(), name)
    other = bucket_key_aad(envelope.header(), BucketName(ACCOUNT, "photo"))
    algorithm = Algorithm.BUCKET_AES_256
    assert (
        world.keystore.decrypt_gcm(version, algorithm, envelope.nonce, envelope.sealed, own)
        == made.plaintext
    )
    with pytest.raises(DecryptionFailed):
        world.keystore.decrypt_gcm(version, algorithm, envelope.nonce, envelope.sealed, other)


def test_another_buckets_or_a_tampered_wrapped_key_fails_uniformly(world: World) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    world.buckets.create_bucket(ACCOUNT, "videos")
    made = world.buckets.generate_bucket_key(BUCKET)
    tampered = made.wrapped[:-1] + bytes([made.wrapped[-1] ^ 1])
    for name, wrapped in (
        (f"accounts/{ACCOUNT}/buckets/videos", made.wrapped),
        (BUCKET, tampered),
        (BUCKET, made.wrapped[:-1]),
        (BUCKET, bytes(2000)),
    ):
        with pytest.raises(DecryptionFailed):
            world.buckets.decrypt_bucket_key(name, wrapped)


def test_a_disabled_master_version_makes_no_keys_and_opens_none(world: World) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    made = world.buckets.generate_bucket_key(BUCKET)
    view = world.buckets.disable_version(f"{BUCKET}/masterKeyVersions/1")
    assert [v.state for v in view.versions] == [VersionState.DISABLED]
    with pytest.raises(WrongState):
        world.buckets.generate_bucket_key(BUCKET)
    with pytest.raises(WrongState) as caught:
        world.buckets.decrypt_bucket_key(BUCKET, made.wrapped)
    assert caught.value.metadata["name"] == f"{BUCKET}/masterKeyVersions/1"
    world.buckets.enable_version(f"{BUCKET}/masterKeyVersions/1")
    assert world.buckets.decrypt_bucket_key(BUCKET, made.wrapped).plaintext == made.plaintext


def test_rotating_the_master_key_moves_new_keys_to_version_two(world: World) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    old = world.buckets.generate_bucket_key(BUCKET)
    view = world.buckets.rotate_master_key(BUCKET)
    new = world.buckets.generate_bucket_key(BUCKET)
    assert view.master_key.primary_version == 2
    assert new.master_key_version.endswith("/masterKeyVersions/2")
    assert world.buckets.decrypt_bucket_key(BUCKET, old.wrapped).plaintext == old.plaintext


def test_a_deleted_bucket_serves_no_keys_until_the_deletion_is_cancelled(world: World) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    made = world.buckets.generate_bucket_key(BUCKET)
    deleted = world.buckets.delete_bucket(BUCKET, timedelta(days=2))
    assert deleted.state is BucketState.DELETE_SCHEDULED
    with pytest.raises(WrongState) as caught:
        world.buckets.decrypt_bucket_key(BUCKET, made.wrapped)
    assert caught.value.metadata["state"] == "DELETE_SCHEDULED"
    assert world.buckets.cancel_deletion(BUCKET).state is BucketState.ACTIVE
    assert world.buckets.decrypt_bucket_key(BUCKET, made.wrapped).plaintext == made.plaintext


def test_the_destruction_job_shreds_a_deleted_bucket(world: World) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    world.buckets.delete_bucket(BUCKET, timedelta(days=1))
    world.clock.advance(days=1)
    assert len(world.keys.destroy_due_keys()) == 1
    view = world.buckets.get_bucket(BUCKET)
    assert view.state is BucketState.DELETED
    assert view.versions[0].wrapped_blob is None


def test_buckets_are_listed_a_page_at_a_time_with_their_versions(world: World) -> None:
    for bucket_id in ("c", "a", "b"):
        world.buckets.create_bucket(ACCOUNT, bucket_id)
    world.buckets.rotate_master_key(f"accounts/{ACCOUNT}/buckets/a")
    first = world.buckets.list_buckets(ACCOUNT, BucketFilter(), 2, "")
    second = world.buckets.list_buckets(ACCOUNT, BucketFilter(), 2, first.next_page_token)
    assert [v.bucket.name.bucket for v in first.items] == ["a", "b"]
    assert [len(v.versions) for v in first.items] == [2, 1]
    assert [v.bucket.name.bucket for v in second.items] == ["c"]
    with pytest.raises(InvalidArgument):
        world.buckets.list_buckets(ACCOUNT, BucketFilter(), -1, "")


def test_a_bucket_shows_its_newest_versions_and_counts_them_all(world: World) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    world.buckets.create_bucket(ACCOUNT, "logs")
    rotations = BUCKET_VERSIONS_SHOWN + 4
    for _ in range(rotations):
        view = world.buckets.rotate_master_key(BUCKET)
    newest = list(range(rotations + 2 - BUCKET_VERSIONS_SHOWN, rotations + 2))
    assert [v.number for v in view.versions] == newest
    assert view.version_count == rotations + 1
    for shown in (
        world.buckets.get_bucket(BUCKET),
        *world.buckets.list_buckets(ACCOUNT, BucketFilter(), 0, "").items,
    ):
        if shown.bucket.name.bucket == "photos":
            assert [v.number for v in shown.versions] == newest
            assert shown.version_count == rotations + 1
        else:
            assert ([v.number for v in shown.versions], shown.version_count) == ([1], 1)


def test_disabling_or_enabling_a_version_older_than_those_shown_answers_with_it(
    world: World,
) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    for _ in range(BUCKET_VERSIONS_SHOWN + 1):
        world.buckets.rotate_master_key(BUCKET)
    first = f"{BUCKET}/masterKeyVersions/1"

    disabled = world.buckets.disable_version(first)
    assert [(v.number, v.state) for v in disabled.versions[:2]] == [
        (1, VersionState.DISABLED),
        (3, VersionState.ENABLED),
    ]
    assert len(disabled.versions) == BUCKET_VERSIONS_SHOWN + 1
    enabled = world.buckets.enable_version(first)
    assert (enabled.versions[0].number, enabled.versions[0].state) == (1, VersionState.ENABLED)
    # Other answers show the newest only.
    assert world.buckets.get_bucket(BUCKET).versions[0].number == 3


def test_every_master_key_version_is_listed_newest_first_in_pages(world: World) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    for _ in range(6):
        world.buckets.rotate_master_key(BUCKET)
    numbers, token = [], ""
    while True:
        bucket, page = world.buckets.list_master_key_versions(BUCKET, 3, token)
        assert bucket == BucketName(ACCOUNT, "photos")
        numbers.append([v.number for v in page.items])
        token = page.next_page_token
        if not token:
            break
    assert numbers == [[7, 6, 5], [4, 3, 2], [1]]
    _, everything = world.buckets.list_master_key_versions(BUCKET, 0, "")
    assert [v.number for v in everything.items] == [7, 6, 5, 4, 3, 2, 1]
    with pytest.raises(InvalidArgument):
        world.buckets.list_master_key_versions(BUCKET, -1, "")
    with pytest.raises(MalformedName):
        world.buckets.list_master_key_versions(f"{BUCKET}/masterKeyVersions/1", 0, "")
    with pytest.raises(NotFound):
        world.buckets.list_master_key_versions(f"accounts/{ACCOUNT}/buckets/absent", 0, "")


def test_labels_and_policy_are_updated(world: World) -> None:
    world.buckets.create_bucket(ACCOUNT, "photos")
    policy = BucketPolicy(max_bytes=1 << 30)
    view = world.buckets.update_bucket(BUCKET, labels={"tier": "cold"}, policy=policy)
    assert (view.bucket.labels, view.bucket.policy, view.bucket.etag) == (
        {"tier": "cold"},
        policy,
        1,
    )
