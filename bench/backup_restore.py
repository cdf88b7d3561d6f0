"""What a backup costs: `python -m bench.backup_restore [KEYS] [--rounds N] [--baseline DIR]`.

Provisions a token in a temporary data directory and serves it, creates KEYS keys (half
AES-256-GCM, half EC P-256) in each of several accounts, exports each account (ExportBackup),
checks a bundle offline, clones the roots to a second token by the ceremony and restores the
bundles there, one per measurement: by RestoreBackup and by StreamRestoreBackup (the SDK's
restore_backup), alternating in order from round to round. With --baseline, a third token
(cloned too) served by the vault package of DIR (a checkout or a scratch copy of an older
tree) restores by RestoreBackup in the same rounds: the ratios to it are the figures to read
on a shared machine. Prints the bundle's size per key and the time of each step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from tests.support.clone import clone_roots
from tests.support.harness import ROOT, VaultServer, provision
from vault.domain.backup import split_lines
from vault.gen.vault.v1 import backup_service_pb2, backup_service_pb2_grpc
from vault.service.backup import verify_bundle

ONE_WORKER = {"VAULT_SERVER__WORKERS": "1"}


def _unary(server: VaultServer) -> Callable[[str], int]:
    def restore(name: str) -> int:
        with server.channel() as channel:
            stub = backup_service_pb2_grpc.BackupServiceStub(channel)
            response = stub.RestoreBackup(
                backup_service_pb2.RestoreBackupRequest(file_name=name), timeout=None
            )
        return int(response.restored_count)

    return restore


def _streamed(server: VaultServer) -> Callable[[str], int]:
    def restore(name: str) -> int:
        with server.client() as client:
            return int(client.restore_backup(name).restored_count)

    return restore


def main(keys: int, rounds: int, baseline: Path | None) -> None:
    base = Path(tempfile.mkdtemp(prefix="vault-bench-backup-"))
    source = base / "source"
    provision(source)
    trees = {"this": ROOT} | ({"baseline": baseline.resolve()} if baseline else {})
    variants = [("this", "RestoreBackup"), ("this", "StreamRestoreBackup")]
    if baseline is not None:
        variants.insert(0, ("baseline", "RestoreBackup"))
    accounts = [f"bench{index}" for index in range(rounds * len(variants))]
    bundles: dict[str, bytes] = {}
    with VaultServer(source) as server, server.client() as client:
        for account in accounts:
            client.create_account(account)
            for index in range(keys):
                if index % 2:
                    client.create_key(f"accounts/{account}", f"k{index}", "ENCRYPT_DECRYPT")
                else:
                    client.create_key(
                        f"accounts/{account}", f"k{index}", "SIGN_VERIFY", "EC_SIGN_P256_SHA256"
                    )
        started = time.perf_counter()
        bundles[accounts[0]] = b"".join(
            chunk.chunk for chunk in client.export_backup(accounts=[accounts[0]])
        )
        exported = time.perf_counter() - started
        for account in accounts[1:]:
            bundles[account] = b"".join(
                chunk.chunk for chunk in client.export_backup(accounts=[account])
            )
    bundle = bundles[accounts[0]]
    started = time.perf_counter()
    verify_bundle(split_lines(bundle))
    verified = time.perf_counter() - started
    print(f"bundle: {keys} keys, {len(bundle)} bytes, {len(bundle) / keys:.0f} bytes per key")
    print(f"export: {exported:.2f} s ({keys / exported:.0f} keys/s)")
    print(f"offline check: {verified:.3f} s")

    with ExitStack() as stack:
        servers: dict[str, VaultServer] = {}
        for tree, root in trees.items():
            replica = base / f"replica-{tree}"
            clone_roots(source, replica, base / f"ceremony-{tree}", f"bench-{tree}")
            served = stack.enter_context(VaultServer(replica, ONE_WORKER, vault_root=root))
            with served.client() as other:
                for account in accounts:
                    other.create_account(account)
            (replica / "backups").mkdir(exist_ok=True)
            for account, data in bundles.items():
                (replica / "backups" / f"{account}.bundle").write_bytes(data)
            servers[tree] = served
        calls = {
            (tree, method): (_unary if method == "RestoreBackup" else _streamed)(servers[tree])
            for tree, method in variants
        }
        rates: dict[tuple[str, str], list[float]] = {variant: [] for variant in variants}
        remaining = iter(accounts)
        for round_number in range(rounds):
            order = variants if round_number % 2 == 0 else variants[::-1]
            for variant in order:
                name = f"{next(remaining)}.bundle"
                started = time.perf_counter()
                restored = calls[variant](name)
                took = time.perf_counter() - started
                assert restored == keys, (variant, restored)
                rates[variant].append(keys / took)
                print(
                    f"round {round_number + 1}: {variant[0]} {variant[1]}: {restored} restored "
                    f"in {took:.2f} s ({keys / took:.0f} keys/s)"
                )
    for variant, figures in rates.items():
        print(f"{variant[0]} {variant[1]}: median {statistics.median(figures):.0f} keys/s")
    if baseline is not None:
        for variant in variants[1:]:
            ratios = [
                mine / theirs
                for mine, theirs in zip(
                    rates[variant], rates[("baseline", "RestoreBackup")], strict=True
                )
            ]
            print(
                f"{variant[0]} {variant[1]} / baseline RestoreBackup: "
                f"median ratio {statistics.median(ratios):.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.backup_restore")
    parser.add_argument("keys", nargs="?", type=int, default=400, help="keys per bundle")
    parser.add_argument("--rounds", type=int, default=2, help="bundles restored per variant")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a source tree whose vault restores too, by RestoreBackup, for ratios",
    )
    options = parser.parse_args()
    main(options.keys, options.rounds, options.baseline)
