"""What the vault's server interceptors share: each wraps a method's handler once.

gRPC asks every interceptor for the handler on every call, and the servicers' handlers never
change, so building a wrapped handler per call would be work on the hot path for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import grpc

# A string: grpc.RpcMethodHandler is generic in its type stubs only.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class WrappingInterceptor(grpc.ServerInterceptor):
    """An interceptor defined by wrap(): the handler to serve a method with, built once per
    method (and again only if the inner handler is another object)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        if wrapped is not None and wrapped is not handler:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, handler: Handler, method: str) -> Handler | None:
        """The handler that serves method in place of handler: handler itself to leave it
        alone, None to refuse the method (UNIMPLEMENTED)."""
        raise NotImplementedError


class InterceptorChain(WrappingInterceptor):
    """Several wrapping interceptors as one, outermost first: each method's handler is what
    installing them in that order would serve. gRPC runs its interceptor pipeline on every
    call, a level (a closure and a call of intercept_service) per interceptor; the chain is
    one level, whatever the number of interceptors."""

    def __init__(self, interceptors: Sequence[WrappingInterceptor]) -> None:
        super().__init__()
        self._innermost_first = tuple(reversed(interceptors))

    def wrap(self, handler: Handler, method: str) -> Handler | None:
        for interceptor in self._innermost_first:
            wrapped = interceptor.wrap(handler, method)
            if wrapped is None:
                return None
            handler = wrapped
        return handler
