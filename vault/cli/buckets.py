"""`vaultctl buckets ...`: buckets, their master keys and bucket keys over gRPC."""

from __future__ import annotations

from datetime import UTC
from itertools import islice
from typing import TYPE_CHECKING, Any

import click

from vault.cli._context import CliState, json_option, pass_state
from vault.cli._identity_common import duration
from vault.cli._io import check_out, force_option, read_input, write_output
from vault.cli._output import (
    emit,
    format_time,
    limit_option,
    note,
    print_fields,
    print_table,
    short_time,
)
from vault.cli.keys import account_parent, parse_duration, parse_labels
from vault.domain.buckets import BucketState

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from vault.gen.vault.v1 import resources_pb2

GROUP_HELP = """Create buckets and manage their master keys on a running vault.

Buckets are named accounts/{account}/buckets/{bucket}. Each owns a master key made inside the
token (kept wrapped under the root key); the storage service asks for bucket keys wrapped
under it and encrypts objects itself (`vaultctl object`). Deleting a bucket destroys its master
key after a waiting period: from then on none of its objects can be decrypted.

\b
Examples:
  vaultctl buckets create accounts/acme/buckets/photos --label team=media --key-lifetime 15m
  vaultctl buckets list acme --label team=media
  vaultctl buckets update accounts/acme/buckets/photos --max-objects 100000
  vaultctl buckets rotate accounts/acme/buckets/photos
  vaultctl buckets versions accounts/acme/buckets/photos --limit 10
  vaultctl buckets disable-version accounts/acme/buckets/photos/masterKeyVersions/1
  vaultctl buckets bucket-key accounts/acme/buckets/photos --plaintext-out key.bin
  vaultctl buckets delete accounts/acme/buckets/photos --waiting-period 30d
  vaultctl buckets cancel-delete accounts/acme/buckets/photos
"""


@click.group("buckets", help=GROUP_HELP)
def buckets_group() -> None:
    pass


# -- conversions from the client's messages -------------------------------------------------


def _time(message: Any, field: str) -> str | None:
    if not message.HasField(field):
        return None
    timestamp: Timestamp = getattr(message, field)
    return format_time(timestamp.ToDatetime(tzinfo=UTC))


def _number(name: str) -> int | None:
    _, _, number = name.rpartition("/masterKeyVersions/")
    return int(number) if number.isdigit() else None


def master_key_version_record(version: resources_pb2.BucketMasterKeyVersion) -> dict[str, Any]:
    from vault.gen.vault.v1 import resources_pb2

    return {
        "name": version.name,
        "number": _number(version.name),
        "state": resources_pb2.VersionState.Name(version.state).removeprefix("VERSION_STATE_"),
        "create_time": _time(version, "create_time"),
        "destroy_time": _time(version, "destroy_time"),
    }


def bucket_record(bucket: resources_pb2.Bucket) -> dict[str, Any]:
    from vault.gen.vault.v1 import resources_pb2

    policy = bucket.policy
    return {
        "name": bucket.name,
        "state": resources_pb2.BucketState.Name(bucket.state).removeprefix("BUCKET_STATE_"),
        "labels": dict(sorted(bucket.labels.items())),
        "policy": {
            "key_lifetime_seconds": policy.key_lifetime.ToTimedelta().total_seconds(),
            "max_objects_per_key": policy.max_objects_per_key or None,
            "max_bytes_per_key": policy.max_bytes_per_key or None,
        },
        "primary_master_key_version": bucket.primary_master_key_version,
        "master_key_versions": [
            master_key_version_record(version) for version in bucket.master_key_versions
        ],
        # A server older than the count listed every version.
        "master_key_version_count": bucket.master_key_version_count
        or len(bucket.master_key_versions),
        "create_time": _time(bucket, "create_time"),
        "update_time": _time(bucket, "update_time"),
        "delete_time": _time(bucket, "delete_time"),
    }


def _limit(value: int | None) -> str:
    return "no limit" if value is None else str(value)


