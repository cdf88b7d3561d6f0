"""`vaultctl` against the session's real (plaintext) server: keys, crypto, exit codes, and the
rule that data only ever arrives through files or standard input.

Most commands run in-process through click's CliRunner; the pipe and the one-line error are
also checked with the installed `vaultctl` as separate processes, as a shell would run them.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api_calls import ensure_account, new_id
from tests.support.harness import ROOT, VaultServer, free_port, provision, vault_environment
from vault.cli.main import cli
from vault.tls_dev import create_ca, write_certificate

VAULTCTL = ROOT / ".venv" / "bin" / "vaultctl"

# This module's own account, so listings see only the keys made here.
ACCOUNT_ID = f"cli{uuid4().hex[:10]}"
ACCOUNT = f"accounts/{ACCOUNT_ID}"

# The stable keys of a key record under --json (README: "machine-readable output with stable
# keys").
KEY_FIELDS = {
    "name",
    "purpose",
    "algorithm",
    "state",
    "primary_version",
    "primary_version_number",
    "token_resident",
    "labels",
    "description",
    "create_time",
    "update_time",
    "destroy_scheduled_time",
    "destroy_time",
    "revocation_reason",
    "revocation_reason_code",
    "revoke_time",
}

# Nothing from the caller's environment may steer the CLI (a CA, another target, settings);
# None removes the variable for the duration of one invocation.
_CLEAN_ENV: Mapping[str, str | None] = {
    "VAULT_CONFIG": None,
    "VAULT_TARGET": None,
    "VAULT_CA_FILE": None,
    "VAULT_CLIENT_CERT_FILE": None,
    "VAULT_CLIENT_KEY_FILE": None,
    "VAULT_CREDENTIALS_FILE": None,
    "VAULT_ACCESS_KEY_ID": None,
    "VAULT_SECRET_KEY": None,
    "VAULT_API_KEY": None,
}
# The admin access key of the server under test, which every invocation signs with.
_CREDENTIALS: dict[str, str] = {}


def vaultctl(
    target: str | None, *args: str, stdin: bytes | None = None, json_output: bool = False
) -> Result:
    """Run `vaultctl [--target target] [--json] args...` in this process."""
    argv = ["--target", target] if target is not None else []
    if json_output:
        argv.append("--json")
    return CliRunner().invoke(
        cli,
        [*argv, *args],
        input=stdin,
        env={**_CLEAN_ENV, **_CREDENTIALS},
        prog_name="vaultctl",
    )


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n"
        f"exception: {result.exception!r}"
    )
    return result


def json_of(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_one_line_error(result: Result, exit_code: int, *words: str) -> str:
    """The documented failure shape: exit code, one `vaultctl: error:` line, no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vaultctl: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def subprocess_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VAULT_")}
    return {**env, **_CREDENTIALS}


def run_vaultctl(
    args: Sequence[str], *, stdin: bytes = b"", cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(VAULTCTL), *args],
        input=stdin,
        capture_output=True,
        env=subprocess_env(),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def create_key(target: str, purpose: str, *extra: str) -> dict[str, Any]:
    name = f"{ACCOUNT}/keys/{new_id()}"
    record: dict[str, Any] = json_of(
        vaultctl(target, "keys", "create", name, "--purpose", purpose, *extra, json_output=True)
    )
    assert record["name"] == name
    return record


@pytest.fixture(scope="module")
def target(server: VaultServer) -> str:
    _CREDENTIALS["VAULT_CREDENTIALS_FILE"] = str(server.data_dir / "admin-credentials.json")
    with server.client() as admin:  # other modules use this fixture too: made once
        ensure_account(admin, ACCOUNT)
    return server.target


@pytest.fixture(scope="module")
def enc_key(target: str) -> str:
    return str(create_key(target, "ENCRYPT_DECRYPT")["name"])


@pytest.fixture(scope="module")
def sign_key(target: str) -> str:
    return str(create_key(target, "SIGN_VERIFY")["name"])


@pytest.fixture(scope="module")
def mac_key(target: str) -> str:
    return str(create_key(target, "MAC")["name"])


# -- keys ---------------------------------------------------------------------------------------


