"""SqlBucketStore on SQLite and on PostgreSQL: a bucket and its master key written together,
duplicates by id and by request id, the label filter (a JSON path on both), pages, the
optimistic update and the master-key versions read for a page."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from tests.test_storage import T0, make_key, make_version
from vault.domain.buckets import Bucket, BucketFilter, BucketPolicy, BucketState
from vault.domain.errors import AlreadyExists, Conflict, InvalidArgument
from vault.domain.models import Key, KeyState
from vault.domain.names import BucketName
from vault.storage import Stores

ACCOUNT = "acme"


def new_bucket(
    stores: Stores, bucket_id: str, *, labels: dict[str, str] | None = None, request_id: str = ""
) -> tuple[Bucket, Key]:
    name = BucketName(ACCOUNT, bucket_id)
    master = make_key(name.master_key.key, ACCOUNT)
    bucket = Bucket(
        name=name,
        policy=BucketPolicy(key_lifetime=timedelta(hours=1), max_objects=100),
        create_time=T0,
        update_time=T0,
        labels=labels or {},
        request_id=request_id,
    )
    stores.buckets.create_bucket(bucket, master, make_version(master))
    return bucket, master


def test_a_bucket_and_its_master_key_round_trip(stores: Stores) -> None:
    bucket, master = new_bucket(stores, "photos", labels={"team": "web"}, request_id="req-1")
    found = stores.buckets.get_bucket(bucket.name)
    assert found is not None
    assert found[0] == bucket
    assert found[1].name == master.name and found[1].state is KeyState.ENABLED
    assert stores.metadata.get_key(master.name) == found[1]
    assert stores.buckets.find_bucket_by_request_id(ACCOUNT, "req-1") == bucket
    assert stores.buckets.find_bucket_by_request_id(ACCOUNT, "req-2") is None
    assert stores.buckets.get_bucket(BucketName(ACCOUNT, "absent")) is None


def test_duplicates_by_id_and_by_request_id_write_nothing(stores: Stores) -> None:
    new_bucket(stores, "photos", request_id="req-1")
    with pytest.raises(AlreadyExists) as by_id:
        new_bucket(stores, "photos")
    assert by_id.value.message == "bucket already exists"
    with pytest.raises(AlreadyExists) as by_request:
        new_bucket(stores, "videos", request_id="req-1")
    assert by_request.value.metadata == {"field": "request_id"}
    # The refused bucket's master key was rolled back with it.
    assert stores.metadata.get_key(BucketName(ACCOUNT, "videos").master_key) is None


def test_label_and_state_filters_across_pages(stores: Stores) -> None:
    for n in range(7):
        new_bucket(stores, f"b{n}", labels={"tier": "hot" if n % 2 else "cold"})
    new_bucket(stores, "unlabelled")
    _, master = new_bucket(stores, "gone", labels={"tier": "hot"})
    stores.metadata.update_key(replace(master, state=KeyState.DESTROY_SCHEDULED))

    def listed(bucket_filter: BucketFilter) -> list[str]:
        names, token = [], ""
        while True:
            page = stores.buckets.list_buckets(ACCOUNT, bucket_filter, 2, token)
            names += [bucket.name.bucket for bucket, _ in page.items]
            token = page.next_page_token
            if not token:
                return names

    assert listed(BucketFilter(label_key="tier", label_value="hot")) == ["b1", "b3", "b5", "gone"]
    assert len(listed(BucketFilter(label_key="tier"))) == 8
    assert listed(BucketFilter(state=BucketState.DELETE_SCHEDULED)) == ["gone"]
    assert len(listed(BucketFilter())) == 9


def test_an_update_needs_the_current_etag(stores: Stores) -> None:
    bucket, _ = new_bucket(stores, "photos")
    changed = stores.buckets.update_bucket(replace(bucket, labels={"new": "label"}))
    assert changed.etag == bucket.etag + 1 and changed.labels == {"new": "label"}
    with pytest.raises(Conflict):
        stores.buckets.update_bucket(replace(bucket, labels={"stale": "write"}))
    found = stores.buckets.get_bucket(bucket.name)
    assert found is not None and found[0] == changed


def test_master_key_versions_of_a_page(stores: Stores) -> None:
    _, first = new_bucket(stores, "one")
    _, second = new_bucket(stores, "two")
    _, third = new_bucket(stores, "three")
    for number in range(2, 8):
        first = stores.metadata.add_version(first, make_version(first, number))
    stores.metadata.add_version(second, make_version(second, 2))
    ids = [first.name.key, second.name.key, third.name.key]
    newest = stores.buckets.master_key_versions(ACCOUNT, ids, 3)
    assert [v.name.version for v in newest[first.name.key].versions] == [5, 6, 7]
    assert newest[first.name.key].total == 7
    assert newest[first.name.key].versions[-1] == stores.metadata.get_version(first.name.version(7))
    assert [v.name.version for v in newest[second.name.key].versions] == [1, 2]
    assert newest[second.name.key].total == 2
    assert [v.name.version for v in newest[third.name.key].versions] == [1]
    assert newest[third.name.key].total == 1
    assert stores.buckets.master_key_versions(ACCOUNT, [], 3) == {}


def test_newest_master_key_versions_of_a_page_of_a_thousand_buckets(stores: Stores) -> None:
    """The largest page ListBuckets reads the versions of, each bucket with more versions
    than are shown: every one read by its own bound."""
    masters = [new_bucket(stores, f"b{n:04d}")[1] for n in range(1000)]
    stores.metadata.add_version(masters[7], make_version(masters[7], 2))
    newest = stores.buckets.master_key_versions(ACCOUNT, [m.name.key for m in masters], 1)
    shown = {key_id: ([v.number for v in n.versions], n.total) for key_id, n in newest.items()}
    expected = {m.name.key: ([1], 1) for m in masters}
    expected[masters[7].name.key] = ([2], 2)
    assert shown == expected


def test_master_key_versions_are_listed_newest_first_in_pages(stores: Stores) -> None:
    _, master = new_bucket(stores, "one")
    new_bucket(stores, "two")
    for number in range(2, 8):
        master = stores.metadata.add_version(master, make_version(master, number))
    everything = stores.buckets.list_master_key_versions(master.name, 0, "")
    assert [v.number for v in everything.items] == [7, 6, 5, 4, 3, 2, 1]
    assert everything.next_page_token == ""
    pages: list[list[int]] = []
    token = ""
    while True:
        page = stores.buckets.list_master_key_versions(master.name, 3, token)
        pages.append([v.number for v in page.items])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]
    assert everything.token_after is not None
    resumed = stores.buckets.list_master_key_versions(master.name, 2, everything.token_after(1))
    assert [v.number for v in resumed.items] == [5, 4]
    for bad in ("!!!", "a2V5", "LTE"):  # not base64; "key"; "-1"
        with pytest.raises(InvalidArgument):
            stores.buckets.list_master_key_versions(master.name, 3, bad)
