"""The server process itself: health and reflection, a supervisor that restarts killed
workers, a clean exit on SIGTERM, and no plaintext listener on a non-loopback address."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.support.api_calls import ensure_account
from tests.support.harness import ROOT, VaultServer, free_port, provision, vault_environment
from vault.client import VaultClient, VaultClientError
from vault.gen.vault.v1 import resources_pb2 as res

KEY_METHODS = {
    "CreateKey", "GetKey", "ListKeys", "UpdateKey", "RotateKey", "ListKeyVersions",
    "GetPublicKey", "EnableKey", "DisableKey", "RevokeKey", "ScheduleKeyDestruction",
    "CancelKeyDestruction", "ListRevocations", "GetRevocationFeed", "StreamRevocationFeed",
    "CreateImportJob", "GetImportJob", "ListImportJobs", "ImportKeyVersion",
}  # fmt: skip
CRYPTO_METHODS = {
    "Encrypt", "Decrypt", "GenerateDataKey", "ReEncrypt", "WrapKey", "UnwrapKey", "Sign",
    "Verify", "AsymmetricDecrypt", "GenerateMac", "VerifyMac", "GenerateRandom",
    "BatchEncrypt", "BatchDecrypt", "BatchSign", "BatchVerify", "BatchGenerateDataKey",
}  # fmt: skip
BUCKET_METHODS = {
    "CreateBucket", "GetBucket", "ListBuckets", "UpdateBucket", "DeleteBucket",
    "CancelBucketDeletion", "RotateBucketMasterKey", "DisableBucketMasterKeyVersion",
    "EnableBucketMasterKeyVersion", "GenerateBucketKey", "DecryptBucketKey",
    "BatchDecryptBucketKey", "ListBucketMasterKeyVersions",
}  # fmt: skip


def children(pid: int) -> set[int]:
    """Direct child processes of pid, from /proc (psutil is not a dependency)."""
    found: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            found.update(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return found


def start_time(pid: int) -> int:
    """Clock ticks after boot at which pid started (field 22 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listeners(port: int) -> int:
    """How many sockets listen on port (each worker binds its own, with SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def workers(server: VaultServer) -> list[int]:
    """The worker pids, oldest first (worker 0, which runs the destruction job, starts first)."""
    assert server.process is not None
    return sorted(children(server.process.pid), key=start_time)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


# -- health and reflection (the session's server) --------------------------------------------


@pytest.mark.parametrize("service", ["", "vault.v1.KeyService", "vault.v1.CryptoService"])
def test_health_reports_serving(server: VaultServer, service: str) -> None:
    with grpc.insecure_channel(server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(server: VaultServer) -> None:
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="vault.v1.NoSuchService"), timeout=5
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(server: VaultServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        services = {service.name for service in reply.list_services_response.service}
        assert services == {
            "vault.v1.KeyService",
            "vault.v1.CryptoService",
            "vault.v1.BucketService",
            "vault.v1.IdentityService",
            "vault.v1.AuditService",
            "vault.v1.ServerService",
            "vault.v1.BackupService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        # A client that knows nothing of vault.v1 learns every method from the server.
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        keys = pool.FindServiceByName("vault.v1.KeyService")
        crypto = pool.FindServiceByName("vault.v1.CryptoService")
        assert {m.name for m in keys.methods} == KEY_METHODS
        assert {m.name for m in crypto.methods} == CRYPTO_METHODS
        buckets = pool.FindServiceByName("vault.v1.BucketService")
        assert {m.name for m in buckets.methods} == BUCKET_METHODS
        encrypt = crypto.methods_by_name["Encrypt"]
        assert encrypt.input_type.full_name == "vault.v1.EncryptRequest"
        assert "plaintext_crc32c" in encrypt.input_type.fields_by_name
        assert pool.FindMessageTypeByName("vault.v1.Key").fields_by_name["purpose"].enum_type


# -- worker supervision and shutdown (servers of their own) ----------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[VaultServer]:
    provision(tmp_path)
    server = VaultServer(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()  # no-op when the test stopped it


def encrypt_round_trip_on_new_connection(server: VaultServer, key: str) -> None:
    # A local subchannel pool: gRPC would otherwise reuse a connection of another channel to
    # the same target, possibly one to the killed worker.
    options = [("grpc.use_local_subchannel_pool", 1)]
    # Linux resets the connections still queued on a listener that closes (unless the host
    # sets net.ipv4.tcp_migrate_req=1), so a connection made at the moment a worker dies or
    # a replacement starts may be reset once; the next one must succeed.
    for attempt in range(3):
        with server.client(timeout=10, options=options) as client:
            try:
                sealed = client.encrypt(key, b"still serving")
            except VaultClientError as error:
                assert error.code is grpc.StatusCode.UNAVAILABLE, error
                assert attempt < 2, f"three new connections failed: {error}"
                time.sleep(0.2)
                continue
            assert client.decrypt(key, sealed.ciphertext).plaintext == b"still serving"
            return


def destroyed_soon(client: VaultClient, key: str) -> bool:
    """Schedule key's destruction with no wait: True once the destruction job destroyed it."""
    client.schedule_key_destruction(key, timedelta(0))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if client.get_key(key).state == res.KEY_STATE_DESTROYED:
            return True
        time.sleep(0.1)
    return False


def test_killed_workers_are_restarted_and_requests_keep_succeeding(
    own_server: VaultServer,
) -> None:
    server = own_server
    assert server.process is not None
    supervisor = server.process.pid
    original = workers(server)
    assert len(original) == 2
    assert listeners(server.port) == 2
    with server.client(timeout=10) as client:
        ensure_account(client, "accounts/supervision")
        key = client.create_key("accounts/supervision", "k", "ENCRYPT_DECRYPT").name
        for victim in original:  # worker 0 first: it also runs the destruction job
            survivors = set(workers(server)) - {victim}
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda v=victim: not alive(v), 10, f"worker {victim} to die")
            # While the supervisor restarts it, new connections reach the surviving worker.
            for _ in range(10):
                encrypt_round_trip_on_new_connection(server, key)
            wait_for(
                lambda v=victim: len(children(supervisor)) == 2 and v not in children(supervisor),
                20,
                "the supervisor to restart the killed worker",
            )
            wait_for(lambda: listeners(server.port) == 2, 20, "the new worker to listen")
            replacement = children(supervisor) - survivors
            assert len(replacement) == 1 and victim not in replacement
            for _ in range(10):
                encrypt_round_trip_on_new_connection(server, key)
            # An existing channel may have been connected to the dead worker: it reconnects.
            for _ in range(3):
                try:
                    sealed = client.encrypt(key, b"old channel")
                    break
                except VaultClientError as error:
                    assert error.code is grpc.StatusCode.UNAVAILABLE, error
            else:
                pytest.fail("the client's channel never reconnected")
            assert client.decrypt(key, sealed.ciphertext).plaintext == b"old channel"
        # The destruction job came back with the restarted worker 0.
        doomed = client.create_key("accounts/supervision", "doomed", "ENCRYPT_DECRYPT").name
        assert destroyed_soon(client, doomed), "no destruction job after the restart"
    assert server.process.poll() is None
    log = server.log()
    assert log.count("died unexpectedly") == 2, log
    assert all(f"pid {pid}" in log for pid in original), log
    assert "Traceback" not in log, log

    # SIGTERM to the whole process group, as `kill -TERM -<pgid>` or a service manager does.
    current = workers(server)
    server.stop()
    assert server.process.returncode == 0
    assert not [pid for pid in current if alive(pid)]


