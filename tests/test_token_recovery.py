"""Recovery after the token fails under the vault: the module is started again, the vault
logs in again, and the request that met the failure is retried once and succeeds; a token
that stays away is reached again in the background, and health says so meanwhile."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.api_calls import ensure_account
from tests.support.harness import ROOT, VaultServer, provision, vault_environment
from tests.test_server import children
from vault.client import VaultClientError

SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING

_SCRIPT = textwrap.dedent(
    """
    import ctypes, logging, sys
    from vault.config import Settings
    from vault.domain.algorithms import Algorithm
    from vault.hsm.keystore import open_keystore
    from tests.support.tokens import generated_version

    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    settings = Settings()
    keystore = open_keystore(settings)
    version = generated_version(keystore, Algorithm.AES_256_GCM)
    nonce = bytes(12)
    sealed = keystore.encrypt_gcm(version, Algorithm.AES_256_GCM, nonce, b"before", b"")

    # The module loses its state under the vault, as after a device reset: every session
    # and the login are gone.
    module = ctypes.CDLL(str(settings.hsm.module))
    assert module.C_Finalize(None) == 0

    opened = keystore.decrypt_gcm(version, Algorithm.AES_256_GCM, nonce, sealed, b"")
    again = keystore.encrypt_gcm(version, Algorithm.AES_256_GCM, nonce, b"after", b"")
    print("RESULT", opened.decode(), len(again))
    """
)


def test_the_vault_restarts_the_module_and_logs_in_again(data_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=vault_environment(data_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "re-initialising the PKCS#11 module" in result.stdout
    assert "RESULT before 21" in result.stdout


# -- the token directory goes away under a running server ------------------------------------

_NEW_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def token_directory(data_dir: Path) -> Path:
    """The token store the rendered softhsm2.conf names."""
    for line in (data_dir / "softhsm2.conf").read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "directories.tokendir":
            return Path(value.strip())
    raise AssertionError("softhsm2.conf names no token directory")


def health_statuses(server: VaultServer, count: int) -> set[int]:
    """Statuses of count health checks, each on a new connection (the kernel spreads them
    over the workers). Every check must answer within its 0.5 s deadline."""
    statuses = set()
    for _ in range(count):
        with grpc.insecure_channel(server.target, options=_NEW_CONNECTION) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=0.5
            )
        statuses.add(reply.status)
    return statuses


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


def encrypt_on_new_connection(server: VaultServer, key: str) -> VaultClientError | None:
    with server.client(timeout=10, options=_NEW_CONNECTION) as client:
        try:
            sealed = client.encrypt(key, b"survives")
            assert client.decrypt(key, sealed.ciphertext).plaintext == b"survives"
        except VaultClientError as error:
            return error
    return None


def test_workers_reconnect_when_the_token_directory_comes_back(tmp_path: Path) -> None:
    """While the token directory is gone, health says NOT_SERVING in every worker and calls
    fail fast with TOKEN_UNAVAILABLE, logging a bounded number of lines; once it is back,
    every worker serves again without a restart."""
    provision(tmp_path)
    tokens = token_directory(tmp_path)
    away = tokens.with_name(tokens.name + ".away")
    with VaultServer(tmp_path) as server:
        assert server.process is not None
        with server.client(timeout=10) as client:
            ensure_account(client, "accounts/outage")
            key = client.create_key("accounts/outage", "k", "ENCRYPT_DECRYPT").name
            # A token-resident key too: its handle is cached per thread like the root's.
            resident = client.create_key(
                "accounts/outage", "resident", "SIGN_VERIFY", "EC_SIGN_P256_SHA256",
                token_resident=True,
            ).name  # fmt: skip
            client.sign(resident, message=b"before")
        assert encrypt_on_new_connection(server, key) is None
        pids = sorted(children(server.process.pid))
        assert len(pids) == 2

        tokens.rename(away)
        try:
            # Each worker's probe notices on its own, within a few seconds, and says so once.
            wait_until(
                lambda: server.log().count("the token is unavailable") == 2, 20, "both workers"
            )
            wait_until(lambda: health_statuses(server, 20) == {NOT_SERVING}, 10, "NOT_SERVING")
            lines_before = len(server.log().splitlines())
            failures = [encrypt_on_new_connection(server, key) for _ in range(30)]
            assert all(
                error is not None
                and error.code is grpc.StatusCode.UNAVAILABLE
                and error.reason == "TOKEN_UNAVAILABLE"
                for error in failures
            ), failures
            time.sleep(2)  # the background reconnection keeps trying meanwhile
            outage_lines = server.log().splitlines()[lines_before:]
            # Per worker: one line per kind per 10 s, whatever the number of calls.
            assert len(outage_lines) <= 12, "\n".join(outage_lines)
        finally:
            away.rename(tokens)

        wait_until(lambda: server.log().count("the token is back") == 2, 20, "both workers")
        wait_until(lambda: health_statuses(server, 10) == {SERVING}, 10, "SERVING")
        errors = [encrypt_on_new_connection(server, key) for _ in range(30)]
        assert errors == [None] * 30, errors
        for _ in range(10):
            with server.client(timeout=10, options=_NEW_CONNECTION) as client:
                client.sign(resident, message=b"after")
        assert sorted(children(server.process.pid)) == pids, "a worker was restarted"
        assert "Traceback" not in server.log(), server.log()
