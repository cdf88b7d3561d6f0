"""Bearer API keys end to end: the token format, scopes, expiry, revocation, the rate limit and
daily quota shared by both worker processes, usage counters, and the token never shown twice.

The server is this module's own, so the failed authentications here throttle nobody else.
"""

from __future__ import annotations

import base64
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api_calls import expect_error
from tests.support.harness import VaultServer
from tests.support.security_helpers import (
    FRESH_CONNECTION,
    NO_THROTTLING,
    RESOURCE_EXHAUSTED,
    SPREAD,
    ApiKey,
    add_access_key,
    add_api_key,
    codes,
    expect_denied,
    expect_unauthenticated,
    fresh_client,
    new_account,
    on_fresh_connections,
    own_server,
)
from vault.client import ApiKeyCredentials, VaultClient, VaultClientError
from vault.domain.identity import parse_api_token
from vault.gen.vault.v1 import resources_pb2

TOKEN_RE: Final = re.compile(r"vkapi_([a-z2-7]{16})_([a-z2-7]{52})_([a-z2-7]{7})")
MESSAGE: Final = b"signed under an API key"
RATE: Final = 20.0
BURST: Final = 5
HAMMER_SECONDS: Final = 3.0
HAMMER_THREADS: Final = 4
QUOTA: Final = 5


@dataclass(frozen=True, slots=True)
class Tenant:
    server: VaultServer
    account: str
    a: str  # keys/a, SIGN_VERIFY
    b: str  # keys/b, SIGN_VERIFY


def checksum(body: str) -> str:
    """The token's check part, computed as resources.proto documents it: CRC32 of the rest,
    big-endian, as 7 characters of lower-case base32."""
    crc = zlib.crc32(body.encode("ascii")).to_bytes(4, "big")
    return base64.b32encode(crc).decode("ascii").rstrip("=").lower()[:7]


def replace_char(text: str, index: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    replacement = alphabet[(alphabet.index(text[index]) + 1) % len(alphabet)]
    return text[:index] + replacement + text[index + 1 :]


def utc_day() -> str:
    return datetime.now(UTC).date().isoformat()


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    yield from own_server(tmp_path_factory, "api-keys", NO_THROTTLING)


@pytest.fixture(scope="module")
def admin(vault: VaultServer) -> Iterator[VaultClient]:
    with vault.client() as client:
        yield client


@pytest.fixture(scope="module")
def tenant(vault: VaultServer, admin: VaultClient) -> Tenant:
    account = new_account(admin)
    a = admin.create_key(account, "a", "SIGN_VERIFY").name
    b = admin.create_key(account, "b", "SIGN_VERIFY").name
    return Tenant(vault, account, a, b)


def api_client(tenant: Tenant, key: ApiKey | str) -> VaultClient:
    token = key if isinstance(key, str) else key.token
    return fresh_client(tenant.server, ApiKeyCredentials(token))


# -- the token ------------------------------------------------------------------------------


def test_the_token_has_the_documented_form_and_checksum(tenant: Tenant, admin: VaultClient) -> None:
    created = admin.create_api_key(tenant.account, [(["GetKey"], ["keys/a"])])
    token, api_key = created.token, created.api_key

    match = TOKEN_RE.fullmatch(token)
    assert match is not None, "token does not have the documented form"
    assert match[1] == api_key.api_key_id
    assert match[3] == checksum(token[: -len(match[3]) - 1])
    assert parse_api_token(token) == api_key.api_key_id
    assert api_key.name == f"{tenant.account}/apiKeys/{api_key.api_key_id}"
    assert api_key.state == resources_pb2.CREDENTIAL_STATE_ACTIVE
    other = admin.create_api_key(tenant.account, [(["GetKey"], ["keys/a"])]).token
    assert TOKEN_RE.fullmatch(other) and other != token
    with api_client(tenant, token) as client:
        assert client.get_key(tenant.a).name == tenant.a


def test_a_token_with_one_character_changed_is_refused(tenant: Tenant, admin: VaultClient) -> None:
    key = add_api_key(admin, tenant.account, [(["GetKey"], ["*"])])
    token = key.token
    # First and last characters of the id (6-21), the secret (23-74) and the checksum (76-82).
    for index in (6, 21, 23, 50, 74, 76, 82):
        altered = replace_char(token, index)
        assert parse_api_token(altered) is None, f"checksum missed a change at {index}"
        with api_client(tenant, altered) as client:
            expect_unauthenticated(lambda: client.get_key(tenant.a))
    with api_client(tenant, key) as client:
        assert client.get_key(tenant.a).name == tenant.a


def test_a_forged_token_with_a_valid_checksum_is_refused(
    tenant: Tenant, admin: VaultClient
) -> None:
    # The checksum only tells real-looking tokens from typos; the secret is what counts.
    key = add_api_key(admin, tenant.account, [(["GetKey"], ["*"])])
    body = replace_char(key.token[:-8], 40)
    forged = f"{body}_{checksum(body)}"
    assert parse_api_token(forged) == key.api_key_id
    with api_client(tenant, forged) as client:
        expect_unauthenticated(lambda: client.get_key(tenant.a))


# -- scopes ---------------------------------------------------------------------------------


def test_scopes_limit_methods_and_resources(tenant: Tenant, admin: VaultClient) -> None:
    key = add_api_key(
        admin, tenant.account, [(["GetKey", "Sign"], ["keys/a"]), (["ListKeys"], ["*"])]
    )
    with api_client(tenant, key) as client:
        assert client.get_key(tenant.a).name == tenant.a
        signature = client.sign(tenant.a, message=MESSAGE).signature
        public_key = serialization.load_pem_public_key(
            admin.get_public_key(tenant.a).pem.encode("ascii")
        )
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))
        assert {k.name for k in client.iter_keys(tenant.account)} >= {tenant.a, tenant.b}

        expect_denied(lambda: client.verify(tenant.a, signature, message=MESSAGE))  # method
        expect_denied(lambda: client.get_key(tenant.b))  # resource
        expect_denied(lambda: client.sign(tenant.b, message=MESSAGE))
        expect_denied(lambda: client.get_public_key(tenant.a))
        expect_denied(lambda: client.generate_random(8))


