"""Client-side object encryption (vault.client.ObjectCipher) and its bucket-key cache.

The vault's BucketService is stood in for by FakeBucketService: bucket keys wrapped with
`cryptography`'s AESGCM under a random master key per bucket, the bucket name as AAD, so a
wrapped key moved to another bucket is refused as the vault would refuse it. Nothing here
needs a server; the end-to-end test comes with the BucketService.

The committed vectors (tests/vectors/object_format/*.json) are reproduced byte for byte, and
decoded again by an independent reading of README.md's "Object encryption format"
(reference_decrypt), so the README is enough to implement the format elsewhere.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault.client import (
    BucketKeyCache,
    BucketKeyRejected,
    GeneratedBucketKey,
    ObjectCipher,
    ObjectIntegrityError,
)
from vault.client.object_format import (
    DEFAULT_SEGMENT_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_HEADER_SIZE,
    TAG_SIZE,
    ObjectHeader,
    derive_object_key,
    object_binding,
    sealed_size,
)

VECTORS = sorted((Path(__file__).parent / "vectors" / "object_format").glob("*.json"))
BUCKET = "accounts/acme/buckets/photos"
OTHER_BUCKET = "accounts/acme/buckets/backups"
SEGMENT = 64  # small segments keep tamper tests with many segments fast
INTEGRITY_MESSAGE = "the encrypted object failed its integrity check"


class MasterKeyDisabled(Exception):
    """What the vault answers GenerateBucketKey with once the bucket's master key is disabled
    (FAILED_PRECONDITION WRONG_KEY_STATE in the real SDK)."""


class FakeBucketService:
    """The BucketService's two calls over in-memory master keys, counting calls."""

    def __init__(
        self,
        lifetime_seconds: float = 3600.0,
        max_objects: int | None = None,
        max_bytes: int | None = None,
        generate_delay: float = 0.0,
    ) -> None:
        self.lifetime_seconds = lifetime_seconds
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.generate_delay = generate_delay
        self.disabled = False
        self.generated: list[bytes] = []
        self.decrypt_calls = 0
        self._masters: dict[str, AESGCM] = {}
        self._lock = threading.Lock()

    def _master(self, bucket: str) -> AESGCM:
        with self._lock:
            return self._masters.setdefault(bucket, AESGCM(AESGCM.generate_key(256)))

    def generate_bucket_key(self, bucket: str) -> GeneratedBucketKey:
        if self.disabled:
            raise MasterKeyDisabled(bucket)
        time.sleep(self.generate_delay)
        plaintext, nonce = os.urandom(32), os.urandom(12)
        wrapped = nonce + self._master(bucket).encrypt(nonce, plaintext, bucket.encode())
        with self._lock:
            self.generated.append(plaintext)
        return GeneratedBucketKey(
            plaintext, wrapped, "1", self.lifetime_seconds, self.max_objects, self.max_bytes
        )

    def decrypt_bucket_key(self, bucket: str, wrapped: bytes) -> bytes:
        with self._lock:
            self.decrypt_calls += 1
        try:
            return self._master(bucket).decrypt(wrapped[:12], wrapped[12:], bucket.encode())
        except InvalidTag:
            raise BucketKeyRejected() from None


class FixedBucketKey:
    """A source that always hands out one vector's bucket key."""

    def __init__(self, vector: dict[str, Any]) -> None:
        self.plaintext = bytes.fromhex(vector["bucket_key"])
        self.wrapped = bytes.fromhex(vector["wrapped_key"])
        self.version = vector["master_key_version"]

    def generate_bucket_key(self, bucket: str) -> GeneratedBucketKey:
        return GeneratedBucketKey(self.plaintext, self.wrapped, self.version, 60.0)

    def decrypt_bucket_key(self, bucket: str, wrapped: bytes) -> bytes:
        if wrapped != self.wrapped:
            raise BucketKeyRejected()
        return self.plaintext


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ShortReads(io.RawIOBase):
    """A binary input that returns at most 7 bytes per read, as pipes and sockets may."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 7 if size < 0 else min(size, 7)
        chunk, self._data = self._data[:size], self._data[size:]
        return bytes(chunk)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


def fixed_randomness(vector: dict[str, Any]) -> Callable[[int], bytes]:
    """random_bytes for ObjectCipher that hands out the vector's salt, then its prefix."""
    values = iter([bytes.fromhex(vector["salt"]), bytes.fromhex(vector["nonce_prefix"])])
    return lambda size: next(values)


