"""Python SDK of the key vault: `VaultClient(target)` and the `VaultClientError` it raises.

    with VaultClient("127.0.0.1:50051", credentials=credentials_from_env()) as vault:
        key = vault.create_key("accounts/acme", "orders", "ENCRYPT_DECRYPT")
        sealed = vault.encrypt(key.name, b"secret", aad=b"order-42")
        plain = vault.decrypt(key.name, sealed.ciphertext, aad=b"order-42").plaintext

Objects are encrypted on the client under bucket keys with `ObjectCipher(source, bucket)`
(README.md, "Object encryption format"); source is anything with the BucketService's two
calls (`BucketKeySource`), a VaultClient among them:

    cipher = ObjectCipher(vault, "accounts/acme/buckets/photos")
    sealed = cipher.encrypt("2026/cat.jpg", data)

Methods return the vault.v1 response messages (vault.gen.vault.v1), except verify,
verify_mac and verify_audit_log, whose results (Verification, AuditLogVerification) are true
only when the signature, MAC or log checked out. Responses that carry
plaintext or key material print it in their repr, as protobuf messages do: do not log them.
"""

from vault.client._auth import (
    AccessKeyCredentials,
    ApiKeyCredentials,
    AuthInterceptor,
    Credentials,
    authenticated_channel,
    credentials_from_env,
    load_credentials_file,
)
from vault.client._client import MAX_MESSAGE_BYTES, VaultClient
from vault.client._errors import ChecksumError, VaultClientError
from vault.client._results import AuditLogVerification, Verification
from vault.client.bucket_keys import (
    BucketKeyCache,
    BucketKeyRejected,
    BucketKeySource,
    CacheStats,
    GeneratedBucketKey,
)
from vault.client.object_cipher import ObjectCipher
from vault.client.object_format import ObjectIntegrityError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AccessKeyCredentials",
    "ApiKeyCredentials",
    "AuditLogVerification",
    "AuthInterceptor",
    "BucketKeyCache",
    "BucketKeyRejected",
    "BucketKeySource",
    "CacheStats",
    "ChecksumError",
    "Credentials",
    "GeneratedBucketKey",
    "ObjectCipher",
    "ObjectIntegrityError",
    "VaultClient",
    "VaultClientError",
    "Verification",
    "authenticated_channel",
    "credentials_from_env",
    "load_credentials_file",
]
