"""`vaultctl buckets` and `vaultctl object` against the session's real server, as
tests/test_cli.py does: every command, --json records, and a multi-MiB object round trip."""

from __future__ import annotations

import base64
import os
import re
import shlex
from pathlib import Path
from typing import Any

from tests.support.api_calls import new_account, new_id
from tests.support.harness import ROOT
from tests.test_cli import assert_one_line_error, json_of, mode, ok, vaultctl, write
from tests.test_cli import target as target  # fixture: the server, credentials for vaultctl
from vault.client import VaultClient
from vault.domain.buckets import BUCKET_VERSIONS_SHOWN

MIB = 1 << 20
README = (ROOT / "README.md").read_text()


def new_bucket(target: str, *extra: str) -> dict[str, object]:
    name = f"{new_account()}/buckets/{new_id()}"
    record: dict[str, object] = json_of(
        vaultctl(target, "buckets", "create", name, *extra, json_output=True)
    )
    return record


def test_buckets_create_get_list_update(target: str) -> None:
    account = new_account()
    name = f"{account}/buckets/{new_id()}"
    created = ok(
        vaultctl(
            target,
            "buckets",
            "create",
            name,
            "--label",
            "team=media",
            "--key-lifetime",
            "10m",
            "--max-objects",
            "500",
        )
    )
    assert f"created {name}" in created.stderr
    record = json_of(vaultctl(target, "buckets", "get", name, json_output=True))
    assert record["state"] == "ACTIVE"
    assert record["labels"] == {"team": "media"}
    assert record["policy"] == {
        "key_lifetime_seconds": 600.0,
        "max_objects_per_key": 500,
        "max_bytes_per_key": None,
    }
    assert record["primary_master_key_version"] == f"{name}/masterKeyVersions/1"
    assert [v["state"] for v in record["master_key_versions"]] == ["ENABLED"]

    other = f"{account}/buckets/{new_id()}"
    ok(vaultctl(target, "buckets", "create", other, "--label", "team=logs"))
    listed = json_of(vaultctl(target, "buckets", "list", account, json_output=True))
    assert sorted(b["name"] for b in listed["buckets"]) == sorted([name, other])
    media = json_of(
        vaultctl(target, "buckets", "list", account, "--label", "team=media", json_output=True)
    )
    assert [b["name"] for b in media["buckets"]] == [name]
    page = json_of(
        vaultctl(target, "buckets", "list", account, "--page-size", "1", json_output=True)
    )
    assert len(page["buckets"]) == 1 and page["next_page_token"]
    table = ok(vaultctl(target, "buckets", "list", account))
    assert name in table.stdout and other in table.stdout

    updated = json_of(
        vaultctl(
            target, "buckets", "update", name, "--clear-labels", "--max-bytes", "1024",
            json_output=True,
        )
    )  # fmt: skip
    assert updated["labels"] == {}
    assert updated["policy"]["max_bytes_per_key"] == 1024
    assert updated["policy"]["key_lifetime_seconds"] == 15 * 60  # left out: the default
    nothing = vaultctl(target, "buckets", "update", name)
    assert nothing.exit_code == 2


def test_buckets_rotate_disable_and_bucket_key(target: str, tmp_path: Path) -> None:
    name = str(new_bucket(target)["name"])
    key_file, wrapped_file = tmp_path / "key.bin", tmp_path / "wrapped.bin"
    generated = json_of(
        vaultctl(
            target, "buckets", "bucket-key", name, "--plaintext-out", str(key_file),
            "--wrapped-out", str(wrapped_file), json_output=True,
        )
    )  # fmt: skip
    assert generated["master_key_version"] == f"{name}/masterKeyVersions/1"
    assert len(key_file.read_bytes()) == 32 and mode(key_file) == 0o600
    assert key_file.read_bytes() not in wrapped_file.read_bytes()

    printed = ok(vaultctl(target, "buckets", "bucket-key", name))
    assert len(base64.b64decode(printed.stdout.strip())) == 65
    assert "lifetime 900 s" in printed.stderr

    rotated = json_of(vaultctl(target, "buckets", "rotate", name, json_output=True))
    assert rotated["primary_master_key_version"] == f"{name}/masterKeyVersions/2"
    opened = tmp_path / "opened.bin"
    ok(
        vaultctl(
            target, "buckets", "bucket-key", name, "--wrapped-in", str(wrapped_file),
            "--plaintext-out", str(opened),
        )
    )  # fmt: skip
    assert opened.read_bytes() == key_file.read_bytes()

    version = f"{name}/masterKeyVersions/1"
    disabled = json_of(vaultctl(target, "buckets", "disable-version", version, json_output=True))
    assert [v["state"] for v in disabled["master_key_versions"]] == ["DISABLED", "ENABLED"]
    assert disabled["master_key_version_count"] == 2
    refused = vaultctl(
        target, "buckets", "bucket-key", name, "--wrapped-in", str(wrapped_file),
        "--plaintext-out", str(tmp_path / "refused.bin"),
    )  # fmt: skip
    assert_one_line_error(refused, 3, "WRONG_KEY_STATE")
    assert not (tmp_path / "refused.bin").exists()
    ok(vaultctl(target, "buckets", "enable-version", version))

    # The key itself is never printed.
    never = vaultctl(target, "buckets", "bucket-key", name, "--plaintext-out", "-")
    assert never.exit_code == 2


