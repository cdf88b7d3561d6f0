"""`vaultctl accounts`, `access-keys`, `api-keys` and `audit` against a real vault.

The vault is this module's own, not the session's: the last test tampers with its audit log,
which would break every later check of the session vault's log.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from click.testing import CliRunner, Result

from tests.support.api_calls import new_id
from tests.support.cli_env import CLEAN_CLI_ENV
from tests.support.harness import VaultServer, provision
from tests.test_cli import assert_one_line_error, json_of, mode, ok
from vault.cli.main import cli

ACCOUNT_FIELDS = {"name", "account_id", "display_name", "admin", "create_time"}
ACCESS_KEY_FIELDS = {
    "name",
    "access_key_id",
    "account",
    "state",
    "grants",
    "description",
    "create_time",
    "last_used_time",
    "secret_reset_time",
}
API_KEY_FIELDS = {
    "name",
    "api_key_id",
    "account",
    "state",
    "scopes",
    "expire_time",
    "rate_limit",
    "daily_quota",
    "description",
    "create_time",
    "last_used_time",
}
EVENT_FIELDS = {
    "sequence",
    "time",
    "request_id",
    "credential_id",
    "account",
    "method",
    "resource",
    "outcome",
    "reason",
    "latency_micros",
    "source",
    "previous_hash",
    "hash",
}


@dataclass(frozen=True)
class Vault:
    target: str
    data_dir: Path

    @property
    def admin(self) -> Path:
        """The admin access key the vault stored at its first start."""
        return self.data_dir / "admin-credentials.json"

    def run(
        self,
        *args: str,
        credentials: Path | None = None,
        env: Mapping[str, str] | None = None,
        admin: bool = True,
        stdin: str | None = None,
    ) -> Result:
        """`vaultctl --target ... [--credentials-file F] args...` in this process: the admin's
        credentials unless credentials, env or admin=False say otherwise."""
        argv = ["--target", self.target]
        chosen = credentials or (self.admin if admin and env is None else None)
        if chosen is not None:
            argv += ["--credentials-file", str(chosen)]
        return CliRunner().invoke(
            cli,
            [*argv, *args],
            input=stdin,
            env={**CLEAN_CLI_ENV, **(env or {})},
            prog_name="vaultctl",
        )

    def json(self, *args: str, **options: Any) -> Any:
        return json_of(self.run(*args, "--json", **options))


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    data_dir = tmp_path_factory.mktemp("identity-cli")
    provision(data_dir)
    # Checkpoints every few records, so verify has signed checkpoints to check.
    with VaultServer(data_dir, {"VAULT_AUDIT__CHECKPOINT_EVERY_RECORDS": "10"}) as server:
        yield Vault(server.target, data_dir)


@pytest.fixture(scope="module")
def account(vault: Vault) -> str:
    account_id = f"a{uuid4().hex[:10]}"
    created = vault.json("accounts", "create", account_id, "--display-name", "CLI tests")
    return str(created["name"])


def make_key(vault: Vault, account: str, purpose: str = "SIGN_VERIFY") -> str:
    name = f"{account}/keys/{new_id()}"
    vault.json("keys", "create", name, "--purpose", purpose)
    return name


def relative(key: str) -> str:
    """accounts/a/keys/k -> keys/k, as grants and scopes name keys."""
    return "keys/" + key.rpartition("/keys/")[2]


def words(text: str) -> str:
    """text with its line breaks undone, as help is wrapped to the terminal's width."""
    return " ".join(text.split())


# -- help ---------------------------------------------------------------------------------------

