"""The security interceptor serves a vault.v1 method only in a shape it can authorise: unary
and server-streaming calls are authorised; any other shape is not served at all."""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc

from vault.transport.security import SecurityInterceptor


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def _intercept(method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    interceptor = SecurityInterceptor(
        None,  # type: ignore[arg-type]  # not reached: nothing is authenticated here
        None,  # type: ignore[arg-type]
        certificate_accounts=False,
    )
    return interceptor.intercept_service(lambda _: handler, _Details(method))  # type: ignore[arg-type]


def test_a_client_streaming_vault_method_is_not_served_unguarded() -> None:
    upload = grpc.stream_unary_rpc_method_handler(lambda requests, context: b"")
    assert _intercept("/vault.v1.BackupService/Upload", upload) is None
    chat = grpc.stream_stream_rpc_method_handler(lambda requests, context: iter(()))
    assert _intercept("/vault.v1.BackupService/Chat", chat) is None
    # Other services (health, reflection) keep their own handlers.
    assert _intercept("/grpc.reflection.v1alpha.ServerReflection/Info", chat) is chat


def test_unary_and_server_streaming_vault_methods_are_wrapped() -> None:
    unary = grpc.unary_unary_rpc_method_handler(
        lambda request, context: b"", request_deserializer=bytes
    )
    stream = grpc.unary_stream_rpc_method_handler(
        lambda request, context: iter(()), request_deserializer=bytes
    )
    wrapped_unary = _intercept("/vault.v1.KeyService/GetKey", unary)
    wrapped_stream = _intercept("/vault.v1.BackupService/ExportBackup", stream)
    assert wrapped_unary is not unary and wrapped_unary.request_deserializer is None
    assert wrapped_stream is not stream and wrapped_stream.response_streaming
    assert wrapped_stream.request_deserializer is None  # the bytes the signature covers
