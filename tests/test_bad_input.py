"""Malformed requests, table-driven, against a real server of their own.

Each row sends one bad request through the generated stubs (or as raw bytes through
channel.unary_unary with identity serializers) and asserts the exact status code and
google.rpc.ErrorInfo reason (AIP-193), that the answer is never INTERNAL or UNKNOWN, and that
no request payload is echoed back. Afterwards the server must still serve, and its log must
hold no traceback and no "unexpected" error.

Rows marked `xfail(strict=True)` are bugs in vault/ that were found by this table: the row
states the correct behaviour, so it starts passing (and strict xfail fails, as a reminder to
drop the mark) once the bug is fixed.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import google_crc32c
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tests.support.api_calls import ensure_account
from tests.support.harness import VaultServer, provision
from vault.client import VaultClient
from vault.gen.vault.v1 import crypto_service_pb2 as cpb
from vault.gen.vault.v1 import crypto_service_pb2_grpc, key_service_pb2_grpc
from vault.gen.vault.v1 import key_service_pb2 as kpb
from vault.gen.vault.v1 import resources_pb2 as res

ACCOUNT = "accounts/badinput"
DOMAIN = "vault.v1"
# Request payloads are built from this marker; no error message or metadata may contain it.
MARKER = b"zz-secret-zz"
KIB64 = 65_536

Code = grpc.StatusCode
IA = Code.INVALID_ARGUMENT
FP = Code.FAILED_PRECONDITION


def secret(size: int) -> bytes:
    """size bytes of request payload made of MARKER."""
    return (MARKER * (size // len(MARKER) + 1))[:size]


def crc(data: bytes, delta: int = 0) -> Int64Value:
    return Int64Value(value=int(google_crc32c.value(data)) + delta)


def wrong_crc(data: bytes) -> Int64Value:
    return Int64Value(value=(int(google_crc32c.value(data)) + 1) % 2**32)


def _identity(data: bytes) -> bytes:
    return data


@dataclass
class Vault:
    """The module's server, stubs on one channel, and the keys the rows use."""

    server: VaultServer
    channel: grpc.Channel
    keys: key_service_pb2_grpc.KeyServiceStub
    crypto: crypto_service_pb2_grpc.CryptoServiceStub
    client: VaultClient
    ciphertext: bytes  # Encrypt(aes, MARKER, aad=b"aad")
    other_ciphertext: bytes  # Encrypt(aes2, MARKER, aad=b"aad")
    wrapped: bytes  # WrapKey(kwp, 32 bytes)
    fresh_count: int = 0

    def n(self, key: str) -> str:
        return f"{ACCOUNT}/keys/{key}"

    def fresh(self) -> str:
        """A new ENABLED AES key, for rows that would change their key's state."""
        self.fresh_count += 1
        key = self.client.create_key(ACCOUNT, f"fresh-{self.fresh_count}", "ENCRYPT_DECRYPT")
        return key.name


FIXTURE_KEYS: dict[str, tuple[str, str | None, bool]] = {
    "aes": ("ENCRYPT_DECRYPT", None, False),
    "aes2": ("ENCRYPT_DECRYPT", None, False),
    "ec": ("SIGN_VERIFY", "EC_SIGN_P256_SHA256", False),
    "ed": ("SIGN_VERIFY", "EC_SIGN_ED25519", True),
    "pk": ("SIGN_VERIFY", "RSA_SIGN_PKCS1_2048_SHA256", False),
    "rsa": ("ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA1", False),
    "hmac": ("MAC", "HMAC_SHA256", False),
    "kwp": ("WRAP_UNWRAP", None, False),
    "disabled": ("ENCRYPT_DECRYPT", None, False),
    "revoked": ("ENCRYPT_DECRYPT", None, False),
    "destroyed": ("ENCRYPT_DECRYPT", None, False),
    "scheduled": ("ENCRYPT_DECRYPT", None, False),
}


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    data_dir: Path = tmp_path_factory.mktemp("bad-input")
    provision(data_dir)
    with VaultServer(data_dir) as server, server.client() as client:
        ensure_account(client, ACCOUNT)
        for key_id, (purpose, algorithm, resident) in FIXTURE_KEYS.items():
            client.create_key(ACCOUNT, key_id, purpose, algorithm, token_resident=resident)
        client.create_key(ACCOUNT, "with-request-id", "ENCRYPT_DECRYPT", request_id="rid-1")
        client.disable_key(f"{ACCOUNT}/keys/disabled")
        client.revoke_key(f"{ACCOUNT}/keys/revoked", "compromised in a test")
        client.schedule_key_destruction(f"{ACCOUNT}/keys/destroyed", timedelta(0))
        client.schedule_key_destruction(f"{ACCOUNT}/keys/scheduled", timedelta(days=3))
        deadline = time.monotonic() + 20
        while client.get_key(f"{ACCOUNT}/keys/destroyed").state != res.KEY_STATE_DESTROYED:
            assert time.monotonic() < deadline, "the destruction job did not run"
            time.sleep(0.1)
        ciphertext = client.encrypt(f"{ACCOUNT}/keys/aes", MARKER, aad=b"aad").ciphertext
        other = client.encrypt(f"{ACCOUNT}/keys/aes2", MARKER, aad=b"aad").ciphertext
        wrapped = client.wrap_key(f"{ACCOUNT}/keys/kwp", secret(32)).wrapped_key
        with server.channel() as channel:
            yield Vault(
                server=server,
                channel=channel,
                keys=key_service_pb2_grpc.KeyServiceStub(channel),
                crypto=crypto_service_pb2_grpc.CryptoServiceStub(channel),
                client=client,
                ciphertext=ciphertext,
                other_ciphertext=other,
                wrapped=wrapped,
            )


# -- the table -------------------------------------------------------------------------------

Build = Callable[[Vault], "Message | bytes"]


@dataclass(frozen=True)
class Row:
    method: str  # "KeyService/GetKey": through the stub; "/pkg.Svc/M" with bytes: raw
    build: Build
    code: grpc.StatusCode
    # The expected ErrorInfo reason; "" means gRPC itself answered (no ErrorInfo). A tuple
    # lists acceptable reasons (only for rows documenting a bug whose fix may pick either).
    reason: str | tuple[str, ...] = ""
    field: str | None = None  # expected ErrorInfo.metadata["field"], when the server names it


