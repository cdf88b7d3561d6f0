"""What verifying and restoring a large bundle costs in memory and time, before and after:
`python -m bench.restore_memory [--sizes 10000,100000] [--restore-sizes 10000] [--baseline REV]
[--time-only]`.

Provisions a token in a temporary data directory and opens it in this process. A bundle of
KEYS AES-256-GCM keys is written the way an export writes one (BundleWriter, each key's line as
ExportBackup makes it), all keys sharing one blob the token made (a restore trial-unwraps every
one of them all the same), and signed with a software P-256 key. Then, for each size, the
vault.service.backup of REV (default: where this branch left main) and of this tree each
verify it (BackupManagement.verify, as VerifyBackup) and restore it into a fresh SQLite store of
their own (BackupManagement.restore, as RestoreBackup), alternating which goes first. Prints
the peak of Python's allocations (tracemalloc, reset before each step) and the wall time of
each step. tracemalloc slows both variants, unevenly: --time-only measures times without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.harness import ROOT, provision, vault_environment
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.backup import BundleWriter, Selection, key_entry
from vault.domain.ceremony import TokenIdentity
from vault.domain.identity import Account
from vault.domain.models import Key, KeyState, KeyVersion, VersionState
from vault.domain.names import KeyName

ACCOUNT = "bench"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _baseline_module(revision: str, directory: Path) -> ModuleType:
    """vault.service.backup as it was at revision, importing this tree's other modules."""
    source = subprocess.run(
        ["git", "show", f"{revision}:vault/service/backup.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    path = directory / "baseline_backup.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("baseline_backup", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_bundle(path: Path, keys: int, version: KeyVersion) -> int:
    signer = ec.generate_private_key(ec.SECP256R1())
    public = signer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = TokenIdentity("bench", "0", "SoftHSM project", "SoftHSM v2")
    writer = BundleWriter("bench", NOW, Selection(accounts=(ACCOUNT,)), token, public)
    with path.open("wb") as file:
        file.write(writer.header_line())
        for number in range(keys):
            name = KeyName(ACCOUNT, f"k{number:07d}")
            key = Key(
                name=name,
                purpose=Purpose.ENCRYPT_DECRYPT,
                algorithm=Algorithm.AES_256_GCM,
                state=KeyState.ENABLED,
                primary_version=1,
                create_time=NOW,
                update_time=NOW,
            )
            file.write(writer.entry_line(key_entry(key, [version])))
        payload, summary = writer.signed_payload()
        signature = signer.sign(payload, ec.ECDSA(hashes.SHA256()))
        file.write(writer.trailer_line(summary, signature))
    return path.stat().st_size


def measure(step: Callable[[], Any]) -> tuple[float, float, Any]:
    """Peak MiB of Python allocations during step (0 unless tracemalloc runs), its seconds,
    and its result."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    result = step()
    took = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - base
    return peak / (1 << 20), took, result


def main(sizes: list[int], restore_sizes: list[int], baseline: str, trace: bool) -> None:
    base = Path(tempfile.mkdtemp(prefix="vault-bench-restore-memory-"))
    try:
        _run(base, sizes, restore_sizes, baseline, trace)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(
    base: Path, sizes: list[int], restore_sizes: list[int], baseline: str, trace: bool
) -> None:
    data_dir = base / "data"
    provision(data_dir)
    for name, value in vault_environment(data_dir).items():
        if name.startswith("VAULT_") or name in ("XDG_STATE_HOME",):
            os.environ[name] = value
    from vault.config import Settings
    from vault.hsm.keystore import open_keystore
    from vault.hsm.system_keys import BackupSigningKey
    from vault.service import backup as current
    from vault.storage import open_stores

    keystore = open_keystore(Settings())  # type: ignore[call-arg]  # from the environment
    material = keystore.generate(Algorithm.AES_256_GCM, None)
    version = KeyVersion(
        name=KeyName(ACCOUNT, "k").version(1),
        state=VersionState.ENABLED,
        create_time=NOW,
        root_generation=material.root_generation,
        wrapped_blob=material.wrapped_blob,
        token_label=None,
        public_key_der=None,
    )
    variants = {"before": _baseline_module(baseline, base), "after": current}
    backups = base / "backups"
    backups.mkdir()
    if trace:
        tracemalloc.start()
    runs = 0
    for keys in sizes:
        bundle = f"{keys}.bundle"
        size = write_bundle(backups / bundle, keys, version)
        print(f"bundle of {keys} keys: {size / (1 << 20):.1f} MiB")
        order = list(variants.items())
        for name, module in order if sizes.index(keys) % 2 == 0 else order[::-1]:
            stores = open_stores(f"sqlite:///{base / f'store-{runs}.db'}")
            runs += 1
            stores.identity.create_account(Account(ACCOUNT, ACCOUNT, False, NOW))
            backups_of = module.BackupManagement(
                stores.backups,
                keystore,
                BackupSigningKey(keystore),
                module.BundleFiles(backups),
                stores.identity,
            )
            peak, took, _ = measure(partial(backups_of.verify, bundle))
            print(f"  {name:6} verify:  peak {peak:8.2f} MiB, {took:6.2f} s")
            if keys in restore_sizes:
                peak, took, report = measure(partial(backups_of.restore, bundle))
                restored = getattr(report, "restored_count", None)
                restored = len(report.restored) if restored is None else restored
                assert restored == keys, (name, restored)
                print(
                    f"  {name:6} restore: peak {peak:8.2f} MiB, {took:6.2f} s "
                    f"({keys / took:.0f} keys/s)"
                )
            stores.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.restore_memory")
    parser.add_argument("--sizes", default="10000,100000", help="keys per bundle, by commas")
    parser.add_argument(
        "--restore-sizes", default="10000", help="the sizes also restored, by commas"
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="the revision measured as before (default: the merge base with main)",
    )
    parser.add_argument(
        "--time-only", action="store_true", help="times only, without tracing allocations"
    )
    options = parser.parse_args()
    revision = (
        options.baseline
        or subprocess.run(
            ["git", "merge-base", "HEAD", "main"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    main(
        [int(size) for size in options.sizes.split(",")],
        [int(size) for size in options.restore_sizes.split(",") if size],
        revision,
        not options.time_only,
    )
