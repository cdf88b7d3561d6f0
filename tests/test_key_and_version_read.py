"""A request's key and key version in one store read (get_key_and_version), on SQLite and on
PostgreSQL: the same values the separate reads give, the primary or the version named, and
on SQLite straight from the key cache's probe connection instead of a pooled transaction.
With uniform random access over 10^5-10^6 keys nearly every call misses the caches, and two
pooled transactions cost more than the token operation of an AES key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from tests.test_storage import T0, create, make_key, make_version
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.errors import NotFound, WrongState
from vault.domain.models import KeyState, KeyVersion, RevocationReason
from vault.domain.names import KeyVersionName
from vault.domain.policy import KeyPolicy
from vault.hsm.keystore import Pkcs11KeyStore
from vault.service.crypto import CryptoOperations
from vault.service.keys import KeyManagement
from vault.storage import open_store
from vault.storage.metadata_store import SqlMetadataStore

P256 = Algorithm.EC_SIGN_P256_SHA256


def nothing_cached(_: KeyVersionName) -> KeyVersion | None:
    return None


@contextmanager
def pooled_statements(store: SqlMetadataStore) -> Iterator[list[str]]:
    """The SQL the store runs through its engine's pooled connections meanwhile."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    engine = store._engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_key_comes_with_its_primary_or_the_version_named(backend_url: str) -> None:
    store = open_store(backend_url)
    try:
        made = make_key("pair", labels={"team": "red", "tier": "1"})
        key = create(store, made, public_key_der=b"\x30public")
        later = make_version(key, 2, create_time=T0 + timedelta(hours=1), blob=b"\x01second")
        key = store.add_version(key, later)
        versions = store.list_versions(key.name)

        got_key, got_version = store.get_key_and_version(key.name, None, nothing_cached)
        assert got_key == key and got_key.labels == {"team": "red", "tier": "1"}
        assert got_version == versions[1]  # the primary, with its times and blob
        assert store.get_key_and_version(key.name, 1, nothing_cached) == (key, versions[0])
        assert store.get_version(key.name.version(1)) == versions[0]
        assert store.get_key_and_version(key.name, 9, nothing_cached) == (key, None)
        missing = replace(key.name, key="missing")
        assert store.get_key_and_version(missing, None, nothing_cached) == (None, None)
    finally:
        store.close()


def test_a_key_and_its_version_are_one_read(backend_url: str) -> None:
    store = open_store(backend_url)
    try:
        key = create(store, make_key("once"))
        with pooled_statements(store) as seen:
            found, version = store.get_key_and_version(key.name, None, nothing_cached)
        assert found == key and version is not None and version.number == 1
        selects = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]
        if backend_url.startswith("sqlite"):
            # The key cache's probe connection serves it: no pooled transaction at all.
            assert seen == []
        else:
            assert len(selects) == 1 and "JOIN" in selects[0].upper()
    finally:
        store.close()


def test_a_cached_key_takes_its_version_from_the_callers_cache_until_anything_changes(
    tmp_path: Any,
) -> None:
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    store, elsewhere = open_store(url), open_store(url)
    try:
        key = create(store, make_key("cached"))
        first = store.get_key_and_version(key.name, None, nothing_cached)
        assert first[1] is not None
        marked = replace(first[1], public_key_der=b"from the caller's cache")
        served = store.get_key_and_version(key.name, None, lambda name: marked)
        assert served == (key, marked)
        # Another process rotates the key: the next read is of the new primary, from the
        # database, whatever the caller's cache holds.
        rotated = elsewhere.add_version(key, make_version(key, 2, blob=b"\x02rotated"))
        fresh = store.get_key_and_version(key.name, None, lambda name: marked)
        assert fresh[0] == rotated and fresh[1] is not None
        assert fresh[1].number == 2 and fresh[1].wrapped_blob == b"\x02rotated"
    finally:
        store.close()
        elsewhere.close()


