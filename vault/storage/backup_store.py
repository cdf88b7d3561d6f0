"""BackupStore over SQLAlchemy Core: reads a selection of keys and buckets page by page for an
export, writes restored keys and buckets as they were, and keeps the tombstones and the log of
exports. Portable SQL only, like metadata_store.py."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine, and_, func, insert, select

from vault.domain.backup import ExportRecord, Selection, Tombstone
from vault.domain.buckets import Bucket
from vault.domain.errors import AlreadyExists
from vault.domain.models import Key, KeyState, KeyVersion, Page, RevocationReason
from vault.domain.names import MASTER_KEY_PREFIX, KeyName, KeyVersionName
from vault.storage.bucket_store import _JOINED, _bucket_row, _to_pair
from vault.storage.metadata_store import add_tombstone, key_row, to_key, to_version, version_row
from vault.storage.paging import (
    clamp_page_size,
    decode_page_token,
    keyset_page,
    malformed_page_token,
)
from vault.storage.tables import (
    ID_LENGTH,
    backup_export_versions,
    backup_exports,
    buckets,
    from_micros,
    key_tombstones,
    key_versions,
    keys,
    to_micros,
)
from vault.storage.transactions import aware, guarded_transaction, new_serial_lock

# Keys read per query during an export: the whole selection never sits in memory at once.
_PAGE = 200
# A ListBackups page token's value: the last export's time (microseconds) and its id.
_EXPORT_TOKEN: Final = re.compile(rf"([0-9]{{1,19}})\.(\S{{1,{ID_LENGTH}}})", re.ASCII)


class SqlBackupStore:
    """The vault's BackupStore. One instance per process, shared by all request threads."""

    def __init__(self, engine: Engine, *, serial: threading.Lock | None = None) -> None:
        self._engine = engine
        self._serial = serial if serial is not None else new_serial_lock(engine)

    def __repr__(self) -> str:
        return f"SqlBackupStore({self._engine.url.render_as_string(hide_password=True)!r})"

    # -- export ---------------------------------------------------------------------------

    def selected_accounts(self, selection: Selection) -> list[str]:
        """The accounts with a key or bucket the selection may take, in order."""
        query = select(keys.c.account).distinct().order_by(keys.c.account)
        if not selection.everything:
            wanted = set(selection.accounts)
            for name in (*selection.keys, *selection.buckets):
                parts = name.split("/")
                if len(parts) >= 2 and parts[0] == "accounts":
                    wanted.add(parts[1])
            query = query.where(keys.c.account.in_(sorted(wanted)))
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            return [str(account) for account in c.execute(query).scalars()]

    def count_keys(self, accounts: Sequence[str]) -> int:
        """Keys and buckets of accounts (a bucket is its master key's row)."""
        if not accounts:
            return 0
        query = select(func.count()).select_from(keys).where(keys.c.account.in_(accounts))
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            return int(c.execute(query).scalar_one())

    def keys_of(self, account: str) -> Iterator[tuple[Key, list[KeyVersion]]]:
        """Every key of account that is not a bucket's master key, with its versions, in
        name order, read a page at a time."""
        after = ""
        while True:
            query = (
                select(keys)
                .where(
                    keys.c.account == account,
                    keys.c.key_id.not_like(f"{MASTER_KEY_PREFIX}%"),
                    keys.c.key_id > after,
                )
                .order_by(keys.c.key_id)
                .limit(_PAGE)
            )
            with guarded_transaction(self._engine, self._serial, write=False) as c:
                page = [to_key(row) for row in c.execute(query).mappings().all()]
                versions = _versions(c, account, [key.name.key for key in page])
            for key in page:
                yield key, versions.get(key.name.key, [])
            if len(page) < _PAGE:
                return
            after = page[-1].name.key

    def buckets_of(self, account: str) -> Iterator[tuple[Bucket, Key, list[KeyVersion]]]:
        after = ""
        while True:
            query = (
                select(_JOINED)
                .where(buckets.c.account == account, buckets.c.bucket_id > after)
                .order_by(buckets.c.bucket_id)
                .limit(_PAGE)
            )
            with guarded_transaction(self._engine, self._serial, write=False) as c:
                page = [_to_pair(row) for row in c.execute(query).mappings().all()]
                versions = _versions(c, account, [key.name.key for _, key in page])
            for bucket, key in page:
                yield bucket, key, versions.get(key.name.key, [])
            if len(page) < _PAGE:
                return
            after = page[-1][0].name.bucket

    def record_export(self, record: ExportRecord, versions: Sequence[KeyVersionName]) -> None:
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            c.execute(
                insert(backup_exports).values(
                    export_id=record.export_id,
                    create_time=aware(record.create_time),
                    selection=dict(record.selection),
                    entry_count=record.entry_count,
                    signer_fingerprint=record.signer_fingerprint,
                )
            )
            if versions:
                c.execute(
                    insert(backup_export_versions),
                    [
                        {
                            "export_id": record.export_id,
                            "account": name.account,
                            "key_id": name.key,
                            "version": name.version,
                        }
                        for name in versions
                    ],
                )

    def exports_holding(
        self, version: KeyVersionName, page_size: int, page_token: str
    ) -> Page[ExportRecord]:
        """A page of the exports whose bundles hold version's blob, oldest first; exports of
        the same microsecond in export id order, so that the order is total and a page
        resumes exactly after its last record."""
        size = clamp_page_size(page_size)
        time, export_id = backup_exports.c.create_time, backup_exports.c.export_id
        query = (
            select(backup_exports)
            .join(
                backup_export_versions,
                backup_export_versions.c.export_id == export_id,
            )
            .where(
                backup_export_versions.c.account == version.account,
                backup_export_versions.c.key_id == version.key,
                backup_export_versions.c.version == version.version,
            )
        )
        if page_token:
            after_time, after_id = _decode_export_token(page_token)
            query = query.where(
                (time > after_time) | ((time == after_time) & (export_id > after_id))
            )
        query = query.order_by(time, export_id).limit(size + 1)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        items = [
            ExportRecord(
                export_id=str(row["export_id"]),
                create_time=row["create_time"],
                selection=dict(row["selection"] or {}),
                entry_count=int(row["entry_count"]),
                signer_fingerprint=str(row["signer_fingerprint"]),
            )
            for row in rows[:size]
        ]
        return keyset_page(
            items,
            len(rows) > size,
            lambda record: f"{to_micros(record.create_time)}.{record.export_id}",
        )

    # -- restore --------------------------------------------------------------------------

    def tombstones(self, name: KeyName) -> list[Tombstone]:
        """The tombstones of key name and of its versions (version 0 is the key's)."""
        return self.tombstones_of([name])[name]

    def tombstones_of(self, names: Sequence[KeyName]) -> dict[KeyName, list[Tombstone]]:
        """tombstones() of each of names, in one read per account among them."""
        found: dict[KeyName, list[Tombstone]] = {name: [] for name in names}
        by_account: dict[str, list[str]] = {}
        for name in found:
            by_account.setdefault(name.account, []).append(name.key)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            for account, key_ids in by_account.items():
                query = (
                    select(key_tombstones)
                    .where(
                        key_tombstones.c.account == account,
                        key_tombstones.c.key_id.in_(key_ids),
                    )
                    .order_by(
                        key_tombstones.c.key_id, key_tombstones.c.version, key_tombstones.c.time
                    )
                )
                for row in c.execute(query).mappings().all():
                    name = KeyName(account, str(row["key_id"]))
                    found[name].append(_to_tombstone(name, row))
        return found

    def add_tombstone(self, name: KeyName, version: int, tombstone: Tombstone) -> bool:
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            return add_tombstone(
                c,
                name,
                version,
                tombstone.state,
                tombstone.time,
                tombstone.reason_code,
                tombstone.reason,
            )

    def restore_key(
        self, key: Key, versions: Sequence[KeyVersion], bucket: Bucket | None = None
    ) -> None:
        """Insert key, its versions and (for a master key) its bucket as they were, in one
        transaction; AlreadyExists if the name (or a version) is taken."""
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: AlreadyExists(
                "the key or bucket exists already", metadata={"name": str(key.name)}
            ),
        ) as c:
            c.execute(insert(keys).values(**key_row(key)))
            for version in versions:
                c.execute(insert(key_versions).values(**version_row(version)))
            if bucket is not None:
                c.execute(insert(buckets).values(**_bucket_row(bucket, key)))

    def restore_keys(
        self, items: Sequence[tuple[Key, Sequence[KeyVersion], Bucket | None]]
    ) -> set[KeyName]:
        """restore_key for several keys (and buckets) in one transaction, each row statement
        compiled once for all of them. Keys whose name the store holds already are left out
        and returned. AlreadyExists, with nothing inserted, if a row is taken all the same
        (two items of one name, or a key created meanwhile)."""
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: AlreadyExists("a key or bucket of the batch exists already"),
        ) as c:
            taken = _existing_keys(c, [key.name for key, _, _ in items])
            new = [item for item in items if item[0].name not in taken]
            if new:
                c.execute(insert(keys), [key_row(key) for key, _, _ in new])
                version_rows = [version_row(v) for _, versions, _ in new for v in versions]
                if version_rows:
                    c.execute(insert(key_versions), version_rows)
                bucket_rows = [_bucket_row(b, key) for key, _, b in new if b is not None]
                if bucket_rows:
                    c.execute(insert(buckets), bucket_rows)
        return taken


