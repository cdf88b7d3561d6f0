"""ListKeys' wire bytes joined from kept parts (vault/transport/listing.py): byte for byte what
the message path serialises to, never a stale key whatever field changed, and no more parts
kept than the bound."""

from __future__ import annotations

import gc
import threading
import tracemalloc

import pytest

from tests.unit.test_key_listing import VARIANTS, key
from vault.domain.models import ListedKey, Page
from vault.gen.vault.v1 import key_service_pb2
from vault.transport.convert import key_page_to_proto
from vault.transport.listing import ListingResponses


def listed_variants() -> list[ListedKey]:
    """One ListedKey per variant of test_key_listing, each under its own id, in id order."""
    return [
        ListedKey.of(variant)._replace(key_id=f"k-{index:03d}")
        for index, variant in enumerate(VARIANTS.values())
    ]


def message_bytes(page: Page[ListedKey]) -> bytes:
    return key_page_to_proto(page).SerializeToString()


@pytest.mark.parametrize("token", ["", "azAtMDA5"])
@pytest.mark.parametrize("max_keys", [0, 3, 1000])
def test_page_bytes_are_the_message_paths(max_keys: int, token: str) -> None:
    items = listed_variants()
    responses = ListingResponses(max_keys)
    page = Page(items, token)
    first = responses.response_bytes(page)  # every part made
    assert first == message_bytes(page)
    again = responses.response_bytes(Page(list(items), token))  # kept parts, where kept
    assert again == first
    # Half kept, half new; a page of one; an empty page.
    mixed = Page([*items[::2], ListedKey.of(key("new", labels={"a": "1", "b": "2"}))], token)
    assert responses.response_bytes(mixed) == message_bytes(mixed)
    assert responses.response_bytes(Page(items[:1], "")) == message_bytes(Page(items[:1], ""))
    assert responses.response_bytes(Page([], token)) == message_bytes(Page([], token))
    parsed = key_service_pb2.ListKeysResponse.FromString(again)
    assert parsed == key_page_to_proto(page) and parsed.next_page_token == token


def test_a_long_part_and_a_long_token_encode_their_lengths() -> None:
    # Lengths of 128 bytes and more take a second varint byte; 16,384 and more a third.
    long_key = ListedKey.of(key("long", description="d" * 20_000, labels={"x": "y" * 300}))
    page = Page([long_key], "t" * 200)
    assert ListingResponses(10).response_bytes(page) == message_bytes(page)


# Each field a listing shows, changed: the key reads as another ListedKey.
CHANGES = {
    "purpose": "MAC",
    "algorithm": "HMAC_SHA256",
    "state": "REVOKED",
    "primary_version": 2,
    "create_time": 1,
    "update_time": 2,
    "token_resident": 1,
    "labels_json": '{"team": "red"}',
    "description": "changed",
    "destroy_scheduled_time": 3,
    "revocation_reason": "incident",
    "revocation_reason_code": "COMPROMISED",
    "revoke_time": 4,
    "etag": 9,
}


def test_every_field_a_listing_shows_is_covered() -> None:
    assert set(CHANGES) == set(ListedKey._fields) - {"account", "key_id"}


@pytest.mark.parametrize("field", CHANGES)
def test_a_changed_key_is_never_listed_stale(field: str) -> None:
    responses = ListingResponses(100)
    before = listed_variants()
    responses.response_bytes(Page(before, ""))
    changed = [before[0]._replace(**{field: CHANGES[field]}), *before[1:]]
    now = responses.response_bytes(Page(changed, ""))
    assert now == message_bytes(Page(changed, ""))
    if field != "etag":  # the Key message has no etag: only the part kept is another
        assert now != message_bytes(Page(before, ""))


def page_of(numbers: range) -> Page[ListedKey]:
    return Page([ListedKey.of(key(f"k-{n:05d}")) for n in numbers], "")


def test_parts_kept_stay_within_the_bound_and_start_over() -> None:
    bound = 50
    responses = ListingResponses(bound)
    first = page_of(range(100))
    assert responses.response_bytes(first) == message_bytes(first)
    assert len(responses) == bound  # the first 50 admitted, the rest served all the same
    assert all(item in responses._parts for item in first.items[:bound])
    # Full: what is kept stays while misses come, each page still made right.
    for start in range(100, 100 + 8 * bound - 50 - 10, 10):  # 50 + 340 misses
        page = page_of(range(start, start + 10))
        assert responses.response_bytes(page) == message_bytes(page)
        assert len(responses) == bound
        assert all(item in responses._parts for item in first.items[:bound])
    # Eight times the bound in misses since it filled: it starts over with the next page.
    page = page_of(range(1000, 1010))
    assert responses.response_bytes(page) == message_bytes(page)
    assert set(responses._parts) == set(page.items)
    assert len(ListingResponses(0)) == 0


def test_a_listing_of_more_keys_than_kept_keeps_hitting() -> None:
    """Paging round after round through more keys than are kept: most of what is kept
    still serves each round (evicting the oldest for each new part would miss on all)."""
    responses = ListingResponses(100)
    pages = [page_of(range(start, start + 20)) for start in range(0, 120, 20)]
    for page in pages:
        responses.response_bytes(page)
    kept = set(responses._parts)
    assert len(kept) == 100
    for _ in range(3):
        for page in pages:
            assert responses.response_bytes(page) == message_bytes(page)
            assert set(responses._parts) == kept  # so each of them hits again


def test_memory_kept_follows_the_bound_not_the_keys_listed() -> None:
    """What one kept part costs (the ListedKey as the store reads it, with fresh strings, and
    its bytes), and that listing ten times the bound keeps no more than the bound."""

    def fresh(number: int) -> ListedKey:
        # As the driver makes them: new string and integer objects per row.
        base = ListedKey.of(key(f"k-{number:06d}", labels={"team": "storage"}))
        return ListedKey._make(
            "".join(value) if isinstance(value, str) else value for value in base
        )

    bound = 2000

    def held(listed: int) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            responses = ListingResponses(bound)
            for start in range(0, listed, 1000):
                responses.response_bytes(Page([fresh(n) for n in range(start, start + 1000)], ""))
            gc.collect()
            size = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        del responses
        return size

    per_part = held(bound) / bound
    assert per_part < 1024, per_part  # measured: 0.75 KiB, 0.82 KiB with two labels
    assert held(10 * bound) < 1.25 * held(bound)


def test_threads_listing_at_once_each_get_their_page() -> None:
    """Request threads share one store of parts: while others add parts and start it over,
    every page is still made right."""
    responses = ListingResponses(30)
    pages = [page_of(range(start, start + 25)) for start in range(0, 200, 25)]
    expected = [message_bytes(page) for page in pages]
    failures: list[int] = []

    def list_pages(offset: int) -> None:
        for round_number in range(40):
            index = (offset + round_number) % len(pages)
            if responses.response_bytes(pages[index]) != expected[index]:
                failures.append(index)

    threads = [threading.Thread(target=list_pages, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(responses) <= 30
