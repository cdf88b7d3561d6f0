"""vault.v1.CryptoService: requests in, CryptoOperations calls, messages out.

Each method checks the request's CRC32C fields before the key is touched, then reports which
it checked and the CRC32C of what it returns. Nothing here logs, and no request or response
bytes ever reach an error message.
"""

from __future__ import annotations

import grpc

from vault.gen.vault.v1 import crypto_service_pb2 as pb
from vault.gen.vault.v1 import crypto_service_pb2_grpc
from vault.service.crypto import CryptoOperations
from vault.transport.integrity import checksum, verify_checksum


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


class CryptoServicer(crypto_service_pb2_grpc.CryptoServiceServicer):
    def __init__(self, crypto: CryptoOperations) -> None:
        self._crypto = crypto

    def Encrypt(
        self, request: pb.EncryptRequest, context: grpc.ServicerContext
    ) -> pb.EncryptResponse:
        verified_plaintext = verify_checksum(request, "plaintext")
        verified_aad = verify_checksum(request, "additional_authenticated_data")
        sealed = self._crypto.encrypt(
            request.name, request.plaintext, request.additional_authenticated_data
        )
        return pb.EncryptResponse(
            key_version=sealed.key_version_name,
            ciphertext=sealed.data,
            ciphertext_crc32c=checksum(sealed.data),
            verified_plaintext_crc32c=verified_plaintext,
            verified_additional_authenticated_data_crc32c=verified_aad,
        )

    def Decrypt(
        self, request: pb.DecryptRequest, context: grpc.ServicerContext
    ) -> pb.DecryptResponse:
        verified_ciphertext = verify_checksum(request, "ciphertext")
        verified_aad = verify_checksum(request, "additional_authenticated_data")
        opened = self._crypto.decrypt(
            request.name, request.ciphertext, request.additional_authenticated_data
        )
        return pb.DecryptResponse(
            plaintext=opened.data,
            plaintext_crc32c=checksum(opened.data),
            key_version=opened.key_version_name,
            verified_ciphertext_crc32c=verified_ciphertext,
            verified_additional_authenticated_data_crc32c=verified_aad,
        )

    def GenerateDataKey(
        self, request: pb.GenerateDataKeyRequest, context: grpc.ServicerContext
    ) -> pb.GenerateDataKeyResponse:
        verified_aad = verify_checksum(request, "additional_authenticated_data")
        data_key = self._crypto.generate_data_key(
            request.name,
            request.key_size_bytes,
            request.additional_authenticated_data,
            request.include_plaintext,
        )
        response = pb.GenerateDataKeyResponse(
            ciphertext=data_key.ciphertext,
            ciphertext_crc32c=checksum(data_key.ciphertext),
            key_version=data_key.key_version_name,
            verified_additional_authenticated_data_crc32c=verified_aad,
        )
        if data_key.plaintext is not None:
            response.plaintext = data_key.plaintext
            response.plaintext_crc32c.CopyFrom(checksum(data_key.plaintext))
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
        verified_message = verify_checksum(request, "message")
        verified_digest = verify_checksum(request, "digest")
        message, digest = _signed_input(request)
        signed = self._crypto.sign(request.name, message=message, digest=digest)
        return pb.SignResponse(
            signature=signed.data,
            signature_crc32c=checksum(signed.data),
            key_version=signed.key_version_name,
            verified_message_crc32c=verified_message,
            verified_digest_crc32c=verified_digest,
        )

    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.VerifyResponse:
        verified_message = verify_checksum(request, "message")
        verified_digest = verify_checksum(request, "digest")
        verified_signature = verify_checksum(request, "signature")
        message, digest = _signed_input(request)
        valid, version_name = self._crypto.verify(
            request.name, message=message, digest=digest, signature=request.signature
        )
        return pb.VerifyResponse(
            valid=valid,
            key_version=version_name,
            verified_message_crc32c=verified_message,
            verified_digest_crc32c=verified_digest,
            verified_signature_crc32c=verified_signature,
        )

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
