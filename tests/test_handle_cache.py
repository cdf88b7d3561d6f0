"""The unwrapped-key cache is one per process, shared by its threads, and bounded.

With a cache per thread, T threads hold T copies of each key and each covers only its own
share of the traffic: with 10,000 keys in use nearly every call missed. These tests run on
the real token: a key unwrapped by one thread serves every other thread of the process, keeps
working after the thread that unwrapped it lost its session, and the cache never holds more
than hsm.cache_size objects (the ones it evicts are destroyed in the token).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass, exceptions

from tests.support.tokens import generated_version, usable_object
from vault.domain.algorithms import Algorithm
from vault.domain.public_keys import verify_signature
from vault.hsm.keystore import Pkcs11KeyStore, _gcm_encrypt

AES = Algorithm.AES_256_GCM
P256 = Algorithm.EC_SIGN_P256_SHA256
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


def test_a_key_evicted_while_another_thread_signs_with_it_still_signs(
    keystore: Pkcs11KeyStore,
) -> None:
    # A cache of one key and threads signing with several: every miss evicts an object that
    # another thread may be using at that moment. No call may fail for it.
    keystore = Pkcs11KeyStore(keystore._library, cache_size=1, cache_ttl_seconds=300)
    versions = [generated_version(keystore, P256) for _ in range(3)]

    def signs(index: int) -> int:
        verified = 0
        for n in range(60):
            version = versions[(index + n) % len(versions)]
            digest = hashlib.sha256(f"{index}/{n}".encode()).digest()
            signature = keystore.sign(version, P256, digest, True)
            assert version.public_key_der is not None
            assert verify_signature(P256, version.public_key_der, digest, True, signature)
            verified += 1
        return verified

    with ThreadPoolExecutor(max_workers=6) as threads:
        assert sum(threads.map(signs, range(6))) == 360


def test_the_token_holds_at_most_the_cache_and_the_keys_of_calls_in_flight(
    keystore: Pkcs11KeyStore,
) -> None:
    # Evicted objects that a call still uses are destroyed by their last user: the token
    # may then hold more than the cache, but never more than one object per call in flight.
    size, workers = 3, 4
    keystore = Pkcs11KeyStore(keystore._library, cache_size=size, cache_ttl_seconds=300)
    versions = [generated_version(keystore, P256) for _ in range(8)]
    probe = keystore._library.token.open(rw=True)

    def live_p256_objects() -> int:
        template = {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.KEY_TYPE: KeyType.EC,
            Attribute.TOKEN: False,
        }
        while True:
            try:
                return len(list(probe.get_objects(template)))
            except exceptions.ObjectHandleInvalid:
                continue  # python-pkcs11 reads each found object's class: one just went

    before = live_p256_objects()
    running = True
    seen: list[int] = []

    def watch() -> None:
        while running:
            seen.append(live_p256_objects() - before)

    def signs(index: int) -> None:
        for n in range(80):
            keystore.sign(versions[(index * 3 + n) % len(versions)], P256, bytes(32), True)

    try:
        with ThreadPoolExecutor(max_workers=workers + 1) as threads:
            watcher = threads.submit(watch)
            list(threads.map(signs, range(workers)))
            running = False
            watcher.result(timeout=60)
        assert seen and max(seen) <= size + workers
        assert live_p256_objects() - before == size == keystore._handles.live()
    finally:
        probe.close()


def test_a_key_dropped_while_a_call_uses_it_is_destroyed_when_that_call_ends(
    keystore: Pkcs11KeyStore,
) -> None:
    # Another thread empties the cache (the key was disabled elsewhere) between this call's
    # lookup and its operation: the call still completes, and the object goes with it.
    keystore = Pkcs11KeyStore(keystore._library, cache_size=4, cache_ttl_seconds=300)
    version = generated_version(keystore, AES)
    used: list[Any] = []

    def seal(context: Any) -> bytes:
        key = keystore._key(context, version, AES)
        used.append(key.wrapper.origin)
        in_new_thread(keystore._handles.clear)
        return _gcm_encrypt(key, NONCE, b"in flight", b"")

    sealed = keystore.run(seal)
    assert keystore._handles.live() == 0
    try:
        used[-1][Attribute.CLASS]
    except exceptions.ObjectHandleInvalid:
        pass
    else:
        raise AssertionError("a dropped key object outlived the call that used it")
    assert keystore.decrypt_gcm(version, AES, NONCE, sealed, b"") == b"in flight"


def test_batches_of_several_threads_take_turns_and_each_gets_its_own_results(
    keystore: Pkcs11KeyStore,
) -> None:
    from vault.domain.ports import TokenGcm, TokenSign

    aes = generated_version(keystore, AES)
    p256 = generated_version(keystore, P256)
    assert p256.public_key_der is not None

    def batch(thread: int) -> tuple[list[bytes], list[bytes]]:
        nonces = [hashlib.sha256(b"%d-%d" % (thread, item)).digest()[:12] for item in range(20)]
        plaintexts = [b"thread %d item %d" % (thread, item) for item in range(20)]
        sealed = keystore.encrypt_gcm_many(
            [TokenGcm(aes, AES, nonce, data, b"") for nonce, data in zip(nonces, plaintexts)]
        )
        opened = keystore.decrypt_gcm_many(
            [
                TokenGcm(aes, AES, nonce, bytes(data), b"")
                for nonce, data in zip(nonces, sealed, strict=True)
                if isinstance(data, bytes)
            ]
        )
        assert opened == plaintexts
        signatures = keystore.sign_many([TokenSign(p256, P256, data, False) for data in plaintexts])
        assert all(isinstance(signature, bytes) for signature in signatures)
        return plaintexts, [signature for signature in signatures if isinstance(signature, bytes)]

    with ThreadPoolExecutor(max_workers=6) as threads:
        results = list(threads.map(batch, range(6), timeout=120))
    for plaintexts, signatures in results:
        for data, signature in zip(plaintexts, signatures, strict=True):
            assert verify_signature(P256, p256.public_key_der, data, False, signature)
    # Every batch gave its turn back: one more runs at once on this thread.
    assert not keystore._batch_turn.locked()
    (sealed,) = keystore.encrypt_gcm_many([TokenGcm(aes, AES, b"\x02" * 12, b"late", b"")])
    assert isinstance(sealed, bytes) and len(sealed) == len(b"late") + 16
