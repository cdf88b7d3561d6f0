"""The audit log's group commit under concurrent requests, on the real SQLite store: every
call returns only once its record is committed, each record is committed exactly once in
one chain, a committing thread commits at most a few groups for others before it hands over,
and a failed commit fails exactly the calls whose records it carried."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.fakes import FakeSystemCrypto
from vault.domain.audit import AuditEvent
from vault.domain.audit_verification import verify_audit_log
from vault.domain.errors import AuditUnavailable
from vault.domain.ports import AuditHead
from vault.service import audit as audit_module
from vault.service.audit import AuditLog, CheckpointPolicy
from vault.storage import open_stores
from vault.storage.audit import SqlAuditStore

THREADS = 8
CALLS = 60


class WatchedStore(SqlAuditStore):
    """The real store, noting which thread committed which records, slowed a little so
    that calls pile up behind a commit; fail_when(ids) makes the append carrying those
    records fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(open_stores(f"sqlite:///{path}").audit._engine)
        self.lock = threading.Lock()
        self.committed: set[str] = set()
        self.appends: list[tuple[int, list[str]]] = []
        self.fail_when: str = ""
        self.thread_names: dict[int, str] = {}

    def append_audit(
        self,
        events: Sequence[AuditEvent],
        usage: Mapping[tuple[str, str, str], int],
        last_used: Mapping[str, datetime],
    ) -> AuditHead:
        ids = [event.request_id for event in events]
        time.sleep(0.002)
        if self.fail_when in ids:
            with self.lock:
                self.appends.append((threading.get_ident(), ids))
            raise AuditUnavailable("the audit log cannot be written")
        head = super().append_audit(events, usage, last_used)
        with self.lock:
            self.committed.update(ids)
            self.appends.append((threading.get_ident(), ids))
        return head


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WatchedStore]:
    opened = WatchedStore(tmp_path / "vault.db")
    try:
        yield opened
    finally:
        opened.close()


def event(request_id: str) -> AuditEvent:
    return AuditEvent(
        occurred_at=datetime.now(UTC),
        request_id=request_id,
        credential_id="VKAAAAAAAAAAAAAAAAAA",
        account="acme",
        method="/vault.v1.CryptoService/Sign",
        resource="accounts/acme/keys/k",
        outcome="OK",
        reason="",
        latency_us=1,
        source="test",
    )


def record_concurrently(log: AuditLog, store: WatchedStore) -> dict[str, str]:
    """Each thread's calls, in turn; per request id "ok" (and its record was committed when
    the call returned) or the error's class name."""
    outcomes: dict[str, str] = {}
    start = threading.Barrier(THREADS)

    def calls(thread: int) -> None:
        with store.lock:
            store.thread_names[threading.get_ident()] = f"t{thread}"
        start.wait()
        for n in range(CALLS):
            request_id = f"t{thread}-{n}"
            try:
                log.record(event(request_id), usage_method="Sign")
            except AuditUnavailable as error:
                outcomes[request_id] = type(error).__name__
                continue
            with store.lock:
                committed = request_id in store.committed
            outcomes[request_id] = "ok" if committed else "returned before its commit"

    threads = [threading.Thread(target=calls, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    return outcomes


def test_every_call_returns_after_its_own_commit_in_one_chain(store: WatchedStore) -> None:
    log = AuditLog(store, FakeSystemCrypto(), CheckpointPolicy(every_records=50))
    outcomes = record_concurrently(log, store)
    assert set(outcomes.values()) == {"ok"} and len(outcomes) == THREADS * CALLS
    records = list(store.audit_records())
    assert sorted(r.event.request_id for r in records) == sorted(outcomes)
    assert verify_audit_log(records, store.audit_checkpoints(), lambda *_: True).ok
    # Grouped: fewer commits than records, and some committed for other threads only; but
    # no thread committed more than _MAX_EXTRA_GROUPS of those after its own in a row.
    assert len(store.appends) < len(records)
    names = store.thread_names
    extra = [
        (thread, not any(rid.startswith(names[thread] + "-") for rid in ids))
        for thread, ids in store.appends
    ]
    assert any(for_others for _, for_others in extra)
    longest, run, previous = 0, 0, None
    for thread, for_others in extra:
        run = run + 1 if for_others and thread == previous else int(for_others)
        previous, longest = thread, max(longest, run)
    assert longest <= audit_module._MAX_EXTRA_GROUPS


def test_a_failed_commit_fails_exactly_the_calls_it_carried(store: WatchedStore) -> None:
    log = AuditLog(store, FakeSystemCrypto(), CheckpointPolicy(every_records=10_000))
    store.fail_when = f"t3-{CALLS // 2}"
    outcomes = record_concurrently(log, store)
    (failed,) = [ids for _, ids in store.appends if store.fail_when in ids]
    assert {rid for rid, outcome in outcomes.items() if outcome != "ok"} == set(failed)
    assert {outcomes[rid] for rid in failed} == {"AuditUnavailable"}
    stored = {r.event.request_id for r in store.audit_records()}
    assert stored == {rid for rid, outcome in outcomes.items() if outcome == "ok"}
