"""IdentityStore over SQLAlchemy Core: accounts, access keys, API keys and usage counters, in
the same database as the key metadata. Portable SQL only, like metadata_store.py."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    true,
    update,
)

from vault.domain.errors import AlreadyExists, InvalidArgument, NotFound, VaultError
from vault.domain.identity import (
    AccessKey,
    AccessLevel,
    Account,
    ApiKey,
    ApiScope,
    CredentialState,
    Grant,
    RateLimit,
    UsageCount,
)
from vault.domain.models import Page
from vault.storage.paging import (
    clamp_page_size,
    decode_page_token,
    keyset_page,
    malformed_page_token,
)
from vault.storage.tables import (
    USAGE_METHOD_LENGTH,
    access_keys,
    accounts,
    api_keys,
    usage_counters,
)
from vault.storage.transactions import (
    aware,
    aware_or_none,
    guarded_transaction,
    new_serial_lock,
)

_DAY_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

# Credentials are looked up on every authenticated request: built once.
_GET_ACCOUNT = select(accounts).where(accounts.c.account_id == bindparam("id"))
_GET_ACCESS_KEY = select(access_keys).where(access_keys.c.access_key_id == bindparam("id"))
_GET_API_KEY = select(api_keys).where(api_keys.c.api_key_id == bindparam("id"))
_ACCOUNT_EXISTS = select(accounts.c.account_id).where(accounts.c.account_id == bindparam("id"))
_USAGE_ON = select(func.coalesce(func.sum(usage_counters.c.count), 0)).where(
    usage_counters.c.credential_id == bindparam("credential_id"),
    usage_counters.c.day == bindparam("day"),
)


class SqlIdentityStore:
    """The vault's IdentityStore. One instance per process, shared by all request threads."""

    def __init__(self, engine: Engine, *, serial: threading.Lock | None = None) -> None:
        self._engine = engine
        # See SqlMetadataStore: an in-memory database is one shared connection, so calls take
        # turns. Stores sharing such an engine must share this lock too (open_stores does).
        self._serial = serial if serial is not None else new_serial_lock(engine)

    def __repr__(self) -> str:
        return f"SqlIdentityStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Close every pooled connection of the engine (shared with the other stores)."""
        self._engine.dispose()

    # --- accounts ---------------------------------------------------------------------------

    def create_account(self, account: Account) -> Account:
        """AlreadyExists if the id is taken."""
        row = {
            "account_id": account.account_id,
            "display_name": account.display_name,
            "admin": account.admin,
            "create_time": aware(account.create_time),
        }
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: AlreadyExists(
                "account already exists", metadata={"account": account.account_id}
            ),
        ) as c:
            c.execute(insert(accounts).values(**row))
        return account

    def get_account(self, account_id: str) -> Account | None:
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            row = c.execute(_GET_ACCOUNT, {"id": account_id}).mappings().one_or_none()
        return None if row is None else _to_account(row)

    def list_accounts(self, page_size: int, page_token: str) -> Page[Account]:
        page = self._page(accounts, accounts.c.account_id, (), page_size, page_token)
        items = [_to_account(row) for row in page.items]
        return Page(items, page.next_page_token, page.token_after)

    def has_admin_account(self) -> bool:
        query = select(accounts.c.account_id).where(accounts.c.admin == true()).limit(1)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            return c.execute(query).first() is not None

    # --- access keys ------------------------------------------------------------------------

    def create_access_key(self, key: AccessKey) -> AccessKey:
        """NotFound if the account does not exist; AlreadyExists if the id is taken."""
        row = _access_key_row(key)
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: self._explain_duplicate(
                key.account_id, "access key already exists", {"name": key.name}
            ),
        ) as c:
            _require_account(c, key.account_id)
            c.execute(insert(access_keys).values(**row))
        return key

    def get_access_key(self, access_key_id: str) -> AccessKey | None:
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            row = c.execute(_GET_ACCESS_KEY, {"id": access_key_id}).mappings().one_or_none()
        return None if row is None else _to_access_key(row)

    def list_access_keys(self, account_id: str, page_size: int, page_token: str) -> Page[AccessKey]:
        page = self._page(
            access_keys,
            access_keys.c.access_key_id,
            (access_keys.c.account_id == account_id,),
            page_size,
            page_token,
        )
        items = [_to_access_key(row) for row in page.items]
        return Page(items, page.next_page_token, page.token_after)

    def update_access_key(self, key: AccessKey) -> AccessKey:
        """Write state, secret_salt and secret_reset_time; NotFound if it is gone."""
        values = {
            "state": key.state.value,
            "secret_salt": key.secret_salt,
            "secret_reset_time": aware_or_none(key.secret_reset_time),
        }
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            result = c.execute(
                update(access_keys)
                .where(access_keys.c.access_key_id == key.access_key_id)
                .values(**values)
            )
            if result.rowcount != 1:
                raise NotFound("access key not found", metadata={"name": key.name})
            row = c.execute(_GET_ACCESS_KEY, {"id": key.access_key_id}).mappings().one()
        return _to_access_key(row)

    def delete_access_key(self, access_key_id: str) -> bool:
        """Whether there was such a key. Its usage and audit records stay."""
        statement = access_keys.delete().where(access_keys.c.access_key_id == access_key_id)
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            return c.execute(statement).rowcount == 1

    # --- API keys ---------------------------------------------------------------------------

    def create_api_key(self, key: ApiKey) -> ApiKey:
        """NotFound if the account does not exist; AlreadyExists if the id is taken."""
        row = _api_key_row(key)
        with guarded_transaction(
            self._engine,
            self._serial,
            write=True,
            on_duplicate=lambda: self._explain_duplicate(
                key.account_id, "API key already exists", {"name": key.name}
            ),
        ) as c:
            _require_account(c, key.account_id)
            c.execute(insert(api_keys).values(**row))
        return key

    def get_api_key(self, api_key_id: str) -> ApiKey | None:
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            row = c.execute(_GET_API_KEY, {"id": api_key_id}).mappings().one_or_none()
        return None if row is None else _to_api_key(row)

    def list_api_keys(self, account_id: str, page_size: int, page_token: str) -> Page[ApiKey]:
        page = self._page(
            api_keys,
            api_keys.c.api_key_id,
            (api_keys.c.account_id == account_id,),
            page_size,
            page_token,
        )
        items = [_to_api_key(row) for row in page.items]
        return Page(items, page.next_page_token, page.token_after)

    def update_api_key(self, key: ApiKey) -> ApiKey:
        """Write state; NotFound if it is gone."""
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            result = c.execute(
                update(api_keys)
                .where(api_keys.c.api_key_id == key.api_key_id)
                .values(state=key.state.value)
            )
            if result.rowcount != 1:
                raise NotFound("API key not found", metadata={"name": key.name})
            row = c.execute(_GET_API_KEY, {"id": key.api_key_id}).mappings().one()
        return _to_api_key(row)

    # --- usage ------------------------------------------------------------------------------

    def usage(
        self, credential_id: str, since_day: str, page_size: int, page_token: str
    ) -> Page[UsageCount]:
        """One page of the counters of credential_id from since_day (YYYY-MM-DD) on, by day
        then method; page_size 0 selects every counter of the window."""
        # 0 is every counter, as GetUsage answered before it paged, so that a caller that
        # ignores the token still gets all of them whenever they fit one message. A window
        # holds at most 366 days of the methods there are (some 25,000 counters).
        size = clamp_page_size(page_size) if page_size else None
        query = select(usage_counters.c.day, usage_counters.c.method, usage_counters.c.count).where(
            usage_counters.c.credential_id == credential_id,
            usage_counters.c.day >= check_day(since_day),
        )
        if page_token:
            day, method = _decode_usage_token(page_token)
            # The rows after (day, method): both databases read this OR as two ranges of the
            # primary key's index, so a late page does not scan the window from its start.
            query = query.where(
                or_(
                    usage_counters.c.day > day,
                    and_(usage_counters.c.day == day, usage_counters.c.method > method),
                ),
            )
        # One row beyond the page says whether another page follows, without a COUNT.
        query = query.order_by(usage_counters.c.day, usage_counters.c.method)
        if size is not None:
            query = query.limit(size + 1)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).all()
        more = size is not None and len(rows) > size
        items = [UsageCount(day=str(d), method=str(m), count=int(n)) for d, m, n in rows[:size]]
        return keyset_page(items, more, _usage_ordering)

    def usage_on(self, credential_id: str, day: str) -> int:
        """All requests counted for credential_id on day."""
        params = {"credential_id": credential_id, "day": check_day(day)}
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            return int(c.execute(_USAGE_ON, params).scalar_one())

    # --- plumbing ---------------------------------------------------------------------------

    def _page(
        self,
        table: Table,
        order: Column[Any],
        where: Sequence[ColumnElement[bool]],
        page_size: int,
        page_token: str,
    ) -> Page[RowMapping]:
        """One page of rows ordered by the single-column primary key order."""
        size = clamp_page_size(page_size)
        query = select(table).where(*where)
        if page_token:
            query = query.where(order > decode_page_token(page_token))
        # One row beyond the page says whether another page follows, without a COUNT.
        query = query.order_by(order).limit(size + 1)
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return keyset_page(rows[:size], len(rows) > size, lambda row: row[order.name])

    def _explain_duplicate(
        self, account_id: str, message: str, metadata: dict[str, str]
    ) -> VaultError:
        # The account was there when the insert ran (it is checked first), but a server
        # database may have lost it since: the foreign key then failed, not the primary key.
        if self.get_account(account_id) is None:
            return _account_not_found(account_id)
        return AlreadyExists(message, metadata=metadata)


