"""What every batch method's servicer does the same way: check the item count, check each
item's CRC32C fields before any key is touched, hand the items that passed to the service in
one call, and put each result or error into its slot, in order.

Authorisation, limits and the audit record per item are SecurityInterceptor's, which hands a
servicer only the items the caller may use now and fills in the slots of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from vault.domain.batches import DEFAULT_MAX_BATCH_ITEMS, check_batch_size
from vault.domain.errors import InputTooLarge, VaultError
from vault.transport.errors import status_message

_Item = TypeVar("_Item")
_Prepared = TypeVar("_Prepared")
_Result = TypeVar("_Result")
_Extra = TypeVar("_Extra")


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_items: int = DEFAULT_MAX_BATCH_ITEMS
    max_message_bytes: int = 1 << 20


def run_batch(
    method: str,
    limits: BatchLimits,
    response: Any,
    items: Sequence[_Item],
    prepare: Callable[[_Item], tuple[_Prepared, _Extra]],
    execute: Callable[[list[_Prepared]], Sequence[_Result | VaultError]],
    render: Callable[[_Result, _Extra, Any], None],
) -> Any:
    """Fill response.results with one slot per item: render(result, extra, slot.response)
    for a result, the error's google.rpc.Status in slot.error otherwise.

    prepare(item) checks what the servicer checks (CRC32C) and gives the service's item plus
    whatever render needs of the request; a VaultError it raises fills that item's slot.
    execute does the items that passed, in one service call."""
    check_batch_size(len(items), limits.max_items)
    prepared: list[_Prepared] = []
    extras: list[_Extra | VaultError] = []
    for item in items:
        try:
            service_item, known = prepare(item)
        except VaultError as error:
            extras.append(error)
            continue
        prepared.append(service_item)
        extras.append(known)
    outcomes = iter(execute(prepared))
    add = response.results.add
    for extra in extras:
        slot = add()
        if isinstance(extra, VaultError):
            slot.error.CopyFrom(status_message(extra, method))
            continue
        outcome = next(outcomes)
        if isinstance(outcome, VaultError):
            slot.error.CopyFrom(status_message(outcome, method))
        else:
            render(outcome, extra, slot.response)
    size = response.ByteSize()
    if size > limits.max_message_bytes:
        # The server could not send it: refuse the call, and say how to make one that fits.
        raise InputTooLarge(
            f"the answer to this batch would be {size} bytes, more than the server's "
            f"{limits.max_message_bytes}; send fewer items per call",
            metadata={"limit": str(limits.max_message_bytes)},
        )
    return response
