"""`vaultctl object encrypt|decrypt`: objects encrypted on this machine under bucket keys.

The vault is asked for one bucket key (GenerateBucketKey, or DecryptBucketKey for the key an
object names); the object itself never leaves this process. Files of any size are streamed a
segment at a time, with a progress bar on a terminal.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vault.cli._context import EXIT_LOCAL, CliError, CliState, json_option, pass_state
from vault.cli._io import STDIO, atomic_output, check_out, force_option, open_input
from vault.cli._output import emit, note

GROUP_HELP = """Encrypt and decrypt objects of a bucket on this machine, as the storage service
does: under a bucket key from the vault, in the SDK's object format (README, "Object
encryption format"). The object key (the object's name in the bucket) is bound to the
ciphertext: decrypting needs the same bucket and object key.

\b
Examples:
  vaultctl object encrypt --bucket accounts/acme/buckets/photos --object-key 2026/cat.jpg \\
      --in cat.jpg --out cat.jpg.enc
  vaultctl object decrypt --bucket accounts/acme/buckets/photos --object-key 2026/cat.jpg \\
      --in cat.jpg.enc --out cat.jpg
"""


@click.group("object", help=GROUP_HELP)
def object_group() -> None:
    pass


class _Counted:
    """A binary input that advances a progress bar by what is read from it."""

    def __init__(self, source: BinaryIO, progress: Progress | None, task: TaskID | None) -> None:
        self._source = source
        self._progress = progress
        self._task = task
        self.count = 0

    def read(self, size: int, /) -> bytes:
        data = self._source.read(size)
        self.count += len(data)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=len(data))
        return data


@contextlib.contextmanager
def _progress(state: CliState, source: BinaryIO, what: str) -> Iterator[_Counted]:
    """source counted, with a progress bar on stderr when it is a terminal (and not --json)."""
    console = Console(stderr=True)
    if state.json or not console.is_terminal:
        yield _Counted(source, None, None)
        return
    total: int | None = None
    with contextlib.suppress(OSError, ValueError):
        total = os.fstat(source.fileno()).st_size or None
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(what, total=total)
        yield _Counted(source, progress, task)


def _options(function: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(
        [
            click.option(
                "--bucket",
                required=True,
                metavar="NAME",
                help="The bucket: accounts/{account}/buckets/{bucket}.",
            ),
            click.option(
                "--object-key",
                required=True,
                help="The object's key (its name in the bucket), bound to the ciphertext.",
            ),
            click.option(
                "--in", "in_path", metavar="FILE", required=True, help="Input file (`-`: stdin)."
            ),
            click.option(
                "--out",
                "out_path",
                metavar="FILE",
                required=True,
                help="Output file, mode 0600, in place only once complete (an existing FILE "
                "only with --force).",
            ),
        ]
    ):
        function = option(function)
    return function


def _run(
    state: CliState,
    *,
    decrypt: bool,
    bucket: str,
    object_key: str,
    in_path: str,
    out_path: str,
    force: bool,
) -> None:
    from vault.client import ObjectCipher, ObjectIntegrityError

    if out_path == STDIO:
        raise click.UsageError("--out needs a file: it is written in place only once complete")
    check_out(state, out_path, force=force)
    cipher = ObjectCipher(state.client(), bucket)
    what = "decrypting" if decrypt else "encrypting"
    with open_input(in_path, what="object") as source, _progress(state, source, what) as counted:
        try:
            with atomic_output(out_path, force=force) as out:
                if decrypt:
                    written = cipher.decrypt(object_key, counted, out)
                else:
                    written = cipher.encrypt(object_key, counted, out)
        except ObjectIntegrityError:
            raise CliError(
                "the object is not an intact encrypted object of this bucket and object key",
                exit_code=EXIT_LOCAL,
                reason="OBJECT_INTEGRITY",
            ) from None
    stats = cipher.cache.stats()
    record = {
        "bucket": bucket,
        "object_key": object_key,
        "in": in_path,
        "out": out_path,
        "bytes_read": counted.count,
        "bytes_written": written,
        "vault_calls": stats.vault_calls,
    }
    emit(
        state,
        record,
        lambda: note(f"{what.removesuffix('ing')}ed {counted.count} bytes into {out_path}"),
    )


@object_group.command("encrypt")
@_options
@force_option
@json_option
@pass_state
def encrypt(
    state: CliState, bucket: str, object_key: str, in_path: str, out_path: str, force: bool
) -> None:
    """Encrypt --in as object --object-key of --bucket into --out."""
    _run(
        state,
        decrypt=False,
        bucket=bucket,
        object_key=object_key,
        in_path=in_path,
        out_path=out_path,
        force=force,
    )


@object_group.command("decrypt")
@_options
@force_option
@json_option
@pass_state
def decrypt(
    state: CliState, bucket: str, object_key: str, in_path: str, out_path: str, force: bool
) -> None:
    """Decrypt --in, object --object-key of --bucket, into --out.

    Every segment is verified before it is written, and --out appears only once the whole
    object verified: a modified, truncated or misplaced object leaves no output behind.
    """
    _run(
        state,
        decrypt=True,
        bucket=bucket,
        object_key=object_key,
        in_path=in_path,
        out_path=out_path,
        force=force,
    )
