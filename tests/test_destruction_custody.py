"""What a destroyed key version leaves behind: no handle in any worker once it has served its
next request, and nothing in the data directory that opens a ciphertext of it.

The server's destruction job destroys the keys; this process plays one more worker (its own
token session and caches, built from the same settings), which is where handles of another
process can be inspected. The data directory is then searched the way a holder of the user
PIN would: the store's files read raw and every token object tried.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, ObjectClass, exceptions

from tests.support.api_calls import expect_error, new_account, new_id
from tests.test_keys_api import wait_destroyed
from vault.client import VaultClient
from vault.domain.algorithms import Algorithm
from vault.domain.envelope import GcmEnvelope, gcm_aad
from vault.domain.errors import WrongState
from vault.hsm import templates

T = TypeVar("T")
WORKER_THREADS = 3
PURGE_TIMEOUT_SECONDS = 5.0


@pytest.fixture(scope="module")
def worker(settings: Any, keystore: Any) -> Any:
    """The use cases as a server worker builds them, in this process."""
    from vault.app import key_policy
    from vault.service.crypto import CryptoOperations
    from vault.service.keys import KeyManagement
    from vault.storage import open_store

    store = open_store(settings.store.url)
    policy = key_policy(settings)
    keys = KeyManagement(
        store, keystore, policy, version_cache_seconds=settings.hsm.cache_ttl_seconds
    )
    yield CryptoOperations(keys, keystore, policy)
    store.close()


def in_thread(executor: ThreadPoolExecutor, call: Callable[[], T]) -> T:
    return executor.submit(call).result(timeout=60)


def test_every_worker_thread_drops_a_destroyed_versions_handle_on_its_next_request(
    client: VaultClient, worker: Any, keystore: Any
) -> None:
    account = new_account(client)
    doomed = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    other = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    ciphertext = client.encrypt(doomed, b"gone with the key").ciphertext
    version = f"{doomed}/versions/1"
    threads = [ThreadPoolExecutor(max_workers=1) for _ in range(WORKER_THREADS)]

    def decrypt_doomed() -> None:
        assert worker.decrypt(doomed, ciphertext, b"").data == b"gone with the key"

    try:
        for thread in threads:
            in_thread(thread, decrypt_doomed)
        # One unwrapped object serves every thread of the process.
        handle = keystore._handles.cached(version)
        assert handle is not None
        client.schedule_key_destruction(doomed, timedelta(0))
        wait_destroyed(client, doomed)
        # Destroyed in the server; until this worker serves a request, it still holds the
        # unwrapped key (what a TTL alone would leave for minutes).
        assert handle_alive(handle)
        # The next request of any thread, on another key, is enough.
        in_thread(threads[0], lambda: worker.encrypt(other, b"next request", b""))
        assert not handle_alive(handle)
        assert keystore._handles.cached(version) is None
        for thread in threads:
            with pytest.raises(WrongState):
                in_thread(thread, lambda: worker.decrypt(doomed, ciphertext, b""))
    finally:
        for thread in threads:
            thread.shutdown()


def handle_alive(handle: Any) -> bool:
    try:
        return bool(handle[Attribute.CLASS] == ObjectClass.SECRET_KEY)
    except exceptions.ObjectHandleInvalid:
        return False


def test_a_disabled_keys_handles_are_dropped_too(
    client: VaultClient, worker: Any, keystore: Any
) -> None:
    account = new_account(client)
    key = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    other = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    with ThreadPoolExecutor(max_workers=1) as thread:
        in_thread(thread, lambda: worker.encrypt(key, b"x", b""))
        assert keystore._handles.cached(f"{key}/versions/1") is not None
        client.disable_key(key)
        in_thread(thread, lambda: worker.encrypt(other, b"x", b""))
        assert keystore._handles.cached(f"{key}/versions/1") is None


# -- the data directory after destruction ---------------------------------------------------


def store_blobs(data_dir: Path) -> list[bytes]:
    """Every BLOB value in every table of every SQLite database in the data directory,
    read raw with the sqlite3 module (what anyone with the files can do)."""
    blobs: list[bytes] = []
    for path in sorted(data_dir.rglob("*.db")) + sorted(data_dir.rglob("*.sqlite*")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            tables = [
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
                for column in columns:
                    blobs += [
                        bytes(row[0])
                        for row in connection.execute(
                            f'SELECT "{column}" FROM "{table}" WHERE typeof("{column}") = \'blob\''
                        )
                    ]
        connection.close()
    return blobs


def opens(session: Any, key: Any, envelope: GcmEnvelope, aad: bytes) -> bool:
    if not key[Attribute.DECRYPT]:
        return False  # the token refuses (python-pkcs11 gives such keys no decrypt at all)
    try:
        key.decrypt(
            envelope.sealed,
            mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(envelope.nonce, aad, 128),
        )
    except exceptions.PKCS11Error:
        return False
    return True


def attempts_that_open(
    data_dir: Path, keystore: Any, ciphertext: bytes, key_name: str
) -> tuple[int, int]:
    """(attempts made, attempts that decrypted ciphertext): every blob of the store unwrapped
    under every key of the token that unwraps, and every secret key of the token used
    directly."""
    envelope = GcmEnvelope.parse(ciphertext)
    aad = gcm_aad(envelope.header(), key_name, b"")
    session = keystore._library.context().session
    secret_keys = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))
    unwrappers = [key for key in secret_keys if key[Attribute.UNWRAP]]
    assert unwrappers, "the token's root keys unwrap"
    tried = opened = 0
    for blob in store_blobs(data_dir):
        if len(blob) < 24 or len(blob) % 8:
            continue  # not an AES-KWP output
        for root in unwrappers:
            try:
                candidate = root.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    blob,
                    mechanism=templates.WRAP_MECHANISM,
                    capabilities=0,
                    template=templates.unwrapped_for_use(Algorithm.AES_256_GCM),
                )
            except exceptions.PKCS11Error:
                tried += 1
                continue
            tried += 1
            try:
                opened += opens(session, candidate, envelope, aad)
            finally:
                candidate.destroy()
    for key in secret_keys:
        tried += 1
        opened += opens(session, key, envelope, aad)
    return tried, opened


def test_nothing_left_in_the_data_directory_opens_a_destroyed_versions_ciphertext(
    client: VaultClient, data_dir: Path, keystore: Any
) -> None:
    account = new_account(client)
    key = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    ciphertext = client.encrypt(key, b"must not outlive its key").ciphertext
    # The search works: before destruction the store's blob, unwrapped under its root, opens
    # the ciphertext.
    tried, opened = attempts_that_open(data_dir, keystore, ciphertext, key)
    assert opened == 1 and tried > 1
    account_id, key_id = key.removeprefix("accounts/").split("/keys/")
    (blob,) = [
        row[0]
        for path in data_dir.glob("*.db")
        for row in sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute(
            "SELECT wrapped_blob FROM key_versions WHERE account = ? AND key_id = ?",
            (account_id, key_id),
        )
    ]

    client.schedule_key_destruction(key, timedelta(0))
    wait_destroyed(client, key)
    tried, opened = attempts_that_open(data_dir, keystore, ciphertext, key)
    assert tried > 1
    assert opened == 0
    # Nor is the erased blob anywhere in the files' raw bytes (free space in a page, the
    # write-ahead log): unwrapped under its root, which stays in the token, it would open it.
    # The job checkpoints right after erasing; under load, readers may make it retry on its
    # next round (0.5 s here), hence the short wait.
    deadline = time.monotonic() + PURGE_TIMEOUT_SECONDS
    while True:
        holding = [
            str(path.relative_to(data_dir))
            for path in sorted(data_dir.rglob("*"))
            if path.is_file() and bytes(blob) in path.read_bytes()
        ]
        if not holding or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert holding == []


def test_after_destruction_a_ciphertext_fails_in_every_worker_at_once(
    server: Any, client: VaultClient
) -> None:
    """Each new connection lands on a worker the kernel picks (SO_REUSEPORT): with 16 of
    them, both workers are all but certain to be reached, before and after."""
    account = new_account(client)
    key = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    ciphertext = client.encrypt(key, b"cached in every worker").ciphertext
    connections = 16
    for _ in range(connections):
        with server.client() as fresh:
            assert fresh.decrypt(key, ciphertext).plaintext == b"cached in every worker"
    client.schedule_key_destruction(key, timedelta(0))
    wait_destroyed(client, key)
    for _ in range(connections):
        with server.client() as fresh:
            expect_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                "WRONG_KEY_STATE",
                lambda c=fresh: c.decrypt(key, ciphertext),
            )
