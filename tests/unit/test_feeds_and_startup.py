"""The revocation feed, provisioning's records in the store, and start-up reconciliation,
against in-memory ports."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.fakes import FakeMetadataStore, StepClock
from tests.unit.world import ACCOUNT, T0, World
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.errors import MalformedName
from vault.domain.models import RevocationReason, RootGeneration, VersionState
from vault.domain.revocation_feed import micros, parse
from vault.service.provisioning import Provisioning
from vault.service.reconcile import reconcile
from vault.service.revocations import CHUNK_BYTES


def test_the_feed_lists_the_revoked_versions_signed_by_the_feed_key(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "s", Purpose.SIGN_VERIFY)
    world.keys.create_key(ACCOUNT, "kept", Purpose.SIGN_VERIFY)
    world.keys.rotate_key(str(key.name))
    world.keys.revoke_key(f"{key.name}/versions/1", "", RevocationReason.COMPROMISED)
    world.clock.advance(minutes=5)
    signed = world.feeds.feed(f"accounts/{ACCOUNT}")
    public = serialization.load_der_public_key(signed.public_key_der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signed.signature, signed.payload, ec.ECDSA(hashes.SHA256()))
    feed = parse(signed.payload)
    assert feed.parent == f"accounts/{ACCOUNT}" and feed.generated_at_micros == micros(
        world.clock.now
    )
    (entry,) = feed.entries
    version = world.store.get_version(key.name.version(1))
    assert version is not None and entry.key_version == str(version.name)
    assert entry.revoke_time_micros == micros(T0)
    assert entry.public_key_der == version.public_key_der


def test_a_feed_covers_only_its_parent(world: World) -> None:
    world.identity_store.create_account(
        replace(world.identity_store.accounts[ACCOUNT], account_id="other")
    )
    key = world.keys.create_key("other", "s", Purpose.SIGN_VERIFY)
    world.keys.revoke_key(str(key.name), "gone")
    assert parse(world.feeds.feed(f"accounts/{ACCOUNT}").payload).entries == []
    assert len(parse(world.feeds.feed("accounts/-").payload).entries) == 1


def test_the_streamed_feed_is_the_feeds_payload_in_chunks_signed_at_the_end(
    world: World,
) -> None:
    """Many more entries than one chunk holds: the chunks concatenated are feed()'s payload
    byte for byte (the clock stands still), only the last carries the signature, and that
    signature, made over a digest computed as the chunks went out, verifies over the whole
    payload."""
    for number in range(20):
        # The longest key ids: fewer versions for the same size.
        key = world.keys.create_key(ACCOUNT, f"k{number:02d}".ljust(63, "x"), Purpose.MAC)
        for _ in range(59):
            world.keys.rotate_key(str(key.name))
        world.keys.revoke_key(str(key.name), "", RevocationReason.SUPERSEDED)
    parent = f"accounts/{ACCOUNT}"
    whole = world.feeds.feed(parent)
    chunks = list(world.feeds.stream(parent))
    payload = b"".join(chunk.data for chunk in chunks)
    assert payload == whole.payload and len(parse(payload).entries) == 20 * 60
    # Full chunks, then the rest (empty when the payload ends on a chunk boundary).
    assert len(chunks) == len(payload) // CHUNK_BYTES + 1 > 2
    assert all(len(chunk.data) == CHUNK_BYTES for chunk in chunks[:-1])
    assert not any(chunk.signature or chunk.public_key_der for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.public_key_der == whole.public_key_der
    public = serialization.load_der_public_key(last.public_key_der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(last.signature, payload, ec.ECDSA(hashes.SHA256()))


def test_an_empty_streamed_feed_is_one_signed_chunk(world: World) -> None:
    (only,) = world.feeds.stream("accounts/-")
    assert only.data == world.feeds.feed("accounts/-").payload
    assert parse(only.data).entries == [] and only.signature


def test_the_streamed_feed_checks_its_parent_before_reading(world: World) -> None:
    with pytest.raises(MalformedName):
        world.feeds.stream("accounts/Bad_Name")


def test_provisioning_records_the_root_generations_the_store_lacks() -> None:
    store = FakeMetadataStore()
    clock = StepClock(T0)
    store.add_root_generation(RootGeneration(1, "vault:root:1", T0 - timedelta(days=9)))
    added = Provisioning(store, clock).record_root_generations(
        {2: "vault:root:2:*", 1: "changed", 3: "vault:root:3:*"}
    )
    assert added == [2, 3]
    assert [
        (r.generation, r.token_label, r.create_time) for r in store.list_root_generations()
    ] == [
        (1, "vault:root:1", T0 - timedelta(days=9)),
        (2, "vault:root:2:*", T0),
        (3, "vault:root:3:*", T0),
    ]


def test_provisioning_again_records_nothing() -> None:
    store = FakeMetadataStore()
    provisioning = Provisioning(store, StepClock(T0))
    assert provisioning.record_root_generations({1: "vault:root:1:*"}) == [1]
    assert provisioning.record_root_generations({1: "vault:root:1:*"}) == []
    assert len(store.list_root_generations()) == 1


def test_reconciliation_discards_half_made_versions_and_orphaned_objects(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "ed", Purpose.SIGN_VERIFY, Algorithm.EC_SIGN_ED25519)
    # A crash between the intent row and the token object of a rotation:
    version = world.store.versions[key.name.version(1)]
    pending = replace(
        version, name=key.name.version(2), state=VersionState.PENDING, token_label="vault:key:p"
    )
    world.store.versions[pending.name] = pending
    world.keystore.resident["vault:key:orphan"] = b"\x00" * 32
    report = reconcile(world.store, world.keystore)
    assert report.discarded_pending == [str(pending.name)]
    assert report.orphaned_in_token == ["vault:key:orphan"]
    assert report.missing_in_token == [] and report.missing_roots == []
    assert world.store.get_version(pending.name) is None
    assert "vault:key:orphan" not in world.keystore.resident


def test_reconciliation_reports_material_missing_from_the_token(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "ed", Purpose.SIGN_VERIFY, Algorithm.EC_SIGN_ED25519)
    label = world.store.versions[key.name.version(1)].token_label
    assert label is not None
    del world.keystore.resident[label]
    report = reconcile(world.store, world.keystore)
    assert report.missing_in_token == [label] and not report.clean


@pytest.mark.parametrize("state", [VersionState.ENABLED, VersionState.DESTROYED])
def test_only_a_still_pending_version_is_discarded(world: World, state: VersionState) -> None:
    key = world.keys.create_key(ACCOUNT, "k", Purpose.ENCRYPT_DECRYPT)
    version = world.store.versions[key.name.version(1)]
    world.store.versions[version.name] = replace(version, state=state)
    report = reconcile(world.store, world.keystore)
    assert report.discarded_pending == []
    assert world.store.get_version(version.name) is not None
