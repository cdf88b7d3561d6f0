"""A stale handle is retried on a fresh session while the token stays present.

SoftHSM re-reads its token directory whenever another process writes it; a process that
keeps creating and destroying token objects (another vault host, vaultctl) made two tries in
a row meet a stale handle about once in a few thousand calls
(test_concurrency.py::test_token_resident_keys_while_another_process_changes_the_token), so
one retry was not enough. These tests put stale handles in the way of real token operations.
"""

from __future__ import annotations

import pytest
from pkcs11 import exceptions

from vault.domain.errors import TokenUnavailable
from vault.hsm.keystore import Pkcs11KeyStore
from vault.hsm.library import STALE_HANDLE_TRIES, ThreadContext


def test_stale_handles_until_the_last_try_still_give_the_result(
    keystore: Pkcs11KeyStore,
) -> None:
    sessions: list[object] = []

    def generate_random(context: ThreadContext) -> bytes:
        sessions.append(context.session)
        if len(sessions) < STALE_HANDLE_TRIES:
            raise exceptions.ObjectHandleInvalid()
        return bytes(context.session.generate_random(256))

    assert len(keystore._library.run(generate_random)) == 32
    assert len(sessions) == STALE_HANDLE_TRIES
    # Each try after a stale handle runs on a session of its own.
    assert len({id(session) for session in sessions}) == STALE_HANDLE_TRIES


def test_a_handle_that_stays_stale_ends_in_token_unavailable(
    keystore: Pkcs11KeyStore,
) -> None:
    tries = 0

    def always_stale(context: ThreadContext) -> bytes:
        nonlocal tries
        tries += 1
        raise exceptions.KeyHandleInvalid()

    with pytest.raises(TokenUnavailable, match="KeyHandleInvalid"):
        keystore._library.run(always_stale)
    assert tries == STALE_HANDLE_TRIES
    # The token is still usable afterwards.
    assert len(keystore._library.run(lambda c: bytes(c.session.generate_random(64)))) == 8
