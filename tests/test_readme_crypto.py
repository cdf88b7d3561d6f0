"""Every `vaultctl ... crypto` example, in README.md and in `vaultctl --help` texts, runs as a
shell runs it against the session's real server: the documentation is part of the interface.
Examples that create what the `crypto` ones use run too; the rest name placeholders (VK...).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import click
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.harness import ROOT, VaultServer, vault_environment
from vault.cli.main import cli
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
CREATES = (
    "vaultctl keys create",
    "vaultctl accounts create",
    "vaultctl access-keys create",
    "vaultctl api-keys create",
)


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def crypto_commands(text: str, expected: int) -> str:
    """The commands of text (one per line, `\\` continues one) that use `crypto`, and those
    that create what they use, without trailing comments."""
    commands = re.split(r"\n(?!\s)", text.strip())
    chosen = [
        re.sub(r"\s+# [^\n]*$", "", command)
        for command in commands
        if command.startswith(CREATES) or " crypto " in command
    ]
    assert sum(" crypto " in command for command in chosen) == expected, chosen
    return "\n".join(chosen)


def readme_block(marker: str) -> str:
    (block,) = [block for block in sh_blocks(README) if marker in block]
    return block


def quickstart() -> str:
    """The block `make run`'s second terminal runs."""
    return readme_block("printf 'hello' > hello.txt").replace(".venv/bin/vaultctl", "vaultctl")


def readme_crypto() -> str:
    """The `# Crypto` part of the command-line examples, up to the next blank line."""
    section = readme_block("\n# Crypto\n").split("\n# Crypto\n", 1)[1].split("\n\n", 1)[0]
    assert section.count("vaultctl crypto") >= 15, section
    return section


def readme_identity() -> str:
    section = readme_block("\n# Identity and audit").split("\n# Identity and audit", 1)[1]
    return crypto_commands(section.split("\n", 1)[1], expected=2)


def help_examples(text: str | None) -> str:
    assert text is not None
    lines = text.split("Examples:\n", 1)[1].splitlines()
    return "\n".join(line[2:] for line in lines if line.strip())


def group_help(group: str) -> str | None:
    command = cli.commands[group]
    assert isinstance(command, click.Group)
    return command.help


def crypto_help() -> str:
    return help_examples(group_help("crypto"))


def main_help() -> str:
    return crypto_commands(help_examples(cli.epilog), expected=2)


def access_keys_help() -> str:
    return crypto_commands(help_examples(group_help("access-keys")), expected=1)


def api_keys_help() -> str:
    return crypto_commands(help_examples(group_help("api-keys")), expected=1)


# Each example text, and the keys it uses without creating them.
EXAMPLES: list[tuple[Callable[[], str], set[str]]] = [
    (quickstart, set()),
    (readme_crypto, set(EXAMPLE_KEYS)),
    (readme_identity, {"docs", "release"}),
    (crypto_help, {"docs", "release"}),
    (main_help, set()),
    (access_keys_help, {"docs"}),
    (api_keys_help, {"release"}),
]


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


def write_inputs(directory: Path) -> None:
    """The files the examples read."""
    for name in ("report.pdf", "a.txt", "x", "payload.json"):
        (directory / name).write_bytes(b'{"quarter": 3}' * 100)
    (directory / "ctx").write_bytes(b"bucket=reports;object=q3.pdf")
    (directory / "new-ctx").write_bytes(b"bucket=archive;object=q3.pdf")
    (directory / "my-key.bin").write_bytes(os.urandom(32))
    for name in ("release.tar", "build.tar", "f"):  # over 64 KiB: signed by their digests
        (directory / name).write_bytes(os.urandom(200_000))


@pytest.mark.parametrize(("examples", "keys"), EXAMPLES, ids=[f.__name__ for f, _ in EXAMPLES])
def test_crypto_examples_run(
    server: VaultServer,
    client: VaultClient,
    tmp_path: Path,
    examples: Callable[[], str],
    keys: set[str],
) -> None:
    account_id = f"readme{uuid4().hex[:8]}"
    account = f"accounts/{account_id}"
    client.create_account(account_id)  # keys are made only in an existing account
    for key_id in sorted(keys):
        purpose, algorithm = EXAMPLE_KEYS[key_id]
        client.create_key(account, key_id, purpose, algorithm)
    write_inputs(tmp_path)
    if "inbox" in keys:
        pem = client.get_public_key(f"{account}/keys/inbox").pem.encode()
        public = serialization.load_pem_public_key(pem)
        assert isinstance(public, rsa.RSAPublicKey)
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        (tmp_path / "message.oaep").write_bytes(public.encrypt(b"meet at noon", oaep))

    script = examples()
    # The account exists already: an `accounts create` in the text makes one of its own.
    script = re.sub(r"(?<=accounts create )acme\b(?![.-])", f"{account_id}x", script)
    script = script.replace("accounts/acme", account)
    script = re.sub(r"(?<=create )acme\b(?![.-])", account_id, script)
    done = run_script(script, server, tmp_path)
    assert done.returncode == 0, f"{script}\n---\n{done.stderr}"
