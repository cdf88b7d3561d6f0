"""Page sizes and page tokens shared by every List query of the stores.

A page token is the ordering value of the last row of the previous page, base64url-encoded:
opaque to callers, checked when it comes back.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from vault.domain.errors import InvalidArgument
from vault.domain.models import Page

T = TypeVar("T")

DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
_MAX_TOKEN_VALUE: Final = 256


def clamp_page_size(page_size: int) -> int:
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return max(1, min(MAX_PAGE_SIZE, page_size))


def encode_page_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode("utf-8")).decode("ascii").rstrip("=")


def keyset_page(items: Sequence[T], more: bool, ordering: Callable[[T], object]) -> Page[T]:
    """A page of items in the List's order (more: rows follow it). Its token, and the token
    after any of its items (Page.token_after, for a page cut short), is that item's ordering
    value, which the next query continues after."""
    listed = list(items)

    def token_after(index: int) -> str:
        return encode_page_token(str(ordering(listed[index])))

    return Page(listed, token_after(len(listed) - 1) if more else "", token_after)


def decode_page_token(token: str) -> str:
    """The value a page token continues after. InvalidArgument if the caller's token is not
    one a store made."""
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        value = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        value = ""
    if not value or len(value) > _MAX_TOKEN_VALUE or not value.isprintable():
        raise malformed_page_token()
    return value


def decode_version_token(token: str) -> int:
    """The key version number a page token of a listing of versions continues after."""
    value = decode_page_token(token)
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise malformed_page_token()
    return int(value)


def malformed_page_token() -> InvalidArgument:
    return InvalidArgument("malformed page token", metadata={"field": "page_token"})