def reference_decrypt(obj: bytes, bucket_key: bytes, bucket: str, object_key: str) -> bytes:
    """The format as README.md states it, written independently of vault.client."""
    magic, version, header_length = struct.unpack_from(">4sBH", obj, 0)
    assert (magic, version) == (b"VOBJ", 1)
    segment_size, salt, nonce_prefix = struct.unpack_from(">I32s7s", obj, 7)
    version_length = obj[50]
    (wrapped_length,) = struct.unpack_from(">H", obj, 51 + version_length)
    assert 53 + version_length + wrapped_length == header_length
    header = obj[:header_length]

    def lp(text: str) -> bytes:
        return len(text.encode()).to_bytes(4, "big") + text.encode()

    info = b"vault object key v1" + lp(bucket) + lp(object_key)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(bucket_key)
    aad = lp(bucket) + lp(object_key) + hashes_sha256(header)
    body = obj[header_length:]
    step = segment_size + 16
    segments = [body[i : i + step] for i in range(0, len(body), step)]
    assert segments, "an object has at least one segment"
    plaintext = b""
    for index, sealed in enumerate(segments):
        last = index == len(segments) - 1
        nonce = nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        plaintext += AESGCM(key).decrypt(nonce, sealed, aad)
    return plaintext


def hashes_sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


@pytest.fixture
def service() -> FakeBucketService:
    return FakeBucketService()


@pytest.fixture
def cipher(service: FakeBucketService) -> ObjectCipher:
    return ObjectCipher(service, BUCKET, segment_size=SEGMENT)


def refused(call: Callable[[], object]) -> None:
    with pytest.raises(ObjectIntegrityError) as caught:
        call()
    assert str(caught.value) == INTEGRITY_MESSAGE


# -- round trips ----------------------------------------------------------------------------


SIZES = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT, 5 * SEGMENT + 17]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_bytes_and_streams(cipher: ObjectCipher, size: int) -> None:
    data = os.urandom(size)
    sealed = cipher.encrypt("a/b.bin", data)
    assert len(sealed) == sealed_size(size, header_size_of(bytes(sealed)), SEGMENT)
    assert cipher.decrypt("a/b.bin", sealed) == data
    assert cipher.decrypt("a/b.bin", io.BytesIO(bytes(sealed))) == data
    assert cipher.decrypt("a/b.bin", ShortReads(bytes(sealed))) == data

    out = io.BytesIO()
    written = cipher.encrypt("a/b.bin", ShortReads(data), out)
    assert written == len(out.getvalue()) == len(sealed)
    assert out.getvalue() != bytes(sealed)  # a fresh salt and nonce prefix per object
    back = io.BytesIO()
    assert cipher.decrypt("a/b.bin", io.BytesIO(out.getvalue()), back) == size
    assert back.getvalue() == data
    streamed = b"".join(cipher.encrypt_stream("a/b.bin", memoryview(data)))
    assert b"".join(cipher.decrypt_stream("a/b.bin", streamed)) == data


