"""List pages against the smallest server.max_message_bytes (65,536): items that fit 1,000 to a
page at the default do not at this setting, so every List must end its pages early and resume
right after the last item it sent. A real server on its own SoftHSM token and store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Final
from uuid import uuid4

import grpc
import pytest

from tests.support.api_calls import every_page
from tests.support.harness import VaultServer
from tests.support.small_messages import SMALLEST
from vault.client import VaultClient
from vault.domain.buckets import BUCKET_VERSIONS_SHOWN
from vault.gen.vault.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    bucket_service_pb2,
    bucket_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
)

ACCOUNTS: Final = 250
# With the longest account and bucket ids a master-key version in a Bucket takes about 190
# bytes: a bucket of 401 versions was over 64 KiB, and GetBucket failed.
ROTATIONS: Final = 400
# An ImportJob is about 1.1 to 1.25 KB (an RSA-3072 public key in DER and in PEM): 80 are over
# 64 KiB.
IMPORT_JOBS: Final = 80


@pytest.fixture(scope="module")
def admin(small: VaultServer) -> Iterator[VaultClient]:
    with small.client() as client:
        yield client


@pytest.fixture(scope="module")
def created(admin: VaultClient) -> set[str]:
    """Accounts of about 300 bytes each (the longest display name): 250 are over 64 KiB, and
    their audit records (STARTED, then the outcome, per account) too."""
    return {
        admin.create_account(f"a{uuid4().hex[:12]}", display_name="n" * 256).name
        for _ in range(ACCOUNTS)
    }


def test_accounts_page_within_the_smallest_message(small: VaultServer, created: set[str]) -> None:
    with small.channel() as channel:
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)
        pages = every_page(
            lambda token: identity.ListAccounts(
                identity_service_pb2.ListAccountsRequest(page_size=1000, page_token=token),
                timeout=30,
            )
        )
    assert len(pages) > 1 and all(page.accounts for page in pages)
    assert all(page.ByteSize() <= SMALLEST for page in pages)
    listed = [account.name for page in pages for account in page.accounts]
    assert len(listed) == len(set(listed)) and created <= set(listed)


def test_audit_events_page_within_the_smallest_message(
    small: VaultServer, created: set[str]
) -> None:
    with small.channel() as channel:
        audit = audit_service_pb2_grpc.AuditServiceStub(channel)
        pages = every_page(
            lambda token: audit.ListAuditEvents(
                audit_service_pb2.ListAuditEventsRequest(page_size=1000, page_token=token),
                timeout=30,
            )
        )
    assert len(pages) > 1 and all(page.events for page in pages)
    assert all(page.ByteSize() <= SMALLEST for page in pages)
    sequences = [event.sequence for page in pages for event in page.events]
    assert len(sequences) >= 2 * len(created)
    # Oldest first, each record once, none skipped.
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))


def test_api_keys_page_within_the_smallest_message(
    small: VaultServer, admin: VaultClient, created: set[str]
) -> None:
    # Each API key about 6 KB (8 scopes of 10 long resource names, the longest description):
    # 20 are over 64 KiB.
    account = min(created)
    scopes = [
        (["GetKey", "Sign"], [f"keys/s{s}r{r}{'x' * 59}" for r in range(10)]) for s in range(8)
    ]
    made = {
        admin.create_api_key(account, scopes, description="d" * 1024).api_key.name
        for _ in range(20)
    }
    with small.channel() as channel:
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)
        pages = every_page(
            lambda token: identity.ListApiKeys(
                identity_service_pb2.ListApiKeysRequest(
                    parent=account, page_size=1000, page_token=token
                ),
                timeout=30,
            )
        )
    assert len(pages) > 1 and all(page.api_keys for page in pages)
    assert all(page.ByteSize() <= SMALLEST for page in pages)
    listed = [key.name for page in pages for key in page.api_keys]
    assert len(listed) == len(set(listed)) and set(listed) == made


def copy_import_jobs(database: Path, source: str, count: int) -> list[str]:
    """count copies of import job source's row, under new ids and token labels, each a second
    older than the one before and all older than source; their names, newest first. A job
    made through the API costs an RSA key pair in the token; listing needs only the rows."""
    account, key, job = (source.split("/")[i] for i in (1, 3, 5))
    with closing(sqlite3.connect(database, timeout=30)) as db, db:
        db.row_factory = sqlite3.Row
        row = dict(
            db.execute(
                "SELECT * FROM import_jobs WHERE account = ? AND key_id = ? AND job_id = ?",
                (account, key, job),
            ).fetchone()
        )
        copies = [
            {
                **row,
                "job_id": f"jcopy{n:04d}",
                "token_label": f"vault:import:{uuid4().hex}",
                "create_time": row["create_time"] - (n + 1) * 1_000_000,
            }
            for n in range(count)
        ]
        columns = ", ".join(row)
        values = ", ".join(f":{column}" for column in row)
        db.executemany(f"INSERT INTO import_jobs ({columns}) VALUES ({values})", copies)
    prefix = source.rsplit("/", 1)[0]
    return [f"{prefix}/{copy['job_id']}" for copy in copies]


def test_import_jobs_page_within_the_smallest_message(
    small: VaultServer, admin: VaultClient
) -> None:
    """ListImportJobs answered every job of a key in one message: 80 jobs were too large for
    the smallest max_message_bytes. Pages now end after the last job that fits."""
    account = admin.create_account(f"a{uuid4().hex[:12]}").name
    key = admin.create_key(account, "imports", "MAC").name
    made = [admin.create_import_job(key).name for _ in range(2)]
    expected = [
        made[1],
        made[0],
        *copy_import_jobs(small.data_dir / "vault.db", made[0], IMPORT_JOBS - 2),
    ]
    assert len(expected) == IMPORT_JOBS
    with small.channel() as channel:
        keys = key_service_pb2_grpc.KeyServiceStub(channel)
        pages = every_page(
            lambda token: keys.ListImportJobs(
                key_service_pb2.ListImportJobsRequest(parent=key, page_size=1000, page_token=token),
                timeout=30,
            )
        )
    assert len(pages) > 1 and all(page.import_jobs for page in pages)
    assert all(page.ByteSize() <= SMALLEST for page in pages)
    assert [job.name for page in pages for job in page.import_jobs] == expected
    assert [job.name for job in admin.list_import_jobs(key)] == expected


@pytest.fixture(scope="module")
def rotated(admin: VaultClient) -> str:
    """A bucket with the longest ids, rotated ROTATIONS times; its name."""
    account = admin.create_account(f"a{uuid4().hex}".ljust(63, "x")).name
    bucket = admin.create_bucket(account, "b" * 63).name
    for _ in range(ROTATIONS):
        admin.rotate_bucket_master_key(bucket)
    return bucket


def number(version_name: str) -> int:
    return int(version_name.rsplit("/", 1)[1])


def test_a_bucket_of_hundreds_of_versions_fits_the_smallest_message(
    small: VaultServer, admin: VaultClient, rotated: str
) -> None:
    """A Bucket listed every master-key version: rotated 400 times it no longer fit the
    smallest max_message_bytes. It now shows the newest 100 and counts them all."""
    total = ROTATIONS + 1
    bucket = admin.get_bucket(rotated)
    assert bucket.ByteSize() <= SMALLEST
    assert bucket.master_key_version_count == total
    assert bucket.primary_master_key_version == f"{rotated}/masterKeyVersions/{total}"
    newest = list(range(total - BUCKET_VERSIONS_SHOWN + 1, total + 1))
    assert [number(v.name) for v in bucket.master_key_versions] == newest
    account = rotated.split("/buckets/")[0]
    with small.channel() as channel:
        buckets = bucket_service_pb2_grpc.BucketServiceStub(channel)
        page = buckets.ListBuckets(
            bucket_service_pb2.ListBucketsRequest(parent=account, page_size=1000), timeout=30
        )
    assert list(page.buckets) == [bucket] and page.ByteSize() <= SMALLEST


def test_every_master_key_version_is_listed_in_pages(
    small: VaultServer, admin: VaultClient, rotated: str
) -> None:
    """ListBucketMasterKeyVersions lists what a Bucket leaves out: every version, newest
    first, in pages cut by size or by page_size."""
    expected = [f"{rotated}/masterKeyVersions/{n}" for n in range(ROTATIONS + 1, 0, -1)]
    with small.channel() as channel:
        buckets = bucket_service_pb2_grpc.BucketServiceStub(channel)

        def listing(
            page_size: int, page_token: str
        ) -> bucket_service_pb2.ListBucketMasterKeyVersionsResponse:
            request = bucket_service_pb2.ListBucketMasterKeyVersionsRequest(
                parent=rotated, page_size=page_size, page_token=page_token
            )
            return buckets.ListBucketMasterKeyVersions(request, timeout=30)

        cut = every_page(lambda token: listing(0, token))
        assert len(cut) > 1 and all(page.ByteSize() <= SMALLEST for page in cut)
        assert [v.name for page in cut for v in page.master_key_versions] == expected
        asked = every_page(lambda token: listing(150, token))
        assert [len(page.master_key_versions) for page in asked] == [150, 150, 101]
        assert [v.name for page in asked for v in page.master_key_versions] == expected
        for page_size, token in ((0, "bogus!"), (0, "LTE"), (-1, "")):
            with pytest.raises(grpc.RpcError) as caught:
                listing(page_size, token)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.name for v in admin.iter_bucket_master_key_versions(rotated)] == expected
