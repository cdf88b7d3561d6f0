"""The one exception the SDK raises, built from the server's rich status (AIP-193)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}
# The protobuf Duration range.
_MAX_DURATION_SECONDS: Final = 315_576_000_000


class VaultClientError(Exception):
    """A call failed. code is the gRPC status code; reason, the stable ErrorInfo reason
    (e.g. WRONG_KEY_STATE) to branch on, empty when the server sent none (the call never
    reached it, for instance); message, for people; metadata, the ErrorInfo metadata;
    retry_after, the seconds a RESOURCE_EXHAUSTED caller should wait (google.rpc.RetryInfo),
    or None."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            f"{code.name} {reason}: {message}" if reason else f"{code.name}: {message}"
        )
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after = retry_after

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> VaultClientError:
        if not isinstance(error, grpc.Call):
            return cls(grpc.StatusCode.UNKNOWN, "", str(error))
        code = error.code()
        message = error.details() or ""
        try:
            status = rpc_status.from_call(error)
        except ValueError:
            # The trailer disagrees with the status line (a proxy rewrote one of them):
            # trust the status line, which every hop must carry.
            status = None
        return cls._from_details(code, message, status)

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> VaultClientError:
        """The error of one item of a batch call, from the google.rpc.Status in its slot."""
        code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls._from_details(code, status.message, status)

    @classmethod
    def _from_details(
        cls, code: grpc.StatusCode, message: str, status: status_pb2.Status | None
    ) -> VaultClientError:
        info: error_details_pb2.ErrorInfo | None = None
        retry_after: float | None = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = _seconds(retry.retry_delay)
        if info is None:
            return cls(code, "", message, retry_after=retry_after)
        return cls(code, info.reason, message, dict(info.metadata), retry_after)


class ChecksumError(VaultClientError):
    """A response field did not match the CRC32C the server sent with it: corrupted in
    transit. Retrying is safe for every call but GenerateDataKey and GenerateRandom, whose
    retry returns new data."""

    def __init__(self, field: str) -> None:
        super().__init__(
            grpc.StatusCode.DATA_LOSS,
            "CHECKSUM_MISMATCH",
            f"response field {field} does not match its CRC32C",
            {"field": field},
        )


def _seconds(delay: Duration) -> float | None:
    """A RetryInfo delay in seconds, or None for a value duration.proto does not allow (from
    a faulty server or proxy), which ToTimedelta would raise OverflowError on: the caller must
    get its VaultClientError whatever the details hold."""
    if abs(delay.seconds) > _MAX_DURATION_SECONDS or abs(delay.nanos) >= 1_000_000_000:
        return None
    if delay.seconds * delay.nanos < 0:
        return None
    return delay.seconds + delay.nanos / 1e9
