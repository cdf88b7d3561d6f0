"""VaultClient: one channel, the generated stubs, and the two things every caller would
otherwise repeat: CRC32C integrity fields both ways, and rich errors as VaultClientError."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final, TypeAlias, TypeVar

import google_crc32c
import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value

from vault.client._auth import Credentials, authenticated_channel
from vault.client._errors import ChecksumError, VaultClientError
from vault.client._results import AuditLogVerification, Verification
from vault.client.bucket_keys import BucketKeyRejected, GeneratedBucketKey
from vault.client.key_import import PrivateKey, import_material, wrap_for_import
from vault.domain.algorithms import MAX_SIGNED_MESSAGE_BYTES, Algorithm, KeyFamily
from vault.gen.vault.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    backup_service_pb2,
    backup_service_pb2_grpc,
    bucket_service_pb2,
    bucket_service_pb2_grpc,
    crypto_service_pb2,
    crypto_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
    resources_pb2,
    server_service_pb2,
    server_service_pb2_grpc,
)

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Page = TypeVar("_Page", bound=Message)
_Item = TypeVar("_Item")

# Anything naming an enum value: the proto number, its proto name (PURPOSE_SIGN_VERIFY) or
# the domain name (SIGN_VERIFY, which vault.domain's StrEnums are).
PurposeLike: TypeAlias = "resources_pb2.Purpose.ValueType | str"
AlgorithmLike: TypeAlias = "resources_pb2.Algorithm.ValueType | str"
KeyStateLike: TypeAlias = "resources_pb2.KeyState.ValueType | str"
BucketStateLike: TypeAlias = "resources_pb2.BucketState.ValueType | str"
RevocationReasonLike: TypeAlias = "resources_pb2.RevocationReason.ValueType | str"
ImportMethodLike: TypeAlias = "resources_pb2.ImportMethod.ValueType | str"

DEFAULT_TIMEOUT_SECONDS: Final = 30.0
# Items per call of a batch method: the server's default limit (server.max_batch_items).
DEFAULT_BATCH_ITEMS: Final = 1000

# UNAVAILABLE means the call did not reach a working server (a worker restarting under
# SO_REUSEPORT resets the connections queued on it, say) or the server could not record it
# (nothing was done). Such calls are retried here rather than by a gRPC retry policy: a retry
# must be signed afresh, since the server refuses a nonce it has seen.
_ATTEMPTS: Final = 3
_FIRST_BACKOFF_SECONDS: Final = 0.1

# Sign and Verify take a message of at most this many bytes whole; a larger one is hashed
# here and its digest sent, which gives the same signature (EC and RSA-PSS keys).
MAX_MESSAGE_BYTES: Final = MAX_SIGNED_MESSAGE_BYTES
_HASH_CHUNK_BYTES: Final = 1 << 20

# What a message to sign or verify may be: its bytes, or a binary file read to its end.
SignedMessage: TypeAlias = "bytes | BinaryIO"


def _crc32c(data: bytes) -> Int64Value:
    return Int64Value(value=int(google_crc32c.value(data)))


def _check(response: Message, field: str) -> None:
    """Raise ChecksumError unless response.<field> matches response.<field>_crc32c."""
    checksum_field = f"{field}_crc32c"
    if not response.HasField(checksum_field):
        return
    expected: Int64Value = getattr(response, checksum_field)
    data: bytes = getattr(response, field)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if int(google_crc32c.value(data)) != expected.value:
        raise ChecksumError(field)


def _hash_rest(hasher: Any, head: bytes | bytearray | memoryview, rest: BinaryIO | None) -> bytes:
    """hasher's digest of head and then everything left in rest, read a chunk at a time."""
    hasher.update(head)
    if rest is not None:
        while chunk := rest.read(_HASH_CHUNK_BYTES):
            hasher.update(chunk)
    return bytes(hasher.digest())


def _set_signed_input(
    request: crypto_service_pb2.SignRequest | crypto_service_pb2.VerifyRequest,
    message: bytes | None,
    digest: bytes | None,
) -> None:
    """Set the request's `input` oneof, message or digest, with its CRC32C."""
    if message is not None:
        request.message = message
        request.message_crc32c.CopyFrom(_crc32c(message))
    if digest is not None:
        request.digest = digest
        request.digest_crc32c.CopyFrom(_crc32c(digest))


def _paged(
    fetch: Callable[[str], _Page], items: Callable[[_Page], Iterable[_Item]]
) -> Iterator[_Item]:
    """Every item of a paginated List call: fetch(page_token) page after page."""
    token = ""
    while True:
        page = fetch(token)
        yield from items(page)
        token = page.next_page_token  # type: ignore[attr-defined]
        if not token:
            return


def _batch_limit(error: VaultClientError) -> int | None:
    """The server's items per call, from its TOO_MANY_ITEMS refusal; None for another error."""
    limit = error.metadata.get("limit", "") if error.reason == "TOO_MANY_ITEMS" else ""
    return int(limit) if limit.isdigit() else None


def _enum(value: int | str | None, wrapper: Any, prefix: str) -> Any:
    if value is None:
        return 0
    if isinstance(value, str):
        return wrapper.Value(value if value.startswith(prefix) else f"{prefix}{value}")
    return value