def test_buckets_versions_follows_pages_past_what_get_shows(
    target: str, client: VaultClient
) -> None:
    """`buckets get` shows the newest 100 master-key versions and how many there are;
    `buckets versions` lists every one, newest first, following the server's pages."""
    name = str(new_bucket(target)["name"])
    rotations = BUCKET_VERSIONS_SHOWN + 5
    for _ in range(rotations):
        client.rotate_bucket_master_key(name)
    total = rotations + 1
    record = json_of(vaultctl(target, "buckets", "get", name, json_output=True))
    assert record["master_key_version_count"] == total
    assert [v["number"] for v in record["master_key_versions"]] == list(
        range(total - BUCKET_VERSIONS_SHOWN + 1, total + 1)
    )
    shown = ok(vaultctl(target, "buckets", "get", name)).stdout
    assert f"{total} (newest {BUCKET_VERSIONS_SHOWN}: " in shown
    listed = json_of(vaultctl(target, "buckets", "versions", name, json_output=True))
    assert [v["number"] for v in listed["master_key_versions"]] == list(range(total, 0, -1))
    assert {v["state"] for v in listed["master_key_versions"]} == {"ENABLED"}
    limited = json_of(
        vaultctl(target, "buckets", "versions", name, "--limit", "3", json_output=True)
    )
    assert [v["number"] for v in limited["master_key_versions"]] == [total, total - 1, total - 2]
    table = ok(vaultctl(target, "buckets", "versions", name)).stdout
    assert "master-key versions of" in table
    assert all(re.search(rf"^\s*{n}\s+ENABLED", table, re.M) for n in (1, total))


def test_buckets_delete_and_cancel(target: str) -> None:
    name = str(new_bucket(target)["name"])
    deleted = ok(vaultctl(target, "buckets", "delete", name, "--waiting-period", "1d"))
    assert "master key will be destroyed at" in deleted.stderr
    assert json_of(vaultctl(target, "buckets", "get", name, json_output=True))["state"] == (
        "DELETE_SCHEDULED"
    )
    refused = vaultctl(target, "buckets", "bucket-key", name)
    assert_one_line_error(refused, 3, "WRONG_KEY_STATE")
    restored = json_of(vaultctl(target, "buckets", "cancel-delete", name, json_output=True))
    assert restored["state"] == "ACTIVE" and restored["delete_time"] is None


def test_object_encrypt_decrypt_round_trip_of_a_multi_mib_file(target: str, tmp_path: Path) -> None:
    name = str(new_bucket(target)["name"])
    data = os.urandom(5 * MIB + 12345)
    plain = write(tmp_path / "photo.raw", data)
    sealed, back = tmp_path / "photo.enc", tmp_path / "photo.back"
    record = json_of(
        vaultctl(
            target, "object", "encrypt", "--bucket", name, "--object-key", "2026/photo.raw",
            "--in", plain, "--out", str(sealed), json_output=True,
        )
    )  # fmt: skip
    assert record["bytes_read"] == len(data)
    assert record["bytes_written"] == sealed.stat().st_size > len(data)
    assert record["vault_calls"] == 1
    assert data[:4096] not in sealed.read_bytes()
    assert mode(sealed) == 0o600
    done = ok(
        vaultctl(
            target, "object", "decrypt", "--bucket", name, "--object-key", "2026/photo.raw",
            "--in", str(sealed), "--out", str(back),
        )
    )  # fmt: skip
    assert f"decrypted {sealed.stat().st_size} bytes" in done.stderr
    assert back.read_bytes() == data

    # Another object key, or a modified object: one error, and no output left behind.
    wrong = tmp_path / "wrong"
    moved = vaultctl(
        target, "object", "decrypt", "--bucket", name, "--object-key", "other",
        "--in", str(sealed), "--out", str(wrong),
    )  # fmt: skip
    assert_one_line_error(moved, 4, "OBJECT_INTEGRITY")
    assert not wrong.exists()
    tampered = bytearray(sealed.read_bytes())
    tampered[3 * MIB] ^= 1
    bad = write(tmp_path / "tampered.enc", bytes(tampered))
    refused = vaultctl(
        target, "object", "decrypt", "--bucket", name, "--object-key", "2026/photo.raw",
        "--in", bad, "--out", str(wrong),
    )  # fmt: skip
    assert_one_line_error(refused, 4, "OBJECT_INTEGRITY")
    assert not wrong.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # An existing output is kept unless --force.
    exists = vaultctl(
        target, "object", "decrypt", "--bucket", name, "--object-key", "2026/photo.raw",
        "--in", str(sealed), "--out", str(back),
    )  # fmt: skip
    assert_one_line_error(exists, 4, "refusing to overwrite")


