"""Credentials and the client side of request signing (vault.domain.signing)."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import grpc

from vault.domain.signing import AUTHORIZATION_HEADER, BEARER_PREFIX, sign_request

ACCESS_KEY_ID_ENV = "VAULT_ACCESS_KEY_ID"
SECRET_KEY_ENV = "VAULT_SECRET_KEY"  # noqa: S105 (the variable's name, not a secret)
API_KEY_ENV = "VAULT_API_KEY"


@dataclass(frozen=True, slots=True)
class AccessKeyCredentials:
    """An access key id and its secret key: every call is signed with the secret."""

    access_key_id: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ApiKeyCredentials:
    """An API key token, sent as a bearer token with every call."""

    token: str = field(repr=False)


Credentials: TypeAlias = AccessKeyCredentials | ApiKeyCredentials


def credentials_from_env(environ: Mapping[str, str] | None = None) -> Credentials | None:
    """VAULT_ACCESS_KEY_ID with VAULT_SECRET_KEY, or VAULT_API_KEY; None if neither is set."""
    env = os.environ if environ is None else environ
    key_id, secret, token = (
        env.get(ACCESS_KEY_ID_ENV),
        env.get(SECRET_KEY_ENV),
        env.get(API_KEY_ENV),
    )
    if key_id and secret:
        return AccessKeyCredentials(key_id, secret)
    if key_id or secret:
        raise ValueError(f"set both {ACCESS_KEY_ID_ENV} and {SECRET_KEY_ENV}, or neither")
    if token:
        return ApiKeyCredentials(token)
    return None


def load_credentials_file(path: Path) -> AccessKeyCredentials:
    """An access key from a JSON file {"access_key_id": ..., "secret_key": ...}, such as
    the admin credentials a vault stores at its first start."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return AccessKeyCredentials(str(data["access_key_id"]), str(data["secret_key"]))
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ValueError(f"{path} does not hold an access key") from None


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class AuthInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the `authorization` metadata to every call with one request (unary, and
    server-streaming like ExportBackup): a signature over the exact request bytes (made afresh
    for each call, so each has its own nonce), or a bearer token."""

    def __init__(self, credentials: Credentials, clock: Callable[[], float] = time.time) -> None:
        self._credentials = credentials
        self._clock = clock

    def __repr__(self) -> str:
        return f"AuthInterceptor({self._credentials!r})"

    def authorization(self, method: str, body: bytes) -> str:
        credentials = self._credentials
        if isinstance(credentials, ApiKeyCredentials):
            return BEARER_PREFIX + credentials.token
        header = sign_request(
            method,
            credentials.access_key_id,
            credentials.secret_key,
            int(self._clock()),
            secrets.token_urlsafe(18),
            body,
        )
        return header.render()

    def intercept_unary_stream(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        return self.intercept_unary_unary(continuation, client_call_details, request)

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode("ascii")
        # gRPC serialises the same message object again to send it; protobuf gives the same
        # bytes for the same unmodified object, which is what the signature must cover.
        body = request if isinstance(request, bytes) else request.SerializeToString()
        metadata = [
            (key, value)
            for key, value in (client_call_details.metadata or ())
            if key != AUTHORIZATION_HEADER
        ]
        metadata.append((AUTHORIZATION_HEADER, self.authorization(method, body)))
        details = _CallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            getattr(client_call_details, "wait_for_ready", None),
            getattr(client_call_details, "compression", None),
        )
        return continuation(details, request)


def authenticated_channel(channel: grpc.Channel, credentials: Credentials) -> grpc.Channel:
    """channel, with every unary call signed (or carrying the API key)."""
    return grpc.intercept_channel(channel, AuthInterceptor(credentials))
