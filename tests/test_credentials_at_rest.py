"""Threat model claim 4: the store holds nothing a thief could authenticate with.

Secrets and API tokens the vault issued are searched for in the raw bytes of the database
file (and its write-ahead log) and in the audit records, in every encoding they are handed
out in; the token's credential key is what turns the stored salts and hashes into secrets.
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

from tests.support.harness import VaultServer
from vault.client import AccessKeyCredentials, ApiKeyCredentials


def _encodings(secret: str) -> list[bytes]:
    raw = secret.encode("ascii")
    return [raw, raw.hex().encode(), base64.b64encode(raw)]


def _database_bytes(data_dir: Path) -> bytes:
    # A checkpoint moves the write-ahead log into the main file; read both anyway.
    with sqlite3.connect(data_dir / "vault.db") as connection:
        connection.execute("PRAGMA wal_checkpoint(FULL)")
    return b"".join(
        path.read_bytes()
        for path in (data_dir / "vault.db", data_dir / "vault.db-wal")
        if path.exists()
    )


def test_no_issued_secret_or_token_is_stored(server: VaultServer) -> None:
    with server.client() as admin:
        admin.create_account("at-rest")
        key = admin.create_key("accounts/at-rest", "k", "MAC").name
        issued = admin.create_access_key("accounts/at-rest")
        reset = admin.reset_secret_key(issued.access_key.name)
        api = admin.create_api_key("accounts/at-rest", [(["GenerateMac"], ["keys/k"])])
    secrets = [issued.secret_key, reset.secret_key, api.token, server.credentials.secret_key]
    # Use each, so authentication and the audit log have seen them too.
    with server.client(
        AccessKeyCredentials(issued.access_key.access_key_id, reset.secret_key)
    ) as c:
        c.generate_mac(key, b"data")
    with server.client(ApiKeyCredentials(api.token)) as c:
        c.generate_mac(key, b"data")
    stored = _database_bytes(server.data_dir)
    # The public ids are there: the search looks at the right bytes.
    assert issued.access_key.access_key_id.encode() in stored
    assert api.api_key.api_key_id.encode() in stored
    for secret in secrets:
        for encoded in _encodings(secret):
            assert encoded not in stored
    # The part after the prefix is the secret half of an API token; not even that is stored.
    secret_half = api.token.split("_")[2].encode()
    assert secret_half not in stored
    with server.client() as admin:
        events = b"".join(e.SerializeToString() for e in admin.iter_audit_events())
    assert events
    for secret in secrets:
        assert secret.encode() not in events
