"""Results whose truth value is their answer.

A protobuf message is always true, so `if vault.verify(...):` on a VerifyResponse would accept
a forged signature. The calls that answer yes or no (verify, verify_mac, verify_audit_log)
return these instead: true exactly when the signature, MAC or log checked out."""

from __future__ import annotations

from dataclasses import dataclass, field

from vault.gen.vault.v1 import audit_service_pb2, crypto_service_pb2


@dataclass(frozen=True, slots=True)
class Verification:
    """The answer of VaultClient.verify and verify_mac. True only when valid.

    key_version: the key version that checked it; when the request named a key and the
    signature or MAC is valid, the version that matched (which may be an older one after a
    rotation). response: the full VerifyResponse or VerifyMacResponse."""

    valid: bool
    key_version: str
    response: crypto_service_pb2.VerifyResponse | crypto_service_pb2.VerifyMacResponse = field(
        repr=False, compare=False
    )

    def __bool__(self) -> bool:
        return self.valid


@dataclass(frozen=True, slots=True)
class AuditLogVerification:
    """The answer of VaultClient.verify_audit_log. True only when no finding was made."""

    ok: bool
    records_checked: int
    checkpoints_checked: int
    last_sequence: int
    findings: list[audit_service_pb2.AuditFinding]
    response: audit_service_pb2.VerifyAuditLogResponse = field(repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def of(cls, response: audit_service_pb2.VerifyAuditLogResponse) -> AuditLogVerification:
        return cls(
            ok=response.ok,
            records_checked=response.records_checked,
            checkpoints_checked=response.checkpoints_checked,
            last_sequence=response.last_sequence,
            findings=list(response.findings),
            response=response,
        )
