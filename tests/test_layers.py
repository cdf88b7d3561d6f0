"""The layering of DESIGN.md section 7, checked on the source: imports point inward only.

Every import statement counts, including those inside functions and `if TYPE_CHECKING:`
blocks, because a deferred import still ties one layer to another."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vault"

# (package whose files are checked, module prefixes none of them may import)
DRIVERS = ("grpc", "pkcs11", "sqlalchemy", "alembic")
# Use cases take plain values (vault.domain.policy); vault.app converts the settings.
SETTINGS = ("vault.config", "pydantic", "pydantic_settings")
# vault.app is the composition root: it may import every layer, and none may import it.
OUTER = ("vault.transport", "vault.cli", "vault.client", "vault.app")
FORBIDDEN: list[tuple[str, tuple[str, ...]]] = [
    ("vault.domain", (*DRIVERS, *SETTINGS, "vault.service", "vault.hsm", "vault.storage", *OUTER)),
    ("vault.service", (*DRIVERS, *SETTINGS, "vault.hsm", "vault.storage", *OUTER)),
    ("vault.hsm", ("vault.service", "vault.storage", *OUTER)),
    ("vault.storage", ("vault.service", "vault.hsm", *OUTER)),
    ("vault.transport", ("vault.hsm", "vault.storage", "vault.app")),
    # The command line reaches the token and the store through vault.app.
    ("vault.cli", ("vault.hsm", "vault.storage")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every module an import statement of source names (relative ones made absolute), and for
    `from x import y` also x.y, since y may be a module."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found: set[str] = set()
    directory = ROOT.joinpath(*package.split("."))
    for path in sorted(directory.rglob("*.py")):
        module = module_name(path)
        source = path.read_text(encoding="utf-8")
        for name in imported_modules(source, module, path.name == "__init__.py"):
            for prefix in forbidden:
                if matches(name, prefix):
                    found.add(f"{path.relative_to(ROOT)} imports {prefix}")
    return sorted(found)


@pytest.mark.parametrize(("package", "forbidden"), FORBIDDEN, ids=[p for p, _ in FORBIDDEN])
def test_layer_imports_point_inward(package: str, forbidden: tuple[str, ...]) -> None:
    assert ROOT.joinpath(*package.split(".")).is_dir()
    assert violations(package, forbidden) == []


def test_ports_live_in_the_domain() -> None:
    assert (PACKAGE / "domain" / "ports.py").is_file()
    assert not (PACKAGE / "service" / "ports.py").exists()


def test_checker_sees_every_kind_of_import() -> None:
    source = (
        "import grpc\n"
        "import os.path as p\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from vault.service.keys import KeyManagement\n"
        "def f() -> None:\n"
        "    from vault import storage\n"
        "    from .. import hsm\n"
        "    from .ports import KeyStore\n"
    )
    names = set(imported_modules(source, "vault.domain.models", is_package=False))
    assert {"grpc", "os.path", "vault.service.keys", "vault.storage", "vault.hsm"} <= names
    assert "vault.domain.ports" in names
    assert not matches("grpcx", "grpc")
    assert matches("vault.service.keys", "vault.service")
    assert not matches("vault.services", "vault.service")
