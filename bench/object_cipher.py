"""Client-side object encryption against raw AES-GCM: encrypt_ratio().

The SDK's ObjectCipher.encrypt on in-memory objects (bucket key cached, as in steady state)
is timed against one `cryptography` AESGCM.encrypt of the same bytes, interleaved round by
round so both see the same machine load; the best round of each is kept, since on a shared
machine noise only ever slows a round down. The vault is not involved: a local stand-in
hands out the bucket key once.

    python -m bench.object_cipher [object_size] [segment_size]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.client.bucket_keys import BucketKeyRejected, GeneratedBucketKey
from vault.client.object_cipher import ObjectCipher
from vault.client.object_format import DEFAULT_SEGMENT_SIZE

OBJECT_SIZE = 1024 * 1024


class LocalBucketKeys:
    """A BucketKeySource without a vault: bucket keys wrapped under one in-memory AES key."""

    def __init__(self) -> None:
        self._master = AESGCM(AESGCM.generate_key(256))

    def generate_bucket_key(self, bucket: str) -> GeneratedBucketKey:
        plaintext, nonce = os.urandom(32), os.urandom(12)
        wrapped = nonce + self._master.encrypt(nonce, plaintext, bucket.encode())
        return GeneratedBucketKey(plaintext, wrapped, "1", lifetime_seconds=3600.0)

    def decrypt_bucket_key(self, bucket: str, wrapped: bytes) -> bytes:
        try:
            return self._master.decrypt(wrapped[:12], wrapped[12:], bucket.encode())
        except InvalidTag:
            raise BucketKeyRejected() from None


@dataclass(frozen=True, slots=True)
class EncryptRatio:
    object_size: int
    segment_size: int
    sdk_per_second: float
    raw_per_second: float

    @property
    def ratio(self) -> float:
        return self.sdk_per_second / self.raw_per_second


def _best_rate(call: Callable[[], Any], calls: int) -> float:
    start = time.thread_time()
    for _ in range(calls):
        call()
    return calls / (time.thread_time() - start)


def encrypt_ratio(
    object_size: int = OBJECT_SIZE,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    rounds: int = 15,
    calls_per_round: int = 50,
) -> EncryptRatio:
    """ObjectCipher.encrypt throughput as a fraction of raw AESGCM.encrypt on the same data."""
    data = os.urandom(object_size)
    cipher = ObjectCipher(LocalBucketKeys(), "accounts/bench/buckets/b", segment_size=segment_size)
    raw, nonce = AESGCM(AESGCM.generate_key(256)), os.urandom(12)
    cipher.encrypt("warm-up", data)
    sdk_best = raw_best = 0.0
    for _ in range(rounds):
        raw_best = max(
            raw_best, _best_rate(lambda: raw.encrypt(nonce, data, None), calls_per_round)
        )
        sdk_best = max(
            sdk_best, _best_rate(lambda: cipher.encrypt("object", data), calls_per_round)
        )
    return EncryptRatio(object_size, segment_size, sdk_best, raw_best)


def main(argv: list[str]) -> int:
    object_size = int(argv[0]) if argv else OBJECT_SIZE
    segment_size = int(argv[1]) if len(argv) > 1 else DEFAULT_SEGMENT_SIZE
    result = encrypt_ratio(object_size, segment_size)
    print(
        f"object {result.object_size} B, segment {result.segment_size} B: "
        f"SDK {result.sdk_per_second:,.0f}/s, raw AES-GCM {result.raw_per_second:,.0f}/s, "
        f"ratio {result.ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
