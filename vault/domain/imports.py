"""Import jobs: a wrapping key pair made in the token for one key, whose public half a caller
wraps key material under for ImportKeyVersion.

The wrapped format is the composite PKCS#11 defines as CKM_RSA_AES_KEY_WRAP: RSA-OAEP
(SHA-1, MGF1-SHA-1, empty label) of an ephemeral AES-256 key, followed by AES key wrap with
padding (RFC 5649) of the material under that key. SoftHSM has no CKM_RSA_AES_KEY_WRAP and
OAEP with SHA-1 only, so the vault does the same in two token steps; a token that has the
mechanism unwraps the same bytes in one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from vault.domain.errors import MalformedName
from vault.domain.names import KeyName

_ID = r"[a-z][a-z0-9-]{0,62}"
_JOB_RE = re.compile(
    rf"accounts/(?P<account>{_ID})/keys/(?P<key>{_ID})/importJobs/(?P<job>[a-z][a-z0-9]{{0,62}})"
)
_MAX_NAME = 256
# Token objects of import jobs' private keys: this prefix plus the job's random id. Not the
# prefix of key versions' objects, so reconciliation of key versions leaves them alone.
IMPORT_KEY_LABEL_PREFIX = "vault:import:"


class ImportMethod(StrEnum):
    RSA_OAEP_3072_SHA1_AES_256 = "RSA_OAEP_3072_SHA1_AES_256"
    RSA_OAEP_4096_SHA1_AES_256 = "RSA_OAEP_4096_SHA1_AES_256"

    @property
    def rsa_bits(self) -> int:
        return 3072 if self is ImportMethod.RSA_OAEP_3072_SHA1_AES_256 else 4096

    @property
    def wrapped_ephemeral_bytes(self) -> int:
        return self.rsa_bits // 8


DEFAULT_IMPORT_METHOD = ImportMethod.RSA_OAEP_3072_SHA1_AES_256


class ImportJobState(StrEnum):
    ACTIVE = "ACTIVE"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class ImportJobName:
    account: str
    key: str
    job: str

    @classmethod
    def parse(cls, name: str) -> ImportJobName:
        match = _JOB_RE.fullmatch(name) if len(name) <= _MAX_NAME else None
        if not match:
            raise MalformedName(
                "expected accounts/{account}/keys/{key}/importJobs/{job}",
                metadata={"name": name[:_MAX_NAME]},
            )
        return cls(match["account"], match["key"], match["job"])

    @property
    def key_name(self) -> KeyName:
        return KeyName(self.account, self.key)

    def __str__(self) -> str:
        return f"accounts/{self.account}/keys/{self.key}/importJobs/{self.job}"


@dataclass(frozen=True, slots=True)
class ImportJob:
    name: ImportJobName
    method: ImportMethod
    create_time: datetime
    expire_time: datetime
    token_label: str
    public_key_der: bytes = field(repr=False)
    # When the private key was destroyed (the job expired); None while it is in the token.
    destroy_time: datetime | None = None

    def state(self, now: datetime) -> ImportJobState:
        if self.destroy_time is not None or now >= self.expire_time:
            return ImportJobState.EXPIRED
        return ImportJobState.ACTIVE
