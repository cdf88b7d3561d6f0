"""CryptoService end to end: the real server on a real SoftHSM token, driven through the SDK.

Whatever can be checked outside the vault is checked with `cryptography`: signatures are
verified with the PEM GetPublicKey returns, OAEP ciphertexts are made with it, data keys are
used with AESGCM. What cannot (secret keys never leave the token) is checked for consistency:
round trips, and refusals of every modified input with one uniform error.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import google_crc32c
import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.wrappers_pb2 import Int64Value

from tests.support.api_calls import ensure_account, expect_error, new_id
from vault.client import VaultClient, VaultClientError
from vault.gen.vault.v1 import crypto_service_pb2, crypto_service_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
KIB_64 = 64 * 1024
HEADER = struct.Struct(">BI")  # format byte, key version
NONCE_SIZE = 12
TAG_SIZE = 16


# -- helpers -------------------------------------------------------------------------------


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    """data with the bits of mask flipped in the byte at index."""
    mutable = bytearray(data)
    mutable[index] ^= mask
    return bytes(mutable)


def header_of(data: bytes) -> tuple[int, int]:
    fmt, version = HEADER.unpack_from(data)
    return int(fmt), int(version)


@dataclass(frozen=True)
class Keys:
    account: str
    enc: str
    enc_other: str
    wrap: str
    wrap_other: str
    oaep: str
    signers: dict[str, str]
    macs: dict[str, str]


SIGN_ALGORITHMS = [
    "RSA_SIGN_PSS_2048_SHA256",
    "RSA_SIGN_PKCS1_2048_SHA256",
    "EC_SIGN_P256_SHA256",
    "EC_SIGN_P384_SHA384",
    "EC_SIGN_ED25519",
]
DIGEST_ALGORITHMS = {
    "RSA_SIGN_PSS_2048_SHA256": hashes.SHA256,
    "EC_SIGN_P256_SHA256": hashes.SHA256,
    "EC_SIGN_P384_SHA384": hashes.SHA384,
}
MESSAGE_ONLY_ALGORITHMS = ["RSA_SIGN_PKCS1_2048_SHA256", "EC_SIGN_ED25519"]
MAC_SIZES = {"HMAC_SHA256": 32, "HMAC_SHA384": 48, "HMAC_SHA512": 64}


@pytest.fixture(scope="module")
def keys(client: VaultClient) -> Keys:
    """Keys the tests only use (never change): one account for this module."""
    account = ensure_account(client, f"accounts/crypto-{uuid4().hex[:10]}")

    def make(purpose: str, algorithm: str | None = None) -> str:
        return client.create_key(account, new_id(), purpose, algorithm).name

    return Keys(
        account=account,
        enc=make("ENCRYPT_DECRYPT"),
        enc_other=make("ENCRYPT_DECRYPT"),
        wrap=make("WRAP_UNWRAP"),
        wrap_other=make("WRAP_UNWRAP"),
        oaep=make("ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA1"),
        signers={algorithm: make("SIGN_VERIFY", algorithm) for algorithm in SIGN_ALGORITHMS},
        macs={algorithm: make("MAC", algorithm) for algorithm in MAC_SIZES},
    )


@pytest.fixture(scope="module")
def crypto_stub(server: Any) -> Iterator[crypto_service_pb2_grpc.CryptoServiceStub]:
    """The raw stub, for requests the SDK would never send (wrong checksums)."""
    with server.channel() as channel:
        yield crypto_service_pb2_grpc.CryptoServiceStub(channel)


def public_key(client: VaultClient, name: str) -> Any:
    pem = client.get_public_key(name).pem.encode("utf-8")
    return serialization.load_pem_public_key(pem)


def verify_independently(algorithm: str, public: Any, signature: bytes, message: bytes) -> None:
    """Raise InvalidSignature unless signature is algorithm's signature of message."""
    if algorithm == "EC_SIGN_ED25519":
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(signature, message)
    elif algorithm.startswith("EC_SIGN_"):
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, message, ec.ECDSA(DIGEST_ALGORITHMS[algorithm]()))
    elif algorithm == "RSA_SIGN_PSS_2048_SHA256":
        assert isinstance(public, rsa.RSAPublicKey)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(signature, message, pss, hashes.SHA256())
    else:
        assert algorithm == "RSA_SIGN_PKCS1_2048_SHA256"
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def digest_of(algorithm: str, message: bytes) -> bytes:
    hasher = hashes.Hash(DIGEST_ALGORITHMS[algorithm]())
    hasher.update(message)
    return hasher.finalize()


