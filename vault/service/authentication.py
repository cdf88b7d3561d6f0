"""Who is calling: signed requests and API keys become a Principal, or one uniform error.

Every failure (malformed header, unknown key id, bad signature, stale timestamp or one older
than the nonce table, replayed nonce, revoked, deleted or expired credential) raises the same
Unauthenticated, and each attempt at a credential counts against the caller's address and
the key id it named (a call with no credential at all guesses nothing and is not counted).
The token has no PIN lockout, so the vault throttles guessing itself: past a threshold of
failures in a window, that address or key id is refused (AuthenticationThrottled) until the
window ends, whatever it sends.

What a worker caches about credentials is dropped as soon as any worker changes one (the
shared credential epoch), so a reset or a revocation holds from the next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from vault.domain.errors import (
    AuthenticationThrottled,
    LimitExceeded,
    QuotaExceeded,
    Unauthenticated,
)
from vault.domain.identity import (
    AccessKey,
    ApiKey,
    CredentialKind,
    CredentialState,
    Principal,
    is_access_key_id,
    parse_api_token,
)
from vault.domain.signing import SignedHeader, canonical_request, signature, signature_matches
from vault.service.identity import IdentityManagement
from vault.service.ports import IdentityStore, SharedCounters

_SECONDS_PER_DAY: Final = 86_400


@dataclass(frozen=True, slots=True)
class AuthenticationPolicy:
    timestamp_window_seconds: int = 300
    failure_window_seconds: float = 60.0
    max_failures_per_address: int = 30
    max_failures_per_key: int = 10


@dataclass(frozen=True, slots=True)
class _CachedAccessKey:
    key: AccessKey
    admin: bool
    secret: str


class Authenticator:
    def __init__(
        self,
        identity: IdentityManagement,
        store: IdentityStore,
        counters: SharedCounters,
        policy: AuthenticationPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._identity = identity
        self._store = store
        self._counters = counters
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._epoch = -1
        self._access_keys: dict[str, _CachedAccessKey] = {}
        self._api_tokens: dict[bytes, ApiKey] = {}

    def __repr__(self) -> str:
        return "Authenticator()"

    # -- entry points ------------------------------------------------------------------------

    def authenticate_signed(self, header: str, method: str, body: bytes, source: str) -> Principal:
        now = self._clock()
        parsed = SignedHeader.parse(header)
        key_id = parsed.access_key_id if parsed is not None else ""
        self._check_throttle(source, key_id, now)
        principal = None if parsed is None else self._check_signed(parsed, method, body, now)
        if principal is None:
            self._fail(source, key_id, now)
        assert principal is not None
        return principal

    def authenticate_bearer(self, token: str, source: str) -> Principal:
        now = self._clock()
        api_key_id = parse_api_token(token) or ""
        self._check_throttle(source, f"api:{api_key_id}" if api_key_id else "", now)
        principal = self._check_bearer(token, api_key_id, now) if api_key_id else None
        if principal is None:
            self._fail(source, f"api:{api_key_id}" if api_key_id else "", now)
        assert principal is not None
        return principal

    def authenticate_certificate(self, account_id: str, fingerprint: str, source: str) -> Principal:
        """A client certificate the TLS layer verified, naming account_id in its subject."""
        now = self._clock()
        self._check_throttle(source, "", now)
        account = self._store.get_account(account_id) if account_id else None
        if account is None:
            self._fail(source, "", now)
        return Principal(
            kind=CredentialKind.CERTIFICATE,
            credential_id=f"cert:{fingerprint[:32]}",
            account_id=account_id,
        )

    def admit(self, principal: Principal) -> None:
        """Apply an API key's rate limit and daily quota (raises LimitExceeded)."""
        key = principal.api_key
        if key is None:
            return
        now = self._clock()
        if key.rate_limit is not None:
            wait = self._counters.take_token(
                f"rate:{key.api_key_id}",
                rate_per_second=key.rate_limit.requests_per_second,
                burst=key.rate_limit.burst,
                now=now,
            )
            if wait > 0:
                raise LimitExceeded("rate limit of this API key exceeded", retry_after=wait)
        if key.daily_quota > 0:
            day = int(now // _SECONDS_PER_DAY)
            day_text = datetime.fromtimestamp(day * _SECONDS_PER_DAY, UTC).date().isoformat()
            allowed = self._counters.consume_quota(
                f"quota:{key.api_key_id}",
                day=day,
                limit=key.daily_quota,
                seed=lambda: self._store.usage_on(key.api_key_id, day_text),
            )
            if not allowed:
                raise QuotaExceeded(
                    "daily quota of this API key used up",
                    retry_after=(day + 1) * _SECONDS_PER_DAY - now,
                )

    # -- checks ------------------------------------------------------------------------------

    def _check_signed(
        self, header: SignedHeader, method: str, body: bytes, now: float
    ) -> Principal | None:
        if abs(now - header.timestamp) > self._policy.timestamp_window_seconds:
            return None
        # Its nonce, if an earlier server saw it, is not in the counters: it could replay.
        if header.timestamp < self._counters.replay_horizon():
            return None
        if not is_access_key_id(header.access_key_id):
            return None
        cached = self._access_key(header.access_key_id)
        if cached is None or cached.key.state is not CredentialState.ACTIVE:
            return None
        canonical = canonical_request(
            method, header.access_key_id, header.timestamp, header.nonce, body
        )
        if not signature_matches(signature(cached.secret, canonical), header.signature):
            return None
        # Only a correctly signed request spends its nonce: others must not be able to burn
        # nonces a legitimate caller is about to use.
        nonce = f"{header.access_key_id}:{header.nonce}".encode("ascii")
        expires = header.timestamp + self._policy.timestamp_window_seconds + 1
        if not self._counters.remember_nonce(nonce, expires_at=expires, now=now):
            return None
        key = cached.key
        return Principal(
            kind=CredentialKind.ACCESS_KEY,
            credential_id=key.access_key_id,
            account_id=key.account_id,
            admin=cached.admin and not key.grants,
            grants=key.grants or None,
        )

    def _check_bearer(self, token: str, api_key_id: str, now: float) -> Principal | None:
        key = self._api_key(token, api_key_id)
        if key is None or key.state is not CredentialState.ACTIVE:
            return None
        if key.expire_time is not None and key.expire_time.timestamp() <= now:
            return None
        return Principal(
            kind=CredentialKind.API_KEY,
            credential_id=key.api_key_id,
            account_id=key.account_id,
            scopes=key.scopes,
            api_key=key,
        )

    def _check_throttle(self, source: str, key_id: str, now: float) -> None:
        window = self._policy.failure_window_seconds
        counters = [(f"addr:{source}", self._policy.max_failures_per_address)]
        if key_id:
            counters.append((f"cred:{key_id}", self._policy.max_failures_per_key))
        for counter, limit in counters:
            if self._counters.failures(counter, window_seconds=window, now=now) >= limit:
                raise AuthenticationThrottled(
                    "too many failed authentications; try again later", retry_after=window
                )

    def _fail(self, source: str, key_id: str, now: float) -> None:
        window = self._policy.failure_window_seconds
        self._counters.record_failure(f"addr:{source}", window_seconds=window, now=now)
        if key_id:
            self._counters.record_failure(f"cred:{key_id}", window_seconds=window, now=now)
        raise Unauthenticated()

    # -- per-process caches ------------------------------------------------------------------

    def _fresh(self) -> int:
        """Drop the caches if any credential changed since they were filled; returns the
        epoch they now belong to."""
        epoch = self._counters.credential_epoch()
        if epoch != self._epoch:
            with self._lock:
                self._access_keys.clear()
                self._api_tokens.clear()
                self._epoch = epoch
        return epoch

    def _keep(self, epoch: int, store: Callable[[], None]) -> None:
        """Cache what was read from the store under epoch, unless a credential changed
        meanwhile: the read may predate that change (a revocation committed between the read
        and now), and a cache entry outliving its epoch would never be dropped."""
        with self._lock:
            if epoch == self._epoch == self._counters.credential_epoch():
                store()

    def _access_key(self, access_key_id: str) -> _CachedAccessKey | None:
        epoch = self._fresh()
        cached = self._access_keys.get(access_key_id)
        if cached is not None:
            return cached
        key = self._store.get_access_key(access_key_id)
        if key is None:
            return None
        account = self._store.get_account(key.account_id)
        if account is None:
            return None
        found = _CachedAccessKey(key, account.admin, self._identity.derive_secret(key))
        self._keep(epoch, lambda: self._access_keys.__setitem__(access_key_id, found))
        return found

    def _api_key(self, token: str, api_key_id: str) -> ApiKey | None:
        """The API key token belongs to, or None if there is none or token is not genuine."""
        epoch = self._fresh()
        # Cached by a digest of the token, so the cache never holds the token itself.
        fingerprint = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._api_tokens.get(fingerprint)
        if cached is not None:
            return cached
        key = self._store.get_api_key(api_key_id)
        if key is None or not hmac.compare_digest(
            self._identity.api_token_hash(token), key.token_hash
        ):
            return None
        self._keep(epoch, lambda: self._api_tokens.__setitem__(fingerprint, key))
        return key
