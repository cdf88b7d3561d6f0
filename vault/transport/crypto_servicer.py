"""vault.v1.CryptoService: requests in, CryptoOperations calls, messages out.

Each method checks the request's CRC32C fields before the key is touched, then reports which
it checked and the CRC32C of what it returns. Nothing here logs, and no request or response
bytes ever reach an error message.
"""

from __future__ import annotations

from typing import Final

import grpc

from vault.gen.vault.v1 import crypto_service_pb2 as pb
from vault.gen.vault.v1 import crypto_service_pb2_grpc
from vault.service.crypto import (
    CryptoOperations,
    DataKey,
    DataKeyItem,
    DecryptItem,
    EncryptItem,
    Sealed,
    SignItem,
    VerifyItem,
)
from vault.transport.batches import BatchLimits, run_batch
from vault.transport.integrity import checksum, matches, set_checksum, verify_checksum

_SERVICE: Final = "/vault.v1.CryptoService/"
_AAD: Final = "additional_authenticated_data"


def _signed_input(
    request: pb.SignRequest | pb.VerifyRequest,
) -> tuple[bytes | None, bytes | None]:
    """(message, digest) from the request's `input` oneof: the one given, None for the other
    (an unset bytes field reads as b"", itself a valid message)."""
    given = request.WhichOneof("input")
    return (
        request.message if given == "message" else None,
        request.digest if given == "digest" else None,
    )


# What each method checks of its request before the service sees it (the CRC32C fields), and
# how a result becomes its response: shared by the unary and the batch methods.


# Each byte field is read from the request once: every read of a protobuf bytes field makes
# a new copy of it. Response fields are assigned in place rather than built and copied in.


def _encrypt_item(request: pb.EncryptRequest) -> tuple[EncryptItem, tuple[bool, bool]]:
    plaintext = request.plaintext
    aad = request.additional_authenticated_data
    verified = (
        request.HasField("plaintext_crc32c")
        and matches("plaintext", plaintext, request.plaintext_crc32c),
        request.HasField("additional_authenticated_data_crc32c")
        and matches(_AAD, aad, request.additional_authenticated_data_crc32c),
    )
    return EncryptItem(request.name, plaintext, aad), verified


def _encrypted(sealed: Sealed, verified: tuple[bool, bool], out: pb.EncryptResponse) -> None:
    data = sealed.data
    out.key_version = sealed.key_version_name
    out.ciphertext = data
    set_checksum(out.ciphertext_crc32c, data)
    out.verified_plaintext_crc32c, out.verified_additional_authenticated_data_crc32c = verified


def _decrypt_item(request: pb.DecryptRequest) -> tuple[DecryptItem, tuple[bool, bool]]:
    ciphertext = request.ciphertext
    aad = request.additional_authenticated_data
    verified = (
        request.HasField("ciphertext_crc32c")
        and matches("ciphertext", ciphertext, request.ciphertext_crc32c),
        request.HasField("additional_authenticated_data_crc32c")
        and matches(_AAD, aad, request.additional_authenticated_data_crc32c),
    )
    return DecryptItem(request.name, ciphertext, aad), verified


def _decrypted(opened: Sealed, verified: tuple[bool, bool], out: pb.DecryptResponse) -> None:
    data = opened.data
    out.plaintext = data
    set_checksum(out.plaintext_crc32c, data)
    out.key_version = opened.key_version_name
    out.verified_ciphertext_crc32c, out.verified_additional_authenticated_data_crc32c = verified


def _data_key_item(request: pb.GenerateDataKeyRequest) -> tuple[DataKeyItem, bool]:
    verified = verify_checksum(request, "additional_authenticated_data")
    item = DataKeyItem(
        request.name,
        request.key_size_bytes,
        request.additional_authenticated_data,
        request.include_plaintext,
    )
    return item, verified


def _data_key(data_key: DataKey, verified: bool, out: pb.GenerateDataKeyResponse) -> None:
    out.ciphertext = data_key.ciphertext
    set_checksum(out.ciphertext_crc32c, data_key.ciphertext)
    out.key_version = data_key.key_version_name
    out.verified_additional_authenticated_data_crc32c = verified
    if data_key.plaintext is not None:
        out.plaintext = data_key.plaintext
        set_checksum(out.plaintext_crc32c, data_key.plaintext)


def _sign_item(request: pb.SignRequest) -> tuple[SignItem, tuple[bool, bool]]:
    verified = (verify_checksum(request, "message"), verify_checksum(request, "digest"))
    message, digest = _signed_input(request)
    return SignItem(request.name, message, digest), verified


