"""One settings file for the server and vaultctl, found from any directory.

`vaultctl serve` and the client commands look for their settings in the same places (--config,
$VAULT_CONFIG, the nearest vault.toml upwards, the user's config.toml), so a server moved to
another port is still found, still trusted (its development CA) and still signed for (its
admin key) by vaultctl run in a subdirectory, anywhere else, or with --target naming the port.
These run the installed `vaultctl` as separate processes, with a HOME and working directories
of their own.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.harness import ROOT, free_port
from vault.config import find_config_file, load_settings, record_local_server, user_config_file

VAULTCTL = ROOT / ".venv" / "bin" / "vaultctl"


def clean_env(home: Path) -> dict[str, str]:
    """The caller's environment without anything that names a vault or a settings file."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VAULT_") and key not in ("SOFTHSM2_CONF", "XDG_CONFIG_HOME")
    }
    env["HOME"] = str(home)
    return env


@dataclass(frozen=True)
class Project:
    root: Path  # holds vault.toml
    home: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def run(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VAULTCTL), *args],
            cwd=cwd,
            env=clean_env(self.home),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run(cwd, *args)
        assert done.returncode == 0, (args, cwd, done.stdout, done.stderr)
        return done


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    base = tmp_path_factory.mktemp("settings-file")
    root, home = base / "checkout", base / "home"
    (root / "src" / "deep").mkdir(parents=True)
    home.mkdir()
    port = free_port()
    # Relative data_dir: relative to this file, wherever vaultctl runs.
    (root / "vault.toml").write_text(
        f'data_dir = "state"\n\n[server]\nlisten = "127.0.0.1:{port}"\nworkers = 1\n',
        encoding="utf-8",
    )
    log = base / "serve.log"
    with log.open("wb") as output:
        init = subprocess.run(
            [str(VAULTCTL), "token", "init"],
            cwd=root,
            env=clean_env(home),
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
        assert init.returncode == 0, log.read_text()
        process = subprocess.Popen(
            [str(VAULTCTL), "serve"],
            cwd=root / "src",
            env=clean_env(home),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Project(root, home, port, process, log)
    try:
        deadline = time.monotonic() + 90
        while "vault serving on" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield running
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_the_server_serves_on_the_port_of_the_settings_file(project: Project) -> None:
    assert f"vault serving on 127.0.0.1:{project.port}" in project.log.read_text()
    # data_dir is relative to the file, not to where serve ran (src/).
    assert (project.root / "state" / "admin-credentials.json").exists()
    assert not (project.root / "src" / "state").exists()


def test_vaultctl_in_a_subdirectory_needs_no_option(project: Project) -> None:
    deep = project.root / "src" / "deep"
    project.ok(deep, "accounts", "create", "shop")
    project.ok(deep, "keys", "create", "accounts/shop/keys/orders", "--purpose", "MAC")
    listed = json.loads(project.ok(deep, "--json", "keys", "list", "shop").stdout)
    assert [key["name"] for key in listed["keys"]] == ["accounts/shop/keys/orders"]
    status = json.loads(project.ok(deep, "--json", "token", "status").stdout)
    assert status["data_dir"] == str(project.root / "state")


def test_target_naming_the_port_keeps_the_ca_and_the_admin_key(project: Project) -> None:
    deep = project.root / "src" / "deep"
    project.ok(deep, "accounts", "create", "depot")
    for host in ("127.0.0.1", "localhost"):
        target = f"{host}:{project.port}"
        listed = json.loads(
            project.ok(deep, "--target", target, "--json", "keys", "list", "depot").stdout
        )
        assert listed["keys"] == []


def test_serve_records_the_server_for_other_directories(project: Project, tmp_path: Path) -> None:
    recorded = project.home / ".config" / "vault" / "config.toml"
    assert stat.S_IMODE(recorded.stat().st_mode) == 0o600
    text = recorded.read_text()
    assert str(project.root / "state") in text
    assert f"127.0.0.1:{project.port}" in text
    # From a directory outside the checkout, with no option, the same vault answers.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project.ok(project.root, "accounts", "create", "outside")
    project.ok(elsewhere, "keys", "create", "accounts/outside/keys/k", "--purpose", "MAC")
    listed = json.loads(project.ok(elsewhere, "--json", "keys", "list", "outside").stdout)
    assert [key["name"] for key in listed["keys"]] == ["accounts/outside/keys/k"]
    listed = json.loads(
        project.ok(
            elsewhere, "--target", f"127.0.0.1:{project.port}", "--json", "keys", "list", "outside"
        ).stdout
    )
    assert len(listed["keys"]) == 1


# -- the rules, without processes ------------------------------------------------------------


def test_the_nearest_vault_toml_wins_then_the_user_file(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_config_file(deep, environ) is None
    user = user_config_file(environ)
    assert user == tmp_path / "xdg" / "vault" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert find_config_file(deep, environ) == user
    (tmp_path / "vault.toml").write_text("")
    assert find_config_file(deep, environ) == tmp_path / "vault.toml"
    (tmp_path / "a" / "b" / "vault.toml").write_text("")
    assert find_config_file(deep, environ) == tmp_path / "a" / "b" / "vault.toml"
    # A relative XDG_CONFIG_HOME is not a base directory (XDG rules): ~/.config is.
    assert user_config_file({"XDG_CONFIG_HOME": "rel"}) == Path.home() / ".config/vault/config.toml"


def test_relative_paths_in_a_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [key for key in os.environ if key.startswith("VAULT_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "conf" / "vault.toml"
    config.parent.mkdir()
    config.write_text(
        'data_dir = "data"\n[hsm]\nuser_pin_file = "pins/user.pin"\n'
        '[server]\ntls_cert_file = "/etc/abs.pem"\ntls_key_file = "tls/key.pem"\n'
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings(config)
    assert settings.data_dir == tmp_path / "conf" / "data"
    assert settings.hsm.user_pin_file == tmp_path / "conf" / "pins" / "user.pin"
    assert settings.server.tls_cert_file == Path("/etc/abs.pem")
    assert settings.server.tls_key_file == tmp_path / "conf" / "tls" / "key.pem"
    assert settings.source_file == config
    # The environment's relative paths stay relative to the working directory.
    monkeypatch.setenv("VAULT_DATA_DIR", "here")
    assert load_settings(config).data_dir == tmp_path / "here"


def test_the_user_file_is_written_once_and_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [key for key in os.environ if key.startswith("VAULT_")]:
        monkeypatch.delenv(key)
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    first = load_settings(data_dir=tmp_path / "one", server={"listen": "127.0.0.1:7001"})
    written = record_local_server(first, environ)
    assert written == user_config_file(environ)
    second = load_settings(data_dir=tmp_path / "two", server={"listen": "127.0.0.1:7002"})
    assert record_local_server(second, environ) is None
    again = load_settings(written)
    assert again.data_dir == tmp_path / "one"
    assert again.server.listen == "127.0.0.1:7001"
