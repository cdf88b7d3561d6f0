"""`vaultctl audit ...`: read and verify the vault's tamper-evident audit log over gRPC.

Both commands call AuditService, which only the admin role may use.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.table import Table
from rich.text import Text

from vault.cli._context import EXIT_MISMATCH, CliState, json_option, pass_state
from vault.cli._identity_common import duration, proto_time
from vault.cli._output import cell, console, emit, limit_option, note, page_size_alias, short_time

if TYPE_CHECKING:
    from vault.gen.vault.v1 import audit_service_pb2, resources_pb2

GROUP_HELP = """Read and verify the audit log (admin role).

The vault records every request: who called (credential id, account), which method on
which resource, the outcome and its reason, and the latency; never key material, secrets
or payloads. Records form a hash chain whose head the vault signs in checkpoints with a key
in the token, so `verify` detects records that were changed, removed, added or reordered
afterwards. Needs the admin role.

\b
Examples:
  vaultctl audit list --since 1h
  vaultctl audit list --key accounts/acme/keys/docs --outcome PERMISSION_DENIED
  vaultctl audit list --credential VKABCDEFGHIJKLMNOPQR --method Sign --limit 50
  vaultctl audit verify
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
    )

    names: set[str] = {
        method.name
        for module in (key_service_pb2, crypto_service_pb2, identity_service_pb2, audit_service_pb2)
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
    while True:
        # With a limit, the last page asks for exactly what is left, so its token resumes
        # right after the last record printed.
        size = _MAX_PAGE if limit is None else min(_MAX_PAGE, limit - len(events))
        page = client.list_audit_events(**filters, page_size=size, page_token=token)
        events.extend(page.events)
        token = page.next_page_token
        if not token or (limit is not None and len(events) >= limit):
            break
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


@audit_group.command("verify")
@json_option
@pass_state
def verify(state: CliState) -> None:
    """Check that the audit log was not tampered with.

    Recomputes the hash chain of every record and checks each signed checkpoint against
    the token's audit key.

    Exits 0 when the log is intact, 1 when it is not: each finding (kind, sequence, detail)
    is listed in log order, the first one highlighted, as the others may follow from it.
    Kinds: MODIFIED, DELETED, INSERTED, REORDERED, CHECKPOINT_MISMATCH, BAD_SIGNATURE,
    TRUNCATED. Records added or removed at the end of the log since the last checkpoint go
    unnoticed until the next checkpoint is signed. Needs the admin role.
    """
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
