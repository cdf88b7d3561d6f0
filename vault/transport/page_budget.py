"""List pages cut to what one gRPC message may carry.

A page holds up to the page_size asked for (1,000 items at most), but the server sends no
message larger than server.max_message_bytes (1 MiB by default): 1,000 keys with 64 labels
each would be about 10 MB, and the call would fail. Such a page ends early, after the last
item that fits, and its token resumes right after that item (Page.first, a token the store
makes). Only a response that is too large is measured item by item, so a page that fits costs
one size check.

A response that is not a List page but carries one repeated field per outcome (RestoreBackup's
restored and skipped) is cut the same way, by cut_repeated, without a token: it states the
whole counts beside the lists, and the full lists go elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from vault.domain.models import Page

# Room kept for the page token and the response's own framing. A token is the base64 of at
# most 256 characters the store orders by (decode_page_token refuses longer ones), at most 4
# bytes each in UTF-8: 1,368 bytes, plus its tag and length.
TOKEN_ROOM: Final = 2048

# The largest items a List sends are a Key with 64 labels of 63-character keys and values and
# a 1,024-character description, about 10 KB, and a Bucket with as many labels and the most
# master-key versions it shows (the newest BUCKET_VERSIONS_SHOWN, 100, and an older primary,
# up to about 200 bytes each), about 29 KB (tests/unit/test_page_budget.py measures both):
# below the smallest max_message_bytes (65,536, vault/config.py) less TOKEN_ROOM. So a page
# cut by size still holds at least one whole item and a listing always moves on, and no Get
# answers more than one message can carry. (A Bucket listed every version before: rotated
# some 350 times it no longer fit the smallest setting. ListBucketMasterKeyVersions now pages
# through them.)
# ListBackups' records carry their export's selection: up to 1,000 names of 256 characters
# (vault/service/backup.py), about 260 KB, which fits the default but not a setting below it.
SMALLEST_MAX_MESSAGE_BYTES: Final = 65_536


def entry_size(size: int) -> int:
    """Bytes a repeated message field's entry of size bytes takes: a one-byte tag (field
    numbers below 16), its length as a varint, and the message."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def fitting(sizes: Iterable[int], budget: int) -> int:
    """How many leading items, of these sizes, fit in budget bytes together; at least one."""
    total = 0
    count = 0
    for size in sizes:
        total += size
        if total > budget:
            break
        count += 1
    return max(1, count)


def fit_response(response: Any, field: str, page: Page[Any], max_bytes: int) -> None:
    """Cut response, made from page with its items in its repeated field `field`, to the items
    that fit in max_bytes with the token resuming after the last of them."""
    if response.ByteSize() <= max_bytes:
        return
    entries = getattr(response, field)
    sizes = (entry_size(entry.ByteSize()) for entry in entries)
    cut = page.first(fitting(sizes, max_bytes - TOKEN_ROOM))
    if cut is page:
        return
    del entries[len(cut.items) :]
    response.next_page_token = cut.next_page_token


def cut_repeated(message: Any, field: str, budget: int) -> bool:
    """Drop the trailing entries of message's repeated field `field` (messages or strings)
    beyond the leading ones that take budget bytes together (at least one is kept); True if
    any were dropped."""
    entries = getattr(message, field)
    sizes = [
        entry_size(len(entry.encode()) if isinstance(entry, str) else entry.ByteSize())
        for entry in entries
    ]
    if sum(sizes) <= budget:
        return False
    del entries[fitting(sizes, budget) :]
    return True
