"""ListAuditEvents on a log longer than one call examines: a filter that no index narrows
pages through windows of the log, each call answering what its window holds (nothing, for a
window without a match, with a token that goes on), and the SDK and `vaultctl audit list`
follow the tokens to exactly the matching records, in order.

The log is made long cheaply: records chained onto the head are written into the server's
SQLite file behind its back (under the appenders' lock), as a busy vault would have appended
them, so the server's checkpoints still find an intact chain.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import pytest
from click.testing import CliRunner

from tests.support.cli_env import CLEAN_CLI_ENV
from tests.support.harness import VaultServer
from tests.support.security_helpers import AccessKey, add_access_key, new_account, own_server
from vault.cli.main import cli as vaultctl
from vault.client import VaultClient
from vault.domain.audit import AuditEvent, chain
from vault.gen.vault.v1 import resources_pb2
from vault.storage.audit_chain import LIST_WINDOW_RECORDS, record_row
from vault.storage.audit_locks import LOCK_SUFFIX

GET_KEY: Final = "/vault.v1.KeyService/GetKey"
# Enough records between the two groups of calls that a whole window holds none of them.
FILLER: Final = 2 * LIST_WINDOW_RECORDS


@dataclass(frozen=True, slots=True)
class LongLog:
    server: VaultServer
    access_key: AccessKey
    key: str
    # (seq, method, outcome) of every record naming key, before and after the filler
    before: list[tuple[int, str, str]]
    after: list[tuple[int, str, str]]


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    yield from own_server(tmp_path_factory, "audit-listing")


@pytest.fixture(scope="module")
def admin(vault: VaultServer) -> Iterator[VaultClient]:
    with vault.client() as client:
        yield client


def fill(server: VaultServer, count: int) -> None:
    """Append count records of another caller, chained onto the head, in one transaction."""
    db = server.data_dir / "vault.db"
    with (
        (db.parent / f"{db.name}{LOCK_SUFFIX}").open("a") as lock,
        closing(sqlite3.connect(db, timeout=30, isolation_level=None)) as conn,
    ):
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        conn.execute("BEGIN IMMEDIATE")
        seq, head = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC").fetchone()
        event = AuditEvent(
            occurred_at=datetime.now(UTC),
            request_id="filler",
            credential_id="AKFILLER",
            account="filler",
            method=GET_KEY,
            resource="accounts/filler/keys/other",
            outcome="OK",
            reason="",
            latency_us=100,
            source="test",
        )
        conn.executemany(
            "INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record_row(record) for record in chain(head, seq + 1, [event] * count)),
        )
        conn.execute("COMMIT")


def of_key(events: list[resources_pb2.AuditEvent]) -> list[tuple[int, str, str]]:
    return [(e.sequence, e.method.rsplit("/", 1)[-1], e.outcome) for e in events]


@pytest.fixture(scope="module")
def long_log(vault: VaultServer, admin: VaultClient) -> LongLog:
    account = new_account(admin)
    access_key = add_access_key(admin, account)
    key = f"{account}/keys/k"
    with vault.client(access_key.credentials) as client:
        client.create_key(account, "k", "ENCRYPT_DECRYPT")
        sealed = client.encrypt(key, b"secret").ciphertext
        fill(vault, FILLER)
        client.decrypt(key, sealed)
        client.disable_key(key)
    mine = list(admin.iter_audit_events(credential_id=access_key.key_id))
    split = next(i for i, e in enumerate(mine) if e.method.endswith("/Decrypt"))
    before, after = of_key(mine[:split]), of_key(mine[split:])
    assert [m for _, m, _ in before] == ["CreateKey", "CreateKey", "Encrypt"]
    assert [m for _, m, _ in after] == ["Decrypt", "DisableKey", "DisableKey"]
    assert after[0][0] - before[-1][0] > FILLER
    return LongLog(vault, access_key, key, before, after)


def pages_of(admin: VaultClient, page_size: int, **filters: Any) -> list[list[int]]:
    """The sequence numbers of each page of a listing, following its tokens to the end."""
    pages: list[list[int]] = []
    token = ""
    while True:
        page = admin.list_audit_events(**filters, page_size=page_size, page_token=token)
        pages.append([e.sequence for e in page.events])
        token = page.next_page_token
        if not token:
            return pages


def test_a_filter_no_index_narrows_pages_through_the_log_window_by_window(
    admin: VaultClient, long_log: LongLog
) -> None:
    expected = [seq for seq, _, _ in long_log.before + long_log.after]
    pages = pages_of(admin, 1000, resource=long_log.key)
    assert [seq for page in pages for seq in page] == expected
    # No call examines more than a window: the filler's windows come back empty, each with
    # a token that goes on, and the records after them come in a later call.
    assert pages[0] == [seq for seq, _, _ in long_log.before]
    assert [] in pages
    assert pages[-1] == [seq for seq, _, _ in long_log.after][-len(pages[-1]) :]
    last = max(seq for seq, _, _ in long_log.after)
    assert len(pages) >= -(-last // LIST_WINDOW_RECORDS)
    # Small pages end after their last record; the windows do not change what is listed.
    assert [seq for page in pages_of(admin, 2, resource=long_log.key) for seq in page] == (expected)
    assert of_key(list(admin.iter_audit_events(resource=long_log.key, outcome="OK"))) == [
        r for r in long_log.before + long_log.after if r[2] == "OK"
    ]


def test_a_rarely_matching_indexed_filter_is_answered_in_one_call(
    admin: VaultClient, long_log: LongLog
) -> None:
    pages = pages_of(admin, 1000, credential_id=long_log.access_key.key_id)
    assert pages == [[seq for seq, _, _ in long_log.before + long_log.after]]


def test_vaultctl_lists_across_empty_windows_and_resumes_with_its_token(
    long_log: LongLog,
) -> None:
    credentials = long_log.server.data_dir / "admin-credentials.json"
    argv = ["--target", long_log.server.target, "--credentials-file", str(credentials), "--json"]

    def listed(*args: str) -> dict[str, object]:
        result = CliRunner().invoke(
            vaultctl,
            [*argv, "audit", "list", "--key", long_log.key, *args],
            env=CLEAN_CLI_ENV,
            prog_name="vaultctl",
        )
        assert result.exit_code == 0, result.output
        value: dict[str, object] = json.loads(result.stdout)
        return value

    everything = listed()
    assert of_key_records(everything) == long_log.before + long_log.after
    assert everything["next_page_token"] == ""
    # --limit stops once it has that many records, however many empty windows that took.
    count = len(long_log.before) + 1
    first = listed("--limit", str(count))
    assert of_key_records(first) == (long_log.before + long_log.after)[:count]
    rest = listed("--page-token", str(first["next_page_token"]))
    assert of_key_records(rest) == long_log.after[1:]


def of_key_records(listing: dict[str, object]) -> list[tuple[int, str, str]]:
    events = listing["events"]
    assert isinstance(events, list)
    return [(e["sequence"], e["method"].rsplit("/", 1)[-1], e["outcome"]) for e in events]