# -- Encrypt / Decrypt -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100, 4096])
@pytest.mark.parametrize("aad", [b"", b"bucket=photos;object=42"])
def test_encrypt_decrypt_round_trip(client: VaultClient, keys: Keys, size: int, aad: bytes) -> None:
    plaintext = os.urandom(size)
    sealed = client.encrypt(keys.enc, plaintext, aad=aad)
    assert sealed.key_version == f"{keys.enc}/versions/1"
    assert sealed.verified_plaintext_crc32c
    assert sealed.verified_additional_authenticated_data_crc32c
    assert sealed.ciphertext_crc32c.value == google_crc32c.value(sealed.ciphertext)
    # format 1 | version | 96-bit nonce | ciphertext | 128-bit tag
    assert header_of(sealed.ciphertext) == (0x01, 1)
    assert len(sealed.ciphertext) == HEADER.size + NONCE_SIZE + size + TAG_SIZE
    if size >= 16:
        assert plaintext not in sealed.ciphertext

    opened = client.decrypt(keys.enc, sealed.ciphertext, aad=aad)
    assert opened.plaintext == plaintext
    assert opened.key_version == sealed.key_version
    assert opened.verified_ciphertext_crc32c
    assert opened.verified_additional_authenticated_data_crc32c


def test_encryptions_of_the_same_plaintext_differ(client: VaultClient, keys: Keys) -> None:
    ciphertexts = {client.encrypt(keys.enc, b"same", aad=b"a").ciphertext for _ in range(5)}
    assert len(ciphertexts) == 5
    nonces = {c[HEADER.size : HEADER.size + NONCE_SIZE] for c in ciphertexts}
    assert len(nonces) == 5
    for ciphertext in ciphertexts:
        assert client.decrypt(keys.enc, ciphertext, aad=b"a").plaintext == b"same"


def tamperings(good: bytes, other_key_ciphertext: bytes) -> dict[str, bytes]:
    body_start = HEADER.size + NONCE_SIZE
    return {
        "header format byte": flip(good, 0),
        "header version, high byte": flip(good, 1),
        "header version, low byte (version 0)": flip(good, 4),
        "header version 2 (not existing)": flip(good, 4, 0x03),
        "header version 2**32 - 1": HEADER.pack(0x01, 0xFFFFFFFF) + good[HEADER.size :],
        "header version 2**31": HEADER.pack(0x01, 0x80000000) + good[HEADER.size :],
        "nonce first byte": flip(good, HEADER.size),
        "nonce last byte": flip(good, body_start - 1, 0x80),
        "body first byte": flip(good, body_start),
        "body middle byte": flip(good, body_start + 10, 0xFF),
        "tag first byte": flip(good, len(good) - TAG_SIZE),
        "tag last byte": flip(good, len(good) - 1),
        "truncated by one byte": good[:-1],
        "truncated to the tag": good[: HEADER.size + NONCE_SIZE + TAG_SIZE],
        "truncated below the minimum": good[: HEADER.size + NONCE_SIZE + TAG_SIZE - 1],
        "truncated to the header": good[: HEADER.size],
        "empty": b"",
        "one byte appended": good + b"\0",
        "made by another key": other_key_ciphertext,
    }


def test_every_decryption_failure_looks_the_same(client: VaultClient, keys: Keys) -> None:
    aad = b"the right context"
    plaintext = b"p" * 40
    good = client.encrypt(keys.enc, plaintext, aad=aad).ciphertext
    other = client.encrypt(keys.enc_other, plaintext, aad=aad).ciphertext
    assert client.decrypt(keys.enc, good, aad=aad).plaintext == plaintext

    failures: dict[str, Callable[[], object]] = {
        "wrong AAD": lambda: client.decrypt(keys.enc, good, aad=b"the wrong context"),
        "missing AAD": lambda: client.decrypt(keys.enc, good),
        "AAD with a byte appended": lambda: client.decrypt(keys.enc, good, aad=aad + b"\0"),
        "right ciphertext, other key": lambda: client.decrypt(keys.enc_other, good, aad=aad),
    }
    for label, ciphertext in tamperings(good, other).items():
        failures[label] = lambda c=ciphertext: client.decrypt(keys.enc, c, aad=aad)

    messages: dict[str, str] = {}
    for label, call in failures.items():
        try:
            call()
        except VaultClientError as error:
            assert (error.code, error.reason) == (INVALID, "DECRYPTION_FAILED"), (label, error)
            assert error.metadata == {}, label
            messages[label] = error.message
        else:
            pytest.fail(f"{label}: decrypted")
    # One message for all: the vault does not say what was wrong.
    assert len(set(messages.values())) == 1, messages


