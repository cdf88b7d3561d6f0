"""One vault's use cases wired to in-memory fakes of their ports (tests.support.fakes): no
token, no database, no server."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from tests.support.fakes import (
    FakeBucketStore,
    FakeCounters,
    FakeIdentityStore,
    FakeKeyStore,
    FakeMetadataStore,
    FakeSystemCrypto,
    StepClock,
)
from vault.domain.identity import Account
from vault.domain.policy import KeyPolicy
from vault.service.buckets import BucketManagement
from vault.service.crypto import CryptoOperations
from vault.service.keys import KeyManagement
from vault.service.revocations import RevocationFeeds

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
DAY = 86_400
ACCOUNT = "acme"
POLICY = KeyPolicy(
    min_destroy_waiting_seconds=DAY,
    default_destroy_waiting_seconds=30 * DAY,
    max_plaintext_bytes=4096,
)


@dataclass
class World:
    """One vault's use cases over fakes, sharing one clock."""

    clock: StepClock = field(default_factory=lambda: StepClock(T0))
    store: FakeMetadataStore = field(default_factory=FakeMetadataStore)
    keystore: FakeKeyStore = field(default_factory=FakeKeyStore)
    identity_store: FakeIdentityStore = field(default_factory=FakeIdentityStore)
    system: FakeSystemCrypto = field(default_factory=FakeSystemCrypto)
    counters: FakeCounters = field(default_factory=FakeCounters)
    policy: KeyPolicy = POLICY

    def __post_init__(self) -> None:
        self.identity_store.create_account(Account(ACCOUNT, "Acme", False, T0))
        self.bucket_store = FakeBucketStore(self.store)
        self.keys = KeyManagement(
            self.store,
            self.keystore,
            self.policy,
            clock=self.clock,
            accounts=self.identity_store,
        )
        self.crypto = CryptoOperations(self.keys, self.keystore, self.policy)
        self.buckets = BucketManagement(
            self.bucket_store, self.store, self.keystore, self.keys, clock=self.clock
        )
        self.feeds = RevocationFeeds(self.keys, self.system, clock=self.clock)
