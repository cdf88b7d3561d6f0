"""The measured operations: how each is asked of the vault, and how its answer is checked.

The raw side of each operation (the same PKCS#11 call on an equivalent key) is in
bench/raw.py; both sides use the inputs defined here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import google_crc32c
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value

from vault.client import VaultClient, VaultClientError
from vault.gen.vault.v1 import crypto_service_pb2 as pb

ACCOUNT: Final = "bench"
SIGN_MESSAGE: Final = bytes(range(32))  # 32-byte message
PLAINTEXT_1K: Final = bytes(i % 251 for i in range(1024))
DATA_KEY_BYTES: Final = 32
RANDOM_BYTES: Final = 32
_SERVICE: Final = "/vault.v1.CryptoService/"
BATCH_SIZES: Final = (1, 10, 100)


@dataclass(frozen=True, slots=True)
class Op:
    name: str  # as in results.json
    key_id: str
    purpose: str
    algorithm: str
    rpc: str  # the CryptoService method
    # A batch: this many items per call of the batch method of rpc, each one rpc request.
    # Its rows count items per second, which is what the raw side's loop counts.
    items: int = 0
    # The operation whose PKCS#11 call the raw side makes for each item (a batch op's unary
    # one), when not this op itself.
    raw_op: str = ""

    @property
    def method(self) -> str:
        return _SERVICE + ("Batch" + self.rpc if self.items else self.rpc)

    @property
    def items_per_call(self) -> int:
        return self.items or 1

    def key_name(self) -> str:
        return f"accounts/{ACCOUNT}/keys/{self.key_id}"


OPS: Final = {
    op.name: op
    for op in (
        Op("rsa2048_pss_sign", "rsa2048-pss", "SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256", "Sign"),
        Op("p256_ecdsa_sign", "p256-ecdsa", "SIGN_VERIFY", "EC_SIGN_P256_SHA256", "Sign"),
        Op("aes256_gcm_encrypt_1k", "aes256-gcm", "ENCRYPT_DECRYPT", "AES_256_GCM", "Encrypt"),
        Op("generate_data_key", "aes256-gdk", "ENCRYPT_DECRYPT", "AES_256_GCM", "GenerateDataKey"),
        # Not run by default: no key and no store read, so it shows the per-request floor of
        # the server (gRPC, interceptor, servicer) next to C_GenerateRandom alone.
        Op("generate_random_32", "", "", "", "GenerateRandom"),
        # Batches of the two cheapest token operations, where a call's fixed cost weighs
        # most: one item per call shows that cost, 100 how far batching takes it away.
        *(
            Op(f"{base}_batch{items}", key_id, purpose, algorithm, rpc, items, base)
            for base, key_id, purpose, algorithm, rpc in (
                ("p256_ecdsa_sign", "p256-ecdsa", "SIGN_VERIFY", "EC_SIGN_P256_SHA256", "Sign"),
                (
                    "aes256_gcm_encrypt_1k",
                    "aes256-gcm",
                    "ENCRYPT_DECRYPT",
                    "AES_256_GCM",
                    "Encrypt",
                ),
            )
            for items in BATCH_SIZES
        ),
    )
}
DEFAULT_OPS: Final = [name for name in OPS if name != "generate_random_32"]
RSA_SIGN: Final = "rsa2048_pss_sign"


def _crc(data: bytes) -> Int64Value:
    return Int64Value(value=int(google_crc32c.value(data)))


def vault_request(op: Op) -> bytes:
    """The serialized request, as VaultClient would build it (CRC32C fields included). The
    load generators send these bytes as they are, so no client-side protobuf work is timed."""
    name = op.key_name()
    message: Message
    if op.rpc == "Sign":
        message = pb.SignRequest(name=name, message=SIGN_MESSAGE, message_crc32c=_crc(SIGN_MESSAGE))
    elif op.rpc == "Encrypt":
        message = pb.EncryptRequest(
            name=name,
            plaintext=PLAINTEXT_1K,
            plaintext_crc32c=_crc(PLAINTEXT_1K),
            additional_authenticated_data_crc32c=_crc(b""),
        )
    elif op.rpc == "GenerateDataKey":
        message = pb.GenerateDataKeyRequest(
            name=name,
            key_size_bytes=DATA_KEY_BYTES,
            additional_authenticated_data_crc32c=_crc(b""),
            include_plaintext=True,
        )
    elif op.rpc == "GenerateRandom":
        message = pb.GenerateRandomRequest(size_bytes=RANDOM_BYTES)
    else:
        raise ValueError(op.rpc)
    if op.items:
        batch = _BATCH_REQUESTS[op.rpc]()
        batch.requests.extend([message] * op.items)
        message = batch
    return message.SerializeToString()


_BATCH_REQUESTS: Final = {
    "Sign": pb.BatchSignRequest,
    "Encrypt": pb.BatchEncryptRequest,
    "GenerateDataKey": pb.BatchGenerateDataKeyRequest,
}
_BATCH_RESPONSES: Final[dict[str, Callable[[bytes], Any]]] = {
    "Sign": pb.BatchSignResponse.FromString,
    "Encrypt": pb.BatchEncryptResponse.FromString,
    "GenerateDataKey": pb.BatchGenerateDataKeyResponse.FromString,
}


def _item_answers(op: Op, response_bytes: bytes) -> list[bytes]:
    """The answer to each item of a batch, as the unary method's response bytes."""
    results = _BATCH_RESPONSES[op.rpc](response_bytes).results
    if len(results) != op.items:
        raise AssertionError(f"{len(results)} results for {op.items} items")
    answers = []
    for result in results:
        if result.WhichOneof("result") != "response":
            raise AssertionError(f"a batch item failed: {result.error.message}")
        answers.append(result.response.SerializeToString())
    return answers


