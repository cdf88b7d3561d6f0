"""The vault as the benchmark runs it: tests/support/harness.py's provisioned token and server (as
`make run` starts them), with the benchmark's settings, the vault code of --vault-root and
`python -m bench.serve`; plus what the benchmark reads from /proc: the worker processes, their
CPU time, and which worker each connection landed on.

A server serves one of two paths: "authenticated" (the default settings: every call
authenticated, authorised and audited) or "unauthenticated" (auth.enabled = false, which the
vault accepts on loopback only, as here). Both kinds run side by side on one token and store:
a vault locks its data directory, so the unauthenticated server runs in a sibling directory
of its own (its lock, run files and log) with the token and the store of the first one, as a
second host would; it keeps no audit log or credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from tests.support import harness
from tests.support.harness import ROOT as ROOT  # the checkout: bench.cli's defaults
from tests.support.harness import free_port as free_port

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# No test settings (destruction waits, two workers): the defaults, quieter.
BENCH_SETTINGS: Final[Mapping[str, str]] = {"VAULT_LOG_LEVEL": "WARNING"}
AUTHENTICATED: Final = "authenticated"
UNAUTHENTICATED: Final = "unauthenticated"
PATHS: Final = (AUTHENTICATED, UNAUTHENTICATED)
_PATH_SETTINGS: Final[Mapping[str, Mapping[str, str]]] = {
    AUTHENTICATED: {},
    UNAUTHENTICATED: {"VAULT_AUTH__ENABLED": "false"},
}


def own_client(target: str, credentials_file: Path, timeout: float) -> Any:
    """A VaultClient on a connection of its own (a local subchannel pool), as each load
    generator thread has one, so that threads spread over the workers."""
    from vault.client import VaultClient, load_credentials_file

    return VaultClient(
        target,
        credentials=load_credentials_file(credentials_file),
        timeout=timeout,
        options=[("grpc.use_local_subchannel_pool", 1)],
    )


def run_in_vault(
    script: str, args: Sequence[str], data_dir: Path, vault_root: Path, what: str
) -> Any:
    """Run script (python -c) with the vault code of vault_root, configured for data_dir's
    token and store, and return the JSON it prints; RuntimeError naming what on failure."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=harness.vault_environment(data_dir, vault_root=vault_root, settings=BENCH_SETTINGS),
        cwd=vault_root,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def provision(data_dir: Path, vault_root: Path) -> None:
    """A token in data_dir, provisioned by the vault code in vault_root."""
    harness.provision(data_dir, vault_root=vault_root, settings=BENCH_SETTINGS)


class VaultServer(harness.VaultServer):
    """`python -m bench.serve` (a supervisor and its workers) in its own process group,
    running the vault code in vault_root, serving path (one of PATHS)."""

    def __init__(
        self,
        data_dir: Path,
        vault_root: Path,
        path: str,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        env = {**(extra_env or {}), **_PATH_SETTINGS[path]}
        if path != AUTHENTICATED:
            env.update(_shared_token_and_store(data_dir))
            data_dir = data_dir.parent / f"{data_dir.name}-{path}"
            data_dir.mkdir(mode=0o700, exist_ok=True)
        super().__init__(
            data_dir,
            env,
            vault_root=vault_root,
            settings=BENCH_SETTINGS,
            serve_args=("-m", "bench.serve"),
        )
        self.path = path

    @property
    def authenticated(self) -> bool:
        return self.path == AUTHENTICATED

    @property
    def credentials_file(self) -> Path | None:
        """The admin access key's file that the first authenticated start of data_dir wrote
        (where harness.VaultServer.credentials reads it); None for a server that needs none."""
        return self.data_dir / "admin-credentials.json" if self.authenticated else None

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return sorted(children_of(self.process.pid))


def _shared_token_and_store(data_dir: Path) -> dict[str, str]:
    """Settings that point a vault in another data directory at data_dir's token, PIN and
    store."""
    return {
        "VAULT_HSM__SOFTHSM_CONF": str(data_dir / "softhsm2.conf"),
        "VAULT_HSM__USER_PIN_FILE": str(data_dir / "secrets" / "user.pin"),
        "VAULT_STORE__URL": f"sqlite:///{data_dir / 'vault.db'}",
    }


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