class VaultClient:
    """A client of one vault server. Use it as a context manager, or call close().

    Every method returns the response message (or the Key it names) and raises
    VaultClientError on failure, except the three that answer yes or no: verify, verify_mac
    and verify_audit_log return a result that is true only when the answer is yes (a
    protobuf message is always true, so `if` on one would accept a forgery); and the two of
    the BucketKeySource protocol, so that ObjectCipher(client, bucket) works as it is:
    generate_bucket_key returns a GeneratedBucketKey (whose repr hides the key),
    decrypt_bucket_key the key's bytes, raising BucketKeyRejected for DECRYPTION_FAILED.
    Byte inputs are sent with their CRC32C and byte outputs checked against theirs, so
    corruption in transit raises ChecksumError instead of returning wrong data.
    """

    def __init__(
        self,
        target: str,
        *,
        ca_file: Path | str | None = None,
        client_cert_file: Path | str | None = None,
        client_key_file: Path | str | None = None,
        credentials: Credentials | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        channel: grpc.Channel | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        """target: host:port or unix:path.

        ca_file: PEM CA certificate(s) to trust. With it the client speaks TLS, verifying the
        server's certificate against them and target's host against the certificate's names;
        without it, plaintext (a loopback or unix: server without TLS). A development vault
        (`make run`) keeps its CA in <data_dir>/tls/ca.pem. A unix: target has no host name:
        its certificate is checked for "localhost" unless the channel option
        grpc.ssl_target_name_override says otherwise.
        client_cert_file, client_key_file: PEM certificate and key presented to a server that
        requires client certificates (server.client_ca_file); need ca_file.
        credentials: an access key (every call signed with its secret) or an API key;
        vault.client.credentials_from_env() reads them from VAULT_ACCESS_KEY_ID and
        VAULT_SECRET_KEY or VAULT_API_KEY. Without credentials only health checks succeed.
        timeout: per call, in seconds (None: no deadline).
        channel: use this channel (then no TLS files); options: gRPC channel options.
        """
        self._target = target
        self._timeout = timeout
        self._owns_channel = channel is None
        if channel is None:
            tls = _tls_credentials(ca_file, client_cert_file, client_key_file)
            channel_options = list(options or ())
            if tls is None:
                channel = grpc.insecure_channel(target, options=channel_options)
            else:
                channel_options = _unix_socket_name(target, channel_options)
                channel = grpc.secure_channel(target, tls, options=channel_options)
        elif (ca_file, client_cert_file, client_key_file) != (None, None, None):
            raise ValueError("give a channel or TLS files, not both")
        self._channel = channel
        calls = channel if credentials is None else authenticated_channel(channel, credentials)
        self._keys = key_service_pb2_grpc.KeyServiceStub(calls)
        self._crypto = crypto_service_pb2_grpc.CryptoServiceStub(calls)
        self._identity = identity_service_pb2_grpc.IdentityServiceStub(calls)
        self._audit = audit_service_pb2_grpc.AuditServiceStub(calls)
        self._server = server_service_pb2_grpc.ServerServiceStub(calls)
        self._buckets = bucket_service_pb2_grpc.BucketServiceStub(calls)
        self._backups = backup_service_pb2_grpc.BackupServiceStub(calls)
        self._algorithms: dict[str, Algorithm] = {}

    def __repr__(self) -> str:
        return f"VaultClient({self._target!r})"

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        *,
        deadline: bool = True,
    ) -> _Response:
        """One unary call, retried while the server is UNAVAILABLE. deadline=False: without
        the client's per-call timeout, for calls whose time grows with their data (a bundle,
        the whole audit log)."""
        timeout = self._timeout if deadline else None
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return method(request, timeout=timeout)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                if code is not grpc.StatusCode.UNAVAILABLE or attempt == _ATTEMPTS:
                    raise VaultClientError.from_rpc_error(error) from error
            time.sleep(_FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    # -- BackupService (admin) --------------------------------------------------------------

    def export_backup(
        self,
        *,
        accounts: Sequence[str] = (),
        keys: Sequence[str] = (),
        buckets: Sequence[str] = (),
    ) -> Iterator[backup_service_pb2.ExportBackupResponse]:
        """The bundle of the selection (all empty: everything) as a stream of chunks;
        concatenated in order they are the bundle. No deadline: a large export takes as long
        as it takes. Errors (also mid-stream) raise VaultClientError."""
        request = backup_service_pb2.ExportBackupRequest(
            selection=backup_service_pb2.BackupSelection(
                accounts=list(accounts), keys=list(keys), buckets=list(buckets)
            )
        )
        try:
            yield from self._backups.ExportBackup(request, timeout=None)
        except grpc.RpcError as error:
            raise VaultClientError.from_rpc_error(error) from error

    def verify_backup(
        self, file_name: str, *, expected_signer_fingerprint: str = ""
    ) -> backup_service_pb2.BackupSummary:
        """Check a bundle in the vault's backup directory (<data_dir>/backups) by file name.
        No deadline: the server reads and checks the whole bundle, which for a million keys
        takes longer than the client's timeout."""
        request = backup_service_pb2.VerifyBackupRequest(
            file_name=file_name, expected_signer_fingerprint=expected_signer_fingerprint
        )
        return self._call(self._backups.VerifyBackup, request, deadline=False)

    def restore_backup(
        self,
        file_name: str,
        *,
        expected_signer_fingerprint: str = "",
        progress: Callable[[backup_service_pb2.RestoreBackupProgress], None] | None = None,
    ) -> backup_service_pb2.RestoreBackupResponse:
        """Verify and restore a bundle in the vault's backup directory, by file name.

        Streams (StreamRestoreBackup) without a deadline: a restore takes as long as its
        bundle's keys need. progress, if given, is called with each message: entries_done of
        entries_total, restored and skipped so far, about twice a second, and last with the
        result set. Interrupting the call (an exception from progress, KeyboardInterrupt)
        cancels it: the server stops before its next batch of keys, keeps what it restored,
        and the same call again restores the rest. A server without StreamRestoreBackup is
        asked RestoreBackup instead, also without a deadline.

        restored_count, skipped_count and skipped_by_reason count every outcome; the lists
        restored and skipped hold only the first ones when all would not fit in one message
        (lists_truncated). report_file_name names the file, in the same directory, that lists
        every outcome (one JSON object per line)."""
        request = backup_service_pb2.RestoreBackupRequest(
            file_name=file_name, expected_signer_fingerprint=expected_signer_fingerprint
        )
        stream = self._backups.StreamRestoreBackup(request, timeout=None)
        try:
            for message in stream:
                if progress is not None:
                    progress(message)
                if message.HasField("result"):
                    return message.result
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            if code is grpc.StatusCode.UNIMPLEMENTED:
                return self._call(self._backups.RestoreBackup, request, deadline=False)
            raise VaultClientError.from_rpc_error(error) from error
        finally:
            # Leaving early (progress raised) must not leave the restore running for nobody.
            stream.cancel()
        raise VaultClientError(
            grpc.StatusCode.UNKNOWN, "", "the restore's stream ended without its result"
        )

    def list_backups(
        self, key_version: str, *, page_size: int = 0
    ) -> list[backup_service_pb2.BackupRecord]:
        """The logged exports whose bundles hold key_version's blob, oldest first: every
        page, page_size exports per call (0: the server's default)."""
        return list(
            _paged(
                lambda token: self._call(
                    self._backups.ListBackups,
                    backup_service_pb2.ListBackupsRequest(
                        key_version=key_version, page_size=page_size, page_token=token
                    ),
                ),
                lambda page: page.backups,
            )
        )

    # -- KeyService -------------------------------------------------------------------------

    def create_key(
        self,
        parent: str,
        key_id: str,
        purpose: PurposeLike,
        algorithm: AlgorithmLike | None = None,
        *,
        labels: dict[str, str] | None = None,
        description: str = "",
        token_resident: bool = False,
        request_id: str = "",
    ) -> resources_pb2.Key:
        key = resources_pb2.Key(
            purpose=_enum(purpose, resources_pb2.Purpose, "PURPOSE_"),
            algorithm=_enum(algorithm, resources_pb2.Algorithm, "ALGORITHM_"),
            labels=labels or {},
            description=description,
            token_resident=token_resident,
        )
        request = key_service_pb2.CreateKeyRequest(
            parent=parent, key_id=key_id, key=key, request_id=request_id
        )
        return self._call(self._keys.CreateKey, request)

    def get_key(self, name: str) -> resources_pb2.Key:
        return self._call(self._keys.GetKey, key_service_pb2.GetKeyRequest(name=name))

    def list_keys(
        self,
        parent: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        purpose: PurposeLike | None = None,
        state: KeyStateLike | None = None,
        label_key: str = "",
        label_value: str | None = None,
    ) -> key_service_pb2.ListKeysResponse:
        request = key_service_pb2.ListKeysRequest(
            parent=parent,
            page_size=page_size,
            page_token=page_token,
            purpose=_enum(purpose, resources_pb2.Purpose, "PURPOSE_"),
            state=_enum(state, resources_pb2.KeyState, "KEY_STATE_"),
            label_key=label_key,
            label_value=label_value,
        )
        return self._call(self._keys.ListKeys, request)

    def iter_keys(
        self,
        parent: str,
        *,
        page_size: int = 0,
        purpose: PurposeLike | None = None,
        state: KeyStateLike | None = None,
        label_key: str = "",
        label_value: str | None = None,
    ) -> Iterator[resources_pb2.Key]:
        """Every matching key, fetching pages as needed."""
        return _paged(
            lambda token: self.list_keys(
                parent,
                page_size=page_size,
                page_token=token,
                purpose=purpose,
                state=state,
                label_key=label_key,
                label_value=label_value,
            ),
            lambda page: page.keys,
        )

    def update_key(
        self, name: str, *, labels: dict[str, str] | None = None, description: str | None = None
    ) -> resources_pb2.Key:
        """Replace the labels and/or the description; None leaves a field unchanged, {} or ""
        clears it."""
        paths = [
            path
            for path, value in (("labels", labels), ("description", description))
            if value is not None
        ]
        key = resources_pb2.Key(name=name, labels=labels or {}, description=description or "")
        request = key_service_pb2.UpdateKeyRequest(key=key, update_mask=FieldMask(paths=paths))
        return self._call(self._keys.UpdateKey, request)

    def rotate_key(self, name: str) -> resources_pb2.Key:
        return self._call(self._keys.RotateKey, key_service_pb2.RotateKeyRequest(name=name))

    def list_key_versions(self, name: str) -> list[resources_pb2.KeyVersion]:
        return list(
            _paged(
                lambda token: self._call(
                    self._keys.ListKeyVersions,
                    key_service_pb2.ListKeyVersionsRequest(parent=name, page_token=token),
                ),
                lambda page: page.key_versions,
            )
        )

    def get_public_key(self, name: str) -> resources_pb2.PublicKey:
        """name: a key (its primary version) or a key version."""
        request = key_service_pb2.GetPublicKeyRequest(name=name)
        response = self._call(self._keys.GetPublicKey, request)
        _check(response, "pem")
        return response

    def create_import_job(
        self, parent: str, import_method: ImportMethodLike | None = None
    ) -> resources_pb2.ImportJob:
        """An import job for the key parent: its public key wraps material for import_key."""
        request = key_service_pb2.CreateImportJobRequest(
            parent=parent,
            import_method=_enum(import_method, resources_pb2.ImportMethod, "IMPORT_METHOD_"),
        )
        return self._call(self._keys.CreateImportJob, request)

    def get_import_job(self, name: str) -> resources_pb2.ImportJob:
        return self._call(self._keys.GetImportJob, key_service_pb2.GetImportJobRequest(name=name))

    def list_import_jobs(self, parent: str) -> list[resources_pb2.ImportJob]:
        return list(
            _paged(
                lambda token: self._call(
                    self._keys.ListImportJobs,
                    key_service_pb2.ListImportJobsRequest(parent=parent, page_token=token),
                ),
                lambda page: page.import_jobs,
            )
        )

    def import_key(
        self,
        name: str,
        import_job: str,
        key: bytes | PrivateKey,
        *,
        keep_primary: bool = False,
    ) -> resources_pb2.KeyVersion:
        """Import key material as a new version of the key name, wrapped here for import_job
        (vault.client.key_import): for AES and HMAC keys the raw key bytes, for RSA and EC
        keys a private key object or its PEM or DER. The plaintext key never leaves this
        process; the vault unwraps it inside its token. The new version becomes primary
        unless keep_primary."""
        algorithm = Algorithm(
            resources_pb2.Algorithm.Name(self.get_key(name).algorithm).removeprefix("ALGORITHM_")
        )
        material = import_material(algorithm, key)
        job = self.get_import_job(import_job)
        request = key_service_pb2.ImportKeyVersionRequest(
            parent=name,
            import_job=import_job,
            algorithm=resources_pb2.Algorithm.Value(f"ALGORITHM_{algorithm}"),
            wrapped_key=wrap_for_import(job.public_key_der, material.encoded),
            public_key_der=material.public_key_der or b"",
            keep_primary=keep_primary,
        )
        return self._call(self._keys.ImportKeyVersion, request)

    def enable_key(self, name: str) -> resources_pb2.Key:
        return self._call(self._keys.EnableKey, key_service_pb2.EnableKeyRequest(name=name))

    def disable_key(self, name: str) -> resources_pb2.Key:
        return self._call(self._keys.DisableKey, key_service_pb2.DisableKeyRequest(name=name))

    def revoke_key(
        self, name: str, reason: str = "", reason_code: RevocationReasonLike | None = None
    ) -> resources_pb2.Key:
        """name: a key (revokes it and every version) or one key version. reason_code: e.g.
        "COMPROMISED", "SUPERSEDED", "CESSATION_OF_OPERATION"."""
        request = key_service_pb2.RevokeKeyRequest(
            name=name,
            reason=reason,
            reason_code=_enum(reason_code, resources_pb2.RevocationReason, "REVOCATION_REASON_"),
        )
        return self._call(self._keys.RevokeKey, request)

    def list_revocations(
        self, parent: str, *, page_size: int = 0, page_token: str = ""
    ) -> key_service_pb2.ListRevocationsResponse:
        """parent: accounts/{account}, or accounts/- for every account (admins)."""
        request = key_service_pb2.ListRevocationsRequest(
            parent=parent, page_size=page_size, page_token=page_token
        )
        return self._call(self._keys.ListRevocations, request)

    def iter_revocations(
        self, parent: str, *, page_size: int = 0
    ) -> Iterator[resources_pb2.Revocation]:
        """Every revoked key version under parent, fetching pages as needed."""
        return _paged(
            lambda token: self.list_revocations(parent, page_size=page_size, page_token=token),
            lambda page: page.revocations,
        )

    def get_revocation_feed(self, parent: str) -> resources_pb2.RevocationFeed:
        """The signed feed in one message, so only while it fits the server's message limit
        (RESOURCE_EXHAUSTED beyond); write_revocation_feed takes any size. Check it against
        a pinned feed key before trusting it (README, Revocation feed)."""
        request = key_service_pb2.GetRevocationFeedRequest(parent=parent)
        return self._call(self._keys.GetRevocationFeed, request)

    def stream_revocation_feed(self, parent: str) -> Iterator[key_service_pb2.RevocationFeedChunk]:
        """The signed feed as a stream of chunks: concatenated in order they are the payload;
        the last carries the signature and the feed key. No deadline, as for export_backup.
        Errors (also mid-stream) raise VaultClientError."""
        request = key_service_pb2.GetRevocationFeedRequest(parent=parent)
        try:
            yield from self._keys.StreamRevocationFeed(request, timeout=None)
        except grpc.RpcError as error:
            raise VaultClientError.from_rpc_error(error) from error

    def write_revocation_feed(
        self, parent: str, out: BinaryIO
    ) -> key_service_pb2.RevocationFeedChunk:
        """Write the feed's payload to out as it arrives, whatever its size, and return the
        last message (signature, public_key_der, public_key_sha256). What out holds is
        checked by nobody yet: verify the signature over it with the pinned feed key before
        trusting it (README, Revocation feed). A stream that ends unsigned raises."""
        last: key_service_pb2.RevocationFeedChunk | None = None
        for message in self.stream_revocation_feed(parent):
            out.write(message.chunk)
            last = message
        if last is None or not last.signature:
            raise VaultClientError(
                grpc.StatusCode.DATA_LOSS, "", "the revocation feed ended without its signature"
            )
        return last

    def schedule_key_destruction(
        self, name: str, waiting_period: timedelta | None = None
    ) -> resources_pb2.Key:
        """waiting_period None: the server's default."""
        request = key_service_pb2.ScheduleKeyDestructionRequest(name=name)
        if waiting_period is not None:
            duration = Duration()
            duration.FromTimedelta(waiting_period)
            request.waiting_period.CopyFrom(duration)
        return self._call(self._keys.ScheduleKeyDestruction, request)

    def cancel_key_destruction(self, name: str) -> resources_pb2.Key:
        request = key_service_pb2.CancelKeyDestructionRequest(name=name)
        return self._call(self._keys.CancelKeyDestruction, request)

    # -- CryptoService ----------------------------------------------------------------------

    def encrypt(
        self, name: str, plaintext: bytes, aad: bytes = b""
    ) -> crypto_service_pb2.EncryptResponse:
        request = crypto_service_pb2.EncryptRequest(
            name=name,
            plaintext=plaintext,
            additional_authenticated_data=aad,
            plaintext_crc32c=_crc32c(plaintext),
            additional_authenticated_data_crc32c=_crc32c(aad),
        )
        response = self._call(self._crypto.Encrypt, request)
        _check(response, "ciphertext")
        return response

    def decrypt(
        self, name: str, ciphertext: bytes, aad: bytes = b""
    ) -> crypto_service_pb2.DecryptResponse:
        request = crypto_service_pb2.DecryptRequest(
            name=name,
            ciphertext=ciphertext,
            additional_authenticated_data=aad,
            ciphertext_crc32c=_crc32c(ciphertext),
            additional_authenticated_data_crc32c=_crc32c(aad),
        )
        response = self._call(self._crypto.Decrypt, request)
        _check(response, "plaintext")
        return response

    def generate_data_key(
        self,
        name: str,
        key_size_bytes: int = 32,
        aad: bytes = b"",
        *,
        include_plaintext: bool = False,
    ) -> crypto_service_pb2.GenerateDataKeyResponse:
        request = crypto_service_pb2.GenerateDataKeyRequest(
            name=name,
            key_size_bytes=key_size_bytes,
            additional_authenticated_data=aad,
            additional_authenticated_data_crc32c=_crc32c(aad),
            include_plaintext=include_plaintext,
        )
        response = self._call(self._crypto.GenerateDataKey, request)
        _check(response, "ciphertext")
        _check(response, "plaintext")
        return response

    def re_encrypt(
        self,
        name: str,
        ciphertext: bytes,
        *,
        source_aad: bytes = b"",
        destination_key_name: str = "",
        destination_aad: bytes | None = None,
    ) -> crypto_service_pb2.ReEncryptResponse:
        """destination_key_name empty: name's primary version. destination_aad None: the new
        ciphertext is bound to source_aad, as the old one was (b"" binds it to none)."""
        if destination_aad is None:
            destination_aad = source_aad
        request = crypto_service_pb2.ReEncryptRequest(
            name=name,
            ciphertext=ciphertext,
            source_additional_authenticated_data=source_aad,
            destination_key_name=destination_key_name,
            destination_additional_authenticated_data=destination_aad,
            ciphertext_crc32c=_crc32c(ciphertext),
            source_additional_authenticated_data_crc32c=_crc32c(source_aad),
            destination_additional_authenticated_data_crc32c=_crc32c(destination_aad),
        )
        response = self._call(self._crypto.ReEncrypt, request)
        _check(response, "ciphertext")
        return response

    def wrap_key(self, name: str, key_material: bytes) -> crypto_service_pb2.WrapKeyResponse:
        request = crypto_service_pb2.WrapKeyRequest(
            name=name, key_material=key_material, key_material_crc32c=_crc32c(key_material)
        )
        response = self._call(self._crypto.WrapKey, request)
        _check(response, "wrapped_key")
        return response

    def unwrap_key(self, name: str, wrapped_key: bytes) -> crypto_service_pb2.UnwrapKeyResponse:
        request = crypto_service_pb2.UnwrapKeyRequest(
            name=name, wrapped_key=wrapped_key, wrapped_key_crc32c=_crc32c(wrapped_key)
        )
        response = self._call(self._crypto.UnwrapKey, request)
        _check(response, "key_material")
        return response

    def sign(
        self, name: str, *, message: SignedMessage | None = None, digest: bytes | None = None
    ) -> crypto_service_pb2.SignResponse:
        """Give exactly one of message and digest.

        message: bytes, or a binary file object, read to its end. One larger than
        MAX_MESSAGE_BYTES (64 KiB) is hashed here, a chunk at a time, with the hash of the
        key's algorithm (learnt with one GetPublicKey call, so the caller needs that
        permission too), and its digest is signed: the same standard signature of the whole
        message (EC and RSA-PSS keys). Ed25519 and RSA PKCS#1 v1.5 keys sign whole messages
        only: a larger one raises VaultClientError INPUT_TOO_LARGE without calling Sign.
        The response's verified_digest_crc32c says a digest was sent."""
        message, digest = self._signed_input(name, message, digest)
        request = crypto_service_pb2.SignRequest(name=name)
        _set_signed_input(request, message, digest)
        response = self._call(self._crypto.Sign, request)
        _check(response, "signature")
        return response

    def verify(
        self,
        name: str,
        signature: bytes,
        *,
        message: SignedMessage | None = None,
        digest: bytes | None = None,
    ) -> Verification:
        """Give exactly one of message and digest; message as for sign(), a large one hashed
        here. The result is true only for a valid signature (an invalid one is not an
        error): `if vault.verify(...):` is safe."""
        message, digest = self._signed_input(name, message, digest)
        request = crypto_service_pb2.VerifyRequest(
            name=name, signature=signature, signature_crc32c=_crc32c(signature)
        )
        _set_signed_input(request, message, digest)
        response = self._call(self._crypto.Verify, request)
        return Verification(bool(response.valid), response.key_version, response)

    def _signed_input(
        self, name: str, message: SignedMessage | None, digest: bytes | None
    ) -> tuple[bytes | None, bytes | None]:
        """(message, digest) to send: the message itself when it fits in one request,
        otherwise its digest under the key's algorithm."""
        if message is None or digest is not None:
            if message is not None:
                raise ValueError("give exactly one of message and digest")
            return None, digest
        rest: BinaryIO | None = None
        head: bytes | bytearray | memoryview
        if isinstance(message, bytes | bytearray | memoryview):
            head = message
        else:
            rest = message
            head = message.read(MAX_MESSAGE_BYTES + 1)
        if len(head) <= MAX_MESSAGE_BYTES:
            return bytes(head), None
        algorithm = self._signing_algorithm(name)
        digest_hash = algorithm.digest_hash
        if digest_hash is None:
            why = (
                "Ed25519 is pure EdDSA, which hashes the whole message itself"
                if algorithm.spec.family is KeyFamily.ED25519
                else "PKCS#1 v1.5 over a digest needs raw RSA, which the token has switched off"
            )
            raise VaultClientError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "INPUT_TOO_LARGE",
                f"{algorithm} keys sign whole messages of at most {MAX_MESSAGE_BYTES} bytes "
                f"and cannot sign a digest ({why}); this message is larger. Sign a small "
                "manifest that holds its SHA-256 instead, or use an EC or RSA-PSS key, "
                "which sign larger messages by their digest",
                {"field": "message", "limit": str(MAX_MESSAGE_BYTES), "algorithm": algorithm},
            )
        return None, _hash_rest(hashlib.new(digest_hash.lower()), head, rest)

    def _signing_algorithm(self, name: str) -> Algorithm:
        """The algorithm of the key name is or names a version of (fixed for its life)."""
        key_name = name.split("/versions/", 1)[0]
        algorithm = self._algorithms.get(key_name)
        if algorithm is None:
            try:
                public = self.get_public_key(key_name)
            except VaultClientError as error:
                if error.code is not grpc.StatusCode.PERMISSION_DENIED:
                    raise
                raise VaultClientError(
                    error.code,
                    error.reason,
                    f"a message over {MAX_MESSAGE_BYTES} bytes is hashed here, with the hash "
                    f"of the key's algorithm, and GetPublicKey on {key_name} was denied: "
                    "allow it, or send the digest yourself",
                    error.metadata,
                ) from error
            name_of = resources_pb2.Algorithm.Name(public.algorithm)
            algorithm = Algorithm(name_of.removeprefix("ALGORITHM_"))
            self._algorithms[key_name] = algorithm
        return algorithm

    def asymmetric_decrypt(
        self, name: str, ciphertext: bytes
    ) -> crypto_service_pb2.AsymmetricDecryptResponse:
        request = crypto_service_pb2.AsymmetricDecryptRequest(
            name=name, ciphertext=ciphertext, ciphertext_crc32c=_crc32c(ciphertext)
        )
        response = self._call(self._crypto.AsymmetricDecrypt, request)
        _check(response, "plaintext")
        return response

    def generate_mac(self, name: str, data: bytes) -> crypto_service_pb2.GenerateMacResponse:
        request = crypto_service_pb2.GenerateMacRequest(
            name=name, data=data, data_crc32c=_crc32c(data)
        )
        response = self._call(self._crypto.GenerateMac, request)
        _check(response, "mac")
        return response

    def verify_mac(self, name: str, data: bytes, mac: bytes) -> Verification:
        """The result is true only when mac is data's MAC: `if vault.verify_mac(...):` is
        safe."""
        request = crypto_service_pb2.VerifyMacRequest(
            name=name, data=data, mac=mac, data_crc32c=_crc32c(data), mac_crc32c=_crc32c(mac)
        )
        response = self._call(self._crypto.VerifyMac, request)
        return Verification(bool(response.valid), response.key_version, response)

    def generate_random(self, size_bytes: int) -> crypto_service_pb2.GenerateRandomResponse:
        request = crypto_service_pb2.GenerateRandomRequest(size_bytes=size_bytes)
        response = self._call(self._crypto.GenerateRandom, request)
        _check(response, "data")
        return response

    # -- batches ----------------------------------------------------------------------------
    #
    # Each takes many items (which may name different keys) and returns one entry per item,
    # in order: the unary method's response, or the VaultClientError that item failed with
    # (a refused, rate-limited or undecryptable item fails alone). Items go batch_size to a
    # call (default: 1,000, or fewer if the server says it takes fewer); the server takes
    # server.max_batch_items (1,000 by default) and server.max_message_bytes per call. Sign
    # and Verify items are whole messages of at most MAX_MESSAGE_BYTES, or digests with
    # prehashed=True.

    def batch_encrypt(
        self, items: Iterable[tuple[str, bytes] | tuple[str, bytes, bytes]], batch_size: int = 0
    ) -> list[crypto_service_pb2.EncryptResponse | VaultClientError]:
        """items: (key name, plaintext) or (key name, plaintext, aad)."""
        requests = []
        for name, plaintext, *rest in items:
            aad = rest[0] if rest else b""
            requests.append(
                crypto_service_pb2.EncryptRequest(
                    name=name,
                    plaintext=plaintext,
                    additional_authenticated_data=aad,
                    plaintext_crc32c=_crc32c(plaintext),
                    additional_authenticated_data_crc32c=_crc32c(aad),
                )
            )
        return self._batch(
            self._crypto.BatchEncrypt,
            crypto_service_pb2.BatchEncryptRequest,
            requests,
            ("ciphertext",),
            batch_size,
        )

    def batch_decrypt(
        self, items: Iterable[tuple[str, bytes] | tuple[str, bytes, bytes]], batch_size: int = 0
    ) -> list[crypto_service_pb2.DecryptResponse | VaultClientError]:
        """items: (key name, ciphertext) or (key name, ciphertext, aad)."""
        requests = []
        for name, ciphertext, *rest in items:
            aad = rest[0] if rest else b""
            requests.append(
                crypto_service_pb2.DecryptRequest(
                    name=name,
                    ciphertext=ciphertext,
                    additional_authenticated_data=aad,
                    ciphertext_crc32c=_crc32c(ciphertext),
                    additional_authenticated_data_crc32c=_crc32c(aad),
                )
            )
        return self._batch(
            self._crypto.BatchDecrypt,
            crypto_service_pb2.BatchDecryptRequest,
            requests,
            ("plaintext",),
            batch_size,
        )

    def batch_generate_data_key(
        self,
        names: Iterable[str],
        key_size_bytes: int = 32,
        aad: bytes = b"",
        *,
        include_plaintext: bool = False,
        batch_size: int = 0,
    ) -> list[crypto_service_pb2.GenerateDataKeyResponse | VaultClientError]:
        """One data key per name (a name may repeat), all of key_size_bytes and bound to aad."""
        requests = [
            crypto_service_pb2.GenerateDataKeyRequest(
                name=name,
                key_size_bytes=key_size_bytes,
                additional_authenticated_data=aad,
                additional_authenticated_data_crc32c=_crc32c(aad),
                include_plaintext=include_plaintext,
            )
            for name in names
        ]
        return self._batch(
            self._crypto.BatchGenerateDataKey,
            crypto_service_pb2.BatchGenerateDataKeyRequest,
            requests,
            ("ciphertext", "plaintext"),
            batch_size,
        )

    def batch_sign(
        self, items: Iterable[tuple[str, bytes]], *, prehashed: bool = False, batch_size: int = 0
    ) -> list[crypto_service_pb2.SignResponse | VaultClientError]:
        """items: (key name, message), or (key name, digest) with prehashed."""
        requests = []
        for name, data in items:
            request = crypto_service_pb2.SignRequest(name=name)
            _set_signed_input(request, None if prehashed else data, data if prehashed else None)
            requests.append(request)
        return self._batch(
            self._crypto.BatchSign,
            crypto_service_pb2.BatchSignRequest,
            requests,
            ("signature",),
            batch_size,
        )

    def batch_verify(
        self,
        items: Iterable[tuple[str, bytes, bytes]],
        *,
        prehashed: bool = False,
        batch_size: int = 0,
    ) -> list[Verification | VaultClientError]:
        """items: (key name, message or, with prehashed, digest, signature). An entry is a
        Verification, true only for a valid signature, or the item's error."""
        requests = []
        for name, data, signature in items:
            request = crypto_service_pb2.VerifyRequest(
                name=name, signature=signature, signature_crc32c=_crc32c(signature)
            )
            _set_signed_input(request, None if prehashed else data, data if prehashed else None)
            requests.append(request)
        answers = self._batch(
            self._crypto.BatchVerify,
            crypto_service_pb2.BatchVerifyRequest,
            requests,
            (),
            batch_size,
        )
        return [
            answer
            if isinstance(answer, VaultClientError)
            else Verification(bool(answer.valid), answer.key_version, answer)
            for answer in answers
        ]

    def batch_decrypt_bucket_key(
        self, items: Iterable[tuple[str, bytes]], batch_size: int = 0
    ) -> list[bucket_service_pb2.DecryptBucketKeyResponse | VaultClientError]:
        """items: (bucket name, wrapped key)."""
        requests = [
            bucket_service_pb2.DecryptBucketKeyRequest(
                name=bucket, wrapped_key=wrapped, wrapped_key_crc32c=_crc32c(wrapped)
            )
            for bucket, wrapped in items
        ]
        return self._batch(
            self._buckets.BatchDecryptBucketKey,
            bucket_service_pb2.BatchDecryptBucketKeyRequest,
            requests,
            ("plaintext",),
            batch_size,
        )

    def _batch(
        self,
        method: grpc.UnaryUnaryMultiCallable[Any, Any],
        request_type: Callable[..., Any],
        requests: Sequence[Message],
        checked: Sequence[str],
        batch_size: int,
    ) -> list[Any]:
        """Send requests batch_size (default DEFAULT_BATCH_ITEMS) at a time; each item's
        response, its byte fields checked against their CRC32C, or its error. A server that
        takes fewer items per call says how many (TOO_MANY_ITEMS): then that many at a time."""
        size = batch_size or DEFAULT_BATCH_ITEMS
        answers: list[Any] = []
        start = 0
        while start < len(requests):
            chunk = requests[start : start + size]
            try:
                response = self._call(method, request_type(requests=chunk))
            except VaultClientError as error:
                limit = _batch_limit(error)
                if batch_size or limit is None or not 0 < limit < len(chunk):
                    raise
                size = limit
                continue
            start += len(chunk)
            for slot in response.results:
                if slot.WhichOneof("result") != "response":
                    answers.append(VaultClientError.from_status(slot.error))
                    continue
                try:
                    for field in checked:
                        _check(slot.response, field)
                except ChecksumError as error:
                    answers.append(error)
                    continue
                answers.append(slot.response)
        return answers

    # -- IdentityService (admin role) --------------------------------------------------------

    def create_account(
        self, account_id: str, *, display_name: str = "", admin: bool = False
    ) -> resources_pb2.Account:
        request = identity_service_pb2.CreateAccountRequest(
            account_id=account_id,
            account=resources_pb2.Account(display_name=display_name, admin=admin),
        )
        return self._call(self._identity.CreateAccount, request)

    def get_account(self, name: str) -> resources_pb2.Account:
        return self._call(
            self._identity.GetAccount, identity_service_pb2.GetAccountRequest(name=name)
        )

    def list_accounts(self) -> list[resources_pb2.Account]:
        return list(
            _paged(
                lambda token: self._call(
                    self._identity.ListAccounts,
                    identity_service_pb2.ListAccountsRequest(page_token=token),
                ),
                lambda page: page.accounts,
            )
        )

    def create_access_key(
        self,
        parent: str,
        *,
        grants: Sequence[tuple[str, str]] = (),
        description: str = "",
    ) -> identity_service_pb2.CreateAccessKeyResponse:
        """grants: (resource, level) pairs such as ("keys/orders", "READWRITE"); none gives
        full access to the account. The response's secret_key is never shown again."""
        key = resources_pb2.AccessKey(
            grants=[
                resources_pb2.Grant(
                    resource=resource,
                    level=_enum(level, resources_pb2.AccessLevel, "ACCESS_LEVEL_"),
                )
                for resource, level in grants
            ],
            description=description,
        )
        request = identity_service_pb2.CreateAccessKeyRequest(parent=parent, access_key=key)
        return self._call(self._identity.CreateAccessKey, request)

    def get_access_key(self, name: str) -> resources_pb2.AccessKey:
        return self._call(
            self._identity.GetAccessKey, identity_service_pb2.GetAccessKeyRequest(name=name)
        )

    def list_access_keys(self, parent: str) -> list[resources_pb2.AccessKey]:
        return list(
            _paged(
                lambda token: self._call(
                    self._identity.ListAccessKeys,
                    identity_service_pb2.ListAccessKeysRequest(parent=parent, page_token=token),
                ),
                lambda page: page.access_keys,
            )
        )

    def reset_secret_key(self, name: str) -> identity_service_pb2.CreateAccessKeyResponse:
        return self._call(
            self._identity.ResetSecretKey, identity_service_pb2.ResetSecretKeyRequest(name=name)
        )

    def revoke_access_key(self, name: str) -> resources_pb2.AccessKey:
        return self._call(
            self._identity.RevokeAccessKey, identity_service_pb2.RevokeAccessKeyRequest(name=name)
        )

    def delete_access_key(self, name: str) -> None:
        self._call(
            self._identity.DeleteAccessKey, identity_service_pb2.DeleteAccessKeyRequest(name=name)
        )

    def create_api_key(
        self,
        parent: str,
        scopes: Sequence[tuple[Sequence[str], Sequence[str]]],
        *,
        expire_time: datetime | None = None,
        rate_limit: tuple[float, int] | None = None,
        daily_quota: int = 0,
        description: str = "",
    ) -> identity_service_pb2.CreateApiKeyResponse:
        """scopes: (methods, resources) pairs such as (["Sign"], ["keys/releases"]);
        rate_limit: (requests per second, burst). The response's token is never shown
        again."""
        key = resources_pb2.ApiKey(
            scopes=[
                resources_pb2.ApiKeyScope(methods=list(methods), resources=list(resources))
                for methods, resources in scopes
            ],
            daily_quota=daily_quota,
            description=description,
        )
        if expire_time is not None:
            key.expire_time.FromDatetime(expire_time)
        if rate_limit is not None:
            key.rate_limit.CopyFrom(
                resources_pb2.RateLimit(requests_per_second=rate_limit[0], burst=rate_limit[1])
            )
        request = identity_service_pb2.CreateApiKeyRequest(parent=parent, api_key=key)
        return self._call(self._identity.CreateApiKey, request)

    def get_api_key(self, name: str) -> resources_pb2.ApiKey:
        return self._call(
            self._identity.GetApiKey, identity_service_pb2.GetApiKeyRequest(name=name)
        )

    def list_api_keys(self, parent: str) -> list[resources_pb2.ApiKey]:
        return list(
            _paged(
                lambda token: self._call(
                    self._identity.ListApiKeys,
                    identity_service_pb2.ListApiKeysRequest(parent=parent, page_token=token),
                ),
                lambda page: page.api_keys,
            )
        )

    def revoke_api_key(self, name: str) -> resources_pb2.ApiKey:
        return self._call(
            self._identity.RevokeApiKey, identity_service_pb2.RevokeApiKeyRequest(name=name)
        )

    def get_usage(self, name: str, days: int = 0) -> list[resources_pb2.UsageCounter]:
        """Every counter of the credential's last days UTC days (0: the server's 31), by day
        then method, page after page."""
        return list(
            _paged(
                lambda token: self._call(
                    self._identity.GetUsage,
                    identity_service_pb2.GetUsageRequest(name=name, days=days, page_token=token),
                ),
                lambda page: page.counters,
            )
        )

    # -- BucketService ----------------------------------------------------------------------

    def create_bucket(
        self,
        parent: str,
        bucket_id: str,
        *,
        labels: dict[str, str] | None = None,
        policy: resources_pb2.BucketKeyPolicy | None = None,
        request_id: str = "",
    ) -> resources_pb2.Bucket:
        """policy None: the server's default policy (bucket_key_policy() builds one)."""
        bucket = resources_pb2.Bucket(labels=labels or {}, policy=policy)
        request = bucket_service_pb2.CreateBucketRequest(
            parent=parent, bucket_id=bucket_id, bucket=bucket, request_id=request_id
        )
        return self._call(self._buckets.CreateBucket, request)

    def get_bucket(self, name: str) -> resources_pb2.Bucket:
        return self._call(self._buckets.GetBucket, bucket_service_pb2.GetBucketRequest(name=name))

    def list_buckets(
        self,
        parent: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        state: BucketStateLike | None = None,
        label_key: str = "",
        label_value: str | None = None,
    ) -> bucket_service_pb2.ListBucketsResponse:
        request = bucket_service_pb2.ListBucketsRequest(
            parent=parent,
            page_size=page_size,
            page_token=page_token,
            state=_enum(state, resources_pb2.BucketState, "BUCKET_STATE_"),
            label_key=label_key,
            label_value=label_value,
        )
        return self._call(self._buckets.ListBuckets, request)

    def iter_buckets(
        self,
        parent: str,
        *,
        page_size: int = 0,
        state: BucketStateLike | None = None,
        label_key: str = "",
        label_value: str | None = None,
    ) -> Iterator[resources_pb2.Bucket]:
        """Every matching bucket, fetching pages as needed."""
        return _paged(
            lambda token: self.list_buckets(
                parent,
                page_size=page_size,
                page_token=token,
                state=state,
                label_key=label_key,
                label_value=label_value,
            ),
            lambda page: page.buckets,
        )

    def update_bucket(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        policy: resources_pb2.BucketKeyPolicy | None = None,
    ) -> resources_pb2.Bucket:
        """Replace the labels and/or the policy; None leaves a field unchanged, {} clears the
        labels."""
        paths = [
            path for path, value in (("labels", labels), ("policy", policy)) if value is not None
        ]
        bucket = resources_pb2.Bucket(name=name, labels=labels or {}, policy=policy)
        request = bucket_service_pb2.UpdateBucketRequest(
            bucket=bucket, update_mask=FieldMask(paths=paths)
        )
        return self._call(self._buckets.UpdateBucket, request)

    def delete_bucket(
        self, name: str, waiting_period: timedelta | None = None
    ) -> resources_pb2.Bucket:
        """Schedules the destruction of the bucket's master key; waiting_period None: the
        server's default."""
        request = bucket_service_pb2.DeleteBucketRequest(name=name)
        if waiting_period is not None:
            duration = Duration()
            duration.FromTimedelta(waiting_period)
            request.waiting_period.CopyFrom(duration)
        return self._call(self._buckets.DeleteBucket, request)

    def cancel_bucket_deletion(self, name: str) -> resources_pb2.Bucket:
        request = bucket_service_pb2.CancelBucketDeletionRequest(name=name)
        return self._call(self._buckets.CancelBucketDeletion, request)

    def rotate_bucket_master_key(self, name: str) -> resources_pb2.Bucket:
        request = bucket_service_pb2.RotateBucketMasterKeyRequest(name=name)
        return self._call(self._buckets.RotateBucketMasterKey, request)

    def disable_bucket_master_key_version(self, name: str) -> resources_pb2.Bucket:
        """name: accounts/{a}/buckets/{b}/masterKeyVersions/{n}."""
        request = bucket_service_pb2.DisableBucketMasterKeyVersionRequest(name=name)
        return self._call(self._buckets.DisableBucketMasterKeyVersion, request)

    def enable_bucket_master_key_version(self, name: str) -> resources_pb2.Bucket:
        request = bucket_service_pb2.EnableBucketMasterKeyVersionRequest(name=name)
        return self._call(self._buckets.EnableBucketMasterKeyVersion, request)

    def list_bucket_master_key_versions(
        self, name: str, *, page_size: int = 0, page_token: str = ""
    ) -> bucket_service_pb2.ListBucketMasterKeyVersionsResponse:
        """One page of bucket name's master-key versions, newest first."""
        request = bucket_service_pb2.ListBucketMasterKeyVersionsRequest(
            parent=name, page_size=page_size, page_token=page_token
        )
        return self._call(self._buckets.ListBucketMasterKeyVersions, request)

    def iter_bucket_master_key_versions(
        self, name: str, *, page_size: int = 0
    ) -> Iterator[resources_pb2.BucketMasterKeyVersion]:
        """Every master-key version of bucket name, newest first, fetching pages as needed
        (a Bucket shows only the newest 100)."""
        return _paged(
            lambda token: self.list_bucket_master_key_versions(
                name, page_size=page_size, page_token=token
            ),
            lambda page: page.master_key_versions,
        )

    def generate_bucket_key(self, bucket: str) -> GeneratedBucketKey:
        """A fresh bucket key of bucket (BucketKeySource): its 32 bytes, the same wrapped under
        the primary master-key version, and the bucket's policy."""
        request = bucket_service_pb2.GenerateBucketKeyRequest(name=bucket)
        response = self._call(self._buckets.GenerateBucketKey, request)
        _check(response, "plaintext")
        _check(response, "wrapped_key")
        return GeneratedBucketKey(
            plaintext=response.plaintext,
            wrapped=response.wrapped_key,
            master_key_version=response.master_key_version,
            lifetime_seconds=response.key_lifetime.ToTimedelta().total_seconds(),
            max_objects=response.max_objects_per_key or None,
            max_bytes=response.max_bytes_per_key or None,
        )

    def decrypt_bucket_key(self, bucket: str, wrapped: bytes) -> bytes:
        """The plaintext of a wrapped bucket key of bucket (BucketKeySource). Raises
        BucketKeyRejected when the vault refuses the wrapped key (DECRYPTION_FAILED: modified,
        or made for another bucket); any other failure as VaultClientError."""
        request = bucket_service_pb2.DecryptBucketKeyRequest(
            name=bucket, wrapped_key=wrapped, wrapped_key_crc32c=_crc32c(wrapped)
        )
        try:
            response = self._call(self._buckets.DecryptBucketKey, request)
        except VaultClientError as error:
            if error.reason == "DECRYPTION_FAILED":
                raise BucketKeyRejected() from None
            raise
        _check(response, "plaintext")
        return bytes(response.plaintext)

    # -- AuditService (admin role) -----------------------------------------------------------

    def list_audit_events(
        self,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        credential_id: str = "",
        resource: str = "",
        method: str = "",
        outcome: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> audit_service_pb2.ListAuditEventsResponse:
        request = audit_service_pb2.ListAuditEventsRequest(
            credential_id=credential_id,
            resource=resource,
            method=method,
            outcome=outcome,
            page_size=page_size,
            page_token=page_token,
        )
        if start_time is not None:
            request.start_time.FromDatetime(start_time)
        if end_time is not None:
            request.end_time.FromDatetime(end_time)
        return self._call(self._audit.ListAuditEvents, request)

    def iter_audit_events(self, **filters: Any) -> Iterator[resources_pb2.AuditEvent]:
        """Every audit record matching filters (as list_audit_events), page after page. A
        page may be short or empty while its token goes on (each call examines a bounded
        part of the log): only an empty token ends the listing."""
        return _paged(
            lambda token: self.list_audit_events(**filters, page_size=1000, page_token=token),
            lambda page: page.events,
        )

    def verify_audit_log(self) -> AuditLogVerification:
        """The result is true only when the log checked out with no finding. No deadline:
        the server reads every record of the log (about 100,000 a second), so a log of
        millions takes longer than the client's per-call timeout."""
        request = audit_service_pb2.VerifyAuditLogRequest()
        verified = self._call(self._audit.VerifyAuditLog, request, deadline=False)
        return AuditLogVerification.of(verified)

    # -- ServerService (admin role) and health -----------------------------------------------

    def get_server_status(self, timeout: float | None = None) -> server_service_pb2.ServerStatus:
        """The server's state as the worker that answers sees it. With timeout: one try of
        at most that long (a vault that does not serve may not answer soon)."""
        request = server_service_pb2.GetServerStatusRequest()
        if timeout is None:
            return self._call(self._server.GetServerStatus, request)
        try:
            return self._server.GetServerStatus(request, timeout=timeout)
        except grpc.RpcError as error:
            raise VaultClientError.from_rpc_error(error) from error

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status of service ("" for the server as a whole): SERVING,
        NOT_SERVING, SERVICE_UNKNOWN...; no credential needed."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self._timeout
            )
        except grpc.RpcError as error:
            raise VaultClientError.from_rpc_error(error) from error
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


# -- TLS (VaultClient.__init__) ---------------------------------------------------------------


def _tls_credentials(
    ca_file: Path | str | None,
    client_cert_file: Path | str | None,
    client_key_file: Path | str | None,
) -> grpc.ChannelCredentials | None:
    """Credentials trusting ca_file, with a client certificate when given; None: plaintext."""
    if (client_cert_file is None) != (client_key_file is None):
        raise ValueError("client_cert_file and client_key_file go together")
    if ca_file is None:
        if client_cert_file is not None:
            raise ValueError("a client certificate needs ca_file: mutual TLS runs over TLS")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes(),
        private_key=Path(client_key_file).read_bytes() if client_key_file else None,
        certificate_chain=Path(client_cert_file).read_bytes() if client_cert_file else None,
    )


def _unix_socket_name(target: str, options: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """options, plus the name a unix: socket's certificate is checked for unless given."""
    override = "grpc.ssl_target_name_override"
    if target.startswith("unix") and all(name != override for name, _ in options):
        return [*options, (override, "localhost")]
    return options