def _show_bucket(state: CliState, bucket: resources_pb2.Bucket, done: str = "") -> None:
    record = bucket_record(bucket)

    def human() -> None:
        if done:
            note(done)
        policy = record["policy"]
        shown = record["master_key_versions"]
        versions = ", ".join(f"{version['number']} {version['state']}" for version in shown)
        count = record["master_key_version_count"]
        if count > len(shown):
            versions = f"newest {len(shown)}: {versions}; `buckets versions` lists all"
        versions = f"{count} ({versions})"
        fields: list[tuple[str, Any]] = [
            ("name", record["name"]),
            ("state", record["state"]),
            ("labels", record["labels"]),
            ("key lifetime", f"{policy['key_lifetime_seconds']:g} s"),
            ("objects per key", _limit(policy["max_objects_per_key"])),
            ("bytes per key", _limit(policy["max_bytes_per_key"])),
            ("primary master key", record["primary_master_key_version"]),
            ("master key versions", versions),
            ("created", record["create_time"]),
            ("updated", record["update_time"]),
        ]
        if record["delete_time"]:
            fields.append(("master key destroyed at", record["delete_time"]))
        print_fields(fields)

    emit(state, record, human)


def split_bucket_name(name: str) -> tuple[str, str]:
    """accounts/{a}/buckets/{b} -> (accounts/{a}, b); the vault checks the ids."""
    parent, separator, bucket_id = name.rpartition("/buckets/")
    if not separator or not parent.startswith("accounts/") or not bucket_id:
        raise click.BadParameter(
            f"{name!r}: expected accounts/{{account}}/buckets/{{bucket}}", param_hint="NAME"
        )
    return parent, bucket_id


def _policy(
    key_lifetime: str | None, max_objects: int | None, max_bytes: int | None
) -> resources_pb2.BucketKeyPolicy | None:
    """The policy the options give, or None when none was given. 0 limits: none."""
    from google.protobuf.duration_pb2 import Duration

    from vault.gen.vault.v1 import resources_pb2

    if key_lifetime is None and max_objects is None and max_bytes is None:
        return None
    policy = resources_pb2.BucketKeyPolicy(
        max_objects_per_key=max_objects or 0, max_bytes_per_key=max_bytes or 0
    )
    if key_lifetime is not None:
        lifetime = duration(key_lifetime, "--key-lifetime")
        policy.key_lifetime.CopyFrom(Duration(seconds=int(lifetime.total_seconds())))
    return policy


def _policy_options(function: Any) -> Any:
    function = click.option(
        "--max-bytes",
        type=click.IntRange(0),
        default=None,
        help="Most plaintext bytes one bucket key may encrypt; 0: no limit (the default).",
    )(function)
    function = click.option(
        "--max-objects",
        type=click.IntRange(0),
        default=None,
        help="Most objects one bucket key may encrypt; 0: no limit (the default).",
    )(function)
    return click.option(
        "--key-lifetime",
        metavar="DURATION",
        default=None,
        help="How long a bucket key may encrypt new objects: seconds, or a number with s, m, "
        "h or d (1 s to 1 d; default 15m). Also how long a disabled master-key version may go "
        "on protecting new objects through keys clients already hold.",
    )(function)


_LABEL_OPTION = click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label (repeatable): keys match [a-z][a-z0-9-]{0,62}, values are at most 63 characters.",
)


# -- commands -------------------------------------------------------------------------------


@buckets_group.command("create")
@click.argument("name")
@_LABEL_OPTION
@_policy_options
@click.option(
    "--request-id",
    default="",
    help="Idempotency token: repeating a create with the same id returns the bucket the "
    "first call created instead of failing.",
)
@json_option
@pass_state
def create(
    state: CliState,
    name: str,
    labels: tuple[str, ...],
    key_lifetime: str | None,
    max_objects: int | None,
    max_bytes: int | None,
    request_id: str,
) -> None:
    """Create bucket NAME (accounts/{account}/buckets/{bucket}) and its master key."""
    parent, bucket_id = split_bucket_name(name)
    bucket = state.client().create_bucket(
        parent,
        bucket_id,
        labels=parse_labels(labels),
        policy=_policy(key_lifetime, max_objects, max_bytes),
        request_id=request_id,
    )
    _show_bucket(state, bucket, f"created {bucket.name}")


@buckets_group.command("get")
@click.argument("name")
@json_option
@pass_state
def get(state: CliState, name: str) -> None:
    """Show bucket NAME: state, labels, bucket-key policy, master-key versions."""
    _show_bucket(state, state.client().get_bucket(name))


