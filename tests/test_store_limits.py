"""The limits a PostgreSQL store keeps for every vault host using it (SqlSharedCounters): each
operation's rules with simulated time, two hosts (two engines, two processes) sharing one
database, the sentinel that moves the replay horizon when a crash empties the nonce table,
and the purge of expired rows."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from vault.domain.errors import StoreUnavailable
from vault.storage import Stores, open_stores, shares_limits
from vault.storage.limits_store import IDLE_SECONDS, SqlSharedCounters

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def url(postgres: Any) -> str:
    return str(postgres.new_url())


@pytest.fixture
def host_a(url: str) -> Iterator[Stores]:
    opened = open_stores(url)
    yield opened
    opened.close()


@pytest.fixture
def host_b(url: str) -> Iterator[Stores]:
    opened = open_stores(url)
    yield opened
    opened.close()


def counters(stores: Stores) -> SqlSharedCounters:
    assert stores.counters is not None
    return stores.counters


def run_sql(stores: Stores, statement: str) -> Any:
    with stores.metadata._engine.begin() as conn:
        result = conn.execute(text(statement))
        return result.all() if result.returns_rows else None


def test_only_postgresql_stores_keep_the_limits(url: str, tmp_path: Any) -> None:
    assert shares_limits(url)
    assert shares_limits("postgresql://vault@db.example/vault")
    assert not shares_limits(f"sqlite:///{tmp_path / 'vault.db'}")
    sqlite = open_stores(f"sqlite:///{tmp_path / 'vault.db'}")
    try:
        assert sqlite.counters is None
    finally:
        sqlite.close()


# -- token bucket -----------------------------------------------------------------------------


def test_burst_then_refusal_with_retry_after(host_a: Stores) -> None:
    limits = counters(host_a)

    def take(now: float) -> float:
        return limits.take_token("api:a", rate_per_second=2.0, burst=3, now=now)

    assert [take(1000.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert take(1000.0) == pytest.approx(0.5)
    assert take(1000.25) == pytest.approx(0.25)  # the refusal took nothing
    assert take(1000.5) == 0.0
    assert take(1000.5) == pytest.approx(0.5)
    # A clock running behind refills nothing, and the refill counts from the latest time.
    assert take(999.0) == pytest.approx(0.5)
    # An hour later: full again, but only burst tokens.
    assert sum(take(4600.0) == 0.0 for _ in range(10)) == 3


def test_hosts_share_one_bucket(host_a: Stores, host_b: Stores) -> None:
    def take(stores: Stores) -> bool:
        return counters(stores).take_token("rate:k", rate_per_second=0.001, burst=4, now=5.0) == 0

    assert [take(host_a), take(host_b), take(host_a), take(host_b)] == [True] * 4
    assert not take(host_a) and not take(host_b)
    # Another kind of limit on the same string is another record.
    assert counters(host_b).record_failure("rate:k", window_seconds=60.0, now=5.0) == 1


def test_threads_of_two_hosts_take_exactly_the_burst(host_a: Stores, host_b: Stores) -> None:
    allowed: list[int] = []
    start = threading.Barrier(8)

    def hammer(stores: Stores) -> None:
        limits = counters(stores)
        start.wait()
        allowed.append(
            sum(
                limits.take_token("rate:t", rate_per_second=1e-6, burst=100, now=0.0) == 0.0
                for _ in range(25)
            )
        )

    threads = [threading.Thread(target=hammer, args=(s,)) for s in [host_a, host_b] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 100 and len(allowed) == 8


# -- nonces -----------------------------------------------------------------------------------


def test_a_nonce_is_accepted_once_by_all_hosts_until_it_expires(
    host_a: Stores, host_b: Stores
) -> None:
    a, b = counters(host_a), counters(host_b)
    assert a.remember_nonce(b"AK:n1", expires_at=1300.0, now=1000.0)
    assert not b.remember_nonce(b"AK:n1", expires_at=1300.0, now=1000.0)
    assert not a.remember_nonce(b"AK:n1", expires_at=1400.0, now=1299.0)
    assert b.remember_nonce(b"AK:n2", expires_at=1300.0, now=1000.0)
    # Expired: the nonce may be used again (its timestamp would be refused by then anyway).
    assert b.remember_nonce(b"AK:n1", expires_at=1700.0, now=1300.0)
    assert not a.remember_nonce(b"AK:n1", expires_at=1700.0, now=1301.0)
    # Only a hash of the nonce is stored.
    digests = [bytes(row[0]) for row in run_sql(host_a, "SELECT digest FROM shared_nonces")]
    assert all(b"n1" not in digest and len(digest) == 16 for digest in digests)


def _remember_in_child(url: str, nonces: list[bytes], start: Any, results: Any) -> None:
    opened = open_stores(url)
    try:
        limits = counters(opened)
        start.wait(timeout=60)
        now = time.time()
        results.put([limits.remember_nonce(n, expires_at=now + 300, now=now) for n in nonces])
    finally:
        opened.close()


def test_each_nonce_is_accepted_once_across_processes(url: str, host_a: Stores) -> None:
    nonces = [f"AK:{n}".encode() for n in range(100)]
    start = FORK.Barrier(3)
    results = FORK.Queue()
    children = [
        FORK.Process(target=_remember_in_child, args=(url, nonces, start, results))
        for _ in range(3)
    ]
    for child in children:
        child.start()
    answers = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert [sum(column) for column in zip(*answers, strict=True)] == [1] * 100


def test_an_emptied_nonce_table_moves_the_replay_horizon(host_a: Stores, host_b: Stores) -> None:
    a, b = counters(host_a), counters(host_b)
    horizon = a.replay_horizon()
    assert horizon <= time.time() + 1
    assert b.replay_horizon() == horizon
    # What a crash does to an UNLOGGED table.
    run_sql(host_a, "TRUNCATE shared_nonces")
    later = time.time() + 100
    assert a.prepare(later) >= later
    assert b.replay_horizon() == a.replay_horizon() >= later
    # The horizon never moves back.
    run_sql(host_a, "TRUNCATE shared_nonces")
    assert b.prepare(later - 50) >= later


def test_purge_drops_expired_nonces_and_idle_counters(host_a: Stores) -> None:
    limits = counters(host_a)
    now = 10 * 86_400.0
    horizon = limits.replay_horizon()  # plants the sentinel
    assert limits.remember_nonce(b"old", expires_at=now - 1, now=now - 100)
    assert limits.remember_nonce(b"new", expires_at=now + 100, now=now - 100)
    limits.take_token("rate:idle", rate_per_second=1.0, burst=1, now=now - IDLE_SECONDS - 1)
    limits.take_token("rate:busy", rate_per_second=1.0, burst=1, now=now - 1)
    limits.record_failure("addr:idle", window_seconds=60.0, now=now - IDLE_SECONDS - 1)
    limits.consume_quota("quota:k", day=8, limit=5, seed=lambda: 0)
    limits.consume_quota("quota:j", day=10, limit=5, seed=lambda: 0)
    limits.purge(now)
    assert len(run_sql(host_a, "SELECT digest FROM shared_nonces")) == 2  # new, sentinel
    assert not limits.remember_nonce(b"new", expires_at=now + 100, now=now)
    kept = run_sql(host_a, "SELECT kind, key FROM shared_counters ORDER BY key")
    assert [tuple(row) for row in kept] == [("quota", "quota:j"), ("token", "rate:busy")]
    assert limits.replay_horizon() == horizon  # the sentinel survived


# -- failures and quotas ----------------------------------------------------------------------


def test_failures_count_in_a_fixed_window_across_hosts(host_a: Stores, host_b: Stores) -> None:
    a, b = counters(host_a), counters(host_b)
    assert a.failures("addr:10.0.0.1", window_seconds=60.0, now=0.0) == 0
    assert [
        (a, b, a)[i].record_failure("addr:10.0.0.1", window_seconds=60.0, now=now)
        for i, now in enumerate((0.0, 10.0, 59.9))
    ] == [1, 2, 3]
    assert b.failures("addr:10.0.0.1", window_seconds=60.0, now=30.0) == 3
    assert b.failures("addr:10.0.0.2", window_seconds=60.0, now=30.0) == 0
    assert a.failures("addr:10.0.0.1", window_seconds=60.0, now=60.0) == 0
    assert b.record_failure("addr:10.0.0.1", window_seconds=60.0, now=61.0) == 1
    assert a.record_failure("addr:10.0.0.1", window_seconds=60.0, now=120.0) == 2


class Seed:
    def __init__(self, value: int) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.value


def test_quota_starts_from_seed_and_resets_each_day(host_a: Stores, host_b: Stores) -> None:
    seed = Seed(5)
    hosts = [counters(host_a), counters(host_b)]

    def consume(day: int, i: int) -> bool:
        return hosts[i % 2].consume_quota("quota:acct", day=day, limit=7, seed=seed)

    assert [consume(20000, i) for i in range(4)] == [True, True, False, False]
    assert seed.calls == 1
    seed.value = 0
    assert [consume(20001, i) for i in range(8)] == [True] * 7 + [False]
    assert seed.calls == 2
    # A day already over its limit in the database: refused without asking again.
    seed.value = 9
    assert [consume(20002, i) for i in range(3)] == [False] * 3
    assert seed.calls == 3


# -- credential epoch -------------------------------------------------------------------------


def test_credential_epoch_moves_for_every_host(host_a: Stores, host_b: Stores) -> None:
    a, b = counters(host_a), counters(host_b)
    before = b.credential_epoch()
    assert a.credential_epoch() == before
    a.bump_credential_epoch()
    assert b.credential_epoch() == before + 1
    b.bump_credential_epoch()
    assert a.credential_epoch() == before + 2


def test_a_lost_connection_fails_one_call_and_is_replaced(postgres: Any) -> None:
    # A database of its own: ending every other session of it leaves other tests' alone.
    url = postgres.new_database_url()
    host_a, host_b = open_stores(url), open_stores(url)
    try:
        limits = counters(host_a)
        before = limits.credential_epoch()
        # What a restart or failover of the database does to every open session.
        run_sql(
            host_b,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database()",
        )
        with pytest.raises(StoreUnavailable) as caught:
            limits.credential_epoch()
        assert caught.value.metadata == {"error": "AdminShutdown"}  # the class, no message
        assert limits.credential_epoch() == before
    finally:
        host_a.close()
        host_b.close()
