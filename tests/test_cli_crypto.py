"""`vaultctl crypto` on bad days: verification after a rotation, re-encryption with AAD,
inputs larger than one request, and outputs that must not clobber existing files. Runs
against the session's real server, as tests/test_cli.py does."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from tests.api_calls import expect_error, new_account, new_id
from tests.test_cli import create_key, json_of, ok, vaultctl, write
from tests.test_cli import target as target  # fixture: the server, credentials for vaultctl
from vault.client import VaultClient

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_verify_after_rotation_names_the_version_that_matched(target: str, tmp_path: Path) -> None:
    for purpose, sign, verify, option, what in (
        ("SIGN_VERIFY", "sign", "verify", "--signature", "signature"),
        ("MAC", "mac", "verify-mac", "--mac", "MAC"),
    ):
        key = str(create_key(target, purpose)["name"])
        message = write(tmp_path / f"{sign}.txt", b"release 1.0")
        old = tmp_path / f"{sign}.v1"
        ok(vaultctl(target, "crypto", sign, key, "--in", message, "--out", str(old)))
        ok(vaultctl(target, "keys", "rotate", key))

        good = ok(vaultctl(target, "crypto", verify, key, "--in", message, option, str(old)))
        assert good.stdout == f"{what} matches (version 1 of {key})\n"
        record = json_of(
            vaultctl(
                target, "crypto", verify, key, "--in", message, option, str(old), json_output=True
            )
        )
        assert record == {"valid": True, "key_version": f"{key}/versions/1"}

        # A version named checks that version only.
        only_v2 = vaultctl(
            target, "crypto", verify, f"{key}/versions/2", "--in", message, option, str(old)
        )
        assert only_v2.exit_code == 1
        assert only_v2.stdout == f"{what} does NOT match (version 2 of {key})\n"

        forged = tmp_path / f"{sign}.forged"
        data = old.read_bytes()
        forged.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        bad = vaultctl(target, "crypto", verify, key, "--in", message, option, str(forged))
        assert bad.exit_code == 1
        assert bad.stdout == f"{what} does NOT match (no version of {key})\n"
        bad_json = vaultctl(
            target, "crypto", verify, key, "--in", message, option, str(forged), json_output=True
        )
        assert bad_json.exit_code == 1
        assert json.loads(bad_json.stdout) == {"valid": False, "key_version": f"{key}/versions/2"}


def test_re_encrypt_keeps_the_aad_unless_told_otherwise(target: str, tmp_path: Path) -> None:
    key = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    other = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    plaintext = write(tmp_path / "report", b"quarterly numbers")
    ctx = write(tmp_path / "ctx", b"bucket=reports")
    new_ctx = write(tmp_path / "new-ctx", b"bucket=archive")
    empty = write(tmp_path / "empty", b"")
    sealed = str(tmp_path / "report.enc")
    ok(
        vaultctl(
            target, "crypto", "encrypt", key, "--in", plaintext, "--aad-file", ctx, "--out", sealed
        )
    )
    ok(vaultctl(target, "keys", "rotate", key))

    def decrypts(name: str, path: str, *aad: str) -> bool:
        result = vaultctl(target, "crypto", "decrypt", name, "--in", path, *aad, "--out", "-")
        assert result.exit_code in (0, 3), (result.stdout, result.stderr)
        return result.exit_code == 0 and result.stdout_bytes == b"quarterly numbers"

    # No --to-aad-file: the new ciphertext is bound to the same AAD, under the new version.
    moved = str(tmp_path / "moved.enc")
    done = ok(
        vaultctl(
            target, "crypto", "re-encrypt", key, "--in", sealed, "--aad-file", ctx, "--out", moved
        )
    )
    assert f"to {key}/versions/2" in done.stderr
    assert decrypts(key, moved, "--aad-file", ctx)
    assert not decrypts(key, moved)

    # --to-aad-file: the new AAD, also to another key; an empty file binds to none.
    for destination, aad_file, path in ((other, new_ctx, "archived"), (key, empty, "bare")):
        out = str(tmp_path / path)
        ok(
            vaultctl(
                target, "crypto", "re-encrypt", key, "--in", sealed, "--aad-file", ctx,
                "--to", destination, "--to-aad-file", aad_file, "--out", out,
            )
        )  # fmt: skip
        assert decrypts(destination, out, "--aad-file", aad_file)
        assert not decrypts(destination, out, "--aad-file", ctx)
    assert decrypts(key, str(tmp_path / "bare"))


def test_sdk_re_encrypt_keeps_the_aad_unless_told_otherwise(client: VaultClient) -> None:
    key = client.create_key(new_account(), new_id(), "ENCRYPT_DECRYPT").name
    sealed = client.encrypt(key, b"numbers", aad=b"ctx").ciphertext
    kept = client.re_encrypt(key, sealed, source_aad=b"ctx").ciphertext
    assert client.decrypt(key, kept, aad=b"ctx").plaintext == b"numbers"
    expect_error(INVALID, "DECRYPTION_FAILED", lambda: client.decrypt(key, kept))
    cleared = client.re_encrypt(key, sealed, source_aad=b"ctx", destination_aad=b"").ciphertext
    assert client.decrypt(key, cleared).plaintext == b"numbers"
