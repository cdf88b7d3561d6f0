"""The audit log end to end: every call recorded with who, what and how it ended, and nothing
secret; the hash chain checked independently of the vault; tampering with the SQLite file
behind the running server's back found by VerifyAuditLog as the kind
vault.domain.audit_verification documents, at the right sequence; and a log that cannot be
written stops the calls it would record.

The tampering tests edit `<data_dir>/vault.db` with the sqlite3 module while the server runs,
each on a server of its own running on a copy of one prepared data directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from click.testing import CliRunner, Result

from tests.support.api_calls import expect_error
from tests.support.cli_env import CLEAN_CLI_ENV
from tests.support.harness import VaultServer, provision
from tests.support.security_helpers import (
    SPREAD,
    AccessKey,
    ApiKey,
    add_access_key,
    add_api_key,
    expect_unauthenticated,
    new_account,
    own_server,
    raw_call,
    signed_metadata,
)
from vault.cli.main import cli as vaultctl
from vault.client import AccessKeyCredentials, AuditLogVerification, VaultClient
from vault.domain.audit import AuditEvent, chain
from vault.gen.vault.v1 import audit_service_pb2, key_service_pb2, resources_pb2
from vault.storage.audit_locks import LOCK_SUFFIX

Kind = audit_service_pb2.AuditFindingKind
CHECKPOINT_EVERY: Final = 5
GET_KEY: Final = "/vault.v1.KeyService/GetKey"
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS: Final = (
    "seq",
    "occurred_at",
    "request_id",
    "credential_id",
    "account",
    "method",
    "resource",
    "outcome",
    "reason",
    "latency_us",
    "source",
    "prev_hash",
    "hash",
)
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Seeded:
    """Calls made by one access key between started and finished, as the log must show them:
    (method short name, outcome, resource), in order."""

    server: VaultServer
    account: str
    access_key: AccessKey
    api_key: ApiKey
    plaintext: bytes
    key: str
    sibling: str
    signing: str
    started: datetime
    middle: datetime
    finished: datetime
    expected: list[tuple[str, str, str]]
    before_middle: int  # how many of expected were recorded before `middle`


TAMPER_ENV: Final = {
    "VAULT_AUDIT__CHECKPOINT_EVERY_RECORDS": str(CHECKPOINT_EVERY),
    "VAULT_AUTH__MAX_FAILURES_PER_ADDRESS": "100000",
}


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    yield from own_server(tmp_path_factory, "audit", TAMPER_ENV)


@pytest.fixture(scope="module")
def admin(vault: VaultServer) -> Iterator[VaultClient]:
    with vault.client() as client:
        yield client


@pytest.fixture(scope="module")
def seeded(vault: VaultServer, admin: VaultClient) -> Seeded:
    account = new_account(admin)
    other = new_account(admin)
    access_key = add_access_key(admin, account)
    api_key = add_api_key(admin, account, [(["*"], ["*"])])
    plaintext = secrets.token_bytes(32)
    key, sibling, signing = (f"{account}/keys/{k}" for k in ("k", "k-2", "s"))
    expected: list[tuple[str, str, str]] = []

    def done(method: str, outcome: str, resource: str, mutating: bool = False) -> None:
        if mutating:
            expected.append((method, "STARTED", resource))
        expected.append((method, outcome, resource))

    started = datetime.now(UTC)
    with vault.client(access_key.credentials) as client:
        client.create_key(account, "k", "ENCRYPT_DECRYPT")
        done("CreateKey", "OK", key, mutating=True)
        client.create_key(account, "k-2", "ENCRYPT_DECRYPT")
        done("CreateKey", "OK", sibling, mutating=True)
        client.create_key(account, "s", "SIGN_VERIFY")
        done("CreateKey", "OK", signing, mutating=True)
        sealed = client.encrypt(key, plaintext).ciphertext
        done("Encrypt", "OK", key)
        assert client.decrypt(key, sealed).plaintext == plaintext
        done("Decrypt", "OK", key)
        time.sleep(0.01)
        middle = datetime.now(UTC)
        time.sleep(0.01)
        before_middle = len(expected)
        client.re_encrypt(key, sealed)
        done("ReEncrypt", "OK", key)
        client.get_public_key(f"{signing}/versions/1")
        done("GetPublicKey", "OK", f"{signing}/versions/1")
        expect_error(
            grpc.StatusCode.NOT_FOUND, "NOT_FOUND", lambda: client.get_key(f"{account}/keys/nope")
        )
        done("GetKey", "NOT_FOUND", f"{account}/keys/nope")
        expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
            lambda: client.get_key(f"{other}/keys/theirs"),
        )
        done("GetKey", "PERMISSION_DENIED", f"{other}/keys/theirs")
        client.disable_key(key)
        done("DisableKey", "OK", key, mutating=True)
        expect_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            "WRONG_KEY_STATE",
            lambda: client.encrypt(key, plaintext),
        )
        done("Encrypt", "FAILED_PRECONDITION", key)
        client.enable_key(key)
        done("EnableKey", "OK", key, mutating=True)
    with vault.client(api_key.credentials) as by_api_key:
        by_api_key.get_key(key)
    finished = datetime.now(UTC)
    return Seeded(
        server=vault,
        account=account,
        access_key=access_key,
        api_key=api_key,
        plaintext=plaintext,
        key=key,
        sibling=sibling,
        signing=signing,
        started=started,
        middle=middle,
        finished=finished,
        expected=expected,
        before_middle=before_middle,
    )


def short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def summary(events: list[resources_pb2.AuditEvent]) -> list[tuple[str, str, str]]:
    return [(short(e.method), e.outcome, e.resource) for e in events]


def of(admin: VaultClient, seeded: Seeded, **filters: Any) -> list[resources_pb2.AuditEvent]:
    return list(admin.iter_audit_events(credential_id=seeded.access_key.key_id, **filters))


# -- what is recorded -----------------------------------------------------------------------


def test_every_call_is_recorded_in_order(admin: VaultClient, seeded: Seeded) -> None:
    events = of(admin, seeded)

    assert summary(events) == seeded.expected
    account_id = seeded.account.removeprefix("accounts/")
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences))
    for event in events:
        assert event.credential_id == seeded.access_key.key_id
        assert event.account == account_id
        assert event.source.startswith("ipv4:127.0.0.1")
        assert event.request_id
        if event.outcome in ("OK", "STARTED"):
            assert event.reason == ""
    failed = [e for e in events if e.outcome not in ("OK", "STARTED")]
    assert [e.reason for e in failed] == ["NOT_FOUND", "PERMISSION_DENIED", "WRONG_KEY_STATE"]
    # The attempt and the outcome of one mutating call share its request id.
    started = [i for i, e in enumerate(events) if e.outcome == "STARTED"]
    for i in started:
        assert events[i + 1].request_id == events[i].request_id
        assert events[i + 1].method == events[i].method


def test_calls_with_an_api_key_are_recorded_under_its_id(
    admin: VaultClient, seeded: Seeded
) -> None:
    events = list(admin.iter_audit_events(credential_id=seeded.api_key.api_key_id))
    assert summary(events) == [("GetKey", "OK", seeded.key)]


def test_filters_select_by_method_outcome_and_resource(admin: VaultClient, seeded: Seeded) -> None:
    # A short method name matches the whole last part only: Encrypt is not ReEncrypt.
    assert summary(of(admin, seeded, method="Encrypt")) == [
        ("Encrypt", "OK", seeded.key),
        ("Encrypt", "FAILED_PRECONDITION", seeded.key),
    ]
    assert summary(of(admin, seeded, method="/vault.v1.CryptoService/Encrypt")) == summary(
        of(admin, seeded, method="Encrypt")
    )
    assert of(admin, seeded, method="crypt") == []
    assert summary(of(admin, seeded, outcome="STARTED")) == [
        e for e in seeded.expected if e[1] == "STARTED"
    ]
    assert summary(of(admin, seeded, outcome="NOT_FOUND")) == [
        ("GetKey", "NOT_FOUND", f"{seeded.account}/keys/nope")
    ]
    assert summary(of(admin, seeded, method="GetKey", outcome="PERMISSION_DENIED")) == [
        e for e in seeded.expected if e[:2] == ("GetKey", "PERMISSION_DENIED")
    ]
    # A key's records, not its sibling's whose name it prefixes.
    assert summary(of(admin, seeded, resource=seeded.key)) == [
        e for e in seeded.expected if e[2] == seeded.key
    ]
    # A key's records include those naming one of its versions.
    assert summary(of(admin, seeded, resource=seeded.signing)) == [
        ("CreateKey", "STARTED", seeded.signing),
        ("CreateKey", "OK", seeded.signing),
        ("GetPublicKey", "OK", f"{seeded.signing}/versions/1"),
    ]


def test_filters_select_by_time_range(admin: VaultClient, seeded: Seeded) -> None:
    everything = of(admin, seeded, start_time=seeded.started, end_time=seeded.finished)
    earlier = of(admin, seeded, start_time=seeded.started, end_time=seeded.middle)
    later = of(admin, seeded, start_time=seeded.middle)

    assert summary(everything) == seeded.expected
    assert summary(earlier) == seeded.expected[: seeded.before_middle]
    assert summary(later) == seeded.expected[seeded.before_middle :]
    assert of(admin, seeded, end_time=seeded.started) == []
    assert of(admin, seeded, start_time=seeded.finished + timedelta(seconds=1)) == []


def test_pages_follow_one_another_without_gaps(admin: VaultClient, seeded: Seeded) -> None:
    pages: list[list[resources_pb2.AuditEvent]] = []
    token = ""
    while True:
        page = admin.list_audit_events(
            credential_id=seeded.access_key.key_id, page_size=3, page_token=token
        )
        pages.append(list(page.events))
        token = page.next_page_token
        if not token:
            break
    assert all(len(page) <= 3 for page in pages)
    assert len(pages) == -(-len(seeded.expected) // 3)
    assert summary([e for page in pages for e in page]) == seeded.expected
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        lambda: admin.list_audit_events(page_token="not a token"),
    )


def test_failed_authentication_is_recorded_without_a_credential(
    admin: VaultClient, seeded: Seeded
) -> None:
    body = key_service_pb2.GetKeyRequest(name=seeded.key).SerializeToString()
    target = seeded.server.target
    anonymous, impostor = f"anon-{secrets.token_hex(8)}", f"impostor-{secrets.token_hex(8)}"
    expect_unauthenticated(lambda: raw_call(target, GET_KEY, body, [("x-request-id", anonymous)]))
    # Naming a real key id with the wrong secret: the record must not credit that key.
    guess = AccessKeyCredentials(seeded.access_key.key_id, secrets.token_urlsafe(32))
    metadata = [*signed_metadata(guess, GET_KEY, body), ("x-request-id", impostor)]
    expect_unauthenticated(lambda: raw_call(target, GET_KEY, body, metadata))

    events = {
        e.request_id: e for e in admin.iter_audit_events(method="GetKey", outcome="UNAUTHENTICATED")
    }
    for request_id in (anonymous, impostor):
        event = events[request_id]
        assert (event.credential_id, event.account) == ("", "")
        assert (event.outcome, event.reason) == ("UNAUTHENTICATED", "UNAUTHENTICATED")
        assert event.method == GET_KEY
    assert impostor not in {e.request_id for e in of(admin, seeded)}


def test_no_secret_reaches_the_log_or_the_store(admin: VaultClient, seeded: Seeded) -> None:
    secrets_used = [
        seeded.access_key.credentials.secret_key.encode("ascii"),
        seeded.api_key.token.encode("ascii"),
        seeded.api_key.token.split("_")[2].encode("ascii"),
        seeded.server.credentials.secret_key.encode("ascii"),
        seeded.plaintext,
        seeded.plaintext.hex().encode("ascii"),
    ]
    log = b"".join(e.SerializeToString() for e in admin.iter_audit_events())
    assert seeded.access_key.key_id.encode("ascii") in log
    for secret in secrets_used:
        assert secret not in log
    for path in sorted(seeded.server.data_dir.glob("vault.db*")):
        data = path.read_bytes()
        for secret in secrets_used:
            assert secret not in data, path


# -- the chain ------------------------------------------------------------------------------


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _integer(value: int) -> bytes:
    return _field(value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def documented_hash(event: resources_pb2.AuditEvent) -> bytes:
    """A record's hash as vault.domain.audit.record_hash documents the encoding, written out
    here again so that the vault's implementation is checked rather than reused."""
    micros = event.time.seconds * 1_000_000 + event.time.nanos // 1000
    texts = (
        event.request_id,
        event.credential_id,
        event.account,
        event.method,
        event.resource,
        event.outcome,
        event.reason,
    )
    encoded = b"".join(
        (
            _field(b"vault-audit-v1"),
            _field(event.previous_hash),
            _integer(micros),
            *(_field(text.encode("utf-8")) for text in texts),
            _integer(event.latency_micros),
            _field(event.source.encode("utf-8")),
            _integer(event.sequence),
        )
    )
    return hashlib.sha256(encoded).digest()