def _signed(signed: Sealed, verified: tuple[bool, bool], out: pb.SignResponse) -> None:
    out.signature = signed.data
    set_checksum(out.signature_crc32c, signed.data)
    out.key_version = signed.key_version_name
    out.verified_message_crc32c, out.verified_digest_crc32c = verified


def _verify_item(request: pb.VerifyRequest) -> tuple[VerifyItem, tuple[bool, bool, bool]]:
    verified = (
        verify_checksum(request, "message"),
        verify_checksum(request, "digest"),
        verify_checksum(request, "signature"),
    )
    message, digest = _signed_input(request)
    return VerifyItem(request.name, message, digest, request.signature), verified


def _verified(
    outcome: tuple[bool, str], verified: tuple[bool, bool, bool], out: pb.VerifyResponse
) -> None:
    out.valid, out.key_version = outcome
    (
        out.verified_message_crc32c,
        out.verified_digest_crc32c,
        out.verified_signature_crc32c,
    ) = verified


class CryptoServicer(crypto_service_pb2_grpc.CryptoServiceServicer):
    def __init__(self, crypto: CryptoOperations, limits: BatchLimits | None = None) -> None:
        self._crypto = crypto
        self._limits = limits or BatchLimits()

    # -- batches (vault.transport.batches) ------------------------------------------------

    def BatchEncrypt(
        self, request: pb.BatchEncryptRequest, context: grpc.ServicerContext
    ) -> pb.BatchEncryptResponse:
        return run_batch(  # type: ignore[no-any-return]
            _SERVICE + "BatchEncrypt",
            self._limits,
            pb.BatchEncryptResponse(),
            request.requests,
            _encrypt_item,
            self._crypto.encrypt_batch,
            _encrypted,
        )

    def BatchDecrypt(
        self, request: pb.BatchDecryptRequest, context: grpc.ServicerContext
    ) -> pb.BatchDecryptResponse:
        return run_batch(  # type: ignore[no-any-return]
            _SERVICE + "BatchDecrypt",
            self._limits,
            pb.BatchDecryptResponse(),
            request.requests,
            _decrypt_item,
            self._crypto.decrypt_batch,
            _decrypted,
        )

    def BatchGenerateDataKey(
        self, request: pb.BatchGenerateDataKeyRequest, context: grpc.ServicerContext
    ) -> pb.BatchGenerateDataKeyResponse:
        return run_batch(  # type: ignore[no-any-return]
            _SERVICE + "BatchGenerateDataKey",
            self._limits,
            pb.BatchGenerateDataKeyResponse(),
            request.requests,
            _data_key_item,
            self._crypto.generate_data_key_batch,
            _data_key,
        )

    def BatchSign(
        self, request: pb.BatchSignRequest, context: grpc.ServicerContext
    ) -> pb.BatchSignResponse:
        return run_batch(  # type: ignore[no-any-return]
            _SERVICE + "BatchSign",
            self._limits,
            pb.BatchSignResponse(),
            request.requests,
            _sign_item,
            self._crypto.sign_batch,
            _signed,
        )

    def BatchVerify(
        self, request: pb.BatchVerifyRequest, context: grpc.ServicerContext
    ) -> pb.BatchVerifyResponse:
        return run_batch(  # type: ignore[no-any-return]
            _SERVICE + "BatchVerify",
            self._limits,
            pb.BatchVerifyResponse(),
            request.requests,
            _verify_item,
            self._crypto.verify_batch,
            _verified,
        )

    # -- unary ----------------------------------------------------------------------------

    def Encrypt(
        self, request: pb.EncryptRequest, context: grpc.ServicerContext
    ) -> pb.EncryptResponse:
        item, verified = _encrypt_item(request)
        response = pb.EncryptResponse()
        _encrypted(self._crypto.encrypt(item.name, item.plaintext, item.aad), verified, response)
        return response

    def Decrypt(
        self, request: pb.DecryptRequest, context: grpc.ServicerContext
    ) -> pb.DecryptResponse:
        item, verified = _decrypt_item(request)
        response = pb.DecryptResponse()
        _decrypted(self._crypto.decrypt(item.name, item.ciphertext, item.aad), verified, response)
        return response

    def GenerateDataKey(
        self, request: pb.GenerateDataKeyRequest, context: grpc.ServicerContext
    ) -> pb.GenerateDataKeyResponse:
        item, verified = _data_key_item(request)
        data_key = self._crypto.generate_data_key(
            item.name, item.size, item.aad, item.include_plaintext
        )
        response = pb.GenerateDataKeyResponse()
        _data_key(data_key, verified, response)
        return response

    def ReEncrypt(
        self, request: pb.ReEncryptRequest, context: grpc.ServicerContext
    ) -> pb.ReEncryptResponse:
        verified_ciphertext = verify_checksum(request, "ciphertext")
        verified_source_aad = verify_checksum(request, "source_additional_authenticated_data")
        verified_destination_aad = verify_checksum(
            request, "destination_additional_authenticated_data"
        )
        result = self._crypto.re_encrypt(
            request.name,
            request.ciphertext,
            request.source_additional_authenticated_data,
            request.destination_key_name,
            request.destination_additional_authenticated_data,
        )
        return pb.ReEncryptResponse(
            ciphertext=result.ciphertext,
            ciphertext_crc32c=checksum(result.ciphertext),
            key_version=result.key_version_name,
            source_key_version=result.source_key_version_name,
            verified_ciphertext_crc32c=verified_ciphertext,
            verified_source_additional_authenticated_data_crc32c=verified_source_aad,
            verified_destination_additional_authenticated_data_crc32c=verified_destination_aad,
        )

    def WrapKey(
        self, request: pb.WrapKeyRequest, context: grpc.ServicerContext
    ) -> pb.WrapKeyResponse:
        verified_material = verify_checksum(request, "key_material")
        wrapped = self._crypto.wrap_key(request.name, request.key_material)
        return pb.WrapKeyResponse(
            wrapped_key=wrapped.data,
            wrapped_key_crc32c=checksum(wrapped.data),
            key_version=wrapped.key_version_name,
            verified_key_material_crc32c=verified_material,
        )

    def UnwrapKey(
        self, request: pb.UnwrapKeyRequest, context: grpc.ServicerContext
    ) -> pb.UnwrapKeyResponse:
        verified_wrapped = verify_checksum(request, "wrapped_key")
        material = self._crypto.unwrap_key(request.name, request.wrapped_key)
        return pb.UnwrapKeyResponse(
            key_material=material.data,
            key_material_crc32c=checksum(material.data),
            key_version=material.key_version_name,
            verified_wrapped_key_crc32c=verified_wrapped,
        )

    def Sign(self, request: pb.SignRequest, context: grpc.ServicerContext) -> pb.SignResponse:
        item, verified = _sign_item(request)
        response = pb.SignResponse()
        signed = self._crypto.sign(item.name, message=item.message, digest=item.digest)
        _signed(signed, verified, response)
        return response

    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.VerifyResponse:
        item, verified = _verify_item(request)
        outcome = self._crypto.verify(
            item.name, message=item.message, digest=item.digest, signature=item.signature
        )
        response = pb.VerifyResponse()
        _verified(outcome, verified, response)
        return response

    def AsymmetricDecrypt(
        self, request: pb.AsymmetricDecryptRequest, context: grpc.ServicerContext
    ) -> pb.AsymmetricDecryptResponse:
        verified_ciphertext = verify_checksum(request, "ciphertext")
        opened = self._crypto.asymmetric_decrypt(request.name, request.ciphertext)
        return pb.AsymmetricDecryptResponse(
            plaintext=opened.data,
            plaintext_crc32c=checksum(opened.data),
            key_version=opened.key_version_name,
            verified_ciphertext_crc32c=verified_ciphertext,
        )

    def GenerateMac(
        self, request: pb.GenerateMacRequest, context: grpc.ServicerContext
    ) -> pb.GenerateMacResponse:
        verified_data = verify_checksum(request, "data")
        mac = self._crypto.generate_mac(request.name, request.data)
        return pb.GenerateMacResponse(
            mac=mac.data,
            mac_crc32c=checksum(mac.data),
            key_version=mac.key_version_name,
            verified_data_crc32c=verified_data,
        )

    def VerifyMac(
        self, request: pb.VerifyMacRequest, context: grpc.ServicerContext
    ) -> pb.VerifyMacResponse:
        verified_data = verify_checksum(request, "data")
        verified_mac = verify_checksum(request, "mac")
        valid, version_name = self._crypto.verify_mac(request.name, request.data, request.mac)
        return pb.VerifyMacResponse(
            valid=valid,
            key_version=version_name,
            verified_data_crc32c=verified_data,
            verified_mac_crc32c=verified_mac,
        )

    def GenerateRandom(
        self, request: pb.GenerateRandomRequest, context: grpc.ServicerContext
    ) -> pb.GenerateRandomResponse:
        data = self._crypto.generate_random(request.size_bytes)
        return pb.GenerateRandomResponse(data=data, data_crc32c=checksum(data))
