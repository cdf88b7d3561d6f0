"""vault.v1.KeyService: requests in, KeyManagement calls, messages out.

Methods do no error handling (ErrorInterceptor maps domain errors) and no validation beyond
what only the wire format knows (enum numbers, field masks, page tokens); names are parsed
and checked by the service. ListKeys answers with its response's wire bytes (add_to_server).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import message_factory

from vault.domain.models import ListedKey, Page
from vault.gen.vault.v1 import key_service_pb2, key_service_pb2_grpc, resources_pb2
from vault.service.imports import KeyImports
from vault.service.keys import KeyManagement
from vault.service.revocations import RevocationFeeds
from vault.transport import convert
from vault.transport.listing import ListingResponses
from vault.transport.page_budget import fit_response


class KeyServicer(key_service_pb2_grpc.KeyServiceServicer):
    def __init__(
        self,
        keys: KeyManagement,
        feeds: RevocationFeeds,
        imports: KeyImports,
        listing: ListingResponses | None = None,
    ) -> None:
        self._keys = keys
        self._feeds = feeds
        self._imports = imports
        self._listing = listing if listing is not None else ListingResponses(0)

    def CreateKey(
        self, request: key_service_pb2.CreateKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Key:
        key = self._keys.create_key(
            convert.account_of(request.parent),
            request.key_id,
            convert.required_purpose(request.key.purpose, "key.purpose"),
            convert.ALGORITHMS.from_proto(request.key.algorithm, "key.algorithm"),
            labels=dict(request.key.labels),
            description=request.key.description,
            token_resident=request.key.token_resident,
            request_id=request.request_id,
        )
        return convert.key_to_proto(key)

    def GetKey(
        self, request: key_service_pb2.GetKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Key:
        return convert.key_to_proto(self._keys.get_key(request.name))

    def ListKeys(
        self, request: key_service_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> key_service_pb2.ListKeysResponse:
        """The response as a message; the server sends list_keys_bytes's bytes instead."""
        page = self._list_page(request)
        response = convert.key_page_to_proto(page)
        fit_response(response, "keys", page, self._listing.max_message_bytes)
        return response

    def list_keys_bytes(
        self, request: key_service_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> bytes:
        """ListKeys's response serialised, as ListKeys's message would serialise."""
        return self._listing.response_bytes(self._list_page(request))

    def _list_page(self, request: key_service_pb2.ListKeysRequest) -> Page[ListedKey]:
        return self._keys.list_keys(
            convert.account_of(request.parent),
            convert.key_filter(request),
            request.page_size,
            request.page_token,
        )

    def UpdateKey(
        self, request: key_service_pb2.UpdateKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Key:
        labels, description = convert.key_updates(request)
        key = self._keys.update_key(request.key.name, labels=labels, description=description)
        return convert.key_to_proto(key)

    def RotateKey(
        self, request: key_service_pb2.RotateKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Key:
        return convert.key_to_proto(self._keys.rotate_key(request.name))

    def ListKeyVersions(
        self, request: key_service_pb2.ListKeyVersionsRequest, context: grpc.ServicerContext
    ) -> key_service_pb2.ListKeyVersionsResponse:
        page = self._keys.list_versions_page(request.parent, request.page_size, request.page_token)
        response = key_service_pb2.ListKeyVersionsResponse(
            key_versions=[convert.version_to_proto(version) for version in page.items],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "key_versions", page, self._listing.max_message_bytes)
        return response

    def GetPublicKey(
        self, request: key_service_pb2.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.PublicKey:
        return convert.public_key_to_proto(self._keys.get_public_key(request.name))

    def EnableKey(
        self, request: key_service_pb2.EnableKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Key:
        return convert.key_to_proto(self._keys.enable_key(request.name))

    def DisableKey(
        self, request: key_service_pb2.DisableKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Key:
        return convert.key_to_proto(self._keys.disable_key(request.name))

    def RevokeKey(
        self, request: key_service_pb2.RevokeKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Key:
        code = convert.REVOCATION_REASONS.from_proto(request.reason_code, "reason_code")
        key, _ = self._keys.revoke_key(request.name, request.reason, code)
        return convert.key_to_proto(key)

    def ListRevocations(
        self, request: key_service_pb2.ListRevocationsRequest, context: grpc.ServicerContext
    ) -> key_service_pb2.ListRevocationsResponse:
        page = self._keys.list_revocations(request.parent, request.page_size, request.page_token)
        response = key_service_pb2.ListRevocationsResponse(
            revocations=[convert.revocation_to_proto(entry) for entry in page.items],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "revocations", page, self._listing.max_message_bytes)
        return response

    def GetRevocationFeed(
        self, request: key_service_pb2.GetRevocationFeedRequest, context: grpc.ServicerContext
    ) -> resources_pb2.RevocationFeed:
        return convert.feed_to_proto(self._feeds.feed(request.parent))

    def StreamRevocationFeed(
        self, request: key_service_pb2.GetRevocationFeedRequest, context: grpc.ServicerContext
    ) -> Iterator[key_service_pb2.RevocationFeedChunk]:
        for chunk in self._feeds.stream(request.parent):
            yield convert.feed_chunk_to_proto(chunk)

    def ScheduleKeyDestruction(
        self,
        request: key_service_pb2.ScheduleKeyDestructionRequest,
        context: grpc.ServicerContext,
    ) -> resources_pb2.Key:
        key = self._keys.schedule_destruction(request.name, convert.waiting_period(request))
        return convert.key_to_proto(key)

    def CancelKeyDestruction(
        self,
        request: key_service_pb2.CancelKeyDestructionRequest,
        context: grpc.ServicerContext,
    ) -> resources_pb2.Key:
        return convert.key_to_proto(self._keys.cancel_destruction(request.name))

    def CreateImportJob(
        self, request: key_service_pb2.CreateImportJobRequest, context: grpc.ServicerContext
    ) -> resources_pb2.ImportJob:
        imports = self._imports
        method = convert.IMPORT_METHODS.from_proto(request.import_method, "import_method")
        job = imports.create_import_job(request.parent, method)
        return convert.import_job_to_proto(job, imports.now())

    def GetImportJob(
        self, request: key_service_pb2.GetImportJobRequest, context: grpc.ServicerContext
    ) -> resources_pb2.ImportJob:
        imports = self._imports
        return convert.import_job_to_proto(imports.get_import_job(request.name), imports.now())

    def ListImportJobs(
        self, request: key_service_pb2.ListImportJobsRequest, context: grpc.ServicerContext
    ) -> key_service_pb2.ListImportJobsResponse:
        imports = self._imports
        page = imports.list_import_jobs(request.parent, request.page_size, request.page_token)
        now = imports.now()
        response = key_service_pb2.ListImportJobsResponse(
            import_jobs=[convert.import_job_to_proto(job, now) for job in page.items],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "import_jobs", page, self._listing.max_message_bytes)
        return response

    def ImportKeyVersion(
        self, request: key_service_pb2.ImportKeyVersionRequest, context: grpc.ServicerContext
    ) -> resources_pb2.KeyVersion:
        version = self._imports.import_key_version(
            request.parent,
            request.import_job,
            convert.ALGORITHMS.from_proto(request.algorithm, "algorithm"),
            request.wrapped_key,
            request.public_key_der or None,
            keep_primary=request.keep_primary,
        )
        return convert.version_to_proto(version)


_SERVICE: Any = key_service_pb2.DESCRIPTOR.services_by_name["KeyService"]


def add_to_server(servicer: KeyServicer, server: grpc.Server) -> None:
    """KeyService on server as add_KeyServiceServicer_to_server registers it (its unary and
    server-streaming methods from the service's descriptor), except ListKeys: served by
    list_keys_bytes, with no response serializer, so gRPC sends its bytes as they are. The
    generated function's serializers are fixed to the message classes."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in _SERVICE.methods:
        if method.client_streaming:
            raise RuntimeError(
                f"{method.full_name} streams requests: register it as the generated code does"
            )
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        make_handler = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make_handler(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    handlers["ListKeys"] = grpc.unary_unary_rpc_method_handler(
        servicer.list_keys_bytes,
        request_deserializer=key_service_pb2.ListKeysRequest.FromString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(_SERVICE.full_name, handlers)