def test_readme_bucket_examples_run(target: str, tmp_path: Path, monkeypatch: Any) -> None:
    """Every `vaultctl buckets` and `vaultctl object` example of README.md's command-line
    section runs as written, in a fresh account instead of acme."""
    examples = "\n".join(re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL))
    commands = [
        re.sub(r"\s+# [^\n]*$", "", command)
        for command in re.split(r"\n(?!\s)", examples.replace("\\\n", " "))
        if command.startswith(("vaultctl buckets", "vaultctl object"))
    ]
    assert len(commands) == 8, commands
    account = new_account().removeprefix("accounts/")
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "cat.jpg", os.urandom(100_000))
    original = (tmp_path / "cat.jpg").read_bytes()
    for command in commands:
        args = shlex.split(command.replace("acme", account))[1:]
        if args[:2] == ["object", "decrypt"]:
            (tmp_path / "cat.jpg").unlink()
        ok(vaultctl(target, *args))
    assert (tmp_path / "cat.jpg").read_bytes() == original


def test_help_examples_run(target: str, tmp_path: Path, monkeypatch: Any) -> None:
    """The examples of `vaultctl buckets --help` and `vaultctl object --help` run as written,
    in a fresh account instead of acme."""
    from vault.cli.buckets import GROUP_HELP as BUCKETS_HELP
    from vault.cli.objects import GROUP_HELP as OBJECT_HELP

    account = new_account().removeprefix("accounts/")
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "cat.jpg", os.urandom(10_000))
    original = (tmp_path / "cat.jpg").read_bytes()
    ran = 0
    for text in (BUCKETS_HELP, OBJECT_HELP):
        examples = text.split("Examples:\n", 1)[1].replace("\\\n", " ")
        for line in examples.strip().splitlines():
            args = shlex.split(line.replace("acme", account))
            assert args[0] == "vaultctl"
            if args[1:3] == ["object", "decrypt"]:
                (tmp_path / "cat.jpg").unlink()
            ok(vaultctl(target, *args[1:]))
            ran += 1
    assert ran == 11
    assert (tmp_path / "cat.jpg").read_bytes() == original
    assert len((tmp_path / "key.bin").read_bytes()) == 32


def test_object_decrypt_in_another_bucket_or_under_a_disabled_master_key(
    target: str, tmp_path: Path
) -> None:
    """The wrong bucket is the object's fault (OBJECT_INTEGRITY); a disabled master key is
    not (WRONG_KEY_STATE, and the object opens again once the version is enabled). Neither
    leaves an output behind."""
    name, other = str(new_bucket(target)["name"]), str(new_bucket(target)["name"])
    data = os.urandom(70_000)
    plain, sealed, out = write(tmp_path / "in", data), tmp_path / "sealed", tmp_path / "out"

    def run(command: str, bucket: str, source: str, output: Path) -> Any:
        return vaultctl(
            target, "object", command, "--bucket", bucket, "--object-key", "k",
            "--in", source, "--out", str(output),
        )  # fmt: skip

    ok(run("encrypt", name, plain, sealed))
    assert_one_line_error(run("decrypt", other, str(sealed), out), 4, "OBJECT_INTEGRITY")
    assert not out.exists()
    version = f"{name}/masterKeyVersions/1"
    ok(vaultctl(target, "buckets", "disable-version", version))
    assert_one_line_error(run("decrypt", name, str(sealed), out), 3, "WRONG_KEY_STATE")
    assert_one_line_error(run("encrypt", name, plain, out), 3, "WRONG_KEY_STATE")
    assert not out.exists()
    ok(vaultctl(target, "buckets", "enable-version", version))
    ok(run("decrypt", name, str(sealed), out))
    assert out.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
