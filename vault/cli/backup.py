"""`vaultctl backup ...`: export, check and restore signed backup bundles (BackupService)."""

from __future__ import annotations

import filecmp
import os
import shutil
from datetime import UTC
from pathlib import Path
from typing import Any

import click

from vault.cli._audit_files import progress
from vault.cli._context import (
    EXIT_LOCAL,
    EXIT_MISMATCH,
    CliError,
    CliState,
    json_option,
    pass_state,
)
from vault.cli._output import emit, format_time, note, print_fields, print_table
from vault.domain.backup import from_micros, read_lines
from vault.domain.errors import BackupInvalid
from vault.gen.vault.v1 import backup_service_pb2

GROUP_HELP = """Export, check and restore backup bundles (admin role).

A bundle holds the selected keys' and buckets' metadata and their blobs, wrapped under the
token's root generations, and is signed by the token's backup key. Only a token that received
those roots (the clone ceremony) can restore it. Token-resident keys never leave the token;
revoked and destroyed keys leave as tombstones, and a restore never brings them back.

\b
Examples:
  vaultctl backup export --output vault-2026-12-03.bundle
  vaultctl backup export --account acme --key accounts/shop/keys/web- --output part.bundle
  vaultctl backup verify vault-2026-12-03.bundle --expect-signer 3f1c...
  vaultctl backup restore vault-2026-12-03.bundle --expect-signer 3f1c...
  vaultctl backup list accounts/acme/keys/orders/versions/1
"""


@click.group("backup", help=GROUP_HELP)
def backup_group() -> None:
    pass


def _counts(summary: Any) -> dict[str, int]:
    return {
        "keys": int(summary.keys),
        "buckets": int(summary.buckets),
        "tombstones": int(summary.tombstones),
        "skipped": int(summary.skipped),
    }


@backup_group.command("export")
@click.option("--account", "accounts", multiple=True, help="An account id (repeatable).")
@click.option("--key", "keys", multiple=True, help="A key name or name prefix (repeatable).")
@click.option("--bucket", "buckets", multiple=True, help="A bucket name or prefix (repeatable).")
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the bundle (a new file, mode 0600).",
)
@json_option
@pass_state
def export_command(
    state: CliState,
    accounts: tuple[str, ...],
    keys: tuple[str, ...],
    buckets: tuple[str, ...],
    output: Path,
) -> None:
    """Export the selected keys and buckets (default: everything) to a signed bundle.

    The bundle streams from the server with a progress bar; it is written to a temporary
    file beside OUTPUT and renamed once complete, so OUTPUT is never a partial bundle. The
    signer fingerprint printed at the end is what `backup verify` and `backup restore` check
    with --expect-signer."""
    from vault.service.backup import verify_bundle

    if output.exists() or output.is_symlink():
        raise CliError(f"{output} exists: a bundle is never overwritten", exit_code=EXIT_LOCAL)
    client = state.client()
    temporary = output.parent / f".{output.name}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file, progress(not state.json) as bar:
            task = bar.add_task("exporting", total=None)
            for chunk in client.export_backup(accounts=accounts, keys=keys, buckets=buckets):
                file.write(chunk.chunk)
                bar.update(task, completed=chunk.entries_done, total=chunk.entries_estimate)
            file.flush()
            os.fsync(file.fileno())
        with temporary.open("rb") as handle:
            verified = verify_bundle(read_lines(handle))
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    record = _summary_record(verified.bundle.header, verified.bundle.counts)
    record["file"] = str(output)
    record["signer_fingerprint"] = verified.signer_fingerprint

    def human() -> None:
        print_fields(record.items(), title="backup exported")

    emit(state, record, human)


