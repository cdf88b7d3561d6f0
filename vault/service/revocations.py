"""The signed revocation feed: every revoked key version under a parent, serialised
canonically (vault.domain.revocation_feed) and signed by the token's feed key."""

from __future__ import annotations

from dataclasses import dataclass, field

from vault.domain.ports import FeedSigner
from vault.domain.revocation_feed import serialise
from vault.service.keys import Clock, KeyManagement, utc_now


@dataclass(frozen=True, slots=True)
class SignedFeed:
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    public_key_der: bytes = field(repr=False)


class RevocationFeeds:
    def __init__(self, keys: KeyManagement, signer: FeedSigner, clock: Clock = utc_now) -> None:
        self._keys = keys
        self._signer = signer
        self._clock = clock

    def feed(self, parent: str) -> SignedFeed:
        # Time first: a revocation committed while the list is read may be missing from a
        # feed stamped before it, never from one stamped after it.
        generated_at = self._clock()
        revocations = self._keys.all_revocations(parent)
        payload = serialise(parent, generated_at, revocations)
        return SignedFeed(
            payload, self._signer.sign_feed(payload), self._signer.feed_public_key_der()
        )

    def public_key_der(self) -> bytes:
        return self._signer.feed_public_key_der()
