"""vault.v1.BucketService: requests in, BucketManagement calls, messages out.

Methods do no error handling (ErrorInterceptor maps domain errors) and no validation beyond
what only the wire format knows (enum numbers, durations, field masks); names are parsed and
checked by the service. Nothing here logs: GenerateBucketKey and DecryptBucketKey answer with
bucket keys in plaintext.
"""

from __future__ import annotations

import grpc

from vault.gen.vault.v1 import bucket_service_pb2 as pb
from vault.gen.vault.v1 import bucket_service_pb2_grpc, resources_pb2
from vault.service.buckets import BucketKey, BucketManagement
from vault.transport import convert
from vault.transport.batches import BatchLimits, run_batch
from vault.transport.integrity import checksum, verify_checksum
from vault.transport.page_budget import fit_response


def _generated(key: BucketKey) -> pb.GenerateBucketKeyResponse:
    return pb.GenerateBucketKeyResponse(
        plaintext=key.plaintext,
        plaintext_crc32c=checksum(key.plaintext),
        wrapped_key=key.wrapped,
        wrapped_key_crc32c=checksum(key.wrapped),
        master_key_version=key.master_key_version,
        key_lifetime=convert.duration(key.policy.key_lifetime),
        max_objects_per_key=key.policy.max_objects or 0,
        max_bytes_per_key=key.policy.max_bytes or 0,
    )


def _bucket_key_item(request: pb.DecryptBucketKeyRequest) -> tuple[tuple[str, bytes], bool]:
    return (request.name, request.wrapped_key), verify_checksum(request, "wrapped_key")


def _opened(key: BucketKey, verified: bool, out: pb.DecryptBucketKeyResponse) -> None:
    out.plaintext = key.plaintext
    out.plaintext_crc32c.CopyFrom(checksum(key.plaintext))
    out.master_key_version = key.master_key_version
    out.verified_wrapped_key_crc32c = verified


class BucketServicer(bucket_service_pb2_grpc.BucketServiceServicer):
    def __init__(self, buckets: BucketManagement, limits: BatchLimits | None = None) -> None:
        self._buckets = buckets
        self._limits = limits or BatchLimits()

    def BatchDecryptBucketKey(
        self, request: pb.BatchDecryptBucketKeyRequest, context: grpc.ServicerContext
    ) -> pb.BatchDecryptBucketKeyResponse:
        """DecryptBucketKey per item (vault.transport.batches)."""
        return run_batch(  # type: ignore[no-any-return]
            "/vault.v1.BucketService/BatchDecryptBucketKey",
            self._limits,
            pb.BatchDecryptBucketKeyResponse(),
            request.requests,
            _bucket_key_item,
            self._buckets.decrypt_bucket_key_batch,
            _opened,
        )

    def CreateBucket(
        self, request: pb.CreateBucketRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Bucket:
        policy = None
        if request.bucket.HasField("policy"):
            policy = convert.bucket_policy(request.bucket.policy, "bucket.policy")
        view = self._buckets.create_bucket(
            convert.account_of(request.parent),
            request.bucket_id,
            labels=dict(request.bucket.labels),
            policy=policy,
            request_id=request.request_id,
        )
        return convert.bucket_to_proto(view)

    def GetBucket(
        self, request: pb.GetBucketRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Bucket:
        return convert.bucket_to_proto(self._buckets.get_bucket(request.name))

    def ListBuckets(
        self, request: pb.ListBucketsRequest, context: grpc.ServicerContext
    ) -> pb.ListBucketsResponse:
        page = self._buckets.list_buckets(
            convert.account_of(request.parent),
            convert.bucket_filter(request),
            request.page_size,
            request.page_token,
        )
        response = pb.ListBucketsResponse(
            buckets=[convert.bucket_to_proto(view) for view in page.items],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "buckets", page, self._limits.max_message_bytes)
        return response

    def UpdateBucket(
        self, request: pb.UpdateBucketRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Bucket:
        labels, policy = convert.bucket_updates(request)
        view = self._buckets.update_bucket(request.bucket.name, labels=labels, policy=policy)
        return convert.bucket_to_proto(view)

    def DeleteBucket(
        self, request: pb.DeleteBucketRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Bucket:
        view = self._buckets.delete_bucket(request.name, convert.bucket_waiting_period(request))
        return convert.bucket_to_proto(view)

    def CancelBucketDeletion(
        self, request: pb.CancelBucketDeletionRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Bucket:
        return convert.bucket_to_proto(self._buckets.cancel_deletion(request.name))

    def RotateBucketMasterKey(
        self, request: pb.RotateBucketMasterKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Bucket:
        return convert.bucket_to_proto(self._buckets.rotate_master_key(request.name))

    def DisableBucketMasterKeyVersion(
        self, request: pb.DisableBucketMasterKeyVersionRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Bucket:
        return convert.bucket_to_proto(self._buckets.disable_version(request.name))

    def EnableBucketMasterKeyVersion(
        self, request: pb.EnableBucketMasterKeyVersionRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Bucket:
        return convert.bucket_to_proto(self._buckets.enable_version(request.name))

    def ListBucketMasterKeyVersions(
        self, request: pb.ListBucketMasterKeyVersionsRequest, context: grpc.ServicerContext
    ) -> pb.ListBucketMasterKeyVersionsResponse:
        bucket, page = self._buckets.list_master_key_versions(
            request.parent, request.page_size, request.page_token
        )
        response = pb.ListBucketMasterKeyVersionsResponse(
            master_key_versions=[
                convert.master_key_version_to_proto(bucket, version) for version in page.items
            ],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "master_key_versions", page, self._limits.max_message_bytes)
        return response

    def GenerateBucketKey(
        self, request: pb.GenerateBucketKeyRequest, context: grpc.ServicerContext
    ) -> pb.GenerateBucketKeyResponse:
        return _generated(self._buckets.generate_bucket_key(request.name))

    def DecryptBucketKey(
        self, request: pb.DecryptBucketKeyRequest, context: grpc.ServicerContext
    ) -> pb.DecryptBucketKeyResponse:
        (name, wrapped), verified = _bucket_key_item(request)
        response = pb.DecryptBucketKeyResponse()
        _opened(self._buckets.decrypt_bucket_key(name, wrapped), verified, response)
        return response