def test_plaintext_and_aad_limits(client: VaultClient, keys: Keys) -> None:
    largest = os.urandom(KIB_64)
    sealed = client.encrypt(keys.enc, largest, aad=b"x" * KIB_64)
    assert client.decrypt(keys.enc, sealed.ciphertext, aad=b"x" * KIB_64).plaintext == largest

    error = expect_error(
        INVALID, "INPUT_TOO_LARGE", lambda: client.encrypt(keys.enc, largest + b"!")
    )
    assert error.metadata.get("field") == "plaintext"
    error = expect_error(
        INVALID, "INPUT_TOO_LARGE", lambda: client.encrypt(keys.enc, b"p", aad=b"x" * (KIB_64 + 1))
    )
    assert error.metadata.get("field") == "additional_authenticated_data"
    expect_error(
        INVALID,
        "INPUT_TOO_LARGE",
        lambda: client.decrypt(keys.enc, sealed.ciphertext, aad=b"x" * (KIB_64 + 1)),
    )
    expect_error(
        INVALID, "INPUT_TOO_LARGE", lambda: client.decrypt(keys.enc, b"\x01" * (KIB_64 + 1024))
    )


def test_request_checksums_are_checked(
    keys: Keys, crypto_stub: crypto_service_pb2_grpc.CryptoServiceStub
) -> None:
    good = crypto_service_pb2.EncryptRequest(
        name=keys.enc,
        plaintext=b"checked",
        plaintext_crc32c=Int64Value(value=google_crc32c.value(b"checked")),
    )
    response = crypto_stub.Encrypt(good, timeout=30)
    assert response.verified_plaintext_crc32c
    assert not response.verified_additional_authenticated_data_crc32c

    bad = crypto_service_pb2.EncryptRequest(
        name=keys.enc,
        plaintext=b"checked",
        plaintext_crc32c=Int64Value(value=google_crc32c.value(b"checkeD")),
    )
    with pytest.raises(grpc.RpcError) as caught:
        crypto_stub.Encrypt(bad, timeout=30)
    error = VaultClientError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (INVALID, "CHECKSUM_MISMATCH")


# -- GenerateDataKey ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 24, 32, 64])
def test_generate_data_key_with_plaintext(client: VaultClient, keys: Keys, size: int) -> None:
    aad = b"bucket=b1"
    data_key = client.generate_data_key(keys.enc, size, aad, include_plaintext=True)
    assert len(data_key.plaintext) == size
    assert data_key.plaintext_crc32c.value == google_crc32c.value(data_key.plaintext)
    assert data_key.key_version == f"{keys.enc}/versions/1"
    assert data_key.verified_additional_authenticated_data_crc32c
    assert header_of(data_key.ciphertext) == (0x01, 1)
    assert len(data_key.ciphertext) == HEADER.size + NONCE_SIZE + size + TAG_SIZE

    # The encrypted data key is an ordinary ciphertext of the same bytes, bound to the AAD.
    opened = client.decrypt(keys.enc, data_key.ciphertext, aad=aad)
    assert opened.plaintext == data_key.plaintext
    expect_error(
        INVALID, "DECRYPTION_FAILED", lambda: client.decrypt(keys.enc, data_key.ciphertext)
    )

    if size in (16, 24, 32):
        # Usable as an AES key by an independent implementation, from either copy.
        nonce = os.urandom(12)
        sealed = AESGCM(data_key.plaintext).encrypt(nonce, b"object body", b"object-id")
        assert AESGCM(opened.plaintext).decrypt(nonce, sealed, b"object-id") == b"object body"


def test_generate_data_key_without_plaintext(client: VaultClient, keys: Keys) -> None:
    data_key = client.generate_data_key(keys.enc, 32)
    assert data_key.plaintext == b""
    assert not data_key.HasField("plaintext_crc32c")
    plaintext = client.decrypt(keys.enc, data_key.ciphertext).plaintext
    assert len(plaintext) == 32
    nonce = os.urandom(12)
    assert AESGCM(plaintext).decrypt(nonce, AESGCM(plaintext).encrypt(nonce, b"x", None), None)


