"""A restore acts only on the bytes it verified, and keeps only as many names as a message
carries: BackupManagement on the session's real token (it holds the roots the bundles' blobs
are wrapped under) restoring bundles the session's server exported into a fresh SQLite store.

The restore's first step comes once the bundle is verified (and copied): the test changes the
bundle's file on disk right there, between the restore's two passes over it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support.api_calls import new_account
from tests.test_backup import export
from vault.client import VaultClient
from vault.domain.identity import Account
from vault.service.backup import BackupManagement, BundleFiles
from vault.storage import Stores, open_stores
from vault.transport.backup_servicer import restore_response

# More than a restore batch (50 keys), so the restore spans several.
MANY: Final = 60


@dataclass
class Bundles:
    many_account: str
    many_names: list[str]
    many: bytes
    few_account: str
    few_names: list[str]
    few: bytes


@pytest.fixture(scope="module")
def bundles(client: VaultClient) -> Bundles:
    many = new_account(client)
    many_names = [
        client.create_key(many, f"k{index:03d}", "ENCRYPT_DECRYPT").name for index in range(MANY)
    ]
    few = new_account(client)
    few_names = [client.create_key(few, f"f{index}", "ENCRYPT_DECRYPT").name for index in range(2)]
    return Bundles(
        many,
        many_names,
        export(client, accounts=[many.removeprefix("accounts/")]),
        few,
        few_names,
        export(client, accounts=[few.removeprefix("accounts/")]),
    )


@pytest.fixture
def stores(tmp_path: Path, bundles: Bundles) -> Iterator[Stores]:
    opened = open_stores(f"sqlite:///{tmp_path / 'restored.db'}")
    for account in (bundles.many_account, bundles.few_account):
        account_id = account.removeprefix("accounts/")
        opened.identity.create_account(Account(account_id, account_id, False, datetime.now(UTC)))
    yield opened
    opened.close()


@pytest.fixture
def backups(tmp_path: Path, stores: Stores, keystore: Any) -> BackupManagement:
    from vault.hsm.system_keys import BackupSigningKey

    directory = tmp_path / "backups"
    directory.mkdir()
    return BackupManagement(
        stores.backups,
        keystore,
        BackupSigningKey(keystore),
        BundleFiles(directory),
        stores.identity,
    )


def private_copies(directory: Path) -> list[str]:
    """This process's open files in directory that have no name there (deleted or never
    linked), as /proc shows them."""
    found = []
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            continue
        if target.startswith(f"{directory}/") and target.endswith(" (deleted)"):
            found.append(f"/proc/self/fd/{descriptor}")
    return found


def test_a_bundle_changed_on_disk_after_its_check_restores_what_was_checked(
    bundles: Bundles, backups: BackupManagement, tmp_path: Path
) -> None:
    path = tmp_path / "backups" / "swapped.bundle"
    path.write_bytes(bundles.few)
    steps = backups.restoring("swapped.bundle")
    # The first step past the check: the bundle is verified and copied, nothing restored yet.
    first = next(step for step in steps if step.entries_total)
    assert (first.entries_done, first.entries_total) == (0, len(bundles.few_names))

    # The restore reads its private copy: unlinked, in the backup directory, mode 0600.
    (copy,) = private_copies(tmp_path / "backups")
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    names = [entry.name for entry in (tmp_path / "backups").iterdir()]
    assert [name for name in names if not name.startswith(".report-")] == ["swapped.bundle"]

    # Another signed bundle, written over the same file (same inode): the restore goes on
    # with the bundle it checked.
    path.write_bytes(bundles.many)
    *_, last = steps
    assert last.report is not None
    assert last.report.restored == bundles.few_names
    assert last.report.bundle.bundle.counts["key"] == len(bundles.few_names)
    assert private_copies(tmp_path / "backups") == []

    # The bundle now in the file was not restored: restoring it restores every key of it.
    again = backups.restore("swapped.bundle")
    assert again.restored == bundles.many_names


def test_a_restore_keeps_only_the_first_names_that_fit_and_counts_them_all(
    bundles: Bundles, backups: BackupManagement, tmp_path: Path
) -> None:
    (tmp_path / "backups" / "many.bundle").write_bytes(bundles.many)
    names_bytes = 600  # about 12 of the names

    report = backups.restore("many.bundle", names_bytes=names_bytes)

    assert report.restored_count == MANY and report.skipped_count == 0
    kept = report.restored
    assert 0 < len(kept) < MANY and sum(len(name) for name in kept) <= names_bytes
    assert kept == bundles.many_names[: len(kept)]
    response = restore_response(report, 1 << 20)
    assert response.lists_truncated
    assert (response.restored_count, len(response.restored)) == (MANY, len(kept))
    # The report file lists every outcome.
    lines = (tmp_path / "backups" / report.report_file).read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == bundles.many_names

    # Everything is there now: every key is skipped, as EXISTS, and so are the lists cut.
    again = backups.restore("many.bundle", names_bytes=names_bytes)
    assert again.restored_count == 0 and again.skipped_by_reason() == {"EXISTS": MANY}
    skipped = [item.name for item in again.skipped]
    assert 0 < len(skipped) < MANY and skipped == bundles.many_names[: len(skipped)]
    assert restore_response(again, 1 << 20).skipped_count == MANY


def test_a_restore_reports_its_check_in_bytes_and_stopped_there_changes_nothing(
    bundles: Bundles, backups: BackupManagement, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vault.service.backup

    # A step every 10 entries rather than 1,000, so that this bundle's check has several.
    monkeypatch.setattr(vault.service.backup, "CHECK_STEP", 10)
    directory = tmp_path / "backups"
    (directory / "checked.bundle").write_bytes(bundles.many)
    steps = backups.restoring("checked.bundle")
    checking = [next(steps) for _ in range(3)]
    assert [step.entries_total for step in checking] == [0, 0, 0]
    assert {step.bytes_total for step in checking} == {len(bundles.many)}
    checked = [step.bytes_checked for step in checking]
    assert checked[0] == 0 and checked[0] < checked[1] < checked[2] < len(bundles.many)

    # The caller leaves during the check: nothing restored, no report, no copy left.
    steps.close()
    assert sorted(entry.name for entry in directory.iterdir()) == ["checked.bundle"]
    assert private_copies(directory) == []
    again = backups.restore("checked.bundle")
    assert again.restored_count == MANY and again.skipped_count == 0
