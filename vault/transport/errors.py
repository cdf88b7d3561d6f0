"""The one place where errors become gRPC statuses (AIP-193).

Servicers raise domain errors and never catch them: `ErrorInterceptor` turns each into a
status code from `STATUS_CODES` plus a google.rpc.ErrorInfo (reason, domain, metadata). Any
other exception is a bug: the caller gets INTERNAL with a generic message, and the server log
gets the exception's type and stack but not its message, which may quote request data.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vault import metrics
from vault.domain.errors import (
    ERROR_DOMAIN,
    AlreadyExists,
    AuditUnavailable,
    CallerGone,
    Conflict,
    DecryptionFailed,
    DiskFull,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    RootGenerationMissing,
    StoreUnavailable,
    TokenOperationFailed,
    TokenUnavailable,
    Unauthenticated,
    VaultError,
    WrongPurpose,
    WrongState,
)
from vault.transport.wrapping import Handler, WrappingInterceptor

log = logging.getLogger(__name__)

# Looked up along the exception's MRO, so subclasses (MalformedName, InputTooLarge, ...)
# inherit their base's code unless listed themselves.
STATUS_CODES: Final[Mapping[type[VaultError], grpc.StatusCode]] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    WrongPurpose: grpc.StatusCode.FAILED_PRECONDITION,
    WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    RootGenerationMissing: grpc.StatusCode.FAILED_PRECONDITION,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    # Not FAILED_PRECONDITION: the data given is what is wrong, and one uniform code keeps
    # the vault from telling tampering, wrong AAD and wrong key apart.
    DecryptionFailed: grpc.StatusCode.INVALID_ARGUMENT,
    TokenUnavailable: grpc.StatusCode.UNAVAILABLE,
    TokenOperationFailed: grpc.StatusCode.INTERNAL,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    DiskFull: grpc.StatusCode.UNAVAILABLE,
    Conflict: grpc.StatusCode.ABORTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    AuditUnavailable: grpc.StatusCode.UNAVAILABLE,
    CallerGone: grpc.StatusCode.CANCELLED,
}

INTERNAL_MESSAGE: Final = "internal error"
INTERNAL_REASON: Final = "INTERNAL"
# Only our own services are wrapped; health and reflection report their own statuses.
_GUARDED_METHOD_PREFIX: Final = "/vault.v1."


class ChecksumMismatch(InvalidArgument):
    """A request field does not match the CRC32C the caller sent with it."""

    reason = "CHECKSUM_MISMATCH"


class MalformedRequest(InvalidArgument):
    """The request bytes are not a valid message of the method's request type."""

    reason = "MALFORMED_REQUEST"


def status_code(error: VaultError) -> grpc.StatusCode | None:
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return None


def to_status(error: BaseException, method: str = "") -> grpc.Status:
    """The status a caller receives for error; logs the errors that are bugs."""
    return cast(grpc.Status, rpc_status.to_status(status_message(error, method)))


def status_message(error: BaseException, method: str = "") -> status_pb2.Status:
    """to_status as a google.rpc.Status message: what a batch item's slot carries."""
    if isinstance(error, VaultError):
        code = status_code(error)
        if code is not None:
            log.debug("%s failed: %s %s", method, code.name, error.reason)
            retry_after = None
            if isinstance(error, LimitExceeded):
                retry_after = error.retry_after
                metrics.limit_rejection(error.reason)
            return _rich_status(code, error.message, error.reason, error.metadata, retry_after)
    log_unexpected(error, method)
    return _rich_status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, INTERNAL_REASON, {})


_CODE_NAMES: Final = {code.value[0]: code.name for code in grpc.StatusCode}


