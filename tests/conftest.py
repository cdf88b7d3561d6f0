"""Shared fixtures: one provisioned token and one running server for the session.

The pytest process itself opens the same token (same SOFTHSM2_CONF) for tests that inspect
objects directly; SoftHSM supports several processes on one token directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import VaultServer, provision, vault_environment
from tests.support.postgres import BACKENDS, PostgresCluster


@pytest.fixture(scope="session", autouse=True)
def piped_output_width() -> None:
    """vaultctl prints tables at their full width when stdout is not a terminal, unless
    COLUMNS says otherwise; pytest-xdist's workers inherit COLUMNS=80, which would cut
    resource names in the tables the CLI tests read."""
    os.environ.pop("COLUMNS", None)


@pytest.fixture(scope="session", autouse=True)
def own_user_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A user settings directory of the test run's own: `vaultctl` reads (and `vaultctl
    serve` may write) $XDG_CONFIG_HOME/vault/config.toml, and the developer's must neither
    steer the tests nor be written by them. Subprocesses inherit it."""
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    yield
    if before is None:
        del os.environ["XDG_CONFIG_HOME"]
    else:
        os.environ["XDG_CONFIG_HOME"] = before


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vault-data")
    provision(path)
    return path


@pytest.fixture(scope="session")
def server(data_dir: Path) -> Iterator[VaultServer]:
    with VaultServer(data_dir) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: VaultServer) -> Iterator[object]:
    with server.client() as vault_client:
        yield vault_client


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    """A server of its own whose messages are limited to the smallest size the settings
    allow (tests/support/small_messages.py), one per test module that asks for it."""
    from tests.support.small_messages import small_message_server

    with small_message_server(tmp_path_factory.mktemp("small-messages")) as running:
        yield running


@pytest.fixture(scope="session")
def settings(data_dir: Path) -> object:
    """Settings of the session's vault, as the server sees them."""
    from vault.config import Settings

    for key, value in vault_environment(data_dir).items():
        if key.startswith("VAULT_"):
            os.environ[key] = value
    return Settings()


@pytest.fixture(scope="session")
def keystore(settings: object) -> object:
    """The token opened in the pytest process (once: a PKCS#11 module starts once)."""
    from vault.config import Settings
    from vault.hsm.keystore import open_keystore

    assert isinstance(settings, Settings)
    return open_keystore(settings)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the whole run, started on first use."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend a parametrised test runs on."""
    return str(request.param)


@pytest.fixture
def backend_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A new, empty store on the test's backend: a SQLite file, or a PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'vault.db'}"
    cluster = request.getfixturevalue("postgres")
    assert isinstance(cluster, PostgresCluster)
    return cluster.new_url()


@pytest.fixture
def stores(backend_url: str) -> Iterator[object]:
    """Every store of a new, empty database on the test's backend, closed afterwards."""
    from vault.storage import open_stores

    opened = open_stores(backend_url)
    try:
        yield opened
    finally:
        opened.close()
