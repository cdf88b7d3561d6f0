"""`vaultctl crypto` on bad days: verification after a rotation, re-encryption with AAD,
inputs larger than one request, and outputs that must not clobber existing files. Runs
against the session's real server, as tests/test_cli.py does."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from tests.support.api_calls import expect_error, new_account, new_id
from tests.test_cli import assert_one_line_error, create_key, json_of, mode, ok, vaultctl, write
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
        assert bad.stdout == f"{what} does NOT match any version of {key}\n"
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
    key = client.create_key(new_account(client), new_id(), "ENCRYPT_DECRYPT").name
    sealed = client.encrypt(key, b"numbers", aad=b"ctx").ciphertext
    kept = client.re_encrypt(key, sealed, source_aad=b"ctx").ciphertext
    assert client.decrypt(key, kept, aad=b"ctx").plaintext == b"numbers"
    expect_error(INVALID, "DECRYPTION_FAILED", lambda: client.decrypt(key, kept))
    cleared = client.re_encrypt(key, sealed, source_aad=b"ctx", destination_aad=b"").ciphertext
    assert client.decrypt(key, cleared).plaintext == b"numbers"


def test_outputs_never_overwrite_an_existing_file_without_force(
    target: str, tmp_path: Path
) -> None:
    key = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    signer = str(create_key(target, "SIGN_VERIFY")["name"])
    sealed = str(tmp_path / "sealed")
    ok(
        vaultctl(
            target, "crypto", "encrypt", key, "--in", write(tmp_path / "p", b"new"), "--out", sealed
        )
    )
    precious = tmp_path / "precious"
    precious.write_bytes(b"the only copy")
    precious.chmod(0o644)

    refusals = [
        ("crypto", "decrypt", key, "--in", sealed, "--out", str(precious)),
        ("crypto", "data-key", key, "--out", str(precious)),
        (
            "crypto",
            "data-key",
            key,
            "--out",
            str(tmp_path / "dk.enc"),
            "--plaintext-out",
            str(precious),
        ),
        ("crypto", "random", "--size", "8", "--out", str(precious)),
        ("crypto", "sign", signer, "--in", sealed, "--out", str(precious)),
        ("keys", "public-key", signer, "--out", str(precious)),
    ]
    for args in refusals:
        refused = vaultctl(target, *args)
        assert_one_line_error(
            refused, 4, f"{precious} exists: refusing to overwrite it (--force replaces it)"
        )
        assert precious.read_bytes() == b"the only copy"
    # Refused before the vault was asked: the other output of data-key was not written.
    assert not (tmp_path / "dk.enc").exists()

    # --force replaces it atomically, mode 0600, leaving no temporary file behind.
    ok(
        vaultctl(
            target, "crypto", "decrypt", key, "--in", sealed, "--out", str(precious), "--force"
        )
    )
    assert precious.read_bytes() == b"new"
    assert mode(precious) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["p", "precious", "sealed"]

    # Never through a symbolic link, --force or not; never one file for two outputs.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    for force in ((), ("--force",)):
        refused = vaultctl(
            target, "crypto", "decrypt", key, "--in", sealed, "--out", str(link), *force
        )
        assert_one_line_error(refused, 4, "is a symbolic link: refusing to follow it")
    assert elsewhere.read_bytes() == b"untouched"
    same = vaultctl(
        target, "crypto", "data-key", key, "--out", str(tmp_path / "dk"),
        "--plaintext-out", str(tmp_path / "dk"),
    )  # fmt: skip
    assert same.exit_code == 2
    assert "different file" in same.stderr
