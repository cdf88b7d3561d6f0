"""Byte formats of what the vault hands out: ciphertexts and wrapped keys.

Both start with a format byte and the key version that made them, so a key can rotate and
old data still names the version that opens it. The header is authenticated: it is part of
the GCM additional data, and for key wrap it is checked against the version used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vault.domain.errors import DecryptionFailed

GCM_FORMAT = 0x01
WRAP_FORMAT = 0x02
NONCE_SIZE = 12
TAG_SIZE = 16
_HEADER = struct.Struct(">BI")
HEADER_SIZE = _HEADER.size


@dataclass(frozen=True, slots=True)
class GcmEnvelope:
    key_version: int
    nonce: bytes
    sealed: bytes  # ciphertext followed by the 16-byte tag

    def header(self) -> bytes:
        return gcm_header(self.key_version)

    def to_bytes(self) -> bytes:
        return self.header() + self.nonce + self.sealed

    @classmethod
    def parse(cls, data: bytes) -> GcmEnvelope:
        if len(data) < HEADER_SIZE + NONCE_SIZE + TAG_SIZE:
            raise DecryptionFailed()
        fmt, version = _HEADER.unpack_from(data)
        if fmt != GCM_FORMAT or version == 0:
            raise DecryptionFailed()
        nonce = data[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE]
        return cls(version, nonce, data[HEADER_SIZE + NONCE_SIZE :])


def gcm_header(key_version: int) -> bytes:
    """The first bytes of a GCM envelope made with key_version (GcmEnvelope.header)."""
    return _HEADER.pack(GCM_FORMAT, key_version)


def gcm_aad(header: bytes, key_name: str, caller_aad: bytes) -> bytes:
    """Bind header, key name and the caller's AAD; lengths keep the fields unambiguous."""
    return gcm_aad_prefix(header, key_name) + caller_aad


def gcm_aad_prefix(header: bytes, key_name: str) -> bytes:
    """What gcm_aad puts before the caller's AAD: the same for every item of a batch on one
    key version, so a batch builds it once per version and appends each item's AAD."""
    name = key_name.encode()
    return header + struct.pack(">H", len(name)) + name


@dataclass(frozen=True, slots=True)
class WrappedEnvelope:
    key_version: int
    wrapped: bytes

    def to_bytes(self) -> bytes:
        return _HEADER.pack(WRAP_FORMAT, self.key_version) + self.wrapped

    @classmethod
    def parse(cls, data: bytes) -> WrappedEnvelope:
        if len(data) < HEADER_SIZE + 16:
            raise DecryptionFailed()
        fmt, version = _HEADER.unpack_from(data)
        if fmt != WRAP_FORMAT or version == 0:
            raise DecryptionFailed()
        return cls(version, data[HEADER_SIZE:])
