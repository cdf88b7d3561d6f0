"""vault.v1.BackupService: requests in, BackupManagement calls, messages out.

No error handling (ErrorInterceptor maps domain errors, for the stream of ExportBackup too) and
no validation beyond the wire format's; nothing here logs (chunks carry wrapped blobs)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from vault.domain.backup import ExportRecord, Selection
from vault.gen.vault.v1 import backup_service_pb2 as pb
from vault.gen.vault.v1 import backup_service_pb2_grpc
from vault.service.backup import BackupManagement, VerifiedBundle
from vault.transport import convert


def _summary(verified: VerifiedBundle) -> pb.BackupSummary:
    bundle = verified.bundle
    counts = bundle.counts
    token = bundle.header.get("token") or {}
    return pb.BackupSummary(
        export_id=bundle.export_id,
        create_time=convert.timestamp(bundle.create_time),
        signer_fingerprint=verified.signer_fingerprint,
        token_label=str(token.get("label", "")),
        token_serial=str(token.get("serial", "")),
        keys=counts["key"],
        buckets=counts["bucket"],
        tombstones=counts["tombstone"],
        skipped=counts["skipped"],
    )


def _record(record: ExportRecord) -> pb.BackupRecord:
    selection = record.selection
    return pb.BackupRecord(
        export_id=record.export_id,
        create_time=convert.timestamp(record.create_time),
        selection=pb.BackupSelection(
            accounts=list(selection.get("accounts", [])),
            keys=list(selection.get("keys", [])),
            buckets=list(selection.get("buckets", [])),
        ),
        entry_count=record.entry_count,
        signer_fingerprint=record.signer_fingerprint,
    )


class BackupServicer(backup_service_pb2_grpc.BackupServiceServicer):
    def __init__(self, backups: BackupManagement) -> None:
        self._backups = backups

    def ExportBackup(
        self, request: pb.ExportBackupRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportBackupResponse]:
        selection = Selection(
            accounts=tuple(request.selection.accounts),
            keys=tuple(request.selection.keys),
            buckets=tuple(request.selection.buckets),
        )
        for chunk in self._backups.export(selection):
            yield pb.ExportBackupResponse(
                chunk=chunk.data,
                export_id=chunk.export_id,
                entries_done=chunk.entries_done,
                entries_estimate=chunk.entries_estimate,
            )

    def VerifyBackup(
        self, request: pb.VerifyBackupRequest, context: grpc.ServicerContext
    ) -> pb.BackupSummary:
        return _summary(
            self._backups.verify(request.file_name, request.expected_signer_fingerprint)
        )

    def RestoreBackup(
        self, request: pb.RestoreBackupRequest, context: grpc.ServicerContext
    ) -> pb.RestoreBackupResponse:
        report = self._backups.restore(request.file_name, request.expected_signer_fingerprint)
        return pb.RestoreBackupResponse(
            bundle=_summary(report.bundle),
            restored=report.restored,
            skipped=[
                pb.SkippedItem(name=item.name, reason=str(item.reason), detail=item.detail)
                for item in report.skipped
            ],
            tombstones_recorded=report.tombstones_recorded,
        )

    def ListBackups(
        self, request: pb.ListBackupsRequest, context: grpc.ServicerContext
    ) -> pb.ListBackupsResponse:
        return pb.ListBackupsResponse(
            backups=[
                _record(record) for record in self._backups.exports_holding(request.key_version)
            ]
        )
