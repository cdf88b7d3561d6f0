"""`vaultctl backup export|verify|restore|list` and the backups `keys compromise` lists,
against the real server, in this process (tests/test_cli.py's runner)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tests.support.harness import VaultServer
from tests.test_cli import (  # noqa: F401 (target is a fixture)
    _CLEAN_ENV,
    _CREDENTIALS,
    ACCOUNT,
    ACCOUNT_ID,
    assert_one_line_error,
    create_key,
    json_of,
    target,
    vaultctl,
)
from vault.cli.main import cli


def test_export_verifies_offline_and_the_export_log_names_it_on_compromise(
    target: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    name = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    bundle = tmp_path / "all.bundle"
    exported = json_of(
        vaultctl(target, "backup", "export", "--key", name, "-o", str(bundle), json_output=True)
    )
    assert exported["keys"] == 1 and bundle.stat().st_mode & 0o077 == 0
    fingerprint = exported["signer_fingerprint"]

    # Offline: no target at all.
    checked = json_of(
        vaultctl(
            None, "backup", "verify", str(bundle), "--expect-signer", fingerprint,
            json_output=True,
        )
    )  # fmt: skip
    assert checked["valid"] and checked["export_id"] == exported["export_id"]
    assert_one_line_error(
        vaultctl(None, "backup", "verify", str(bundle), "--expect-signer", "00" * 32),
        1,
        "another key",
    )
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bundle.read_bytes().replace(b'"ENABLED"', b'"DISABLED"', 1))
    assert_one_line_error(vaultctl(None, "backup", "verify", str(tampered)), 1, "altered")
    assert_one_line_error(
        vaultctl(target, "backup", "export", "-o", str(bundle)), 4, "never overwritten"
    )

    listed = json_of(vaultctl(target, "backup", "list", f"{name}/versions/1", json_output=True))
    assert [item["export_id"] for item in listed] == [exported["export_id"]]

    record = json_of(vaultctl(target, "keys", "compromise", name, "--yes", json_output=True))
    assert [item["export_id"] for item in record["backups_holding_revoked_version"]] == [
        exported["export_id"]
    ]


def test_restore_copies_a_local_bundle_into_the_backup_directory_and_reports(
    target: str,  # noqa: F811
    server: VaultServer,
    tmp_path: Path,
) -> None:
    name = str(create_key(target, "SIGN_VERIFY")["name"])
    bundle = tmp_path / "one.bundle"
    json_of(
        vaultctl(target, "backup", "export", "--key", name, "-o", str(bundle), json_output=True)
    )
    result = CliRunner().invoke(
        cli,
        ["--target", target, "--json", "backup", "restore", str(bundle)],
        env={**_CLEAN_ENV, **_CREDENTIALS, "VAULT_DATA_DIR": str(server.data_dir)},
        prog_name="vaultctl",
    )
    report = json_of(result)
    assert (server.data_dir / "backups" / "one.bundle").read_bytes() == bundle.read_bytes()
    # Restored into the vault that made it: the key is there already.
    assert report["restored"] == [] and report["restored_count"] == 0
    assert report["skipped"] == [{"name": name, "reason": "EXISTS", "detail": ""}]
    assert report["skipped_count"] == 1 and report["skipped_by_reason"] == {"EXISTS": 1}
    assert not report["lists_truncated"]
    # Every outcome is in the report file beside the bundle, which the command names.
    report_file = Path(report["report_file"])
    assert report_file.parent == server.data_dir / "backups"
    assert report_file.name.startswith("one.bundle.restore-")
    assert [json.loads(line) for line in report_file.read_text().splitlines()] == [
        {"name": name, "outcome": "skipped", "reason": "EXISTS", "detail": ""}
    ]

    # For a person: the counts, the items and where the report file is.
    result = CliRunner().invoke(
        cli,
        ["--target", target, "backup", "restore", str(bundle)],
        env={**_CLEAN_ENV, **_CREDENTIALS, "VAULT_DATA_DIR": str(server.data_dir)},
        prog_name="vaultctl",
    )
    assert result.exit_code == 0, result.output
    assert "restored 0 keys and buckets" in result.output
    assert "skipped 1 (1 EXISTS)" in result.output
    assert name in result.output
    assert f"every item: {server.data_dir / 'backups'}" in result.output


def test_restore_refuses_to_replace_another_bundle_of_the_same_name(
    target: str,  # noqa: F811
    server: VaultServer,
    tmp_path: Path,
) -> None:
    (server.data_dir / "backups").mkdir(exist_ok=True)
    (server.data_dir / "backups" / "same.bundle").write_bytes(b"the earlier bundle\n")
    local = tmp_path / "same.bundle"
    local.write_bytes(b"another bundle\n")
    result = CliRunner().invoke(
        cli,
        ["--target", target, "backup", "restore", str(local)],
        env={**_CLEAN_ENV, **_CREDENTIALS, "VAULT_DATA_DIR": str(server.data_dir)},
        prog_name="vaultctl",
    )
    assert_one_line_error(result, 4, "other content")
    assert (server.data_dir / "backups" / "same.bundle").read_bytes() == b"the earlier bundle\n"


def test_restore_shows_progress_on_a_terminal_only_and_its_output_stays_whole(
    target: str,  # noqa: F811
    server: VaultServer,
    tmp_path: Path,
) -> None:
    """vaultctl in its own process, its stderr a terminal (a pseudo-terminal) and its stdout
    a pipe: the progress bar goes to the terminal, never into what the command prints."""
    import os
    import pty
    import subprocess

    from tests.support.clone import VAULTCTL

    name = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    bundle = tmp_path / "bar.bundle"
    json_of(
        vaultctl(target, "backup", "export", "--key", name, "-o", str(bundle), json_output=True)
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("VAULT_")}
    env |= {**_CREDENTIALS, "VAULT_DATA_DIR": str(server.data_dir), "TERM": "xterm"}

    def restore(*options: str) -> tuple[str, bytes]:
        terminal, side = pty.openpty()
        try:
            done = subprocess.run(
                [str(VAULTCTL), "--target", target, *options, "backup", "restore", str(bundle)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=side,
                timeout=120,
                check=False,
            )
            os.close(side)
            shown = b""
            while True:
                try:
                    chunk = os.read(terminal, 65536)
                except OSError:  # EIO: the terminal's other side is closed and drained
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            os.close(terminal)
        assert done.returncode == 0, shown
        return done.stdout.decode(), shown

    printed, shown = restore("--json")
    assert json.loads(printed)["skipped"] == [{"name": name, "reason": "EXISTS", "detail": ""}]
    assert shown == b""  # no bar with --json, even on a terminal

    printed, shown = restore()
    assert name in printed and "EXISTS" in printed
    assert "\x1b" not in printed  # no terminal control codes in the output
    # The bar, up to the bundle's one entry, then the notes (on stderr, as before).
    assert b"restoring" in shown and b"1/1" in shown
    assert shown.index(b"1/1") < shown.index(b"restored 0 keys and buckets")
