"""Every Timestamp a request carries, out of the range timestamp.proto allows, is refused as
INVALID_ARGUMENT naming the field (never INTERNAL); the extremes of the range are accepted.
The SDK reads one Duration from the server, RetryInfo's retry_delay: whatever it holds, the
caller gets its VaultClientError.

(The one Duration in a request, ScheduleKeyDestruction's waiting_period, is in
tests/test_bad_input.py.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Final

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tests.support.api_calls import expect_error
from tests.support.harness import VaultServer
from tests.support.security_helpers import new_account, raw_call
from vault.client import VaultClientError
from vault.gen.vault.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    resources_pb2,
)

MIN_SECONDS: Final = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
OUT_OF_RANGE: Final = {
    "seconds 2**62": Timestamp(seconds=2**62),
    "seconds -2**62": Timestamp(seconds=-(2**62)),
    "one second after 9999": Timestamp(seconds=MAX_SECONDS + 1),
    "one second before year 1": Timestamp(seconds=MIN_SECONDS - 1),
    "negative nanos": Timestamp(seconds=4_000_000_000, nanos=-1),
    "nanos of a whole second": Timestamp(seconds=4_000_000_000, nanos=1_000_000_000),
}

# Sends, as the admin, a request whose field (the FIELDS key) holds the timestamp.
Sender = Callable[[VaultServer, Timestamp], Message]


def create_api_key(server: VaultServer, at: Timestamp) -> Message:
    with server.client() as admin:
        account = new_account(admin)
    spec = resources_pb2.ApiKey(
        scopes=[resources_pb2.ApiKeyScope(methods=["GetKey"], resources=["*"])], expire_time=at
    )
    request = identity_service_pb2.CreateApiKeyRequest(parent=account, api_key=spec)
    with server.channel() as channel:
        return call(
            lambda: identity_service_pb2_grpc.IdentityServiceStub(channel).CreateApiKey(request)
        )


def list_audit_events(field: str) -> Sender:
    def send(server: VaultServer, at: Timestamp) -> Message:
        request = audit_service_pb2.ListAuditEventsRequest(page_size=1)
        getattr(request, field).CopyFrom(at)
        with server.channel() as channel:
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            return call(lambda: stub.ListAuditEvents(request))

    return send


def call(send: Callable[[], Message]) -> Message:
    try:
        return send()
    except grpc.RpcError as error:
        raise VaultClientError.from_rpc_error(error) from error


FIELDS: Final[dict[str, Sender]] = {
    "expire_time": create_api_key,
    "start_time": list_audit_events("start_time"),
    "end_time": list_audit_events("end_time"),
}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_an_out_of_range_timestamp_is_an_invalid_argument(
    server: VaultServer, field: str, value: Timestamp
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        lambda: FIELDS[field](server, value),
    )
    assert error.metadata.get("field") == field
    assert field in error.message


@pytest.mark.parametrize("field", FIELDS)
def test_the_last_valid_timestamp_is_accepted(server: VaultServer, field: str) -> None:
    FIELDS[field](server, Timestamp(seconds=MAX_SECONDS, nanos=999_999_999))


@pytest.mark.parametrize("field", ["start_time", "end_time"])
def test_the_first_valid_timestamp_is_accepted(server: VaultServer, field: str) -> None:
    FIELDS[field](server, Timestamp(seconds=MIN_SECONDS))


# -- what the SDK reads --------------------------------------------------------------------


def packed(message: Message) -> any_pb2.Any:
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped


@contextmanager
def faulty_server(delay: Duration) -> Iterator[str]:
    """A gRPC server whose one method answers RESOURCE_EXHAUSTED with delay as RetryInfo."""
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message="slow down",
        details=[
            packed(error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="vault.v1")),
            packed(error_details_pb2.RetryInfo(retry_delay=delay)),
        ],
    )

    def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Faulty", {"Call": grpc.unary_unary_rpc_method_handler(refuse)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


DELAYS: Final = {
    "1.5 s": (Duration(seconds=1, nanos=500_000_000), 1.5),
    "seconds 2**62": (Duration(seconds=2**62), None),
    "seconds past the Duration range": (Duration(seconds=315_576_000_001), None),
    "nanos of a whole second": (Duration(seconds=1, nanos=1_000_000_000), None),
}


@pytest.mark.parametrize(("delay", "expected"), DELAYS.values(), ids=DELAYS.keys())
def test_the_sdk_reads_any_retry_delay_into_its_error(
    delay: Duration, expected: float | None
) -> None:
    with faulty_server(delay) as target:
        error = expect_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            lambda: raw_call(target, "/test.Faulty/Call", b""),
        )
        assert error.retry_after == expected
