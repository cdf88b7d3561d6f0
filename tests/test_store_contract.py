"""One behavioural suite for the MetadataStore and BucketStore ports, run against the SQLite
stores and against the in-memory fakes the unit tests use (tests.support.fakes): etags,
atomic changes, the material epoch, pending versions, destruction and pages behave alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.fakes import FakeBucketStore, FakeMetadataStore
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.buckets import Bucket, BucketFilter, BucketPolicy
from vault.domain.errors import AlreadyExists, Conflict, InvalidArgument
from vault.domain.models import (
    Key,
    KeyFilter,
    KeyState,
    KeyVersion,
    RevocationReason,
    RootGeneration,
    VersionState,
)
from vault.domain.names import BucketName, KeyName
from vault.domain.ports import BucketStore, MetadataStore
from vault.storage import open_stores

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
BLOB = b"\x00wrapped\xff" * 4


@dataclass
class Stores:
    metadata: MetadataStore
    buckets: BucketStore


@pytest.fixture(params=["sqlite", "fake"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "fake":
        fake = FakeMetadataStore()
        yield Stores(fake, FakeBucketStore(fake))
        return
    opened = open_stores(f"sqlite:///{tmp_path / 'vault.db'}")
    try:
        yield Stores(opened.metadata, opened.buckets)
    finally:
        opened.metadata.close()


def key(key_id: str, *, request_id: str = "", labels: dict[str, str] | None = None) -> Key:
    return Key(
        name=KeyName("acme", key_id),
        purpose=Purpose.ENCRYPT_DECRYPT,
        algorithm=Algorithm.AES_256_GCM,
        state=KeyState.ENABLED,
        primary_version=1,
        create_time=T0,
        update_time=T0,
        labels=labels or {},
        request_id=request_id,
    )


def version(
    of: Key, number: int = 1, state: VersionState = VersionState.ENABLED, label: str | None = None
) -> KeyVersion:
    return KeyVersion(
        name=of.name.version(number),
        state=state,
        create_time=T0,
        root_generation=None if label else 1,
        wrapped_blob=None if label else BLOB,
        token_label=label,
    )


def created(stores: Stores, made: Key, **fields: object) -> Key:
    stores.metadata.create_key(made, version(made, **fields))  # type: ignore[arg-type]
    stored = stores.metadata.get_key(made.name)
    assert stored is not None
    return stored


def test_names_and_request_ids_are_unique(stores: Stores) -> None:
    created(stores, key("a", request_id="r-1"))
    with pytest.raises(AlreadyExists):
        stores.metadata.create_key(key("a"), version(key("a")))
    with pytest.raises(AlreadyExists):
        stores.metadata.create_key(key("b", request_id="r-1"), version(key("b")))
    found = stores.metadata.find_key_by_request_id("acme", "r-1")
    assert found is not None and found.name == KeyName("acme", "a")
    assert stores.metadata.find_key_by_request_id("acme", "") is None


def test_every_write_checks_and_advances_the_etag(stores: Stores) -> None:
    stored = created(stores, key("a"))
    updated = stores.metadata.update_key(replace(stored, description="first"))
    assert updated.etag == stored.etag + 1 and updated.description == "first"
    with pytest.raises(Conflict):
        stores.metadata.update_key(replace(stored, description="stale"))
    with pytest.raises(Conflict):
        stores.metadata.add_version(stored, version(stored, 2))
    current = stores.metadata.get_key(stored.name)
    assert current is not None and current.description == "first"
    assert [v.number for v in stores.metadata.list_versions(stored.name)] == [1]


def test_an_enabled_version_is_primary_at_once_a_pending_one_when_activated(
    stores: Stores,
) -> None:
    stored = created(stores, key("a"))
    with_two = stores.metadata.add_version(stored, version(stored, 2))
    assert with_two.primary_version == 2
    pending = version(stored, 3, VersionState.PENDING, label="vault:key:three")
    with_three = stores.metadata.add_version(with_two, pending)
    assert with_three.primary_version == 2
    activated = stores.metadata.activate_version(replace(pending, public_key_der=b"\x30\x00"))
    assert activated.primary_version == 3
    third = stores.metadata.get_version(pending.name)
    assert third is not None and third.state is VersionState.ENABLED
    assert third.public_key_der == b"\x30\x00"
    with pytest.raises(Conflict):
        stores.metadata.activate_version(pending)


def test_versions_activated_out_of_order_leave_the_newest_primary(stores: Stores) -> None:
    stored = created(stores, key("a"))
    two = version(stored, 2, VersionState.PENDING, label="vault:key:2")
    three = version(stored, 3, VersionState.PENDING, label="vault:key:3")
    stored = stores.metadata.add_version(stored, two)
    stores.metadata.add_version(stored, three)
    stores.metadata.activate_version(three)
    assert stores.metadata.activate_version(two).primary_version == 3


def test_revoking_marks_live_versions_and_moves_the_epoch(stores: Stores) -> None:
    stored = created(stores, key("a"))
    stored = stores.metadata.add_version(stored, version(stored, 2))
    epoch = stores.metadata.material_epoch()
    revoked = replace(
        stored,
        state=KeyState.REVOKED,
        revoke_time=T0,
        revocation_reason_code=RevocationReason.COMPROMISED,
        revocation_reason="leak",
    )
    after = stores.metadata.revoke_key(revoked)
    assert after.state is KeyState.REVOKED and after.etag == stored.etag + 1
    assert stores.metadata.material_epoch() > epoch
    assert all(v.revoked for v in stores.metadata.list_versions(stored.name))
    first = stores.metadata.list_revocations("acme", 1, "")
    second = stores.metadata.list_revocations(None, 1, first.next_page_token)
    assert [r.version_name.version for r in first.items + second.items] == [1, 2]
    assert second.next_page_token == ""
    assert first.items[0].reason_code is RevocationReason.COMPROMISED


def test_a_version_is_revoked_once(stores: Stores) -> None:
    stored = created(stores, key("a"))
    one = version(stored, 1)
    revoked = stores.metadata.revoke_version(stored, replace(one, revoke_time=T0))
    assert revoked.revoked and revoked.number == 1
    current = stores.metadata.get_key(stored.name)
    assert current is not None
    with pytest.raises(Conflict):
        stores.metadata.revoke_version(current, replace(one, revoke_time=T0))


def test_keys_are_listed_in_pages_without_master_keys(stores: Stores) -> None:
    for key_id in ("c", "a", "b"):
        created(stores, key(key_id, labels={"team": key_id}))
    master = replace(key("~photos"), purpose=Purpose.BUCKET_MASTER)
    stores.metadata.create_key(master, version(master))
    first = stores.metadata.list_keys("acme", KeyFilter(), 2, "")
    second = stores.metadata.list_keys("acme", KeyFilter(), 2, first.next_page_token)
    assert [k.name.key for k in first.items + second.items] == ["a", "b", "c"]
    assert second.next_page_token == ""
    labelled = stores.metadata.list_keys(
        "acme", KeyFilter(label_key="team", label_value="b"), 0, ""
    )
    assert [k.name.key for k in labelled.items] == ["b"]
    with pytest.raises(InvalidArgument):
        stores.metadata.list_keys("acme", KeyFilter(label_value="b"), 0, "")


def test_destruction_erases_blobs_and_keeps_earlier_destroy_times(stores: Stores) -> None:
    stored = created(stores, key("a"))
    stored = stores.metadata.add_version(stored, version(stored, 2))
    earlier = T0 - timedelta(days=1)
    two = stores.metadata.get_version(stored.name.version(2))
    assert two is not None
    stores.metadata.update_version(replace(two, destroy_time=earlier))
    scheduled = stores.metadata.update_key(
        replace(stored, state=KeyState.DESTROY_SCHEDULED, destroy_scheduled_time=T0)
    )
    assert stores.metadata.keys_due_for_destruction(T0 - timedelta(seconds=1)) == []
    (due,) = stores.metadata.keys_due_for_destruction(T0)
    destroyed = stores.metadata.mark_destroyed(due, T0)
    assert destroyed.state is KeyState.DESTROYED and destroyed.etag == scheduled.etag + 1
    versions = stores.metadata.list_versions(stored.name)
    assert [(v.state, v.wrapped_blob) for v in versions] == [(VersionState.DESTROYED, None)] * 2
    assert [v.destroy_time for v in versions] == [T0, earlier]
    assert stores.metadata.root_generations_in_use() == set()


def test_discarding_a_pending_version(stores: Stores) -> None:
    only = key("only")
    stores.metadata.create_key(only, version(only, 1, VersionState.PENDING, label="vault:key:o"))
    stores.metadata.discard_pending(version(only, 1, VersionState.PENDING, label="vault:key:o"))
    assert stores.metadata.get_key(only.name) is None
    stored = created(stores, key("a"))
    pending = version(stored, 2, VersionState.PENDING, label="vault:key:p")
    stores.metadata.add_version(stored, pending)
    assert stores.metadata.token_labels_in_use() == {"vault:key:p"}
    assert [v.name for v in stores.metadata.pending_versions()] == [pending.name]
    stores.metadata.discard_pending(pending)
    stores.metadata.discard_pending(pending)  # gone already: not an error
    with pytest.raises(Conflict):
        stores.metadata.discard_pending(version(stored, 1))
    assert stores.metadata.token_labels_in_use() == set()


def test_root_generations_are_recorded_once(stores: Stores) -> None:
    stores.metadata.add_root_generation(RootGeneration(2, "vault:root:2:*", T0))
    stores.metadata.add_root_generation(RootGeneration(1, "vault:root:1", T0))
    with pytest.raises(AlreadyExists):
        stores.metadata.add_root_generation(RootGeneration(1, "again", T0))
    listed = stores.metadata.list_root_generations()
    assert [(r.generation, r.token_label) for r in listed] == [
        (1, "vault:root:1"),
        (2, "vault:root:2:*"),
    ]


def bucket(bucket_id: str, request_id: str = "") -> tuple[Bucket, Key, KeyVersion]:
    name = BucketName("acme", bucket_id)
    master = replace(key("x"), name=name.master_key, purpose=Purpose.BUCKET_MASTER)
    made = Bucket(name, BucketPolicy(), T0, T0, request_id=request_id)
    return made, master, version(master)


def test_buckets_are_made_with_their_master_key_and_listed_in_pages(stores: Stores) -> None:
    for bucket_id in ("c", "a", "b"):
        stores.buckets.create_bucket(*bucket(bucket_id, request_id=f"r-{bucket_id}"))
    with pytest.raises(AlreadyExists):
        stores.buckets.create_bucket(*bucket("a"))
    with pytest.raises(AlreadyExists):
        stores.buckets.create_bucket(*bucket("d", request_id="r-a"))
    found = stores.buckets.get_bucket(BucketName("acme", "a"))
    assert found is not None and found[1].name == BucketName("acme", "a").master_key
    first = stores.buckets.list_buckets("acme", BucketFilter(), 2, "")
    second = stores.buckets.list_buckets("acme", BucketFilter(), 2, first.next_page_token)
    assert [b.name.bucket for b, _ in first.items + second.items] == ["a", "b", "c"]
    master = found[1]
    for number in range(2, 6):
        master = stores.metadata.add_version(master, version(master, number))
    newest = stores.buckets.master_key_versions("acme", ["~a", "~b"], 3)
    assert {k: ([v.number for v in n.versions], n.total) for k, n in newest.items()} == {
        "~a": ([3, 4, 5], 5),
        "~b": ([1], 1),
    }
    page = stores.buckets.list_master_key_versions(master.name, 2, "")
    assert [v.number for v in page.items] == [5, 4]
    rest = stores.buckets.list_master_key_versions(master.name, 0, page.next_page_token)
    assert [v.number for v in rest.items] == [3, 2, 1] and rest.next_page_token == ""


def test_a_stale_bucket_update_is_a_conflict(stores: Stores) -> None:
    made = bucket("a")
    stores.buckets.create_bucket(*made)
    first = stores.buckets.update_bucket(replace(made[0], labels={"tier": "hot"}))
    assert first.etag == made[0].etag + 1 and first.labels == {"tier": "hot"}
    with pytest.raises(Conflict):
        stores.buckets.update_bucket(replace(made[0], labels={"tier": "cold"}))
