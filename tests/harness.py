"""A real vault for tests: a provisioned SoftHSM token in a temporary data directory and the
server running as separate processes on a free port, exactly as `make run` starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]

_PROVISION = (
    "from vault.config import Settings\n"
    "from vault.hsm.provision import provision\n"
    "from vault.storage import open_store\n"
    "settings = Settings()\n"
    "store = open_store(settings.store.url)\n"
    "provision(settings, store)\n"
    "store.close()\n"
)
_SERVE = (
    "from vault.config import Settings\n"
    "from vault.transport.supervisor import serve\n"
    "serve(Settings())\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def vault_environment(data_dir: Path, **overrides: str) -> dict[str, str]:
    """Environment for a vault process using data_dir. Tests shorten the destruction wait."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VAULT_") and key != "SOFTHSM2_CONF"
    }
    env.update(
        {
            "VAULT_DATA_DIR": str(data_dir),
            "VAULT_KEYS__MIN_DESTROY_WAITING_SECONDS": "0",
            "VAULT_KEYS__DESTROY_CHECK_SECONDS": "0.5",
            "VAULT_SERVER__WORKERS": "2",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(overrides)
    return env


def provision(data_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", _PROVISION],
        env=vault_environment(data_dir),
        check=True,
        cwd=ROOT,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


class VaultServer:
    """`serve()` in its own process group (a supervisor and its workers)."""

    def __init__(self, data_dir: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._env = vault_environment(
            data_dir, VAULT_SERVER__LISTEN=self.target, **dict(extra_env or {})
        )
        self.log_path = data_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> VaultServer:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE],
            env=self._env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
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

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean-up code runs, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> VaultServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
