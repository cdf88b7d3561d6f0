"""The store's scan of revoked versions (scan_revocations, which the streamed revocation feed
counts and serialises), on SQLite and on PostgreSQL: the versions ListRevocations pages
through, in its order, all read from one snapshot, so a revocation committed while the scan
is under way (after more than one batch of rows) is in none of it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from tests.test_storage import T0, create, make_key, make_version
from vault.domain.models import Key, KeyState, RevocationReason
from vault.storage import open_store
from vault.storage.metadata_store import SqlMetadataStore

# More than one batch of the scan's rows (metadata_store._SCAN_BATCH).
VERSIONS = 1_200


def _revoke(store: SqlMetadataStore, key: Key, minutes: int) -> None:
    store.revoke_key(
        replace(
            key,
            state=KeyState.REVOKED,
            revoke_time=T0 + timedelta(minutes=minutes),
            revocation_reason_code=RevocationReason.SUPERSEDED,
            revocation_reason="rotated out",
        )
    )


def _all_pages(store: SqlMetadataStore, account: str | None) -> list[str]:
    names: list[str] = []
    token = ""
    while True:
        page = store.list_revocations(account, 0, token)
        names += [str(item.version_name) for item in page.items]
        token = page.next_page_token
        if not token:
            return names


def test_a_scan_reads_one_snapshot_in_listing_order(backend_url: str) -> None:
    store = open_store(backend_url)
    try:
        many = create(store, make_key("many"), public_key_der=b"\x30public")
        for number in range(2, VERSIONS + 1):
            many = store.add_version(many, make_version(many, number))
        _revoke(store, many, 1)
        late = create(store, make_key("zz-late"))
        elsewhere = create(store, make_key("other", account="beta"))
        _revoke(store, elsewhere, 2)

        scan = store.scan_revocations("acme")
        first = next(scan)
        # Committed while the scan is open, sorting after every row it still has to read.
        _revoke(store, late, 3)
        rest = list(scan)
        names = [str(first.version_name)] + [str(item.version_name) for item in rest]
        assert names == [f"accounts/acme/keys/many/versions/{n}" for n in range(1, VERSIONS + 1)]
        assert first.public_key_der == b"\x30public"
        assert first.reason_code is RevocationReason.SUPERSEDED
        assert first.revoke_time == T0 + timedelta(minutes=1)

        # A new scan sees it, and scans give what the pages give, for one account and all.
        after = [str(item.version_name) for item in store.scan_revocations("acme")]
        assert after == _all_pages(store, "acme") == [*names, f"{late.name}/versions/1"]
        every = [str(item.version_name) for item in store.scan_revocations(None)]
        assert every == _all_pages(store, None) and f"{elsewhere.name}/versions/1" in every
        assert list(store.scan_revocations("nobody")) == []
    finally:
        store.close()
