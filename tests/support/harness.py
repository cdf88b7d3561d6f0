"""A real vault for tests and the benchmark: a provisioned SoftHSM token in a temporary data
directory and the server running as separate processes on a free port, exactly as `make run`
starts it. bench/server.py builds on this with the benchmark's settings."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]

# The settings every test vault runs with (the benchmark passes its own): destruction without
# the waiting period, checked often, and two worker processes.
TEST_SETTINGS: Final[Mapping[str, str]] = {
    "VAULT_KEYS__MIN_DESTROY_WAITING_SECONDS": "0",
    "VAULT_KEYS__DESTROY_CHECK_SECONDS": "0.5",
    "VAULT_SERVER__WORKERS": "2",
}

_PROVISION = "from vault.app import provision_token\nfrom vault.config import Settings\n"
_PROVISION += "provision_token(Settings())\n"
_SERVE = "from vault.config import Settings\nfrom vault.app import serve\nserve(Settings())\n"

# Prints the token's vault key labels and the store's versions of the keys named on stdin.
_INVENTORY = """
import json, sys
from vault.config import Settings
from vault.domain.names import KeyName
from vault.hsm.keystore import open_keystore
from vault.storage import open_store
settings = Settings()
keystore = open_keystore(settings)
store = open_store(settings.store.url)
versions = {
    str(version.name): [str(version.state), version.token_label]
    for name in json.load(sys.stdin)
    for version in store.list_versions(KeyName.parse(name))
}
print(json.dumps({"token": sorted(keystore.token_labels()), "versions": versions}))
store.close()
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def vault_environment(
    data_dir: Path,
    *,
    vault_root: Path = ROOT,
    settings: Mapping[str, str] = TEST_SETTINGS,
    **overrides: str,
) -> dict[str, str]:
    """Environment for a vault process using data_dir: none of the caller's VAULT_* settings,
    then settings (the tests' by default) and overrides. vault is imported from vault_root:
    the checkout, or a scratch copy the benchmark measures (the checkout follows it on
    PYTHONPATH, for bench and tests)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VAULT_") and key != "SOFTHSM2_CONF"
    }
    paths = [str(vault_root)] + ([str(ROOT)] if vault_root != ROOT else [])
    env.update(
        {
            "VAULT_DATA_DIR": str(data_dir),
            # Where provisioning writes the development SO PIN: beside the data directory,
            # never in it, and not in the home directory of whoever runs the tests.
            "XDG_STATE_HOME": str(state_directory(data_dir)),
            **settings,
            "PYTHONPATH": os.pathsep.join(paths),
        }
    )
    env.update(overrides)
    return env


def state_directory(data_dir: Path) -> Path:
    """The test vault's $XDG_STATE_HOME, outside data_dir."""
    return data_dir.parent / f"{data_dir.name}.state"


def development_so_pin(data_dir: Path) -> bytes:
    """The SO PIN provisioning generated for data_dir's token (the only file it writes)."""
    (path,) = (state_directory(data_dir) / "vault").glob("*.so.pin")
    return path.read_bytes().strip()


def provision(
    data_dir: Path, *, vault_root: Path = ROOT, settings: Mapping[str, str] = TEST_SETTINGS
) -> None:
    subprocess.run(
        [sys.executable, "-c", _PROVISION],
        env=vault_environment(data_dir, vault_root=vault_root, settings=settings),
        check=True,
        cwd=vault_root,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def inventory(data_dir: Path, key_names: list[str]) -> tuple[set[str], dict[str, list[Any]]]:
    """(vault key labels in the token, {version name: [state, token label]} of key_names in
    the store), read by a separate process: the pytest process started SoftHSM with another
    config."""
    done = subprocess.run(
        [sys.executable, "-c", _INVENTORY],
        input=json.dumps(key_names),
        env=vault_environment(data_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout)
    return set(result["token"]), result["versions"]


class VaultServer:
    """`serve()` in its own process group (a supervisor and its workers).

    vault_root and settings as in vault_environment; serve_args follow the interpreter on the
    command line (the benchmark runs its own entry point)."""

    def __init__(
        self,
        data_dir: Path,
        extra_env: Mapping[str, str] | None = None,
        *,
        vault_root: Path = ROOT,
        settings: Mapping[str, str] = TEST_SETTINGS,
        serve_args: Sequence[str] = ("-c", _SERVE),
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._env = vault_environment(
            data_dir,
            vault_root=vault_root,
            settings=settings,
            VAULT_SERVER__LISTEN=self.target,
            **dict(extra_env or {}),
        )
        self._cwd = vault_root
        self._serve_args = list(serve_args)
        self.log_path = data_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> VaultServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self._serve_args],
                env=self._env,
                cwd=self._cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
            )
        self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"vault server exited early:\n{self.log()}")
            with grpc.insecure_channel(self.target) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1.0
                    )
                    # Health answers as soon as one worker is up; the supervisor prints its
                    # line once every worker serves.
                    if (
                        reply.status == health_pb2.HealthCheckResponse.SERVING
                        and "vault serving on" in self.log()
                    ):
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"vault server not serving after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def credentials(self) -> Any:
        """The admin access key the vault bootstrapped in data_dir at its first start."""
        from vault.client import load_credentials_file

        return load_credentials_file(self.data_dir / "admin-credentials.json")

    def client(self, credentials: Any = None, **options: Any) -> Any:
        """A VaultClient of this server, signing with credentials (default: the admin's)."""
        from vault.client import VaultClient

        return VaultClient(self.target, credentials=credentials or self.credentials, **options)

    def channel(self, credentials: Any = None) -> grpc.Channel:
        """A plaintext channel to this server whose unary calls carry credentials (default:
        the admin's), for tests that use the generated stubs or raw bytes directly."""
        from vault.client import authenticated_channel

        return authenticated_channel(
            grpc.insecure_channel(self.target), credentials or self.credentials
        )

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean-up code runs, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM the group (graceful: calls in flight finish, the benchmark's profiles get
        written), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> VaultServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
