"""The outermost interceptor of every vault.v1 call: its request id and its metrics.

It gives each call a request id (the caller's x-request-id if usable, else a random one) and
serves the call inside vault.logs.request_context, so every log line of the call and its audit
record (vault.transport.security) carry the same id. Once the call is answered it counts it
by service, method and the status code the caller received, with its latency (vault.metrics;
nothing when metrics are off).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import grpc

from vault import metrics
from vault.logs import request_context
from vault.transport.errors import is_vault_server_stream, is_vault_unary
from vault.transport.wrapping import Handler, WrappingInterceptor

REQUEST_ID_HEADER: Final = "x-request-id"
_MAX_REQUEST_ID: Final = 128


def request_id_of(context: grpc.ServicerContext) -> str:
    """The caller's x-request-id if it is short and printable, else a new random id."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            if (
                isinstance(value, str)
                and value
                and len(value) <= _MAX_REQUEST_ID
                and value.isprintable()
            ):
                return value
            break
    return _new_request_id()


# uuid4() reads the kernel's random source, a system call during which CPython releases the
# GIL: in a busy worker, one more hand-off between threads on every call. A request id needs
# to be unique, not secret (a caller may send any id it likes), so it comes from a generator
# in the process, seeded from the kernel once per process (again in every forked child).
_ids = random.Random()  # noqa: S311
os.register_at_fork(after_in_child=_ids.seed)


def _new_request_id() -> str:
    """32 random hex digits, as uuid4().hex has."""
    return f"{_ids.getrandbits(128):032x}"


def _observed(
    behavior: Callable[[Any, grpc.ServicerContext], Any], method: str
) -> Callable[[Any, grpc.ServicerContext], Any]:
    service, _, short = method[1:].partition("/")

    def observed(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        code = "UNKNOWN"
        with request_context(request_id_of(context)):
            try:
                response = behavior(request, context)
                set_code = context.code()  # type: ignore[attr-defined]
                code = "OK" if set_code is None else set_code.name
                return response
            except Exception:
                set_code = context.code()  # type: ignore[attr-defined]
                if set_code is not None:
                    code = set_code.name
                raise
            finally:
                metrics.request_done(service, short, code, time.perf_counter() - started)

    return observed


def _observed_stream(
    behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """_observed for a server-streaming call: gRPC runs the whole stream in one thread, so
    the request id set around it holds for every message; the latency is the whole stream's."""
    service, _, short = method[1:].partition("/")

    def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        code = "CANCELLED"
        with request_context(request_id_of(context)):
            try:
                yield from behavior(request, context)
                set_code = context.code()  # type: ignore[attr-defined]
                code = "OK" if set_code is None else set_code.name
            except Exception:
                set_code = context.code()  # type: ignore[attr-defined]
                code = "UNKNOWN" if set_code is None else set_code.name
                raise
            finally:
                metrics.request_done(service, short, code, time.perf_counter() - started)

    return observed


class ObservingInterceptor(WrappingInterceptor):
    """Install it first (outermost), so it sees the status ErrorInterceptor gave."""

    def wrap(self, handler: Handler, method: str) -> Handler | None:
        if is_vault_server_stream(handler, method) and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _observed_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if not is_vault_unary(handler, method):
            return handler
        behavior = handler.unary_unary
        if behavior is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _observed(behavior, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
