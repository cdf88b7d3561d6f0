"""The limits shared by a server's worker processes: each operation's rules with simulated
time, then the same table used by several real processes at once, one of them killed."""

from __future__ import annotations

import fcntl
import math
import multiprocessing
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import ForkProcess
from pathlib import Path
from typing import Any

import pytest

from vault.coordination.limits import NonceCacheFull, SharedLimits

FORK = multiprocessing.get_context("fork")
HEADER_SIZE = 128
BOOT_ID_OFFSET = 64
COUNTER_RECORD = 48
NONCE_RECORD = 32


@pytest.fixture
def limits(tmp_path: Path) -> Iterator[SharedLimits]:
    shared = SharedLimits.create(tmp_path / "limits", slots=1024, nonce_slots=1024)
    yield shared
    shared.close()


# -- token bucket -----------------------------------------------------------------------------


def test_burst_then_refusal_with_retry_after(limits: SharedLimits) -> None:
    def take(now: float) -> float:
        return limits.take_token("api:a", rate_per_second=2.0, burst=3, now=now)

    assert [take(1000.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert take(1000.0) == pytest.approx(0.5)
    assert take(1000.25) == pytest.approx(0.25)  # the refusal took nothing
    assert take(1000.5) == 0.0
    assert take(1000.5) == pytest.approx(0.5)


def test_refill_over_time_is_capped_at_burst(limits: SharedLimits) -> None:
    def take(now: float) -> float:
        return limits.take_token("api:a", rate_per_second=10.0, burst=5, now=now)

    assert all(take(0.0) == 0.0 for _ in range(5))
    assert take(0.0) > 0.0
    # 0.3 s at 10/s: three tokens.
    assert [take(0.3) for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert take(0.3) == pytest.approx(0.1)
    # An hour later: full again, but only burst tokens.
    assert sum(take(3600.0) == 0.0 for _ in range(20)) == 5


def test_clock_running_behind_refills_nothing(limits: SharedLimits) -> None:
    def take(now: float) -> float:
        return limits.take_token("api:a", rate_per_second=1.0, burst=1, now=now)

    assert take(100.0) == 0.0
    assert take(99.0) > 0.0
    # The refill counts from 100.0, not from 99.0.
    assert take(100.5) == pytest.approx(0.5)


def test_keys_are_independent(limits: SharedLimits) -> None:
    for _ in range(2):
        assert limits.take_token("api:a", rate_per_second=1.0, burst=2, now=5.0) == 0.0
    assert limits.take_token("api:a", rate_per_second=1.0, burst=2, now=5.0) > 0.0
    assert limits.take_token("api:b", rate_per_second=1.0, burst=2, now=5.0) == 0.0
    # The same string under another kind of limit is another record.
    assert limits.record_failure("api:a", window_seconds=60.0, now=5.0) == 1
    assert limits.take_token("api:a", rate_per_second=1.0, burst=2, now=5.0) > 0.0


@pytest.mark.parametrize("attempt", range(3))
def test_threads_of_one_process_share_one_bucket(limits: SharedLimits, attempt: int) -> None:
    allowed: list[int] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        allowed.append(
            sum(
                limits.take_token("api:t", rate_per_second=1.0, burst=1000, now=0.0) == 0.0
                for _ in range(250)
            )
        )

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    # Switch threads as often as possible, so that they interleave inside operations; and
    # three rounds, as an interleaving that breaks the count is likely, not certain.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(allowed) == 1000


def test_full_window_evicts_least_recently_touched(tmp_path: Path) -> None:
    shared = SharedLimits.create(tmp_path / "limits", slots=2, nonce_slots=1)

    def take(key: str) -> float:
        return shared.take_token(key, rate_per_second=0.001, burst=1, now=0.0)

    try:
        assert take("api:a") == 0.0
        assert take("api:b") == 0.0
        assert take("api:c") == 0.0  # evicts a
        assert take("api:b") > 0.0  # b kept its state (and is touched again)
        assert take("api:a") == 0.0  # a was forgotten: a fresh bucket; evicts c
        assert take("api:b") > 0.0
        assert take("api:c") == 0.0
    finally:
        shared.close()


# -- nonces -----------------------------------------------------------------------------------


def test_nonce_replay_and_expiry(limits: SharedLimits) -> None:
    assert limits.remember_nonce(b"n-1", expires_at=110.0, now=100.0) is True
    assert limits.remember_nonce(b"n-1", expires_at=120.0, now=105.0) is False
    assert limits.remember_nonce(b"n-2", expires_at=120.0, now=105.0) is True
    # The replay did not extend the first expiry.
    assert limits.remember_nonce(b"n-1", expires_at=130.0, now=110.0) is True
    assert limits.remember_nonce(b"n-1", expires_at=130.0, now=129.0) is False


def test_nonce_itself_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    shared = SharedLimits.create(path, slots=4, nonce_slots=16)
    try:
        nonce = b"a distinctive nonce value"
        assert shared.remember_nonce(nonce, expires_at=2.0, now=1.0)
        contents = path.read_bytes()
        assert nonce not in contents
        assert contents[HEADER_SIZE + 4 * COUNTER_RECORD :].strip(b"\0")  # something stored
    finally:
        shared.close()


def test_full_nonce_table_fails_closed_and_expired_slots_are_reused(tmp_path: Path) -> None:
    shared = SharedLimits.create(tmp_path / "limits", slots=4, nonce_slots=4)
    try:
        for index in range(4):
            assert shared.remember_nonce(b"first-%d" % index, expires_at=50.0, now=10.0)
        with pytest.raises(NonceCacheFull):
            shared.remember_nonce(b"one too many", expires_at=50.0, now=10.0)
        # A replay is still recognised as one when the table is full.
        assert shared.remember_nonce(b"first-2", expires_at=50.0, now=20.0) is False
        # Once expired, the four slots are free again, and only four.
        for index in range(4):
            assert shared.remember_nonce(b"second-%d" % index, expires_at=90.0, now=50.0)
        with pytest.raises(NonceCacheFull):
            shared.remember_nonce(b"one too many", expires_at=90.0, now=50.0)
        assert shared.remember_nonce(b"second-0", expires_at=90.0, now=60.0) is False
    finally:
        shared.close()


# -- failed authentications -------------------------------------------------------------------


def test_failures_count_in_a_fixed_window(limits: SharedLimits) -> None:
    assert limits.failures("addr:10.0.0.1", window_seconds=60.0, now=0.0) == 0
    assert [
        limits.record_failure("addr:10.0.0.1", window_seconds=60.0, now=now)
        for now in (0.0, 10.0, 59.9)
    ] == [1, 2, 3]
    assert limits.failures("addr:10.0.0.1", window_seconds=60.0, now=30.0) == 3
    assert limits.failures("addr:10.0.0.2", window_seconds=60.0, now=30.0) == 0
    assert limits.failures("addr:10.0.0.1", window_seconds=60.0, now=60.0) == 0
    assert limits.record_failure("addr:10.0.0.1", window_seconds=60.0, now=61.0) == 1
    assert limits.record_failure("addr:10.0.0.1", window_seconds=60.0, now=120.0) == 2
    assert limits.failures("addr:10.0.0.1", window_seconds=60.0, now=120.0) == 2


# -- daily quotas -----------------------------------------------------------------------------


class Seed:
    def __init__(self, value: int, path: Path) -> None:
        self.value = value
        self.calls = 0
        self.path = path

    def __call__(self) -> int:
        self.calls += 1
        # seed() may do I/O: it must run while no process holds the table's lock.
        descriptor = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)
        return self.value


def test_quota_starts_from_seed_and_resets_each_day(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    shared = SharedLimits.create(path, slots=64, nonce_slots=1)
    seed = Seed(5, path)

    def consume(day: int) -> bool:
        return shared.consume_quota("quota:acct", day=day, limit=7, seed=seed)

    try:
        assert [consume(20000) for _ in range(4)] == [True, True, False, False]
        assert seed.calls == 1
        seed.value = 0
        assert [consume(20001) for _ in range(8)] == [True] * 7 + [False]
        assert seed.calls == 2
        # A day already over its limit in the database: refused without asking again.
        seed.value = 9
        assert [consume(20002) for _ in range(3)] == [False] * 3
        assert seed.calls == 3
    finally:
        shared.close()


# -- files ------------------------------------------------------------------------------------


def test_file_mode_and_bad_headers(tmp_path: Path) -> None:
    path = tmp_path / "run" / "limits"
    SharedLimits.create(path, slots=8, nonce_slots=8).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    good = path.read_bytes()
    SharedLimits.attach(path).close()

    bad = tmp_path / "bad"
    for contents in (
        b"",
        b"VLTLIMIT",
        b"X" * len(good),
        good[:8] + struct.pack("<I", 99) + good[12:],  # another version
        good[:-1],  # shorter than the header says
        good[:16] + bytes(8) + good[24:],  # zero counter slots
    ):
        bad.write_bytes(contents)
        with pytest.raises(ValueError):
            SharedLimits.attach(bad)


def test_create_starts_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    first = SharedLimits.create(path, slots=8, nonce_slots=8)
    assert first.take_token("api:a", rate_per_second=1.0, burst=1, now=0.0) == 0.0
    assert first.remember_nonce(b"n", expires_at=10.0, now=0.0)
    first.close()
    second = SharedLimits.create(path, slots=8, nonce_slots=8)
    try:
        assert second.take_token("api:a", rate_per_second=1.0, burst=1, now=0.0) == 0.0
        assert second.remember_nonce(b"n", expires_at=10.0, now=0.0)
    finally:
        second.close()


def test_prepare_keeps_the_previous_table_within_one_boot(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    first = SharedLimits.prepare(path, slots=8, nonce_slots=8)
    horizon = first.replay_horizon()
    assert horizon == math.ceil(horizon) and 0 <= horizon - time.time() <= 1.0
    assert first.remember_nonce(b"n", expires_at=2e9, now=1e9)
    assert first.take_token("api:a", rate_per_second=0.001, burst=1, now=0.0) == 0.0
    first.close()
    second = SharedLimits.prepare(path, slots=8, nonce_slots=8)
    try:
        assert second.remember_nonce(b"n", expires_at=2e9, now=1e9) is False
        assert second.take_token("api:a", rate_per_second=0.001, burst=1, now=0.0) > 0.0
        assert second.replay_horizon() == horizon
    finally:
        second.close()


def _another_boot(path: Path) -> None:
    with path.open("r+b") as file:
        file.seek(BOOT_ID_OFFSET)
        file.write(os.urandom(16))


def _other_sizes(path: Path) -> None:
    SharedLimits.create(path, slots=8, nonce_slots=16).close()


def _corrupt_header(path: Path) -> None:
    with path.open("r+b") as file:
        file.write(b"X" * 16)


def _truncated(path: Path) -> None:
    os.truncate(path, HEADER_SIZE)


@pytest.mark.parametrize(
    "spoil",
    [_another_boot, _other_sizes, _corrupt_header, _truncated, Path.unlink],
    ids=["rebooted", "other sizes", "corrupt", "truncated", "missing"],
)
def test_prepare_makes_a_new_table_with_a_new_horizon_when_the_old_one_is_unsafe(
    tmp_path: Path, spoil: Callable[[Path], object]
) -> None:
    path = tmp_path / "limits"
    first = SharedLimits.prepare(path, slots=8, nonce_slots=8)
    assert first.remember_nonce(b"n", expires_at=2e9, now=1e9)
    horizon = first.replay_horizon()
    first.close()
    spoil(path)
    second = SharedLimits.prepare(path, slots=8, nonce_slots=8)
    try:
        assert second.replay_horizon() >= horizon
        assert second.remember_nonce(b"n", expires_at=2e9, now=1e9)
        assert path.stat().st_size == HEADER_SIZE + 8 * COUNTER_RECORD + 8 * NONCE_RECORD
    finally:
        second.close()


def test_the_whole_file_is_allocated_on_disk(tmp_path: Path) -> None:
    # A sparse file gets its pages on first write: on a full disk, SIGBUS in a worker.
    path = tmp_path / "limits"
    SharedLimits.create(path, slots=1024, nonce_slots=1 << 14).close()
    size = path.stat().st_size
    assert path.stat().st_blocks * 512 >= size


def test_garbage_records_read_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    shared = SharedLimits.create(path, slots=64, nonce_slots=64)
    try:
        # A record half overwritten, as a process killed in the middle of a write leaves it:
        # its tokens field now holds NaN.
        assert shared.take_token("api:a", rate_per_second=0.001, burst=2, now=0.0) == 0.0
        contents = path.read_bytes()
        counters = contents[HEADER_SIZE : HEADER_SIZE + 64 * COUNTER_RECORD]
        written = [
            i for i in range(64) if counters[i * COUNTER_RECORD :][:COUNTER_RECORD].strip(b"\0")
        ]
        assert len(written) == 1
        with path.open("r+b") as file:
            file.seek(HEADER_SIZE + written[0] * COUNTER_RECORD + 16)
            file.write(struct.pack("<d", math.nan))
        # Read as absent: a fresh, full bucket.
        assert shared.take_token("api:a", rate_per_second=0.001, burst=2, now=0.0) == 0.0
        assert shared.take_token("api:a", rate_per_second=0.001, burst=2, now=0.0) == 0.0
        assert shared.take_token("api:a", rate_per_second=0.001, burst=2, now=0.0) > 0.0

        # Both tables full of random bytes.
        with path.open("r+b") as file:
            file.seek(HEADER_SIZE)
            file.write(os.urandom(64 * COUNTER_RECORD + 64 * NONCE_RECORD))
        assert shared.take_token("api:b", rate_per_second=1.0, burst=1, now=5.0) == 0.0
        assert shared.take_token("api:b", rate_per_second=1.0, burst=1, now=5.0) > 0.0
        assert shared.failures("addr:x", window_seconds=10.0, now=5.0) == 0
        assert shared.record_failure("addr:x", window_seconds=10.0, now=5.0) == 1
        assert shared.consume_quota("quota:x", day=1, limit=1, seed=lambda: 0) is True
        assert shared.consume_quota("quota:x", day=1, limit=1, seed=lambda: 0) is False
        for index in range(40):
            assert shared.remember_nonce(b"%d" % index, expires_at=9.0, now=5.0) is True
            assert shared.remember_nonce(b"%d" % index, expires_at=9.0, now=5.0) is False
    finally:
        shared.close()


# -- several processes ------------------------------------------------------------------------


def run_children(target: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run target(queue, *a) in one forked process per a, and collect what each put."""
    queue: Any = FORK.Queue()
    children = [FORK.Process(target=target, args=(queue, *a)) for a in args]
    for child in children:
        child.start()
    try:
        results = [queue.get(timeout=30) for _ in children]
    finally:
        for child in children:
            child.join(timeout=10)
    assert [child.exitcode for child in children] == [0] * len(children)
    return results


def hammer_tokens(queue: Any, path: Path, start_at: float, duration: float) -> None:
    shared = SharedLimits.attach(path)
    while time.time() < start_at:
        time.sleep(0.001)
    allowed, first, last = 0, math.inf, -math.inf
    while (now := time.time()) < start_at + duration:
        first, last = min(first, now), now
        if shared.take_token("api:shared", rate_per_second=50.0, burst=10, now=now) == 0.0:
            allowed += 1
    shared.close()
    queue.put((allowed, first, last))


def test_rate_limit_holds_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    SharedLimits.create(path, slots=1024, nonce_slots=1).close()
    start_at = time.time() + 0.3
    results = run_children(hammer_tokens, [(path, start_at, 1.5)] * 4)
    allowed = sum(result[0] for result in results)
    elapsed = max(result[2] for result in results) - min(result[1] for result in results)
    expected = 10 + 50.0 * elapsed
    assert elapsed > 1.0
    assert allowed > 0
    assert abs(allowed - expected) <= 0.1 * expected, (allowed, expected)


def try_nonces(queue: Any, shared: SharedLimits | Path, start_at: float) -> None:
    # A Path: attach here; a SharedLimits: the parent's, inherited across fork().
    if isinstance(shared, Path):
        shared = SharedLimits.attach(shared)
    while time.time() < start_at:
        pass  # all start at once, in step, each nonce raced for
    accepted = sum(
        shared.remember_nonce(b"nonce-%d" % index, expires_at=2e9, now=1e9) for index in range(2000)
    )
    queue.put(accepted)


@pytest.mark.parametrize("inherited", [False, True], ids=["attached", "inherited"])
def test_each_nonce_accepted_once_across_processes(tmp_path: Path, inherited: bool) -> None:
    path = tmp_path / "limits"
    shared = SharedLimits.create(path, slots=16, nonce_slots=1 << 14)
    try:
        # Take the lock in the parent first, so that children inherit its descriptor.
        assert shared.take_token("api:p", rate_per_second=1.0, burst=1, now=0.0) == 0.0
        start_at = time.time() + 0.3
        results = run_children(try_nonces, [(shared if inherited else path, start_at)] * 4)
        assert sum(results) == 2000
        assert shared.remember_nonce(b"nonce-7", expires_at=2e9, now=1e9) is False
    finally:
        shared.close()


def hammer_forever(path: Path) -> None:
    shared = SharedLimits.attach(path)
    index = 0
    while True:
        now = time.time()
        shared.take_token(f"api:{index % 100}", rate_per_second=1e6, burst=10, now=now)
        shared.remember_nonce(b"%d" % index, expires_at=now + 0.01, now=now)
        shared.record_failure(f"addr:{index % 50}", window_seconds=1.0, now=now)
        index += 1


def test_process_killed_while_hammering_leaves_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    shared = SharedLimits.create(path, slots=1024, nonce_slots=1 << 16)
    try:
        for _ in range(3):
            child: ForkProcess = FORK.Process(target=hammer_forever, args=(path,))
            child.start()
            time.sleep(0.2)
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            child.join(timeout=5)
            assert child.exitcode == -signal.SIGKILL

            results: list[float] = []
            taker = threading.Thread(
                target=lambda: results.append(
                    shared.take_token("api:parent", rate_per_second=1e6, burst=10, now=time.time())
                ),
                daemon=True,
            )
            taker.start()
            taker.join(timeout=1.0)
            assert results == [0.0], "the killed process left the table locked"
            assert shared.remember_nonce(b"parent", expires_at=time.time() + 0.01, now=time.time())
    finally:
        shared.close()


def test_credential_epoch_changes_for_every_attached_process(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    first = SharedLimits.create(path, slots=64, nonce_slots=64)
    second = SharedLimits.attach(path)
    try:
        before = second.credential_epoch()
        first.bump_credential_epoch()
        assert second.credential_epoch() == before + 1
        assert first.credential_epoch() == before + 1
    finally:
        first.close()
        second.close()


def test_a_full_nonce_table_refuses_with_a_retryable_limit_error(tmp_path: Path) -> None:
    from vault.domain.errors import LimitExceeded

    limits = SharedLimits.create(tmp_path / "limits", slots=64, nonce_slots=4)
    try:
        for index in range(4):
            assert limits.remember_nonce(b"n%d" % index, expires_at=100.0, now=1.0)
        with pytest.raises(LimitExceeded) as refused:
            limits.remember_nonce(b"one more", expires_at=100.0, now=1.0)
        # The transport maps LimitExceeded to RESOURCE_EXHAUSTED with a RetryInfo.
        assert refused.value.reason == "REPLAY_CACHE_FULL"
        assert refused.value.retry_after > 0
    finally:
        limits.close()
