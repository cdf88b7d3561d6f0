"""BackupService across two tokens in two data directories and two real servers.

The second token is provisioned on its own and receives the first one's roots by the clone
ceremony (`vaultctl ceremony`); it has a store of its own. A third, independently provisioned
token never received those roots."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.api_calls import expect_error, new_account
from tests.support.clone import clone_roots
from tests.support.harness import VaultServer, provision
from vault.client import VaultClient
from vault.domain.backup import read_bundle, split_lines
from vault.service.backup import verify_bundle

ONE_WORKER = {"VAULT_SERVER__WORKERS": "1"}


def export(client: VaultClient, **selection: Any) -> bytes:
    chunks = list(client.export_backup(**selection))
    assert chunks[-1].entries_done == chunks[-1].entries_estimate
    assert len({chunk.export_id for chunk in chunks}) == 1
    return b"".join(chunk.chunk for chunk in chunks)


def place(server: VaultServer, name: str, bundle: bytes) -> str:
    directory = server.data_dir / "backups"
    directory.mkdir(exist_ok=True)
    (directory / name).write_bytes(bundle)
    return name


def wait_destroyed(client: VaultClient, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.get_key(name).state == 5:  # KEY_STATE_DESTROYED
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} was not destroyed")


class Source:
    """What the first vault made before and after the exports."""

    def __init__(self, client: VaultClient) -> None:
        self.account = new_account(client)
        account = self.account
        make = client.create_key
        self.enc = make(account, "orders", "ENCRYPT_DECRYPT").name
        self.sign = make(account, "signer", "SIGN_VERIFY", "EC_SIGN_P256_SHA256").name
        self.resident = make(account, "in-token", "ENCRYPT_DECRYPT", token_resident=True).name
        self.revoked = make(account, "revoked-later", "SIGN_VERIFY", "EC_SIGN_P256_SHA256").name
        self.destroyed = make(account, "destroyed-later", "ENCRYPT_DECRYPT").name
        self.compromised = make(account, "compromised-later", "ENCRYPT_DECRYPT").name
        # One key of each other root family, so each family's root is shown to have moved.
        self.mac = make(account, "mac", "MAC", "HMAC_SHA256").name
        self.wrapping = make(account, "wrapping", "WRAP_UNWRAP").name
        self.rsa = make(account, "rsa", "ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA1").name
        self.pss = make(account, "pss", "SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256").name
        client.rotate_key(self.enc)
        self.bucket = client.create_bucket(account, "photos").name

        self.ciphertext = client.encrypt(f"{self.enc}/versions/1", b"order 1", b"ctx").ciphertext
        self.leaked = client.encrypt(self.compromised, b"before the leak").ciphertext
        self.tag = client.generate_mac(self.mac, b"tagged").mac
        self.wrapped_material = client.wrap_key(self.wrapping, b"\x07" * 32).wrapped_key
        rsa_public = serialization.load_pem_public_key(client.get_public_key(self.rsa).pem.encode())
        assert isinstance(rsa_public, rsa.RSAPublicKey)
        self.rsa_ciphertext = rsa_public.encrypt(
            b"sealed",
            padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
        )
        self.pss_signature = client.sign(self.pss, message=b"release").signature
        data_key = client.generate_data_key(self.enc, include_plaintext=True)
        self.data_key, self.wrapped_data_key = data_key.plaintext, data_key.ciphertext
        self.signature = client.sign(self.sign, message=b"invoice").signature
        self.old_signature = client.sign(self.revoked, message=b"old").signature
        bucket_key = client.generate_bucket_key(self.bucket)
        self.bucket_key, self.wrapped_bucket_key = bucket_key.plaintext, bucket_key.wrapped

        self.before = export(client, accounts=[account.removeprefix("accounts/")])
        client.revoke_key(self.revoked, "key file leaked", "COMPROMISED")
        client.schedule_key_destruction(self.destroyed, timedelta(0))
        wait_destroyed(client, self.destroyed)
        client.revoke_key(f"{self.compromised}/versions/1", "leaked", "COMPROMISED")
        client.rotate_key(self.compromised)
        self.after = export(client, accounts=[account.removeprefix("accounts/")])


@pytest.fixture(scope="module")
def source(client: VaultClient) -> Source:
    return Source(client)


@pytest.fixture(scope="module")
def replica(
    source: Source, server: VaultServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VaultServer]:
    base = tmp_path_factory.mktemp("replica")
    destination = base / "data"
    clone_roots(server.data_dir, destination, base / "ceremony")
    with VaultServer(destination, ONE_WORKER) as running:
        yield running


@pytest.fixture(scope="module")
def replica_client(replica: VaultServer) -> Iterator[VaultClient]:
    with replica.client() as replica_client:
        yield replica_client


def test_a_bundle_verifies_offline_and_lists_token_resident_keys_as_skipped(
    source: Source,
) -> None:
    verify_bundle(split_lines(source.before))
    verify_bundle(split_lines(source.after))
    entries = read_bundle(split_lines(source.before)).entries
    kinds = {entry["name"]: entry["kind"] for entry in entries}
    assert kinds[source.resident] == "skipped"
    assert kinds[source.enc] == kinds[source.sign] == "key"
    assert kinds[source.bucket] == "bucket"
    after = {entry["name"]: entry for entry in read_bundle(split_lines(source.after)).entries}
    assert after[source.revoked]["kind"] == "tombstone"
    assert after[source.revoked]["state"] == "REVOKED"
    assert after[source.revoked]["reason_code"] == "COMPROMISED"
    assert after[source.destroyed] == {**after[source.destroyed], "state": "DESTROYED"}
    # A revoked version leaves as a tombstone; its key, with the other versions, as a key.
    assert after[f"{source.compromised}/versions/1"]["state"] == "REVOKED"
    versions = after[source.compromised]["versions"]
    assert [version["number"] for version in versions] == [2]
    assert b"wrapped_blob" not in source.after.split(source.destroyed.encode())[1].split(b"\n")[0]


def test_restore_into_a_token_with_the_roots_opens_what_was_made_before_the_export(
    source: Source, replica: VaultServer, replica_client: VaultClient, client: VaultClient
) -> None:
    import grpc

    vault = replica_client
    # Accounts and credentials are not in bundles: keys of an account unknown here wait.
    place(replica, "before.bundle", source.before)
    waiting = vault.restore_backup("before.bundle")
    assert waiting.restored == [] and waiting.tombstones_recorded == 0
    reasons = {item.name: item.reason for item in waiting.skipped}
    assert reasons.pop(source.resident) == "TOKEN_RESIDENT"
    assert set(reasons.values()) == {"UNKNOWN_ACCOUNT"} and source.bucket in reasons
    vault.create_account(source.account.removeprefix("accounts/"))

    place(replica, "after.bundle", source.after)
    summary = vault.verify_backup("after.bundle")
    assert summary.keys == 7 and summary.buckets == 1 and summary.tombstones == 3

    # The later bundle first: it carries the revoked and destroyed keys' tombstones.
    report = vault.restore_backup(
        "after.bundle", expected_signer_fingerprint=summary.signer_fingerprint
    )
    assert sorted(report.restored) == sorted(
        [
            source.enc,
            source.sign,
            source.bucket,
            source.compromised,
            source.mac,
            source.wrapping,
            source.rsa,
            source.pss,
        ]
    )
    assert report.tombstones_recorded == 3
    assert sorted((item.name, item.reason) for item in report.skipped) == [
        (f"{source.compromised}/versions/1", "REVOKED_LATER"),
        (source.resident, "TOKEN_RESIDENT"),
    ]

    assert vault.decrypt(source.enc, source.ciphertext, b"ctx").plaintext == b"order 1"
    assert vault.decrypt(source.enc, source.wrapped_data_key).plaintext == source.data_key
    assert vault.verify(source.sign, source.signature, message=b"invoice")
    assert vault.decrypt_bucket_key(source.bucket, source.wrapped_bucket_key) == source.bucket_key
    assert vault.verify_mac(source.mac, b"tagged", source.tag)
    assert vault.unwrap_key(source.wrapping, source.wrapped_material).key_material == b"\x07" * 32
    assert vault.asymmetric_decrypt(source.rsa, source.rsa_ciphertext).plaintext == b"sealed"
    assert vault.verify(source.pss, source.pss_signature, message=b"release")
    # The compromised version did not come back; its key's newer version did.
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "DECRYPTION_FAILED",
        lambda: vault.decrypt(source.compromised, source.leaked),
    )
    assert vault.encrypt(source.compromised, b"x").key_version == f"{source.compromised}/versions/2"
    # New work goes on the restored keys, with their primary versions.
    assert vault.encrypt(source.enc, b"new").key_version == f"{source.enc}/versions/2"

    # The older bundle, taken before the revocation and the destruction, brings neither back.
    older = vault.restore_backup("before.bundle")
    assert older.restored == []
    skipped = {item.name: item.reason for item in older.skipped}
    assert skipped == {
        source.resident: "TOKEN_RESIDENT",
        source.revoked: "REVOKED_LATER",
        source.destroyed: "DESTROYED_LATER",
        source.enc: "EXISTS",
        source.sign: "EXISTS",
        source.bucket: "EXISTS",
        source.compromised: "EXISTS",
        source.mac: "EXISTS",
        source.wrapping: "EXISTS",
        source.rsa: "EXISTS",
        source.pss: "EXISTS",
    }
    expect_error(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", lambda: vault.get_key(source.revoked))

    # A revocation made here leaves its own tombstone: the older bundle does not count the
    # key as merely existing, and still does not bring it back.
    vault.revoke_key(source.sign, "retired", "CESSATION_OF_OPERATION")
    again = {item.name: item.reason for item in vault.restore_backup("before.bundle").skipped}
    assert again[source.sign] == "REVOKED_LATER"

    # The export log names both bundles as holders of the first version.
    held = [record.export_id for record in client.list_backups(f"{source.enc}/versions/1")]
    assert held == [
        verify_bundle(split_lines(source.before)).export_id,
        verify_bundle(split_lines(source.after)).export_id,
    ]


def test_a_token_that_never_received_the_roots_cannot_use_a_bundle(
    source: Source, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import grpc

    other = tmp_path_factory.mktemp("stranger") / "data"
    provision(other)
    with VaultServer(other, ONE_WORKER) as stranger, stranger.client() as vault:
        place(stranger, "before.bundle", source.before)
        vault.verify_backup("before.bundle")  # the bundle itself is fine
        error = expect_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            "ROOT_GENERATION_MISSING",
            lambda: vault.restore_backup("before.bundle"),
        )
        assert "root generation 1" in str(error)
        assert "clone ceremony" in str(error)
        expect_error(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", lambda: vault.get_key(source.enc))


def test_an_altered_bundle_and_a_path_outside_the_backup_directory_are_refused(
    source: Source, replica: VaultServer, replica_client: VaultClient
) -> None:
    import grpc

    tampered = source.before.replace(b'"state":"ENABLED"', b'"state":"DISABLED"', 1)
    place(replica, "tampered.bundle", tampered)
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "BACKUP_INVALID",
        lambda: replica_client.restore_backup("tampered.bundle"),
    )
    for name in ("../vault.db", "/etc/passwd", ".hidden"):
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            lambda name=name: replica_client.verify_backup(name),
        )
    assert os.path.exists(replica.data_dir / "vault.db")


def test_only_the_admin_role_exports_or_restores_and_every_call_is_audited(
    server: VaultServer, client: VaultClient
) -> None:
    from tests.support.security_helpers import (
        add_access_key,
        expect_denied,
        expect_unauthenticated,
        fresh_client,
    )
    from tests.support.security_helpers import new_account as new_security_account

    account = new_security_account(client)
    member = add_access_key(client, account)  # full access to its own account, not admin
    with fresh_client(server, member.credentials) as caller:
        expect_denied(lambda: list(caller.export_backup(accounts=[account.split("/")[1]])))
        expect_denied(lambda: caller.restore_backup("x.bundle"))
        expect_denied(lambda: caller.verify_backup("x.bundle"))
        expect_denied(lambda: caller.list_backups(f"{account}/keys/k/versions/1"))
    with fresh_client(server, None) as anonymous:
        expect_unauthenticated(lambda: list(anonymous.export_backup()))

    started = datetime.now(UTC)
    export(client, accounts=[account.split("/")[1]])
    events = [
        (event.method.rpartition("/")[2], event.outcome)
        for event in client.iter_audit_events(start_time=started, method="ExportBackup")
    ]
    assert events == [("ExportBackup", "STARTED"), ("ExportBackup", "OK")]


def test_a_selection_by_name_prefix_exports_only_the_matching_keys_and_buckets(
    source: Source, client: VaultClient
) -> None:
    bundle = export(client, keys=[f"{source.account}/keys/o"], buckets=[source.bucket])
    verify_bundle(split_lines(bundle))
    entries = read_bundle(split_lines(bundle)).entries
    assert [(entry["kind"], entry["name"]) for entry in entries] == [
        ("key", source.enc),
        ("bucket", source.bucket),
    ]
    header = verify_bundle(split_lines(bundle)).bundle.header
    assert header["selection"] == {
        "accounts": [],
        "keys": [f"{source.account}/keys/o"],
        "buckets": [source.bucket],
    }


def test_an_export_is_audited_under_the_request_id_the_caller_gave(
    server: VaultServer, client: VaultClient
) -> None:
    from vault.gen.vault.v1 import backup_service_pb2, backup_service_pb2_grpc

    request_id = f"backup-{time.time_ns()}"
    account = new_account(client).removeprefix("accounts/")
    started = datetime.now(UTC)
    with server.channel() as channel:
        stub = backup_service_pb2_grpc.BackupServiceStub(channel)
        request = backup_service_pb2.ExportBackupRequest(
            selection=backup_service_pb2.BackupSelection(accounts=[account])
        )
        chunks = list(stub.ExportBackup(request, metadata=(("x-request-id", request_id),)))
    assert chunks
    events = list(client.iter_audit_events(start_time=started, method="ExportBackup"))
    assert [(event.request_id, event.outcome) for event in events] == [
        (request_id, "STARTED"),
        (request_id, "OK"),
    ]
