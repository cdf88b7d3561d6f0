"""Binary input and output for the crypto and key commands.

Plaintext, key material and other secrets only ever arrive through a file or standard input:
a command-line argument lands in shell history and in `ps` for every user of the machine.
Results go to a file (`--out FILE`, created with mode 0600 because it may hold plaintext or key
material), raw to standard output (`--out -`), or base64 on standard output by default.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from vault.cli._context import EXIT_LOCAL, CliError, CliState

F = TypeVar("F", bound=Callable[..., Any])

STDIO = "-"
# Every vault input is far smaller (64 KiB plaintexts, 1 MiB messages); the cap only keeps a
# mistyped path (a disk image, /dev/zero) from being read into memory.
MAX_INPUT_BYTES = 16 << 20


def _local_error(message: str) -> CliError:
    return CliError(message, exit_code=EXIT_LOCAL)


def read_input(path: str, *, what: str, base64_text: bool = False) -> bytes:
    """The bytes of path, or of standard input for `-`; base64_text decodes them first."""
    if path == STDIO:
        if sys.stdin.isatty():
            click.echo(f"reading {what} from standard input; end with Ctrl-D", err=True)
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    else:
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_INPUT_BYTES + 1)
        except OSError as error:
            raise _local_error(f"cannot read {what} from {path}: {error.strerror}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise _local_error(f"{what} is larger than {MAX_INPUT_BYTES} bytes")
    if base64_text:
        return decode_base64(data, what=what)
    return data


def decode_base64(data: bytes | str, *, what: str) -> bytes:
    text = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _local_error(f"{what} is not valid base64") from None


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_output(path: str | None, data: bytes) -> str | None:
    """Write data to path (mode 0600), raw to stdout for `-`, or base64 to stdout for None.

    Returns the base64 text when it was printed, so --json can carry it instead."""
    if path is None:
        return encode_base64(data)
    if path == STDIO:
        if sys.stdout.isatty():
            raise _local_error(
                "refusing to write raw bytes to a terminal: use --out FILE, or omit --out "
                "for base64"
            )
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return None
    try:
        # 0600 at creation, so a new file is never readable by others, not even briefly; an
        # existing file is narrowed to 0600 before anything is written into it; a symlink is
        # refused rather than followed to wherever it points.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.fchmod(descriptor, 0o600)
        os.ftruncate(descriptor, 0)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
    except OSError as error:
        raise _local_error(f"cannot write {path}: {error.strerror}") from None
    return None


def check_out(state: CliState, *paths: str | None) -> None:
    """Refuse raw bytes on standard output when the JSON document goes there too."""
    if state.json and STDIO in paths:
        raise click.UsageError("--out - cannot be combined with --json; use --out FILE")


def in_option(what: str, *, required: bool = True) -> Callable[[F], F]:
    return click.option(
        "--in",
        "in_path",
        metavar="FILE",
        required=required,
        help=f"Read the {what} from FILE; `-` reads standard input.",
    )


def in_base64_option(function: F) -> F:
    return click.option(
        "--in-base64",
        "in_base64",
        is_flag=True,
        help="The --in data is base64 text (as printed without --out), not raw bytes.",
    )(function)


def out_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--out",
        "out_path",
        metavar="FILE",
        default=None,
        help=(
            f"Write the {what} to FILE (created with mode 0600); `-` writes raw bytes to "
            "standard output. Default: base64 on standard output."
        ),
    )


def aad_option(
    name: str = "--aad-file", dest: str = "aad_path", what: str = "additional authenticated data"
) -> Callable[[F], F]:
    return click.option(
        name,
        dest,
        metavar="FILE",
        default=None,
        help=(
            f"Read the {what} from FILE (`-` for standard input). It is not encrypted but "
            "must be given again, byte for byte, to decrypt. Default: none."
        ),
    )


def read_optional(path: str | None, *, what: str) -> bytes:
    return b"" if path is None else read_input(path, what=what)
