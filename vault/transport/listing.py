"""ListKeys responses as their wire bytes, each listed key's part kept from earlier pages.

On the wire, `repeated Key keys = 1` is, per key, the field's tag, the length of the key's
serialised Key message and those bytes; `next_page_token = 2` follows. So a page can be sent
as the concatenation of its keys' parts without building a message per key: building and
serialising the messages was about 2.2 us of the 4.3 us a listed key cost the server in one
process (`python -m bench.listing`), finding the kept parts and joining them 0.35 us.

A part is kept under the ListedKey it was made from, every field a listing shows: a key that
changed in any way (state, labels, description, times, primary version, etag) reads as another
ListedKey, misses and gets a new part, so a page never shows a stale key whatever changed it,
and nothing needs invalidating (the old part stays until the store starts over). Parts are
made by key_page_to_proto, the message path itself, so a page is byte for byte what
serialising its message gives (tests compare).
"""

from __future__ import annotations

import functools
import itertools
import threading
from typing import Final, cast

from vault.domain.models import ListedKey, Page
from vault.gen.vault.v1 import key_service_pb2
from vault.transport.convert import key_page_to_proto
from vault.transport.page_budget import fit_response

_LENGTH_DELIMITED: Final = 2
_FIELDS: Final = key_service_pb2.ListKeysResponse.DESCRIPTOR.fields_by_name


def _tag(field: str) -> bytes:
    return bytes([_FIELDS[field].number << 3 | _LENGTH_DELIMITED])


_KEYS_TAG: Final = _tag("keys")
_TOKEN_TAG: Final = _tag("next_page_token")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + _varint(len(data)) + data


@functools.lru_cache(maxsize=1 << 14)
def _key_prefix(size: int) -> bytes:
    """A listed key's tag and length; kept, as Key messages have few distinct sizes and
    encoding each again was a tenth of making a part."""
    return _KEYS_TAG + _varint(size)


# A full store starts over after this many times as many misses as it holds.
_START_OVER: Final = 8


class ListingResponses:
    """ListKeys pages as wire bytes, keeping up to max_keys listed keys' parts per process
    (0: none; every page is then built as a message and serialised).

    Lookups take no lock (a dict read is atomic); a page with misses adds its parts under a
    lock while there is room. A full store admits nothing: a page with misses is then made
    as a message, as with none kept, until eight times as many misses as the store holds
    have come since it filled, and it starts over. Evicting the oldest part for each new one
    (first in, first out, or least recently used) misses on every key of a listing that
    pages through more keys than are kept, round after round, and that churn cost more than
    keeping none (measured in one process: 5.8 against 4.4 us per key, 20,000 keys listed
    over 16,384 kept; now 2.5). Starting over after fewer misses refilled the store on every
    round of 100,000 keys (5.8-6.2 against 4.6 us; now 4.6-4.8).
    """

    def __init__(self, max_keys: int, max_message_bytes: int = 1 << 20) -> None:
        self.max_keys = max_keys
        self.max_message_bytes = max_message_bytes
        self._parts: dict[ListedKey, bytes] = {}
        self._misses_since_full = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._parts)

    def response_bytes(self, page: Page[ListedKey]) -> bytes:
        """The serialised ListKeysResponse of page: what key_page_to_proto(page) serialises
        to, or, if that is larger than max_message_bytes, of its first keys that fit and the
        token resuming after them."""
        data = self._whole_page(page)
        if len(data) <= self.max_message_bytes:
            return data
        # Rare (keys with many labels on a large page), so made the plain way.
        response = key_page_to_proto(page)
        fit_response(response, "keys", page, self.max_message_bytes)
        return response.SerializeToString()

    def _whole_page(self, page: Page[ListedKey]) -> bytes:
        if not self.max_keys:
            return key_page_to_proto(page).SerializeToString()
        kept = self._parts.get
        found = [kept(item) for item in page.items]
        if None in found:
            made = self._make(page.items, found)
            if made is None:
                return key_page_to_proto(page).SerializeToString()
            parts = [
                made[item] if part is None else part
                for item, part in zip(page.items, found, strict=True)
            ]
        else:
            parts = cast(list[bytes], found)
        if page.next_page_token:
            parts.append(_field(_TOKEN_TAG, page.next_page_token.encode()))
        return b"".join(parts)

    def _make(
        self, items: list[ListedKey], parts: list[bytes | None]
    ) -> dict[ListedKey, bytes] | None:
        """The parts of items not in parts, kept while there is room; None if none would be
        kept: the message path then makes the page for less than its parts cost."""
        missing = [item for item, part in zip(items, parts, strict=True) if part is None]
        with self._lock:
            room = self.max_keys - len(self._parts)
            if room <= 0:
                self._misses_since_full += len(missing)
                if self._misses_since_full < _START_OVER * self.max_keys:
                    return None
                self._parts.clear()
                self._misses_since_full = 0
        messages = key_page_to_proto(Page(missing, "")).keys
        serialised = [message.SerializeToString() for message in messages]
        made = {
            item: _key_prefix(len(data)) + data
            for item, data in zip(missing, serialised, strict=True)
        }
        with self._lock:
            room = self.max_keys - len(self._parts)
            if room >= len(made):
                self._parts.update(made)
            elif room > 0:
                self._parts.update(itertools.islice(made.items(), room))
                self._misses_since_full += len(made) - room
        return made
