"""The security team's day with two tokens, through `vaultctl` alone (every command a separate
process, as an operator runs it): provision token 1 and serve it, create keys and a bucket,
encrypt and sign; provision token 2; exchange and trust the transport key and clone the roots;
export and verify a bundle; restore it on token 2 and use the keys there; revoke a key there and
restore an older bundle (the key stays revoked); create a new root generation there, and use
the old version and a new one, made under it, side by side."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.clone import CEREMONY_SETTINGS, VAULTCTL, clone_roots
from tests.support.harness import VaultServer, vault_environment

ONE_WORKER = {"VAULT_SERVER__WORKERS": "1"}


def run(
    data_dir: Path, cwd: Path, *args: str, extra: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = vault_environment(data_dir, settings=CEREMONY_SETTINGS, **dict(extra or {}))
    return subprocess.run(
        [str(VAULTCTL), *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout) if done.stdout.strip()[:1] in ("{", "[") else done.stdout


def against(server: VaultServer, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`vaultctl --target ... ARGS` as server's admin."""
    return run(
        server.data_dir,
        cwd,
        "--target",
        server.target,
        *args,
        extra={"VAULT_CREDENTIALS_FILE": str(server.data_dir / "admin-credentials.json")},
    )


def test_backup_and_restore_into_a_second_token_through_the_cli(tmp_path: Path) -> None:
    one, two, work = tmp_path / "token1", tmp_path / "token2", tmp_path / "work"
    work.mkdir()
    ok(run(one, work, "token", "init"))
    with VaultServer(one, ONE_WORKER) as first:
        ok(against(first, work, "accounts", "create", "acme"))
        ok(against(first, work, "keys", "create", "accounts/acme/keys/docs",
                   "--purpose", "ENCRYPT_DECRYPT"))  # fmt: skip
        ok(against(first, work, "keys", "create", "accounts/acme/keys/release",
                   "--purpose", "SIGN_VERIFY", "--algorithm", "EC_SIGN_P256_SHA256"))  # fmt: skip
        ok(against(first, work, "buckets", "create", "accounts/acme/buckets/photos"))
        (work / "report.txt").write_bytes(b"quarterly report")
        ok(against(first, work, "crypto", "encrypt", "accounts/acme/keys/docs",
                   "--in", "report.txt", "--out", "report.enc"))  # fmt: skip
        ok(against(first, work, "crypto", "sign", "accounts/acme/keys/release",
                   "--in", "report.txt", "--out", "report.sig"))  # fmt: skip

        # Token 2, provisioned on its own, receives token 1's roots by the ceremony.
        clone_roots(one, two, work / "ceremony")

        exported = ok(against(first, work, "--json", "backup", "export", "-o", "day1.bundle"))
        signer = exported["signer_fingerprint"]
        checked = ok(run(two, work, "--json", "backup", "verify", "day1.bundle",
                         "--expect-signer", signer))  # fmt: skip
        assert checked["valid"] and checked["keys"] >= 2 and checked["buckets"] >= 1

    with VaultServer(two, ONE_WORKER) as second:
        ok(against(second, work, "accounts", "create", "acme"))
        report = ok(against(second, work, "--json", "backup", "restore", "day1.bundle",
                            "--expect-signer", signer))  # fmt: skip
        assert {
            "accounts/acme/keys/docs",
            "accounts/acme/keys/release",
            "accounts/acme/buckets/photos",
        } <= set(report["restored"])
        ok(against(second, work, "crypto", "decrypt", "accounts/acme/keys/docs",
                   "--in", "report.enc", "--out", "copy.txt"))  # fmt: skip
        assert (work / "copy.txt").read_bytes() == b"quarterly report"
        ok(against(second, work, "crypto", "verify", "accounts/acme/keys/release",
                   "--in", "report.txt", "--signature", "report.sig"))  # fmt: skip
        ok(against(second, work, "buckets", "bucket-key", "accounts/acme/buckets/photos",
                   "--plaintext-out", "bucket.key"))  # fmt: skip

        # Revoked here, then the older bundle restored again: the key stays revoked.
        ok(against(second, work, "keys", "revoke", "accounts/acme/keys/release",
                   "--reason-code", "COMPROMISED", "--yes"))  # fmt: skip
        again = ok(against(second, work, "--json", "backup", "restore", "day1.bundle"))
        skipped = {item["name"]: item["reason"] for item in again["skipped"]}
        assert skipped["accounts/acme/keys/release"] == "REVOKED_LATER"
        assert skipped["accounts/acme/keys/docs"] == "EXISTS"
        key = ok(against(second, work, "--json", "keys", "get", "accounts/acme/keys/release"))
        assert key["state"] == "REVOKED"

    # A new root generation on token 2 (the server picks it up when it starts again): new
    # versions go under it, and the restored version under generation 1 keeps working.
    (work / "new.toml").write_text(
        'ceremony = "new-root-generation"\nrecord = "records/new.json"\n'
        'operators = ["carol", "dave"]\n',
        encoding="utf-8",
    )
    created = ok(run(two, work, "ceremony", "new-root-generation", "new.toml", "--json"))
    assert created["generation"] == 2
    with VaultServer(two, ONE_WORKER) as restarted:
        ok(against(restarted, work, "keys", "rotate", "accounts/acme/keys/docs"))
        (work / "memo.txt").write_bytes(b"after the rotation")
        ok(against(restarted, work, "crypto", "encrypt", "accounts/acme/keys/docs",
                   "--in", "memo.txt", "--out", "memo.enc"))  # fmt: skip
        for sealed, plain in (
            ("report.enc", b"quarterly report"),
            ("memo.enc", b"after the rotation"),
        ):
            opened = f"opened-{sealed}.txt"
            ok(against(restarted, work, "crypto", "decrypt", "accounts/acme/keys/docs",
                       "--in", sealed, "--out", opened))  # fmt: skip
            assert (work / opened).read_bytes() == plain
    listed = ok(run(two, work, "ceremony", "root-generations", "--json"))
    rows = {row["generation"]: row for row in listed["root_generations"]}
    assert rows[2]["current"] and rows[2]["versions"] == 1  # the rotated docs version
    assert rows[1]["versions"] >= 2  # what the restore brought, under the cloned roots
