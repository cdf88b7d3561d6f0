"""vault.coordination.flock: the same exclusion as fcntl.flock between processes, and a wait
for a lock another process holds that leaves the GIL to this process's other threads."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from vault.coordination import flock

# Long enough that a test never relies on it; the holder lets go on its own only then, so a
# waiter that kept the GIL shows as a release "on its own" instead of a hung test.
HOLD_AT_MOST_SECONDS = 20.0


def _hold(path: str, conn: Connection) -> None:
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    conn.send("held")
    told = conn.poll(HOLD_AT_MOST_SECONDS)
    fcntl.flock(fd, fcntl.LOCK_UN)
    conn.send("told" if told else "on its own")
    os.close(fd)


def _holder(path: Path) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_hold, args=(str(path), theirs))
    process.start()
    assert ours.recv() == "held"
    return process, ours


def test_a_free_lock_is_taken_and_given_back(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.touch()
    fd, other = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
    try:
        flock.lock_exclusive(fd)
        # Another open file description, as another process has, is excluded...
        assert not flock.try_lock_exclusive(other)
        flock.unlock(fd)
        # ...until the lock is given back.
        assert flock.try_lock_exclusive(other)
        assert not flock.try_lock_exclusive(fd)
        flock.unlock(other)
    finally:
        os.close(fd)
        os.close(other)


def test_a_lock_another_process_holds_is_waited_for_without_the_gil(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.touch()
    process, conn = _holder(path)
    fd = os.open(path, os.O_RDWR)
    try:
        assert not flock.try_lock_exclusive(fd)
        # Only a thread of this process can tell the holder to let go: it runs only if the
        # waiting thread below gave up the GIL.
        releaser = threading.Thread(target=conn.send, args=("release",))
        timer = threading.Timer(0.2, releaser.start)
        timer.start()
        flock.lock_exclusive(fd)
        assert conn.recv() == "told"
        flock.unlock(fd)
        timer.join()
        releaser.join()
    finally:
        os.close(fd)
        process.join(timeout=30)
        conn.close()
    assert process.exitcode == 0


def test_bad_descriptors_raise_like_fcntl(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "gone", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    for call in (flock.lock_exclusive, flock.try_lock_exclusive, flock.unlock):
        try:
            call(fd)
        except OSError as error:
            assert error.errno == 9  # EBADF
        else:
            raise AssertionError(f"{call.__name__} accepted a closed descriptor")
