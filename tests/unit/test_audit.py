"""AuditLog against an in-memory store and token keys: the chain, usage counting, checkpoints
and the anchor, a rewritten log, archiving and verification."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest

from tests.support.fakes import FakeAuditStore, FakeIdentityStore, FakeSystemCrypto, StepClock
from tests.unit.world import T0
from vault.domain.audit import GENESIS_HASH, AuditEvent, AuditRecord
from vault.domain.audit_archive import ArchiveHeader
from vault.domain.errors import AuditUnavailable, DiskFull, StoreUnavailable
from vault.service.audit import ArchivedSegment, AuditLog, CheckpointPolicy


class Audit:
    def __init__(self, every_records: int = 3) -> None:
        self.identity = FakeIdentityStore()
        self.store = FakeAuditStore(self.identity)
        self.system = FakeSystemCrypto()
        self.clock = StepClock(T0)
        self.log = AuditLog(
            self.store, self.system, CheckpointPolicy(every_records, 3600.0), clock=self.clock
        )

    def event(self, n: int, credential: str = "VKCRED") -> AuditEvent:
        return AuditEvent(
            occurred_at=self.clock.now,
            request_id=f"r{n}",
            credential_id=credential,
            account="acme",
            method="/vault.v1.CryptoService/Encrypt",
            resource="accounts/acme/keys/k",
            outcome="OK",
            reason="",
            latency_us=n,
            source="10.0.0.1",
        )


@pytest.fixture
def audit() -> Audit:
    return Audit()


def test_records_form_a_hash_chain_from_genesis(audit: Audit) -> None:
    for n in range(2):
        audit.log.record(audit.event(n))
    first, second = audit.store.records
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash


def test_usage_is_counted_per_credential_day_and_method(audit: Audit) -> None:
    audit.log.record(audit.event(1), usage_method="Encrypt")
    audit.log.record(audit.event(2), usage_method="Encrypt")
    audit.log.record(audit.event(3))  # no usage method: not counted
    assert audit.identity.usage_counts == {("VKCRED", "2026-12-03", "Encrypt"): 2}
    assert audit.store.last_used == {"VKCRED": T0}


def test_a_checkpoint_is_signed_and_anchored_every_n_records(audit: Audit) -> None:
    for n in range(3):
        audit.log.record(audit.event(n))
    (checkpoint,) = audit.store.checkpoints
    assert checkpoint.head_seq == 1  # the first append had no checkpoint to compare with
    for n in range(3, 6):
        audit.log.record(audit.event(n))
    assert [c.head_seq for c in audit.store.checkpoints] == [1, 4]
    assert audit.system.anchor == (4, audit.store.records[3].hash)


@pytest.mark.parametrize(
    ("failure", "raised"),
    [(StoreUnavailable("down"), AuditUnavailable), (DiskFull(), DiskFull)],
)
def test_an_append_that_cannot_commit_fails_the_call(
    audit: Audit, failure: Exception, raised: type[Exception]
) -> None:
    audit.store.failing = failure
    with pytest.raises(raised):
        audit.log.record(audit.event(1))
    assert audit.store.records == []


def test_a_rewritten_log_stops_audited_calls_but_not_inspection(audit: Audit) -> None:
    for n in range(2):
        audit.log.record(audit.event(n))
    # Record 1 is anchored; record 2, after the anchor, is rewritten.
    second = audit.store.records[1]
    audit.store.records[1] = replace(second, event=replace(second.event, outcome="DENIED"))
    audit.clock.advance(hours=2)  # the next checkpoint falls due and checks the chain
    with pytest.raises(AuditUnavailable):
        audit.log.record(audit.event(3))
    assert audit.log.broken
    with pytest.raises(AuditUnavailable):
        audit.log.record(audit.event(4))
    audit.log.record(audit.event(5), inspection=True)
    assert audit.store.records[-1].event.request_id == "r5"


def test_an_intact_log_verifies_and_a_rewritten_one_does_not(audit: Audit) -> None:
    for n in range(5):
        audit.log.record(audit.event(n))
    assert audit.log.verify().ok
    record = audit.store.records[1]
    audit.store.records[1] = replace(record, event=replace(record.event, resource="x"))
    assert not audit.log.verify().ok


def test_archiving_moves_the_records_up_to_an_older_checkpoint(audit: Audit) -> None:
    for n in range(4):
        audit.log.record(audit.event(n))
    audit.clock.advance(days=2)
    written: list[tuple[ArchiveHeader, list[AuditRecord]]] = []

    def write(header: ArchiveHeader, records: Iterator[AuditRecord], count: int) -> None:
        written.append((header, list(records)))
        assert count == len(written[-1][1])

    result = audit.log.archive(audit.clock.now - timedelta(days=1), write)
    assert result is not None and result.deleted == 4
    ((header, records),) = written
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert audit.store.records == [] and audit.store.markers[-1].through_seq == 4
    segment = ArchivedSegment(header, lambda: iter(records))
    audit.log.record(audit.event(9))
    assert audit.log.verify([segment]).ok


def test_nothing_is_archived_without_a_checkpoint_old_enough(audit: Audit) -> None:
    for n in range(4):
        audit.log.record(audit.event(n))
    assert audit.log.archive(T0, lambda header, records, count: None) is None
    assert len(audit.store.records) == 4
