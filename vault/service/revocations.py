"""The signed revocation feed: every revoked key version under a parent, serialised
canonically (vault.domain.revocation_feed) and signed by the token's feed key."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from vault.domain.models import Revocation
from vault.domain.ports import FeedSigner
from vault.domain.revocation_feed import entry, header, serialise
from vault.service.keys import Clock, KeyManagement, utc_now

# Payload bytes per message of the streamed feed: far below the smallest message limit the
# server accepts (server.max_message_bytes >= 64 KiB), with room for the signature and key.
CHUNK_BYTES: Final = 60 * 1024
# Entries the streamed feed keeps in memory before spilling them to an anonymous temporary
# file: a feed that fits the default message limit (1 MiB) never touches the disk.
SPOOL_MEMORY_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class SignedFeed:
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    public_key_der: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class FeedChunk:
    """The next bytes of a streamed feed's payload; the last chunk also carries the signature
    over the whole payload and the feed key (empty in every other)."""

    data: bytes = field(repr=False)
    signature: bytes = field(default=b"", repr=False)
    public_key_der: bytes = field(default=b"", repr=False)


class RevocationFeeds:
    def __init__(self, keys: KeyManagement, signer: FeedSigner, clock: Clock = utc_now) -> None:
        self._keys = keys
        self._signer = signer
        self._clock = clock

    def feed(self, parent: str) -> SignedFeed:
        # Time first: a revocation committed while the list is read may be missing from a
        # feed stamped before it, never from one stamped after it.
        generated_at = self._clock()
        revocations = list(self._keys.scan_revocations(parent))
        payload = serialise(parent, generated_at, revocations)
        return SignedFeed(
            payload, self._signer.sign_feed(payload), self._signer.feed_public_key_der()
        )

    def stream(self, parent: str) -> Iterator[FeedChunk]:
        """The payload feed(parent) would give, whatever its size, in chunks of CHUNK_BYTES
        (the last possibly shorter), the last one signed; parent is checked before anything
        is read.

        The count precedes the entries, so the entries are read first, all by one statement
        (one snapshot: the count is that of the entries sent), into a spool that keeps
        SPOOL_MEMORY_BYTES in memory and the rest in an anonymous temporary file. The store's
        read ends before the first chunk goes out, so a slow reader holds no transaction
        (which on SQLite would keep the write-ahead log from being checkpointed, and on
        PostgreSQL a pooled connection and the vacuum horizon). The payload is hashed as it
        is sent and the token signs the digest."""
        generated_at = self._clock()
        revocations = self._keys.scan_revocations(parent)
        return self._chunks(parent, generated_at, revocations)

    def _chunks(
        self, parent: str, generated_at: datetime, revocations: Iterator[Revocation]
    ) -> Iterator[FeedChunk]:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
            count = 0
            for revocation in revocations:
                spool.write(entry(revocation))
                count += 1
            spool.seek(0)
            digest = hashlib.sha256()
            pending = header(parent, generated_at, count)
            while True:
                pending += spool.read(CHUNK_BYTES - len(pending))
                if len(pending) < CHUNK_BYTES:
                    break  # the spool is read to its end
                digest.update(pending)
                yield FeedChunk(pending)
                pending = b""
        digest.update(pending)
        signature = self._signer.sign_feed_digest(digest.digest())
        yield FeedChunk(pending, signature, self._signer.feed_public_key_der())

    def public_key_der(self) -> bytes:
        return self._signer.feed_public_key_der()