def test_sigterm_to_the_supervisor_stops_every_worker(own_server: VaultServer) -> None:
    server = own_server
    assert server.process is not None
    pids = workers(server)
    assert len(pids) == 2
    with server.client() as client:
        client.generate_random(16)
    os.kill(server.process.pid, signal.SIGTERM)  # the supervisor only; it stops its workers
    assert server.process.wait(timeout=30) == 0
    assert not [pid for pid in pids if alive(pid)]
    # Nothing listens on the port any more.
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    log = server.log()
    assert "Traceback" not in log, log
    assert "did not stop in time" not in log, log


def test_sigterm_lets_in_flight_calls_finish(tmp_path: Path) -> None:
    """A call under way when SIGTERM arrives gets server.drain_seconds to complete: here the
    creation of a token-resident RSA-4096 key, whose generation takes about a second (longer
    under load: the drain is set far above that, so the outcome does not depend on load)."""
    provision(tmp_path)
    server = VaultServer(tmp_path, extra_env={"VAULT_SERVER__DRAIN_SECONDS": "120"}).start()
    assert server.process is not None
    outcome: list[object] = []
    finished_at: list[float] = []
    with server.client(timeout=30) as client:
        ensure_account(client, "accounts/shutdown")

    def create() -> None:
        with server.client(timeout=180) as client:
            try:
                outcome.append(
                    client.create_key(
                        "accounts/shutdown", "slow", "SIGN_VERIFY", "RSA_SIGN_PSS_4096_SHA256",
                        token_resident=True,
                    )
                )  # fmt: skip
            except VaultClientError as error:
                outcome.append(error)
            finished_at.append(time.monotonic())

    thread = threading.Thread(target=create)
    try:
        with server.client() as client:
            thread.start()
            wait_for(
                lambda: bool(list(client.iter_keys("accounts/shutdown"))),
                10,
                "the key's PENDING row",
            )
        stopped_at = time.monotonic()
        server.stop()  # SIGTERM to the process group
        thread.join(timeout=180)
        assert server.process.returncode == 0
        assert len(outcome) == 1, outcome
        assert isinstance(outcome[0], res.Key), outcome
        assert finished_at[0] > stopped_at
    finally:
        server.kill()
    restarted = VaultServer(server.data_dir).start()
    try:
        with restarted.client() as client:
            # Nothing was left half-created.
            key = client.get_key("accounts/shutdown/keys/slow")
            versions = client.list_key_versions(key.name)
            assert [v.state for v in versions] == [res.VERSION_STATE_ENABLED]
            client.sign(key.name, message=b"after restart")
            assert "discarded" not in restarted.log()
    finally:
        restarted.stop()


