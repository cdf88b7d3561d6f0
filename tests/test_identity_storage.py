"""SqlIdentityStore and SqlAuditStore against real SQLite files and a real PostgreSQL database:
every port method, the schema of migration 0002, the audit chain under concurrent appenders in
several processes, and all-or-nothing appends."""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, inspect, text

import vault.storage.audit_chain as audit_chain_module
from vault.domain.audit import GENESIS_HASH, AuditEvent, AuditRecord, Checkpoint
from vault.domain.audit_verification import verify_audit_log
from vault.domain.errors import AlreadyExists, AuditUnavailable, InvalidArgument, NotFound
from vault.domain.identity import (
    AccessKey,
    AccessLevel,
    Account,
    ApiKey,
    ApiScope,
    CredentialState,
    Grant,
    RateLimit,
    UsageCount,
)
from vault.domain.models import Page
from vault.domain.ports import AuditFilter, AuditStore, IdentityStore
from vault.storage import (
    SqlAuditStore,
    SqlIdentityStore,
    Stores,
    alembic_config,
    open_store,
    open_stores,
)
from vault.storage.audit_locks import LOCK_SUFFIX
from vault.storage.engine import make_engine, write_transaction
from vault.storage.paging import encode_page_token
from vault.storage.tables import metadata

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
DAY = "2025-03-01"
ACCESS_KEY = "VKAAAAAAAAAAAAAAAAAA"
ACCESS_KEY_2 = "VKBBBBBBBBBBBBBBBBBB"
API_KEY = "abcdefghijklmnop"
API_KEY_2 = "qrstuvwxyz234567"
ENCRYPT = "/vault.v1.CryptoService/Encrypt"
REENCRYPT = "/vault.v1.CryptoService/ReEncrypt"
GET_KEY = "/vault.v1.KeyService/GetKey"


def db_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "vault.db"


@pytest.fixture
def url(backend_url: str) -> str:
    """Tests that take url (or stores, identity, audit) run on SQLite and on PostgreSQL."""
    return backend_url


