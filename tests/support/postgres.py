"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary directory, trust
authentication on a Unix socket in that directory only (no TCP port, no password), stopped and
deleted at the end. `make test` installs Debian's postgresql package when it is missing; its
server programs live in /usr/lib/postgresql/<major>/bin, which is not on PATH.

PostgreSQL refuses to run as root, so when the tests run as root (as in CI) the cluster's
programs run as the unprivileged user `nobody`, which owns the directory.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

# The store backends the store suites and the API suites that take `backend` run on.
BACKENDS: Final = ("sqlite", "postgresql")

_DEBIAN_BINARIES: Final = Path("/usr/lib/postgresql")
_UNPRIVILEGED_USER: Final = "nobody"
# The role the vault connects as; initdb makes it the superuser, so it may create databases.
ROLE: Final = "vault"
DATABASE: Final = "postgres"
_TIMEOUT: Final = 120


def server_binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres: Debian's newest major version, else
    wherever PATH finds initdb."""
    versions = sorted(
        (path for path in _DEBIAN_BINARIES.glob("*/bin") if (path / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    if found is None:
        raise RuntimeError(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed: "
            "`make test` installs Debian's postgresql package"
        )
    return Path(found).resolve().parent


class PostgresCluster:
    """One cluster for a test session; new_url() gives each test a schema of its own (a new
    database costs most of a second, a schema under a millisecond).

    With pytest-xdist each test process has its own session and so its own cluster, in a
    directory of its own with its socket there (no TCP port): processes share nothing.
    """

    def __init__(self) -> None:
        self._bin = server_binaries()
        self._run_as: list[str] = []
        self.directory = Path(tempfile.mkdtemp(prefix="vault-pg-"))
        if os.geteuid() == 0:
            account = pwd.getpwnam(_UNPRIVILEGED_USER)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", _UNPRIVILEGED_USER, "--"]
        self.data = self.directory / "data"
        self.socket_dir = self.directory
        self._names = itertools.count(1)
        self._started = False

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._run_as, *args],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_TIMEOUT,
        )

    def start(self) -> PostgresCluster:
        self._run(
            str(self._bin / "initdb"),
            "--pgdata",
            str(self.data),
            "--auth",
            "trust",
            "--username",
            ROLE,
            "--encoding",
            "UTF8",
            "--no-sync",
        )
        # A throwaway cluster: durability settings off, listening on the socket only.
        options = " ".join(
            (
                "-c listen_addresses=''",
                f"-c unix_socket_directories='{self.socket_dir}'",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
            )
        )
        self._run(
            str(self._bin / "pg_ctl"),
            "--pgdata",
            str(self.data),
            "--log",
            str(self.directory / "server.log"),
            "--options",
            options,
            "--wait",
            "start",
        )
        self._started = True
        return self

    def stop(self) -> None:
        try:
            if self._started:
                self._run(
                    str(self._bin / "pg_ctl"), "--pgdata", str(self.data), "-m", "fast", "stop"
                )
                self._started = False
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, schema: str = "public", database: str = DATABASE) -> str:
        """The store URL of schema (every table the vault makes or reads lands in it)."""
        return (
            f"postgresql+psycopg://{ROLE}@/{database}?host={self.socket_dir}"
            f"&options=-csearch_path%3D{schema}"
        )

    def new_url(self) -> str:
        """The store URL of a new, empty schema."""
        import psycopg

        name = f"vault_{next(self._names)}"
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{name}"')  # name made above, never from input
        return self.url(name)

    def new_database_url(self) -> str:
        """The store URL of a new, empty database, for a test that ends every other session
        of its database (a restart of the server as its store sees it): the other tests'
        schemas live in another database, so their sessions are left alone."""
        import psycopg

        name = f"vault_db_{next(self._names)}"
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')  # name made above, never from input
        return self.url(database=name)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
