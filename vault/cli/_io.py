"""Binary input and output for the crypto and key commands.

Plaintext, key material and other secrets only ever arrive through a file or standard input:
a command-line argument lands in shell history and in `ps` for every user of the machine.
Results go to a file (`--out FILE`, written atomically with mode 0600 because it may hold
plaintext or key material, and never over an existing file without --force), raw to standard
output (`--out -`), or base64 on standard output by default.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import click

from vault.cli._context import EXIT_LOCAL, CliError, CliState

F = TypeVar("F", bound=Callable[..., Any])

STDIO = "-"
# Every input read whole is far smaller (64 KiB plaintexts by default); the cap only keeps a
# mistyped path (a disk image, /dev/zero) from being read into memory. Messages to sign are
# streamed through a hash instead (open_input), so they may be of any size.
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


@contextlib.contextmanager
def open_input(path: str, *, what: str) -> Iterator[BinaryIO]:
    """path opened for reading, or standard input for `-`: for inputs read a chunk at a time
    (hashed, not held), which may be of any size."""
    if path == STDIO:
        if sys.stdin.isatty():
            click.echo(f"reading {what} from standard input; end with Ctrl-D", err=True)
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except OSError as error:
        raise _local_error(f"cannot read {what} from {path}: {error.strerror}") from None
    with handle:
        yield handle


def decode_base64(data: bytes | str, *, what: str) -> bytes:
    text = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _local_error(f"{what} is not valid base64") from None


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_output(path: str | None, data: bytes, *, force: bool) -> str | None:
    """Write data to the file path, raw to stdout for `-`, or base64 to stdout for None.

    A file is written as write_file does: never over an existing file unless force.
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
    write_file(path, data, force=force)
    return None


def write_file(path: str, data: bytes, *, force: bool) -> None:
    """Write data to path atomically, mode 0600: readers see the old file or the whole new
    one, never part of it, and a failure leaves no partial file behind (atomic_output)."""
    with atomic_output(path, force=force) as handle:
        try:
            handle.write(data)
        except OSError as error:
            raise output_error(path, error) from None


@contextlib.contextmanager
def atomic_output(path: str, *, force: bool) -> Iterator[BinaryIO]:
    """A file to write path's new content to, a piece at a time; it takes path's place only
    when the block ends without an error, and is removed if one is raised.

    An existing path is replaced only with force, and never when it is a symbolic link or
    not a regular file. The data goes to a private temporary file beside path first (mode
    0600 from its creation, so no one else can ever read it), which then takes path's
    place: by a hard link without force, which fails if path exists (so nothing that
    appeared meanwhile is overwritten), by a rename with it."""
    if force:
        _check_replaceable(path)
    directory = os.path.dirname(os.path.abspath(path))
    temporary: str | None = None
    try:
        try:
            descriptor, temporary = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
            )
            handle = os.fdopen(descriptor, "wb")
        except OSError as error:
            raise output_error(path, error) from None
        with handle:
            yield handle
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as error:
                raise output_error(path, error) from None
        try:
            if force:
                os.replace(temporary, path)
            else:
                os.link(temporary, path)
                os.unlink(temporary)
        except OSError as error:
            raise output_error(path, error) from None
        temporary = None
        _sync_directory(directory)
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _check_replaceable(path: str) -> None:
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise output_error(path, error) from None
    if stat.S_ISLNK(status.st_mode):
        raise output_error(path, OSError(errno.ELOOP, os.strerror(errno.ELOOP)))
    if not stat.S_ISREG(status.st_mode):
        raise _local_error(f"{path} is not a regular file")


def _sync_directory(directory: str) -> None:
    # The rename or link is durable only once the directory is; best effort, as some file
    # systems refuse to sync a directory.
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def output_error(path: str, error: OSError) -> CliError:
    """The one message for an output file that cannot be written."""
    # O_EXCL and link() report a symbolic link as existing; --force would not follow it.
    if error.errno == errno.ELOOP or (error.errno == errno.EEXIST and os.path.islink(path)):
        message = f"{path} is a symbolic link: refusing to follow it"
    elif error.errno == errno.EEXIST:
        message = f"{path} exists: refusing to overwrite it (--force replaces it)"
    else:
        message = f"cannot write {path}: {error.strerror or error}"
    return _local_error(message)


def check_out(state: CliState, *paths: str | None, force: bool) -> None:
    """Check the output paths before anything is asked of the vault: no raw bytes on standard
    output when the JSON document goes there too, no two outputs to one file, and no
    existing file (a symbolic link or a special file ever) unless force. write_file checks
    again when it writes."""
    if state.json and STDIO in paths:
        raise click.UsageError("--out - cannot be combined with --json; use --out FILE")
    files = [path for path in paths if path is not None and path != STDIO]
    if len({os.path.abspath(path) for path in files}) < len(files):
        raise click.UsageError("each output must go to a different file")
    for path in files:
        if force:
            _check_replaceable(path)
        elif os.path.lexists(path):
            raise output_error(path, OSError(errno.EEXIST, os.strerror(errno.EEXIST)))


def force_option(function: F) -> F:
    return click.option(
        "--force",
        is_flag=True,
        help="Replace existing output files (still never through a symbolic link).",
    )(function)


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
            f"Write the {what} to FILE (mode 0600; an existing FILE only with --force); `-` "
            "writes raw bytes to standard output. Default: base64 on standard output."
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
