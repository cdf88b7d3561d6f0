"""The store's side of backup: tombstones written with each revocation and destruction (and
by migration 0008 for those made before it), and the export log."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command

from tests.support.api_calls import every_page
from tests.test_storage import T0, create, db_url, make_key, make_version
from vault.domain.backup import ExportRecord
from vault.domain.errors import InvalidArgument
from vault.domain.models import KeyState, RevocationReason
from vault.domain.names import KeyVersionName
from vault.storage import Stores, alembic_config, open_stores
from vault.storage.engine import make_engine, write_transaction
from vault.storage.paging import encode_page_token


def _states(stores: Stores, key_id: str) -> list[tuple[str, str]]:
    key = make_key(key_id).name
    return [(tombstone.name, str(tombstone.state)) for tombstone in stores.backups.tombstones(key)]


def _revoke_and_destroy(stores: Stores) -> None:
    store = stores.metadata
    revoked = create(store, make_key("revoked"))
    later = T0 + timedelta(hours=1)
    store.revoke_key(
        replace(
            revoked.transition(KeyState.REVOKED, later),
            revoke_time=later,
            revocation_reason_code=RevocationReason.COMPROMISED,
            revocation_reason="leaked",
        )
    )
    rotated = create(store, make_key("rotated"))
    rotated = store.add_version(rotated, make_version(rotated, 2))
    store.revoke_version(
        rotated,
        replace(make_version(rotated, 1), revoke_time=later, revocation_reason="superseded"),
    )
    destroyed = create(store, make_key("destroyed"))
    scheduled = store.update_key(
        replace(
            destroyed.transition(KeyState.DESTROY_SCHEDULED, later),
            destroy_scheduled_time=later,
            state_before_destroy_scheduled=KeyState.ENABLED,
        )
    )
    store.mark_destroyed(scheduled, later)


def test_revocations_and_destructions_leave_tombstones(tmp_path: Path) -> None:
    stores = open_stores(db_url(tmp_path / "vault.db"))
    try:
        _revoke_and_destroy(stores)
        assert _states(stores, "revoked") == [("accounts/acme/keys/revoked", "REVOKED")]
        assert _states(stores, "rotated") == [("accounts/acme/keys/rotated/versions/1", "REVOKED")]
        assert _states(stores, "destroyed") == [("accounts/acme/keys/destroyed", "DESTROYED")]
        (revoked,) = stores.backups.tombstones(make_key("revoked").name)
        assert revoked.reason_code is RevocationReason.COMPROMISED
        assert revoked.reason == "leaked"
    finally:
        stores.close()


def test_migration_0008_records_what_was_revoked_or_destroyed_before_it(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    stores = open_stores(db_url(path))
    try:
        _revoke_and_destroy(stores)
    finally:
        stores.close()
    engine = make_engine(db_url(path))
    config = alembic_config()
    try:
        with write_transaction(engine) as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0007")
            command.upgrade(config, "0008")
    finally:
        engine.dispose()
    stores = open_stores(db_url(path))
    try:
        assert _states(stores, "revoked") == [("accounts/acme/keys/revoked", "REVOKED")]
        assert _states(stores, "rotated") == [("accounts/acme/keys/rotated/versions/1", "REVOKED")]
        assert _states(stores, "destroyed") == [("accounts/acme/keys/destroyed", "DESTROYED")]
    finally:
        stores.close()


def _holding(stores: Stores, version: KeyVersionName, page_size: int = 0) -> list[list[str]]:
    """The export ids of every page of exports_holding(version)."""
    pages = every_page(lambda token: stores.backups.exports_holding(version, page_size, token))
    return [[record.export_id for record in page.items] for page in pages]


def test_the_export_log_finds_the_exports_holding_a_version(backend_url: str) -> None:
    stores = open_stores(backend_url)
    try:
        key = make_key("k").name
        for number, held in enumerate(([key.version(1)], [key.version(1), key.version(2)], [])):
            stores.backups.record_export(
                ExportRecord(
                    f"e{number}", T0 + timedelta(minutes=number), {"accounts": []}, 3, "f"
                ),
                held,
            )
        assert _holding(stores, key.version(1)) == [["e0", "e1"]]
        assert _holding(stores, key.version(2)) == [["e1"]]
        assert _holding(stores, key.version(3)) == [[]]
    finally:
        stores.close()


def test_the_export_log_pages_oldest_first_and_resumes_within_one_microsecond(
    backend_url: str,
) -> None:
    """Exports of one time are ordered by id, so a page ending among them resumes right
    after its last one, and every export is listed once."""
    stores = open_stores(backend_url)
    try:
        key = make_key("k").name
        times = [T0 + timedelta(minutes=2), T0, T0 + timedelta(minutes=1), T0, T0, T0]
        for number, time in enumerate(times):
            stores.backups.record_export(
                ExportRecord(f"e{number}", time, {"keys": [str(key)]}, 1, "f"), [key.version(1)]
            )
        assert _holding(stores, key.version(1), page_size=2) == [
            ["e1", "e3"],
            ["e4", "e5"],
            ["e2", "e0"],
        ]
        assert _holding(stores, key.version(1), page_size=4) == [
            ["e1", "e3", "e4", "e5"],
            ["e2", "e0"],
        ]
        # Page.first (a page cut by size) resumes after the last item kept.
        first = stores.backups.exports_holding(key.version(1), 4, "").first(1)
        rest = stores.backups.exports_holding(key.version(1), 0, first.next_page_token)
        assert [r.export_id for r in rest.items] == ["e3", "e4", "e5", "e2", "e0"]
        for token in ("%%%", "MTIz", encode_page_token("12.a b"), encode_page_token("x.e1")):
            with pytest.raises(InvalidArgument):
                stores.backups.exports_holding(key.version(1), 2, token)
    finally:
        stores.close()


def test_restore_keys_writes_a_batch_at_once_and_leaves_out_the_names_taken(
    backend_url: str,
) -> None:
    from vault.domain.errors import AlreadyExists

    stores = open_stores(backend_url)
    try:
        taken = create(stores.metadata, make_key("taken"))
        batch = [
            (key, [make_version(key, 1), make_version(key, 2)], None)
            for key in (make_key("new-a"), make_key("taken"), make_key("new-b"))
        ]
        assert stores.backups.restore_keys(batch) == {taken.name}
        for key_id in ("new-a", "new-b"):
            versions = stores.metadata.list_versions(make_key(key_id).name)
            assert [version.number for version in versions] == [1, 2]
        assert stores.metadata.get_key(taken.name) == taken

        # Two items of one name: nothing of the batch is written, the caller goes one by one.
        twice = [(make_key(key_id), [], None) for key_id in ("new-c", "twice", "twice")]
        with pytest.raises(AlreadyExists):
            stores.backups.restore_keys(twice)  # type: ignore[arg-type]
        assert stores.metadata.get_key(make_key("new-c").name) is None

        _revoke_and_destroy(stores)
        names = [make_key(key_id).name for key_id in ("revoked", "rotated", "new-a")]
        found = stores.backups.tombstones_of(names)
        assert {name.key: [t.name for t in found[name]] for name in names} == {
            "revoked": [str(names[0])],
            "rotated": [f"{names[1]}/versions/1"],
            "new-a": [],
        }
    finally:
        stores.close()
