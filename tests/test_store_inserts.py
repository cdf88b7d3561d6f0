"""The inserts of a new key, key version and bucket (CreateKey, RotateKey, CreateBucket): every
column stored as the row functions give it, on SQLite and on PostgreSQL, and each insert
statement built once per process rather than on every call (composing it per call cost more
than half of the store's share of a CreateKey)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, event, select
from sqlalchemy.sql.dml import Insert

from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.buckets import Bucket, BucketPolicy
from vault.domain.models import Key, KeyState, KeyVersion, VersionState
from vault.domain.names import BucketName, KeyName
from vault.storage import Stores
from vault.storage.bucket_store import _bucket_row
from vault.storage.metadata_store import key_row, version_row
from vault.storage.tables import buckets, key_versions, keys

T0 = datetime(2026, 12, 3, 12, 0, 0, 654321, tzinfo=UTC)


def make_key(key_id: str, **changes: Any) -> Key:
    values: dict[str, Any] = {
        "name": KeyName("acme", key_id),
        "purpose": Purpose.SIGN_VERIFY,
        "algorithm": Algorithm.EC_SIGN_P256_SHA256,
        "state": KeyState.ENABLED,
        "primary_version": 1,
        "create_time": T0,
        "update_time": T0,
        "labels": {"team": "payments", "tier": "1"},
        "description": "signs the ledger",
        "request_id": f"request-{key_id}",
        **changes,
    }
    return Key(**values)


def make_version(key: Key, number: int, **changes: Any) -> KeyVersion:
    values: dict[str, Any] = {
        "name": key.name.version(number),
        "state": VersionState.ENABLED,
        "create_time": T0 + timedelta(seconds=number),
        "root_generation": 3,
        "wrapped_blob": bytes(range(number, number + 40)),
        "token_label": None,
        "public_key_der": b"\x30\x59" + bytes(number) * 5,
        **changes,
    }
    return KeyVersion(**values)


def stored(stores: Stores, table: Table, **where: Any) -> dict[str, Any]:
    engine: Any = stores.metadata._engine
    with engine.connect() as connection:
        query = select(table).where(*(table.c[name] == value for name, value in where.items()))
        return dict(connection.execute(query).mappings().one())


def test_new_keys_versions_and_buckets_are_stored_column_for_column(stores: Stores) -> None:
    key = make_key("ledger")
    first = make_version(key, 1)
    stores.metadata.create_key(key, first)
    second = make_version(key, 2)
    after = stores.metadata.add_version(key, second)
    resident = make_key("resident", token_resident=True, labels={}, request_id="")
    pending = make_version(
        resident,
        1,
        state=VersionState.PENDING,
        root_generation=None,
        wrapped_blob=None,
        token_label="vault-key-0123",
        public_key_der=None,
    )
    stores.metadata.create_key(resident, pending)
    bucket = Bucket(
        name=BucketName("acme", "photos"),
        policy=BucketPolicy(key_lifetime=timedelta(minutes=5), max_objects=1000),
        create_time=T0,
        update_time=T0,
        labels={"app": "gallery"},
        request_id="request-photos",
    )
    master = make_key(
        "master-photos",
        purpose=Purpose.BUCKET_MASTER,
        algorithm=Algorithm.AES_256_GCM,
        labels={},
        description="",
        request_id="",
    )
    master_version = make_version(master, 1, public_key_der=None)
    stores.buckets.create_bucket(bucket, master, master_version)

    assert stored(stores, keys, key_id="ledger") == key_row(after)
    assert after.primary_version == 2 and after.etag == key.etag + 1
    for version in (first, second):
        assert stored(stores, key_versions, key_id="ledger", version=version.number) == version_row(
            version
        )
    assert stored(stores, keys, key_id="resident") == key_row(resident)
    assert stored(stores, key_versions, key_id="resident") == version_row(pending)
    assert stored(stores, keys, key_id="master-photos") == key_row(master)
    assert stored(stores, key_versions, key_id="master-photos") == version_row(master_version)
    assert stored(stores, buckets, bucket_id="photos") == _bucket_row(bucket, master)
    assert stores.metadata.get_key(key.name) == after
    assert stores.metadata.get_version(second.name) == second
    found = stores.buckets.get_bucket(bucket.name)
    assert found is not None and found[0] == bucket


def test_each_insert_statement_is_built_once_not_on_every_call(stores: Stores) -> None:
    engine: Any = stores.metadata._engine
    # The statements themselves, kept so that no id is reused by a later one.
    inserts: dict[str, list[Insert]] = {}

    def seen(connection: Any, statement: Any, *args: Any) -> None:
        if isinstance(statement, Insert):
            table: Any = statement.table
            inserts.setdefault(table.name, []).append(statement)

    def distinct() -> dict[str, int]:
        return {table: len({id(s) for s in statements}) for table, statements in inserts.items()}

    def create_all(number: int) -> None:
        key = stores.metadata.create_key(
            make_key(f"key-{number}"), make_version(make_key(f"key-{number}"), 1)
        )
        stores.metadata.add_version(key, make_version(key, 2))
        master = make_key(f"master-{number}", purpose=Purpose.BUCKET_MASTER)
        bucket = Bucket(
            name=BucketName("acme", f"bucket-{number}"),
            policy=BucketPolicy(),
            create_time=T0,
            update_time=T0,
        )
        stores.buckets.create_bucket(bucket, master, make_version(master, 1))

    event.listen(engine, "before_execute", seen)
    try:
        create_all(0)
        after_one = distinct()
        for number in range(1, 4):
            create_all(number)
    finally:
        event.remove(engine, "before_execute", seen)

    assert set(after_one) == {"keys", "key_versions", "buckets"}
    # The same statement objects on every later call (one per store and table): the rows go
    # in as parameters.
    assert distinct() == after_one
    assert max(after_one.values()) <= 2
