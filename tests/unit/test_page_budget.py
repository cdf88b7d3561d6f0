"""List pages cut to the largest message (vault/transport/page_budget.py, Page.first): the
sizes it counts are protobuf's, the token resumes after the last item sent, and a page always
holds at least one item, the largest item there can be included."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.unit.test_key_listing import key
from vault.domain.backup import ParsedBundle, Skipped, SkipReason
from vault.domain.buckets import BUCKET_VERSIONS_SHOWN, Bucket, BucketPolicy
from vault.domain.models import KeyVersion, ListedKey, Page, VersionState
from vault.domain.names import BucketName, KeyName
from vault.gen.vault.v1 import backup_service_pb2, key_service_pb2, resources_pb2
from vault.service.backup import RestoreReport, VerifiedBundle
from vault.service.buckets import BucketView
from vault.service.keys import MAX_DESCRIPTION, MAX_LABEL_VALUE, MAX_LABELS
from vault.transport.backup_servicer import restore_response
from vault.transport.convert import bucket_to_proto, key_page_to_proto, key_to_proto
from vault.transport.listing import ListingResponses
from vault.transport.page_budget import (
    SMALLEST_MAX_MESSAGE_BYTES,
    TOKEN_ROOM,
    cut_repeated,
    entry_size,
    fit_response,
    fitting,
)

LONGEST_ID = "a" * 63
# The largest master-key version number a name may carry (MasterKeyVersionName).
LARGEST_VERSION = 999_999_999
MOST_LABELS = {f"l{i:02d}-{'x' * 59}": "v" * MAX_LABEL_VALUE for i in range(MAX_LABELS)}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def token_after(i: int) -> str:
    return f"after-{i}"


def large_keys(count: int) -> list[ListedKey]:
    return [
        ListedKey.of(key(f"k{i:04d}", labels=MOST_LABELS, description="d" * MAX_DESCRIPTION))
        for i in range(count)
    ]


@pytest.mark.parametrize("size", [0, 3, 127, 128, 16_383, 16_384, 70_000])
def test_entry_size_is_what_protobuf_counts(size: int) -> None:
    response = key_service_pb2.ListRevocationsResponse()
    empty = response.ByteSize()
    # A Revocation of exactly size bytes: its reason field takes 1 tag byte and its length.
    if size:
        reason_length = size - 2 - (size > 129) - (size > 16_386)
        response.revocations.add(reason="r" * reason_length)
        assert response.revocations[0].ByteSize() == size
    else:
        response.revocations.add()
    assert response.ByteSize() - empty == entry_size(size)


def test_fitting_counts_the_leading_items_within_the_budget_and_at_least_one() -> None:
    assert fitting([10, 10, 10], 30) == 3
    assert fitting([10, 10, 10], 29) == 2
    assert fitting([10, 25, 1], 30) == 1
    assert fitting([50, 1], 30) == 1  # one item even when it alone is over
    assert fitting([], 30) == 1


def test_first_resumes_after_the_last_item_kept() -> None:
    page = Page(["a", "b", "c"], "after-2-of-more", token_after)
    assert page.first(2) == Page(["a", "b"], "after-1")
    assert page.first(0) == Page(["a"], "after-0")
    assert page.first(3) is page and page.first(9) is page
    # A page whose store cannot resume mid-page is never cut.
    assert Page(["a", "b"], "").first(1) == Page(["a", "b"], "")


def test_the_largest_key_and_bucket_are_below_the_smallest_message() -> None:
    """The comment in page_budget.py: a page cut by size still holds a whole item. A Bucket
    shows at most the newest BUCKET_VERSIONS_SHOWN master-key versions and an older primary,
    however often it was rotated."""
    name = KeyName(LONGEST_ID, LONGEST_ID)
    largest_key = key_to_proto(
        key(LONGEST_ID, name=name, labels=MOST_LABELS, description="d" * MAX_DESCRIPTION)
    )
    bucket = Bucket(
        name=BucketName(LONGEST_ID, LONGEST_ID),
        labels=MOST_LABELS,
        policy=BucketPolicy(max_objects=1 << 40, max_bytes=1 << 60),
        create_time=T0,
        update_time=T0,
    )
    versions = [
        KeyVersion(
            name=name.version(number),
            state=VersionState.ENABLED,
            create_time=T0,
            root_generation=1,
            wrapped_blob=b"",
            token_label=None,
            destroy_time=T0,
        )
        for number in (1, *range(LARGEST_VERSION - BUCKET_VERSIONS_SHOWN + 1, LARGEST_VERSION + 1))
    ]
    assert len(versions) == BUCKET_VERSIONS_SHOWN + 1
    master = key(LONGEST_ID, name=name, primary_version=1)
    largest_bucket = bucket_to_proto(BucketView(bucket, master, versions, LARGEST_VERSION))
    assert 8_000 < largest_key.ByteSize() < (SMALLEST_MAX_MESSAGE_BYTES - TOKEN_ROOM) // 4
    assert largest_bucket.master_key_version_count == LARGEST_VERSION
    assert 8_000 < largest_bucket.ByteSize() < (SMALLEST_MAX_MESSAGE_BYTES - TOKEN_ROOM) // 2


@pytest.mark.parametrize("max_keys", [0, 1000])
def test_a_listing_page_too_large_ends_after_the_last_key_that_fits(max_keys: int) -> None:
    items = large_keys(40)
    page = Page(items, "after-all", token_after)
    max_bytes = SMALLEST_MAX_MESSAGE_BYTES
    responses = ListingResponses(max_keys, max_bytes)
    for _ in range(2):  # parts made, then kept
        data = responses.response_bytes(page)
        assert len(data) <= max_bytes
        parsed = key_service_pb2.ListKeysResponse.FromString(data)
        sent = len(parsed.keys)
        assert 1 < sent < len(items)
        assert list(parsed.keys) == list(key_page_to_proto(Page(items[:sent], "")).keys)
        assert parsed.next_page_token == token_after(sent - 1)
        # One key more would not have fitted.
        longer = key_page_to_proto(Page(items[: sent + 1], parsed.next_page_token))
        assert longer.ByteSize() > max_bytes - TOKEN_ROOM
    # A page that fits is sent whole, with the store's token.
    whole = responses.response_bytes(Page(items[:3], "after-all", token_after))
    assert key_service_pb2.ListKeysResponse.FromString(data).keys[:3] == (
        key_service_pb2.ListKeysResponse.FromString(whole).keys
    )
    assert key_service_pb2.ListKeysResponse.FromString(whole).next_page_token == "after-all"


def test_fit_response_cuts_a_message_and_keeps_one_that_fits() -> None:
    items = [f"k{i}" for i in range(10)]
    page = Page(items, "", token_after)
    response = key_service_pb2.ListRevocationsResponse(
        revocations=[resources_pb2.Revocation(key_version=i, reason="r" * 1000) for i in items]
    )
    fit_response(response, "revocations", page, 20_000)
    assert len(response.revocations) == 10 and response.next_page_token == ""
    fit_response(response, "revocations", page, TOKEN_ROOM + 3 * 1010)
    assert [r.key_version for r in response.revocations] == items[:3]
    assert response.next_page_token == token_after(2)
    single = key_service_pb2.ListRevocationsResponse(revocations=[response.revocations[0]])
    fit_response(single, "revocations", Page(items[:1], "", token_after), 100)
    assert len(single.revocations) == 1 and single.next_page_token == ""


def test_cut_repeated_keeps_the_leading_strings_within_the_budget() -> None:
    response = backup_service_pb2.RestoreBackupResponse(restored=["a" * 98] * 10)
    assert not cut_repeated(response, "restored", 1000)  # 10 entries of 100 bytes
    assert cut_repeated(response, "restored", 999)
    assert len(response.restored) == 9
    assert cut_repeated(response, "restored", 5) and len(response.restored) == 1


def _restore_report(restored: int, skipped: int) -> RestoreReport:
    bundle = ParsedBundle(
        header={"export_id": "e1", "create_time_us": 0, "token": {"label": "t", "serial": "1"}},
        entries=[],
        summary={"counts": dict.fromkeys(("key", "bucket", "tombstone", "skipped"), 0)},
        signed_payload=b"",
        signature=b"",
    )
    name = f"accounts/{LONGEST_ID}/keys/"
    return RestoreReport(
        VerifiedBundle(bundle, "f" * 64),
        [f"{name}r{number:05d}" for number in range(restored)],
        [
            Skipped(
                f"{name}s{number:05d}",
                SkipReason.EXISTS if number % 3 else SkipReason.TOKEN_RESIDENT,
            )
            for number in range(skipped)
        ],
        tombstones_recorded=2,
        report_file="b.bundle.restore-20260101T000000000000Z.jsonl",
    )


@pytest.mark.parametrize(("restored", "skipped"), [(2000, 2000), (10, 2000), (2000, 10)])
def test_a_restore_response_cuts_its_lists_and_keeps_the_counts_whole(
    restored: int, skipped: int
) -> None:
    report = _restore_report(restored, skipped)
    response = restore_response(report, SMALLEST_MAX_MESSAGE_BYTES)
    assert response.ByteSize() <= SMALLEST_MAX_MESSAGE_BYTES
    assert response.lists_truncated
    assert (response.restored_count, response.skipped_count) == (restored, skipped)
    assert dict(response.skipped_by_reason) == {
        "TOKEN_RESIDENT": (skipped + 2) // 3,
        "EXISTS": skipped - (skipped + 2) // 3,
    }
    assert response.tombstones_recorded == 2 and response.report_file_name
    # The first items of each list, in order; a short list is whole, and the room a short
    # list leaves goes to the other.
    kept_restored, kept_skipped = len(response.restored), len(response.skipped)
    assert list(response.restored) == report.restored[:kept_restored]
    assert [item.name for item in response.skipped] == [
        item.name for item in report.skipped[:kept_skipped]
    ]
    assert kept_restored == restored if restored <= 10 else 100 < kept_restored < restored
    assert kept_skipped == skipped if skipped <= 10 else 100 < kept_skipped < skipped
    # The lists fill the message: less than an item's room is left unused by each.
    assert response.ByteSize() > SMALLEST_MAX_MESSAGE_BYTES - 2 * 110


def test_a_restore_response_that_fits_is_whole() -> None:
    report = _restore_report(50, 50)
    response = restore_response(report, SMALLEST_MAX_MESSAGE_BYTES)
    assert not response.lists_truncated
    assert len(response.restored) == len(response.skipped) == 50
