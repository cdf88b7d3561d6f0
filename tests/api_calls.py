"""What the API tests share: fresh resource ids and the one way they assert a failed call."""

from __future__ import annotations

from collections.abc import Callable
from uuid import uuid4

import grpc
import pytest

from vault.client import VaultClientError


def new_id() -> str:
    return f"k{uuid4().hex[:10]}"


def new_account() -> str:
    return f"accounts/a{uuid4().hex[:10]}"


def expect_error(
    code: grpc.StatusCode, reason: str, call: Callable[[], object]
) -> VaultClientError:
    """Run call, which must fail with exactly this status code and ErrorInfo reason."""
    with pytest.raises(VaultClientError) as caught:
        call()
    error = caught.value
    assert (error.code, error.reason) == (code, reason), str(error)
    return error
