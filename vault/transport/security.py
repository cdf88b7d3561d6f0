"""Authentication, authorisation, limits and the audit record of every vault.v1 call.

The interceptor receives each request as the bytes on the wire, because a signed request's
signature covers exactly those bytes (vault.domain.signing). In order, for every call:

1. authenticate: the `authorization` metadata (a signature or a bearer API key) becomes a
   Principal, or the call ends with UNAUTHENTICATED;
2. parse the bytes, then authorise the resources the request names before any validation, so
   a denied caller gets PERMISSION_DENIED whether or not the resource exists;
3. admit: an API key's rate limit and daily quota;
4. for a call that changes state, refuse it (DiskFull) while the data directory's disk is
   full, then commit an audit record of the attempt first: if it cannot be committed the
   change is not made;
5. run the call, then commit its audit record (outcome, reason, latency) before the answer
   leaves; if that fails the caller gets AUDIT_UNAVAILABLE instead of the answer, unless the
   call changed state (then its STARTED record stands, and the answer goes out).

The first audit commit that fails because the disk is full frees the disk reserve
(vault.coordination.disk), and a read's record is then committed on that space, so reads go on
while changes are refused.

Health and reflection are not vault.v1 services and stay open, so probes need no credential.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from vault.domain.audit import AuditEvent
from vault.domain.errors import AuditUnavailable, DiskFull, PermissionDenied, Unauthenticated
from vault.domain.identity import (
    MUTATING_METHODS,
    Principal,
    ResourceRef,
    authorize,
    required_access,
    resource_ref,
)
from vault.domain.ports import DiskReserve
from vault.domain.signing import AUTHORIZATION_HEADER, BEARER_PREFIX, SCHEME
from vault.logs import current_request_id
from vault.service.audit import AuditLog
from vault.service.authentication import Authenticator
from vault.transport.errors import MalformedRequest, is_vault_unary, outcome_of
from vault.transport.observe import request_id_of

log = logging.getLogger(__name__)

# A refusal repeats the name the caller gave, cut to the longest valid resource name.
_MAX_NAME_IN_ERROR: Final = 256
_AUDIT_SERVICE: Final = "vault.v1.AuditService"
_Response = TypeVar("_Response")


@dataclass(frozen=True, slots=True)
class _Call:
    method: str  # full name: /vault.v1.CryptoService/Sign
    service: str  # vault.v1.CryptoService
    short: str  # Sign


@dataclass(slots=True)
class _Attempt:
    """What is known about a call so far, for its audit record."""

    call: _Call
    source: str
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    resources: list[str] = field(default_factory=list)
    admitted: bool = False

    @property
    def inspection(self) -> bool:
        """An admin reading the audit log: served even once the log is found altered."""
        principal = self.principal
        return self.call.service == _AUDIT_SERVICE and principal is not None and principal.admin

    @property
    def usage(self) -> str | None:
        """The method to count against the credential: only calls it was allowed to make."""
        return self.call.short if self.admitted else None

    def event(self, outcome: str, reason: str) -> AuditEvent:
        principal = self.principal
        return AuditEvent(
            occurred_at=datetime.now(UTC),
            request_id=self.request_id,
            credential_id=principal.credential_id if principal is not None else "",
            account=principal.account_id if principal is not None else "",
            method=self.call.method,
            resource=self.resources[0][:256] if self.resources else "",
            outcome=outcome,
            reason=reason,
            latency_us=int((time.perf_counter() - self.started) * 1_000_000),
            source=self.source,
        )


def _split(method: str) -> _Call:
    service, _, short = method[1:].partition("/")
    return _Call(method, service, short)


def resource_names(request: Message) -> list[str]:
    """Every resource name a request refers to, as given (not validated)."""
    fields = request.DESCRIPTOR.fields_by_name
    names: list[str] = []
    for field_name in ("name", "parent"):
        if field_name in fields:
            value = getattr(request, field_name)
            if isinstance(value, str):
                names.append(value)
    if "key_id" in fields and "parent" in fields:
        # CreateKey names the key it creates: grants on keys/{key} apply to it.
        names = [f"{request.parent}/keys/{request.key_id}"]  # type: ignore[attr-defined]
    if "bucket_id" in fields and "parent" in fields:
        # CreateBucket names the bucket it creates: grants on buckets/{bucket} apply to it.
        names = [f"{request.parent}/buckets/{request.bucket_id}"]  # type: ignore[attr-defined]
    if "account_id" in fields:
        # CreateAccount names the account it creates.
        names.append(f"accounts/{request.account_id}")  # type: ignore[attr-defined]
    if "key" in fields and request.DESCRIPTOR.name == "UpdateKeyRequest":
        names.append(request.key.name)  # type: ignore[attr-defined]
    if "bucket" in fields and request.DESCRIPTOR.name == "UpdateBucketRequest":
        names.append(request.bucket.name)  # type: ignore[attr-defined]
    if "import_job" in fields:
        # ImportKeyVersion names its key (parent) and the job it unwraps with.
        names.append(request.import_job)  # type: ignore[attr-defined]
    if "destination_key_name" in fields and request.destination_key_name:  # type: ignore[attr-defined]
        names.append(request.destination_key_name)  # type: ignore[attr-defined]
    return names


class SecurityInterceptor(grpc.ServerInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        audit: AuditLog,
        *,
        certificate_accounts: bool,
        disk_reserve: DiskReserve | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._audit = audit
        self._reserve = disk_reserve
        self._certificate_accounts = certificate_accounts
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not is_vault_unary(handler, method):
            return handler
        parse, behavior = handler.request_deserializer, handler.unary_unary
        if parse is None or behavior is None:
            return handler
        # gRPC asks for the handler on every call; the servicers' handlers never change, so
        # each is wrapped once.
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        call = _split(method)

        def secured(raw: bytes, context: grpc.ServicerContext) -> Any:
            return self._serve(call, raw, context, parse, behavior)

        wrapped: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
            secured,
            request_deserializer=None,  # the bytes as received
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _serve(
        self,
        call: _Call,
        raw: bytes,
        context: grpc.ServicerContext,
        parse: Callable[[bytes], Any],
        behavior: Callable[[Any, grpc.ServicerContext], _Response],
    ) -> _Response:
        metadata = _metadata(context)
        # The id ObservingInterceptor gave the call: its log lines carry the same.
        attempt = _Attempt(
            call, _address(context.peer()), current_request_id() or request_id_of(context)
        )
        try:
            attempt.principal = principal = self._authenticate(
                call, raw, metadata, attempt.source, context
            )
            try:
                request = parse(raw)
            except (DecodeError, ValueError, TypeError):
                raise MalformedRequest("the request is not a valid message") from None
            attempt.resources = resource_names(request)
            _authorize(principal, call, attempt.resources)
            self._authenticator.admit(principal)
            attempt.admitted = True
            if call.short in MUTATING_METHODS:
                if self._reserve is not None and self._reserve.refusing_changes():
                    raise DiskFull()
                # No second try here: a change must not begin on the reserve's space.
                self._record(attempt.event("STARTED", ""), None, retry=False)
            response = behavior(request, context)
        except Exception as error:
            if isinstance(error, DiskFull) and self._reserve is not None:
                self._reserve.release()
            # The call failed already: its error is what the caller needs; an audit failure
            # now is logged by the audit log and does not replace it.
            with contextlib.suppress(AuditUnavailable, DiskFull):
                self._record(
                    attempt.event(*outcome_of(error)),
                    attempt.usage,
                    retry=True,
                    inspection=attempt.inspection,
                )
            raise
        try:
            self._record(
                attempt.event("OK", ""), attempt.usage, retry=True, inspection=attempt.inspection
            )
        except (AuditUnavailable, DiskFull):
            if call.short not in MUTATING_METHODS:
                raise  # nothing was changed: withhold the result, the caller may retry
            # The change is made and its STARTED record committed; answering an error now
            # would have the caller retry a change that already happened.
            log.error("%s was applied but its outcome could not be recorded", call.method)
        return response

    def _record(
        self,
        event: AuditEvent,
        usage_method: str | None,
        *,
        retry: bool,
        inspection: bool = False,
    ) -> None:
        """Commit event; if the disk is full, free the disk reserve and, with retry, try
        once more on the space it gave back. inspection: see AuditLog.record."""
        try:
            self._audit.record(event, usage_method=usage_method, inspection=inspection)
        except DiskFull:
            if self._reserve is None:
                raise
            self._reserve.release()  # whichever process finds the disk full first
            if not retry:
                raise
            self._audit.record(event, usage_method=usage_method, inspection=inspection)

    def _authenticate(
        self,
        call: _Call,
        raw: bytes,
        metadata: dict[str, str],
        source: str,
        context: grpc.ServicerContext,
    ) -> Principal:
        header = metadata.get(AUTHORIZATION_HEADER, "")
        if header.startswith(SCHEME + " "):
            return self._authenticator.authenticate_signed(header, call.method, raw, source)
        if header.startswith(BEARER_PREFIX):
            return self._authenticator.authenticate_bearer(header[len(BEARER_PREFIX) :], source)
        if not header and self._certificate_accounts:
            certificate = _client_certificate(context)
            if certificate is not None:
                account_id, fingerprint = certificate
                return self._authenticator.authenticate_certificate(account_id, fingerprint, source)
        raise Unauthenticated()


def _authorize(principal: Principal, call: _Call, names: list[str]) -> None:
    """PermissionDenied unless principal may make call on every resource it names; the
    refusal names the method, the first resource refused and the access it needs."""
    refs = [resource_ref(name) for name in names]
    known = [ref for ref in refs if ref is not None]
    if principal.admin or (
        len(known) == len(refs) and authorize(principal, call.service, call.short, known)
    ):
        return
    refused = 0
    for index, ref in enumerate(refs):
        if ref is None or not authorize(principal, call.service, call.short, [ref]):
            refused = index
            break
    name = names[refused][:_MAX_NAME_IN_ERROR] if names else ""
    ref = refs[refused] if refs else ResourceRef(principal.account_id, "")
    raise PermissionDenied(call.short, name, required_access(call.service, call.short, ref))


def _client_certificate(context: grpc.ServicerContext) -> tuple[str, str] | None:
    """(subject common name, SHA-256 of the PEM) of the client certificate the TLS layer
    verified against server.client_ca_file, or None without one."""
    auth = context.auth_context()
    names = list(auth.get("x509_common_name") or ())
    pems = list(auth.get("x509_pem_cert") or ())
    if len(names) != 1 or len(pems) != 1:
        return None
    name, pem = names[0], pems[0]
    if not isinstance(name, bytes) or not isinstance(pem, bytes):
        return None
    try:
        return name.decode("ascii"), hashlib.sha256(pem).hexdigest()
    except UnicodeDecodeError:
        return None


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str) and key not in found:
            found[key] = value
    return found


def _address(peer: str) -> str:
    """The caller's address without its port: ipv4:10.0.0.1:5555 -> ipv4:10.0.0.1."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, _, port = peer.rpartition(":")
        if port.isdigit():
            return host
    return peer
