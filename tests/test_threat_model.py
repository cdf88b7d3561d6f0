"""Each claim of the threat model in README.md, checked against the real token.

1. Whoever has the token directory and the database but not the user PIN learns nothing.
2. A holder of the user PIN can use keys but cannot export any key material: not account
   keys, not private keys, not token-resident keys, not the root.
3. Only the SO, by trusting a transport key, decides where the root may go.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, exceptions

from tests.support.tokens import (
    attacker_wrapping_key,
    generated_version,
    key_objects,
    root_object,
    session_of,
    usable_object,
)
from vault.domain.algorithms import Algorithm
from vault.hsm import templates

NOT_EXPORTABLE = (exceptions.KeyNotWrappable, exceptions.KeyUnextractable)
ALGORITHMS = [
    Algorithm.AES_256_GCM,
    Algorithm.AES_256_KWP,
    Algorithm.HMAC_SHA256,
    Algorithm.RSA_SIGN_PSS_2048_SHA256,
    Algorithm.RSA_DECRYPT_OAEP_2048_SHA1,
    Algorithm.EC_SIGN_P256_SHA256,
]


@pytest.fixture(scope="module")
def targets(keystore: Any) -> list[tuple[str, Any]]:
    """Every kind of key object the vault holds: unwrapped versions, resident keys, root."""
    objects: list[tuple[str, Any]] = []
    for algorithm in ALGORITHMS:
        version = generated_version(keystore, algorithm)
        objects.append((f"unwrapped {algorithm}", usable_object(keystore, version, algorithm)))
    for algorithm in (Algorithm.EC_SIGN_ED25519, Algorithm.AES_256_GCM):
        version = generated_version(keystore, algorithm, resident=True)
        objects.append((f"resident {algorithm}", usable_object(keystore, version, algorithm)))
    for members in templates.ROOT_FAMILIES.values():
        objects.append((f"root of {members[0]}", root_object(keystore, members[0])))
    return objects


# -- claim 2: the PIN holder can use keys but export nothing ---------------------------------


def test_pin_holder_cannot_wrap_any_key_under_a_key_they_know(
    keystore: Any, targets: list[tuple[str, Any]]
) -> None:
    session = session_of(keystore)
    with attacker_wrapping_key(session) as known:
        for description, target in targets:
            for mechanism in (Mechanism.AES_KEY_WRAP_PAD, Mechanism.AES_KEY_WRAP):
                with pytest.raises(
                    (*NOT_EXPORTABLE, exceptions.MechanismInvalid, exceptions.KeySizeRange)
                ):
                    known.wrap_key(target, mechanism=mechanism)
                    pytest.fail(f"{description} was wrapped under a known key")


def test_pin_holder_cannot_read_any_key_value(targets: list[tuple[str, Any]]) -> None:
    for description, target in targets:
        sensitive = {Attribute.VALUE, Attribute.PRIVATE_EXPONENT, Attribute.PRIME_1}
        for attribute in sensitive:
            try:
                target[attribute]
            except (exceptions.AttributeSensitive, exceptions.AttributeTypeInvalid):
                continue
            pytest.fail(f"{description}: {attribute!r} was readable")


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        (Attribute.SENSITIVE, False),
        (Attribute.EXTRACTABLE, True),
        (Attribute.WRAP_WITH_TRUSTED, False),
        (Attribute.DECRYPT, True),
    ],
)
def test_pin_holder_cannot_weaken_attributes(
    targets: list[tuple[str, Any]], attribute: Attribute, value: bool
) -> None:
    weakened = 0
    for description, target in targets:
        before = _attribute_or_none(target, attribute)
        if before is None or before == value:
            continue  # the attribute does not apply, or is already what we would set
        with pytest.raises(exceptions.PKCS11Error):
            target[attribute] = value
            pytest.fail(f"{description}: {attribute!r} became {value}")
        assert _attribute_or_none(target, attribute) == before, description
        weakened += 1
    assert weakened >= 3


def test_pin_holder_cannot_copy_a_key_into_a_weaker_one(targets: list[tuple[str, Any]]) -> None:
    for description, target in targets:
        with pytest.raises(exceptions.PKCS11Error):
            target.copy({Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
            pytest.fail(f"{description} was copied")


def test_blobs_unwrap_only_as_sensitive_wrap_with_trusted_keys(keystore: Any) -> None:
    version = generated_version(keystore, Algorithm.AES_256_GCM)
    root = root_object(keystore)
    weak = {
        Attribute.TOKEN: False,
        Attribute.SENSITIVE: False,
        Attribute.EXTRACTABLE: True,
        Attribute.ENCRYPT: True,
        Attribute.DECRYPT: True,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
    }
    with pytest.raises(exceptions.TemplateInconsistent):
        root.unwrap_key(
            ObjectClass.SECRET_KEY,
            KeyType.AES,
            version.wrapped_blob,
            mechanism=Mechanism.AES_KEY_WRAP_PAD,
            capabilities=0,
            template=weak,
        )
    # The only copy the root's unwrap template allows is the vault's own: sensitive,
    # non-extractable, non-modifiable and wrap-with-trusted, so it cannot leave under a key the
    # attacker knows (tests/test_root_families.py tries every other template).
    copy = root.unwrap_key(
        ObjectClass.SECRET_KEY,
        KeyType.AES,
        version.wrapped_blob,
        mechanism=Mechanism.AES_KEY_WRAP_PAD,
        capabilities=0,
        template=templates.unwrapped_for_use(Algorithm.AES_256_GCM),
    )
    try:
        assert copy[Attribute.SENSITIVE] is True
        assert copy[Attribute.WRAP_WITH_TRUSTED] is True
        with attacker_wrapping_key(session_of(keystore)) as known, pytest.raises(NOT_EXPORTABLE):
            known.wrap_key(copy, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    finally:
        copy.destroy()


def test_root_can_only_wrap_and_unwrap(keystore: Any) -> None:
    """Clulow's attack needs a key that wraps and decrypts; the root never decrypts."""
    root = root_object(keystore)
    usage = root.get_attributes(
        [
            Attribute.ENCRYPT,
            Attribute.DECRYPT,
            Attribute.SIGN,
            Attribute.VERIFY,
            Attribute.DERIVE,
            Attribute.WRAP,
            Attribute.UNWRAP,
        ]
    )
    assert usage == {
        Attribute.ENCRYPT: False,
        Attribute.DECRYPT: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
        Attribute.WRAP: True,
        Attribute.UNWRAP: True,
    }
    assert not hasattr(root, "decrypt") and not hasattr(root, "encrypt")
    assert root[Attribute.ALLOWED_MECHANISMS] == [Mechanism.AES_KEY_WRAP_PAD]


