"""Every `vaultctl crypto` example of README.md and of `vaultctl crypto --help` runs, as a
shell runs it, against the session's real server: the documentation is part of the interface.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from uuid import uuid4

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.harness import ROOT, VaultServer, vault_environment
from vault.cli.crypto import GROUP_HELP
from vault.client import VaultClient

README = (ROOT / "README.md").read_text()

# The keys the examples name, with the purpose and algorithm README.md gives them.
EXAMPLE_KEYS = {
    "docs": ("ENCRYPT_DECRYPT", None),
    "archive": ("ENCRYPT_DECRYPT", None),
    "kek": ("WRAP_UNWRAP", None),
    "release": ("SIGN_VERIFY", "RSA_SIGN_PSS_3072_SHA256"),
    "inbox": ("ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA1"),
    "hmac": ("MAC", None),
}


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def quickstart() -> str:
    """The block `make run`'s second terminal runs (its key is created there)."""
    (block,) = [block for block in sh_blocks(README) if "printf 'hello' > hello.txt" in block]
    return block.replace(".venv/bin/vaultctl", "vaultctl")


def crypto_examples() -> str:
    """The `# Crypto` part of the command-line examples, up to the next blank line."""
    (block,) = [block for block in sh_blocks(README) if "\n# Crypto\n" in block]
    section = block.split("\n# Crypto\n", 1)[1].split("\n\n", 1)[0]
    assert section.count("vaultctl crypto") >= 15, section
    return section


def identity_examples() -> str:
    """The commands of the `# Identity and audit` examples that create the credentials the
    `crypto` ones there use, and those; the rest name placeholders (VK...)."""
    (block,) = [block for block in sh_blocks(README) if "\n# Identity and audit" in block]
    section = block.split("\n# Identity and audit", 1)[1].split("\n", 1)[1]
    commands = re.split(r"\n(?!\s)", section)
    wanted = ("vaultctl accounts create", "vaultctl access-keys create", "vaultctl api-keys create")
    chosen = [c for c in commands if c.startswith(wanted) or " crypto " in c]
    assert sum(" crypto " in command for command in chosen) == 2, chosen
    return "\n".join(chosen)


def help_examples() -> str:
    """The examples `vaultctl crypto --help` prints."""
    lines = GROUP_HELP.split("Examples:\n", 1)[1].splitlines()
    return "\n".join(line.strip() for line in lines if line.strip()).replace("\\\\", "\\")


def account_id(account: str) -> str:
    return account.removeprefix("accounts/")


def run_script(script: str, server: VaultServer, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run script with the server's own settings in the environment, as on the vault's
    machine: vaultctl then finds the server, and its admin key, with no option at all."""
    env = vault_environment(server.data_dir, VAULT_SERVER__LISTEN=server.target)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-x", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture()
def workspace(client: VaultClient, tmp_path: Path) -> tuple[str, Path]:
    """A fresh account holding the example keys, and a directory with the example inputs."""
    account = f"accounts/readme{uuid4().hex[:8]}"
    for key_id, (purpose, algorithm) in EXAMPLE_KEYS.items():
        client.create_key(account, key_id, purpose, algorithm)
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.7 quarterly report" * 100)
    (tmp_path / "ctx").write_bytes(b"bucket=reports;object=q3.pdf")
    (tmp_path / "new-ctx").write_bytes(b"bucket=archive;object=q3.pdf")
    (tmp_path / "my-key.bin").write_bytes(os.urandom(32))
    (tmp_path / "release.tar").write_bytes(os.urandom(200_000))  # over 64 KiB: by its digest
    (tmp_path / "payload.json").write_bytes(b'{"amount": 10}')
    (tmp_path / "x").write_bytes(b"x")
    (tmp_path / "f").write_bytes(os.urandom(100_000))
    public = serialization.load_pem_public_key(
        client.get_public_key(f"{account}/keys/inbox").pem.encode()
    )
    assert isinstance(public, rsa.RSAPublicKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    (tmp_path / "message.oaep").write_bytes(public.encrypt(b"meet at noon", oaep))
    return account, tmp_path


@pytest.mark.parametrize(
    "examples",
    [quickstart, crypto_examples, identity_examples, help_examples],
    ids=lambda f: f.__name__,
)
def test_crypto_examples_run(
    server: VaultServer, workspace: tuple[str, Path], examples: object
) -> None:
    account, directory = workspace
    assert callable(examples)
    script = str(examples()).replace("accounts/acme", account)
    script = script.replace("accounts create acme", f"accounts create {account_id(account)}")
    if examples is quickstart:
        script = script.replace(
            f"keys create {account}/keys/docs", f"keys create {account}/keys/new"
        )
        script = script.replace(f"{account}/keys/docs", f"{account}/keys/new")
    done = run_script(script, server, directory)
    assert done.returncode == 0, f"{script}\n---\n{done.stderr}"
