"""`vaultctl keys import-job create|get|list` and `vaultctl keys import` against the real
server, in this process (tests/test_cli.py's runner)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.test_cli import (  # noqa: F401 (target is a fixture)
    assert_one_line_error,
    create_key,
    json_of,
    ok,
    target,
    vaultctl,
    write,
)
from vault.client import VaultClient


def test_import_job_create_get_and_list(target: str) -> None:  # noqa: F811
    key = str(create_key(target, "MAC")["name"])
    created = json_of(vaultctl(target, "keys", "import-job", "create", key, json_output=True))
    assert created["name"].startswith(f"{key}/importJobs/")
    assert (created["import_method"], created["state"]) == ("RSA_OAEP_3072_SHA1_AES_256", "ACTIVE")
    public = serialization.load_pem_public_key(created["public_key_pem"].encode())
    assert public.key_size == 3072  # type: ignore[union-attr]
    assert created["expire_time"] > created["create_time"]

    human = ok(vaultctl(target, "keys", "import-job", "get", created["name"]))
    assert "BEGIN PUBLIC KEY" in human.stdout and "ACTIVE" in human.stdout

    listing = json_of(vaultctl(target, "keys", "import-job", "list", key, json_output=True))
    assert [job["name"] for job in listing["import_jobs"]] == [created["name"]]


def test_import_raw_and_pem_material_from_files(
    target: str,  # noqa: F811
    client: VaultClient,
    tmp_path: Path,
) -> None:
    key = str(create_key(target, "MAC")["name"])
    job = json_of(vaultctl(target, "keys", "import-job", "create", key, json_output=True))
    secret = os.urandom(32)
    done = ok(
        vaultctl(
            target,
            "keys",
            "import",
            key,
            "--job",
            job["name"],
            "--in",
            write(tmp_path / "key.bin", secret),
        )
    )
    assert f"imported {key}/versions/2 (now primary)" in done.stderr
    reference = hmac.HMAC(secret, hashes.SHA256())
    reference.update(b"m")
    assert client.generate_mac(key, b"m").mac == reference.finalize()

    signer = ec.generate_private_key(ec.SECP256R1())
    pem = signer.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    sign_key = str(create_key(target, "SIGN_VERIFY")["name"])
    sign_job = json_of(
        vaultctl(target, "keys", "import-job", "create", sign_key, json_output=True)
    )["name"]
    record = json_of(
        vaultctl(
            target, "keys", "import", sign_key, "--job", sign_job,
            "--in", write(tmp_path / "key.pem", pem), "--keep-primary",
            json_output=True,
        )
    )  # fmt: skip
    assert record["name"] == f"{sign_key}/versions/2"
    signature = client.sign(record["name"], message=b"m").signature
    signer.public_key().verify(signature, b"m", ec.ECDSA(hashes.SHA256()))

    # A file that is no private key: refused here, before anything is sent.
    refused = vaultctl(
        target, "keys", "import", sign_key, "--job", sign_job,
        "--in", write(tmp_path / "junk.pem", b"-----BEGIN PRIVATE KEY-----\nxx\n"),
    )  # fmt: skip
    line = assert_one_line_error(refused, 4, "not an unencrypted PEM or DER private key")
    assert "xx" not in line
