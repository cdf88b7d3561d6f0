"""`vaultctl crypto` on bad days: verification after a rotation, re-encryption with AAD,
inputs larger than one request, and outputs that must not clobber existing files. Runs
against the session's real server, as tests/test_cli.py does."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli import create_key, json_of, ok, vaultctl, write
from tests.test_cli import target as target  # fixture: the server, credentials for vaultctl


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
