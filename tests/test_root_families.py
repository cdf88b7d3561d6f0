"""What a holder of the user PIN can make of a stored blob with the roots in the token.

The PIN holder opens the token as the vault does and may call any root with any template. A
root's UNWRAP_TEMPLATE only forces what it names, so every capability must be named: each
blob unwraps under exactly one root (its family's, of its generation), with exactly its
purpose's attributes, and under no other template or root at all (README, Key hierarchy).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import KDF, Attribute, KeyType, Mechanism, ObjectClass, exceptions
from pkcs11.constants import DEFAULT

from tests.support.api_calls import ensure_account
from tests.support.tokens import generated_version, session_of
from vault.domain.algorithms import Algorithm, KeyFamily, Purpose
from vault.domain.models import KeyVersion
from vault.hsm import templates

# Every family of wrapped keys the vault makes (Ed25519 is token-resident), as the README
# names them.
FAMILIES = {
    Algorithm.AES_256_GCM: "aes-encrypt",
    Algorithm.BUCKET_AES_256: "aes-encrypt",
    Algorithm.AES_256_KWP: "aes-wrap",
    Algorithm.HMAC_SHA256: "hmac-sha256",
    Algorithm.HMAC_SHA384: "hmac-sha384",
    Algorithm.HMAC_SHA512: "hmac-sha512",
    Algorithm.RSA_SIGN_PSS_2048_SHA256: "rsa-sign-pss",
    Algorithm.RSA_SIGN_PKCS1_2048_SHA256: "rsa-sign-pkcs1",
    Algorithm.EC_SIGN_P256_SHA256: "ec-sign",
    Algorithm.EC_SIGN_P384_SHA384: "ec-sign",
    Algorithm.RSA_DECRYPT_OAEP_2048_SHA1: "rsa-decrypt",
}
SECRET_CAPABILITIES = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.DERIVE,
)
PRIVATE_CAPABILITIES = (
    Attribute.DECRYPT,
    Attribute.SIGN,
    Attribute.SIGN_RECOVER,
    Attribute.UNWRAP,
    Attribute.DERIVE,
)
PURPOSE_CAPABILITIES = {
    Purpose.ENCRYPT_DECRYPT: {Attribute.ENCRYPT, Attribute.DECRYPT},
    Purpose.BUCKET_MASTER: {Attribute.ENCRYPT, Attribute.DECRYPT},
    Purpose.WRAP_UNWRAP: {Attribute.WRAP, Attribute.UNWRAP},
    Purpose.MAC: {Attribute.SIGN, Attribute.VERIFY},
    Purpose.SIGN_VERIFY: {Attribute.SIGN},
    Purpose.ASYMMETRIC_DECRYPT: {Attribute.DECRYPT},
}
KEY_TYPES = {
    KeyFamily.AES: KeyType.AES,
    KeyFamily.HMAC: KeyType.GENERIC_SECRET,
    KeyFamily.RSA: KeyType.RSA,
    KeyFamily.EC: KeyType.EC,
}

Template = dict[Attribute, Any]


def _kind(algorithm: Algorithm) -> tuple[ObjectClass, KeyType]:
    spec = algorithm.spec
    secret = spec.family in (KeyFamily.AES, KeyFamily.HMAC)
    return (ObjectClass.SECRET_KEY if secret else ObjectClass.PRIVATE_KEY), KEY_TYPES[spec.family]


def _capabilities(algorithm: Algorithm) -> tuple[Attribute, ...]:
    object_class, _ = _kind(algorithm)
    return SECRET_CAPABILITIES if object_class is ObjectClass.SECRET_KEY else PRIVATE_CAPABILITIES


def exact_template(algorithm: Algorithm) -> Template:
    """The one template a blob of algorithm may unwrap with: its purpose's capabilities and
    nothing else, not extractable, not modifiable, a session object."""
    allowed = PURPOSE_CAPABILITIES[algorithm.spec.purpose]
    template: Template = {
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.WRAP_WITH_TRUSTED: True,
        Attribute.COPYABLE: False,
        Attribute.ALLOWED_MECHANISMS: list(templates.shape(algorithm).mechanisms),
        **{attribute: attribute in allowed for attribute in _capabilities(algorithm)},
    }
    if _kind(algorithm)[0] is ObjectClass.PRIVATE_KEY:
        # python-pkcs11 would set these public-key attributes, which a private key rejects.
        template.update({Attribute.ENCRYPT: DEFAULT, Attribute.VERIFY: DEFAULT})
        template.update({Attribute.WRAP: DEFAULT})
    return _modifiable_last(template, False)


def _modifiable_last(template: Template, modifiable: bool) -> Template:
    # SoftHSM takes MODIFIABLE only last in the template.
    rest = {k: v for k, v in template.items() if k is not Attribute.MODIFIABLE}
    return {**rest, Attribute.MODIFIABLE: modifiable}


def variants(algorithm: Algorithm) -> Iterator[tuple[str, Template]]:
    """Every way of asking for a little more than the exact template gives."""
    exact = exact_template(algorithm)
    for attribute in _capabilities(algorithm):
        yield (
            f"{attribute.name}={not exact[attribute]}",
            {
                **exact,
                attribute: not exact[attribute],
            },
        )
    for attribute, value in (
        (Attribute.EXTRACTABLE, True),
        (Attribute.SENSITIVE, False),
        (Attribute.WRAP_WITH_TRUSTED, False),
        (Attribute.TOKEN, True),
        (Attribute.COPYABLE, True),
    ):
        yield f"{attribute.name}={value}", {**exact, attribute: value}
    yield "MODIFIABLE=True", _modifiable_last(exact, True)
    more = [*exact[Attribute.ALLOWED_MECHANISMS], Mechanism.SHA512_HMAC, Mechanism.AES_GCM]
    yield "more mechanisms", {**exact, Attribute.ALLOWED_MECHANISMS: more}
    yield "any mechanism", {k: v for k, v in exact.items() if k is not Attribute.ALLOWED_MECHANISMS}


def _unwrap(
    root: Any, kind: tuple[ObjectClass, KeyType], blob: bytes, template: Template
) -> Any | None:
    """The unwrapped object, or None when the token refused."""
    try:
        return root.unwrap_key(
            kind[0],
            kind[1],
            blob,
            mechanism=Mechanism.AES_KEY_WRAP_PAD,
            capabilities=0,
            template=template,
        )
    except exceptions.PKCS11Error:
        return None


def _roots(session: Any) -> dict[str, Any]:
    found = {}
    for obj in session.get_objects(
        {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True}
    ):
        label = obj[Attribute.LABEL]
        if label.startswith("vault:root:"):
            found[label] = obj
    return found


def _own_root(version: KeyVersion, algorithm: Algorithm, roots: dict[str, Any]) -> str:
    own = {f"vault:root:{version.root_generation}:{FAMILIES[algorithm]}"}
    own.add(f"vault:root:{version.root_generation}")  # a token made before roots were split
    (label,) = own & set(roots)
    return label


@pytest.fixture(scope="module")
def blobs(keystore: Any) -> list[tuple[Algorithm, KeyVersion]]:
    """One stored version of every family, made by the vault's own generation path."""
    supported = keystore.supported_algorithms()
    return [
        (algorithm, generated_version(keystore, algorithm))
        for algorithm in FAMILIES
        if algorithm in supported
    ]


