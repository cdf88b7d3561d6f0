"""StreamRestoreBackup against a real server and token: progress up to the bundle's total, the
result RestoreBackup gives, a restore its caller abandons (streamed, or unary past its
deadline), and the admin role checked before the bundle is read.

The bundles come from the session's vault; a second token receives its roots by the clone
ceremony and restores them (as in tests/test_backup.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from tests.support.api_calls import new_account
from tests.support.clone import clone_roots
from tests.support.harness import VaultServer
from tests.test_backup import ONE_WORKER, export, place
from vault.client import VaultClient
from vault.gen.vault.v1 import backup_service_pb2, backup_service_pb2_grpc

# Enough keys that a restore outlasts its caller's cancel by far, also on a loaded machine
# (about a millisecond per key, checked for a cancel every 50: about a second in all).
MANY_KEYS = 1000


@dataclass
class Bundles:
    mixed_account: str
    mixed: bytes
    many_account: str
    many: bytes
    # key name -> a ciphertext it made, for every key of `many`
    ciphertexts: dict[str, bytes]


@pytest.fixture(scope="module")
def bundles(client: VaultClient) -> Bundles:
    mixed = new_account(client)
    for index in range(3):
        client.create_key(mixed, f"enc{index}", "ENCRYPT_DECRYPT")
    client.create_key(mixed, "in-token", "ENCRYPT_DECRYPT", token_resident=True)
    revoked = client.create_key(mixed, "revoked", "SIGN_VERIFY", "EC_SIGN_P256_SHA256").name
    client.revoke_key(revoked, "retired", "CESSATION_OF_OPERATION")
    client.create_bucket(mixed, "photos")

    many = new_account(client)
    names = [
        client.create_key(many, f"k{index:04d}", "ENCRYPT_DECRYPT").name
        for index in range(MANY_KEYS)
    ]
    sealed = client.batch_encrypt((name, f"secret {name}".encode()) for name in names)
    ciphertexts = {}
    for name, result in zip(names, sealed, strict=True):
        assert not isinstance(result, Exception)
        ciphertexts[name] = result.ciphertext
    return Bundles(
        mixed,
        export(client, accounts=[mixed.removeprefix("accounts/")]),
        many,
        export(client, accounts=[many.removeprefix("accounts/")]),
        ciphertexts,
    )


@pytest.fixture(scope="module")
def replica(
    bundles: Bundles, server: VaultServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VaultServer]:
    yield from replica_of(bundles, server, tmp_path_factory, "stream-replica")


@pytest.fixture(scope="module")
def unary_replica(
    bundles: Bundles, server: VaultServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VaultServer]:
    """A second replica: a stopped restore needs a store that holds none of `many` yet."""
    yield from replica_of(bundles, server, tmp_path_factory, "unary-replica")


def replica_of(
    bundles: Bundles, server: VaultServer, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[VaultServer]:
    base = tmp_path_factory.mktemp(name)
    clone_roots(server.data_dir, base / "data", base / "ceremony", name)
    with VaultServer(base / "data", ONE_WORKER) as running:
        with running.client() as admin:
            admin.create_account(bundles.mixed_account.removeprefix("accounts/"))
            admin.create_account(bundles.many_account.removeprefix("accounts/"))
        place(running, "mixed.bundle", bundles.mixed)
        place(running, "many.bundle", bundles.many)
        yield running


def unary_restore(server: VaultServer, name: str) -> backup_service_pb2.RestoreBackupResponse:
    with server.channel() as channel:
        stub = backup_service_pb2_grpc.BackupServiceStub(channel)
        response: backup_service_pb2.RestoreBackupResponse = stub.RestoreBackup(
            backup_service_pb2.RestoreBackupRequest(file_name=name)
        )
    return response


def without_report_file(
    response: backup_service_pb2.RestoreBackupResponse,
) -> backup_service_pb2.RestoreBackupResponse:
    copy = backup_service_pb2.RestoreBackupResponse()
    copy.CopyFrom(response)
    copy.ClearField("report_file_name")
    return copy


def test_a_streamed_restore_reports_progress_up_to_the_total_and_ends_with_the_result(
    bundles: Bundles, replica: VaultServer
) -> None:
    steps: list[backup_service_pb2.RestoreBackupProgress] = []
    with replica.client() as admin:
        result = admin.restore_backup("mixed.bundle", progress=steps.append)
        # First the bundle's check, before its total is known: its size in bytes.
        checking = steps.pop(0)
        assert (checking.entries_total, checking.bytes_checked) == (0, 0)
        assert checking.bytes_total == len(bundles.mixed)
        # Three keys and a bucket; the revoked key leaves a tombstone, the token-resident
        # one a skipped entry.
        total = 6
        assert steps[0].entries_total == total and steps[0].entries_done == 0
        assert not steps[0].HasField("result")
        assert not any(step.bytes_total for step in steps)
        done = [step.entries_done for step in steps]
        assert done == sorted(done) and done[-1] == total
        assert all(step.entries_total == total for step in steps)
        assert steps[-1].HasField("result") and steps[-1].result == result
        assert not any(step.HasField("result") for step in steps[:-1])
        assert (steps[-1].restored, steps[-1].skipped) == (4, 1)
        assert sorted(result.restored) == sorted(
            [*(f"{bundles.mixed_account}/keys/enc{i}" for i in range(3)),
             f"{bundles.mixed_account}/buckets/photos"]
        )  # fmt: skip
        assert [(item.name, item.reason) for item in result.skipped] == [
            (f"{bundles.mixed_account}/keys/in-token", "TOKEN_RESIDENT")
        ]
        assert (result.restored_count, result.skipped_count) == (4, 1)
        assert result.tombstones_recorded == 1
        assert result.report_file_name.startswith("mixed.bundle.restore-")

        # Again, streamed and unary: the same answer (everything there already).
        again = admin.restore_backup("mixed.bundle")
    unary = unary_restore(replica, "mixed.bundle")
    assert without_report_file(again) == without_report_file(unary)
    assert unary.skipped_by_reason == {"EXISTS": 4, "TOKEN_RESIDENT": 1}
    assert unary.restored_count == 0 and unary.tombstones_recorded == 0


class Abandon(Exception):
    """Raised by the progress callback: the caller stops waiting."""


def abandon_many(
    admin: VaultClient, leave_at: Callable[[backup_service_pb2.RestoreBackupProgress], bool]
) -> list[backup_service_pb2.RestoreBackupProgress]:
    """Stream the restore of many.bundle and leave it, from the progress callback, at the
    first message leave_at is true of; the messages received up to there."""
    steps: list[backup_service_pb2.RestoreBackupProgress] = []

    def progress(step: backup_service_pb2.RestoreBackupProgress) -> None:
        steps.append(step)
        if leave_at(step):
            raise Abandon

    with pytest.raises(Abandon):
        admin.restore_backup("many.bundle", progress=progress)
    return steps


def report_files(server: VaultServer, bundle: str) -> set[Path]:
    return set((server.data_dir / "backups").glob(f"{bundle}.restore-*.jsonl"))


def test_a_restore_its_caller_abandons_stops_leaving_whole_keys_and_a_second_run_completes_it(
    bundles: Bundles, replica: VaultServer
) -> None:
    before = report_files(replica, "many.bundle")
    started = datetime.now(UTC)
    with replica.client() as admin:
        # Once the check is over and the restore began.
        steps = abandon_many(admin, lambda step: step.entries_total > 0)
        assert steps[-1].entries_total == MANY_KEYS and not steps[-1].HasField("result")
        assert_stopped_then_completed(
            admin, replica, bundles, before, started, "StreamRestoreBackup"
        )


def test_a_restore_abandoned_at_the_first_message_of_its_check_changes_nothing(
    bundles: Bundles, replica: VaultServer
) -> None:
    before = report_files(replica, "many.bundle")
    started = datetime.now(UTC)
    with replica.client() as admin:
        keys_before = [key.name for key in admin.iter_keys(bundles.many_account)]
        steps = abandon_many(admin, lambda step: True)
        assert steps[0].entries_total == 0 and steps[0].bytes_total == len(bundles.many)
        assert stopped_call_outcomes(admin, started, "StreamRestoreBackup") == [
            "STARTED",
            "CANCELLED",
        ]
        # The server stops at its next step, during the check or, on a loaded machine, at
        # the start of the restore, before any batch (whose report then lists nothing).
        for report in report_files(replica, "many.bundle") - before:
            assert report.read_text() == ""
        assert [key.name for key in admin.iter_keys(bundles.many_account)] == keys_before


def stopped_call_outcomes(admin: VaultClient, started: datetime, method: str) -> list[str]:
    """The audit outcomes of the calls of method since started, once the last one ended
    (the server records a stopped call when it notices, after its caller left)."""
    deadline = time.monotonic() + 60
    while True:
        outcomes = [
            event.outcome for event in admin.iter_audit_events(start_time=started, method=method)
        ]
        if outcomes and outcomes[-1] != "STARTED":
            return outcomes
        assert time.monotonic() < deadline, f"the stopped call recorded only {outcomes}"
        time.sleep(0.1)


def test_a_unary_restore_whose_deadline_passes_stops_and_a_second_run_completes_it(
    bundles: Bundles, unary_replica: VaultServer
) -> None:
    before = report_files(unary_replica, "many.bundle")
    started = datetime.now(UTC)
    with unary_replica.channel() as channel:
        stub = backup_service_pb2_grpc.BackupServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            # The restore takes about a second (see MANY_KEYS); a shorter deadline might
            # pass before a loaded server even starts the call.
            stub.RestoreBackup(
                backup_service_pb2.RestoreBackupRequest(file_name="many.bundle"), timeout=0.3
            )
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with unary_replica.client() as admin:
        assert_stopped_then_completed(
            admin, unary_replica, bundles, before, started, "RestoreBackup"
        )


def assert_stopped_then_completed(
    admin: VaultClient,
    server: VaultServer,
    bundles: Bundles,
    before: set[Path],
    started: datetime,
    method: str,
) -> None:
    """The restore of `many` its caller left stops (while it checks the bundle, or before
    its next batch, having then written the report of what it did); what it restored is
    whole, the rest absent; a second run restores the rest."""
    import json

    assert stopped_call_outcomes(admin, started, method) == ["STARTED", "CANCELLED"]
    reports = report_files(server, "many.bundle") - before
    done = []
    if reports:
        (report,) = reports
        lines = [json.loads(line) for line in report.read_text().splitlines()]
        assert {line["outcome"] for line in lines} <= {"restored"}
        done = [line["name"] for line in lines]
    assert len(done) < MANY_KEYS
    assert done == sorted(bundles.ciphertexts)[: len(done)]  # in bundle order

    # What was restored is whole (its blob opens: it decrypts); the rest is absent.
    assert decrypted(admin, bundles, done) == done
    listed = [key.name for key in admin.iter_keys(bundles.many_account)]
    assert sorted(listed) == sorted(done)

    # Running it again restores the rest and skips what the first run restored.
    result = admin.restore_backup("many.bundle")
    assert result.restored_count == MANY_KEYS - len(done)
    assert dict(result.skipped_by_reason) == ({"EXISTS": len(done)} if done else {})
    everything = sorted(bundles.ciphertexts)
    assert decrypted(admin, bundles, everything) == everything


def decrypted(admin: VaultClient, bundles: Bundles, names: list[str]) -> list[str]:
    """The names among names whose ciphertext decrypts to what was sealed, in order."""
    opened = admin.batch_decrypt((name, bundles.ciphertexts[name]) for name in names)
    return [
        name
        for name, result in zip(names, opened, strict=True)
        if not isinstance(result, Exception) and result.plaintext == f"secret {name}".encode()
    ]


def test_only_the_admin_role_streams_a_restore_and_is_refused_before_the_bundle_is_read(
    replica: VaultServer,
) -> None:
    from tests.support.security_helpers import add_access_key, expect_denied, fresh_client

    with replica.client() as admin:
        account = new_account(admin)
        member = add_access_key(admin, account)  # full access to its own account, not admin
    with fresh_client(replica, member.credentials) as caller:
        # A missing bundle and a present one: the same refusal, so nothing was looked up.
        for name in ("many.bundle", "no-such.bundle", "../vault.db"):
            error = expect_denied(lambda name=name: caller.restore_backup(name))
            assert error.metadata["method"].endswith("StreamRestoreBackup")


def test_the_sdk_restores_through_restore_backup_on_a_server_without_the_stream(
    bundles: Bundles, replica: VaultServer
) -> None:
    """A server that predates StreamRestoreBackup answers UNIMPLEMENTED: the SDK asks
    RestoreBackup instead (a server here that serves only RestoreBackup)."""
    from concurrent import futures

    class OnlyUnary(backup_service_pb2_grpc.BackupServiceServicer):
        def RestoreBackup(
            self, request: backup_service_pb2.RestoreBackupRequest, context: grpc.ServicerContext
        ) -> backup_service_pb2.RestoreBackupResponse:
            return unary_restore(replica, request.file_name)

    old = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    backup_service_pb2_grpc.add_BackupServiceServicer_to_server(OnlyUnary(), old)
    port = old.add_insecure_port("127.0.0.1:0")
    old.start()
    try:
        with VaultClient(f"127.0.0.1:{port}", timeout=5) as client:
            result = client.restore_backup("mixed.bundle")
    finally:
        old.stop(None)
    assert result.bundle.export_id and result.skipped_by_reason["TOKEN_RESIDENT"] == 1
