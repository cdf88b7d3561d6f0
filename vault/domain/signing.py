"""The signed-request format, shared by the client SDK (which signs) and the server (which
checks). README.md documents it for other languages.

A signed call carries gRPC metadata `authorization` with the value

    VAULT1-HMAC-SHA256 Credential=<access key id>, Timestamp=<unix seconds>, Nonce=<nonce>,
    Signature=<hex>

where Signature is the lower-case hex HMAC-SHA256, keyed with the UTF-8 bytes of the secret
key, of the canonical form (lines joined by "\\n", no trailing newline):

    VAULT1-HMAC-SHA256
    <full method, e.g. /vault.v1.CryptoService/Sign>
    <access key id>
    <timestamp: decimal Unix seconds>
    <nonce: 16 to 64 characters of [A-Za-z0-9_-]>
    <lower-case hex SHA-256 of the exact request message bytes sent>

The method binds the signature to one RPC, the body hash to one request, the timestamp to a
window and the nonce to a single use within it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Final

SCHEME: Final = "VAULT1-HMAC-SHA256"
AUTHORIZATION_HEADER: Final = "authorization"
BEARER_PREFIX: Final = "Bearer "
_HEADER_RE = re.compile(
    rf"{SCHEME} Credential=(?P<credential>[A-Z0-9]{{1,64}}), "
    r"Timestamp=(?P<timestamp>[0-9]{1,12}), "
    r"Nonce=(?P<nonce>[A-Za-z0-9_-]{16,64}), Signature=(?P<signature>[0-9a-f]{64})"
)


@dataclass(frozen=True, slots=True)
class SignedHeader:
    access_key_id: str
    timestamp: int
    nonce: str
    signature: str = field(repr=False)

    @classmethod
    def parse(cls, value: str) -> SignedHeader | None:
        match = _HEADER_RE.fullmatch(value) if len(value) < 512 else None
        if match is None:
            return None
        return cls(match["credential"], int(match["timestamp"]), match["nonce"], match["signature"])

    def render(self) -> str:
        return (
            f"{SCHEME} Credential={self.access_key_id}, Timestamp={self.timestamp}, "
            f"Nonce={self.nonce}, Signature={self.signature}"
        )


def canonical_request(
    method: str, access_key_id: str, timestamp: int, nonce: str, body: bytes
) -> bytes:
    return "\n".join(
        (SCHEME, method, access_key_id, str(timestamp), nonce, hashlib.sha256(body).hexdigest())
    ).encode("utf-8")


def signature(secret_key: str, canonical: bytes) -> str:
    return hmac.new(secret_key.encode("utf-8"), canonical, hashlib.sha256).hexdigest()


def sign_request(
    method: str, access_key_id: str, secret_key: str, timestamp: int, nonce: str, body: bytes
) -> SignedHeader:
    canonical = canonical_request(method, access_key_id, timestamp, nonce, body)
    return SignedHeader(access_key_id, timestamp, nonce, signature(secret_key, canonical))


def signature_matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii"))