def test_generate_data_key_default_size_and_freshness(client: VaultClient, keys: Keys) -> None:
    first = client.generate_data_key(keys.enc, 0, include_plaintext=True)
    second = client.generate_data_key(keys.enc, 0, include_plaintext=True)
    assert len(first.plaintext) == len(second.plaintext) == 32
    assert first.plaintext != second.plaintext
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize("size", [1, 8, 17, 31, 33, 48, 65, 128, -1])
def test_generate_data_key_refuses_other_sizes(client: VaultClient, keys: Keys, size: int) -> None:
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.generate_data_key(keys.enc, size, include_plaintext=True),
    )


# -- ReEncrypt ---------------------------------------------------------------------------------


def test_re_encrypt_to_the_primary_version_after_rotation(client: VaultClient, keys: Keys) -> None:
    key = client.create_key(keys.account, new_id(), "ENCRYPT_DECRYPT").name
    old = client.encrypt(key, b"move me forward", aad=b"old-aad")
    client.rotate_key(key)

    moved = client.re_encrypt(
        key, old.ciphertext, source_aad=b"old-aad", destination_aad=b"new-aad"
    )
    assert moved.key_version == f"{key}/versions/2"
    assert moved.source_key_version == f"{key}/versions/1"
    assert moved.verified_ciphertext_crc32c
    assert moved.verified_source_additional_authenticated_data_crc32c
    assert moved.verified_destination_additional_authenticated_data_crc32c
    assert header_of(moved.ciphertext) == (0x01, 2)

    opened = client.decrypt(key, moved.ciphertext, aad=b"new-aad")
    assert (opened.plaintext, opened.key_version) == (b"move me forward", f"{key}/versions/2")
    expect_error(
        INVALID,
        "DECRYPTION_FAILED",
        lambda: client.decrypt(key, moved.ciphertext, aad=b"old-aad"),
    )
    # The old ciphertext is untouched and still opens.
    assert client.decrypt(key, old.ciphertext, aad=b"old-aad").plaintext == b"move me forward"
    expect_error(
        INVALID,
        "DECRYPTION_FAILED",
        lambda: client.re_encrypt(key, old.ciphertext, source_aad=b"wrong"),
    )


def test_re_encrypt_to_another_key(client: VaultClient, keys: Keys) -> None:
    source = client.encrypt(keys.enc, b"change of keys", aad=b"s")
    moved = client.re_encrypt(
        keys.enc,
        source.ciphertext,
        source_aad=b"s",
        destination_key_name=keys.enc_other,
        destination_aad=b"d",
    )
    assert moved.key_version == f"{keys.enc_other}/versions/1"
    assert moved.source_key_version == f"{keys.enc}/versions/1"
    assert client.decrypt(keys.enc_other, moved.ciphertext, aad=b"d").plaintext == (
        b"change of keys"
    )
    # It decrypts only under the destination key.
    for name, aad in ((keys.enc, b"d"), (keys.enc, b"s"), (keys.enc_other, b"s")):
        expect_error(
            INVALID,
            "DECRYPTION_FAILED",
            lambda n=name, a=aad: client.decrypt(n, moved.ciphertext, aad=a),
        )
    # The name given must be the key that made the ciphertext.
    expect_error(
        INVALID,
        "DECRYPTION_FAILED",
        lambda: client.re_encrypt(
            keys.enc_other, source.ciphertext, source_aad=b"s", destination_key_name=keys.enc
        ),
    )
    # The destination must be an encryption key.
    expect_error(
        PRECONDITION,
        "WRONG_KEY_PURPOSE",
        lambda: client.re_encrypt(
            keys.enc, source.ciphertext, source_aad=b"s", destination_key_name=keys.wrap
        ),
    )


def test_re_encrypt_moves_data_off_a_revoked_key(client: VaultClient, keys: Keys) -> None:
    compromised = client.create_key(keys.account, new_id(), "ENCRYPT_DECRYPT").name
    replacement = client.create_key(keys.account, new_id(), "ENCRYPT_DECRYPT").name
    old = client.encrypt(compromised, b"rescue me").ciphertext
    client.revoke_key(compromised, "key material exposed")

    # A revoked key makes nothing new, not even for itself...
    expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.re_encrypt(compromised, old))
    # ...but what it protected can move to another key.
    moved = client.re_encrypt(compromised, old, destination_key_name=replacement)
    assert client.decrypt(replacement, moved.ciphertext).plaintext == b"rescue me"

    client.disable_key(replacement)
    expect_error(
        PRECONDITION,
        "WRONG_KEY_STATE",
        lambda: client.re_encrypt(compromised, old, destination_key_name=replacement),
    )


