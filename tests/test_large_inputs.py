"""Inputs larger than one request, against the real server: messages over 64 KiB are signed
and verified by a digest computed locally (a chunk at a time), giving the same standard
signature of the whole message; algorithms that cannot sign a digest, and plaintexts over the
Encrypt limit, fail with a message that says what to do instead."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.support.api_calls import expect_error, new_account, new_id
from tests.support.harness import VaultServer
from tests.support.security_helpers import new_account as account_through_identity
from tests.test_cli import assert_one_line_error, create_key, ok, vaultctl, write
from tests.test_cli import target as target  # fixture: the server, credentials for vaultctl
from vault.client import ApiKeyCredentials, VaultClient

INVALID = grpc.StatusCode.INVALID_ARGUMENT
KIB_64 = 64 * 1024
HASHES = {
    "EC_SIGN_P256_SHA256": hashes.SHA256,
    "EC_SIGN_P384_SHA384": hashes.SHA384,
    "RSA_SIGN_PSS_2048_SHA256": hashes.SHA256,
}


def verify_with_cryptography(pem: bytes, algorithm: str, signature: bytes, data: bytes) -> None:
    """Raise InvalidSignature unless signature is algorithm's signature of all of data."""
    public = serialization.load_pem_public_key(pem)
    hash_algorithm = HASHES[algorithm]()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(hash_algorithm))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(signature, data, pss, hash_algorithm)


@pytest.mark.parametrize("algorithm", sorted(HASHES))
def test_sdk_signs_and_verifies_large_messages_by_their_digest(
    client: VaultClient, algorithm: str
) -> None:
    name = client.create_key(new_account(client), new_id(), "SIGN_VERIFY", algorithm).name
    pem = client.get_public_key(name).pem.encode()
    data = os.urandom(KIB_64 + 1)

    for message in (data, io.BytesIO(data)):
        signed = client.sign(name, message=message)
        assert signed.verified_digest_crc32c and not signed.verified_message_crc32c
        verify_with_cryptography(pem, algorithm, signed.signature, data)
        assert client.verify(name, signed.signature, message=data)
        assert client.verify(name, signed.signature, message=io.BytesIO(data))
        assert not client.verify(name, signed.signature, message=data + b"!")
        assert not client.verify(name, signed.signature, message=io.BytesIO(data[:-1]))

    # Up to 64 KiB the message itself is sent, from bytes or from a file alike.
    small = data[:KIB_64]
    for message in (small, io.BytesIO(small)):
        signed = client.sign(name, message=message)
        assert signed.verified_message_crc32c and not signed.verified_digest_crc32c
        verify_with_cryptography(pem, algorithm, signed.signature, small)


