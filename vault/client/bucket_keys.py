"""Bucket keys on the client: where they come from (BucketKeySource) and the cache that makes
one vault call serve many objects (BucketKeyCache).

The vault's BucketService hands out a fresh bucket key in plaintext together with the same key
wrapped under the bucket's primary master-key version (GenerateBucketKey), and unwraps a
wrapped key again (DecryptBucketKey). Anything with those two calls is a BucketKeySource, so
the object encryption does not depend on how the calls reach the vault.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Final, Protocol

from cachetools import LRUCache, TLRUCache

from vault.client.object_format import KEY_SIZE, MAX_MASTER_KEY_VERSION_SIZE, MAX_WRAPPED_KEY_SIZE

DEFAULT_DECRYPT_TTL_SECONDS: Final = 300.0
DEFAULT_MAX_BUCKETS: Final = 1024
DEFAULT_MAX_KEYS: Final = 4096
_LOCK_STRIPES: Final = 64


class BucketKeyRejected(Exception):
    """Raised by a BucketKeySource when the vault refuses a wrapped bucket key as invalid
    (DECRYPTION_FAILED: modified, or wrapped for another bucket). ObjectCipher reports it as
    ObjectIntegrityError. Any other failure (an outage, a disabled master key, no
    permission) must be raised as itself: it says nothing about the object."""

    def __init__(self) -> None:
        super().__init__("the vault refused the wrapped bucket key")


@dataclass(frozen=True, slots=True)
class GeneratedBucketKey:
    """GenerateBucketKey's answer. lifetime_seconds, max_objects and max_bytes come from the
    bucket's policy (None: no limit on objects or bytes)."""

    plaintext: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)
    master_key_version: str
    lifetime_seconds: float
    max_objects: int | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if len(self.plaintext) != KEY_SIZE:
            raise ValueError(f"a bucket key is {KEY_SIZE} bytes")
        if not 0 < len(self.wrapped) <= MAX_WRAPPED_KEY_SIZE:
            raise ValueError(f"a wrapped bucket key is 1 to {MAX_WRAPPED_KEY_SIZE} bytes")
        if not 0 < len(self.master_key_version.encode()) <= MAX_MASTER_KEY_VERSION_SIZE:
            raise ValueError("master_key_version must be 1 to 255 bytes of UTF-8")
        if not self.lifetime_seconds > 0:
            raise ValueError("lifetime_seconds must be positive")
        for limit in (self.max_objects, self.max_bytes):
            if limit is not None and limit < 1:
                raise ValueError("max_objects and max_bytes must be positive or None")


class BucketKeySource(Protocol):
    """The two BucketService calls object encryption needs (a VaultClient adapter, or a stand-in
    in tests). Both may block; both are called without any cache lock held except the one
    that makes concurrent misses for the same key wait for a single call."""

    def generate_bucket_key(self, bucket: str) -> GeneratedBucketKey:
        """A fresh bucket key for new objects of bucket."""
        ...

    def decrypt_bucket_key(self, bucket: str, wrapped: bytes) -> bytes:
        """The plaintext of a key generate_bucket_key wrapped for bucket; raises
        BucketKeyRejected if the vault refuses the wrapped key as invalid."""
        ...


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made. hits and misses count both encryptions (is the
    current bucket key still usable?) and decryptions (is this wrapped key unwrapped here?)."""

    hits: int
    misses: int
    generate_calls: int
    decrypt_calls: int

    @property
    def vault_calls(self) -> int:
        return self.generate_calls + self.decrypt_calls


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """The bucket key an object is encrypted under. Not a secret's repr."""

    plaintext: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)
    master_key_version: str


class KeyLease:
    """A bucket's current key for new objects (key) and what it has been used for; handed out
    by BucketKeyCache.key_for_new_object, so the bytes of a stream can be charge()d to it."""

    __slots__ = ("bytes", "expires_at", "key", "max_bytes", "max_objects", "objects")

    def __init__(self, key: EncryptionKey, expires_at: float, limits: GeneratedBucketKey) -> None:
        self.key = key
        self.expires_at = expires_at
        self.max_objects = limits.max_objects
        self.max_bytes = limits.max_bytes
        self.objects = 0
        self.bytes = 0

    def usable(self, now: float, size: int | None) -> bool:
        if now >= self.expires_at:
            return False
        if self.max_objects is not None and self.objects >= self.max_objects:
            return False
        if self.max_bytes is None:
            return True
        # A key that has encrypted nothing takes any object, or one larger than the whole
        # budget could never be encrypted.
        return self.bytes == 0 or self.bytes + (size or 0) <= self.max_bytes


@dataclass(frozen=True, slots=True)
class _Unwrapped:
    plaintext: bytes = field(repr=False)
    expires_at: float


def _tighter(policy: float | None, override: float | None) -> float | None:
    if policy is None:
        return override
    if override is None:
        return policy
    return min(policy, override)


