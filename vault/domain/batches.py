"""Batch calls: many items of one operation in one request, each answered on its own.

A batch method is the unary method it repeats, item by item: each item is authorised with
that method's access level on the key it names, limited and audited as one call of it, and
gets that method's result or error in its slot. Only authentication and the transport are
shared by the items of a call.
"""

from __future__ import annotations

from typing import Final

from vault.domain.errors import NoItems, TooManyItems

DEFAULT_MAX_BATCH_ITEMS: Final = 1000

# Batch method -> the unary method each of its items is (authorisation, limits, usage).
BATCH_METHODS: Final[dict[str, str]] = {
    "BatchEncrypt": "Encrypt",
    "BatchDecrypt": "Decrypt",
    "BatchSign": "Sign",
    "BatchVerify": "Verify",
    "BatchGenerateDataKey": "GenerateDataKey",
    "BatchDecryptBucketKey": "DecryptBucketKey",
}


def check_batch_size(count: int, limit: int) -> None:
    """TooManyItems past limit, NoItems for none."""
    if count > limit:
        raise TooManyItems(
            f"a batch holds at most {limit} items; split it into several calls",
            metadata={"items": str(count), "limit": str(limit)},
        )
    if count == 0:
        raise NoItems("a batch needs at least one item")
