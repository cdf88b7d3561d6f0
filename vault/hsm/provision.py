"""Token provisioning: initialise the token, set its PINs, create the first root key.

Idempotent: each step checks what is already there, so `make run` can call it every time.
PINs come from the environment or from files; generated development PINs are written with
mode 0600 and never printed.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass, TokenFlag, exceptions

from vault.config import Settings
from vault.domain.errors import PinIncorrect, TokenUnavailable
from vault.domain.models import RootGeneration
from vault.hsm import native, templates
from vault.hsm.environment import render_softhsm_config, use_softhsm_config
from vault.hsm.library import attribute_mapper
from vault.hsm.objects import root_generations
from vault.service.ports import MetadataStore


@dataclass(frozen=True, slots=True)
class TokenStatus:
    label: str
    serial: str
    manufacturer: str
    model: str
    root_generations: list[int]
    key_objects: int
    mechanisms: int
    initialised_now: bool = False
    root_created_now: bool = False


def _write_new_secret(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


def _pin(settings: Settings, which: str) -> str:
    """The PIN from the environment or its file; for a missing file, a new random PIN."""
    if which == "user":
        value, path = settings.hsm.user_pin, settings.hsm.user_pin_file
    else:
        value, path = settings.hsm.so_pin, settings.hsm.so_pin_file
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


def _initialise_token(lib: Any, settings: Settings) -> Any:
    free = [
        slot
        for slot in lib.get_slots(token_present=True)
        if not slot.get_token().flags & TokenFlag.TOKEN_INITIALIZED
    ]
    if not free:
        raise TokenUnavailable("no uninitialised token slot is left")
    so_pin = _pin(settings, "so")
    user_pin = _pin(settings, "user")
    native.init_token(
        str(settings.hsm.module), free[0].slot_id, so_pin.encode(), settings.hsm.token_label
    )
    token = lib.get_token(token_label=settings.hsm.token_label)
    so_session = token.open(rw=True, so_pin=so_pin)
    try:
        so_session.init_pin(user_pin)
    finally:
        so_session.close()
    return token


def _user_session(token: Any, settings: Settings) -> Any:
    try:
        return token.open(
            rw=True, user_pin=_pin(settings, "user"), attribute_mapper=attribute_mapper()
        )
    except exceptions.PinIncorrect:
        raise _wrong_pin(settings) from None


def _wrong_pin(settings: Settings) -> PinIncorrect:
    return PinIncorrect(
        f"PIN incorrect: token {settings.hsm.token_label!r} refused the user PIN from "
        f"{settings.user_pin_origin()}"
    )


def create_root_key(session: Any, generation: int) -> None:
    template, nested = templates.root_key(generation)
    session.generate_key(KeyType.AES, 256, capabilities=0, template=template)
    del nested  # referenced by template until generate_key returned


def _count_key_objects(session: Any) -> int:
    count = 0
    for object_class in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY):
        count += sum(
            1 for _ in session.get_objects({Attribute.CLASS: object_class, Attribute.TOKEN: True})
        )
    return count


def provision(settings: Settings, store: MetadataStore | None) -> TokenStatus:
    """Make the token ready to serve. Runs in a process that will not serve afterwards."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    render_softhsm_config(settings)
    use_softhsm_config(settings)
    lib = pkcs11.lib(str(settings.hsm.module))
    token = _find_token(lib, settings.hsm.token_label)
    initialised_now = token is None
    if token is None:
        token = _initialise_token(lib, settings)
    session = _user_session(token, settings)
    generations = sorted(root_generations(session))
    root_created_now = not generations
    if not generations:
        create_root_key(session, 1)
        generations = [1]
    if store is not None:
        recorded = {root.generation for root in store.list_root_generations()}
        for generation in generations:
            if generation not in recorded:
                store.add_root_generation(
                    RootGeneration(
                        generation, f"{templates.ROOT_LABEL_PREFIX}{generation}", datetime.now(UTC)
                    )
                )
    status = _status(token, session, lib, generations)
    return replace(status, initialised_now=initialised_now, root_created_now=root_created_now)


def _status(token: Any, session: Any, lib: Any, generations: list[int]) -> TokenStatus:
    return TokenStatus(
        label=token.label,
        serial=bytes(token.serial).decode("ascii", "replace").strip(),
        manufacturer=token.manufacturer_id,
        model=token.model,
        root_generations=generations,
        key_objects=_count_key_objects(session),
        mechanisms=len(token.slot.get_mechanisms()),
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
    return _status(token, session, lib, sorted(root_generations(session)))
