"""What the accounts, access-keys and api-keys commands share: reading the client's messages,
relative key names in grants and scopes, durations, and confirming irreversible changes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from vault.cli._context import EXIT_USAGE, CliError, CliState
from vault.cli._output import emit, format_time, note
from vault.cli.keys import parse_duration

if TYPE_CHECKING:
    from google.protobuf.message import Message

# Every command of these groups calls IdentityService, which only the admin role may use: an
# access key without grants of an admin account, such as the one the vault bootstraps at its
# first start.
ADMIN_NOTE = "Needs the admin role."


# -- conversions from the client's messages -------------------------------------------------


def proto_time(message: Message, field: str) -> str | None:
    """An optional Timestamp field as ISO 8601 text, or None when unset."""
    if not message.HasField(field):
        return None
    value: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return format_time(value)


def enum_name(wrapper: Any, value: int, prefix: str) -> str:
    name: str = wrapper.Name(value)
    return name.removeprefix(prefix)


def account_of(name: str) -> str:
    """accounts/acme/accessKeys/VK... -> accounts/acme."""
    parts = name.split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else ""


def show(
    state: CliState,
    record: dict[str, Any],
    printer: Callable[[dict[str, Any]], None],
    done: str = "",
) -> None:
    def human() -> None:
        if done:
            note(done)
        printer(record)

    emit(state, record, human)


# -- option parsing ---------------------------------------------------------------------------


def relative_key(resource: str, parent: str, param_hint: str) -> str:
    """keys/docs stays; accounts/acme/keys/docs becomes keys/docs when acme is the parent.

    Grants and scopes are relative to the credential's account, but people copy full key
    names from `keys list`; one of another account could never be granted."""
    if not resource.startswith("accounts/"):
        return resource
    prefix = f"{parent}/"
    if not resource.startswith(prefix):
        raise click.BadParameter(
            f"{resource!r} belongs to another account than {parent}", param_hint=param_hint
        )
    return resource.removeprefix(prefix)


def duration(text: str, option: str) -> timedelta:
    """keys.parse_duration for option: its error names option, and a duration beyond what a
    datetime can hold is a usage error rather than a traceback."""
    try:
        return parse_duration(text)
    except click.BadParameter as error:
        raise click.BadParameter(error.message, param_hint=option) from None
    except OverflowError:
        raise click.BadParameter(f"{text!r} is too long", param_hint=option) from None


def confirm(verb: str, name: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            f"{verb} {name} cannot be undone: pass --yes to confirm without a terminal",
            exit_code=EXIT_USAGE,
        )
    click.confirm(f"{verb.capitalize()} {name}? This cannot be undone", abort=True, err=True)
