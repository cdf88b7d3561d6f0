"""One behavioural suite for the KeyStore port, run against the SoftHSM token and against the
in-memory fake the unit tests use (tests.support.fakes.FakeKeyStore): what the use cases'
unit tests rely on of the fake is what the token does."""

from __future__ import annotations

import os
import uuid

import pytest
from cryptography.hazmat.primitives import hashes

from tests.support.fakes import FakeKeyStore
from tests.support.tokens import generated_version
from vault.domain.algorithms import Algorithm, digest
from vault.domain.errors import DecryptionFailed
from vault.domain.ports import KeyStore
from vault.domain.public_keys import verify_signature

NONCE = bytes(range(12))


@pytest.fixture(params=["softhsm", "fake"])
def any_keystore(request: pytest.FixtureRequest) -> KeyStore:
    if request.param == "fake":
        return FakeKeyStore()
    real: KeyStore = request.getfixturevalue("keystore")
    return real


def test_gcm_round_trips_and_a_wrong_aad_fails_uniformly(any_keystore: KeyStore) -> None:
    version = generated_version(any_keystore, Algorithm.AES_256_GCM)
    algorithm = Algorithm.AES_256_GCM
    sealed = any_keystore.encrypt_gcm(version, algorithm, NONCE, b"plain", b"aad")
    assert len(sealed) == len(b"plain") + 16
    assert any_keystore.decrypt_gcm(version, algorithm, NONCE, sealed, b"aad") == b"plain"
    with pytest.raises(DecryptionFailed):
        any_keystore.decrypt_gcm(version, algorithm, NONCE, sealed, b"other")


def test_kwp_round_trips_and_a_tampered_blob_fails_uniformly(any_keystore: KeyStore) -> None:
    version = generated_version(any_keystore, Algorithm.AES_256_KWP)
    material = os.urandom(32)
    wrapped = any_keystore.wrap_secret(version, Algorithm.AES_256_KWP, material)
    assert len(wrapped) == 40
    assert any_keystore.unwrap_secret(version, Algorithm.AES_256_KWP, wrapped) == material
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        any_keystore.unwrap_secret(version, Algorithm.AES_256_KWP, tampered)


@pytest.mark.parametrize("prehashed", [False, True])
def test_an_ecdsa_signature_verifies_with_the_versions_public_key(
    any_keystore: KeyStore, prehashed: bool
) -> None:
    algorithm = Algorithm.EC_SIGN_P256_SHA256
    version = generated_version(any_keystore, algorithm)
    assert version.public_key_der is not None
    data = digest(algorithm.spec.hash, b"message") if prehashed else b"message"
    signature = any_keystore.sign(version, algorithm, data, prehashed)
    assert verify_signature(algorithm, version.public_key_der, data, prehashed, signature)
    assert verify_signature(algorithm, version.public_key_der, b"message", False, signature)
    assert not verify_signature(algorithm, version.public_key_der, b"massage", False, signature)


def test_a_mac_verifies_only_for_its_data(any_keystore: KeyStore) -> None:
    version = generated_version(any_keystore, Algorithm.HMAC_SHA256)
    mac = any_keystore.generate_mac(version, Algorithm.HMAC_SHA256, b"data")
    assert len(mac) == hashes.SHA256.digest_size
    assert any_keystore.verify_mac(version, Algorithm.HMAC_SHA256, b"data", mac)
    assert not any_keystore.verify_mac(version, Algorithm.HMAC_SHA256, b"datA", mac)


def test_a_token_resident_version_lives_under_its_label_until_destroyed(
    any_keystore: KeyStore,
) -> None:
    label = f"vault:key:{uuid.uuid4().hex}"
    material = any_keystore.generate(Algorithm.AES_256_GCM, label)
    assert (material.token_label, material.wrapped_blob, material.root_generation) == (
        label,
        None,
        None,
    )
    assert label in any_keystore.token_labels()
    assert any_keystore.destroy_label(label)
    assert label not in any_keystore.token_labels()
    assert not any_keystore.destroy_label(label)


def test_a_wrapped_version_names_the_current_root_generation(any_keystore: KeyStore) -> None:
    material = any_keystore.generate(Algorithm.AES_256_GCM, None)
    assert material.root_generation == any_keystore.current_root_generation()
    assert material.wrapped_blob and material.token_label is None
    assert material.root_generation in any_keystore.root_generations_present()


def test_random_bytes_have_the_size_asked(any_keystore: KeyStore) -> None:
    first, second = any_keystore.random(32), any_keystore.random(32)
    assert len(first) == len(second) == 32 and first != second