def test_the_log_is_an_unbroken_chain_of_documented_hashes(
    admin: VaultClient, seeded: Seeded
) -> None:
    events = list(admin.iter_audit_events())
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    previous = bytes(32)
    for event in events:
        assert event.previous_hash == previous, event.sequence
        assert event.hash == documented_hash(event), event.sequence
        previous = event.hash


def test_a_clean_log_verifies(admin: VaultClient, seeded: Seeded) -> None:
    last = list(admin.iter_audit_events())[-1].sequence
    result = admin.verify_audit_log()
    assert result.ok, result.findings
    assert list(result.findings) == []
    assert result.last_sequence == result.records_checked >= last + 1
    assert result.checkpoints_checked >= last // CHECKPOINT_EVERY - 1


def run_cli(server: VaultServer, *args: str) -> Result:
    """`vaultctl --target <server> args...` in this process, as the server's admin."""
    credentials = server.data_dir / "admin-credentials.json"
    argv = ["--target", server.target, "--credentials-file", str(credentials)]
    return CliRunner().invoke(vaultctl, [*argv, *args], env=CLEAN_CLI_ENV, prog_name="vaultctl")


def test_concurrent_checkpoints_in_every_worker_keep_extending_the_anchor(
    vault: VaultServer, admin: VaultClient, seeded: Seeded
) -> None:
    """Threads of both workers append at once and each worker checkpoints every few records:
    a worker that finds the anchor already past its head leaves it, nobody finds the chain
    broken, and no call is refused."""
    with tampering(vault) as conn:
        heads_before = len(checkpoint_heads(conn))

    def calls(index: int) -> int:
        with vault.client() as client:
            for _ in range(15):
                client.get_key(seeded.key)
        return index

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sorted(pool.map(calls, range(16))) == list(range(16))
    with tampering(vault) as conn:
        # How many depends on how long each takes under load: a worker finding another
        # checkpointing skips. At least one was signed while appends raced.
        assert len(checkpoint_heads(conn)) > heads_before
    assert verify_after(admin) == []
    assert "does not extend" not in vault.log()