def test_workers_do_not_outlive_a_killed_supervisor(own_server: VaultServer) -> None:
    server = own_server
    assert server.process is not None
    pids = workers(server)
    os.kill(server.process.pid, signal.SIGKILL)  # the supervisor only, no chance to clean up
    server.process.wait(timeout=10)
    # PR_SET_PDEATHSIG turns the supervisor's death into SIGTERM for each worker.
    wait_for(lambda: not [pid for pid in pids if alive(pid)], 20, "orphaned workers to exit")
    assert listeners(server.port) == 0


# -- listen address --------------------------------------------------------------------------

# Calls serve() for each address; serve() must raise before forking anything. Should it ever
# start serving instead, the subprocess blocks and the timeout below kills its process group.
LISTEN_PROBE = """
import json, sys
from vault.config import Settings
from vault.transport.server import ListenAddressError
from vault.app import serve
results = {}
for address in json.load(sys.stdin):
    try:
        serve(Settings(server={"listen": address}))
        results[address] = "returned"
    except ListenAddressError as error:
        results[address] = "ListenAddressError: " + str(error)
    except Exception as error:
        results[address] = type(error).__name__ + ": " + str(error)
print(json.dumps(results))
"""
PUBLIC_ADDRESSES = [
    "0.0.0.0:{port}",
    "[::]:{port}",
    "10.1.2.3:{port}",
    "192.168.0.1:{port}",
    "[2001:db8::1]:{port}",
    "example.com:{port}",
    "127.0.0.1.nip.io:{port}",
    ":{port}",
]