# --- helpers shared with the audit store ------------------------------------------------------


def check_day(day: str) -> str:
    # Days are compared as strings, which orders them only in exactly this form.
    if not _DAY_RE.fullmatch(day):
        raise InvalidArgument("a day must be given as YYYY-MM-DD", metadata={"field": "day"})
    return day


def _usage_ordering(counter: UsageCount) -> str:
    # A day is exactly YYYY-MM-DD, so the first colon ends it whatever the method holds.
    return f"{counter.day}:{counter.method}"


def _decode_usage_token(token: str) -> tuple[str, str]:
    """The day and method a page token of GetUsage continues after."""
    day, colon, method = decode_page_token(token).partition(":")
    if not colon or not _DAY_RE.fullmatch(day) or not 0 < len(method) <= USAGE_METHOD_LENGTH:
        raise malformed_page_token()
    return day, method


def _account_not_found(account_id: str) -> NotFound:
    return NotFound(f"account {account_id!r} not found", metadata={"account": account_id})


def _require_account(c: Connection, account_id: str) -> None:
    if c.execute(_ACCOUNT_EXISTS, {"id": account_id}).first() is None:
        raise _account_not_found(account_id)


def _access_key_row(key: AccessKey) -> dict[str, Any]:
    return {
        "access_key_id": key.access_key_id,
        "account_id": key.account_id,
        "state": key.state.value,
        "grants": [{"resource": g.resource, "level": int(g.level)} for g in key.grants],
        "description": key.description,
        "secret_salt": key.secret_salt,
        "create_time": aware(key.create_time),
        "secret_reset_time": aware_or_none(key.secret_reset_time),
        "last_used_time": aware_or_none(key.last_used_time),
    }


