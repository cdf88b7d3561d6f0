"""`vaultctl accounts ...`: create and inspect accounts over gRPC (admin role)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from vault.cli._context import CliState, json_option, pass_state
from vault.cli._identity_common import ADMIN_NOTE, proto_time, show
from vault.cli._output import emit, first, limit_option, print_fields, print_table, short_time
from vault.cli.keys import account_parent

if TYPE_CHECKING:
    from vault.gen.vault.v1 import resources_pb2

ACCOUNTS_HELP = f"""Create and inspect accounts (admin role).

Accounts are the principals that own keys and credentials. They are named
accounts/{{account}} (ids: a lower-case letter, then up to 62 lower-case letters, digits or
'-'). The access keys without grants of an admin account hold the admin role: they manage
accounts, credentials and the audit log, and use the keys of every account. {ADMIN_NOTE}

\b
Examples:
  vaultctl accounts create acme --display-name "ACME Corp"
  vaultctl accounts get accounts/acme
  vaultctl --json accounts list
"""


@click.group("accounts", help=ACCOUNTS_HELP)
def accounts_group() -> None:
    pass


def account_record(account: resources_pb2.Account) -> dict[str, Any]:
    return {
        "name": account.name,
        "account_id": account.name.removeprefix("accounts/"),
        "display_name": account.display_name,
        "admin": account.admin,
        "create_time": proto_time(account, "create_time"),
    }


def _print_account(record: dict[str, Any]) -> None:
    print_fields(
        [
            ("name", record["name"]),
            ("display name", record["display_name"]),
            ("admin", record["admin"]),
            ("created", record["create_time"]),
        ]
    )


@accounts_group.command("create")
@click.argument("account_id", metavar="ID")
@click.option("--display-name", default="", help="Free text, at most 256 characters.")
@click.option(
    "--admin",
    is_flag=True,
    help="Make it an admin account: its access keys without grants hold the admin role. "
    "Fixed at creation.",
)
@json_option
@pass_state
def create_account(state: CliState, account_id: str, display_name: str, admin: bool) -> None:
    """Create an account.

    ID is the new account's id, `acme`, or its name, `accounts/acme`. Needs the admin role.
    """
    account = state.client().create_account(
        account_id.removeprefix("accounts/"), display_name=display_name, admin=admin
    )
    show(state, account_record(account), _print_account, f"created {account.name}")


@accounts_group.command("get")
@click.argument("name")
@json_option
@pass_state
def get_account(state: CliState, name: str) -> None:
    """Show an account.

    NAME is `acme` or `accounts/acme`. Needs the admin role.
    """
    account = state.client().get_account(account_parent(name))
    show(state, account_record(account), _print_account)


@accounts_group.command("list")
@limit_option("accounts", pages=False)
@json_option
@pass_state
def list_accounts(state: CliState, limit: int | None) -> None:
    """List every account, in name order.

    Needs the admin role.
    """
    records = [account_record(account) for account in first(state.client().list_accounts(), limit)]

    def human() -> None:
        print_table(
            ["NAME", "DISPLAY NAME", "ADMIN", "CREATED"],
            [
                [r["name"], r["display_name"], r["admin"], short_time(r["create_time"])]
                for r in records
            ],
        )

    emit(state, {"accounts": records}, human)
