"""BucketStore over SQLAlchemy Core, in the same database as the keys: a bucket row and its
master key's rows are written in one transaction. Portable SQL only, like metadata_store.py."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Engine, RowMapping, and_, func, insert, or_, select, update

from vault.domain.buckets import (
    MASTER_KEY_STATES,
    Bucket,
    BucketFilter,
    BucketPolicy,
    NewestVersions,
)
from vault.domain.errors import AlreadyExists, Conflict, InvalidArgument, MalformedName, VaultError
from vault.domain.models import Key, KeyVersion, Page
from vault.domain.names import BucketName, KeyName, check_id
from vault.storage.metadata_store import key_row, to_key, to_version, version_row
from vault.storage.paging import (
    MAX_PAGE_SIZE,
    clamp_page_size,
    decode_page_token,
    decode_version_token,
    keyset_page,
    malformed_page_token,
)
from vault.storage.tables import buckets, key_versions, keys
from vault.storage.transactions import aware, guarded_transaction, new_serial_lock

_MICROSECOND = timedelta(microseconds=1)
# Keys whose newest versions one query reads by their own bounds.
_OR_TERMS = 100
_JOINED = buckets.join(
    keys, and_(keys.c.account == buckets.c.account, keys.c.key_id == buckets.c.master_key_id)
)
# A new bucket's inserts, built once as metadata_store.py's are: the rows go in as parameters.
_INSERT_KEY = insert(keys)
_INSERT_VERSION = insert(key_versions)
_INSERT_BUCKET = insert(buckets)


class SqlBucketStore:
    """The vault's BucketStore. One instance per process, shared by all request threads."""

    def __init__(self, engine: Engine, *, serial: threading.Lock | None = None) -> None:
        self._engine = engine
        # See SqlMetadataStore: stores sharing an in-memory database share its lock.
        self._serial = serial if serial is not None else new_serial_lock(engine)

    def __repr__(self) -> str:
        return f"SqlBucketStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def create_bucket(self, bucket: Bucket, master_key: Key, first_version: KeyVersion) -> Bucket:
        if first_version.name.key_name != master_key.name:
            raise ValueError("the version does not belong to the master key")
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: self._explain_duplicate(bucket),
        ) as c:
            c.execute(_INSERT_KEY, key_row(master_key))
            c.execute(_INSERT_VERSION, version_row(first_version))
            c.execute(_INSERT_BUCKET, _bucket_row(bucket, master_key))
        return bucket

    def get_bucket(self, name: BucketName) -> tuple[Bucket, Key] | None:
        query = select(_JOINED).where(_bucket_pk(name))
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            row = c.execute(query).mappings().one_or_none()
        return None if row is None else _to_pair(row)

    def find_bucket_by_request_id(self, account: str, request_id: str) -> Bucket | None:
        if not request_id:
            return None
        query = select(buckets).where(
            buckets.c.account == account, buckets.c.request_id == request_id
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            row = c.execute(query).mappings().one_or_none()
        return None if row is None else _to_bucket(row)

    def list_buckets(
        self, account: str, bucket_filter: BucketFilter, page_size: int, page_token: str
    ) -> Page[tuple[Bucket, Key]]:
        size = clamp_page_size(page_size)
        query = select(_JOINED).where(buckets.c.account == account, *_filter(bucket_filter))
        if page_token:
            query = query.where(buckets.c.bucket_id > _decode_page_token(page_token))
        # One row beyond the page says whether another page follows, without a COUNT.
        query = query.order_by(buckets.c.bucket_id).limit(size + 1)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        items = [_to_pair(row) for row in rows[:size]]
        return keyset_page(items, len(rows) > size, lambda pair: pair[0].name.bucket)

    def master_key_versions(
        self, account: str, key_ids: Sequence[str], newest: int
    ) -> dict[str, NewestVersions]:
        if not key_ids:
            return {}
        # First, per key (from its one keys row), how many versions it has and the number of
        # its newest-th newest, each a search of the versions' primary-key index; then only
        # the rows from that number on. (Window functions, or the two in one query, had the
        # database number or count every version once per row returned.)
        older = key_versions.alias("older")
        of_key = and_(older.c.account == keys.c.account, older.c.key_id == keys.c.key_id)
        bounds = select(
            keys.c.key_id,
            select(func.count()).where(of_key).scalar_subquery(),
            select(older.c.version)
            .where(of_key)
            .order_by(older.c.version.desc())
            .limit(1)
            .offset(newest - 1)
            .scalar_subquery(),
        ).where(keys.c.account == account, keys.c.key_id.in_(key_ids))
        totals: dict[str, int] = dict.fromkeys(key_ids, 0)
        versions: dict[str, list[KeyVersion]] = {key_id: [] for key_id in key_ids}
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            every: list[str] = []
            newest_of: list[ColumnElement[bool]] = []
            for key_id, total, oldest_shown in c.execute(bounds).all():
                totals[key_id] = int(total)
                if oldest_shown is None:
                    every.append(key_id)
                else:
                    # Each term whole, so that each is a range of the primary-key index.
                    newest_of.append(
                        and_(
                            key_versions.c.account == account,
                            key_versions.c.key_id == key_id,
                            key_versions.c.version >= oldest_shown,
                        )
                    )
            mine = and_(key_versions.c.account == account, key_versions.c.key_id.in_(every))
            wanted = [mine] if every else []
            # SQLite parses a chain of ORs as a tree as deep as it is long (at most 1,000).
            wanted += [
                or_(*newest_of[i : i + _OR_TERMS]) for i in range(0, len(newest_of), _OR_TERMS)
            ]
            for clause in wanted:
                query = select(key_versions).where(clause)
                for row in c.execute(query).mappings().all():
                    versions[row["key_id"]].append(to_version(row))
        for found in versions.values():
            found.sort(key=lambda version: version.number)
        return {key_id: NewestVersions(versions[key_id], totals[key_id]) for key_id in key_ids}

    def list_master_key_versions(
        self, key: KeyName, page_size: int, page_token: str
    ) -> Page[KeyVersion]:
        size = clamp_page_size(page_size or MAX_PAGE_SIZE)
        query = select(key_versions).where(
            key_versions.c.account == key.account, key_versions.c.key_id == key.key
        )
        if page_token:
            query = query.where(key_versions.c.version < decode_version_token(page_token))
        # One row beyond the page says whether another page follows, without a COUNT.
        query = query.order_by(key_versions.c.version.desc()).limit(size + 1)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        items = [to_version(row) for row in rows[:size]]
        return keyset_page(items, len(rows) > size, lambda version: version.number)

    def update_bucket(self, bucket: Bucket) -> Bucket:
        values = {
            "labels": dict(bucket.labels),
            "update_time": aware(bucket.update_time),
            **_policy_values(bucket.policy),
        }
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            result = c.execute(
                update(buckets)
                .where(_bucket_pk(bucket.name), buckets.c.etag == bucket.etag)
                .values(**values, etag=buckets.c.etag + 1)
            )
            if result.rowcount != 1:
                raise Conflict(
                    "the bucket was changed by another request; read it again and retry",
                    metadata={"name": str(bucket.name)},
                )
            row = c.execute(select(buckets).where(_bucket_pk(bucket.name))).mappings().one()
        return _to_bucket(row)

    def _explain_duplicate(self, bucket: Bucket) -> VaultError:
        if bucket.request_id and self.find_bucket_by_request_id(
            bucket.name.account, bucket.request_id
        ):
            return AlreadyExists(
                "a bucket was already created for this request id",
                metadata={"field": "request_id"},
            )
        # The bucket row or its master key's: either way the bucket id is taken (a deleted
        # bucket's tombstone keeps it).
        return AlreadyExists("bucket already exists", metadata={"name": str(bucket.name)})


def _bucket_pk(name: BucketName) -> ColumnElement[bool]:
    return and_(buckets.c.account == name.account, buckets.c.bucket_id == name.bucket)


def _policy_values(policy: BucketPolicy) -> dict[str, Any]:
    return {
        "key_lifetime_us": policy.key_lifetime // _MICROSECOND,
        "max_objects_per_key": policy.max_objects,
        "max_bytes_per_key": policy.max_bytes,
    }


def _bucket_row(bucket: Bucket, master_key: Key) -> dict[str, Any]:
    return {
        "account": bucket.name.account,
        "bucket_id": bucket.name.bucket,
        "master_key_id": master_key.name.key,
        "labels": dict(bucket.labels),
        "create_time": aware(bucket.create_time),
        "update_time": aware(bucket.update_time),
        "request_id": bucket.request_id or None,
        "etag": bucket.etag,
        **_policy_values(bucket.policy),
    }


def _to_bucket(row: RowMapping) -> Bucket:
    def limit(column: str) -> int | None:
        value = row[column]
        return None if value is None else int(value)

    return Bucket(
        name=BucketName(row["account"], row["bucket_id"]),
        policy=BucketPolicy(
            key_lifetime=int(row["key_lifetime_us"]) * _MICROSECOND,
            max_objects=limit("max_objects_per_key"),
            max_bytes=limit("max_bytes_per_key"),
        ),
        create_time=row["create_time"],
        update_time=row["update_time"],
        labels={str(k): str(v) for k, v in (row["labels"] or {}).items()},
        request_id=row["request_id"] or "",
        etag=int(row["etag"]),
    )


def _to_pair(row: RowMapping) -> tuple[Bucket, Key]:
    """A row of buckets joined with keys: the columns both tables have (account, labels,
    create_time, ...) come back under the bucket's name; the key's under keys_<column>."""
    bucket = _to_bucket(
        {column.name: row[buckets.c[column.name]] for column in buckets.columns}  # type: ignore[arg-type]
    )
    key = to_key({column.name: row[keys.c[column.name]] for column in keys.columns})  # type: ignore[arg-type]
    return bucket, key


def _filter(bucket_filter: BucketFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if bucket_filter.state is not None:
        clauses.append(keys.c.state == MASTER_KEY_STATES[bucket_filter.state].value)
    if bucket_filter.label_value is not None and bucket_filter.label_key is None:
        raise InvalidArgument(
            "a label value filter needs a label key", metadata={"field": "label_value"}
        )
    if bucket_filter.label_key is not None:
        label = buckets.c.labels[bucket_filter.label_key].as_string()
        if bucket_filter.label_value is None:
            clauses.append(label.is_not(None))
        else:
            clauses.append(label == bucket_filter.label_value)
    return clauses


def _decode_page_token(token: str) -> str:
    try:
        return check_id("bucket", decode_page_token(token))
    except MalformedName:
        raise malformed_page_token() from None


if TYPE_CHECKING:
    from vault.domain.ports import BucketStore

    _PORT_CHECK: type[BucketStore] = SqlBucketStore