def _api_key_row(key: ApiKey) -> dict[str, Any]:
    limit = key.rate_limit
    return {
        "api_key_id": key.api_key_id,
        "account_id": key.account_id,
        "state": key.state.value,
        # Sorted, so equal scopes are stored as equal JSON.
        "scopes": [
            {"methods": sorted(s.methods), "resources": list(s.resources)} for s in key.scopes
        ],
        "description": key.description,
        "token_hash": key.token_hash,
        "expire_time": aware_or_none(key.expire_time),
        "rate_per_second": None if limit is None else limit.requests_per_second,
        "burst": None if limit is None else limit.burst,
        "daily_quota": key.daily_quota,
        "create_time": aware(key.create_time),
        "last_used_time": aware_or_none(key.last_used_time),
    }


def _to_account(row: RowMapping) -> Account:
    return Account(
        account_id=row["account_id"],
        display_name=row["display_name"],
        admin=bool(row["admin"]),
        create_time=row["create_time"],
    )


def _to_access_key(row: RowMapping) -> AccessKey:
    return AccessKey(
        account_id=row["account_id"],
        access_key_id=row["access_key_id"],
        state=CredentialState(row["state"]),
        grants=tuple(
            Grant(resource=str(g["resource"]), level=AccessLevel(int(g["level"])))
            for g in row["grants"] or ()
        ),
        description=row["description"],
        create_time=row["create_time"],
        # Drivers may return memoryview (psycopg) for binary columns; the domain wants bytes.
        secret_salt=bytes(row["secret_salt"]),
        secret_reset_time=row["secret_reset_time"],
        last_used_time=row["last_used_time"],
    )


def _to_api_key(row: RowMapping) -> ApiKey:
    rate, burst = row["rate_per_second"], row["burst"]
    return ApiKey(
        account_id=row["account_id"],
        api_key_id=row["api_key_id"],
        state=CredentialState(row["state"]),
        scopes=tuple(
            ApiScope(
                methods=frozenset(str(m) for m in s["methods"]),
                resources=tuple(str(r) for r in s["resources"]),
            )
            for s in row["scopes"] or ()
        ),
        description=row["description"],
        create_time=row["create_time"],
        token_hash=bytes(row["token_hash"]),
        expire_time=row["expire_time"],
        rate_limit=None if rate is None or burst is None else RateLimit(float(rate), int(burst)),
        daily_quota=int(row["daily_quota"]),
        last_used_time=row["last_used_time"],
    )


if TYPE_CHECKING:
    from vault.domain.ports import IdentityStore

    # Makes mypy prove that the class satisfies the port it implements.
    _PORT_CHECK: type[IdentityStore] = SqlIdentityStore