def status_outcome(status: status_pb2.Status) -> tuple[str, str]:
    """(status code name, ErrorInfo reason) of a google.rpc.Status, for the audit log."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return _CODE_NAMES.get(status.code, "UNKNOWN"), info.reason
    return _CODE_NAMES.get(status.code, "UNKNOWN"), ""


def log_unexpected(error: BaseException, where: str) -> None:
    """Log a bug by type and stack only: the message and arguments may quote request data
    (a driver error can include SQL parameters, a parser error the bytes it choked on)."""
    frames = traceback.extract_tb(error.__traceback__)
    stack = "\n".join(f"  at {f.filename}:{f.lineno} in {f.name}" for f in frames)
    log.error("unexpected %s in %s\n%s", type(error).__qualname__, where or "?", stack)


def outcome_of(error: BaseException) -> tuple[str, str]:
    """(status code name, reason) a caller receives for error, for the audit log."""
    if isinstance(error, VaultError):
        code = status_code(error)
        if code is not None:
            return code.name, error.reason
    return grpc.StatusCode.INTERNAL.name, INTERNAL_REASON


def _rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str],
    retry_after: float | None = None,
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(max(1, math.ceil(retry_after * 1000)))
        retry_detail = any_pb2.Any()
        retry_detail.Pack(retry)
        details.append(retry_detail)
    return status_pb2.Status(code=code.value[0], message=message, details=details)


class _Undecodable:
    """Stands in for a request that failed to parse. gRPC answers a deserializer exception
    with INTERNAL; handing this to the behaviour instead lets it answer INVALID_ARGUMENT."""

    __slots__ = ()


_UNDECODABLE: Final = _Undecodable()
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def _tolerant(
    deserializer: Callable[[bytes], _Request] | None,
) -> Callable[[bytes], _Request | _Undecodable] | None:
    if deserializer is None:
        return None
    parse = deserializer

    def deserialize(data: bytes) -> _Request | _Undecodable:
        try:
            return parse(data)
        except Exception:  # any parse failure is the caller's malformed input
            return _UNDECODABLE

    return deserialize


def _guard(
    behavior: Callable[[_Request, grpc.ServicerContext], _Response], method: str
) -> Callable[[_Request | _Undecodable, grpc.ServicerContext], _Response]:
    def guarded(request: _Request | _Undecodable, context: grpc.ServicerContext) -> _Response:
        if isinstance(request, _Undecodable):
            context.abort_with_status(
                to_status(MalformedRequest("the request is not a valid message"), method)
            )
        try:
            return behavior(request, context)
        except Exception as error:
            # A handler that aborted itself has set its status already; keep it.
            if _aborted(context):
                raise
            context.abort_with_status(to_status(error, method))

    return guarded


def _guard_stream(
    behavior: Callable[[_Request, grpc.ServicerContext], Iterator[_Response]], method: str
) -> Callable[[_Request | _Undecodable, grpc.ServicerContext], Iterator[_Response]]:
    """_guard for a server-streaming method: an error before or between the messages ends
    the stream with its rich status."""

    def guarded(
        request: _Request | _Undecodable, context: grpc.ServicerContext
    ) -> Iterator[_Response]:
        if isinstance(request, _Undecodable):
            context.abort_with_status(
                to_status(MalformedRequest("the request is not a valid message"), method)
            )
        try:
            yield from behavior(request, context)
        except Exception as error:
            if _aborted(context):
                raise
            context.abort_with_status(to_status(error, method))

    return guarded


def _aborted(context: grpc.ServicerContext) -> bool:
    code: Callable[[], Any] | None = getattr(context, "code", None)
    return code is not None and code() is not None


def is_vault_unary(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> bool:
    """Whether handler serves a unary method of the vault's own services (not health or
    reflection, which report their own statuses and need no credential)."""
    return (
        handler.unary_unary is not None
        and not handler.request_streaming
        and not handler.response_streaming
        and method.startswith(_GUARDED_METHOD_PREFIX)
    )


def is_vault_method(method: str) -> bool:
    return method.startswith(_GUARDED_METHOD_PREFIX)


def is_vault_server_stream(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> bool:
    """Whether handler serves a server-streaming method of the vault's own services (one
    request, a stream of responses: ExportBackup)."""
    return (
        handler.unary_stream is not None
        and not handler.request_streaming
        and handler.response_streaming
        and method.startswith(_GUARDED_METHOD_PREFIX)
    )


class ErrorInterceptor(WrappingInterceptor):
    """Maps every exception a vault.v1 unary method raises to a rich status.

    Install it first in the server's interceptor list, so it is outermost and also maps
    errors raised by later interceptors' handlers (authentication, audit).
    """

    def wrap(self, handler: Handler, method: str) -> Handler | None:
        if is_vault_server_stream(handler, method) and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(handler.unary_stream, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if not is_vault_unary(handler, method):
            return handler
        behavior = handler.unary_unary
        if behavior is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _guard(behavior, method),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
