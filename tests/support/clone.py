"""Two tokens with the same roots, as the clone ceremony gives them (`vaultctl ceremony`):
for the backup tests and the backup benchmark."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from tests.support.harness import ROOT, TEST_SETTINGS, provision, vault_environment

VAULTCTL = ROOT / ".venv" / "bin" / "vaultctl"
CEREMONY_SETTINGS = {**TEST_SETTINGS, "VAULT_SERVER__DEV_TLS": "false"}


def ceremony(data_dir: Path, work: Path, *args: str) -> dict[str, Any]:
    """`vaultctl ceremony ...` on data_dir's token, in the ceremony files' directory."""
    done = subprocess.run(
        [str(VAULTCTL), "ceremony", *args, "--json"],
        env=vault_environment(data_dir, settings=CEREMONY_SETTINGS),
        cwd=work,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def clone_roots(source: Path, destination: Path, work: Path, name: str = "backup-replica") -> None:
    """destination becomes an independently provisioned token that received source's roots
    by the clone ceremony: a transport key made there, trusted by source's SO after the
    fingerprint check, the roots wrapped under it and unwrapped there. name: the transport
    key's, unique among the keys source trusts (one per destination)."""
    provision(destination)
    work.mkdir()
    files = {
        "create.toml": """
            ceremony = "transport-key-create"
            record = "records/create.json"
            name = "{name}"
            bits = 3072
            public_key_out = "replica.pem"
            operators = ["alice", "bob"]
            """,
        "trust.toml": """
            ceremony = "transport-key-trust"
            record = "records/trust.json"
            name = "{name}"
            public_key = "replica.pem"
            """,
        "clone.toml": """
            ceremony = "clone-roots"
            record = "records/clone.json"
            trusted_key = "{name}"
            transfer_out = "roots.json"
            """,
    }
    for file_name, text in files.items():
        text = text.replace("{name}", name)
        (work / file_name).write_text(textwrap.dedent(text), encoding="utf-8")
    created = ceremony(destination, work, "transport-key", "create", "create.toml")
    ceremony(
        source, work, "transport-key", "trust", "trust.toml", "--fingerprint",
        created["fingerprint"],
    )  # fmt: skip
    sent = ceremony(source, work, "clone-roots", "clone.toml")
    (work / "receive.toml").write_text(
        textwrap.dedent(
            f"""
            ceremony = "receive-roots"
            record = "records/receive.json"
            transport_key = "{name}"
            transfer = "roots.json"
            source_signer_fingerprint = "{sent["signer_fingerprint"]}"
            """
        ),
        encoding="utf-8",
    )
    ceremony(destination, work, "receive-roots", "receive.toml")
