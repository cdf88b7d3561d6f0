"""A full disk under the data directory: the vault refuses changes with UNAVAILABLE DISK_FULL,
keeps serving reads (and auditing them), and takes changes again once space is freed, with no
restart. A disk too small for the workers' shared limits file stops the server at start with
one clear line.

Each test mounts a small tmpfs of its own (the tests run as root here) and puts a whole data
directory on it; the server's log goes elsewhere, so it is not lost to the full disk.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import grpc
import pytest

from tests.support.api_calls import expect_error
from tests.support.harness import VaultServer, provision
from tests.support.security_helpers import codes, new_account, on_fresh_connections
from vault.client import VaultClientError
from vault.coordination.disk import DiskReserve
from vault.coordination.limits import LimitsFileSpaceError, SharedLimits
from vault.gen.vault.v1 import resources_pb2

MIB: Final = 1 << 20
# Room for the token, the store, the 67 MiB shared limits file and the reserve.
ROOMY_DISK: Final = 100 * MIB
# Room for the token and the store, not for the shared limits file.
CRAMPED_DISK: Final = 40 * MIB
RESERVE: Final = 4 * MIB
READS: Final = 40
RECOVERY_TIMEOUT_SECONDS: Final = 30.0
BOOT_ID_OFFSET: Final = 64  # in the shared limits file's header


def _mount_tmpfs(directory: Path, size: int) -> None:
    directory.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")


def _small_disk(tmp_path: Path, size: int) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    _mount_tmpfs(mount_point, size)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def roomy_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _small_disk(tmp_path, ROOMY_DISK)


@pytest.fixture
def cramped_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _small_disk(tmp_path, CRAMPED_DISK)


def fill(disk: Path) -> Path:
    """A file taking every byte left on disk."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (MIB, 4096):
            block = b"\xff" * chunk
            while True:
                try:
                    os.write(descriptor, block)
                except OSError as error:
                    assert error.errno == errno.ENOSPC
                    break
    finally:
        os.close(descriptor)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def server_settings() -> dict[str, str]:
    return {"VAULT_STORE__DISK_RESERVE_BYTES": str(RESERVE)}


def server_on(disk: Path, log_dir: Path) -> VaultServer:
    data_dir = disk / "vault"
    provision(data_dir)
    server = VaultServer(data_dir, extra_env=server_settings())
    server.log_path = log_dir / "server.log"
    return server


PLAINTEXT: Final = b"written before the disk filled up"


def assert_reads_served_and_changes_refused(
    server: VaultServer, account: str, key: str, ciphertext: bytes
) -> None:
    # Signed reads over fresh connections, so both workers serve some: every one is served
    # and audited (each also writes its nonce into the shared limits file).
    reads = on_fresh_connections(
        server, server.credentials, lambda c: c.get_key(key).name, times=READS
    )
    assert codes(reads) == ["OK"] * READS
    with server.client() as admin:
        assert admin.decrypt(key, ciphertext).plaintext == PLAINTEXT
        refused = expect_error(
            grpc.StatusCode.UNAVAILABLE,
            "DISK_FULL",
            lambda: admin.create_key(account, "during", "ENCRYPT_DECRYPT"),
        )
        assert "disk is full" in refused.message
        expect_error(grpc.StatusCode.UNAVAILABLE, "DISK_FULL", lambda: admin.disable_key(key))
        assert admin.get_key(key).state == resources_pb2.KEY_STATE_ENABLED


def test_a_full_disk_refuses_changes_serves_reads_and_recovers_by_itself(
    roomy_disk: Path, tmp_path: Path
) -> None:
    server = server_on(roomy_disk, tmp_path).start()
    try:
        with server.client() as admin:
            account = new_account(admin)
            key = admin.create_key(account, "before", "ENCRYPT_DECRYPT").name
            ciphertext = admin.encrypt(key, PLAINTEXT).ciphertext
        filler = fill(roomy_disk)

        assert_reads_served_and_changes_refused(server, account, key, ciphertext)

        filler.unlink()
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
        with server.client() as admin:
            while True:
                try:
                    admin.create_key(account, "after", "ENCRYPT_DECRYPT")
                    break
                except VaultClientError as error:
                    assert error.reason == "DISK_FULL", error
                    assert time.monotonic() < deadline, "changes still refused after freeing space"
                    time.sleep(0.5)
            assert admin.get_key(f"{account}/keys/after").name == f"{account}/keys/after"

        log = server.log()
        assert "died unexpectedly" not in log
        assert "restarting worker" not in log
        assert log.count("disk is full: released the") == 1
        assert log.count("has space again") == 1
    finally:
        server.stop()


