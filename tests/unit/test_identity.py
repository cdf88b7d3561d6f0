"""IdentityManagement and Authenticator against in-memory ports, and the authorisation rules
(vault.domain.identity.authorize) they feed."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from datetime import timedelta

import pytest

from tests.support.fakes import FakeCounters, FakeIdentityStore, FakeSystemCrypto, StepClock
from tests.unit.world import ACCOUNT, T0
from vault.domain.errors import (
    AuthenticationThrottled,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    QuotaExceeded,
    Unauthenticated,
    WrongState,
)
from vault.domain.identity import (
    AccessLevel,
    Account,
    ApiScope,
    CredentialKind,
    CredentialState,
    Grant,
    Principal,
    RateLimit,
    ResourceRef,
    authorize,
)
from vault.domain.signing import sign_request
from vault.service.authentication import AuthenticationPolicy, Authenticator
from vault.service.identity import IdentityManagement

METHOD = "/vault.v1.KeyService/GetKey"
NOW = T0.timestamp()


class Identity:
    def __init__(self, policy: AuthenticationPolicy | None = None) -> None:
        self.store = FakeIdentityStore()
        self.system = FakeSystemCrypto()
        self.counters = FakeCounters()
        self.clock = StepClock(T0)
        self.seconds = NOW
        self.identity = IdentityManagement(
            self.store, self.system, FakeRandom(), self.counters, clock=self.clock
        )
        self.auth = Authenticator(
            self.identity,
            self.store,
            self.counters,
            policy or AuthenticationPolicy(max_failures_per_address=3, max_failures_per_key=2),
            clock=lambda: self.seconds,
        )
        self.identity.create_account(ACCOUNT, "Acme", admin=False)

    def signed(self, key_id: str, secret: str, *, nonce: str = "", at: float | None = None) -> str:
        header = sign_request(
            METHOD,
            key_id,
            secret,
            int(self.seconds if at is None else at),
            nonce or f"nonce-{time.perf_counter_ns()}",
            b"body",
        )
        return header.render()


class FakeRandom:
    """Random bytes, never the same twice (a real source in miniature)."""

    def __call__(self, size: int) -> bytes:
        return secrets.token_bytes(size)


@pytest.fixture
def ids() -> Identity:
    return Identity()


def test_an_access_keys_secret_is_derived_not_stored(ids: Identity) -> None:
    key, secret = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "ci")
    stored = ids.store.access_keys[key.access_key_id]
    assert ids.identity.derive_secret(stored) == secret
    assert secret not in repr(stored) and secret.encode() not in stored.secret_salt
    assert ids.counters.epoch == 1


def test_resetting_a_secret_replaces_it_and_tells_every_worker(ids: Identity) -> None:
    key, old = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    ids.clock.advance(hours=1)
    reset, new = ids.identity.reset_secret_key(key.name)
    assert new != old and reset.secret_reset_time == ids.clock.now
    assert ids.counters.epoch == 2
    ids.identity.revoke_access_key(key.name)
    with pytest.raises(WrongState):
        ids.identity.reset_secret_key(key.name)


def test_revoking_an_access_key_twice_changes_nothing_more(ids: Identity) -> None:
    key, _ = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    revoked = ids.identity.revoke_access_key(key.name)
    again = ids.identity.revoke_access_key(key.name)
    assert revoked.state is again.state is CredentialState.REVOKED
    assert ids.counters.epoch == 2


def test_a_credential_named_under_another_account_is_not_found(ids: Identity) -> None:
    ids.identity.create_account("other", "", admin=False)
    key, _ = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    with pytest.raises(NotFound):
        ids.identity.get_access_key(f"accounts/other/accessKeys/{key.access_key_id}")
    with pytest.raises(NotFound):
        ids.identity.create_access_key("accounts/nobody", (), "")


def test_the_admin_is_bootstrapped_once(ids: Identity) -> None:
    made = ids.identity.bootstrap_admin()
    assert made is not None and made[0].account_id == "admin"
    assert ids.store.accounts["admin"].admin
    assert ids.identity.bootstrap_admin() is None


def test_a_recovery_key_is_made_only_for_an_admin_account(ids: Identity) -> None:
    ids.identity.bootstrap_admin()
    key, _ = ids.identity.recovery_admin_key()
    assert key.account_id == "admin" and len(ids.store.access_keys) == 2
    with pytest.raises(InvalidArgument):
        ids.identity.recovery_admin_key(ACCOUNT)


def test_an_api_key_keeps_only_a_keyed_hash_of_its_token(ids: Identity) -> None:
    scope = ApiScope(frozenset({"GetKey"}), ("keys/*",))
    key, token = ids.identity.create_api_key(
        f"accounts/{ACCOUNT}",
        [scope],
        expire_time=None,
        rate_limit=None,
        daily_quota=0,
        description="",
    )
    assert key.token_hash == ids.identity.api_token_hash(token)
    assert token not in repr(key)
    with pytest.raises(InvalidArgument):
        ids.identity.create_api_key(
            f"accounts/{ACCOUNT}",
            [],
            expire_time=None,
            rate_limit=None,
            daily_quota=0,
            description="",
        )
    with pytest.raises(InvalidArgument):
        ids.identity.create_api_key(
            f"accounts/{ACCOUNT}",
            [scope],
            expire_time=T0 - timedelta(seconds=1),
            rate_limit=None,
            daily_quota=0,
            description="",
        )


def test_usage_is_read_from_the_window_of_days_asked(ids: Identity) -> None:
    key, _ = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    ids.store.usage_counts[(key.access_key_id, "2026-12-03", "Encrypt")] = 5
    ids.store.usage_counts[(key.access_key_id, "2026-11-01", "Encrypt")] = 7
    counts = ids.identity.usage(key.name, 7, 0, "").items
    assert [(c.day, c.count) for c in counts] == [("2026-12-03", 5)]
    with pytest.raises(InvalidArgument):
        ids.identity.usage(key.name, 367, 0, "")


def test_usage_is_read_in_pages_by_day_then_method(ids: Identity) -> None:
    key, _ = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    days = ["2026-12-01", "2026-12-02", "2026-12-03"]
    for d, day in enumerate(days):
        for m, method in enumerate(["Encrypt", "Decrypt", "Sign"]):
            ids.store.usage_counts[(key.access_key_id, day, method)] = d * 10 + m
    ids.store.usage_counts[(key.access_key_id, "2026-11-01", "Sign")] = 99  # before the window
    pages = []
    token = ""
    while True:
        pages.append(ids.identity.usage(key.name, 7, 2, token))
        token = pages[-1].next_page_token
        if not token:
            break
    listed = [(c.day, c.method) for page in pages for c in page.items]
    assert [len(page.items) for page in pages] == [2, 2, 2, 2, 1]
    assert listed == [(day, m) for day in days for m in ("Decrypt", "Encrypt", "Sign")]
    # 0 is the whole window: all nine at once, and no token.
    whole = ids.identity.usage(key.name, 7, 0, "")
    assert [(c.day, c.method) for c in whole.items] == listed and whole.next_page_token == ""
    for page_size, page_token in ((-1, ""), (0, "bogus")):
        with pytest.raises(InvalidArgument):
            ids.identity.usage(key.name, 7, page_size, page_token)
    # The credential is looked up before the token is read: an unknown one is NotFound.
    with pytest.raises(NotFound):
        ids.identity.usage(f"accounts/{ACCOUNT}/accessKeys/VKZZZZZZZZZZZZZZZZZZ", 7, 0, "bogus")


# -- authentication ----------------------------------------------------------------------------


def test_a_correctly_signed_request_is_its_access_keys_principal(ids: Identity) -> None:
    key, secret = ids.identity.create_access_key(
        f"accounts/{ACCOUNT}", (Grant("keys/a", AccessLevel.READ),), ""
    )
    principal = ids.auth.authenticate_signed(
        ids.signed(key.access_key_id, secret), METHOD, b"body", "10.0.0.1"
    )
    assert (principal.kind, principal.account_id) == (CredentialKind.ACCESS_KEY, ACCOUNT)
    assert principal.grants == (Grant("keys/a", AccessLevel.READ),) and not principal.admin


@pytest.mark.parametrize("flaw", ["secret", "body", "stale", "before-horizon"])
def test_every_flawed_signature_gets_the_same_answer(ids: Identity, flaw: str) -> None:
    key, secret = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    body = b"other" if flaw == "body" else b"body"
    at = NOW - 301 if flaw == "stale" else None
    if flaw == "before-horizon":
        ids.counters.horizon = NOW + 1
    header = ids.signed(key.access_key_id, "x" * 43 if flaw == "secret" else secret, at=at)
    with pytest.raises(Unauthenticated) as caught:
        ids.auth.authenticate_signed(header, METHOD, body, "10.0.0.1")
    assert caught.value.metadata == {}


def test_a_nonce_is_accepted_once(ids: Identity) -> None:
    key, secret = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    header = ids.signed(key.access_key_id, secret, nonce="n" * 20)
    ids.auth.authenticate_signed(header, METHOD, b"body", "10.0.0.1")
    with pytest.raises(Unauthenticated):
        ids.auth.authenticate_signed(header, METHOD, b"body", "10.0.0.1")


def test_an_unknown_key_id_costs_the_token_what_a_known_one_does(ids: Identity) -> None:
    key, secret = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    before = ids.system.macs
    with pytest.raises(Unauthenticated):
        ids.auth.authenticate_signed(
            ids.signed(key.access_key_id, "x" * 43), METHOD, b"body", "10.0.0.1"
        )
    known = ids.system.macs - before
    unknown_id = "VK" + "A" * 18
    with pytest.raises(Unauthenticated):
        ids.auth.authenticate_signed(ids.signed(unknown_id, secret), METHOD, b"body", "10.0.0.2")
    assert ids.system.macs - before - known == known == 1


def test_failures_are_throttled_but_a_valid_credential_still_gets_in(ids: Identity) -> None:
    key, secret = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    outcomes = []
    for _ in range(4):
        try:
            ids.auth.authenticate_signed(
                ids.signed(key.access_key_id, "x" * 43), METHOD, b"body", "10.0.0.1"
            )
        except (Unauthenticated, AuthenticationThrottled) as error:
            outcomes.append(type(error).__name__)
    throttled = "AuthenticationThrottled"
    assert outcomes == ["Unauthenticated", "Unauthenticated", throttled, throttled]
    admitted = ids.auth.authenticate_signed(
        ids.signed(key.access_key_id, secret), METHOD, b"body", "10.0.0.1"
    )
    assert admitted.credential_id == key.access_key_id
    ids.seconds += 61  # the window ends
    with pytest.raises(Unauthenticated):
        ids.auth.authenticate_signed(
            ids.signed(key.access_key_id, "x" * 43), METHOD, b"body", "10.0.0.1"
        )


def test_a_revocation_holds_from_the_next_request_on(ids: Identity) -> None:
    key, secret = ids.identity.create_access_key(f"accounts/{ACCOUNT}", (), "")
    ids.auth.authenticate_signed(ids.signed(key.access_key_id, secret), METHOD, b"body", "a")
    ids.identity.revoke_access_key(key.name)
    with pytest.raises(Unauthenticated):
        ids.auth.authenticate_signed(ids.signed(key.access_key_id, secret), METHOD, b"body", "a")


def test_an_api_token_authenticates_until_it_expires(ids: Identity) -> None:
    scope = ApiScope(frozenset({"GetKey"}), ("keys/*",))
    key, token = ids.identity.create_api_key(
        f"accounts/{ACCOUNT}",
        [scope],
        expire_time=T0 + timedelta(hours=1),
        rate_limit=None,
        daily_quota=0,
        description="",
    )
    principal = ids.auth.authenticate_bearer(token, "a")
    assert principal.kind is CredentialKind.API_KEY and principal.scopes == (scope,)
    forged = token[:-20] + ("a" if token[-20] != "a" else "b") + token[-19:]
    with pytest.raises(Unauthenticated):
        ids.auth.authenticate_bearer(forged, "a")
    ids.seconds += 3600
    with pytest.raises(Unauthenticated):
        ids.auth.authenticate_bearer(token, "b")
    assert key.api_key_id in principal.credential_id


def test_an_api_keys_rate_limit_and_daily_quota_are_enforced(ids: Identity) -> None:
    scope = ApiScope(frozenset({"*"}), ("*",))
    key, _ = ids.identity.create_api_key(
        f"accounts/{ACCOUNT}",
        [scope],
        expire_time=None,
        rate_limit=RateLimit(1.0, 2),
        daily_quota=3,
        description="",
    )
    principal = Principal(CredentialKind.API_KEY, key.api_key_id, ACCOUNT, api_key=key)
    ids.auth.admit(principal)
    ids.auth.admit(principal)
    with pytest.raises(LimitExceeded) as limited:
        ids.auth.admit(principal)
    assert limited.value.retry_after == pytest.approx(1.0)
    ids.seconds += 1
    ids.auth.admit(principal)  # the third of the day
    ids.seconds += 5
    with pytest.raises(QuotaExceeded):
        ids.auth.admit(principal)


# -- authorisation -----------------------------------------------------------------------------


def principal(**fields: object) -> Principal:
    base = Principal(CredentialKind.ACCESS_KEY, "VK" + "A" * 18, ACCOUNT)
    return replace(base, **fields)  # type: ignore[arg-type]


KEY_A = ResourceRef(ACCOUNT, "keys/a")
KEY_B = ResourceRef(ACCOUNT, "keys/b")
SERVICE = "vault.v1.CryptoService"


def test_an_admin_may_call_anything_and_others_no_admin_service() -> None:
    assert authorize(principal(admin=True), "vault.v1.IdentityService", "CreateAccount", [])
    assert not authorize(principal(), "vault.v1.IdentityService", "CreateAccount", [])


def test_a_key_of_another_account_is_never_allowed() -> None:
    other = ResourceRef("other", "keys/a")
    assert authorize(principal(), SERVICE, "Encrypt", [KEY_A])
    assert not authorize(principal(), SERVICE, "Encrypt", [other])


def test_a_grant_allows_its_level_and_below_on_its_key_only() -> None:
    reader = principal(grants=(Grant("keys/a", AccessLevel.READ),))
    assert authorize(reader, SERVICE, "Decrypt", [KEY_A])
    assert not authorize(reader, SERVICE, "Encrypt", [KEY_A])
    assert not authorize(reader, SERVICE, "Decrypt", [KEY_B])


def test_an_account_level_call_needs_the_wildcard_grant() -> None:
    one_key = principal(grants=(Grant("keys/a", AccessLevel.FULL),))
    every_key = principal(grants=(Grant("keys/*", AccessLevel.READ),))
    listing = "vault.v1.KeyService"
    assert not authorize(one_key, listing, "ListKeys", [ResourceRef(ACCOUNT, "")])
    assert authorize(every_key, listing, "ListKeys", [ResourceRef(ACCOUNT, "")])


def test_an_api_key_is_allowed_what_a_scope_covers() -> None:
    scoped = principal(
        kind=CredentialKind.API_KEY, scopes=(ApiScope(frozenset({"Encrypt"}), ("keys/a",)),)
    )
    assert authorize(scoped, SERVICE, "Encrypt", [KEY_A])
    assert not authorize(scoped, SERVICE, "Decrypt", [KEY_A])
    assert not authorize(scoped, SERVICE, "Encrypt", [KEY_B])


def test_a_method_nobody_listed_is_closed_to_all_but_admins() -> None:
    assert not authorize(principal(), SERVICE, "NewMethod", [KEY_A])
    assert authorize(principal(admin=True), SERVICE, "NewMethod", [KEY_A])


def test_accounts_are_listed_by_the_identity_store_in_pages() -> None:
    store = FakeIdentityStore()
    for account_id in ("c", "a", "b"):
        store.create_account(Account(account_id, "", False, T0))
    identity = IdentityManagement(store, FakeSystemCrypto(), FakeRandom())
    first = identity.list_accounts(2, "")
    second = identity.list_accounts(2, first.next_page_token)
    assert [a.account_id for a in first.items + second.items] == ["a", "b", "c"]