def row(
    row_id: str,
    method: str,
    build: Build,
    code: grpc.StatusCode,
    reason: str | tuple[str, ...] = "",
    field: str | None = None,
    bug: str | None = None,
) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=f"vault bug: {bug}")] if bug else []
    return pytest.param(Row(method, build, code, reason, field), id=row_id, marks=marks)


def key_name(name: str) -> Build:
    return lambda v: kpb.GetKeyRequest(name=name)


def create(key_id: str = "new-key", parent: str = ACCOUNT, **key: Any) -> Build:
    key.setdefault("purpose", res.PURPOSE_ENCRYPT_DECRYPT)
    return lambda v: kpb.CreateKeyRequest(parent=parent, key_id=key_id, key=res.Key(**key))


def schedule(duration: Duration | None) -> Build:
    def build(v: Vault) -> Message:
        request = kpb.ScheduleKeyDestructionRequest(name=v.fresh())
        if duration is not None:
            request.waiting_period.CopyFrom(duration)
        return request

    return build


def encrypt(key: str, plaintext: bytes = MARKER, aad: bytes = b"", **extra: Any) -> Build:
    return lambda v: cpb.EncryptRequest(
        name=v.n(key), plaintext=plaintext, additional_authenticated_data=aad, **extra
    )


def decrypt(key: str, ciphertext: Callable[[Vault], bytes], aad: bytes = b"aad") -> Build:
    return lambda v: cpb.DecryptRequest(
        name=v.n(key), ciphertext=ciphertext(v), additional_authenticated_data=aad
    )


def tampered(v: Vault) -> bytes:
    return v.ciphertext[:-1] + bytes([v.ciphertext[-1] ^ 1])


def with_header(fmt: int, version: int) -> Callable[[Vault], bytes]:
    return lambda v: bytes([fmt]) + version.to_bytes(4, "big") + v.ciphertext[5:]


def sign(key: str, **fields: Any) -> Build:
    return lambda v: cpb.SignRequest(name=v.n(key), **fields)


def verify(key: str, **fields: Any) -> Build:
    return lambda v: cpb.VerifyRequest(name=v.n(key), **fields)


def raw(data: bytes) -> Build:
    return lambda v: data


def page_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def sign_with_message_then_digest(v: Vault) -> bytes:
    # On the wire both members of the oneof can be present; the parser keeps the last one,
    # here a 5-byte digest, which is not a SHA-256 digest.
    name = v.n("ec").encode()
    return b"\x0a" + bytes([len(name)]) + name + b"\x12\x05" + MARKER[:5] + b"\x1a\x05" + MARKER[:5]


