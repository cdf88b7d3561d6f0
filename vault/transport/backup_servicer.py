"""vault.v1.BackupService: requests in, BackupManagement calls, messages out.

No error handling (ErrorInterceptor maps domain errors, for the stream of ExportBackup too) and
no validation beyond the wire format's; nothing here logs (chunks carry wrapped blobs). Every
response stays within server.max_message_bytes: export chunks are sized to it, a restore's
lists are cut to it (its counts and report file stay whole), and ListBackups pages end early
(vault/transport/page_budget.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Final

import grpc

from vault.domain.backup import ExportRecord, Selection
from vault.domain.errors import CallerGone
from vault.gen.vault.v1 import backup_service_pb2 as pb
from vault.gen.vault.v1 import backup_service_pb2_grpc
from vault.service.backup import (
    CHUNK_BYTES,
    BackupManagement,
    RestoreProgress,
    RestoreReport,
    VerifiedBundle,
)
from vault.transport import convert
from vault.transport.page_budget import cut_repeated, fit_response

# StreamRestoreBackup's progress messages: at most one per PROGRESS_INTERVAL_SECONDS.
PROGRESS_INTERVAL_SECONDS: Final = 0.5
# Room a progress message's own fields and the framing of its result take, besides the result.
_PROGRESS_FIELDS_BYTES: Final = 64


class ProgressPacer:
    """Whether a restore's step is worth a message: the first of the check and the first of
    the restore itself (the bundle's total), the last (the result), and otherwise one per
    interval, however many entries go by in it."""

    def __init__(
        self,
        interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._restoring = False

    def due(self, step: RestoreProgress) -> bool:
        now = self._clock()
        restoring = step.entries_total > 0
        if (
            self._last is not None
            and step.report is None
            and restoring == self._restoring
            and now - self._last < self._interval
        ):
            return False
        self._last, self._restoring = now, restoring
        return True


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


def restore_response(report: RestoreReport, max_bytes: int) -> pb.RestoreBackupResponse:
    """The response to a restore, its lists cut to their first items when the whole would be
    over max_bytes (or the report holds only the first ones: the restore keeps no more than a
    message carries). When both lists are long each keeps at least half of the room left."""
    response = pb.RestoreBackupResponse(
        bundle=_summary(report.bundle),
        restored=report.restored,
        skipped=[
            pb.SkippedItem(name=item.name, reason=str(item.reason), detail=item.detail)
            for item in report.skipped
        ],
        tombstones_recorded=report.tombstones_recorded,
        restored_count=report.restored_count,
        skipped_count=report.skipped_count,
        skipped_by_reason=report.skipped_by_reason(),
        report_file_name=report.report_file,
    )
    if response.ByteSize() <= max_bytes and not report.lists_cut:
        return response
    response.lists_truncated = True
    restored_size = _lists_size(response, "restored")
    skipped_size = _lists_size(response, "skipped")
    room = max_bytes - (response.ByteSize() - restored_size - skipped_size)
    cut_repeated(response, "restored", max(room // 2, room - skipped_size))
    cut_repeated(response, "skipped", room - _lists_size(response, "restored"))
    return response


def _lists_size(response: pb.RestoreBackupResponse, field: str) -> int:
    """Bytes response's repeated field takes: the response's size less its size without it."""
    without = pb.RestoreBackupResponse()
    without.CopyFrom(response)
    without.ClearField(field)  # type: ignore[arg-type]
    return response.ByteSize() - without.ByteSize()


class BackupServicer(backup_service_pb2_grpc.BackupServiceServicer):
    def __init__(self, backups: BackupManagement, max_message_bytes: int = 1 << 20) -> None:
        self._backups = backups
        self._max_message_bytes = max_message_bytes
        # Half the largest message: a chunk's other fields and framing take far less.
        self._chunk_bytes = min(CHUNK_BYTES, max_message_bytes // 2)

    def ExportBackup(
        self, request: pb.ExportBackupRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportBackupResponse]:
        selection = Selection(
            accounts=tuple(request.selection.accounts),
            keys=tuple(request.selection.keys),
            buckets=tuple(request.selection.buckets),
        )
        for chunk in self._backups.export(selection, self._chunk_bytes):
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
        steps = self._backups.restoring(
            request.file_name, request.expected_signer_fingerprint, self._max_message_bytes
        )
        for step in steps:
            if step.report is not None:
                return restore_response(step.report, self._max_message_bytes)
            if not context.is_active():
                # As StreamRestoreBackup does: a caller that cancelled or whose deadline
                # passed gets nothing from the keys still to come, so stop before the next
                # batch; what was restored stays whole and the report file lists it.
                steps.close()
                raise CallerGone()
        raise AssertionError("a restore ends with its report")

    def StreamRestoreBackup(
        self, request: pb.RestoreBackupRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RestoreBackupProgress]:
        pacer = ProgressPacer()
        steps = self._backups.restoring(
            request.file_name, request.expected_signer_fingerprint, self._max_message_bytes
        )
        for step in steps:
            progress = pb.RestoreBackupProgress(
                entries_done=step.entries_done,
                entries_total=step.entries_total,
                restored=step.restored,
                skipped=step.skipped,
                bytes_checked=step.bytes_checked,
                bytes_total=step.bytes_total,
            )
            if step.report is not None:
                progress.result.CopyFrom(
                    restore_response(step.report, self._max_message_bytes - _PROGRESS_FIELDS_BYTES)
                )
                yield progress
            elif not context.is_active():
                # The caller went away (cancelled, or its deadline passed): stop the restore
                # before its next batch. The message is not delivered; gRPC then stops reading
                # this stream, which records the call as cancelled.
                steps.close()
                yield progress
                return
            elif pacer.due(step):
                yield progress

    def ListBackups(
        self, request: pb.ListBackupsRequest, context: grpc.ServicerContext
    ) -> pb.ListBackupsResponse:
        page = self._backups.exports_holding(
            request.key_version, request.page_size, request.page_token
        )
        response = pb.ListBackupsResponse(
            backups=[_record(record) for record in page.items],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "backups", page, self._max_message_bytes)
        return response
