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
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.api_calls import expect_error
from tests.support.harness import VaultServer, provision
from tests.support.security_helpers import (
    FRESH_CONNECTION,
    NO_THROTTLING,
    RESOURCE_EXHAUSTED,
    SPREAD,
    AccessKey,
    ApiKey,
    add_access_key,
    add_api_key,
    codes,
    expect_unauthenticated,
    fresh_client,
    new_account,
    on_fresh_connections,
    own_server,
    raw_call,
    signed_metadata,
)
from vault.client import (
    AccessKeyCredentials,
    ApiKeyCredentials,
    Credentials,
    VaultClient,
    VaultClientError,
)
from vault.config import Settings
from vault.coordination.limits import SharedLimits
from vault.domain.errors import Unauthenticated
from vault.domain.identity import ApiScope, make_api_token
from vault.domain.ports import ReconcileReport
from vault.domain.signing import sign_request
from vault.gen.vault.v1 import key_service_pb2, resources_pb2
from vault.hsm.system_keys import SystemKeys
from vault.service.authentication import AuthenticationPolicy, Authenticator
from vault.service.identity import IdentityManagement
from vault.service.reconcile import StartupReport
from vault.storage import open_stores
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
#
# Failures are counted per source address and per (key id, source address); past either limit
# the failing requester's own failures get AUTHENTICATION_THROTTLED. A request whose credential
# verifies is admitted whatever the counters say: otherwise anyone could lock out a key id by
# failing under it, or every client behind one address by failing from there.

KEY_LIMIT: Final = 3
ADDRESS_LIMIT: Final = 5
ATTACKS: Final = 12
THROTTLED: Final = "RESOURCE_EXHAUSTED AUTHENTICATION_THROTTLED"


@pytest.fixture(scope="module")
def key_throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    yield from own_server(
        tmp_path_factory,
        "throttle-key",
        {
            "VAULT_AUTH__MAX_FAILURES_PER_KEY": str(KEY_LIMIT),
            "VAULT_AUTH__MAX_FAILURES_PER_ADDRESS": "1000",
        },
    )


