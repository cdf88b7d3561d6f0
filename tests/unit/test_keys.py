"""KeyManagement against in-memory ports: creation and its request ids, rotation and the
primary version, the state machine, revocation, destruction and its job, listing."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from tests.unit.world import ACCOUNT, DAY, POLICY, World
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    TokenUnavailable,
    UnsupportedAlgorithm,
    WrongPurpose,
    WrongState,
)
from vault.domain.models import KeyFilter, KeyState, RevocationReason, VersionState
from vault.domain.names import KeyName

ENCRYPT = Purpose.ENCRYPT_DECRYPT


def test_a_new_key_is_enabled_with_version_one_wrapped_under_the_root(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    assert (key.state, key.primary_version, key.algorithm) == (
        KeyState.ENABLED,
        1,
        Algorithm.AES_256_GCM,
    )
    (version,) = world.store.list_versions(key.name)
    assert version.state is VersionState.ENABLED
    assert version.root_generation == 1 and version.wrapped_blob and version.token_label is None


def test_a_request_id_makes_a_retry_return_the_first_key(world: World) -> None:
    first = world.keys.create_key(ACCOUNT, "k1", ENCRYPT, request_id="r-1")
    again = world.keys.create_key(ACCOUNT, "k1", ENCRYPT, request_id="r-1")
    assert again == first
    assert world.keystore.generated == 1


def test_a_retry_that_looked_before_the_first_call_committed_gets_the_first_key(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two CreateKey calls with one request_id overlap: the second looks the request_id up
    before the first commits, then finds the key name taken. It answers with that key."""
    first = world.keys.create_key(ACCOUNT, "k1", ENCRYPT, request_id="r-1")
    lookups = iter([None])  # the first lookup runs before the first call committed
    found = world.store.find_key_by_request_id
    monkeypatch.setattr(
        world.store,
        "find_key_by_request_id",
        lambda account, request_id: next(lookups, found(account, request_id)),
    )
    assert world.keys.create_key(ACCOUNT, "k1", ENCRYPT, request_id="r-1") == first
    assert world.keystore.generated == 1


def test_a_request_id_used_for_another_key_is_refused(world: World) -> None:
    world.keys.create_key(ACCOUNT, "k1", ENCRYPT, request_id="r-1")
    with pytest.raises(AlreadyExists) as caught:
        world.keys.create_key(ACCOUNT, "k2", ENCRYPT, request_id="r-1")
    assert caught.value.metadata["name"] == f"accounts/{ACCOUNT}/keys/k1"
    assert world.store.get_key(KeyName(ACCOUNT, "k2")) is None


def test_a_retry_while_the_first_version_is_pending_is_told_to_retry(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT, request_id="r-1")
    name = key.name.version(1)
    world.store.versions[name] = replace(world.store.versions[name], state=VersionState.PENDING)
    with pytest.raises(Conflict):
        world.keys.create_key(ACCOUNT, "k1", ENCRYPT, request_id="r-1")


def test_a_taken_name_is_refused_without_a_request_id(world: World) -> None:
    world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    with pytest.raises(AlreadyExists):
        world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    assert world.keystore.generated == 1


def test_an_algorithm_of_another_purpose_is_refused(world: World) -> None:
    with pytest.raises(UnsupportedAlgorithm):
        world.keys.create_key(ACCOUNT, "k1", ENCRYPT, Algorithm.HMAC_SHA256)
    assert world.store.keys == {}


def test_an_algorithm_the_token_lacks_is_refused(world: World) -> None:
    world.keystore.algorithms = frozenset({Algorithm.AES_256_GCM})
    with pytest.raises(UnsupportedAlgorithm) as caught:
        world.keys.create_key(ACCOUNT, "k1", Purpose.MAC)
    assert caught.value.metadata == {"algorithm": "HMAC_SHA256"}


def test_keys_are_made_only_in_an_existing_account(world: World) -> None:
    with pytest.raises(NotFound) as caught:
        world.keys.create_key("nobody", "k1", ENCRYPT)
    assert caught.value.metadata == {"name": "accounts/nobody"}
    assert world.keystore.generated == 0


def test_a_token_resident_key_is_activated_once_its_object_exists(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "ed", Purpose.SIGN_VERIFY, Algorithm.EC_SIGN_ED25519)
    (version,) = world.store.list_versions(key.name)
    assert key.token_resident and key.primary_version == 1
    assert version.state is VersionState.ENABLED and version.wrapped_blob is None
    assert version.token_label in world.keystore.resident
    assert version.public_key_der is not None


