"""Accounts and credentials: issue, read, reset, revoke, delete; usage counters.

Secrets are made here and handed out once. An access key's secret is derived inside the token
(HMAC under the credential key) from the key id and a random salt, so the store keeps only the
salt and a reset is a new salt. An API key's token is random; the store keeps only its keyed
hash, also computed inside the token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from vault.domain.errors import AlreadyExists, InvalidArgument, NotFound, WrongState
from vault.domain.identity import (
    MAX_DISPLAY_NAME,
    MAX_GRANTS,
    MAX_SCOPES,
    AccessKey,
    AccessKeyName,
    Account,
    ApiKey,
    ApiKeyName,
    ApiScope,
    CredentialState,
    Grant,
    RateLimit,
    UsageCount,
    check_account_id,
    check_description,
    encode_secret_key,
    make_api_token,
    new_access_key_id,
    new_api_key_id,
)
from vault.domain.models import Page
from vault.domain.names import AccountName
from vault.domain.ports import IdentityStore, SharedCounters, SystemCrypto

_SECRET_CONTEXT: Final = b"vault-access-secret-v1\x00"
_API_TOKEN_CONTEXT: Final = b"vault-api-token-v1\x00"
SALT_BYTES: Final = 32
_NO_SALT: Final = bytes(SALT_BYTES)
BOOTSTRAP_ACCOUNT: Final = "admin"
DEFAULT_USAGE_DAYS: Final = 31
_ID_DRAWS: Final = 3
_T = TypeVar("_T")


class IdentityManagement:
    def __init__(
        self,
        store: IdentityStore,
        crypto: SystemCrypto,
        random: Callable[[int], bytes],
        counters: SharedCounters | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._random = random
        self._counters = counters
        self._clock = clock

    def __repr__(self) -> str:
        return "IdentityManagement()"

    # -- derivations ------------------------------------------------------------------------

    def derive_secret(self, key: AccessKey) -> str:
        return self._derive(key.access_key_id, key.secret_salt)

    def derive_unknown_secret(self, access_key_id: str) -> str:
        """The token work of derive_secret for an access key id that has no key, so that
        authentication spends as long on it as on a real one. The result is no caller's
        secret: no access key has an all-zero salt."""
        return self._derive(access_key_id, _NO_SALT)

    def _derive(self, access_key_id: str, salt: bytes) -> str:
        data = _SECRET_CONTEXT + access_key_id.encode("ascii") + b"\x00" + salt
        return encode_secret_key(self._crypto.credential_mac(data))

    def api_token_hash(self, token: str) -> bytes:
        return self._crypto.credential_mac(_API_TOKEN_CONTEXT + token.encode("ascii"))

    def _changed(self) -> None:
        # Every worker drops what it cached about credentials before its next request.
        if self._counters is not None:
            self._counters.bump_credential_epoch()

    # -- accounts ---------------------------------------------------------------------------

    def create_account(self, account_id: str, display_name: str, admin: bool) -> Account:
        check_account_id(account_id)
        if len(display_name) > MAX_DISPLAY_NAME:
            raise InvalidArgument(
                f"display_name is longer than {MAX_DISPLAY_NAME} characters",
                metadata={"field": "display_name"},
            )
        return self._store.create_account(Account(account_id, display_name, admin, self._clock()))

    def get_account(self, name: str) -> Account:
        account_id = AccountName.parse(name).account
        account = self._store.get_account(account_id)
        if account is None:
            raise NotFound(f"account {name} not found")
        return account

    def list_accounts(self, page_size: int, page_token: str) -> Page[Account]:
        return self._store.list_accounts(page_size, page_token)

    # -- access keys ------------------------------------------------------------------------

    def create_access_key(
        self, parent: str, grants: Sequence[Grant], description: str
    ) -> tuple[AccessKey, str]:
        account = self.get_account(parent)
        if len(grants) > MAX_GRANTS:
            raise InvalidArgument(f"at most {MAX_GRANTS} grants", metadata={"field": "grants"})
        check_description(description)

        def attempt() -> AccessKey:
            key = AccessKey(
                account_id=account.account_id,
                access_key_id=new_access_key_id(self._random(12)),
                state=CredentialState.ACTIVE,
                grants=tuple(grants),
                description=description,
                create_time=self._clock(),
                secret_salt=self._random(SALT_BYTES),
            )
            return self._store.create_access_key(key)

        created = _with_unused_id("access key", attempt)
        # Workers cache ids they looked up and found no key for; this one has a key now.
        self._changed()
        return created, self.derive_secret(created)

    def get_access_key(self, name: str) -> AccessKey:
        parsed = AccessKeyName.parse(name)
        key = self._store.get_access_key(parsed.access_key_id)
        if key is None or key.account_id != parsed.account_id:
            raise NotFound(f"access key {name} not found")
        return key

    def list_access_keys(self, parent: str, page_size: int, page_token: str) -> Page[AccessKey]:
        account = AccountName.parse(parent).account
        return self._store.list_access_keys(account, page_size, page_token)

    def reset_secret_key(self, name: str) -> tuple[AccessKey, str]:
        key = self.get_access_key(name)
        if key.state is not CredentialState.ACTIVE:
            raise WrongState(f"access key {name} is {key.state}: its secret cannot be reset")
        updated = self._store.update_access_key(
            replace(key, secret_salt=self._random(SALT_BYTES), secret_reset_time=self._clock())
        )
        self._changed()
        return updated, self.derive_secret(updated)

    def revoke_access_key(self, name: str) -> AccessKey:
        key = self.get_access_key(name)
        if key.state is CredentialState.REVOKED:
            return key
        updated = self._store.update_access_key(replace(key, state=CredentialState.REVOKED))
        self._changed()
        return updated

    def delete_access_key(self, name: str) -> None:
        key = self.get_access_key(name)
        if not self._store.delete_access_key(key.access_key_id):
            raise NotFound(f"access key {name} not found")
        self._changed()

    def bootstrap_admin(self) -> tuple[AccessKey, str] | None:
        """On a store without any admin account: create one and its first access key."""
        if self._store.has_admin_account():
            return None
        try:
            self.create_account(BOOTSTRAP_ACCOUNT, "administrators", admin=True)
        except AlreadyExists:
            account = self._store.get_account(BOOTSTRAP_ACCOUNT)
            if account is None or not account.admin:
                raise
        return self.create_access_key(
            f"accounts/{BOOTSTRAP_ACCOUNT}", (), "bootstrap admin key created at first start"
        )

    def recovery_admin_key(self, account_id: str = BOOTSTRAP_ACCOUNT) -> tuple[AccessKey, str]:
        """A new unrestricted access key of an admin account, for an operator who lost every
        admin credential (`vaultctl admin recover`, run where the store and token are). On a
        store without any admin account this is the first start's bootstrap."""
        bootstrapped = self.bootstrap_admin()
        if bootstrapped is not None:
            return bootstrapped
        account = self.get_account(f"accounts/{account_id}")
        if not account.admin:
            raise InvalidArgument(
                f"accounts/{account_id} is not an admin account",
                metadata={"name": f"accounts/{account_id}"},
            )
        return self.create_access_key(
            f"accounts/{account_id}", (), "recovery admin key made on the vault's machine"
        )

    # -- API keys ---------------------------------------------------------------------------

    def create_api_key(
        self,
        parent: str,
        scopes: Sequence[ApiScope],
        *,
        expire_time: datetime | None,
        rate_limit: RateLimit | None,
        daily_quota: int,
        description: str,
    ) -> tuple[ApiKey, str]:
        account = self.get_account(parent)
        if not scopes or len(scopes) > MAX_SCOPES:
            raise InvalidArgument(
                f"an API key needs 1 to {MAX_SCOPES} scopes", metadata={"field": "scopes"}
            )
        if daily_quota < 0:
            raise InvalidArgument(
                "daily_quota cannot be negative", metadata={"field": "daily_quota"}
            )
        now = self._clock()
        if expire_time is not None and expire_time <= now:
            raise InvalidArgument("expire_time is in the past", metadata={"field": "expire_time"})
        check_description(description)

        def attempt() -> tuple[ApiKey, str]:
            api_key_id = new_api_key_id(self._random(10))
            token = make_api_token(api_key_id, self._random(32))
            key = ApiKey(
                account_id=account.account_id,
                api_key_id=api_key_id,
                state=CredentialState.ACTIVE,
                scopes=tuple(scopes),
                description=description,
                create_time=now,
                token_hash=self.api_token_hash(token),
                expire_time=expire_time,
                rate_limit=rate_limit,
                daily_quota=daily_quota,
            )
            return self._store.create_api_key(key), token

        created = _with_unused_id("API key", attempt)
        self._changed()  # as for access keys: no worker may keep this id cached as unknown
        return created

    def get_api_key(self, name: str) -> ApiKey:
        parsed = ApiKeyName.parse(name)
        key = self._store.get_api_key(parsed.api_key_id)
        if key is None or key.account_id != parsed.account_id:
            raise NotFound(f"API key {name} not found")
        return key

    def list_api_keys(self, parent: str, page_size: int, page_token: str) -> Page[ApiKey]:
        account = AccountName.parse(parent).account
        return self._store.list_api_keys(account, page_size, page_token)

    def revoke_api_key(self, name: str) -> ApiKey:
        key = self.get_api_key(name)
        if key.state is CredentialState.REVOKED:
            return key
        updated = self._store.update_api_key(replace(key, state=CredentialState.REVOKED))
        self._changed()
        return updated

    def usage(self, name: str, days: int, page_size: int, page_token: str) -> Page[UsageCount]:
        """One page of the credential's counters of the last days UTC days (0: 31), by day
        then method; page_size 0 selects every counter of the window (the transport still
        ends a page where the message is full)."""
        if days < 0 or days > 366:
            raise InvalidArgument("days must be 0 to 366", metadata={"field": "days"})
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", metadata={"field": "page_size"})
        credential_id = (
            self.get_api_key(name).api_key_id
            if "/apiKeys/" in name
            else self.get_access_key(name).access_key_id
        )
        since = (self._clock() - timedelta(days=(days or DEFAULT_USAGE_DAYS) - 1)).date()
        return self._store.usage(credential_id, since.isoformat(), page_size, page_token)


def _with_unused_id(what: str, attempt: Callable[[], _T]) -> _T:
    """attempt(), which draws a random id each time, until its id is not taken: 80-90 random
    bits all but never collide, so a third collision means something else is wrong."""
    for _ in range(_ID_DRAWS):
        try:
            return attempt()
        except AlreadyExists:
            continue
    raise AlreadyExists(f"could not draw an unused {what} id")
