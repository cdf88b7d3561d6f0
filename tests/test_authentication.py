"""Who may talk to the vault at all: signed requests, every way of getting one wrong, and the
throttling of repeated failures, against real servers with two worker processes.

Requests whose signature must not match what is sent are built by hand (sign_request) and
sent as raw bytes, so the test decides exactly which bytes, method, time and nonce travel.
Every authentication failure must look the same to the caller: one code, one reason, one
message, no metadata, whatever the cause.
"""

from __future__ import annotations

import math
import random
import secrets
import string
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.api_calls import expect_error
from tests.harness import VaultServer, provision
from tests.security_helpers import (
    FRESH_CONNECTION,
    NO_THROTTLING,
    RESOURCE_EXHAUSTED,
    SPREAD,
    AccessKey,
    add_access_key,
    codes,
    expect_unauthenticated,
    fresh_client,
    new_account,
    on_fresh_connections,
    own_server,
    raw_call,
    signed_metadata,
)
from vault.client import AccessKeyCredentials, VaultClient, VaultClientError
from vault.coordination.limits import SharedLimits
from vault.gen.vault.v1 import key_service_pb2, resources_pb2
from vault.transport.supervisor import SHARED_NONCE_SLOTS

GET_KEY: Final = "/vault.v1.KeyService/GetKey"
DISABLE_KEY: Final = "/vault.v1.KeyService/DisableKey"
WINDOW_SECONDS: Final = 300  # the default auth.timestamp_window_seconds
THROTTLE_WINDOW_SECONDS: Final = 2.0
BASE32: Final = string.ascii_uppercase + "234567"
CREATION_TIME_OFFSET: Final = 56  # in the shared limits file's header


@dataclass(frozen=True, slots=True)
class Tenant:
    server: VaultServer
    account: str
    key_name: str
    other_key_name: str
    access_key: AccessKey

    @property
    def credentials(self) -> AccessKeyCredentials:
        return self.access_key.credentials


def get_key_body(name: str) -> bytes:
    return key_service_pb2.GetKeyRequest(name=name).SerializeToString()


def random_key_id() -> str:
    """A well-formed access key id (VK and 18 base32 characters) that was never issued."""
    return "VK" + "".join(secrets.choice(BASE32) for _ in range(18))


def random_secret() -> str:
    return secrets.token_urlsafe(32)


def date_replay_table(data_dir: Path, seconds_ago: float) -> None:
    """Make the server's nonce table as one made seconds_ago, so the server keeps it: a
    freshly made table refuses requests stamped before it was made, whatever the window."""
    path = data_dir / "run" / "shared-limits"
    SharedLimits.create(path, nonce_slots=SHARED_NONCE_SLOTS).close()
    with path.open("r+b") as file:
        file.seek(CREATION_TIME_OFFSET)
        file.write(struct.pack("<d", time.time() - seconds_ago))


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    data_dir = tmp_path_factory.mktemp("authentication")
    provision(data_dir)
    # As on a server that has been running longer than the timestamp window.
    date_replay_table(data_dir, 2 * WINDOW_SECONDS)
    with VaultServer(data_dir, extra_env=NO_THROTTLING) as server:
        yield server


@pytest.fixture(scope="module")
def admin(vault: VaultServer) -> Iterator[VaultClient]:
    with vault.client() as client:
        yield client


@pytest.fixture(scope="module")
def tenant(vault: VaultServer, admin: VaultClient) -> Tenant:
    account = new_account(admin)
    key = admin.create_key(account, "signing", "SIGN_VERIFY")
    other = admin.create_key(account, "other", "ENCRYPT_DECRYPT")
    return Tenant(vault, account, key.name, other.name, add_access_key(admin, account))


@pytest.fixture(scope="module")
def refusal(tenant: Tenant) -> VaultClientError:
    """The answer to a request without credentials: what every other failure must equal."""
    return expect_unauthenticated(
        lambda: raw_call(tenant.server.target, GET_KEY, get_key_body(tenant.key_name))
    )


def assert_same_refusal(error: VaultClientError, refusal: VaultClientError) -> None:
    assert (error.code, error.reason, error.message, error.metadata) == (
        refusal.code,
        refusal.reason,
        refusal.message,
        refusal.metadata,
    )