# -- WrapKey / UnwrapKey -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 24, 32, 64, 4096])
def test_wrap_unwrap_round_trip(client: VaultClient, keys: Keys, size: int) -> None:
    material = os.urandom(size)
    wrapped = client.wrap_key(keys.wrap, material)
    assert wrapped.key_version == f"{keys.wrap}/versions/1"
    assert wrapped.verified_key_material_crc32c
    # format 2 | version | AES-KWP output (the input is whole blocks: 8 bytes longer)
    assert header_of(wrapped.wrapped_key) == (0x02, 1)
    assert len(wrapped.wrapped_key) == HEADER.size + size + 8
    assert material not in wrapped.wrapped_key

    unwrapped = client.unwrap_key(keys.wrap, wrapped.wrapped_key)
    assert unwrapped.key_material == material
    assert unwrapped.key_version == wrapped.key_version
    assert unwrapped.verified_wrapped_key_crc32c
    # Another wrapping key cannot open it.
    expect_error(
        INVALID,
        "DECRYPTION_FAILED",
        lambda: client.unwrap_key(keys.wrap_other, wrapped.wrapped_key),
    )


@pytest.mark.parametrize("size", [0, 1, 8, 15, 17, 20, 31, 33, 63, 4097, 4104])
def test_wrap_refuses_material_of_other_sizes(client: VaultClient, keys: Keys, size: int) -> None:
    error = expect_error(
        INVALID, "INVALID_ARGUMENT", lambda: client.wrap_key(keys.wrap, os.urandom(size))
    )
    assert error.metadata.get("size") == str(size)


def test_tampered_wrapped_keys_are_refused_uniformly(client: VaultClient, keys: Keys) -> None:
    good = client.wrap_key(keys.wrap, os.urandom(32)).wrapped_key
    tampered = {
        "header format byte": flip(good, 0),
        "header version (0)": flip(good, 4),
        "header version (not existing)": flip(good, 4, 0x03),
        "header version 2**32 - 1": HEADER.pack(0x02, 0xFFFFFFFF) + good[HEADER.size :],
        "first wrapped byte": flip(good, HEADER.size),
        "middle wrapped byte": flip(good, HEADER.size + 20, 0xFF),
        "last wrapped byte": flip(good, len(good) - 1),
        "truncated by one byte": good[:-1],
        "truncated by one block": good[:-8],
        "header only": good[: HEADER.size],
        "empty": b"",
        "block appended": good + bytes(8),
        "an Encrypt ciphertext": client.encrypt(keys.enc, bytes(32)).ciphertext,
    }
    messages = set()
    for label, blob in tampered.items():
        try:
            client.unwrap_key(keys.wrap, blob)
        except VaultClientError as error:
            assert (error.code, error.reason) == (INVALID, "DECRYPTION_FAILED"), (label, error)
            messages.add(error.message)
        else:
            pytest.fail(f"{label}: unwrapped")
    assert len(messages) == 1


def test_wrapped_key_names_its_version(client: VaultClient, keys: Keys) -> None:
    key = client.create_key(keys.account, new_id(), "WRAP_UNWRAP").name
    material = os.urandom(32)
    first = client.wrap_key(key, material).wrapped_key
    client.rotate_key(key)
    second = client.wrap_key(key, material)
    assert second.key_version == f"{key}/versions/2"
    assert header_of(second.wrapped_key) == (0x02, 2)
    assert client.unwrap_key(key, first).key_material == material
    assert client.unwrap_key(key, second.wrapped_key).key_material == material
    # Relabelled as version 1, the version-2 blob does not open.
    relabelled = HEADER.pack(0x02, 1) + second.wrapped_key[HEADER.size :]
    expect_error(INVALID, "DECRYPTION_FAILED", lambda: client.unwrap_key(key, relabelled))


