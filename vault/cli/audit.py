"""`vaultctl audit ...`: read and verify the vault's tamper-evident audit log.

`list` and `verify` call AuditService, which only the admin role may use. `archive` and
`verify --archive` work on the store and token of this machine, beside a running server.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from vault.cli._context import (
    EXIT_LOCAL,
    EXIT_MISMATCH,
    CliError,
    CliState,
    json_option,
    pass_state,
)
from vault.cli._identity_common import duration, proto_time
from vault.cli._output import cell, console, emit, limit_option, note, page_size_alias, short_time

if TYPE_CHECKING:
    from vault.domain.audit_verification import AuditVerification
    from vault.gen.vault.v1 import audit_service_pb2, resources_pb2

GROUP_HELP = """Read and verify the audit log (admin role).

The vault records every request: who called (credential id, account), which method on
which resource, the outcome and its reason, and the latency; never key material, secrets
or payloads. Records form a hash chain whose head the vault signs in checkpoints with a key
in the token, so `verify` detects records that were changed, removed, added or reordered
afterwards. Needs the admin role.

`archive` (move old records to a file), `verify --archive` and `reanchor` (accept a log that
no longer extends the token's anchor) run on the vault's machine with its store and token.

\b
Examples:
  vaultctl audit list --since 1h
  vaultctl audit list --key accounts/acme/keys/docs --outcome PERMISSION_DENIED
  vaultctl audit list --credential VKABCDEFGHIJKLMNOPQR --method Sign --limit 50
  vaultctl audit verify
  vaultctl audit archive --older-than 90d --out audit-2026-q1.jsonl
  vaultctl audit verify --archive audit-2026-q1.jsonl
"""

# STARTED is not a failure: a state-changing call's record, committed before it runs, that
# its outcome record follows.
_OUTCOME_STYLES = {"OK": "", "STARTED": "dim"}
# A page is at most this large on the server; bigger --limit values take several.
_MAX_PAGE = 1000
_DURATION_RE = re.compile(r"^\d+[smhdw]?$")


@click.group("audit", help=GROUP_HELP)
def audit_group() -> None:
    pass


def parse_instant(text: str, option: str) -> datetime:
    """1h (that long ago), or an ISO 8601 time; a time without a zone is UTC."""
    value = text.strip()
    if _DURATION_RE.match(value.lower()):
        try:
            return datetime.now(UTC) - duration(value, option)
        except OverflowError:
            # Longer ago than year 1: every record is newer.
            return datetime.min.replace(tzinfo=UTC)
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected a duration ago (30m, 1h, 7d) or an ISO 8601 time "
            "(2026-01-31, 2026-01-31T12:00:00Z)",
            param_hint=option,
        ) from None
    # The log is kept in UTC: a time without a zone is taken as UTC rather than as the local
    # time of whichever machine runs the CLI.
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant


def event_record(event: resources_pb2.AuditEvent) -> dict[str, Any]:
    return {
        "sequence": event.sequence,
        "time": proto_time(event, "time"),
        "request_id": event.request_id,
        "credential_id": event.credential_id,
        "account": event.account,
        "method": event.method,
        "resource": event.resource,
        "outcome": event.outcome,
        "reason": event.reason,
        "latency_micros": event.latency_micros,
        "source": event.source,
        "previous_hash": event.previous_hash.hex(),
        "hash": event.hash.hex(),
    }


def canonical_method(text: str) -> str:
    """The method filter as the log spells it: `sign` -> Sign. A full name (with a `/`) is
    taken as given."""
    if not text or "/" in text:
        return text
    # Imported here, as everywhere in the CLI: --help must work without generated code.
    from vault.gen.vault.v1 import (
        audit_service_pb2,
        crypto_service_pb2,
        identity_service_pb2,
        key_service_pb2,
        server_service_pb2,
    )

    modules = (
        key_service_pb2,
        crypto_service_pb2,
        identity_service_pb2,
        audit_service_pb2,
        server_service_pb2,
    )
    names: set[str] = {
        method.name
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    by_lower = {name.lower(): name for name in names}
    found = by_lower.get(text.lower())
    if found is None:
        # The filter is exact: a misspelt method would list nothing, as if never called.
        raise click.BadParameter(
            f"{text!r} is no vault method; one of: {', '.join(sorted(names))}",
            param_hint="--method",
        )
    return found


def _short_method(method: str) -> str:
    """/vault.v1.CryptoService/Sign -> Sign."""
    return method.rpartition("/")[2] or method


@audit_group.command("list")
@click.option(
    "--since",
    metavar="TIME",
    default=None,
    help="Only records at or after TIME: a duration ago (30m, 1h, 7d) or an ISO 8601 time "
    "(UTC when it has no zone).",
)
@click.option("--until", metavar="TIME", default=None, help="Only records before TIME, as --since.")
@click.option(
    "--credential",
    metavar="ID",
    default="",
    help="Only records of this access key id (VK...) or API key id.",
)
@click.option(
    "--key",
    metavar="NAME",
    default="",
    help="Only records naming this resource: a key (accounts/{account}/keys/{key}, which "
    "includes its versions) or any other resource name.",
)
@click.option(
    "--method",
    metavar="M",
    default="",
    help="Only this method: its last part in any case (Sign, sign) or its full name "
    "(/vault.v1.CryptoService/Sign).",
)
@click.option(
    "--outcome",
    metavar="O",
    default="",
    help="Only this outcome: OK, a gRPC status name (PERMISSION_DENIED, UNAUTHENTICATED, "
    "...), or STARTED (the record a state-changing call gets before it runs).",
)
@limit_option("records")
@page_size_alias
@click.option(
    "--page-token",
    default="",
    help="Continue a listing where --limit stopped; give the same filters again.",
)
@json_option
@pass_state
def list_events(
    state: CliState,
    since: str | None,
    until: str | None,
    credential: str,
    key: str,
    method: str,
    outcome: str,
    limit: int | None,
    page_size: int | None,
    page_token: str,
) -> None:
    """List audit records, oldest first.

    Filters combine: a record is listed when it matches every one given. Needs the admin role.
    """
    if page_size is not None:
        note("--page-size is deprecated: use --limit")
        limit = limit or page_size
    filters: dict[str, Any] = {
        "start_time": parse_instant(since, "--since") if since is not None else None,
        "end_time": parse_instant(until, "--until") if until is not None else None,
        "credential_id": credential,
        "resource": key,
        "method": canonical_method(method),
        "outcome": outcome.upper(),
    }
    client = state.client()
    events: list[resources_pb2.AuditEvent] = []
    token = page_token
    # Each call examines a bounded stretch of the log, so a rare match in a long log takes
    # many calls, most answering no record: say on a terminal how far the search has got.
    calls = 0
    with _searching(show=not state.json) as status:
        while True:
            # With a limit, the last page asks for exactly what is left, so its token resumes
            # right after the last record printed.
            size = _MAX_PAGE if limit is None else min(_MAX_PAGE, limit - len(events))
            page = client.list_audit_events(**filters, page_size=size, page_token=token)
            events.extend(page.events)
            token = page.next_page_token
            calls += 1
            if not token or (limit is not None and len(events) >= limit):
                break
            status.update(_search_status(len(events), calls))
    records = [event_record(event) for event in events]

    def human() -> None:
        table = Table(box=box.SIMPLE_HEAD)
        for column in ("SEQ", "TIME", "CREDENTIAL", "METHOD", "RESOURCE", "OUTCOME", "REASON"):
            table.add_column(column, overflow="fold")
        table.add_column("LATENCY MS", justify="right")
        for r in records:
            table.add_row(
                cell(r["sequence"]),
                cell(short_time(r["time"])),
                cell(r["credential_id"]),
                cell(_short_method(r["method"])),
                cell(r["resource"]),
                Text(r["outcome"], style=_OUTCOME_STYLES.get(r["outcome"], "red")),
                cell(r["reason"]),
                Text(f"{r['latency_micros'] / 1000:.1f}"),
            )
        console().print(table)
        if token:
            note(f"more records: --page-token {token}")

    emit(state, {"events": records, "next_page_token": token}, human)


@contextmanager
def _searching(*, show: bool) -> Iterator[Status | _NoStatus]:
    """A spinner on stderr while audit list calls the server, only on a terminal."""
    if not (show and sys.stderr.isatty()):
        yield _NoStatus()
        return
    with Console(stderr=True).status("searching the audit log") as status:
        yield status


class _NoStatus:
    def update(self, status: str) -> None:
        pass


def _search_status(found: int, calls: int) -> str:
    return (
        f"searching the audit log: {_counted(found, 'record')} found in {_counted(calls, 'call')}"
    )


def verify_record(result: audit_service_pb2.VerifyAuditLogResponse) -> dict[str, Any]:
    from vault.gen.vault.v1 import audit_service_pb2

    return {
        "ok": result.ok,
        "records_checked": result.records_checked,
        "checkpoints_checked": result.checkpoints_checked,
        "last_sequence": result.last_sequence,
        "findings": [
            {
                "kind": audit_service_pb2.AuditFindingKind.Name(finding.kind).removeprefix(
                    "AUDIT_FINDING_KIND_"
                ),
                "sequence": finding.sequence,
                "detail": finding.detail,
            }
            for finding in result.findings
        ],
    }


def _counted(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def local_verify_record(result: AuditVerification) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "records_checked": result.records_checked,
        "checkpoints_checked": result.checkpoints_checked,
        "last_sequence": result.last_seq,
        "findings": [
            {"kind": str(finding.kind), "sequence": finding.seq, "detail": finding.detail}
            for finding in result.findings
        ],
    }


@audit_group.command("verify")
@click.option(
    "--archive",
    "archives",
    metavar="FILE",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Verify this archive file (from `audit archive`) and the store as one chain; repeat "
    "for several, in any order. Runs on the vault's machine, with its store and token (the "
    "user PIN as for `vaultctl serve`), not through the server.",
)
@json_option
@pass_state
def verify(state: CliState, archives: tuple[Path, ...]) -> None:
    """Check that the audit log was not tampered with.

    Recomputes the hash chain of every record and checks each signed checkpoint against
    the token's audit key. With --archive, the archived records too, as one chain from the
    oldest archive given to the last stored record.

    Exits 0 when the log is intact, 1 when it is not: each finding (kind, sequence, detail)
    is listed in log order, the first one highlighted, as the others may follow from it.
    Kinds: MODIFIED, DELETED, INSERTED, REORDERED, CHECKPOINT_MISMATCH, BAD_SIGNATURE,
    TRUNCATED. Records added or removed at the end of the log since the last checkpoint go
    unnoticed until the next checkpoint is signed. Needs the admin role (without --archive).
    """
    if archives:
        from vault.app import local_audit_log
        from vault.cli._audit_files import read_archives

        segments = read_archives(archives)
        with local_audit_log(state.settings()) as audit:
            record = local_verify_record(audit.verify(segments))
    else:
        record = verify_record(state.client().verify_audit_log().response)
    counts = (
        f"{_counted(record['records_checked'], 'record')}, "
        f"{_counted(record['checkpoints_checked'], 'checkpoint')}"
    )

    def human() -> None:
        if record["ok"]:
            click.echo(f"audit log intact: {counts}")
            return
        findings = record["findings"]
        out = console()
        out.print(Text(f"audit log NOT intact: {_counted(len(findings), 'finding')} in {counts}"))
        if findings:
            first = findings[0]
            out.print(
                Text(
                    f"first finding: {first['kind']} at sequence {first['sequence']}: "
                    f"{first['detail']}",
                    style="bold red",
                )
            )
            table = Table(box=box.SIMPLE_HEAD)
            table.add_column("KIND")
            table.add_column("SEQUENCE", justify="right")
            table.add_column("DETAIL", overflow="fold")
            for index, finding in enumerate(findings):
                table.add_row(
                    Text(finding["kind"]),
                    Text(str(finding["sequence"])),
                    Text(finding["detail"]),
                    style="bold red" if index == 0 else None,
                )
            out.print(table)

    emit(state, record, human)
    if not record["ok"]:
        click.get_current_context().exit(EXIT_MISMATCH)


@audit_group.command("archive")
@click.option(
    "--before",
    metavar="TIME",
    default=None,
    help="Archive records made before TIME: an ISO 8601 time (UTC when it has no zone) or a "
    "duration ago (90d).",
)
@click.option(
    "--older-than",
    metavar="DURATION",
    default=None,
    help="Archive records older than DURATION (90d, 12w); the same as --before DURATION.",
)
@click.option(
    "--out",
    "out",
    metavar="FILE",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The archive file to write (JSON lines, mode 0600); it must not exist.",
)
@json_option
@pass_state
def archive(state: CliState, before: str | None, older_than: str | None, out: Path) -> None:
    """Move old audit records out of the store into an archive file.

    Archives every record up to the newest signed checkpoint whose record is older than the
    cutoff, so an archive always ends on a checkpoint. The file holds the records as stored,
    the checkpoints among them and a marker of the segment's end signed by the token's audit
    key; it is written under a temporary name, fsynced and only then given its name. Only
    then are the records deleted from the store, which keeps the marker: `audit verify`
    verifies the remaining chain from it, and `audit verify --archive FILE...` the archives
    and the store as one chain. A log that does not verify is not archived (exit 1).

    Runs on the vault's machine with its store and token (the user PIN as for `vaultctl
    serve`), beside a running server; deleting audit history is not offered over the network.
    Exits 0 also when nothing is old enough (nothing is written then).
    """
    if (before is None) == (older_than is None):
        raise click.UsageError("give one of --before TIME and --older-than DURATION")
    if older_than is not None:
        if not _DURATION_RE.match(older_than.strip().lower()):
            raise click.BadParameter(
                f"{older_than!r}: expected a duration (90d, 12w, 36h)", param_hint="--older-than"
            )
        cutoff = parse_instant(older_than, "--older-than")
    else:
        assert before is not None
        cutoff = parse_instant(before, "--before")
    if out.exists() or out.is_symlink():
        raise CliError(f"{out} exists: an archive is never overwritten", exit_code=EXIT_LOCAL)

    from vault.app import local_audit_log
    from vault.cli._audit_files import write_archive
    from vault.service.audit import ArchiveRefused

    with local_audit_log(state.settings()) as audit:
        try:
            result = audit.archive(
                cutoff,
                lambda header, records, count: write_archive(
                    out, header, records, count, show=not state.json
                ),
            )
        except ArchiveRefused as refused:
            raise CliError(
                f"{refused.message}; nothing archived (run `vaultctl audit verify`)",
                exit_code=EXIT_MISMATCH if refused.damaged else EXIT_LOCAL,
            ) from None
    if result is None:
        data: dict[str, Any] = {"archived": False, "file": None, "records": 0}

        def nothing() -> None:
            note("nothing to archive: no signed checkpoint is older than the cutoff")

        emit(state, data, nothing)
        return
    header = result.header
    data = {
        "archived": True,
        "file": str(out),
        "records": header.last_seq - header.first_seq + 1,
        "first_sequence": header.first_seq,
        "last_sequence": header.last_seq,
        "last_hash": header.end.through_hash.hex(),
        "deleted": result.deleted,
    }

    def human() -> None:
        click.echo(
            f"archived records {header.first_seq} to {header.last_seq} into {out}; "
            f"{_counted(result.deleted, 'record')} deleted from the store"
        )

    emit(state, data, human)


@audit_group.command("reanchor")
@click.option("--yes", is_flag=True, help="Confirm without a prompt (needed without a terminal).")
@json_option
@pass_state
def reanchor(state: CliState, yes: bool) -> None:
    """Accept an altered audit log, so the server serves calls again.

    Once the stored chain no longer extends the token's anchor, the server refuses audited
    calls (AUDIT_UNAVAILABLE). After the damage has been looked at (`audit verify`, `audit
    list`) and the database copied aside as evidence, and when no backup that extends the
    anchor can be restored, this appends a record of the reset (method
    vaultctl/audit/reanchor, reason ANCHOR_RESET, the old anchor in its resource), signs a
    checkpoint over the new head and moves the token's anchor there. Restart the server
    afterwards. Does nothing (exit 0) when the chain extends the anchor.

    Runs on the vault's machine with its store and token (the user PIN as for `vaultctl
    serve`), never over the network.
    """
    import socket

    from vault.app import local_audit_log
    from vault.cli._identity_common import confirm

    confirm("reset", "the token's audit anchor to the log as it is now", yes)
    with local_audit_log(state.settings()) as audit:
        done = audit.reanchor(source=f"local:{socket.gethostname()}")
    if done is None:
        data: dict[str, Any] = {"reanchored": False}
        emit(state, data, lambda: note("the audit chain extends the token's anchor: nothing to do"))
        return
    previous = done.previous
    data = {
        "reanchored": True,
        "previous_sequence": None if previous is None else previous[0],
        "previous_hash": None if previous is None else previous[1].hex(),
        "broken_at_sequence": done.broken_at,
        "anchor_sequence": done.checkpoint.head_seq,
        "anchor_hash": done.checkpoint.head_hash.hex(),
    }

    def human() -> None:
        was = "none" if previous is None else f"sequence {previous[0]}"
        click.echo(
            f"audit anchor moved from {was} to sequence {done.checkpoint.head_seq} "
            f"(the chain stopped extending it at sequence {done.broken_at}); restart the server"
        )

    emit(state, data, human)
