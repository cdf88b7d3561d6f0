"""Every reason a caller can receive over gRPC is in README.md's Errors table, with the status
code the transport maps it to: callers branch on these, so an undocumented one is a break."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import vault
from vault.domain.errors import VaultError
from vault.transport.errors import status_code

README = Path(__file__).resolve().parents[2] / "README.md"
# Raised and reported by vaultctl on the vault's machine (ceremonies, the token's PIN at
# start-up), never sent over gRPC.
LOCAL_MODULES = {"vault.domain.ceremony"}
LOCAL_REASONS = {"PIN_INCORRECT"}


def every_error_class() -> Iterator[type[VaultError]]:
    for module in pkgutil.walk_packages(vault.__path__, "vault."):
        if not module.name.startswith(("vault.gen", "vault.cli")):
            importlib.import_module(module.name)
    pending = [VaultError]
    while pending:
        cls = pending.pop()
        yield cls
        pending.extend(cls.__subclasses__())


def documented_codes() -> dict[str, str]:
    text = README.read_text()
    table = text[text.index("\n## Errors\n") : text.index("\n## Repository layout\n")]
    return dict(re.findall(r"^\| `([A-Z_]+)` \| `?([A-Z_]+|\(local)", table, re.MULTILINE))


def test_every_reason_sent_over_grpc_is_documented_with_its_status_code() -> None:
    documented = documented_codes()
    missing = {}
    for cls in every_error_class():
        if cls.__module__ in LOCAL_MODULES:
            continue
        code = status_code(cls.__new__(cls))
        # A VaultError without a code of its own reaches the caller as INTERNAL.
        expected = "(local" if cls.reason in LOCAL_REASONS else code.name if code else "INTERNAL"
        if documented.get(cls.reason) != expected:
            missing[cls.reason] = (expected, documented.get(cls.reason))
    assert missing == {}


def test_the_table_is_read() -> None:
    # The check above passes trivially if the table's format changes under it.
    assert documented_codes()["DISK_FULL"] == "UNAVAILABLE"
    assert documented_codes()["CALLER_GONE"] == "CANCELLED"