class BucketKeyCache:
    """Bucket keys in memory, shared by every ObjectCipher built on it; thread-safe.

    For new objects each bucket has one current key, used until its lifetime ends or it has
    encrypted max_objects objects or max_bytes bytes (the bucket policy's figures from
    GenerateBucketKey); then the next object gets a fresh key. The constructor's lifetime,
    max_objects and max_bytes override the policy's, but only downwards: the policy's lifetime
    is how long a disabled master key may go on protecting new objects. max_buckets bounds how
    many buckets keep a current key (least recently used goes first).

    For decryption, unwrapped keys are kept by (bucket, wrapped key) for decrypt_ttl_seconds
    (keys this cache generated: for their own lifetime, if shorter), at most max_keys of them.

    Concurrent misses for the same key wait for one vault call instead of making one each.
    """

    def __init__(
        self,
        source: BucketKeySource,
        *,
        lifetime_seconds: float | None = None,
        max_objects: int | None = None,
        max_bytes: int | None = None,
        decrypt_ttl_seconds: float = DEFAULT_DECRYPT_TTL_SECONDS,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (
            ("lifetime_seconds", lifetime_seconds),
            ("max_objects", max_objects),
            ("max_bytes", max_bytes),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None")
        if not decrypt_ttl_seconds > 0 or max_buckets < 1 or max_keys < 1:
            raise ValueError("decrypt_ttl_seconds, max_buckets and max_keys must be positive")
        self.source = source
        self._lifetime = lifetime_seconds
        self._max_objects = max_objects
        self._max_bytes = max_bytes
        self._decrypt_ttl = decrypt_ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # Striped, so the locks that coalesce misses stay bounded however many keys pass.
        self._stripes = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))
        self._current: LRUCache[str, KeyLease] = LRUCache(maxsize=max_buckets)
        self._unwrapped: TLRUCache[tuple[str, bytes], _Unwrapped] = TLRUCache(
            maxsize=max_keys, ttu=lambda _key, value, _now: value.expires_at, timer=clock
        )
        self._hits = 0
        self._misses = 0
        self._generate_calls = 0
        self._decrypt_calls = 0

    def __repr__(self) -> str:
        return f"BucketKeyCache({self.stats()})"

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._generate_calls, self._decrypt_calls)

    def clear(self, bucket: str | None = None) -> None:
        """Forget cached keys (of one bucket, or all): for instance once a master key is known
        to be disabled, instead of waiting for the keys' expiry."""
        with self._lock:
            if bucket is None:
                self._current.clear()
                self._unwrapped.clear()
                return
            self._current.pop(bucket, None)
            for key in [key for key in self._unwrapped if key[0] == bucket]:
                self._unwrapped.pop(key, None)

    def _stripe(self, key: Hashable) -> threading.Lock:
        return self._stripes[zlib.crc32(repr(key).encode()) % _LOCK_STRIPES]

    def key_for_new_object(self, bucket: str, size: int | None) -> KeyLease:
        """The key to encrypt one new object of bucket with (its .key), counted against its
        budget with size bytes (None when not known yet: charge() them as they are
        encrypted)."""
        with self._lock:
            current = self._take(bucket, size)
            if current is not None:
                self._hits += 1
                return current
            self._misses += 1
        with self._stripe(bucket):
            with self._lock:
                current = self._take(bucket, size)
                if current is not None:
                    return current
                self._generate_calls += 1
            generated = self.source.generate_bucket_key(bucket)
            lifetime = _tighter(generated.lifetime_seconds, self._lifetime)
            assert lifetime is not None
            limits = GeneratedBucketKey(
                generated.plaintext,
                generated.wrapped,
                generated.master_key_version,
                lifetime,
                _int_or_none(_tighter(generated.max_objects, self._max_objects)),
                _int_or_none(_tighter(generated.max_bytes, self._max_bytes)),
            )
            key = EncryptionKey(
                generated.plaintext, generated.wrapped, generated.master_key_version
            )
            with self._lock:
                now = self._clock()
                current = KeyLease(key, now + lifetime, limits)
                current.objects = 1
                current.bytes = size or 0
                self._current[bucket] = current
                self._unwrapped[(bucket, generated.wrapped)] = _Unwrapped(
                    generated.plaintext, now + min(lifetime, self._decrypt_ttl)
                )
                return current

    def _take(self, bucket: str, size: int | None) -> KeyLease | None:
        """The bucket's current key if it may take this object, counted; caller holds _lock."""
        current = self._current.get(bucket)
        if current is None or not current.usable(self._clock(), size):
            return None
        current.objects += 1
        current.bytes += size or 0
        return current

    def charge(self, lease: KeyLease, size: int) -> None:
        """Count size more bytes against the lease's key."""
        with self._lock:
            lease.bytes += size

    def unwrap(self, bucket: str, wrapped: bytes) -> bytes:
        """The plaintext of a wrapped bucket key of bucket, from the cache or the vault."""
        cache_key = (bucket, bytes(wrapped))
        with self._lock:
            cached = self._unwrapped.get(cache_key)
            if cached is not None:
                self._hits += 1
                return cached.plaintext
            self._misses += 1
        with self._stripe(cache_key):
            with self._lock:
                cached = self._unwrapped.get(cache_key)
                if cached is not None:
                    return cached.plaintext
                self._decrypt_calls += 1
            plaintext = self.source.decrypt_bucket_key(bucket, cache_key[1])
            if len(plaintext) != KEY_SIZE:
                raise ValueError(f"a bucket key is {KEY_SIZE} bytes")
            with self._lock:
                self._unwrapped[cache_key] = _Unwrapped(
                    plaintext, self._clock() + self._decrypt_ttl
                )
            return plaintext


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)
