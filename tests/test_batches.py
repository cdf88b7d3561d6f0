"""Batch methods end to end on the real token and a server of this module's own (its batch
limit set low): a result or an error per item, in order; items naming different keys; one
item refused, rate-limited or undecryptable among good ones, each answered as the unary call
would be; one audit record per item, and the chain still verifies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import google_crc32c
import grpc
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.wrappers_pb2 import Int64Value

from tests.support.api_calls import expect_error
from tests.support.harness import VaultServer
from tests.support.security_helpers import (
    NO_THROTTLING,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    add_access_key,
    add_api_key,
    fresh_client,
    new_account,
    own_server,
)
from vault.cli.main import cli
from vault.client import VaultClient, VaultClientError, Verification
from vault.gen.vault.v1 import crypto_service_pb2, crypto_service_pb2_grpc

MAX_ITEMS: Final = 40
INVALID: Final = grpc.StatusCode.INVALID_ARGUMENT
BATCH_SIGN: Final = "/vault.v1.CryptoService/BatchSign"
BATCH_ENCRYPT: Final = "/vault.v1.CryptoService/BatchEncrypt"


@dataclass(frozen=True, slots=True)
class Tenant:
    server: VaultServer
    account: str
    p256: str
    rsa: str
    aes: str
    aes_other: str
    bucket: str


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    env = {**NO_THROTTLING, "VAULT_SERVER__MAX_BATCH_ITEMS": str(MAX_ITEMS)}
    yield from own_server(tmp_path_factory, "batches", env)


@pytest.fixture(scope="module")
def admin(vault: VaultServer) -> Iterator[VaultClient]:
    with vault.client() as client:
        yield client


@pytest.fixture(scope="module")
def tenant(vault: VaultServer, admin: VaultClient) -> Tenant:
    account = new_account(admin, "b")
    return Tenant(
        vault,
        account,
        admin.create_key(account, "p256", "SIGN_VERIFY", "EC_SIGN_P256_SHA256").name,
        admin.create_key(account, "rsa", "SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256").name,
        admin.create_key(account, "aes", "ENCRYPT_DECRYPT").name,
        admin.create_key(account, "aes-other", "ENCRYPT_DECRYPT").name,
        admin.create_bucket(account, "photos").name,
    )


def public_key(client: VaultClient, name: str) -> PublicKeyTypes:
    return serialization.load_pem_public_key(client.get_public_key(name).pem.encode("ascii"))


def reasons(answers: list[object]) -> list[str]:
    """Each entry as "OK" or "CODE REASON", for assertions that print well."""
    return [
        f"{a.code.name} {a.reason}" if isinstance(a, VaultClientError) else "OK" for a in answers
    ]


def events_of(admin: VaultClient, method: str, credential_id: str) -> list[object]:
    return list(admin.iter_audit_events(method=method, credential_id=credential_id))


# -- results in order, mixed keys -----------------------------------------------------------


def test_signatures_of_mixed_keys_come_back_in_order_and_verify(
    tenant: Tenant, admin: VaultClient
) -> None:
    messages = [f"message {i}".encode() for i in range(12)]
    keys = [tenant.p256 if i % 3 else tenant.rsa for i in range(12)]
    answers = admin.batch_sign(list(zip(keys, messages, strict=True)))

    assert reasons(answers) == ["OK"] * 12
    p256, rsa = public_key(admin, tenant.p256), public_key(admin, tenant.rsa)
    assert isinstance(p256, ec.EllipticCurvePublicKey)
    for key, message, answer in zip(keys, messages, answers, strict=True):
        assert not isinstance(answer, VaultClientError)
        assert answer.key_version == f"{key}/versions/1"
        if key == tenant.p256:
            p256.verify(answer.signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            rsa.verify(  # type: ignore[union-attr, call-arg]
                answer.signature,
                message,
                padding.PSS(padding.MGF1(hashes.SHA256()), 32),  # type: ignore[arg-type]
                hashes.SHA256(),  # type: ignore[arg-type]
            )

    digests = [hashlib.sha256(m).digest() for m in messages[:3]]
    by_digest = admin.batch_sign([(tenant.p256, d) for d in digests], prehashed=True)
    for message, answer in zip(messages, by_digest, strict=False):
        assert not isinstance(answer, VaultClientError)
        p256.verify(answer.signature, message, ec.ECDSA(hashes.SHA256()))


def test_verify_answers_each_item_and_a_forgery_is_invalid_not_an_error(
    tenant: Tenant, admin: VaultClient
) -> None:
    signed = admin.sign(tenant.p256, message=b"genuine").signature
    answers = admin.batch_verify(
        [
            (tenant.p256, b"genuine", signed),
            (tenant.p256, b"forged", signed),
            (tenant.p256, b"genuine", b"\x00" * 70),
            (tenant.aes, b"genuine", signed),
        ]
    )
    assert reasons(answers) == ["OK", "OK", "OK", "FAILED_PRECONDITION WRONG_KEY_PURPOSE"]
    assert [bool(a) for a in answers[:3]] == [True, False, False]
    assert all(isinstance(a, Verification) for a in answers[:3])


def test_encrypt_then_decrypt_round_trips_with_mixed_keys_and_aad(
    tenant: Tenant, admin: VaultClient
) -> None:
    plaintexts = [os.urandom(1024) for _ in range(10)]
    keys = [tenant.aes if i % 2 else tenant.aes_other for i in range(10)]
    aads = [f"object {i}".encode() for i in range(10)]
    sealed = admin.batch_encrypt(list(zip(keys, plaintexts, aads, strict=True)))
    assert reasons(sealed) == ["OK"] * 10
    ciphertexts = [s.ciphertext for s in sealed if not isinstance(s, VaultClientError)]
    for key, answer in zip(keys, sealed, strict=True):
        assert not isinstance(answer, VaultClientError)
        assert answer.key_version == f"{key}/versions/1"

    opened = admin.batch_decrypt(list(zip(keys, ciphertexts, aads, strict=True)))
    assert [o.plaintext for o in opened if not isinstance(o, VaultClientError)] == plaintexts


def test_batch_ciphertexts_have_fresh_nonces_and_open_only_with_their_key_and_aad(
    tenant: Tenant, admin: VaultClient
) -> None:
    """What a batch shares per call (the nonces drawn at once, each key's envelope header and
    AAD prefix) gives each item what a unary Encrypt gives it: a nonce of its own, across
    items and calls, and a ciphertext that opens through unary Decrypt with its key and AAD
    only. Limits still apply per item, and a CRC32C of 0 (empty plaintext) is still sent."""
    count = MAX_ITEMS - 2
    keys = [tenant.aes if i % 3 else tenant.aes_other for i in range(count)]
    aads = [b"" if i % 4 == 0 else f"object {i}".encode() for i in range(count)]
    plaintext = b"the same plaintext for every item"
    items: list[tuple[str, bytes, bytes]] = list(zip(keys, [plaintext] * count, aads, strict=True))
    over = (tenant.aes, plaintext, b"a" * 65_537)  # the AAD limit, 65,536 bytes
    first = admin.batch_encrypt([*items[:5], over, *items[5:]])
    second = admin.batch_encrypt(items)
    too_large = first.pop(5)
    assert isinstance(too_large, VaultClientError)
    assert (too_large.code, too_large.reason) == (INVALID, "INPUT_TOO_LARGE")
    assert reasons(first) == reasons(second) == ["OK"] * count

    sealed = [a.ciphertext for a in [*first, *second] if not isinstance(a, VaultClientError)]
    nonces = [ciphertext[5:17] for ciphertext in sealed]
    assert len(set(nonces)) == 2 * count
    assert all(ciphertext[:5] == b"\x01\x00\x00\x00\x01" for ciphertext in sealed)
    for index, ciphertext in enumerate(sealed[:count]):
        assert admin.decrypt(keys[index], ciphertext, aads[index]).plaintext == plaintext
    expect_error(INVALID, "DECRYPTION_FAILED", lambda: admin.decrypt(keys[1], sealed[1], aads[2]))
    expect_error(
        INVALID, "DECRYPTION_FAILED", lambda: admin.decrypt(tenant.aes_other, sealed[1], aads[1])
    )

    unary = admin.encrypt(tenant.aes, b"", b"unary").ciphertext
    empty = admin.batch_encrypt([(tenant.aes, b"", b"batch")])[0]
    assert not isinstance(empty, VaultClientError)
    request = crypto_service_pb2.BatchDecryptRequest(
        requests=[
            crypto_service_pb2.DecryptRequest(
                name=tenant.aes, ciphertext=unary, additional_authenticated_data=b"unary"
            ),
            crypto_service_pb2.DecryptRequest(
                name=tenant.aes, ciphertext=empty.ciphertext, additional_authenticated_data=b"batch"
            ),
            crypto_service_pb2.DecryptRequest(
                name=tenant.aes, ciphertext=unary, additional_authenticated_data=b"batch"
            ),
        ]
    )
    with tenant.server.channel() as channel:
        stub = crypto_service_pb2_grpc.CryptoServiceStub(channel)
        response = stub.BatchDecrypt(request, timeout=30)
    kinds = [result.WhichOneof("result") for result in response.results]
    assert kinds == ["response", "response", "error"]
    for result in response.results[:2]:
        assert result.response.plaintext == b""
        assert result.response.HasField("plaintext_crc32c")
        assert result.response.plaintext_crc32c.value == 0

    # A header naming a version the key does not have fails with the uniform error, each
    # time, while the items around it on the same key still open.
    no_version = sealed[1][:1] + (7).to_bytes(4, "big") + sealed[1][5:]
    opened = admin.batch_decrypt(
        [
            (keys[1], sealed[1], aads[1]),
            (keys[1], no_version, aads[1]),
            (keys[2], sealed[2], aads[2]),
            (keys[1], no_version, aads[1]),
        ]
    )
    failed = "INVALID_ARGUMENT DECRYPTION_FAILED"
    assert reasons(opened) == ["OK", failed, "OK", failed]


def test_one_bad_ciphertext_among_good_ones_fails_alone_with_the_uniform_error(
    tenant: Tenant, admin: VaultClient
) -> None:
    good = [admin.encrypt(tenant.aes, f"item {i}".encode()).ciphertext for i in range(4)]
    tampered = bytearray(good[1])
    tampered[-1] ^= 0x01
    items = [
        (tenant.aes, good[0]),
        (tenant.aes, bytes(tampered)),
        (tenant.aes_other, good[2]),  # another key's ciphertext
        (tenant.aes, good[3], b"wrong aad"),
        (tenant.aes, b"\x01garbage"),
        (tenant.aes, good[2]),
    ]
    answers = admin.batch_decrypt(items)
    failed = "INVALID_ARGUMENT DECRYPTION_FAILED"
    assert reasons(answers) == ["OK", failed, failed, failed, failed, "OK"]
    errors = [a for a in answers if isinstance(a, VaultClientError)]
    # Nothing in the answer tells one failure from another.
    assert len({(e.message, tuple(e.metadata.items())) for e in errors}) == 1
    unary = expect_error(INVALID, "DECRYPTION_FAILED", lambda: admin.decrypt(*items[1]))
    assert (unary.message, unary.metadata) == (errors[0].message, errors[0].metadata)
    assert [a.plaintext for a in answers if not isinstance(a, VaultClientError)] == [
        b"item 0",
        b"item 2",
    ]


def test_data_keys_and_bucket_keys_open_per_item(tenant: Tenant, admin: VaultClient) -> None:
    data_keys = admin.batch_generate_data_key(
        [tenant.aes, tenant.aes_other, "accounts/nope/keys/x"], include_plaintext=True
    )
    assert reasons(data_keys)[:2] == ["OK", "OK"]
    assert reasons(data_keys)[2].startswith(("NOT_FOUND", "PERMISSION_DENIED"))
    for name, answer in zip((tenant.aes, tenant.aes_other), data_keys, strict=False):
        assert not isinstance(answer, VaultClientError)
        assert len(answer.plaintext) == 32
        assert admin.decrypt(name, answer.ciphertext).plaintext == answer.plaintext
        AESGCM(answer.plaintext).encrypt(b"\x00" * 12, b"usable", None)

    made = [admin.generate_bucket_key(tenant.bucket) for _ in range(3)]
    wrapped = [(tenant.bucket, m.wrapped) for m in made]
    wrapped.insert(1, (tenant.bucket, made[0].wrapped[:-1] + b"\x00"))
    opened = admin.batch_decrypt_bucket_key(wrapped)
    assert reasons(opened) == ["OK", "INVALID_ARGUMENT DECRYPTION_FAILED", "OK", "OK"]
    plaintexts = [o.plaintext for o in opened if not isinstance(o, VaultClientError)]
    assert plaintexts == [m.plaintext for m in made]


def test_an_item_whose_checksum_does_not_match_fails_alone(tenant: Tenant) -> None:
    def item(plaintext: bytes, crc: int) -> crypto_service_pb2.EncryptRequest:
        return crypto_service_pb2.EncryptRequest(
            name=tenant.aes, plaintext=plaintext, plaintext_crc32c=Int64Value(value=crc)
        )

    good = int(google_crc32c.value(b"intact"))
    request = crypto_service_pb2.BatchEncryptRequest(
        requests=[item(b"intact", good), item(b"corrupted", good), item(b"intact", good)]
    )
    with tenant.server.channel() as channel:
        stub = crypto_service_pb2_grpc.CryptoServiceStub(channel)
        response = stub.BatchEncrypt(request, timeout=30)
    kinds = [result.WhichOneof("result") for result in response.results]
    assert kinds == ["response", "error", "response"]
    failed = VaultClientError.from_status(response.results[1].error)
    assert (failed.code, failed.reason) == (INVALID, "CHECKSUM_MISMATCH")
    assert failed.metadata == {"field": "plaintext"}
    assert all(r.response.verified_plaintext_crc32c for r in response.results[::2])


# -- authorisation, limits, audit -----------------------------------------------------------


def test_one_item_on_a_key_not_granted_is_denied_and_the_others_proceed(
    tenant: Tenant, admin: VaultClient
) -> None:
    key_id = tenant.p256.rsplit("/", 1)[1]
    signer = add_access_key(admin, tenant.account, [(f"keys/{key_id}", "READWRITE")])
    reader = add_access_key(admin, tenant.account, [("keys/*", "READ")])
    items = [(tenant.p256, b"one"), (tenant.rsa, b"two"), (tenant.p256, b"three")]
    with fresh_client(tenant.server, signer.credentials) as client:
        answers = client.batch_sign(items)
        assert reasons(answers) == ["OK", "PERMISSION_DENIED PERMISSION_DENIED", "OK"]
        denied = answers[1]
        assert isinstance(denied, VaultClientError)
        assert denied.metadata == {
            "method": "Sign",
            "resource": tenant.rsa,
            "required": f"READWRITE on keys/{tenant.rsa.rsplit('/', 1)[1]}",
        }
        # The batch method itself is closed to a credential with grants only as the
        # unary one is: item by item.
        assert client.batch_verify([(tenant.rsa, b"x", b"y")])[0].code is PERMISSION_DENIED  # type: ignore[union-attr]
    with fresh_client(tenant.server, reader.credentials) as client:
        # READ suffices for Verify, not for Sign: the unary levels, per item.
        assert reasons(client.batch_sign(items[:1])) == ["PERMISSION_DENIED PERMISSION_DENIED"]
        signature = admin.sign(tenant.p256, message=b"one").signature
        assert client.batch_verify([(tenant.p256, b"one", signature)])[0]

    # One record per (key version or name, outcome, reason), counting its items.
    records = events_of(admin, BATCH_SIGN, signer.key_id)
    assert [(r.resource, r.outcome, r.reason) for r in records] == [  # type: ignore[attr-defined]
        (f"{tenant.p256}/versions/1", "OK", "items=2"),
        (tenant.rsa, "PERMISSION_DENIED", "PERMISSION_DENIED items=1"),
    ]


def test_the_rate_limit_is_taken_per_item(tenant: Tenant, admin: VaultClient) -> None:
    burst = 3
    # A rate so low that no token comes back during the test.
    key = add_api_key(admin, tenant.account, [(["Sign"], ["*"])], rate_limit=(0.001, burst))
    items = [(tenant.p256, f"item {i}".encode()) for i in range(5)]
    with fresh_client(tenant.server, key.credentials) as client:
        answers = client.batch_sign(items)
        assert reasons(answers)[:burst] == ["OK"] * burst
        assert [r.split()[0] for r in reasons(answers)[burst:]] == ["RESOURCE_EXHAUSTED"] * 2
        limited = answers[burst]
        assert isinstance(limited, VaultClientError)
        assert limited.code is RESOURCE_EXHAUSTED and limited.retry_after is not None
        # Used up by the batch: a unary call is over the limit too.
        error = expect_error(
            RESOURCE_EXHAUSTED, limited.reason, lambda: client.sign(tenant.p256, message=b"x")
        )
        assert error.retry_after is not None
    usage = {u.method: u.count for u in admin.get_usage(key.name)}
    assert usage.get("Sign") == burst


def test_the_audit_log_accounts_for_every_item_and_the_chain_verifies(
    tenant: Tenant, admin: VaultClient
) -> None:
    account = new_account(admin, "c")
    aes = admin.create_key(account, "aes", "ENCRYPT_DECRYPT").name
    other = admin.create_key(account, "other", "ENCRYPT_DECRYPT").name
    admin.rotate_key(other)
    caller = add_access_key(admin, account)
    items = [(aes if i % 4 else other, f"item {i}".encode()) for i in range(MAX_ITEMS)]
    items[7] = (aes, b"x" * (65_536 + 1))  # over max_plaintext_bytes
    items[9] = (f"{account}/keys/missing", b"y")
    with fresh_client(tenant.server, caller.credentials) as client:
        answers = client.batch_encrypt(items)
    assert reasons(answers).count("OK") == MAX_ITEMS - 2
    assert reasons(answers)[7] == "INVALID_ARGUMENT INPUT_TOO_LARGE"
    assert reasons(answers)[9] == "NOT_FOUND NOT_FOUND"

    records = events_of(admin, BATCH_ENCRYPT, caller.key_id)
    outcomes = [(r.resource, r.outcome, r.reason) for r in records]  # type: ignore[attr-defined]
    # In the order of each group's first item; the key versions that served, by number.
    assert outcomes == [
        (f"{other}/versions/2", "OK", f"items={MAX_ITEMS // 4}"),
        (f"{aes}/versions/1", "OK", f"items={MAX_ITEMS - MAX_ITEMS // 4 - 2}"),
        (aes, "INVALID_ARGUMENT", "INPUT_TOO_LARGE items=1"),
        (f"{account}/keys/missing", "NOT_FOUND", "NOT_FOUND items=1"),
    ]
    assert sum(int(r.reason.rsplit("=", 1)[1]) for r in records) == MAX_ITEMS  # type: ignore[attr-defined]
    assert len({r.request_id for r in records}) == 1  # type: ignore[attr-defined]
    # Filtering by a key finds the records of its versions.
    assert len(list(admin.iter_audit_events(resource=other, credential_id=caller.key_id))) == 1
    usage = {u.method: u.count for u in admin.get_usage(caller.name)}
    assert usage.get("Encrypt") == MAX_ITEMS
    verification = admin.verify_audit_log()
    assert verification, verification.findings


def test_a_batch_over_the_limit_or_empty_is_refused_whole(
    tenant: Tenant, admin: VaultClient
) -> None:
    too_many = [(tenant.p256, b"m")] * (MAX_ITEMS + 1)
    error = expect_error(
        INVALID,
        "TOO_MANY_ITEMS",
        lambda: admin.batch_sign(too_many, batch_size=MAX_ITEMS + 1),
    )
    assert error.metadata == {"items": str(MAX_ITEMS + 1), "limit": str(MAX_ITEMS)}
    with tenant.server.channel() as channel:
        stub = channel.unary_unary(
            BATCH_SIGN,
            request_serializer=crypto_service_pb2.BatchSignRequest.SerializeToString,
            response_deserializer=crypto_service_pb2.BatchSignResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub(crypto_service_pb2.BatchSignRequest(), timeout=30)
        assert caught.value.code() is INVALID  # type: ignore[attr-defined]
    # The SDK splits a long list into calls the server takes.
    answers = admin.batch_sign(too_many)
    assert reasons(answers) == ["OK"] * (MAX_ITEMS + 1)


# -- vaultctl crypto batch ------------------------------------------------------------------


def test_vaultctl_batch_signs_and_verifies_json_lines(
    tenant: Tenant, admin: VaultClient, tmp_path: Path
) -> None:
    env = {
        "VAULT_CONFIG": None,
        "VAULT_TARGET": tenant.server.target,
        "VAULT_CREDENTIALS_FILE": str(tenant.server.data_dir / "admin-credentials.json"),
    }
    messages = [b"first", b"second"]
    requests = tmp_path / "sign.jsonl"
    lines = [{"key": tenant.p256, "message": base64.b64encode(m).decode()} for m in messages]
    lines.insert(1, {"key": tenant.aes, "message": base64.b64encode(b"x").decode()})
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "signatures.jsonl"
    result = CliRunner().invoke(
        cli, ["crypto", "batch", "sign", "--in", str(requests), "--out", str(out)], env=env
    )
    # One item failed alone: all lines written, and the exit status says so.
    assert result.exit_code == 3, (result.stdout, result.stderr)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert answers[1]["error"]["reason"] == "WRONG_KEY_PURPOSE"
    public = public_key(admin, tenant.p256)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    signed = [answers[0], answers[2]]
    for message, answer in zip(messages, signed, strict=True):
        assert answer["key_version"] == f"{tenant.p256}/versions/1"
        public.verify(base64.b64decode(answer["signature"]), message, ec.ECDSA(hashes.SHA256()))

    checks = tmp_path / "verify.jsonl"
    checks.write_text(
        "".join(
            json.dumps(
                {
                    "key": tenant.p256,
                    "message": base64.b64encode(message).decode(),
                    "signature": answer["signature"],
                }
            )
            + "\n"
            for message, answer in zip(messages + messages[::-1], signed + signed, strict=True)
        )
    )
    result = CliRunner().invoke(cli, ["crypto", "batch", "verify", "--in", str(checks)], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    verdicts = [json.loads(line)["valid"] for line in result.stdout.splitlines()]
    # Then each signature against the other message.
    assert verdicts == [True, True, False, False]
