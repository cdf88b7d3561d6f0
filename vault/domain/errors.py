"""Typed domain errors. Each carries a stable reason string (AIP-193 ErrorInfo.reason).

The transport layer maps the error class to a gRPC status code once; nothing below it knows
about gRPC. Messages never contain key material, PINs or secrets.
"""

from __future__ import annotations

from collections.abc import Mapping

ERROR_DOMAIN = "vault.v1"


class VaultError(Exception):
    """Base of every error the vault reports to a caller."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(VaultError):
    reason = "INVALID_ARGUMENT"


class MalformedName(InvalidArgument):
    reason = "MALFORMED_NAME"


class InputTooLarge(InvalidArgument):
    reason = "INPUT_TOO_LARGE"


class TooManyItems(InvalidArgument):
    """A batch request holds more items than the server takes in one call."""

    reason = "TOO_MANY_ITEMS"


class NoItems(InvalidArgument):
    """A batch request holds no item: there would be nothing to do or to audit."""

    reason = "NO_ITEMS"


class UnsupportedAlgorithm(InvalidArgument):
    reason = "UNSUPPORTED_ALGORITHM"


class WrongPurpose(VaultError):
    """The key exists but its purpose does not allow the operation (FAILED_PRECONDITION)."""

    reason = "WRONG_KEY_PURPOSE"


class WrongState(VaultError):
    """The key's state forbids the operation (FAILED_PRECONDITION)."""

    reason = "WRONG_KEY_STATE"


class NotFound(VaultError):
    reason = "NOT_FOUND"


class AlreadyExists(VaultError):
    reason = "ALREADY_EXISTS"


class DecryptionFailed(VaultError):
    """One uniform error for every decrypt or unwrap failure: tampered data, wrong AAD, wrong
    key, malformed envelope. Saying which would turn the vault into an oracle."""

    reason = "DECRYPTION_FAILED"

    def __init__(self) -> None:
        super().__init__("the ciphertext could not be decrypted with this key")


class TokenUnavailable(VaultError):
    """The PKCS#11 token could not serve the request even after a retry (UNAVAILABLE)."""

    reason = "TOKEN_UNAVAILABLE"


class PinIncorrect(TokenUnavailable):
    """The token refused a PIN. Only ever raised on this machine (start-up, `vaultctl token`):
    a running server has logged in already."""

    reason = "PIN_INCORRECT"


class TokenOperationFailed(VaultError):
    """The token refused an operation for a reason that is neither the caller's input nor an
    outage (INTERNAL): a template or mechanism the module does not accept."""

    reason = "TOKEN_OPERATION_FAILED"


class StoreUnavailable(VaultError):
    reason = "STORE_UNAVAILABLE"


class DiskFull(StoreUnavailable):
    """The disk of the data directory (or the database server's) is full: nothing is changed
    until space is freed (UNAVAILABLE); reads go on while the vault's disk reserve lasts."""

    reason = "DISK_FULL"

    def __init__(self) -> None:
        super().__init__(
            "the data directory's disk is full: changes are refused until space is freed"
        )


class Conflict(VaultError):
    """A concurrent change won; the caller may retry (ABORTED)."""

    reason = "CONCURRENT_MODIFICATION"


class CallerGone(VaultError):
    """The caller cancelled the call or its deadline passed while a long operation ran: the
    operation stopped at its next safe point (CANCELLED). Nobody receives the answer; the
    error is what the audit log records."""

    reason = "CALLER_GONE"

    def __init__(self) -> None:
        super().__init__("the caller went away; the operation stopped")


class Unauthenticated(VaultError):
    """The request carries no valid credential. Deliberately one error for every cause (unknown
    key id, bad signature, stale timestamp, replayed nonce, revoked or expired credential), so
    a caller cannot probe which of them applies."""

    reason = "UNAUTHENTICATED"

    def __init__(self) -> None:
        super().__init__("request not authenticated")


class PermissionDenied(VaultError):
    """The credential may not make this call on this resource. The same answer whether or not
    the resource exists, so a denied caller learns nothing about another account."""

    reason = "PERMISSION_DENIED"

    def __init__(self, method: str = "", resource: str = "", required: str = "") -> None:
        # What was asked and what it needs, never whether the resource exists: the caller
        # gave the name and the required access follows from the method alone, so the answer
        # is the same for an existing, a missing and a malformed resource.
        message = "permission denied"
        if method:
            message += f": {method}"
            if resource:
                message += f" on {resource}"
            if required:
                message += f" needs {required}"
        metadata = {"method": method, "resource": resource, "required": required}
        super().__init__(message, metadata={k: v for k, v in metadata.items() if v})


class LimitExceeded(VaultError):
    """A rate limit, quota or authentication throttle refused the call; retry_after (seconds)
    tells the caller when to try again."""

    reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)


class QuotaExceeded(LimitExceeded):
    reason = "QUOTA_EXCEEDED"


class AuthenticationThrottled(LimitExceeded):
    reason = "AUTHENTICATION_THROTTLED"


class AuditUnavailable(VaultError):
    """The audit record of a call could not be committed, so the call was not carried out (or
    its result withheld): the vault fails closed rather than act unrecorded."""

    reason = "AUDIT_UNAVAILABLE"


class BackupInvalid(InvalidArgument):
    """A backup bundle is malformed, incomplete, altered, or signed by another key than the
    caller expects: nothing of it is used."""

    reason = "BACKUP_INVALID"


class RootGenerationMissing(VaultError):
    """The token lacks the root generation a bundle's keys are wrapped under (it never
    received it by the clone ceremony): FAILED_PRECONDITION."""

    reason = "ROOT_GENERATION_MISSING"


class ImportFailed(InvalidArgument):
    """Wrapped key material that does not unwrap under an import job as a key of the target
    algorithm. One answer for every cause (bad RSA-OAEP block, bad AES-KWP integrity check,
    material of another type or size): saying which would make the job an oracle."""

    reason = "IMPORT_FAILED"