# One row per line where it fits; ruff format would put every argument on its own line.
# fmt: off
ROWS = [
    # -- resource names ---------------------------------------------------------------------
    row("get-empty-name", "KeyService/GetKey", key_name(""), IA, "MALFORMED_NAME"),
    row("get-uppercase-account", "KeyService/GetKey", key_name("accounts/Bad/keys/aes"), IA,
        "MALFORMED_NAME"),
    row("get-uppercase-key", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/AES"), IA,
        "MALFORMED_NAME"),
    row("get-path-traversal", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/../keys/aes"), IA,
        "MALFORMED_NAME"),
    row("get-dot-dot-account", "KeyService/GetKey", key_name("accounts/../keys/aes"), IA,
        "MALFORMED_NAME"),
    row("get-leading-slash", "KeyService/GetKey", key_name(f"/{ACCOUNT}/keys/aes"), IA,
        "MALFORMED_NAME"),
    row("get-trailing-slash", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/aes/"), IA,
        "MALFORMED_NAME"),
    row("get-300-chars", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/" + "a" * 300), IA,
        "MALFORMED_NAME"),
    row("get-key-id-64-chars", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/" + "a" * 64), IA,
        "MALFORMED_NAME"),
    row("get-nul-byte", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/a\x00es"), IA,
        "MALFORMED_NAME"),
    row("get-non-ascii", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/a\u00e9s"), IA,
        "MALFORMED_NAME"),
    row("get-percent-encoded", "KeyService/GetKey", key_name("accounts%2Fbadinput%2Fkeys%2Faes"),
        IA, "MALFORMED_NAME"),
    row("get-wrong-collection", "KeyService/GetKey", key_name(f"{ACCOUNT}/buckets/aes"), IA,
        "MALFORMED_NAME"),
    row("get-version-name", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/aes/versions/1"), IA,
        "MALFORMED_NAME"),
    row("get-trailing-newline", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/aes\n"), IA,
        "MALFORMED_NAME"),
    row("get-account-trailing-newline", "KeyService/GetKey", key_name(f"{ACCOUNT}\n/keys/aes"),
        IA, "MALFORMED_NAME"),
    row("get-unknown-key", "KeyService/GetKey", key_name(f"{ACCOUNT}/keys/nope"), Code.NOT_FOUND,
        "NOT_FOUND"),
    row("get-unknown-account", "KeyService/GetKey", key_name("accounts/nobody/keys/aes"),
        Code.NOT_FOUND, "NOT_FOUND"),
    row("pubkey-version-zero", "KeyService/GetPublicKey",
        lambda v: kpb.GetPublicKeyRequest(name=v.n("ec") + "/versions/0"), IA, "MALFORMED_NAME"),
    row("pubkey-version-leading-zero", "KeyService/GetPublicKey",
        lambda v: kpb.GetPublicKeyRequest(name=v.n("ec") + "/versions/01"), IA, "MALFORMED_NAME"),
    row("pubkey-version-negative", "KeyService/GetPublicKey",
        lambda v: kpb.GetPublicKeyRequest(name=v.n("ec") + "/versions/-1"), IA, "MALFORMED_NAME"),
    row("pubkey-version-10-digits", "KeyService/GetPublicKey",
        lambda v: kpb.GetPublicKeyRequest(name=v.n("ec") + "/versions/1234567890"), IA,
        "MALFORMED_NAME"),
    row("pubkey-version-trailing-newline", "KeyService/GetPublicKey",
        lambda v: kpb.GetPublicKeyRequest(name=v.n("ec") + "/versions/1\n"), IA,
        "MALFORMED_NAME"),
    row("pubkey-version-absent", "KeyService/GetPublicKey",
        lambda v: kpb.GetPublicKeyRequest(name=v.n("ec") + "/versions/99"), Code.NOT_FOUND,
        "NOT_FOUND"),
    row("pubkey-symmetric-key", "KeyService/GetPublicKey",
        lambda v: kpb.GetPublicKeyRequest(name=v.n("aes")), FP, "WRONG_KEY_PURPOSE"),
    # -- CreateKey --------------------------------------------------------------------------
    row("create-empty-parent", "KeyService/CreateKey", create(parent=""), IA, "MALFORMED_NAME"),
    row("create-parent-is-a-key", "KeyService/CreateKey", create(parent=f"{ACCOUNT}/keys/aes"),
        IA, "MALFORMED_NAME"),
    row("create-parent-uppercase", "KeyService/CreateKey", create(parent="accounts/BadInput"),
        IA, "MALFORMED_NAME"),
    row("create-empty-key-id", "KeyService/CreateKey", create(""), IA, "MALFORMED_NAME", "key"),
    row("create-key-id-uppercase", "KeyService/CreateKey", create("Key"), IA, "MALFORMED_NAME",
        "key"),
    row("create-key-id-digit-first", "KeyService/CreateKey", create("1key"), IA,
        "MALFORMED_NAME", "key"),
    row("create-key-id-slash", "KeyService/CreateKey", create("a/b"), IA, "MALFORMED_NAME",
        "key"),
    row("create-key-id-dot-dot", "KeyService/CreateKey", create(".."), IA, "MALFORMED_NAME",
        "key"),
    row("create-key-id-64-chars", "KeyService/CreateKey", create("a" * 64), IA,
        "MALFORMED_NAME", "key"),
    row("create-key-id-300-chars", "KeyService/CreateKey", create("a" * 300), IA,
        "MALFORMED_NAME", "key"),
    row("create-key-id-trailing-newline", "KeyService/CreateKey", create("newline\n"), IA,
        "MALFORMED_NAME", "key"),
    row("create-parent-trailing-newline", "KeyService/CreateKey", create(parent=ACCOUNT + "\n"),
        IA, "MALFORMED_NAME"),
    row("create-label-key-trailing-newline", "KeyService/CreateKey",
        create(labels={"env\n": "x"}), IA, "MALFORMED_NAME", "label"),
    row("create-key-missing", "KeyService/CreateKey",
        lambda v: kpb.CreateKeyRequest(parent=ACCOUNT, key_id="new-key"), IA, "INVALID_ARGUMENT",
        "key.purpose"),
    row("create-purpose-unspecified", "KeyService/CreateKey",
        create(purpose=res.PURPOSE_UNSPECIFIED), IA, "INVALID_ARGUMENT", "key.purpose"),
    row("create-purpose-unknown-number", "KeyService/CreateKey", create(purpose=99), IA,
        "INVALID_ARGUMENT", "key.purpose"),
    row("create-purpose-negative", "KeyService/CreateKey", create(purpose=-1), IA,
        "INVALID_ARGUMENT", "key.purpose"),
    row("create-algorithm-unknown-number", "KeyService/CreateKey", create(algorithm=99), IA,
        "INVALID_ARGUMENT", "key.algorithm"),
    row("create-algorithm-of-other-purpose", "KeyService/CreateKey",
        create(algorithm=res.ALGORITHM_EC_SIGN_P256_SHA256), IA, "UNSUPPORTED_ALGORITHM"),
    row("create-algorithm-token-lacks", "KeyService/CreateKey",
        create(purpose=res.PURPOSE_ASYMMETRIC_DECRYPT,
               algorithm=res.ALGORITHM_RSA_DECRYPT_OAEP_2048_SHA256), IA,
        "UNSUPPORTED_ALGORITHM"),
    row("create-label-key-uppercase", "KeyService/CreateKey", create(labels={"Env": "x"}), IA,
        "MALFORMED_NAME", "label"),
    row("create-label-key-empty", "KeyService/CreateKey", create(labels={"": "x"}), IA,
        "MALFORMED_NAME", "label"),
    row("create-label-value-64-chars", "KeyService/CreateKey", create(labels={"env": "x" * 64}),
        IA, "INVALID_ARGUMENT"),
    row("create-65-labels", "KeyService/CreateKey",
        create(labels={f"l{i}": "x" for i in range(65)}), IA, "INVALID_ARGUMENT"),
    row("create-description-1025-chars", "KeyService/CreateKey", create(description="d" * 1025),
        IA, "INVALID_ARGUMENT"),
    row("create-request-id-129-chars", "KeyService/CreateKey",
        lambda v: kpb.CreateKeyRequest(parent=ACCOUNT, key_id="new-key",
                                       key=res.Key(purpose=1), request_id="r" * 129),
        IA, "INVALID_ARGUMENT"),
    row("create-existing-key", "KeyService/CreateKey", create("aes"), Code.ALREADY_EXISTS,
        "ALREADY_EXISTS"),
    row("create-request-id-of-other-key", "KeyService/CreateKey",
        lambda v: kpb.CreateKeyRequest(parent=ACCOUNT, key_id="another",
                                       key=res.Key(purpose=1), request_id="rid-1"),
        Code.ALREADY_EXISTS, "ALREADY_EXISTS"),
    # -- ListKeys ---------------------------------------------------------------------------
    row("list-empty-parent", "KeyService/ListKeys", lambda v: kpb.ListKeysRequest(parent=""), IA,
        "MALFORMED_NAME"),
    row("list-parent-is-a-key", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=v.n("aes")), IA, "MALFORMED_NAME"),
    row("list-negative-page-size", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, page_size=-1), IA, "INVALID_ARGUMENT"),
    row("list-min-int32-page-size", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, page_size=-(2**31)), IA,
        "INVALID_ARGUMENT"),
    row("list-max-int32-page-size-is-clamped", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, page_size=2**31 - 1), Code.OK),
    row("list-page-token-not-base64", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, page_token="!!not base64!!"), IA,
        "INVALID_ARGUMENT", "page_token"),
    row("list-page-token-not-a-key-id", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, page_token=page_token("A/../B")), IA,
        "INVALID_ARGUMENT", "page_token"),
    row("list-page-token-not-utf8", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, page_token="_w"), IA, "INVALID_ARGUMENT",
        "page_token"),
    row("list-page-token-4k", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, page_token="A" * 4096), IA,
        "INVALID_ARGUMENT", "page_token"),
    row("list-purpose-unknown-number", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, purpose=99), IA, "INVALID_ARGUMENT",
        "purpose"),
    row("list-purpose-negative", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, purpose=-7), IA, "INVALID_ARGUMENT",
        "purpose"),
    row("list-state-unknown-number", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, state=99), IA, "INVALID_ARGUMENT",
        "state"),
    row("list-label-value-without-key", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, label_value="x"), IA, "INVALID_ARGUMENT",
        "filter"),
    row("list-label-key-double-quote", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, label_key='env"'), IA,
        ("MALFORMED_NAME", "INVALID_ARGUMENT")),
    row("list-label-key-nul", "KeyService/ListKeys",
        lambda v: kpb.ListKeysRequest(parent=ACCOUNT, label_key="a\x00b"), IA,
        ("MALFORMED_NAME", "INVALID_ARGUMENT")),
    row("update-without-name", "KeyService/UpdateKey",
        lambda v: kpb.UpdateKeyRequest(key=res.Key(description="x")), IA, "MALFORMED_NAME"),
    row("update-nothing", "KeyService/UpdateKey",
        lambda v: kpb.UpdateKeyRequest(key=res.Key(name=v.n("aes"))), IA, "INVALID_ARGUMENT",
        "update_mask"),
    row("update-mask-names-purpose", "KeyService/UpdateKey",
        lambda v: kpb.UpdateKeyRequest(key=res.Key(name=v.n("aes"), purpose=4),
                                       update_mask=FieldMask(paths=["purpose"])),
        IA, "INVALID_ARGUMENT", "update_mask"),
    row("update-label-key-invalid", "KeyService/UpdateKey",
        lambda v: kpb.UpdateKeyRequest(key=res.Key(name=v.n("aes"), labels={"a b": "x"})), IA,
        "MALFORMED_NAME", "label"),
    row("update-description-1025-chars", "KeyService/UpdateKey",
        lambda v: kpb.UpdateKeyRequest(key=res.Key(name=v.n("aes"), description="d" * 1025)),
        IA, "INVALID_ARGUMENT"),
    row("update-unknown-key", "KeyService/UpdateKey",
        lambda v: kpb.UpdateKeyRequest(key=res.Key(name=v.n("nope"), description="x")),
        Code.NOT_FOUND, "NOT_FOUND"),
    row("update-destroyed-key", "KeyService/UpdateKey",
        lambda v: kpb.UpdateKeyRequest(key=res.Key(name=v.n("destroyed"), description="x")),
        FP, "WRONG_KEY_STATE"),
    row("rotate-empty-name", "KeyService/RotateKey", lambda v: kpb.RotateKeyRequest(name=""), IA,
        "MALFORMED_NAME"),
    row("rotate-disabled-key", "KeyService/RotateKey",
        lambda v: kpb.RotateKeyRequest(name=v.n("disabled")), FP, "WRONG_KEY_STATE"),
    row("rotate-unknown-key", "KeyService/RotateKey",
        lambda v: kpb.RotateKeyRequest(name=v.n("nope")), Code.NOT_FOUND, "NOT_FOUND"),
    row("versions-negative-page-size", "KeyService/ListKeyVersions",
        lambda v: kpb.ListKeyVersionsRequest(parent=v.n("aes"), page_size=-1), IA,
        "INVALID_ARGUMENT", "page_size"),
    row("versions-bogus-page-token", "KeyService/ListKeyVersions",
        lambda v: kpb.ListKeyVersionsRequest(parent=v.n("aes"), page_token="bogus"), IA,
        "INVALID_ARGUMENT", "page_token"),
    row("versions-of-a-version", "KeyService/ListKeyVersions",
        lambda v: kpb.ListKeyVersionsRequest(parent=v.n("aes") + "/versions/1"), IA,
        "MALFORMED_NAME"),
    # -- state changes ----------------------------------------------------------------------
    row("enable-destroyed-key", "KeyService/EnableKey",
        lambda v: kpb.EnableKeyRequest(name=v.n("destroyed")), FP, "WRONG_KEY_STATE"),
    row("enable-revoked-key", "KeyService/EnableKey",
        lambda v: kpb.EnableKeyRequest(name=v.n("revoked")), FP, "WRONG_KEY_STATE"),
    row("disable-scheduled-key", "KeyService/DisableKey",
        lambda v: kpb.DisableKeyRequest(name=v.n("scheduled")), FP, "WRONG_KEY_STATE"),
    row("enable-scheduled-key", "KeyService/EnableKey",
        lambda v: kpb.EnableKeyRequest(name=v.n("scheduled")), FP, "WRONG_KEY_STATE"),
    row("revoke-scheduled-key", "KeyService/RevokeKey",
        lambda v: kpb.RevokeKeyRequest(name=v.n("scheduled"), reason="x"), FP, "WRONG_KEY_STATE"),
    row("rotate-scheduled-key", "KeyService/RotateKey",
        lambda v: kpb.RotateKeyRequest(name=v.n("scheduled")), FP, "WRONG_KEY_STATE"),
    row("schedule-scheduled-key", "KeyService/ScheduleKeyDestruction",
        lambda v: kpb.ScheduleKeyDestructionRequest(name=v.n("scheduled")), FP,
        "WRONG_KEY_STATE"),
    row("encrypt-scheduled-key", "CryptoService/Encrypt", encrypt("scheduled"), FP,
        "WRONG_KEY_STATE"),
    row("cancel-destruction-of-enabled-key", "KeyService/CancelKeyDestruction",
        lambda v: kpb.CancelKeyDestructionRequest(name=v.n("aes")), FP, "WRONG_KEY_STATE"),
    row("revoke-blank-reason", "KeyService/RevokeKey",
        lambda v: kpb.RevokeKeyRequest(name=v.n("aes"), reason="  "), IA, "INVALID_ARGUMENT"),
    row("revoke-reason-1025-chars", "KeyService/RevokeKey",
        lambda v: kpb.RevokeKeyRequest(name=v.n("aes"), reason="r" * 1025), IA,
        "INVALID_ARGUMENT"),
    row("schedule-negative-waiting-period", "KeyService/ScheduleKeyDestruction",
        schedule(Duration(seconds=-5)), IA, "INVALID_ARGUMENT"),
    row("schedule-negative-microsecond", "KeyService/ScheduleKeyDestruction",
        schedule(Duration(nanos=-1000)), IA, "INVALID_ARGUMENT"),
    row("schedule-seconds-beyond-duration-range", "KeyService/ScheduleKeyDestruction",
        schedule(Duration(seconds=2**63 - 1)), IA, "INVALID_ARGUMENT", "waiting_period"),
    row("schedule-nanos-out-of-range", "KeyService/ScheduleKeyDestruction",
        schedule(Duration(seconds=1, nanos=10**9)), IA, "INVALID_ARGUMENT", "waiting_period"),
    row("schedule-10000-years", "KeyService/ScheduleKeyDestruction",
        schedule(Duration(seconds=315_576_000_000)), IA, "INVALID_ARGUMENT", "waiting_period"),
    row("schedule-mixed-signs", "KeyService/ScheduleKeyDestruction",
        schedule(Duration(seconds=3600, nanos=-1)), IA, "INVALID_ARGUMENT", "waiting_period"),
    row("schedule-destroyed-key", "KeyService/ScheduleKeyDestruction",
        lambda v: kpb.ScheduleKeyDestructionRequest(name=v.n("destroyed")), FP,
        "WRONG_KEY_STATE"),
    # -- Encrypt, Decrypt, GenerateDataKey, ReEncrypt ---------------------------------------
    row("encrypt-empty-name", "CryptoService/Encrypt",
        lambda v: cpb.EncryptRequest(name="", plaintext=MARKER), IA, "MALFORMED_NAME"),
    row("encrypt-plaintext-64KiB-plus-1", "CryptoService/Encrypt",
        encrypt("aes", secret(KIB64 + 1)), IA, "INPUT_TOO_LARGE", "plaintext"),
    row("encrypt-aad-64KiB-plus-1", "CryptoService/Encrypt",
        encrypt("aes", aad=secret(KIB64 + 1)), IA, "INPUT_TOO_LARGE",
        "additional_authenticated_data"),
    row("encrypt-plaintext-crc-wrong", "CryptoService/Encrypt",
        encrypt("aes", plaintext_crc32c=wrong_crc(MARKER)), IA, "CHECKSUM_MISMATCH",
        "plaintext"),
    row("encrypt-plaintext-crc-negative", "CryptoService/Encrypt",
        encrypt("aes", plaintext_crc32c=Int64Value(value=-1)), IA, "CHECKSUM_MISMATCH",
        "plaintext"),
    row("encrypt-plaintext-crc-beyond-32-bits", "CryptoService/Encrypt",
        encrypt("aes", plaintext_crc32c=crc(MARKER, 2**32)), IA, "CHECKSUM_MISMATCH",
        "plaintext"),
    row("encrypt-crc-of-empty-plaintext-wrong", "CryptoService/Encrypt",
        encrypt("aes", b"", plaintext_crc32c=Int64Value(value=1)), IA, "CHECKSUM_MISMATCH",
        "plaintext"),
    row("encrypt-aad-crc-wrong", "CryptoService/Encrypt",
        encrypt("aes", aad=b"aad", additional_authenticated_data_crc32c=wrong_crc(b"aad")), IA,
        "CHECKSUM_MISMATCH", "additional_authenticated_data"),
    row("encrypt-with-sign-key", "CryptoService/Encrypt", encrypt("ec"), FP,
        "WRONG_KEY_PURPOSE"),
    row("encrypt-disabled-key", "CryptoService/Encrypt", encrypt("disabled"), FP,
        "WRONG_KEY_STATE"),
    row("encrypt-revoked-key", "CryptoService/Encrypt", encrypt("revoked"), FP,
        "WRONG_KEY_STATE"),
    row("encrypt-destroyed-key", "CryptoService/Encrypt", encrypt("destroyed"), FP,
        "WRONG_KEY_STATE"),
    row("encrypt-absent-version", "CryptoService/Encrypt", encrypt("aes/versions/7"),
        Code.NOT_FOUND, "NOT_FOUND"),
    row("encrypt-over-grpc-message-limit", "/vault.v1.CryptoService/Encrypt",
        raw(b"\x12\x80\x80\x80\x01" + secret(2 * 1024 * 1024)), Code.RESOURCE_EXHAUSTED, ""),
    row("decrypt-zero-length-ciphertext", "CryptoService/Decrypt", decrypt("aes", lambda v: b""),
        IA, "DECRYPTION_FAILED"),
    row("decrypt-truncated", "CryptoService/Decrypt", decrypt("aes", lambda v: v.ciphertext[:20]),
        IA, "DECRYPTION_FAILED"),
    row("decrypt-tampered-tag", "CryptoService/Decrypt", decrypt("aes", tampered), IA,
        "DECRYPTION_FAILED"),
    row("decrypt-wrong-aad", "CryptoService/Decrypt",
        decrypt("aes", lambda v: v.ciphertext, aad=b"other"), IA, "DECRYPTION_FAILED"),
    row("decrypt-missing-aad", "CryptoService/Decrypt",
        decrypt("aes", lambda v: v.ciphertext, aad=b""), IA, "DECRYPTION_FAILED"),
    row("decrypt-other-keys-ciphertext", "CryptoService/Decrypt",
        decrypt("aes", lambda v: v.other_ciphertext), IA, "DECRYPTION_FAILED"),
    row("decrypt-header-names-absent-version", "CryptoService/Decrypt",
        decrypt("aes", with_header(1, 9)), IA, "DECRYPTION_FAILED"),
    row("decrypt-header-version-zero", "CryptoService/Decrypt",
        decrypt("aes", with_header(1, 0)), IA, "DECRYPTION_FAILED"),
    row("decrypt-header-max-version", "CryptoService/Decrypt",
        decrypt("aes", with_header(1, 2**32 - 1)), IA, "DECRYPTION_FAILED"),
    row("decrypt-wrapped-key-format", "CryptoService/Decrypt",
        decrypt("aes", with_header(2, 1)), IA, "DECRYPTION_FAILED"),
    row("decrypt-with-version-name", "CryptoService/Decrypt",
        decrypt("aes/versions/1", lambda v: v.ciphertext), IA, "MALFORMED_NAME"),
    row("decrypt-oversized", "CryptoService/Decrypt",
        decrypt("aes", lambda v: secret(KIB64 + 65)), IA, "INPUT_TOO_LARGE", "ciphertext"),
    row("decrypt-ciphertext-crc-wrong", "CryptoService/Decrypt",
        lambda v: cpb.DecryptRequest(name=v.n("aes"), ciphertext=v.ciphertext,
                                     ciphertext_crc32c=wrong_crc(v.ciphertext)),
        IA, "CHECKSUM_MISMATCH", "ciphertext"),
    row("decrypt-disabled-key", "CryptoService/Decrypt",
        decrypt("disabled", lambda v: v.ciphertext), FP, "WRONG_KEY_STATE"),
    row("decrypt-with-mac-key", "CryptoService/Decrypt", decrypt("hmac", lambda v: v.ciphertext),
        FP, "WRONG_KEY_PURPOSE"),
    row("datakey-size-17", "CryptoService/GenerateDataKey",
        lambda v: cpb.GenerateDataKeyRequest(name=v.n("aes"), key_size_bytes=17), IA,
        "INVALID_ARGUMENT"),
    row("datakey-size-negative", "CryptoService/GenerateDataKey",
        lambda v: cpb.GenerateDataKeyRequest(name=v.n("aes"), key_size_bytes=-32), IA,
        "INVALID_ARGUMENT"),
    row("datakey-size-max-int32", "CryptoService/GenerateDataKey",
        lambda v: cpb.GenerateDataKeyRequest(name=v.n("aes"), key_size_bytes=2**31 - 1), IA,
        "INVALID_ARGUMENT"),
    row("datakey-aad-crc-wrong", "CryptoService/GenerateDataKey",
        lambda v: cpb.GenerateDataKeyRequest(
            name=v.n("aes"), additional_authenticated_data=MARKER,
            additional_authenticated_data_crc32c=wrong_crc(MARKER)),
        IA, "CHECKSUM_MISMATCH", "additional_authenticated_data"),
    row("reencrypt-zero-length", "CryptoService/ReEncrypt",
        lambda v: cpb.ReEncryptRequest(name=v.n("aes"), ciphertext=b""), IA,
        "DECRYPTION_FAILED"),
    row("reencrypt-destination-malformed", "CryptoService/ReEncrypt",
        lambda v: cpb.ReEncryptRequest(name=v.n("aes"), ciphertext=v.ciphertext,
                                       source_additional_authenticated_data=b"aad",
                                       destination_key_name="keys/aes2"),
        IA, "MALFORMED_NAME"),
    row("reencrypt-destination-sign-key", "CryptoService/ReEncrypt",
        lambda v: cpb.ReEncryptRequest(name=v.n("aes"), ciphertext=v.ciphertext,
                                       source_additional_authenticated_data=b"aad",
                                       destination_key_name=v.n("ec")),
        FP, "WRONG_KEY_PURPOSE"),
    row("reencrypt-destination-aad-crc-wrong", "CryptoService/ReEncrypt",
        lambda v: cpb.ReEncryptRequest(
            name=v.n("aes"), ciphertext=v.ciphertext, source_additional_authenticated_data=b"aad",
            destination_additional_authenticated_data=MARKER,
            destination_additional_authenticated_data_crc32c=wrong_crc(MARKER)),
        IA, "CHECKSUM_MISMATCH", "destination_additional_authenticated_data"),
    # -- WrapKey, UnwrapKey -----------------------------------------------------------------
    row("wrap-15-bytes", "CryptoService/WrapKey",
        lambda v: cpb.WrapKeyRequest(name=v.n("kwp"), key_material=secret(15)), IA,
        "INVALID_ARGUMENT"),
    row("wrap-not-multiple-of-8", "CryptoService/WrapKey",
        lambda v: cpb.WrapKeyRequest(name=v.n("kwp"), key_material=secret(20)), IA,
        "INVALID_ARGUMENT"),
    row("wrap-4104-bytes", "CryptoService/WrapKey",
        lambda v: cpb.WrapKeyRequest(name=v.n("kwp"), key_material=secret(4104)), IA,
        "INVALID_ARGUMENT"),
    row("wrap-crc-wrong", "CryptoService/WrapKey",
        lambda v: cpb.WrapKeyRequest(name=v.n("kwp"), key_material=secret(32),
                                     key_material_crc32c=wrong_crc(secret(32))),
        IA, "CHECKSUM_MISMATCH", "key_material"),
    row("wrap-with-aes-key", "CryptoService/WrapKey",
        lambda v: cpb.WrapKeyRequest(name=v.n("aes"), key_material=secret(32)), FP,
        "WRONG_KEY_PURPOSE"),
    row("unwrap-zero-length", "CryptoService/UnwrapKey",
        lambda v: cpb.UnwrapKeyRequest(name=v.n("kwp"), wrapped_key=b""), IA,
        "DECRYPTION_FAILED"),
    row("unwrap-garbage", "CryptoService/UnwrapKey",
        lambda v: cpb.UnwrapKeyRequest(name=v.n("kwp"),
                                       wrapped_key=b"\x02\x00\x00\x00\x01" + secret(40)),
        IA, "DECRYPTION_FAILED"),
    row("unwrap-tampered", "CryptoService/UnwrapKey",
        lambda v: cpb.UnwrapKeyRequest(name=v.n("kwp"),
                                       wrapped_key=v.wrapped[:-1] + bytes([v.wrapped[-1] ^ 1])),
        IA, "DECRYPTION_FAILED"),
    row("unwrap-gcm-ciphertext", "CryptoService/UnwrapKey",
        lambda v: cpb.UnwrapKeyRequest(name=v.n("kwp"), wrapped_key=v.ciphertext), IA,
        "DECRYPTION_FAILED"),
    row("unwrap-oversized", "CryptoService/UnwrapKey",
        lambda v: cpb.UnwrapKeyRequest(name=v.n("kwp"), wrapped_key=secret(4096 + 65)), IA,
        "INPUT_TOO_LARGE", "wrapped_key"),
    # -- Sign, Verify, AsymmetricDecrypt ----------------------------------------------------
    row("sign-neither-message-nor-digest", "CryptoService/Sign", sign("ec"), IA,
        "INVALID_ARGUMENT"),
    row("sign-both-on-the-wire", "/vault.v1.CryptoService/Sign", sign_with_message_then_digest,
        IA, "INVALID_ARGUMENT"),
    row("sign-digest-wrong-length", "CryptoService/Sign", sign("ec", digest=secret(31)), IA,
        "INVALID_ARGUMENT"),
    row("sign-digest-with-ed25519", "CryptoService/Sign", sign("ed", digest=secret(32)), IA,
        "UNSUPPORTED_ALGORITHM"),
    row("sign-digest-with-rsa-pkcs1", "CryptoService/Sign", sign("pk", digest=secret(32)), IA,
        "UNSUPPORTED_ALGORITHM"),
    row("sign-message-64KiB-plus-1", "CryptoService/Sign",
        sign("ec", message=secret(KIB64 + 1)), IA, "INPUT_TOO_LARGE", "message"),
    row("sign-message-crc-wrong", "CryptoService/Sign",
        sign("ec", message=MARKER, message_crc32c=wrong_crc(MARKER)), IA, "CHECKSUM_MISMATCH",
        "message"),
    row("sign-digest-crc-wrong", "CryptoService/Sign",
        sign("ec", digest=secret(32), digest_crc32c=wrong_crc(secret(32))), IA,
        "CHECKSUM_MISMATCH", "digest"),
    row("sign-with-aes-key", "CryptoService/Sign", sign("aes", message=MARKER), FP,
        "WRONG_KEY_PURPOSE"),
    row("sign-absent-version", "CryptoService/Sign", sign("ec/versions/3", message=MARKER),
        Code.NOT_FOUND, "NOT_FOUND"),
    row("verify-neither-message-nor-digest", "CryptoService/Verify",
        verify("ec", signature=secret(64)), IA, "INVALID_ARGUMENT"),
    row("verify-signature-1025-bytes-is-invalid", "CryptoService/Verify",
        verify("ec", message=MARKER, signature=secret(1025)), Code.OK),
    row("verify-garbage-signature-is-invalid", "CryptoService/Verify",
        verify("ec", message=MARKER, signature=secret(71)), Code.OK),
    row("verify-empty-signature-is-invalid", "CryptoService/Verify",
        verify("ed", message=MARKER, signature=b""), Code.OK),
    row("verify-signature-crc-wrong", "CryptoService/Verify",
        verify("ec", message=MARKER, signature=secret(64),
               signature_crc32c=wrong_crc(secret(64))),
        IA, "CHECKSUM_MISMATCH", "signature"),
    row("verify-message-64KiB-plus-1", "CryptoService/Verify",
        verify("ec", message=secret(KIB64 + 1), signature=secret(64)), IA, "INPUT_TOO_LARGE",
        "message"),
    row("verify-digest-with-ed25519", "CryptoService/Verify",
        verify("ed", digest=secret(32), signature=secret(64)), IA, "UNSUPPORTED_ALGORITHM"),
    row("verify-digest-with-rsa-pkcs1", "CryptoService/Verify",
        verify("pk", digest=secret(32), signature=secret(256)), IA, "UNSUPPORTED_ALGORITHM"),
    row("verify-digest-wrong-length", "CryptoService/Verify",
        verify("ec", digest=secret(5), signature=secret(64)), IA, "INVALID_ARGUMENT"),
    row("asymdecrypt-zero-length", "CryptoService/AsymmetricDecrypt",
        lambda v: cpb.AsymmetricDecryptRequest(name=v.n("rsa"), ciphertext=b""), IA,
        "DECRYPTION_FAILED"),
    row("asymdecrypt-garbage-256-bytes", "CryptoService/AsymmetricDecrypt",
        lambda v: cpb.AsymmetricDecryptRequest(name=v.n("rsa"), ciphertext=secret(256)), IA,
        "DECRYPTION_FAILED"),
    row("asymdecrypt-larger-than-modulus", "CryptoService/AsymmetricDecrypt",
        lambda v: cpb.AsymmetricDecryptRequest(name=v.n("rsa"), ciphertext=b"\xff" * 256), IA,
        "DECRYPTION_FAILED"),
    row("asymdecrypt-1025-bytes", "CryptoService/AsymmetricDecrypt",
        lambda v: cpb.AsymmetricDecryptRequest(name=v.n("rsa"), ciphertext=secret(1025)), IA,
        "INPUT_TOO_LARGE", "ciphertext"),
    row("asymdecrypt-crc-wrong", "CryptoService/AsymmetricDecrypt",
        lambda v: cpb.AsymmetricDecryptRequest(name=v.n("rsa"), ciphertext=secret(256),
                                               ciphertext_crc32c=wrong_crc(secret(256))),
        IA, "CHECKSUM_MISMATCH", "ciphertext"),
    row("asymdecrypt-with-sign-key", "CryptoService/AsymmetricDecrypt",
        lambda v: cpb.AsymmetricDecryptRequest(name=v.n("ec"), ciphertext=secret(256)), FP,
        "WRONG_KEY_PURPOSE"),
    # -- MAC, random ------------------------------------------------------------------------
    row("mac-data-64KiB-plus-1", "CryptoService/GenerateMac",
        lambda v: cpb.GenerateMacRequest(name=v.n("hmac"), data=secret(KIB64 + 1)), IA,
        "INPUT_TOO_LARGE", "data"),
    row("mac-data-crc-wrong", "CryptoService/GenerateMac",
        lambda v: cpb.GenerateMacRequest(name=v.n("hmac"), data=MARKER,
                                         data_crc32c=wrong_crc(MARKER)),
        IA, "CHECKSUM_MISMATCH", "data"),
    row("mac-with-aes-key", "CryptoService/GenerateMac",
        lambda v: cpb.GenerateMacRequest(name=v.n("aes"), data=MARKER), FP, "WRONG_KEY_PURPOSE"),
    row("verifymac-mac-129-bytes", "CryptoService/VerifyMac",
        lambda v: cpb.VerifyMacRequest(name=v.n("hmac"), data=MARKER, mac=secret(129)), IA,
        "INPUT_TOO_LARGE", "mac"),
    row("verifymac-mac-crc-wrong", "CryptoService/VerifyMac",
        lambda v: cpb.VerifyMacRequest(name=v.n("hmac"), data=MARKER, mac=secret(32),
                                       mac_crc32c=wrong_crc(secret(32))),
        IA, "CHECKSUM_MISMATCH", "mac"),
    row("random-zero-bytes", "CryptoService/GenerateRandom",
        lambda v: cpb.GenerateRandomRequest(size_bytes=0), IA, "INVALID_ARGUMENT"),
    row("random-negative", "CryptoService/GenerateRandom",
        lambda v: cpb.GenerateRandomRequest(size_bytes=-1), IA, "INVALID_ARGUMENT"),
    row("random-1025-bytes", "CryptoService/GenerateRandom",
        lambda v: cpb.GenerateRandomRequest(size_bytes=1025), IA, "INVALID_ARGUMENT"),
    row("random-max-int32", "CryptoService/GenerateRandom",
        lambda v: cpb.GenerateRandomRequest(size_bytes=2**31 - 1), IA, "INVALID_ARGUMENT"),
    # -- raw bytes --------------------------------------------------------------------------
    row("raw-garbage-getkey", "/vault.v1.KeyService/GetKey", raw(b"\xff\xff\xff\xff"), IA,
        "MALFORMED_REQUEST"),
    row("raw-garbage-createkey", "/vault.v1.KeyService/CreateKey", raw(b"\xff" + MARKER), IA,
        "MALFORMED_REQUEST"),
    row("raw-garbage-encrypt", "/vault.v1.CryptoService/Encrypt", raw(b"\x0a\xff" + MARKER), IA,
        "MALFORMED_REQUEST"),
    row("raw-garbage-sign", "/vault.v1.CryptoService/Sign", raw(b"\x07" + MARKER), IA,
        "MALFORMED_REQUEST"),
    row("raw-truncated-length", "/vault.v1.KeyService/GetKey", raw(b"\x0a\x7fshort"), IA,
        "MALFORMED_REQUEST"),
    row("raw-varint-overflow", "/vault.v1.KeyService/ListKeys",
        raw(b"\x10" + b"\x80" * 10 + b"\x01"), IA, "MALFORMED_REQUEST"),
    row("raw-string-not-utf8", "/vault.v1.KeyService/GetKey", raw(b"\x0a\x02\xc3\x28"), IA,
        "MALFORMED_REQUEST"),
    row("raw-field-number-zero", "/vault.v1.KeyService/GetKey", raw(b"\x00\x01"), IA,
        "MALFORMED_REQUEST"),
    row("raw-nested-message-garbage", "/vault.v1.KeyService/CreateKey",
        raw(b"\x1a\x03\xff\xff\xff"), IA, "MALFORMED_REQUEST"),
    row("raw-empty-request", "/vault.v1.CryptoService/Encrypt", raw(b""), IA, "MALFORMED_NAME"),
    row("raw-wrong-wire-type-is-unknown-field", "/vault.v1.KeyService/GetKey", raw(b"\x08\x01"),
        IA, "MALFORMED_NAME"),
    row("raw-unknown-method", "/vault.v1.KeyService/DeleteEverything", raw(b""),
        Code.UNIMPLEMENTED, ""),
    row("raw-unknown-service", "/vault.v1.AdminService/Shutdown", raw(b""), Code.UNIMPLEMENTED,
        ""),
]
# fmt: on


