"""The pure logic of batch calls, without a token or a server: the size check, and how the
service keeps each item's result or error in its place around one token call."""

from __future__ import annotations

import pytest

from vault.domain.batches import check_batch_size
from vault.domain.envelope import GcmEnvelope, gcm_aad, gcm_aad_prefix, gcm_header
from vault.domain.errors import (
    DecryptionFailed,
    InvalidArgument,
    NoItems,
    TokenUnavailable,
    TooManyItems,
    VaultError,
)
from vault.service.crypto import through_token


def test_the_size_check_refuses_none_and_more_than_the_limit() -> None:
    check_batch_size(1, 3)
    check_batch_size(3, 3)
    with pytest.raises(TooManyItems) as caught:
        check_batch_size(4, 3)
    assert caught.value.metadata == {"items": "4", "limit": "3"}
    assert caught.value.reason == "TOO_MANY_ITEMS"
    with pytest.raises(NoItems):
        check_batch_size(0, 3)


def _prepare(item: int) -> tuple[int, str]:
    if item < 0:
        raise InvalidArgument("negative")
    return item, f"context {item}"


def _finish(answer: bytes, request: int, context: str) -> str:
    if request == 13:
        raise DecryptionFailed()
    return f"{context}: {answer.decode()}"


def test_results_and_errors_keep_their_places_around_one_token_call() -> None:
    calls: list[list[int]] = []

    def token(requests: list[int]) -> list[bytes | VaultError]:
        calls.append(requests)
        return [DecryptionFailed() if r == 7 else str(r * 2).encode() for r in requests]

    results = through_token([1, -1, 7, 13, 2], _prepare, token, _finish)

    assert calls == [[1, 7, 13, 2]]  # one call, only the items that passed
    assert results[0] == "context 1: 2"
    assert isinstance(results[1], InvalidArgument)  # refused before the token
    assert isinstance(results[2], DecryptionFailed)  # the token's answer for that item
    assert isinstance(results[3], DecryptionFailed)  # refused after it
    assert results[4] == "context 2: 4"


def test_a_token_call_failing_as_a_whole_fails_each_item_it_carried() -> None:
    def token(requests: list[int]) -> list[bytes | VaultError]:
        raise TokenUnavailable("gone")

    results = through_token([1, -1, 2], _prepare, token, _finish)

    assert [type(r) for r in results] == [TokenUnavailable, InvalidArgument, TokenUnavailable]


def test_no_token_call_when_no_item_passed() -> None:
    def token(requests: list[int]) -> list[bytes | VaultError]:
        raise AssertionError("called")

    assert [type(r) for r in through_token([-1], _prepare, token, _finish)] == [InvalidArgument]


def test_the_aad_prefix_a_batch_builds_once_is_the_start_of_the_unary_aad() -> None:
    header = gcm_header(7)
    assert header == GcmEnvelope(7, b"\x00" * 12, b"").header()
    for aad in (b"", b"object 1", b"\x00" * 300):
        name = "accounts/a/keys/k"
        assert gcm_aad_prefix(header, name) + aad == gcm_aad(header, name, aad)
    # Another key name or version gives another prefix: an item stays bound to both.
    assert gcm_aad_prefix(header, "accounts/a/keys/k") != gcm_aad_prefix(
        header, "accounts/a/keys/j"
    )
    assert gcm_aad_prefix(gcm_header(8), "accounts/a/keys/k") != gcm_aad_prefix(
        header, "accounts/a/keys/k"
    )
