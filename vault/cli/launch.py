"""The `vaultctl` console script: checks the `server` extra is installed, then runs the CLI.

A plain `pip install vault` is the SDK only (vault.client); the command line also needs the
server's libraries (click, pydantic, python-pkcs11, ...). Without them vaultctl says so in one
line instead of a traceback from whichever import fails first. Only what the standard library
offers is imported here, so the check itself runs in an SDK-only environment.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

DISTRIBUTION = "vault"
EXTRA = "server"
# The CLI's exit code for a local error (vault.cli._context.EXIT_LOCAL, which imports click).
EXIT_LOCAL = 4
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_IN_EXTRA = re.compile(rf"""extra\s*==\s*["']{EXTRA}["']""")


def missing_server_distributions() -> list[str]:
    """The `server` extra's distributions not installed here (none when vault is not installed).

    Presence only: pip resolved the versions when it installed them."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        name = _NAME.match(requirement)
        if name is None or not _IN_EXTRA.search(requirement):
            continue
        try:
            metadata.version(name.group())
        except metadata.PackageNotFoundError:
            missing.append(name.group())
    return missing


def main() -> None:
    missing = missing_server_distributions()
    if missing:
        print(
            f"vaultctl: error: vaultctl needs the server's dependencies: "
            f"pip install '{DISTRIBUTION}[{EXTRA}]' (missing: {', '.join(missing)})",
            file=sys.stderr,
        )
        sys.exit(EXIT_LOCAL)
    from vault.cli.main import main as cli_main

    cli_main()