# -- calling and checking --------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] | None = None
    details: str = ""


def outcome_of(error: grpc.RpcError) -> Outcome:
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)  # raises if the trailer contradicts the status line
    reason, domain, metadata = "", "", {}
    if status is not None:
        infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
        assert len(infos) == 1, f"expected one ErrorInfo, got {status.details}"
        info = error_details_pb2.ErrorInfo()
        infos[0].Unpack(info)
        reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
    return Outcome(error.code(), reason, domain, metadata, error.details() or "")


def send(vault: Vault, spec: Row) -> Outcome:
    request = spec.build(vault)
    if isinstance(request, bytes):
        method = vault.channel.unary_unary(
            spec.method, request_serializer=_identity, response_deserializer=_identity
        )
    else:
        service, name = spec.method.split("/")
        stub = vault.keys if service == "KeyService" else vault.crypto
        method = getattr(stub, name)
    try:
        response = method(request, timeout=20)
    except grpc.RpcError as error:
        return outcome_of(error)
    # A tolerated input still must not produce a wrong answer: no bogus signature is valid.
    assert not getattr(response, "valid", False), response
    return Outcome(grpc.StatusCode.OK)


@pytest.mark.parametrize("spec", ROWS)
def test_malformed_request(vault: Vault, spec: Row) -> None:
    got = send(vault, spec)
    assert got.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), got
    assert got.code == spec.code, got
    if spec.code is grpc.StatusCode.OK:
        return
    reasons = spec.reason if isinstance(spec.reason, tuple) else (spec.reason,)
    assert got.reason in reasons, got
    if got.reason:
        assert got.domain == DOMAIN, got
    if spec.field is not None:
        assert (got.metadata or {}).get("field") == spec.field, got
    marker = MARKER.decode()
    assert marker not in got.details, "the error message quotes request data"
    assert all(marker not in value for value in (got.metadata or {}).values()), got