def test_a_pending_version_whose_key_was_destroyed_meanwhile_leaves_no_object(
    world: World,
) -> None:
    key = world.keys.create_key(ACCOUNT, "ed", Purpose.SIGN_VERIFY, Algorithm.EC_SIGN_ED25519)
    real_generate = world.keystore.generate

    def generate_then_lose_the_race(algorithm: Algorithm, label: str | None) -> object:
        made = real_generate(algorithm, label)
        pending = world.store.versions[key.name.version(2)]
        world.store.versions[pending.name] = replace(pending, state=VersionState.DESTROYED)
        return made

    world.keystore.generate = generate_then_lose_the_race  # type: ignore[assignment,method-assign]
    with pytest.raises(Conflict):
        world.keys.rotate_key(str(key.name))
    label = world.store.versions[key.name.version(2)].token_label
    assert label in world.keystore.destroyed_labels and label not in world.keystore.resident


def test_a_token_resident_version_the_token_could_not_make_is_not_left_pending(
    world: World,
) -> None:
    key = world.keys.create_key(ACCOUNT, "ed", Purpose.SIGN_VERIFY, Algorithm.EC_SIGN_ED25519)

    def token_fails(algorithm: Algorithm, label: str | None) -> object:
        raise TokenUnavailable("the token is not available")

    world.keystore.generate = token_fails  # type: ignore[assignment,method-assign]
    with pytest.raises(TokenUnavailable):
        world.keys.rotate_key(str(key.name))
    assert [v.number for v in world.store.list_versions(key.name)] == [1]
    with pytest.raises(TokenUnavailable):
        world.keys.create_key(ACCOUNT, "ed2", Purpose.SIGN_VERIFY, Algorithm.EC_SIGN_ED25519)
    assert world.store.get_key(KeyName(ACCOUNT, "ed2")) is None