# -- Sign / Verify -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", SIGN_ALGORITHMS)
def test_sign_message_is_verified_independently(
    client: VaultClient, keys: Keys, algorithm: str
) -> None:
    name = keys.signers[algorithm]
    message = b"ship order 42 to warehouse 7"
    signed = client.sign(name, message=message)
    assert signed.key_version == f"{name}/versions/1"
    assert signed.verified_message_crc32c and not signed.verified_digest_crc32c
    public = public_key(client, signed.key_version)

    verify_independently(algorithm, public, signed.signature, message)
    with pytest.raises(InvalidSignature):
        verify_independently(algorithm, public, signed.signature, message + b"!")

    verified = client.verify(name, signed.signature, message=message)
    assert verified.valid
    assert verified.key_version == signed.key_version
    assert verified.response.verified_message_crc32c
    assert verified.response.verified_signature_crc32c
    assert not client.verify(name, signed.signature, message=message + b"!").valid
    assert not client.verify(name, signed.signature, message=b"").valid
    # The signature of another key of the same algorithm is not this key's.
    other = client.create_key(keys.account, new_id(), "SIGN_VERIFY", algorithm).name
    assert not client.verify(other, signed.signature, message=message).valid


@pytest.mark.parametrize("algorithm", SIGN_ALGORITHMS)
def test_verify_of_garbage_is_false_not_an_error(
    client: VaultClient, keys: Keys, algorithm: str
) -> None:
    name = keys.signers[algorithm]
    signature = client.sign(name, message=b"m").signature
    garbage = [
        b"",
        b"\0",
        os.urandom(len(signature)),
        bytes(len(signature)),
        flip(signature, len(signature) // 2),
        flip(signature, len(signature) - 1),
        signature[:-1],
        signature + b"\0",
        b"\x30\x06\x02\x01\x01\x02\x01\x01",  # a well-formed DER ECDSA signature (r=s=1)
        os.urandom(1024),
        os.urandom(4096),  # longer than any signature: still an answer, not an error
    ]
    for candidate in garbage:
        assert not client.verify(name, candidate, message=b"m").valid, candidate


@pytest.mark.parametrize("algorithm", sorted(DIGEST_ALGORITHMS))
def test_sign_digest_is_verified_independently(
    client: VaultClient, keys: Keys, algorithm: str
) -> None:
    name = keys.signers[algorithm]
    message = b"a large object hashed by the caller"
    digest = digest_of(algorithm, message)
    signed = client.sign(name, digest=digest)
    assert signed.verified_digest_crc32c and not signed.verified_message_crc32c
    public = public_key(client, signed.key_version)

    # A signature over the digest is the signature over the message.
    verify_independently(algorithm, public, signed.signature, message)
    hash_algorithm = DIGEST_ALGORITHMS[algorithm]()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signed.signature, digest, ec.ECDSA(utils.Prehashed(hash_algorithm)))
    else:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(signed.signature, digest, pss, utils.Prehashed(hash_algorithm))

    assert client.verify(name, signed.signature, digest=digest).valid
    assert client.verify(name, signed.signature, message=message).valid
    assert not client.verify(name, signed.signature, digest=flip(digest, 0)).valid
    # And a message signature verifies against its digest.
    by_message = client.sign(name, message=message).signature
    assert client.verify(name, by_message, digest=digest).valid


@pytest.mark.parametrize("algorithm", MESSAGE_ONLY_ALGORITHMS)
def test_digest_input_is_refused_by_message_only_algorithms(
    client: VaultClient, keys: Keys, algorithm: str
) -> None:
    digest = hashlib.sha256(b"m").digest()
    error = expect_error(
        INVALID,
        "UNSUPPORTED_ALGORITHM",
        lambda: client.sign(keys.signers[algorithm], digest=digest),
    )
    assert error.metadata.get("algorithm") == algorithm
    # Verify accepts exactly what Sign accepts.
    signature = client.sign(keys.signers[algorithm], message=b"m").signature
    expect_error(
        INVALID,
        "UNSUPPORTED_ALGORITHM",
        lambda: client.verify(keys.signers[algorithm], signature, digest=digest),
    )


@pytest.mark.parametrize(
    ("algorithm", "size"),
    [
        ("RSA_SIGN_PSS_2048_SHA256", 31),
        ("RSA_SIGN_PSS_2048_SHA256", 48),
        ("EC_SIGN_P256_SHA256", 0),
        ("EC_SIGN_P256_SHA256", 20),
        ("EC_SIGN_P256_SHA256", 64),
        ("EC_SIGN_P384_SHA384", 32),
        ("EC_SIGN_P384_SHA384", 49),
    ],
)
def test_sign_refuses_a_digest_of_the_wrong_length(
    client: VaultClient, keys: Keys, algorithm: str, size: int
) -> None:
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.sign(keys.signers[algorithm], digest=os.urandom(size)),
    )
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.verify(keys.signers[algorithm], b"sig", digest=os.urandom(size)),
    )