# Known bugs whose rows above make the server log an unexpected exception: (type, method).
EXPECTED_UNEXPECTED = {("OverflowError", "/vault.v1.KeyService/ScheduleKeyDestruction")}


def test_server_still_serves_after_bad_input(vault: Vault) -> None:
    """Runs after the table (same module, declared later)."""
    health = health_pb2_grpc.HealthStub(vault.channel)
    for service in ("", "vault.v1.KeyService", "vault.v1.CryptoService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Fresh connections (either worker) and the table's own channel both still work.
    for _ in range(6):
        with vault.server.client() as client:
            sealed = client.encrypt(vault.n("aes"), MARKER, aad=b"after")
            opened = client.decrypt(vault.n("aes"), sealed.ciphertext, aad=b"after")
            assert opened.plaintext == MARKER
            assert opened.key_version == sealed.key_version == vault.n("aes") + "/versions/1"
    opened = vault.client.decrypt(vault.n("aes"), vault.ciphertext, aad=b"aad")
    assert opened.plaintext == MARKER
    assert vault.server.process is not None and vault.server.process.poll() is None

    log = vault.server.log()
    assert "Traceback" not in log, log
    unexpected = set(re.findall(r"unexpected (\S+) in (\S+)", log))
    assert unexpected <= EXPECTED_UNEXPECTED, log
    assert "died unexpectedly" not in log, log
    assert MARKER.decode() not in log, "the server log quotes request data"