@pytest.mark.parametrize("size", [0, 1, 65537, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_round_trip_with_the_default_segment_size(service: FakeBucketService, size: int) -> None:
    cipher = ObjectCipher(service, BUCKET)
    data = os.urandom(size)
    assert cipher.decrypt("k", cipher.encrypt("k", data)) == data
    assert cipher.decrypt("k", b"".join(cipher.encrypt_stream("k", io.BytesIO(data)))) == data


def test_every_object_gets_a_fresh_salt_and_nonce_prefix(cipher: ObjectCipher) -> None:
    sealed = [bytes(cipher.encrypt("k", b"same")) for _ in range(2)]
    first, second = (ObjectHeader.parse(s[: header_size_of(s)]) for s in sealed)
    assert first.wrapped_key == second.wrapped_key  # one bucket key, cached
    assert first.salt != second.salt
    assert first.nonce_prefix != second.nonce_prefix


def test_bad_arguments_are_refused_before_any_vault_call(service: FakeBucketService) -> None:
    with pytest.raises(ValueError):
        ObjectCipher(service, BUCKET, segment_size=8)
    with pytest.raises(ValueError):
        ObjectCipher(service, BUCKET, segment_size=MAX_SEGMENT_SIZE + 1)
    with pytest.raises(ValueError):
        ObjectCipher(service, "")
    with pytest.raises(ValueError):
        ObjectCipher(service, BUCKET, cache=BucketKeyCache(FakeBucketService()))
    with pytest.raises(ValueError):
        ObjectCipher(service, BUCKET).encrypt("", b"x")
    assert service.generated == []


# -- the committed vectors ------------------------------------------------------------------


def test_the_vectors_are_there() -> None:
    assert len(VECTORS) >= 6


@pytest.mark.parametrize("path", VECTORS, ids=[path.stem for path in VECTORS])
def test_vector_is_reproduced_exactly(path: Path) -> None:
    vector = load(path)
    cipher = ObjectCipher(
        FixedBucketKey(vector),
        vector["bucket"],
        segment_size=vector["segment_size"],
        random_bytes=fixed_randomness(vector),
    )
    plaintext = bytes.fromhex(vector["plaintext"])
    expected = bytes.fromhex(vector["object"])
    assert cipher.encrypt(vector["object_key"], plaintext) == expected
    assert cipher.decrypt(vector["object_key"], expected) == plaintext

    streamed = ObjectCipher(
        FixedBucketKey(vector),
        vector["bucket"],
        segment_size=vector["segment_size"],
        random_bytes=fixed_randomness(vector),
    )
    assert b"".join(streamed.encrypt_stream(vector["object_key"], io.BytesIO(plaintext))) == (
        expected
    )


@pytest.mark.parametrize("path", VECTORS, ids=[path.stem for path in VECTORS])
def test_vector_intermediate_values(path: Path) -> None:
    vector = load(path)
    bucket_key, salt = bytes.fromhex(vector["bucket_key"]), bytes.fromhex(vector["salt"])
    header = ObjectHeader(
        vector["segment_size"],
        salt,
        bytes.fromhex(vector["nonce_prefix"]),
        vector["master_key_version"],
        bytes.fromhex(vector["wrapped_key"]),
    )
    assert header.to_bytes().hex() == vector["header"]
    assert ObjectHeader.parse(header.to_bytes()) == header
    derived = derive_object_key(bucket_key, salt, vector["bucket"], vector["object_key"])
    assert derived.hex() == vector["derived_key"]
    info = b"vault object key v1" + object_binding(vector["bucket"], vector["object_key"])
    assert HKDF(hashes.SHA256(), 32, salt, info).derive(bucket_key) == derived
    obj = bytes.fromhex(vector["object"])
    assert vector["header"] + "".join(s["sealed"] for s in vector["segments"]) == vector["object"]
    assert reference_decrypt(obj, bucket_key, vector["bucket"], vector["object_key"]) == (
        bytes.fromhex(vector["plaintext"])
    )


INVALID = sorted((Path(__file__).parent / "vectors" / "object_format" / "invalid").glob("*.json"))


@pytest.mark.parametrize("path", INVALID, ids=[path.stem for path in INVALID])
def test_invalid_vectors_are_refused(path: Path) -> None:
    invalid = load(path)
    vector = load(path.parent.parent / invalid["vector"])
    bucket_key = bytes.fromhex(vector["bucket_key"])
    cipher = ObjectCipher(FixedBucketKey(vector), vector["bucket"])
    assert len(invalid["cases"]) >= 10
    for case in invalid["cases"]:
        obj = bytes.fromhex(case["object"])
        refused(lambda obj=obj: cipher.decrypt(vector["object_key"], obj))
        with pytest.raises((InvalidTag, AssertionError, struct.error, IndexError)):
            reference_decrypt(obj, bucket_key, vector["bucket"], vector["object_key"])


# -- tampering ------------------------------------------------------------------------------


def segments_of(sealed: bytes, header_size: int, segment_size: int = SEGMENT) -> list[bytes]:
    body = sealed[header_size:]
    step = segment_size + TAG_SIZE
    return [body[i : i + step] for i in range(0, len(body), step)]


def header_size_of(sealed: bytes) -> int:
    return ObjectHeader.header_size(sealed[:7])


def decrypt_everywhere(cipher: ObjectCipher, object_key: str, sealed: bytes) -> None:
    """Every decrypt entry point refuses sealed with the one error."""
    refused(lambda: cipher.decrypt(object_key, sealed))
    refused(lambda: cipher.decrypt(object_key, io.BytesIO(sealed)))
    refused(lambda: cipher.decrypt(object_key, io.BytesIO(sealed), io.BytesIO()))
    refused(lambda: list(cipher.decrypt_stream(object_key, ShortReads(sealed))))


def test_every_header_byte_is_authenticated(cipher: ObjectCipher) -> None:
    sealed = bytes(cipher.encrypt("k", os.urandom(3 * SEGMENT + 5)))
    header_size = header_size_of(sealed)
    for position in range(header_size):
        for bit in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[position] ^= bit
            decrypt_everywhere(cipher, "k", bytes(tampered))


def test_header_fields_replaced_by_valid_other_values(cipher: ObjectCipher) -> None:
    """Well-formed headers with one field changed (not just flipped bits)."""
    data = os.urandom(2 * SEGMENT + 1)
    sealed = bytes(cipher.encrypt("k", data))
    header_size = header_size_of(sealed)
    header = ObjectHeader.parse(sealed[:header_size])
    body = sealed[header_size:]
    other = ObjectHeader.parse(bytes(cipher.encrypt("k", data)[:header_size]))
    changes = {
        "segment_size": {"segment_size": SEGMENT * 2},
        "salt": {"salt": other.salt},
        "nonce_prefix": {"nonce_prefix": other.nonce_prefix},
        "master_key_version": {"master_key_version": "2"},
        "wrapped_key": {"wrapped_key": header.wrapped_key[:-1]},
    }
    for change in changes.values():
        fields = {
            "segment_size": header.segment_size,
            "salt": header.salt,
            "nonce_prefix": header.nonce_prefix,
            "master_key_version": header.master_key_version,
            "wrapped_key": header.wrapped_key,
        }
        fields.update(change)
        decrypt_everywhere(cipher, "k", ObjectHeader(**fields).to_bytes() + body)
    # Another version byte, another magic, a header length that disagrees.
    for position, value in ((4, 2), (0, ord("X")), (6, sealed[6] + 1)):
        tampered = bytearray(sealed)
        tampered[position] = value
        decrypt_everywhere(cipher, "k", bytes(tampered))


def test_a_flipped_bit_in_any_segment_is_refused(cipher: ObjectCipher) -> None:
    sealed = bytes(cipher.encrypt("k", os.urandom(4 * SEGMENT + 9)))
    header_size = header_size_of(sealed)
    segments = segments_of(sealed, header_size)
    start = header_size
    for segment in segments:
        # first byte, a middle byte, the tag's last byte
        for offset in (0, len(segment) // 2, len(segment) - 1):
            tampered = bytearray(sealed)
            tampered[start + offset] ^= 0x04
            decrypt_everywhere(cipher, "k", bytes(tampered))
        start += len(segment)


def test_truncation_at_every_segment_boundary_and_inside_is_refused(
    cipher: ObjectCipher,
) -> None:
    for size in (3 * SEGMENT, 3 * SEGMENT + 10):
        sealed = bytes(cipher.encrypt("k", os.urandom(size)))
        header_size = header_size_of(sealed)
        step = SEGMENT + TAG_SIZE
        cuts = [0, 3, header_size - 1, header_size]
        cuts += [header_size + n * step for n in range(1, len(segments_of(sealed, header_size)))]
        cuts += [len(sealed) - 1, len(sealed) - TAG_SIZE]
        for cut in cuts:
            decrypt_everywhere(cipher, "k", sealed[:cut])


def test_truncated_stream_fails_before_the_last_remaining_segment_is_released(
    cipher: ObjectCipher,
) -> None:
    data = os.urandom(4 * SEGMENT)
    sealed = bytes(cipher.encrypt("k", data))
    header_size = header_size_of(sealed)
    step = SEGMENT + TAG_SIZE
    for kept in (1, 2, 3):
        released: list[bytes] = []
        with pytest.raises(ObjectIntegrityError):
            for chunk in cipher.decrypt_stream(
                "k", io.BytesIO(sealed[: header_size + kept * step])
            ):
                released.append(chunk)
        # Segments before the cut are authentic; the one that now ends the object never came.
        assert b"".join(released) == data[: (kept - 1) * SEGMENT]


def test_a_tampered_segment_is_never_released(cipher: ObjectCipher) -> None:
    data = os.urandom(4 * SEGMENT)
    sealed = bytearray(cipher.encrypt("k", data))
    header_size = header_size_of(bytes(sealed))
    sealed[header_size + 2 * (SEGMENT + TAG_SIZE) + 5] ^= 1
    released: list[bytes] = []
    with pytest.raises(ObjectIntegrityError):
        for chunk in cipher.decrypt_stream("k", io.BytesIO(bytes(sealed))):
            released.append(chunk)
    assert b"".join(released) == data[: 2 * SEGMENT]


def test_appended_bytes_and_segments_are_refused(cipher: ObjectCipher) -> None:
    for size in (0, SEGMENT, 2 * SEGMENT + 3):
        sealed = bytes(cipher.encrypt("k", os.urandom(size)))
        header_size = header_size_of(sealed)
        last = segments_of(sealed, header_size)[-1]
        for extra in (b"\x00", os.urandom(TAG_SIZE), os.urandom(SEGMENT + TAG_SIZE), last):
            decrypt_everywhere(cipher, "k", sealed + extra)


def test_reordered_dropped_and_repeated_segments_are_refused(cipher: ObjectCipher) -> None:
    sealed = bytes(cipher.encrypt("k", os.urandom(4 * SEGMENT)))
    header_size = header_size_of(sealed)
    header, segments = sealed[:header_size], segments_of(sealed, header_size)
    orders = [[1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 3, 2], [3, 1, 2, 0], [0, 2, 3], [0, 0, 1, 2, 3]]
    for order in orders:
        decrypt_everywhere(cipher, "k", header + b"".join(segments[i] for i in order))


def test_segments_swapped_between_objects_are_refused(cipher: ObjectCipher) -> None:
    """Same bucket key, same object key, same length: only the per-object salt differs."""
    first = bytes(cipher.encrypt("k", os.urandom(3 * SEGMENT)))
    second = bytes(cipher.encrypt("k", os.urandom(3 * SEGMENT)))
    header_size = header_size_of(first)
    a, b = segments_of(first, header_size), segments_of(second, header_size)
    for index in range(3):
        spliced = [*a[:index], b[index], *a[index + 1 :]]
        decrypt_everywhere(cipher, "k", first[:header_size] + b"".join(spliced))
    decrypt_everywhere(cipher, "k", second[:header_size] + b"".join(a))


def test_an_object_moved_to_another_object_key_or_bucket_is_refused(
    service: FakeBucketService, cipher: ObjectCipher
) -> None:
    sealed = bytes(cipher.encrypt("photos/cat.jpg", os.urandom(2 * SEGMENT)))
    for other_key in ("photos/dog.jpg", "photos/cat.jpg ", "photos/cat.jp"):
        decrypt_everywhere(cipher, other_key, sealed)
    other_bucket = ObjectCipher(service, OTHER_BUCKET, segment_size=SEGMENT)
    decrypt_everywhere(other_bucket, "photos/cat.jpg", sealed)


def test_the_bucket_binding_holds_even_if_the_vault_unwrapped_for_another_bucket(
    cipher: ObjectCipher,
) -> None:
    """The object key is derived with the bucket in HKDF's info and bound in the AAD, so a
    source that (wrongly) unwraps any bucket's key still cannot open the object elsewhere."""
    data = os.urandom(SEGMENT + 1)
    sealed = bytes(cipher.encrypt("k", data))
    wrapped = ObjectHeader.parse(sealed[: header_size_of(sealed)]).wrapped_key
    bucket_key = cipher.cache.unwrap(BUCKET, wrapped)

    class Careless(FakeBucketService):
        def decrypt_bucket_key(self, bucket: str, wrapped: bytes) -> bytes:
            return bucket_key

    decrypt_everywhere(ObjectCipher(Careless(), OTHER_BUCKET), "k", sealed)
    assert ObjectCipher(Careless(), BUCKET).decrypt("k", sealed) == data


def test_garbage_and_length_ambiguities_are_refused(cipher: ObjectCipher) -> None:
    for garbage in (b"", b"VOBJ", b"VOBJ\x01", os.urandom(200), b"VOBJ\x01\xff\xff" + bytes(100)):
        decrypt_everywhere(cipher, "k", garbage)
    # Keys that would run together without length prefixes derive different object keys.
    salt = os.urandom(32)
    key = os.urandom(32)
    assert derive_object_key(key, salt, "ab", "c") != derive_object_key(key, salt, "a", "bc")


def test_failures_of_the_vault_itself_are_not_integrity_errors(cipher: ObjectCipher) -> None:
    sealed = bytes(cipher.encrypt("k", b"data"))

    class Unavailable(FakeBucketService):
        def decrypt_bucket_key(self, bucket: str, wrapped: bytes) -> bytes:
            raise ConnectionError("vault unavailable")

    with pytest.raises(ConnectionError):
        ObjectCipher(Unavailable(), BUCKET).decrypt("k", sealed)


def test_no_secret_in_errors_or_reprs(service: FakeBucketService, cipher: ObjectCipher) -> None:
    data = b"top secret plaintext"
    sealed = bytearray(cipher.encrypt("k", data))
    sealed[-1] ^= 1
    with pytest.raises(ObjectIntegrityError) as caught:
        cipher.decrypt("k", bytes(sealed))
    bucket_key = service.generated[0]
    texts = [str(caught.value), repr(caught.value), repr(cipher), repr(cipher.cache)]
    texts.append(repr(service.generate_bucket_key(BUCKET)))
    texts.append(repr(ObjectHeader.parse(bytes(sealed[: header_size_of(bytes(sealed))]))))
    for text in texts:
        assert bucket_key.hex() not in text and repr(bucket_key) not in text
        assert "secret" not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# -- the bucket-key cache -------------------------------------------------------------------


def test_a_thousand_small_objects_cost_one_vault_call(
    service: FakeBucketService, cipher: ObjectCipher
) -> None:
    sealed = [bytes(cipher.encrypt(f"o/{n}", os.urandom(10))) for n in range(1000)]
    stats = cipher.cache.stats()
    assert (stats.generate_calls, stats.decrypt_calls, stats.hits, stats.misses) == (1, 0, 999, 1)
    assert len(service.generated) == 1
    # A reader elsewhere (its own cache) unwraps the bucket key once for all of them.
    reader = ObjectCipher(service, BUCKET)
    for n, obj in enumerate(sealed):
        reader.decrypt(f"o/{n}", obj)
    assert reader.cache.stats().vault_calls == 1
    assert service.decrypt_calls == 1


def test_the_object_budget_of_the_policy_forces_new_keys() -> None:
    service = FakeBucketService(max_objects=10)
    cipher = ObjectCipher(service, BUCKET, segment_size=SEGMENT)
    wrapped = set()
    for n in range(100):
        sealed = bytes(cipher.encrypt(f"o/{n}", b"x"))
        wrapped.add(ObjectHeader.parse(sealed[: header_size_of(sealed)]).wrapped_key)
    assert len(service.generated) == 10 == len(wrapped)
    assert cipher.cache.stats().generate_calls == 10


def test_the_byte_budget_forces_new_keys_for_buffers_and_streams() -> None:
    service = FakeBucketService(max_bytes=1000)
    cipher = ObjectCipher(service, BUCKET, segment_size=SEGMENT)
    for n in range(10):
        cipher.encrypt(f"o/{n}", bytes(300))  # three per key: 900, the fourth would pass 1000
    assert len(service.generated) == 4
    streaming = FakeBucketService(max_bytes=1000)
    cipher = ObjectCipher(streaming, BUCKET, segment_size=SEGMENT)
    for n in range(10):
        cipher.encrypt(f"o/{n}", io.BytesIO(bytes(300)), io.BytesIO())
    assert len(streaming.generated) == 3  # sizes unknown up front: 4 objects, then a new key
    # An object larger than the whole budget still gets a key: a fresh one, used once.
    assert cipher.decrypt("big", cipher.encrypt("big", bytes(5000))) == bytes(5000)
    assert len(streaming.generated) == 4
    cipher.encrypt("big2", bytes(5000))
    assert len(streaming.generated) == 5


def test_overrides_tighten_the_policy_but_never_loosen_it() -> None:
    service = FakeBucketService(max_objects=10)
    cipher = ObjectCipher(
        service, BUCKET, cache=BucketKeyCache(service, max_objects=100), segment_size=SEGMENT
    )
    for n in range(30):
        cipher.encrypt(f"o/{n}", b"x")
    assert len(service.generated) == 3
    tighter = FakeBucketService(max_objects=10)
    cipher = ObjectCipher(tighter, BUCKET, cache=BucketKeyCache(tighter, max_objects=2))
    for n in range(30):
        cipher.encrypt(f"o/{n}", b"x")
    assert len(tighter.generated) == 15


def test_keys_expire_after_the_policy_lifetime_or_a_shorter_override() -> None:
    clock = Clock()
    service = FakeBucketService(lifetime_seconds=60.0)
    cache = BucketKeyCache(service, clock=clock)
    cipher = ObjectCipher(service, BUCKET, cache=cache)
    cipher.encrypt("a", b"x")
    clock.now += 59.9
    cipher.encrypt("b", b"x")
    assert len(service.generated) == 1
    clock.now += 0.1
    cipher.encrypt("c", b"x")
    assert len(service.generated) == 2

    short = BucketKeyCache(service, lifetime_seconds=5.0, clock=clock)
    cipher = ObjectCipher(service, BUCKET, cache=short)
    cipher.encrypt("a", b"x")
    clock.now += 5.0
    cipher.encrypt("b", b"x")
    assert short.stats().generate_calls == 2


def test_a_disabled_master_key_stops_new_keys_at_once_and_cached_keys_at_expiry() -> None:
    clock = Clock()
    service = FakeBucketService(lifetime_seconds=60.0)
    cipher = ObjectCipher(service, BUCKET, cache=BucketKeyCache(service, clock=clock))
    before = bytes(cipher.encrypt("a", b"x"))
    service.disabled = True
    # A reader with an empty cache must ask for a new key: refused at once.
    with pytest.raises(MasterKeyDisabled):
        ObjectCipher(service, BUCKET).encrypt("b", b"x")
    # The cached key goes on until it expires, then the vault's refusal comes through as is.
    cipher.encrypt("c", b"x")
    clock.now += 60.0
    with pytest.raises(MasterKeyDisabled):
        cipher.encrypt("d", b"x")
    # clear() drops keys at once, without waiting for the expiry.
    service.disabled = False
    cipher.encrypt("e", b"x")
    service.disabled = True
    cipher.cache.clear(BUCKET)
    with pytest.raises(MasterKeyDisabled):
        cipher.encrypt("f", b"x")
    assert cipher.decrypt("a", before) == b"x"


def test_the_decrypt_cache_is_bounded_and_expires() -> None:
    clock = Clock()
    service = FakeBucketService(max_objects=1)
    writer = ObjectCipher(service, BUCKET)
    sealed = [bytes(writer.encrypt(f"o/{n}", b"x")) for n in range(3)]
    cache = BucketKeyCache(service, max_keys=2, decrypt_ttl_seconds=30.0, clock=clock)
    reader = ObjectCipher(service, BUCKET, cache=cache)
    for n in (0, 1, 0, 1):
        reader.decrypt(f"o/{n}", sealed[n])
    assert cache.stats().decrypt_calls == 2
    reader.decrypt("o/2", sealed[2])  # evicts the least recently used of the two
    reader.decrypt("o/0", sealed[0])
    assert cache.stats().decrypt_calls == 4
    clock.now += 30.0
    reader.decrypt("o/0", sealed[0])
    assert cache.stats().decrypt_calls == 5
    assert cache.stats().hits == 2


def test_keys_this_cache_generated_decrypt_without_a_vault_call(
    service: FakeBucketService, cipher: ObjectCipher
) -> None:
    sealed = cipher.encrypt("k", b"data")
    assert cipher.decrypt("k", sealed) == b"data"
    assert cipher.cache.stats().decrypt_calls == 0


def test_eight_threads_share_one_cipher(service: FakeBucketService) -> None:
    service.generate_delay = 0.05  # every thread misses at the start, while one call runs
    cipher = ObjectCipher(service, BUCKET, segment_size=SEGMENT)
    reader = ObjectCipher(FakeBucketServiceView(service), BUCKET, segment_size=SEGMENT)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(thread: int) -> None:
        try:
            barrier.wait()
            for n in range(150):
                data = os.urandom(n * 3)
                name = f"t{thread}/{n}"
                sealed = cipher.encrypt(name, data)
                assert cipher.decrypt(name, sealed) == data
                assert reader.decrypt(name, bytes(sealed)) == data
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stats = cipher.cache.stats()
    assert stats.generate_calls == 1 and len(service.generated) == 1
    assert stats.hits + stats.misses == 2 * 8 * 150
    assert reader.cache.stats().decrypt_calls == 1


class FakeBucketServiceView(FakeBucketService):
    """The same master keys as another fake, for a reader with its own cache."""

    def __init__(self, other: FakeBucketService) -> None:
        super().__init__()
        self._other = other

    def generate_bucket_key(self, bucket: str) -> GeneratedBucketKey:
        return self._other.generate_bucket_key(bucket)

    def decrypt_bucket_key(self, bucket: str, wrapped: bytes) -> bytes:
        time.sleep(0.02)
        return self._other.decrypt_bucket_key(bucket, wrapped)


# -- bounded memory -------------------------------------------------------------------------

STREAM_SCRIPT = r"""
import hashlib, io, os, resource, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from vault.client import BucketKeyRejected, GeneratedBucketKey, ObjectCipher

SIZE = int(sys.argv[1])
BLOCK = os.urandom(1 << 20)

class Source:
    master = AESGCM(AESGCM.generate_key(256))
    def generate_bucket_key(self, bucket):
        key, nonce = os.urandom(32), os.urandom(12)
        return GeneratedBucketKey(key, nonce + self.master.encrypt(nonce, key, None), "1", 60.0)
    def decrypt_bucket_key(self, bucket, wrapped):
        return self.master.decrypt(wrapped[:12], wrapped[12:], None)

class Generated(io.RawIOBase):
    # SIZE bytes made on the fly (a 1 MiB random block, each copy tagged with its index)
    def __init__(self):
        self.offset = 0
        self.digest = hashlib.sha256()
    def readable(self):
        return True
    def readinto(self, buffer):
        n = min(len(buffer), SIZE - self.offset)
        view = memoryview(buffer)
        done = 0
        while done < n:
            block, start = divmod(self.offset + done, 1 << 20)
            take = min(n - done, (1 << 20) - start)
            view[done:done + take] = BLOCK[start:start + take]
            if start == 0 and take >= 8:
                view[done:done + 8] = block.to_bytes(8, "big")
            done += take
        self.digest.update(view[:n])
        self.offset += n
        return n

class Pipe(io.RawIOBase):
    # the ciphertext chunks of encrypt_stream, read as a stream, never all at once
    def __init__(self, chunks):
        self.chunks, self.pending, self.total = chunks, memoryview(b""), 0
    def readable(self):
        return True
    def readinto(self, buffer):
        while not self.pending:
            self.pending = memoryview(next(self.chunks, b""))
            if not self.pending:
                return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        self.total += n
        return n

cipher = ObjectCipher(Source(), "accounts/a/buckets/b")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
source = Generated()
pipe = Pipe(cipher.encrypt_stream("big.bin", io.BufferedReader(source, 1 << 16)))
plain, size = hashlib.sha256(), 0
for chunk in cipher.decrypt_stream("big.bin", io.BufferedReader(pipe, 1 << 16)):
    plain.update(chunk)
    size += len(chunk)
assert size == SIZE and source.offset == SIZE, (size, source.offset)
assert plain.digest() == source.digest.digest()
print(pipe.total, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


SHELL_LAUNCHER = '"$0" -c "$1" "$2"; status=$?; exit $status'


@pytest.mark.timeout(240)
def test_a_one_gib_object_streams_in_bounded_memory() -> None:
    size = 1 << 30
    # Linux carries ru_maxrss across fork and exec: a child of this (large) test process
    # would report this process's peak. A shell in between forks the measured process from
    # its own small image instead; the command after it keeps the shell from exec'ing it.
    done = subprocess.run(
        ["/bin/sh", "-c", SHELL_LAUNCHER, sys.executable, STREAM_SCRIPT, str(size)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    sealed_bytes, rss_before_kib, max_rss_kib = (int(value) for value in done.stdout.split())
    # header: version "1", a 60-byte wrapped key (nonce, key, tag)
    assert sealed_bytes == sealed_size(size, MIN_HEADER_SIZE + 1 + 60, DEFAULT_SEGMENT_SIZE)
    assert max_rss_kib < 64 * 1024, f"peak RSS {max_rss_kib} KiB"
    # Most of the peak is the interpreter and its imports (grpc, protobuf, cryptography):
    # what the object itself added must be a few 1 MiB segments, not a share of the gigabyte.
    assert max_rss_kib - rss_before_kib < 16 * 1024, f"grew {max_rss_kib - rss_before_kib} KiB"
