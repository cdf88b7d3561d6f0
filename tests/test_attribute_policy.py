"""The attribute policy of DESIGN.md section 3, read back from every key object in the token."""

from __future__ import annotations

from typing import Any

import pytest
from pkcs11 import Attribute, ObjectClass, exceptions

from tests.support.tokens import generated_version, key_objects, session_of, usable_object
from vault.domain.algorithms import Algorithm

USAGE = (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.SIGN, Attribute.WRAP, Attribute.UNWRAP)


def _flags(obj: Any) -> dict[Attribute, bool]:
    flags = {}
    for attribute in (
        *USAGE,
        Attribute.SENSITIVE,
        Attribute.EXTRACTABLE,
        Attribute.WRAP_WITH_TRUSTED,
        Attribute.MODIFIABLE,
        Attribute.TOKEN,
    ):
        try:
            flags[attribute] = bool(obj[attribute])
        except exceptions.AttributeTypeInvalid:
            flags[attribute] = False
    return flags


@pytest.fixture(scope="module")
def every_kind_in_use(keystore: Any) -> None:
    """One version of every supported algorithm, wrapped and unwrapped into use, plus
    token-resident keys, so the token holds each kind of object the vault makes."""
    for algorithm in sorted(keystore.supported_algorithms()):
        if "4096" in algorithm or "3072" in algorithm:
            continue  # same templates as 2048, much slower to generate
        resident = algorithm.spec.requires_token_resident
        version = generated_version(keystore, algorithm, resident=resident)
        usable_object(keystore, version, algorithm)
    usable_object(
        keystore,
        generated_version(keystore, Algorithm.HMAC_SHA256, resident=True),
        Algorithm.HMAC_SHA256,
    )


def test_every_key_object_follows_the_policy(keystore: Any, every_kind_in_use: None) -> None:
    objects = key_objects(session_of(keystore))
    assert len(objects) >= 10
    for obj in objects:
        flags = _flags(obj)
        description = f"{obj!r} {flags}"
        assert flags[Attribute.SENSITIVE], description
        assert not flags[Attribute.EXTRACTABLE] or flags[Attribute.WRAP_WITH_TRUSTED], description
        wraps = flags[Attribute.WRAP] or flags[Attribute.UNWRAP]
        uses = flags[Attribute.ENCRYPT] or flags[Attribute.DECRYPT] or flags[Attribute.SIGN]
        assert not (wraps and uses), description
        assert not flags[Attribute.MODIFIABLE], description


def test_keys_in_use_are_not_extractable(keystore: Any, every_kind_in_use: None) -> None:
    session_keys = [o for o in key_objects(session_of(keystore)) if not o[Attribute.TOKEN]]
    assert session_keys
    for obj in session_keys:
        assert obj[Attribute.EXTRACTABLE] is False, obj


def test_token_object_count_does_not_grow_with_wrapped_keys(keystore: Any) -> None:
    session = session_of(keystore)
    before = len(key_objects(session, token_only=True))
    for algorithm in (
        Algorithm.AES_256_GCM,
        Algorithm.EC_SIGN_P256_SHA256,
        Algorithm.HMAC_SHA256,
        Algorithm.AES_256_KWP,
    ) * 5:
        generated_version(keystore, algorithm)
    assert len(key_objects(session, token_only=True)) == before


def test_resident_keys_are_private_token_objects(keystore: Any) -> None:
    version = generated_version(keystore, Algorithm.EC_SIGN_ED25519, resident=True)
    try:
        private = [
            o
            for o in session_of(keystore).get_objects({Attribute.LABEL: version.token_label})
            if o[Attribute.CLASS] != ObjectClass.PUBLIC_KEY
        ]
        assert len(private) == 1
        assert private[0][Attribute.PRIVATE] is True
        assert private[0][Attribute.EXTRACTABLE] is False
    finally:
        keystore.destroy(version)
