"""The audit hash chain and its verifier, attacked the way someone holding the SQLite file would:
rows are plain column dicts, edited, deleted, inserted and renumbered, then read back in seq
order as the store would return them. Checkpoints are signed with a real Ed25519 key."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vault.domain.audit import (
    GENESIS_HASH,
    AuditEvent,
    AuditOutcome,
    AuditRecord,
    Checkpoint,
    chain,
    chain_break,
    checkpoint_payload,
    record_hash,
)
from vault.domain.audit_verification import (
    MAX_FINDINGS,
    AuditVerification,
    FindingKind,
    verify_audit_log,
)

Row = dict[str, Any]

KEY_LABEL = "audit-signing-1"
COUNT = 50
CHECKPOINT_SEQS = (10, 20, 30, 40)
LAST_CHECKPOINT = CHECKPOINT_SEQS[-1]
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EVENT_FIELDS = tuple(field.name for field in dataclasses.fields(AuditEvent))
TEXT_FIELDS = tuple(
    field.name for field in dataclasses.fields(AuditEvent) if field.type in ("str", str)
)


class Signer:
    """The HSM audit key, played by an Ed25519 key; only its label travels with checkpoints."""

    def __init__(self) -> None:
        self._keys = {KEY_LABEL: Ed25519PrivateKey.generate()}

    def checkpoint(self, head: AuditRecord) -> Checkpoint:
        signed_at = head.event.occurred_at + timedelta(seconds=1)
        payload = checkpoint_payload(head.seq, head.hash, signed_at)
        signature = self._keys[KEY_LABEL].sign(payload)
        return Checkpoint(head.seq, head.hash, signed_at, signature, KEY_LABEL)

    def verify(self, payload: bytes, signature: bytes, key_label: str) -> bool:
        key = self._keys.get(key_label)
        if key is None:
            return False
        try:
            key.public_key().verify(signature, payload)
        except InvalidSignature:
            return False
        return True


def make_event(index: int) -> AuditEvent:
    denied = index % 7 == 3
    return AuditEvent(
        occurred_at=START + timedelta(seconds=index, microseconds=index * 37),
        request_id=f"req-{index:04d}",
        credential_id=f"AK{index % 5:04d}" if index % 11 else "",
        account=f"acct-{index % 3}" if index % 11 else "",
        method="/vault.v1.CryptoService/Sign" if index % 2 else "/vault.v1.KeyService/GetKey",
        resource=f"keys/key-{index % 4}",
        outcome="PERMISSION_DENIED" if denied else AuditOutcome.OK,
        reason="KEY_DISABLED" if denied else "",
        latency_us=1000 + index * 13,
        source=f"ipv4:127.0.0.1:{5000 + index}",
    )


def to_row(record: AuditRecord) -> Row:
    row: Row = {"seq": record.seq}
    for name in EVENT_FIELDS:
        row[name] = getattr(record.event, name)
    # Stored as the database keeps it: integer microseconds.
    row["occurred_at"] = (record.event.occurred_at - EPOCH) // timedelta(microseconds=1)
    row["prev_hash"] = record.prev_hash
    row["hash"] = record.hash
    return row


def event_of(row: Row) -> AuditEvent:
    values = {name: row[name] for name in EVENT_FIELDS}
    values["occurred_at"] = EPOCH + timedelta(microseconds=row["occurred_at"])
    return AuditEvent(**values)


def read_back(rows: Iterable[Row]) -> Iterator[AuditRecord]:
    """SELECT ... ORDER BY seq: rows sharing a seq keep their insertion (rowid) order."""
    for row in sorted(rows, key=lambda row: row["seq"]):
        yield AuditRecord(row["seq"], event_of(row), row["prev_hash"], row["hash"])


class Log:
    def __init__(self, count: int = COUNT, checkpoint_seqs: Sequence[int] = CHECKPOINT_SEQS):
        self.signer = Signer()
        records = chain(GENESIS_HASH, 1, [make_event(index) for index in range(1, count + 1)])
        self.rows = [to_row(record) for record in records]
        self.checkpoints = [self.signer.checkpoint(records[seq - 1]) for seq in checkpoint_seqs]

    def row(self, seq: int) -> Row:
        (found,) = [row for row in self.rows if row["seq"] == seq]
        return found

    def verify(self) -> AuditVerification:
        return verify_audit_log(read_back(self.rows), self.checkpoints, self.signer.verify)


@pytest.fixture
def log() -> Log:
    return Log()


def findings(result: AuditVerification) -> list[tuple[FindingKind, int]]:
    return [(finding.kind, finding.seq) for finding in result.findings]


def forge(seq: int, prev_hash: bytes, index: int = 999) -> Row:
    """A row with a hash the attacker computed: the algorithm is public, only checkpoints
    are keyed."""
    event = dataclasses.replace(make_event(index), outcome="OK", reason="")
    return to_row(AuditRecord(seq, event, prev_hash, record_hash(seq, prev_hash, event)))


def rehash(row: Row) -> None:
    row["hash"] = record_hash(row["seq"], row["prev_hash"], event_of(row))


def recompute_from(rows: list[Row], seq: int) -> None:
    """Rebuild every link and hash from seq on, as an attacker covering an edit would."""
    ordered = sorted(rows, key=lambda row: row["seq"])
    prev_hash = GENESIS_HASH
    for row in ordered:
        if row["seq"] >= seq:
            row["prev_hash"] = prev_hash
            rehash(row)
        prev_hash = row["hash"]


def swap_seqs(log: Log, first: int, second: int) -> None:
    one, other = log.row(first), log.row(second)
    one["seq"], other["seq"] = second, first


# Whether the chain leads from an anchored head to a new one (checked before signing)


def breaks_from(log: Log, start: int, head: int) -> tuple[int, str] | None:
    records = list(read_back(log.rows))
    start_hash = GENESIS_HASH if start == 0 else log.row(start)["hash"]
    head_hash = log.row(head)["hash"]
    after = (record for record in records if record.seq > start)
    return chain_break(start, start_hash, after, head, head_hash)


def test_an_intact_chain_extends_the_anchor(log: Log) -> None:
    assert breaks_from(log, 0, COUNT) is None
    assert breaks_from(log, 20, 35) is None
    assert breaks_from(log, 20, 20) is None


def test_a_recomputed_chain_does_not_extend_the_anchor(log: Log) -> None:
    anchored = log.row(30)["hash"]
    log.row(25)["outcome"] = "PERMISSION_DENIED"
    recompute_from(log.rows, 25)
    records = [record for record in read_back(log.rows) if record.seq > 30]
    # Chained from the old anchor, the first record after it no longer links.
    found = chain_break(30, anchored, records, COUNT, log.row(COUNT)["hash"])
    assert found is not None and found[0] == 31


@pytest.mark.parametrize(
    ("tamper", "at"),
    [
        (lambda log: log.rows.remove(log.row(33)), 33),
        (lambda log: log.row(33).update(outcome="OK!"), 33),
        (lambda log: log.row(34).update(prev_hash=bytes(32)), 34),
        (lambda log: log.rows.remove(log.row(COUNT)), COUNT),
    ],
)
def test_a_broken_link_after_the_anchor_is_located(log: Log, tamper: Any, at: int) -> None:
    head_hash = log.row(COUNT)["hash"]
    tamper(log)
    records = [record for record in read_back(log.rows) if record.seq > 30]
    found = chain_break(30, log.row(30)["hash"], records, COUNT, head_hash)
    assert found is not None and found[0] == at, found


def test_a_head_other_than_the_stored_one_is_refused(log: Log) -> None:
    records = [record for record in read_back(log.rows) if record.seq > 30]
    found = chain_break(30, log.row(30)["hash"], records, COUNT, bytes(32))
    assert found == (COUNT, f"record {COUNT} is not the head to be signed")


# The clean log and the chain itself


def test_clean_log_has_no_findings(log: Log) -> None:
    result = log.verify()
    assert result.ok
    assert result.first is None
    assert result.findings == ()
    assert (result.records_checked, result.checkpoints_checked, result.last_seq) == (
        COUNT,
        len(CHECKPOINT_SEQS),
        COUNT,
    )


def test_empty_log_without_checkpoints_is_clean() -> None:
    result = verify_audit_log([], [], Signer().verify)
    assert result.ok
    assert (result.records_checked, result.last_seq) == (0, 0)


def test_chain_links_records_from_genesis() -> None:
    events = [make_event(index) for index in range(1, 6)]
    records = chain(GENESIS_HASH, 1, events)
    assert [record.seq for record in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS_HASH == bytes(32)
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
    for record in records:
        assert len(record.hash) == 32
        assert record.hash == record_hash(record.seq, record.prev_hash, record.event)


def test_chain_continues_from_a_head() -> None:
    events = [make_event(index) for index in range(1, 21)]
    whole = chain(GENESIS_HASH, 1, events)
    first = chain(GENESIS_HASH, 1, events[:12])
    rest = chain(first[-1].hash, 13, events[12:])
    assert first + rest == whole


def test_chain_refuses_seq_below_one() -> None:
    with pytest.raises(ValueError):
        chain(GENESIS_HASH, 0, [make_event(1)])


def changed(name: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, int):
        return value + 1
    return value + "x"


@pytest.mark.parametrize("name", EVENT_FIELDS)
def test_record_hash_covers_every_event_field(name: str) -> None:
    event = make_event(3)
    other = dataclasses.replace(event, **{name: changed(name, getattr(event, name))})
    assert record_hash(3, GENESIS_HASH, other) != record_hash(3, GENESIS_HASH, event)


def test_record_hash_covers_seq_and_prev_hash() -> None:
    event = make_event(3)
    base = record_hash(3, GENESIS_HASH, event)
    assert record_hash(4, GENESIS_HASH, event) != base
    assert record_hash(3, b"\x01" + bytes(31), event) != base


@pytest.mark.parametrize(("left", "right"), list(itertools.pairwise(TEXT_FIELDS)))
def test_record_hash_keeps_adjacent_fields_apart(left: str, right: str) -> None:
    event = make_event(3)
    one = dataclasses.replace(event, **{left: "ab", right: "c"})
    other = dataclasses.replace(event, **{left: "a", right: "bc"})
    assert record_hash(3, GENESIS_HASH, one) != record_hash(3, GENESIS_HASH, other)


def test_record_hash_depends_on_the_instant_not_its_zone() -> None:
    event = make_event(3)
    elsewhere = event.occurred_at.astimezone(timezone(timedelta(hours=5, minutes=30)))
    moved = dataclasses.replace(event, occurred_at=elsewhere)
    assert record_hash(3, GENESIS_HASH, moved) == record_hash(3, GENESIS_HASH, event)
    naive = dataclasses.replace(event, occurred_at=event.occurred_at.replace(tzinfo=None))
    with pytest.raises(ValueError):
        record_hash(3, GENESIS_HASH, naive)


def test_checkpoint_payload_binds_every_field() -> None:
    head = bytes(range(32))
    base = checkpoint_payload(10, head, START)
    assert checkpoint_payload(11, head, START) != base
    assert checkpoint_payload(10, bytes(32), START) != base
    assert checkpoint_payload(10, head, START + timedelta(microseconds=1)) != base


def test_outcome_names_are_grpc_status_names() -> None:
    assert AuditOutcome.OK == "OK"
    assert AuditOutcome.is_known("PERMISSION_DENIED")
    assert not AuditOutcome.is_known("permission_denied")


# Tampering with records


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("outcome", "INTERNAL"),
        ("reason", "KEY_DISABLED"),
        ("credential_id", "AK9999"),
        ("resource", "keys/other"),
        ("latency_us", 1),
        ("occurred_at", 0),
    ],
)
def test_edited_column_is_modified(log: Log, name: str, value: Any) -> None:
    log.row(23)[name] = value
    assert findings(log.verify()) == [(FindingKind.MODIFIED, 23)]


def test_edited_first_row_is_modified(log: Log) -> None:
    log.row(1)["outcome"] = "INTERNAL"
    assert findings(log.verify()) == [(FindingKind.MODIFIED, 1)]


def test_edit_with_its_own_hash_recomputed_is_modified(log: Log) -> None:
    row = log.row(23)
    row["outcome"] = "INTERNAL"
    rehash(row)
    assert findings(log.verify()) == [(FindingKind.MODIFIED, 23)]


def test_edited_prev_hash_is_modified(log: Log) -> None:
    log.row(23)["prev_hash"] = bytes(32)
    assert findings(log.verify()) == [(FindingKind.MODIFIED, 23)]


@pytest.mark.parametrize("deleted", [[23], [23, 24, 25], [1], [2, 3], [22, 26]])
def test_deleted_middle_rows(log: Log, deleted: list[int]) -> None:
    log.rows = [row for row in log.rows if row["seq"] not in deleted]
    result = log.verify()
    expected = [(FindingKind.DELETED, seq) for seq in deleted if seq - 1 not in deleted]
    assert findings(result) == expected
    assert "missing" in result.findings[0].detail


def test_deleted_checkpoint_head_is_deleted_then_mismatched(log: Log) -> None:
    log.rows = [row for row in log.rows if row["seq"] != 30]
    assert findings(log.verify()) == [
        (FindingKind.DELETED, 30),
        (FindingKind.CHECKPOINT_MISMATCH, 30),
    ]


def test_deleted_row_with_later_rows_renumbered(log: Log) -> None:
    log.rows = [row for row in log.rows if row["seq"] != 23]
    for row in log.rows:
        if row["seq"] > 23:
            row["seq"] -= 1
    result = log.verify()
    assert result.first is not None
    assert (result.first.kind, result.first.seq) == (FindingKind.DELETED, 23)
    # The renumbering itself is not reported row by row; the checkpoints now disagree.
    assert findings(result)[1:] == [
        (FindingKind.CHECKPOINT_MISMATCH, 30),
        (FindingKind.CHECKPOINT_MISMATCH, 40),
    ]


def test_deleted_tail_after_last_checkpoint_is_not_detectable(log: Log) -> None:
    log.rows = [row for row in log.rows if row["seq"] <= 44]
    result = log.verify()
    assert result.ok
    assert result.last_seq == 44


def test_deleted_tail_covered_by_checkpoint_is_truncated(log: Log) -> None:
    log.rows = [row for row in log.rows if row["seq"] < 38]
    result = log.verify()
    assert findings(result) == [(FindingKind.TRUNCATED, 38)]
    assert result.last_seq == 37


def test_all_rows_deleted_is_truncated(log: Log) -> None:
    log.rows = []
    assert findings(log.verify()) == [(FindingKind.TRUNCATED, 1)]


def test_inserted_row_with_later_rows_renumbered(log: Log) -> None:
    for row in log.rows:
        if row["seq"] > 23:
            row["seq"] += 1
    log.rows.append(forge(24, log.row(23)["hash"]))
    result = log.verify()
    assert result.first is not None
    assert (result.first.kind, result.first.seq) == (FindingKind.INSERTED, 24)
    assert findings(result)[1:] == [
        (FindingKind.CHECKPOINT_MISMATCH, 30),
        (FindingKind.CHECKPOINT_MISMATCH, 40),
    ]


@pytest.mark.parametrize("before_original", [False, True])
def test_inserted_row_sharing_a_seq(log: Log, before_original: bool) -> None:
    forged = forge(24, log.row(23)["hash"])
    index = log.rows.index(log.row(24))
    log.rows.insert(index if before_original else index + 1, forged)
    assert findings(log.verify()) == [(FindingKind.INSERTED, 24)]


def test_inserted_row_linked_to_nothing(log: Log) -> None:
    log.rows.insert(23, forge(24, b"\x07" * 32))
    assert findings(log.verify()) == [(FindingKind.INSERTED, 24)]


def test_inserted_row_with_fractional_seq(log: Log) -> None:
    forged = forge(24, log.row(23)["hash"])
    forged["seq"] = 23.5
    log.rows.append(forged)
    result = log.verify()
    assert findings(result) == [(FindingKind.INSERTED, 23)]
    assert "23.5" in result.findings[0].detail


def test_appended_row_after_last_checkpoint_is_not_detectable(log: Log) -> None:
    log.rows.append(forge(COUNT + 1, log.row(COUNT)["hash"]))
    assert log.verify().ok


@pytest.mark.parametrize(("first", "second"), [(23, 24), (1, 2), (49, 50)])
def test_swapped_adjacent_seqs_are_reordered(log: Log, first: int, second: int) -> None:
    swap_seqs(log, first, second)
    assert findings(log.verify()) == [(FindingKind.REORDERED, first)]


@pytest.mark.parametrize(("first", "second"), [(23, 27), (5, 45), (1, 50), (21, 29)])
def test_swapped_distant_rows_are_reordered(log: Log, first: int, second: int) -> None:
    swap_seqs(log, first, second)
    assert findings(log.verify()) == [(FindingKind.REORDERED, first)]


@pytest.mark.parametrize("distance", [300, 1500])
def test_rows_swapped_beyond_the_look_ahead_are_found_without_a_cascade(distance: int) -> None:
    log = Log(count=2000, checkpoint_seqs=())
    swap_seqs(log, 200, 200 + distance)
    result = log.verify()
    assert result.first is not None
    assert result.first.seq == 200
    assert len(result.findings) <= 2


def test_swapped_contents_are_reordered(log: Log) -> None:
    one, other = log.row(23), log.row(26)
    for name in (*EVENT_FIELDS, "prev_hash", "hash"):
        one[name], other[name] = other[name], one[name]
    assert findings(log.verify()) == [(FindingKind.REORDERED, 23)]


def test_swap_over_a_checkpoint_head_is_reordered_first(log: Log) -> None:
    swap_seqs(log, 28, 30)
    assert findings(log.verify()) == [
        (FindingKind.REORDERED, 28),
        (FindingKind.CHECKPOINT_MISMATCH, 30),
    ]


# Recomputed chains and checkpoints


def test_recomputed_chain_is_caught_by_covering_checkpoints(log: Log) -> None:
    log.row(23)["outcome"] = "INTERNAL"
    recompute_from(log.rows, 23)
    assert findings(log.verify()) == [
        (FindingKind.CHECKPOINT_MISMATCH, 30),
        (FindingKind.CHECKPOINT_MISMATCH, 40),
    ]


def test_recomputed_chain_after_last_checkpoint_is_not_detectable(log: Log) -> None:
    log.row(LAST_CHECKPOINT + 3)["outcome"] = "INTERNAL"
    recompute_from(log.rows, LAST_CHECKPOINT + 3)
    assert log.verify().ok


def test_bad_checkpoint_signature(log: Log) -> None:
    checkpoint = log.checkpoints[1]
    broken = bytes([checkpoint.signature[0] ^ 1]) + checkpoint.signature[1:]
    log.checkpoints[1] = dataclasses.replace(checkpoint, signature=broken)
    result = log.verify()
    assert findings(result) == [(FindingKind.BAD_SIGNATURE, 20)]
    assert KEY_LABEL in result.findings[0].detail


def test_checkpoint_rewritten_to_a_recomputed_chain_has_a_bad_signature(log: Log) -> None:
    log.row(23)["outcome"] = "INTERNAL"
    recompute_from(log.rows, 23)
    log.checkpoints = [
        dataclasses.replace(checkpoint, head_hash=log.row(checkpoint.head_seq)["hash"])
        for checkpoint in log.checkpoints
    ]
    assert findings(log.verify()) == [
        (FindingKind.BAD_SIGNATURE, 30),
        (FindingKind.BAD_SIGNATURE, 40),
    ]


def test_checkpoint_signed_by_another_key_has_a_bad_signature(log: Log) -> None:
    log.checkpoints[0] = dataclasses.replace(log.checkpoints[0], key_label="unknown-key")
    assert findings(log.verify()) == [(FindingKind.BAD_SIGNATURE, 10)]


def test_badly_signed_checkpoint_beyond_the_log_is_not_truncation(log: Log) -> None:
    log.rows = [row for row in log.rows if row["seq"] < 38]
    checkpoint = log.checkpoints[-1]
    log.checkpoints[-1] = dataclasses.replace(checkpoint, signature=bytes(64))
    assert findings(log.verify()) == [(FindingKind.BAD_SIGNATURE, 40)]


# Robustness


def test_findings_are_capped_in_stored_order() -> None:
    log = Log(count=3 * MAX_FINDINGS, checkpoint_seqs=())
    for row in log.rows:
        row["outcome"] = "CANCELLED" if row["outcome"] == "OK" else "OK"
    result = log.verify()
    assert findings(result) == [(FindingKind.MODIFIED, seq) for seq in range(1, MAX_FINDINGS + 1)]
    assert result.records_checked == 3 * MAX_FINDINGS


def test_records_are_streamed_once() -> None:
    log = Log(count=3000, checkpoint_seqs=(1000, 2999))
    pulled = 0

    def stream() -> Iterator[AuditRecord]:
        nonlocal pulled
        for record in read_back(log.rows):
            pulled += 1
            yield record

    result = verify_audit_log(stream(), log.checkpoints, log.signer.verify)
    assert result.ok
    assert (pulled, result.records_checked, result.last_seq) == (3000, 3000, 3000)


def test_null_and_mistyped_columns_do_not_crash(log: Log) -> None:
    log.row(23)["outcome"] = None
    log.row(30)["hash"] = None
    log.row(35)["prev_hash"] = "not bytes"
    result = log.verify()
    assert result.first is not None
    assert (result.first.kind, result.first.seq) == (FindingKind.MODIFIED, 23)
    assert not result.ok


def random_tamper(log: Log, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 3)):
        if not log.rows:
            return
        victim = rng.choice(log.rows)
        action = rng.randrange(6)
        if action == 0:
            name = rng.choice(EVENT_FIELDS)
            victim[name] = changed(name, victim[name])
        elif action == 1:
            log.rows.remove(victim)
        elif action == 2:
            other = rng.choice(log.rows)
            victim["seq"], other["seq"] = other["seq"], victim["seq"]
        elif action == 3:
            anchor = rng.choice(log.rows)
            log.rows.insert(rng.randrange(len(log.rows) + 1), forge(victim["seq"], anchor["hash"]))
        elif action == 4:
            for row in log.rows:
                if row["seq"] > victim["seq"]:
                    row["seq"] += rng.choice((-1, 1))
        else:
            victim["prev_hash"] = rng.choice(log.rows)["hash"]
            if rng.random() < 0.5:
                rehash(victim)


def covered_rows(rows: Iterable[Row]) -> list[tuple[Any, ...]]:
    ordered = sorted(rows, key=lambda row: row["seq"])
    return [tuple(row.values()) for row in ordered if row["seq"] <= LAST_CHECKPOINT]


@pytest.mark.parametrize("seed", range(300))
def test_random_tampering_under_a_checkpoint_is_found(seed: int) -> None:
    log = Log()
    clean = covered_rows(log.rows)
    rng = random.Random(seed)
    random_tamper(log, rng)
    result = log.verify()
    assert all(isinstance(finding.kind, FindingKind) for finding in result.findings)
    if covered_rows(log.rows) != clean:
        assert not result.ok, findings(result)
