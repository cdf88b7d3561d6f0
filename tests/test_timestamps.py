"""Every Timestamp a request carries, out of the range timestamp.proto allows, is refused as
INVALID_ARGUMENT naming the field (never INTERNAL); the extremes of the range are accepted.

(The one Duration, ScheduleKeyDestruction's waiting_period, is in tests/test_bad_input.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tests.api_calls import expect_error
from tests.harness import VaultServer
from tests.security_helpers import new_account
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