def test_a_key_changed_in_another_process_is_refused_on_the_next_call_though_cached(
    keystore: Pkcs11KeyStore, tmp_path: Any
) -> None:
    # Two workers' views of one store (their own caches) over the real token: what one
    # does to a key, the other refuses on its very next call, whatever it had cached.
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    here_store, there_store = open_store(url), open_store(url)
    policy = KeyPolicy(0, 0, 65_536)
    here = KeyManagement(here_store, keystore, policy)
    there = KeyManagement(there_store, keystore, policy)
    crypto = CryptoOperations(here, keystore, policy)
    try:
        key = there.create_key("acme", "signer", Purpose.SIGN_VERIFY, P256)
        name = str(key.name)
        for _ in range(2):  # the second call is served from every cache
            crypto.sign(name, message=b"m", digest=None)
        version_name = str(key.name.version(1))
        assert keystore._handles.cached(version_name) is not None

        there.disable_key(name)
        with pytest.raises(WrongState):
            crypto.sign(name, message=b"m", digest=None)
        there.enable_key(name)
        assert crypto.sign(name, message=b"m", digest=None).key_version_name == version_name

        there.schedule_destruction(name, timedelta(0))
        with pytest.raises(WrongState):
            crypto.sign(name, message=b"m", digest=None)
        there.destroy_due_keys()
        with pytest.raises(WrongState):
            crypto.sign(name, message=b"m", digest=None)
        # Its material is gone from this process too, not only refused.
        assert keystore._handles.cached(version_name) is None
        assert isinstance(here.load_with_version(key.name, 1)[1], NotFound)
    finally:
        here_store.close()
        there_store.close()


def test_the_direct_reads_convert_every_column_as_the_engine_does(backend_url: str) -> None:
    # Every optional column set: times, reason codes, labels, a request id, a token label.
    store = open_store(backend_url)
    try:
        made = replace(
            make_key("full", labels={"a": "1", "b": "two"}, request_id="req-1"),
            description="all columns",
        )
        key = create(store, made, token_label="vault:key:full", public_key_der=b"\x30\x00")
        revoked = store.revoke_key(
            replace(
                key,
                state=KeyState.REVOKED,
                revoke_time=T0 + timedelta(microseconds=123_457),
                revocation_reason_code=RevocationReason.SUPERSEDED,
                revocation_reason="rotated out",
            )
        )
        # Read through the engine's pooled transactions (SQLAlchemy's own conversions).
        engine_key = store.find_key_by_request_id("acme", "req-1")
        (engine_version,) = store.list_versions(key.name)
        assert engine_key == revoked and engine_version.revoked

        assert store.get_key(key.name) == engine_key
        assert store.get_version(key.name.version(1)) == engine_version
        assert store.get_key_and_version(key.name, None, nothing_cached) == (
            engine_key,
            engine_version,
        )
        got = store.get_key(key.name)
        assert got is not None and got.revoke_time is not None
        assert got.revoke_time.utcoffset() == timedelta(0) and got.token_resident is False
    finally:
        store.close()


def test_the_material_epoch_comes_first_in_the_same_read(backend_url: str) -> None:
    """A request learns the material epoch before the caller's version cache is asked, so a
    version another worker made unusable is dropped first; on SQLite it rides in the key
    cache's freshness check (one statement, no pooled transaction)."""
    store, elsewhere = open_store(backend_url), open_store(backend_url)
    try:
        key = create(store, make_key("epoch"))
        calls: list[tuple[str, int]] = []

        def seen(epoch: int) -> None:
            calls.append(("epoch", epoch))

        def cached(name: KeyVersionName) -> KeyVersion | None:
            calls.append(("version", name.version))
            return None

        start = store.material_epoch()
        for expected in (start, start + 1):
            calls.clear()
            store.get_key_and_version(key.name, None, nothing_cached)  # cached from now on
            with pooled_statements(store) as pooled:
                found, version = store.get_key_and_version(key.name, None, cached, seen)
            assert found == key and version is not None and version.number == 1
            if backend_url.startswith("sqlite"):
                assert calls == [("epoch", expected), ("version", 1)]
                assert pooled == []
            else:  # no key cache: both are read from the database, the epoch first
                assert calls == [("epoch", expected)]
            elsewhere.bump_material_epoch()
    finally:
        store.close()
        elsewhere.close()