def test_sdk_hashes_a_stream_in_bounded_memory(client: VaultClient, tmp_path: Path) -> None:
    name = client.create_key(new_account(client), new_id(), "SIGN_VERIFY").name
    big = tmp_path / "big.bin"
    chunk = os.urandom(1 << 20)
    with big.open("wb") as handle:
        for _ in range(48):
            handle.write(chunk)
    tracemalloc.start()
    try:
        with big.open("rb") as stream:
            signed = client.sign(name, message=stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # 48 MiB hashed, never held
    expected = hashlib.sha256(chunk * 48).digest()
    assert client.verify(name, signed.signature, digest=expected)


@pytest.mark.parametrize("algorithm", ["EC_SIGN_ED25519", "RSA_SIGN_PKCS1_2048_SHA256"])
def test_sdk_refuses_large_messages_for_algorithms_that_cannot_sign_a_digest(
    client: VaultClient, algorithm: str
) -> None:
    name = client.create_key(new_account(client), new_id(), "SIGN_VERIFY", algorithm).name
    data = os.urandom(KIB_64 + 1)
    for call in (
        lambda: client.sign(name, message=data),
        lambda: client.verify(name, b"signature", message=io.BytesIO(data)),
    ):
        error = expect_error(INVALID, "INPUT_TOO_LARGE", call)
        assert algorithm in error.message and "65536" in error.message
        assert "EC or RSA-PSS key" in error.message
        assert error.metadata == {"field": "message", "limit": "65536", "algorithm": algorithm}
    # At the limit the message itself still signs.
    signed = client.sign(name, message=data[:KIB_64])
    assert client.verify(name, signed.signature, message=data[:KIB_64])


@pytest.mark.parametrize("algorithm", ["EC_SIGN_P256_SHA256", "RSA_SIGN_PSS_2048_SHA256"])
def test_cli_signs_and_verifies_a_large_file(target: str, tmp_path: Path, algorithm: str) -> None:
    key = str(create_key(target, "SIGN_VERIFY", "--algorithm", algorithm)["name"])
    data = os.urandom(200_000)
    source = write(tmp_path / "release.tar", data)
    signature = tmp_path / "release.sig"
    signed = ok(vaultctl(target, "crypto", "sign", key, "--in", source, "--out", str(signature)))
    assert (
        f"signed the digest of the message, computed here, with {key}/versions/1" in signed.stderr
    )

    pem = tmp_path / "release.pem"
    ok(vaultctl(target, "keys", "public-key", key, "--out", str(pem)))
    verify_with_cryptography(pem.read_bytes(), algorithm, signature.read_bytes(), data)

    good = vaultctl(target, "crypto", "verify", key, "--in", source, "--signature", str(signature))
    assert ok(good).stdout == f"signature matches (version 1 of {key})\n"
    tampered = write(tmp_path / "tampered.tar", data[:-1] + bytes([data[-1] ^ 1]))
    bad = vaultctl(target, "crypto", "verify", key, "--in", tampered, "--signature", str(signature))
    assert bad.exit_code == 1

    # From standard input too, streamed the same way.
    piped = ok(vaultctl(target, "crypto", "sign", key, "--in", "-", stdin=data))
    printed = write(tmp_path / "piped.b64", piped.stdout.encode())
    ok(
        vaultctl(
            target, "crypto", "verify", key, "--in", "-", "--signature", printed,
            "--signature-base64", stdin=data,
        )
    )  # fmt: skip


def test_cli_signs_a_file_larger_than_any_input_read_whole(target: str, tmp_path: Path) -> None:
    key = str(create_key(target, "SIGN_VERIFY")["name"])
    big = tmp_path / "image.iso"
    chunk = os.urandom(1 << 20)
    with big.open("wb") as handle:
        for _ in range(20):
            handle.write(chunk)  # over the 16 MiB read_input cap
    signature = tmp_path / "image.sig"
    ok(vaultctl(target, "crypto", "sign", key, "--in", str(big), "--out", str(signature)))
    pem = tmp_path / "pem"
    ok(vaultctl(target, "keys", "public-key", key, "--out", str(pem)))
    verify_with_cryptography(
        pem.read_bytes(), "EC_SIGN_P256_SHA256", signature.read_bytes(), chunk * 20
    )


@pytest.mark.parametrize("algorithm", ["EC_SIGN_ED25519", "RSA_SIGN_PKCS1_2048_SHA256"])
def test_cli_large_file_with_a_message_only_algorithm_says_what_to_do(
    target: str, tmp_path: Path, algorithm: str
) -> None:
    key = str(create_key(target, "SIGN_VERIFY", "--algorithm", algorithm)["name"])
    source = write(tmp_path / "big", os.urandom(KIB_64 + 1))
    signature = tmp_path / "sig"
    refused = vaultctl(target, "crypto", "sign", key, "--in", source, "--out", str(signature))
    line = assert_one_line_error(refused, 3, "INPUT_TOO_LARGE", algorithm, "65536", "EC or RSA-PSS")
    assert "manifest" in line
    assert not signature.exists()


def test_cli_encrypt_of_a_large_plaintext_points_to_data_keys(
    target: str, tmp_path: Path, settings: Any
) -> None:
    key = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    limit = settings.keys.max_plaintext_bytes
    source = write(tmp_path / "big", os.urandom(limit + 1))
    refused = vaultctl(target, "crypto", "encrypt", key, "--in", source)
    assert_one_line_error(
        refused, 3, "INPUT_TOO_LARGE", f"limit of {limit} bytes", f"vaultctl crypto data-key {key}"
    )


def test_sdk_encrypt_of_a_large_plaintext_points_to_data_keys(
    client: VaultClient, settings: Any
) -> None:
    key = client.create_key(new_account(client), new_id(), "ENCRYPT_DECRYPT").name
    limit = settings.keys.max_plaintext_bytes
    error = expect_error(
        INVALID, "INPUT_TOO_LARGE", lambda: client.encrypt(key, os.urandom(limit + 1))
    )
    assert "GenerateDataKey" in error.message and "envelope encryption" in error.message


def test_a_large_message_needs_get_public_key_and_says_so(
    server: VaultServer, client: VaultClient
) -> None:
    account = account_through_identity(client, "large")
    name = client.create_key(account, new_id(), "SIGN_VERIFY").name
    relative = name.removeprefix(f"{account}/")
    data = os.urandom(KIB_64 + 1)
    sign_only = client.create_api_key(account, [(["Sign"], [relative])]).token
    with server.client(ApiKeyCredentials(sign_only)) as caller:
        assert caller.sign(name, message=data[:KIB_64])  # whole messages need only Sign
        error = expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
            lambda: caller.sign(name, message=data),
        )
        assert f"GetPublicKey on {name} was denied" in error.message
    with_public_key = client.create_api_key(account, [(["Sign", "GetPublicKey"], [relative])])
    with server.client(ApiKeyCredentials(with_public_key.token)) as caller:
        assert caller.sign(name, message=data).verified_digest_crc32c


def test_which_algorithms_sign_a_digest() -> None:
    from vault.domain.algorithms import Algorithm, HashName, Purpose

    signing = {algorithm: algorithm.digest_hash for algorithm in Algorithm}
    assert {a for a, h in signing.items() if h is not None} == {
        Algorithm.EC_SIGN_P256_SHA256,
        Algorithm.EC_SIGN_P384_SHA384,
        Algorithm.RSA_SIGN_PSS_2048_SHA256,
        Algorithm.RSA_SIGN_PSS_3072_SHA256,
        Algorithm.RSA_SIGN_PSS_4096_SHA256,
    }
    assert signing[Algorithm.EC_SIGN_P384_SHA384] is HashName.SHA384
    assert signing[Algorithm.RSA_SIGN_PSS_4096_SHA256] is HashName.SHA256
    assert all(a.purpose is Purpose.SIGN_VERIFY for a, h in signing.items() if h is not None)
