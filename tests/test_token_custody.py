"""Custody of what unlocks the token: `vaultctl token init` on fresh and older data directories.

- The SO PIN is never kept in the data directory: with the user PIN beside it, one could make
  a trusted key of known value as SO and wrap the roots under it as user.
- The data directory and the token directory are the vault user's alone (0700).
- A token made before roots were split by family gets a new generation of per-family roots;
  versions under its single root keep working.

Each vault here has its own data directory and runs as separate processes: the pytest process
has SoftHSM loaded with the session's token directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import stat
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api_calls import ensure_account
from tests.support.harness import (
    ROOT,
    VaultServer,
    development_so_pin,
    state_directory,
    vault_environment,
)

VAULTCTL = ROOT / ".venv" / "bin" / "vaultctl"
SETTINGS = {"VAULT_SERVER__WORKERS": "1", "VAULT_SERVER__DEV_TLS": "false"}


def vaultctl(data_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The installed vaultctl, with no terminal (as make run and CI run it)."""
    return subprocess.run(
        [str(VAULTCTL), *args],
        env=vault_environment(data_dir, settings=SETTINGS),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_python(data_dir: Path, script: str, *args: str) -> Any:
    """script in a fresh interpreter with data_dir's settings; its stdout as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=vault_environment(data_dir, settings=SETTINGS),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def files_holding(directory: Path, secret: bytes) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file() and secret in path.read_bytes()]


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A data directory provisioned by `vaultctl token init`, and what it printed."""
    data_dir = tmp_path_factory.mktemp("custody") / "data"
    done = vaultctl(data_dir, "token", "init")
    assert done.returncode == 0, done.stderr
    yield data_dir, done.stderr


# -- the SO PIN --------------------------------------------------------------------------------


def test_token_init_keeps_the_so_pin_outside_the_data_directory(
    initialised: tuple[Path, str],
) -> None:
    data_dir, printed = initialised
    (pin_file,) = (state_directory(data_dir) / "vault").glob("*.so.pin")
    assert not pin_file.resolve().is_relative_to(data_dir.resolve())
    assert stat.S_IMODE(pin_file.stat().st_mode) == 0o600
    assert f"development SO PIN written to {pin_file}" in printed
    so_pin = development_so_pin(data_dir)
    assert len(so_pin) >= 24
    assert so_pin.decode() not in printed
    assert files_holding(data_dir, so_pin) == []
    assert not (data_dir / "secrets" / "so.pin").exists()
    again = vaultctl(data_dir, "token", "init")
    assert again.returncode == 0, again.stderr
    assert "SO PIN" not in again.stderr  # said once, when created
    assert development_so_pin(data_dir) == so_pin


def test_the_server_starts_and_serves_without_the_so_pin(initialised: tuple[Path, str]) -> None:
    data_dir, _ = initialised
    with VaultServer(data_dir, settings=SETTINGS) as server, server.client() as client:
        ensure_account(client, "accounts/custody")
        key = client.create_key("accounts/custody", "k", "ENCRYPT_DECRYPT").name
        sealed = client.encrypt(key, b"served")
        assert client.decrypt(key, sealed.ciphertext).plaintext == b"served"
    assert files_holding(data_dir, development_so_pin(data_dir)) == []


def test_harness_provisioning_keeps_no_so_pin_in_the_data_directory(
    data_dir: Path, client: Any
) -> None:
    """The session's vault, provisioned as `make run` does, serves with no SO PIN beside it."""
    assert files_holding(data_dir, development_so_pin(data_dir)) == []
    ensure_account(client, "accounts/custody")
    key = client.create_key("accounts/custody", "session", "ENCRYPT_DECRYPT").name
    assert client.decrypt(key, client.encrypt(key, b"x").ciphertext).plaintext == b"x"


_SO_LOGIN = """
import json, sys
import pkcs11
from vault.config import Settings
from vault.hsm.environment import use_softhsm_config
settings = Settings()
use_softhsm_config(settings)
token = pkcs11.lib(str(settings.hsm.module)).get_token(token_label=settings.hsm.token_label)
try:
    token.open(rw=True, so_pin=sys.stdin.readline().strip())
    print(json.dumps("accepted"))
except pkcs11.exceptions.PinIncorrect:
    print(json.dumps("refused"))
"""


def test_an_old_so_pin_file_in_the_data_directory_is_moved_out(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    assert vaultctl(data_dir, "token", "init").returncode == 0
    # The layout older versions left: the SO PIN in <data_dir>/secrets/so.pin, nowhere else.
    (pin_file,) = (state_directory(data_dir) / "vault").glob("*.so.pin")
    so_pin = pin_file.read_bytes()
    old = data_dir / "secrets" / "so.pin"
    old.write_bytes(so_pin)
    old.chmod(0o600)
    pin_file.unlink()

    refused = vaultctl(data_dir, "serve", timeout=60)
    assert refused.returncode == 4
    assert refused.stderr.strip().splitlines() == [
        f"vaultctl: error: an SO PIN file is inside the data directory ({old}); not serving: run "
        "`vaultctl token init` to move it out, or move it yourself"
    ]

    moved = vaultctl(data_dir, "token", "init")
    assert moved.returncode == 0, moved.stderr
    assert f"moved the SO PIN out of the data directory: {old} -> {pin_file}" in moved.stderr
    assert not old.exists()
    assert pin_file.read_bytes() == so_pin
    assert stat.S_IMODE(pin_file.stat().st_mode) == 0o600
    assert files_holding(data_dir, so_pin.strip()) == []
    # Still the token's SO PIN, and the server needs none of it.
    login = subprocess.run(
        [sys.executable, "-c", _SO_LOGIN],
        env=vault_environment(data_dir, settings=SETTINGS),
        input=so_pin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(login.stdout) == "accepted"


@pytest.mark.parametrize("source", ["environment", "file"])
def test_an_so_pin_the_operator_gives_is_used_and_kept_nowhere(tmp_path: Path, source: str) -> None:
    data_dir = tmp_path / "data"
    chosen = f"operator-{source}-so-pin"
    if source == "environment":
        given = {"VAULT_HSM__SO_PIN": chosen}
    else:
        named = tmp_path / "ceremony" / "so.pin"
        named.parent.mkdir(mode=0o700)
        named.write_text(chosen + "\n")
        named.chmod(0o600)
        given = {"VAULT_HSM__SO_PIN_FILE": str(named)}
    done = subprocess.run(
        [str(VAULTCTL), "token", "init"],
        env=vault_environment(data_dir, settings={**SETTINGS, **given}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "SO PIN" not in done.stderr and chosen not in done.stdout + done.stderr
    assert not (state_directory(data_dir) / "vault").exists()  # nothing generated
    assert files_holding(data_dir, chosen.encode()) == []
    login = subprocess.run(
        [sys.executable, "-c", _SO_LOGIN],
        env=vault_environment(data_dir, settings=SETTINGS),
        input=chosen,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(login.stdout) == "accepted"


def test_an_so_pin_file_named_inside_the_data_directory_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    named = data_dir / "my-so.pin"
    named.parent.mkdir(mode=0o700)
    named.write_text("a-pin-the-operator-chose\n")
    env_file = {"VAULT_HSM__SO_PIN_FILE": str(named)}
    done = subprocess.run(
        [str(VAULTCTL), "token", "init"],
        env=vault_environment(data_dir, settings={**SETTINGS, **env_file}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 4
    assert "inside the data directory" in done.stderr
    assert not (data_dir / "tokens").exists() or not any((data_dir / "tokens").iterdir())


# -- directory modes --------------------------------------------------------------------------


def test_data_and_token_directories_are_the_vault_users_alone(
    initialised: tuple[Path, str],
) -> None:
    data_dir, _ = initialised
    for directory in (data_dir, data_dir / "tokens", data_dir / "secrets"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_token_init_tightens_a_data_directory_made_too_open(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "tokens").mkdir(parents=True)
    data_dir.chmod(0o755)
    (data_dir / "tokens").chmod(0o755)
    done = vaultctl(data_dir, "token", "init")
    assert done.returncode == 0, done.stderr
    for directory in (data_dir, data_dir / "tokens"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


# -- tokens made before roots were split by family ----------------------------------------------

# A token as older versions provisioned it: one root for every purpose, whose unwrap template
# forced only SENSITIVE, WRAP_WITH_TRUSTED and MODIFIABLE=FALSE; and an EC signing key version
# wrapped under it.
_LEGACY_TOKEN = """
import json
from functools import partial
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from vault import so_pin
from vault.config import Settings
from vault.domain.algorithms import Algorithm
from vault.hsm import native, provision, templates
from vault.hsm.environment import render_softhsm_config, use_softhsm_config
from vault.hsm.keystore import generate_pair
from vault.hsm.library import attribute_mapper
from vault.hsm.public import public_key_der
settings = Settings()
settings.data_dir.mkdir(parents=True, mode=0o700)
render_softhsm_config(settings)
use_softhsm_config(settings)
lib = pkcs11.lib(str(settings.hsm.module))
token = provision._initialise_token(lib, settings, partial(so_pin.obtain, settings, None))
session = token.open(
    rw=True, user_pin=settings.user_pin(), attribute_mapper=attribute_mapper()
)
forced = native.NestedTemplate({
    int(Attribute.SENSITIVE): True,
    int(Attribute.WRAP_WITH_TRUSTED): True,
    int(Attribute.MODIFIABLE): False,
})
root = session.generate_key(KeyType.AES, 256, capabilities=0, template={
    Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
    Attribute.VALUE_LEN: 32, Attribute.TOKEN: True, Attribute.LABEL: "vault:root:1",
    Attribute.ID: b"vault:root:1", Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: True, Attribute.WRAP_WITH_TRUSTED: True,
    Attribute.MODIFIABLE: False, Attribute.COPYABLE: False, Attribute.DESTROYABLE: True,
    Attribute.ALLOWED_MECHANISMS: [Mechanism.AES_KEY_WRAP_PAD],
    Attribute.UNWRAP_TEMPLATE: forced,
    Attribute.ENCRYPT: False, Attribute.DECRYPT: False, Attribute.SIGN: False,
    Attribute.VERIFY: False, Attribute.DERIVE: False,
    Attribute.WRAP: True, Attribute.UNWRAP: True,
})
algorithm = Algorithm.EC_SIGN_P256_SHA256
public, private = generate_pair(session, algorithm, None)
blob = bytes(root.wrap_key(private, mechanism=Mechanism.AES_KEY_WRAP_PAD))
print(json.dumps({"blob": blob.hex(), "public": public_key_der(algorithm, public).hex()}))
"""

_USE_BOTH_GENERATIONS = """
import json, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.tokens import generated_version, version_for
from vault.config import Settings
from vault.domain.algorithms import Algorithm
from vault.hsm.keystore import open_keystore
keystore = open_keystore(Settings())
algorithm = Algorithm.EC_SIGN_P256_SHA256
old = version_for(root_generation=1, wrapped_blob=bytes.fromhex(sys.argv[1]))
signature = keystore.sign(old, algorithm, b"old version", prehashed=False)
public = serialization.load_der_public_key(bytes.fromhex(sys.argv[2]))
public.verify(signature, b"old version", ec.ECDSA(hashes.SHA256()))
new = generated_version(keystore, algorithm)
keystore.sign(new, algorithm, b"new version", prehashed=False)
print(json.dumps({
    "current": keystore.current_root_generation(),
    "present": sorted(keystore.root_generations_present()),
    "new_version_generation": new.root_generation,
}))
"""


def test_token_init_adds_per_family_roots_to_an_older_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    legacy = run_python(data_dir, _LEGACY_TOKEN)

    done = vaultctl(data_dir, "token", "init", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["root_generations"] == [1, 2]
    assert status["legacy_root_generations"] == [1]
    assert status["root_created_now"] is True

    used = run_python(data_dir, _USE_BOTH_GENERATIONS, legacy["blob"], legacy["public"])
    assert used == {"current": 2, "present": [1, 2], "new_version_generation": 2}

    shown = vaultctl(data_dir, "token", "status")
    assert shown.returncode == 0, shown.stderr
    assert "[1]: made before per-family roots" in " ".join(shown.stdout.split())
    again = vaultctl(data_dir, "token", "init", "--json")
    assert json.loads(again.stdout)["root_generations"] == [1, 2]  # nothing more to add


def _on_a_terminal(data_dir: Path, answers: list[str]) -> tuple[int, str]:
    """`vaultctl token init` with a pseudo-terminal as its controlling terminal and stdin,
    typing each answer after a prompt; returns the exit code and what the terminal showed."""
    controller, terminal = pty.openpty()

    def take_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [str(VAULTCTL), "token", "init"],
        env=vault_environment(data_dir, settings=SETTINGS),
        cwd=ROOT,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=take_terminal,
    )
    os.close(terminal)
    shown = b""
    answered = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the process exited
                break
            if not chunk:
                break
            shown += chunk
        asked = shown.count(b"SO PIN for the new token") + shown.count(b"Repeat for confirmation")
        # Typed only once the prompt has turned echo off, as a person would see it.
        echo_off = not termios.tcgetattr(controller)[3] & termios.ECHO
        if answered < min(asked, len(answers)) and echo_off:
            os.write(controller, answers[answered].encode() + b"\n")
            answered += 1
    os.close(controller)
    return process.wait(timeout=120), shown.decode(errors="replace")


def test_on_a_terminal_the_so_pin_is_asked_twice_and_kept_nowhere(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    chosen = "so-pin-typed-at-the-terminal"
    code, shown = _on_a_terminal(data_dir, [chosen, chosen])
    assert code == 0, shown
    assert shown.count("SO PIN for the new token") == 1
    assert "Repeat for confirmation" in shown
    assert chosen not in shown  # hidden input
    assert not (state_directory(data_dir) / "vault").exists()
    assert files_holding(data_dir, chosen.encode()) == []
    login = subprocess.run(
        [sys.executable, "-c", _SO_LOGIN],
        env=vault_environment(data_dir, settings=SETTINGS),
        input=chosen,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(login.stdout) == "accepted"