def test_a_key_wildcard_scope_does_not_cover_account_level_calls(
    tenant: Tenant, admin: VaultClient
) -> None:
    key = add_api_key(admin, tenant.account, [(["GetKey", "ListKeys"], ["keys/*"])])
    with api_client(tenant, key) as client:
        assert client.get_key(tenant.a).name == tenant.a
        assert client.get_key(tenant.b).name == tenant.b
        # ListKeys names no key: only the "*" resource covers it.
        expect_denied(lambda: client.list_keys(tenant.account))


def test_an_api_key_never_reaches_another_account_or_the_admin_services(
    tenant: Tenant, admin: VaultClient
) -> None:
    other = new_account(admin)
    foreign = admin.create_key(other, "foreign", "SIGN_VERIFY").name
    everything = [(["*"], ["*"])]
    tenant_key = add_api_key(admin, tenant.account, everything)
    admin_account_key = add_api_key(admin, "accounts/admin", everything)
    for key in (tenant_key, admin_account_key):
        with api_client(tenant, key) as client:
            expect_denied(lambda: client.get_key(foreign))
            expect_denied(lambda: client.list_keys(other))
            expect_denied(lambda: client.list_accounts())
            expect_denied(lambda: client.get_api_key(key.name))
            expect_denied(lambda: client.list_audit_events(page_size=1))
    with api_client(tenant, tenant_key) as client:
        assert client.sign(tenant.a, message=MESSAGE).signature
    # Nor can a scope even name an admin method.
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        lambda: admin.create_api_key(tenant.account, [(["ListAccounts"], ["*"])]),
    )


# -- expiry and revocation ------------------------------------------------------------------