@buckets_group.command("list")
@click.argument("account")
@click.option(
    "--state",
    "bucket_state",
    type=click.Choice([str(value) for value in BucketState], case_sensitive=False),
    default=None,
    help="Only buckets in this state.",
)
@click.option(
    "--label",
    default=None,
    metavar="KEY[=VALUE]",
    help="Only buckets with this label (KEY), or with this label set to VALUE (KEY=VALUE).",
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 1000),
    default=None,
    help="Fetch one page of at most this many buckets and print the next page token. "
    "Default: fetch every page.",
)
@click.option("--page-token", default="", help="Continue a listing from this page token.")
@json_option
@pass_state
def list_buckets(
    state: CliState,
    account: str,
    bucket_state: str | None,
    label: str | None,
    page_size: int | None,
    page_token: str,
) -> None:
    """List the buckets of ACCOUNT (`acme` or `accounts/acme`), in name order."""
    client = state.client()
    parent = account_parent(account)
    label_key, label_value = "", None
    if label:
        label_key, separator, value = label.partition("=")
        label_value = value if separator else None
    filters: dict[str, Any] = {
        "state": bucket_state.upper() if bucket_state else None,
        "label_key": label_key,
        "label_value": label_value,
    }
    next_token = ""
    if page_size is None and not page_token:
        buckets = list(client.iter_buckets(parent, **filters))
    else:
        page = client.list_buckets(
            parent, page_size=page_size or 0, page_token=page_token, **filters
        )
        buckets, next_token = list(page.buckets), page.next_page_token
    records = [bucket_record(bucket) for bucket in buckets]

    def human() -> None:
        print_table(
            ["NAME", "STATE", "PRIMARY", "KEY LIFETIME", "LABELS", "CREATED"],
            [
                [
                    record["name"],
                    record["state"],
                    _number(record["primary_master_key_version"]),
                    f"{record['policy']['key_lifetime_seconds']:g} s",
                    record["labels"],
                    short_time(record["create_time"]),
                ]
                for record in records
            ],
        )
        if next_token:
            note(f"more buckets: --page-token {next_token}")

    emit(state, {"buckets": records, "next_page_token": next_token}, human)


@buckets_group.command("update")
@click.argument("name")
@_LABEL_OPTION
@click.option("--clear-labels", is_flag=True, help="Remove every label.")
@_policy_options
@json_option
@pass_state
def update(
    state: CliState,
    name: str,
    labels: tuple[str, ...],
    clear_labels: bool,
    key_lifetime: str | None,
    max_objects: int | None,
    max_bytes: int | None,
) -> None:
    """Replace the labels and/or the bucket-key policy of bucket NAME.

    Policy options given replace the whole policy: one left out returns to its default.
    """
    if labels and clear_labels:
        raise click.UsageError("--label and --clear-labels exclude each other")
    new_labels = {} if clear_labels else (parse_labels(labels) if labels else None)
    policy = _policy(key_lifetime, max_objects, max_bytes)
    if new_labels is None and policy is None:
        raise click.UsageError("nothing to update: give --label, --clear-labels or a policy option")
    bucket = state.client().update_bucket(name, labels=new_labels, policy=policy)
    _show_bucket(state, bucket, f"updated {bucket.name}")


@buckets_group.command("delete")
@click.argument("name")
@click.option(
    "--waiting-period",
    metavar="DURATION",
    default=None,
    help="How long until the master key is destroyed: seconds, or a number with s, m, h, d "
    "or w (e.g. 30d). Default: the server's keys.default_destroy_waiting_seconds; it refuses "
    "less than keys.min_destroy_waiting_seconds.",
)
@json_option
@pass_state
def delete(state: CliState, name: str, waiting_period: str | None) -> None:
    """Delete bucket NAME: its master key is destroyed after a waiting period.

    Until then nothing is generated or decrypted, and `cancel-delete` undoes it; afterwards
    no object encrypted under the bucket's keys can ever be decrypted again.
    """
    period = parse_duration(waiting_period) if waiting_period is not None else None
    bucket = state.client().delete_bucket(name, period)
    record = bucket_record(bucket)
    _show_bucket(
        state, bucket, f"{bucket.name}: master key will be destroyed at {record['delete_time']}"
    )


@buckets_group.command("cancel-delete")
@click.argument("name")
@json_option
@pass_state
def cancel_delete(state: CliState, name: str) -> None:
    """Cancel the deletion of bucket NAME; it is ACTIVE again."""
    bucket = state.client().cancel_bucket_deletion(name)
    _show_bucket(state, bucket, f"deletion of {bucket.name} cancelled")


@buckets_group.command("rotate")
@click.argument("name")
@json_option
@pass_state
def rotate(state: CliState, name: str) -> None:
    """Add a master-key version to bucket NAME and make it primary.

    New bucket keys are wrapped under it; keys wrapped under older versions keep opening until
    their version is disabled (`disable-version`) or the bucket is deleted.
    """
    bucket = state.client().rotate_bucket_master_key(name)
    _show_bucket(state, bucket, f"rotated {bucket.name}: {bucket.primary_master_key_version}")


