"""Archive files of the audit log on disk: written atomically and durably, read back lazily.

An archive is written to a hidden temporary file beside its destination (mode 0600 from
creation), fsynced, then linked to the destination name, which must not exist yet, and the
directory fsynced: once `write_archive` returns, the file survives a crash, and an archive is
never half-written under its final name nor put over another file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vault.cli._context import EXIT_LOCAL, CliError
from vault.domain.audit import AuditRecord
from vault.domain.audit_archive import (
    ArchiveFormatError,
    ArchiveHeader,
    decode_header,
    decode_record,
    encode_header,
    encode_record,
)
from vault.service.audit import ArchivedSegment

# Records between progress updates: a refresh per record would cost more than the writing.
_PROGRESS_STEP = 1000


def progress(show: bool) -> Progress:
    """A progress bar on stderr, shown only on a terminal (never in --json output or logs)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not (show and sys.stderr.isatty()),
    )


def write_archive(
    path: Path, header: ArchiveHeader, records: Iterator[AuditRecord], count: int, *, show: bool
) -> None:
    if path.exists() or path.is_symlink():
        raise CliError(f"{path} exists: an archive is never overwritten", exit_code=EXIT_LOCAL)
    directory = path.parent
    temporary = directory / f".{path.name}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file, progress(show) as bar:
            task = bar.add_task("archiving", total=count)
            file.write(encode_header(header) + "\n")
            written = 0
            for record in records:
                file.write(encode_record(record) + "\n")
                written += 1
                if written % _PROGRESS_STEP == 0:
                    bar.update(task, completed=written)
            if written != count:
                raise CliError(
                    f"read {written} records where {count} were expected; nothing archived",
                    exit_code=EXIT_LOCAL,
                )
            file.flush()
            os.fsync(file.fileno())
        # link, not rename: it fails if the destination appeared meanwhile.
        os.link(temporary, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def read_archives(paths: Sequence[Path]) -> list[ArchivedSegment]:
    """The archives at paths, oldest segment first; their records are read when verified."""
    segments = []
    for path in paths:
        with _opened(path) as lines:
            try:
                header = decode_header(next(lines, ""))
            except ArchiveFormatError as error:
                raise CliError(f"{path}: {error}", exit_code=EXIT_LOCAL) from None
        segments.append(ArchivedSegment(header, _records_of(path)))
    return sorted(segments, key=lambda segment: segment.header.first_seq)


def _records_of(path: Path) -> Callable[[], Iterator[AuditRecord]]:
    def records() -> Iterator[AuditRecord]:
        with _opened(path) as lines:
            next(lines, None)
            for number, line in enumerate(lines, start=2):
                try:
                    yield decode_record(line)
                except ArchiveFormatError as error:
                    raise CliError(f"{path} line {number}: {error}", exit_code=EXIT_LOCAL) from None

    return records


@contextmanager
def _opened(path: Path) -> Iterator[Iterator[str]]:
    try:
        file = path.open(encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}", exit_code=EXIT_LOCAL) from None
    with file:
        yield iter(file)