def test_sign_input_rules(client: VaultClient, keys: Keys) -> None:
    name = keys.signers["EC_SIGN_P256_SHA256"]
    # Neither message nor digest.
    expect_error(INVALID, "INVALID_ARGUMENT", lambda: client.sign(name))
    expect_error(INVALID, "INVALID_ARGUMENT", lambda: client.verify(name, b"sig"))
    # Messages up to 64 KiB.
    largest = os.urandom(KIB_64)
    signed = client.sign(name, message=largest)
    verify_independently("EC_SIGN_P256_SHA256", public_key(client, name), signed.signature, largest)
    # A larger one the SDK signs by its digest (tests/test_large_inputs.py), so the server's
    # own limit shows on the raw stub (tests/test_bad_input.py).
    larger = client.sign(name, message=largest + b"!")
    assert larger.verified_digest_crc32c
    verify_independently(
        "EC_SIGN_P256_SHA256", public_key(client, name), larger.signature, largest + b"!"
    )
    # An empty message is a message.
    empty = client.sign(name, message=b"")
    assert client.verify(name, empty.signature, message=b"").valid


def test_signatures_randomness(client: VaultClient, keys: Keys) -> None:
    # ECDSA and PSS are randomized; Ed25519 and PKCS#1 v1.5 are deterministic.
    for algorithm, deterministic in (
        ("EC_SIGN_P256_SHA256", False),
        ("RSA_SIGN_PSS_2048_SHA256", False),
        ("EC_SIGN_ED25519", True),
        ("RSA_SIGN_PKCS1_2048_SHA256", True),
    ):
        name = keys.signers[algorithm]
        first = client.sign(name, message=b"m").signature
        second = client.sign(name, message=b"m").signature
        assert (first == second) is deterministic, algorithm


# -- AsymmetricDecrypt -------------------------------------------------------------------------

OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


@pytest.mark.parametrize("size", [0, 1, 32, 214])
def test_asymmetric_decrypt_of_a_cryptography_ciphertext(
    client: VaultClient, keys: Keys, size: int
) -> None:
    public = public_key(client, keys.oaep)
    assert isinstance(public, rsa.RSAPublicKey)
    plaintext = os.urandom(size)  # 214 = 256 - 2 * 20 - 2, the most OAEP SHA-1 carries
    ciphertext = public.encrypt(plaintext, OAEP_SHA1)
    opened = client.asymmetric_decrypt(keys.oaep, ciphertext)
    assert opened.plaintext == plaintext
    assert opened.key_version == f"{keys.oaep}/versions/1"
    assert opened.verified_ciphertext_crc32c


def test_asymmetric_decrypt_failures(client: VaultClient, keys: Keys) -> None:
    public = public_key(client, keys.oaep)
    good = public.encrypt(b"secret", OAEP_SHA1)
    other_public = rsa.generate_private_key(65537, 2048).public_key()
    bad = {
        "first byte": flip(good, 0),
        "middle byte": flip(good, 128),
        "last byte": flip(good, len(good) - 1),
        "truncated": good[:-1],
        "extended": good + b"\0",
        "zeros": bytes(256),
        "short": b"\x01" * 10,
        "empty": b"",
        "OAEP SHA-256": public.encrypt(
            b"secret",
            padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        ),
        "OAEP with a label": public.encrypt(
            b"secret",
            padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=b"l"),
        ),
        "PKCS#1 v1.5": public.encrypt(b"secret", padding.PKCS1v15()),
        "another public key": other_public.encrypt(b"secret", OAEP_SHA1),
    }
    messages = set()
    for label, ciphertext in bad.items():
        try:
            client.asymmetric_decrypt(keys.oaep, ciphertext)
        except VaultClientError as error:
            assert (error.code, error.reason) == (INVALID, "DECRYPTION_FAILED"), (label, error)
            messages.add(error.message)
        else:
            pytest.fail(f"{label}: decrypted")
    assert len(messages) == 1
    expect_error(
        INVALID, "INPUT_TOO_LARGE", lambda: client.asymmetric_decrypt(keys.oaep, bytes(1025))
    )
    # The key still works after all that.
    assert client.asymmetric_decrypt(keys.oaep, good).plaintext == b"secret"


