"""Custody of the SO PIN, which only `vaultctl token init` uses and the server never needs.

With the SO PIN and the user PIN together one can create a trusted key of known value as SO
and wrap the roots under it as user: every key becomes readable. So the SO PIN is never kept
in the data directory, beside the user PIN and the token. It comes, in this order, from
VAULT_HSM__SO_PIN (or hsm.so_pin), from hsm.so_pin_file (a file the operator names, outside
the data directory), or from a hidden prompt on a terminal. Without any of these (`make run`,
CI, tests), a development SO PIN is generated once into a file under $XDG_STATE_HOME (default
~/.local/state), outside the data directory, and its path is printed when it is created.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vault.config import Settings

# Where token init kept the SO PIN before it was moved out of the data directory.
LEGACY_FILE = Path("secrets") / "so.pin"


class SoPinCustodyError(RuntimeError):
    """The SO PIN would be kept, or is kept, where it must not be."""


@dataclass(frozen=True, slots=True)
class SoPin:
    value: str = field(repr=False)
    source: str
    created: Path | None = None  # the development file, when this call wrote it


def development_file(settings: Settings) -> Path:
    """The development SO PIN of this data directory and token: outside the data directory,
    one per data directory (a short hash of its path tells them apart)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    tag = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9._-]", "_", settings.hsm.token_label)
    return Path(state).resolve() / "vault" / f"{label}-{tag}.so.pin"


def files_in_data_dir(settings: Settings) -> list[Path]:
    """SO PIN files inside the data directory: the one older versions wrote there, and
    hsm.so_pin_file if the operator put it there."""
    found = []
    legacy = settings.data_dir / LEGACY_FILE
    if legacy.exists():
        found.append(legacy)
    named = settings.hsm.so_pin_file
    if (
        named is not None
        and _inside(named, settings.data_dir)
        and named.exists()
        and named.resolve() != legacy.resolve()
    ):
        found.append(named)
    return found


def refuse_to_serve_beside(settings: Settings) -> None:
    """The server's start-up check: it never reads the SO PIN, and will not run beside it."""
    found = files_in_data_dir(settings)
    if found:
        raise SoPinCustodyError(
            f"an SO PIN file is inside the data directory ({found[0]}); not serving: run "
            "`vaultctl token init` to move it out, or move it yourself"
        )


def move_out_of_data_dir(settings: Settings) -> tuple[Path, Path] | None:
    """Move the SO PIN an older `token init` left in <data_dir>/secrets/so.pin to the
    development file; returns (from, to) when it did."""
    legacy = settings.data_dir / LEGACY_FILE
    if not legacy.exists():
        return None
    value = legacy.read_text(encoding="utf-8").strip()
    target = development_file(settings)
    _refuse_inside(target, settings, "the development SO PIN file")
    if target.exists():
        if target.read_text(encoding="utf-8").strip() != value:
            raise SoPinCustodyError(
                f"{legacy} and {target} hold different SO PINs; keep the right one outside "
                "the data directory and delete the other"
            )
    else:
        _write_private(target, value)
    legacy.unlink()
    return legacy, target


def obtain(settings: Settings, prompt: Callable[[], str] | None) -> SoPin:
    """The SO PIN for initialising a token. prompt: asks the person at the terminal (None
    when there is none)."""
    if settings.hsm.so_pin is not None:
        return SoPin(settings.hsm.so_pin.get_secret_value(), "environment or config file")
    named = settings.hsm.so_pin_file
    if named is not None:
        _refuse_inside(named, settings, "hsm.so_pin_file")
        if not named.exists():
            raise SoPinCustodyError(f"hsm.so_pin_file {named} does not exist")
        return SoPin(named.read_text(encoding="utf-8").strip(), f"file {named}")
    if prompt is not None:
        return SoPin(prompt(), "prompt")
    path = development_file(settings)
    _refuse_inside(path, settings, "the development SO PIN file")
    if path.exists():
        return SoPin(path.read_text(encoding="utf-8").strip(), f"development file {path}")
    value = secrets.token_urlsafe(24)
    _write_private(path, value)
    return SoPin(value, f"development file {path}", created=path)


def describe_source(settings: Settings) -> str:
    """Where token init takes the SO PIN from, never the PIN (for `token status`)."""
    if settings.hsm.so_pin is not None:
        return "environment (VAULT_HSM__SO_PIN) or config file"
    if settings.hsm.so_pin_file is not None:
        return f"file {settings.hsm.so_pin_file}"
    return f"prompt on a terminal, else development file {development_file(settings)}"


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _refuse_inside(path: Path, settings: Settings, what: str) -> None:
    if _inside(path, settings.data_dir):
        raise SoPinCustodyError(
            f"{what} ({path}) is inside the data directory; the SO PIN must be kept elsewhere"
        )


def _write_private(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
        handle.flush()
        os.fsync(handle.fileno())
