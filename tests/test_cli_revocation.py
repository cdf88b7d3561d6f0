"""`vaultctl keys compromise`, `revoke --reason-code`, `revocations` and `revocation-feed`
against the real server, in this process (tests/test_cli.py's runner)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api_calls import expect_error
from tests.test_cli import (  # noqa: F401 (target is a fixture)
    ACCOUNT,
    assert_one_line_error,
    create_key,
    json_of,
    ok,
    target,
    vaultctl,
)
from vault.client import VaultClient


def test_keys_compromise_revokes_rotates_and_counts_what_the_old_version_made(
    target: str,  # noqa: F811
    client: VaultClient,
) -> None:
    import grpc

    name = str(create_key(target, "SIGN_VERIFY")["name"])
    old = f"{name}/versions/1"
    signatures = [client.sign(name, message=b"by the key %d" % i).signature for i in range(3)]
    client.sign(old, message=b"by the version")
    client.verify(name, signatures[0], message=b"by the key 0")  # reads do not count

    # Without --yes and without a terminal: refused, nothing revoked.
    assert_one_line_error(vaultctl(target, "keys", "compromise", name), 2, "--yes")
    assert not client.list_key_versions(name)[0].HasField("revoke_time")

    record = json_of(
        vaultctl(
            target, "keys", "compromise", name, "--reason", "key file leaked", "--yes",
            json_output=True,
        )
    )  # fmt: skip
    assert record["revoked_version"] == old
    assert record["new_primary_version"] == f"{name}/versions/2"
    assert record["audit_log"] == "read"
    assert record["calls_with_revoked_version"]["Sign"] == 4
    assert record["calls_with_revoked_version"]["Encrypt"] == 0
    assert any("backups" in item for item in record["cannot_know"])

    (v1, v2) = client.list_key_versions(name)
    assert v1.revocation_reason_code == 1  # REVOCATION_REASON_COMPROMISED
    assert v1.revocation_reason == "key file leaked"
    assert not v2.HasField("revoke_time")
    assert client.sign(name, message=b"after").key_version == f"{name}/versions/2"
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        "WRONG_KEY_STATE",
        lambda: client.sign(old, message=b"x"),
    )
    assert client.verify(name, signatures[1], message=b"by the key 1").valid

    # The human report names what it cannot know.
    again = ok(vaultctl(target, "keys", "compromise", name, "--yes"))
    assert "cannot know" in again.stderr
    assert f"{name}/versions/3" in again.stderr


def test_keys_revoke_a_version_with_a_reason_code_and_list_revocations(
    target: str,  # noqa: F811
) -> None:
    name = str(create_key(target, "SIGN_VERIFY")["name"])
    usage = vaultctl(target, "keys", "revoke", name, "--yes")
    assert usage.exit_code == 2 and "--reason" in usage.stderr
    key = json_of(
        vaultctl(
            target, "keys", "revoke", f"{name}/versions/1", "--reason-code", "superseded",
            "--yes", json_output=True,
        )
    )  # fmt: skip
    assert key["state"] == "ENABLED"
    (version,) = json_of(vaultctl(target, "keys", "versions", name, json_output=True))["versions"]
    assert version["revocation_reason_code"] == "SUPERSEDED"
    assert version["revoke_time"]
    listed = json_of(vaultctl(target, "keys", "revocations", ACCOUNT, json_output=True))
    (entry,) = [e for e in listed["revocations"] if e["key_version"] == f"{name}/versions/1"]
    assert entry["reason_code"] == "SUPERSEDED"
    public = client_public_der(target, name)
    assert entry["public_key_sha256"] == hashlib.sha256(public).hexdigest()


def client_public_der(address: str, name: str) -> bytes:
    pem = json_of(vaultctl(address, "keys", "public-key", name, json_output=True))["pem"]
    key: Any = serialization.load_pem_public_key(pem.encode())
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def test_keys_revocation_feed_writes_a_feed_that_verifies(
    target: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    name = str(create_key(target, "SIGN_VERIFY")["name"])
    ok(vaultctl(target, "keys", "revoke", name, "--reason-code", "COMPROMISED", "--yes"))
    prefix = tmp_path / "acme"
    record = json_of(
        vaultctl(target, "keys", "revocation-feed", ACCOUNT, "--out", str(prefix), json_output=True)
    )
    payload = (tmp_path / "acme.feed").read_bytes()
    signature = (tmp_path / "acme.sig").read_bytes()
    pem = (tmp_path / "acme.pem").read_bytes()
    public: Any = serialization.load_pem_public_key(pem)
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert record["feed_key_sha256"] == hashlib.sha256(der).hexdigest()
    public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    assert f"{name}/versions/1".encode() in payload
    # Existing files are kept unless --force.
    again = vaultctl(target, "keys", "revocation-feed", ACCOUNT, "--out", str(prefix))
    assert again.exit_code != 0
    ok(vaultctl(target, "keys", "revocation-feed", ACCOUNT, "--out", str(prefix), "--force"))
