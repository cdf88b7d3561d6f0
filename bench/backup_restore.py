"""What a backup costs: `python -m bench.backup_restore [KEYS]` (default 400).

Provisions a token in a temporary data directory and serves it, creates KEYS keys (half
AES-256-GCM, half EC P-256), exports them all (ExportBackup), checks the bundle offline,
clones the roots to a second token by the ceremony and restores the bundle there
(RestoreBackup). Prints the bundle's size per key and the time of each step.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tests.support.clone import clone_roots
from tests.support.harness import VaultServer, provision
from vault.domain.backup import split_lines
from vault.service.backup import verify_bundle

ONE_WORKER = {"VAULT_SERVER__WORKERS": "1"}


def main(keys: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="vault-bench-backup-"))
    source = base / "source"
    provision(source)
    with VaultServer(source) as server, server.client() as client:
        client.create_account("bench")
        for index in range(keys):
            if index % 2:
                client.create_key("accounts/bench", f"k{index}", "ENCRYPT_DECRYPT")
            else:
                client.create_key(
                    "accounts/bench", f"k{index}", "SIGN_VERIFY", "EC_SIGN_P256_SHA256"
                )
        started = time.perf_counter()
        bundle = b"".join(chunk.chunk for chunk in client.export_backup(accounts=["bench"]))
        exported = time.perf_counter() - started
        started = time.perf_counter()
        verify_bundle(split_lines(bundle))
        verified = time.perf_counter() - started
        replica = base / "replica"
        clone_roots(source, replica, base / "ceremony")
        with VaultServer(replica, ONE_WORKER) as restored, restored.client() as other:
            other.create_account("bench")
            (replica / "backups").mkdir(exist_ok=True)
            (replica / "backups" / "bench.bundle").write_bytes(bundle)
            started = time.perf_counter()
            report = other.restore_backup("bench.bundle")
            restoring = time.perf_counter() - started
    print(f"bundle: {keys} keys, {len(bundle)} bytes, {len(bundle) / keys:.0f} bytes per key")
    print(f"export: {exported:.2f} s ({keys / exported:.0f} keys/s)")
    print(f"offline check: {verified:.3f} s")
    print(
        f"restore: {report.restored_count} restored in {restoring:.2f} s "
        f"({keys / restoring:.0f} keys/s)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
