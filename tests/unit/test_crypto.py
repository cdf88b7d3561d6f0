"""CryptoOperations against in-memory ports: envelopes and their AAD, versions after rotation,
states and purposes, the policy's size limits, signatures and MACs across versions."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.unit.world import ACCOUNT, World
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.errors import (
    DecryptionFailed,
    InputTooLarge,
    InvalidArgument,
    UnsupportedAlgorithm,
    WrongPurpose,
    WrongState,
)
from vault.domain.models import RevocationReason
from vault.domain.policy import KeyPolicy


def aes_key(world: World, key_id: str = "k1") -> str:
    return str(world.keys.create_key(ACCOUNT, key_id, Purpose.ENCRYPT_DECRYPT).name)


def test_encrypt_then_decrypt_gives_the_plaintext_and_the_version(world: World) -> None:
    name = aes_key(world)
    sealed = world.crypto.encrypt(name, b"secret", b"ctx")
    opened = world.crypto.decrypt(name, sealed.data, b"ctx")
    assert opened.data == b"secret"
    assert sealed.key_version_name == opened.key_version_name == f"{name}/versions/1"
    assert b"secret" not in sealed.data


def test_a_wrong_aad_fails_uniformly(world: World) -> None:
    name = aes_key(world)
    sealed = world.crypto.encrypt(name, b"secret", b"ctx")
    with pytest.raises(DecryptionFailed):
        world.crypto.decrypt(name, sealed.data, b"other")


def test_a_ciphertext_is_bound_to_the_key_name(world: World) -> None:
    first, second = aes_key(world, "a"), aes_key(world, "b")
    sealed = world.crypto.encrypt(first, b"secret", b"")
    with pytest.raises(DecryptionFailed):
        world.crypto.decrypt(second, sealed.data, b"")


def test_a_ciphertext_naming_a_missing_version_fails_uniformly(world: World) -> None:
    name = aes_key(world)
    sealed = bytearray(world.crypto.encrypt(name, b"secret", b"").data)
    sealed[1:5] = (7).to_bytes(4, "big")  # the envelope's key version
    with pytest.raises(DecryptionFailed):
        world.crypto.decrypt(name, bytes(sealed), b"")


def test_after_rotation_new_data_uses_the_primary_and_old_data_still_opens(world: World) -> None:
    name = aes_key(world)
    old = world.crypto.encrypt(name, b"before", b"")
    world.keys.rotate_key(name)
    new = world.crypto.encrypt(name, b"after", b"")
    assert new.key_version_name == f"{name}/versions/2"
    assert world.crypto.decrypt(name, old.data, b"").key_version_name == f"{name}/versions/1"
    assert world.crypto.decrypt(name, new.data, b"").data == b"after"


def test_the_policy_limits_the_plaintext(world: World) -> None:
    small = World(policy=KeyPolicy(86_400, 86_400, max_plaintext_bytes=16))
    name = aes_key(small)
    assert small.crypto.encrypt(name, b"x" * 16, b"").key_version_name
    with pytest.raises(InputTooLarge) as caught:
        small.crypto.encrypt(name, b"x" * 17, b"")
    assert caught.value.metadata == {"field": "plaintext", "limit": "16"}
    with pytest.raises(InputTooLarge):
        small.crypto.decrypt(name, b"x" * (16 + 65), b"")


def test_a_disabled_key_neither_encrypts_nor_decrypts(world: World) -> None:
    name = aes_key(world)
    sealed = world.crypto.encrypt(name, b"secret", b"")
    world.keys.disable_key(name)
    with pytest.raises(WrongState):
        world.crypto.encrypt(name, b"secret", b"")
    with pytest.raises(WrongState):
        world.crypto.decrypt(name, sealed.data, b"")


def test_a_revoked_key_decrypts_what_it_protected_but_encrypts_nothing_new(
    world: World,
) -> None:
    name = aes_key(world)
    sealed = world.crypto.encrypt(name, b"secret", b"")
    world.keys.revoke_key(name, "", RevocationReason.COMPROMISED)
    assert world.crypto.decrypt(name, sealed.data, b"").data == b"secret"
    with pytest.raises(WrongState):
        world.crypto.encrypt(name, b"more", b"")


def test_a_revoked_version_is_no_primary_for_new_data(world: World) -> None:
    name = aes_key(world)
    world.keys.revoke_key(f"{name}/versions/1", "", RevocationReason.COMPROMISED)
    with pytest.raises(WrongState) as caught:
        world.crypto.encrypt(name, b"more", b"")
    assert caught.value.metadata["state"] == "REVOKED"
    world.keys.rotate_key(name)
    assert world.crypto.encrypt(name, b"more", b"").key_version_name.endswith("/versions/2")


def test_a_key_serves_only_its_purpose(world: World) -> None:
    signing = str(world.keys.create_key(ACCOUNT, "s", Purpose.SIGN_VERIFY).name)
    with pytest.raises(WrongPurpose):
        world.crypto.encrypt(signing, b"secret", b"")


def test_a_data_key_opens_with_decrypt_and_is_returned_only_when_asked(world: World) -> None:
    name = aes_key(world)
    with_plain = world.crypto.generate_data_key(name, 0, b"bucket", include_plaintext=True)
    without = world.crypto.generate_data_key(name, 16, b"", include_plaintext=False)
    assert with_plain.plaintext is not None and len(with_plain.plaintext) == 32
    assert without.plaintext is None
    opened = world.crypto.decrypt(name, with_plain.ciphertext, b"bucket")
    assert opened.data == with_plain.plaintext
    assert len(world.crypto.decrypt(name, without.ciphertext, b"").data) == 16
    with pytest.raises(InvalidArgument):
        world.crypto.generate_data_key(name, 20, b"", include_plaintext=False)


def test_re_encrypt_moves_data_to_the_destination_key(world: World) -> None:
    source, destination = aes_key(world, "a"), aes_key(world, "b")
    sealed = world.crypto.encrypt(source, b"secret", b"old")
    moved = world.crypto.re_encrypt(source, sealed.data, b"old", destination, b"new")
    assert moved.source_key_version_name == f"{source}/versions/1"
    assert world.crypto.decrypt(destination, moved.ciphertext, b"new").data == b"secret"


def test_wrapped_material_unwraps_and_odd_sizes_are_refused(world: World) -> None:
    name = str(world.keys.create_key(ACCOUNT, "w", Purpose.WRAP_UNWRAP).name)
    material = bytes(range(32))
    wrapped = world.crypto.wrap_key(name, material)
    assert world.crypto.unwrap_key(name, wrapped.data).data == material
    with pytest.raises(InvalidArgument):
        world.crypto.wrap_key(name, bytes(20))
    tampered = wrapped.data[:-1] + bytes([wrapped.data[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        world.crypto.unwrap_key(name, tampered)


def test_an_ecdsa_signature_verifies_with_the_public_key_and_the_vault(world: World) -> None:
    name = str(world.keys.create_key(ACCOUNT, "s", Purpose.SIGN_VERIFY).name)
    signed = world.crypto.sign(name, message=b"hello", digest=None)
    public = serialization.load_pem_public_key(world.keys.get_public_key(name).pem.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signed.data, b"hello", ec.ECDSA(hashes.SHA256()))
    assert world.crypto.verify(name, message=b"hello", digest=None, signature=signed.data) == (
        True,
        f"{name}/versions/1",
    )
    assert not world.crypto.verify(name, message=b"hullo", digest=None, signature=signed.data)[0]


def test_a_digest_is_signed_like_its_message(world: World) -> None:
    name = str(world.keys.create_key(ACCOUNT, "s", Purpose.SIGN_VERIFY).name)
    digest = hashlib.sha256(b"hello").digest()
    signed = world.crypto.sign(name, message=None, digest=digest)
    assert world.crypto.verify(name, message=b"hello", digest=None, signature=signed.data)[0]
    with pytest.raises(InvalidArgument):
        world.crypto.sign(name, message=None, digest=digest[:20])
    with pytest.raises(InvalidArgument):
        world.crypto.sign(name, message=b"m", digest=digest)


def test_ed25519_signs_whole_messages_only(world: World) -> None:
    name = str(
        world.keys.create_key(ACCOUNT, "ed", Purpose.SIGN_VERIFY, Algorithm.EC_SIGN_ED25519).name
    )
    signed = world.crypto.sign(name, message=b"hello", digest=None)
    assert world.crypto.verify(name, message=b"hello", digest=None, signature=signed.data)[0]
    with pytest.raises(UnsupportedAlgorithm):
        world.crypto.sign(name, message=None, digest=bytes(32))


def test_a_signature_from_before_a_rotation_verifies_by_key_name_only(world: World) -> None:
    name = str(world.keys.create_key(ACCOUNT, "s", Purpose.SIGN_VERIFY).name)
    old = world.crypto.sign(name, message=b"hello", digest=None)
    world.keys.rotate_key(name)
    by_key = world.crypto.verify(name, message=b"hello", digest=None, signature=old.data)
    by_version = world.crypto.verify(
        f"{name}/versions/2", message=b"hello", digest=None, signature=old.data
    )
    assert by_key == (True, f"{name}/versions/1")
    assert by_version == (False, f"{name}/versions/2")


def test_an_oversized_signature_is_simply_invalid(world: World) -> None:
    name = str(world.keys.create_key(ACCOUNT, "s", Purpose.SIGN_VERIFY).name)
    verdict = world.crypto.verify(name, message=b"m", digest=None, signature=bytes(2000))
    assert verdict == (False, f"{name}/versions/1")


def test_a_mac_verifies_across_versions(world: World) -> None:
    name = str(world.keys.create_key(ACCOUNT, "m", Purpose.MAC).name)
    mac = world.crypto.generate_mac(name, b"data")
    world.keys.rotate_key(name)
    assert world.crypto.verify_mac(name, b"data", mac.data) == (True, f"{name}/versions/1")
    assert world.crypto.verify_mac(name, b"datA", mac.data) == (False, f"{name}/versions/2")


def test_rsa_oaep_decrypts_what_the_public_key_encrypted(world: World) -> None:
    name = str(
        world.keys.create_key(
            ACCOUNT, "r", Purpose.ASYMMETRIC_DECRYPT, Algorithm.RSA_DECRYPT_OAEP_2048_SHA256
        ).name
    )
    public = serialization.load_pem_public_key(world.keys.get_public_key(name).pem.encode())
    assert isinstance(public, rsa.RSAPublicKey)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    ciphertext = public.encrypt(b"session key", oaep)
    assert world.crypto.asymmetric_decrypt(name, ciphertext).data == b"session key"
    with pytest.raises(DecryptionFailed):
        world.crypto.asymmetric_decrypt(name, bytes(256))


@pytest.mark.parametrize("size", [0, 1025])
def test_random_bytes_are_bounded(world: World, size: int) -> None:
    with pytest.raises(InvalidArgument):
        world.crypto.generate_random(size)
    assert len(world.crypto.generate_random(1024)) == 1024