def test_non_loopback_listen_addresses_are_refused(tmp_path: Path) -> None:
    port = free_port()
    addresses = [address.format(port=port) for address in PUBLIC_ADDRESSES]
    probe = subprocess.Popen(
        [sys.executable, "-c", LISTEN_PROBE],
        env=vault_environment(tmp_path),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = probe.communicate(json.dumps(addresses), timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(probe.pid, signal.SIGKILL)
        probe.communicate()
        pytest.fail("serve() did not refuse a non-loopback address: it started serving")
    assert probe.returncode == 0, err
    results = json.loads(out)
    for address in addresses:
        assert results[address].startswith("ListenAddressError: "), (address, results[address])
    for address in addresses[:-1]:
        assert "loopback" in results[address], results[address]
    assert not (tmp_path / "vault.db").exists(), "serve() touched the store before refusing"


def test_serve_process_exits_with_an_error_on_a_public_address(tmp_path: Path) -> None:
    provision(tmp_path)
    port = free_port()
    env = vault_environment(tmp_path, VAULT_SERVER__LISTEN=f"0.0.0.0:{port}")
    done = subprocess.run(
        [sys.executable, "-c", "from vault.config import Settings\n"
         "from vault.app import serve\nserve(Settings())\n"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        start_new_session=True,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ListenAddressError" in done.stderr and "not a loopback address" in done.stderr
    # Nothing listens there.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)


# -- health follows the store ----------------------------------------------------------------

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_on_new_connection(server: VaultServer) -> int:
    """One health check on a new connection; it must answer within its 0.5 s deadline."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(server.target, options=options) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=0.5
        )
    return int(reply.status)


def test_health_answers_at_once_and_says_not_serving_while_the_store_is_locked(
    own_server: VaultServer,
) -> None:
    """Another process holds the database's write lock: the vault's calls wait for it and
    fill every request thread, yet each health check answers within its deadline, and says
    NOT_SERVING until the lock is released."""
    server = own_server
    with server.client(timeout=30) as client:
        ensure_account(client, "accounts/locked")
        client.create_key("accounts/locked", "before", "ENCRYPT_DECRYPT")
    blocked: list[object] = []

    def create(index: int) -> None:
        with server.client(timeout=30, options=[("grpc.use_local_subchannel_pool", 1)]) as c:
            try:
                blocked.append(c.create_key("accounts/locked", f"k{index}", "ENCRYPT_DECRYPT"))
            except VaultClientError as error:
                blocked.append(error)

    lock = sqlite3.connect(server.data_dir / "vault.db", isolation_level=None, timeout=10)
    threads = [threading.Thread(target=create, args=(index,)) for index in range(12)]
    try:
        lock.execute("BEGIN EXCLUSIVE")
        for thread in threads:
            thread.start()
        statuses = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            statuses.append(health_on_new_connection(server))
            time.sleep(0.1)
        assert statuses[-10:] == [NOT_SERVING] * 10, statuses
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    for thread in threads:
        thread.join(timeout=60)
    wait_for(
        lambda: health_on_new_connection(server) == health_pb2.HealthCheckResponse.SERVING,
        10,
        "SERVING once the lock is released",
    )
    # The calls that waited for the lock went through once it was free.
    assert len(blocked) == 12 and all(isinstance(key, res.Key) for key in blocked), blocked


# -- one vault per data directory and per port -------------------------------------------------


def vaultctl_refused(env: dict[str, str], *args: str) -> str:
    """Run `vaultctl args...`, which must exit non-zero on its own with one line on stderr
    and nothing on stdout; returns that line. A command that serves instead is killed."""
    command = subprocess.Popen(
        [sys.executable, "-m", "vault.cli", *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = command.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(command.pid, signal.SIGKILL)
        out, err = command.communicate()
        pytest.fail(f"vaultctl {' '.join(args)} was not refused:\n{out}{err}")
    assert command.returncode == 4, (command.returncode, out, err)
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaultctl: error: "), err
    return lines[0]


def assert_still_serving(server: VaultServer) -> None:
    assert server.process is not None and server.process.poll() is None
    assert listeners(server.port) == 2
    with grpc.insecure_channel(server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Signed calls need the shared-limits file the first server made: it is still theirs.
    with server.client(timeout=10) as client:
        ensure_account(client, "accounts/first")
        key = client.create_key("accounts/first", f"k{time.monotonic_ns()}", "ENCRYPT_DECRYPT")
        sealed = client.encrypt(key.name, b"first server")
        assert client.decrypt(key.name, sealed.ciphertext).plaintext == b"first server"
    assert "Traceback" not in server.log(), server.log()


def test_a_second_vault_on_the_same_data_directory_is_refused(own_server: VaultServer) -> None:
    server = own_server
    assert server.process is not None
    limits = server.data_dir / "run" / "shared-limits"
    before = limits.stat()
    env = vault_environment(server.data_dir, VAULT_SERVER__LISTEN=f"127.0.0.1:{free_port()}")
    line = vaultctl_refused(env, "serve")
    assert f"data directory {server.data_dir} is in use by vaultctl serve" in line, line
    assert f"pid {server.process.pid}" in line and server.target in line, line
    # `make run` provisions first: that is refused as well, with the same explanation.
    line = vaultctl_refused(env, "token", "init")
    assert f"data directory {server.data_dir} is in use" in line, line
    assert f"pid {server.process.pid}" in line, line
    after = limits.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert_still_serving(server)


def test_a_second_vault_on_a_port_in_use_is_refused(
    own_server: VaultServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = own_server
    other = tmp_path_factory.mktemp("other-vault")
    env = vault_environment(other, VAULT_SERVER__LISTEN=server.target)
    line = vaultctl_refused(env, "serve")
    assert line == (
        f"vaultctl: error: {server.target} is already in use (another vault or program); "
        "set server.listen or stop it"
    )
    assert sorted(path.name for path in other.iterdir()) == ["vault.lock"], "it wrote files"
    assert_still_serving(server)
