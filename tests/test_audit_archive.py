"""`vaultctl audit archive` and `audit verify --archive` beside a running server: archived
records leave the store for a 0600 file that verifies together with the store as one chain;
the store keeps a signed marker that the remaining chain is verified from; tampering with the
file, with the marker or with the records around it is found; and checkpoints after an
archive still only extend the token's anchor.

The archive commands run as their own process (`python -m vault.cli`), as an operator would
run them on the vault's machine: they open the token themselves.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.api_calls import expect_error
from tests.support.harness import ROOT, vault_environment
from tests.support.security_helpers import new_account
from tests.test_audit_log import (
    TAMPER_ENV,
    Fresh,
    checkpoint_heads,
    edit,
    edited_and_rechained,
    fresh,
    last_seq,
    tampering,
    template,
    verify_after,
)

__all__ = ["fresh", "template"]  # fixtures, shared with test_audit_log


def vaultctl_local(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`vaultctl args...` run on the vault's machine, with its settings and token."""
    return subprocess.run(
        [sys.executable, "-m", "vault.cli", *args],
        env=vault_environment(data_dir, **TAMPER_ENV),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def archive(fresh: Fresh, out: Path) -> dict[str, Any]:
    """Archive everything up to the newest checkpoint (the cutoff is in the future)."""
    cutoff = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    done = vaultctl_local(
        fresh.server.data_dir, "--json", "audit", "archive", "--before", cutoff, "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["archived"] is True
    return result


def verify_archives(fresh: Fresh, *files: Path) -> tuple[int, dict[str, Any]]:
    args = [arg for file in files for arg in ("--archive", str(file))]
    done = vaultctl_local(fresh.server.data_dir, "--json", "audit", "verify", *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def kinds(report: dict[str, Any]) -> list[tuple[str, int]]:
    return [(f["kind"], f["sequence"]) for f in report["findings"]]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rewrite(path: Path, content: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(item) + "\n" for item in content))


@pytest.fixture
def archived(fresh: Fresh, tmp_path: Path) -> Iterator[tuple[Fresh, Path, dict[str, Any]]]:
    out = tmp_path / "archive-1.jsonl"
    result = archive(fresh, out)
    # Records after the marker, chained onto it.
    account = new_account(fresh.admin)
    fresh.admin.create_key(account, "after-archive", "MAC")
    yield fresh, out, result


def test_archive_moves_records_to_a_private_file_and_both_verify(
    archived: tuple[Fresh, Path, dict[str, Any]],
) -> None:
    fresh, out, result = archived
    through = result["last_sequence"]
    assert result["first_sequence"] == 1 and result["deleted"] == through > 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not list(out.parent.glob(".*.tmp"))
    content = lines(out)
    header, records = content[0], content[1:]
    assert header["end"]["through_seq"] == through
    assert header["checkpoints"][-1]["head_seq"] == through
    assert [r["seq"] for r in records] == list(range(1, through + 1))
    with tampering(fresh.server) as conn:
        first = conn.execute("SELECT min(seq) FROM audit_events").fetchone()[0]
        assert first == through + 1
        assert all(head > through for head in checkpoint_heads(conn))
    # The store alone verifies from the marker; with the archive, as one chain from seq 1.
    assert verify_after(fresh.admin) == []
    code, report = verify_archives(fresh, out)
    assert (code, kinds(report)) == (0, [])
    assert report["records_checked"] > through
    # Checkpoints go on after the archive: the anchored record is archived and its marker
    # stands in for it.
    account = new_account(fresh.admin)
    for index in range(12):
        fresh.admin.create_key(account, f"after-{index}", "MAC")
    with tampering(fresh.server) as conn:
        assert any(head > through for head in checkpoint_heads(conn))
    assert verify_after(fresh.admin) == []


def test_a_second_archive_continues_the_first(
    archived: tuple[Fresh, Path, dict[str, Any]], tmp_path: Path
) -> None:
    fresh, first, result = archived
    account = new_account(fresh.admin)
    for index in range(12):
        fresh.admin.create_key(account, f"more-{index}", "MAC")
    second = tmp_path / "archive-2.jsonl"
    more = archive(fresh, second)
    assert more["first_sequence"] == result["last_sequence"] + 1
    assert verify_after(fresh.admin) == []
    assert verify_archives(fresh, second, first)[0] == 0
    # The newer archive alone verifies from its own signed start.
    assert verify_archives(fresh, second)[0] == 0
    # Without the newer one, the records it holds are missing.
    code, report = verify_archives(fresh, first)
    assert code == 1 and kinds(report)[0] == ("DELETED", result["last_sequence"] + 1)


def test_nothing_older_than_the_cutoff_archives_nothing(fresh: Fresh, tmp_path: Path) -> None:
    out = tmp_path / "none.jsonl"
    done = vaultctl_local(
        fresh.server.data_dir,
        "--json",
        "audit",
        "archive",
        "--older-than",
        "30d",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["archived"] is False
    assert not out.exists()
    with tampering(fresh.server) as conn:
        assert conn.execute("SELECT min(seq) FROM audit_events").fetchone()[0] == 1


def test_an_archive_that_cannot_be_written_deletes_nothing(fresh: Fresh, tmp_path: Path) -> None:
    cutoff = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    data_dir = fresh.server.data_dir
    with tampering(fresh.server) as conn:
        before = conn.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    missing = tmp_path / "no-such-dir" / "a.jsonl"
    failed = vaultctl_local(data_dir, "audit", "archive", "--before", cutoff, "--out", str(missing))
    assert failed.returncode == 4, failed.stderr
    existing = tmp_path / "taken.jsonl"
    existing.write_text("keep me\n")
    refused = vaultctl_local(
        data_dir, "audit", "archive", "--before", cutoff, "--out", str(existing)
    )
    assert refused.returncode == 4 and "never overwritten" in refused.stderr
    assert existing.read_text() == "keep me\n"
    with tampering(fresh.server) as conn:
        assert conn.execute("SELECT count(*) FROM audit_events").fetchone()[0] >= before
        assert conn.execute("SELECT min(seq) FROM audit_events").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM audit_archive_markers").fetchone()[0] == 0


def test_an_edited_archive_record_is_found(
    archived: tuple[Fresh, Path, dict[str, Any]],
) -> None:
    fresh, out, _ = archived
    content = lines(out)
    content[5]["outcome"] = "PERMISSION_DENIED" if content[5]["outcome"] == "OK" else "OK"
    rewrite(out, content)
    code, report = verify_archives(fresh, out)
    assert code == 1 and kinds(report) == [("MODIFIED", content[5]["seq"])]


def test_a_recomputed_archive_is_caught_by_its_signed_checkpoints(
    archived: tuple[Fresh, Path, dict[str, Any]],
) -> None:
    from vault.domain.audit import chain
    from vault.domain.audit_archive import decode_record

    fresh, out, result = archived
    content = lines(out)
    header, rows = content[0], content[1:]
    records = [decode_record(json.dumps(row)) for row in rows]
    events = [r.event for r in records]
    events[2] = dataclasses.replace(events[2], reason="X")
    forged = chain(bytes(32), 1, events)
    for row, record in zip(rows, forged, strict=True):
        row.update(reason=record.event.reason, prev_hash=record.prev_hash.hex())
        row["hash"] = record.hash.hex()
    rewrite(out, [header, *rows])
    code, report = verify_archives(fresh, out)
    heads = [c["head_seq"] for c in header["checkpoints"] if c["head_seq"] >= 3]
    through = result["last_sequence"]
    assert heads[-1] == through
    # The store's first record still links to the genuine last archived one.
    assert code == 1
    assert kinds(report) == [
        *(("CHECKPOINT_MISMATCH", head) for head in heads[:-1]),
        ("MODIFIED", through),
        ("CHECKPOINT_MISMATCH", through),
    ]


def test_deleting_records_after_the_marker_is_found(
    archived: tuple[Fresh, Path, dict[str, Any]],
) -> None:
    fresh, _, result = archived
    through = result["last_sequence"]
    with tampering(fresh.server) as conn:
        edit(fresh.server, conn, ("DELETE FROM audit_events WHERE seq <= ?", (through + 2,)))
    assert verify_after(fresh.admin)[0] == ("DELETED", through + 1)


def test_deleting_the_marker_is_found(archived: tuple[Fresh, Path, dict[str, Any]]) -> None:
    fresh, _, _ = archived
    with tampering(fresh.server) as conn:
        edit(fresh.server, conn, ("DELETE FROM audit_archive_markers", ()))
    assert verify_after(fresh.admin)[0] == ("DELETED", 1)


def test_a_checkpoint_passed_off_as_a_marker_is_found(
    archived: tuple[Fresh, Path, dict[str, Any]],
) -> None:
    """Whoever holds the database moves the marker to a later checkpoint, with that
    checkpoint's signature, and deletes the records up to it: the signature is over another
    payload and does not verify as a marker's."""
    fresh, _, _ = archived
    account = new_account(fresh.admin)
    for index in range(12):
        fresh.admin.create_key(account, f"later-{index}", "MAC")
    with tampering(fresh.server) as conn:
        head, head_hash, signed_at, signature, label = conn.execute(
            "SELECT * FROM audit_checkpoints ORDER BY head_seq LIMIT 1"
        ).fetchone()
        edit(
            fresh.server,
            conn,
            (
                "INSERT INTO audit_archive_markers VALUES (?, ?, ?, ?, ?, ?)",
                (head, head_hash, signed_at, head, signature, label),
            ),
            ("DELETE FROM audit_events WHERE seq <= ?", (head,)),
            ("DELETE FROM audit_checkpoints WHERE head_seq <= ?", (head,)),
        )
    assert ("BAD_SIGNATURE", head) in verify_after(fresh.admin)


def test_the_anchor_rule_holds_after_an_archive(
    archived: tuple[Fresh, Path, dict[str, Any]],
) -> None:
    fresh, _, result = archived
    account = new_account(fresh.admin)
    for index in range(12):
        fresh.admin.create_key(account, f"k-{index}", "MAC")
    with tampering(fresh.server) as conn:
        newest = checkpoint_heads(conn)[-1]
        seq = result["last_sequence"] + 2
        assert newest > seq
        edit(
            fresh.server,
            conn,
            *edited_and_rechained(conn, seq),
            ("DELETE FROM audit_checkpoints", ()),
        )
        name = f"{account}/keys/k-0"
        expect_error(
            grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE", lambda: fresh.admin.get_key(name)
        )
        assert checkpoint_heads(conn) == []
        before = last_seq(conn)
    assert verify_after(fresh.admin) == [("CHECKPOINT_MISMATCH", newest)]
    with closing(sqlite3.connect(fresh.server.data_dir / "vault.db")) as conn:
        assert last_seq(conn) <= before + 1


# -- recovery from a log that no longer extends the anchor -------------------------------------


def test_reanchor_accepts_the_altered_log_and_a_restart_serves_again(fresh: Fresh) -> None:
    admin, server = fresh.admin, fresh.server
    account = new_account(admin)
    name = admin.create_key(account, "recovered", "MAC").name
    with tampering(server) as conn:
        newest = checkpoint_heads(conn)[-1]
        edit(
            server,
            conn,
            *edited_and_rechained(conn, newest - 3),
            ("DELETE FROM audit_checkpoints", ()),
        )
    expect_error(grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE", lambda: admin.get_key(name))
    refused = vaultctl_local(server.data_dir, "audit", "reanchor")
    assert refused.returncode == 2 and "--yes" in refused.stderr

    done = vaultctl_local(server.data_dir, "--json", "audit", "reanchor", "--yes")
    assert done.returncode == 0, done.stderr
    reset = json.loads(done.stdout)
    assert reset["reanchored"] is True
    assert reset["previous_sequence"] == newest and reset["broken_at_sequence"] == newest
    server.stop()
    server.start()
    assert admin.get_key(name).name == name
    assert verify_after(admin) == []
    (record,) = list(admin.iter_audit_events(method="vaultctl/audit/reanchor"))
    assert record.reason == "ANCHOR_RESET" and record.sequence == reset["anchor_sequence"]
    assert record.resource.startswith(f"audit-anchor/{newest}/{reset['previous_hash']}")
    # Intact now: nothing to reset.
    again = vaultctl_local(server.data_dir, "--json", "audit", "reanchor", "--yes")
    assert again.returncode == 0 and json.loads(again.stdout) == {"reanchored": False}
