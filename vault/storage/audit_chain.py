"""The audit chain in the store: hash-chained records appended after the current head, with
the usage counters and last-used times written in the same transaction as each batch, and
the records read back (all of them in order, or filtered a page at a time).

Every append reads the head of the chain and writes the next records, so appends must take
turns across all processes sharing the database. SQLite would order them itself, but its busy
handler polls in sleeps of milliseconds, which under contention costs far more than the append.
For a SQLite file, appenders therefore queue on an flock of a lock file next to it (the kernel
wakes the next one as soon as the lock is released, and drops the lock of a process that dies)
and only then begin the write transaction, which then seldom has to wait.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Table,
    Update,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    type_coerce,
    update,
)

from vault import metrics
from vault.domain.audit import GENESIS_HASH, AuditEvent, AuditRecord, chain
from vault.domain.errors import AuditUnavailable, DiskFull, InvalidArgument
from vault.domain.identity import is_access_key_id
from vault.domain.models import Page
from vault.domain.ports import AuditFilter, AuditHead
from vault.storage.audit_locks import AppendLock, lock_path
from vault.storage.engine import SQLITE_BUSY_TIMEOUT_MS, scrub_server_message, write_transaction
from vault.storage.paging import (
    clamp_page_size,
    decode_page_token,
    encode_page_token,
    keyset_page,
)
from vault.storage.tables import (
    UtcDateTime,
    access_keys,
    api_keys,
    audit_archive_markers,
    audit_checkpoints,
    audit_events,
    from_micros,
    to_micros,
    usage_counters,
)
from vault.storage.transactions import aware, guarded_transaction, is_disk_full, serialised

# Rows per query when streaming the whole log: bounded memory, few round trips.
READ_BATCH = 1000
# Records one ListAuditEvents call examines at most, in sequence order: reading this many
# took 20-40 ms on SQLite and 40-110 ms on PostgreSQL (README, Audit log), well within any
# caller's deadline however long the log and however rarely the filter matches.
LIST_WINDOW_RECORDS = 100_000
# A filter on an indexed column that matches at most this many records in the whole log is
# read through its index in one call instead. Rows found through an index lie scattered over
# the table, each read on its own and the lot sorted: on PostgreSQL 20,000 of them took as long
# as 1,000,000 in sequence, so only few are worth it (and counting them stays cheap).
LIST_INDEX_RECORDS = 10_000
# A listing's first call with a time range too wide for the index above starts at the oldest
# record in the range rather than the oldest stored, if the time index holds at most this
# many records in the range: finding that record reads all their entries, since times are not
# in sequence order (set at each request's end, on several hosts), so nothing less is exact.
# Reading 1,000,000 took 80 ms on SQLite and 210 ms on PostgreSQL (README, Audit log): this
# bound keeps the search within a window's cost, where it saves every window before the range
# ("the last hour" of a long log).
LIST_SEEK_RECORDS = 500_000
_SEQ_TOKEN_RE = re.compile(r"[0-9]{1,19}")
_TIME_OF = select(audit_events.c.occurred_at)

# The stored columns, occurred_at as the raw integer (converted in _record_of).
_RECORD_COLUMNS = [
    type_coerce(column, BigInteger).label(column.name) if column.name == "occurred_at" else column
    for column in audit_events.c
]
# Statements of the append, built once: composing a statement costs more than running it.
_HEAD = select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
# Where the chain goes on when every stored record was archived.
_MARKER_HEAD = (
    select(audit_archive_markers.c.through_seq, audit_archive_markers.c.through_hash)
    .order_by(audit_archive_markers.c.through_seq.desc())
    .limit(1)
)
_NEWEST_CHECKPOINT = (
    select(audit_checkpoints.c.head_seq, audit_checkpoints.c.signed_at)
    .order_by(audit_checkpoints.c.head_seq.desc())
    .limit(1)
)
_INSERT_RECORD = insert(audit_events)
_USAGE_PK = (
    usage_counters.c.credential_id == bindparam("u_credential"),
    usage_counters.c.day == bindparam("u_day"),
    usage_counters.c.method == bindparam("u_method"),
)
_ADD_USAGE = (
    update(usage_counters)
    .where(*_USAGE_PK)
    .values(count=usage_counters.c.count + bindparam("u_count"))
)
_INSERT_USAGE = insert(usage_counters).values(
    credential_id=bindparam("u_credential"),
    day=bindparam("u_day"),
    method=bindparam("u_method"),
    count=bindparam("u_count"),
)


def _touch(table: Table, id_column: Column[str]) -> Update:
    # Appends of concurrent requests may commit out of order: never move a time backwards.
    used = bindparam("t_time", type_=UtcDateTime())
    return (
        update(table)
        .where(
            id_column == bindparam("t_id"),
            or_(table.c.last_used_time.is_(None), table.c.last_used_time < used),
        )
        .values(last_used_time=used)
    )


_TOUCH_ACCESS_KEY = _touch(access_keys, access_keys.c.access_key_id)
_TOUCH_API_KEY = _touch(api_keys, api_keys.c.api_key_id)
# A server database has no file to lock, and its appenders may be on several hosts: a
# transaction-level advisory lock orders them, held until commit or rollback (so also released
# when a host dies mid-append). Unlike LOCK TABLE it conflicts with nothing else (readers,
# autovacuum, archiving). The number is arbitrary but fixed: every vault host uses the same.
AUDIT_APPEND_LOCK_ID = 0x7661756C74_01  # "vault", 1
_LOCK_AUDIT_HEAD = text("SELECT pg_advisory_xact_lock(:lock_id)").bindparams(
    lock_id=AUDIT_APPEND_LOCK_ID
)


class AuditChain:
    """The chain's records: appends and reads. One instance per process (in SqlAuditStore)."""

    def __init__(self, engine: Engine, serial: threading.Lock | None) -> None:
        self._engine = engine
        self._serial = serial
        self._append_lock = AppendLock(lock_path(engine))
        self._lock_head = engine.dialect.name == "postgresql"
        path = lock_path(engine)
        self._sqlite_file = (
            _SqliteFileAppender(engine.url.database)
            if path is not None and engine.url.database
            else None
        )
        self._postgres = _PostgresAppender(engine) if self._lock_head else None

    def close(self) -> None:
        self._append_lock.close()
        if self._sqlite_file is not None:
            self._sqlite_file.close()
        if self._postgres is not None:
            self._postgres.close()

    # --- appending --------------------------------------------------------------------------

    def append_audit(
        self,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
    ) -> AuditHead:
        """In one transaction: chain events after the current head and insert them, add usage
        counts ((credential id, day, method) -> n) and set the last-used time of those access
        or API keys. AuditUnavailable (DiskFull when the disk is full) if it cannot commit;
        then nothing was written."""
        started = time.perf_counter()
        try:
            if self._sqlite_file is not None:
                with self._append_lock.held():
                    head = self._sqlite_file.append(events, usage, last_used)
            elif self._postgres is not None:
                # The thread lock: this process's appender has one connection.
                with self._append_lock.held():
                    head = self._postgres.append(events, usage, last_used)
            else:
                with (
                    self._append_lock.held(),
                    serialised(self._serial),
                    write_transaction(self._engine) as c,
                ):
                    head = self._append(c, events, usage, last_used)
        except Exception as exc:
            # Whatever failed (database, lock file, a bad value), the records are not stored
            # and the caller must not act as if they were. No values in the error: the
            # engine hides SQL parameters, and only the class name is passed on.
            cause = getattr(exc, "orig", None) or exc
            if is_disk_full(cause):
                raise DiskFull() from exc
            raise AuditUnavailable(
                "the audit log cannot be written", metadata={"error": type(cause).__name__}
            ) from exc
        metrics.audit_committed(
            time.perf_counter() - started, len(events), head.seq - head.checkpoint_seq
        )
        return head

    def _append(
        self,
        c: Connection,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
    ) -> AuditHead:
        if self._lock_head:
            c.execute(_LOCK_AUDIT_HEAD)
        # The head is read inside the transaction that extends it, under the append lock:
        # no other appender can chain onto the same head.
        row = c.execute(_HEAD).first() or c.execute(_MARKER_HEAD).first()
        seq, head_hash = (0, GENESIS_HASH) if row is None else (int(row[0]), _head_hash(row[1]))
        records = chain(head_hash, seq + 1, events)
        if records:
            c.execute(_INSERT_RECORD, [_record_row(record) for record in records])
            seq, head_hash = records[-1].seq, records[-1].hash
        for (credential_id, day, method), count in usage.items():
            params = {
                "u_credential": credential_id,
                "u_day": day,
                "u_method": method,
                "u_count": count,
            }
            # Update, else insert: portable, and race-free because appends take turns.
            if c.execute(_ADD_USAGE, params).rowcount == 0:
                c.execute(_INSERT_USAGE, params)
        touched: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for credential_id, used in last_used.items():
            touched[is_access_key_id(credential_id)].append(
                {"t_id": credential_id, "t_time": aware(used)}
            )
        if touched[True]:
            c.execute(_TOUCH_ACCESS_KEY, touched[True])
        if touched[False]:
            c.execute(_TOUCH_API_KEY, touched[False])
        checkpoint = c.execute(_NEWEST_CHECKPOINT).first()
        return AuditHead(
            seq=seq,
            hash=head_hash,
            checkpoint_seq=0 if checkpoint is None else int(checkpoint[0]),
            checkpoint_time=None if checkpoint is None else checkpoint[1],
        )

    # --- reading ----------------------------------------------------------------------------

    def audit_head(self) -> tuple[int, bytes]:
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            row = c.execute(_HEAD).first() or c.execute(_MARKER_HEAD).first()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), _head_hash(row[1]))

    def audit_records(self, after: int = 0) -> Iterator[AuditRecord]:
        """Every record with a seq above after as stored, in ascending seq order, read
        READ_BATCH rows at a time.

        Each batch is its own short transaction, and none is open while the caller holds a
        record: a long verification neither pins a snapshot nor blocks appenders. Records
        appended meanwhile are included; records are never changed, so batches fit together.
        """
        batch = READ_BATCH
        query = (
            select(*_RECORD_COLUMNS)
            .where(audit_events.c.seq > bindparam("after"))
            .order_by(audit_events.c.seq)
            .limit(batch)
        )
        while True:
            with guarded_transaction(self._engine, self._serial, write=False) as c:
                rows = c.execute(query, {"after": after}).all()
            for row in rows:
                yield _record_of(row)
            if len(rows) < batch:
                return
            after = int(rows[-1][0])

    def list_audit_events(
        self, audit_filter: AuditFilter, page_size: int, page_token: str
    ) -> Page[AuditRecord]:
        """Records matching every field set in audit_filter, oldest first, examining at most
        LIST_WINDOW_RECORDS records. An indexed filter (time range, credential, full method
        name) that matches at most LIST_INDEX_RECORDS records in all is read through its
        index; otherwise the call reads only the next window of LIST_WINDOW_RECORDS sequence
        numbers, and a page short of page_size (even empty) then carries a token resuming
        after the window. Only an empty token ends the listing."""
        size = clamp_page_size(page_size)
        after = _decode_seq_token(page_token) if page_token else 0
        window, through_index = LIST_WINDOW_RECORDS, LIST_INDEX_RECORDS
        parts = _filter_parts(audit_filter)
        sqlite = self._engine.dialect.name == "sqlite"
        seq = audit_events.c.seq
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            first = c.execute(select(func.min(seq)).where(seq > after)).scalar()
            if first is None:
                return keyset_page([], False, lambda record: record.seq)
            driving = next(
                (
                    name
                    for name, clauses in parts.indexed.items()
                    if _at_most(c, name, clauses, through_index)
                ),
                None,
            )
            end: int | None = None
            if (
                driving is None
                and not page_token
                and audit_filter.start_time is not None
                # A range that begins before the oldest stored record's time most likely
                # starts with it: the search would be spent for nothing.
                and c.execute(_TIME_OF.where(seq == first)).scalar_one()
                < aware(audit_filter.start_time)
            ):
                fits, lowest = _lowest_seq_within(
                    c, parts.indexed["occurred_at"], LIST_SEEK_RECORDS
                )
                if fits and lowest is None:  # nothing in the time range
                    return keyset_page([], False, lambda record: record.seq)
                if fits and lowest is not None:
                    first, after = lowest, lowest - 1
            if driving is None:
                head = int(c.execute(select(func.max(seq))).scalar_one())
                end = int(first) + window - 1
                if end >= head:
                    end = None
            clauses = list(parts.rest)
            for name, indexed in parts.indexed.items():
                # SQLite has no statistics to choose among the indexes by: only the one
                # counted above, or else the primary key's window, bounds the rows read, so
                # the others are written as expressions it cannot use an index for. (Within
                # a window, another index would also read its rows one lookup at a time
                # instead of in sequence: 0.55 s against 0.03 s for a common method and a rare
                # key in a log of 10^7 records.)
                hidden = sqlite and name != driving
                clauses.extend(parts.unindexed[name] if hidden else indexed)
            # Likewise the primary key, which either database prefers when it saves sorting
            # the page: walking it in order could read the whole log before a page is full.
            # Through the counted index the rows are few, sorted in memory.
            ordering = seq if driving is None else type_coerce(seq, BigInteger) + 0
            clauses.append(ordering > after)
            if end is not None:
                clauses.append(seq <= end)
            query = select(*_RECORD_COLUMNS).where(*clauses).order_by(ordering).limit(size + 1)
            rows = c.execute(query).all()
        items = [_record_of(row) for row in rows[:size]]
        page = keyset_page(items, len(rows) > size, lambda record: record.seq)
        if len(rows) > size or end is None:
            return page
        return Page(items, encode_page_token(str(end)), page.token_after)


