"""`vaultctl api-keys ...`: issue, inspect and revoke API keys, and show any credential's
usage, over gRPC (admin role)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from vault.cli._context import CliState, json_option, pass_state
from vault.cli._identity_common import (
    ADMIN_NOTE,
    account_of,
    confirm,
    duration,
    enum_name,
    proto_time,
    relative_key,
    show,
)
from vault.cli._output import (
    emit,
    first,
    limit_option,
    note,
    print_fields,
    print_table,
    short_time,
)
from vault.cli._secret_output import SecretOutputs, force_option
from vault.cli.keys import account_parent
from vault.domain.identity import REQUIRED_LEVEL

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vault.gen.vault.v1 import resources_pb2

API_KEYS_HELP = f"""Issue and manage API keys (admin role).

An API key is a bearer token limited to some methods and keys; it is named
accounts/{{account}}/apiKeys/{{id}}. The token is shown once, by `create`; the vault keeps
only a keyed hash of it. Write it to a file with --token-out (created with mode 0600), or
it is printed on standard output. Callers send it by setting VAULT_API_KEY. An API key
never holds the admin role. {ADMIN_NOTE}

\b
Examples:
  vaultctl api-keys create accounts/acme --scope 'Sign,Verify,GetPublicKey:keys/release' \\
      --expires-in 90d --rate 10 --burst 20 --daily-quota 10000 --token-out release.token
  VAULT_API_KEY=$(cat release.token) vaultctl crypto sign accounts/acme/keys/release \\
      --in build.tar --out build.sig
  vaultctl api-keys usage accounts/acme/apiKeys/abcdefghijklmnop --days 7
  vaultctl api-keys revoke accounts/acme/apiKeys/abcdefghijklmnop --yes
