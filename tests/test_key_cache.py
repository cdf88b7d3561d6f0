"""The store's key cache (vault/storage/freshness.py): one per process, shared by its request
threads, bounded by store.key_cache_size, and never serving a key after any change."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.test_storage import create, db_url, make_key
from vault.domain.names import KeyName
from vault.storage import open_store
from vault.storage.metadata_store import SqlMetadataStore


def cached(store: SqlMetadataStore, name: KeyName) -> object:
    assert store._key_cache is not None
    return store._key_cache.get(name)[0]


def in_new_thread(call: object) -> object:
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(call).result(timeout=30)  # type: ignore[arg-type]


def test_a_key_one_thread_read_is_cached_for_every_thread(tmp_path: Path) -> None:
    store = open_store(db_url(tmp_path / "vault.db"))
    try:
        key = create(store, make_key("shared"))
        in_new_thread(lambda: store.get_key(key.name))
        assert in_new_thread(lambda: cached(store, key.name)) == key
        assert cached(store, key.name) == key
        # Any change to keys, from anywhere, drops what every thread was served.
        create(store, make_key("other"))
        assert in_new_thread(lambda: cached(store, key.name)) is None
    finally:
        store.close()


def test_the_cache_keeps_at_most_its_size_and_the_most_recently_used(tmp_path: Path) -> None:
    store = open_store(db_url(tmp_path / "vault.db"), key_cache_size=3)
    try:
        names = [create(store, make_key(f"k{i}")).name for i in range(5)]
        for name in names[:3]:
            store.get_key(name)
        store.get_key(names[0])  # now the most recently used: kept when k3 and k4 come in
        for name in names[3:]:
            store.get_key(name)
        kept = [cached(store, name) is not None for name in names]
        assert kept == [True, False, False, True, True]
    finally:
        store.close()