def test_keys_create_get_list(target: str) -> None:
    name = f"{ACCOUNT}/keys/{new_id()}"
    created = json_of(
        vaultctl(
            target,
            "keys",
            "create",
            name,
            "--purpose",
            "encrypt_decrypt",  # lower case is accepted too
            "--label",
            "team=storage",
            "--description",
            "document store",
            "--json",  # the command's own --json, same as the global one
        )
    )
    assert set(created) == KEY_FIELDS
    assert created["name"] == name
    assert created["purpose"] == "ENCRYPT_DECRYPT"
    assert created["algorithm"] == "AES_256_GCM"
    assert created["state"] == "ENABLED"
    assert created["primary_version"] == f"{name}/versions/1"
    assert created["primary_version_number"] == 1
    assert created["labels"] == {"team": "storage"}
    assert created["description"] == "document store"
    assert created["token_resident"] is False
    assert created["create_time"] is not None
    assert created["destroy_scheduled_time"] is None
    assert created["revocation_reason"] == ""

    fetched = json_of(vaultctl(target, "keys", "get", name, json_output=True))
    assert set(fetched) == KEY_FIELDS
    assert {k: fetched[k] for k in KEY_FIELDS - {"update_time"}} == {
        k: created[k] for k in KEY_FIELDS - {"update_time"}
    }

    # Without --json: a table for people, on stdout, naming the key.
    human = ok(vaultctl(target, "keys", "get", name))
    assert name in human.stdout and "ENCRYPT_DECRYPT" in human.stdout

    # The account as a bare id or as accounts/{id}.
    signer = create_key(target, "SIGN_VERIFY")
    for account in (ACCOUNT_ID, ACCOUNT):
        listing = json_of(vaultctl(target, "keys", "list", account, json_output=True))
        assert set(listing) == {"keys", "next_page_token"}
        assert listing["next_page_token"] == ""
        names = [record["name"] for record in listing["keys"]]
        assert names == sorted(names)
        assert {name, signer["name"]} <= set(names)
        assert all(set(record) == KEY_FIELDS for record in listing["keys"])

    filtered = json_of(
        vaultctl(target, "keys", "list", ACCOUNT_ID, "--purpose", "SIGN_VERIFY", json_output=True)
    )
    assert signer["name"] in [record["name"] for record in filtered["keys"]]
    assert all(record["purpose"] == "SIGN_VERIFY" for record in filtered["keys"])
    labelled = json_of(
        vaultctl(target, "keys", "list", ACCOUNT, "--label", "team=storage", json_output=True)
    )
    assert [record["name"] for record in labelled["keys"]] == [name]


def test_keys_rotate_and_versions(target: str) -> None:
    name = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    rotated = json_of(vaultctl(target, "keys", "rotate", name, json_output=True))
    assert rotated["primary_version"] == f"{name}/versions/2"
    assert rotated["primary_version_number"] == 2

    human = ok(vaultctl(target, "keys", "rotate", name))
    assert f"primary is now {name}/versions/3" in human.stderr

    listing = json_of(vaultctl(target, "keys", "versions", name, json_output=True))
    assert set(listing) == {"versions"}
    versions = listing["versions"]
    assert [v["number"] for v in versions] == [1, 2, 3]
    assert [v["name"] for v in versions] == [f"{name}/versions/{n}" for n in (1, 2, 3)]
    assert all(v["state"] == "ENABLED" and v["destroy_time"] is None for v in versions)
    assert set(versions[0]) == {
        "name",
        "number",
        "state",
        "token_resident",
        "create_time",
        "destroy_time",
        "revoke_time",
        "revocation_reason_code",
        "revocation_reason",
    }


