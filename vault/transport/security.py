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

A batch method (vault.domain.batches) is authenticated once, and then each item is what a
call of its unary method would be: authorised on the key it names (a refusal fills its slot
with PERMISSION_DENIED) and admitted (a limit fills it with RESOURCE_EXHAUSTED); only the
items admitted reach the servicer. The audit log accounts for every item with one record per
distinct (key version or name, outcome, reason) of the call, whose reason ends in items=N;
they are committed together before the answer leaves. A call of many items on a few keys so
costs a few records, not one per item, and the chain and its verification are unchanged.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from vault.domain.audit import AuditEvent
from vault.domain.batches import BATCH_METHODS, DEFAULT_MAX_BATCH_ITEMS, check_batch_size
from vault.domain.errors import (
    AuditUnavailable,
    DiskFull,
    LimitExceeded,
    PermissionDenied,
    Unauthenticated,
    VaultError,
)
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
from vault.service.audit import AuditEntry, AuditLog
from vault.service.authentication import Authenticator
from vault.transport.errors import (
    MalformedRequest,
    is_vault_method,
    is_vault_server_stream,
    is_vault_unary,
    outcome_of,
    status_message,
    status_outcome,
)
from vault.transport.observe import request_id_of
from vault.transport.wrapping import Handler, WrappingInterceptor

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

    def event(self, outcome: str, reason: str, resource: str | None = None) -> AuditEvent:
        """The call's record; resource: a batch item's, instead of the call's first."""
        principal = self.principal
        if resource is None:
            resource = self.resources[0] if self.resources else ""
        return AuditEvent(
            occurred_at=datetime.now(UTC),
            request_id=self.request_id,
            credential_id=principal.credential_id if principal is not None else "",
            account=principal.account_id if principal is not None else "",
            method=self.call.method,
            resource=resource[:256],
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


class SecurityInterceptor(WrappingInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        audit: AuditLog,
        *,
        certificate_accounts: bool,
        disk_reserve: DiskReserve | None = None,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
    ) -> None:
        self._authenticator = authenticator
        self._max_batch_items = max_batch_items
        self._audit = audit
        self._reserve = disk_reserve
        self._certificate_accounts = certificate_accounts
        super().__init__()

    def wrap(self, handler: Handler, method: str) -> Handler | None:
        call = _split(method)
        parse = handler.request_deserializer
        stream = handler.unary_stream
        if is_vault_server_stream(handler, method) and parse is not None and stream is not None:

            def secured_stream(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
                return self._serve_stream(call, raw, context, parse, stream)

            return grpc.unary_stream_rpc_method_handler(
                secured_stream,
                request_deserializer=None,  # the bytes as received
                response_serializer=handler.response_serializer,
            )
        if not is_vault_unary(handler, method):
            # A vault method of a shape this interceptor cannot authorise (client or
            # bidirectional streaming) is not served at all (UNIMPLEMENTED), never unguarded.
            return None if is_vault_method(method) else handler
        behavior = handler.unary_unary
        if parse is None or behavior is None:
            return handler

        def secured(raw: bytes, context: grpc.ServicerContext) -> Any:
            return self._serve(call, raw, context, parse, behavior)

        return grpc.unary_unary_rpc_method_handler(
            secured,
            request_deserializer=None,  # the bytes as received
            response_serializer=handler.response_serializer,
        )

    def _admit(
        self,
        attempt: _Attempt,
        raw: bytes,
        context: grpc.ServicerContext,
        parse: Callable[[bytes], Any],
    ) -> Any:
        """Steps 1 to 4 of the module's docstring for one call; returns its request."""
        call = attempt.call
        request = self._authenticated_request(attempt, raw, context, parse)
        principal = attempt.principal
        assert principal is not None
        attempt.resources = resource_names(request)
        _authorize(principal, call, attempt.resources)
        self._authenticator.admit(principal)
        attempt.admitted = True
        if call.short in MUTATING_METHODS:
            if self._reserve is not None and self._reserve.refusing_changes():
                raise DiskFull()
            # No second try here: a change must not begin on the reserve's space.
            self._record(attempt.event("STARTED", ""), None, retry=False)
        return request

    def _authenticated_request(
        self,
        attempt: _Attempt,
        raw: bytes,
        context: grpc.ServicerContext,
        parse: Callable[[bytes], Any],
    ) -> Any:
        """Steps 1 and 2: who calls (on attempt.principal), and the request they sent."""
        attempt.principal = self._authenticate(
            attempt.call, raw, _metadata(context), attempt.source, context
        )
        try:
            return parse(raw)
        except (DecodeError, ValueError, TypeError):
            raise MalformedRequest("the request is not a valid message") from None

    def _failed(self, attempt: _Attempt, error: Exception) -> None:
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

    def _new_attempt(self, call: _Call, context: grpc.ServicerContext) -> _Attempt:
        # The id ObservingInterceptor gave the call: its log lines carry the same.
        return _Attempt(
            call, _address(context.peer()), current_request_id() or request_id_of(context)
        )

    def _serve_stream(
        self,
        call: _Call,
        raw: bytes,
        context: grpc.ServicerContext,
        parse: Callable[[bytes], Any],
        behavior: Callable[[Any, grpc.ServicerContext], Iterator[_Response]],
    ) -> Iterator[_Response]:
        """_serve for a server-streaming call: authorised (and, if it changes state, its
        STARTED record committed) before the first message; its outcome recorded after the
        last one, or when it fails or the caller goes away."""
        attempt = self._new_attempt(call, context)
        try:
            request = self._admit(attempt, raw, context, parse)
            yield from behavior(request, context)
        except GeneratorExit:
            with contextlib.suppress(AuditUnavailable, DiskFull):
                self._record(
                    attempt.event("CANCELLED", ""), attempt.usage, retry=True, inspection=False
                )
            raise
        except Exception as error:
            self._failed(attempt, error)
            raise
        self._record(attempt.event("OK", ""), attempt.usage, retry=True)

    def _serve(
        self,
        call: _Call,
        raw: bytes,
        context: grpc.ServicerContext,
        parse: Callable[[bytes], Any],
        behavior: Callable[[Any, grpc.ServicerContext], _Response],
    ) -> _Response:
        attempt = self._new_attempt(call, context)
        unary = BATCH_METHODS.get(call.short)
        try:
            if unary is not None:
                request = self._authenticated_request(attempt, raw, context, parse)
                # From here on each item is recorded on its own (_Batch.run).
                check_batch_size(len(request.requests), self._max_batch_items)
                batch = _Batch(attempt, request, unary)
                assert attempt.principal is not None
                batch.gate(attempt.principal, self._authenticator)
            else:
                request = self._admit(attempt, raw, context, parse)
                response = behavior(request, context)
        except Exception as error:
            self._failed(attempt, error)
            raise
        if unary is not None:
            return batch.run(behavior, context, self._record_all)  # type: ignore[no-any-return]
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
        self._record_all([AuditEntry(event, usage_method)], retry=retry, inspection=inspection)

    def _record_all(
        self,
        entries: list[AuditEntry],
        *,
        retry: bool = True,
        inspection: bool = False,
    ) -> None:
        """_record for several events, committed together (AuditLog.record_all)."""
        try:
            self._audit.record_all(entries, inspection=inspection)
        except DiskFull:
            if self._reserve is None:
                raise
            self._reserve.release()  # whichever process finds the disk full first
            if not retry:
                raise
            self._audit.record_all(entries, inspection=inspection)

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


class _Batch:
    """One call of a batch method after authentication: which items may run, and the audit
    records of all of them."""

    def __init__(self, attempt: _Attempt, request: Any, unary: str) -> None:
        self._attempt = attempt
        self._request = request
        self._items: list[Message] = list(request.requests)
        self._unary = _Call(attempt.call.method, attempt.call.service, unary)
        # The name each item gives (its audit record's resource), and the refusal of each
        # item the caller may not use now, by index.
        self._names = [""] * len(self._items)
        self._refused: dict[int, VaultError] = {}

    def gate(self, principal: Principal, authenticator: Authenticator) -> None:
        """Authorise each item as a call of the unary method would be, then take its share
        of the API key's rate limit and quota; an item failing either is refused alone."""
        # Whether the credential may use a name does not change within the call: each name
        # is authorised once.
        decided: dict[str, PermissionDenied | None] = {}
        names = self._names
        admit = authenticator.admit
        for index, item in enumerate(self._items):
            name: str = item.name  # type: ignore[attr-defined]  # every batch item has one
            names[index] = name
            if name not in decided:
                try:
                    _authorize(principal, self._unary, resource_names(item))
                    decided[name] = None
                except PermissionDenied as denied:
                    decided[name] = denied
            refusal: VaultError | None = decided[name]
            if refusal is None:
                try:
                    admit(principal)
                except LimitExceeded as error:
                    refusal = error
            if refusal is not None:
                self._refused[index] = refusal

    def run(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Any],
        context: grpc.ServicerContext,
        record: Callable[[list[AuditEntry]], None],
    ) -> Any:
        """The response, the call's audit records committed first (AuditUnavailable, and no
        answer, if they cannot be: nothing a batch does changes state)."""
        try:
            response = self._respond(behavior, context)
        except Exception as error:
            whole = outcome_of(error)
            outcomes = [
                (self._names[index], *self._refused_outcome(index, whole))
                for index in range(len(self._items))
            ]
            # The call failed already: its error is what the caller needs.
            with contextlib.suppress(AuditUnavailable, DiskFull):
                record(self._entries(outcomes))
            raise
        outcomes = []
        append = outcomes.append
        names = self._names
        version_field = _version_field(response)
        for index, slot in enumerate(response.results):
            if slot.WhichOneof("result") == "response":
                used = getattr(slot.response, version_field) if version_field else ""
                append((used or names[index], "OK", ""))
            else:
                append((names[index], *status_outcome(slot.error)))
        try:
            record(self._entries(outcomes))
        except DiskFull:
            raise AuditUnavailable("the audit log cannot be written") from None
        return response

    def _refused_outcome(self, index: int, otherwise: tuple[str, str]) -> tuple[str, str]:
        refused = self._refused.get(index)
        return outcome_of(refused) if refused is not None else otherwise

    def _entries(self, outcomes: list[tuple[str, str, str]]) -> list[AuditEntry]:
        """One record per distinct (resource, outcome, reason) of the items, in the order of
        their first item, its reason ending in "items=N": N items had that outcome on that
        resource (the key version that served them, or the name an item gave). Usage counts
        what the caller was let do: one use of the unary method per admitted item, as quotas
        count them."""
        groups: dict[tuple[str, str, str, bool], int] = {}
        refused = self._refused
        for index, (resource, outcome, reason) in enumerate(outcomes):
            group = (resource, outcome, reason, index not in refused)
            groups[group] = groups.get(group, 0) + 1
        entries = []
        for (resource, outcome, reason, admitted), count in groups.items():
            summary = f"{reason} items={count}" if reason else f"items={count}"
            entries.append(
                AuditEntry(
                    self._attempt.event(outcome, summary, resource),
                    self._unary.short if admitted else None,
                    count,
                )
            )
        return entries

    def _respond(
        self, behavior: Callable[[Any, grpc.ServicerContext], Any], context: grpc.ServicerContext
    ) -> Any:
        if not self._refused:
            return behavior(self._request, context)
        admitted = [item for i, item in enumerate(self._items) if i not in self._refused]
        answered: Any = None
        if admitted:
            subset = type(self._request)()
            subset.requests.extend(admitted)
            answered = behavior(subset, context)
        descriptor = self._request.DESCRIPTOR
        response_type = descriptor.file.message_types_by_name[
            descriptor.name.removesuffix("Request") + "Response"
        ]
        response: Any = message_factory.GetMessageClass(response_type)()
        answers = iter(answered.results if answered is not None else ())
        for index in range(len(self._items)):
            refused = self._refused.get(index)
            slot = response.results.add()
            if refused is not None:
                slot.error.CopyFrom(status_message(refused, self._attempt.call.method))
            else:
                slot.CopyFrom(next(answers))
        return response


def _version_field(response: Message) -> str:
    """The field of a batch's item response that names the key version used, or ""."""
    results: Any = response.DESCRIPTOR.fields_by_name["results"].message_type
    item: Any = results.fields_by_name["response"].message_type
    fields = item.fields_by_name
    for name in ("key_version", "master_key_version"):
        if name in fields:
            return name
    return ""


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