def test_an_expired_api_key_is_refused(tenant: Tenant, admin: VaultClient) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=3)
    key = add_api_key(admin, tenant.account, [(["GetKey"], ["*"])], expire_time=expires)
    shown = admin.get_api_key(key.name).expire_time.ToDatetime(tzinfo=UTC)
    assert abs(shown - expires) < timedelta(milliseconds=1)

    before = on_fresh_connections(tenant.server, key.credentials, lambda c: c.get_key(tenant.a))
    assert codes(before) == ["OK"] * SPREAD
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.3)
    after = on_fresh_connections(tenant.server, key.credentials, lambda c: c.get_key(tenant.a))
    assert codes(after) == ["UNAUTHENTICATED UNAUTHENTICATED"] * SPREAD

    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        lambda: admin.create_api_key(
            tenant.account, [(["GetKey"], ["*"])], expire_time=datetime.now(UTC) - timedelta(1)
        ),
    )


def test_a_revoked_api_key_is_refused_from_the_next_request_on(
    tenant: Tenant, admin: VaultClient
) -> None:
    key = add_api_key(admin, tenant.account, [(["GetKey"], ["*"])])
    warm = on_fresh_connections(tenant.server, key.credentials, lambda c: c.get_key(tenant.a))
    assert codes(warm) == ["OK"] * SPREAD

    revoked = admin.revoke_api_key(key.name)

    assert revoked.state == resources_pb2.CREDENTIAL_STATE_REVOKED
    after = on_fresh_connections(tenant.server, key.credentials, lambda c: c.get_key(tenant.a))
    assert codes(after) == ["UNAUTHENTICATED UNAUTHENTICATED"] * SPREAD
    assert admin.get_api_key(key.name).state == resources_pb2.CREDENTIAL_STATE_REVOKED


# -- rate limit and quota -------------------------------------------------------------------