# -- the control: a hand-signed request is accepted -----------------------------------------


def test_a_request_signed_by_hand_is_accepted(tenant: Tenant) -> None:
    body = get_key_body(tenant.key_name)
    reply = raw_call(
        tenant.server.target, GET_KEY, body, signed_metadata(tenant.credentials, GET_KEY, body)
    )
    assert resources_pb2.Key.FromString(reply).name == tenant.key_name


# -- the failure matrix ---------------------------------------------------------------------

# Each case builds (metadata, request bytes) for a GetKey of the tenant's key that must fail.
Case = Callable[[Tenant], tuple[list[tuple[str, str]], bytes]]


def _no_credentials(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    return [], get_key_body(t.key_name)


def _empty_header(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    return [("authorization", "")], get_key_body(t.key_name)


def _unknown_scheme(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    return [("authorization", "Basic YWRtaW46YWRtaW4=")], get_key_body(t.key_name)


def _malformed_signed_header(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    body = get_key_body(t.key_name)
    good = signed_metadata(t.credentials, GET_KEY, body)[0][1]
    # Right in every part but one field's name.
    broken = good.replace(", Timestamp=", ", Tstamp=")
    return [("authorization", broken)], body


def _truncated_signature(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    body = get_key_body(t.key_name)
    good = signed_metadata(t.credentials, GET_KEY, body)[0][1]
    return [("authorization", good[:-1])], body


def _unknown_key_id(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    body = get_key_body(t.key_name)
    stranger = AccessKeyCredentials(random_key_id(), random_secret())
    return signed_metadata(stranger, GET_KEY, body), body


def _wrong_secret(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    body = get_key_body(t.key_name)
    guess = AccessKeyCredentials(t.credentials.access_key_id, random_secret())
    return signed_metadata(guess, GET_KEY, body), body


def _signed_other_bytes(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    signed = get_key_body(t.other_key_name)
    return signed_metadata(t.credentials, GET_KEY, signed), get_key_body(t.key_name)


def _signed_one_extra_byte(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    # An unknown field appended: the message parses to the same request, the bytes differ.
    body = get_key_body(t.key_name)
    return signed_metadata(t.credentials, GET_KEY, body), body + b"\x78\x01"


def _signed_for_other_method(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    body = get_key_body(t.key_name)  # DisableKeyRequest has the same wire form
    return signed_metadata(t.credentials, DISABLE_KEY, body), body


def _too_old(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    body = get_key_body(t.key_name)
    stamp = math.floor(time.time()) - (WINDOW_SECONDS + 1)
    return signed_metadata(t.credentials, GET_KEY, body, timestamp=stamp), body


def _too_far_ahead(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    body = get_key_body(t.key_name)
    stamp = math.ceil(time.time()) + (WINDOW_SECONDS + 1)
    return signed_metadata(t.credentials, GET_KEY, body, timestamp=stamp), body


def _malformed_bearer(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    return [("authorization", "Bearer vkapi_not_a_token")], get_key_body(t.key_name)


def _secret_as_bearer(t: Tenant) -> tuple[list[tuple[str, str]], bytes]:
    return [("authorization", f"Bearer {t.credentials.secret_key}")], get_key_body(t.key_name)


FAILURES: Final[dict[str, Case]] = {
    "no credentials": _no_credentials,
    "empty authorization header": _empty_header,
    "unknown scheme": _unknown_scheme,
    "malformed signed header": _malformed_signed_header,
    "truncated signature": _truncated_signature,
    "unknown access key id": _unknown_key_id,
    "wrong secret": _wrong_secret,
    "signature over other bytes": _signed_other_bytes,
    "signature without an appended byte": _signed_one_extra_byte,
    "signature for another method": _signed_for_other_method,
    "timestamp 301 s old": _too_old,
    "timestamp 301 s ahead": _too_far_ahead,
    "malformed bearer token": _malformed_bearer,
    "access key secret as bearer token": _secret_as_bearer,
}


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
def test_every_authentication_failure_gets_the_same_answer(
    tenant: Tenant, refusal: VaultClientError, case: Case
) -> None:
    metadata, body = case(tenant)
    error = expect_unauthenticated(lambda: raw_call(tenant.server.target, GET_KEY, body, metadata))
    assert_same_refusal(error, refusal)


def test_a_read_signature_cannot_be_spent_on_a_change(
    tenant: Tenant, admin: VaultClient, refusal: VaultClientError
) -> None:
    body = get_key_body(tenant.key_name)  # GetKeyRequest and DisableKeyRequest: same bytes
    metadata = signed_metadata(tenant.credentials, GET_KEY, body)
    error = expect_unauthenticated(
        lambda: raw_call(tenant.server.target, DISABLE_KEY, body, metadata)
    )
    assert_same_refusal(error, refusal)
    assert admin.get_key(tenant.key_name).state == resources_pb2.KEY_STATE_ENABLED


@pytest.mark.parametrize("offset", [-(WINDOW_SECONDS - 2), WINDOW_SECONDS - 2])
def test_a_timestamp_just_inside_the_window_is_accepted(tenant: Tenant, offset: int) -> None:
    # Rounded towards now, so the distance the server sees stays inside the window even
    # with the request's time in flight.
    now = time.time()
    stamp = math.ceil(now) + offset if offset < 0 else math.floor(now) + offset
    body = get_key_body(tenant.key_name)
    metadata = signed_metadata(tenant.credentials, GET_KEY, body, timestamp=stamp)
    reply = raw_call(tenant.server.target, GET_KEY, body, metadata)
    assert resources_pb2.Key.FromString(reply).name == tenant.key_name


# -- nonces ---------------------------------------------------------------------------------


def test_a_replayed_request_is_refused_by_every_worker(
    tenant: Tenant, refusal: VaultClientError
) -> None:
    body = get_key_body(tenant.key_name)
    metadata = signed_metadata(tenant.credentials, GET_KEY, body)
    target = tenant.server.target

    reply = raw_call(target, GET_KEY, body, metadata)
    assert resources_pb2.Key.FromString(reply).name == tenant.key_name
    # Each replay arrives on a new connection, so both workers get to see it.
    for _ in range(SPREAD):
        error = expect_unauthenticated(lambda: raw_call(target, GET_KEY, body, metadata))
        assert_same_refusal(error, refusal)


def test_a_nonce_is_spent_even_for_a_different_correctly_signed_request(
    tenant: Tenant,
) -> None:
    nonce = secrets.token_urlsafe(18)
    target = tenant.server.target
    first, second = get_key_body(tenant.key_name), get_key_body(tenant.other_key_name)
    raw_call(
        target, GET_KEY, first, signed_metadata(tenant.credentials, GET_KEY, first, nonce=nonce)
    )
    metadata = signed_metadata(tenant.credentials, GET_KEY, second, nonce=nonce)
    expect_unauthenticated(lambda: raw_call(target, GET_KEY, second, metadata))


def test_a_badly_signed_request_does_not_spend_the_nonce(tenant: Tenant) -> None:
    # Otherwise anyone could burn the nonces a legitimate caller is about to use.
    nonce = secrets.token_urlsafe(18)
    body = get_key_body(tenant.key_name)
    target = tenant.server.target
    forged = AccessKeyCredentials(tenant.credentials.access_key_id, random_secret())
    bad = signed_metadata(forged, GET_KEY, body, nonce=nonce)
    expect_unauthenticated(lambda: raw_call(target, GET_KEY, body, bad))

    good = signed_metadata(tenant.credentials, GET_KEY, body, nonce=nonce)
    reply = raw_call(target, GET_KEY, body, good)
    assert resources_pb2.Key.FromString(reply).name == tenant.key_name


# -- credential lifecycle -------------------------------------------------------------------


def warm_up(server: VaultServer, credentials: AccessKeyCredentials, key_name: str) -> None:
    """Have both workers authenticate credentials (and cache what they know about them)."""
    outcomes = on_fresh_connections(server, credentials, lambda c: c.get_key(key_name).name)
    assert codes(outcomes) == ["OK"] * SPREAD


def assert_refused_everywhere(
    server: VaultServer, credentials: AccessKeyCredentials, key_name: str, refusal: VaultClientError
) -> None:
    outcomes = on_fresh_connections(server, credentials, lambda c: c.get_key(key_name).name)
    assert codes(outcomes) == ["UNAUTHENTICATED UNAUTHENTICATED"] * SPREAD
    for error in outcomes:
        assert isinstance(error, VaultClientError)
        assert_same_refusal(error, refusal)


def test_a_revoked_access_key_is_refused_from_the_next_request_on(
    tenant: Tenant, admin: VaultClient, refusal: VaultClientError
) -> None:
    key = add_access_key(admin, tenant.account)
    warm_up(tenant.server, key.credentials, tenant.key_name)

    revoked = admin.revoke_access_key(key.name)

    assert revoked.state == resources_pb2.CREDENTIAL_STATE_REVOKED
    assert_refused_everywhere(tenant.server, key.credentials, tenant.key_name, refusal)
    # The tenant's other access key is untouched.
    warm_up(tenant.server, tenant.credentials, tenant.key_name)


def test_a_deleted_access_key_is_refused_from_the_next_request_on(
    tenant: Tenant, admin: VaultClient, refusal: VaultClientError
) -> None:
    key = add_access_key(admin, tenant.account)
    warm_up(tenant.server, key.credentials, tenant.key_name)

    admin.delete_access_key(key.name)

    expect_error(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", lambda: admin.get_access_key(key.name))
    assert_refused_everywhere(tenant.server, key.credentials, tenant.key_name, refusal)


def test_a_reset_secret_replaces_the_old_one_at_once_in_every_worker(
    tenant: Tenant, admin: VaultClient, refusal: VaultClientError
) -> None:
    key = add_access_key(admin, tenant.account)
    warm_up(tenant.server, key.credentials, tenant.key_name)

    reset = admin.reset_secret_key(key.name)

    assert reset.access_key.access_key_id == key.key_id
    assert reset.secret_key != key.credentials.secret_key
    assert reset.access_key.HasField("secret_reset_time")
    assert_refused_everywhere(tenant.server, key.credentials, tenant.key_name, refusal)
    warm_up(tenant.server, AccessKeyCredentials(key.key_id, reset.secret_key), tenant.key_name)


def test_the_secret_key_is_shown_only_when_issued(tenant: Tenant, admin: VaultClient) -> None:
    key = add_access_key(admin, tenant.account)
    secret = key.credentials.secret_key.encode("ascii")

    shown = admin.get_access_key(key.name).SerializeToString()
    listed = b"".join(k.SerializeToString() for k in admin.list_access_keys(tenant.account))

    assert key.key_id.encode("ascii") in listed
    assert secret not in shown
    assert secret not in listed


# -- open endpoints -------------------------------------------------------------------------


def test_health_needs_no_credentials(tenant: Tenant) -> None:
    with grpc.insecure_channel(tenant.server.target, options=FRESH_CONNECTION) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "vault.v1.KeyService", "vault.v1.CryptoService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with fresh_client(tenant.server, None) as anonymous:
        expect_unauthenticated(lambda: anonymous.get_key(tenant.key_name))


# -- exact request bytes --------------------------------------------------------------------


def test_requests_with_map_fields_sign_and_verify_every_time(
    tenant: Tenant, admin: VaultClient
) -> None:
    # A map is serialised in no guaranteed order: the signature must cover the bytes sent,
    # not some re-serialisation of the message.
    labels = {f"label-{i:02d}": f"value-{i}-{secrets.token_hex(4)}" for i in range(64)}
    items = list(labels.items())
    with tenant.server.client(tenant.credentials) as client:
        for attempt in range(8):
            random.shuffle(items)
            key = client.create_key(
                tenant.account, f"labelled-{attempt}", "MAC", labels=dict(items)
            )
            assert dict(key.labels) == labels
            assert dict(client.get_key(key.name).labels) == labels


# -- throttling of failed authentications ---------------------------------------------------


@pytest.fixture(scope="module")
def key_throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    yield from own_server(
        tmp_path_factory,
        "throttle-key",
        {
            "VAULT_AUTH__MAX_FAILURES_PER_KEY": "3",
            "VAULT_AUTH__MAX_FAILURES_PER_ADDRESS": "1000",
        },
    )


@pytest.fixture(scope="module")
def address_throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    yield from own_server(
        tmp_path_factory,
        "throttle-address",
        {
            "VAULT_AUTH__MAX_FAILURES_PER_ADDRESS": "3",
            "VAULT_AUTH__MAX_FAILURES_PER_KEY": "1000",
            "VAULT_AUTH__FAILURE_WINDOW_SECONDS": str(THROTTLE_WINDOW_SECONDS),
        },
    )


def test_failures_naming_one_key_id_throttle_that_key_id_only(key_throttled: VaultServer) -> None:
    with key_throttled.client() as admin:
        account = new_account(admin)
        key = admin.create_key(account, "k", "ENCRYPT_DECRYPT").name
        target, bystander = add_access_key(admin, account), add_access_key(admin, account)
    guess = AccessKeyCredentials(target.key_id, random_secret())

    for _ in range(3):
        with fresh_client(key_throttled, guess) as guessing:
            expect_unauthenticated(lambda: guessing.get_key(key))

    # Now even the right secret is refused, by every worker, with a time to wait.
    outcomes = on_fresh_connections(key_throttled, target.credentials, lambda c: c.get_key(key))
    assert codes(outcomes) == ["RESOURCE_EXHAUSTED AUTHENTICATION_THROTTLED"] * SPREAD
    for error in outcomes:
        assert isinstance(error, VaultClientError)
        assert error.retry_after is not None and error.retry_after > 0
    # Another key id from the same address is not affected.
    with fresh_client(key_throttled, bystander.credentials) as other:
        assert other.get_key(key).name == key


def test_failures_from_one_address_throttle_it_until_the_window_ends(
    address_throttled: VaultServer,
) -> None:
    with address_throttled.client() as admin:
        account = new_account(admin)
        key = admin.create_key(account, "k", "ENCRYPT_DECRYPT").name
        holder = add_access_key(admin, account)
    started = time.monotonic()
    for _ in range(3):
        # A different unknown key id each time: only the address connects the failures.
        with fresh_client(address_throttled, AccessKeyCredentials(random_key_id(), "x")) as c:
            expect_unauthenticated(lambda: c.get_key(key))

    for credentials in (address_throttled.credentials, holder.credentials):
        with fresh_client(address_throttled, credentials) as client:
            error = expect_error(
                RESOURCE_EXHAUSTED, "AUTHENTICATION_THROTTLED", lambda: client.get_key(key)
            )
        assert error.retry_after is not None
        assert 0 < error.retry_after <= THROTTLE_WINDOW_SECONDS + 0.01
    assert time.monotonic() - started < THROTTLE_WINDOW_SECONDS, "too slow to observe the window"

    time.sleep(max(0.0, started + THROTTLE_WINDOW_SECONDS + 0.3 - time.monotonic()))
    with fresh_client(address_throttled, holder.credentials) as client:
        assert client.get_key(key).name == key


# -- replays across restarts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data directory whose server the tests stop and start themselves."""
    data_dir = tmp_path_factory.mktemp("restarts")
    provision(data_dir)
    yield data_dir


def _restart(server: VaultServer, how: str) -> VaultServer:
    if how == "killed":
        server.kill()
    else:
        server.stop()
    if how == "table lost":
        # As after a reboot, or a disk that lost the file: a new table is made.
        (server.data_dir / "run" / "shared-limits").unlink()
    return VaultServer(server.data_dir, extra_env=NO_THROTTLING).start()


@pytest.mark.parametrize("how", ["stopped", "killed", "table lost"])
def test_a_request_signed_before_a_restart_cannot_be_replayed_after_it(
    restartable: Path, how: str
) -> None:
    server = VaultServer(restartable, extra_env=NO_THROTTLING).start()
    try:
        with server.client() as admin:
            key_name = admin.create_key(new_account(admin), "k", "ENCRYPT_DECRYPT").name
        body = get_key_body(key_name)
        metadata = signed_metadata(server.credentials, GET_KEY, body)
        reply = raw_call(server.target, GET_KEY, body, metadata)
        assert resources_pb2.Key.FromString(reply).name == key_name

        server = _restart(server, how)

        # The identical bytes and metadata, well inside the timestamp window.
        expect_unauthenticated(lambda: raw_call(server.target, GET_KEY, body, metadata))
        # A newly signed request is served as ever.
        fresh = signed_metadata(server.credentials, GET_KEY, body)
        assert resources_pb2.Key.FromString(raw_call(server.target, GET_KEY, body, fresh))
    finally:
        server.stop()