# -- tampering with the database ------------------------------------------------------------


@contextmanager
def append_lock(db: Path) -> Iterator[None]:
    """Hold the lock the server's appenders take, so no append interleaves with an edit."""
    with (db.parent / f"{db.name}{LOCK_SUFFIX}").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextmanager
def tampering(server: VaultServer) -> Iterator[sqlite3.Connection]:
    """A connection to the server's database, as someone with the file would open it."""
    db = server.data_dir / "vault.db"
    with closing(sqlite3.connect(db, timeout=30, isolation_level=None)) as conn:
        assert tuple(c[1] for c in conn.execute("PRAGMA table_info(audit_events)")) == COLUMNS
        yield conn


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def edit(server: VaultServer, conn: sqlite3.Connection, *statements: tuple[str, Row]) -> None:
    with append_lock(server.data_dir / "vault.db"):
        conn.execute("BEGIN IMMEDIATE")
        for sql, parameters in statements:
            conn.execute(sql, parameters)
        conn.execute("COMMIT")


def row(conn: sqlite3.Connection, seq: int) -> Row:
    found = conn.execute("SELECT * FROM audit_events WHERE seq = ?", (seq,)).fetchone()
    assert found is not None
    return tuple(found)


def last_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0])


def checkpoint_heads(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT head_seq FROM audit_checkpoints ORDER BY 1")]


def middle_seq(conn: sqlite3.Connection) -> int:
    """A seq in the middle of the log with no checkpoint on it or its neighbours, so an edit
    there is found by the chain alone."""
    heads = set(checkpoint_heads(conn))
    last = last_seq(conn)
    for seq in range(last // 2, last - 3):
        if not heads & set(range(seq - 1, seq + 3)):
            return seq
    raise AssertionError(f"no seq clear of checkpoints among {last}: {sorted(heads)}")


def findings(result: AuditLogVerification) -> list[tuple[str, int]]:
    return [
        (Kind.Name(f.kind).removeprefix("AUDIT_FINDING_KIND_"), f.sequence) for f in result.findings
    ]


def set_columns(seq: int, values: Row) -> tuple[str, Row]:
    """UPDATE statement giving row seq every column of values but the seq."""
    assignments = ", ".join(f"{column} = ?" for column in COLUMNS[1:])
    return f"UPDATE audit_events SET {assignments} WHERE seq = ?", (*values[1:], seq)


def event_of(stored: Row) -> AuditEvent:
    values = dict(zip(COLUMNS, stored, strict=True))
    return AuditEvent(
        occurred_at=EPOCH + timedelta(microseconds=values["occurred_at"]),
        request_id=values["request_id"],
        credential_id=values["credential_id"],
        account=values["account"],
        method=values["method"],
        resource=values["resource"],
        outcome=values["outcome"],
        reason=values["reason"],
        latency_us=values["latency_us"],
        source=values["source"],
    )


def edited_and_rechained(conn: sqlite3.Connection, seq: int) -> list[tuple[str, Row]]:
    """Statements that flip the outcome of record seq and recompute the hash chain from there
    on, as an attacker who knows the documented hash would: self-consistent to the end."""
    stored = conn.execute(
        "SELECT * FROM audit_events WHERE seq >= ? ORDER BY seq", (seq,)
    ).fetchall()
    events = [event_of(r) for r in stored]
    outcome = events[0].outcome
    events[0] = replace(events[0], outcome="PERMISSION_DENIED" if outcome == "OK" else "OK")
    return [
        (
            "UPDATE audit_events SET outcome = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (record.event.outcome, record.prev_hash, record.hash, record.seq),
        )
        for record in chain(stored[0][COLUMNS.index("prev_hash")], seq, events)
    ]


def test_verifying_the_log_is_not_cut_short_by_the_per_call_deadline(
    vault: VaultServer, seeded: Seeded
) -> None:
    # Verification reads the whole log: at millions of records it outlasts any per-call
    # timeout a client sets for its other calls (here one far shorter than any verification).
    with vault.client(timeout=0.001) as hurried:
        assert hurried.verify_audit_log().ok


def verify_after(admin: VaultClient) -> list[tuple[str, int]]:
    result = admin.verify_audit_log()
    assert result.ok == (not result.findings)
    return findings(result)


@dataclass(frozen=True, slots=True)
class Fresh:
    server: VaultServer
    admin: VaultClient


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped vault's data directory whose log holds a few dozen records and several
    signed checkpoints."""
    data_dir = tmp_path_factory.mktemp("audit-template")
    provision(data_dir)
    with VaultServer(data_dir, extra_env=TAMPER_ENV) as server, server.client() as admin:
        account = new_account(admin)
        for index in range(8):
            name = admin.create_key(account, f"k{index}", "ENCRYPT_DECRYPT").name
            admin.decrypt(name, admin.encrypt(name, b"x").ciphertext)
        assert admin.verify_audit_log().ok
    return data_dir


@pytest.fixture
def fresh(template: Path, tmp_path: Path) -> Iterator[Fresh]:
    """A server of its own on a copy of template. Tampering cannot be undone behind the
    vault's back (the token remembers the newest checkpointed head, so putting the old rows
    back reads as a truncated log), so each tampering test gets a copy to spoil."""
    data_dir = tmp_path / "vault"
    shutil.copytree(template, data_dir)
    conf = data_dir / "softhsm2.conf"
    conf.write_text(conf.read_text().replace(str(template), str(data_dir)))
    with VaultServer(data_dir, extra_env=TAMPER_ENV) as server, server.client() as admin:
        assert admin.verify_audit_log().ok
        yield Fresh(server, admin)


def test_an_updated_column_is_reported_as_modified(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    with tampering(clean) as conn:
        seq = middle_seq(conn)
        outcome = row(conn, seq)[COLUMNS.index("outcome")]
        forged = "PERMISSION_DENIED" if outcome == "OK" else "OK"
        edit(clean, conn, ("UPDATE audit_events SET outcome = ? WHERE seq = ?", (forged, seq)))
        assert verify_after(admin) == [("MODIFIED", seq)]


def test_a_deleted_row_is_reported_at_its_sequence(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    with tampering(clean) as conn:
        seq = middle_seq(conn)
        edit(clean, conn, ("DELETE FROM audit_events WHERE seq = ?", (seq,)))
        assert verify_after(admin) == [("DELETED", seq)]


def test_a_deleted_row_hidden_by_renumbering_is_still_reported(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    with tampering(clean) as conn:
        seq, last, heads = middle_seq(conn), last_seq(conn), checkpoint_heads(conn)
        edit(
            clean,
            conn,
            ("DELETE FROM audit_events WHERE seq = ?", (seq,)),
            # Two steps, since seq is unique at every moment of an UPDATE.
            ("UPDATE audit_events SET seq = -(seq - 1) WHERE seq > ?", (seq,)),
            ("UPDATE audit_events SET seq = -seq WHERE seq < 0", ()),
        )
        # The renumbered rows no longer sit where the signed checkpoints saw them, and a
        # checkpoint on the old last row now names a row that is gone.
        expected = [("DELETED", seq)]
        expected += [("CHECKPOINT_MISMATCH", head) for head in heads if seq < head < last]
        expected += [("TRUNCATED", last)] if last in heads else []
        assert verify_after(admin) == expected


def test_a_forged_row_is_reported_as_inserted(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    with tampering(clean) as conn:
        seq, last = middle_seq(conn), last_seq(conn)
        # A copy of a genuine record, appended after the last one with a correct hash but
        # linked to the record it copies' predecessor: a second successor of that record.
        copied = row(conn, seq + 1)
        prev_hash = row(conn, seq)[COLUMNS.index("hash")]
        forged = chain(prev_hash, last + 1, [event_of(copied)])[0]
        values = (last + 1, *copied[1:-2], prev_hash, forged.hash)
        edit(clean, conn, (f"INSERT INTO audit_events VALUES ({_marks(13)})", values))
        assert verify_after(admin) == [("INSERTED", last + 1)]


def test_swapped_rows_are_reported_as_reordered(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    with tampering(clean) as conn:
        seq = middle_seq(conn)
        first, second = row(conn, seq), row(conn, seq + 1)
        edit(clean, conn, set_columns(seq, second), set_columns(seq + 1, first))
        assert verify_after(admin) == [("REORDERED", seq)]


def test_a_truncated_log_is_reported_by_its_checkpoint(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    with tampering(clean) as conn:
        head = checkpoint_heads(conn)[-1]
        cut = head - 1
        edit(clean, conn, ("DELETE FROM audit_events WHERE seq >= ?", (cut,)))
        assert verify_after(admin) == [("TRUNCATED", cut)]
        # Records the token's anchor vouched for are gone: calls are refused too.
        for _ in range(SPREAD):
            with clean.client() as caller:
                expect_error(
                    grpc.StatusCode.UNAVAILABLE,
                    "AUDIT_UNAVAILABLE",
                    lambda c=caller: c.list_accounts(),  # type: ignore[misc]
                )


def test_a_recomputed_chain_is_caught_by_the_signed_checkpoints(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    with tampering(clean) as conn:
        seq = middle_seq(conn)
        later_heads = [head for head in checkpoint_heads(conn) if head >= seq]
        assert later_heads, "no checkpoint covers the edited record"
        edit(clean, conn, *edited_and_rechained(conn, seq))
        # Self-consistent: only the signatures over the old chain head tell.
        assert verify_after(admin) == [("CHECKPOINT_MISMATCH", head) for head in later_heads]


def test_deleting_every_checkpoint_does_not_hide_a_recomputed_chain(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    with tampering(clean) as conn:
        seq = middle_seq(conn)
        newest = checkpoint_heads(conn)[-1]
        assert newest > seq, "no checkpoint covers the edited record"
        edit(
            clean,
            conn,
            *edited_and_rechained(conn, seq),
            ("DELETE FROM audit_checkpoints", ()),
        )
        # Nothing in the database tells any more; the token's anchor of the newest
        # checkpointed head does.
        assert verify_after(admin) == [("CHECKPOINT_MISMATCH", newest)]


def test_a_recomputed_chain_is_never_signed_and_stops_the_calls(fresh: Fresh) -> None:
    """The whole attack: rewrite a record, recompute the chain with the documented hash,
    delete every checkpoint, then keep calling so that a checkpoint falls due. The vault
    must not sign the forged head nor move the token's anchor onto it; it refuses audited
    calls instead, and verification still reports the rewrite."""
    admin, clean = fresh.admin, fresh.server
    account = new_account(admin)
    name = admin.create_key(account, "after-forgery", "ENCRYPT_DECRYPT").name
    with tampering(clean) as conn:
        seq = middle_seq(conn)
        newest = checkpoint_heads(conn)[-1]
        assert newest > seq, "no checkpoint covers the edited record"
        edit(
            clean,
            conn,
            *edited_and_rechained(conn, seq),
            ("DELETE FROM audit_checkpoints", ()),
        )
        # Without a checkpoint in the store one is due at once, in every worker; several
        # fresh channels reach both of them.
        for _ in range(2 * SPREAD):
            with clean.client() as caller:
                error = expect_error(
                    grpc.StatusCode.UNAVAILABLE,
                    "AUDIT_UNAVAILABLE",
                    lambda c=caller: c.get_key(name),  # type: ignore[misc]
                )
                assert "vaultctl audit verify" in error.message
        assert checkpoint_heads(conn) == []
        refused_at = last_seq(conn)
        # Investigating stays possible: the admin's audit calls are still served.
        assert verify_after(admin) == [("CHECKPOINT_MISMATCH", newest)]
        assert checkpoint_heads(conn) == []
        assert last_seq(conn) <= refused_at + 2
    # One error line per worker at most (rate-limited), with a seq and no record contents.
    errors = [line for line in clean.log().splitlines() if "does not extend" in line]
    assert 1 <= len(errors) <= 2, errors
    assert "PERMISSION_DENIED" not in "".join(errors) and name not in "".join(errors)
    cli = run_cli(clean, "audit", "verify")
    assert cli.exit_code == 1, cli.output
    assert f"CHECKPOINT_MISMATCH at sequence {newest}" in cli.stdout


@pytest.mark.parametrize(
    "forged_seq", [10**12, 0], ids=["beyond-the-head", "on-the-head-signed-in-the-future"]
)
def test_a_forged_checkpoint_row_does_not_put_off_the_anchor_check(
    fresh: Fresh, forged_seq: int
) -> None:
    """Instead of deleting the checkpoints, the rewriter leaves one row that makes the next
    checkpoint look far off: beyond the head, or at it and signed in the future. Neither is
    a checkpoint the vault could have made, so one is due at once all the same."""
    admin, clean = fresh.admin, fresh.server
    account = new_account(admin)
    name = admin.create_key(account, "after-forged-row", "ENCRYPT_DECRYPT").name
    with tampering(clean) as conn:
        seq = middle_seq(conn)
        head = forged_seq or last_seq(conn)
        future = int((datetime.now(UTC) + timedelta(days=3650) - EPOCH) / timedelta(microseconds=1))
        edit(
            clean,
            conn,
            *edited_and_rechained(conn, seq),
            ("DELETE FROM audit_checkpoints", ()),
            (
                "INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?, ?)",
                (head, bytes(32), future, b"forged", "vault:system:audit:1"),
            ),
        )
        for _ in range(SPREAD):
            with clean.client() as caller:
                expect_error(
                    grpc.StatusCode.UNAVAILABLE,
                    "AUDIT_UNAVAILABLE",
                    lambda c=caller: c.get_key(name),  # type: ignore[misc]
                )
        assert checkpoint_heads(conn) == [head]


def test_a_checkpoint_with_a_forged_signature_is_reported(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    with tampering(clean) as conn:
        heads = checkpoint_heads(conn)
        head = heads[len(heads) // 2]
        (signature,) = conn.execute(
            "SELECT signature FROM audit_checkpoints WHERE head_seq = ?", (head,)
        ).fetchone()
        # Still well-formed: only the last byte of the signature value changes.
        flipped = signature[:-1] + bytes([signature[-1] ^ 1])
        edit(
            clean,
            conn,
            ("UPDATE audit_checkpoints SET signature = ? WHERE head_seq = ?", (flipped, head)),
        )
        assert verify_after(admin) == [("BAD_SIGNATURE", head)]


# -- an unwritable log stops the calls ------------------------------------------------------


def test_calls_fail_closed_when_the_log_cannot_be_written(fresh: Fresh) -> None:
    admin, clean = fresh.admin, fresh.server
    account = new_account(admin)
    name = admin.create_key(account, f"blocked-{secrets.token_hex(4)}", "SIGN_VERIFY").name
    unavailable = grpc.StatusCode.UNAVAILABLE
    with tampering(clean) as conn:
        before = last_seq(conn)
        edit(
            clean,
            conn,
            (
                "CREATE TRIGGER block_audit BEFORE INSERT ON audit_events "
                "BEGIN SELECT RAISE(ABORT, 'blocked'); END",
                (),
            ),
        )
        expect_error(unavailable, "AUDIT_UNAVAILABLE", lambda: admin.disable_key(name))
        expect_error(
            unavailable, "AUDIT_UNAVAILABLE", lambda: admin.sign(name, message=b"unrecorded")
        )
        expect_error(
            unavailable,
            "AUDIT_UNAVAILABLE",
            lambda: admin.create_key(account, "never-made", "MAC"),
        )
        assert last_seq(conn) == before
        conn.execute("DROP TRIGGER block_audit")

        assert admin.get_key(name).state == resources_pb2.KEY_STATE_ENABLED
        expect_error(
            grpc.StatusCode.NOT_FOUND,
            "NOT_FOUND",
            lambda: admin.get_key(f"{account}/keys/never-made"),
        )
        assert admin.verify_audit_log().ok
    assert admin.sign(name, message=b"recorded").signature


def test_identity_calls_name_the_account_they_concern(admin: VaultClient) -> None:
    account = new_account(admin)
    events = list(admin.iter_audit_events(method="CreateAccount", resource=account))
    assert [(e.outcome, e.resource) for e in events] == [("STARTED", account), ("OK", account)]
