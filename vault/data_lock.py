"""One vault at a time per data directory: an exclusive flock on <data_dir>/vault.lock.

Two servers on one data directory share its token, store and shared-limits file; the second
replaces that file under the first, whose workers then fail every call. The supervisor holds
this lock for its whole life; its workers inherit the open file (fork), and die with it, so
the lock goes only when the last of them has gone. `vaultctl token init` takes it too while
it provisions. The file records who holds it, for the message the next one gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Final

LOCK_FILE_NAME: Final = "vault.lock"


class DataDirectoryInUse(RuntimeError):
    """Another process holds the data directory's lock."""


class DataDirectoryLock:
    """Held from acquire() until release() (or the exit of every process holding it)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"DataDirectoryLock({str(self.path)!r})"

    @classmethod
    def acquire(
        cls, data_dir: Path, *, holder: str, listen: str | None = None
    ) -> DataDirectoryLock:
        """Lock data_dir for holder (e.g. "vaultctl serve"), or raise DataDirectoryInUse
        naming the process that has it. Never waits."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / LOCK_FILE_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _describe(_read(fd))
            os.close(fd)
            raise DataDirectoryInUse(
                f"data directory {data_dir} is in use by {other}; one vault per data "
                "directory: stop it or set data_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        record = {"pid": os.getpid(), "holder": holder, "listen": listen}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        # The file stays: removing it would let a process that opened it just before lock
        # an unlinked file while a third locks a new one.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DataDirectoryLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def _read(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(record: dict[str, object]) -> str:
    holder = str(record.get("holder") or "another vault process")
    details = []
    if record.get("pid"):
        details.append(f"pid {record['pid']}")
    if record.get("listen"):
        details.append(f"serving on {record['listen']}")
    return f"{holder} ({', '.join(details)})" if details else holder
