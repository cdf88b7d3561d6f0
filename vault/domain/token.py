"""What provisioning found or made in the token, as vaultctl token init|status report it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TokenStatus:
    label: str
    serial: str
    manufacturer: str
    model: str
    root_generations: list[int]
    # Generations with a single root for every purpose (tokens provisioned before roots were
    # split); versions wrapped under them keep its weaker unwrap template.
    legacy_root_generations: list[int]
    key_objects: int
    mechanisms: int
    # generation -> the store's name for it: its single root's label, or the family roots'
    # common prefix (vault.service.provisioning records them).
    root_labels: dict[int, str] = field(default_factory=dict)
    initialised_now: bool = False
    root_created_now: bool = False
    # The development SO PIN file written by this run, and an SO PIN file moved out of the
    # data directory (from, to): both said once, to the operator.
    so_pin_created: Path | None = None
    so_pin_moved: tuple[Path, Path] | None = None