@pytest.fixture(scope="module")
def crowded_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    yield from own_server(
        tmp_path_factory,
        "throttle-crowded",
        {
            "VAULT_AUTH__MAX_FAILURES_PER_ADDRESS": str(ADDRESS_LIMIT),
            "VAULT_AUTH__MAX_FAILURES_PER_KEY": "1000",
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


@dataclass(frozen=True, slots=True)
class Victim:
    """An account on the throttled server with one key, an access key and an API key."""

    key: str
    access_key: AccessKey
    api_key: ApiKey


def new_victim(server: VaultServer) -> Victim:
    with server.client() as admin:
        account = new_account(admin)
        key = admin.create_key(account, "k", "ENCRYPT_DECRYPT").name
        return Victim(
            key,
            add_access_key(admin, account),
            add_api_key(admin, account, [(["GetKey"], ["keys/*"])]),
        )


def attempt(server: VaultServer, credentials: Credentials, key: str) -> str:
    """One GetKey over a new connection: "OK" or "CODE REASON"."""
    return codes(on_fresh_connections(server, credentials, lambda c: c.get_key(key).name, 1))[0]


def assert_throttled_after_the_limit(outcomes: list[str], limit: int) -> None:
    # The counters are read without a lock: a read racing a write may let one more attempt
    # through as UNAUTHENTICATED.
    unthrottled = outcomes.index(THROTTLED) if THROTTLED in outcomes else len(outcomes)
    assert limit <= unthrottled <= limit + 1, outcomes
    assert outcomes[:unthrottled] == ["UNAUTHENTICATED UNAUTHENTICATED"] * unthrottled
    assert outcomes[unthrottled:] == [THROTTLED] * (len(outcomes) - unthrottled)


def test_bad_signatures_under_a_key_id_never_lock_out_its_owner(
    key_throttled: VaultServer,
) -> None:
    throttled = key_throttled
    victim = new_victim(throttled)
    owner = victim.access_key.credentials
    forger = AccessKeyCredentials(owner.access_key_id, random_secret())

    attacks, owners = [], []
    for _ in range(ATTACKS):
        attacks.append(attempt(throttled, forger, victim.key))
        owners.append(attempt(throttled, owner, victim.key))

    assert owners == ["OK"] * ATTACKS
    assert_throttled_after_the_limit(attacks, KEY_LIMIT)
    # The pair (key id, address) is throttled, not the address: a failure at another key id
    # from it is an ordinary one.
    other = AccessKeyCredentials(new_victim(throttled).access_key.key_id, random_secret())
    assert attempt(throttled, other, victim.key) == "UNAUTHENTICATED UNAUTHENTICATED"


def test_wrong_tokens_for_an_api_key_id_never_lock_out_its_owner(
    key_throttled: VaultServer,
) -> None:
    throttled = key_throttled
    victim = new_victim(throttled)
    owner = victim.api_key.credentials
    forger = ApiKeyCredentials(make_api_token(victim.api_key.api_key_id, secrets.token_bytes(32)))

    attacks, owners = [], []
    for _ in range(ATTACKS):
        attacks.append(attempt(throttled, forger, victim.key))
        owners.append(attempt(throttled, owner, victim.key))

    assert owners == ["OK"] * ATTACKS
    assert_throttled_after_the_limit(attacks, KEY_LIMIT)


def test_failures_from_an_address_never_lock_out_other_clients_behind_it(
    crowded_address: VaultServer,
) -> None:
    throttled = crowded_address
    victim = new_victim(throttled)
    # Each a different unknown key id: only the address connects the failures.
    attacks = [
        attempt(throttled, AccessKeyCredentials(random_key_id(), random_secret()), victim.key)
        for _ in range(ATTACKS)
    ]
    assert_throttled_after_the_limit(attacks, ADDRESS_LIMIT)

    # Clients behind the same address whose credentials no worker has seen yet, and the
    # admin, keep working while their address is throttled.
    for credentials in (
        victim.access_key.credentials,
        victim.api_key.credentials,
        throttled.credentials,
    ):
        assert (
            codes(
                on_fresh_connections(throttled, credentials, lambda c: c.get_key(victim.key).name)
            )
            == ["OK"] * SPREAD
        )
    # ...while the address's own failures stay throttled, however they fail.
    guess = AccessKeyCredentials(victim.access_key.key_id, random_secret())
    assert attempt(throttled, guess, victim.key) == THROTTLED
    assert attempt(throttled, ApiKeyCredentials("vkapi_nonsense"), victim.key) == THROTTLED


def test_a_throttled_requester_is_told_when_to_retry(key_throttled: VaultServer) -> None:
    throttled = key_throttled
    victim = new_victim(throttled)
    guess = AccessKeyCredentials(victim.access_key.key_id, random_secret())
    for _ in range(KEY_LIMIT + 1):
        attempt(throttled, guess, victim.key)
    with fresh_client(throttled, guess) as client:
        error = expect_error(
            RESOURCE_EXHAUSTED, "AUTHENTICATION_THROTTLED", lambda: client.get_key(victim.key)
        )
    assert error.retry_after is not None and error.retry_after > 0


def test_failures_from_one_address_throttle_it_until_the_window_ends(
    address_throttled: VaultServer,
) -> None:
    with address_throttled.client() as admin:
        account = new_account(admin)
        key = admin.create_key(account, "k", "ENCRYPT_DECRYPT").name
    started = time.monotonic()

    def unknown() -> AccessKeyCredentials:
        return AccessKeyCredentials(random_key_id(), "x")

    for _ in range(3):
        assert attempt(address_throttled, unknown(), key) == "UNAUTHENTICATED UNAUTHENTICATED"
    with fresh_client(address_throttled, unknown()) as client:
        error = expect_error(
            RESOURCE_EXHAUSTED, "AUTHENTICATION_THROTTLED", lambda: client.get_key(key)
        )
    assert error.retry_after is not None
    assert 0 < error.retry_after <= THROTTLE_WINDOW_SECONDS + 0.01
    assert time.monotonic() - started < THROTTLE_WINDOW_SECONDS, "too slow to observe the window"

    time.sleep(max(0.0, started + THROTTLE_WINDOW_SECONDS + 0.3 - time.monotonic()))
    assert attempt(address_throttled, unknown(), key) == "UNAUTHENTICATED UNAUTHENTICATED"


# -- failing costs the same whether or not the key id exists --------------------------------
#
# Timing itself is not asserted (too noisy on shared machines; bench/auth_timing.py measures
# it). What makes the times equal is: the same calls into the store and the token on both
# paths, attempt by attempt, which is what these tests count, through the real store, token
# and shared counters.


class Counting:
    """Forwards every call to the real object, counting calls per method name."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


@dataclass(frozen=True, slots=True)
class InProcess:
    authenticator: Authenticator
    identity: IdentityManagement
    store: Counting
    token: Counting
    account: str

    def calls(self, attempt: Callable[[], object]) -> dict[str, int]:
        """The store and token calls one failing attempt makes."""
        before = self.store.calls + self.token.calls
        with pytest.raises(Unauthenticated):
            attempt()
        return dict((self.store.calls + self.token.calls) - before)


@pytest.fixture()
def in_process(
    server: VaultServer, settings: Any, keystore: Any, tmp_path: Any
) -> Iterator[InProcess]:
    # The session's server has created the token's system keys (the credential key).
    stores = open_stores(settings.store.url)
    counters = SharedLimits.create(tmp_path / "limits", slots=1024, nonce_slots=1024)
    # A new table refuses requests stamped before it was made, before any other work.
    time.sleep(max(0.0, counters.replay_horizon() - time.time()))
    try:
        store, token = Counting(stores.identity), Counting(SystemKeys(keystore))
        identity = IdentityManagement(store, token, keystore.random, counters)
        authenticator = Authenticator(
            identity,
            store,
            counters,
            AuthenticationPolicy(max_failures_per_address=10**6, max_failures_per_key=10**6),
        )
        account = identity.create_account(f"t{secrets.token_hex(5)}", "timing", admin=False)
        yield InProcess(authenticator, identity, store, token, f"accounts/{account.account_id}")
    finally:
        counters.close()
        stores.close()


def bad_signature(process: InProcess, key_id: str) -> Callable[[], object]:
    header = sign_request(
        GET_KEY, key_id, random_secret(), int(time.time()), secrets.token_urlsafe(18), b""
    ).render()
    return lambda: process.authenticator.authenticate_signed(header, GET_KEY, b"", "test")


def wrong_token(process: InProcess, api_key_id: str) -> Callable[[], object]:
    token = make_api_token(api_key_id, secrets.token_bytes(32))
    return lambda: process.authenticator.authenticate_bearer(token, "test")


def test_unknown_and_known_access_key_ids_fail_with_the_same_work(in_process: InProcess) -> None:
    created, _ = in_process.identity.create_access_key(in_process.account, (), "")
    known, unknown = created.access_key_id, random_key_id()

    on_known = [in_process.calls(bad_signature(in_process, known)) for _ in range(3)]
    on_unknown = [in_process.calls(bad_signature(in_process, unknown)) for _ in range(3)]

    # The first attempt looks the key and its account up and derives a secret in the token;
    # later ones find all of it cached. The same for an id that does not exist.
    first = {"get_access_key": 1, "get_account": 1, "credential_mac": 1}
    assert on_known == [first, {}, {}]
    assert on_unknown == on_known
    # A new made-up id each time costs what a first attempt at a real one does.
    assert in_process.calls(bad_signature(in_process, random_key_id())) == first


def test_unknown_and_known_api_key_ids_fail_with_the_same_work(in_process: InProcess) -> None:
    created, _ = in_process.identity.create_api_key(
        in_process.account,
        (ApiScope(methods=frozenset({"GetKey"}), resources=("*",)),),
        expire_time=None,
        rate_limit=None,
        daily_quota=0,
        description="",
    )
    known, unknown = created.api_key_id, created.api_key_id[:-4] + "zzzz"

    on_known = [in_process.calls(wrong_token(in_process, known)) for _ in range(3)]
    on_unknown = [in_process.calls(wrong_token(in_process, unknown)) for _ in range(3)]

    # Any token might be genuine: each one is hashed in the token; the key is read once.
    hashed = {"credential_mac": 1}
    assert on_known == [{"get_api_key": 1, **hashed}, hashed, hashed]
    assert on_unknown == on_known


# -- no secret in any repr ------------------------------------------------------------------


def test_no_repr_of_cached_credentials_shows_a_secret(in_process: InProcess) -> None:
    access, secret = in_process.identity.create_access_key(in_process.account, (), "")
    _, token = in_process.identity.create_api_key(
        in_process.account,
        (ApiScope(methods=frozenset({"GetKey"}), resources=("*",)),),
        expire_time=None,
        rate_limit=None,
        daily_quota=0,
        description="",
    )
    authenticator = in_process.authenticator
    header = sign_request(
        GET_KEY, access.access_key_id, secret, int(time.time()), secrets.token_urlsafe(18), b""
    ).render()
    # Succeed once each, so the worker caches what it learned about both credentials.
    authenticator.authenticate_signed(header, GET_KEY, b"", "test")
    authenticator.authenticate_bearer(token, "test")
    cached: list[object] = [
        *authenticator._access_keys.values(),
        *authenticator._api_keys.values(),
        *authenticator._api_tokens.values(),
    ]
    assert len(cached) == 3

    for shown in [repr(o) for o in cached] + [repr(authenticator), repr(in_process.identity)]:
        assert secret not in shown
        assert token not in shown
        assert access.secret_salt.hex() not in shown


def test_no_repr_of_settings_or_startup_shows_a_secret() -> None:
    pin, password, secret = "7429-pin-0173", "db-password-8815", random_secret()
    settings = Settings.model_validate(
        {
            "data_dir": "/nonexistent",
            "hsm": {"user_pin": pin, "so_pin": pin},
            "store": {"url": f"postgresql://vault:{password}@db.internal/vault"},
        }
    )
    report = StartupReport(
        reconcile=ReconcileReport([], [], [], []),
        system_keys_created=[],
        admin_access_key_id=random_key_id(),
        admin_credentials_file=None,
        admin_secret_key=secret,
    )
    for shown in (repr(settings), str(settings), repr(report)):
        assert pin not in shown
        assert password not in shown
        assert secret not in shown


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
