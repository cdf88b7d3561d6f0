"""Two vault hosts on one PostgreSQL store: two servers, each with its own port, data directory
and token holding the same roots and system keys. A key or bucket made through one is usable
through the other; a disable, a revocation, a credential reset or revocation made on one is
refused by the other within one second (the delays are measured and printed); replay
protection, rate limits and quotas hold across both; the one audit chain both write stays
verifiable.

The second host's token directory is a copy of the first's, taken after the first start made
the system keys: the hosts must share the credential and audit keys as well as the roots, and
the clone ceremony (vaultctl ceremony clone-roots) moves only the roots.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support.harness import TEST_SETTINGS, VaultServer, provision
from tests.support.postgres import PostgresCluster
from tests.support.security_helpers import (
    NO_THROTTLING,
    RESOURCE_EXHAUSTED,
    SPREAD,
    add_access_key,
    add_api_key,
    codes,
    expect_unauthenticated,
    fresh_client,
    new_account,
    raw_call,
    signed_metadata,
)
from vault.client import VaultClient, VaultClientError
from vault.gen.vault.v1 import key_service_pb2, resources_pb2

GET_KEY: Final = "/vault.v1.KeyService/GetKey"
# How long a change made on one host may take to be refused by the other (the bound).
PROPAGATION_BOUND_SECONDS: Final = 1.0
# Delays measured by the tests, printed at the end of the module (pytest -s shows them).
DELAYS: dict[str, float] = {}


@dataclass(frozen=True, slots=True)
class Hosts:
    a: VaultServer
    b: VaultServer
    admin_a: VaultClient
    admin_b: VaultClient
    account: str


def copy_data_directory(source: Path, target: Path) -> None:
    """source's token, PINs, settings and admin credentials for a second host; not its
    run-time files (locks, the disk reserve, logs)."""
    shutil.copytree(
        source,
        target,
        ignore=shutil.ignore_patterns("run", "vault.lock", "server-*.log"),
        dirs_exist_ok=True,
    )
    # The SoftHSM config names its token directory by absolute path: the copy's own.
    conf = target / "softhsm2.conf"
    conf.write_text(conf.read_text().replace(str(source / "tokens"), str(target / "tokens")))


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster) -> Iterator[Hosts]:
    settings = {**NO_THROTTLING, "VAULT_STORE__URL": postgres.new_url()}
    first = tmp_path_factory.mktemp("host-a")
    provision(first, settings={**TEST_SETTINGS, **settings})
    # The first start makes the token's system keys and bootstraps the admin in the store.
    with VaultServer(first, extra_env=settings):
        pass
    second = tmp_path_factory.mktemp("host-b")
    copy_data_directory(first, second)
    with VaultServer(first, extra_env=settings) as a, VaultServer(second, extra_env=settings) as b:
        assert a.port != b.port
        with a.client() as admin_a, b.client() as admin_b:
            yield Hosts(a, b, admin_a, admin_b, new_account(admin_a))
    for name, seconds in sorted(DELAYS.items()):
        print(f"cross-host propagation, {name}: {seconds * 1000:.1f} ms")


def refused_within(
    name: str, server: VaultServer, call: Callable[[VaultClient], object], credentials: Any
) -> list[str]:
    """Seconds until call, over new connections to server, fails; recorded under name. Then
    SPREAD more calls, each on a new connection (so each worker of server answers some):
    their outcomes."""
    started = time.monotonic()
    while True:
        with fresh_client(server, credentials) as client:
            try:
                call(client)
            except VaultClientError:
                break
        assert time.monotonic() - started < 10, f"{name}: never refused"
    DELAYS[name] = time.monotonic() - started
    outcomes = []
    for _ in range(SPREAD):
        with fresh_client(server, credentials) as client:
            try:
                call(client)
                outcomes.append("OK")
            except VaultClientError as error:
                outcomes.append(f"{error.code.name} {error.reason}")
    return outcomes


def warm(server: VaultServer, credentials: Any, call: Callable[[VaultClient], object]) -> None:
    """Make call succeed on server over new connections, so each worker caches what it read."""
    for _ in range(SPREAD):
        with fresh_client(server, credentials) as client:
            call(client)


# -- keys -------------------------------------------------------------------------------------


def test_a_key_made_through_one_host_is_used_through_the_other(hosts: Hosts) -> None:
    aes = hosts.admin_a.create_key(hosts.account, "shared-aes", "ENCRYPT_DECRYPT").name
    ec = hosts.admin_b.create_key(hosts.account, "shared-ec", "SIGN_VERIFY").name
    sealed = hosts.admin_a.encrypt(aes, b"across hosts", aad=b"ctx")
    assert hosts.admin_b.decrypt(aes, sealed.ciphertext, aad=b"ctx").plaintext == b"across hosts"
    sealed_b = hosts.admin_b.encrypt(aes, b"and back")
    assert hosts.admin_a.decrypt(aes, sealed_b.ciphertext).plaintext == b"and back"
    signature = hosts.admin_b.sign(ec, message=b"signed on b").signature
    assert hosts.admin_a.verify(ec, signature, message=b"signed on b").valid
    # A rotation on one host: the other encrypts under the new version, decrypts the old.
    hosts.admin_b.rotate_key(aes)
    rotated = hosts.admin_a.encrypt(aes, b"new version")
    assert rotated.key_version.endswith("/versions/2")
    assert hosts.admin_b.decrypt(aes, rotated.ciphertext).plaintext == b"new version"
    assert hosts.admin_a.decrypt(aes, sealed.ciphertext, aad=b"ctx").plaintext == b"across hosts"


def test_a_bucket_made_through_one_host_is_used_through_the_other(hosts: Hosts) -> None:
    bucket = hosts.admin_a.create_bucket(hosts.account, "shared-bucket").name
    first = hosts.admin_a.generate_bucket_key(bucket)
    assert hosts.admin_b.decrypt_bucket_key(bucket, first.wrapped) == first.plaintext
    hosts.admin_b.rotate_bucket_master_key(bucket)
    second = hosts.admin_a.generate_bucket_key(bucket)
    assert second.master_key_version != first.master_key_version
    assert hosts.admin_b.decrypt_bucket_key(bucket, second.wrapped) == second.plaintext
    assert hosts.admin_a.decrypt_bucket_key(bucket, first.wrapped) == first.plaintext
    # A master-key version disabled on one host: the other no longer unwraps its keys.
    hosts.admin_a.disable_bucket_master_key_version(first.master_key_version)
    with pytest.raises(VaultClientError):
        hosts.admin_b.decrypt_bucket_key(bucket, first.wrapped)
    assert hosts.admin_b.decrypt_bucket_key(bucket, second.wrapped) == second.plaintext


def test_a_disable_on_one_host_is_refused_by_the_other_within_a_second(hosts: Hosts) -> None:
    key = hosts.admin_a.create_key(hosts.account, "to-disable", "ENCRYPT_DECRYPT").name
    credentials = hosts.b.credentials

    def encrypt(client: VaultClient) -> object:
        return client.encrypt(key, b"x")

    warm(hosts.b, credentials, encrypt)
    hosts.admin_a.disable_key(key)
    outcomes = refused_within("key disabled", hosts.b, encrypt, credentials)
    assert DELAYS["key disabled"] < PROPAGATION_BOUND_SECONDS
    assert set(outcomes) == {"FAILED_PRECONDITION WRONG_KEY_STATE"}, outcomes


def test_a_key_revocation_on_one_host_is_refused_by_the_other_within_a_second(
    hosts: Hosts,
) -> None:
    key = hosts.admin_b.create_key(hosts.account, "to-revoke", "SIGN_VERIFY").name
    credentials = hosts.a.credentials

    def sign(client: VaultClient) -> object:
        return client.sign(key, message=b"m")

    warm(hosts.a, credentials, sign)
    hosts.admin_b.revoke_key(key, reason="test", reason_code="COMPROMISED")
    outcomes = refused_within("key revoked", hosts.a, sign, credentials)
    assert DELAYS["key revoked"] < PROPAGATION_BOUND_SECONDS
    assert len(set(outcomes)) == 1 and "OK" not in outcomes, outcomes


# -- credentials ------------------------------------------------------------------------------


def test_a_secret_reset_on_one_host_is_refused_by_the_other_within_a_second(
    hosts: Hosts,
) -> None:
    key = hosts.admin_a.create_key(hosts.account, "reader", "ENCRYPT_DECRYPT").name
    access = add_access_key(hosts.admin_a, hosts.account)

    def get(client: VaultClient) -> object:
        return client.get_key(key)

    warm(hosts.b, access.credentials, get)
    hosts.admin_a.reset_secret_key(access.name)
    outcomes = refused_within("access key secret reset", hosts.b, get, access.credentials)
    assert DELAYS["access key secret reset"] < PROPAGATION_BOUND_SECONDS
    assert set(outcomes) == {"UNAUTHENTICATED UNAUTHENTICATED"}, outcomes


def test_an_api_key_revocation_on_one_host_is_refused_by_the_other_within_a_second(
    hosts: Hosts,
) -> None:
    key = hosts.admin_b.create_key(hosts.account, "api-target", "ENCRYPT_DECRYPT").name
    api = add_api_key(hosts.admin_b, hosts.account, [(["GetKey"], ["*"])])

    def get(client: VaultClient) -> object:
        return client.get_key(key)

    warm(hosts.a, api.credentials, get)
    hosts.admin_b.revoke_api_key(api.name)
    outcomes = refused_within("API key revoked", hosts.a, get, api.credentials)
    assert DELAYS["API key revoked"] < PROPAGATION_BOUND_SECONDS
    assert set(outcomes) == {"UNAUTHENTICATED UNAUTHENTICATED"}, outcomes


# -- limits across hosts ----------------------------------------------------------------------


def test_a_request_accepted_by_one_host_cannot_be_replayed_to_the_other(hosts: Hosts) -> None:
    key = hosts.admin_a.create_key(hosts.account, "replayed", "ENCRYPT_DECRYPT").name
    body = key_service_pb2.GetKeyRequest(name=key).SerializeToString()
    metadata = signed_metadata(hosts.a.credentials, GET_KEY, body)
    reply = raw_call(hosts.a.target, GET_KEY, body, metadata)
    assert resources_pb2.Key.FromString(reply).name == key
    for _ in range(SPREAD // 2):
        expect_unauthenticated(lambda: raw_call(hosts.b.target, GET_KEY, body, metadata))
        expect_unauthenticated(lambda: raw_call(hosts.a.target, GET_KEY, body, metadata))


def test_a_rate_limit_holds_across_hosts(hosts: Hosts) -> None:
    key = hosts.admin_a.create_key(hosts.account, "rated", "ENCRYPT_DECRYPT").name
    # A burst of 4 and next to no refill: exactly 4 calls go through, whichever host.
    api = add_api_key(hosts.admin_a, hosts.account, [(["GetKey"], ["*"])], rate_limit=(0.001, 4))
    outcomes = []
    for i in range(12):
        server = (hosts.a, hosts.b)[i % 2]
        with fresh_client(server, api.credentials) as client:
            try:
                client.get_key(key)
                outcomes.append("OK")
            except VaultClientError as error:
                assert error.code == RESOURCE_EXHAUSTED
                outcomes.append(error.reason)
    assert outcomes == ["OK"] * 4 + ["RATE_LIMITED"] * 8


def test_a_daily_quota_holds_across_hosts(hosts: Hosts) -> None:
    key = hosts.admin_b.create_key(hosts.account, "quota", "ENCRYPT_DECRYPT").name
    api = add_api_key(hosts.admin_b, hosts.account, [(["GetKey"], ["*"])], daily_quota=3)
    outcomes = []
    for i in range(8):
        server = (hosts.b, hosts.a)[i % 2]
        with fresh_client(server, api.credentials) as client:
            try:
                client.get_key(key)
                outcomes.append("OK")
            except VaultClientError as error:
                outcomes.append(f"{error.code.name} {error.reason}")
    assert outcomes == ["OK"] * 3 + ["RESOURCE_EXHAUSTED QUOTA_EXCEEDED"] * 5, codes(outcomes)


# -- audit ------------------------------------------------------------------------------------


def test_both_hosts_write_one_verifiable_audit_chain(hosts: Hosts) -> None:
    key = hosts.admin_a.create_key(hosts.account, "audited", "ENCRYPT_DECRYPT").name
    before = hosts.admin_a.verify_audit_log()
    assert before.ok, before.findings
    errors: list[BaseException] = []
    calls_per_thread = 25

    def hammer(server: VaultServer) -> None:
        try:
            with server.client() as client:
                for _ in range(calls_per_thread):
                    client.encrypt(key, b"audited")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(s,)) for s in (hosts.a, hosts.b) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for admin in (hosts.admin_a, hosts.admin_b):
        result = admin.verify_audit_log()
        assert result.ok, result.findings
        assert result.last_sequence >= before.last_sequence + 4 * calls_per_thread
    encrypts = [
        event
        for event in hosts.admin_b.iter_audit_events(method="Encrypt", resource=key)
        if event.outcome == "OK"
    ]
    assert len(encrypts) == 4 * calls_per_thread