def test_root_wraps_nothing_the_attacker_can_then_decrypt(keystore: Any) -> None:
    """Wrap-then-decrypt: wrapping an attacker-known key under the root yields a blob, but no
    key in the token decrypts it except by unwrapping, which forces sensitive results."""
    session = session_of(keystore)
    root = root_object(keystore)
    with attacker_wrapping_key(session) as known:
        blob = root.wrap_key(known, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        with pytest.raises(exceptions.PKCS11Error):
            known.decrypt(blob, mechanism=Mechanism.AES_KEY_WRAP_PAD)


# -- claim 3: only the SO marks a key trusted ----------------------------------------------


def test_pin_holder_cannot_make_a_trusted_key(keystore: Any) -> None:
    session = session_of(keystore)
    before = {o.handle for o in key_objects(session)}
    try:
        with pytest.raises(
            (
                exceptions.AttributeReadOnly,
                exceptions.AttributeValueInvalid,
                exceptions.TemplateInconsistent,
            )
        ):
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.VALUE: b"\x24" * 32,
                    Attribute.TOKEN: False,
                    Attribute.TRUSTED: True,
                    Attribute.WRAP: True,
                    Attribute.UNWRAP: False,
                    Attribute.ENCRYPT: False,
                    Attribute.DECRYPT: False,
                    Attribute.SIGN: False,
                    Attribute.VERIFY: False,
                }
            )
    finally:
        # SoftHSM 2.6.1 refuses the call but leaves behind the object it had started,
        # with default attributes; remove it so it does not linger in this process.
        for leftover in key_objects(session):
            if leftover.handle not in before:
                leftover.destroy()


# -- claim 1: token directory and database without the PIN ---------------------------------

_NO_PIN_PROBE = textwrap.dedent(
    """
    import sys
    import pkcs11
    from pkcs11 import Attribute, ObjectClass, exceptions
    lib = pkcs11.lib(sys.argv[1])
    token = lib.get_token(token_label=sys.argv[2])
    session = token.open()
    visible = [
        o for c in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY)
        for o in session.get_objects({Attribute.CLASS: c})
    ]
    print("visible", len(visible))
    try:
        token.open(user_pin="not-the-pin")
        print("login", "accepted")
    except exceptions.PinIncorrect:
        print("login", "refused")
    """
)


def test_without_the_pin_no_key_is_visible(settings: Any, tmp_path: Path) -> None:
    stolen = tmp_path / "stolen"
    shutil.copytree(settings.data_dir / "tokens", stolen / "tokens")
    conf = stolen / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {stolen / 'tokens'}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    result = subprocess.run(
        [sys.executable, "-c", _NO_PIN_PROBE, str(settings.hsm.module), settings.hsm.token_label],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.split() == ["visible", "0", "login", "refused"]


def test_token_files_hold_no_key_value_in_clear(keystore: Any, settings: Any) -> None:
    marker = bytes(range(7, 39))
    session = session_of(keystore)
    label = "vault:test:marker"
    key = session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
            Attribute.VALUE: marker,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.LABEL: label,
            Attribute.SIGN: True,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.DECRYPT: False,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
    )
    try:
        files = [p for p in (settings.data_dir / "tokens").rglob("*") if p.is_file()]
        assert files
        for path in files:
            assert marker not in path.read_bytes(), path
        store = settings.data_dir / "vault.db"
        if store.exists():
            assert marker not in store.read_bytes()
    finally:
        key.destroy()


def test_root_labels_are_the_only_roots(keystore: Any) -> None:
    session = session_of(keystore)
    labels = [
        o[Attribute.LABEL]
        for o in session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True}
        )
        if o[Attribute.LABEL].startswith(templates.ROOT_LABEL_PREFIX)
    ]
    parsed = [templates.parse_root_label(label) for label in labels]
    assert None not in parsed
    current = keystore.current_root_generation()
    assert {family for generation, family in parsed if generation == current} == set(
        templates.ROOT_FAMILIES
    )
    assert len(labels) == len(set(labels))
    assert {generation for generation, _ in parsed} == keystore.root_generations_present()


def _attribute_or_none(target: Any, attribute: Attribute) -> Any:
    try:
        return target[attribute]
    except exceptions.PKCS11Error:
        return None