"""


@click.group("api-keys", help=API_KEYS_HELP)
def api_keys_group() -> None:
    pass


def api_key_record(key: resources_pb2.ApiKey) -> dict[str, Any]:
    from vault.gen.vault.v1 import resources_pb2

    rate_limit = (
        {
            "requests_per_second": key.rate_limit.requests_per_second,
            "burst": key.rate_limit.burst,
        }
        if key.HasField("rate_limit")
        else None
    )
    return {
        "name": key.name,
        "api_key_id": key.api_key_id,
        "account": account_of(key.name),
        "state": enum_name(resources_pb2.CredentialState, key.state, "CREDENTIAL_STATE_"),
        "scopes": [
            {"methods": list(scope.methods), "resources": list(scope.resources)}
            for scope in key.scopes
        ],
        "expire_time": proto_time(key, "expire_time"),
        "rate_limit": rate_limit,
        "daily_quota": key.daily_quota,
        "description": key.description,
        "create_time": proto_time(key, "create_time"),
        "last_used_time": proto_time(key, "last_used_time"),
    }


def _scopes_text(scopes: list[dict[str, list[str]]]) -> str:
    # The --scope syntax, so a listing can be pasted back into a command.
    return "; ".join(
        f"{','.join(scope['methods'])}:{','.join(scope['resources'])}" for scope in scopes
    )


def _rate_text(rate_limit: dict[str, Any] | None) -> str | None:
    if rate_limit is None:
        return None
    return f"{rate_limit['requests_per_second']:g}/s, burst {rate_limit['burst']}"


def _print_api_key(record: dict[str, Any]) -> None:
    print_fields(
        [
            ("name", record["name"]),
            ("api key id", record["api_key_id"]),
            ("state", record["state"]),
            ("scopes", _scopes_text(record["scopes"])),
            ("expires", record["expire_time"] or "never"),
            ("rate limit", _rate_text(record["rate_limit"]) or "none"),
            ("daily quota", record["daily_quota"] or "unlimited"),
            ("description", record["description"]),
            ("created", record["create_time"]),
            ("last used", record["last_used_time"]),
        ]
    )


def parse_scopes(values: Sequence[str], parent: str) -> list[tuple[list[str], list[str]]]:
    scopes: list[tuple[list[str], list[str]]] = []
    for value in values:
        methods_text, separator, resources_text = value.partition(":")
        methods = [method.strip() for method in methods_text.split(",") if method.strip()]
        resources = [
            relative_key(resource.strip(), parent, "--scope")
            for resource in resources_text.split(",")
            if resource.strip()
        ]
        if not separator or not methods or not resources:
            raise click.BadParameter(
                f"{value!r}: expected METHOD[,METHOD...]:RESOURCE[,RESOURCE...], "
                "e.g. 'Sign,Verify:keys/release'",
                param_hint="--scope",
            )
        scopes.append((methods, resources))
    return scopes


def _expire_time(expires_in: str | None) -> datetime | None:
    if expires_in is None:
        return None
    period = duration(expires_in, "--expires-in")
    if period.total_seconds() <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--expires-in")
    try:
        return datetime.now(UTC) + period
    except OverflowError:
        raise click.BadParameter(f"{expires_in!r} is too long", param_hint="--expires-in") from None


def _rate_limit(rate: float | None, burst: int | None) -> tuple[float, int] | None:
    if rate is None:
        if burst is not None:
            raise click.UsageError("--burst needs --rate")
        return None
    if not math.isfinite(rate):
        raise click.BadParameter("must be a finite number", param_hint="--rate")
    # A burst below the per-second rate would cap the rate at the burst after any pause.
    return rate, burst if burst is not None else max(1, math.ceil(rate))


def _methods_help() -> str:
    # Built from the vault's own table, so the help cannot drift from what scopes accept.
    return ", ".join(sorted(REQUIRED_LEVEL))


@api_keys_group.command("create")
@click.argument("account")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    metavar="METHODS:RESOURCES",
    help="What the key may do (repeatable; a call is allowed when one scope covers its method "
    "and every key it names): comma-separated methods, a colon, comma-separated resources. "
    f"Methods: {_methods_help()}, or * for all. Resources: keys/KEY (a full key name of "
    "the account works too), keys/* for every key, or * which also covers calls naming no "
    "key (ListKeys, GenerateRandom). Example: 'Sign,Verify:keys/k1,keys/k2'. Signing or "
    "verifying a message over 64 KiB also takes GetPublicKey (the caller hashes it with the "
    "key's algorithm).",
)
@click.option(
    "--expires-in",
    metavar="DURATION",
    default=None,
    help="Stop working after this long: seconds, or a number with s, m, h, d or w (e.g. "
    "30d, 12h). Default: never.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="RPS",
    default=None,
    help="Sustained requests per second allowed, over all the server's worker processes. "
    "Default: no rate limit.",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="Requests allowed at once after a quiet period (with --rate). Default: RPS rounded up.",
)
@click.option(
    "--daily-quota",
    type=click.IntRange(min=0),
    metavar="N",
    default=0,
    help="Requests allowed per UTC day. Default: 0, unlimited.",
)
@click.option("--description", default="", help="Free text, at most 1024 characters.")
@click.option(
    "--token-out",
    metavar="FILE",
    default=None,
    help="Write the bare token (no newline) to FILE, created with mode 0600, instead of "
    "printing it on standard output.",
)
@force_option
@json_option
@pass_state
def create_api_key(
    state: CliState,
    account: str,
    scopes: tuple[str, ...],
    expires_in: str | None,
    rate: float | None,
    burst: int | None,
    daily_quota: int,
    description: str,
    token_out: str | None,
    force: bool,
) -> None:
    """Issue an API key; its token is shown once.

    ACCOUNT is the account it belongs to, `acme` or `accounts/acme`. Prints the token, or
    writes it to --token-out. Give at least one --scope. Needs the admin role.
    """
    parent = account_parent(account)
    parsed = parse_scopes(scopes, parent)
    rate_limit = _rate_limit(rate, burst)
    expire_time = _expire_time(expires_in)
    with SecretOutputs({"--token-out": token_out}, force=force) as outputs:
        response = state.client().create_api_key(
            parent,
            parsed,
            expire_time=expire_time,
            rate_limit=rate_limit,
            daily_quota=daily_quota,
            description=description,
        )
    key = response.api_key
    outputs.write(
        {"--token-out": response.token.encode()},
        lost=f"revoke it with `vaultctl api-keys revoke {key.name}` and create another",
    )
    printed = None if outputs.given else response.token
    record = api_key_record(key)
    payload = {
        "api_key": record,
        "api_key_id": key.api_key_id,
        "token": printed,
        "token_out": outputs.path("--token-out"),
    }

    def human() -> None:
        note(f"created {key.name}")
        _print_api_key(record)
        if printed is not None:
            click.echo(f"token: {printed}")
            note("The token is shown only now: store it safely.")
        else:
            note(f"token written to {token_out}; use it with VAULT_API_KEY=$(cat {token_out})")

    emit(state, payload, human)


@api_keys_group.command("get")
@click.argument("name")
@json_option
@pass_state
def get_api_key(state: CliState, name: str) -> None:
    """Show an API key (never its token).

    NAME is accounts/{account}/apiKeys/{id}. Needs the admin role.
    """
    key = state.client().get_api_key(name)
    show(state, api_key_record(key), _print_api_key)


@api_keys_group.command("list")
@click.argument("account")
@limit_option("API keys", pages=False)
@json_option
@pass_state
def list_api_keys(state: CliState, account: str, limit: int | None) -> None:
    """List the API keys of an account.

    ACCOUNT is `acme` or `accounts/acme`. Needs the admin role.
    """
    keys = first(state.client().list_api_keys(account_parent(account)), limit)
    records = [api_key_record(key) for key in keys]

    def human() -> None:
        print_table(
            ["NAME", "STATE", "SCOPES", "EXPIRES", "RATE", "QUOTA", "LAST USED"],
            [
                [
                    r["name"],
                    r["state"],
                    _scopes_text(r["scopes"]),
                    short_time(r["expire_time"]),
                    _rate_text(r["rate_limit"]),
                    r["daily_quota"] or None,
                    short_time(r["last_used_time"]),
                ]
                for r in records
            ],
        )

    emit(state, {"api_keys": records}, human)


@api_keys_group.command("revoke")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@pass_state
def revoke_api_key(state: CliState, name: str, yes: bool) -> None:
    """Revoke an API key: irreversible.

    NAME is accounts/{account}/apiKeys/{id}. It stops authenticating at once. Asks for
    confirmation unless --yes. Needs the admin role.
    """
    confirm("revoke", name, yes)
    key = state.client().revoke_api_key(name)
    show(state, api_key_record(key), _print_api_key, f"revoked {key.name}")


@api_keys_group.command("usage")
@click.argument("name")
@click.option(
    "--days",
    type=click.IntRange(1, 366),
    default=None,
    help="How many UTC days back from today, 1 to 366. Default: the vault's, 31.",
)
@json_option
@pass_state
def usage(state: CliState, name: str, days: int | None) -> None:
    """Show a credential's requests per day and method.

    NAME is an API key, accounts/{account}/apiKeys/{id}, or an access key,
    accounts/{account}/accessKeys/{id}. Counted are the calls that were authenticated and
    allowed by scope and limits, per UTC day and method. Needs the admin role.
    """
    counters = state.client().get_usage(name, days or 0)
    records: list[dict[str, Any]] = [
        {"day": counter.day, "method": counter.method, "count": counter.count}
        for counter in counters
    ]
    total = sum(counter.count for counter in counters)

    def human() -> None:
        print_table(
            ["DAY", "METHOD", "COUNT"],
            [[r["day"], r["method"], r["count"]] for r in records],
            title=f"usage of {name}",
        )
        note(f"{total} requests")

    emit(state, {"name": name, "days": days, "counters": records, "total": total}, human)
