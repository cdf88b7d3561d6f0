"""SqlMetadataStore against real SQLite files: every MetadataStore method, optimistic
concurrency, migrations, and several threads and processes sharing one database."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect

import vault.storage.engine as storage_engine
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    StoreUnavailable,
)
from vault.domain.models import (
    Key,
    KeyFilter,
    KeyState,
    KeyVersion,
    ListedKey,
    RevocationReason,
    RootGeneration,
    VersionState,
)
from vault.domain.names import KeyName
from vault.domain.ports import MetadataStore
from vault.storage import SqlMetadataStore, open_store

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
BLOB = b"\x00wrapped-key-material\xff" * 3


def db_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def url(backend_url: str) -> str:
    """Tests that take url (or store) run on SQLite and on PostgreSQL."""
    return backend_url


@pytest.fixture
def store(url: str) -> Iterator[SqlMetadataStore]:
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()


def make_key(
    key_id: str,
    account: str = "acme",
    *,
    purpose: Purpose = Purpose.ENCRYPT_DECRYPT,
    algorithm: Algorithm | None = None,
    labels: dict[str, str] | None = None,
    request_id: str = "",
    state: KeyState = KeyState.ENABLED,
    token_resident: bool = False,
) -> Key:
    defaults = {
        Purpose.ENCRYPT_DECRYPT: Algorithm.AES_256_GCM,
        Purpose.SIGN_VERIFY: Algorithm.EC_SIGN_P256_SHA256,
        Purpose.MAC: Algorithm.HMAC_SHA256,
    }
    return Key(
        name=KeyName(account, key_id),
        purpose=purpose,
        algorithm=algorithm or defaults[purpose],
        state=state,
        primary_version=1,
        create_time=T0,
        update_time=T0,
        token_resident=token_resident,
        labels=labels or {},
        request_id=request_id,
    )


def make_version(
    key: Key,
    number: int = 1,
    *,
    state: VersionState = VersionState.ENABLED,
    root_generation: int | None = 1,
    blob: bytes | None = BLOB,
    token_label: str | None = None,
    public_key_der: bytes | None = None,
    create_time: datetime = T0,
) -> KeyVersion:
    if token_label is not None:
        root_generation, blob = None, None
    return KeyVersion(
        name=key.name.version(number),
        state=state,
        create_time=create_time,
        root_generation=root_generation,
        wrapped_blob=blob,
        token_label=token_label,
        public_key_der=public_key_der,
    )


def create(store: SqlMetadataStore, key: Key, **version: Any) -> Key:
    return store.create_key(key, make_version(key, **version))


# --- opening and migrations ------------------------------------------------------------------


def test_store_satisfies_the_port(store: SqlMetadataStore) -> None:
    port: MetadataStore = store
    assert port.get_key(KeyName("acme", "nothing")) is None


def test_open_store_creates_directory_and_configures_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "vault.db"
    opened = open_store(db_url(path))
    try:
        assert path.exists()
        with opened._engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        # synchronous NORMAL is 1.
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": 1,
            "foreign_keys": 1,
            "busy_timeout": 10_000,
        }
    finally:
        opened.close()


def test_migrations_are_idempotent_and_keep_data(url: str) -> None:
    first = open_store(url)
    try:
        create(first, make_key("kept"))
    finally:
        first.close()
    second = open_store(url)
    try:
        assert second.get_key(KeyName("acme", "kept")) is not None
    finally:
        second.close()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert [tuple(row) for row in versions] == [("0009",)]
    assert {"keys", "key_versions", "root_generations"} <= tables


def test_open_store_works_from_another_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    opened = open_store(db_url(tmp_path / "cwd.db"))
    try:
        create(opened, make_key("k"))
        assert opened.get_key(KeyName("acme", "k")) is not None
    finally:
        opened.close()


def test_in_memory_store_is_shared_by_threads() -> None:
    opened = open_store("sqlite://")
    try:
        run_in_threads(opened, threads=4, per_thread=10)
        page = opened.list_keys("acme", KeyFilter(), 1000, "")
        assert len(page.items) == 40
    finally:
        opened.close()


# --- keys ------------------------------------------------------------------------------------


def test_create_and_get_key_round_trip(store: SqlMetadataStore) -> None:
    key = replace(
        make_key("payments", labels={"team": "billing", "env": "prod"}, request_id="req-1"),
        description="card data",
        destroy_scheduled_time=T0 + timedelta(days=30),
        state=KeyState.DESTROY_SCHEDULED,
        state_before_destroy_scheduled=KeyState.DISABLED,
        revocation_reason="superseded",
    )
    version = make_version(key, public_key_der=b"\x30\x59pub")
    assert store.create_key(key, version) == key

    loaded = store.get_key(key.name)
    assert loaded == key
    assert loaded is not None and loaded.create_time.tzinfo is not None
    assert loaded.create_time.utcoffset() == timedelta(0)
    assert store.get_version(version.name) == version
    assert store.list_versions(key.name) == [version]
    assert store.get_key(KeyName("acme", "other")) is None
    assert store.get_key(KeyName("other", "payments")) is None


def test_times_in_other_zones_are_returned_as_utc(store: SqlMetadataStore) -> None:
    plus_two = datetime(2025, 3, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    key = replace(make_key("zoned"), create_time=plus_two, update_time=plus_two)
    create(store, key)
    loaded = store.get_key(key.name)
    assert loaded is not None
    assert loaded.create_time == T0
    assert loaded.create_time.utcoffset() == timedelta(0)


def test_naive_times_are_refused(store: SqlMetadataStore) -> None:
    naive = datetime(2025, 3, 1, 12, 0, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        create(store, replace(make_key("naive"), create_time=naive))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.keys_due_for_destruction(naive)
    assert store.get_key(KeyName("acme", "naive")) is None


def test_token_resident_key_round_trip(store: SqlMetadataStore) -> None:
    key = make_key("ed", purpose=Purpose.SIGN_VERIFY, algorithm=Algorithm.EC_SIGN_ED25519)
    key = replace(key, token_resident=True)
    version = make_version(key, token_label="vault-ed-1", public_key_der=b"pub")
    store.create_key(key, version)
    loaded = store.get_version(version.name)
    assert loaded == version
    assert loaded is not None and loaded.token_resident and loaded.wrapped_blob is None


def test_create_key_with_taken_name_raises_already_exists(store: SqlMetadataStore) -> None:
    key = make_key("dup")
    create(store, key)
    with pytest.raises(AlreadyExists) as caught:
        create(store, replace(key, description="second"))
    assert caught.value.metadata == {"name": "accounts/acme/keys/dup"}
    # The first key is untouched and the failed insert left no version behind.
    assert store.get_key(key.name) == key
    assert len(store.list_versions(key.name)) == 1


def test_request_ids_are_unique_per_account(store: SqlMetadataStore) -> None:
    first = create(store, make_key("a", request_id="req-7"))
    with pytest.raises(AlreadyExists) as caught:
        create(store, make_key("b", request_id="req-7"))
    assert caught.value.metadata == {"field": "request_id"}
    assert store.get_key(KeyName("acme", "b")) is None
    # The same request id in another account, and any number of keys without one, are fine.
    other = create(store, make_key("b", "globex", request_id="req-7"))
    create(store, make_key("c"))
    create(store, make_key("d"))

    assert store.find_key_by_request_id("acme", "req-7") == first
    assert store.find_key_by_request_id("globex", "req-7") == other
    assert store.find_key_by_request_id("acme", "req-8") is None
    assert store.find_key_by_request_id("acme", "") is None


def test_duplicate_token_label_raises_already_exists(store: SqlMetadataStore) -> None:
    create(store, make_key("one"), token_label="label-1")
    with pytest.raises(AlreadyExists):
        create(store, make_key("two"), token_label="label-1")
    assert store.get_key(KeyName("acme", "two")) is None


def test_version_must_belong_to_key(store: SqlMetadataStore) -> None:
    key = make_key("mine")
    with pytest.raises(ValueError):
        store.create_key(key, make_version(make_key("theirs")))


def test_update_key_bumps_etag_and_persists(store: SqlMetadataStore) -> None:
    key = create(store, make_key("k", labels={"a": "1"}))
    later = T0 + timedelta(hours=1)
    changed = replace(
        key,
        labels={"b": "2"},
        description="new",
        state=KeyState.DISABLED,
        update_time=later,
    )
    updated = store.update_key(changed)
    assert updated == replace(changed, etag=key.etag + 1)
    assert store.get_key(key.name) == updated

    # A writer holding the old etag loses, and its write is not applied.
    with pytest.raises(Conflict):
        store.update_key(replace(key, description="stale"))
    assert store.get_key(key.name) == updated

    again = store.update_key(replace(updated, state=KeyState.ENABLED))
    assert again.etag == key.etag + 2


def test_update_key_does_not_change_immutable_fields(store: SqlMetadataStore) -> None:
    key = create(store, make_key("fixed", request_id="r"))
    tampered = replace(key, purpose=Purpose.MAC, algorithm=Algorithm.HMAC_SHA256, request_id="x")
    updated = store.update_key(tampered)
    assert updated.purpose is Purpose.ENCRYPT_DECRYPT
    assert updated.algorithm is Algorithm.AES_256_GCM
    assert updated.request_id == "r"


def test_update_of_missing_key_is_a_conflict(store: SqlMetadataStore) -> None:
    with pytest.raises(Conflict):
        store.update_key(make_key("ghost"))


# --- versions --------------------------------------------------------------------------------


def test_add_version_makes_it_primary(store: SqlMetadataStore) -> None:
    key = create(store, make_key("rot"))
    later = T0 + timedelta(days=1)
    v2 = make_version(key, 2, root_generation=2, blob=b"second", create_time=later)
    rotated = store.add_version(key, v2)
    assert rotated.primary_version == 2
    assert rotated.etag == key.etag + 1
    assert rotated.update_time == later
    assert store.get_key(key.name) == rotated
    assert [v.number for v in store.list_versions(key.name)] == [1, 2]
    assert store.get_version(v2.name) == v2

    # A stale key cannot add a version; nothing is inserted.
    with pytest.raises(Conflict):
        store.add_version(key, make_version(key, 3))
    assert store.get_version(key.name.version(3)) is None
    assert store.get_key(key.name) == rotated


def test_add_existing_version_number_rolls_back(store: SqlMetadataStore) -> None:
    key = create(store, make_key("again"))
    with pytest.raises(AlreadyExists):
        store.add_version(key, make_version(key, 1, blob=b"other"))
    # The etag bump happened in the same transaction and was rolled back with the insert.
    assert store.get_key(key.name) == key
    version = store.get_version(key.name.version(1))
    assert version is not None and version.wrapped_blob == BLOB


def test_update_version(store: SqlMetadataStore) -> None:
    key = create(
        store,
        make_key("pend", purpose=Purpose.SIGN_VERIFY, token_resident=True),
        token_label="label-p",
        state=VersionState.PENDING,
    )
    pending = store.get_version(key.name.version(1))
    assert pending is not None
    enabled = replace(pending, state=VersionState.ENABLED, public_key_der=b"der")
    store.update_version(enabled)
    assert store.get_version(enabled.name) == enabled

    with pytest.raises(NotFound):
        store.update_version(replace(enabled, name=key.name.version(9)))


def test_update_version_to_a_taken_token_label(store: SqlMetadataStore) -> None:
    create(store, make_key("x"), token_label="label-x")
    key = create(store, make_key("y"), token_label="label-y")
    version = store.get_version(key.name.version(1))
    assert version is not None
    with pytest.raises(AlreadyExists):
        store.update_version(replace(version, token_label="label-x"))
    assert store.get_version(version.name) == version


# --- listing ---------------------------------------------------------------------------------


@pytest.fixture
def populated(store: SqlMetadataStore) -> SqlMetadataStore:
    for i in range(25):
        purpose = Purpose.MAC if i % 3 == 0 else Purpose.ENCRYPT_DECRYPT
        labels = {"team": "red" if i % 2 else "blue"}
        if i % 5 == 0:
            labels["tier.gold"] = "yes"
        state = KeyState.DISABLED if i % 4 == 0 else KeyState.ENABLED
        create(store, make_key(f"key-{i:02d}", purpose=purpose, labels=labels, state=state))
    create(store, make_key("key-00", "globex"))
    return store


def all_pages(
    store: SqlMetadataStore, key_filter: KeyFilter, page_size: int, account: str = "acme"
) -> tuple[list[str], int]:
    ids: list[str] = []
    token = ""
    pages = 0
    while True:
        page = store.list_keys(account, key_filter, page_size, token)
        pages += 1
        assert len(page.items) <= page_size
        ids.extend(key.name.key for key in page.items)
        token = page.next_page_token
        if not token:
            return ids, pages


def test_list_keys_pages_in_key_id_order(populated: SqlMetadataStore) -> None:
    ids, pages = all_pages(populated, KeyFilter(), 10)
    assert ids == [f"key-{i:02d}" for i in range(25)]
    assert pages == 3
    # A page that ends exactly at the last key says there is no next page.
    ids, pages = all_pages(populated, KeyFilter(), 25)
    assert len(ids) == 25 and pages == 1
    assert all_pages(populated, KeyFilter(), 10, account="globex") == (["key-00"], 1)
    assert all_pages(populated, KeyFilter(), 10, account="nobody") == ([], 1)


def test_list_keys_filters_across_pages(populated: SqlMetadataStore) -> None:
    by_purpose, _ = all_pages(populated, KeyFilter(purpose=Purpose.MAC), 3)
    assert by_purpose == [f"key-{i:02d}" for i in range(25) if i % 3 == 0]

    by_state, _ = all_pages(populated, KeyFilter(state=KeyState.DISABLED), 2)
    assert by_state == [f"key-{i:02d}" for i in range(25) if i % 4 == 0]

    by_label, _ = all_pages(populated, KeyFilter(label_key="team", label_value="red"), 4)
    assert by_label == [f"key-{i:02d}" for i in range(25) if i % 2]

    has_label, _ = all_pages(populated, KeyFilter(label_key="tier.gold"), 2)
    assert has_label == [f"key-{i:02d}" for i in range(25) if i % 5 == 0]

    combined, _ = all_pages(
        populated,
        KeyFilter(purpose=Purpose.MAC, state=KeyState.ENABLED, label_key="team", label_value="red"),
        1,
    )
    expected = [i for i in range(25) if i % 3 == 0 and i % 4 and i % 2]
    assert combined == [f"key-{i:02d}" for i in expected]

    assert all_pages(populated, KeyFilter(label_key="team", label_value="green"), 5) == ([], 1)


def test_list_keys_page_size_defaults_and_clamps(store: SqlMetadataStore) -> None:
    for i in range(105):
        create(store, make_key(f"k{i:03d}"))
    assert len(store.list_keys("acme", KeyFilter(), 0, "").items) == 100
    assert len(store.list_keys("acme", KeyFilter(), 5000, "").items) == 105
    smallest = store.list_keys("acme", KeyFilter(), -3, "")
    assert [key.name.key for key in smallest.items] == ["k000"]
    assert smallest.next_page_token


def test_a_page_token_after_any_item_resumes_right_after_it(
    populated: SqlMetadataStore,
) -> None:
    """The token the transport asks for when it ends a page early, to fit one message."""
    page = populated.list_keys("acme", KeyFilter(), 10, "")
    assert page.token_after is not None
    ids = [key.name.key for key in page.items]
    for i in (0, 4, 9):
        after = populated.list_keys("acme", KeyFilter(), 3, page.token_after(i))
        assert [key.name.key for key in after.items] == [
            f"key-{n:02d}" for n in (i + 1, i + 2, i + 3)
        ]
    assert page.token_after(9) == page.next_page_token
    cut = page.first(4)
    assert [key.name.key for key in cut.items] == ids[:4]
    assert cut.next_page_token == page.token_after(3)


def test_list_versions_pages_by_number(store: SqlMetadataStore) -> None:
    key = create(store, make_key("many"))
    for number in range(2, 8):
        key = store.add_version(key, make_version(key, number))
    everything = store.list_versions_page(key.name, 0, "")
    assert [v.number for v in everything.items] == list(range(1, 8))
    assert everything.next_page_token == ""
    numbers: list[list[int]] = []
    token = ""
    while True:
        page = store.list_versions_page(key.name, 3, token)
        numbers.append([v.number for v in page.items])
        token = page.next_page_token
        if not token:
            break
    assert numbers == [[1, 2, 3], [4, 5, 6], [7]]
    assert everything.token_after is not None
    resumed = store.list_versions_page(key.name, 2, everything.token_after(4))
    assert [v.number for v in resumed.items] == [6, 7]
    for bad in ("!!!", "a2V5", "LTE"):  # not base64; "key"; "-1"
        with pytest.raises(InvalidArgument):
            store.list_versions_page(key.name, 3, bad)


@pytest.mark.parametrize("token", ["!!!", "a", "////", "AAAA", "5p2x", "S0VZ", "é"])
def test_list_keys_rejects_malformed_page_tokens(store: SqlMetadataStore, token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        store.list_keys("acme", KeyFilter(), 10, token)
    assert caught.value.metadata == {"field": "page_token"}


def test_listed_keys_hold_what_get_key_reads(store: SqlMetadataStore) -> None:
    """ListKeys reads its own narrow rows (plain integers, label JSON text, the driver's
    booleans); each must hold what the full read of the same key gives."""
    later = T0 + timedelta(days=3, microseconds=7)
    variants = [
        make_key("a-plain"),
        make_key("b-labelled", labels={"team": "red", "env": "prod-é", "x": ""}),
        replace(make_key("c-described", token_resident=True), description="ünïcode ✓ text"),
        replace(
            make_key("d-revoked", state=KeyState.REVOKED),
            revoke_time=later,
            revocation_reason="incident 42",
            revocation_reason_code=RevocationReason.COMPROMISED,
        ),
        replace(
            make_key("e-scheduled", state=KeyState.DESTROY_SCHEDULED),
            destroy_scheduled_time=later,
            state_before_destroy_scheduled=KeyState.ENABLED,
            update_time=later,
        ),
        replace(make_key("f-old"), create_time=datetime(1969, 7, 20, 20, 17, 40, 5, UTC)),
    ]
    for key in variants:
        if key.token_resident:
            create(store, key, token_label=f"label-{key.name.key}")
        else:
            create(store, key)

    listed = store.list_keys("acme", KeyFilter(), 0, "").items
    assert [key.key_id for key in listed] == [key.name.key for key in variants]
    for entry in listed:
        stored = store.get_key(entry.name)
        assert stored is not None
        expected = ListedKey.of(stored)
        assert entry.labels == expected.labels == stored.labels
        assert entry._replace(labels_json="") == expected._replace(labels_json="")
        assert bool(entry.token_resident) is stored.token_resident


def test_label_value_without_key_is_invalid(store: SqlMetadataStore) -> None:
    with pytest.raises(InvalidArgument):
        store.list_keys("acme", KeyFilter(label_value="x"), 10, "")


# --- destruction -----------------------------------------------------------------------------


def schedule(store: SqlMetadataStore, key: Key, when: datetime) -> Key:
    return store.update_key(
        replace(
            key,
            state=KeyState.DESTROY_SCHEDULED,
            state_before_destroy_scheduled=key.state,
            destroy_scheduled_time=when,
        )
    )


def test_keys_due_for_destruction(store: SqlMetadataStore) -> None:
    now = T0 + timedelta(days=30)
    past = schedule(store, create(store, make_key("past")), now - timedelta(seconds=1))
    exact = schedule(store, create(store, make_key("exact", "globex")), now)
    schedule(store, create(store, make_key("future")), now + timedelta(microseconds=1))
    # A cancelled schedule keeps its time but is no longer due.
    cancelled = schedule(store, create(store, make_key("cancelled")), now - timedelta(days=1))
    store.update_key(replace(cancelled, state=KeyState.DISABLED))
    create(store, make_key("enabled"))

    assert store.keys_due_for_destruction(now) == [past, exact]
    assert store.keys_due_for_destruction(T0) == []


def test_mark_destroyed_erases_every_blob(store: SqlMetadataStore) -> None:
    key = create(store, make_key("doomed"), root_generation=1)
    key = store.add_version(key, make_version(key, 2, root_generation=2, blob=b"v2"))
    key = schedule(store, key, T0 + timedelta(days=1))
    now = T0 + timedelta(days=2)

    with pytest.raises(Conflict):
        store.mark_destroyed(replace(key, etag=key.etag - 1), now)
    assert all(v.wrapped_blob for v in store.list_versions(key.name))

    destroyed = store.mark_destroyed(key, now)
    assert destroyed.state is KeyState.DESTROYED
    assert destroyed.update_time == now
    assert destroyed.etag == key.etag + 1
    assert store.get_key(key.name) == destroyed
    versions = store.list_versions(key.name)
    assert [v.number for v in versions] == [1, 2]
    for version in versions:
        assert version.state is VersionState.DESTROYED
        assert version.wrapped_blob is None
        assert version.destroy_time == now
    assert store.root_generations_in_use() == set()
    assert store.keys_due_for_destruction(now) == []

    # The erased bytes are gone from the row, not just hidden by the mapping.
    with store._engine.connect() as conn:
        blobs = conn.exec_driver_sql("SELECT wrapped_blob FROM key_versions").scalars().all()
    assert blobs == [None, None]


def test_mark_destroyed_keeps_earlier_destroy_times(store: SqlMetadataStore) -> None:
    key = create(store, make_key("partial"))
    key = store.add_version(key, make_version(key, 2))
    earlier = T0 + timedelta(hours=1)
    v1 = store.get_version(key.name.version(1))
    assert v1 is not None
    store.update_version(
        replace(v1, state=VersionState.DESTROYED, wrapped_blob=None, destroy_time=earlier)
    )
    now = T0 + timedelta(days=3)
    store.mark_destroyed(key, now)
    times = [v.destroy_time for v in store.list_versions(key.name)]
    assert times == [earlier, now]


# --- reconciliation --------------------------------------------------------------------------


def test_pending_versions_and_labels_in_use(store: SqlMetadataStore) -> None:
    a = create(store, make_key("a"), root_generation=1)
    b = create(store, make_key("b"), root_generation=2)
    c = create(store, make_key("c", token_resident=True), token_label="label-c")
    d = create(
        store,
        make_key("d", token_resident=True),
        token_label="label-d",
        state=VersionState.PENDING,
    )
    c = store.add_version(c, make_version(c, 2, token_label="label-c2", state=VersionState.PENDING))
    assert a.primary_version == 1 and b.primary_version == 1

    assert [str(v.name) for v in store.pending_versions()] == [
        "accounts/acme/keys/c/versions/2",
        "accounts/acme/keys/d/versions/1",
    ]
    assert store.token_labels_in_use() == {"label-c", "label-c2", "label-d"}
    assert store.root_generations_in_use() == {1, 2}

    store.mark_destroyed(store.get_key(b.name) or b, T0 + timedelta(days=1))
    store.mark_destroyed(store.get_key(d.name) or d, T0 + timedelta(days=1))
    assert store.token_labels_in_use() == {"label-c", "label-c2"}
    assert store.root_generations_in_use() == {1}


def test_discard_only_pending_version_removes_key(store: SqlMetadataStore) -> None:
    key = create(
        store, make_key("new", token_resident=True), token_label="l1", state=VersionState.PENDING
    )
    (pending,) = store.pending_versions()
    store.discard_pending(pending)
    assert store.get_key(key.name) is None
    assert store.list_versions(key.name) == []
    assert store.pending_versions() == []
    assert store.token_labels_in_use() == set()
    # Reconciliation may run again after a crash; a second discard is harmless.
    store.discard_pending(pending)
    # The name is free again.
    create(store, make_key("new"))


def test_discard_pending_rotation_keeps_key(store: SqlMetadataStore) -> None:
    key = create(store, make_key("rot", token_resident=True), token_label="r1")
    key = store.add_version(key, make_version(key, 2, token_label="r2", state=VersionState.PENDING))
    # A pending version is not primary: requests keep using version 1 while it is made.
    assert key.primary_version == 1
    (pending,) = store.pending_versions()
    store.discard_pending(pending)

    remaining = store.get_key(key.name)
    assert remaining is not None
    assert [v.number for v in store.list_versions(key.name)] == [1]
    assert remaining.primary_version == 1
    assert store.token_labels_in_use() == {"r1"}


def test_activate_version_enables_it_and_makes_it_primary(store: SqlMetadataStore) -> None:
    key = create(store, make_key("act", token_resident=True), token_label="a1")
    key = store.add_version(key, make_version(key, 2, token_label="a2", state=VersionState.PENDING))
    pending = store.get_version(key.name.version(2))
    assert pending is not None and pending.state is VersionState.PENDING
    activated = store.activate_version(replace(pending, public_key_der=b"spki"))
    assert activated.primary_version == 2
    assert activated.etag == key.etag + 1
    enabled = store.get_version(key.name.version(2))
    assert enabled is not None
    assert enabled.state is VersionState.ENABLED and enabled.public_key_der == b"spki"
    # Only a PENDING version can be activated.
    with pytest.raises(Conflict):
        store.activate_version(enabled)


def test_activations_finishing_out_of_order_keep_the_newest_primary(
    store: SqlMetadataStore,
) -> None:
    key = create(store, make_key("order", token_resident=True), token_label="o1")
    key = store.add_version(key, make_version(key, 2, token_label="o2", state=VersionState.PENDING))
    key = store.add_version(key, make_version(key, 3, token_label="o3", state=VersionState.PENDING))
    second, third = (store.get_version(key.name.version(n)) for n in (2, 3))
    assert second is not None and third is not None
    assert store.activate_version(third).primary_version == 3
    assert store.activate_version(second).primary_version == 3


def test_activate_version_refuses_a_version_destroyed_meanwhile(store: SqlMetadataStore) -> None:
    key = create(
        store, make_key("gone", token_resident=True), token_label="g1", state=VersionState.PENDING
    )
    pending = store.get_version(key.name.version(1))
    assert pending is not None
    store.mark_destroyed(key, T0)
    with pytest.raises(Conflict):
        store.activate_version(pending)
    destroyed = store.get_version(key.name.version(1))
    assert destroyed is not None and destroyed.state is VersionState.DESTROYED


def test_discard_pending_refuses_a_version_that_is_no_longer_pending(
    store: SqlMetadataStore,
) -> None:
    key = create(store, make_key("live"), token_label="live-1", state=VersionState.PENDING)
    (pending,) = store.pending_versions()
    store.update_version(replace(pending, state=VersionState.ENABLED))
    with pytest.raises(Conflict):
        store.discard_pending(pending)
    assert store.get_key(key.name) is not None
    assert store.get_version(pending.name) is not None


def test_root_generations(store: SqlMetadataStore) -> None:
    assert store.list_root_generations() == []
    second = RootGeneration(2, "vault-root-2", T0 + timedelta(days=1))
    first = RootGeneration(1, "vault-root-1", T0, retired=True)
    store.add_root_generation(second)
    store.add_root_generation(first)
    assert store.list_root_generations() == [first, second]
    with pytest.raises(AlreadyExists):
        store.add_root_generation(RootGeneration(2, "other", T0))
    assert store.list_root_generations() == [first, second]


# --- failures --------------------------------------------------------------------------------


def test_locked_database_is_store_unavailable_without_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.db"
    # Shorten the wait so the test does not sit out the production timeout.
    monkeypatch.setattr(storage_engine, "SQLITE_BUSY_TIMEOUT_MS", 50)
    opened = open_store(db_url(path))
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        key = replace(make_key("secret-name"), description="do-not-log-me")
        with pytest.raises(StoreUnavailable) as caught:
            opened.create_key(key, make_version(key, blob=b"BLOB-BYTES-SECRET"))
        error = caught.value
        assert error.metadata == {"error": "OperationalError"}
        rendered = f"{error} {error.metadata} {error.__cause__!s}"
        for value in ("secret-name", "do-not-log-me", "BLOB-BYTES-SECRET", "acme"):
            assert value not in rendered
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        opened.close()


def test_a_listing_that_fails_while_reading_rows_is_store_unavailable(tmp_path: Path) -> None:
    """ListKeys fetches the driver's rows itself, and SQLite reports a row it cannot read
    only when the fetch reaches it: that error must still be StoreUnavailable, quoting no
    values, like any other failed read."""
    path = tmp_path / "vault.db"
    opened = open_store(db_url(path))
    try:
        for key_id in ("a", "b", "c"):
            create(opened, make_key(key_id, labels={"team": "red"}))
        with closing(sqlite3.connect(path)) as other, other:
            # Text no JSON function can read, after rows that read well.
            other.execute("UPDATE keys SET labels = 'not json' WHERE key_id = 'c'")
        with pytest.raises(StoreUnavailable) as caught:
            opened.list_keys("acme", KeyFilter(label_key="team"), 10, "")
        assert caught.value.metadata == {"error": "OperationalError"}
        assert "not json" not in f"{caught.value} {caught.value.__cause__!s}"
    finally:
        opened.close()


def test_unopenable_database_is_store_unavailable(tmp_path: Path) -> None:
    # A directory where the database file should be: SQLite cannot open it.
    with pytest.raises(StoreUnavailable) as caught:
        open_store(db_url(tmp_path))
    assert caught.value.metadata == {"error": "OperationalError"}


# --- concurrency -----------------------------------------------------------------------------


def run_in_threads(store: SqlMetadataStore, threads: int, per_thread: int) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(worker: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                key = create(store, make_key(f"t{worker}-{i}"))
                store.update_key(replace(key, description="touched"))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert errors == []


def test_threads_share_one_store(store: SqlMetadataStore) -> None:
    run_in_threads(store, threads=8, per_thread=15)
    ids, _ = all_pages(store, KeyFilter(), 1000)
    assert len(ids) == 120
    assert all(key.etag == 1 for key in store.list_keys("acme", KeyFilter(), 1000, "").items)


def test_concurrent_updates_have_one_winner(store: SqlMetadataStore) -> None:
    key = create(store, make_key("contended"))
    outcomes: list[str] = []
    start = threading.Barrier(6)

    def work(n: int) -> None:
        start.wait()
        try:
            store.update_key(replace(key, description=f"writer {n}"))
            outcomes.append("won")
        except Conflict:
            outcomes.append("conflict")

    workers = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["won"]
    final = store.get_key(key.name)
    assert final is not None and final.etag == key.etag + 1


def _create_keys_in_process(url: str, worker: int, count: int, start: Any, results: Any) -> None:
    # Runs in a spawned process: opens (and migrates) the store itself, like a server worker.
    try:
        # Released together, so the schema migration races as well as the inserts.
        start.wait(timeout=60)
        opened = open_store(url)
        try:
            for i in range(count):
                key = make_key(f"p{worker}-{i:02d}", labels={"worker": str(worker)})
                opened.create_key(key, make_version(key, blob=bytes([worker, i]) * 16))
        finally:
            opened.close()
        results.put((worker, "ok"))
    except BaseException as exc:
        results.put((worker, f"{type(exc).__name__}: {exc}"))


def test_processes_write_one_file_concurrently(tmp_path: Path) -> None:
    url = db_url(tmp_path / "shared" / "vault.db")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_create_keys_in_process, args=(url, n, 25, start, results))
        for n in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
        process.close()
    results.close()
    results.join_thread()
    assert outcomes == {n: "ok" for n in range(4)}

    opened = open_store(url)
    try:
        ids, _ = all_pages(opened, KeyFilter(), 7)
        assert len(ids) == 100
        assert sorted(ids) == sorted(f"p{w}-{i:02d}" for w in range(4) for i in range(25))
        for worker in range(4):
            mine, _ = all_pages(opened, KeyFilter(label_key="worker", label_value=str(worker)), 10)
            assert len(mine) == 25
        version = opened.get_version(KeyName("acme", "p3-07").version(1))
        assert version is not None and version.wrapped_blob == bytes([3, 7]) * 16
    finally:
        opened.close()


# --- the per-process key cache ----------------------------------------------------------------


def _disable_in_process(url: str, key_id: str) -> None:
    opened = open_store(url)
    try:
        key = opened.get_key(KeyName("acme", key_id))
        assert key is not None
        opened.update_key(replace(key, state=KeyState.DISABLED))
    finally:
        opened.close()


def test_cached_keys_see_a_change_committed_by_another_process(url: str) -> None:
    """get_key answers from memory while nothing was committed anywhere; a state change made
    by another process must be visible on the very next read."""
    reader = open_store(url)
    try:
        key = create(reader, make_key("watched"))
        assert reader.get_key(key.name) == key  # now cached
        assert reader.get_key(key.name) == key
        process = multiprocessing.get_context("spawn").Process(
            target=_disable_in_process, args=(url, "watched")
        )
        process.start()
        process.join(timeout=60)
        assert process.exitcode == 0
        process.close()
        seen = reader.get_key(key.name)
        assert seen is not None and seen.state is KeyState.DISABLED
        assert seen.etag == key.etag + 1
    finally:
        reader.close()


def test_cached_keys_see_this_process_own_changes(store: SqlMetadataStore) -> None:
    key = create(store, make_key("own"))
    assert store.get_key(key.name) == key
    updated = store.update_key(replace(key, description="changed"))
    assert store.get_key(key.name) == updated
    assert store.get_key(KeyName("acme", "absent")) is None
    create(store, make_key("absent"))
    assert store.get_key(KeyName("acme", "absent")) is not None


def test_key_cache_survives_audit_appends_and_follows_key_changes(tmp_path: Path) -> None:
    from vault.domain.audit import AuditEvent
    from vault.storage import open_stores

    path = tmp_path / "cache.db"
    stores = open_stores(db_url(path))
    try:
        key = create(stores.metadata, make_key("cached"))
        cache = stores.metadata._key_cache
        assert cache is not None
        assert stores.metadata.get_key(key.name) == key  # read, now cached
        event = AuditEvent(
            datetime.now(UTC), "r", "", "", "/vault.v1.KeyService/GetKey", "", "OK", "", 1, "x"
        )
        stores.audit.append_audit([event], {}, {})
        # Every request appends to the audit log in the same file: that must not empty the
        # cache, or it would never hit.
        assert cache.get(key.name)[0] == key
        # A change to the key by anyone else (here the sqlite3 shell) must.
        with closing(sqlite3.connect(path)) as other, other:
            other.execute("UPDATE keys SET description = 'changed elsewhere'")
        assert cache.get(key.name)[0] is None
        assert stores.metadata.get_key(key.name).description == "changed elsewhere"
    finally:
        stores.close()