@pytest.fixture
def stores(url: str) -> Iterator[Stores]:
    opened = open_stores(url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def sqlite_audit(db_path: Path) -> Iterator[SqlAuditStore]:
    """The audit store of a SQLite file, for what only SQLite has (its lock file, its lax
    column types)."""
    opened = open_stores(db_url(db_path))
    try:
        yield opened.audit
    finally:
        opened.close()


def execute(url: str, statement: str, **params: Any) -> None:
    """Run one statement behind the stores' backs, as someone with access to the database."""
    engine = make_engine(url)
    try:
        with write_transaction(engine) as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def refuse_inserts(url: str, table: str) -> None:
    """Make every later insert into table fail (table is a constant of the test)."""
    if url.startswith("sqlite"):
        execute(
            url,
            f"CREATE TRIGGER refuse BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
    else:
        # NOT VALID: the rows already there are not checked, every new one fails.
        execute(url, f"ALTER TABLE {table} ADD CONSTRAINT refuse CHECK (false) NOT VALID")


@pytest.fixture
def identity(stores: Stores) -> SqlIdentityStore:
    return stores.identity


@pytest.fixture
def audit(stores: Stores) -> SqlAuditStore:
    return stores.audit


def account(account_id: str = "acme", *, admin: bool = False) -> Account:
    return Account(account_id, f"Account {account_id}", admin, T0)


def access_key(
    key_id: str = ACCESS_KEY, account_id: str = "acme", grants: tuple[Grant, ...] = ()
) -> AccessKey:
    return AccessKey(
        account_id=account_id,
        access_key_id=key_id,
        state=CredentialState.ACTIVE,
        grants=grants,
        description=f"key {key_id}",
        create_time=T0,
        secret_salt=b"\x00salt\xff" + key_id.encode(),
    )


def api_key(key_id: str = API_KEY, account_id: str = "acme", **changes: Any) -> ApiKey:
    key = ApiKey(
        account_id=account_id,
        api_key_id=key_id,
        state=CredentialState.ACTIVE,
        scopes=(ApiScope(frozenset({"Encrypt", "Decrypt"}), ("keys/a", "keys/b")),),
        description="",
        create_time=T0,
        token_hash=b"\x01hash\x00" + key_id.encode(),
    )
    return replace(key, **changes)


def audit_event(
    n: int = 0,
    *,
    at: datetime = T0,
    credential: str = ACCESS_KEY,
    method: str = ENCRYPT,
    resource: str = "accounts/acme/keys/k1",
    outcome: str = "OK",
    source: str = "test",
) -> AuditEvent:
    return AuditEvent(
        occurred_at=at,
        request_id=f"req-{n}",
        credential_id=credential,
        account="acme",
        method=method,
        resource=resource,
        outcome=outcome,
        reason="" if outcome == "OK" else "denied",
        latency_us=100 + n,
        source=source,
    )


def seqs_of(audit: SqlAuditStore, audit_filter: AuditFilter, page_size: int) -> list[int]:
    seqs: list[int] = []
    token = ""
    while True:
        page = audit.list_audit_events(audit_filter, page_size, token)
        assert len(page.items) <= page_size
        seqs += [record.seq for record in page.items]
        token = page.next_page_token
        if not token:
            return seqs


def assert_chain(records: list[Any], count: int) -> None:
    assert [record.seq for record in records] == list(range(1, count + 1))
    previous = GENESIS_HASH
    for record in records:
        assert record.prev_hash == previous
        assert len(record.hash) == 32
        previous = record.hash


def no_verify(payload: bytes, signature: bytes, key_label: str) -> bool:
    return signature == b"good"


# --- opening and schema ------------------------------------------------------------------------


def test_stores_satisfy_the_ports(stores: Stores) -> None:
    identity_port: IdentityStore = stores.identity
    audit_port: AuditStore = stores.audit
    assert identity_port.get_account("nobody") is None
    assert list(audit_port.audit_records()) == []


def test_migrations_create_exactly_the_tables_module(
    stores: Stores, backend: str, db_path: Path
) -> None:
    with stores.metadata._engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    assert [tuple(row) for row in versions] == [("0009",)]
    if backend == "sqlite":
        with sqlite3.connect(db_path) as sqlite:
            audit_sql = sqlite.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'audit_events'"
            ).fetchone()[0]
        sqlite.close()
        # INTEGER (not BIGINT) makes seq the rowid: the head of the chain is found at once.
        assert "seq INTEGER NOT NULL" in audit_sql


def test_upgrade_from_0001_keeps_data_and_downgrade_drops_only_0002(url: str) -> None:
    engine = make_engine(url)
    config = alembic_config()
    try:
        with write_transaction(engine) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
            conn.exec_driver_sql("INSERT INTO root_generations VALUES (1, 'root-1', 0, false)")
        opened = open_stores(url)
        try:
            assert [g.token_label for g in opened.metadata.list_root_generations()] == ["root-1"]
            opened.identity.create_account(account())
        finally:
            opened.close()
        with write_transaction(engine) as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0001")
            tables = set(inspect(conn).get_table_names())
            generations = conn.exec_driver_sql("SELECT count(*) FROM root_generations").scalar()
    finally:
        engine.dispose()
    assert tables == {"alembic_version", "keys", "key_versions", "root_generations"}
    assert generations == 1


def test_open_stores_share_one_engine_and_open_store_still_works(url: str) -> None:
    opened = open_stores(url)
    try:
        engine = opened.metadata._engine
        assert opened.identity._engine is engine and opened.audit._engine is engine
        opened.identity.create_account(account())
    finally:
        opened.close()
    alone = open_store(url)
    alone.close()
    again = open_stores(url)
    try:
        assert again.identity.get_account("acme") == account()
    finally:
        again.close()


def test_in_memory_stores_take_turns_on_one_connection() -> None:
    opened = open_stores("sqlite://")
    errors: list[BaseException] = []
    try:
        opened.identity.create_account(account())

        def work(worker: int) -> None:
            try:
                for i in range(20):
                    opened.audit.append_audit(
                        [audit_event(i)], {(ACCESS_KEY, DAY, "Encrypt"): 1}, {}
                    )
                    opened.identity.get_account("acme")
                    opened.identity.create_account(account(f"w{worker}-{i}"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert_chain(list(opened.audit.audit_records()), 80)
        assert opened.identity.usage_on(ACCESS_KEY, DAY) == 80
    finally:
        opened.close()


# --- accounts ----------------------------------------------------------------------------------


def test_account_create_get_and_duplicate(identity: SqlIdentityStore) -> None:
    assert identity.create_account(account()) == account()
    assert identity.get_account("acme") == account()
    assert identity.get_account("other") is None
    with pytest.raises(AlreadyExists) as caught:
        identity.create_account(replace(account(), display_name="someone else"))
    assert caught.value.metadata == {"account": "acme"}
    assert identity.get_account("acme") == account()


def test_accounts_are_listed_in_pages(identity: SqlIdentityStore) -> None:
    ids = [f"acct-{n:02d}" for n in range(7)]
    for account_id in reversed(ids):
        identity.create_account(account(account_id))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = identity.list_accounts(3, token)
        pages += 1
        seen += [item.account_id for item in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    assert pages == 3
    assert [a.account_id for a in identity.list_accounts(0, "").items] == ids
    with pytest.raises(InvalidArgument):
        identity.list_accounts(3, "not a token!")


def test_has_admin_account(identity: SqlIdentityStore) -> None:
    assert not identity.has_admin_account()
    identity.create_account(account("plain"))
    assert not identity.has_admin_account()
    identity.create_account(account("root", admin=True))
    assert identity.has_admin_account()


# --- access keys -------------------------------------------------------------------------------


def test_access_key_needs_its_account(identity: SqlIdentityStore) -> None:
    with pytest.raises(NotFound) as caught:
        identity.create_access_key(access_key())
    assert "account" in caught.value.message and "not found" in caught.value.message
    assert identity.get_access_key(ACCESS_KEY) is None


def test_access_key_round_trip_and_duplicate(identity: SqlIdentityStore) -> None:
    identity.create_account(account())
    grants = (Grant("keys/k1", AccessLevel.READ), Grant("keys/*", AccessLevel.FULL))
    key = access_key(grants=grants)
    assert identity.create_access_key(key) == key
    stored = identity.get_access_key(ACCESS_KEY)
    assert stored == key
    assert stored is not None and stored.grants == grants
    assert isinstance(stored.secret_salt, bytes)
    with pytest.raises(AlreadyExists) as caught:
        identity.create_access_key(replace(key, description="again"))
    assert caught.value.metadata == {"name": key.name}


def test_access_key_update_revoke_and_reset(identity: SqlIdentityStore) -> None:
    identity.create_account(account())
    key = identity.create_access_key(access_key())
    reset = replace(key, secret_salt=b"new-salt", secret_reset_time=T0 + timedelta(hours=1))
    assert identity.update_access_key(reset) == reset
    revoked = identity.update_access_key(replace(reset, state=CredentialState.REVOKED))
    assert revoked.state is CredentialState.REVOKED
    assert identity.get_access_key(ACCESS_KEY) == revoked
    # Only state, salt and reset time are written: the rest stays as created.
    ignored = replace(revoked, description="changed", grants=(Grant("keys/x", AccessLevel.READ),))
    assert identity.update_access_key(ignored) == revoked
    with pytest.raises(NotFound):
        identity.update_access_key(access_key(ACCESS_KEY_2))


def test_access_key_delete(identity: SqlIdentityStore, audit: SqlAuditStore) -> None:
    identity.create_account(account())
    identity.create_access_key(access_key())
    audit.append_audit([audit_event()], {(ACCESS_KEY, DAY, "Encrypt"): 3}, {ACCESS_KEY: T0})
    assert identity.delete_access_key(ACCESS_KEY) is True
    assert identity.get_access_key(ACCESS_KEY) is None
    assert identity.delete_access_key(ACCESS_KEY) is False
    # What the key did outlives it.
    assert identity.usage_on(ACCESS_KEY, DAY) == 3
    assert [r.event.credential_id for r in audit.audit_records()] == [ACCESS_KEY]


def test_access_keys_are_listed_per_account(identity: SqlIdentityStore) -> None:
    identity.create_account(account("acme"))
    identity.create_account(account("other"))
    mine = [f"VK{letter * 18}" for letter in "CDEFG"]
    for key_id in reversed(mine):
        identity.create_access_key(access_key(key_id))
    identity.create_access_key(access_key(ACCESS_KEY, account_id="other"))
    first = identity.list_access_keys("acme", 2, "")
    assert [k.access_key_id for k in first.items] == mine[:2]
    second = identity.list_access_keys("acme", 2, first.next_page_token)
    third = identity.list_access_keys("acme", 2, second.next_page_token)
    assert [k.access_key_id for k in second.items + third.items] == mine[2:]
    assert third.next_page_token == ""
    assert [k.access_key_id for k in identity.list_access_keys("other", 0, "").items] == [
        ACCESS_KEY
    ]
    assert identity.list_access_keys("nobody", 10, "").items == []


# --- API keys ----------------------------------------------------------------------------------


def test_api_key_round_trip(identity: SqlIdentityStore) -> None:
    identity.create_account(account())
    key = api_key(
        scopes=(
            ApiScope(frozenset({"Sign", "Encrypt", "GetKey"}), ("keys/b", "keys/a")),
            ApiScope(frozenset({"*"}), ("*",)),
        ),
        description="ci",
        expire_time=T0 + timedelta(days=30),
        rate_limit=RateLimit(2.5, 10),
        daily_quota=10_000_000_000,
    )
    assert identity.create_api_key(key) == key
    stored = identity.get_api_key(API_KEY)
    assert stored == key
    assert stored is not None and stored.scopes[0].resources == ("keys/b", "keys/a")
    plain = api_key(API_KEY_2)
    identity.create_api_key(plain)
    stored_plain = identity.get_api_key(API_KEY_2)
    assert stored_plain == plain
    assert stored_plain is not None and stored_plain.rate_limit is None
    assert stored_plain.expire_time is None and stored_plain.daily_quota == 0
    assert [k.api_key_id for k in identity.list_api_keys("acme", 1, "").items] == [API_KEY]
    with pytest.raises(AlreadyExists):
        identity.create_api_key(key)


def test_api_key_update_and_unknown_account(identity: SqlIdentityStore) -> None:
    with pytest.raises(NotFound):
        identity.create_api_key(api_key())
    identity.create_account(account())
    key = identity.create_api_key(api_key())
    revoked = identity.update_api_key(replace(key, state=CredentialState.REVOKED, daily_quota=5))
    assert revoked == replace(key, state=CredentialState.REVOKED)
    assert identity.get_api_key(API_KEY) == revoked
    with pytest.raises(NotFound):
        identity.update_api_key(api_key(API_KEY_2))


# --- usage and last use ------------------------------------------------------------------------


def test_usage_counters_add_up_and_are_ordered(
    identity: SqlIdentityStore, audit: SqlAuditStore
) -> None:
    audit.append_audit(
        [audit_event()],
        {
            (ACCESS_KEY, "2025-03-02", "Sign"): 1,
            (ACCESS_KEY, "2025-03-01", "Sign"): 2,
            (ACCESS_KEY, "2025-03-01", "Encrypt"): 3,
            (API_KEY, "2025-03-01", "Encrypt"): 100,
        },
        {},
    )
    audit.append_audit([], {(ACCESS_KEY, "2025-03-01", "Encrypt"): 4}, {})
    audit.append_audit([audit_event()], {(ACCESS_KEY, "2025-02-28", "Encrypt"): 5}, {})
    assert identity.usage(ACCESS_KEY, "2025-03-01", 0, "").items == [
        UsageCount("2025-03-01", "Encrypt", 7),
        UsageCount("2025-03-01", "Sign", 2),
        UsageCount("2025-03-02", "Sign", 1),
    ]
    assert identity.usage(ACCESS_KEY, "2025-01-01", 0, "").items[0] == UsageCount(
        "2025-02-28", "Encrypt", 5
    )
    assert identity.usage(ACCESS_KEY, "2025-03-03", 0, "").items == []
    assert identity.usage_on(ACCESS_KEY, "2025-03-01") == 9
    assert identity.usage_on(API_KEY, "2025-03-01") == 100
    assert identity.usage_on(API_KEY, "2025-03-02") == 0
    with pytest.raises(InvalidArgument):
        identity.usage(ACCESS_KEY, "3/1/2025", 0, "")


def test_usage_counters_are_read_in_pages_that_resume_after_the_last_sent(
    identity: SqlIdentityStore, audit: SqlAuditStore
) -> None:
    # Three days of five methods; the page size cuts through a day, so the token must resume
    # mid-day on the method after the last one sent, not on the next day or at an offset.
    days = ["2025-02-28", "2025-03-01", "2025-03-02"]
    # Letters only: every collation orders these alike, and the test compares with Python's.
    methods = ["Decrypt", "Encrypt", "GetKey", "Sign", "Verify"]
    counts = {
        (ACCESS_KEY, day, method): 1 + d * 10 + m
        for d, day in enumerate(days)
        for m, method in enumerate(methods)
    }
    audit.append_audit([], {**counts, (API_KEY, "2025-03-01", "Sign"): 100}, {})
    expected = [UsageCount(day, method, n) for (_, day, method), n in sorted(counts.items())]

    pages: list[Page[UsageCount]] = []
    token = ""
    while True:
        pages.append(identity.usage(ACCESS_KEY, "2025-02-28", 4, token))
        token = pages[-1].next_page_token
        if not token:
            break
    assert [len(page.items) for page in pages] == [4, 4, 4, 3]
    assert [c for page in pages for c in page.items] == expected
    # A token names the last counter sent; after a day's last method it resumes on the next.
    assert pages[1].next_page_token == encode_page_token("2025-03-01:GetKey")
    assert (
        identity.usage(ACCESS_KEY, "2025-02-28", 4, encode_page_token("2025-02-28:Verify")).items
        == expected[5:9]
    )
    # A page cut short resumes right after the last counter kept (what fit_response uses).
    assert pages[0].first(3).next_page_token == encode_page_token("2025-02-28:GetKey")
    # Writes behind the token do not shift later pages: a keyset, not an offset.
    audit.append_audit([], {(ACCESS_KEY, "2025-02-28", "Aaa"): 1}, {})
    assert (
        identity.usage(ACCESS_KEY, "2025-02-28", 4, pages[0].next_page_token).items == expected[4:8]
    )
    # The window still applies after a token; 0 is the largest page, all of these at once.
    assert (
        identity.usage(ACCESS_KEY, "2025-03-02", 100, pages[0].next_page_token).items
        == expected[10:]
    )
    whole = identity.usage(ACCESS_KEY, "2025-03-01", 0, "")
    assert whole.items == expected[5:] and whole.next_page_token == ""
    for bad in (
        "not a token!",
        encode_page_token("2025-03-01"),
        encode_page_token("yesterday:Sign"),
        encode_page_token("2025-03-01:" + "m" * 65),
    ):
        with pytest.raises(InvalidArgument) as caught:
            identity.usage(ACCESS_KEY, "2025-02-28", 4, bad)
        assert caught.value.metadata == {"field": "page_token"}


def test_usage_pages_hold_at_most_a_thousand_counters_and_0_the_whole_window(
    identity: SqlIdentityStore, audit: SqlAuditStore
) -> None:
    counts = {(ACCESS_KEY, DAY, f"m{n:04d}"): 1 for n in range(1001)}
    audit.append_audit([], counts, {})
    first = identity.usage(ACCESS_KEY, DAY, 5000, "")
    assert len(first.items) == 1000 and first.items[-1].method == "m0999"
    rest = identity.usage(ACCESS_KEY, DAY, 5000, first.next_page_token)
    assert [c.method for c in rest.items] == ["m1000"] and rest.next_page_token == ""
    # 0, as callers asked before GetUsage paged: all of it, as then.
    whole = identity.usage(ACCESS_KEY, DAY, 0, "")
    assert len(whole.items) == 1001 and whole.next_page_token == ""


def test_last_used_time_only_moves_forward(
    identity: SqlIdentityStore, audit: SqlAuditStore
) -> None:
    identity.create_account(account())
    identity.create_access_key(access_key())
    identity.create_access_key(access_key(ACCESS_KEY_2))
    identity.create_api_key(api_key())
    later = T0 + timedelta(minutes=5)
    audit.append_audit(
        [audit_event()],
        {},
        {ACCESS_KEY: later, API_KEY: T0, "VKZZZZZZZZZZZZZZZZZZ": T0, API_KEY_2: T0},
    )
    audit.append_audit([audit_event()], {}, {ACCESS_KEY: T0, API_KEY: later})
    first = identity.get_access_key(ACCESS_KEY)
    second = identity.get_access_key(ACCESS_KEY_2)
    api = identity.get_api_key(API_KEY)
    assert first is not None and first.last_used_time == later
    assert second is not None and second.last_used_time is None
    assert api is not None and api.last_used_time == later
    # A credential that does not exist is no error: it may have been deleted meanwhile.
    assert identity.get_access_key("VKZZZZZZZZZZZZZZZZZZ") is None


# --- the audit chain ---------------------------------------------------------------------------


def test_appends_extend_one_chain(audit: SqlAuditStore) -> None:
    sizes = [1, 3, 1, 5, 2]
    heads = []
    n = 0
    for size in sizes:
        events = [audit_event(n + i, at=T0 + timedelta(seconds=n + i)) for i in range(size)]
        n += size
        heads.append(audit.append_audit(events, {}, {}))
    records = list(audit.audit_records())
    assert_chain(records, sum(sizes))
    assert [head.seq for head in heads] == [1, 4, 5, 10, 12]
    by_seq = {record.seq: record for record in records}
    assert all(head.hash == by_seq[head.seq].hash for head in heads)
    assert records[3].event == audit_event(3, at=T0 + timedelta(seconds=3))
    # An empty batch changes nothing and reports the current head.
    empty = audit.append_audit([], {}, {})
    assert (empty.seq, empty.hash) == (12, records[-1].hash)
    result = verify_audit_log(audit.audit_records(), [], no_verify)
    assert result.ok and result.records_checked == 12


def test_checkpoints(audit: SqlAuditStore) -> None:
    head = audit.append_audit([audit_event(0), audit_event(1)], {}, {})
    assert (head.checkpoint_seq, head.checkpoint_time) == (0, None)
    first = Checkpoint(head.seq, head.hash, T0, b"good", "audit-1")
    audit.add_checkpoint(first)
    audit.add_checkpoint(replace(first, signature=b"other", key_label="audit-2"))
    head = audit.append_audit([audit_event(2)], {}, {})
    assert (head.checkpoint_seq, head.checkpoint_time) == (2, T0)
    second = Checkpoint(head.seq, head.hash, T0 + timedelta(minutes=1), b"good", "audit-1")
    audit.add_checkpoint(second)
    assert audit.audit_checkpoints() == [first, second]
    head = audit.append_audit([], {}, {})
    assert (head.checkpoint_seq, head.checkpoint_time) == (3, T0 + timedelta(minutes=1))
    result = verify_audit_log(audit.audit_records(), audit.audit_checkpoints(), no_verify)
    assert result.ok and result.checkpoints_checked == 2


def test_audit_records_are_streamed_in_batches(
    audit: SqlAuditStore, stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_chain_module, "READ_BATCH", 7)
    audit.append_audit([audit_event(n) for n in range(30)], {}, {})
    reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "audit_events" in statement:
            reads.append(statement)

    engine = stores.metadata._engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        stream = audit.audit_records()
        first = next(stream)
        assert first.seq == 1 and len(reads) == 1
        # Records appended while the stream is read are included.
        audit.append_audit([audit_event(30)], {}, {})
        rest = list(stream)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert_chain([first, *rest], 31)
    batches = [statement for statement in reads if "audit_events.seq >" in statement]
    assert len(batches) == 5  # 4 full batches and a short one
    assert all("LIMIT" in statement.upper() for statement in batches)


def test_list_audit_events_filters(audit: SqlAuditStore) -> None:
    events = [
        audit_event(0, at=T0, resource="accounts/acme/keys/k1"),
        audit_event(1, at=T0 + timedelta(seconds=1), resource="accounts/acme/keys/k1/versions/2"),
        audit_event(2, at=T0 + timedelta(seconds=2), resource="accounts/acme/keys/k10"),
        audit_event(3, at=T0 + timedelta(seconds=3), method=REENCRYPT, credential=API_KEY),
        audit_event(4, at=T0 + timedelta(seconds=4), method=GET_KEY, outcome="NOT_FOUND"),
        audit_event(5, at=T0 + timedelta(seconds=5), resource="accounts/acme/keys/k%"),
        audit_event(6, at=T0 + timedelta(seconds=6), method="Encrypt"),
    ]
    audit.append_audit(events, {}, {})

    def seqs(**fields: Any) -> list[int]:
        return seqs_of(audit, AuditFilter(**fields), 100)

    assert seqs() == [1, 2, 3, 4, 5, 6, 7]
    assert seqs(start_time=T0 + timedelta(seconds=2)) == [3, 4, 5, 6, 7]
    assert seqs(end_time=T0 + timedelta(seconds=2)) == [1, 2]
    assert seqs(start_time=T0 + timedelta(seconds=1), end_time=T0 + timedelta(seconds=3)) == [2, 3]
    assert seqs(credential_id=API_KEY) == [4]
    assert seqs(outcome="NOT_FOUND") == [5]
    assert seqs(resource="accounts/acme/keys/k1") == [1, 2, 4, 5, 7]
    assert seqs(resource="accounts/acme/keys/k1/versions/2") == [2]
    assert seqs(resource="accounts/acme/keys/k") == []
    assert seqs(resource="accounts/acme/keys/k%") == [6]
    assert seqs(resource="ACCOUNTS/acme/keys/k1") == []
    assert seqs(method="Encrypt") == [1, 2, 3, 6]  # not ReEncrypt, not a bare "Encrypt"
    assert seqs(method="encrypt") == []
    assert seqs(method=ENCRYPT) == [1, 2, 3, 6]
    assert seqs(method="Encrypt", resource="accounts/acme/keys/k1") == [1, 2]
    assert seqs(method="ReEncrypt", credential_id=ACCESS_KEY) == []
    assert seqs(method="GetKey", outcome="NOT_FOUND", end_time=T0 + timedelta(seconds=4)) == []
    page = audit.list_audit_events(AuditFilter(method="Encrypt"), 2, "")
    assert page.items[0].event == events[0] and page.items[1].prev_hash == page.items[0].hash


def test_list_audit_events_pages(audit: SqlAuditStore) -> None:
    audit.append_audit([audit_event(n) for n in range(1100)], {}, {})
    assert seqs_of(audit, AuditFilter(), 7) == list(range(1, 1101))
    assert seqs_of(audit, AuditFilter(), 100) == list(range(1, 1101))
    assert len(audit.list_audit_events(AuditFilter(), 0, "").items) == 100
    assert len(audit.list_audit_events(AuditFilter(), 5000, "").items) == 1000
    last = audit.list_audit_events(AuditFilter(), 1000, "")
    rest = audit.list_audit_events(AuditFilter(), 1000, last.next_page_token)
    assert [r.seq for r in rest.items] == list(range(1001, 1101)) and rest.next_page_token == ""
    for bad in ("%%%", "YWJj"):  # not base64; base64 of "abc"
        with pytest.raises(InvalidArgument):
            audit.list_audit_events(AuditFilter(), 10, bad)


def calls_of(
    audit: SqlAuditStore, audit_filter: AuditFilter, page_size: int
) -> list[Page[AuditRecord]]:
    """Every page of a listing, as the store answered them."""
    pages: list[Page[AuditRecord]] = []
    token = ""
    while True:
        page = audit.list_audit_events(audit_filter, page_size, token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages


def windowed_log(audit: SqlAuditStore) -> None:
    """45 records: key k1 but for a rare key at 4 and 28, the access key but for the API key at
    6 and 41, Encrypt but for GetKey (NOT_FOUND) at 10 and 38, one a second from T0."""
    rare_key, by_api_key, lookups = {3, 27}, {5, 40}, {9, 37}
    audit.append_audit(
        [
            audit_event(
                n,
                at=T0 + timedelta(seconds=n),
                resource="accounts/acme/keys/rare" if n in rare_key else "accounts/acme/keys/k1",
                credential=API_KEY if n in by_api_key else ACCESS_KEY,
                method=GET_KEY if n in lookups else ENCRYPT,
                outcome="NOT_FOUND" if n in lookups else "OK",
            )
            for n in range(45)
        ],
        {},
        {},
    )


def test_a_listing_call_examines_at_most_a_window_of_records(
    audit: SqlAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_chain_module, "LIST_WINDOW_RECORDS", 10)
    monkeypatch.setattr(audit_chain_module, "LIST_INDEX_RECORDS", 10)
    windowed_log(audit)
    rare = AuditFilter(resource="accounts/acme/keys/rare")
    pages = calls_of(audit, rare, 100)
    # Each call reads the next 10 sequence numbers and resumes after them; the window
    # 11-20 holds no match, so its page is empty with a token, and the last ends the listing.
    assert [[r.seq for r in page.items] for page in pages] == [[4], [], [28], [], []]
    assert [page.next_page_token for page in pages[:-1]] == [
        encode_page_token(str(end)) for end in (10, 20, 30, 40)
    ]
    assert pages[-1].next_page_token == ""
    # Full pages still end after their last record.
    assert seqs_of(audit, AuditFilter(), 3) == list(range(1, 46))
    page = audit.list_audit_events(AuditFilter(), 3, "")
    assert page.next_page_token == encode_page_token("3")
    # An indexed filter matching at most LIST_INDEX_RECORDS records in all is answered in one
    # call, through its index, whatever else is asked; one matching more is read window by
    # window.
    by_api_key = calls_of(audit, AuditFilter(credential_id=API_KEY), 1)
    assert [[r.seq for r in p.items] for p in by_api_key] == [[6], [41]]
    assert len(calls_of(audit, AuditFilter(credential_id=API_KEY, outcome="OK"), 100)) == 1
    assert len(calls_of(audit, AuditFilter(method=GET_KEY, credential_id=ACCESS_KEY), 100)) == 1
    narrow = AuditFilter(
        start_time=T0 + timedelta(seconds=25),
        end_time=T0 + timedelta(seconds=30),
        resource=rare.resource,
    )
    assert [[r.seq for r in p.items] for p in calls_of(audit, narrow, 100)] == [[28]]
    # A time range too wide for its index: the first call starts at the oldest record in the
    # range (26) instead of the oldest stored, when the range holds at most LIST_SEEK_RECORDS.
    wide = AuditFilter(start_time=T0 + timedelta(seconds=25), resource=rare.resource)
    assert [[r.seq for r in p.items] for p in calls_of(audit, wide, 100)] == [[28], []]
    monkeypatch.setattr(audit_chain_module, "LIST_SEEK_RECORDS", 19)  # the range holds 20
    assert [[r.seq for r in p.items] for p in calls_of(audit, wide, 100)] == [[], [], [28], [], []]
    empty = AuditFilter(start_time=T0 + timedelta(hours=1))
    assert [[r.seq for r in p.items] for p in calls_of(audit, empty, 100)] == [[]]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"resource": "accounts/acme/keys/rare"},
        {"outcome": "NOT_FOUND"},
        {"method": "GetKey"},
        {"method": GET_KEY},
        {"method": ENCRYPT, "credential_id": API_KEY},
        {"method": GET_KEY, "credential_id": ACCESS_KEY, "outcome": "NOT_FOUND"},
        {"credential_id": ACCESS_KEY, "resource": "accounts/acme/keys/rare"},
        {"start_time": 8, "end_time": 12},
        {"start_time": 8, "end_time": 12, "method": GET_KEY},
        {"start_time": 8, "resource": "accounts/acme/keys/rare"},
        {"end_time": 30, "credential_id": API_KEY},
    ],
)
def test_windowed_listings_list_exactly_the_matching_records(
    audit: SqlAuditStore, monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any]
) -> None:
    windowed_log(audit)
    times: dict[str, datetime] = {
        name: T0 + timedelta(seconds=fields[name])
        for name in ("start_time", "end_time")
        if name in fields
    }
    values: dict[str, Any] = {**fields, **times}
    audit_filter = AuditFilter(**values)
    expected = seqs_of(audit, audit_filter, 1000)
    assert expected == sorted(expected)
    for window, through_index, seek in ((1, 1, 1), (7, 3, 40), (10, 10, 5), (5, 100, 100)):
        monkeypatch.setattr(audit_chain_module, "LIST_WINDOW_RECORDS", window)
        monkeypatch.setattr(audit_chain_module, "LIST_INDEX_RECORDS", through_index)
        monkeypatch.setattr(audit_chain_module, "LIST_SEEK_RECORDS", seek)
        for page_size in (1, 2, 100):
            assert seqs_of(audit, audit_filter, page_size) == expected


def test_a_time_range_starts_at_its_lowest_sequence_number_whatever_the_times_order(
    audit: SqlAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record times are not in sequence order: a record stamped late (a host's clock ahead,
    or a request that ended late) sits among older ones, and a time range still lists it."""
    monkeypatch.setattr(audit_chain_module, "LIST_WINDOW_RECORDS", 10)
    monkeypatch.setattr(audit_chain_module, "LIST_INDEX_RECORDS", 2)
    audit.append_audit(
        [
            audit_event(n, at=T0 + (timedelta(hours=1) if n == 2 else timedelta(seconds=n)))
            for n in range(30)
        ],
        {},
        {},
    )
    late = AuditFilter(start_time=T0 + timedelta(seconds=25))
    assert seqs_of(audit, late, 100) == [3, 26, 27, 28, 29, 30]
    # Its first call starts at record 3, the lowest in the range, not at the earliest time
    # (26): that would lose record 3.
    assert [r.seq for r in audit.list_audit_events(late, 100, "").items] == [3]


def test_the_first_window_starts_at_the_oldest_stored_record(
    audit: SqlAuditStore, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After archiving moved records 1-20 out, a listing does not walk their numbers."""
    monkeypatch.setattr(audit_chain_module, "LIST_WINDOW_RECORDS", 10)
    windowed_log(audit)
    execute(url, "DELETE FROM audit_events WHERE seq <= 20")
    pages = calls_of(audit, AuditFilter(resource="accounts/acme/keys/rare"), 100)
    assert [[r.seq for r in page.items] for page in pages] == [[28], [], []]


def test_a_window_token_resumes_after_the_window_and_bad_tokens_are_refused(
    audit: SqlAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_chain_module, "LIST_WINDOW_RECORDS", 10)
    windowed_log(audit)
    rare = AuditFilter(resource="accounts/acme/keys/rare")

    def listed(audit_filter: AuditFilter, after: str) -> tuple[list[int], str]:
        page = audit.list_audit_events(audit_filter, 100, encode_page_token(after))
        return [r.seq for r in page.items], page.next_page_token

    # A window's token is a sequence number like any other: any listing continues after it.
    assert listed(rare, "10") == ([], encode_page_token("20"))
    assert listed(rare, "27") == ([28], encode_page_token("37"))
    assert listed(AuditFilter(), "10") == (list(range(11, 21)), encode_page_token("20"))
    assert listed(AuditFilter(), "40") == ([41, 42, 43, 44, 45], "")
    assert listed(rare, "45") == ([], "")
    assert listed(rare, "1000") == ([], "")
    for bad in ("-1", "1e3", "20 ", "9" * 20):
        with pytest.raises(InvalidArgument):
            audit.list_audit_events(rare, 10, encode_page_token(bad))


def test_checkpointers_of_separate_stores_take_turns(url: str) -> None:
    """Two stores on one database, as two hosts (or two processes of one) have: while one
    holds the checkpoint lock, the other's attempt fails at once and a waiting one waits."""
    first, second = open_stores(url), open_stores(url)
    acquired = threading.Event()
    try:
        with first.audit.checkpoint_lock(wait=False) as held:
            assert held
            with second.audit.checkpoint_lock(wait=False) as other:
                assert not other

            def wait_for_it() -> None:
                with second.audit.checkpoint_lock(wait=True) as waited:
                    assert waited
                    acquired.set()

            waiter = threading.Thread(target=wait_for_it)
            waiter.start()
            assert not acquired.wait(0.5)
        waiter.join(timeout=30)
        assert acquired.is_set()
        # Released again: both may take it in turn, and appends go on meanwhile.
        with second.audit.checkpoint_lock(wait=False) as held:
            assert held
            assert first.audit.append_audit([audit_event(0)], {}, {}).seq == 1
        with first.audit.checkpoint_lock(wait=False) as held:
            assert held
    finally:
        first.close()
        second.close()


# --- failures ----------------------------------------------------------------------------------


def test_failed_append_commits_nothing(
    identity: SqlIdentityStore, audit: SqlAuditStore, url: str
) -> None:
    identity.create_account(account())
    identity.create_access_key(access_key())
    before = audit.append_audit([audit_event(0)], {(ACCESS_KEY, DAY, "Encrypt"): 1}, {})
    refuse_inserts(url, "audit_events")
    secret = replace(audit_event(1), request_id="REQUEST-ID-NOT-TO-LEAK")
    with pytest.raises(AuditUnavailable) as caught:
        audit.append_audit(
            [secret],
            {(ACCESS_KEY, DAY, "Encrypt"): 1, (ACCESS_KEY, DAY, "Sign"): 1},
            {ACCESS_KEY: T0 + timedelta(hours=1)},
        )
    error = caught.value
    assert error.message == "the audit log cannot be written"
    rendered = f"{error} {error.metadata} {error.__cause__!s}"
    assert "REQUEST-ID-NOT-TO-LEAK" not in rendered and ACCESS_KEY not in rendered
    records = list(audit.audit_records())
    assert len(records) == 1 and records[0].hash == before.hash
    assert identity.usage(ACCESS_KEY, DAY, 0, "").items == [UsageCount(DAY, "Encrypt", 1)]
    stored = identity.get_access_key(ACCESS_KEY)
    assert stored is not None and stored.last_used_time is None


def test_failed_usage_write_drops_the_records_too(
    identity: SqlIdentityStore, audit: SqlAuditStore, url: str
) -> None:
    audit.append_audit([audit_event(0)], {}, {})
    refuse_inserts(url, "usage_counters")
    with pytest.raises(AuditUnavailable):
        audit.append_audit([audit_event(1), audit_event(2)], {(API_KEY, DAY, "Sign"): 1}, {})
    assert [record.seq for record in audit.audit_records()] == [1]
    # The chain goes on from the last committed record.
    head = audit.append_audit([audit_event(3)], {}, {})
    assert head.seq == 2
    assert_chain(list(audit.audit_records()), 2)


def test_a_lost_postgresql_connection_fails_one_append_and_the_chain_goes_on(
    postgres: Any,
) -> None:
    # A database of its own: ending every other session of it leaves other tests' alone.
    url = postgres.new_database_url()
    opened = open_stores(url)
    try:
        audit = opened.audit
        audit.append_audit([audit_event(0)], {}, {})
        # What a restart or failover of the database does to every open session.
        execute(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database()",
        )
        with pytest.raises(AuditUnavailable):
            audit.append_audit([audit_event(1)], {}, {})
        assert audit.append_audit([audit_event(2)], {}, {}).seq == 2
        assert_chain(list(audit.audit_records()), 2)
    finally:
        opened.close()


def test_naive_time_is_refused_before_anything_is_written(audit: SqlAuditStore) -> None:
    naive = replace(audit_event(0), occurred_at=datetime(2025, 3, 1, 12, 0))
    with pytest.raises(AuditUnavailable):
        audit.append_audit([audit_event(1), naive], {}, {})
    assert list(audit.audit_records()) == []


def test_tampered_rows_are_read_and_reported(sqlite_audit: SqlAuditStore, db_path: Path) -> None:
    # Values of the wrong type fit only SQLite's columns; PostgreSQL refuses to store them.
    audit = sqlite_audit
    audit.append_audit([audit_event(n) for n in range(5)], {}, {})
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE audit_events SET occurred_at = 'yesterday' WHERE seq = 2")
        conn.execute("UPDATE audit_events SET resource = 42 WHERE seq = 4")
    conn.close()
    records = list(audit.audit_records())
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    result = verify_audit_log(records, [], no_verify)
    assert [(f.kind.value, f.seq) for f in result.findings] == [("MODIFIED", 2), ("MODIFIED", 4)]


def test_damaged_head_stops_appends(audit: SqlAuditStore, url: str) -> None:
    audit.append_audit([audit_event(0)], {}, {})
    execute(url, "UPDATE audit_events SET hash = :damaged WHERE seq = 1", damaged=b"\x00")
    with pytest.raises(AuditUnavailable):
        audit.append_audit([audit_event(1)], {}, {})


# --- several processes -------------------------------------------------------------------------


def _append_in_forked_child(url: str, worker: int, start: Any, results: Any) -> None:
    # Forked from the test process: builds its own stores, as a server worker does.
    try:
        opened = open_stores(url)
        try:
            rng = random.Random(worker)
            start.wait(timeout=60)
            done = 0
            while done < 200:
                size = min(rng.randint(1, 5), 200 - done)
                events = [
                    audit_event(done + i, source=f"worker-{worker}", credential=ACCESS_KEY)
                    for i in range(size)
                ]
                used = T0 + timedelta(seconds=worker * 1000 + done + size - 1)
                opened.audit.append_audit(
                    events, {(ACCESS_KEY, DAY, f"m{worker}"): size}, {ACCESS_KEY: used}
                )
                done += size
        finally:
            opened.close()
        results.put((worker, "ok"))
    except BaseException as exc:
        results.put((worker, f"{type(exc).__name__}: {exc}"))


def test_forked_processes_append_to_one_chain(url: str, backend: str, db_path: Path) -> None:
    parent = open_stores(url)
    try:
        parent.identity.create_account(account())
        parent.identity.create_access_key(access_key())
        ctx = multiprocessing.get_context("fork")
        start = ctx.Barrier(4)
        results = ctx.Queue()
        processes = [
            ctx.Process(target=_append_in_forked_child, args=(url, n, start, results))
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

        records = list(parent.audit.audit_records())
        assert_chain(records, 800)
        for worker in range(4):
            mine = [r.event.request_id for r in records if r.event.source == f"worker-{worker}"]
            assert mine == [f"req-{n}" for n in range(200)]
        assert verify_audit_log(records, [], no_verify).ok
        usage = parent.identity.usage(ACCESS_KEY, DAY, 0, "").items
        assert usage == [UsageCount(DAY, f"m{worker}", 200) for worker in range(4)]
        key = parent.identity.get_access_key(ACCESS_KEY)
        assert key is not None and key.last_used_time == T0 + timedelta(seconds=3000 + 199)
        if backend == "sqlite":
            lock_file = Path(str(db_path) + LOCK_SUFFIX)
            assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    finally:
        parent.close()


def _append_when_told(url: str, orders: Any) -> None:
    # Forked: its own stores, as a server worker's. Appends one record per order, then says
    # which seq and checkpoint it saw; None ends it.
    opened = open_stores(url)
    try:
        while (n := orders.recv()) is not None:
            head = opened.audit.append_audit([audit_event(n, source="child")], {}, {})
            orders.send((head.seq, head.checkpoint_seq))
    finally:
        opened.close()


def test_processes_appending_in_turn_keep_one_chain(url: str) -> None:
    """Each appender may keep the head it wrote for its next append only while nothing else
    was committed meanwhile: here every append of one process follows one of the other's,
    and a checkpoint added by a third connection is seen by the next append of either."""
    parent = open_stores(url)
    ctx = multiprocessing.get_context("fork")
    orders, child_end = ctx.Pipe()
    child = ctx.Process(target=_append_when_told, args=(url, child_end))
    try:
        child.start()
        child_end.close()
        checkpoint_at = 0
        for turn in range(0, 40, 2):
            head = parent.audit.append_audit([audit_event(turn, source="parent")], {}, {})
            assert (head.seq, head.checkpoint_seq) == (turn + 1, checkpoint_at)
            orders.send(turn + 1)
            assert orders.recv() == (turn + 2, checkpoint_at)
            if turn == 20:
                third = open_stores(url)
                try:
                    (latest,) = third.audit.audit_records(after=turn + 1)
                    third.audit.add_checkpoint(
                        Checkpoint(latest.seq, latest.hash, T0, b"good", "audit-1")
                    )
                finally:
                    third.close()
                checkpoint_at = turn + 2
        orders.send(None)
        child.join(timeout=30)
        assert child.exitcode == 0
        records = list(parent.audit.audit_records())
        assert_chain(records, 40)
        assert [r.event.source for r in records] == ["parent", "child"] * 20
        assert verify_audit_log(records, parent.audit.audit_checkpoints(), no_verify).ok
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        orders.close()
        parent.close()


def _wait_for_inherited_lock(store: SqlAuditStore, acquired: Any) -> None:
    with store._chain._append_lock.held():
        acquired.put(os.getpid())


def test_a_forked_child_does_not_share_the_parents_append_lock(
    sqlite_audit: SqlAuditStore,
) -> None:
    """A child that inherits the store must still be excluded while the parent appends: an
    inherited descriptor would share the parent's flock (and a parent thread may have held the
    thread lock at the moment of the fork)."""
    audit = sqlite_audit
    audit.append_audit([audit_event(0)], {}, {})  # the parent has its lock file open
    ctx = multiprocessing.get_context("fork")
    acquired = ctx.Queue()
    child = None
    try:
        with audit._chain._append_lock.held():
            child = ctx.Process(target=_wait_for_inherited_lock, args=(audit, acquired))
            child.start()
            with pytest.raises(queue.Empty):
                acquired.get(timeout=0.5)
        assert acquired.get(timeout=10) == child.pid
        child.join(timeout=10)
        assert child.exitcode == 0
    finally:
        if child is not None:
            if child.is_alive():
                child.kill()
                child.join()
            child.close()
        acquired.close()
        acquired.join_thread()
    # And the parent's own lock still works afterwards.
    started = time.monotonic()
    assert audit.append_audit([audit_event(1)], {}, {}).seq == 2
    assert time.monotonic() - started < 5
