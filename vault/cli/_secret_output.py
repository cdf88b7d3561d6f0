"""Files for a secret the vault issues once: created exclusively with mode 0600 before the
secret exists, written once it does, removed again if the vault refused."""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass

import click

from vault.cli._context import EXIT_LOCAL, CliError
from vault.cli._io import STDIO, force_option, output_error

# force_option lives beside the other output options; the credential commands import it here.
__all__ = ["SecretOutputs", "force_option", "open_private"]


@dataclass
class _PrivateFile:
    """A file opened for a secret that does not exist yet; written once the vault issued it,
    or removed again (when this command created it) if the vault refused."""

    path: str
    descriptor: int
    created: bool

    def write(self, data: bytes) -> None:
        try:
            os.fchmod(self.descriptor, 0o600)
            os.ftruncate(self.descriptor, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(self.descriptor, view) :]
            os.fsync(self.descriptor)
        finally:
            self.close()

    def discard(self) -> None:
        self.close()
        if self.created:
            # Best effort: an empty file is harmless, and the command fails anyway.
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1


def open_private(path: str, *, force: bool) -> _PrivateFile:
    """Open path for a secret: created with mode 0600, never through a symbolic link, and an
    existing file only with force (it keeps its content until the secret replaces it)."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    created = True
    try:
        try:
            descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if not force:
                raise
            descriptor = os.open(path, flags)
            created = False
    except OSError as error:
        raise output_error(path, error) from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise CliError(f"{path} is not a regular file", exit_code=EXIT_LOCAL)
    return _PrivateFile(path, descriptor, created)


class SecretOutputs:
    """The files a command writes the secret it is about to receive to.

    A secret the vault issues (an access key's secret key, an API key's token) is returned
    once and never again, so the files are opened before asking the vault for it: a path that
    cannot be written then fails the command before any secret exists, instead of after, when
    it would be lost.

    Use as a context manager around the call that issues the secret: when it raises, the
    files this command created are removed again."""

    def __init__(self, paths: dict[str, str | None], *, force: bool) -> None:
        given = {option: path for option, path in paths.items() if path is not None}
        for option, path in given.items():
            if path == STDIO:
                raise click.BadParameter(
                    "omit the option to print the secret on standard output", param_hint=option
                )
        if len({os.path.abspath(path) for path in given.values()}) < len(given):
            raise click.UsageError(f"{' and '.join(given)} must name different files")
        self._files: dict[str, _PrivateFile] = {}
        try:
            for option, path in given.items():
                self._files[option] = open_private(path, force=force)
        except BaseException:
            self._discard()
            raise

    @property
    def given(self) -> bool:
        """Whether any file was given: the secret is then not printed."""
        return bool(self._files)

    def __enter__(self) -> SecretOutputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self._discard()

    def _discard(self) -> None:
        for pending in self._files.values():
            pending.discard()

    def path(self, option: str) -> str | None:
        pending = self._files.get(option)
        return pending.path if pending is not None else None

    def write(self, contents: dict[str, bytes], *, lost: str) -> None:
        """Write each option's file; lost: what to do when that fails, since the secret
        cannot be fetched again."""
        failure: OSError | None = None
        failed = ""
        for option, pending in self._files.items():
            try:
                pending.write(contents[option])
            except OSError as error:
                failure, failed = failure or error, failed or pending.path
        if failure is not None:
            raise CliError(
                "the secret was issued but could not be saved: "
                f"{output_error(failed, failure).message}; {lost}",
                exit_code=EXIT_LOCAL,
            )