def test_a_server_restarted_on_a_full_disk_serves_reads(roomy_disk: Path, tmp_path: Path) -> None:
    server = server_on(roomy_disk, tmp_path).start()
    try:
        with server.client() as admin:
            account = new_account(admin)
            key = admin.create_key(account, "before", "ENCRYPT_DECRYPT").name
            ciphertext = admin.encrypt(key, PLAINTEXT).ciphertext
        fill(roomy_disk)
        # Stopped before any write found the disk full: the reserve is still set aside.
        server.stop()
        server = VaultServer(server.data_dir, extra_env=server_settings())
        server.log_path = tmp_path / "restarted.log"
        server.start()
        assert_reads_served_and_changes_refused(server, account, key, ciphertext)
        assert "died unexpectedly" not in server.log()
    finally:
        server.stop()


def test_a_disk_too_full_for_the_shared_limits_file_stops_the_server_at_start(
    cramped_disk: Path, tmp_path: Path
) -> None:
    server = server_on(cramped_disk, tmp_path)
    try:
        with pytest.raises(RuntimeError, match="exited early"):
            server.start()
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode != 0
    limits_file = server.data_dir / "run" / "shared-limits"
    named = re.escape(str(limits_file))
    line = re.search(
        rf"cannot reserve (\d+) bytes on disk for the shared limits file {named}: "
        r"(\d+) bytes free$",
        server.log(),
        re.MULTILINE,
    )
    assert line is not None, server.log()
    needed, free = int(line.group(1)), int(line.group(2))
    assert free < needed
    assert needed > 64 * MIB
    assert not limits_file.exists()


# -- the reserve file's rules -----------------------------------------------------------------


def test_the_reserve_is_released_once_and_restored_only_with_enough_space(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path / "run" / "disk-reserve", RESERVE)
    assert reserve.refusing_changes()  # not made yet
    assert not reserve.restore(needed_free=1 << 62)  # more than any disk has
    assert reserve.restore(needed_free=2 * RESERVE)
    assert reserve.path.stat().st_blocks * 512 >= RESERVE
    assert reserve.path.stat().st_mode & 0o777 == 0o600
    assert not reserve.refusing_changes()
    assert not reserve.restore(needed_free=0)  # present already

    assert reserve.release()
    assert not reserve.release()  # another process got there first: it logs, not this one
    assert reserve.refusing_changes()


def test_a_zero_reserve_never_refuses_changes(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path / "disk-reserve", 0)
    assert not reserve.refusing_changes()
    assert not reserve.restore(needed_free=0)
    assert not reserve.release()
    assert not reserve.path.exists()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _small_disk(tmp_path, 3 * MIB)


def test_after_a_reboot_the_limits_file_is_replaced_in_its_own_space(tiny_disk: Path) -> None:
    # 2.1 MiB: the disk holds one such file, not two.
    path = tiny_disk / "limits"
    SharedLimits.prepare(path, slots=1024, nonce_slots=1 << 16).close()
    with path.open("r+b") as file:
        file.seek(BOOT_ID_OFFSET)
        file.write(os.urandom(16))  # made during another boot
    replaced = SharedLimits.prepare(path, slots=1024, nonce_slots=1 << 16)
    replaced.close()

    with pytest.raises(LimitsFileSpaceError, match=r"cannot reserve \d+ bytes on disk"):
        SharedLimits.prepare(tiny_disk / "other", slots=1024, nonce_slots=1 << 16)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["limits"]