def create_key(client: VaultClient, op: Op) -> None:
    """Create op's key through the API (once per server: keys live in the shared store),
    in the benchmark's account, which an authenticated server needs to exist first."""
    if not op.key_id:
        return
    try:
        client.create_account(ACCOUNT)
    except VaultClientError as error:
        # Made already; or a server without authentication, which has no accounts to make.
        if error.code.name not in ("ALREADY_EXISTS", "UNIMPLEMENTED"):
            raise
    client.create_key(f"accounts/{ACCOUNT}", op.key_id, op.purpose, op.algorithm)


def check_vault_answer(client: VaultClient, op: Op, response_bytes: bytes) -> None:
    """Check one answer to vault_request(op) independently of the vault where possible:
    signatures with `cryptography` and GetPublicKey's PEM, ciphertexts by decrypting them.
    A batch's answer: every item's, as the unary method's would be."""
    if op.items:
        unary = OPS[op.raw_op]
        for answer in _item_answers(op, response_bytes):
            check_vault_answer(client, unary, answer)
        return
    name = op.key_name()
    if op.rpc == "Sign":
        signature = pb.SignResponse.FromString(response_bytes).signature
        pem = client.get_public_key(name).pem.encode()
        public = serialization.load_pem_public_key(pem)
        if isinstance(public, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            public.verify(signature, SIGN_MESSAGE, pss, hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, SIGN_MESSAGE, ec.ECDSA(hashes.SHA256()))
        else:
            raise AssertionError(f"unexpected public key type {type(public).__name__}")
    elif op.rpc == "Encrypt":
        ciphertext = pb.EncryptResponse.FromString(response_bytes).ciphertext
        if client.decrypt(name, ciphertext).plaintext != PLAINTEXT_1K:
            raise AssertionError("Encrypt's ciphertext does not decrypt to the plaintext")
    elif op.rpc == "GenerateRandom":
        if len(pb.GenerateRandomResponse.FromString(response_bytes).data) != RANDOM_BYTES:
            raise AssertionError("GenerateRandom returned the wrong number of bytes")
    else:
        data_key = pb.GenerateDataKeyResponse.FromString(response_bytes)
        if len(data_key.plaintext) != DATA_KEY_BYTES:
            raise AssertionError("GenerateDataKey returned a data key of the wrong size")
        if client.decrypt(name, data_key.ciphertext).plaintext != data_key.plaintext:
            raise AssertionError("GenerateDataKey's ciphertext does not hold its plaintext")
