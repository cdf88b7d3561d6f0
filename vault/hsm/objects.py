"""Finding and removing the vault's token objects, shared by the keystore, provisioning and
the capability probe. Several processes may change the token while these run."""

from __future__ import annotations

import contextlib
from typing import Any

from pkcs11 import Attribute, ObjectClass, exceptions

from vault.hsm import templates


def destroy_quietly(obj: Any) -> None:
    """Destroy obj; one already gone (or its session closed) needs nothing more."""
    with contextlib.suppress(exceptions.PKCS11Error):
        obj.destroy()


def token_labels(session: Any, object_class: ObjectClass) -> list[str]:
    """Labels of the token objects of a class. Another process may destroy an object between
    the search and the read of its label; such objects are simply gone."""
    labels = []
    for obj in session.get_objects({Attribute.CLASS: object_class, Attribute.TOKEN: True}):
        try:
            labels.append(obj[Attribute.LABEL])
        except (exceptions.ObjectHandleInvalid, exceptions.KeyHandleInvalid):
            continue
    return labels


def root_generations(session: Any) -> dict[int, frozenset[str | None]]:
    """Root key generations in the token, each with the families of its roots (None: the
    single root of a generation made before roots were split by family)."""
    found: dict[int, set[str | None]] = {}
    for label in token_labels(session, ObjectClass.SECRET_KEY):
        parsed = templates.parse_root_label(label)
        if parsed is not None:
            found.setdefault(parsed[0], set()).add(parsed[1])
    return {generation: frozenset(families) for generation, families in found.items()}


def complete_generations(generations: dict[int, frozenset[str | None]]) -> set[int]:
    """Generations that can unwrap every family: a single legacy root, or all family roots."""
    return {
        generation
        for generation, families in generations.items()
        if None in families or families >= set(templates.ROOT_FAMILIES)
    }


def find_one(session: Any, object_class: ObjectClass, label: str) -> Any:
    """The object with this label. SoftHSM 2.6.1 can index one token object file twice when
    another process writes the token at the same moment, so a search may return the same
    object under two handles; labels are unique (a UUID each), so any of them will do."""
    for obj in session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label}):
        return obj
    raise exceptions.ObjectHandleInvalid(f"no {object_class.name} labelled {label}")
