"""ListKeys' own conversion (ListedKey -> Key message, no domain Key per listed key) gives
exactly the message GetKey's conversion (key_to_proto) gives for the same key."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.models import Key, KeyState, ListedKey, Page, RevocationReason
from vault.domain.names import KeyName
from vault.transport.convert import key_page_to_proto, key_to_proto

T0 = datetime(2026, 12, 3, 6, 15, 0, 123456, tzinfo=UTC)


def key(key_id: str = "k", **fields: object) -> Key:
    base = Key(
        name=KeyName("acme", key_id),
        purpose=Purpose.ENCRYPT_DECRYPT,
        algorithm=Algorithm.AES_256_GCM,
        state=KeyState.ENABLED,
        primary_version=1,
        create_time=T0,
        update_time=T0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


VARIANTS = {
    "plain": key(),
    "labels": key(labels={"team": "red", "env": "prod-é", "empty": ""}),
    "description": key(description='ünïcode ✓ "quoted"\nnewline'),
    "token-resident": key(token_resident=True, primary_version=12),
    "revoked": key(
        state=KeyState.REVOKED,
        revoke_time=T0 + timedelta(microseconds=1),
        revocation_reason="incident 42",
        revocation_reason_code=RevocationReason.COMPROMISED,
    ),
    "revoked-without-code": key(state=KeyState.REVOKED, revoke_time=T0, revocation_reason="x"),
    "scheduled": key(
        state=KeyState.DESTROY_SCHEDULED,
        destroy_scheduled_time=T0 + timedelta(days=30),
        state_before_destroy_scheduled=KeyState.DISABLED,
    ),
    "before-1970": key(create_time=datetime(1969, 7, 20, 20, 17, 40, 999999, tzinfo=UTC)),
    "year-1": key(create_time=datetime(1, 1, 1, tzinfo=UTC)),
    "year-9999": key(update_time=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    "other-zone": key(update_time=T0.astimezone(timezone(timedelta(hours=-7)))),
    "whole-second": key(create_time=T0.replace(microsecond=0)),
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_listed_key_converts_as_get_key_does(variant: Key) -> None:
    (listed,) = key_page_to_proto(Page([ListedKey.of(variant)], "")).keys
    assert listed == key_to_proto(variant)
    assert listed.SerializeToString(deterministic=True) == key_to_proto(variant).SerializeToString(
        deterministic=True
    )


def test_every_enum_value_converts() -> None:
    keys = [key(f"p{i}", purpose=purpose) for i, purpose in enumerate(Purpose)]
    keys += [key(f"a{i}", algorithm=algorithm) for i, algorithm in enumerate(Algorithm)]
    keys += [key(f"s{i}", state=state) for i, state in enumerate(KeyState)]
    keys += [
        key(f"r{i}", revocation_reason_code=code, revoke_time=T0)
        for i, code in enumerate(RevocationReason)
    ]
    response = key_page_to_proto(Page([ListedKey.of(k) for k in keys], "next"))
    assert list(response.keys) == [key_to_proto(k) for k in keys]
    assert response.next_page_token == "next"


def test_listed_key_keeps_name_labels_and_etag() -> None:
    original = key("with-labels", labels={"b": "2", "a": "1"}, etag=7)
    listed = ListedKey.of(original)
    assert listed.name == original.name
    assert listed.labels == {"a": "1", "b": "2"}
    assert listed.etag == 7
    assert ListedKey.of(key()).labels == {}