@buckets_group.command("disable-version")
@click.argument("version")
@json_option
@pass_state
def disable_version(state: CliState, version: str) -> None:
    """Disable master-key VERSION (accounts/{a}/buckets/{b}/masterKeyVersions/{n}).

    Bucket keys wrapped under it no longer open; if it is the primary version, no new bucket
    key is made until the master key is rotated or the version enabled again.
    """
    bucket = state.client().disable_bucket_master_key_version(version)
    _show_bucket(state, bucket, f"disabled {version}")


@buckets_group.command("enable-version")
@click.argument("version")
@json_option
@pass_state
def enable_version(state: CliState, version: str) -> None:
    """Enable master-key VERSION again."""
    bucket = state.client().enable_bucket_master_key_version(version)
    _show_bucket(state, bucket, f"enabled {version}")


@buckets_group.command("versions")
@click.argument("name")
@limit_option("versions", pages=False)
@json_option
@pass_state
def versions(state: CliState, name: str, limit: int | None) -> None:
    """List every master-key version of bucket NAME, newest first.

    `get` shows only the newest 100; this follows the server's pages through all of them.
    """
    found = state.client().iter_bucket_master_key_versions(name)
    records = [master_key_version_record(version) for version in islice(found, limit)]

    def human() -> None:
        print_table(
            ["VERSION", "STATE", "CREATED", "DESTROYED"],
            [
                [
                    record["number"],
                    record["state"],
                    short_time(record["create_time"]),
                    short_time(record["destroy_time"]),
                ]
                for record in records
            ],
            title=f"master-key versions of {name}",
        )

    emit(state, {"master_key_versions": records}, human)


@buckets_group.command("bucket-key")
@click.argument("name")
@click.option(
    "--wrapped-in",
    "wrapped_in",
    metavar="FILE",
    default=None,
    help="Decrypt this wrapped bucket key (raw bytes; `-` reads standard input) instead of "
    "generating a new one.",
)
@click.option(
    "--wrapped-out",
    metavar="FILE",
    default=None,
    help="Write the new wrapped key to FILE (raw bytes; `-` for standard output). Default: "
    "base64 on standard output.",
)
@click.option(
    "--plaintext-out",
    metavar="FILE",
    default=None,
    help="Write the bucket key itself (32 bytes) to FILE, mode 0600. Never printed otherwise.",
)
@force_option
@json_option
@pass_state
def bucket_key(
    state: CliState,
    name: str,
    wrapped_in: str | None,
    wrapped_out: str | None,
    plaintext_out: str | None,
    force: bool,
) -> None:
    """Generate a bucket key of bucket NAME, or decrypt one with --wrapped-in.

    The storage service does this itself (through the SDK); the command is for checks and
    scripts. The plaintext key goes only to --plaintext-out.
    """
    if plaintext_out == "-":
        raise click.UsageError("--plaintext-out needs a file: the key is never printed")
    check_out(state, wrapped_out, plaintext_out, force=force)
    client = state.client()
    if wrapped_in is not None:
        if wrapped_out is not None:
            raise click.UsageError("--wrapped-out goes with generating, not --wrapped-in")
        wrapped = read_input(wrapped_in, what="wrapped bucket key")
        plaintext = client.decrypt_bucket_key(name, wrapped)
        if plaintext_out is not None:
            write_output(plaintext_out, plaintext, force=force)
        record: dict[str, Any] = {"bucket": name, "plaintext_out": plaintext_out}
        emit(state, record, lambda: note(f"bucket key of {name} opened"))
        return
    generated = client.generate_bucket_key(name)
    if plaintext_out is not None:
        write_output(plaintext_out, generated.plaintext, force=force)
    printed = write_output(wrapped_out, generated.wrapped, force=force)
    record = {
        "bucket": name,
        "master_key_version": generated.master_key_version,
        "lifetime_seconds": generated.lifetime_seconds,
        "max_objects": generated.max_objects,
        "max_bytes": generated.max_bytes,
        "wrapped_key": printed,
        "wrapped_out": wrapped_out,
        "plaintext_out": plaintext_out,
    }

    def human() -> None:
        if printed is not None:
            click.echo(printed)
        note(
            f"bucket key wrapped under {generated.master_key_version}, "
            f"lifetime {generated.lifetime_seconds:g} s"
        )

    emit(state, record, human)
