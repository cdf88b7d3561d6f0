"""What the authentication, authorisation, API key and audit tests share: servers of their own,
accounts with credentials, and calls made over a new connection each time.

A server runs two worker processes on one port (SO_REUSEPORT): the kernel picks the worker
per connection. A channel with its own subchannel pool opens its own connection, so calls
made each on a fresh channel are spread over both workers, which is how these tests check
that state shared between workers (nonces, revocations, rate limits) really is shared.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from uuid import uuid4

import grpc
import pytest

from tests.support.api_calls import expect_error
from tests.support.harness import VaultServer, provision
from vault.client import AccessKeyCredentials, ApiKeyCredentials, VaultClient, VaultClientError
from vault.domain.signing import AUTHORIZATION_HEADER, sign_request

FRESH_CONNECTION: Final = (("grpc.use_local_subchannel_pool", 1),)
# Enough fresh connections that both workers are all but certain to serve some of them
# (each goes to either with probability 1/2).
SPREAD: Final = 10
UNAUTHENTICATED: Final = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED: Final = grpc.StatusCode.PERMISSION_DENIED
RESOURCE_EXHAUSTED: Final = grpc.StatusCode.RESOURCE_EXHAUSTED
# For a module whose failure cases would otherwise soon throttle its own address (all tests
# call from 127.0.0.1) or the key ids it probes.
NO_THROTTLING: Final = {
    "VAULT_AUTH__MAX_FAILURES_PER_ADDRESS": "100000",
    "VAULT_AUTH__MAX_FAILURES_PER_KEY": "100000",
}

_T = TypeVar("_T")


def own_server(
    factory: pytest.TempPathFactory, name: str, extra_env: Mapping[str, str] | None = None
) -> Iterator[VaultServer]:
    """A freshly provisioned vault with its own data directory and settings, for a module
    whose failures (throttling, tampering) must not reach the session's server."""
    data_dir = factory.mktemp(name)
    provision(data_dir)
    with VaultServer(data_dir, extra_env=extra_env) as server:
        yield server


@dataclass(frozen=True, slots=True)
class AccessKey:
    """An access key as its holder knows it: resource name and credentials."""

    name: str
    credentials: AccessKeyCredentials

    @property
    def key_id(self) -> str:
        return self.credentials.access_key_id


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    api_key_id: str
    credentials: ApiKeyCredentials

    @property
    def token(self) -> str:
        return self.credentials.token


def new_account(admin: VaultClient, prefix: str = "t") -> str:
    """A new account (created through IdentityService); returns accounts/{id}."""
    account_id = f"{prefix}{uuid4().hex[:10]}"
    admin.create_account(account_id, display_name=f"test account {account_id}")
    return f"accounts/{account_id}"


def add_access_key(
    admin: VaultClient, account: str, grants: Sequence[tuple[str, str]] = ()
) -> AccessKey:
    created = admin.create_access_key(account, grants=grants)
    credentials = AccessKeyCredentials(created.access_key.access_key_id, created.secret_key)
    return AccessKey(created.access_key.name, credentials)


def add_api_key(
    admin: VaultClient,
    account: str,
    scopes: Sequence[tuple[Sequence[str], Sequence[str]]],
    **options: Any,
) -> ApiKey:
    created = admin.create_api_key(account, scopes, **options)
    return ApiKey(
        created.api_key.name, created.api_key.api_key_id, ApiKeyCredentials(created.token)
    )


def fresh_client(
    server: VaultServer, credentials: AccessKeyCredentials | ApiKeyCredentials | None
) -> VaultClient:
    """A client on a connection of its own. credentials None: no authorization metadata at all
    (server.client would substitute the admin's)."""
    if credentials is None:
        return VaultClient(server.target, options=FRESH_CONNECTION)
    client: VaultClient = server.client(credentials, options=FRESH_CONNECTION)
    return client


def on_fresh_connections(
    server: VaultServer,
    credentials: AccessKeyCredentials | ApiKeyCredentials | None,
    call: Callable[[VaultClient], _T],
    times: int = SPREAD,
) -> list[_T | VaultClientError]:
    """call made times, each over a new connection: its result or the error it raised."""
    outcomes: list[_T | VaultClientError] = []
    for _ in range(times):
        with fresh_client(server, credentials) as client:
            try:
                outcomes.append(call(client))
            except VaultClientError as error:
                outcomes.append(error)
    return outcomes


def codes(outcomes: Sequence[object]) -> list[str]:
    """Each outcome as "OK" or "CODE REASON", for assertions that print well."""
    return [
        f"{o.code.name} {o.reason}" if isinstance(o, VaultClientError) else "OK" for o in outcomes
    ]


def signed_metadata(
    credentials: AccessKeyCredentials,
    method: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> list[tuple[str, str]]:
    """The authorization metadata of a request signed by hand (vault.domain.signing)."""
    header = sign_request(
        method,
        credentials.access_key_id,
        credentials.secret_key,
        int(time.time()) if timestamp is None else timestamp,
        secrets.token_urlsafe(18) if nonce is None else nonce,
        body,
    )
    return [(AUTHORIZATION_HEADER, header.render())]


def raw_call(
    target: str, method: str, body: bytes, metadata: Sequence[tuple[str, str]] = ()
) -> bytes:
    """Send body as the request bytes of method, with exactly this metadata, over a new
    connection; the response bytes, or VaultClientError."""
    with grpc.insecure_channel(target, options=FRESH_CONNECTION) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            method, request_serializer=None, response_deserializer=None
        )
        try:
            response = call(body, metadata=tuple(metadata), timeout=30)
        except grpc.RpcError as error:
            raise VaultClientError.from_rpc_error(error) from error
        return response


def expect_unauthenticated(call: Callable[[], object]) -> VaultClientError:
    """call must fail exactly as every authentication failure does: nothing in the answer
    tells one cause from another."""
    error = expect_error(UNAUTHENTICATED, "UNAUTHENTICATED", call)
    assert error.metadata == {}
    assert error.retry_after is None
    return error


def expect_denied(call: Callable[[], object]) -> VaultClientError:
    """call must be refused, the refusal naming the method, the resource and what it needs
    (and nothing else: not whether the resource exists)."""
    error = expect_error(PERMISSION_DENIED, "PERMISSION_DENIED", call)
    assert set(error.metadata) <= {"method", "resource", "required"}, error.metadata
    assert {"method", "required"} <= set(error.metadata), error.metadata
    return error


def assert_identical(errors: list[VaultClientError]) -> None:
    """The same answer apart from the resource named and the access it needs, which follow
    from the name the caller gave and the method alone."""

    def answer(error: VaultClientError) -> tuple[object, ...]:
        message = error.message
        for varying in ("resource", "required"):
            message = message.replace(error.metadata.get(varying, "") or "\0", varying)
        metadata = {**error.metadata, "resource": "", "required": ""}
        return (error.code, error.reason, message, tuple(sorted(metadata.items())))

    answers = {answer(e) for e in errors}
    assert len(answers) == 1, answers
