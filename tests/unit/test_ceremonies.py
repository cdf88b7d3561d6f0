"""Ceremonies against an in-memory token and store: signed records, transport keys, moving
the roots between two tokens, root generations, rewrap and retirement."""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.fakes import FAKE_ROOT_FAMILIES, FakeCeremonyToken, FakeMetadataStore
from tests.unit.world import ACCOUNT, DAY, T0, World
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.ceremony import (
    RECORD_FORMAT,
    CeremonyRefused,
    DocumentInvalid,
    KeyNotWrappable,
    verify_document,
)
from vault.domain.errors import NotFound
from vault.domain.models import KeyState, RootGeneration
from vault.service.ceremonies import Ceremonies, CeremonyConfig, root_objects

CONFIG = CeremonyConfig("ceremony.toml", "ab" * 32, ("alice", "bob"), "quarterly")


@cache
def _rsa_keys() -> tuple[rsa.RSAPrivateKey, ...]:
    # Transport keys made once per run; tokens take turns, so no two in a row share one.
    return tuple(rsa.generate_private_key(65537, 3072) for _ in range(3))


def _token(label: str, generations: int = 1) -> FakeCeremonyToken:
    turns = itertools.cycle(_rsa_keys())
    return FakeCeremonyToken(label, generations=generations, rsa_keys=lambda bits: next(turns))


class Site(World):
    token: FakeCeremonyToken
    ceremonies: Ceremonies


@pytest.fixture
def world() -> Iterator[Site]:
    site = Site()
    site.token = _token("source")
    # As provisioning leaves it: generation 1 in the token and recorded in the store.
    site.store.add_root_generation(RootGeneration(1, "vault:root:1:*", T0))
    site.ceremonies = Ceremonies(site.token, site.store, site.clock)
    yield site


def _destination(
    label: str = "destination",
) -> tuple[FakeCeremonyToken, FakeMetadataStore, Ceremonies]:
    token = _token(label)
    store = FakeMetadataStore()
    return token, store, Ceremonies(token, store)


def _cloned(world: Site, destination: Ceremonies) -> dict[str, Any]:
    """A transfer from the world's token to destination's transport key "t1", trusted by
    the source's SO as "dest"."""
    transport = destination.create_transport_key("t1", 3072)
    world.token.trust("dest", transport.public_der)
    transfer, _ = world.ceremonies.clone_roots("dest")
    return transfer


def _other_signer() -> str:
    other = Ceremonies(_token("other"), None)
    other.record("clone", CONFIG, [], None)
    return other.signer_fingerprint()


def _check_values(token: FakeCeremonyToken) -> dict[str, str]:
    return {root.label: root.check_value for root in token.roots()}


# -- records -----------------------------------------------------------------------------------


def test_a_record_is_signed_by_the_ceremony_key_and_says_what_was_done(world: Site) -> None:
    objects = root_objects(world.token.roots())
    record = world.ceremonies.record("new-root-generation", CONFIG, objects, {"generation": 1})
    verified = verify_document(record, RECORD_FORMAT, world.ceremonies.signer_fingerprint())
    assert verified.body == {
        "ceremony": "new-root-generation",
        "time": T0.isoformat(),
        "config": {"file": "ceremony.toml", "sha256": "ab" * 32},
        "operators": ["alice", "bob"],
        "description": "quarterly",
        "token": world.token.identity().as_dict(),
        "objects": objects,
        "result": {"generation": 1},
    }
    assert len(objects) == len(FAKE_ROOT_FAMILIES)
    assert record["signature"]["signer_fingerprint"] == world.ceremonies.signer_fingerprint()


def test_a_changed_record_or_another_signer_does_not_verify(world: Site) -> None:
    record = world.ceremonies.record("clone", CONFIG, [], None)
    changed = copy.deepcopy(record)
    changed["body"]["operators"] = ["mallory"]
    with pytest.raises(DocumentInvalid, match="changed"):
        verify_document(changed, RECORD_FORMAT, world.ceremonies.signer_fingerprint())
    with pytest.raises(DocumentInvalid, match="not by the expected"):
        verify_document(record, RECORD_FORMAT, _other_signer())


def test_asking_for_the_signer_of_a_token_that_signed_nothing_creates_no_key(
    world: Site,
) -> None:
    with pytest.raises(NotFound):
        world.ceremonies.signer_fingerprint()
    assert world.token.ceremony_key is None


# -- transport keys ----------------------------------------------------------------------------