def test_the_rate_limit_holds_across_workers(tenant: Tenant, admin: VaultClient) -> None:
    key = add_api_key(admin, tenant.account, [(["GetKey"], ["*"])], rate_limit=(RATE, BURST))
    start = threading.Barrier(HAMMER_THREADS)
    lock = threading.Lock()
    allowed: list[float] = []
    refused: list[VaultClientError] = []
    spans: list[tuple[float, float]] = []

    def hammer() -> None:
        # A channel per thread, each its own connection: the workers share the load.
        with tenant.server.client(key.credentials, options=FRESH_CONNECTION) as client:
            start.wait()
            first = time.monotonic()
            deadline = first + HAMMER_SECONDS
            last = first
            while time.monotonic() < deadline:
                try:
                    client.get_key(tenant.a)
                    with lock:
                        allowed.append(time.monotonic())
                except VaultClientError as error:
                    with lock:
                        refused.append(error)
                last = time.monotonic()
            with lock:
                spans.append((first, last))

    threads = [threading.Thread(target=hammer) for _ in range(HAMMER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    elapsed = max(end for _, end in spans) - min(begin for begin, _ in spans)
    expected = BURST + RATE * elapsed
    assert len(allowed) <= 1.10 * expected, (len(allowed), expected)
    assert len(allowed) >= 0.5 * expected, (len(allowed), expected)
    assert refused, "the hammer never hit the limit"
    assert {(e.code, e.reason) for e in refused} == {(RESOURCE_EXHAUSTED, "RATE_LIMITED")}
    assert all(e.retry_after is not None and e.retry_after > 0 for e in refused)
    # A refusal asks to wait for one token at most.
    assert max(e.retry_after or 0.0 for e in refused) <= 1 / RATE + 0.002


def test_the_daily_quota_allows_exactly_its_count(tenant: Tenant, admin: VaultClient) -> None:
    key = add_api_key(admin, tenant.account, [(["GetKey"], ["keys/a"])], daily_quota=QUOTA)
    day = utc_day()
    # Calls its scope denies use none of the quota.
    with api_client(tenant, key) as client:
        expect_denied(lambda: client.get_key(tenant.b))

    outcomes = on_fresh_connections(
        tenant.server, key.credentials, lambda c: c.get_key(tenant.a), times=QUOTA + 3
    )

    if utc_day() != day:
        pytest.skip("the UTC day changed during the test")
    assert codes(outcomes) == ["OK"] * QUOTA + ["RESOURCE_EXHAUSTED QUOTA_EXCEEDED"] * 3
    for error in outcomes[QUOTA:]:
        assert isinstance(error, VaultClientError)
        assert error.retry_after is not None and 0 < error.retry_after <= 86_400
    usage = admin.get_usage(key.name)
    assert [(u.day, u.method, u.count) for u in usage] == [(day, "GetKey", QUOTA)]


# -- usage ----------------------------------------------------------------------------------


def test_usage_counts_each_allowed_call_per_method_and_day(
    tenant: Tenant, admin: VaultClient
) -> None:
    key = add_api_key(
        admin,
        tenant.account,
        [(["GetKey", "Sign", "Verify"], ["keys/*"]), (["ListKeys"], ["*"])],
    )
    day = utc_day()
    with api_client(tenant, key) as client:
        for _ in range(3):
            client.get_key(tenant.a)
        # Allowed, then not found: it counts, as a request the key was allowed to make.
        expect_error(
            grpc.StatusCode.NOT_FOUND,
            "NOT_FOUND",
            lambda: client.get_key(f"{tenant.account}/keys/missing"),
        )
        signatures = [client.sign(tenant.a, message=MESSAGE).signature for _ in range(2)]
        assert client.verify(tenant.a, signatures[0], message=MESSAGE).valid
        client.list_keys(tenant.account)
        # Denied calls are not usage.
        expect_denied(lambda: client.generate_random(8))
        expect_denied(lambda: client.encrypt(tenant.a, b"x"))

    if utc_day() != day:
        pytest.skip("the UTC day changed during the test")
    expected = Counter({"GetKey": 4, "Sign": 2, "Verify": 1, "ListKeys": 1})
    for days in (0, 1, 7):
        usage = admin.get_usage(key.name, days=days)
        assert {u.day for u in usage} == {day}
        assert Counter({u.method: u.count for u in usage}) == expected


def test_usage_of_an_access_key(tenant: Tenant, admin: VaultClient) -> None:
    access_key = add_access_key(admin, tenant.account)
    day = utc_day()
    with tenant.server.client(access_key.credentials) as client:
        client.get_key(tenant.a)
        client.get_key(tenant.b)
        client.sign(tenant.b, message=MESSAGE)
        expect_denied(lambda: client.list_accounts())
    if utc_day() != day:
        pytest.skip("the UTC day changed during the test")
    usage = admin.get_usage(access_key.name)
    assert sorted((u.day, u.method, u.count) for u in usage) == [
        (day, "GetKey", 2),
        (day, "Sign", 1),
    ]


# -- the token is shown once ----------------------------------------------------------------


def test_the_token_is_never_shown_again(tenant: Tenant, admin: VaultClient) -> None:
    key = add_api_key(admin, tenant.account, [(["GetKey"], ["*"])], description="shown once")
    secret_part = key.token.split("_")[2]
    assert not admin.get_api_key(key.name).HasField("last_used_time")
    with api_client(tenant, key) as client:
        client.get_key(tenant.a)

    shown = admin.get_api_key(key.name)
    listed = admin.list_api_keys(tenant.account)

    assert shown.description == "shown once"
    assert shown.HasField("last_used_time")
    assert key.name in {k.name for k in listed}
    for data in (shown.SerializeToString(), *(k.SerializeToString() for k in listed)):
        assert key.token.encode("ascii") not in data
        assert secret_part.encode("ascii") not in data


def test_the_store_holds_no_token(tenant: Tenant, admin: VaultClient) -> None:
    key = add_api_key(admin, tenant.account, [(["GetKey"], ["*"])])
    with api_client(tenant, key) as client:
        client.get_key(tenant.a)
    secret_part = key.token.split("_")[2].encode("ascii")
    files = sorted(Path(tenant.server.data_dir).glob("vault.db*"))
    assert files
    for path in files:
        data = path.read_bytes()
        assert key.token.encode("ascii") not in data, path
        assert secret_part not in data, path
        assert secret_part.upper() not in data, path
