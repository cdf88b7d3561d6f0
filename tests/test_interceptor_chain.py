"""InterceptorChain serves each method as gRPC's own pipeline of the same interceptors does:
same order of wrapping, same refusal of a method an interceptor refuses (UNIMPLEMENTED)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import pytest

from vault.transport.wrapping import Handler, InterceptorChain, WrappingInterceptor

SERVICE = "test.Chain"


class Tagging(WrappingInterceptor):
    """Appends its tag to the answer of every method, and refuses the method named refuse."""

    def __init__(self, tag: bytes, refuse: str = "") -> None:
        super().__init__()
        self._tag, self._refuse = tag, refuse

    def wrap(self, handler: Handler, method: str) -> Handler | None:
        if method.endswith("/" + self._refuse):
            return None
        inner = handler.unary_unary
        assert inner is not None
        tag = self._tag

        def tagged(request: bytes, context: grpc.ServicerContext) -> bytes:
            return inner(request + b">" + tag, context) + b"<" + tag  # type: ignore[no-any-return]

        return grpc.unary_unary_rpc_method_handler(tagged)


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"[" + request + b"]"


def _answers(interceptors: list[grpc.ServerInterceptor]) -> dict[str, Any]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=interceptors)
    methods = {name: grpc.unary_unary_rpc_method_handler(_echo) for name in ("Echo", "Other")}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answers: dict[str, Any] = {}
            for name in methods:
                call: Callable[..., bytes] = channel.unary_unary(f"/{SERVICE}/{name}")
                try:
                    answers[name] = call(b"x", timeout=10)
                except grpc.RpcError as error:
                    answers[name] = error.code()
            return answers
    finally:
        server.stop(None)


@pytest.mark.parametrize("refuse", ["", "Other"])
def test_a_chain_serves_what_the_pipeline_serves(refuse: str) -> None:
    def interceptors() -> list[WrappingInterceptor]:
        return [Tagging(b"outer"), Tagging(b"middle", refuse), Tagging(b"inner")]

    piped = _answers(list(interceptors()))
    chained = _answers([InterceptorChain(interceptors())])
    assert chained == piped
    assert piped["Echo"] == b"[x>outer>middle>inner]<inner<middle<outer"
    if refuse:
        assert piped["Other"] == grpc.StatusCode.UNIMPLEMENTED