def test_a_transport_key_is_rsa_and_its_fingerprint_is_the_sha256_of_its_der(
    world: Site,
) -> None:
    created = world.ceremonies.create_transport_key("t1", 3072)
    public = serialization.load_der_public_key(created.public_der)
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072
    assert created.fingerprint == hashlib.sha256(created.public_der).hexdigest()
    assert world.token.transport_key("t1").fingerprint == created.fingerprint
    with pytest.raises(CeremonyRefused):
        world.ceremonies.create_transport_key("t1", 3072)
    with pytest.raises(CeremonyRefused):
        world.ceremonies.create_transport_key("t2", 2048)
    assert set(world.token.transport) == {"t1"}


def test_a_trusted_key_reads_back_with_the_fingerprint_it_was_trusted_with(
    world: Site,
) -> None:
    _, _, destination = _destination()
    transport = destination.create_transport_key("t1", 3072)
    world.token.trust("dest", transport.public_der)
    assert world.ceremonies.trusted_key("dest").fingerprint == transport.fingerprint
    with pytest.raises(NotFound):
        world.ceremonies.trusted_key("nobody")


# -- moving the roots --------------------------------------------------------------------------


def test_cloned_roots_arrive_with_the_source_values_and_the_transport_key_goes(
    world: Site,
) -> None:
    token, store, destination = _destination()
    replaced = sorted(_check_values(token))
    transfer = _cloned(world, destination)
    assert transfer["body"]["transport_key_fingerprint"] == token.transport_key("t1").fingerprint
    received = destination.receive_roots(transfer, world.ceremonies.signer_fingerprint(), "t1")
    assert _check_values(token) == _check_values(world.token)
    assert [root.label for root in received.received] == sorted(_check_values(world.token))
    assert received.already_present == [] and sorted(received.replaced) == replaced
    assert received.source["label"] == "source"
    assert received.source_signer == world.ceremonies.signer_fingerprint()
    assert received.transport_key_destroyed and token.transport == {}
    assert [root.generation for root in store.list_root_generations()] == [1]


def test_clone_refuses_a_key_the_so_did_not_trust(world: Site) -> None:
    _, _, destination = _destination()
    transport = destination.create_transport_key("t1", 3072)
    world.token.import_untrusted("copy", transport.public_der)
    with pytest.raises(KeyNotWrappable):
        world.ceremonies.clone_roots("copy")
    with pytest.raises(NotFound):
        world.ceremonies.clone_roots("nobody")
    assert world.token.signatures == 0


def test_a_transfer_for_another_transport_key_changes_nothing(world: Site) -> None:
    token, _, destination = _destination()
    transfer = _cloned(world, destination)
    destination.create_transport_key("t2", 3072)
    before = _check_values(token)
    with pytest.raises(CeremonyRefused, match="made for transport key"):
        destination.receive_roots(transfer, world.ceremonies.signer_fingerprint(), "t2")
    assert _check_values(token) == before and set(token.transport) == {"t1", "t2"}


def test_a_changed_transfer_or_one_from_another_signer_is_refused(world: Site) -> None:
    token, _, destination = _destination()
    transfer = _cloned(world, destination)
    changed = copy.deepcopy(transfer)
    changed["body"]["roots"][0]["check_value"] = "00" * 8
    before = _check_values(token)
    with pytest.raises(DocumentInvalid):
        destination.receive_roots(changed, world.ceremonies.signer_fingerprint(), "t1")
    with pytest.raises(DocumentInvalid, match="not by the expected"):
        destination.receive_roots(transfer, _other_signer(), "t1")
    assert _check_values(token) == before


def test_receiving_again_keeps_the_roots_already_present(world: Site) -> None:
    token, _, destination = _destination()
    transfer = _cloned(world, destination)
    signer = world.ceremonies.signer_fingerprint()
    destination.receive_roots(transfer, signer, "t1", keep_transport_key=True)
    values = _check_values(token)
    again = destination.receive_roots(transfer, signer, "t1")
    assert again.received == [] and again.replaced == []
    assert [root.label for root in again.already_present] == sorted(values)
    assert _check_values(token) == values and token.transport == {}


def test_a_destination_whose_own_roots_wrap_versions_keeps_them(world: Site) -> None:
    token, store, destination = _destination()
    World(store=store).keys.create_key(ACCOUNT, "k1", Purpose.ENCRYPT_DECRYPT)
    transfer = _cloned(world, destination)
    before = _check_values(token)
    with pytest.raises(CeremonyRefused, match="1 key versions here are wrapped"):
        destination.receive_roots(transfer, world.ceremonies.signer_fingerprint(), "t1")
    assert _check_values(token) == before and "t1" in token.transport


# -- root generations ---------------------------------------------------------------------------


