"""The lock files that make the audit store's appenders, and its checkpointers, take turns
across the processes sharing a SQLite file (vault.storage.audit_chain, audit_checkpoints)."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import Engine

from vault.storage.engine import is_sqlite, is_sqlite_memory, is_sqlite_uri

LOCK_SUFFIX = ".audit-lock"
# Checkpointers take turns on their own lock, not the append lock: checking the chain since
# the anchor must not hold up the appends of every request meanwhile.
CHECKPOINT_LOCK_SUFFIX = ".audit-checkpoint-lock"


class AppendLock:
    """Mutual exclusion of appenders: a threading.Lock among the threads of this process, then
    an exclusive flock of a lock file among processes (when there is a file: a SQLite database
    in memory lives in one process, and a server database is locked by SQL instead).

    Each process opens the lock file itself. A forked child inherits the descriptor, but an
    flock belongs to the open file description, which parent and child would then share:
    locking it would not exclude one from the other.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._threads = threading.Lock()
        self._fd = -1
        self._pid = 0
        _reset_in_forked_children(self)

    @property
    def path(self) -> Path | None:
        return self._path

    @contextmanager
    def held(self) -> Iterator[None]:
        with self.attempt(wait=True):
            yield

    @contextmanager
    def attempt(self, *, wait: bool) -> Iterator[bool]:
        """The lock if it can be had (at once, unless wait): yields whether it is held."""
        if not self._threads.acquire(blocking=wait):
            yield False
            return
        try:
            if self._path is None:
                yield True
                return
            fd = self._descriptor(self._path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = -1
            self._pid = 0

    def _descriptor(self, path: Path) -> int:
        pid = os.getpid()
        if self._fd < 0 or self._pid != pid:
            # 0600 like the database: the file holds nothing, but nobody else may lock it.
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = pid
        return self._fd

    def _after_fork(self) -> None:
        # Runs in the child alone, right after fork: the parent's threads are gone, and one
        # may have been holding the thread lock. The inherited descriptor is dropped (closing
        # this copy leaves the parent's lock alone); the child opens its own on first use.
        self._threads = threading.Lock()
        if self._fd >= 0:
            with suppress(OSError):
                os.close(self._fd)
        self._fd = -1
        self._pid = 0


def lock_path(engine: Engine, suffix: str = LOCK_SUFFIX) -> Path | None:
    """The append lock file (or another lock file, by suffix) of a SQLite database file, else
    None."""
    url = engine.url
    if not is_sqlite(url) or is_sqlite_memory(url) or is_sqlite_uri(url) or not url.database:
        return None
    # Absolute now, so a later chdir cannot make two processes lock different files.
    return Path(url.database + suffix).absolute()


def _reset_in_forked_children(lock: AppendLock) -> None:
    # A weak reference so the hook does not keep the lock (and its store) alive.
    ref = weakref.ref(lock)

    def _after_fork() -> None:
        forked = ref()
        if forked is not None:
            forked._after_fork()

    os.register_at_fork(after_in_child=_after_fork)
