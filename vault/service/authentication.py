"""Who is calling: signed requests and API keys become a Principal, or one uniform error.

Every failure (malformed header, unknown key id, bad signature, stale timestamp or one older
than the nonce table, replayed nonce, revoked, deleted or expired credential) raises the same
Unauthenticated. The token has no PIN lockout, so the vault throttles guessing itself. A failed
attempt at a credential counts against the caller's address and against the pair (key id it
named, address); a call with no credential at all guesses nothing and is not counted. A request
whose credential verifies is admitted whatever the counters say: the owner of a key id and the
other clients behind an address are never locked out by someone else's failures. Past a
threshold of failures in a window, the requester's own failing attempts get
AuthenticationThrottled instead, until the window ends.

Failing costs the same work whether or not the key id exists (one lookup of the key and one of
its account, one derivation in the token, one signature computed), so the time an answer takes
does not tell which ids exist; what a lookup learned, either way, is cached until any worker
changes a credential (the shared credential epoch), so a reset or a revocation holds from the
next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeVar

from vault.domain.errors import (
    AuthenticationThrottled,
    LimitExceeded,
    QuotaExceeded,
    Unauthenticated,
    VaultError,
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
from vault.domain.ports import IdentityStore, SharedCounters
from vault.domain.signing import SignedHeader, canonical_request, signature, signature_matches
from vault.service.identity import IdentityManagement

_SECONDS_PER_DAY: Final = 86_400
_Cached = TypeVar("_Cached")
# Access key ids, and API key ids, a worker remembers per credential epoch, known or not
# (least recently used first out). One bound for known and unknown ids, so flooding it with
# made-up ids evicts both alike and their answers stay alike.
CREDENTIAL_CACHE_SIZE: Final = 16_384
# Looked up for an access key id that does not exist, so that it costs what the account lookup
# of a real one does; no account has this id (account ids start with a letter).
_NO_ACCOUNT: Final = "-"


@dataclass(frozen=True, slots=True)
class AuthenticationPolicy:
    timestamp_window_seconds: int = 300
    failure_window_seconds: float = 60.0
    max_failures_per_address: int = 30
    max_failures_per_key: int = 10


@dataclass(frozen=True, slots=True)
class _CachedAccessKey:
    """What a lookup learned about an access key id: its key, whether its account is an
    admin account and its secret; or, for an id without a usable key (none, or its account is
    gone), key None and a stand-in secret derived at the same cost, which admits nothing."""

    key: AccessKey | None
    admin: bool
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class _CachedApiKey:
    """What a lookup learned about an API key id: its key, or None if there is none."""

    key: ApiKey | None


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
        self._access_keys: OrderedDict[str, _CachedAccessKey] = OrderedDict()
        self._api_keys: OrderedDict[str, _CachedApiKey] = OrderedDict()
        self._api_tokens: dict[bytes, ApiKey] = {}

    def __repr__(self) -> str:
        return "Authenticator()"

    # -- entry points ------------------------------------------------------------------------

    def authenticate_signed(self, header: str, method: str, body: bytes, source: str) -> Principal:
        now = self._clock()
        parsed = SignedHeader.parse(header)
        if parsed is None or not is_access_key_id(parsed.access_key_id):
            raise self._failed(source, "", now)
        principal = self._check_signed(parsed, method, body, now)
        if principal is None:
            raise self._failed(source, parsed.access_key_id, now)
        return principal

    def authenticate_bearer(self, token: str, source: str) -> Principal:
        now = self._clock()
        api_key_id = parse_api_token(token)
        if api_key_id is None:
            raise self._failed(source, "", now)
        principal = self._check_bearer(token, api_key_id, now)
        if principal is None:
            raise self._failed(source, f"api:{api_key_id}", now)
        return principal

    def authenticate_certificate(self, account_id: str, fingerprint: str, source: str) -> Principal:
        """A client certificate the TLS layer verified, naming account_id in its subject."""
        now = self._clock()
        credential_id = f"cert:{fingerprint[:32]}"
        account = self._store.get_account(account_id) if account_id else None
        if account is None:
            raise self._failed(source, credential_id, now)
        return Principal(
            kind=CredentialKind.CERTIFICATE,
            credential_id=credential_id,
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
        cached = self._access_key(header.access_key_id)
        canonical = canonical_request(
            method, header.access_key_id, header.timestamp, header.nonce, body
        )
        # Computed for every id, known or not, usable or not: the answer must take as long.
        matches = signature_matches(signature(cached.secret, canonical), header.signature)
        key = cached.key
        if not matches or key is None or key.state is not CredentialState.ACTIVE:
            return None
        # Only a correctly signed request spends its nonce: others must not be able to burn
        # nonces a legitimate caller is about to use.
        nonce = f"{header.access_key_id}:{header.nonce}".encode("ascii")
        expires = header.timestamp + self._policy.timestamp_window_seconds + 1
        if not self._counters.remember_nonce(nonce, expires_at=expires, now=now):
            return None
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

    def _failed(self, source: str, credential_id: str, now: float) -> VaultError:
        """The error for a failed attempt from source at credential_id ("" when the request
        named none): throttled if source, or source at that credential, has failed too often
        in the window; otherwise the failure is counted and the answer is the uniform one.
        Only failures are ever throttled, so a requester cannot block anyone else's valid
        credential, and a throttled one is not counted again (its counters hold their limit
        until the window ends, and a flood of its failures takes no lock)."""
        window = self._policy.failure_window_seconds
        counters = [(f"addr:{source}", self._policy.max_failures_per_address)]
        if credential_id:
            # Credential ids hold no space, so the first one ends it whatever the source is.
            counters.append((f"cred:{credential_id} {source}", self._policy.max_failures_per_key))
        for counter, limit in counters:
            if self._counters.failures(counter, window_seconds=window, now=now) >= limit:
                return AuthenticationThrottled(
                    "too many failed authentications; try again later", retry_after=window
                )
        for counter, _ in counters:
            self._counters.record_failure(counter, window_seconds=window, now=now)
        return Unauthenticated()

    # -- per-process caches ------------------------------------------------------------------

    def _fresh(self) -> int:
        """Drop the caches if any credential changed since they were filled; returns the
        epoch they now belong to."""
        epoch = self._counters.credential_epoch()
        if epoch != self._epoch:
            with self._lock:
                self._access_keys.clear()
                self._api_keys.clear()
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

    def _access_key(self, access_key_id: str) -> _CachedAccessKey:
        epoch = self._fresh()
        cached = self._recall(self._access_keys, access_key_id)
        if cached is not None:
            return cached
        # The same store and token work whether or not the id exists: an unknown id answered
        # faster (or slower) than a known one would tell which ids exist.
        key = self._store.get_access_key(access_key_id)
        account = self._store.get_account(key.account_id if key is not None else _NO_ACCOUNT)
        if key is not None and account is not None:
            found = _CachedAccessKey(key, account.admin, self._identity.derive_secret(key))
        else:
            stand_in = self._identity.derive_unknown_secret(access_key_id)
            found = _CachedAccessKey(None, False, stand_in)
        self._keep(epoch, lambda: self._remember(self._access_keys, access_key_id, found))
        return found

    def _api_key(self, token: str, api_key_id: str) -> ApiKey | None:
        """The API key token belongs to, or None if there is none or token is not genuine."""
        epoch = self._fresh()
        # Cached by a digest of the token, so the cache never holds the token itself.
        fingerprint = hashlib.sha256(token.encode("ascii")).digest()
        genuine = self._api_tokens.get(fingerprint)
        if genuine is not None:
            return genuine
        cached = self._recall(self._api_keys, api_key_id)
        if cached is None:
            # Remembered whether or not the id exists: reading a found key's row costs more
            # than finding none, and would tell which ids exist on every attempt.
            found = _CachedApiKey(self._store.get_api_key(api_key_id))
            self._keep(epoch, lambda: self._remember(self._api_keys, api_key_id, found))
            cached = found
        # Hashed in the token whether or not the id exists, so both answers take as long.
        token_hash = self._identity.api_token_hash(token)
        key = cached.key
        if key is None or not hmac.compare_digest(token_hash, key.token_hash):
            return None
        self._keep(epoch, lambda: self._api_tokens.__setitem__(fingerprint, key))
        return key

    def _recall(self, cache: OrderedDict[str, _Cached], credential_id: str) -> _Cached | None:
        with self._lock:
            cached = cache.get(credential_id)
            if cached is not None:
                cache.move_to_end(credential_id)
            return cached

    @staticmethod
    def _remember(cache: OrderedDict[str, _Cached], credential_id: str, found: _Cached) -> None:
        """With self._lock held."""
        cache[credential_id] = found
        if len(cache) > CREDENTIAL_CACHE_SIZE:
            cache.popitem(last=False)