def test_keys_public_key(target: str, sign_key: str, tmp_path: Path) -> None:
    out = tmp_path / "release.pem"
    result = ok(vaultctl(target, "keys", "public-key", sign_key, "--out", str(out)))
    assert result.stdout == ""  # the PEM went to the file, the remark to stderr
    assert str(out) in result.stderr
    assert mode(out) == 0o600
    public = serialization.load_pem_public_key(out.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"

    record = json_of(vaultctl(target, "keys", "public-key", sign_key, json_output=True))
    assert record["pem"] == out.read_text()
    assert record["algorithm"] == "EC_SIGN_P256_SHA256"
    assert record["name"] == f"{sign_key}/versions/1"
    assert record["out"] is None

    # Without --out or --json: the PEM alone on stdout.
    printed = ok(vaultctl(target, "keys", "public-key", sign_key))
    assert printed.stdout.strip() == out.read_text().strip()


def test_keys_disable_enable(target: str, tmp_path: Path) -> None:
    name = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    plaintext = write(tmp_path / "p", b"data")
    assert json_of(vaultctl(target, "keys", "disable", name, json_output=True))["state"] == (
        "DISABLED"
    )
    assert json_of(vaultctl(target, "keys", "get", name, json_output=True))["state"] == "DISABLED"
    refused = vaultctl(target, "crypto", "encrypt", name, "--in", plaintext)
    assert_one_line_error(refused, 3, "WRONG_KEY_STATE", "FAILED_PRECONDITION")

    assert json_of(vaultctl(target, "keys", "enable", name, json_output=True))["state"] == (
        "ENABLED"
    )
    ok(vaultctl(target, "crypto", "encrypt", name, "--in", plaintext))


def test_keys_revoke(target: str, tmp_path: Path) -> None:
    name = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    plaintext = b"protected before the revocation"
    sealed = tmp_path / "sealed"
    ok(
        vaultctl(
            target, "crypto", "encrypt", name, "--in", write(tmp_path / "p", plaintext),
            "--out", str(sealed),
        )
    )  # fmt: skip

    # Without --yes and without a terminal: refused as a usage error, key untouched.
    unconfirmed = vaultctl(target, "keys", "revoke", name, "--reason", "superseded")
    assert_one_line_error(unconfirmed, 2, "--yes")
    assert json_of(vaultctl(target, "keys", "get", name, json_output=True))["state"] == "ENABLED"
    assert vaultctl(target, "keys", "revoke", name, "--yes").exit_code == 2  # --reason required

    revoked = json_of(
        vaultctl(
            target, "keys", "revoke", name, "--reason", "superseded", "--yes", json_output=True
        )
    )
    assert revoked["state"] == "REVOKED"
    assert revoked["revocation_reason"] == "superseded"

    # Revoked: makes nothing new, still decrypts what it protected.
    refused = vaultctl(target, "crypto", "encrypt", name, "--in", str(tmp_path / "p"))
    assert_one_line_error(refused, 3, "WRONG_KEY_STATE")
    decrypted = ok(vaultctl(target, "crypto", "decrypt", name, "--in", str(sealed), "--out", "-"))
    assert decrypted.stdout_bytes == plaintext
    # Irreversible.
    assert_one_line_error(vaultctl(target, "keys", "enable", name), 3, "WRONG_KEY_STATE")


def test_keys_schedule_and_cancel_destroy(target: str) -> None:
    name = str(create_key(target, "ENCRYPT_DECRYPT")["name"])
    before = datetime.now(UTC)
    scheduled = json_of(
        vaultctl(
            target, "keys", "schedule-destroy", name, "--waiting-period", "1d", json_output=True
        )
    )
    assert scheduled["state"] == "DESTROY_SCHEDULED"
    when = datetime.fromisoformat(scheduled["destroy_scheduled_time"])
    assert before + timedelta(days=1) - timedelta(minutes=1) <= when
    assert when <= datetime.now(UTC) + timedelta(days=1, minutes=1)

    # A disable cannot call a destruction off.
    assert_one_line_error(vaultctl(target, "keys", "disable", name), 3, "WRONG_KEY_STATE")

    cancelled = json_of(vaultctl(target, "keys", "cancel-destroy", name, json_output=True))
    assert cancelled["state"] == "DISABLED"  # re-enabling is a separate step
    assert cancelled["destroy_scheduled_time"] is None
    assert json_of(vaultctl(target, "keys", "enable", name, json_output=True))["state"] == (
        "ENABLED"
    )

    # The table calls the future date what it is.
    scheduled_text = ok(vaultctl(target, "keys", "schedule-destroy", name)).stdout
    assert "destruction scheduled for" in scheduled_text
    assert "destroyed at" not in scheduled_text
    assert "destroyed at" not in ok(vaultctl(target, "keys", "get", name)).stdout
    ok(vaultctl(target, "keys", "cancel-destroy", name))
    ok(vaultctl(target, "keys", "enable", name))

    for period in ("soon", "99999999999999w"):
        bad = vaultctl(target, "keys", "schedule-destroy", name, "--waiting-period", period)
        assert bad.exit_code == 2, bad.stderr
        assert "--waiting-period" in bad.stderr


def test_keys_list_follows_pages_cut_short_by_message_size(
    target: str, server: VaultServer
) -> None:
    """Pages of keys with every label end early to fit the largest message: the CLI follows
    tokens until none is left, and --limit stops exactly at the limit, whatever page sizes
    the server answered with."""
    account_id = f"cli{uuid4().hex[:10]}"
    labels = {f"l{i:02d}-{'x' * 59}": "v" * 63 for i in range(64)}
    with server.client() as admin, ThreadPoolExecutor(4) as pool:
        account = ensure_account(admin, account_id)
        created = sorted(
            pool.map(
                lambda _: (
                    admin.create_key(
                        account, new_id(), "MAC", labels=labels, description="d" * 1024
                    ).name
                ),
                range(150),
            )
        )
    listed = json_of(vaultctl(target, "keys", "list", account_id, "--json"))
    assert [k["name"] for k in listed["keys"]] == created
    assert listed["next_page_token"] == ""
    first = json_of(vaultctl(target, "keys", "list", account_id, "--limit", "140", "--json"))
    assert [k["name"] for k in first["keys"]] == created[:140]
    rest = json_of(
        vaultctl(
            target, "keys", "list", account_id, "--page-token", first["next_page_token"], "--json"
        )
    )
    assert [k["name"] for k in rest["keys"]] == created[140:]


def test_every_list_command_bounds_its_output_with_limit(target: str) -> None:
    for _ in range(3):
        create_key(target, "MAC")
    everything = [
        k["name"] for k in json_of(vaultctl(target, "keys", "list", ACCOUNT_ID, "--json"))["keys"]
    ]
    assert len(everything) >= 3
    page = json_of(vaultctl(target, "keys", "list", ACCOUNT_ID, "--limit", "2", "--json"))
    assert [k["name"] for k in page["keys"]] == everything[:2]
    rest = json_of(
        vaultctl(
            target, "keys", "list", ACCOUNT_ID, "--page-token", page["next_page_token"], "--json"
        )
    )
    assert [k["name"] for k in rest["keys"]] == everything[2:]
    # The old name still works, with a remark.
    old = vaultctl(target, "keys", "list", ACCOUNT_ID, "--page-size", "2", "--json")
    assert [k["name"] for k in json_of(old)["keys"]] == everything[:2]
    assert "deprecated" in old.stderr
    versions = json_of(
        vaultctl(target, "keys", "versions", everything[0], "--limit", "1", "--json")
    )
    assert len(versions["versions"]) == 1
    for command in (
        ["keys", "list"],
        ["keys", "versions"],
        ["accounts", "list"],
        ["access-keys", "list"],
        ["api-keys", "list"],
        ["audit", "list"],
    ):
        shown = ok(vaultctl(None, *command, "--help")).stdout
        assert "--limit" in shown, command
        assert "--page-size" not in shown, command


def test_a_destroyed_key_shows_when_it_was_destroyed(target: str) -> None:
    name = str(create_key(target, "MAC")["name"])
    ok(vaultctl(target, "keys", "schedule-destroy", name, "--waiting-period", "1s"))
    deadline = time.monotonic() + 60
    record = json_of(vaultctl(target, "keys", "get", name, json_output=True))
    while record["state"] != "DESTROYED" and time.monotonic() < deadline:
        time.sleep(0.5)
        record = json_of(vaultctl(target, "keys", "get", name, json_output=True))
    assert record["state"] == "DESTROYED"
    assert record["destroy_scheduled_time"] is None
    assert datetime.fromisoformat(record["destroy_time"]) <= datetime.now(UTC)
    shown = ok(vaultctl(target, "keys", "get", name)).stdout
    assert "destroyed at" in shown
    assert "scheduled" not in shown


def test_vault_refusals_exit_3(target: str) -> None:
    missing = vaultctl(target, "keys", "get", f"{ACCOUNT}/keys/{new_id()}")
    assert_one_line_error(missing, 3, "NOT_FOUND")
    malformed = vaultctl(target, "keys", "get", "accounts/Bad Name/keys/x")
    assert_one_line_error(malformed, 3, "MALFORMED_NAME", "INVALID_ARGUMENT")

    # Under --json the error is one JSON object on stderr.
    as_json = vaultctl(target, "keys", "get", f"{ACCOUNT}/keys/{new_id()}", json_output=True)
    assert as_json.exit_code == 3
    assert as_json.stdout == ""
    error = json.loads(as_json.stderr)["error"]
    assert error["reason"] == "NOT_FOUND"
    assert error["code"] == "NOT_FOUND"
    assert error["exit_code"] == 3


# -- crypto: encrypt and decrypt --------------------------------------------------------------


def test_encrypt_decrypt_files(target: str, enc_key: str, tmp_path: Path) -> None:
    plaintext = bytes(range(256)) + b"\x00\xff not utf-8 \x80"
    source = write(tmp_path / "report.bin", plaintext)
    sealed = tmp_path / "report.enc"
    encrypted = ok(
        vaultctl(target, "crypto", "encrypt", enc_key, "--in", source, "--out", str(sealed))
    )
    assert encrypted.stdout == ""  # remarks go to stderr
    assert f"encrypted with {enc_key}/versions/1" in encrypted.stderr
    assert mode(sealed) == 0o600
    assert plaintext not in sealed.read_bytes()

    decrypted = ok(
        vaultctl(target, "crypto", "decrypt", enc_key, "--in", str(sealed), "--out", "-")
    )
    assert decrypted.stdout_bytes == plaintext

    # Into a file as well, mode 0600.
    restored = tmp_path / "restored.bin"
    ok(vaultctl(target, "crypto", "decrypt", enc_key, "--in", str(sealed), "--out", str(restored)))
    assert restored.read_bytes() == plaintext
    assert mode(restored) == 0o600

    # --json: base64 fields with stable keys; the ciphertext decrypts again.
    record = json_of(
        vaultctl(target, "crypto", "encrypt", enc_key, "--in", source, json_output=True)
    )
    assert set(record) == {"ciphertext", "key_version", "out"}
    assert record["key_version"] == f"{enc_key}/versions/1"
    again = write(tmp_path / "again.b64", record["ciphertext"].encode())
    back = ok(
        vaultctl(target, "crypto", "decrypt", enc_key, "--in", again, "--in-base64", "--out", "-")
    )
    assert back.stdout_bytes == plaintext


def test_encrypt_with_aad(target: str, enc_key: str, tmp_path: Path) -> None:
    source = write(tmp_path / "p", b"order details")
    aad = write(tmp_path / "ctx", b"order-42")
    wrong = write(tmp_path / "other", b"order-43")
    sealed = str(tmp_path / "sealed")
    ok(
        vaultctl(
            target, "crypto", "encrypt", enc_key, "--in", source, "--aad-file", aad, "--out", sealed
        )
    )

    right = ok(
        vaultctl(
            target, "crypto", "decrypt", enc_key, "--in", sealed, "--aad-file", aad, "--out", "-"
        )
    )
    assert right.stdout_bytes == b"order details"

    for attempt in (["--aad-file", wrong], []):
        failed = vaultctl(
            target, "crypto", "decrypt", enc_key, "--in", sealed, "--out", "-", *attempt
        )
        line = assert_one_line_error(failed, 3, "DECRYPTION_FAILED")
        assert line.startswith("vaultctl: error: DECRYPTION_FAILED: ")
        assert line.endswith("(status INVALID_ARGUMENT)")
        assert failed.stdout_bytes == b""

    as_json = vaultctl(
        target, "crypto", "decrypt", enc_key, "--in", sealed, "--aad-file", wrong, json_output=True
    )
    assert as_json.exit_code == 3
    assert as_json.stdout == ""
    assert json.loads(as_json.stderr)["error"]["reason"] == "DECRYPTION_FAILED"


def test_encrypt_from_stdin_and_decrypt_base64(target: str, enc_key: str) -> None:
    plaintext = b"hi from a pipe\n"
    encrypted = ok(vaultctl(target, "crypto", "encrypt", enc_key, "--in", "-", stdin=plaintext))
    ciphertext_b64 = encrypted.stdout.strip()
    assert len(encrypted.stdout.splitlines()) == 1  # just the base64, remarks on stderr
    assert base64.b64decode(ciphertext_b64, validate=True)
    decrypted = ok(
        vaultctl(
            target, "crypto", "decrypt", enc_key, "--in", "-", "--in-base64", "--out", "-",
            stdin=encrypted.stdout_bytes,
        )
    )  # fmt: skip
    assert decrypted.stdout_bytes == plaintext


def test_installed_vaultctl_pipe_and_error_line(target: str, enc_key: str, tmp_path: Path) -> None:
    """As a shell runs it: `printf hi | vaultctl crypto encrypt ... --in - | vaultctl crypto
    decrypt ... --in - --in-base64 --out -`, and a wrong AAD as one stderr line, no traceback."""
    plaintext = b"hi \x00\x01 binary"
    common = ["--target", target, "crypto"]
    encrypted = run_vaultctl(
        [*common, "encrypt", enc_key, "--in", "-"], stdin=plaintext, cwd=tmp_path
    )
    assert encrypted.returncode == 0, encrypted.stderr
    assert b"encrypted with" in encrypted.stderr
    decrypted = run_vaultctl(
        [*common, "decrypt", enc_key, "--in", "-", "--in-base64", "--out", "-"],
        stdin=encrypted.stdout,
        cwd=tmp_path,
    )
    assert decrypted.returncode == 0, decrypted.stderr
    assert decrypted.stdout == plaintext

    aad = write(tmp_path / "aad", b"not the one")
    failed = run_vaultctl(
        [*common, "decrypt", enc_key, "--in", "-", "--in-base64", "--aad-file", aad],
        stdin=encrypted.stdout,
        cwd=tmp_path,
    )
    assert failed.returncode == 3
    assert failed.stdout == b""
    lines = failed.stderr.decode().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith("vaultctl: error: DECRYPTION_FAILED: ")
    assert b"Traceback" not in failed.stderr


def test_json_output_is_only_json_on_both_streams(
    target: str, enc_key: str, tmp_path: Path
) -> None:
    listed = run_vaultctl(["--target", target, "--json", "keys", "list", ACCOUNT_ID], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert enc_key in [key["name"] for key in json.loads(listed.stdout)["keys"]]
    assert listed.stderr == b""
    # A failed TLS handshake (this server speaks plaintext) is where gRPC's core logs a line
    # of its own; the caller gets only the JSON error.
    ca = tmp_path / "ca.pem"
    write_certificate(ca, create_ca("unrelated")[0])
    refused = run_vaultctl(
        ["--target", target, "--ca-file", str(ca), "--json", "keys", "list", ACCOUNT_ID],
        cwd=tmp_path,
    )
    assert refused.returncode == 3
    assert refused.stdout == b""
    lines = refused.stderr.decode().splitlines()
    assert len(lines) == 1, refused.stderr
    assert json.loads(lines[0])["error"]["code"] == "UNAVAILABLE"


def test_a_wrong_pin_is_one_line_naming_where_it_came_from(tmp_path: Path) -> None:
    """token status, token init and serve, as a shell runs them, on a token of their own (the
    session's server holds the session's data directory)."""
    data_dir = tmp_path / "vault-data"
    provision(data_dir)

    def run(env: dict[str, str], *args: str) -> tuple[int, list[str], str]:
        done = subprocess.run(
            [str(VAULTCTL), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, done.stderr.splitlines(), done.stdout

    from_env = vault_environment(data_dir, VAULT_HSM__USER_PIN="not-the-pin")
    for command in (["token", "status"], ["token", "init"]):
        code, lines, stdout = run(from_env, *command)
        assert (code, stdout) == (4, ""), lines
        assert len(lines) == 1, lines
        assert lines[0].startswith("vaultctl: error: PIN_INCORRECT: PIN incorrect"), lines
        assert "VAULT_HSM__USER_PIN" in lines[0]
        assert "not-the-pin" not in lines[0]

    pin_file = tmp_path / "user.pin"
    pin_file.write_text("not-the-pin\n")
    pin_file.chmod(0o600)
    from_file = vault_environment(data_dir, VAULT_HSM__USER_PIN_FILE=str(pin_file))
    code, lines, _ = run(from_file, "token", "status")
    assert code == 4 and len(lines) == 1, lines
    assert f"{pin_file} (hsm.user_pin_file)" in lines[0]

    serving = {**from_file, "VAULT_SERVER__LISTEN": f"127.0.0.1:{free_port()}"}
    code, lines, _ = run(serving, "serve")
    assert code == 4, lines
    assert lines[-1].startswith("vaultctl: error: PIN incorrect"), lines
    assert f"{pin_file} (hsm.user_pin_file)" in lines[-1]
    assert "not-the-pin" not in "\n".join(lines)


# -- crypto: sign, data keys, MACs, random ----------------------------------------------------


def test_sign_verify(target: str, sign_key: str, tmp_path: Path) -> None:
    message = b"release 1.2.3 contents"
    source = write(tmp_path / "release.tar", message)
    tampered = write(tmp_path / "tampered.tar", message + b"!")
    signature = tmp_path / "release.sig"
    signed = ok(
        vaultctl(target, "crypto", "sign", sign_key, "--in", source, "--out", str(signature))
    )
    assert f"signed with {sign_key}/versions/1" in signed.stderr
    assert mode(signature) == 0o600

    good = ok(
        vaultctl(
            target, "crypto", "verify", sign_key, "--in", source, "--signature", str(signature)
        )
    )
    assert f"signature matches (version 1 of {sign_key})" in good.stdout

    bad = vaultctl(
        target, "crypto", "verify", sign_key, "--in", tampered, "--signature", str(signature)
    )
    assert bad.exit_code == 1, (bad.stdout, bad.stderr)
    assert "does NOT match" in bad.stdout
    assert "Traceback" not in bad.stderr

    bad_json = vaultctl(
        target, "crypto", "verify", sign_key, "--in", tampered, "--signature", str(signature),
        json_output=True,
    )  # fmt: skip
    assert bad_json.exit_code == 1
    assert json.loads(bad_json.stdout) == {"valid": False, "key_version": f"{sign_key}/versions/1"}

    # The signature is an ordinary ECDSA P-256/SHA-256 signature over the message.
    pem = tmp_path / "pub.pem"
    ok(vaultctl(target, "keys", "public-key", sign_key, "--out", str(pem)))
    public = serialization.load_pem_public_key(pem.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature.read_bytes(), message, ec.ECDSA(hashes.SHA256()))

    # Base64 on stdout by default, read back with --signature-base64.
    printed = ok(vaultctl(target, "crypto", "sign", sign_key, "--in", source))
    b64 = write(tmp_path / "sig.b64", printed.stdout.encode())
    public.verify(base64.b64decode(printed.stdout), message, ec.ECDSA(hashes.SHA256()))
    ok(
        vaultctl(
            target, "crypto", "verify", sign_key, "--in", source, "--signature", b64,
            "--signature-base64",
        )
    )  # fmt: skip


def test_data_key_plaintext_only_in_its_file(target: str, enc_key: str, tmp_path: Path) -> None:
    key_file = tmp_path / "dk.bin"
    sealed = tmp_path / "dk.enc"
    result = ok(
        vaultctl(
            target, "crypto", "data-key", enc_key, "--out", str(sealed),
            "--plaintext-out", str(key_file),
        )
    )  # fmt: skip
    data_key = key_file.read_bytes()
    assert len(data_key) == 32
    assert mode(key_file) == 0o600
    assert mode(sealed) == 0o600
    assert result.stdout == ""
    for text in (result.stdout_bytes, result.stderr_bytes):
        assert data_key not in text
        assert base64.b64encode(data_key) not in text
        assert data_key.hex().encode() not in text

    # The encrypted copy decrypts to the same key.
    recovered = ok(
        vaultctl(target, "crypto", "decrypt", enc_key, "--in", str(sealed), "--out", "-")
    )
    assert recovered.stdout_bytes == data_key

    # Default output and --json: the ciphertext only, never the plaintext key.
    other_file = tmp_path / "dk2.bin"
    record = json_of(
        vaultctl(
            target, "crypto", "data-key", enc_key, "--size", "16",
            "--plaintext-out", str(other_file), json_output=True,
        )
    )  # fmt: skip
    assert set(record) == {"ciphertext", "key_version", "out", "plaintext_out"}
    assert record["plaintext_out"] == str(other_file)
    other_key = other_file.read_bytes()
    assert len(other_key) == 16
    assert mode(other_file) == 0o600
    assert base64.b64encode(other_key).decode() not in json.dumps(record)

    assert vaultctl(target, "crypto", "data-key", enc_key, "--plaintext-out", "-").exit_code == 2


def test_mac_verify_mac(target: str, mac_key: str, tmp_path: Path) -> None:
    payload = write(tmp_path / "payload.json", b'{"amount": 10}')
    altered = write(tmp_path / "altered.json", b'{"amount": 1000}')
    tag = tmp_path / "payload.mac"
    ok(vaultctl(target, "crypto", "mac", mac_key, "--in", payload, "--out", str(tag)))
    assert len(tag.read_bytes()) == 32  # HMAC-SHA256, the MAC purpose's default
    assert mode(tag) == 0o600

    good = ok(vaultctl(target, "crypto", "verify-mac", mac_key, "--in", payload, "--mac", str(tag)))
    assert f"MAC matches (version 1 of {mac_key})" in good.stdout
    bad = vaultctl(target, "crypto", "verify-mac", mac_key, "--in", altered, "--mac", str(tag))
    assert bad.exit_code == 1
    assert "does NOT match" in bad.stdout

    printed = ok(vaultctl(target, "crypto", "mac", mac_key, "--in", payload))
    assert base64.b64decode(printed.stdout) == tag.read_bytes()
    b64 = write(tmp_path / "mac.b64", printed.stdout.encode())
    verdict = json_of(
        vaultctl(
            target, "crypto", "verify-mac", mac_key, "--in", payload, "--mac", b64,
            "--mac-base64", json_output=True,
        )
    )  # fmt: skip
    assert verdict == {"valid": True, "key_version": f"{mac_key}/versions/1"}


def test_random(target: str, tmp_path: Path) -> None:
    out = tmp_path / "seed.bin"
    result = ok(vaultctl(target, "crypto", "random", "--size", "32", "--out", str(out)))
    assert len(out.read_bytes()) == 32
    assert mode(out) == 0o600
    assert result.stdout == ""

    printed = ok(vaultctl(target, "crypto", "random", "--size", "32"))
    second = base64.b64decode(printed.stdout.strip(), validate=True)
    assert len(second) == 32
    assert second != out.read_bytes()

    record = json_of(vaultctl(target, "crypto", "random", "--size", "7", json_output=True))
    assert set(record) == {"data", "out"}
    assert len(base64.b64decode(record["data"])) == 7

    for size in ("0", "1025", "many"):
        assert vaultctl(target, "crypto", "random", "--size", size).exit_code == 2


# -- usage errors, local errors, no plaintext in arguments ------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["keys", "create", "accounts/acme/keys/x"],
            "Missing option '--purpose'",
            id="create-without-purpose",
        ),
        pytest.param(
            ["keys", "create", "acme/x", "--purpose", "MAC"],
            "expected accounts/{account}/keys/{key}",
            id="create-bad-name-shape",
        ),
        pytest.param(
            ["keys", "create", "accounts/acme/keys/x", "--purpose", "NOPE"],
            "Invalid value for '--purpose'",
            id="bad-purpose",
        ),
        pytest.param(["keys", "get"], "Missing argument 'NAME'", id="get-without-name"),
        pytest.param(
            ["keys", "update", "accounts/acme/keys/x"], "nothing to update", id="update-nothing"
        ),
        pytest.param(
            ["keys", "create", "accounts/acme/keys/x", "--purpose", "MAC", "--label", "novalue"],
            "expected KEY=VALUE",
            id="bad-label",
        ),
        pytest.param(
            ["crypto", "encrypt", "accounts/acme/keys/x"],
            "Missing option '--in'",
            id="encrypt-without-in",
        ),
        pytest.param(
            ["crypto", "verify", "accounts/acme/keys/x", "--in", "f"],
            "Missing option '--signature'",
            id="verify-without-signature",
        ),
        pytest.param(["crypto", "random"], "Missing option '--size'", id="random-without-size"),
        pytest.param(
            ["crypto", "encrypt", "k", "--in", "f", "--bogus"],
            "No such option '--bogus'",
            id="unknown-option",
        ),
        pytest.param(["nonsense"], "No such command 'nonsense'", id="unknown-command"),
        pytest.param(
            ["crypto", "encrypt", "k", "--in", "-", "--aad-file", "-"],
            "only one input can be `-`",
            id="stdin-twice",
        ),
        pytest.param(
            ["--json", "crypto", "random", "--size", "4", "--out", "-"],
            "--out - cannot be combined with --json",
            id="json-and-raw-stdout",
        ),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    # Nothing listens on the target: a usage error is found before any call is made.
    result = vaultctl(f"127.0.0.1:{free_port()}", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert result.stdout == ""
    assert result.stderr.startswith("Usage: vaultctl ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # The required --in is missing before the stray word is even looked at.
        (["crypto", "encrypt", "KEY", "hello"], "Missing option '--in'"),
        (["crypto", "encrypt", "KEY", "--in", "FILE", "hello"], "unexpected extra argument"),
        (["crypto", "decrypt", "KEY", "--in", "FILE", "c2VjcmV0"], "unexpected extra argument"),
        (["crypto", "sign", "KEY", "--in", "FILE", "message"], "unexpected extra argument"),
        (["crypto", "mac", "KEY", "--in", "FILE", "data"], "unexpected extra argument"),
        (["crypto", "wrap", "KEY", "--in", "FILE", "material"], "unexpected extra argument"),
        (["crypto", "data-key", "KEY", "secret"], "unexpected extra argument"),
    ],
    ids=["encrypt-no-in", "encrypt", "decrypt", "sign", "mac", "wrap", "data-key"],
)
def test_no_data_as_arguments(
    target: str, enc_key: str, tmp_path: Path, args: list[str], message: str
) -> None:
    source = write(tmp_path / "in", b"from a file")
    replace = {"KEY": enc_key, "FILE": source}
    result = vaultctl(target, *(replace.get(arg, arg) for arg in args))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stdout == ""


def test_local_errors_exit_4(target: str, enc_key: str, tmp_path: Path) -> None:
    missing = vaultctl(target, "crypto", "encrypt", enc_key, "--in", str(tmp_path / "nope"))
    assert_one_line_error(missing, 4, "cannot read plaintext", str(tmp_path / "nope"))
    not_b64 = write(tmp_path / "garbage", b"%%% not base64 %%%")
    bad = vaultctl(target, "crypto", "decrypt", enc_key, "--in", not_b64, "--in-base64")
    assert_one_line_error(bad, 4, "not valid base64")
    unwritable = vaultctl(
        target, "crypto", "random", "--size", "4", "--out", str(tmp_path / "no-dir" / "x")
    )
    assert_one_line_error(unwritable, 4, "cannot write")


def test_unreachable_target_exits_3_quickly() -> None:
    port = free_port()  # bound then released: nothing listens there
    started = time.monotonic()
    result = vaultctl(f"127.0.0.1:{port}", "keys", "get", f"{ACCOUNT}/keys/absent")
    elapsed = time.monotonic() - started
    line = assert_one_line_error(result, 3, f"no vault reachable at 127.0.0.1:{port}")
    assert "(status UNAVAILABLE)" in line
    assert elapsed < 10, elapsed

    as_json = vaultctl(f"127.0.0.1:{port}", "crypto", "random", "--size", "4", json_output=True)
    assert as_json.exit_code == 3
    error = json.loads(as_json.stderr)["error"]
    assert error["code"] == "UNAVAILABLE"
    assert error["exit_code"] == 3


def test_outputs_are_private_even_over_an_existing_file_and_never_follow_symlinks(
    tmp_path: Path,
) -> None:
    from vault.cli._context import CliError
    from vault.cli._io import write_output

    existing = tmp_path / "existing.bin"
    existing.write_bytes(b"old and longer than the secret")
    existing.chmod(0o644)
    with pytest.raises(CliError, match="exists: refusing to overwrite it"):
        write_output(str(existing), b"secret", force=False)
    assert existing.read_bytes() == b"old and longer than the secret"
    write_output(str(existing), b"secret", force=True)
    assert existing.read_bytes() == b"secret"
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600

    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"untouched")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    for force in (False, True):
        with pytest.raises(CliError, match="symbolic link"):
            write_output(str(link), b"secret", force=force)
    assert target.read_bytes() == b"untouched"
    assert link.is_symlink()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "elsewhere.bin",
        "existing.bin",
        "link.bin",
    ]
