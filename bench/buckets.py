"""The bucket workload: many small objects encrypted through the SDK under bucket keys, against
the same objects encrypted the old way, with one GenerateDataKey per object.

Both paths run against a real vault server, authenticated with the admin access key as the
rest of `make bench` is, with the same objects (object i goes to bucket i mod buckets) and the
same number of client threads:

- bucket keys: one ObjectCipher per bucket, all sharing one BucketKeyCache over one
  VaultClient, so the vault is asked for a bucket key only when the cached one is used up
  (README.md, "Bucket-key cache");
- data keys: per object, GenerateDataKey (plaintext included) on an AES-256-GCM key of the
  vault, then AES-256-GCM on the client under that data key; each thread has its own
  connection, so the calls spread over the server's workers.

What the bucket path cost the vault is read from the SDK's cache counters and checked against
the server's audit log (every call is audited before its answer leaves): a difference stops
the run. The data-key path's calls are checked the same way. A few objects of each path are
then decrypted again by a reader that shares nothing with the writer (its bucket keys come
from the vault). The SDK's throughput on 1 MiB objects against raw AES-GCM is
bench/object_cipher.py's encrypt_ratio(), run here so the row carries it.

    python -m bench.buckets [--objects N] [--buckets N] [--object-size BYTES] [--out FILE]

runs the workload alone: a scratch token and one authenticated server, as `make bench` makes
them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.measure import in_threads
from bench.object_cipher import OBJECT_SIZE, encrypt_ratio
from bench.ops import ACCOUNT
from bench.server import AUTHENTICATED, ROOT, VaultServer, own_client, provision
from vault.client import (
    BucketKeyCache,
    ObjectCipher,
    VaultClient,
    VaultClientError,
)
from vault.gen.vault.v1 import resources_pb2

OP: Final = "bucket object encrypt"
REDUCTION_TARGET: Final = 0.999
MIB_RATIO_TARGET: Final = 0.8
DEFAULT_OBJECTS: Final = 100_000
DEFAULT_BUCKETS: Final = 10
DEFAULT_OBJECT_SIZE: Final = 4096
DEFAULT_THREADS: Final = 4
# The options' prefix in `python -m bench` (--bucket-objects...).
BUCKET_PREFIX: Final = "bucket-"
# Distinct payloads the objects cycle through: 100,000 distinct 4 KiB objects would hold
# 400 MB for nothing (each object still gets its own key, salt and nonce).
_PAYLOADS: Final = 64
# Objects of each path decrypted again by an independent reader after the counts are taken.
_CHECKED: Final = 16
_NONCE_SIZE: Final = 12
_CALL_TIMEOUT_SECONDS: Final = 30.0


@dataclass(frozen=True, slots=True)
class Workload:
    objects: int = DEFAULT_OBJECTS
    buckets: int = DEFAULT_BUCKETS
    object_size: int = DEFAULT_OBJECT_SIZE
    threads: int = DEFAULT_THREADS
    # The buckets' policy (0: none, the vault's default): a smoke run sets it to make the
    # cache ask for several keys per bucket.
    max_objects_per_key: int = 0
    # bench.object_cipher.encrypt_ratio's rounds and calls per round (1 MiB objects).
    ratio_rounds: int = 15
    ratio_calls: int = 50

    def __post_init__(self) -> None:
        if min(self.objects, self.buckets, self.object_size, self.threads) < 1:
            raise ValueError("objects, buckets, object size and threads must be positive")
        if self.max_objects_per_key < 0 or min(self.ratio_rounds, self.ratio_calls) < 1:
            raise ValueError("max objects per key must not be negative, ratio rounds positive")


@dataclass(frozen=True, slots=True)
class BucketRow:
    """The results.json row of the bucket workload."""

    workload: Workload
    workers: int  # the server's worker processes
    vault_calls: int  # the bucket path's, from the SDK's cache counters
    audited_vault_calls: int  # the same, from the server's audit log
    data_key_calls: int  # the data-key path's GenerateDataKey calls, counted by the client
    audited_data_key_calls: int
    bucket_seconds: float
    data_key_seconds: float
    # encrypt_ratio's figures, per second of thread CPU time: ObjectCipher.encrypt on 1 MiB
    # objects (bucket key cached), and one raw AESGCM.encrypt of the same bytes.
    sdk_mib_per_s: float
    aesgcm_mib_per_s: float

    @property
    def reduction(self) -> float:
        """The share of vault calls the bucket keys save: 1 - vault calls / objects."""
        return 1 - self.vault_calls / self.workload.objects

    @property
    def bucket_objects_per_s(self) -> float:
        return self.workload.objects / self.bucket_seconds

    @property
    def data_key_objects_per_s(self) -> float:
        return self.workload.objects / self.data_key_seconds

    @property
    def mib_ratio(self) -> float:
        return self.sdk_mib_per_s / self.aesgcm_mib_per_s

    def result(self) -> dict[str, float | int | str | None]:
        return {
            "op": OP,
            "path": AUTHENTICATED,
            "workers": self.workers,
            "clients": self.workload.threads,
            "objects": self.workload.objects,
            "buckets": self.workload.buckets,
            "object_size": self.workload.object_size,
            "vault_calls": self.vault_calls,
            "audited_vault_calls": self.audited_vault_calls,
            "data_key_calls": self.data_key_calls,
            "audited_data_key_calls": self.audited_data_key_calls,
            "reduction": round(self.reduction, 6),
            "reduction_target": REDUCTION_TARGET,
            "bucket_objects_per_s": _rounded(self.bucket_objects_per_s),
            "data_key_objects_per_s": _rounded(self.data_key_objects_per_s),
            "sdk_mib_per_s": _rounded(self.sdk_mib_per_s),
            "aesgcm_mib_per_s": _rounded(self.aesgcm_mib_per_s),
            "mib_ratio": round(self.mib_ratio, 3),
            "mib_ratio_target": MIB_RATIO_TARGET,
        }

    def figures(self) -> list[str]:
        """The printed figures."""
        load = self.workload
        return [
            f"{load.objects:,} objects of {load.object_size:,} B over {load.buckets} buckets, "
            f"{load.threads} client threads, server with {self.workers} worker(s)",
            f"  bucket keys (SDK):  {self.bucket_objects_per_s:10,.0f} objects/s   "
            f"vault calls {self.vault_calls:,} (audit log: {self.audited_vault_calls:,})",
            f"  GenerateDataKey:    {self.data_key_objects_per_s:10,.0f} objects/s   "
            f"vault calls {self.data_key_calls:,} (audit log: {self.audited_data_key_calls:,})",
            f"  1 MiB objects: SDK {self.sdk_mib_per_s:,.0f} MiB/s, raw AES-GCM "
            f"{self.aesgcm_mib_per_s:,.0f} MiB/s",
        ]

    def verdicts(self) -> list[str]:
        """One line per target."""
        reduction_verdict = "PASS" if self.reduction >= REDUCTION_TARGET else "MISS"
        ratio_verdict = "PASS" if self.mib_ratio >= MIB_RATIO_TARGET else "MISS"
        return [
            f"{OP}: reduction = {self.reduction:.4f}, target >= {REDUCTION_TARGET}: "
            f"{reduction_verdict}",
            f"{OP}: SDK/AES-GCM on 1 MiB = {self.mib_ratio:.2f}, target >= "
            f"{MIB_RATIO_TARGET}: {ratio_verdict}",
        ]


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 1)


def _client(target: str, credentials_file: Path) -> VaultClient:
    client: VaultClient = own_client(target, credentials_file, _CALL_TIMEOUT_SECONDS)
    return client


def _audited(client: VaultClient, resource: str, method: str) -> int:
    return sum(1 for _ in client.iter_audit_events(resource=resource, method=method))


def _object_key(index: int) -> str:
    return f"objects/{index:08d}"


def run_workload(
    target: str, credentials_file: Path, workload: Workload, workers: int
) -> BucketRow:
    """Both paths against the server at target (workers: its worker processes, for the row)."""
    run_id = secrets.token_hex(4)
    payloads = [os.urandom(workload.object_size) for _ in range(_PAYLOADS)]
    with _client(target, credentials_file) as admin:
        try:
            admin.create_account(ACCOUNT)
        except VaultClientError as error:
            if error.code != grpc.StatusCode.ALREADY_EXISTS:
                raise
        parent = f"accounts/{ACCOUNT}"
        policy = resources_pb2.BucketKeyPolicy(max_objects_per_key=workload.max_objects_per_key)
        buckets = [
            admin.create_bucket(parent, f"objects-{run_id}-{n}", policy=policy).name
            for n in range(workload.buckets)
        ]
        data_key = admin.create_key(parent, f"envelope-{run_id}", "ENCRYPT_DECRYPT").name

        # Bucket keys: one client and one cache for all buckets, as a storage service has.
        cache = BucketKeyCache(admin)
        ciphers = [ObjectCipher(admin, bucket, cache=cache) for bucket in buckets]
        sealed: dict[int, bytes] = {}
        checked = set(range(0, workload.objects, max(1, workload.objects // _CHECKED)))

        def encrypt_objects(indices: range) -> None:
            for index in indices:
                cipher = ciphers[index % len(ciphers)]
                out = cipher.encrypt(_object_key(index), payloads[index % _PAYLOADS])
                if index in checked:
                    sealed[index] = bytes(out)

        bucket_seconds = in_threads(workload.threads, workload.objects, encrypt_objects)
        vault_calls = cache.stats().vault_calls
        audited = sum(
            _audited(admin, bucket, method)
            for bucket in buckets
            for method in ("GenerateBucketKey", "DecryptBucketKey")
        )
        if audited != vault_calls:
            raise RuntimeError(
                f"the SDK counted {vault_calls} bucket-key calls, the audit log has {audited}"
            )
        # A reader of its own: its bucket keys come from the vault, not the writer's cache.
        reader_cache = BucketKeyCache(admin)
        for index, obj in sealed.items():
            reader = ObjectCipher(admin, buckets[index % len(buckets)], cache=reader_cache)
            if reader.decrypt(_object_key(index), obj) != payloads[index % _PAYLOADS]:
                raise AssertionError(f"bucket path: object {index} did not decrypt to itself")

        # Data keys, the old way: one GenerateDataKey per object, each thread on a
        # connection of its own, connected (by one call) before the clock starts.
        calls = [0] * workload.threads
        envelopes: dict[int, tuple[bytes, bytes, bytes]] = {}
        clients = [_client(target, credentials_file) for _ in range(workload.threads)]
        for client in clients:
            client.get_key(data_key)

        def envelope_objects(indices: range) -> None:
            slot = indices.start
            client = clients[slot]
            for index in indices:
                made = client.generate_data_key(data_key, include_plaintext=True)
                calls[slot] += 1
                nonce = os.urandom(_NONCE_SIZE)
                ciphertext = AESGCM(made.plaintext).encrypt(
                    nonce, payloads[index % _PAYLOADS], _object_key(index).encode()
                )
                if index in checked:
                    envelopes[index] = (made.ciphertext, nonce, ciphertext)

        try:
            data_key_seconds = in_threads(workload.threads, workload.objects, envelope_objects)
        finally:
            for client in clients:
                client.close()
        data_key_calls = sum(calls)
        audited_data_keys = _audited(admin, data_key, "GenerateDataKey")
        if audited_data_keys != data_key_calls:
            raise RuntimeError(
                f"the client made {data_key_calls} GenerateDataKey calls, the audit log has "
                f"{audited_data_keys}"
            )
        for index, (wrapped, nonce, ciphertext) in envelopes.items():
            plain_key = admin.decrypt(data_key, wrapped).plaintext
            opened = AESGCM(plain_key).decrypt(nonce, ciphertext, _object_key(index).encode())
            if opened != payloads[index % _PAYLOADS]:
                raise AssertionError(f"data-key path: object {index} did not decrypt to itself")

    ratio = encrypt_ratio(
        OBJECT_SIZE, rounds=workload.ratio_rounds, calls_per_round=workload.ratio_calls
    )
    mib = OBJECT_SIZE / (1 << 20)
    return BucketRow(
        workload=workload,
        workers=workers,
        vault_calls=vault_calls,
        audited_vault_calls=audited,
        data_key_calls=data_key_calls,
        audited_data_key_calls=audited_data_keys,
        bucket_seconds=bucket_seconds,
        data_key_seconds=data_key_seconds,
        sdk_mib_per_s=ratio.sdk_per_second * mib,
        aesgcm_mib_per_s=ratio.raw_per_second * mib,
    )


def run_with_server(
    data_dir: Path, vault_root: Path, workload: Workload, workers: int, stack: ExitStack
) -> BucketRow:
    """Start an authenticated server with workers processes on data_dir (a provisioned
    token), run the workload against it, stop it."""
    server = VaultServer(
        data_dir, vault_root, AUTHENTICATED, {"VAULT_SERVER__WORKERS": str(workers)}
    )
    stack.callback(server.stop)
    server.start()
    assert server.credentials_file is not None
    try:
        return run_workload(server.target, server.credentials_file, workload, workers)
    finally:
        server.stop()


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The workload's options; prefix: "bucket-" in `python -m bench`, none standalone."""
    parser.add_argument(
        f"--{prefix}objects",
        type=int,
        default=DEFAULT_OBJECTS,
        help=f"objects of the bucket workload ({DEFAULT_OBJECTS:,})",
    )
    parser.add_argument(
        f"--{prefix}count" if prefix else "--buckets",
        dest=f"{prefix.replace('-', '_')}count",
        type=int,
        default=DEFAULT_BUCKETS,
        help=f"buckets the objects are spread over ({DEFAULT_BUCKETS})",
    )
    parser.add_argument(
        f"--{prefix}object-size",
        type=int,
        default=DEFAULT_OBJECT_SIZE,
        help=f"bytes per object ({DEFAULT_OBJECT_SIZE})",
    )
    parser.add_argument(
        f"--{prefix}threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"client threads, on both paths ({DEFAULT_THREADS})",
    )


def workload_from(args: argparse.Namespace, prefix: str = "") -> Workload:
    key = prefix.replace("-", "_")
    return Workload(
        objects=getattr(args, f"{key}objects"),
        buckets=getattr(args, f"{key}count"),
        object_size=getattr(args, f"{key}object_size"),
        threads=getattr(args, f"{key}threads"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.buckets",
        description="The bucket workload of `make bench` alone, on a scratch token.",
    )
    add_arguments(parser)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (2)")
    parser.add_argument("--out", type=Path, default=None, help="write the row here (JSON list)")
    args = parser.parse_args(argv)
    try:
        workload = workload_from(args)
    except ValueError as error:
        parser.error(str(error))
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="vault-bench-buckets-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        data_dir = scratch / "data"
        provision(data_dir, ROOT)
        row = run_with_server(data_dir, ROOT, workload, args.workers, stack)
    print("\n".join([*row.figures(), *row.verdicts()]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([row.result()], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
