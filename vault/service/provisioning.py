"""Provisioning's part in the store: the root key generations the token holds.

The token side (initialise, PINs, root keys) is vault.hsm.provision; vault.app runs both."""

from __future__ import annotations

from collections.abc import Mapping

from vault.domain.models import RootGeneration
from vault.domain.ports import MetadataStore
from vault.service.keys import Clock, utc_now


class Provisioning:
    def __init__(self, store: MetadataStore, clock: Clock = utc_now) -> None:
        self._store = store
        self._clock = clock

    def record_root_generations(self, root_labels: Mapping[int, str]) -> list[int]:
        """Add the token's root generations (generation -> the store's label for it) that the
        store does not know yet; a known one is left as it is (running provisioning again
        changes nothing). Returns the generations added, ascending."""
        recorded = {root.generation for root in self._store.list_root_generations()}
        added: list[int] = []
        for generation in sorted(root_labels):
            if generation in recorded:
                continue
            self._store.add_root_generation(
                RootGeneration(generation, root_labels[generation], self._clock())
            )
            added.append(generation)
        return added
