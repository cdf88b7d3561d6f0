"""MetadataStore over SQLAlchemy Core. Portable SQL only: the same queries serve SQLite now and
PostgreSQL later; backend differences stay in engine.py."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Connection,
    CursorResult,
    Engine,
    RowMapping,
    Select,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    MalformedName,
    NotFound,
    VaultError,
)
from vault.domain.models import (
    Key,
    KeyFilter,
    KeyState,
    KeyVersion,
    ListedKey,
    Page,
    Revocation,
    RevocationReason,
    RootGeneration,
    VersionState,
)
from vault.domain.names import MASTER_KEY_PREFIX, KeyName, KeyVersionName, check_id
from vault.storage.engine import (
    checkpoint_and_truncate,
    is_sqlite,
    is_sqlite_memory,
    is_sqlite_uri,
)
from vault.storage.freshness import UnchangedSinceCache
from vault.storage.paging import (
    MAX_PAGE_SIZE,
    clamp_page_size,
    decode_page_token,
    decode_version_token,
    keyset_page,
    malformed_page_token,
)
from vault.storage.tables import (
    UtcDateTime,
    key_material_epoch,
    key_tombstones,
    key_versions,
    keys,
    root_generations,
)
from vault.storage.transactions import (
    aware,
    aware_or_none,
    guarded_transaction,
    new_serial_lock,
)

log = logging.getLogger(__name__)

KEY_CACHE_SIZE = 16_384  # keys kept per process (store.key_cache_size)

# The two reads on every request, built once: composing a statement costs more than running it.
_GET_KEY = select(keys).where(
    keys.c.account == bindparam("account"), keys.c.key_id == bindparam("key_id")
)
_GET_VERSION = select(key_versions).where(
    key_versions.c.account == bindparam("account"),
    key_versions.c.key_id == bindparam("key_id"),
    key_versions.c.version == bindparam("version"),
)
# The inserts of a new key and version, built once and given the row as parameters:
# insert(table).values(**row) made a bind parameter per column, coerced it and hashed the
# whole statement for the compiled cache on every call, some 0.6 ms of a 1 ms CreateKey insert.
_INSERT_KEY = insert(keys)
_INSERT_VERSION = insert(key_versions)

# A key and one of its versions in one statement (a request's two reads when neither is
# cached): its primary, or the version a request names. The version's columns are labelled
# apart from the key's; all of them are NULL when the key has no such version.
_VERSION_PREFIX = "version_"
_KEY_WITH_VERSION_COLUMNS = (
    *keys.c,
    *(column.label(_VERSION_PREFIX + column.name) for column in key_versions.c),
)
_SAME_KEY = and_(key_versions.c.account == keys.c.account, key_versions.c.key_id == keys.c.key_id)
_GET_KEY_WITH_PRIMARY = (
    select(*_KEY_WITH_VERSION_COLUMNS)
    .select_from(
        keys.outerjoin(
            key_versions, and_(_SAME_KEY, key_versions.c.version == keys.c.primary_version)
        )
    )
    .where(keys.c.account == bindparam("account"), keys.c.key_id == bindparam("key_id"))
)
_GET_KEY_WITH_VERSION = (
    select(*_KEY_WITH_VERSION_COLUMNS)
    .select_from(
        keys.outerjoin(
            key_versions, and_(_SAME_KEY, key_versions.c.version == bindparam("version"))
        )
    )
    .where(keys.c.account == bindparam("account"), keys.c.key_id == bindparam("key_id"))
)


class _DirectRead:
    """A constant SELECT compiled once for the store's SQLite dialect, run on the key cache's
    probe connection instead of a pooled transaction (see freshness.py): its SQL, the order
    of its parameters, and each column's result processor, so its rows convert exactly as
    they do through SQLAlchemy (integer times to datetimes, JSON labels, booleans)."""

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.parameters = tuple(compiled.positiontup or ())
        columns = list(statement.selected_columns)
        self.names = tuple(str(column.key) for column in columns)
        self.processors = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        )

    def row(
        self, cache: UnchangedSinceCache[KeyName, Key], params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        values = cache.fetch_one(self.sql, [params[name] for name in self.parameters])
        if values is None:
            return None
        return {
            name: value if process is None else process(value)
            for name, process, value in zip(self.names, self.processors, values, strict=True)
        }


class _DirectListing:
    """A ListKeys query compiled once for the store's SQLite dialect, run on the key cache's
    probe connection (see freshness.py): its SQL, and per parameter in order its constant
    value (the master keys' id pattern, the offset) or the caller's, through the bind
    processor its type has (a label key becomes a JSON path). The columns it reads need no
    result processing (_LISTED_COLUMNS)."""

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.parameters = tuple(
            (
                name,
                compiled.params[name],
                compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect),
            )
            for name in compiled.positiontup or ()
        )

    def rows(
        self, cache: UnchangedSinceCache[KeyName, Key], params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        values = []
        for name, constant, process in self.parameters:
            value = params.get(name, constant)
            values.append(value if process is None else process(value))
        return cache.fetch_all(self.sql, values)


def _split_key_and_version(row: Mapping[Any, Any]) -> tuple[Key, KeyVersion | None]:
    """The key and version of a _GET_KEY_WITH_* row (a RowMapping or a _DirectRead dict)."""
    # to_key and to_version only index their row by column name.
    key = to_key(cast(RowMapping, row))
    if row[_VERSION_PREFIX + "version"] is None:
        return key, None
    fields = {column.name: row[_VERSION_PREFIX + column.name] for column in key_versions.c}
    return key, to_version(cast(RowMapping, fields))


_GET_EPOCH = select(key_material_epoch.c.epoch).where(key_material_epoch.c.id == 1)
_SQLITE_GET_EPOCH = "SELECT epoch FROM key_material_epoch WHERE id = 1"
# The key cache's change count (vault.storage.freshness) and the epoch, in one statement.
_SQLITE_CHANGES_AND_EPOCH = (
    "SELECT changes, (SELECT epoch FROM key_material_epoch WHERE id = 1) "
    "FROM metadata_changes WHERE id = 1"
)
_BUMP_EPOCH = (
    update(key_material_epoch)
    .where(key_material_epoch.c.id == 1)
    .values(epoch=key_material_epoch.c.epoch + 1)
)


def _key_params(name: KeyName) -> dict[str, str]:
    return {"account": name.account, "key_id": name.key}


def _version_params(name: KeyVersionName) -> dict[str, str | int]:
    return {"account": name.account, "key_id": name.key, "version": name.version}


def _key_cache(engine: Engine, size: int) -> UnchangedSinceCache[KeyName, Key] | None:
    url = engine.url
    if not is_sqlite(url) or is_sqlite_memory(url) or not url.database or is_sqlite_uri(url):
        return None
    return UnchangedSinceCache(Path(url.database), size)


class SqlMetadataStore:
    """The vault's MetadataStore. One instance per process, shared by all request threads:
    each call checks a connection out of the engine's pool for one transaction."""

    def __init__(self, engine: Engine, key_cache_size: int = KEY_CACHE_SIZE) -> None:
        self._engine = engine
        # Keys are read on every request; while nothing has been committed anywhere since
        # they were read, they are still current (see freshness.py).
        self._key_cache = _key_cache(engine, key_cache_size)
        # The hot path's single-row reads, run directly when there is a key cache.
        self._direct: dict[Select[Any], _DirectRead] = {}
        if self._key_cache is not None:
            self._direct = {
                statement: _DirectRead(statement, engine.dialect)
                for statement in (
                    _GET_KEY,
                    _GET_VERSION,
                    _GET_KEY_WITH_PRIMARY,
                    _GET_KEY_WITH_VERSION,
                )
            }
        # ListKeys' queries, compiled as each combination of filters is first used.
        self._direct_listings: dict[Select[Any], _DirectListing] = {}
        # An in-memory SQLite database is one connection shared by every thread (StaticPool);
        # interleaved transactions on it would mix, so calls take turns. File and server
        # databases give each call its own pooled connection and need no lock.
        self._serial = new_serial_lock(engine)

    def __repr__(self) -> str:
        return f"SqlMetadataStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Close every pooled connection. The store must not be used afterwards."""
        if self._key_cache is not None:
            self._key_cache.close()
        self._engine.dispose()

    def check_writable(self) -> bool:
        """Take the write lock and give it back at once, for the health probe: a store that
        answers reads but lets nobody write (another process holds its lock) cannot serve
        the vault, which writes an audit record per call. Raises StoreUnavailable."""
        with guarded_transaction(self._engine, self._serial, write=True):
            return True

    # --- keys -------------------------------------------------------------------------------

    def create_key(self, key: Key, first_version: KeyVersion) -> Key:
        """Insert a key and its version 1 atomically; AlreadyExists if the name is taken."""
        _require_same_key(key, first_version)
        key_values = key_row(key)
        version_values = version_row(first_version)
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: self._explain_duplicate(key),
        ) as c:
            c.execute(_INSERT_KEY, key_values)
            c.execute(_INSERT_VERSION, version_values)
        return key

    def _read_one(self, statement: Select[Any], params: Mapping[str, Any]) -> Any | None:
        """The one row of a single-row read (by column name), or None: on the key cache's
        probe connection when there is one (see _DirectRead), else in a pooled
        transaction."""
        if self._key_cache is not None:
            return self._direct[statement].row(self._key_cache, params)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            return c.execute(statement, params).mappings().one_or_none()

    def get_key(self, name: KeyName) -> Key | None:
        stamp = 0
        if self._key_cache is not None:
            cached, stamp = self._key_cache.get(name)
            if cached is not None:
                return cached
        row = self._read_one(_GET_KEY, _key_params(name))
        key = None if row is None else to_key(row)
        if key is not None and self._key_cache is not None:
            self._key_cache.put(name, key, stamp)
        return key

    def get_key_and_version(
        self,
        name: KeyName,
        number: int | None,
        cached_version: Callable[[KeyVersionName], KeyVersion | None],
        epoch_seen: Callable[[int], None] | None = None,
    ) -> tuple[Key | None, KeyVersion | None]:
        """name's key and its version number (the key's primary when None): a key served
        from the cache comes with cached_version(that version's name), or the version read;
        a key read from the database comes with its version, read in the same statement.
        epoch_seen gets material_epoch() first, read with the cache's change count."""
        stamp = 0
        if self._key_cache is not None:
            if epoch_seen is None:
                cached, stamp = self._key_cache.get(name)
            else:
                cached, stamp, epoch = self._key_cache.get_with(name, _SQLITE_CHANGES_AND_EPOCH)
                epoch_seen(epoch)
            if cached is not None:
                wanted = name.version(number if number is not None else cached.primary_version)
                return cached, cached_version(wanted) or self.get_version(wanted)
        elif epoch_seen is not None:
            epoch_seen(self.material_epoch())
        params: dict[str, str | int] = {**_key_params(name), "version": number or 0}
        statement = _GET_KEY_WITH_PRIMARY if number is None else _GET_KEY_WITH_VERSION
        row = self._read_one(statement, params)
        if row is None:
            return None, None
        key, version = _split_key_and_version(row)
        if self._key_cache is not None:
            self._key_cache.put(name, key, stamp)
        return key, version

    def find_key_by_request_id(self, account: str, request_id: str) -> Key | None:
        if not request_id:
            # An empty request id is stored as NULL and never matches.
            return None
        query = select(keys).where(keys.c.account == account, keys.c.request_id == request_id)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            row = c.execute(query).mappings().one_or_none()
        return None if row is None else to_key(row)

    def list_keys(
        self, account: str, key_filter: KeyFilter, page_size: int, page_token: str
    ) -> Page[ListedKey]:
        size = clamp_page_size(page_size)
        if key_filter.label_value is not None and key_filter.label_key is None:
            raise InvalidArgument(
                "a label value filter needs a label key", metadata={"field": "filter"}
            )
        # One row beyond the page says whether another page follows, without a COUNT.
        params: dict[str, Any] = {"account": account, "limit": size + 1}
        if page_token:
            params["after"] = _decode_page_token(page_token)
        if key_filter.purpose is not None:
            params["purpose"] = key_filter.purpose.value
        if key_filter.state is not None:
            params["state"] = key_filter.state.value
        if key_filter.label_key is not None:
            params["label_key"] = key_filter.label_key
        if key_filter.label_value is not None:
            params["label_value"] = key_filter.label_value
        query = _listing_query(frozenset(params))
        rows: list[Any]
        if self._key_cache is not None:
            # One statement in autocommit on the probe connection, one consistent snapshot:
            # a pooled transaction cost 0.4-0.5 ms more per call.
            direct = self._direct_listings.get(query)
            if direct is None:
                direct = self._direct_listings[query] = _DirectListing(query, self._engine.dialect)
            rows = direct.rows(self._key_cache, params)
        else:
            with guarded_transaction(self._engine, self._serial, write=False) as c:
                rows = _driver_rows(c.execute(query, params))
        items = list(map(ListedKey._make, rows[:size]))
        return keyset_page(items, len(rows) > size, lambda key: key.key_id)

    def update_key(self, key: Key) -> Key:
        """Write key (labels, description, state, times) if its etag is still current; return
        it with the new etag."""
        values = _mutable_key_values(key)
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            _bump_etag(c, key, values)
            return _reread_key(c, key.name)

    def add_version(self, key: Key, version: KeyVersion, *, make_primary: bool = True) -> Key:
        """Append a version and bump the key's etag, atomically; an ENABLED version becomes
        primary at once (unless make_primary is False), a PENDING one when activate_version
        enables it."""
        _require_same_key(key, version)
        version_values = version_row(version)
        # Adding a version changes the key, so its update time moves to the version's
        # creation unless the caller already gave a later one.
        update_time = max(aware(key.update_time), aware(version.create_time))
        values: dict[str, Any] = {"update_time": update_time}
        if version.state is VersionState.ENABLED and make_primary:
            values["primary_version"] = version.number
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: AlreadyExists(
                "the key version or its token label already exists",
                metadata={"name": str(version.name)},
            ),
        ) as c:
            # Key row first: the etag check fails fast on a stale key, and on a server database
            # the row lock it takes orders concurrent add_version/discard_pending calls.
            _bump_etag(c, key, values)
            c.execute(_INSERT_VERSION, version_values)
            return _reread_key(c, key.name)

    def activate_version(self, version: KeyVersion) -> Key:
        """PENDING -> ENABLED (with its public key) and primary, atomically. Conflict if the
        version is no longer PENDING: destroyed or discarded while its material was made."""
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            enabled = c.execute(
                update(key_versions)
                .where(
                    _version_pk(version.name),
                    key_versions.c.state == VersionState.PENDING.value,
                )
                .values(state=VersionState.ENABLED.value, public_key_der=version.public_key_der)
            )
            if enabled.rowcount != 1:
                raise Conflict(
                    "the key version was destroyed or discarded while it was being created",
                    metadata={"name": str(version.name)},
                )
            # Two rotations may finish out of order; the newest version stays primary.
            newest = case(
                (keys.c.primary_version < version.number, version.number),
                else_=keys.c.primary_version,
            )
            c.execute(
                update(keys)
                .where(_key_pk(version.name.key_name))
                .values(primary_version=newest, etag=keys.c.etag + 1)
            )
            return _reread_key(c, version.name.key_name)

    # --- versions ---------------------------------------------------------------------------

    def get_version(self, name: KeyVersionName) -> KeyVersion | None:
        row = self._read_one(_GET_VERSION, _version_params(name))
        return None if row is None else to_version(row)

    def list_versions(self, key: KeyName) -> list[KeyVersion]:
        query = select(key_versions).where(_versions_of(key)).order_by(key_versions.c.version)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return [to_version(row) for row in rows]

    def list_versions_page(self, key: KeyName, page_size: int, page_token: str) -> Page[KeyVersion]:
        # 0 asks for every version as ListKeyVersions gave before it paged, up to a page's most.
        size = clamp_page_size(page_size or MAX_PAGE_SIZE)
        query = select(key_versions).where(_versions_of(key))
        if page_token:
            query = query.where(key_versions.c.version > decode_version_token(page_token))
        # One row beyond the page says whether another page follows, without a COUNT.
        query = query.order_by(key_versions.c.version).limit(size + 1)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        items = [to_version(row) for row in rows[:size]]
        return keyset_page(items, len(rows) > size, lambda version: version.number)

    def update_version(self, version: KeyVersion) -> None:
        """Write a version's state, material references and destroy time. NotFound if the
        version does not exist (a silent no-op would hide a lost PENDING row)."""
        row = version_row(version)
        values = {
            column: row[column]
            for column in (
                "state",
                "root_generation",
                "wrapped_blob",
                "token_label",
                "public_key_der",
                "destroy_time",
            )
        }
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: AlreadyExists(
                "the token label is used by another key version",
                metadata={"name": str(version.name)},
            ),
        ) as c:
            result = c.execute(
                update(key_versions).where(_version_pk(version.name)).values(**values)
            )
            if result.rowcount != 1:
                raise NotFound("key version not found", metadata={"name": str(version.name)})

    # --- revocation and the material epoch ---------------------------------------------------

    def revoke_key(self, key: Key) -> Key:
        """Write key (REVOKED, with its reason and time) if its etag is still current, and
        mark every version that holds material and is not revoked yet with the same reason
        and time; atomically."""
        assert key.revoke_time is not None
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            _bump_etag(c, key, _mutable_key_values(key))
            c.execute(
                update(key_versions)
                .where(
                    _versions_of(key.name),
                    key_versions.c.state != VersionState.DESTROYED.value,
                    key_versions.c.revoke_time.is_(None),
                )
                .values(
                    revoke_time=aware(key.revoke_time),
                    revocation_reason_code=_code_or_none(key.revocation_reason_code),
                    revocation_reason=key.revocation_reason,
                )
            )
            add_tombstone(
                c,
                key.name,
                0,
                KeyState.REVOKED,
                key.revoke_time,
                key.revocation_reason_code,
                key.revocation_reason,
            )
            c.execute(_BUMP_EPOCH)
            return _reread_key(c, key.name)

    def revoke_version(self, key: Key, version: KeyVersion) -> KeyVersion:
        """Write version's revocation if the key's etag is still current (Conflict otherwise)
        and the version holds material and is not revoked yet (WrongState's caller checked;
        a race gives Conflict); atomically. Returns the version as stored."""
        assert version.revoke_time is not None
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            _bump_etag(c, key, {"update_time": aware(version.revoke_time)})
            result = c.execute(
                update(key_versions)
                .where(
                    _version_pk(version.name),
                    key_versions.c.state == VersionState.ENABLED.value,
                    key_versions.c.revoke_time.is_(None),
                )
                .values(
                    revoke_time=aware(version.revoke_time),
                    revocation_reason_code=_code_or_none(version.revocation_reason_code),
                    revocation_reason=version.revocation_reason,
                )
            )
            if result.rowcount != 1:
                raise Conflict(
                    "the key version changed while it was revoked; read it again",
                    metadata={"name": str(version.name)},
                )
            add_tombstone(
                c,
                key.name,
                version.number,
                KeyState.REVOKED,
                version.revoke_time,
                version.revocation_reason_code,
                version.revocation_reason,
            )
            c.execute(_BUMP_EPOCH)
            row = c.execute(_GET_VERSION, _version_params(version.name)).mappings().one()
        return to_version(row)

    def list_revocations(
        self, account: str | None, page_size: int, page_token: str
    ) -> Page[Revocation]:
        """Revoked versions, of one account or (None) of all, ordered by name."""
        size = clamp_page_size(page_size)
        query = _revoked_versions(account)
        if page_token:
            after = _decode_revocation_token(page_token)
            query = query.where(
                (key_versions.c.account > after.account)
                | (
                    (key_versions.c.account == after.account)
                    & (
                        (key_versions.c.key_id > after.key)
                        | (
                            (key_versions.c.key_id == after.key)
                            & (key_versions.c.version > after.version)
                        )
                    )
                )
            )
        query = query.order_by(
            key_versions.c.account, key_versions.c.key_id, key_versions.c.version
        ).limit(size + 1)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        items = [_to_revocation(row) for row in rows[:size]]
        return keyset_page(items, len(rows) > size, lambda entry: entry.version_name)

    def scan_revocations(self, account: str | None) -> Iterator[Revocation]:
        """Every revoked version, of one account or (None) of all, ordered by name, yielded
        as the rows arrive.

        One SELECT: a statement reads one snapshot on SQLite (its read transaction, in WAL
        mode) and on PostgreSQL (even under READ COMMITTED, where two statements could see
        different commits), so whatever the caller counts is what it got. Rows come in
        batches (a server-side cursor on PostgreSQL, SQLite steps its statement), so memory
        stays bounded; the transaction stays open until the iterator ends or is closed."""
        query = (
            _revoked_versions(account)
            .order_by(key_versions.c.account, key_versions.c.key_id, key_versions.c.version)
            .execution_options(yield_per=_SCAN_BATCH)
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            for row in c.execute(query).mappings():
                yield _to_revocation(row)

    def material_epoch(self) -> int:
        """A number that moves whenever a version's material stops being usable anywhere."""
        if self._key_cache is not None:
            # The cache's probe connection: a primary-key read without the pool.
            return self._key_cache.scalar(_SQLITE_GET_EPOCH)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            return int(c.execute(_GET_EPOCH).scalar_one())

    def bump_material_epoch(self) -> None:
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            c.execute(_BUMP_EPOCH)

    # --- destruction ------------------------------------------------------------------------

    def keys_due_for_destruction(self, now: datetime) -> list[Key]:
        query = (
            select(keys)
            .where(
                keys.c.state == KeyState.DESTROY_SCHEDULED.value,
                keys.c.destroy_scheduled_time.is_not(None),
                keys.c.destroy_scheduled_time <= aware(now),
            )
            .order_by(keys.c.destroy_scheduled_time, keys.c.account, keys.c.key_id)
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return [to_key(row) for row in rows]

    def mark_destroyed(self, key: Key, now: datetime) -> Key:
        """Key DESTROYED, every version DESTROYED with its wrapped blob erased; atomically.
        The erased blobs are zeroed in the database file (secure_delete); purge_erased then
        takes them out of the WAL (crypto-shredding)."""
        now = aware(now)
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            # The etag check stops a key whose destruction was cancelled (restored) after the
            # caller read it from being destroyed anyway.
            _bump_etag(c, key, {"state": KeyState.DESTROYED.value, "update_time": now})
            c.execute(
                update(key_versions)
                .where(_versions_of(key.name))
                .values(
                    state=VersionState.DESTROYED.value,
                    wrapped_blob=None,
                    # A version destroyed earlier keeps the time it was destroyed.
                    destroy_time=func.coalesce(
                        key_versions.c.destroy_time, literal(now, UtcDateTime())
                    ),
                )
            )
            add_tombstone(c, key.name, 0, KeyState.DESTROYED, now, None, "")
            c.execute(_BUMP_EPOCH)
            return _reread_key(c, key.name)

    def purge_erased(self) -> bool:
        """Make values erased so far unrecoverable from the store's files: on SQLite (which
        zeroes deleted content, secure_delete), checkpoint the write-ahead log into the
        database and truncate it. False when that could not finish now."""
        return checkpoint_and_truncate(self._engine)

    # --- start-up reconciliation ------------------------------------------------------------

    def pending_versions(self) -> list[KeyVersion]:
        query = (
            select(key_versions)
            .where(key_versions.c.state == VersionState.PENDING.value)
            .order_by(key_versions.c.account, key_versions.c.key_id, key_versions.c.version)
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return [to_version(row) for row in rows]

    def discard_pending(self, version: KeyVersion) -> None:
        """Remove a PENDING version; remove its key too if that was the key's only version.

        Idempotent: a version already gone is not an error. A version that is no longer
        PENDING raises Conflict rather than being removed, since the caller is about to treat
        its token object as an orphan.
        """
        name = version.name
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            key_row = (
                c.execute(select(keys).where(_key_pk(name.key_name)).with_for_update())
                .mappings()
                .one_or_none()
            )
            if key_row is None:
                return
            state = c.execute(
                select(key_versions.c.state).where(_version_pk(name))
            ).scalar_one_or_none()
            if state is None:
                return
            if state != VersionState.PENDING.value:
                raise Conflict("the key version is no longer pending", metadata={"name": str(name)})
            c.execute(delete(key_versions).where(_version_pk(name)))
            remaining = c.execute(
                select(key_versions.c.version, key_versions.c.state).where(
                    _versions_of(name.key_name)
                )
            ).all()
            if not remaining:
                c.execute(delete(keys).where(_key_pk(name.key_name)))
            elif key_row["primary_version"] == name.version:
                # The key must not keep pointing at a version that no longer exists: fall back
                # to its newest enabled version (or newest of any state if none is enabled).
                enabled = [v for v, s in remaining if s == VersionState.ENABLED.value]
                primary = max(enabled or [v for v, _ in remaining])
                c.execute(
                    update(keys)
                    .where(_key_pk(name.key_name))
                    .values(primary_version=primary, etag=keys.c.etag + 1)
                )

    def token_labels_in_use(self) -> set[str]:
        return {str(label) for label in self._live_values(key_versions.c.token_label)}

    def root_generations_in_use(self) -> set[int]:
        return {int(gen) for gen in self._live_values(key_versions.c.root_generation)}

    def _live_values(self, column: ColumnElement[Any]) -> list[Any]:
        """The distinct non-null values of a key_versions column among versions that still
        hold material (anything not DESTROYED)."""
        query = (
            select(column)
            .where(column.is_not(None), key_versions.c.state != VersionState.DESTROYED.value)
            .distinct()
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            return list(c.execute(query).scalars())

    # --- root key generations ---------------------------------------------------------------

    def add_root_generation(self, root: RootGeneration) -> None:
        row = {
            "generation": root.generation,
            "token_label": root.token_label,
            "create_time": aware(root.create_time),
            "retired": root.retired,
        }
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: AlreadyExists(
                "root generation already recorded",
                metadata={"generation": str(root.generation)},
            ),
        ) as c:
            c.execute(insert(root_generations).values(**row))

    def list_root_generations(self) -> list[RootGeneration]:
        query = select(root_generations).order_by(root_generations.c.generation)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return [
            RootGeneration(
                generation=int(row["generation"]),
                token_label=str(row["token_label"]),
                create_time=row["create_time"],
                retired=bool(row["retired"]),
            )
            for row in rows
        ]

    def versions_per_root_generation(self) -> dict[int, int]:
        """How many versions holding material (not DESTROYED) each root generation wraps."""
        query = (
            select(key_versions.c.root_generation, func.count())
            .where(
                key_versions.c.root_generation.is_not(None),
                key_versions.c.state != VersionState.DESTROYED.value,
            )
            .group_by(key_versions.c.root_generation)
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            return {int(gen): int(count) for gen, count in c.execute(query).all()}

    def versions_under_root_generation(self, generation: int) -> list[KeyVersion]:
        """The versions holding material that generation's roots wrap, by key and number."""
        query = (
            select(key_versions)
            .where(
                key_versions.c.root_generation == generation,
                key_versions.c.state != VersionState.DESTROYED.value,
            )
            .order_by(key_versions.c.account, key_versions.c.key_id, key_versions.c.version)
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return [to_version(row) for row in rows]

    def retire_root_generation(self, generation: int) -> None:
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            c.execute(
                update(root_generations)
                .where(root_generations.c.generation == generation)
                .values(retired=True)
            )

    # --- plumbing ---------------------------------------------------------------------------

    def _explain_duplicate(self, key: Key) -> VaultError:
        # The insert does not say which constraint failed in a portable way; look.
        if self.get_key(key.name) is not None:
            return AlreadyExists("key already exists", metadata={"name": str(key.name)})
        if key.request_id and self.find_key_by_request_id(key.name.account, key.request_id):
            return AlreadyExists(
                "a key was already created for this request id",
                metadata={"field": "request_id"},
            )
        return AlreadyExists(
            "the key version or its token label already exists",
            metadata={"name": str(key.name)},
        )


# --- helpers ----------------------------------------------------------------------------------


def _require_same_key(key: Key, version: KeyVersion) -> None:
    if version.name.key_name != key.name:
        raise ValueError("the version does not belong to the key")


def _key_pk(name: KeyName) -> ColumnElement[bool]:
    return and_(keys.c.account == name.account, keys.c.key_id == name.key)


def _versions_of(name: KeyName) -> ColumnElement[bool]:
    return and_(key_versions.c.account == name.account, key_versions.c.key_id == name.key)


def _version_pk(name: KeyVersionName) -> ColumnElement[bool]:
    return and_(_versions_of(name.key_name), key_versions.c.version == name.version)


def _mutable_key_values(key: Key) -> dict[str, Any]:
    """The columns update_key may change. Name, purpose, algorithm, residency, creation time
    and request id are fixed when the key is created."""
    return {
        "state": key.state.value,
        "primary_version": key.primary_version,
        "labels": dict(key.labels),
        "description": key.description,
        "update_time": aware(key.update_time),
        "destroy_scheduled_time": aware_or_none(key.destroy_scheduled_time),
        "state_before_destroy_scheduled": (
            None
            if key.state_before_destroy_scheduled is None
            else key.state_before_destroy_scheduled.value
        ),
        "revocation_reason": key.revocation_reason,
        "revocation_reason_code": _code_or_none(key.revocation_reason_code),
        "revoke_time": aware_or_none(key.revoke_time),
    }


def key_row(key: Key) -> dict[str, Any]:
    return {
        "account": key.name.account,
        "key_id": key.name.key,
        "purpose": key.purpose.value,
        "algorithm": key.algorithm.value,
        "token_resident": key.token_resident,
        "create_time": aware(key.create_time),
        "request_id": key.request_id or None,
        "etag": key.etag,
        **_mutable_key_values(key),
    }


def version_row(version: KeyVersion) -> dict[str, Any]:
    return {
        "account": version.name.account,
        "key_id": version.name.key,
        "version": version.name.version,
        "state": version.state.value,
        "create_time": aware(version.create_time),
        "root_generation": version.root_generation,
        "wrapped_blob": version.wrapped_blob,
        "token_label": version.token_label,
        "public_key_der": version.public_key_der,
        "destroy_time": aware_or_none(version.destroy_time),
        "revoke_time": aware_or_none(version.revoke_time),
        "revocation_reason_code": _code_or_none(version.revocation_reason_code),
        "revocation_reason": version.revocation_reason or None,
    }


def add_tombstone(
    c: Connection,
    name: KeyName,
    version: int,
    state: KeyState,
    time: datetime,
    reason_code: RevocationReason | None,
    reason: str,
) -> bool:
    """Record that key name (version 0) or one of its versions was revoked or destroyed, in
    the caller's transaction; the first record of each stays. Returns whether it is new."""
    where = and_(
        key_tombstones.c.account == name.account,
        key_tombstones.c.key_id == name.key,
        key_tombstones.c.version == version,
        key_tombstones.c.state == state.value,
    )
    if c.execute(select(key_tombstones.c.version).where(where)).first() is not None:
        return False
    c.execute(
        insert(key_tombstones).values(
            account=name.account,
            key_id=name.key,
            version=version,
            state=state.value,
            time=aware(time),
            reason_code=_code_or_none(reason_code),
            reason=reason,
        )
    )
    return True


def _bump_etag(c: Connection, key: Key, values: dict[str, Any]) -> None:
    """Apply values to the key row if its etag is still key.etag, and advance the etag."""
    result = c.execute(
        update(keys)
        .where(_key_pk(key.name), keys.c.etag == key.etag)
        .values(**values, etag=keys.c.etag + 1)
    )
    if result.rowcount != 1:
        raise Conflict(
            "the key was changed by another request; read it again and retry",
            metadata={"name": str(key.name)},
        )


def _reread_key(c: Connection, name: KeyName) -> Key:
    return to_key(c.execute(select(keys).where(_key_pk(name))).mappings().one())


# Rows scan_revocations fetches at a time: about 1 MB of RSA-4096 entries at most.
_SCAN_BATCH: Final = 1000
# Enum members by stored value: a dict lookup instead of an Enum call per column of every
# listed key.
_PURPOSES: Final = {member.value: member for member in Purpose}
_ALGORITHMS: Final = {member.value: member for member in Algorithm}
_KEY_STATES: Final = {member.value: member for member in KeyState}


def to_key(row: RowMapping) -> Key:
    before = row["state_before_destroy_scheduled"]
    return Key(
        name=KeyName(row["account"], row["key_id"]),
        purpose=_PURPOSES[row["purpose"]],
        algorithm=_ALGORITHMS[row["algorithm"]],
        state=_KEY_STATES[row["state"]],
        primary_version=int(row["primary_version"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        token_resident=bool(row["token_resident"]),
        labels={str(k): str(v) for k, v in (row["labels"] or {}).items()},
        description=row["description"],
        destroy_scheduled_time=row["destroy_scheduled_time"],
        state_before_destroy_scheduled=None if before is None else _KEY_STATES[before],
        revocation_reason=row["revocation_reason"],
        revocation_reason_code=_reason_or_none(row["revocation_reason_code"]),
        revoke_time=row["revoke_time"],
        request_id=row["request_id"] or "",
        etag=int(row["etag"]),
    )


def to_version(row: RowMapping) -> KeyVersion:
    return KeyVersion(
        name=KeyVersionName(row["account"], row["key_id"], int(row["version"])),
        state=VersionState(row["state"]),
        create_time=row["create_time"],
        root_generation=row["root_generation"],
        wrapped_blob=_bytes_or_none(row["wrapped_blob"]),
        token_label=row["token_label"],
        public_key_der=_bytes_or_none(row["public_key_der"]),
        destroy_time=row["destroy_time"],
        revoke_time=row["revoke_time"],
        revocation_reason_code=_reason_or_none(row["revocation_reason_code"]),
        revocation_reason=row["revocation_reason"] or "",
    )


def _revoked_versions(account: str | None) -> Select[Any]:
    """The revoked versions of account (None: of every account), each with its key's
    algorithm: what a revocation listing and the feed read."""
    query = (
        select(
            key_versions.c.account,
            key_versions.c.key_id,
            key_versions.c.version,
            key_versions.c.revocation_reason_code,
            key_versions.c.revoke_time,
            key_versions.c.public_key_der,
            key_versions.c.revocation_reason,
            keys.c.algorithm,
        )
        .join(
            keys,
            and_(keys.c.account == key_versions.c.account, keys.c.key_id == key_versions.c.key_id),
        )
        .where(key_versions.c.revoke_time.is_not(None))
    )
    if account is not None:
        query = query.where(key_versions.c.account == account)
    return query


def _to_revocation(row: RowMapping) -> Revocation:
    return Revocation(
        version_name=KeyVersionName(row["account"], row["key_id"], int(row["version"])),
        algorithm=Algorithm(row["algorithm"]),
        reason_code=_reason_or_none(row["revocation_reason_code"]),
        revoke_time=row["revoke_time"],
        public_key_der=_bytes_or_none(row["public_key_der"]),
        reason=row["revocation_reason"] or "",
    )


def _code_or_none(code: RevocationReason | None) -> str | None:
    return None if code is None else code.value


def _reason_or_none(value: Any) -> RevocationReason | None:
    return None if value is None else RevocationReason(value)


def _decode_revocation_token(token: str) -> KeyVersionName:
    try:
        return KeyVersionName.parse(decode_page_token(token))
    except (InvalidArgument, MalformedName):
        raise malformed_page_token() from None


def _bytes_or_none(value: Any) -> bytes | None:
    # Drivers may return memoryview (psycopg) for binary columns; the domain wants bytes.
    return None if value is None else bytes(value)


def _plain_time(column: Any) -> Any:
    # The stored integer microseconds, without UtcDateTime's conversion to a datetime.
    return type_coerce(column, BigInteger).label(column.name)


# What ListKeys reads, in ListedKey's field order and as its plain values: no column of a
# listed key needs a Python conversion on the way, and ListedKey._make builds each key from
# the driver's row in one call.
_LISTED_COLUMNS: Final = (
    keys.c.account,
    keys.c.key_id,
    keys.c.purpose,
    keys.c.algorithm,
    keys.c.state,
    keys.c.primary_version,
    _plain_time(keys.c.create_time),
    _plain_time(keys.c.update_time),
    # 0 or 1 on SQLite, a bool on PostgreSQL (ListedKey.token_resident is an int).
    keys.c.token_resident,
    # JSON text as stored (SQLite) or as the server prints it (PostgreSQL's json type).
    keys.c.labels.cast(Text).label("labels_json"),
    keys.c.description,
    _plain_time(keys.c.destroy_scheduled_time),
    keys.c.revocation_reason,
    keys.c.revocation_reason_code,
    _plain_time(keys.c.revoke_time),
    keys.c.etag,
)
if tuple(column.name for column in _LISTED_COLUMNS) != ListedKey._fields:
    raise RuntimeError("the columns ListKeys reads do not match ListedKey's fields")


def _driver_rows(result: CursorResult[Any]) -> list[Any]:
    """The rows of result as the driver gives them (tuples), not as SQLAlchemy's Row objects:
    those cost a fifth of a listed key's read, and _LISTED_COLUMNS needs no conversion
    they make. SQLite reads most rows during the fetch, so its errors are wrapped here as
    SQLAlchemy's own fetch would, for guarded_transaction to translate."""
    dbapi_error: type[Exception] = result.dialect.loaded_dbapi.Error
    try:
        return list(result.cursor.fetchall())
    except dbapi_error as error:
        raise DBAPIError.instance(None, None, error, dbapi_error, hide_parameters=True) from error
    finally:
        result.close()


@functools.cache
def _listing_query(parameters: frozenset[str]) -> Select[Any]:
    """The ListKeys query that takes these parameters (account and limit, and those of the
    filters given). One per combination, built once: composing a statement and its cache key
    costs about as much as reading a page of a hundred keys."""
    query = select(*_LISTED_COLUMNS).where(
        keys.c.account == bindparam("account"),
        # Buckets' master keys are the buckets' own, listed by ListBuckets.
        keys.c.key_id.not_like(f"{MASTER_KEY_PREFIX}%"),
    )
    if "after" in parameters:
        query = query.where(keys.c.key_id > bindparam("after"))
    if "purpose" in parameters:
        query = query.where(keys.c.purpose == bindparam("purpose"))
    if "state" in parameters:
        query = query.where(keys.c.state == bindparam("state"))
    if "label_key" in parameters:
        # JSON path extraction: JSON_EXTRACT on SQLite, ->> on PostgreSQL; the parameter
        # has the type a literal label key would get, which makes it a path. A missing label
        # extracts as NULL; label values are always strings, never JSON null.
        path = bindparam("label_key", type_=JSON.JSONStrIndexType())
        label = keys.c.labels[path].as_string()
        if "label_value" in parameters:
            query = query.where(label == bindparam("label_value"))
        else:
            query = query.where(label.is_not(None))
    return query.order_by(keys.c.key_id).limit(bindparam("limit"))


def _decode_page_token(token: str) -> str:
    """The key id a page token continues after."""
    try:
        return check_id("key", decode_page_token(token))
    except MalformedName:
        raise malformed_page_token() from None


if TYPE_CHECKING:
    from vault.domain.ports import MetadataStore

    # Makes mypy prove that the class satisfies the port it implements.
    _PORT_CHECK: type[MetadataStore] = SqlMetadataStore
