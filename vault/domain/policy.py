"""Limits the use cases enforce, as plain values: vault.app fills them from the settings, so
the service layer never sees the settings loader (DESIGN.md section 7)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    # Shortest waiting period ScheduleKeyDestruction accepts, and the one it uses when the
    # request gives none.
    min_destroy_waiting_seconds: int
    default_destroy_waiting_seconds: int
    # Largest Encrypt plaintext and MAC input; a ciphertext may be 64 bytes more.
    max_plaintext_bytes: int

    @property
    def min_destroy_waiting(self) -> timedelta:
        return timedelta(seconds=self.min_destroy_waiting_seconds)

    @property
    def default_destroy_waiting(self) -> timedelta:
        return timedelta(seconds=self.default_destroy_waiting_seconds)
