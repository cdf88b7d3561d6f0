"""Token provisioning: initialise the token, set its PINs, create the root keys.

Idempotent: each step checks what is already there, so `make run` can call it every time.
The user PIN comes from the environment or its file (a generated development PIN is written
0600 and never printed); the SO PIN is obtained by vault.so_pin and kept nowhere here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass, TokenFlag, exceptions

from vault import so_pin
from vault.config import Settings
from vault.domain.errors import PinIncorrect, TokenUnavailable
from vault.domain.token import TokenStatus
from vault.hsm import native, templates
from vault.hsm.environment import render_softhsm_config, token_directory, use_softhsm_config
from vault.hsm.library import attribute_mapper
from vault.hsm.objects import root_generations
from vault.so_pin import SoPin


def _private_directory(path: Path) -> None:
    """path, readable by this user alone: SoftHSM's token files yield every key to whoever
    holds them and the user PIN (README, Threat model). An existing directory is tightened
    too: mkdir's mode does not apply to it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def _write_new_secret(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


def _user_pin(settings: Settings) -> str:
    """The user PIN from the environment or its file; for a missing file, a new random PIN."""
    value, path = settings.hsm.user_pin, settings.hsm.user_pin_file
    if value is not None:
        return value.get_secret_value()
    assert path is not None
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    return _write_new_secret(path)


def _find_token(lib: Any, label: str) -> Any | None:
    try:
        return lib.get_token(token_label=label)
    except exceptions.NoSuchToken:
        return None


def _initialise_token(lib: Any, settings: Settings, so_pin_source: Callable[[], SoPin]) -> Any:
    free = [
        slot
        for slot in lib.get_slots(token_present=True)
        if not slot.get_token().flags & TokenFlag.TOKEN_INITIALIZED
    ]
    if not free:
        raise TokenUnavailable("no uninitialised token slot is left")
    so_secret = so_pin_source().value
    user_pin = _user_pin(settings)
    native.init_token(
        str(settings.hsm.module), free[0].slot_id, so_secret.encode(), settings.hsm.token_label
    )
    token = lib.get_token(token_label=settings.hsm.token_label)
    so_session = token.open(rw=True, so_pin=so_secret)
    try:
        so_session.init_pin(user_pin)
    finally:
        so_session.close()
    return token


def _user_session(token: Any, settings: Settings) -> Any:
    try:
        return token.open(
            rw=True, user_pin=_user_pin(settings), attribute_mapper=attribute_mapper()
        )
    except exceptions.PinIncorrect:
        raise _wrong_pin(settings) from None


def _wrong_pin(settings: Settings) -> PinIncorrect:
    return PinIncorrect(
        f"PIN incorrect: token {settings.hsm.token_label!r} refused the user PIN from "
        f"{settings.user_pin_origin()}"
    )


def create_root_keys(session: Any, generation: int, families: set[str]) -> None:
    """The roots of a generation's families, one per family."""
    for family in sorted(families):
        template, nested = templates.root_key(generation, family)
        session.generate_key(KeyType.AES, 256, capabilities=0, template=template)
        del nested  # referenced by template until generate_key returned


def _ensure_split_generation(session: Any) -> bool:
    """Make the newest generation one of per-family roots; True when roots were created.

    A token whose newest generation is a single legacy root gets a new generation: a legacy
    root cannot be changed (MODIFIABLE=FALSE) and its blobs can only be unwrapped by it. A
    generation left half-made by an interrupted run is completed."""
    generations = root_generations(session)
    newest = max(generations, default=0)
    if newest and None not in generations[newest]:
        missing = set(templates.ROOT_FAMILIES) - set(generations[newest])
        target = newest
    else:
        missing = set(templates.ROOT_FAMILIES)
        target = newest + 1
    if not missing:
        return False
    create_root_keys(session, target, missing)
    return True


def _count_key_objects(session: Any) -> int:
    count = 0
    for object_class in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY):
        count += sum(
            1 for _ in session.get_objects({Attribute.CLASS: object_class, Attribute.TOKEN: True})
        )
    return count


def provision(
    settings: Settings,
    so_pin_source: Callable[[], SoPin] | None = None,
) -> TokenStatus:
    """Make the token ready to serve. Runs in a process that will not serve afterwards.
    The store learns of the token's root generations from status.root_labels
    (vault.service.provisioning, through vault.app.provision_token).

    so_pin_source: called only when a token is initialised; by default vault.so_pin.obtain
    without a prompt (the development PIN outside the data directory)."""
    source = so_pin_source or partial(so_pin.obtain, settings, None)
    obtained: list[SoPin] = []

    def remembered() -> SoPin:
        obtained.append(source())
        return obtained[-1]

    _private_directory(settings.data_dir)
    moved = so_pin.move_out_of_data_dir(settings)
    render_softhsm_config(settings)
    _private_directory(token_directory(settings))
    use_softhsm_config(settings)
    lib = pkcs11.lib(str(settings.hsm.module))
    token = _find_token(lib, settings.hsm.token_label)
    initialised_now = token is None
    if token is None:
        token = _initialise_token(lib, settings, remembered)
    session = _user_session(token, settings)
    root_created_now = _ensure_split_generation(session)
    status = _status(token, session, lib)
    return replace(
        status,
        initialised_now=initialised_now,
        root_created_now=root_created_now,
        so_pin_created=obtained[0].created if obtained else None,
        so_pin_moved=moved,
    )


def _store_label(generation: int, families: frozenset[str | None]) -> str:
    """The store's name for a generation: its single root's label, or the family roots'
    common prefix."""
    if None in families:
        return templates.root_label(generation, None)
    return templates.root_label(generation, "*")


def _status(token: Any, session: Any, lib: Any) -> TokenStatus:
    generations = root_generations(session)
    return TokenStatus(
        label=token.label,
        serial=bytes(token.serial).decode("ascii", "replace").strip(),
        manufacturer=token.manufacturer_id,
        model=token.model,
        root_generations=sorted(generations),
        legacy_root_generations=sorted(
            g for g, families in generations.items() if None in families
        ),
        key_objects=_count_key_objects(session),
        mechanisms=len(token.slot.get_mechanisms()),
        root_labels={g: _store_label(g, families) for g, families in sorted(generations.items())},
    )


def token_status(settings: Settings) -> TokenStatus:
    use_softhsm_config(settings)
    lib = pkcs11.lib(str(settings.hsm.module))
    token = _find_token(lib, settings.hsm.token_label)
    if token is None:
        raise TokenUnavailable(
            f"no token labelled {settings.hsm.token_label!r}: run `vaultctl token init`"
        )
    session = _user_session(token, settings)
    return _status(token, session, lib)