def _lowest_seq_within(
    c: Connection, clauses: Sequence[ColumnElement[bool]], limit: int
) -> tuple[bool, int | None]:
    """(True, the lowest sequence number among the records whose time matches clauses, or
    None if none does) when at most limit records match, read from the time index alone;
    (False, None) when more do."""
    indexed = audit_events.c.occurred_at
    matching = (
        select(audit_events.c.seq).where(*clauses).order_by(indexed).limit(limit + 1).subquery()
    )
    count, lowest = c.execute(select(func.count(), func.min(matching.c.seq))).one()
    if int(count) > limit:
        return False, None
    return True, None if lowest is None else int(lowest)


def _at_most(
    c: Connection, column: str, clauses: Sequence[ColumnElement[bool]], limit: int
) -> bool:
    """Whether at most limit records match clauses on column, reading at most limit + 1
    entries of its index. Ordered by the column, so that PostgreSQL reads the index rather
    than scanning the table on the guess that matching rows are spread evenly over it."""
    indexed = audit_events.c[column]
    matching = select(indexed).where(*clauses).order_by(indexed).limit(limit + 1).subquery()
    return int(c.execute(select(func.count()).select_from(matching)).scalar_one()) <= limit


class _SqliteFileAppender:
    """Appends to a SQLite file through the driver directly, on a connection of its own.

    An append is the one write every request makes, so its cost is paid per call: through
    SQLAlchemy Core it took about 240 us, most of it statement handling around a handful of
    tiny statements; here the same transaction takes a fraction of that. Callers hold the
    append lock, so one connection per process is used by one thread at a time.

    The head and the newest checkpoint are read only when another connection (of any
    process) has committed to the file since this one last appended: PRAGMA data_version
    moves on every such commit, and not on this connection's own. Otherwise the head is the
    one this connection wrote, and the checkpoint the one it read last. Read after BEGIN
    IMMEDIATE, so nothing can commit between the check and this append's commit: one small
    statement instead of two or three per append, each a trip into SQLite with the GIL
    released.
    """

    _HEAD_SQL = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
    _MARKER_HEAD_SQL = (
        "SELECT through_seq, through_hash FROM audit_archive_markers "
        "ORDER BY through_seq DESC LIMIT 1"
    )
    _INSERT_SQL = (
        "INSERT INTO audit_events (seq, occurred_at, request_id, credential_id, account, "
        "method, resource, outcome, reason, latency_us, source, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    _USAGE_SQL = (
        "INSERT INTO usage_counters (credential_id, day, method, count) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (credential_id, day, method) DO UPDATE SET count = count + excluded.count"
    )
    _TOUCH_SQL = (
        "UPDATE {table} SET last_used_time = ?1 WHERE {column} = ?2 "
        "AND (last_used_time IS NULL OR last_used_time < ?1)"
    )
    _CHECKPOINT_SQL = (
        "SELECT head_seq, signed_at FROM audit_checkpoints ORDER BY head_seq DESC LIMIT 1"
    )
    _DATA_VERSION_SQL = "PRAGMA data_version"
    # Last-used times are kept to the second: rewriting a credential's row on every call would
    # double what each append writes, for a precision nobody reads.
    _TOUCH_INTERVAL_US = 1_000_000

    def __init__(self, database: str) -> None:
        self._database = database
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._touched: dict[str, int] = {}
        # After this connection's last append: the data_version it read, the head row it
        # wrote and the newest checkpoint row it read; None when unknown.
        self._known: tuple[int, tuple[int, bytes], Any] | None = None

    def _open(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        if self._connection is not None:
            # Inherited across fork: closing it here could disturb the parent's locks.
            _ABANDONED.append(self._connection)
        connection = sqlite3.connect(
            self._database,
            isolation_level=None,
            check_same_thread=False,
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        )
        connection.execute("PRAGMA synchronous = NORMAL")
        self._connection, self._pid, self._touched = connection, os.getpid(), {}
        self._known = None
        return connection

    def append(
        self,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
    ) -> AuditHead:
        connection = self._open()
        connection.execute("BEGIN IMMEDIATE")
        try:
            head = self._write(connection, events, usage, last_used)
            connection.execute("COMMIT")
        except BaseException:
            self._known = None
            with suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise
        return head

    def _write(
        self,
        connection: sqlite3.Connection,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
    ) -> AuditHead:
        (data_version,) = connection.execute(self._DATA_VERSION_SQL).fetchone()
        known, self._known = self._known, None
        if known is not None and known[0] == data_version:
            row, checkpoint = known[1], known[2]
        else:
            row = connection.execute(self._HEAD_SQL).fetchone()
            if row is None:
                row = connection.execute(self._MARKER_HEAD_SQL).fetchone()
            checkpoint = connection.execute(self._CHECKPOINT_SQL).fetchone()
        plan = _AppendPlan.of(row, events, usage, last_used, self._touched, self._TOUCH_INTERVAL_US)
        if plan.records:
            connection.executemany(self._INSERT_SQL, plan.record_rows())
        if plan.usage_rows:
            connection.executemany(self._USAGE_SQL, plan.usage_rows)
        for access_key, micros, credential_id in plan.touches:
            table, column = (
                ("access_keys", "access_key_id") if access_key else ("api_keys", "api_key_id")
            )
            connection.execute(
                self._TOUCH_SQL.format(table=table, column=column), (micros, credential_id)
            )
            self._touched[credential_id] = micros
        # Kept only once the caller has committed (append() clears it on any failure).
        self._known = (data_version, (plan.seq, plan.head_hash), checkpoint)
        return plan.head(checkpoint)

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None


class _PostgresAppender:
    """Appends to a PostgreSQL database through psycopg directly, in two round trips.

    Through SQLAlchemy each statement of an append was a round trip of its own (BEGIN, the
    lock, the head, the marker head, the records, each usage count, each last-used time, the
    newest checkpoint, COMMIT), and on a busy machine each round trip waits for the server
    process to be scheduled. Here a pipeline sends BEGIN, the advisory lock and the two
    reads at once; the records, counts, times and COMMIT go in a second batch once the head
    is known. Callers hold the append lock, so one connection per process is used by one
    thread at a time.
    """

    _LOCK_SQL = "SELECT pg_advisory_xact_lock(%s)"
    _HEAD_SQL = (
        "SELECT seq, hash FROM ("
        "(SELECT seq, hash, 0 AS source FROM audit_events ORDER BY seq DESC LIMIT 1) "
        "UNION ALL "
        "(SELECT through_seq, through_hash, 1 FROM audit_archive_markers "
        "ORDER BY through_seq DESC LIMIT 1)"
        ") AS heads ORDER BY source LIMIT 1"
    )
    _INSERT_SQL = (
        "INSERT INTO audit_events (seq, occurred_at, request_id, credential_id, account, "
        "method, resource, outcome, reason, latency_us, source, prev_hash, hash) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    # Appends take turns, so no two of these race for one row.
    _USAGE_SQL = (
        "INSERT INTO usage_counters AS old (credential_id, day, method, count) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (credential_id, day, method) "
        "DO UPDATE SET count = old.count + excluded.count"
    )
    _TOUCH_ACCESS_KEY_SQL = (
        "UPDATE access_keys SET last_used_time = %(t)s WHERE access_key_id = %(id)s "
        "AND (last_used_time IS NULL OR last_used_time < %(t)s)"
    )
    _TOUCH_API_KEY_SQL = (
        "UPDATE api_keys SET last_used_time = %(t)s WHERE api_key_id = %(id)s "
        "AND (last_used_time IS NULL OR last_used_time < %(t)s)"
    )
    _CHECKPOINT_SQL = _SqliteFileAppender._CHECKPOINT_SQL
    _TOUCH_INTERVAL_US = _SqliteFileAppender._TOUCH_INTERVAL_US

    def __init__(self, engine: Engine) -> None:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        kwargs.pop("context", None)  # SQLAlchemy's type adapters; these statements need none
        self._args, self._kwargs = list(args), dict(kwargs)
        self._connection: psycopg.Connection[Any] | None = None
        self._pid = 0
        self._touched: dict[str, int] = {}

    def _open(self) -> psycopg.Connection[Any]:
        if self._connection is not None and self._pid == os.getpid():
            if not self._connection.closed:
                return self._connection
        elif self._connection is not None:
            # Inherited across fork: closing it here would end the parent's session.
            _ABANDONED.append(self._connection)
        # Autocommit, so that BEGIN is sent in the pipeline rather than on its own.
        self._connection = psycopg.connect(*self._args, **self._kwargs, autocommit=True)
        self._pid, self._touched = os.getpid(), {}
        return self._connection

    def append(
        self,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
    ) -> AuditHead:
        connection = self._open()
        touched = dict(self._touched)
        try:
            head = self._write(connection, events, usage, last_used, touched)
        except BaseException as exc:
            if isinstance(exc, psycopg.Error):
                scrub_server_message(exc)
            if isinstance(exc, psycopg.OperationalError) or connection.closed:
                with suppress(psycopg.Error):
                    connection.close()
            else:
                with suppress(psycopg.Error):
                    connection.execute("ROLLBACK")
            raise
        self._touched = touched
        return head

    def _write(
        self,
        connection: psycopg.Connection[Any],
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
        touched: dict[str, int],
    ) -> AuditHead:
        with connection.pipeline() as pipeline:
            connection.execute("BEGIN")
            connection.execute(self._LOCK_SQL, (AUDIT_APPEND_LOCK_ID,))
            # Read under the lock, in the transaction that extends it: no other appender of
            # any host can chain onto the same head.
            head_cursor = connection.execute(self._HEAD_SQL)
            checkpoint_cursor = connection.execute(self._CHECKPOINT_SQL)
            pipeline.sync()
            row = head_cursor.fetchone()
            checkpoint = checkpoint_cursor.fetchone()
            plan = _AppendPlan.of(row, events, usage, last_used, touched, self._TOUCH_INTERVAL_US)
            cursor = connection.cursor()
            if plan.records:
                cursor.executemany(self._INSERT_SQL, plan.record_rows())
            if plan.usage_rows:
                cursor.executemany(self._USAGE_SQL, plan.usage_rows)
            for access_key, micros, credential_id in plan.touches:
                touch = self._TOUCH_ACCESS_KEY_SQL if access_key else self._TOUCH_API_KEY_SQL
                cursor.execute(touch, {"t": micros, "id": credential_id})
                touched[credential_id] = micros
            connection.execute("COMMIT")
        return plan.head(checkpoint)

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            with suppress(psycopg.Error):
                self._connection.close()
        self._connection = None


@dataclass(frozen=True, slots=True)
class _AppendPlan:
    """What one append writes, whichever driver writes it: the records chained onto the head
    read in the append's transaction, the usage counts, and the last-used times worth
    writing (at most one per credential per touch interval)."""

    records: list[AuditRecord]
    usage_rows: list[tuple[str, str, str, int]]
    # (is an access key, microseconds, credential id)
    touches: list[tuple[bool, int, str]]
    seq: int
    head_hash: bytes

    @classmethod
    def of(
        cls,
        head_row: Any,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
        touched: Mapping[str, int],
        touch_interval_us: int,
    ) -> _AppendPlan:
        seq, head_hash = (
            (0, GENESIS_HASH) if head_row is None else (int(head_row[0]), _head_hash(head_row[1]))
        )
        records = chain(head_hash, seq + 1, events)
        if records:
            seq, head_hash = records[-1].seq, records[-1].hash
        touches = []
        for credential_id, used in last_used.items():
            micros = to_micros(aware(used))
            if micros - touched.get(credential_id, 0) >= touch_interval_us:
                touches.append((is_access_key_id(credential_id), micros, credential_id))
        usage_rows = [(cred, day, method, count) for (cred, day, method), count in usage.items()]
        return cls(records, usage_rows, touches, seq, head_hash)

    def record_rows(self) -> list[tuple[Any, ...]]:
        return [record_row(record) for record in self.records]

    def head(self, newest_checkpoint: Any) -> AuditHead:
        return AuditHead(
            seq=self.seq,
            hash=self.head_hash,
            checkpoint_seq=0 if newest_checkpoint is None else int(newest_checkpoint[0]),
            checkpoint_time=(
                None if newest_checkpoint is None else from_micros(int(newest_checkpoint[1]))
            ),
        )


# Connections a forked child inherited: kept referenced so they are never closed there.
_ABANDONED: list[Any] = []


def record_row(record: AuditRecord) -> tuple[Any, ...]:
    """A record as its audit_events row, column by column."""
    event = record.event
    return (
        record.seq,
        to_micros(aware(event.occurred_at)),
        event.request_id,
        event.credential_id,
        event.account,
        event.method,
        event.resource,
        event.outcome,
        event.reason,
        event.latency_us,
        event.source,
        record.prev_hash,
        record.hash,
    )


def _record_row(record: AuditRecord) -> dict[str, Any]:
    event = record.event
    return {
        "seq": record.seq,
        "occurred_at": aware(event.occurred_at),
        "request_id": event.request_id,
        "credential_id": event.credential_id,
        "account": event.account,
        "method": event.method,
        "resource": event.resource,
        "outcome": event.outcome,
        "reason": event.reason,
        "latency_us": event.latency_us,
        "source": event.source,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def _record_of(row: Sequence[Any]) -> AuditRecord:
    """The record of a row of _RECORD_COLUMNS, read by position (by name cost a third more on
    a checkpoint's read of every record since the last). Values are passed on as stored when
    they are not of the expected type: a row changed behind the store's back must reach the
    verifier, which reports it, rather than stop the stream with a conversion error."""
    (seq, occurred_at, request_id, credential_id, account, method, resource, outcome, reason,
     latency_us, source, prev_hash, digest) = row  # fmt: skip
    return AuditRecord(
        seq,
        AuditEvent(
            from_micros(occurred_at) if type(occurred_at) is int else occurred_at,
            request_id,
            credential_id,
            account,
            method,
            resource,
            outcome,
            reason,
            latency_us,
            source,
        ),
        _as_bytes(prev_hash),
        _as_bytes(digest),
    )


def _as_bytes(value: Any) -> Any:
    # Drivers may return memoryview (psycopg) for binary columns; the domain wants bytes.
    return bytes(value) if isinstance(value, bytearray | memoryview) else value


def _head_hash(value: Any) -> bytes:
    value = _as_bytes(value)
    if not isinstance(value, bytes) or len(value) != len(GENESIS_HASH):
        # Chaining onto a damaged head would bury the damage under valid-looking records.
        raise ValueError("the audit chain head is damaged")
    return value


@dataclass(frozen=True, slots=True)
class _FilterParts:
    """A filter's conditions: by the index that can find their rows (occurred_at,
    credential_id, method), each also written so that no index is used for it, and the
    conditions no index helps with."""

    indexed: dict[str, list[ColumnElement[bool]]]
    unindexed: dict[str, list[ColumnElement[bool]]]
    rest: list[ColumnElement[bool]]


def _filter_parts(audit_filter: AuditFilter) -> _FilterParts:
    col = audit_events.c
    indexed: dict[str, list[ColumnElement[bool]]] = {}
    unindexed: dict[str, list[ColumnElement[bool]]] = {}
    rest: list[ColumnElement[bool]] = []
    # The same comparisons on an expression of the column (every column here is NOT NULL),
    # which SQLite cannot look up in the column's index.
    micros = type_coerce(col.occurred_at, BigInteger) + 0
    if audit_filter.start_time is not None or audit_filter.end_time is not None:
        times, plain = [], []
        if audit_filter.start_time is not None:
            times.append(col.occurred_at >= aware(audit_filter.start_time))
            plain.append(micros >= to_micros(aware(audit_filter.start_time)))
        if audit_filter.end_time is not None:
            times.append(col.occurred_at < aware(audit_filter.end_time))
            plain.append(micros < to_micros(aware(audit_filter.end_time)))
        indexed["occurred_at"], unindexed["occurred_at"] = times, plain
    if audit_filter.credential_id:
        credential = audit_filter.credential_id
        indexed["credential_id"] = [col.credential_id == credential]
        unindexed["credential_id"] = [col.credential_id + "" == credential]
    if audit_filter.outcome:
        rest.append(col.outcome == audit_filter.outcome)
    if audit_filter.resource:
        # The key itself, or anything under it (its versions). Compared with substr rather
        # than LIKE: LIKE is case-insensitive on SQLite and would need '%' and '_' escaped.
        prefix = audit_filter.resource + "/"
        rest.append(
            or_(
                col.resource == audit_filter.resource,
                func.substr(col.resource, 1, len(prefix)) == prefix,
            )
        )
    if audit_filter.method:
        method = audit_filter.method
        if "/" in method:
            indexed["method"] = [col.method == method]
            unindexed["method"] = [col.method + "" == method]
        else:
            # A short name ("Encrypt") matches the last part of any full name
            # ("/vault.v1.CryptoService/Encrypt"), and only a whole last part.
            suffix = "/" + method
            rest.append(
                func.substr(col.method, func.length(col.method) - (len(suffix) - 1)) == suffix
            )
    return _FilterParts(indexed, unindexed, rest)


def _decode_seq_token(token: str) -> int:
    value = decode_page_token(token)
    if not _SEQ_TOKEN_RE.fullmatch(value):
        raise InvalidArgument("malformed page token", metadata={"field": "page_token"})
    return int(value)