GROUPS = {
    "accounts": ["create", "get", "list"],
    "access-keys": ["create", "get", "list", "reset-secret", "revoke", "delete"],
    "api-keys": ["create", "get", "list", "revoke", "usage"],
    "audit": ["list", "verify"],
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_and_command_help(group: str) -> None:
    runner = CliRunner()
    shown = ok(runner.invoke(cli, [group, "--help"], prog_name="vaultctl"))
    assert "admin role" in words(shown.stdout)
    for command in GROUPS[group]:
        assert command in shown.stdout
        help_text = ok(runner.invoke(cli, [group, command, "--help"], prog_name="vaultctl"))
        assert "admin role" in words(help_text.stdout), (group, command)

    top = ok(runner.invoke(cli, ["--help"], prog_name="vaultctl")).stdout
    assert group in top


def test_secret_options_are_explained() -> None:
    runner = CliRunner()
    for args in (["access-keys", "create"], ["access-keys", "reset-secret"]):
        text = ok(runner.invoke(cli, [*args, "--help"])).stdout
        assert "--secret-out" in text and "--credentials-out" in text and "0600" in text
    assert "--token-out" in ok(runner.invoke(cli, ["api-keys", "create", "--help"])).stdout


# -- accounts -----------------------------------------------------------------------------------


def test_accounts_create_get_list(vault: Vault) -> None:
    account_id = f"a{uuid4().hex[:10]}"
    created = vault.json("accounts", "create", f"accounts/{account_id}", "--display-name", "Ops")
    assert set(created) == ACCOUNT_FIELDS
    assert created["name"] == f"accounts/{account_id}"
    assert created["account_id"] == account_id
    assert created["display_name"] == "Ops"
    assert created["admin"] is False

    for name in (account_id, f"accounts/{account_id}"):
        assert vault.json("accounts", "get", name) == created
    human = ok(vault.run("accounts", "get", account_id)).stdout
    assert f"accounts/{account_id}" in human and "Ops" in human

    admin_id = f"a{uuid4().hex[:10]}"
    assert vault.json("accounts", "create", admin_id, "--admin")["admin"] is True

    listing = vault.json("accounts", "list")
    assert set(listing) == {"accounts"}
    names = [record["name"] for record in listing["accounts"]]
    assert {f"accounts/{account_id}", f"accounts/{admin_id}"} <= set(names)
    assert f"accounts/{account_id}" in ok(vault.run("accounts", "list")).stdout

    again = vault.run("accounts", "create", account_id)
    assert_one_line_error(again, 3, "ALREADY_EXISTS")
    assert_one_line_error(vault.run("accounts", "get", "nobody-here"), 3, "NOT_FOUND")


# -- access keys --------------------------------------------------------------------------------


def test_access_key_with_grant_in_a_credentials_file(
    vault: Vault, account: str, tmp_path: Path
) -> None:
    readable, other = make_key(vault, account), make_key(vault, account)
    credentials, secret = tmp_path / "creds.json", tmp_path / "secret"
    created = vault.json(
        "access-keys", "create", account,
        "--grant", f"{relative(readable)}=READ",
        "--description", "reader",
        "--credentials-out", str(credentials),
        "--secret-out", str(secret),
    )  # fmt: skip
    assert set(created) == {
        "access_key",
        "access_key_id",
        "secret_key",
        "secret_out",
        "credentials_out",
    }
    record = created["access_key"]
    assert set(record) == ACCESS_KEY_FIELDS
    name = record["name"]
    assert name == f"{account}/accessKeys/{created['access_key_id']}"
    assert record["state"] == "ACTIVE"
    assert record["grants"] == [{"resource": relative(readable), "level": "READ"}]
    assert record["description"] == "reader"
    # In the files only: never on stdout when a file was asked for.
    assert created["secret_key"] is None
    assert (created["secret_out"], created["credentials_out"]) == (str(secret), str(credentials))
    assert mode(credentials) == 0o600 and mode(secret) == 0o600
    stored = json.loads(credentials.read_text())
    assert stored == {"access_key_id": created["access_key_id"], "secret_key": secret.read_text()}
    assert len(stored["secret_key"]) == 43

    # Allowed by the grant: READ on that key.
    got = vault.json("keys", "get", readable, credentials=credentials)
    assert got["name"] == readable
    # Refused: another key, a level above READ, and anything of the admin role.
    for refused in (
        vault.run("keys", "get", other, credentials=credentials),
        vault.run("keys", "rotate", readable, credentials=credentials),
        vault.run("accounts", "list", credentials=credentials),
    ):
        assert_one_line_error(refused, 3, "PERMISSION_DENIED")

    fetched = vault.json("access-keys", "get", name)
    assert fetched["last_used_time"] is not None
    human = ok(vault.run("access-keys", "get", name)).stdout
    assert created["access_key_id"] in human and f"{relative(readable)}=READ" in human
    assert secret.read_text() not in human
    listing = vault.json("access-keys", "list", account)
    assert name in [key["name"] for key in listing["access_keys"]]
    assert name in ok(vault.run("access-keys", "list", account)).stdout

    # A new secret: the old file stops working at once, the new one works.
    fresh = tmp_path / "fresh.json"
    reset = vault.json("access-keys", "reset-secret", name, "--credentials-out", str(fresh))
    assert reset["access_key"]["secret_reset_time"] is not None
    assert reset["secret_key"] is None and mode(fresh) == 0o600
    assert json.loads(fresh.read_text())["secret_key"] != stored["secret_key"]
    stale = vault.run("keys", "get", readable, credentials=credentials)
    assert_one_line_error(stale, 3, "UNAUTHENTICATED")
    ok(vault.run("keys", "get", readable, credentials=fresh))

    # Revoking is irreversible: a terminal or --yes must confirm it.
    unconfirmed = vault.run("access-keys", "revoke", name)
    assert_one_line_error(unconfirmed, 2, "--yes")
    ok(vault.run("keys", "get", readable, credentials=fresh))
    revoked = vault.json("access-keys", "revoke", name, "--yes")
    assert revoked["state"] == "REVOKED"
    assert_one_line_error(
        vault.run("keys", "get", readable, credentials=fresh), 3, "UNAUTHENTICATED"
    )

    assert_one_line_error(vault.run("access-keys", "delete", name), 2, "--yes")
    assert vault.json("access-keys", "delete", name, "--yes") == {"name": name, "deleted": True}
    assert_one_line_error(vault.run("access-keys", "get", name), 3, "NOT_FOUND")


def test_secret_printed_when_no_file_is_given(vault: Vault, account: str) -> None:
    key = make_key(vault, account, "ENCRYPT_DECRYPT")
    # A full key name of the account and a lower-case level are accepted too.
    human = ok(vault.run("access-keys", "create", account, "--grant", f"{key}=readwrite"))
    lines = [line for line in human.stdout.splitlines() if line.startswith("secret key: ")]
    assert len(lines) == 1
    secret = lines[0].removeprefix("secret key: ")
    assert "shown only now" in human.stderr

    created = vault.json("access-keys", "create", account, "--grant", "keys/*=FULL")
    assert created["access_key"]["grants"] == [{"resource": "keys/*", "level": "FULL"}]
    assert len(created["secret_key"]) == 43
    assert created["secret_out"] is None and created["credentials_out"] is None
    env = {
        "VAULT_ACCESS_KEY_ID": created["access_key_id"],
        "VAULT_SECRET_KEY": created["secret_key"],
    }
    assert vault.json("keys", "get", key, env=env)["name"] == key
    assert secret != created["secret_key"]

    elsewhere = f"accounts/a{uuid4().hex[:10]}/keys/{new_id()}"
    for bad in ("keys/k1", "keys/k1=ADMIN", f"{elsewhere}=READ"):
        refused = vault.run("access-keys", "create", account, "--grant", bad)
        assert refused.exit_code == 2, (bad, refused.stderr)
        assert "--grant" in refused.stderr


def test_secret_files_are_never_overwritten_or_followed_by_default(
    vault: Vault, account: str, tmp_path: Path
) -> None:
    def count() -> int:
        return len(vault.json("access-keys", "list", account)["access_keys"])

    before = count()
    existing = tmp_path / "existing"
    existing.write_text("keep me")
    existing.chmod(0o644)
    refused = vault.run("access-keys", "create", account, "--secret-out", str(existing))
    assert_one_line_error(refused, 4, "exists", "--force")
    assert existing.read_text() == "keep me"

    target = tmp_path / "target"
    target.write_text("untouched")
    link = tmp_path / "link"
    link.symlink_to(target)
    for force in ([], ["--force"]):
        followed = vault.run(
            "access-keys", "create", account, "--credentials-out", str(link), *force
        )
        assert_one_line_error(followed, 4, "symbolic link")
    assert target.read_text() == "untouched"

    # A path that cannot be created fails before the vault issues anything, and leaves no
    # half-made file behind.
    fresh = tmp_path / "fresh"
    missing_dir = tmp_path / "no-such-dir" / "creds.json"
    refused = vault.run(
        "access-keys", "create", account,
        "--secret-out", str(fresh), "--credentials-out", str(missing_dir),
    )  # fmt: skip
    assert_one_line_error(refused, 4, str(missing_dir))
    assert not fresh.exists()

    # Nor when the vault refuses: the file made for the secret is removed again.
    refused = vault.run(
        "access-keys", "create", account, "--grant", "keys/Bad Name=READ",
        "--secret-out", str(fresh),
    )  # fmt: skip
    assert_one_line_error(refused, 3, "INVALID_ARGUMENT")
    assert not fresh.exists()
    assert count() == before

    # --force replaces the file, narrowing it to 0600.
    replaced = vault.json(
        "access-keys", "create", account, "--secret-out", str(existing), "--force"
    )
    assert replaced["secret_key"] is None
    assert len(existing.read_text()) == 43
    assert mode(existing) == 0o600
    assert count() == before + 1

    same = vault.run(
        "access-keys", "create", account,
        "--secret-out", str(tmp_path / "a"), "--credentials-out", str(tmp_path / "a"),
    )  # fmt: skip
    assert same.exit_code == 2 and "different files" in same.stderr
    dash = vault.run("access-keys", "create", account, "--secret-out", "-")
    assert dash.exit_code == 2 and "--secret-out" in dash.stderr
    assert count() == before + 1


# -- API keys -----------------------------------------------------------------------------------


def test_api_key_scope_usage_and_revoke(vault: Vault, account: str, tmp_path: Path) -> None:
    signer, other = make_key(vault, account), make_key(vault, account)
    token_file = tmp_path / "token"
    created = vault.json(
        "api-keys", "create", account,
        "--scope", f"Sign,Verify:{relative(signer)}",
        "--scope", f"GetKey:{signer}",
        "--expires-in", "30d",
        "--rate", "50", "--burst", "100",
        "--daily-quota", "1000",
        "--description", "release signing",
        "--token-out", str(token_file),
    )  # fmt: skip
    assert set(created) == {"api_key", "api_key_id", "token", "token_out"}
    assert created["token"] is None and created["token_out"] == str(token_file)
    assert mode(token_file) == 0o600
    token = token_file.read_text()
    assert token.startswith(f"vkapi_{created['api_key_id']}_")
    record = created["api_key"]
    assert set(record) == API_KEY_FIELDS
    name = record["name"]
    assert name == f"{account}/apiKeys/{created['api_key_id']}"
    assert record["scopes"] == [
        {"methods": ["Sign", "Verify"], "resources": [relative(signer)]},
        {"methods": ["GetKey"], "resources": [relative(signer)]},
    ]
    assert record["rate_limit"] == {"requests_per_second": 50.0, "burst": 100}
    assert record["daily_quota"] == 1000
    assert record["expire_time"] is not None
    assert record["state"] == "ACTIVE"

    env = {"VAULT_API_KEY": token}
    message = tmp_path / "message"
    message.write_bytes(b"release 1.0")
    signature = tmp_path / "signature"
    sign = ["crypto", "sign", signer, "--in", str(message), "--out", str(signature), "--force"]
    for _ in range(2):
        ok(vault.run(*sign, env=env))
    verified = vault.run(
        "crypto", "verify", signer, "--in", str(message), "--signature", str(signature), env=env
    )
    assert "signature matches" in ok(verified).stdout
    assert_one_line_error(
        vault.run("crypto", "sign", other, "--in", str(message), env=env), 3, "PERMISSION_DENIED"
    )
    assert_one_line_error(vault.run("keys", "rotate", signer, env=env), 3, "PERMISSION_DENIED")

    used = vault.json("api-keys", "usage", name, "--days", "1")
    assert set(used) == {"name", "days", "counters", "total"}
    counts = {counter["method"]: counter["count"] for counter in used["counters"]}
    assert counts == {"Sign": 2, "Verify": 1}  # refused calls are not counted
    assert used["total"] == 3
    table = ok(vault.run("api-keys", "usage", name))
    assert "Sign" in table.stdout and "Verify" in table.stdout and "DAY" in table.stdout

    assert vault.json("api-keys", "get", name)["last_used_time"] is not None
    assert "Sign,Verify:" in ok(vault.run("api-keys", "get", name)).stdout
    listing = vault.json("api-keys", "list", account)
    assert name in [key["name"] for key in listing["api_keys"]]
    assert token not in ok(vault.run("api-keys", "list", account)).stdout

    assert_one_line_error(vault.run("api-keys", "revoke", name), 2, "--yes")
    assert vault.json("api-keys", "revoke", name, "--yes")["state"] == "REVOKED"
    assert_one_line_error(
        vault.run("crypto", "sign", signer, "--in", str(message), env=env), 3, "UNAUTHENTICATED"
    )


def test_api_key_token_printed_and_option_errors(vault: Vault, account: str) -> None:
    human = ok(vault.run("api-keys", "create", account, "--scope", "*:*"))
    tokens = [line for line in human.stdout.splitlines() if line.startswith("token: vkapi_")]
    assert len(tokens) == 1
    created = vault.json("api-keys", "create", account, "--scope", "GenerateRandom:*")
    assert created["token"].startswith("vkapi_") and created["token_out"] is None
    assert created["api_key"]["rate_limit"] is None and created["api_key"]["expire_time"] is None
    ok(vault.run("crypto", "random", "--size", "8", env={"VAULT_API_KEY": created["token"]}))

    for args, hint in (
        (["--scope", "Sign"], "--scope"),
        (["--scope", ":keys/k1"], "--scope"),
        (["--scope", "Sign:keys/k1", "--expires-in", "soon"], "--expires-in"),
        (["--scope", "Sign:keys/k1", "--burst", "5"], "--rate"),
        (["--scope", "Sign:keys/k1", "--rate", "0"], "--rate"),
        (["--scope", "Sign:keys/k1", "--rate", "nan"], "--rate"),
        (["--scope", "Sign:keys/k1", "--expires-in", "99999999999999w"], "--expires-in"),
        ([], "--scope"),
    ):
        refused = vault.run("api-keys", "create", account, *args)
        assert refused.exit_code == 2, (args, refused.stderr)
        assert hint in refused.stderr, (args, refused.stderr)
    unknown = vault.run("api-keys", "create", account, "--scope", "Frobnicate:keys/k1")
    assert_one_line_error(unknown, 3, "INVALID_ARGUMENT")


# -- audit --------------------------------------------------------------------------------------


def test_audit_list_filters(vault: Vault, account: str, tmp_path: Path) -> None:
    signer = make_key(vault, account)
    message = tmp_path / "message"
    message.write_bytes(b"audited")
    for _ in range(3):
        ok(vault.run("crypto", "sign", signer, "--in", str(message)))
    admin_id = json.loads(vault.admin.read_text())["access_key_id"]

    listing = vault.json("audit", "list", "--method", "Sign", "--key", signer)
    assert set(listing) == {"events", "next_page_token"}
    events = listing["events"]
    assert len(events) == 3
    assert all(set(event) == EVENT_FIELDS for event in events)
    assert all(event["method"] == "/vault.v1.CryptoService/Sign" for event in events)
    assert all(event["resource"].startswith(signer) for event in events)
    assert all(event["outcome"] == "OK" and event["credential_id"] == admin_id for event in events)
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(sequences)

    table = ok(vault.run("audit", "list", "--method", "Sign", "--key", signer)).stdout
    for column in ("SEQ", "TIME", "CREDENTIAL", "METHOD", "RESOURCE", "OUTCOME", "LATENCY MS"):
        assert column in table
    assert " Sign " in table and admin_id in table and "/vault.v1." not in table

    # --limit stops after N records and hands over a token that continues right after them.
    first = vault.json("audit", "list", "--method", "sign", "--key", signer, "--limit", "2")
    assert [event["sequence"] for event in first["events"]] == sequences[:2]
    assert first["next_page_token"]
    rest = vault.json(
        "audit", "list", "--method", "Sign", "--key", signer,
        "--page-token", first["next_page_token"],
    )  # fmt: skip
    assert [event["sequence"] for event in rest["events"]] == sequences[2:]
    more = ok(vault.run("audit", "list", "--method", "Sign", "--key", signer, "--limit", "1"))
    assert "--page-token" in more.stderr

    since = events[0]["time"]
    assert len(vault.json("audit", "list", "--key", signer, "--since", "1h")["events"]) >= 3
    assert vault.json("audit", "list", "--key", signer, "--until", "1h")["events"] == []
    assert len(vault.json("audit", "list", "--key", signer, "--since", since)["events"]) >= 3
    by_credential = vault.json("audit", "list", "--credential", admin_id, "--method", "Sign")
    assert set(sequences) <= {event["sequence"] for event in by_credential["events"]}

    denied = vault.json("audit", "list", "--outcome", "permission_denied")["events"]
    assert all(event["outcome"] == "PERMISSION_DENIED" for event in denied)

    for args, hint in ((["--since", "yesterday"], "--since"), (["--method", "Sgn"], "--method")):
        bad = vault.run("audit", "list", *args)
        assert bad.exit_code == 2 and hint in bad.stderr, (args, bad.stderr)


def test_audit_needs_the_admin_role(vault: Vault, account: str, tmp_path: Path) -> None:
    credentials = tmp_path / "creds.json"
    ok(vault.run("access-keys", "create", account, "--credentials-out", str(credentials)))
    for args in (["audit", "list"], ["audit", "verify"]):
        assert_one_line_error(vault.run(*args, credentials=credentials), 3, "PERMISSION_DENIED")


def test_audit_verify_intact_then_tampered(vault: Vault, account: str, tmp_path: Path) -> None:
    # Last in this module: after it, the vault's audit log is no longer intact.
    credentials = tmp_path / "creds.json"
    ok(vault.run("access-keys", "create", account, "--credentials-out", str(credentials)))
    assert_one_line_error(vault.run("accounts", "list", credentials=credentials), 3)

    intact = ok(vault.run("audit", "verify"))
    line = intact.stdout.strip()
    assert line.startswith("audit log intact: ") and " records, " in line, line
    assert line.endswith(" checkpoints") or line.endswith(" checkpoint"), line
    report = vault.json("audit", "verify")
    assert set(report) == {
        "ok",
        "records_checked",
        "checkpoints_checked",
        "last_sequence",
        "findings",
    }
    assert report["ok"] is True and report["findings"] == []
    assert report["records_checked"] > 0 and report["checkpoints_checked"] > 0

    denied = vault.json("audit", "list", "--outcome", "PERMISSION_DENIED")["events"]
    assert denied
    sequence = denied[-1]["sequence"]
    with closing(sqlite3.connect(vault.data_dir / "vault.db")) as database, database:
        changed = database.execute(
            "UPDATE audit_events SET outcome = 'OK' WHERE seq = ?", (sequence,)
        ).rowcount
    assert changed == 1

    tampered = vault.run("audit", "verify")
    assert tampered.exit_code == 1, (tampered.stdout, tampered.stderr)
    assert "audit log NOT intact" in tampered.stdout
    assert f"first finding: MODIFIED at sequence {sequence}" in tampered.stdout
    assert "MODIFIED" in tampered.stdout

    as_json = vault.run("audit", "verify", "--json")
    assert as_json.exit_code == 1
    found = json.loads(as_json.stdout)
    assert found["ok"] is False
    assert found["findings"][0]["kind"] == "MODIFIED"
    assert found["findings"][0]["sequence"] == sequence
    assert found["findings"][0]["detail"]
