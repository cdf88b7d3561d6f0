"""A provisioned token in a temporary data directory and the real server on a free port,
started as tests/harness.py and `make run` start it, plus what the benchmark reads from
/proc: the worker processes, their CPU time, and which worker each connection landed on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_PROVISION = (
    "from vault.config import Settings\n"
    "from vault.hsm.provision import provision\n"
    "from vault.storage import open_store\n"
    "settings = Settings()\n"
    "store = open_store(settings.store.url)\n"
    "provision(settings, store)\n"
    "store.close()\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def vault_environment(data_dir: Path, vault_root: Path, **overrides: str) -> dict[str, str]:
    """The environment of every vault process of the run (server, provisioning, raw workers):
    none of the caller's VAULT_* settings, the token in data_dir, vault imported from
    vault_root (the checkout by default; a scratch copy to measure a change)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VAULT_") and key != "SOFTHSM2_CONF"
    }
    paths = [str(vault_root)] + ([str(ROOT)] if vault_root != ROOT else [])
    env.update(
        {
            "VAULT_DATA_DIR": str(data_dir),
            "VAULT_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(paths),
        }
    )
    env.update(overrides)
    return env


def provision(data_dir: Path, vault_root: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", _PROVISION],
        env=vault_environment(data_dir, vault_root),
        check=True,
        cwd=vault_root,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


class VaultServer:
    """`python -m bench.serve` (a supervisor and its workers) in its own process group."""

    def __init__(
        self, data_dir: Path, vault_root: Path, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._env = vault_environment(
            data_dir, vault_root, VAULT_SERVER__LISTEN=self.target, **dict(extra_env or {})
        )
        self._cwd = vault_root
        self.log_path = data_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> VaultServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.serve"],
                env=self._env,
                cwd=self._cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
            )
        self._wait_serving(timeout)
        return self

    def _wait_serving(self, timeout: float) -> None:
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
                    if reply.status == health_pb2.HealthCheckResponse.SERVING and (
                        "vault serving on" in self.log()
                    ):
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"vault server not serving after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return sorted(children_of(self.process.pid))

    def stop(self) -> None:
        """SIGTERM the group (graceful: profiles get written), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields after its closing ')' do not.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores, every process), in seconds."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _established_to_port(port: int) -> dict[int, int]:
    """inode -> remote port of every established TCP socket whose local port is port."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                found[inode] = int(remote.rsplit(":", 1)[1], 16)
    return found


def connections_per_worker(worker_pids: Iterable[int], port: int) -> dict[int, int]:
    """How many client connections each worker accepted (SO_REUSEPORT picks per connection)."""
    established = _established_to_port(port)
    return {
        pid: sum(1 for inode in _socket_inodes(pid) if inode in established) for pid in worker_pids
    }