@pytest.fixture(scope="module")
def stored_blobs(keystore: Any, settings: Any, client: Any) -> list[tuple[Algorithm, KeyVersion]]:
    """One version of every family made by the running server, read back from its store as
    someone holding the database would."""
    from vault.domain.names import KeyName
    from vault.storage import open_store

    supported = keystore.supported_algorithms()
    names = {}
    for algorithm in FAMILIES:
        if algorithm in supported:
            key_id = f"f{uuid.uuid4().hex[:12]}"
            ensure_account(client, "accounts/families")
            client.create_key("accounts/families", key_id, algorithm.purpose.name, algorithm.name)
            names[algorithm] = KeyName("families", key_id)
    store = open_store(settings.store.url)
    try:
        return [(algorithm, store.list_versions(name)[0]) for algorithm, name in names.items()]
    finally:
        store.close()


def _known_material(algorithm: Algorithm) -> Any:
    """Key material of algorithm made here, as a caller imports it."""
    import os

    from cryptography.hazmat.primitives.asymmetric import rsa

    spec = algorithm.spec
    if spec.family is KeyFamily.RSA:
        return rsa.generate_private_key(65537, spec.bits)
    if spec.family is KeyFamily.EC:
        curve = ec.SECP256R1() if spec.curve == "secp256r1" else ec.SECP384R1()
        return ec.generate_private_key(curve)
    return os.urandom(spec.bits // 8)


@pytest.fixture(scope="module")
def imported_blobs(keystore: Any, settings: Any, client: Any) -> list[tuple[Algorithm, KeyVersion]]:
    """One version of every family the running server imported (ImportKeyVersion), read
    back from its store: imported material must end up exactly like generated material.
    Bucket master keys take no imports."""
    from vault.domain.names import KeyName
    from vault.storage import open_store

    supported = keystore.supported_algorithms()
    names = {}
    ensure_account(client, "accounts/families")
    for algorithm in FAMILIES:
        if algorithm in supported and algorithm.purpose is not Purpose.BUCKET_MASTER:
            key_id = f"i{uuid.uuid4().hex[:12]}"
            key = client.create_key(
                "accounts/families", key_id, algorithm.purpose.name, algorithm.name
            ).name
            job = client.create_import_job(key).name
            client.import_key(key, job, _known_material(algorithm))
            names[algorithm] = KeyName("families", key_id)
    store = open_store(settings.store.url)
    try:
        return [(algorithm, store.list_versions(name)[1]) for algorithm, name in names.items()]
    finally:
        store.close()


_SOURCES = {"generated": "blobs", "stored": "stored_blobs", "imported": "imported_blobs"}


def test_family_members_share_one_shape() -> None:
    """A root pins one shape, so every algorithm of a family must unwrap with the same pins;
    and every wrappable algorithm has a family."""
    for family, members in templates.ROOT_FAMILIES.items():
        pins = {repr(templates.unwrap_pins(member)) for member in members}
        assert len(pins) == 1, family
    wrapped = {a for a in Algorithm if not a.spec.requires_token_resident}
    assert {a for members in templates.ROOT_FAMILIES.values() for a in members} == wrapped
    for algorithm in wrapped:
        assert templates.parse_root_label(
            templates.root_label(7, templates.root_family(algorithm))
        ) == (7, templates.root_family(algorithm))
    assert templates.parse_root_label("vault:root:3") == (3, None)
    assert templates.parse_root_label("vault:root:3:unknown") is None
    assert templates.parse_root_label("vault:key:3") is None


def test_every_family_has_its_own_root(keystore: Any) -> None:
    roots = _roots(session_of(keystore))
    generation = keystore.current_root_generation()
    assert {f"vault:root:{generation}:{family}" for family in FAMILIES.values()} <= set(roots)


@pytest.mark.parametrize("source", list(_SOURCES))
def test_a_blob_unwraps_with_its_exact_template_and_nothing_more(
    keystore: Any, source: str, request: pytest.FixtureRequest
) -> None:
    blobs = request.getfixturevalue(_SOURCES[source])
    roots = _roots(session_of(keystore))
    granted = []
    for algorithm, version in blobs:
        assert version.wrapped_blob is not None
        kind = _kind(algorithm)
        root = roots[_own_root(version, algorithm, roots)]
        exact = _unwrap(root, kind, version.wrapped_blob, exact_template(algorithm))
        assert exact is not None, f"{algorithm}: the exact template was refused"
        try:
            # Nor can the one allowed copy be copied into another with more capabilities.
            for attribute in (None, Attribute.DERIVE, Attribute.DECRYPT, Attribute.SIGN):
                changes = {} if attribute is None else {attribute: True}
                with pytest.raises(exceptions.PKCS11Error):
                    exact.copy(changes).destroy()
                    granted.append(f"{algorithm} copied with {changes}")
        finally:
            exact.destroy()
        for description, template in variants(algorithm):
            obj = _unwrap(root, kind, version.wrapped_blob, template)
            if obj is not None:
                obj.destroy()
                granted.append(f"{algorithm} with {description}")
    assert granted == []


@pytest.mark.parametrize("source", list(_SOURCES))
def test_a_blob_unwraps_under_no_other_root_and_as_no_other_purpose(
    keystore: Any, source: str, request: pytest.FixtureRequest
) -> None:
    blobs = request.getfixturevalue(_SOURCES[source])
    roots = _roots(session_of(keystore))
    granted = []
    for algorithm, version in blobs:
        assert version.wrapped_blob is not None
        own = _own_root(version, algorithm, roots)
        for label, root in roots.items():
            for other in FAMILIES:
                if label == own and FAMILIES[other] == FAMILIES[algorithm]:
                    continue  # the one allowed pairing, tested above
                obj = _unwrap(root, _kind(other), version.wrapped_blob, exact_template(other))
                if obj is not None:
                    obj.destroy()
                    granted.append(f"{algorithm} blob under {label} as {other}")
    assert granted == []


def test_an_ec_signing_blob_never_gives_a_diffie_hellman_oracle(keystore: Any) -> None:
    algorithm = Algorithm.EC_SIGN_P256_SHA256
    version = generated_version(keystore, algorithm)
    assert version.wrapped_blob is not None and version.public_key_der is not None
    session = session_of(keystore)
    peer = ec.generate_private_key(ec.SECP256R1())
    peer_point = peer.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    for label, root in _roots(session).items():
        # The attacker's template: DERIVE, and no mechanism list to keep ECDH out.
        template = {
            **{
                k: v
                for k, v in exact_template(algorithm).items()
                if k is not Attribute.ALLOWED_MECHANISMS
            },
            Attribute.DERIVE: True,
        }
        unwrapped = _unwrap(root, _kind(algorithm), version.wrapped_blob, template)
        if unwrapped is None:
            continue
        try:
            shared = unwrapped.derive_key(
                KeyType.GENERIC_SECRET,
                256,
                mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(KDF.NULL, None, peer_point),
                template={
                    Attribute.TOKEN: False,
                    Attribute.SENSITIVE: False,
                    Attribute.EXTRACTABLE: True,
                },
            )
            secret = bytes(shared[Attribute.VALUE])
            shared.destroy()
        finally:
            unwrapped.destroy()
        public = serialization.load_der_public_key(version.public_key_der)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        expected = peer.exchange(ec.ECDH(), public)
        pytest.fail(
            f"ECDH with the signing key via {label}: shared secret "
            f"{'matches' if secret == expected else 'returned'}"
        )