def _existing_keys(c: Any, names: Sequence[KeyName]) -> set[KeyName]:
    by_account: dict[str, list[str]] = {}
    for name in names:
        by_account.setdefault(name.account, []).append(name.key)
    found: set[KeyName] = set()
    for account, key_ids in by_account.items():
        query = select(keys.c.key_id).where(keys.c.account == account, keys.c.key_id.in_(key_ids))
        found.update(KeyName(account, str(key_id)) for key_id in c.execute(query).scalars())
    return found


def _to_tombstone(name: KeyName, row: Any) -> Tombstone:
    return Tombstone(
        name=str(name) if row["version"] == 0 else str(name.version(int(row["version"]))),
        state=KeyState(row["state"]),
        time=row["time"],
        reason_code=None if row["reason_code"] is None else RevocationReason(row["reason_code"]),
        reason=str(row["reason"]),
    )


def _decode_export_token(token: str) -> tuple[datetime, str]:
    """The export time and id a ListBackups page token continues after."""
    found = _EXPORT_TOKEN.fullmatch(decode_page_token(token))
    if found is None:
        raise malformed_page_token()
    return from_micros(int(found[1])), found[2]


def _versions(c: Any, account: str, key_ids: Sequence[str]) -> dict[str, list[KeyVersion]]:
    if not key_ids:
        return {}
    query = (
        select(key_versions)
        .where(and_(key_versions.c.account == account, key_versions.c.key_id.in_(key_ids)))
        .order_by(key_versions.c.key_id, key_versions.c.version)
    )
    found: dict[str, list[KeyVersion]] = {}
    for row in c.execute(query).mappings().all():
        found.setdefault(str(row["key_id"]), []).append(to_version(row))
    return found


if TYPE_CHECKING:
    from vault.domain.ports import BackupStore

    _PORT_CHECK: type[BackupStore] = SqlBackupStore