def _summary_record(header: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    token = header.get("token") or {}
    return {
        "export_id": header.get("export_id"),
        "create_time": format_time(from_micros(int(header["create_time_us"]))),
        "token": f"{token.get('label', '')} (serial {token.get('serial', '')})",
        "keys": counts["key"],
        "buckets": counts["bucket"],
        "tombstones": counts["tombstone"],
        "skipped": counts["skipped"],
    }


@backup_group.command("verify")
@click.argument("file")
@click.option(
    "--expect-signer", default="", help="The signing key's SHA-256 fingerprint the bundle needs."
)
@click.option(
    "--remote",
    is_flag=True,
    help="Ask the server to check FILE, a file name in its backup directory (<data_dir>/backups).",
)
@json_option
@pass_state
def verify_command(state: CliState, file: str, expect_signer: str, remote: bool) -> None:
    """Check a bundle's completeness (counts, digests) and signature without restoring it.

    Offline by default: no server, token or store is needed, only the file. Exit code 1 when
    the bundle is incomplete, altered, or signed by another key than --expect-signer."""
    if remote:
        summary = state.client().verify_backup(file, expected_signer_fingerprint=expect_signer)
        record: dict[str, Any] = {
            "export_id": summary.export_id,
            "create_time": format_time(summary.create_time.ToDatetime(tzinfo=UTC)),
            "token": f"{summary.token_label} (serial {summary.token_serial})",
            **_counts(summary),
            "signer_fingerprint": summary.signer_fingerprint,
        }
    else:
        from vault.service.backup import verify_bundle

        try:
            with Path(file).open("rb") as handle:
                verified = verify_bundle(read_lines(handle), expect_signer)
        except OSError as error:
            raise CliError(f"cannot read {file}: {error.strerror}", exit_code=EXIT_LOCAL) from None
        except BackupInvalid as error:
            raise CliError(f"{file}: {error.message}", exit_code=EXIT_MISMATCH) from None
        record = _summary_record(verified.bundle.header, verified.bundle.counts)
        record["signer_fingerprint"] = verified.signer_fingerprint
    record["valid"] = True

    def human() -> None:
        print_fields(record.items(), title="bundle verified")

    emit(state, record, human)


@backup_group.command("restore")
@click.argument("file")
@click.option(
    "--expect-signer", default="", help="The signing key's SHA-256 fingerprint the bundle needs."
)
@json_option
@pass_state
def restore_command(state: CliState, file: str, expect_signer: str) -> None:
    """Restore a bundle into the vault: every key and bucket it does not hold yet, unless
    revoked or destroyed here since, and only if this token holds their root generations.

    The server reads bundles from its backup directory (<data_dir>/backups). FILE is a local
    file, copied there first unless the same file is there already (run this next to the
    vault), or the name of a file already there.

    Shows a progress bar (on a terminal) while the server checks the bundle (in bytes),
    then while it restores (in entries); Ctrl-C stops the restore before its next batch of
    keys, keeping what it restored: run the command again to restore the rest. Then prints
    the counts of restored and skipped items, the items themselves (only the first ones when
    there are more than one answer carries) and the path of the report file the server wrote
    beside the bundle, which lists every item."""
    name = file
    local = Path(file)
    if local.is_file():
        directory = state.settings().backup_directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = local.name
        target = directory / name
        if local.resolve() != target.resolve():
            if not target.exists():
                shutil.copyfile(local, target)
                target.chmod(0o600)
            elif not filecmp.cmp(local, target, shallow=False):
                raise CliError(
                    f"{target} exists with other content: rename {file}", exit_code=EXIT_LOCAL
                )
    client = state.client()
    with progress(not state.json) as bar:
        task = bar.add_task("checking", total=None)

        def show(step: backup_service_pb2.RestoreBackupProgress) -> None:
            if step.entries_total:
                bar.update(
                    task,
                    description="restoring",
                    completed=step.entries_done,
                    total=step.entries_total,
                )
            else:
                # The bundle's check comes first; its size is what there is to go through.
                bar.update(
                    task,
                    description="checking (bytes)",
                    completed=step.bytes_checked,
                    total=step.bytes_total or None,
                )

        report = client.restore_backup(
            name, expected_signer_fingerprint=expect_signer, progress=show
        )
    report_file = ""
    if report.report_file_name:
        report_file = str(state.settings().backup_directory / report.report_file_name)
    record: dict[str, Any] = {
        "export_id": report.bundle.export_id,
        "signer_fingerprint": report.bundle.signer_fingerprint,
        "restored_count": int(report.restored_count),
        "skipped_count": int(report.skipped_count),
        "skipped_by_reason": dict(sorted(report.skipped_by_reason.items())),
        "tombstones_recorded": int(report.tombstones_recorded),
        # The first items only when lists_truncated: the report file holds them all.
        "lists_truncated": report.lists_truncated,
        "restored": list(report.restored),
        "skipped": [
            {"name": item.name, "reason": item.reason, "detail": item.detail}
            for item in report.skipped
        ],
        "report_file": report_file,
    }

    def human() -> None:
        reasons = ", ".join(
            f"{count} {reason}" for reason, count in record["skipped_by_reason"].items()
        )
        note(
            f"restored {record['restored_count']} keys and buckets from {record['export_id']}; "
            f"skipped {record['skipped_count']}{f' ({reasons})' if reasons else ''}; "
            f"{record['tombstones_recorded']} tombstones recorded"
        )
        shown = "the first " if record["lists_truncated"] else ""
        if record["restored"]:
            print_table(
                ["RESTORED"],
                [[name] for name in record["restored"]],
                title=f"{shown}{len(record['restored'])} restored",
            )
        if record["skipped"]:
            print_table(
                ["SKIPPED", "REASON", "DETAIL"],
                [[item["name"], item["reason"], item["detail"]] for item in record["skipped"]],
                title=f"{shown}{len(record['skipped'])} skipped",
            )
        if record["report_file"]:
            note(f"every item: {record['report_file']}")
        else:
            note("the server could not write the report file (see its log)")

    emit(state, record, human)


@backup_group.command("list")
@click.argument("version")
@json_option
@pass_state
def list_command(state: CliState, version: str) -> None:
    """The exports (from the vault's export log) whose bundles hold key VERSION's blob,
    oldest first (every page)."""
    records = [
        {
            "export_id": record.export_id,
            "create_time": format_time(record.create_time.ToDatetime(tzinfo=UTC)),
            "entry_count": int(record.entry_count),
            "selection": {
                "accounts": list(record.selection.accounts),
                "keys": list(record.selection.keys),
                "buckets": list(record.selection.buckets),
            },
        }
        for record in state.client().list_backups(version)
    ]

    def human() -> None:
        print_table(
            ["EXPORT", "TIME", "ENTRIES"],
            [[r["export_id"], r["create_time"], r["entry_count"]] for r in records],
            title=f"backups holding {version}",
        )

    emit(state, records, human)
