"""What the API tests share: fresh resource ids and the one way they assert a failed call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import uuid4

import grpc
import pytest

from vault.client import VaultClient, VaultClientError


def new_id() -> str:
    return f"k{uuid4().hex[:10]}"


def new_account(admin: VaultClient | None = None) -> str:
    """A fresh account name, accounts/a...; with admin (a client with the admin role) the
    account is created too, as keys can only be made in an existing account."""
    account = f"accounts/a{uuid4().hex[:10]}"
    if admin is not None:
        admin.create_account(account.removeprefix("accounts/"))
    return account


def ensure_account(admin: VaultClient, account: str) -> str:
    """Create account (`accounts/{id}` or `{id}`) unless it exists; returns accounts/{id}."""
    account_id = account.removeprefix("accounts/")
    try:
        admin.create_account(account_id)
    except VaultClientError as error:
        if error.code != grpc.StatusCode.ALREADY_EXISTS:
            raise
    return f"accounts/{account_id}"


def expect_error(
    code: grpc.StatusCode, reason: str, call: Callable[[], object]
) -> VaultClientError:
    """Run call, which must fail with exactly this status code and ErrorInfo reason."""
    with pytest.raises(VaultClientError) as caught:
        call()
    error = caught.value
    assert (error.code, error.reason) == (code, reason), str(error)
    return error


def every_page(fetch: Callable[[str], Any]) -> list[Any]:
    """Every page of a List, fetch(page_token) from the empty token until a page's
    next_page_token is empty: only that ends a listing, never a short page."""
    pages = []
    token = ""
    while True:
        pages.append(fetch(token))
        token = pages[-1].next_page_token
        if not token:
            return pages
        assert len(pages) < 50, "pagination does not end"
