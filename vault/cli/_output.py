"""Printing results: JSON with stable keys under --json, rich tables otherwise.

Nothing printed here is a secret unless the caller asked for it (decrypted data, a data key);
those go through `_io.write_output`, never through a table.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vault.cli._context import CliState

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        # Piped output is read by a pager or a file, not a terminal of 80 columns: a wide
        # fixed width keeps resource names in one piece. COLUMNS still wins when set.
        width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
        _console = Console(highlight=False, soft_wrap=False, width=width)
    return _console


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def note(message: str) -> None:
    """A human remark on stderr, so stdout stays a clean value for pipes like $(...)."""
    click.echo(message, err=True)


def cell(value: Any) -> Text:
    # Text, not str: label values and descriptions are caller data and may contain rich
    # markup such as "[red]"; Text prints them literally.
    if value is None or value == "":
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, datetime):
        return Text(format_time(value))
    if isinstance(value, Mapping):
        return Text(", ".join(f"{key}={item}" for key, item in sorted(value.items())) or "-")
    if isinstance(value, list | tuple):
        return Text(", ".join(str(item) for item in value) or "-")
    return Text(str(value))


def format_time(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


def short_time(iso: str | None) -> str | None:
    """2026-11-28T01:53:16+00:00 -> 2026-11-28 01:53:16Z, for table columns."""
    if not iso:
        return iso
    return iso.replace("T", " ").replace("+00:00", "Z")


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> None:
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(cell(value) for value in row))
    console().print(table)


def print_fields(fields: Iterable[tuple[str, Any]], title: str = "") -> None:
    """One record as a two-column table: field, value."""
    table = Table(title=title or None, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in fields:
        table.add_row(Text(name), cell(value))
    console().print(table)


def emit(state: CliState, data: Any, human: Callable[[], None] | None = None) -> None:
    """Print data as JSON under --json; otherwise let human() print it for a person."""
    if state.json or human is None:
        print_json(data)
    else:
        human()


# -- list commands ----------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def limit_option(what: str, *, pages: bool = True) -> Callable[[F], F]:
    """`--limit N`, the one way every list command bounds its output. pages: the listing
    is paged on the server, and --page-token continues after the last one printed."""
    more = ", then the page token that continues after them" if pages else ""
    return click.option(
        "--limit",
        type=click.IntRange(min=1),
        metavar="N",
        default=None,
        help=f"Print at most N {what}{more}. Default: all of them.",
    )


def page_size_alias(function: F) -> F:
    """`--page-size`, the old name of --limit in `keys list`: hidden, still accepted."""
    return click.option(
        "--page-size",
        "page_size",
        type=click.IntRange(min=1),
        default=None,
        hidden=True,
        help="Deprecated: use --limit.",
    )(function)


def first(records: list[Any], limit: int | None) -> list[Any]:
    return records if limit is None else records[:limit]