def test_asymmetric_decrypt_uses_the_version_named(client: VaultClient, keys: Keys) -> None:
    key = client.create_key(keys.account, new_id(), "ASYMMETRIC_DECRYPT").name
    v1, v2 = f"{key}/versions/1", f"{key}/versions/2"
    to_v1 = public_key(client, key).encrypt(b"for version 1", OAEP_SHA1)
    client.rotate_key(key)
    public_v2 = public_key(client, key)
    assert public_v2.public_numbers() != public_key(client, v1).public_numbers()
    to_v2 = public_v2.encrypt(b"for version 2", OAEP_SHA1)

    opened = client.asymmetric_decrypt(v1, to_v1)
    assert (opened.plaintext, opened.key_version) == (b"for version 1", v1)
    opened = client.asymmetric_decrypt(key, to_v2)
    assert (opened.plaintext, opened.key_version) == (b"for version 2", v2)
    # The key name means the primary version, which cannot open what was made for version 1.
    expect_error(INVALID, "DECRYPTION_FAILED", lambda: client.asymmetric_decrypt(key, to_v1))
    expect_error(INVALID, "DECRYPTION_FAILED", lambda: client.asymmetric_decrypt(v1, to_v2))


# -- GenerateMac / VerifyMac -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", sorted(MAC_SIZES))
def test_mac(client: VaultClient, keys: Keys, algorithm: str) -> None:
    name = keys.macs[algorithm]
    data = b"GET /bucket/object 2025-01-01T00:00:00Z"
    generated = client.generate_mac(name, data)
    mac = generated.mac
    assert len(mac) == MAC_SIZES[algorithm]
    assert generated.key_version == f"{name}/versions/1"
    assert generated.verified_data_crc32c
    # HMAC is deterministic: the same key and data give the same MAC.
    assert client.generate_mac(name, data).mac == mac
    assert client.generate_mac(name, data + b"x").mac != mac

    verified = client.verify_mac(name, data, mac)
    assert verified.valid and verified.key_version == generated.key_version
    assert verified.response.verified_data_crc32c and verified.response.verified_mac_crc32c
    for bit in (0, len(data) * 8 - 1):
        assert not client.verify_mac(name, flip(data, bit // 8, 1 << (bit % 8)), mac).valid
    for bit in (0, len(mac) * 8 - 1):
        assert not client.verify_mac(name, data, flip(mac, bit // 8, 1 << (bit % 8))).valid
    for wrong in (b"", mac[:-1], mac[:16], mac + b"\0", os.urandom(len(mac))):
        assert not client.verify_mac(name, data, wrong).valid
    assert not client.verify_mac(name, b"", mac).valid


def test_mac_keys_are_independent(client: VaultClient, keys: Keys) -> None:
    one = keys.macs["HMAC_SHA256"]
    other = client.create_key(keys.account, new_id(), "MAC", "HMAC_SHA256").name
    mac = client.generate_mac(one, b"data").mac
    assert client.generate_mac(other, b"data").mac != mac
    assert not client.verify_mac(other, b"data", mac).valid


def test_mac_limits(client: VaultClient, keys: Keys) -> None:
    name = keys.macs["HMAC_SHA512"]
    largest = os.urandom(KIB_64)
    mac = client.generate_mac(name, largest).mac
    assert client.verify_mac(name, largest, mac).valid
    expect_error(INVALID, "INPUT_TOO_LARGE", lambda: client.generate_mac(name, largest + b"!"))
    expect_error(INVALID, "INPUT_TOO_LARGE", lambda: client.verify_mac(name, largest + b"!", mac))
    empty = client.generate_mac(name, b"").mac
    assert len(empty) == 64 and client.verify_mac(name, b"", empty).valid


# -- GenerateRandom ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 16, 32, 255, 1023, 1024])
def test_generate_random(client: VaultClient, size: int) -> None:
    response = client.generate_random(size)
    assert len(response.data) == size
    assert response.data_crc32c.value == google_crc32c.value(response.data)


def test_generate_random_is_random(client: VaultClient) -> None:
    first, second = (client.generate_random(32).data for _ in range(2))
    assert first != second
    # 1024 random bytes take nearly every byte value (expected about 251 distinct).
    assert len(set(client.generate_random(1024).data)) > 200


@pytest.mark.parametrize("size", [0, -1, 1025, 4096])
def test_generate_random_refuses_other_sizes(client: VaultClient, size: int) -> None:
    expect_error(INVALID, "INVALID_ARGUMENT", lambda: client.generate_random(size))
