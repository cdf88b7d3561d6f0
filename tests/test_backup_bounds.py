"""Backup responses within the smallest server.max_message_bytes (65,536), on a real server with
its own SoftHSM token and store: a restore whose outcomes would not fit in one message answers
with whole counts, the first outcomes, and a report file of all of them; ListBackups pages,
ending a page early when its records would not fit."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from typing import Any, Final
from uuid import uuid4

import grpc
import pytest

from tests.support.api_calls import every_page
from tests.support.harness import VaultServer
from tests.support.small_messages import SMALLEST, small_message_server
from tests.test_backup import place
from vault.client import VaultClient
from vault.domain.backup import read_bundle, split_lines
from vault.gen.vault.v1 import backup_service_pb2, backup_service_pb2_grpc
from vault.service.backup import verify_bundle

# Names of 141 characters (the longest account and key ids): an EXISTS item takes about 150
# bytes, so 700 of them (about 105 KB) are far over the smallest message.
KEYS: Final = 700
EXPORTS: Final = 6
# Each of these exports' records carries 100 key prefixes of about 250 characters: about 25 KB,
# so a page of 1,000 holds only two of them within the smallest message.
PREFIXES: Final = 100


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    data_dir = tmp_path_factory.mktemp("small-backups")
    with small_message_server(data_dir, VAULT_SERVER__WORKERS="1") as server:
        yield server


@pytest.fixture(scope="module")
def admin(small: VaultServer) -> Iterator[VaultClient]:
    with small.client() as client:
        yield client


def long_account(admin: VaultClient) -> str:
    account_id = f"a{uuid4().hex}".ljust(63, "b")
    admin.create_account(account_id)
    return f"accounts/{account_id}"


def test_a_restore_into_a_store_holding_the_bundle_answers_within_one_message(
    small: VaultServer, admin: VaultClient
) -> None:
    account = long_account(admin)
    for number in range(KEYS):
        admin.create_key(account, f"k{number:04d}".ljust(63, "x"), "ENCRYPT_DECRYPT")
    admin.create_key(account, "in-token", "ENCRYPT_DECRYPT", token_resident=True)
    # The bundle, several times the smallest message, streams in chunks sized to it.
    chunks = list(admin.export_backup(accounts=[account.removeprefix("accounts/")]))
    assert len(chunks) > 2 and all(chunk.ByteSize() <= SMALLEST for chunk in chunks)
    bundle = b"".join(chunk.chunk for chunk in chunks)
    verify_bundle(split_lines(bundle))
    in_bundle = [entry["name"] for entry in read_bundle(split_lines(bundle)).entries]
    assert len(in_bundle) == KEYS + 1
    place(small, "whole.bundle", bundle)

    # Every key is in this store already: each one comes back EXISTS (the token-resident key
    # TOKEN_RESIDENT), far more items than the smallest message holds.
    report = admin.restore_backup("whole.bundle")

    assert report.ByteSize() <= SMALLEST
    assert report.restored_count == 0 and list(report.restored) == []
    assert report.skipped_count == KEYS + 1
    assert dict(report.skipped_by_reason) == {"EXISTS": KEYS, "TOKEN_RESIDENT": 1}
    assert report.lists_truncated
    # The first items, in bundle order.
    listed = [item.name for item in report.skipped]
    assert 100 < len(listed) < KEYS
    assert listed == in_bundle[: len(listed)]

    path = small.data_dir / "backups" / report.report_file_name
    assert path.parent == small.data_dir / "backups"
    assert report.report_file_name.startswith("whole.bundle.")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == in_bundle  # every item, once, in order
    assert {(line["outcome"], line["reason"]) for line in lines} == {
        ("skipped", "EXISTS"),
        ("skipped", "TOKEN_RESIDENT"),
    }
    assert all(set(line) == {"name", "outcome", "reason", "detail"} for line in lines)
    # No temporary file is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        ["whole.bundle", report.report_file_name]
    )


@pytest.fixture(scope="module")
def logged(admin: VaultClient) -> tuple[str, list[str]]:
    """A key version and the exports holding it, oldest first: each export's record names
    PREFIXES long key prefixes besides the key."""
    account = long_account(admin)
    key = admin.create_key(account, "listed", "ENCRYPT_DECRYPT").name
    prefixes = [f"{account}/keys/p{number:03d}".ljust(250, "x") for number in range(PREFIXES)]
    made = []
    for _ in range(EXPORTS):
        chunks = list(admin.export_backup(keys=[key, *prefixes]))
        made.append(chunks[-1].export_id)
    return f"{key}/versions/1", made


def list_page(
    small: VaultServer, key_version: str, page_size: int, page_token: str, credentials: Any = None
) -> backup_service_pb2.ListBackupsResponse:
    with small.channel(credentials) as channel:
        backups = backup_service_pb2_grpc.BackupServiceStub(channel)
        response: backup_service_pb2.ListBackupsResponse = backups.ListBackups(
            backup_service_pb2.ListBackupsRequest(
                key_version=key_version, page_size=page_size, page_token=page_token
            ),
            timeout=30,
        )
        return response


def list_error(
    small: VaultServer, version: str, page_token: str, credentials: Any = None
) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        list_page(small, version, 2, page_token, credentials)
    code: grpc.StatusCode = caught.value.code()
    return code


def test_list_backups_pages_oldest_first(
    small: VaultServer, admin: VaultClient, logged: tuple[str, list[str]]
) -> None:
    version, made = logged
    pages = every_page(lambda token: list_page(small, version, 2, token))
    assert [[record.export_id for record in page.backups] for page in pages] == [
        made[0:2],
        made[2:4],
        made[4:6],
    ]
    assert all(
        len(record.selection.keys) == PREFIXES + 1 for page in pages for record in page.backups
    )
    # The SDK (and so `vaultctl backup list`) follows the pages.
    assert [record.export_id for record in admin.list_backups(version, page_size=1)] == made
    assert [record.export_id for record in admin.list_backups(version)] == made


def test_a_list_backups_page_ends_early_when_its_records_would_not_fit(
    small: VaultServer, logged: tuple[str, list[str]]
) -> None:
    version, made = logged
    pages = every_page(lambda token: list_page(small, version, 1000, token))
    assert len(pages) > 1 and all(page.backups for page in pages)
    assert all(page.ByteSize() <= SMALLEST for page in pages)
    assert [record.export_id for page in pages for record in page.backups] == made


def test_a_malformed_list_backups_token_is_invalid_after_the_caller_is_authorised(
    small: VaultServer, admin: VaultClient, logged: tuple[str, list[str]]
) -> None:
    from tests.support.security_helpers import add_access_key
    from tests.support.security_helpers import new_account as new_security_account

    version, _ = logged
    malformed = ("not a token", "MTIz", "eA")
    assert {list_error(small, version, token) for token in malformed} == {
        grpc.StatusCode.INVALID_ARGUMENT
    }
    # A caller without the admin role is refused before its request is looked at.
    member = add_access_key(admin, new_security_account(admin))
    assert {list_error(small, version, token, member.credentials) for token in malformed} == {
        grpc.StatusCode.PERMISSION_DENIED
    }


# A key's bundle line holds every version (its wrapped blob and times, about 200 bytes for
# AES-256): this many rotations make one line longer than the smallest message.
ROTATIONS: Final = 360


def test_a_key_whose_bundle_line_is_longer_than_a_message_exports_over_several_chunks(
    small: VaultServer, admin: VaultClient
) -> None:
    account = long_account(admin)
    name = admin.create_key(account, "rotated", "ENCRYPT_DECRYPT").name
    for _ in range(ROTATIONS):
        admin.rotate_key(name)

    chunks = list(admin.export_backup(accounts=[account.removeprefix("accounts/")]))

    assert all(chunk.ByteSize() <= SMALLEST for chunk in chunks)
    bundle = b"".join(chunk.chunk for chunk in chunks)
    lines = list(split_lines(bundle))
    assert max(len(line) for line in lines) > SMALLEST
    verify_bundle(lines)
    (entry,) = read_bundle(lines).entries
    assert entry["name"] == name and len(entry["versions"]) == ROTATIONS + 1
    summary = admin.verify_backup(place(small, "long-line.bundle", bundle))
    assert summary.keys == 1 and summary.export_id == chunks[-1].export_id