def test_a_new_generation_has_a_root_per_family_and_is_recorded(world: Site) -> None:
    world.keys.create_key(ACCOUNT, "k1", Purpose.ENCRYPT_DECRYPT)
    generation, roots = world.ceremonies.new_root_generation()
    assert generation == 2
    assert sorted(root.family or "" for root in roots) == sorted(FAKE_ROOT_FAMILIES)
    assert world.token.current_generation() == 2
    recorded = world.store.list_root_generations()
    assert [(r.generation, r.token_label) for r in recorded] == [
        (1, "vault:root:1:*"),
        (2, "vault:root:2:*"),
    ]
    usage = {u.generation: u for u in world.ceremonies.root_generations()}
    assert (usage[1].versions, usage[1].current, usage[2].versions, usage[2].current) == (
        1,
        False,
        0,
        True,
    )


def test_a_new_generation_goes_above_every_one_the_store_knows(world: Site) -> None:
    world.store.add_root_generation(RootGeneration(5, "vault:root:5:*", T0))
    generation, roots = world.ceremonies.new_root_generation()
    assert generation == 6 and {root.generation for root in roots} == {6}
    assert [r.generation for r in world.store.list_root_generations()] == [1, 5, 6]


def test_a_half_made_generation_is_completed_not_skipped(world: Site) -> None:
    world.token.add_roots(2, FAKE_ROOT_FAMILIES[:2])
    assert world.token.current_generation() == 1
    generation, roots = world.ceremonies.new_root_generation()
    assert generation == 2 and len(roots) == len(FAKE_ROOT_FAMILIES)
    assert world.token.current_generation() == 2


def test_retire_refuses_while_versions_remain_and_says_how_many(world: Site) -> None:
    for key_id in ("k1", "k2", "k3"):
        world.keys.create_key(ACCOUNT, key_id, Purpose.ENCRYPT_DECRYPT)
    with pytest.raises(CeremonyRefused, match="new key versions go under"):
        world.ceremonies.retire_root_generation(1)
    world.ceremonies.new_root_generation()
    with pytest.raises(CeremonyRefused, match="3 key versions") as caught:
        world.ceremonies.retire_root_generation(1)
    assert caught.value.metadata["versions"] == "3"
    with pytest.raises(CeremonyRefused, match="no roots of generation 9"):
        world.ceremonies.retire_root_generation(9)
    assert 1 in world.token.root_generations()


def test_retire_destroys_the_roots_once_no_version_needs_them(world: Site) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", Purpose.ENCRYPT_DECRYPT)
    world.ceremonies.new_root_generation()
    world.keys.schedule_destruction(key.name, None)
    world.clock.advance(seconds=30 * DAY)
    world.keys.destroy_due_keys()
    labels = world.ceremonies.retire_root_generation(1)
    assert sorted(labels) == sorted(f"vault:root:1:{f}" for f in FAKE_ROOT_FAMILIES)
    assert set(world.token.root_generations()) == {2}
    usage = {u.generation: u for u in world.ceremonies.root_generations()}
    assert usage[1].retired and not usage[1].in_token


def test_rewrap_rotates_enabled_keys_and_reports_the_rest(world: Site) -> None:
    enabled = world.keys.create_key(ACCOUNT, "k1", Purpose.ENCRYPT_DECRYPT)
    mac = world.keys.create_key(ACCOUNT, "k2", Purpose.MAC, Algorithm.HMAC_SHA256)
    disabled = world.keys.create_key(ACCOUNT, "k3", Purpose.ENCRYPT_DECRYPT)
    moved = world.keys.create_key(ACCOUNT, "k4", Purpose.ENCRYPT_DECRYPT)
    world.keys.disable_key(str(disabled.name))
    generation, _ = world.ceremonies.new_root_generation()
    world.keystore.root_generation = generation
    world.keys.rotate_key(moved.name)
    with pytest.raises(CeremonyRefused, match="create a newer one"):
        world.ceremonies.rewrap(generation, world.keys, generation)
    done: list[int] = []
    assert world.ceremonies.keys_under(1) == 4
    report = world.ceremonies.rewrap(1, world.keys, generation, done.append)
    assert done == [1, 2, 3, 4]
    entries = {entry.key: entry for entry in report.entries}
    assert [(str(k.name), entries[str(k.name)].new_version) for k in (enabled, mac)] == [
        (str(enabled.name), 2),
        (str(mac.name), 2),
    ]
    assert entries[str(disabled.name)].new_version is None
    assert entries[str(disabled.name)].note.startswith("not rotated: the key is DISABLED")
    assert entries[str(moved.name)].note.startswith("already rotated")
    assert "ReEncrypt" in entries[str(enabled.name)].note
    assert "compute them again" in entries[str(mac.name)].note
    assert report.versions_left == 4
    for key in (enabled, mac):
        primary = world.store.keys[key.name]
        assert primary.primary_version == 2 and primary.state is KeyState.ENABLED
        assert world.store.versions[key.name.version(2)].root_generation == generation
    assert world.store.keys[disabled.name].primary_version == 1
