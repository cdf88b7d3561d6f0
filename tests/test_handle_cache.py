"""The unwrapped-key cache is one per process, shared by its threads, and bounded.

With a cache per thread, T threads hold T copies of each key and each covers only its own
share of the traffic: with 10,000 keys in use nearly every call missed. These tests run on
the real token: a key unwrapped by one thread serves every other thread of the process, keeps
working after the thread that unwrapped it lost its session, and the cache never holds more
than hsm.cache_size objects (the ones it evicts are destroyed in the token).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pkcs11 import Attribute, exceptions

from tests.support.tokens import generated_version, usable_object
from vault.domain.algorithms import Algorithm
from vault.hsm.keystore import Pkcs11KeyStore

AES = Algorithm.AES_256_GCM
NONCE = b"\x01" * 12


def in_new_thread(call: Any) -> Any:
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(call).result(timeout=60)


def test_one_unwrapped_object_serves_every_thread(keystore: Pkcs11KeyStore) -> None:
    version = generated_version(keystore, AES)
    sealed = in_new_thread(lambda: keystore.encrypt_gcm(version, AES, NONCE, b"shared", b""))
    handles = {
        in_new_thread(lambda: usable_object(keystore, version, AES).handle) for _ in range(3)
    }
    assert len(handles) == 1
    # A thread that never touched the key opens what another thread sealed.
    assert in_new_thread(lambda: keystore.decrypt_gcm(version, AES, NONCE, sealed, b"")) == (
        b"shared"
    )


def test_a_shared_object_outlives_the_session_of_the_thread_that_unwrapped_it(
    keystore: Pkcs11KeyStore,
) -> None:
    version = generated_version(keystore, AES)

    def seal_and_lose_session() -> bytes:
        sealed = keystore.encrypt_gcm(version, AES, NONCE, b"kept", b"")
        # What the token layer does after a stale handle: close this thread's session.
        keystore._library.drop_context()
        return sealed

    sealed = in_new_thread(seal_and_lose_session)
    before = keystore._handles.cached(str(version.name))
    assert keystore.decrypt_gcm(version, AES, NONCE, sealed, b"") == b"kept"
    assert keystore._handles.cached(str(version.name)) is before


def test_the_cache_holds_at_most_its_size_and_destroys_what_it_evicts(
    keystore: Pkcs11KeyStore,
) -> None:
    # On the same module instance: starting a second one would void the fixture's sessions.
    keystore = Pkcs11KeyStore(keystore._library, cache_size=4, cache_ttl_seconds=300)
    versions = [generated_version(keystore, AES) for _ in range(7)]
    first = usable_object(keystore, versions[0], AES)
    for version in versions[1:]:
        keystore.encrypt_gcm(version, AES, NONCE, b"x", b"")
    assert len(keystore._handles) == 4
    assert keystore._handles.cached(str(versions[0].name)) is None
    try:
        first[Attribute.CLASS]
    except exceptions.ObjectHandleInvalid:
        pass
    else:
        raise AssertionError("an evicted key object is still in the token")


def test_threads_use_one_shared_object_at_the_same_time(keystore: Pkcs11KeyStore) -> None:
    # Each call runs in its own thread's session: one operation per session, many per object.
    version = generated_version(keystore, AES)

    def round_trips(index: int) -> bool:
        for n in range(100):
            nonce = index.to_bytes(4, "big") + n.to_bytes(8, "big")
            plaintext = f"thread {index} call {n}".encode()
            sealed = keystore.encrypt_gcm(version, AES, nonce, plaintext, b"")
            if keystore.decrypt_gcm(version, AES, nonce, sealed, b"") != plaintext:
                return False
        return True

    with ThreadPoolExecutor(max_workers=8) as threads:
        assert all(threads.map(round_trips, range(8)))
    assert keystore._handles.cached(str(version.name)) is not None