def test_rotation_makes_the_new_version_primary_and_keeps_the_old(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    rotated = world.keys.rotate_key(str(key.name))
    assert rotated.primary_version == 2
    states = [(v.number, v.state) for v in world.store.list_versions(key.name)]
    assert states == [(1, VersionState.ENABLED), (2, VersionState.ENABLED)]


def test_rotation_numbers_after_a_pending_version(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    pending = replace(
        world.store.versions[key.name.version(1)], name=key.name.version(2), token_label="x"
    )
    world.store.versions[pending.name] = replace(pending, state=VersionState.PENDING)
    rotated = world.keys.rotate_key(str(key.name))
    assert rotated.primary_version == 3


def test_only_an_enabled_key_rotates(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    world.keys.disable_key(str(key.name))
    with pytest.raises(WrongState) as caught:
        world.keys.rotate_key(str(key.name))
    assert caught.value.metadata["state"] == "DISABLED"


def test_disabling_moves_the_material_epoch_and_enabling_restores(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    epoch = world.store.epoch
    assert world.keys.disable_key(str(key.name)).state is KeyState.DISABLED
    assert world.store.epoch == epoch + 1
    assert world.keys.enable_key(str(key.name)).state is KeyState.ENABLED


def test_a_move_to_the_current_state_writes_nothing(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    again = world.keys.enable_key(str(key.name))
    assert again.etag == key.etag


@pytest.mark.parametrize(
    ("setup", "move"),
    [
        ("revoke", "enable"),
        ("revoke", "disable"),
        ("schedule", "disable"),
        ("schedule", "enable"),
    ],
)
def test_the_state_machine_refuses_forbidden_moves(world: World, setup: str, move: str) -> None:
    name = str(world.keys.create_key(ACCOUNT, "k1", ENCRYPT).name)
    if setup == "revoke":
        world.keys.revoke_key(name, "compromised laptop")
    else:
        world.keys.schedule_destruction(name, None)
    before = world.store.get_key(KeyName(ACCOUNT, "k1"))
    with pytest.raises(WrongState):
        (world.keys.enable_key if move == "enable" else world.keys.disable_key)(name)
    assert world.store.get_key(KeyName(ACCOUNT, "k1")) == before


def test_destruction_waits_the_default_period(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    scheduled = world.keys.schedule_destruction(str(key.name), None)
    assert scheduled.state is KeyState.DESTROY_SCHEDULED
    assert scheduled.destroy_scheduled_time == world.clock.now + POLICY.default_destroy_waiting
    assert scheduled.state_before_destroy_scheduled is KeyState.ENABLED


def test_a_waiting_period_below_the_policy_minimum_is_refused(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    with pytest.raises(InvalidArgument) as caught:
        world.keys.schedule_destruction(str(key.name), timedelta(seconds=DAY - 1))
    assert caught.value.metadata["minimum_seconds"] == str(DAY)
    assert world.store.get_key(key.name) == key


def test_a_waiting_period_over_ten_years_is_refused(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    with pytest.raises(InvalidArgument) as caught:
        world.keys.schedule_destruction(str(key.name), timedelta(days=3651))
    assert caught.value.metadata["maximum_seconds"] == str(3650 * DAY)


def test_cancelling_destruction_leaves_a_key_disabled_or_revoked(world: World) -> None:
    plain = str(world.keys.create_key(ACCOUNT, "k1", ENCRYPT).name)
    revoked = str(world.keys.create_key(ACCOUNT, "k2", ENCRYPT).name)
    world.keys.revoke_key(revoked, "", RevocationReason.SUPERSEDED)
    for name in (plain, revoked):
        world.keys.schedule_destruction(name, None)
    assert world.keys.cancel_destruction(plain).state is KeyState.DISABLED
    restored = world.keys.cancel_destruction(revoked)
    assert restored.state is KeyState.REVOKED and restored.destroy_scheduled_time is None


def test_the_destruction_job_destroys_only_keys_whose_wait_ended(world: World) -> None:
    due = world.keys.create_key(ACCOUNT, "due", ENCRYPT)
    later = world.keys.create_key(ACCOUNT, "later", ENCRYPT)
    world.keys.schedule_destruction(str(due.name), timedelta(days=1))
    world.keys.schedule_destruction(str(later.name), timedelta(days=2))
    world.clock.advance(days=1)
    destroyed = world.keys.destroy_due_keys()
    assert [key.name for key in destroyed] == [due.name]
    (version,) = world.store.list_versions(due.name)
    assert version.state is VersionState.DESTROYED and version.wrapped_blob is None
    assert version.destroy_time == world.clock.now
    assert world.keystore.destroyed == [due.name.version(1)]
    assert world.store.get_key(later.name).state is KeyState.DESTROY_SCHEDULED  # type: ignore[union-attr]
    assert world.store.purges == 1


def test_the_destruction_job_retries_a_purge_that_could_not_finish(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    world.keys.schedule_destruction(str(key.name), timedelta(days=1))
    world.clock.advance(days=1)
    world.store.purge_succeeds = False
    assert len(world.keys.destroy_due_keys()) == 1
    world.store.purge_succeeds = True
    assert world.keys.destroy_due_keys() == []
    assert world.store.purges == 2
    assert world.keys.destroy_due_keys() == []
    assert world.store.purges == 2


def test_a_cancellation_that_wins_the_race_keeps_the_key(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    world.keys.schedule_destruction(str(key.name), timedelta(days=1))
    world.clock.advance(days=1)
    stale = world.store.keys_due_for_destruction(world.clock.now)
    world.keys.cancel_destruction(str(key.name))
    world.store.keys_due_for_destruction = lambda now: stale  # type: ignore[method-assign]
    assert world.keys.destroy_due_keys() == []
    assert world.store.get_key(key.name).state is KeyState.DISABLED  # type: ignore[union-attr]
    assert world.keystore.destroyed == []


def test_a_revocation_needs_a_reason(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    with pytest.raises(InvalidArgument):
        world.keys.revoke_key(str(key.name), "  ")
    assert world.store.get_key(key.name).state is KeyState.ENABLED  # type: ignore[union-attr]


def test_revoking_a_key_revokes_every_version_with_material(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    world.keys.rotate_key(str(key.name))
    revoked, version = world.keys.revoke_key(str(key.name), "leak", RevocationReason.COMPROMISED)
    assert version is None and revoked.state is KeyState.REVOKED
    assert revoked.revoke_time == world.clock.now
    versions = world.store.list_versions(key.name)
    assert [v.revocation_reason_code for v in versions] == [RevocationReason.COMPROMISED] * 2
    page = world.keys.list_revocations(f"accounts/{ACCOUNT}", 0, "")
    assert [str(r.version_name) for r in page.items] == [
        f"{key.name}/versions/1",
        f"{key.name}/versions/2",
    ]


def test_revoking_one_version_leaves_the_key_and_its_other_versions(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    world.keys.rotate_key(str(key.name))
    after, version = world.keys.revoke_key(
        f"{key.name}/versions/1", "", RevocationReason.SUPERSEDED
    )
    assert after.state is KeyState.ENABLED and after.primary_version == 2
    assert version is not None and version.revoked and version.number == 1
    assert not world.store.get_version(key.name.version(2)).revoked  # type: ignore[union-attr]
    with pytest.raises(WrongState):
        world.keys.revoke_key(f"{key.name}/versions/1", "again")


def test_a_revoked_or_destroyed_version_is_no_longer_served(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    assert world.keys.version(key, 1).number == 1  # cached now
    world.keys.schedule_destruction(str(key.name), timedelta(days=1))
    world.clock.advance(days=1)
    world.keys.destroy_due_keys()
    destroyed = world.store.get_key(key.name)
    assert destroyed is not None
    with pytest.raises(NotFound):
        world.keys.version(destroyed, 1)
    assert world.keystore.dropped_before[-1] == world.store.epoch


def test_revocations_of_every_account_are_listed_for_accounts_dash(world: World) -> None:
    world.identity_store.create_account(
        replace(world.identity_store.accounts[ACCOUNT], account_id="b")
    )
    first = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    second = world.keys.create_key("b", "k1", ENCRYPT)
    for key in (first, second):
        world.keys.revoke_key(str(key.name), "gone")
    everyone = list(world.keys.scan_revocations("accounts/-"))
    assert {r.version_name.account for r in everyone} == {ACCOUNT, "b"}
    assert [r.version_name.account for r in world.keys.scan_revocations("accounts/b")] == ["b"]


def test_listing_pages_through_keys_in_id_order_without_master_keys(world: World) -> None:
    for key_id in ("c", "a", "b"):
        world.keys.create_key(ACCOUNT, key_id, ENCRYPT)
    world.buckets.create_bucket(ACCOUNT, "photos")
    first = world.keys.list_keys(ACCOUNT, KeyFilter(), 2, "")
    second = world.keys.list_keys(ACCOUNT, KeyFilter(), 2, first.next_page_token)
    assert [k.name.key for k in first.items] == ["a", "b"]
    assert [k.name.key for k in second.items] == ["c"] and second.next_page_token == ""


def test_listing_filters_by_purpose_and_label(world: World) -> None:
    world.keys.create_key(ACCOUNT, "a", ENCRYPT, labels={"team": "x"})
    world.keys.create_key(ACCOUNT, "b", Purpose.MAC, labels={"team": "y"})
    by_purpose = world.keys.list_keys(ACCOUNT, KeyFilter(purpose=Purpose.MAC), 0, "")
    by_label = world.keys.list_keys(ACCOUNT, KeyFilter(label_key="team", label_value="x"), 0, "")
    assert [k.name.key for k in by_purpose.items] == ["b"]
    assert [k.name.key for k in by_label.items] == ["a"]


@pytest.mark.parametrize(
    ("page_size", "key_filter"),
    [
        (-1, KeyFilter()),
        (0, KeyFilter(label_key="Bad Key")),
        (0, KeyFilter(label_key="team", label_value="x" * 64)),
    ],
)
def test_listing_refuses_bad_arguments(world: World, page_size: int, key_filter: KeyFilter) -> None:
    with pytest.raises(InvalidArgument):
        world.keys.list_keys(ACCOUNT, key_filter, page_size, "")


def test_labels_and_description_are_updated_but_not_on_a_destroyed_key(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    updated = world.keys.update_key(str(key.name), labels={"env": "prod"}, description="main")
    assert (updated.labels, updated.description, updated.etag) == ({"env": "prod"}, "main", 1)
    with pytest.raises(InvalidArgument):
        world.keys.update_key(str(key.name), labels={"env": "x" * 64}, description=None)
    world.keys.schedule_destruction(str(key.name), timedelta(days=1))
    world.clock.advance(days=1)
    world.keys.destroy_due_keys()
    with pytest.raises(WrongState):
        world.keys.update_key(str(key.name), labels=None, description="late")


def test_a_stale_write_is_a_conflict(world: World) -> None:
    key = world.keys.create_key(ACCOUNT, "k1", ENCRYPT)
    world.keys.update_key(str(key.name), labels={"a": "b"}, description=None)
    with pytest.raises(Conflict):
        world.store.update_key(replace(key, description="stale"))


def test_the_public_key_of_a_signing_key_is_pem_and_of_an_aes_key_refused(world: World) -> None:
    signing = world.keys.create_key(ACCOUNT, "s", Purpose.SIGN_VERIFY)
    aes = world.keys.create_key(ACCOUNT, "e", ENCRYPT)
    info = world.keys.get_public_key(str(signing.name))
    assert info.pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert info.version_name == f"{signing.name}/versions/1"
    with pytest.raises(WrongPurpose):
        world.keys.get_public_key(str(aes.name))
